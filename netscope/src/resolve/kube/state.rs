//! The Kubernetes backend's mutable index: watcher events in, compact
//! records kept, [`ClusterSnapshot`]s out. No I/O and no clock: every
//! function that needs the time takes it as an argument.
//!
//! Why this file is long (about 980 lines): the appliers of the six watched
//! kinds (pods, nodes, Services, EndpointSlices, ServiceCIDRs and relists)
//! all write one index and its dirty flags, and the snapshot reads all of
//! them; the tests are in `tests.rs`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::core::Selector;
use kube::runtime::watcher::Event;

use crate::endpoint::{Endpoint, EndpointKind, WorkloadKind};
use crate::resolve::services::{ServiceEndpoint, ServiceRef, ServiceTopologyBuilder};
use crate::resolve::{ClusterSnapshot, ClusterSnapshotBuilder, IpPrefix, ResolveError};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::workload::{selects, workload_of, POD_TEMPLATE_HASH};

/// Zone label, and the deprecated one it falls back to.
pub(crate) const ZONE_LABELS: [&str; 2] = [
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];
/// Region label, and the deprecated one it falls back to.
pub(crate) const REGION_LABELS: [&str; 2] = [
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/region",
];

/// The resource kinds the backend watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Pod,
    Node,
    Service,
    ServiceCidr,
    EndpointSlice,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::Service => "services",
            Kind::ServiceCidr => "servicecidrs",
            Kind::EndpointSlice => "endpointslices",
        }
    }
}

/// Shares one allocation per distinct string (namespaces, node names,
/// zones), so 10k pods in 20 namespaces hold 20 namespace strings.
#[derive(Debug, Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.0.get(s) {
            return found.clone();
        }
        let owned: Arc<str> = Arc::from(s);
        self.0.insert(owned.clone());
        owned
    }

    /// Drops strings nothing else holds any more.
    fn sweep(&mut self) {
        self.0.retain(|s| Arc::strong_count(s) > 1);
    }
}

/// What is kept of a pod: about 200 bytes plus its names.
#[derive(Debug, Clone, PartialEq)]
struct PodRecord {
    endpoint: Arc<Endpoint>,
    ips: Box<[IpAddr]>,
    host_network: bool,
    /// When the pod started to hold its IPs (`status.startTime`, else the
    /// creation time, else when first seen).
    since: SystemTime,
    /// When the pod stopped holding them (reached Succeeded or Failed).
    ended: Option<SystemTime>,
    /// A Running, Ready pod matching the agent selector.
    agent_ready: bool,
}

/// A deleted pod, kept so that late reports still resolve.
#[derive(Debug, Clone)]
struct Tombstone {
    endpoint: Arc<Endpoint>,
    ips: Box<[IpAddr]>,
    since: SystemTime,
    until: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
struct NodeRecord {
    endpoint: Arc<Endpoint>,
    ips: Box<[IpAddr]>,
}

#[derive(Debug, Clone, PartialEq)]
struct ServiceRecord {
    endpoint: Arc<Endpoint>,
    ips: Box<[IpAddr]>,
    /// `spec.trafficDistribution`.
    traffic_distribution: Option<Arc<str>>,
}

/// What one EndpointSlice says about its Service's endpoints.
#[derive(Debug, Clone, PartialEq)]
struct SliceRecord {
    service: ServiceRef,
    endpoints: Vec<SliceEndpoint>,
    /// Some endpoint carries zone hints.
    hints: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct SliceEndpoint {
    ips: Box<[IpAddr]>,
    /// The endpoint's own `zone`; else found through `node` at snapshot time.
    zone: Option<Arc<str>>,
    node: Option<Arc<str>>,
    ready: bool,
}

/// The label naming an EndpointSlice's Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Tracks one resource's relist: which keys the new list contained.
#[derive(Debug, Default)]
struct Relist {
    listing: Option<HashSet<Box<str>>>,
    synced: bool,
}

impl Relist {
    fn init(&mut self) {
        self.listing = Some(HashSet::new());
    }

    fn seen(&mut self, key: &str) {
        if let Some(l) = &mut self.listing {
            l.insert(key.into());
        }
    }

