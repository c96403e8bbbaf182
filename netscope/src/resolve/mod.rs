//! Resolving addresses to endpoints.
//!
//! A [`Resolver`] turns an IP address, at the time it was observed, into a
//! named [`Endpoint`]. Resolvers read an in-memory snapshot and never block
//! on the network; whatever keeps that snapshot fresh (a Kubernetes watch, a
//! file poller) is a separate driver that the binary spawns.
//!
//! Backends:
//!
//! - [`KubeResolver`](kube::KubeResolver) (feature `kube`): pods, nodes,
//!   Services and Service CIDRs from the Kubernetes API.
//! - [`StaticResolver`]: the same facts from a YAML topology file.
//! - [`CustomEndpoints`]: user-named external endpoints (IPs and CIDRs).
//! - [`LayeredResolver`]: combines the others with the fixed precedence
//!   pod > node > service > custom > external.
//!
//! The rules are written up in `docs/resolution.md`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::endpoint::{Endpoint, EndpointKind};

mod cluster;
pub mod custom;
mod ipmap;
#[cfg(feature = "kube")]
pub mod kube;
pub mod layered;
pub mod link_local;
pub mod lpm;
pub mod memory;
pub mod services;
pub mod static_topo;
mod watched;

pub use cluster::{ClusterSnapshot, ClusterSnapshotBuilder};
pub use custom::{CustomEndpoints, CustomEndpointsOptions, ReloadOutcome};
pub use layered::LayeredResolver;
pub use link_local::is_link_scoped;
pub use lpm::{IpPrefix, PrefixParseError, PrefixTable};
pub use services::{ServiceInfo, ServiceRef, ServiceTopology, ServiceTopologyBuilder};
pub use static_topo::{StaticResolver, StaticTopologyOptions};
pub use watched::MAX_YAML_DEPTH;

/// Maps an address, at the time it was observed, to an [`Endpoint`]. Reads
/// an in-memory snapshot and never blocks on the network.
///
/// The trait is object-safe and synchronous so that the aggregator can hold a
/// `Box<dyn Resolver>` and call it on its ingest path.
pub trait Resolver: Send + Sync {
    /// Resolves `ip` as of `observed_at`. Unknown addresses resolve to
    /// [`Endpoint::external`].
    ///
    /// `observed_at` matters only when an address changed hands: a pod IP
    /// reused by a newer pod resolves to whichever pod held it at that time
    /// (see `docs/resolution.md`).
    fn resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Arc<Endpoint>;

    /// Like [`resolve`](Self::resolve), but `None` where `resolve` would
    /// answer [`Endpoint::external`]. Composites use it to skip backends
    /// that do not know an address without cloning the shared external
    /// endpoint; backends override it when that is cheaper.
    fn try_resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Option<Arc<Endpoint>> {
        let e = self.resolve(ip, observed_at);
        (e.kind != EndpointKind::External).then_some(e)
    }

    /// True when a netscope agent is known to run, Ready, on `node`, so that
    /// the node's `ToPod` observations can be trusted (the aggregator's dedup
    /// rule, docs/design.md §4).
    ///
    /// The Kubernetes backend answers from the API: a node is monitored while
    /// a pod matching the configured agent selector is Running and Ready on
    /// it. The static backend answers from its file (every node listed there,
    /// unless marked `agent: false`). Backends that know no nodes answer
    /// `false`.
    fn is_monitored_node(&self, node: &str) -> bool;

    /// True once the backend has a complete first view: the initial lists of
    /// every watched resource are in (Kubernetes), or the file is loaded
    /// (static, custom). Before that, `resolve` may answer `external` for
    /// addresses it will know a moment later, so a caller may hold back or
    /// mark results until this turns true. Once true it stays true.
    ///
    /// The default, `true`, suits backends that are complete once built
    /// (a file loaded at construction, a table filled in code).
    fn is_synced(&self) -> bool {
        true
    }

    /// The cluster's Service CIDRs as this backend knows them (from the
    /// ServiceCIDR API or configuration). Empty when unknown. The agent hands
    /// them to the data path, which keeps ports for Service-bound packets.
    fn service_cidrs(&self) -> Vec<IpPrefix> {
        Vec::new()
    }

    /// True when pod `namespace/name` exists now as far as this backend
    /// knows (it holds an address; a deleted pod kept as a tombstone does
    /// not count). The aggregator keeps live pods' idle metric series and
    /// lets gone pods' series expire. The default, `false`, suits backends
    /// that know no pods.
    fn has_pod(&self, _namespace: &str, _name: &str) -> bool {
        false
    }

    /// The Services with their endpoints per zone (EndpointSlices), for
    /// Service attribution and the in-zone routing estimate. `None` (the
    /// default) for backends that know no Services' endpoints.
    fn service_topology(&self) -> Option<Arc<ServiceTopology>> {
        None
    }
}

