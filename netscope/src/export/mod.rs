//! Consuming resolved, deduplicated flows.
//!
//! - [`prometheus`] (feature `prometheus`): counters through the `metrics`
//!   facade, with the seed's metric names and labels, plus workload, zone,
//!   region and cost views. The library never installs a recorder.
//! - [`recorder`] (feature `prometheus`): the recorder the binaries install,
//!   which renders the Prometheus text format from pre-formatted series.
//! - [`flowlog`]: one JSON object per flow and line, written by a thread of its
//!   own behind a bounded queue, so a slow stdout never blocks ingest.
//! - [`cost`]: the exact pricing arithmetic behind the cost counter.
//! - [`service`]: cross-zone traffic per Service and the estimate of what
//!   in-zone routing would save.
//!
//! Label values are never empty: the `*_label` methods on [`Endpoint`] define
//! the fixed values used for unknown or absent fields, and metrics and flow
//! logs share them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::endpoint::{Endpoint, EndpointKind};
use crate::flow::{Counters, Direction};

pub mod cost;
pub mod flowlog;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "prometheus")]
pub mod recorder;
pub mod service;

/// Namespace label value for endpoints of kind [`EndpointKind::Node`], which
/// have no namespace of their own.
pub const NODE_NAMESPACE: &str = "node";

/// A flow after deduplication and resolution: counted exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFlow {
    /// End of the window the bytes were counted in.
    pub timestamp: SystemTime,
    /// Source address (the real backend after Service NAT was undone).
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Source endpoint.
    pub src: Arc<Endpoint>,
    /// Destination endpoint.
    pub dst: Arc<Endpoint>,
    /// Which observation was counted.
    pub direction_counted: Direction,
    /// Bytes and packets.
    pub counters: Counters,
}

impl ResolvedFlow {
    /// True when both zones are known and differ: the traffic crossed an
    /// availability-zone boundary (this includes traffic between regions).
    pub fn is_cross_zone(&self) -> bool {
        matches!((self.src.known_zone(), self.dst.known_zone()), (Some(a), Some(b)) if a != b)
    }

    /// True when both regions are known and differ.
    pub fn is_cross_region(&self) -> bool {
        matches!((self.src.known_region(), self.dst.known_region()), (Some(a), Some(b)) if a != b)
    }

    /// True when the flow is billed as inter-AZ traffic inside one region:
    /// cross-zone and not cross-region. A region that is unknown on either side
    /// is taken to be the same region. See [`cost`] for the pricing rules.
    pub fn is_billed_cross_zone(&self) -> bool {
        self.is_cross_zone() && !self.is_cross_region()
    }
}

/// Label values shared by metrics and flow logs. None of them is ever empty.
impl Endpoint {
    /// The value of the `src_pod`/`dst_pod` labels and flow-log fields: the
    /// pod's name, or the node's, Service's or custom endpoint's name;
    /// [`Endpoint::EXTERNAL_NAME`] for unknown external addresses;
    /// [`Endpoint::UNKNOWN`] if a resolver left the name empty.
    pub fn pod_label(&self) -> &str {
        if !self.name.is_empty() {
            &self.name
        } else if self.kind == EndpointKind::External {
            Endpoint::EXTERNAL_NAME
        } else {
            Endpoint::UNKNOWN
        }
    }

    /// The value of the `src_namespace`/`dst_namespace` labels and flow-log
    /// fields: the endpoint's namespace (custom endpoints carry their own);
    /// [`NODE_NAMESPACE`] for nodes; [`Endpoint::EXTERNAL_NAME`] for external
    /// addresses (the seed's default namespace for custom endpoints);
    /// [`Endpoint::UNKNOWN`] otherwise.
    pub fn namespace_label(&self) -> &str {
        if !self.namespace.is_empty() {
            return &self.namespace;
        }
        match self.kind {
            EndpointKind::Node => NODE_NAMESPACE,
            EndpointKind::External => Endpoint::EXTERNAL_NAME,
            _ => Endpoint::UNKNOWN,
        }
    }