    /// The keys of `existing` that the finished list did not contain.
    fn done<'a, V: 'a>(
        &mut self,
        existing: impl Iterator<Item = (&'a Box<str>, &'a V)>,
    ) -> Vec<Box<str>> {
        self.synced = true;
        match self.listing.take() {
            Some(listed) => existing
                .filter(|(k, _)| !listed.contains(&***k))
                .map(|(k, _)| k.clone())
                .collect(),
            None => Vec::new(),
        }
    }
}

/// Settings of the index.
#[derive(Debug, Clone)]
pub(crate) struct StateConfig {
    pub agent_selector: Selector,
    pub tombstone_grace: Duration,
    /// How long a node stays monitored after its last Ready agent pod
    /// stopped being Ready or went away.
    pub agent_absence_grace: Duration,
    pub service_cidrs: Vec<IpPrefix>,
}

/// The Kubernetes backend's mutable index: apply watcher events (with the
/// time they were received), then take a [`ClusterSnapshot`] to read from.
///
/// [`KubeDriver`](super::KubeDriver) owns one and feeds it from the API.
/// It is public so that an embedder with watch streams of its own (or a
/// test, or a benchmark) can drive it directly: no I/O and no clock inside.
#[derive(Debug)]
pub struct KubeIndex {
    config: StateConfig,
    strings: Interner,
    pods: HashMap<Box<str>, PodRecord>,
    tombstones: Vec<Tombstone>,
    /// Nodes that lost their last Ready agent pod, and when: monitored
    /// until `agent_absence_grace` after it.
    agent_lost: HashMap<Arc<str>, SystemTime>,
    nodes: HashMap<Box<str>, NodeRecord>,
    services: HashMap<Box<str>, ServiceRecord>,
    endpoint_slices: HashMap<Box<str>, SliceRecord>,
    service_cidrs: HashMap<Box<str>, Vec<IpPrefix>>,
    relist: HashMap<Kind, Relist>,
    /// Resources whose first list must finish before the index is synced.
    required: Vec<Kind>,
    /// Something changed since the last snapshot.
    dirty: bool,
    /// The pod part changed since the last snapshot.
    pods_dirty: bool,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Box<str>> {
    match (&meta.uid, &meta.namespace, &meta.name) {
        (Some(uid), _, _) if !uid.is_empty() => Some(uid.as_str().into()),
        (_, ns, Some(name)) => Some(format!("{}/{name}", ns.as_deref().unwrap_or("")).into()),
        _ => None,
    }
}

fn to_system_time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> SystemTime {
    SystemTime::from(t.0)
}

fn parse_ips<'a>(texts: impl Iterator<Item = &'a str>) -> Box<[IpAddr]> {
    let mut out: Vec<IpAddr> = Vec::new();
    for t in texts {
        match t.trim().parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Err(_) if t.is_empty() || t == "None" => {}
            Err(_) => tracing::debug!(value = t, "ignoring a malformed address from the API"),
        }
    }
    out.into_boxed_slice()
}

fn label<'a>(
    labels: Option<&'a std::collections::BTreeMap<String, String>>,
    keys: &[&str],
) -> Option<&'a str> {
    let labels = labels?;
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

impl KubeIndex {
    /// An empty index with the rules of `config` (agent selector, tombstone
    /// grace, configured Service CIDRs). When `config.service_cidr_api` is
    /// set, [`is_synced`](Self::is_synced) also waits for the ServiceCIDR
    /// list (or [`service_cidr_api_absent`](Self::service_cidr_api_absent)).
    ///
    /// # Errors
    ///
    /// [`ResolveError::BadSelector`] when the agent selector does not parse.
    pub fn new(config: &super::KubeResolverConfig) -> Result<Self, ResolveError> {
        Ok(KubeIndex::with_config(
            StateConfig {
                agent_selector: super::workload::parse_selector(&config.agent_selector)?,
                tombstone_grace: config.tombstone_grace,
                agent_absence_grace: config.agent_absence_grace,
                service_cidrs: config.service_cidrs.clone(),
            },
            config.service_cidr_api,
        ))
    }

