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
}
