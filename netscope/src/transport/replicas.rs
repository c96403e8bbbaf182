//! The agent side with more than one aggregator: [`ReplicaSink`], a
//! [`ReportSink`] that sends every report to one replica, chosen by
//! rendezvous hashing of the node name over the resolved replica set.
//!
//! The replica set comes from `--server-endpoint`: a comma-separated list of
//! `host:port` (or `http(s)://host:port`) entries, each host an IP address
//! or a DNS name whose every A/AAAA address is a replica (a headless
//! Service). Names are resolved again every
//! [`ReplicaConfig::resolve_interval`]. `file:PATH` reads the list from a
//! file (entries separated by commas or newlines, `#` comments) at every
//! resolution instead: replicas outside Kubernetes, and the demo's.
//!
//! # The switching rule
//!
//! The driver sends one report at a time and retries the same
//! `(instance, seq)` until it is acknowledged (or refused for good). The
//! sink remembers the report in flight and the replica it went to; it moves
//! the agent to another replica only when
//!
//! - that report was acknowledged (or refused for good: the replica answered
//!   that it did not count it), or
//! - the replica is gone: every send to it failed for at least
//!   [`ReplicaConfig::gone_after`]. A replica that merely left the resolved
//!   set (scale-down, a rolling update) still gets the report in flight to
//!   it until it acknowledges it; only then does the agent move.
//!
//! So a report is never counted by two replicas while both are alive: the
//! replay check of the replica that may have counted it is the one that sees
//! the retries. See docs/transport.md, "More than one aggregator".

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::client::{ClientConfig, ClientError, GrpcSink};
use crate::report::{Ack, InstanceId, Report, ReportSink, SendError};

/// Replicas in the resolved set (gauge).
pub const REPLICAS_METRIC: &str = crate::metrics::AGENT_REPLICAS;
/// Moves of this agent from one replica to another (counter, `reason`:
/// `set_changed`, `gone`).
pub const SWITCHES_METRIC: &str = crate::metrics::AGENT_REPLICA_SWITCHES_TOTAL;
/// Resolutions of the replica set that failed (counter).
pub const RESOLVE_ERRORS_METRIC: &str = crate::metrics::AGENT_REPLICA_RESOLVE_ERRORS_TOTAL;

/// Most entries in `--server-endpoint`.
pub const MAX_ENDPOINTS: usize = 64;
/// Most replicas kept from one resolution (the rest are ignored, in address
/// order, and a warning is logged).
pub const MAX_REPLICAS: usize = 1024;

/// Settings of a [`ReplicaSink`].
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Comma-separated `host:port` or `http(s)://host:port` entries, or
    /// `file:PATH` naming a file of them.
    pub endpoints: String,
    /// This node's name: the rendezvous hashing key.
    pub node_name: String,
    /// How often DNS names are resolved again.
    pub resolve_interval: Duration,
    /// A replica every send to which failed for this long counts as gone;
    /// the report in flight then moves to another replica.
    pub gone_after: Duration,
    /// Deadlines, TLS and size limit of each replica's client; its
    /// `endpoint` is ignored. A TLS connection verifies the server
    /// certificate against `tls.domain`, else the entry's host name.
    pub client: ClientConfig,
}

impl ReplicaConfig {
    /// Defaults: resolve every 30 s, a replica is gone after 60 s of failed
    /// sends, the client defaults of [`ClientConfig::new`].
    pub fn new(endpoints: impl Into<String>, node_name: impl Into<String>) -> Self {
        let endpoints = endpoints.into();
        ReplicaConfig {
            client: ClientConfig::new(endpoints.clone()),
            endpoints,
            node_name: node_name.into(),
            resolve_interval: Duration::from_secs(30),
            gone_after: Duration::from_secs(60),
        }
    }
}

