//! Resolving addresses to endpoints.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::endpoint::Endpoint;

/// Maps an address, at the time it was observed, to an [`Endpoint`]. Reads
/// an in-memory snapshot and never blocks on the network.
pub trait Resolver: Send + Sync {
    /// Resolves `ip` as of `observed_at`. Unknown addresses resolve to
    /// [`Endpoint::external`].
    fn resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Arc<Endpoint>;

    /// True when a netscope agent runs (is Ready) on `node`, so that the
    /// receiver's `ToPod` observation of traffic to its pods exists and is
    /// the one counted (DESIGN.md §4). The default says every node is.
    fn is_monitored_node(&self, node: &str) -> bool {
        let _ = node;
        true
    }
}
