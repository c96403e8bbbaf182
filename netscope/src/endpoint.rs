//! What an IP address resolves to.

use std::fmt;
use std::sync::Arc;

/// The kind of thing an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// A pod with its own IP.
    Pod,
    /// A node, or a hostNetwork pod (which shares the node's IP).
    Node,
    /// A Service ClusterIP whose NAT the agent could not undo.
    Service,
    /// A user-defined endpoint from the custom-endpoints file.
    Custom,
    /// Anything else.
    External,
}

impl EndpointKind {
    /// Lower-case name, as used in labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Pod => "pod",
            EndpointKind::Node => "node",
            EndpointKind::Service => "service",
            EndpointKind::Custom => "custom",
            EndpointKind::External => "external",
        }
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of workload that owns a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WorkloadKind {
    /// A Deployment (through its ReplicaSet).
    Deployment,
    /// A ReplicaSet without a Deployment.
    ReplicaSet,
    /// A StatefulSet.
    StatefulSet,
    /// A DaemonSet.
    DaemonSet,
    /// A Job not created by a CronJob.
    Job,
    /// A CronJob (through its Job).
    CronJob,
    /// A pod with no controller: its own workload.
    Pod,
    /// A node (for node and hostNetwork endpoints).
    Node,
    /// A Service.
    Service,
    /// A custom endpoint.
    Custom,
    /// Unknown or external.
    External,
    /// An owner kind netscope does not know (a CRD controller, say).
    Other,
}

impl WorkloadKind {
    /// The Kubernetes-style name (`Deployment`, `StatefulSet`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Node => "Node",
            WorkloadKind::Service => "Service",
            WorkloadKind::Custom => "Custom",
            WorkloadKind::External => "External",
            WorkloadKind::Other => "Other",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named endpoint. Resolvers hand these out behind an [`Arc`], so a lookup
/// costs one reference-count increment, not a string copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// What the address belongs to.
    pub kind: EndpointKind,
    /// Pod, node, Service or custom-endpoint name. For [`EndpointKind::External`]
    /// it is [`Endpoint::EXTERNAL_NAME`].
    pub name: Arc<str>,
    /// Namespace (empty for nodes and external addresses).
    pub namespace: Arc<str>,
    /// The owning workload's name (the pod itself for bare pods).
    pub workload: Arc<str>,
    /// The owning workload's kind.
    pub workload_kind: WorkloadKind,
    /// The node the endpoint runs on, if known.
    pub node: Arc<str>,
    /// Availability zone, empty when unknown.
    pub zone: Arc<str>,
    /// Region, empty when unknown.
    pub region: Arc<str>,
}

impl Endpoint {
    /// Label value for addresses that resolve to nothing known.
    pub const EXTERNAL_NAME: &'static str = "external";
    /// Label value for an unknown zone or region.
    pub const UNKNOWN: &'static str = "unknown";

    /// The shared endpoint for unknown external addresses.
    pub fn external() -> Arc<Endpoint> {
        static EXTERNAL: std::sync::OnceLock<Arc<Endpoint>> = std::sync::OnceLock::new();
        EXTERNAL
            .get_or_init(|| {
                let empty: Arc<str> = Arc::from("");
                Arc::new(Endpoint {
                    kind: EndpointKind::External,
                    name: Arc::from(Endpoint::EXTERNAL_NAME),
                    namespace: empty.clone(),
                    workload: Arc::from(Endpoint::EXTERNAL_NAME),
                    workload_kind: WorkloadKind::External,
                    node: empty.clone(),
                    zone: empty.clone(),
                    region: empty,
                })
            })
            .clone()
    }
}
