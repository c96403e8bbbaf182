//! The Kubernetes resolver against a local server that speaks the real
//! list/watch protocol (tests/support/apiserver.rs): the real kube `Client`
//! and kube-runtime watchers, over HTTP on 127.0.0.1, with API-shaped JSON.
#![cfg(feature = "kube")]

#[path = "support/apiserver.rs"]
mod apiserver;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use apiserver::{ApiServer, Resource, ServiceCidrApi};
use netscope::resolve::kube::{KubeResolver, KubeResolverConfig};
use netscope::resolve::{IpPrefix, Resolver};
use netscope::{EndpointKind, WorkloadKind};
use serde_json::{json, Value};

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_else(|e| panic!("clock before 1970: {e}"))
        .as_secs();
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .unwrap_or_else(|e| panic!("timestamp: {e}"))
        .to_string()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn node(name: &str, zone: &str, internal_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("node-uid-{name}"),
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": "us-west-2",
            },
        },
        "spec": {"podCIDR": "10.0.0.0/24"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

struct PodArgs<'a> {
    name: &'a str,
    node: &'a str,
    ips: &'a [&'a str],
    started: SystemTime,
    phase: &'a str,
    owner: Option<(&'a str, &'a str)>,
    labels: Value,
}

fn pod_args<'a>(
    name: &'a str,
    node: &'a str,
    ips: &'a [&'a str],
    started: SystemTime,
) -> PodArgs<'a> {
    PodArgs {
        name,
        node,
        ips,
        started,
        phase: "Running",
        owner: None,
        labels: json!({}),
    }
}

fn pod(a: &PodArgs<'_>) -> Value {
    let owners: Vec<Value> = a
        .owner
        .iter()
        .map(|(kind, name)| {
            json!({"apiVersion": "apps/v1", "kind": kind, "name": name,
                   "uid": format!("owner-uid-{name}"), "controller": true, "blockOwnerDeletion": true})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": a.name,
            "namespace": "shop",
            "uid": format!("pod-uid-{}-{}", a.name, rfc3339(a.started)),
            "creationTimestamp": rfc3339(a.started),
            "labels": a.labels,
            "ownerReferences": owners,
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1"}],
        },
        "spec": {
            "nodeName": a.node,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
        "status": {
            "phase": a.phase,
            "hostIP": "192.168.0.1",
            "podIP": a.ips.first().copied().unwrap_or(""),
            "podIPs": a.ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>(),
            "startTime": rfc3339(a.started),
            "conditions": [{"type": "Ready", "status": if a.phase == "Running" { "True" } else { "False" }}],
        },
    })
}

fn service(name: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("svc-uid-{name}")},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "ipFamilies": if ips.len() > 1 { json!(["IPv4", "IPv6"]) } else { json!(["IPv4"]) },
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    })
}

/// A cluster of two zones: node-a (us-west-2a) and node-b (us-west-2b).
fn seed(api: &ApiServer, hour_ago: SystemTime) {
    api.apply(Resource::Nodes, node("node-a", "us-west-2a", "192.168.0.1"));
    api.apply(Resource::Nodes, node("node-b", "us-west-2b", "192.168.0.2"));
    let mut web = pod_args(
        "web-7d9c8b6f5-x2x1z",
        "node-a",
        &["10.0.1.5", "fd00:1::5"],
        hour_ago,
    );
    web.owner = Some(("ReplicaSet", "web-7d9c8b6f5"));
    web.labels = json!({"app": "web", "pod-template-hash": "7d9c8b6f5"});
    api.apply(Resource::Pods, pod(&web));
    let mut db = pod_args("db-0", "node-b", &["10.0.2.7"], hour_ago);
    db.owner = Some(("StatefulSet", "db"));
    api.apply(Resource::Pods, pod(&db));
    let mut agent = pod_args("netscope-agent-q8x2p", "node-a", &["10.0.1.9"], hour_ago);
    agent.owner = Some(("DaemonSet", "netscope-agent"));
    agent.labels = json!({"app.kubernetes.io/name": "netscope-agent"});
    api.apply(Resource::Pods, pod(&agent));
    api.apply(
        Resource::Services,
        service("api", &["10.96.0.10", "fd00:96::10"]),
    );
}

