//! The immutable cluster index that the Kubernetes and static backends share.
//!
//! A [`ClusterSnapshot`] maps every known address to what owns it: pods
//! (live ones and tombstones, each with the time span it held the address),
//! nodes (InternalIPs and hostNetwork pods) and Services (ClusterIPs). A
//! lookup is one hash-map probe. Snapshots are built whole by a
//! [`ClusterSnapshotBuilder`] and then only read, so a backend can publish a
//! new one atomically while readers keep using the old one.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::endpoint::{Endpoint, EndpointKind, WorkloadKind};

use super::ipmap::IpMap;
use super::services::ServiceTopology;
use super::IpPrefix;

/// One pod's hold on an address: from `since` until `until` (open while the
/// pod still owns it).
#[derive(Debug, Clone)]
struct Claim {
    endpoint: Arc<Endpoint>,
    since: SystemTime,
    until: Option<SystemTime>,
}

impl Claim {
    fn holds_at(&self, t: SystemTime) -> bool {
        self.since <= t && self.until.is_none_or(|u| t < u)
    }
}

/// What one address leads to: 16 bytes, so the table stays cache-friendly.
#[derive(Debug, Clone)]
enum Slot {
    /// One owner: a pod (live or tombstone), a node or a Service. With a
    /// single claim the observation time cannot change the answer.
    One(Arc<Endpoint>),
    /// An address that changed hands: several pod claims, oldest first.
    Many(Box<Box<[Claim]>>),
}

/// Picks the claim that held the address at `t`:
///
/// 1. among claims whose span contains `t`, the one that started last (a
///    newer pod may already hold an IP whose old owner's end we have not
///    seen yet);
/// 2. else the latest claim that started before `t` (a late report about a
///    pod that has ended: its tombstone);
/// 3. else the earliest claim (a report stamped before any claim began,
///    i.e. clock skew between the agent and the API server).
fn pick(claims: &[Claim], t: SystemTime) -> Option<&Claim> {
    claims
        .iter()
        .filter(|c| c.holds_at(t))
        .max_by_key(|c| c.since)
        .or_else(|| {
            claims
                .iter()
                .filter(|c| c.since <= t)
                .max_by_key(|c| c.since)
        })
        .or_else(|| claims.iter().min_by_key(|c| c.since))
}

/// An immutable index of the cluster's addresses. See the module docs.
#[derive(Debug, Clone)]
pub struct ClusterSnapshot {
    slots: IpMap<Slot>,
    monitored_nodes: HashSet<Arc<str>>,
    service_cidrs: Vec<IpPrefix>,
    unknown_service: Arc<Endpoint>,
    /// Pods holding an address now (an open claim): namespace -> names.
    live_pods: HashMap<Arc<str>, HashSet<Arc<str>>>,
    pod_claims: usize,
    ended_claims: usize,
    /// Services and their endpoints per zone (EndpointSlices).
    service_topology: Arc<ServiceTopology>,
}

impl Default for ClusterSnapshot {
    fn default() -> Self {
        ClusterSnapshotBuilder::default().build()
    }
}

impl ClusterSnapshot {
    /// What `ip` led to at `observed_at`, or `None` when the cluster does not
    /// know the address. An address inside a Service CIDR that is no known
    /// ClusterIP resolves to a Service named [`Endpoint::UNKNOWN`].
    #[inline]
    pub fn lookup(&self, ip: IpAddr, observed_at: SystemTime) -> Option<&Arc<Endpoint>> {
        match self.slots.get(ip) {
            Some(Slot::One(endpoint)) => Some(endpoint),
            Some(Slot::Many(claims)) => pick(claims, observed_at).map(|c| &c.endpoint),
            None => self
                .service_cidrs
                .iter()
                .any(|p| p.contains(ip))
                .then_some(&self.unknown_service),
        }
    }

    /// Like [`lookup`](Self::lookup), with unknown addresses resolving to
    /// [`Endpoint::external`].
    #[inline]
    pub fn resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Arc<Endpoint> {
        self.lookup(ip, observed_at)
            .cloned()
            .unwrap_or_else(Endpoint::external)
    }

    /// True when `node` runs a Ready netscope agent (see
    /// [`Resolver::is_monitored_node`](super::Resolver::is_monitored_node)).
    pub fn is_monitored_node(&self, node: &str) -> bool {
        self.monitored_nodes.contains(node)
    }