    /// The owning workload's name; the pod label when the resolver left it
    /// empty (a bare pod is its own workload).
    pub fn workload_label(&self) -> &str {
        if self.workload.is_empty() {
            self.pod_label()
        } else {
            &self.workload
        }
    }

    /// The zone, or [`Endpoint::UNKNOWN`].
    pub fn zone_label(&self) -> &str {
        self.known_zone().unwrap_or(Endpoint::UNKNOWN)
    }

    /// The region, or [`Endpoint::UNKNOWN`].
    pub fn region_label(&self) -> &str {
        self.known_region().unwrap_or(Endpoint::UNKNOWN)
    }

    /// The zone when it is known: not empty and not literally
    /// [`Endpoint::UNKNOWN`].
    pub fn known_zone(&self) -> Option<&str> {
        known(&self.zone)
    }

    /// The region when it is known: not empty and not literally
    /// [`Endpoint::UNKNOWN`].
    pub fn known_region(&self) -> Option<&str> {
        known(&self.region)
    }
}

fn known(value: &str) -> Option<&str> {
    if value.is_empty() || value == Endpoint::UNKNOWN {
        None
    } else {
        Some(value)
    }
}

/// Consumes resolved flows: metrics, flow logs, or an embedder's sink.
pub trait Exporter: Send + Sync {
    /// Hands over one batch. Must not block for long: the ingest path calls it.
    fn export(&self, flows: &[ResolvedFlow]);
}

impl<E: Exporter + ?Sized> Exporter for Arc<E> {
    fn export(&self, flows: &[ResolvedFlow]) {
        (**self).export(flows);
    }
}

impl<E: Exporter + ?Sized> Exporter for Box<E> {
    fn export(&self, flows: &[ResolvedFlow]) {
        (**self).export(flows);
    }
}

/// Hands every batch to several exporters, in order.
#[derive(Default)]
pub struct Fanout {
    exporters: Vec<Box<dyn Exporter>>,
}

impl Fanout {
    /// An empty fan-out.
    pub fn new() -> Self {
        Fanout::default()
    }

    /// Adds an exporter; batches reach exporters in the order they were added.
    pub fn with(mut self, exporter: Box<dyn Exporter>) -> Self {
        self.exporters.push(exporter);
        self
    }

    /// Number of exporters.
    pub fn len(&self) -> usize {
        self.exporters.len()
    }

    /// True when no exporter was added.
    pub fn is_empty(&self) -> bool {
        self.exporters.is_empty()
    }
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("exporters", &self.exporters.len())
            .finish()
    }
}

impl Exporter for Fanout {
    fn export(&self, flows: &[ResolvedFlow]) {
        for exporter in &self.exporters {
            exporter.export(flows);
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Endpoints and flows for the exporter tests.

    use super::*;
    use crate::endpoint::WorkloadKind;
    use std::time::{Duration, UNIX_EPOCH};

    /// A pod endpoint.
    pub fn pod(name: &str, ns: &str, workload: &str, zone: &str, region: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            kind: EndpointKind::Pod,
            name: name.into(),
            namespace: ns.into(),
            workload: workload.into(),
            workload_kind: WorkloadKind::Deployment,
            node: "node-1".into(),
            zone: zone.into(),
            region: region.into(),
        })
    }

