//! A static topology from a YAML file: the same pods, nodes and Services the
//! Kubernetes backend would find, for local runs, the demo and hosts without
//! Kubernetes.
//!
//! Format (every list is optional):
//!
//! ```yaml
//! zones:                      # optional: lets nodes name only their zone
//!   - name: us-west-2a
//!     region: us-west-2
//! nodes:
//!   - name: node-a
//!     zone: us-west-2a        # required
//!     region: us-west-2       # optional; else the zone's region
//!     ips: [192.168.10.1]     # the node's own addresses (InternalIPs)
//!     agent: true             # runs a netscope agent; default true
//! pods:
//!   - name: web-7c9f-x2x1z
//!     namespace: shop         # required
//!     node: node-a            # required, must be a node above
//!     ips: [10.0.1.5, "fd00:1::5"]
//!     workload: web           # optional; default the pod's own name
//!     workload_kind: Deployment  # optional; default Pod
//!     host_network: false     # optional; true: the pod's IPs are the node's
//! services:
//!   - name: api
//!     namespace: shop
//!     ips: [10.96.0.10, "fd00:96::10"]   # ClusterIPs
//!     endpoints: [web-7c9f-x2x1z]  # optional: pods of this namespace
//!                                  # backing it (ready endpoints)
//!     traffic_distribution: PreferClose  # optional
//!     hints: false            # optional: EndpointSlices carry zone hints
//! service_cidrs: [10.96.0.0/12, "fd00:96::/108"]
//! ```
//!
//! Unknown fields, missing names, malformed addresses, a pod on an unknown
//! node and two entries claiming one address are errors that name the entry
//! and the field.
//!
//! Reloading: a file-backed resolver ([`StaticResolver::load`]) re-reads the
//! file when it changes ([`StaticResolver::reload`], polled by
//! [`StaticResolver::watch`]) and keeps, like the Kubernetes backend, a
//! history of which pod held which address when. The pods of the first
//! version hold their addresses since the epoch. At each later version,
//! noticed at time `now`: a pod address whose owner is unchanged (every
//! field: name, namespace, workload, kind, node, zone, region) keeps its
//! claim; one that is gone, or whose owner changed, ends at `now` and stays
//! as a tombstone for
//! [`tombstone_grace`](StaticTopologyOptions::tombstone_grace); a new one
//! starts at `now`. So when a pod is deleted and another one gets its IP on
//! a node in another zone, a report stamped before the reload resolves to
//! the old pod and one stamped after it to the new pod. Nodes, Services and
//! Service CIDRs are those of the latest file. An invalid file never
//! replaces the topology in force.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::endpoint::{Endpoint, EndpointKind, WorkloadKind};

use super::custom::ReloadOutcome;
use super::services::{ServiceEndpoint, ServiceRef, ServiceTopologyBuilder};
use super::watched::{check_yaml_shape, every, WatchedFile};
use super::{
    error_chain, ClusterSnapshot, ClusterSnapshotBuilder, EntryRef, IpPrefix, ResolveError,
    Resolver,
};

/// Largest topology file accepted (16 MiB: about 100k pods).
pub const MAX_TOPOLOGY_BYTES: u64 = 16 * 1024 * 1024;

/// Name of the counter of topology files loaded (the first one included).
pub const LOADS_COUNTER: &str = crate::metrics::TOPOLOGY_LOADS_TOTAL;
/// Name of the counter of rejected topology files (at reload).
pub const REJECTED_COUNTER: &str = crate::metrics::TOPOLOGY_REJECTED_TOTAL;
/// Name of the gauge holding the number of pods listed in the topology in
/// force (hostNetwork ones included).
pub const PODS_GAUGE: &str = crate::metrics::TOPOLOGY_PODS;
/// Name of the gauge holding the number of ended pod address claims kept
/// as tombstones.
pub const TOMBSTONES_GAUGE: &str = crate::metrics::TOPOLOGY_TOMBSTONES;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    zones: Vec<RawZone>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    service_cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: Option<String>,
    region: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    zone: Option<String>,
    region: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default = "yes")]
    agent: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    name: Option<String>,
    namespace: Option<String>,
    node: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    workload: Option<String>,
    workload_kind: Option<WorkloadKind>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    /// Names of pods in the Service's namespace that back it (its ready
    /// endpoints).
    #[serde(default)]
    endpoints: Vec<String>,
    /// `spec.trafficDistribution`, e.g. `PreferClose`.
    traffic_distribution: Option<String>,
    /// True when the Service's EndpointSlices carry zone hints.
    #[serde(default)]
    hints: bool,
}

fn required(
    value: Option<String>,
    entry: &EntryRef,
    field: &'static str,
) -> Result<String, ResolveError> {
    value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ResolveError::MissingField {
            entry: entry.clone(),
            field,
        })
}

/// Tracks which entry claimed which address, to reject duplicates.
#[derive(Default)]
struct Claims(HashMap<IpAddr, EntryRef>);

impl Claims {
    fn parse(&mut self, entry: &EntryRef, ips: &[String]) -> Result<Vec<IpAddr>, ResolveError> {
        let mut out = Vec::with_capacity(ips.len());
        for (i, text) in ips.iter().enumerate() {
            let field = format!("ips[{i}]");
            let ip = text
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| ResolveError::BadAddress {
                    entry: entry.clone(),
                    field: field.clone(),
                    value: text.clone(),
                })?
                .to_canonical();
            if let Some(first) = self.0.get(&ip) {
                return Err(ResolveError::Duplicate {
                    entry: entry.clone(),
                    field,
                    value: ip.to_string(),
                    first: Box::new(first.clone()),
                });
            }
            self.0.insert(ip, entry.clone());
            out.push(ip);
        }
        Ok(out)
    }
}

/// A validated topology document: everything but the pods' own addresses,
/// ready to build from, and those addresses apart, for the claim history.
#[derive(Debug)]
struct Parsed {
    /// Nodes (hostNetwork pods' addresses included), Services, Service
    /// CIDRs and monitored nodes.
    base: ClusterSnapshotBuilder,
    /// The pods' own addresses and their owners (at most one per address).
    pod_ips: Vec<(IpAddr, Arc<Endpoint>)>,
    /// Pods listed, hostNetwork ones included.
    pods: usize,
}