    /// True when pod `namespace/name` holds an address now (it has a claim
    /// that has not ended; tombstones do not count).
    pub fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.live_pods
            .get(namespace)
            .is_some_and(|names| names.contains(name))
    }

    /// The monitored nodes, in no particular order.
    pub fn monitored_nodes(&self) -> impl Iterator<Item = &str> {
        self.monitored_nodes.iter().map(|n| &**n)
    }

    /// The Service CIDRs.
    pub fn service_cidrs(&self) -> &[IpPrefix] {
        &self.service_cidrs
    }

    /// Number of distinct addresses indexed.
    pub fn address_count(&self) -> usize {
        self.slots.len()
    }

    /// Number of pod claims (live pods' addresses plus tombstones).
    pub fn pod_claim_count(&self) -> usize {
        self.pod_claims
    }

    /// Number of pod claims that have ended (deleted or finished pods kept
    /// for their grace period).
    pub fn ended_claim_count(&self) -> usize {
        self.ended_claims
    }

    /// Services with their endpoints per zone (empty when the source lists
    /// none).
    pub fn service_topology(&self) -> &Arc<ServiceTopology> {
        &self.service_topology
    }
}

/// Collects claims and builds a [`ClusterSnapshot`]. Addresses may be added
/// in any order; precedence (pod > node > Service) is applied at build time.
#[derive(Debug, Default, Clone)]
pub struct ClusterSnapshotBuilder {
    pods: IpMap<Vec<Claim>>,
    nodes: IpMap<Arc<Endpoint>>,
    services: IpMap<Arc<Endpoint>>,
    monitored_nodes: HashSet<Arc<str>>,
    service_cidrs: Vec<IpPrefix>,
    service_topology: Arc<ServiceTopology>,
}

impl ClusterSnapshotBuilder {
    /// An empty builder sized for about `pods` pod addresses.
    pub fn with_capacity(pods: usize) -> Self {
        ClusterSnapshotBuilder {
            pods: IpMap::with_capacity(pods),
            ..Default::default()
        }
    }

    /// A pod held `ip` from `since`, until `until` (`None`: still holds it).
    pub fn pod_ip(
        &mut self,
        ip: IpAddr,
        endpoint: Arc<Endpoint>,
        since: SystemTime,
        until: Option<SystemTime>,
    ) -> &mut Self {
        self.pods.get_or_insert_with(ip, Vec::new).push(Claim {
            endpoint,
            since,
            until,
        });
        self
    }

    /// `ip` belongs to a node (an InternalIP, or a hostNetwork pod's IP).
    /// The first node to claim an address keeps it.
    pub fn node_ip(&mut self, ip: IpAddr, endpoint: Arc<Endpoint>) -> &mut Self {
        self.nodes.insert_if_absent(ip, endpoint);
        self
    }

    /// `ip` is a Service ClusterIP. The first Service to claim it keeps it.
    pub fn service_ip(&mut self, ip: IpAddr, endpoint: Arc<Endpoint>) -> &mut Self {
        self.services.insert_if_absent(ip, endpoint);
        self
    }

    /// `node` runs a Ready netscope agent.
    pub fn monitored_node(&mut self, node: Arc<str>) -> &mut Self {
        self.monitored_nodes.insert(node);
        self
    }

    /// Adds a Service CIDR (duplicates are ignored).
    pub fn service_cidr(&mut self, prefix: IpPrefix) -> &mut Self {
        if !self.service_cidrs.contains(&prefix) {
            self.service_cidrs.push(prefix);
        }
        self
    }

    /// Sets the Services' endpoint topology.
    pub fn service_topology(&mut self, topology: Arc<ServiceTopology>) -> &mut Self {
        self.service_topology = topology;
        self
    }

