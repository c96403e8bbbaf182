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

/// A drain read from the kernel and not yet cleared there: the first phase
/// of a two-phase drain ([`Collector::stage`], then [`Collector::commit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Staged {
    /// What was read.
    pub drain: Drain,
    /// The stage's epoch, to pass to [`Collector::commit`]; 0 when the
    /// collector cleared it already (one-phase). A stage that an earlier
    /// process made and never committed comes back with its own epoch.
    pub epoch: u64,
    /// Identity of the kernel state the epochs count in (the pinned meta
    /// map's kernel id); 0 when they do not outlive the process.
    pub scope: u64,
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

    /// Reads what [`Collector::drain`] would return without clearing it in
    /// the kernel: until [`Collector::commit`], every later `stage` returns
    /// the same counters with the same epoch (also in another process, when
    /// the kernel state is pinned). The caller stores them durably, then
    /// commits. The default is one-phase: a drain, epoch 0.
    ///
    /// # Errors
    /// As [`Collector::drain`].
    fn stage(&mut self) -> Result<Staged, CollectError> {
        Ok(Staged {
            drain: self.drain()?,
            epoch: 0,
            scope: 0,
        })
    }

    /// Clears the stage of `epoch` in the kernel. Committing an epoch that
    /// is already committed does nothing.
    ///
    /// # Errors
    /// As [`Collector::drain`].
    fn commit(&mut self, epoch: u64) -> Result<(), CollectError> {
        let _ = epoch;
        Ok(())
    }
}