/// Parses and validates a topology document.
fn parse(text: &str, path: &Path) -> Result<Parsed, ResolveError> {
    let raw: RawTopology = if text.trim().is_empty() {
        RawTopology {
            zones: Vec::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            service_cidrs: Vec::new(),
        }
    } else {
        check_yaml_shape(text, path, "static topology")?;
        serde_yaml::from_str(text).map_err(|source| ResolveError::Yaml {
            path: path.to_owned(),
            what: "static topology",
            source: super::YamlError::from_serde(source),
        })?
    };
    let empty: Arc<str> = Arc::from("");
    let mut regions: HashMap<String, (Arc<str>, EntryRef)> = HashMap::new();
    for (index, z) in raw.zones.into_iter().enumerate() {
        let entry = EntryRef::new("zones", index, z.name.as_deref());
        let name = required(z.name, &entry, "name")?;
        if let Some((_, first)) = regions.get(&name) {
            return Err(ResolveError::Duplicate {
                entry: entry.clone(),
                field: "name".to_owned(),
                value: name,
                first: Box::new(first.clone()),
            });
        }
        let region = required(z.region, &entry, "region")?;
        regions.insert(name, (Arc::from(region), entry));
    }

    let mut claims = Claims::default();
    let mut builder = ClusterSnapshotBuilder::default();
    let mut nodes: HashMap<String, (Arc<Endpoint>, EntryRef)> = HashMap::new();
    for (index, n) in raw.nodes.into_iter().enumerate() {
        let entry = EntryRef::new("nodes", index, n.name.as_deref());
        let name = required(n.name, &entry, "name")?;
        if let Some((_, first)) = nodes.get(&name) {
            return Err(ResolveError::Duplicate {
                entry: entry.clone(),
                field: "name".to_owned(),
                value: name,
                first: Box::new(first.clone()),
            });
        }
        let zone = required(n.zone, &entry, "zone")?;
        let region = n
            .region
            .filter(|r| !r.trim().is_empty())
            .map(|r| Arc::from(r.trim()))
            .or_else(|| regions.get(&zone).map(|(r, _)| r.clone()))
            .unwrap_or_else(|| empty.clone());
        let ips = claims.parse(&entry, &n.ips)?;
        let name: Arc<str> = Arc::from(name);
        let endpoint = Arc::new(Endpoint {
            kind: EndpointKind::Node,
            name: name.clone(),
            namespace: empty.clone(),
            workload: name.clone(),
            workload_kind: WorkloadKind::Node,
            node: name.clone(),
            zone: Arc::from(zone),
            region,
        });
        for ip in ips {
            builder.node_ip(ip, endpoint.clone());
        }
        if n.agent {
            builder.monitored_node(name.clone());
        }
        nodes.insert(name.to_string(), (endpoint, entry));
    }

    let pods = raw.pods.len();
    let mut pod_ips = Vec::with_capacity(pods);
    // (namespace, name) -> (zone, addresses), for Service endpoints.
    let mut pod_index: HashMap<(String, String), (Arc<str>, Vec<IpAddr>)> = HashMap::new();
    for (index, p) in raw.pods.into_iter().enumerate() {
        let entry = EntryRef::new("pods", index, p.name.as_deref());
        let name = required(p.name, &entry, "name")?;
        let namespace = required(p.namespace, &entry, "namespace")?;
        let node_name = required(p.node, &entry, "node")?;
        let node = nodes
            .get(&node_name)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| ResolveError::UnknownReference {
                entry: entry.clone(),
                field: "node",
                value: node_name.clone(),
            })?;
        let ips = claims.parse(&entry, &p.ips)?;
        pod_index.insert(
            (namespace.clone(), name.clone()),
            (node.zone.clone(), ips.clone()),
        );
        if p.host_network {
            for ip in ips {
                builder.node_ip(ip, node.clone());
            }
            continue;
        }
        let name: Arc<str> = Arc::from(name);
        let (workload, workload_kind) = match p.workload.filter(|w| !w.trim().is_empty()) {
            Some(w) => (
                Arc::from(w.trim()),
                p.workload_kind.unwrap_or(WorkloadKind::Pod),
            ),
            None => (name.clone(), p.workload_kind.unwrap_or(WorkloadKind::Pod)),
        };
        let endpoint = Arc::new(Endpoint {
            kind: EndpointKind::Pod,
            name,
            namespace: Arc::from(namespace),
            workload,
            workload_kind,
            node: node.name.clone(),
            zone: node.zone.clone(),
            region: node.region.clone(),
        });
        pod_ips.extend(ips.into_iter().map(|ip| (ip, endpoint.clone())));
    }

    let mut topology = ServiceTopologyBuilder::default();
    for (index, s) in raw.services.into_iter().enumerate() {
        let entry = EntryRef::new("services", index, s.name.as_deref());
        let name: Arc<str> = Arc::from(required(s.name, &entry, "name")?);
        let namespace = required(s.namespace, &entry, "namespace")?;
        let ips = claims.parse(&entry, &s.ips)?;
        let service = ServiceRef::new(&namespace, &name);
        topology.service(service.clone(), s.traffic_distribution.as_deref());
        if s.hints {
            topology.hints(service.clone());
        }
        for (i, pod) in s.endpoints.iter().enumerate() {
            let (zone, pod_ips) = pod_index
                .get(&(namespace.clone(), pod.trim().to_owned()))
                .ok_or_else(|| ResolveError::UnknownReference {
                    entry: entry.clone(),
                    field: "endpoints",
                    value: format!("{pod} (endpoints[{i}])"),
                })?;
            topology.endpoint(
                service.clone(),
                ServiceEndpoint {
                    ips: pod_ips.clone(),
                    zone: (!zone.is_empty()).then(|| zone.clone()),
                    ready: true,
                },
            );
        }
        let endpoint = Arc::new(Endpoint {
            kind: EndpointKind::Service,
            name: name.clone(),
            namespace: Arc::from(namespace),
            workload: name,
            workload_kind: WorkloadKind::Service,
            node: empty.clone(),
            zone: empty.clone(),
            region: empty.clone(),
        });
        for ip in ips {
            builder.service_ip(ip, endpoint.clone());
        }
    }

    for (index, text) in raw.service_cidrs.iter().enumerate() {
        let prefix: IpPrefix = text.parse().map_err(|source| ResolveError::BadCidr {
            entry: EntryRef::new("service_cidrs", index, None),
            field: "service_cidrs".to_owned(),
            value: text.clone(),
            source,
        })?;
        builder.service_cidr(prefix);
    }
    builder.service_topology(Arc::new(topology.build()));
    Ok(Parsed {
        base: builder,
        pod_ips,
        pods,
    })
}

