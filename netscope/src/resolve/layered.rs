//! A composite resolver with a fixed precedence by kind.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::endpoint::{Endpoint, EndpointKind};

use super::{IpPrefix, Resolver};

/// Rank of a kind in the fixed precedence; lower wins.
fn rank(kind: EndpointKind) -> u8 {
    match kind {
        EndpointKind::Pod => 0,
        EndpointKind::Node => 1,
        EndpointKind::Service => 2,
        EndpointKind::Custom => 3,
        EndpointKind::External => 4,
    }
}

/// Asks several resolvers and keeps the answer of the highest-precedence
/// kind: **pod > node > service > custom > external**. The order of the
/// layers only breaks ties between two answers of the same kind (the
/// earlier layer wins), so a custom CIDR that covers the pod network can
/// never hide a pod or a node.
///
/// Typical stack: `[kube or static, custom endpoints]`.
pub struct LayeredResolver {
    layers: Vec<Arc<dyn Resolver>>,
}

impl std::fmt::Debug for LayeredResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayeredResolver")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl LayeredResolver {
    /// Combines `layers`. Put the cluster backend first: a pod answer ends
    /// the search early.
    pub fn new(layers: Vec<Arc<dyn Resolver>>) -> Self {
        LayeredResolver { layers }
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Arc<dyn Resolver>] {
        &self.layers
    }
}

impl Resolver for LayeredResolver {
    #[inline]
    fn resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Arc<Endpoint> {
        self.try_resolve(ip, observed_at)
            .unwrap_or_else(Endpoint::external)
    }

    #[inline]
    fn try_resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Option<Arc<Endpoint>> {
        let mut best: Option<Arc<Endpoint>> = None;
        for layer in &self.layers {
            let Some(candidate) = layer.try_resolve(ip, observed_at) else {
                continue;
            };
            if candidate.kind == EndpointKind::Pod {
                return Some(candidate);
            }
            if best
                .as_ref()
                .is_none_or(|b| rank(candidate.kind) < rank(b.kind))
            {
                best = Some(candidate);
            }
        }
        best
    }

    /// Monitored when any layer says so.
    fn is_monitored_node(&self, node: &str) -> bool {
        self.layers.iter().any(|l| l.is_monitored_node(node))
    }

    /// Exists when any layer knows it.
    fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.layers.iter().any(|l| l.has_pod(namespace, name))
    }

    /// The first layer's non-empty Service topology; else the first one.
    fn service_topology(&self) -> Option<Arc<super::ServiceTopology>> {
        let mut first = None;
        for t in self.layers.iter().filter_map(|l| l.service_topology()) {
            if !t.is_empty() {
                return Some(t);
            }
            first.get_or_insert(t);
        }
        first
    }

    /// Synced when every layer is.
    fn is_synced(&self) -> bool {
        self.layers.iter().all(|l| l.is_synced())
    }

    /// The union of the layers' Service CIDRs.
    fn service_cidrs(&self) -> Vec<IpPrefix> {
        let mut out: Vec<IpPrefix> = Vec::new();
        for p in self.layers.iter().flat_map(|l| l.service_cidrs()) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{CustomEndpoints, StaticResolver};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn stack() -> LayeredResolver {
        let cluster = StaticResolver::from_yaml(
            r#"
nodes:
  - {name: node-a, zone: za, ips: [10.0.0.1]}
  - {name: node-b, zone: zb, agent: false}
pods:
  - {name: p1, namespace: ns, node: node-a, ips: [10.1.0.5, "fd00:1::5"]}
services:
  - {name: api, namespace: ns, ips: [10.96.0.10]}
service_cidrs: [10.96.0.0/12]
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // A careless custom file that covers the whole cluster network, plus
        // an exact IP equal to the pod's.
        let custom = CustomEndpoints::from_yaml(
            r#"
endpoints:
  - {name: vpc, namespace: external, zone: zc, cidrs: [10.0.0.0/8, "fd00::/16"]}
  - {name: shadow, namespace: external, zone: zc, ips: [10.1.0.5]}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Custom first, to show that layer order does not decide precedence.
        LayeredResolver::new(vec![Arc::new(custom), Arc::new(cluster)])
    }

    #[test]
    fn precedence_is_pod_node_service_custom_external() {
        let r = stack();
        let t = SystemTime::now();
        let kind_name = |a: &str| {
            let e = r.resolve(ip(a), t);
            (e.kind, e.name.to_string())
        };
        assert_eq!(kind_name("10.1.0.5"), (EndpointKind::Pod, "p1".into()));
        assert_eq!(kind_name("fd00:1::5"), (EndpointKind::Pod, "p1".into()));
        assert_eq!(kind_name("10.0.0.1"), (EndpointKind::Node, "node-a".into()));
        assert_eq!(
            kind_name("10.96.0.10"),
            (EndpointKind::Service, "api".into())
        );
        assert_eq!(kind_name("10.2.0.1"), (EndpointKind::Custom, "vpc".into()));
        assert_eq!(kind_name("fd00:9::1"), (EndpointKind::Custom, "vpc".into()));
        assert_eq!(
            kind_name("192.0.2.1"),
            (EndpointKind::External, Endpoint::EXTERNAL_NAME.into())
        );
    }

    #[test]
    fn node_and_sync_questions_combine_layers() {
        let r = stack();
        assert!(r.is_monitored_node("node-a"));
        assert!(!r.is_monitored_node("node-b"));
        assert!(r.has_pod("ns", "p1"));
        assert!(!r.has_pod("ns", "vpc"), "custom endpoints are no pods");
        assert!(r.is_synced());
        assert_eq!(r.service_cidrs().len(), 1);
        let empty = LayeredResolver::new(Vec::new());
        assert_eq!(
            empty.resolve(ip("10.0.0.1"), SystemTime::now()).kind,
            EndpointKind::External
        );
    }
}
