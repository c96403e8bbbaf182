//! Draining per-flow counters from the kernel.

use crate::flow::{Counters, FlowSample};

/// What one drain returns: every flow counted since the previous drain, with
/// per-CPU values folded, and what did not fit in the flow table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drain {
    /// Per-flow counters since the previous drain.
    pub samples: Vec<FlowSample>,
    /// Bytes and packets that found no slot because the flow table was full.
    /// They are part of the totals; only their flow identity is lost.
    pub overflow: Counters,
    /// Capacity of the flow table, for fill-level metrics.
    pub capacity: usize,
}

impl Drain {
    /// Sum of all samples plus the overflow.
    pub fn total(&self) -> Counters {
        let mut t = self.overflow;
        for s in &self.samples {
            t += s.counters;
        }
        t
    }
}

/// Errors from draining.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// A BPF map operation failed.
    #[error("{op} on map {map} failed")]
    Map {
        /// Operation (`lookup_and_delete_batch`, `update`, ...).
        op: &'static str,
        /// Map name.
        map: String,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

/// Drains per-flow counters. Synchronous, no network I/O.
pub trait Collector: Send {
    /// Returns the flows counted since the previous call. No increment made
    /// by the kernel between two calls is lost or returned twice.
    ///
    /// # Errors
    /// [`CollectError::Map`] when a map operation fails. Counters not yet
    /// drained stay in the kernel and are returned by a later call.
    fn drain(&mut self) -> Result<Drain, CollectError>;
}
