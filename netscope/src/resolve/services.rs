//! Service endpoint topology: which pods back which Service, in which zone,
//! and whether the Service already asks for topology-aware routing.
//!
//! Built from EndpointSlices (Kubernetes) or from the `services:` section of
//! a static topology file. Used for two things:
//!
//! - attributing pod-to-pod traffic to the Services whose endpoints list the
//!   destination (or, for replies, the source) pod: `via="endpointslice"`;
//! - the estimate of what in-zone routing would save
//!   ([`crate::export::service`]), which needs the ready endpoints per zone.
//!
//! The topology is immutable once built; a new version replaces it whole.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A Service's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ServiceRef {
    /// A reference from its parts.
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceRef {
            namespace: Arc::from(namespace),
            name: Arc::from(name),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What one Service looks like to the estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The Service.
    pub service: ServiceRef,
    /// `spec.trafficDistribution` as set (for example `PreferClose`), if any.
    pub traffic_distribution: Option<Arc<str>>,
    /// True when some EndpointSlice of the Service carries zone hints
    /// (topology-aware hints, the predecessor of `trafficDistribution`).
    pub hints: bool,
    /// Ready endpoints per zone. Endpoints of an unknown zone are not listed.
    pub ready_by_zone: BTreeMap<Arc<str>, u32>,
}

impl ServiceInfo {
    /// True when the Service already asks kube-proxy to prefer the client's
    /// zone (`trafficDistribution` set to anything, or hints present).
    pub fn routes_in_zone(&self) -> bool {
        self.hints || self.traffic_distribution.is_some()
    }

    /// True when the Service has at least one ready endpoint in `zone`.
    pub fn has_ready_in(&self, zone: &str) -> bool {
        self.ready_by_zone.get(zone).is_some_and(|n| *n > 0)
    }
}

/// An immutable index of Services and their endpoints.
#[derive(Debug, Clone, Default)]
pub struct ServiceTopology {
    services: Vec<ServiceInfo>,
    /// Endpoint address -> Services listing it, in (namespace, name) order.
    by_endpoint: HashMap<IpAddr, Vec<usize>>,
}

impl ServiceTopology {
    /// The Services, in (namespace, name) order.
    pub fn services(&self) -> &[ServiceInfo] {
        &self.services
    }

    /// Number of Services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True when no Service is known.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The Services whose endpoints list `ip` (ready or not), in
    /// (namespace, name) order.
    pub fn services_of_endpoint(&self, ip: IpAddr) -> impl Iterator<Item = &ServiceInfo> {
        self.by_endpoint
            .get(&ip.to_canonical())
            .into_iter()
            .flatten()
            .filter_map(|i| self.services.get(*i))
    }

    /// The Service named `service`, if known.
    pub fn get(&self, service: &ServiceRef) -> Option<&ServiceInfo> {
        self.services
            .binary_search_by(|s| s.service.cmp(service))
            .ok()
            .and_then(|i| self.services.get(i))
    }
}

/// One endpoint of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    /// The endpoint's addresses.
    pub ips: Vec<IpAddr>,
    /// Its zone; `None` when unknown.
    pub zone: Option<Arc<str>>,
    /// The `ready` condition (absent counts as ready, as in the API).
    pub ready: bool,
}

#[derive(Debug, Default, Clone)]
struct Pending {
    traffic_distribution: Option<Arc<str>>,
    hints: bool,
    endpoints: Vec<ServiceEndpoint>,
}

/// Collects Services and endpoints; a Service may be added in parts (one
/// EndpointSlice at a time).
#[derive(Debug, Default, Clone)]
pub struct ServiceTopologyBuilder {
    services: BTreeMap<ServiceRef, Pending>,
}