/// Errors from setting up a [`ReplicaSink`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// An entry of the endpoint list is not `host:port`.
    #[error("invalid aggregator endpoint {entry:?}: {reason}")]
    Entry {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More entries than [`MAX_ENDPOINTS`].
    #[error("{count} aggregator endpoints given, at most {MAX_ENDPOINTS} allowed")]
    TooMany {
        /// Entries given.
        count: usize,
    },
    /// A `file:` endpoint list could not be read or parsed.
    #[error("aggregator endpoints file {path:?}: {reason}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A replica's client could not be built.
    #[error("client for aggregator replica {addr}")]
    Client {
        /// The replica.
        addr: SocketAddr,
        /// The client error.
        #[source]
        source: ClientError,
    },
}

/// Largest endpoints file read.
const MAX_FILE_BYTES: u64 = 64 << 10;

/// Where the endpoint list comes from.
#[derive(Debug, Clone)]
enum Source {
    /// Given once.
    List(Arc<Vec<Target>>),
    /// `file:PATH`: read again at every resolution.
    File(std::path::PathBuf),
}

impl Source {
    fn parse(endpoints: &str) -> Result<Self, ReplicaError> {
        match endpoints.trim().strip_prefix("file:") {
            Some(path) => {
                let path = std::path::PathBuf::from(path);
                read_file(&path)?;
                Ok(Source::File(path))
            }
            None => Ok(Source::List(Arc::new(Target::parse_list(endpoints)?))),
        }
    }

    fn targets(&self) -> Result<Arc<Vec<Target>>, ReplicaError> {
        match self {
            Source::List(t) => Ok(t.clone()),
            Source::File(p) => read_file(p).map(Arc::new),
        }
    }
}

