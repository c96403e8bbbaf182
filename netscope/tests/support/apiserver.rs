//! A small stand-in for kube-apiserver that speaks the real list/watch HTTP
//! protocol on 127.0.0.1, for testing the Kubernetes resolver without a
//! cluster.
//!
//! - `GET /api/v1/{pods,nodes,services}` and
//!   `GET /apis/networking.k8s.io/v1/servicecidrs` list objects, with the
//!   list's `metadata.resourceVersion`, items shaped as the API sends them
//!   (no per-item `kind`/`apiVersion`).
//! - `?watch=true&resourceVersion=N` answers `200` with a chunked stream of
//!   newline-delimited watch events (`ADDED`, `MODIFIED`, `DELETED`,
//!   `BOOKMARK` when `allowWatchBookmarks=true`), starting after `N`. A
//!   resourceVersion older than the last compaction gets the API's
//!   `ERROR` event with a `410 Expired` Status, and the stream ends.
//! - The ServiceCIDR API can be switched off, in which case it answers
//!   `404` with a `Status` body, as a cluster without it does, or refused
//!   with `403`, as for a client whose role lacks the permission.
//!
//! Resource versions are global across kinds, as etcd revisions are. The
//! test drives the "cluster" (apply, delete, compact) and the connections
//! (drop every watch, expire every watch with a 410, send bookmarks), and
//! reads back the requests the client made.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The kinds this server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pods,
    Nodes,
    Services,
    ServiceCidrs,
    EndpointSlices,
}

impl Resource {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/pods" => Some(Resource::Pods),
            "/api/v1/nodes" => Some(Resource::Nodes),
            "/api/v1/services" => Some(Resource::Services),
            "/apis/networking.k8s.io/v1/servicecidrs" => Some(Resource::ServiceCidrs),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Resource::EndpointSlices),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Nodes => "Node",
            Resource::Services => "Service",
            Resource::ServiceCidrs => "ServiceCIDR",
            Resource::EndpointSlices => "EndpointSlice",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::ServiceCidrs => "networking.k8s.io/v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
}

/// How the server answers for the ServiceCIDR API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceCidrApi {
    /// Served like any other resource.
    Served,
    /// `404`: a cluster older than Kubernetes 1.33.
    #[default]
    NotFound,
    /// `403`: the client's RBAC role lacks the permission.
    Forbidden,
}

/// One request the client made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub resource: Option<Resource>,
    pub watch: bool,
    pub resource_version: Option<String>,
    pub target: String,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// Watches resuming from a version below this get 410 Gone.
    oldest: u64,
    objects: BTreeMap<(Resource, String), Value>,
    log: Vec<(u64, Resource, &'static str, Value)>,
    drop_gen: u64,
    expire_gen: u64,
    bookmark_gen: u64,
    requests: Vec<Request>,
    /// Bookmarks written to watch streams: (kind, resourceVersion).
    bookmarks_sent: Vec<(Resource, u64)>,
    service_cidr_api: ServiceCidrApi,
}

/// The running server. Dropping it stops accepting connections.
pub struct ApiServer {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key_of(obj: &Value) -> String {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("test object without metadata.name: {obj}"));
    format!("{ns}/{name}")
}