/// A pod's hold on an address that has ended: a tombstone.
#[derive(Debug)]
struct EndedClaim {
    ip: IpAddr,
    endpoint: Arc<Endpoint>,
    since: SystemTime,
    until: SystemTime,
}

/// Which pod held which address when, across versions of the file.
#[derive(Debug)]
struct History {
    /// The latest file, less its pods' own addresses.
    base: ClusterSnapshotBuilder,
    /// The latest file's pod addresses: owner, and since when.
    open: HashMap<IpAddr, (Arc<Endpoint>, SystemTime)>,
    /// Claims that ended, kept for `grace` after their end.
    ended: Vec<EndedClaim>,
    /// Pods listed in the latest file.
    pods: usize,
    /// How long an ended claim is kept.
    grace: Duration,
    /// False until the first file is applied.
    applied: bool,
}

impl History {
    fn new(grace: Duration) -> Self {
        History {
            base: ClusterSnapshotBuilder::default(),
            open: HashMap::new(),
            ended: Vec::new(),
            pods: 0,
            grace,
            applied: false,
        }
    }

    /// Makes `parsed` the file in force, as of `now`, and drops the
    /// tombstones that expired by then. A claim on an address whose owner
    /// is unchanged (every field of the endpoint equal) keeps its start; a
    /// claim whose address is gone or whose owner changed ends at `now`; a
    /// new one starts at `now`, or at the epoch for the first file (its pods
    /// may have held their addresses for any time before). Returns the
    /// number of claims started and ended.
    fn apply(&mut self, parsed: Parsed, now: SystemTime) -> (usize, usize) {
        let start = if self.applied {
            now
        } else {
            SystemTime::UNIX_EPOCH
        };
        self.applied = true;
        let (mut started, mut ended) = (0, 0);
        let mut open = HashMap::with_capacity(parsed.pod_ips.len());
        for (ip, endpoint) in parsed.pod_ips {
            let since = match self.open.remove(&ip) {
                Some((old, since)) if old == endpoint => since,
                previous => {
                    if let Some((old, since)) = previous {
                        self.end(ip, old, since, now);
                        ended += 1;
                    }
                    started += 1;
                    start
                }
            };
            open.insert(ip, (endpoint, since));
        }
        for (ip, (old, since)) in std::mem::replace(&mut self.open, open) {
            self.end(ip, old, since, now);
            ended += 1;
        }
        self.base = parsed.base;
        self.pods = parsed.pods;
        self.prune(now);
        (started, ended)
    }

    fn end(&mut self, ip: IpAddr, endpoint: Arc<Endpoint>, since: SystemTime, now: SystemTime) {
        self.ended.push(EndedClaim {
            ip,
            endpoint,
            since,
            // A clock stepped back must not end a claim before it began.
            until: now.max(since),
        });
    }

    /// Drops the tombstones whose grace ran out by `now` (as the Kubernetes
    /// backend does: kept while `until + grace > now`). Returns how many.
    fn prune(&mut self, now: SystemTime) -> usize {
        let before = self.ended.len();
        let grace = self.grace;
        // An end so far ahead that adding the grace overflows never expires.
        self.ended
            .retain(|c| c.until.checked_add(grace).is_none_or(|t| t > now));
        before - self.ended.len()
    }

    fn snapshot(&self) -> ClusterSnapshot {
        let mut b = self.base.clone();
        for (ip, (endpoint, since)) in &self.open {
            b.pod_ip(*ip, endpoint.clone(), *since, None);
        }
        for c in &self.ended {
            b.pod_ip(c.ip, c.endpoint.clone(), c.since, Some(c.until));
        }
        b.build()
    }

    fn record_gauges(&self) {
        metrics::gauge!(PODS_GAUGE).set(self.pods as f64);
        metrics::gauge!(TOMBSTONES_GAUGE).set(self.ended.len() as f64);
    }
}

/// Limits and timing for a file-backed [`StaticResolver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticTopologyOptions {
    /// Files larger than this are rejected. Default
    /// [`MAX_TOPOLOGY_BYTES`].
    pub max_bytes: u64,
    /// How often [`StaticResolver::watch`] checks the file. Default 10 s;
    /// anything under 100 ms counts as 100 ms.
    pub poll_interval: Duration,
    /// How long a pod's address still resolves to it after a reload removed
    /// the pod (or moved the address to another owner), for late reports.
    /// Default 2 minutes, as for the Kubernetes backend.
    pub tombstone_grace: Duration,
}

impl Default for StaticTopologyOptions {
    fn default() -> Self {
        StaticTopologyOptions {
            max_bytes: MAX_TOPOLOGY_BYTES,
            poll_interval: Duration::from_secs(10),
            tombstone_grace: Duration::from_secs(120),
        }
    }
}

#[derive(Debug)]
struct TopologySource {
    file: WatchedFile,
    poll_interval: Duration,
    history: Mutex<History>,
}

impl TopologySource {
    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves from a static topology (see the module docs for the format),
/// optionally backed by a file that is reloaded when it changes. Lookups
/// read the snapshot in force without locking; a reload swaps in a new one
/// atomically, and only if the new file is valid.
#[derive(Debug)]
pub struct StaticResolver {
    snapshot: ArcSwap<ClusterSnapshot>,
    source: Option<TopologySource>,
}

impl StaticResolver {
    /// Parses a topology document. Not file-backed:
    /// [`reload`](Self::reload) does nothing.
    ///
    /// # Errors
    ///
    /// [`ResolveError`] naming the entry and the field that is wrong.
    pub fn from_yaml(text: &str) -> Result<Self, ResolveError> {
        let parsed = parse(text, Path::new("<inline>"))?;
        let mut history = History::new(Duration::ZERO);
        history.apply(parsed, SystemTime::UNIX_EPOCH);
        Ok(StaticResolver::from_snapshot(history.snapshot()))
    }