/// An endpoints file: entries separated by commas or newlines, `#` starts a
/// comment.
fn read_file(path: &std::path::Path) -> Result<Vec<Target>, ReplicaError> {
    use std::io::Read;
    let bad = |reason| ReplicaError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(bad(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let list: Vec<&str> = text
        .lines()
        .map(|l| l.split_once('#').map_or(l, |(a, _)| a))
        .collect();
    Target::parse_list(&list.join(",")).map_err(|e| bad(e.to_string()))
}

/// One entry of the endpoint list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: Option<String>,
    host: String,
    port: u16,
}

impl Target {
    fn parse(entry: &str) -> Result<Self, ReplicaError> {
        let bad = |reason| ReplicaError::Entry {
            entry: entry.to_string(),
            reason,
        };
        let (scheme, rest) = match entry.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (Some(s.to_string()), rest),
            Some(_) => return Err(bad("scheme must be http or https")),
            None => (None, entry),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no :port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number 1-65535"))?;
        if port == 0 {
            return Err(bad("port is not a number 1-65535"));
        }
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').ok_or_else(|| bad("unclosed ["))?,
            None if host.contains(':') => return Err(bad("IPv6 address without [ ]")),
            None => host,
        };
        if host.is_empty() || host.len() > 253 || host.contains(['/', '@', '?', '#', ' ']) {
            return Err(bad("host is empty or not a host name"));
        }
        Ok(Target {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// Parses a comma-separated list; empty entries are skipped.
    fn parse_list(list: &str) -> Result<Vec<Target>, ReplicaError> {
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Err(ReplicaError::Entry {
                entry: list.to_string(),
                reason: "no endpoint",
            });
        }
        if entries.len() > MAX_ENDPOINTS {
            return Err(ReplicaError::TooMany {
                count: entries.len(),
            });
        }
        entries.into_iter().map(Target::parse).collect()
    }
}

/// The rendezvous (highest random weight) score of `addr` for `node`: a
/// fixed 64-bit hash (FNV-1a, then the splitmix64 finalizer), the same on
/// every agent and every build.
pub fn rendezvous_score(node: &str, addr: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(node.as_bytes());
    eat(&[0xff]);
    match addr.ip() {
        IpAddr::V4(ip) => eat(&ip.octets()),
        IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&addr.port().to_be_bytes());
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The replica `node` reports to among `addrs`: the highest score, ties
/// (practically impossible) to the lower address.
pub fn rendezvous_pick(
    node: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Option<SocketAddr> {
    addrs.into_iter().max_by(|a, b| {
        rendezvous_score(node, *a)
            .cmp(&rendezvous_score(node, *b))
            .then_with(|| b.cmp(a))
    })
}

#[derive(Debug)]
struct Replica {
    sink: GrpcSink,
    /// Start of the current run of failed sends.
    failing_since: Option<Instant>,
    /// Marked gone: skipped until a TCP connect to it succeeds again at a
    /// resolution.
    gone: bool,
    /// In the last resolved set.
    listed: bool,
}

#[derive(Debug, Default)]
struct State {
    replicas: BTreeMap<SocketAddr, Replica>,
    resolved_at: Option<Instant>,
    /// The replica the agent reports to.
    current: Option<SocketAddr>,
    /// The report sent to `current` and not yet acknowledged.
    pending: Option<(InstanceId, u64)>,
}

/// A [`ReportSink`] over several aggregator replicas; see the module docs.
#[derive(Debug)]
pub struct ReplicaSink {
    config: ReplicaConfig,
    source: std::sync::Mutex<Source>,
    state: Mutex<State>,
}

impl ReplicaSink {
    /// A sink for `config`. Resolves nothing yet. Must be called within a
    /// Tokio runtime.
    ///
    /// # Errors
    /// [`ReplicaError`] for a malformed endpoint list.
    pub fn new(config: ReplicaConfig) -> Result<Self, ReplicaError> {
        let source = Source::parse(&config.endpoints)?;
        Ok(ReplicaSink {
            config,
            source: std::sync::Mutex::new(source),
            state: Mutex::new(State::default()),
        })
    }

    /// Replaces the endpoint list (same syntax as
    /// [`ReplicaConfig::endpoints`]); the next send resolves it. For
    /// endpoint sets that do not come from DNS (the demo's replicas).
    ///
    /// # Errors
    /// [`ReplicaError`] for a malformed list; the old list stays.
    pub async fn set_endpoints(&self, endpoints: &str) -> Result<(), ReplicaError> {
        let source = Source::parse(endpoints)?;
        *self.source.lock().unwrap_or_else(PoisonError::into_inner) = source;
        self.state.lock().await.resolved_at = None;
        Ok(())
    }

    /// The replica the agent reports to now, if one was chosen.
    pub async fn current(&self) -> Option<SocketAddr> {
        self.state.lock().await.current
    }

    /// Resolves every entry; `Err` with a description when nothing resolved.
    async fn resolve(&self) -> Result<BTreeMap<SocketAddr, Target>, String> {
        let source = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let targets = match source.targets() {
            Ok(t) => t,
            Err(e) => {
                metrics::counter!(RESOLVE_ERRORS_METRIC).increment(1);
                warn!(error = %e, "reading the aggregator endpoints failed");
                return Err(e.to_string());
            }
        };
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for t in targets.iter() {
            if let Ok(ip) = t.host.parse::<IpAddr>() {
                out.insert(SocketAddr::new(ip, t.port), t.clone());
                continue;
            }
            let lookup = tokio::time::timeout(
                self.config.client.connect_timeout,
                tokio::net::lookup_host((t.host.as_str(), t.port)),
            )
            .await;
            match lookup {
                Ok(Ok(addrs)) => {
                    for a in addrs {
                        out.entry(a).or_insert_with(|| t.clone());
                    }
                }
                Ok(Err(e)) => errors.push(format!("{:?}: {e}", t.host)),
                Err(_) => errors.push(format!("{:?}: timed out", t.host)),
            }
        }
        if !errors.is_empty() {
            metrics::counter!(RESOLVE_ERRORS_METRIC).increment(1);
            warn!(errors = ?errors, "resolving aggregator replicas failed");
        }
        if out.len() > MAX_REPLICAS {
            warn!(
                resolved = out.len(),
                kept = MAX_REPLICAS,
                "too many aggregator replicas resolved"
            );
            while out.len() > MAX_REPLICAS {
                out.pop_last();
            }
        }
        if out.is_empty() {
            return Err(if errors.is_empty() {
                "no address".to_string()
            } else {
                errors.join("; ")
            });
        }
        Ok(out)
    }

    /// Brings the replica set up to date. On failure the old set stays.
    async fn refresh(&self, st: &mut State, now: Instant) -> Result<(), SendError> {
        let resolved = match self.resolve().await {
            Ok(r) => r,
            Err(e) if st.replicas.is_empty() => {
                return Err(SendError::Rpc {
                    endpoint: self.config.endpoints.clone(),
                    seq: st.pending.map_or(0, |p| p.1),
                    source: tonic::Status::unavailable(format!(
                        "no aggregator replica resolved: {e}"
                    )),
                });
            }
            Err(_) => {
                st.resolved_at = Some(now);
                return Ok(());
            }
        };
        st.resolved_at = Some(now);
        // A replica that left the set keeps the report in flight to it
        // until it acknowledges it or stays unreachable for `gone_after`.
        let keep = st.current.filter(|_| st.pending.is_some());
        for (a, r) in &mut st.replicas {
            r.listed = resolved.contains_key(a);
        }
        st.replicas.retain(|a, r| r.listed || Some(*a) == keep);
        for (addr, target) in resolved {
            if st.replicas.contains_key(&addr) {
                continue;
            }
            let mut cc = self.config.client.clone();
            let host = match addr.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            cc.endpoint = match &target.scheme {
                Some(s) => format!("{s}://{host}:{}", addr.port()),
                None => format!("{host}:{}", addr.port()),
            };
            if let Some(tls) = &mut cc.tls {
                if tls.domain.is_none() && target.host.parse::<IpAddr>().is_err() {
                    tls.domain = Some(target.host.clone());
                }
            }
            let sink = GrpcSink::new(&cc).map_err(|source| SendError::Rpc {
                endpoint: cc.endpoint.clone(),
                seq: 0,
                source: tonic::Status::invalid_argument(
                    ReplicaError::Client { addr, source }.to_string(),
                ),
            })?;
            st.replicas.insert(
                addr,
                Replica {
                    sink,
                    failing_since: None,
                    gone: false,
                    listed: true,
                },
            );
        }
        // A replica marked gone is tried again once it accepts a TCP
        // connection.
        for (addr, r) in &mut st.replicas {
            if r.gone {
                let probe = tokio::time::timeout(
                    self.config.client.connect_timeout,
                    tokio::net::TcpStream::connect(*addr),
                )
                .await;
                if matches!(probe, Ok(Ok(_))) {
                    info!(replica = %addr, "aggregator replica reachable again");
                    r.gone = false;
                    r.failing_since = None;
                }
            }
        }
        let listed = st.replicas.values().filter(|r| r.listed).count();
        metrics::gauge!(REPLICAS_METRIC).set(listed as f64);
        Ok(())
    }

    /// Picks the replica for `id`, applying the switching rule.
    fn choose(&self, st: &mut State, id: (InstanceId, u64), now: Instant) -> Option<SocketAddr> {
        let gone_after = self.config.gone_after;
        for r in st.replicas.values_mut() {
            if r.failing_since
                .is_some_and(|t| now.duration_since(t) >= gone_after)
            {
                r.gone = true;
            }
        }
        if st.pending.is_some_and(|p| p != id) {
            // The driver gave the pending report up (refused for good): it
            // will not be sent again.
            st.pending = None;
        }
        let current_alive = st
            .current
            .and_then(|c| st.replicas.get(&c))
            .is_some_and(|r| !r.gone);
        if st.pending.is_some() && current_alive {
            return st.current;
        }
        let node = &self.config.node_name;
        let listed = || st.replicas.iter().filter(|(_, r)| r.listed);
        let live = listed().filter(|(_, r)| !r.gone).map(|(a, _)| *a);
        let pick = rendezvous_pick(node, live)
            .or_else(|| rendezvous_pick(node, listed().map(|(a, _)| *a)))?;
        if let Some(old) = st.current.filter(|c| *c != pick) {
            let reason = if st.pending.is_none() && current_alive {
                "set_changed"
            } else {
                "gone"
            };
            metrics::counter!(SWITCHES_METRIC, "reason" => reason).increment(1);
            info!(
                from = %old,
                to = %pick,
                reason,
                pending_seq = ?st.pending.map(|p| p.1),
                "switching aggregator replica"
            );
        }
        st.current = Some(pick);
        Some(pick)
    }
}

impl ReportSink for ReplicaSink {
    fn send<'a>(
        &'a self,
        report: &'a Report,
    ) -> Pin<Box<dyn Future<Output = Result<Ack, SendError>> + Send + 'a>> {
        Box::pin(async move {
            let id = (report.instance, report.seq);
            let (addr, sink) = {
                let mut st = self.state.lock().await;
                let now = Instant::now();
                let current_failing = st
                    .current
                    .and_then(|c| st.replicas.get(&c))
                    .is_some_and(|r| r.failing_since.is_some());
                let stale = st
                    .resolved_at
                    .is_none_or(|t| now.duration_since(t) >= self.config.resolve_interval);
                if stale || st.replicas.is_empty() || current_failing {
                    let fresh = st
                        .resolved_at
                        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
                    // A failing replica re-resolves at most once a second.
                    if stale || st.replicas.is_empty() || !fresh {
                        self.refresh(&mut st, now).await?;
                    }
                }
                let Some(addr) = self.choose(&mut st, id, now) else {
                    return Err(SendError::Rpc {
                        endpoint: self.config.endpoints.clone(),
                        seq: report.seq,
                        source: tonic::Status::unavailable("no aggregator replica"),
                    });
                };
                st.pending = Some(id);
                let sink = st.replicas.get(&addr).map(|r| r.sink.clone());
                (addr, sink)
            };
            let Some(sink) = sink else {
                return Err(SendError::Rpc {
                    endpoint: addr.to_string(),
                    seq: report.seq,
                    source: tonic::Status::unavailable("aggregator replica vanished"),
                });
            };
            let result = sink.send(report).await;
            let mut st = self.state.lock().await;
            match &result {
                Ok(_) => {
                    if st.pending == Some(id) {
                        st.pending = None;
                    }
                    if let Some(r) = st.replicas.get_mut(&addr) {
                        r.failing_since = None;
                        r.gone = false;
                    }
                }
                Err(e) if e.is_permanent() => {
                    // The replica answered: it did not count this report.
                    if st.pending == Some(id) {
                        st.pending = None;
                    }
                    if let Some(r) = st.replicas.get_mut(&addr) {
                        r.failing_since = None;
                    }
                }
                Err(e) => {
                    debug!(replica = %addr, error = ?e, "send to aggregator replica failed");
                    if let Some(r) = st.replicas.get_mut(&addr) {
                        r.failing_since.get_or_insert_with(Instant::now);
                    }
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8080))
    }

    #[test]
    fn parses_entries() {
        let t = Target::parse_list(" a.b.svc:8080, http://10.0.0.1:1 ,https://[fd00::1]:443/,")
            .expect("valid list");
        assert_eq!(
            t,
            vec![
                Target {
                    scheme: None,
                    host: "a.b.svc".into(),
                    port: 8080
                },
                Target {
                    scheme: Some("http".into()),
                    host: "10.0.0.1".into(),
                    port: 1
                },
                Target {
                    scheme: Some("https".into()),
                    host: "fd00::1".into(),
                    port: 443
                },
            ]
        );
        for bad in [
            "",
            ",",
            "host",
            "host:0",
            "host:65536",
            "host:x",
            "ftp://h:1",
            "fd00::1:80",
            "[fd00::1:80",
            ":80",
            "a/b:80",
            "u@h:80",
        ] {
            let err = Target::parse_list(bad).expect_err(bad);
            assert!(
                err.to_string().contains("invalid aggregator endpoint"),
                "{bad}: {err}"
            );
        }
        let many = vec!["h:1"; MAX_ENDPOINTS + 1].join(",");
        assert!(matches!(
            Target::parse_list(&many),
            Err(ReplicaError::TooMany { count }) if count == MAX_ENDPOINTS + 1
        ));
    }

    #[test]
    fn endpoints_file() {
        let dir = std::env::temp_dir().join(format!("netscope-replicas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("endpoints");
        std::fs::write(
            &f,
            "# replicas\n10.0.0.1:8080\n\n10.0.0.2:8080, h:1 # third\n",
        )
        .expect("write");
        let src = Source::parse(&format!("file:{}", f.display())).expect("valid file");
        let t = src.targets().expect("targets");
        assert_eq!(
            t.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2", "h"]
        );
        // Read again every time: a change shows at the next resolution.
        std::fs::write(&f, "10.0.0.3:1").expect("write");
        assert_eq!(src.targets().expect("targets")[0].host, "10.0.0.3");
        std::fs::write(&f, "garbage").expect("write");
        let err = src.targets().expect_err("no port");
        assert!(err.to_string().contains("endpoints file"), "{err}");
        std::fs::write(&f, vec![b'#'; 70_000]).expect("write");
        assert!(src
            .targets()
            .expect_err("too large")
            .to_string()
            .contains("larger than"));
        assert!(Source::parse(&format!("file:{}", dir.join("missing").display())).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn rendezvous_is_stable_and_moves_few() {
        // Fixed values: the same on every agent and every build.
        assert_eq!(
            rendezvous_score("node-1", addr(1)),
            rendezvous_score("node-1", addr(1))
        );
        assert_ne!(
            rendezvous_score("node-1", addr(1)),
            rendezvous_score("node-2", addr(1))
        );
        let nodes: Vec<String> = (0..5000).map(|i| format!("node-{i}")).collect();
        for n in 1..=8u8 {
            let before: Vec<_> = (1..=n).map(addr).collect();
            let after: Vec<_> = (1..=n + 1).map(addr).collect();
            let mut moved = 0usize;
            let mut load = vec![0usize; usize::from(n) + 1];
            for node in &nodes {
                let a = rendezvous_pick(node, before.iter().copied()).expect("non-empty");
                let b = rendezvous_pick(node, after.iter().copied()).expect("non-empty");
                if a != b {
                    // Only to the new replica, never between old ones.
                    assert_eq!(b, addr(n + 1), "{node} moved between old replicas");
                    moved += 1;
                }
                load[usize::from(
                    b.ip()
                        .to_string()
                        .rsplit('.')
                        .next()
                        .unwrap()
                        .parse::<u8>()
                        .unwrap(),
                ) - 1] += 1;
            }
            // About 1/(n+1) of the agents move; allow 4 standard deviations.
            let expect = nodes.len() as f64 / f64::from(n + 1);
            let sd = (expect * (1.0 - 1.0 / f64::from(n + 1))).sqrt();
            assert!(
                (moved as f64 - expect).abs() < 4.0 * sd,
                "{n}->{}: {moved} of {} moved, expected about {expect}",
                n + 1,
                nodes.len()
            );
            for (i, l) in load.iter().enumerate() {
                assert!(
                    (*l as f64 - expect).abs() < 4.0 * sd,
                    "replica {i} has {l} agents, expected about {expect}"
                );
            }
        }
        assert_eq!(rendezvous_pick("n", []), None);
    }
}