impl ApiServer {
    /// Starts serving on an ephemeral port of 127.0.0.1.
    pub async fn start(service_cidr_api: ServiceCidrApi) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind 127.0.0.1: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let store = Arc::new(Mutex::new(Store {
            rv: 100,
            oldest: 0,
            service_cidr_api,
            ..Store::default()
        }));
        let accept_store = store.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = accept_store.clone();
                tokio::spawn(async move {
                    // A dropped watch ends here with an error; nothing to report.
                    let _ = serve_connection(stream, store).await;
                });
            }
        });
        ApiServer { addr, store, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`); returns its
    /// new resourceVersion.
    pub fn apply(&self, resource: Resource, mut obj: Value) -> u64 {
        let mut s = self.lock();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let kind = if s.objects.contains_key(&(resource, key.clone())) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert((resource, key), obj.clone());
        s.log.push((rv, resource, kind, obj));
        rv
    }

    /// Deletes an object (`DELETED`); returns the version of the deletion.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> u64 {
        let mut s = self.lock();
        let key = format!("{namespace}/{name}");
        let Some(mut obj) = s.objects.remove(&(resource, key.clone())) else {
            panic!("delete of unknown {resource:?} {key}");
        };
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.log.push((rv, resource, "DELETED", obj));
        rv
    }

    /// Removes an object and compacts the history, so that no watcher can
    /// learn of the deletion from events: only a relist shows it.
    pub fn delete_and_compact(&self, resource: Resource, namespace: &str, name: &str) {
        let mut s = self.lock();
        let key = format!("{namespace}/{name}");
        if s.objects.remove(&(resource, key.clone())).is_none() {
            panic!("delete of unknown {resource:?} {key}");
        }
        s.rv += 1;
        s.oldest = s.rv + 1;
        s.log.clear();
    }

    /// Forgets history up to now: resuming from any earlier version gets
    /// 410 Gone.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.oldest = s.rv + 1;
        s.log.clear();
    }

    /// Cuts every open watch connection without ending its stream, as a
    /// network failure or an apiserver restart does.
    pub fn drop_watches(&self) {
        self.lock().drop_gen += 1;
    }

    /// Ends every open watch with an `ERROR` event carrying `410 Expired`.
    pub fn expire_watches(&self) {
        self.lock().expire_gen += 1;
    }

    /// Sends a `BOOKMARK` with the current resourceVersion on every open
    /// watch that asked for bookmarks; returns that version.
    pub fn bookmark(&self) -> u64 {
        let mut s = self.lock();
        s.bookmark_gen += 1;
        s.rv
    }

    /// Bookmarks written so far to `resource` watches.
    pub fn bookmarks_sent(&self, resource: Resource) -> Vec<u64> {
        self.lock()
            .bookmarks_sent
            .iter()
            .filter(|(r, _)| *r == resource)
            .map(|(_, rv)| *rv)
            .collect()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

async fn write_response(stream: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

async fn write_chunk(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    stream
        .write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
        .await?;
    stream.flush().await
}

fn status_410(rv: u64, oldest: u64) -> Value {
    json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {rv} ({oldest})"),
            "reason": "Expired",
            "code": 410
        }
    })
}

/// Serves requests on one connection until the client closes it or a watch
/// is dropped.
async fn serve_connection(stream: TcpStream, store: Arc<Mutex<Store>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        // Headers: read and ignore (GETs carry no body).
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = parse_query(query);
        let resource = Resource::from_path(path);
        let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
        let rv_param = query.get("resourceVersion").cloned();
        let stream = reader.get_mut();
        let answer = {
            let mut s = store.lock().unwrap_or_else(PoisonError::into_inner);
            s.requests.push(Request {
                resource,
                watch,
                resource_version: rv_param.clone(),
                target: target.clone(),
            });
            match resource {
                Some(Resource::ServiceCidrs) => s.service_cidr_api,
                Some(_) => ServiceCidrApi::Served,
                None => ServiceCidrApi::NotFound,
            }
        };
        if answer == ServiceCidrApi::Forbidden {
            let body = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": "servicecidrs.networking.k8s.io is forbidden: User \"system:serviceaccount:netscope:netscope\" cannot list resource \"servicecidrs\" in API group \"networking.k8s.io\" at the cluster scope",
                "reason": "Forbidden",
                "details": {"group": "networking.k8s.io", "kind": "servicecidrs"},
                "code": 403
            });
            write_response(stream, "403 Forbidden", &body).await?;
            continue;
        }
        let Some(resource) = resource.filter(|_| answer == ServiceCidrApi::Served) else {
            let body = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": "the server could not find the requested resource",
                "reason": "NotFound", "details": {}, "code": 404
            });
            write_response(stream, "404 Not Found", &body).await?;
            continue;
        };
        if !watch {
            let body = {
                let s = store.lock().unwrap_or_else(PoisonError::into_inner);
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((r, _), _)| *r == resource)
                    .map(|(_, obj)| {
                        let mut item = obj.clone();
                        if let Some(map) = item.as_object_mut() {
                            map.remove("kind");
                            map.remove("apiVersion");
                        }
                        item
                    })
                    .collect();
                json!({
                    "kind": format!("{}List", resource.kind()),
                    "apiVersion": resource.api_version(),
                    "metadata": {"resourceVersion": s.rv.to_string()},
                    "items": items,
                })
            };
            write_response(stream, "200 OK", &body).await?;
            continue;
        }
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let keep_alive = serve_watch(stream, &store, resource, rv_param, bookmarks).await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Streams one watch. Returns Ok(true) when the stream ended cleanly and
/// the connection can serve another request, Err when it was cut.
async fn serve_watch(
    stream: &mut TcpStream,
    store: &Arc<Mutex<Store>>,
    resource: Resource,
    rv_param: Option<String>,
    bookmarks: bool,
) -> std::io::Result<bool> {
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await?;
    stream.flush().await?;
    let (mut cursor, oldest, gens) = {
        let s = store.lock().unwrap_or_else(PoisonError::into_inner);
        let cursor = rv_param
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v != 0)
            .unwrap_or(s.rv);
        (cursor, s.oldest, (s.drop_gen, s.expire_gen, s.bookmark_gen))
    };
    if cursor + 1 < oldest {
        write_chunk(stream, &status_410(cursor, oldest)).await?;
        stream.write_all(b"0\r\n\r\n").await?;
        return Ok(true);
    }
    let (drop_gen, expire_gen, mut bookmark_gen) = gens;
    loop {
        let (events, expired) = {
            let s = store.lock().unwrap_or_else(PoisonError::into_inner);
            if s.drop_gen != drop_gen {
                return Err(std::io::Error::other("watch dropped by the test"));
            }
            if s.expire_gen != expire_gen {
                (vec![status_410(cursor, s.rv + 1)], true)
            } else {
                let mut events: Vec<Value> = s
                    .log
                    .iter()
                    .filter(|(rv, r, _, _)| *r == resource && *rv > cursor)
                    .map(|(_, _, kind, obj)| json!({"type": kind, "object": obj}))
                    .collect();
                if let Some((rv, ..)) = s
                    .log
                    .iter()
                    .rev()
                    .find(|(rv, r, ..)| *r == resource && *rv > cursor)
                {
                    cursor = *rv;
                }
                if bookmarks && s.bookmark_gen != bookmark_gen {
                    bookmark_gen = s.bookmark_gen;
                    cursor = s.rv;
                    events.push(json!({
                        "type": "BOOKMARK",
                        "object": {
                            "kind": resource.kind(),
                            "apiVersion": resource.api_version(),
                            "metadata": {"resourceVersion": s.rv.to_string()}
                        }
                    }));
                }
                (events, false)
            }
        };
        for event in &events {
            write_chunk(stream, event).await?;
            if event["type"] == "BOOKMARK" {
                let rv = event["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                store
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .bookmarks_sent
                    .push((resource, rv));
            }
        }
        if expired {
            stream.write_all(b"0\r\n\r\n").await?;
            stream.flush().await?;
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