    pub(crate) fn with_config(config: StateConfig, watch_service_cidrs: bool) -> Self {
        let mut required = vec![Kind::Pod, Kind::Node, Kind::Service];
        if watch_service_cidrs {
            required.push(Kind::ServiceCidr);
        }
        KubeIndex {
            config,
            strings: Interner::default(),
            pods: HashMap::new(),
            tombstones: Vec::new(),
            agent_lost: HashMap::new(),
            nodes: HashMap::new(),
            services: HashMap::new(),
            endpoint_slices: HashMap::new(),
            service_cidrs: HashMap::new(),
            relist: HashMap::new(),
            required,
            dirty: true,
            pods_dirty: false,
        }
    }

    /// The ServiceCIDR API turned out to be absent: Service CIDRs come from
    /// configuration and nothing more is awaited for them.
    pub fn service_cidr_api_absent(&mut self) {
        self.required.retain(|k| *k != Kind::ServiceCidr);
        self.dirty = true;
    }

    /// True when every required resource finished its first list.
    pub fn is_synced(&self) -> bool {
        self.required
            .iter()
            .all(|k| self.relist.get(k).is_some_and(|r| r.synced))
    }

    /// True when something changed since the last [`snapshot`](Self::snapshot).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Number of pods and tombstones held.
    pub fn pod_counts(&self) -> (usize, usize) {
        (self.pods.len(), self.tombstones.len())
    }

    // ---- pods ----

    /// Applies a pod watcher event received at `now`.
    pub fn apply_pod(&mut self, event: Event<Pod>, now: SystemTime) {
        match event {
            Event::Init => self.relist.entry(Kind::Pod).or_default().init(),
            Event::InitApply(pod) => {
                if let Some(key) = key_of(&pod.metadata) {
                    self.relist.entry(Kind::Pod).or_default().seen(&key);
                    self.upsert_pod(key, &pod, now);
                }
            }
            Event::Apply(pod) => {
                if let Some(key) = key_of(&pod.metadata) {
                    self.upsert_pod(key, &pod, now);
                }
            }
            Event::Delete(pod) => {
                if let Some(key) = key_of(&pod.metadata) {
                    self.delete_pod(&key, now);
                }
            }
            Event::InitDone => {
                let gone = self
                    .relist
                    .entry(Kind::Pod)
                    .or_default()
                    .done(self.pods.iter());
                for key in gone {
                    self.delete_pod(&key, now);
                }
                self.dirty = true;
            }
        }
    }

