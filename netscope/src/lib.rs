//! netscope: measure, to the byte, the traffic Kubernetes pods send across
//! availability zones.
//!
//! This crate is the capture core that both reference binaries and any
//! embedding agent share. It holds the flow model and the four traits that
//! the parts plug into:
//!
//! - [`Attacher`]: puts the capture program on one interface, one direction.
//! - [`Collector`]: drains per-flow counters from the kernel, exactly.
//! - [`Resolver`]: turns an IP address into a named [`Endpoint`].
//! - [`Exporter`]: consumes resolved, deduplicated flows.
//!
//! Around them: [`report`] (the agent's exactly-once reporter), [`nat`]
//! (undoing Service NAT through conntrack), [`aggregate`] (counting each
//! byte once) and, with the `grpc` feature, `transport` (the `netscope.v1`
//! gRPC protocol, client and server).
//!
//! Everything that needs clang, libbpf or `unsafe` lives in the
//! `netscope-bpf` crate; this crate builds and tests without either. To
//! capture on a node, use `netscope_bpf::capture::CaptureBuilder`, which
//! yields the [`Drain`]s this crate describes.
//!
//! # Features
//! None is on by default; each brings what its name says:
//! - `kube`: the Kubernetes resolver (kube-rs watchers).
//! - `grpc`: the `netscope.v1` gRPC transport, client and server, the
//!   agent's reporter driver and the binaries' HTTP endpoints server.
//! - `conntrack`: undoing Service NAT through the node's conntrack table.
//! - `prometheus`: the Prometheus exporter and the self-metrics recorder.
//! - `logging`: the binaries' log setup (`cli::init_logging`).
//!
//! # Example
//! Name the two ends of drained flows and see which cross a zone:
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::SystemTime;
//! use netscope::{Counters, Direction, FlowKey, FlowSample, MemoryResolver, Resolver};
//!
//! let (a, b): (IpAddr, IpAddr) = ("10.0.1.5".parse().unwrap(), "10.0.2.7".parse().unwrap());
//! let mut pods = MemoryResolver::new();
//! pods.add_pod(a, "web-1", "shop", "node-1", "eu-west-1a")
//!     .add_pod(b, "db-0", "shop", "node-2", "eu-west-1b");
//! let sample = FlowSample {
//!     key: FlowKey { src: a, dst: b, direction: Direction::FromPod, l4: None },
//!     counters: Counters { bytes: 1500, packets: 1 },
//! };
//! let now = SystemTime::now();
//! let (src, dst) = (pods.resolve(sample.key.src, now), pods.resolve(sample.key.dst, now));
//! assert_ne!(src.zone, dst.zone);
//! println!("{}/{} -> {}/{}: {} B across zones", src.namespace, src.name, dst.namespace, dst.name, sample.counters.bytes);
//! ```
//!
//! The design notes the documentation cites ("docs/design.md §4") are in
//! `docs/design.md` of the repository.
#![deny(missing_docs)]

pub mod aggregate;
pub mod attach;
pub mod cli;
pub mod collect;
pub mod discover;
pub mod endpoint;
pub mod export;
pub mod flow;
pub mod metrics;
pub mod nat;
pub mod report;
pub mod resolve;
#[cfg(feature = "grpc")]
pub mod transport;

pub use attach::{AttachError, AttachMode, Attacher, Attachment, Interface};
pub use collect::{CollectError, Collector, Drain, Staged};
pub use endpoint::{Endpoint, EndpointKind, WorkloadKind};
pub use export::{Exporter, ResolvedFlow};
pub use flow::{Counters, Direction, FlowKey, FlowSample, L4};
pub use resolve::Resolver;

pub use aggregate::{Aggregator, IngestSink};

/// Formats an error with its chain of sources, `outer: inner: innermost`,
/// for log lines.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
pub use report::{InstanceId, Report, ReportBuffer};
pub use resolve::memory::MemoryResolver;