    /// A flow between two endpoints at a fixed time.
    pub fn flow(
        src: &Arc<Endpoint>,
        dst: &Arc<Endpoint>,
        src_ip: &str,
        dst_ip: &str,
        bytes: u64,
        packets: u64,
    ) -> ResolvedFlow {
        ResolvedFlow {
            timestamp: UNIX_EPOCH + Duration::from_secs(1_736_937_000),
            src_ip: src_ip.parse().expect("test IP"),
            dst_ip: dst_ip.parse().expect("test IP"),
            src: src.clone(),
            dst: dst.clone(),
            direction_counted: Direction::ToPod,
            counters: Counters::new(bytes, packets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::endpoint::WorkloadKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn labels_are_never_empty() {
        let ext = Endpoint::external();
        assert_eq!(ext.pod_label(), "external");
        assert_eq!(ext.namespace_label(), "external");
        assert_eq!(ext.workload_label(), "external");
        assert_eq!(ext.zone_label(), "unknown");
        assert_eq!(ext.region_label(), "unknown");

        let node = Endpoint {
            kind: EndpointKind::Node,
            name: "ip-10-0-1-5".into(),
            namespace: "".into(),
            workload: "".into(),
            workload_kind: WorkloadKind::Node,
            node: "ip-10-0-1-5".into(),
            zone: "us-west-2a".into(),
            region: "us-west-2".into(),
        };
        assert_eq!(node.pod_label(), "ip-10-0-1-5");
        assert_eq!(node.namespace_label(), NODE_NAMESPACE);
        assert_eq!(node.workload_label(), "ip-10-0-1-5");
        assert_eq!(node.zone_label(), "us-west-2a");

        let custom = Endpoint {
            kind: EndpointKind::Custom,
            name: "rds-primary".into(),
            namespace: "external".into(),
            workload: "rds-primary".into(),
            workload_kind: WorkloadKind::Custom,
            node: "".into(),
            zone: "".into(),
            region: "".into(),
        };
        assert_eq!(custom.pod_label(), "rds-primary");
        assert_eq!(custom.namespace_label(), "external");
        assert_eq!(custom.zone_label(), "unknown");

        let odd = Endpoint {
            kind: EndpointKind::Pod,
            name: "".into(),
            namespace: "".into(),
            workload: "".into(),
            workload_kind: WorkloadKind::Pod,
            node: "".into(),
            zone: "unknown".into(),
            region: "".into(),
        };
        assert_eq!(odd.pod_label(), "unknown");
        assert_eq!(odd.namespace_label(), "unknown");
        assert_eq!(
            odd.known_zone(),
            None,
            "the literal 'unknown' is not a zone"
        );
    }

    #[test]
    fn classification() {
        let a = pod("a", "ns", "a", "us-west-2a", "us-west-2");
        let b = pod("b", "ns", "b", "us-west-2b", "us-west-2");
        let a2 = pod("a2", "ns", "a", "us-west-2a", "us-west-2");
        let e = pod("e", "ns", "e", "eu-west-1a", "eu-west-1");
        let no_zone = pod("z", "ns", "z", "", "us-west-2");
        let no_region = pod("r", "ns", "r", "us-west-2c", "");

        let f = |s: &Arc<Endpoint>, d: &Arc<Endpoint>| flow(s, d, "10.0.0.1", "10.0.0.2", 1, 1);
        assert!(f(&a, &b).is_cross_zone() && f(&a, &b).is_billed_cross_zone());
        assert!(!f(&a, &a2).is_cross_zone());
        assert!(
            !f(&a, &no_zone).is_cross_zone(),
            "unknown zone is never cross-zone"
        );
        assert!(f(&a, &e).is_cross_zone() && f(&a, &e).is_cross_region());
        assert!(
            !f(&a, &e).is_billed_cross_zone(),
            "inter-region is not inter-AZ"
        );
        assert!(f(&a, &no_region).is_billed_cross_zone());
        assert!(!f(&a, &no_region).is_cross_region());
    }

    struct Counting(AtomicUsize);
    impl Exporter for Counting {
        fn export(&self, flows: &[ResolvedFlow]) {
            self.0.fetch_add(flows.len(), Ordering::Relaxed);
        }
    }

    #[test]
    fn fanout_reaches_every_exporter() {
        let one = Arc::new(Counting(AtomicUsize::new(0)));
        let two = Arc::new(Counting(AtomicUsize::new(0)));
        let fan = Fanout::new()
            .with(Box::new(one.clone()))
            .with(Box::new(two.clone()));
        assert_eq!(fan.len(), 2);
        let a = pod("a", "ns", "a", "z1", "r");
        let flows = vec![flow(&a, &a, "10.0.0.1", "10.0.0.1", 1, 1); 3];
        let boxed: Box<dyn Exporter> = Box::new(fan);
        boxed.export(&flows);
        assert_eq!(one.0.load(Ordering::Relaxed), 3);
        assert_eq!(two.0.load(Ordering::Relaxed), 3);
    }
}