    /// Loads a topology file. It is reloaded by [`reload`](Self::reload)
    /// and [`watch`](Self::watch); the pods of this first version hold their
    /// addresses since the epoch.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is too large, or is invalid.
    pub fn load(
        path: impl Into<PathBuf>,
        options: StaticTopologyOptions,
    ) -> Result<Self, ResolveError> {
        let this = StaticResolver {
            snapshot: ArcSwap::from_pointee(ClusterSnapshot::default()),
            source: Some(TopologySource {
                file: WatchedFile::new(path.into(), options.max_bytes),
                poll_interval: options.poll_interval,
                history: Mutex::new(History::new(options.tombstone_grace)),
            }),
        };
        this.try_reload_at(SystemTime::now())?;
        Ok(this)
    }

    /// Resolves from a snapshot built in code (with a
    /// [`ClusterSnapshotBuilder`], or taken from a
    /// [`KubeIndex`](crate::resolve::kube::KubeIndex)). Not file-backed.
    pub fn from_snapshot(snapshot: ClusterSnapshot) -> Self {
        StaticResolver {
            snapshot: ArcSwap::from_pointee(snapshot),
            source: None,
        }
    }

    /// The file it was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.source.as_ref().map(|s| s.file.path())
    }

    /// The snapshot currently in force.
    pub fn snapshot(&self) -> Arc<ClusterSnapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the file if it changed since the last attempt. A valid file
    /// replaces the snapshot in force (pods' claims carried over by time,
    /// see the module docs), is counted in `netscope_topology_loads_total`
    /// and logs "Loaded static topology". An invalid one is logged, counted
    /// in `netscope_topology_rejected_total`, and the previous topology
    /// stays. A resolver that is not backed by a file always returns
    /// [`ReloadOutcome::Unchanged`].
    ///
    /// # Errors
    ///
    /// Why the file was rejected (after it was logged and counted).
    pub fn reload(&self) -> Result<ReloadOutcome, ResolveError> {
        self.reload_at(SystemTime::now())
    }

    fn reload_at(&self, now: SystemTime) -> Result<ReloadOutcome, ResolveError> {
        let result = self.try_reload_at(now);
        if let (Err(err), Some(source)) = (&result, &self.source) {
            metrics::counter!(REJECTED_COUNTER).increment(1);
            tracing::warn!(
                path = ?source.file.path(),
                error = ?error_chain(err),
                kept_addresses = self.snapshot.load().address_count(),
                "Rejected static topology file; keeping the previous topology"
            );
        }
        result
    }

    fn try_reload_at(&self, now: SystemTime) -> Result<ReloadOutcome, ResolveError> {
        let Some(source) = &self.source else {
            return Ok(ReloadOutcome::Unchanged);
        };
        let path = source.file.path();
        let loaded = source.file.if_changed(|text| {
            let parsed = parse(text, path)?;
            let mut history = source.history();
            let (claims_started, claims_ended) = history.apply(parsed, now);
            let snapshot = history.snapshot();
            let (pods, addresses, tombstones) =
                (history.pods, snapshot.address_count(), history.ended.len());
            self.snapshot.store(Arc::new(snapshot));
            metrics::counter!(LOADS_COUNTER).increment(1);
            history.record_gauges();
            tracing::info!(
                path = ?path,
                pods,
                addresses,
                claims_started,
                claims_ended,
                tombstones,
                "Loaded static topology"
            );
            Ok(ReloadOutcome::TopologyLoaded {
                pods,
                addresses,
                claims_started,
                claims_ended,
                tombstones,
            })
        })?;
        Ok(loaded.unwrap_or(ReloadOutcome::Unchanged))
    }