impl ServiceTopologyBuilder {
    /// Declares `service`; its `trafficDistribution` is replaced when `Some`.
    pub fn service(
        &mut self,
        service: ServiceRef,
        traffic_distribution: Option<&str>,
    ) -> &mut Self {
        let p = self.services.entry(service).or_default();
        if let Some(td) = traffic_distribution
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            p.traffic_distribution = Some(Arc::from(td));
        }
        self
    }

    /// Marks `service` as carrying topology hints.
    pub fn hints(&mut self, service: ServiceRef) -> &mut Self {
        self.services.entry(service).or_default().hints = true;
        self
    }

    /// Adds an endpoint of `service` (declaring the Service if needed).
    pub fn endpoint(&mut self, service: ServiceRef, endpoint: ServiceEndpoint) -> &mut Self {
        self.services
            .entry(service)
            .or_default()
            .endpoints
            .push(endpoint);
        self
    }

    /// Builds the index.
    pub fn build(self) -> ServiceTopology {
        let mut topology = ServiceTopology::default();
        for (index, (service, pending)) in self.services.into_iter().enumerate() {
            let mut ready_by_zone: BTreeMap<Arc<str>, u32> = BTreeMap::new();
            for e in &pending.endpoints {
                for ip in &e.ips {
                    let list = topology.by_endpoint.entry(ip.to_canonical()).or_default();
                    if list.last() != Some(&index) {
                        list.push(index);
                    }
                }
                if let (true, Some(zone)) = (e.ready, &e.zone) {
                    let n = ready_by_zone.entry(zone.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                }
            }
            topology.services.push(ServiceInfo {
                service,
                traffic_distribution: pending.traffic_distribution,
                hints: pending.hints,
                ready_by_zone,
            });
        }
        topology
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, zone: &str, ready: bool) -> ServiceEndpoint {
        ServiceEndpoint {
            ips: vec![ip.parse().unwrap()],
            zone: Some(Arc::from(zone)),
            ready,
        }
    }

    #[test]
    fn ready_endpoints_per_zone_and_lookup_by_address() {
        let mut b = ServiceTopologyBuilder::default();
        let api = ServiceRef::new("shop", "api");
        let all = ServiceRef::new("shop", "all");
        b.service(api.clone(), Some("PreferClose"));
        b.endpoint(api.clone(), ep("10.0.1.5", "a", true));
        b.endpoint(api.clone(), ep("10.0.2.5", "b", true));
        b.endpoint(api.clone(), ep("10.0.2.6", "b", false));
        b.endpoint(all.clone(), ep("10.0.1.5", "a", true));
        b.hints(all.clone());
        let t = b.build();
        assert_eq!(t.len(), 2);
        let info = t.get(&api).expect("api is known");
        assert_eq!(
            info.ready_by_zone,
            BTreeMap::from([(Arc::from("a"), 1), (Arc::from("b"), 1)])
        );
        assert!(info.routes_in_zone());
        assert!(info.has_ready_in("b"));
        assert!(!info.has_ready_in("c"));
        assert!(t.get(&all).expect("all is known").routes_in_zone());
        // Ordered by (namespace, name): "all" before "api".
        let names: Vec<&str> = t
            .services_of_endpoint("10.0.1.5".parse().unwrap())
            .map(|s| &*s.service.name)
            .collect();
        assert_eq!(names, ["all", "api"]);
        // An IPv4-mapped address finds the same Services.
        let mapped: IpAddr = "::ffff:10.0.2.6".parse().unwrap();
        assert_eq!(t.services_of_endpoint(mapped).count(), 1);
        assert_eq!(
            t.services_of_endpoint("10.9.9.9".parse().unwrap()).count(),
            0
        );
    }

    #[test]
    fn a_service_without_endpoints_or_distribution() {
        let mut b = ServiceTopologyBuilder::default();
        b.service(ServiceRef::new("ns", "empty"), Some("  "));
        let t = b.build();
        let info = t.get(&ServiceRef::new("ns", "empty")).unwrap();
        assert!(!info.routes_in_zone());
        assert!(info.ready_by_zone.is_empty());
    }
}
