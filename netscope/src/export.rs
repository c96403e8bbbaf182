//! Consuming resolved, deduplicated flows.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::endpoint::Endpoint;
use crate::flow::{Counters, Direction};

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

/// Consumes resolved flows: metrics, flow logs, or an embedder's sink.
pub trait Exporter: Send + Sync {
    /// Hands over one batch. Must not block for long: the ingest path calls it.
    fn export(&self, flows: &[ResolvedFlow]);
}
