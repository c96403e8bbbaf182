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
mod tests;