    fn pod_endpoint(&mut self, pod: &Pod) -> Option<Arc<Endpoint>> {
        let meta = &pod.metadata;
        let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
        let namespace = meta.namespace.as_deref().unwrap_or("");
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH))
            .map(String::as_str);
        let owners = meta.owner_references.as_deref().unwrap_or(&[]);
        let (workload, workload_kind) = workload_of(name, owners, hash);
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        let (zone, region) = match self.nodes.get(node_name) {
            Some(n) => (n.endpoint.zone.clone(), n.endpoint.region.clone()),
            None => (self.strings.get(""), self.strings.get("")),
        };
        let name: Arc<str> = Arc::from(name);
        let workload = if workload == &*name {
            name.clone()
        } else {
            Arc::from(workload)
        };
        Some(Arc::new(Endpoint {
            kind: EndpointKind::Pod,
            name,
            namespace: self.strings.get(namespace),
            workload,
            workload_kind,
            node: self.strings.get(node_name),
            zone,
            region,
        }))
    }

    fn upsert_pod(&mut self, key: Box<str>, pod: &Pod, now: SystemTime) {
        let Some(mut endpoint) = self.pod_endpoint(pod) else {
            return;
        };
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let ips = match status.and_then(|s| s.pod_ips.as_ref()) {
            Some(list) if !list.is_empty() => parse_ips(list.iter().map(|p| p.ip.as_str())),
            _ => parse_ips(status.and_then(|s| s.pod_ip.as_deref()).into_iter()),
        };
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let since = status
            .and_then(|s| s.start_time.as_ref())
            .or(pod.metadata.creation_timestamp.as_ref())
            .map_or(now, to_system_time);
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let agent_ready = phase == "Running"
            && ready
            && selects(&self.config.agent_selector, pod.metadata.labels.as_ref());

        let previous = self.pods.get(&key);
        let previous_agent = previous
            .filter(|p| p.agent_ready)
            .map(|p| p.endpoint.node.clone());
        if let Some(prev) = previous {
            if *prev.endpoint == *endpoint {
                endpoint = prev.endpoint.clone();
            }
            // A pod whose IPs change (rare) leaves tombstones for the old ones.
            let dropped: Vec<IpAddr> = prev
                .ips
                .iter()
                .filter(|ip| !ips.contains(ip))
                .copied()
                .collect();
            if !dropped.is_empty() && !prev.host_network && prev.ended.is_none() {
                self.tombstones.push(Tombstone {
                    endpoint: prev.endpoint.clone(),
                    ips: dropped.into_boxed_slice(),
                    since: prev.since,
                    until: now,
                });
            }
        }
        let ended = match (terminal, previous) {
            (false, _) => None,
            (true, Some(prev)) => Some(prev.ended.unwrap_or(now)),
            // First seen already finished: it stopped holding its IP at some
            // point we do not know; say now, bounded below by its start.
            (true, None) => Some(now.max(since)),
        };
        let record = PodRecord {
            endpoint,
            ips,
            host_network,
            since,
            ended,
            agent_ready,
        };
        if previous != Some(&record) {
            let now_agent = record.agent_ready.then(|| record.endpoint.node.clone());
            self.pods.insert(key, record);
            self.dirty = true;
            self.pods_dirty = true;
            if let Some(node) = now_agent {
                self.agent_lost.remove(&node);
            }
            if let Some(node) = previous_agent {
                self.agent_gone(node, now);
            }
        }
    }

    /// An agent pod on `node` stopped being Ready or went away: unless
    /// another one is Ready there, the node stays monitored for
    /// `agent_absence_grace` (an agent restart or upgrade: the pinned
    /// programs keep counting and the next agent reports it).
    fn agent_gone(&mut self, node: Arc<str>, now: SystemTime) {
        if node.is_empty() || self.config.agent_absence_grace.is_zero() {
            return;
        }
        if self
            .pods
            .values()
            .any(|p| p.agent_ready && p.endpoint.node == node)
        {
            return;
        }
        self.agent_lost.entry(node).or_insert(now);
    }

    fn delete_pod(&mut self, key: &str, now: SystemTime) {
        let Some(prev) = self.pods.remove(key) else {
            return;
        };
        self.dirty = true;
        self.pods_dirty = true;
        if prev.agent_ready {
            self.agent_gone(prev.endpoint.node.clone(), now);
        }
        if prev.host_network || prev.ips.is_empty() {
            return;
        }
        self.tombstones.push(Tombstone {
            endpoint: prev.endpoint,
            ips: prev.ips,
            since: prev.since,
            until: prev.ended.unwrap_or(now),
        });
    }

    // ---- nodes ----

    /// Applies a node watcher event. Nodes carry no time-dependent facts;
    /// the time parameter keeps the appliers alike.
    pub fn apply_node(&mut self, event: Event<Node>, _now: SystemTime) {
        match event {
            Event::Init => self.relist.entry(Kind::Node).or_default().init(),
            Event::InitApply(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    self.relist.entry(Kind::Node).or_default().seen(name);
                    self.upsert_node(&node);
                }
            }
            Event::Apply(node) => self.upsert_node(&node),
            Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    if self.nodes.remove(name).is_some() {
                        self.dirty = true;
                    }
                }
            }
            Event::InitDone => {
                let gone = self
                    .relist
                    .entry(Kind::Node)
                    .or_default()
                    .done(self.nodes.iter());
                for name in gone {
                    self.nodes.remove(&name);
                }
                self.dirty = true;
            }
        }
    }

    fn upsert_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            return;
        };
        let labels = node.metadata.labels.as_ref();
        let zone = self.strings.get(label(labels, &ZONE_LABELS).unwrap_or(""));
        let region = self
            .strings
            .get(label(labels, &REGION_LABELS).unwrap_or(""));
        let ips = parse_ips(
            node.status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address.as_str()),
        );
        let name_arc = self.strings.get(name);
        let endpoint = Endpoint {
            kind: EndpointKind::Node,
            name: name_arc.clone(),
            namespace: self.strings.get(""),
            workload: name_arc.clone(),
            workload_kind: WorkloadKind::Node,
            node: name_arc,
            zone,
            region,
        };
        let previous = self.nodes.get(name);
        let location_changed = previous.is_none_or(|p| {
            p.endpoint.zone != endpoint.zone || p.endpoint.region != endpoint.region
        });
        if previous.is_some_and(|p| *p.endpoint == endpoint && p.ips == ips) {
            return;
        }
        let endpoint = Arc::new(endpoint);
        self.nodes.insert(
            name.into(),
            NodeRecord {
                endpoint: endpoint.clone(),
                ips,
            },
        );
        self.dirty = true;
        if location_changed {
            // Pods on the node move with it (a relabelled or late-seen node).
            for pod in self.pods.values_mut() {
                if *pod.endpoint.node == *name
                    && (pod.endpoint.zone != endpoint.zone
                        || pod.endpoint.region != endpoint.region)
                {
                    let mut e = (*pod.endpoint).clone();
                    e.zone = endpoint.zone.clone();
                    e.region = endpoint.region.clone();
                    pod.endpoint = Arc::new(e);
                    self.pods_dirty = true;
                }
            }
        }
    }

    // ---- services ----

    /// Applies a Service watcher event (the time is not needed).
    pub fn apply_service(&mut self, event: Event<Service>, _now: SystemTime) {
        match event {
            Event::Init => self.relist.entry(Kind::Service).or_default().init(),
            Event::InitApply(svc) => {
                if let Some(key) = key_of(&svc.metadata) {
                    self.relist.entry(Kind::Service).or_default().seen(&key);
                    self.upsert_service(key, &svc);
                }
            }
            Event::Apply(svc) => {
                if let Some(key) = key_of(&svc.metadata) {
                    self.upsert_service(key, &svc);
                }
            }
            Event::Delete(svc) => {
                if let Some(key) = key_of(&svc.metadata) {
                    if self.services.remove(&key).is_some() {
                        self.dirty = true;
                    }
                }
            }
            Event::InitDone => {
                let gone = self
                    .relist
                    .entry(Kind::Service)
                    .or_default()
                    .done(self.services.iter());
                for key in gone {
                    self.services.remove(&key);
                }
                self.dirty = true;
            }
        }
    }

    fn upsert_service(&mut self, key: Box<str>, svc: &Service) {
        let Some(name) = svc.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            return;
        };
        let spec = svc.spec.as_ref();
        let ips = match spec.and_then(|s| s.cluster_ips.as_ref()) {
            Some(list) if !list.is_empty() => parse_ips(list.iter().map(String::as_str)),
            _ => parse_ips(spec.and_then(|s| s.cluster_ip.as_deref()).into_iter()),
        };
        let name: Arc<str> = Arc::from(name);
        let empty = self.strings.get("");
        let endpoint = Endpoint {
            kind: EndpointKind::Service,
            name: name.clone(),
            namespace: self
                .strings
                .get(svc.metadata.namespace.as_deref().unwrap_or("")),
            workload: name,
            workload_kind: WorkloadKind::Service,
            node: empty.clone(),
            zone: empty.clone(),
            region: empty,
        };
        let traffic_distribution = spec
            .and_then(|s| s.traffic_distribution.as_deref())
            .filter(|t| !t.is_empty())
            .map(|t| self.strings.get(t));
        if let Some(prev) = self.services.get(&key) {
            if *prev.endpoint == endpoint
                && prev.ips == ips
                && prev.traffic_distribution == traffic_distribution
            {
                return;
            }
        }
        self.services.insert(
            key,
            ServiceRecord {
                endpoint: Arc::new(endpoint),
                ips,
                traffic_distribution,
            },
        );
        self.dirty = true;
    }

    // ---- EndpointSlices ----

    /// Applies an EndpointSlice watcher event (the time is not needed).
    /// Slices without the `kubernetes.io/service-name` label are ignored.
    pub fn apply_endpoint_slice(&mut self, event: Event<EndpointSlice>, _now: SystemTime) {
        match event {
            Event::Init => self.relist.entry(Kind::EndpointSlice).or_default().init(),
            Event::InitApply(slice) => {
                if let Some(key) = key_of(&slice.metadata) {
                    self.relist
                        .entry(Kind::EndpointSlice)
                        .or_default()
                        .seen(&key);
                    self.upsert_slice(key, &slice);
                }
            }
            Event::Apply(slice) => {
                if let Some(key) = key_of(&slice.metadata) {
                    self.upsert_slice(key, &slice);
                }
            }
            Event::Delete(slice) => {
                if let Some(key) = key_of(&slice.metadata) {
                    if self.endpoint_slices.remove(&key).is_some() {
                        self.dirty = true;
                    }
                }
            }
            Event::InitDone => {
                let gone = self
                    .relist
                    .entry(Kind::EndpointSlice)
                    .or_default()
                    .done(self.endpoint_slices.iter());
                for key in gone {
                    self.endpoint_slices.remove(&key);
                }
                self.dirty = true;
            }
        }
    }

    fn upsert_slice(&mut self, key: Box<str>, slice: &EndpointSlice) {
        let meta = &slice.metadata;
        let service = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|n| !n.is_empty());
        let (Some(service), Some(namespace)) = (service, meta.namespace.as_deref()) else {
            if self.endpoint_slices.remove(&key).is_some() {
                self.dirty = true;
            }
            return;
        };
        let mut hints = false;
        let mut endpoints = Vec::new();
        for e in slice.endpoints.iter().flatten() {
            hints |= e
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .is_some_and(|z| !z.is_empty());
            endpoints.push(SliceEndpoint {
                ips: parse_ips(e.addresses.iter().map(String::as_str)),
                zone: e
                    .zone
                    .as_deref()
                    .filter(|z| !z.is_empty())
                    .map(|z| self.strings.get(z)),
                node: e
                    .node_name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .map(|n| self.strings.get(n)),
                // Absent means ready, as the API documents.
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            });
        }
        let record = SliceRecord {
            service: ServiceRef {
                namespace: self.strings.get(namespace),
                name: self.strings.get(service),
            },
            endpoints,
            hints,
        };
        if self.endpoint_slices.get(&key) == Some(&record) {
            return;
        }
        self.endpoint_slices.insert(key, record);
        self.dirty = true;
    }

    fn service_topology(&self) -> ServiceTopologyBuilder {
        let mut t = ServiceTopologyBuilder::default();
        for svc in self.services.values() {
            t.service(
                ServiceRef {
                    namespace: svc.endpoint.namespace.clone(),
                    name: svc.endpoint.name.clone(),
                },
                svc.traffic_distribution.as_deref(),
            );
        }
        for slice in self.endpoint_slices.values() {
            if slice.hints {
                t.hints(slice.service.clone());
            }
            for e in &slice.endpoints {
                let zone = e.zone.clone().or_else(|| {
                    let node = self.nodes.get(e.node.as_deref()?)?;
                    node.endpoint
                        .known_zone()
                        .map(|_| node.endpoint.zone.clone())
                });
                t.endpoint(
                    slice.service.clone(),
                    ServiceEndpoint {
                        ips: e.ips.to_vec(),
                        zone,
                        ready: e.ready,
                    },
                );
            }
        }
        t
    }

    // ---- Service CIDRs ----

    /// Applies a ServiceCIDR watcher event (the time is not needed).
    pub fn apply_service_cidr(&mut self, event: Event<ServiceCIDR>, _now: SystemTime) {
        let cidrs_of = |c: &ServiceCIDR| -> Vec<IpPrefix> {
            c.spec
                .as_ref()
                .and_then(|s| s.cidrs.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|t| match t.parse::<IpPrefix>() {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::debug!(cidr = ?t, error = ?e, "ignoring a malformed ServiceCIDR");
                        None
                    }
                })
                .collect()
        };
        match event {
            Event::Init => self.relist.entry(Kind::ServiceCidr).or_default().init(),
            Event::InitApply(c) | Event::Apply(c) => {
                if let Some(name) = c.metadata.name.as_deref() {
                    self.relist.entry(Kind::ServiceCidr).or_default().seen(name);
                    self.service_cidrs.insert(name.into(), cidrs_of(&c));
                    self.dirty = true;
                }
            }
            Event::Delete(c) => {
                if let Some(name) = c.metadata.name.as_deref() {
                    self.service_cidrs.remove(name);
                    self.dirty = true;
                }
            }
            Event::InitDone => {
                let gone = self
                    .relist
                    .entry(Kind::ServiceCidr)
                    .or_default()
                    .done(self.service_cidrs.iter());
                for name in gone {
                    self.service_cidrs.remove(&name);
                }
                self.dirty = true;
            }
        }
    }

    // ---- snapshots ----

    /// Drops tombstones older than the grace period. Returns how many.
    fn prune(&mut self, now: SystemTime) -> usize {
        let grace = self.config.tombstone_grace;
        let before = self.tombstones.len();
        // An end so far ahead that adding the grace overflows never expires.
        self.tombstones
            .retain(|t| t.until.checked_add(grace).is_none_or(|e| e > now));
        let absence = self.config.agent_absence_grace;
        self.agent_lost
            .retain(|_, t| t.checked_add(absence).is_none_or(|e| e > now));
        before - self.tombstones.len()
    }

    /// When the next tombstone (or finished pod's claim) expires after
    /// `now`; `None` when nothing is waiting to expire.
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        let grace = self.config.tombstone_grace;
        self.tombstones
            .iter()
            .map(|t| t.until)
            .chain(self.pods.values().filter_map(|p| p.ended))
            // None (overflow): never expires, nothing to wait for.
            .filter_map(|t| t.checked_add(grace))
            .chain(
                self.agent_lost
                    .values()
                    .filter_map(|t| t.checked_add(self.config.agent_absence_grace)),
            )
            .filter(|t| *t > now)
            .min()
    }

    /// Drops tombstones whose grace ran out by `now`, builds the snapshot
    /// and clears the dirty flags. Returns the snapshot and whether the pod
    /// part changed since the last one.
    pub fn snapshot(&mut self, now: SystemTime) -> (ClusterSnapshot, bool) {
        let pruned = self.prune(now);
        let grace = self.config.tombstone_grace;
        let mut b = ClusterSnapshotBuilder::with_capacity(self.pods.len() + self.tombstones.len());
        for pod in self.pods.values() {
            if pod.host_network {
                let node = self.node_endpoint(&pod.endpoint.node);
                for ip in pod.ips.iter() {
                    b.node_ip(*ip, node.clone());
                }
            } else if pod
                .ended
                .is_none_or(|end| end.checked_add(grace).is_none_or(|e| e > now))
            {
                for ip in pod.ips.iter() {
                    b.pod_ip(*ip, pod.endpoint.clone(), pod.since, pod.ended);
                }
            }
            if pod.agent_ready && !pod.endpoint.node.is_empty() {
                b.monitored_node(pod.endpoint.node.clone());
            }
        }
        for node in self.agent_lost.keys() {
            b.monitored_node(node.clone());
        }
        for t in &self.tombstones {
            for ip in t.ips.iter() {
                b.pod_ip(*ip, t.endpoint.clone(), t.since, Some(t.until));
            }
        }
        for node in self.nodes.values() {
            for ip in node.ips.iter() {
                b.node_ip(*ip, node.endpoint.clone());
            }
        }
        for svc in self.services.values() {
            for ip in svc.ips.iter() {
                b.service_ip(*ip, svc.endpoint.clone());
            }
        }
        let from_api: Vec<IpPrefix> = self.service_cidrs.values().flatten().copied().collect();
        let cidrs = if from_api.is_empty() {
            &self.config.service_cidrs
        } else {
            &from_api
        };
        for p in cidrs {
            b.service_cidr(*p);
        }
        b.service_topology(Arc::new(self.service_topology().build()));
        let pods_changed = self.pods_dirty || pruned > 0;
        self.dirty = false;
        self.pods_dirty = false;
        if pruned > 0 {
            self.strings.sweep();
        }
        (b.build(), pods_changed)
    }

    fn node_endpoint(&self, name: &str) -> Arc<Endpoint> {
        match self.nodes.get(name) {
            Some(n) => n.endpoint.clone(),
            None => {
                let name: Arc<str> = Arc::from(name);
                let empty: Arc<str> = Arc::from("");
                Arc::new(Endpoint {
                    kind: EndpointKind::Node,
                    name: name.clone(),
                    namespace: empty.clone(),
                    workload: name.clone(),
                    workload_kind: WorkloadKind::Node,
                    node: name,
                    zone: empty.clone(),
                    region: empty,
                })
            }
        }
    }
}