impl<R: Resolver + ?Sized> Resolver for Arc<R> {
    fn resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Arc<Endpoint> {
        (**self).resolve(ip, observed_at)
    }
    fn try_resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Option<Arc<Endpoint>> {
        (**self).try_resolve(ip, observed_at)
    }
    fn is_monitored_node(&self, node: &str) -> bool {
        (**self).is_monitored_node(node)
    }
    fn is_synced(&self) -> bool {
        (**self).is_synced()
    }
    fn service_cidrs(&self) -> Vec<IpPrefix> {
        (**self).service_cidrs()
    }
    fn has_pod(&self, namespace: &str, name: &str) -> bool {
        (**self).has_pod(namespace, name)
    }
    fn service_topology(&self) -> Option<Arc<ServiceTopology>> {
        (**self).service_topology()
    }
}

/// Names one entry of an input file in error messages, e.g.
/// `endpoints[2] (rds-primary)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    /// The list the entry is in (`endpoints`, `pods`, `nodes`, ...).
    pub section: &'static str,
    /// Zero-based position in that list.
    pub index: usize,
    /// The entry's name, when it has one.
    pub name: Option<String>,
}

impl EntryRef {
    pub(crate) fn new(section: &'static str, index: usize, name: Option<&str>) -> Self {
        EntryRef {
            section,
            index,
            name: name.filter(|n| !n.is_empty()).map(str::to_owned),
        }
    }
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.section, self.index)?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

/// Errors of the resolution subsystem: loading and validating the custom
/// endpoints and static topology files, and starting the Kubernetes backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the configured limit.
    #[error("{path} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least this many bytes).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is not valid YAML, or does not have the expected shape
    /// (the source names the line, column and field).
    #[error("{path}: not a valid {what} file")]
    Yaml {
        /// The file (`<inline>` when parsed from a string).
        path: PathBuf,
        /// What kind of file was expected.
        what: &'static str,
        /// The YAML error, with its location.
        #[source]
        source: YamlError,
    },
    /// The file nests collections deeper than [`MAX_YAML_DEPTH`] (or
    /// breaks another bound of the linear-time pre-pass that runs before
    /// the full parse, whose cost grows with the square of the depth).
    #[error("{path}: {what} file rejected before parsing: nested deeper than {max_depth} levels")]
    TooDeep {
        /// The file (`<inline>` when parsed from a string).
        path: PathBuf,
        /// What kind of file was expected.
        what: &'static str,
        /// The limit.
        max_depth: usize,
        /// The pre-pass's finding, with its location.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// The file is not well-formed YAML, as found by the pre-pass.
    #[error("{path}: not a valid {what} file")]
    Malformed {
        /// The file (`<inline>` when parsed from a string).
        path: PathBuf,
        /// What kind of file was expected.
        what: &'static str,
        /// The syntax error, with its location.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A required field is absent or empty.
    #[error("{entry}: field `{field}` is missing or empty")]
    MissingField {
        /// The entry.
        entry: EntryRef,
        /// The field.
        field: &'static str,
    },
    /// An address field does not hold an IP address.
    #[error("{entry}: field `{field}`: {value:?} is not an IP address")]
    BadAddress {
        /// The entry.
        entry: EntryRef,
        /// The field, with the list position (`ips[1]`).
        field: String,
        /// The text found.
        value: String,
    },
    /// A CIDR field does not hold a valid prefix.
    #[error("{entry}: field `{field}`: {value:?} is not a valid CIDR")]
    BadCidr {
        /// The entry.
        entry: EntryRef,
        /// The field, with the list position (`cidrs[0]`).
        field: String,
        /// The text found.
        value: String,
        /// What is wrong with it.
        #[source]
        source: PrefixParseError,
    },
    /// Two entries claim the same exact address (or the same CIDR).
    #[error("{entry}: field `{field}`: {value} is already claimed by {first}")]
    Duplicate {
        /// The later entry.
        entry: EntryRef,
        /// The field of the later entry.
        field: String,
        /// The address or CIDR.
        value: String,
        /// The entry that claimed it first.
        first: Box<EntryRef>,
    },
    /// A field refers to something the file does not define (a pod on an
    /// unknown node).
    #[error("{entry}: field `{field}`: {value:?} is not defined in the file")]
    UnknownReference {
        /// The entry.
        entry: EntryRef,
        /// The field.
        field: &'static str,
        /// The reference.
        value: String,
    },
    /// A Kubernetes label selector could not be parsed.
    #[error("label selector {selector:?}: {reason}")]
    BadSelector {
        /// The selector as given.
        selector: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request to the Kubernetes API failed while starting the backend.
    #[cfg(feature = "kube")]
    #[error("Kubernetes API request failed: {what}")]
    Kube {
        /// What was being done.
        what: &'static str,
        /// The client error.
        #[source]
        source: ::kube::Error,
    },
}

pub(crate) use crate::error_chain;

/// Why a YAML file did not parse: the parser's message and where. Our own
/// type, so the YAML library (serde_yaml is deprecated) can change without
/// changing this crate's API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    message: String,
    location: Option<(usize, usize)>,
}

impl YamlError {
    /// The parser's message (it names the line, column and field).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Line and column (1-based) where parsing stopped, when known.
    pub fn location(&self) -> Option<(usize, usize)> {
        self.location
    }
}

impl YamlError {
    /// Not a `From` impl: that would put serde_yaml in the public API.
    pub(crate) fn from_serde(e: serde_yaml::Error) -> Self {
        YamlError {
            location: e.location().map(|l| (l.line(), l.column())),
            message: e.to_string(),
        }
    }
}
