//! The gRPC transport between agents and the aggregator (`netscope.v1`).
//!
//! - [`pb`]: the generated protobuf types, client and server.
//! - [`convert`]: [`Report`](crate::report::Report) <-> protobuf, with
//!   validation of everything that comes off the wire.
//! - [`server`]: the aggregator side: a tonic service that hands validated
//!   reports to an [`IngestSink`](crate::aggregate::IngestSink), plus HTTP endpoints on
//!   the same port.
//! - [`client`]: the agent side: [`GrpcSink`](client::GrpcSink), a
//!   [`ReportSink`](crate::report::ReportSink) over a tonic channel.
//! - [`replicas`]: the agent side with several aggregator replicas:
//!   [`ReplicaSink`](replicas::ReplicaSink) picks one by rendezvous hashing
//!   and switches only when the switching rule allows.
//!
//! TLS uses rustls with the ring provider only.

pub mod client;
pub mod convert;
pub mod replicas;
pub mod server;

/// Generated code for the `netscope.v1` protobuf package.
#[allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]
pub mod pb {
    tonic::include_proto!("netscope.v1");

    /// The encoded `FileDescriptorSet` of `netscope.v1`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/netscope_v1_descriptor.bin"));
}

pub use convert::{DropReason, SampleDrops, Validated, ValidationError, ValidationLimits};
