//! A fixed in-memory [`Resolver`]: exact addresses to endpoints, plus the set
//! of monitored nodes. For tests, benchmarks, and embedders that build their
//! own table.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::endpoint::{Endpoint, EndpointKind, WorkloadKind};
use crate::resolve::Resolver;

/// Exact-address table. Unknown addresses resolve to
/// [`Endpoint::external`]. Monitored nodes: every node, unless a set was
/// given with [`MemoryResolver::set_monitored`].
#[derive(Debug, Clone, Default)]
pub struct MemoryResolver {
    endpoints: HashMap<IpAddr, Arc<Endpoint>>,
    monitored: Option<HashSet<String>>,
}

impl MemoryResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `ip` to `endpoint`.
    pub fn insert(&mut self, ip: IpAddr, endpoint: Arc<Endpoint>) -> &mut Self {
        self.endpoints.insert(ip, endpoint);
        self
    }

    /// Adds a bare pod (its own workload) on `node` in `zone`.
    pub fn add_pod(
        &mut self,
        ip: IpAddr,
        name: &str,
        namespace: &str,
        node: &str,
        zone: &str,
    ) -> &mut Self {
        self.insert(
            ip,
            Arc::new(Endpoint {
                kind: EndpointKind::Pod,
                name: Arc::from(name),
                namespace: Arc::from(namespace),
                workload: Arc::from(name),
                workload_kind: WorkloadKind::Pod,
                node: Arc::from(node),
                zone: Arc::from(zone),
                region: Arc::from(""),
            }),
        )
    }

    /// Adds a node address.
    pub fn add_node(&mut self, ip: IpAddr, node: &str, zone: &str) -> &mut Self {
        self.insert(
            ip,
            Arc::new(Endpoint {
                kind: EndpointKind::Node,
                name: Arc::from(node),
                namespace: Arc::from(""),
                workload: Arc::from(node),
                workload_kind: WorkloadKind::Node,
                node: Arc::from(node),
                zone: Arc::from(zone),
                region: Arc::from(""),
            }),
        )
    }

    /// Adds a Service ClusterIP.
    pub fn add_service(&mut self, ip: IpAddr, name: &str, namespace: &str) -> &mut Self {
        self.insert(
            ip,
            Arc::new(Endpoint {
                kind: EndpointKind::Service,
                name: Arc::from(name),
                namespace: Arc::from(namespace),
                workload: Arc::from(name),
                workload_kind: WorkloadKind::Service,
                node: Arc::from(""),
                zone: Arc::from(""),
                region: Arc::from(""),
            }),
        )
    }

    /// Only these nodes are monitored from now on.
    pub fn set_monitored<I, S>(&mut self, nodes: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.monitored = Some(nodes.into_iter().map(Into::into).collect());
        self
    }
}

impl Resolver for MemoryResolver {
    fn resolve(&self, ip: IpAddr, _observed_at: SystemTime) -> Arc<Endpoint> {
        self.endpoints
            .get(&ip)
            .cloned()
            .unwrap_or_else(Endpoint::external)
    }

    fn is_monitored_node(&self, node: &str) -> bool {
        self.monitored.as_ref().is_none_or(|m| m.contains(node))
    }
}