fn config() -> KubeResolverConfig {
    KubeResolverConfig {
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap_or_else(|e| panic!("{e}"))],
        publish_interval: Duration::from_millis(5),
        // Short, so that the test sees a node whose agent went away become
        // unmonitored (the default keeps it 5 minutes: restarts, upgrades).
        agent_absence_grace: Duration::from_millis(300),
        ..KubeResolverConfig::default()
    }
}

/// Starts a resolver on the server and waits for its first sync.
async fn start(
    api: &ApiServer,
    config: KubeResolverConfig,
) -> (KubeResolver, tokio::task::JoinHandle<()>) {
    let url = api.url().parse().unwrap_or_else(|e| panic!("url: {e}"));
    let client = kube::Client::try_from(kube::Config::new(url))
        .unwrap_or_else(|e| panic!("kube client: {e}"));
    let (resolver, driver) =
        KubeResolver::new(client, config).unwrap_or_else(|e| panic!("resolver: {e}"));
    let task = tokio::spawn(driver.run());
    let r = resolver.clone();
    eventually("the first sync", move || r.is_synced()).await;
    (resolver, task)
}

/// Polls `cond` for up to 15 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn name_at(r: &KubeResolver, addr: &str, t: SystemTime) -> String {
    r.resolve(ip(addr), t).name.to_string()
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_and_go_and_a_reused_ip_resolves_by_time() {
    let logs = Capture::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    // Process-wide so that the driver's worker threads log into it.
    tracing::subscriber::set_global_default(subscriber)
        .unwrap_or_else(|e| panic!("subscriber: {e}"));

    let now = SystemTime::now();
    let hour_ago = now - Duration::from_secs(3600);
    let api = ApiServer::start(ServiceCidrApi::NotFound).await;
    seed(&api, hour_ago);
    let (r, driver) = start(&api, config()).await;

    // The initial list: pods in both families, with workload and zone.
    for addr in ["10.0.1.5", "fd00:1::5"] {
        let e = r.resolve(ip(addr), now);
        assert_eq!(e.kind, EndpointKind::Pod, "{addr}");
        assert_eq!((&*e.name, &*e.namespace), ("web-7d9c8b6f5-x2x1z", "shop"));
        assert_eq!(
            (&*e.workload, e.workload_kind),
            ("web", WorkloadKind::Deployment)
        );
        assert_eq!(
            (&*e.node, &*e.zone, &*e.region),
            ("node-a", "us-west-2a", "us-west-2")
        );
    }
    let db = r.resolve(ip("10.0.2.7"), now);
    assert_eq!(
        (&*db.workload, db.workload_kind, &*db.zone),
        ("db", WorkloadKind::StatefulSet, "us-west-2b")
    );
    let n = r.resolve(ip("192.168.0.2"), now);
    assert_eq!(
        (n.kind, &*n.name, &*n.zone),
        (EndpointKind::Node, "node-b", "us-west-2b")
    );
    let svc = r.resolve(ip("fd00:96::10"), now);
    assert_eq!((svc.kind, &*svc.name), (EndpointKind::Service, "api"));
    // No ServiceCIDR API on this server (404): the configured CIDRs are used.
    assert_eq!(
        r.service_cidrs(),
        vec!["10.96.0.0/12"
            .parse::<IpPrefix>()
            .unwrap_or_else(|e| panic!("{e}"))]
    );
    assert!(
        r.is_monitored_node("node-a"),
        "a Ready agent pod runs on node-a"
    );
    assert!(!r.is_monitored_node("node-b"));

    // ADDED: a new pod appears.
    let mut cart = pod_args("cart-5f6d7-abcde", "node-b", &["10.0.2.9"], now);
    cart.phase = "Pending";
    cart.owner = Some(("ReplicaSet", "cart-5f6d7"));
    cart.labels = json!({"pod-template-hash": "5f6d7"});
    api.apply(Resource::Pods, pod(&cart));
    eventually("cart to resolve", || {
        name_at(&r, "10.0.2.9", now) == "cart-5f6d7-abcde"
    })
    .await;
    assert_eq!(
        r.resolve(ip("10.0.2.9"), now).workload_kind,
        WorkloadKind::Deployment
    );

    // DELETED: web goes away; its IP stays as a tombstone for late reports.
    api.delete(Resource::Pods, "shop", "web-7d9c8b6f5-x2x1z");
    let deleted_by = SystemTime::now();
    eventually("the web tombstone", || {
        r.snapshot().ended_claim_count() == 2
            && r.resolve(ip("10.0.1.5"), deleted_by).kind == EndpointKind::Pod
    })
    .await;

    // ADDED again: a new pod gets web's IPv4 address. Reports are resolved by
    // the time they were observed.
    let reused_at = SystemTime::now() + Duration::from_secs(2);
    api.apply(
        Resource::Pods,
        pod(&pod_args("search-0", "node-b", &["10.0.1.5"], reused_at)),
    );
    eventually("the reused IP", || {
        name_at(&r, "10.0.1.5", reused_at + Duration::from_secs(5)) == "search-0"
    })
    .await;
    let before = reused_at - Duration::from_secs(600);
    assert_eq!(name_at(&r, "10.0.1.5", before), "web-7d9c8b6f5-x2x1z");
    let after = r.resolve(ip("10.0.1.5"), reused_at + Duration::from_secs(5));
    assert_eq!(
        (&*after.zone, after.workload_kind),
        ("us-west-2b", WorkloadKind::Pod)
    );
    // web's IPv6 address, not reused, still resolves to the tombstone.
    assert_eq!(name_at(&r, "fd00:1::5", now), "web-7d9c8b6f5-x2x1z");

    // MODIFIED: the agent pod on node-a stops being Ready; after the agent
    // absence grace the node is unmonitored.
    let mut agent = pod_args("netscope-agent-q8x2p", "node-a", &["10.0.1.9"], hour_ago);
    agent.owner = Some(("DaemonSet", "netscope-agent"));
    agent.labels = json!({"app.kubernetes.io/name": "netscope-agent"});
    agent.phase = "Pending";
    api.apply(Resource::Pods, pod(&agent));
    eventually("node-a to be unmonitored", || {
        !r.is_monitored_node("node-a")
    })
    .await;

    driver.abort();
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(PoisonError::into_inner))
        .into_owned();
    assert!(text.contains("Updated pod mapping"), "{text}");
    assert!(text.contains("Kubernetes resolver synced"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_relabelled_to_another_zone_moves_its_pods() {
    let now = SystemTime::now();
    // RBAC without ServiceCIDR permission: the configured CIDRs are used
    // and the resolver still syncs.
    let api = ApiServer::start(ServiceCidrApi::Forbidden).await;
    seed(&api, now - Duration::from_secs(3600));
    let (r, driver) = start(&api, config()).await;
    assert_eq!(r.service_cidrs().len(), 1);
    assert_eq!(
        &*r.resolve(ip("10.96.200.1"), now).name,
        "unknown",
        "inside the configured CIDR"
    );
    assert_eq!(&*r.resolve(ip("10.0.1.5"), now).zone, "us-west-2a");

    api.apply(Resource::Nodes, node("node-a", "us-west-2c", "192.168.0.1"));
    eventually("node-a's pods to move to us-west-2c", || {
        &*r.resolve(ip("10.0.1.5"), now).zone == "us-west-2c"
    })
    .await;
    assert_eq!(&*r.resolve(ip("fd00:1::5"), now).zone, "us-west-2c");
    assert_eq!(
        &*r.resolve(ip("192.168.0.1"), now).zone,
        "us-west-2c",
        "the node itself"
    );
    assert_eq!(
        &*r.resolve(ip("10.0.2.7"), now).zone,
        "us-west-2b",
        "pods elsewhere stay"
    );
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_resumes_and_a_410_forces_a_relist() {
    let now = SystemTime::now();
    let api = ApiServer::start(ServiceCidrApi::Served).await;
    seed(&api, now - Duration::from_secs(3600));
    api.apply(
        Resource::ServiceCidrs,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
               "metadata": {"name": "kubernetes", "uid": "cidr-uid"},
               "spec": {"cidrs": ["10.96.0.0/16", "fd00:96::/108"]}}),
    );
    let mut cfg = config();
    cfg.tombstone_grace = Duration::from_secs(2);
    let (r, driver) = start(&api, cfg).await;
    // The ServiceCIDR API is served: its CIDRs replace the configured one.
    let cidrs: Vec<String> = r.service_cidrs().iter().map(ToString::to_string).collect();
    assert_eq!(cidrs, vec!["10.96.0.0/16", "fd00:96::/108"]);

    let pod_lists = |api: &ApiServer| {
        api.requests()
            .iter()
            .filter(|q| q.resource == Some(Resource::Pods) && !q.watch)
            .count()
    };
    let pod_watches = |api: &ApiServer| {
        api.requests()
            .into_iter()
            .filter(|q| q.resource == Some(Resource::Pods) && q.watch)
            .collect::<Vec<_>>()
    };
    eventually("the pod watch", || !pod_watches(&api).is_empty()).await;
    assert_eq!(pod_lists(&api), 1);

    // Other kinds move the global resourceVersion; a bookmark tells the pod
    // watch it may resume from there.
    api.apply(Resource::Nodes, node("node-c", "us-west-2c", "192.168.0.3"));
    eventually("node-c", || {
        r.resolve(ip("192.168.0.3"), now).kind == EndpointKind::Node
    })
    .await;
    let bookmark = api.bookmark();
    eventually("the pod bookmark to be sent", || {
        api.bookmarks_sent(Resource::Pods).contains(&bookmark)
    })
    .await;
    // Give the client a moment to read it before the connection is cut.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The connection drops; a pod is added while the client is away.
    api.drop_watches();
    api.apply(
        Resource::Pods,
        pod(&pod_args("late-1", "node-c", &["10.0.3.3"], now)),
    );
    eventually("the pod added while the watch was down", || {
        name_at(&r, "10.0.3.3", now) == "late-1"
    })
    .await;
    assert_eq!(&*r.resolve(ip("10.0.3.3"), now).zone, "us-west-2c");
    let resumed = pod_watches(&api);
    let last = resumed.last().unwrap_or_else(|| panic!("no pod watch"));
    assert_eq!(
        last.resource_version.as_deref(),
        Some(bookmark.to_string().as_str()),
        "the watch resumed from the bookmark: {resumed:?}"
    );
    assert_eq!(
        pod_lists(&api),
        1,
        "a dropped watch resumes without a relist"
    );

    // History is compacted and db-0's deletion is lost with it; the watch
    // gets 410 Gone and the watcher relists. db-0 is missing from the new
    // list, so it becomes a tombstone and, after the 2 s grace, unknown.
    api.delete_and_compact(Resource::Pods, "shop", "db-0");
    api.expire_watches();
    eventually("the relist after 410", || pod_lists(&api) >= 2).await;
    let relisted = SystemTime::now();
    eventually("db-0 to be a tombstone", || {
        r.snapshot().ended_claim_count() == 1
    })
    .await;
    assert_eq!(
        name_at(&r, "10.0.2.7", relisted - Duration::from_secs(1)),
        "db-0"
    );
    eventually("db-0's tombstone to expire", || {
        r.resolve(ip("10.0.2.7"), relisted).kind == EndpointKind::External
    })
    .await;
    // Everything else survived the relist.
    assert_eq!(name_at(&r, "10.0.3.3", now), "late-1");
    assert_eq!(name_at(&r, "10.0.1.5", now), "web-7d9c8b6f5-x2x1z");
    assert!(r.is_synced());

    // The whole conversation about pods: list, watch, resume after the
    // drop (from the bookmark), relist after the 410, watch again.
    let pattern: Vec<bool> = api
        .requests()
        .iter()
        .filter(|q| q.resource == Some(Resource::Pods))
        .map(|q| q.watch)
        .collect();
    assert_eq!(
        pattern,
        vec![false, true, true, false, true],
        "{:#?}",
        api.requests()
    );
    // And the new watch keeps delivering.
    api.apply(
        Resource::Pods,
        pod(&pod_args("after-relist", "node-b", &["10.0.4.4"], now)),
    );
    eventually("a pod after the relist", || {
        name_at(&r, "10.0.4.4", now) == "after-relist"
    })
    .await;
    driver.abort();
}

fn endpoint_slice(service: &str, slice: &str, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice,
            "namespace": "shop",
            "uid": format!("slice-uid-{slice}"),
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_give_ready_endpoints_per_zone_and_follow_changes() {
    let now = SystemTime::now();
    let api = ApiServer::start(ServiceCidrApi::NotFound).await;
    seed(&api, now - Duration::from_secs(3600));
    let mut api_svc = service("api", &["10.96.0.10", "fd00:96::10"]);
    api_svc["spec"]["trafficDistribution"] = json!("PreferClose");
    api.apply(Resource::Services, api_svc);
    // Zone from the endpoint itself, or else from its node; one not ready.
    api.apply(
        Resource::EndpointSlices,
        endpoint_slice(
            "api",
            "api-x1",
            json!([
                {"addresses": ["10.0.1.5"], "conditions": {"ready": true}, "zone": "us-west-2a"},
                {"addresses": ["10.0.2.7"], "nodeName": "node-b"},
                {"addresses": ["10.0.2.8"], "conditions": {"ready": false}, "zone": "us-west-2b",
                 "hints": {"forZones": [{"name": "us-west-2b"}]}},
            ]),
        ),
    );
    let (r, driver) = start(&api, config()).await;
    let api_ref = netscope::resolve::ServiceRef::new("shop", "api");
    let ready = |r: &KubeResolver| -> Vec<(String, u32)> {
        r.service_topology()
            .and_then(|t| {
                t.get(&api_ref).map(|s| {
                    s.ready_by_zone
                        .iter()
                        .map(|(z, n)| (z.to_string(), *n))
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    let r2 = r.clone();
    eventually("the api slice", move || ready(&r2).len() == 2).await;
    assert_eq!(
        ready(&r),
        [("us-west-2a".to_owned(), 1), ("us-west-2b".to_owned(), 1)]
    );
    let t = r.service_topology().expect("a topology");
    let info = t.get(&api_ref).expect("api");
    assert_eq!(info.traffic_distribution.as_deref(), Some("PreferClose"));
    assert!(info.hints, "an endpoint carries zone hints");
    assert_eq!(
        t.services_of_endpoint(ip("10.0.2.8"))
            .map(|s| s.service.to_string())
            .collect::<Vec<_>>(),
        ["shop/api"],
        "a not-ready endpoint is still the Service's address"
    );

    // The zone-a endpoint goes away: only zone b has a ready one.
    api.apply(
        Resource::EndpointSlices,
        endpoint_slice(
            "api",
            "api-x1",
            json!([{"addresses": ["10.0.2.7"], "nodeName": "node-b"}]),
        ),
    );
    let r2 = r.clone();
    eventually("the zone-a endpoint to go", move || ready(&r2).len() == 1).await;
    assert_eq!(ready(&r), [("us-west-2b".to_owned(), 1)]);
    api.delete(Resource::EndpointSlices, "shop", "api-x1");
    let r2 = r.clone();
    eventually("the slice to go", move || ready(&r2).is_empty()).await;
    assert!(
        r.service_topology()
            .expect("a topology")
            .get(&api_ref)
            .is_some(),
        "the Service stays without endpoints"
    );
    driver.abort();
}