    /// Drops the tombstones whose grace ran out by `now` and, if any did,
    /// swaps in a snapshot without them. Returns whether it did.
    fn expire_at(&self, now: SystemTime) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let mut history = source.history();
        let expired = history.prune(now);
        if expired == 0 {
            return false;
        }
        self.snapshot.store(Arc::new(history.snapshot()));
        history.record_gauges();
        tracing::debug!(
            expired,
            tombstones = history.ended.len(),
            "Expired static topology tombstones"
        );
        true
    }

    /// The driver that keeps a file-backed topology fresh: every
    /// [`poll_interval`](StaticTopologyOptions::poll_interval) it reloads
    /// the file if it changed, and drops the tombstones whose grace ran out
    /// even if it did not. Polling (rather than inotify) follows the symlink
    /// swap with which the kubelet updates a mounted ConfigMap. Runs until
    /// dropped; spawn it on a Tokio runtime.
    pub async fn watch(self: Arc<Self>) {
        let Some(interval) = self.source.as_ref().map(|s| s.poll_interval) else {
            return;
        };
        every(interval, self, "static topology", |this| {
            let now = SystemTime::now();
            // Errors are logged and counted inside; the old snapshot stays.
            let _ = this.reload_at(now);
            this.expire_at(now);
        })
        .await;
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Arc<Endpoint> {
        self.snapshot.load().resolve(ip, observed_at)
    }

    fn try_resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Option<Arc<Endpoint>> {
        self.snapshot.load().lookup(ip, observed_at).cloned()
    }

    /// Nodes listed in the file, unless marked `agent: false`.
    fn is_monitored_node(&self, node: &str) -> bool {
        self.snapshot.load().is_monitored_node(node)
    }

    /// Always true: the file is loaded whole at construction.
    fn is_synced(&self) -> bool {
        true
    }

    fn service_cidrs(&self) -> Vec<IpPrefix> {
        self.snapshot.load().service_cidrs().to_vec()
    }

    /// Pods listed in the file in force (not those a reload removed).
    fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.snapshot.load().has_pod(namespace, name)
    }

    /// The `services:` section of the file in force.
    fn service_topology(&self) -> Option<Arc<super::ServiceTopology>> {
        Some(self.snapshot.load().service_topology().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{error_chain, MAX_YAML_DEPTH};

    const TOPOLOGY: &str = r#"
zones:
  - {name: us-west-2a, region: us-west-2}
  - {name: us-west-2b, region: us-west-2}
nodes:
  - {name: node-a, zone: us-west-2a, ips: [192.168.10.1]}
  - {name: node-b, zone: us-west-2b, region: us-west-2-override, ips: [192.168.10.2], agent: false}
pods:
  - name: web-1
    namespace: shop
    node: node-a
    ips: [10.0.1.5, "fd00:1::5"]
    workload: web
    workload_kind: Deployment
  - {name: solo, namespace: shop, node: node-b, ips: [10.0.2.5]}
  - {name: cni, namespace: kube-system, node: node-b, ips: [192.168.10.20], host_network: true}
services:
  - {name: api, namespace: shop, ips: [10.96.0.10, "fd00:96::10"]}
service_cidrs: [10.96.0.0/12]
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn topo() -> StaticResolver {
        StaticResolver::from_yaml(TOPOLOGY).unwrap_or_else(|e| panic!("{}", error_chain(&e)))
    }

    #[test]
    fn pods_nodes_and_services_resolve() {
        let r = topo();
        let t = SystemTime::now();
        for addr in ["10.0.1.5", "fd00:1::5"] {
            let web = r.resolve(ip(addr), t);
            assert_eq!(web.kind, EndpointKind::Pod);
            assert_eq!((&*web.name, &*web.namespace), ("web-1", "shop"));
            assert_eq!(
                (&*web.workload, web.workload_kind),
                ("web", WorkloadKind::Deployment)
            );
            assert_eq!(
                (&*web.node, &*web.zone, &*web.region),
                ("node-a", "us-west-2a", "us-west-2")
            );
        }
        let solo = r.resolve(ip("10.0.2.5"), t);
        assert_eq!(
            (&*solo.workload, solo.workload_kind),
            ("solo", WorkloadKind::Pod)
        );
        assert_eq!(
            (&*solo.zone, &*solo.region),
            ("us-west-2b", "us-west-2-override")
        );
        let node = r.resolve(ip("192.168.10.1"), t);
        assert_eq!(
            (node.kind, &*node.name, &*node.zone),
            (EndpointKind::Node, "node-a", "us-west-2a")
        );
        let host = r.resolve(ip("192.168.10.20"), t);
        assert_eq!((host.kind, &*host.name), (EndpointKind::Node, "node-b"));
        let svc = r.resolve(ip("fd00:96::10"), t);
        assert_eq!(
            (svc.kind, &*svc.name, &*svc.namespace),
            (EndpointKind::Service, "api", "shop")
        );
        let unknown_svc = r.resolve(ip("10.96.3.3"), t);
        assert_eq!(
            (unknown_svc.kind, &*unknown_svc.name),
            (EndpointKind::Service, Endpoint::UNKNOWN)
        );
        assert_eq!(r.resolve(ip("8.8.8.8"), t).kind, EndpointKind::External);
        assert_eq!(
            r.service_cidrs(),
            vec!["10.96.0.0/12".parse().unwrap_or_else(|e| panic!("{e}"))]
        );
    }

    #[test]
    fn agent_nodes_default_to_all() {
        let r = topo();
        assert!(r.is_monitored_node("node-a"));
        assert!(!r.is_monitored_node("node-b"), "agent: false");
        assert!(!r.is_monitored_node("node-z"), "not in the file");
        assert!(r.is_synced());
    }

    fn err_of(text: &str) -> String {
        match StaticResolver::from_yaml(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => error_chain(&e),
        }
    }

    #[test]
    fn invalid_topologies_name_entry_and_field() {
        let e = err_of("nodes:\n  - {name: a, ips: [10.0.0.1]}\n");
        assert!(e.contains("nodes[0] (a): field `zone`"), "{e}");
        let e = err_of("nodes:\n  - {name: a, zone: z}\npods:\n  - {name: p, namespace: n, node: b, ips: [10.0.0.1]}\n");
        assert!(
            e.contains("pods[0] (p): field `node`: \"b\" is not defined"),
            "{e}"
        );
        let e = err_of("nodes:\n  - {name: a, zone: z, ips: [10.0.0.1]}\npods:\n  - {name: p, namespace: n, node: a, ips: [10.0.0.1]}\n");
        assert!(
            e.contains("pods[0] (p): field `ips[0]`: 10.0.0.1 is already claimed by nodes[0] (a)"),
            "{e}"
        );
        let e = err_of("pods:\n  - {name: p, namespace: n, node: a, ips: [10.0.0.x]}\nnodes: []\n");
        assert!(
            e.contains("pods[0] (p): field `node`") || e.contains("ips[0]"),
            "{e}"
        );
        let e = err_of("nodes:\n  - {name: a, zone: z, ip: [10.0.0.1]}\n");
        assert!(e.contains("unknown field `ip`"), "{e}");
        let e = err_of("service_cidrs: [10.96.0.1/12]\n");
        assert!(
            e.contains("service_cidrs[0]") && e.contains("host bits"),
            "{e}"
        );
        let e = err_of("nodes:\n  - {name: a, zone: z}\n  - {name: a, zone: y}\n");
        assert!(e.contains("nodes[1] (a): field `name`"), "{e}");
    }

    #[test]
    fn services_list_their_endpoints_per_zone() {
        let r = StaticResolver::from_yaml(
            "nodes:\n  - {name: a, zone: za, ips: [192.168.0.1]}\n  - {name: b, zone: zb}\n\
             pods:\n  - {name: p1, namespace: n, node: a, ips: [10.0.1.1]}\n\
             \x20 - {name: p2, namespace: n, node: b, ips: [10.0.2.1, \"fd00::2\"]}\n\
             \x20 - {name: p3, namespace: n, node: b, ips: [10.0.2.2]}\n\
             services:\n  - {name: api, namespace: n, ips: [10.96.0.1], endpoints: [p1, p2, p3], traffic_distribution: PreferClose}\n\
             \x20 - {name: old, namespace: n, endpoints: [p3], hints: true}\n\
             \x20 - {name: none, namespace: n}\n",
        )
        .expect("valid topology");
        let snap = r.snapshot();
        let t = snap.service_topology();
        assert_eq!(t.len(), 3);
        let api = t.get(&ServiceRef::new("n", "api")).expect("api");
        assert_eq!(
            api.ready_by_zone
                .iter()
                .map(|(z, n)| (&**z, *n))
                .collect::<Vec<_>>(),
            [("za", 1), ("zb", 2)]
        );
        assert_eq!(api.traffic_distribution.as_deref(), Some("PreferClose"));
        assert!(t.get(&ServiceRef::new("n", "old")).expect("old").hints);
        assert!(!t
            .get(&ServiceRef::new("n", "none"))
            .expect("none")
            .routes_in_zone());
        let of = |a: &str| -> Vec<String> {
            t.services_of_endpoint(ip(a))
                .map(|s| s.service.to_string())
                .collect()
        };
        assert_eq!(of("fd00::2"), ["n/api"]);
        assert_eq!(of("10.0.2.2"), ["n/api", "n/old"]);
        assert!(of("10.96.0.1").is_empty(), "a ClusterIP is no endpoint");

        let e = err_of(
            "nodes:\n  - {name: a, zone: z}\npods:\n  - {name: p, namespace: other, node: a}\n\
             services:\n  - {name: s, namespace: n, endpoints: [p]}\n",
        );
        assert!(e.contains("services[0] (s): field `endpoints`"), "{e}");
    }

    #[test]
    fn duplicate_zone_names_name_both_entries() {
        let e = err_of(
            "zones:\n  - {name: z1, region: r1}\n  - {name: z2, region: r1}\n  - {name: z1, region: r2}\n",
        );
        assert!(
            e.contains("zones[2] (z1): field `name`: z1 is already claimed by zones[0] (z1)"),
            "{e}"
        );
    }

    /// 200 KB (and more) of nesting, flow and block, is refused by the
    /// linear pre-pass; serde_yaml alone took seconds to minutes on it.
    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let n = 100_000;
        let deep = [
            format!("pods: {}{}", "[".repeat(n), "]".repeat(n)),
            format!("nodes: {}{}", "{a: ".repeat(n / 2), "}".repeat(n / 2)),
            format!("{}{}", "[".repeat(n), "]".repeat(n)),
            (0..200).map(|i| format!("{}- \n", " ".repeat(i))).collect(),
            (0..200).map(|i| format!("{}a:\n", " ".repeat(i))).collect(),
        ];
        for text in &deep {
            match StaticResolver::from_yaml(text) {
                Err(ResolveError::TooDeep { max_depth, .. }) => {
                    assert_eq!(max_depth, MAX_YAML_DEPTH);
                }
                Err(other) => panic!("refused, but not as too deep: {}", error_chain(&other)),
                Ok(_) => panic!("accepted {} bytes of nesting", text.len()),
            }
            let e = err_of(text);
            assert!(
                e.contains(
                    "static topology file rejected before parsing: nested deeper than 32 levels"
                ),
                "{e}"
            );
        }
        // At the limit's edge a document is still parsed (and refused for
        // its shape by serde_yaml, with serde_yaml's message).
        let e = err_of(&format!("pods: {}{}", "[".repeat(20), "]".repeat(20)));
        assert!(e.contains("not a valid static topology file"), "{e}");
    }

    #[test]
    fn tombstone_grace_that_overflows_time_never_expires() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("topology.yaml");
        let nodes = "nodes:\n  - {name: a, zone: z}\n";
        std::fs::write(
            &path,
            format!("{nodes}pods:\n  - {{name: p, namespace: n, node: a, ips: [10.0.0.1]}}\n"),
        )
        .unwrap_or_else(|e| panic!("write: {e}"));
        let r = StaticResolver::load(
            &path,
            StaticTopologyOptions {
                tombstone_grace: Duration::MAX,
                ..StaticTopologyOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        crate::resolve::watched::testing::write(&path, nodes);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        // Before: `until + grace` panicked on overflow here.
        assert!(r.reload_at(now).is_ok());
        assert!(!r.expire_at(now + Duration::from_secs(3600 * 24 * 365)));
        assert_eq!(&*r.resolve(ip("10.0.0.1"), now).name, "p");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("topology.yaml");
        std::fs::write(&path, TOPOLOGY).unwrap_or_else(|e| panic!("write: {e}"));
        let r = StaticResolver::load(&path, StaticTopologyOptions::default())
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        assert_eq!(&*r.resolve(ip("10.0.1.5"), SystemTime::now()).name, "web-1");
        assert_eq!(r.path(), Some(path.as_path()));
        assert!(matches!(
            StaticResolver::load(
                dir.path().join("missing.yaml"),
                StaticTopologyOptions::default()
            ),
            Err(ResolveError::Read { .. })
        ));
    }

    // ---- reloading ----

    use metrics_util::debugging::DebuggingRecorder;

    use crate::resolve::watched::testing::{counter, gauge, write};

    const NODES: &str = "nodes:
  - {name: node-a, zone: zone-a, ips: [192.168.0.1]}
  - {name: node-b, zone: zone-b, ips: [192.168.0.2]}
";

    const GRACE: Duration = Duration::from_secs(120);

    /// Seconds after a fixed time, later than any real start-up in these
    /// tests.
    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000 + secs)
    }

    fn with_pods(pods: &str) -> String {
        format!("{NODES}pods:\n{pods}")
    }

    /// A resolver loaded from `text` in a fresh directory (kept alive by the
    /// returned guard).
    fn loaded(text: &str) -> (tempfile::TempDir, PathBuf, StaticResolver) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("topology.yaml");
        write(&path, text);
        let r = StaticResolver::load(
            &path,
            StaticTopologyOptions {
                tombstone_grace: GRACE,
                ..StaticTopologyOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        (dir, path, r)
    }

    /// Rewrites the file and reloads it as of `now`.
    fn rewrite(r: &StaticResolver, path: &Path, text: &str, now: SystemTime) -> ReloadOutcome {
        write(path, text);
        r.reload_at(now)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
    }

    /// (name, node, zone) of what `addr` resolved to at `t`.
    fn owner(r: &StaticResolver, addr: &str, t: SystemTime) -> (String, String, String) {
        let e = r.resolve(ip(addr), t);
        (e.name.to_string(), e.node.to_string(), e.zone.to_string())
    }

    fn who(name: &str, node: &str, zone: &str) -> (String, String, String) {
        (name.to_owned(), node.to_owned(), zone.to_owned())
    }

    /// Rewrites the file and reloads it as of `now`: the claims started and
    /// ended, and the tombstones kept.
    fn changed(
        r: &StaticResolver,
        path: &Path,
        text: &str,
        now: SystemTime,
    ) -> (usize, usize, usize) {
        match rewrite(r, path, text, now) {
            ReloadOutcome::TopologyLoaded {
                claims_started,
                claims_ended,
                tombstones,
                ..
            } => (claims_started, claims_ended, tombstones),
            other => panic!("not a topology load: {other:?}"),
        }
    }

    #[test]
    fn reused_ip_on_another_zone_resolves_by_observation_time() {
        let before = with_pods("  - {name: old, namespace: shop, node: node-a, ips: [10.0.0.7]}\n");
        let after = with_pods("  - {name: new, namespace: shop, node: node-b, ips: [10.0.0.7]}\n");
        let (_dir, path, r) = loaded(&before);
        assert_eq!(changed(&r, &path, &after, at(100)), (1, 1, 1));
        let old = who("old", "node-a", "zone-a");
        let new = who("new", "node-b", "zone-b");
        assert_eq!(owner(&r, "10.0.0.7", SystemTime::UNIX_EPOCH), old);
        assert_eq!(owner(&r, "10.0.0.7", at(0)), old);
        assert_eq!(owner(&r, "10.0.0.7", at(99)), old);
        assert_eq!(owner(&r, "10.0.0.7", at(100)), new);
        assert_eq!(owner(&r, "10.0.0.7", at(100_000)), new);
        // After the grace the old pod is forgotten, whatever the time.
        assert!(!r.expire_at(at(219)));
        assert!(r.expire_at(at(220)));
        assert_eq!(owner(&r, "10.0.0.7", at(0)), new);
        assert_eq!(r.snapshot().ended_claim_count(), 0);
    }

    #[test]
    fn deleted_pod_is_a_tombstone_until_the_grace_passes() {
        let stays = "  - {name: stays, namespace: shop, node: node-b, ips: [10.0.0.8]}\n";
        let (_dir, path, r) = loaded(&with_pods(&format!(
            "  - {{name: gone, namespace: shop, node: node-a, ips: [10.0.0.7]}}\n{stays}"
        )));
        assert!(r.has_pod("shop", "gone"));
        assert_eq!(changed(&r, &path, &with_pods(stays), at(100)), (0, 1, 1));
        assert!(!r.has_pod("shop", "gone"), "a tombstone is no live pod");
        assert!(r.has_pod("shop", "stays"));
        let gone = who("gone", "node-a", "zone-a");
        // Late reports, even stamped after the deletion, still resolve.
        assert_eq!(owner(&r, "10.0.0.7", at(50)), gone);
        assert_eq!(owner(&r, "10.0.0.7", at(200)), gone);
        assert!(!r.expire_at(at(100) + GRACE - Duration::from_secs(1)));
        assert_eq!(owner(&r, "10.0.0.7", at(200)), gone);
        assert!(r.expire_at(at(100) + GRACE));
        assert_eq!(
            r.resolve(ip("10.0.0.7"), at(50)).kind,
            EndpointKind::External
        );
        assert_eq!(owner(&r, "10.0.0.8", at(50)).0, "stays");
        assert!(!r.expire_at(at(10_000)), "nothing left to expire");

        // A reload also drops expired tombstones.
        assert_eq!(
            changed(&r, &path, &format!("{NODES}pods: []\n"), at(1_000)),
            (0, 1, 1)
        );
        assert_eq!(changed(&r, &path, NODES, at(1_000) + GRACE), (0, 0, 0));
        assert_eq!(
            r.resolve(ip("10.0.0.8"), at(1_000)).kind,
            EndpointKind::External
        );
    }

    #[test]
    fn unchanged_pods_keep_their_claim() {
        let (_dir, path, r) = loaded(&with_pods(
            "  - {name: web, namespace: shop, node: node-a, ips: [10.0.0.8]}\n  - {name: p, namespace: shop, node: node-a, ips: [10.0.0.7]}\n",
        ));
        let web = "  - {name: web, namespace: shop, node: node-a, ips: [10.0.0.8]}\n";
        let q = "  - {name: q, namespace: shop, node: node-b, ips: [10.0.0.7]}\n";
        // web unchanged; p replaced by q at 100.
        assert_eq!(
            changed(&r, &path, &with_pods(&format!("{web}{q}")), at(100)),
            (1, 1, 1)
        );
        // Stamped long before the reload, web's traffic is still web's: its
        // claim still runs from the epoch.
        assert_eq!(owner(&r, "10.0.0.8", at(0)).0, "web");
        assert_eq!(owner(&r, "10.0.0.8", SystemTime::UNIX_EPOCH).0, "web");
        {
            let history = r.source.as_ref().map(|s| s.history());
            let since = history.as_ref().and_then(|h| h.open.get(&ip("10.0.0.8")));
            assert_eq!(since.map(|(_, s)| *s), Some(SystemTime::UNIX_EPOCH));
        }
        // Another change elsewhere at 200 leaves q's claim from 100 alone:
        // a report at 150 is q's, not the tombstone p's.
        assert_eq!(
            changed(
                &r,
                &path,
                &with_pods(&format!(
                    "{web}{q}  - {{name: r, namespace: shop, node: node-a, ips: [10.0.0.9]}}\n"
                )),
                at(200),
            ),
            (1, 0, 1)
        );
        assert_eq!(owner(&r, "10.0.0.7", at(150)).0, "q");
        assert_eq!(owner(&r, "10.0.0.7", at(50)).0, "p");
        // Reordering the file and adding comments changes no claim.
        assert_eq!(
            changed(
            &r,
            &path,
            &format!(
                "# reordered\n{NODES}pods:\n  - {{name: r, namespace: shop, node: node-a, ips: [10.0.0.9]}}\n{q}{web}"
            ),
            at(300),
        ),
            // (p's tombstone, ended at 100, has expired by 300.)
            (0, 0, 0)
        );
    }

    #[test]
    fn pod_moved_to_another_node_is_a_new_claim() {
        let (_dir, path, r) = loaded(&with_pods(
            "  - {name: web, namespace: shop, node: node-a, ips: [10.0.0.7, \"fd00::7\"]}\n",
        ));
        let moved = with_pods(
            "  - {name: web, namespace: shop, node: node-b, ips: [10.0.0.7, \"fd00::7\"]}\n",
        );
        // One claim per address.
        assert_eq!(changed(&r, &path, &moved, at(100)), (2, 2, 2));
        for addr in ["10.0.0.7", "fd00::7"] {
            assert_eq!(owner(&r, addr, at(99)), who("web", "node-a", "zone-a"));
            assert_eq!(owner(&r, addr, at(100)), who("web", "node-b", "zone-b"));
        }
        // So is a change of workload (any field of the endpoint).
        let deployment = with_pods(
            "  - {name: web, namespace: shop, node: node-b, ips: [10.0.0.7, \"fd00::7\"], workload: web, workload_kind: Deployment}\n",
        );
        assert_eq!(changed(&r, &path, &deployment, at(200)), (2, 2, 4));
        assert_eq!(
            r.resolve(ip("10.0.0.7"), at(150)).workload_kind,
            WorkloadKind::Pod
        );
        assert_eq!(
            r.resolve(ip("10.0.0.7"), at(250)).workload_kind,
            WorkloadKind::Deployment
        );
    }

    #[test]
    fn bad_reload_keeps_the_previous_topology_and_is_counted() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let (_dir, path, r) = loaded(TOPOLOGY);
            assert_eq!(r.reload_at(at(1)).ok(), Some(ReloadOutcome::Unchanged));
            // The same content, written anew, is unchanged too.
            write(&path, TOPOLOGY);
            assert_eq!(r.reload_at(at(2)).ok(), Some(ReloadOutcome::Unchanged));
            for (bad, want) in [
                ("pods: [", "not a valid static topology file"),
                (
                    "nodes:\n  - {name: a, zone: z}\npods:\n  - {name: p, namespace: n, node: b, ips: [10.0.0.1]}\n",
                    "pods[0] (p): field `node`",
                ),
            ] {
                write(&path, bad);
                let err = match r.reload_at(at(3)) {
                    Ok(o) => panic!("{bad:?} accepted: {o:?}"),
                    Err(e) => error_chain(&e),
                };
                assert!(err.contains(want), "{err}");
                assert_eq!(&*r.resolve(ip("10.0.1.5"), at(3)).name, "web-1");
                assert!(r.is_monitored_node("node-a"));
                // The same bad file is not re-reported on every poll.
                assert_eq!(r.reload_at(at(4)).ok(), Some(ReloadOutcome::Unchanged));
            }
            std::fs::remove_file(&path).unwrap_or_else(|e| panic!("rm: {e}"));
            assert!(matches!(r.reload_at(at(5)), Err(ResolveError::Read { .. })));
            assert_eq!(&*r.resolve(ip("10.0.1.5"), at(5)).name, "web-1");

            let snap = snapshotter.snapshot().into_vec();
            assert_eq!(counter(&snap, REJECTED_COUNTER), 3);
            assert_eq!(counter(&snap, LOADS_COUNTER), 1);
        });
    }

    #[test]
    fn loads_pods_and_tombstones_are_recorded() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let (_dir, path, r) = loaded(TOPOLOGY);
            let snap = snapshotter.snapshot().into_vec();
            assert_eq!(counter(&snap, LOADS_COUNTER), 1);
            // web-1, solo and the hostNetwork cni pod.
            assert_eq!(gauge(&snap, PODS_GAUGE), 3.0);
            assert_eq!(gauge(&snap, TOMBSTONES_GAUGE), 0.0);

            // web-1 (two addresses) goes.
            let without_web = TOPOLOGY.replace(
                "  - name: web-1\n    namespace: shop\n    node: node-a\n    ips: [10.0.1.5, \"fd00:1::5\"]\n    workload: web\n    workload_kind: Deployment\n",
                "",
            );
            assert_ne!(without_web, TOPOLOGY);
            let outcome = rewrite(&r, &path, &without_web, at(100));
            assert_eq!(
                outcome,
                ReloadOutcome::TopologyLoaded {
                    pods: 2,
                    addresses: r.snapshot().address_count(),
                    claims_started: 0,
                    claims_ended: 2,
                    tombstones: 2,
                }
            );
            // (A debugging snapshot takes counters as deltas, and resets
            // gauges.)
            let snap = snapshotter.snapshot().into_vec();
            assert_eq!(counter(&snap, LOADS_COUNTER), 1);
            assert_eq!(gauge(&snap, PODS_GAUGE), 2.0);
            assert_eq!(gauge(&snap, TOMBSTONES_GAUGE), 2.0);

            assert!(r.expire_at(at(100) + GRACE));
            let snap = snapshotter.snapshot().into_vec();
            assert_eq!(gauge(&snap, PODS_GAUGE), 2.0, "gauges set again");
            assert_eq!(gauge(&snap, TOMBSTONES_GAUGE), 0.0);
            assert_eq!(counter(&snap, LOADS_COUNTER), 0, "expiry is no load");
            assert_eq!(counter(&snap, REJECTED_COUNTER), 0);
        });
    }

    #[test]
    fn inline_and_built_resolvers_do_not_reload() {
        let r = topo();
        assert_eq!(r.reload().ok(), Some(ReloadOutcome::Unchanged));
        assert!(!r.expire_at(at(0)));
        assert_eq!(r.path(), None);
    }
}