    /// Builds the snapshot.
    pub fn build(self) -> ClusterSnapshot {
        let mut slots = IpMap::with_capacity(self.pods.len() + self.nodes.len());
        let (mut pod_claims, mut ended_claims) = (0, 0);
        let mut live_pods: HashMap<Arc<str>, HashSet<Arc<str>>> = HashMap::new();
        for (ip, mut claims) in self.pods.into_iter() {
            pod_claims += claims.len();
            ended_claims += claims.iter().filter(|c| c.until.is_some()).count();
            for c in claims.iter().filter(|c| c.until.is_none()) {
                live_pods
                    .entry(c.endpoint.namespace.clone())
                    .or_default()
                    .insert(c.endpoint.name.clone());
            }
            let slot = if claims.len() == 1 {
                match claims.pop() {
                    Some(claim) => Slot::One(claim.endpoint),
                    None => continue,
                }
            } else {
                claims.sort_by_key(|c| c.since);
                Slot::Many(Box::new(claims.into_boxed_slice()))
            };
            slots.insert_if_absent(ip, slot);
        }
        for (ip, endpoint) in self.nodes.into_iter().chain(self.services.into_iter()) {
            slots.insert_if_absent(ip, Slot::One(endpoint));
        }
        slots.shrink_to_fit();
        let empty: Arc<str> = Arc::from("");
        ClusterSnapshot {
            slots,
            monitored_nodes: self.monitored_nodes,
            service_cidrs: self.service_cidrs,
            unknown_service: Arc::new(Endpoint {
                kind: EndpointKind::Service,
                name: Arc::from(Endpoint::UNKNOWN),
                namespace: empty.clone(),
                workload: Arc::from(Endpoint::UNKNOWN),
                workload_kind: WorkloadKind::Service,
                node: empty.clone(),
                zone: empty.clone(),
                region: empty,
            }),
            live_pods,
            pod_claims,
            ended_claims,
            service_topology: self.service_topology,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ep(kind: EndpointKind, name: &str) -> Arc<Endpoint> {
        let e: Arc<str> = Arc::from("");
        Arc::new(Endpoint {
            kind,
            name: Arc::from(name),
            namespace: e.clone(),
            workload: Arc::from(name),
            workload_kind: WorkloadKind::Pod,
            node: e.clone(),
            zone: e.clone(),
            region: e,
        })
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn reused_ip_resolves_by_observation_time() {
        let mut b = ClusterSnapshotBuilder::default();
        b.pod_ip(
            ip("10.0.0.7"),
            ep(EndpointKind::Pod, "old"),
            at(0),
            Some(at(100)),
        );
        b.pod_ip(ip("10.0.0.7"), ep(EndpointKind::Pod, "new"), at(150), None);
        let s = b.build();
        let name = |t| s.resolve(ip("10.0.0.7"), t).name.to_string();
        assert_eq!(name(at(50)), "old");
        assert_eq!(name(at(99)), "old");
        // Between the old pod's end and the new pod's start: the tombstone.
        assert_eq!(name(at(120)), "old");
        assert_eq!(name(at(150)), "new");
        assert_eq!(name(at(10_000)), "new");
        // Before anything: the earliest claim.
        assert_eq!(name(at(0) - Duration::from_secs(5)), "old");
        assert_eq!(s.pod_claim_count(), 2);
        // Only the pod with an open claim exists now.
        assert!(s.has_pod("", "new"));
        assert!(!s.has_pod("", "old"));
        assert!(!s.has_pod("other", "new"));
    }

    #[test]
    fn overlapping_claims_prefer_the_newer_pod() {
        // The old pod's deletion was seen only after the new pod got its IP.
        let mut b = ClusterSnapshotBuilder::default();
        b.pod_ip(
            ip("10.0.0.7"),
            ep(EndpointKind::Pod, "old"),
            at(0),
            Some(at(200)),
        );
        b.pod_ip(ip("10.0.0.7"), ep(EndpointKind::Pod, "new"), at(150), None);
        let s = b.build();
        assert_eq!(&*s.resolve(ip("10.0.0.7"), at(100)).name, "old");
        assert_eq!(&*s.resolve(ip("10.0.0.7"), at(160)).name, "new");
    }

    #[test]
    fn pods_outrank_nodes_and_nodes_outrank_services() {
        let mut b = ClusterSnapshotBuilder::default();
        b.service_ip(ip("10.0.0.1"), ep(EndpointKind::Service, "svc"));
        b.node_ip(ip("10.0.0.1"), ep(EndpointKind::Node, "node"));
        b.node_ip(ip("10.0.0.2"), ep(EndpointKind::Node, "node"));
        b.pod_ip(ip("10.0.0.2"), ep(EndpointKind::Pod, "pod"), at(0), None);
        b.service_ip(ip("fd00::10"), ep(EndpointKind::Service, "svc6"));
        let s = b.build();
        assert_eq!(s.resolve(ip("10.0.0.1"), at(1)).kind, EndpointKind::Node);
        assert_eq!(s.resolve(ip("10.0.0.2"), at(1)).kind, EndpointKind::Pod);
        assert_eq!(&*s.resolve(ip("fd00::10"), at(1)).name, "svc6");
        assert_eq!(
            s.resolve(ip("10.0.0.3"), at(1)).kind,
            EndpointKind::External
        );
    }

    #[test]
    fn service_cidr_without_a_known_clusterip_is_an_unknown_service() {
        let mut b = ClusterSnapshotBuilder::default();
        b.service_cidr("10.96.0.0/12".parse().unwrap_or_else(|e| panic!("{e}")));
        let s = b.build();
        let e = s.resolve(ip("10.96.5.5"), at(0));
        assert_eq!(e.kind, EndpointKind::Service);
        assert_eq!(&*e.name, Endpoint::UNKNOWN);
        assert_eq!(
            s.resolve(ip("10.112.0.1"), at(0)).kind,
            EndpointKind::External
        );
    }

    #[test]
    fn ipv4_mapped_addresses_resolve_as_ipv4() {
        let mut b = ClusterSnapshotBuilder::default();
        b.pod_ip(
            ip("::ffff:10.0.0.9"),
            ep(EndpointKind::Pod, "p"),
            at(0),
            None,
        );
        let s = b.build();
        assert_eq!(&*s.resolve(ip("10.0.0.9"), at(1)).name, "p");
        assert_eq!(&*s.resolve(ip("::ffff:10.0.0.9"), at(1)).name, "p");
    }
}
