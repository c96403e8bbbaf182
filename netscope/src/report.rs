//! Agent-side reports: what an agent sends to the aggregator, and the
//! memory-bounded buffer that keeps every byte until the aggregator has
//! acknowledged it.
//!
//! # Exactly once
//!
//! A report is identified by `(instance id, sequence)`. The aggregator counts
//! each pair at most once. The buffer therefore follows two rules:
//!
//! - A report that was *sent* is frozen: until it is acknowledged it is
//!   retried verbatim, with the same sequence number and the same content.
//!   Merging it into a later report under a new sequence number would count
//!   it twice whenever only the acknowledgement was lost.
//! - Deltas drained while a report is in flight (for instance during an
//!   outage of the aggregator) are merged, flow by flow, into one pending
//!   set that becomes the next report once the frozen one is acknowledged.
//!
//! So at most two sets of flows are held: the frozen report and the pending
//! set, each bounded by `max_flows`. A new flow that finds the pending set
//! full is folded into the pending overflow counters (its bytes stay in the
//! totals; only its identity is lost) and is counted in
//! `netscope_agent_report_folded_flows_total`.
//!
//! With the `grpc` feature, [`Reporter`] drives a [`ReportBuffer`] from any
//! [`Collector`](crate::Collector) to any [`ReportSink`].

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use crate::collect::Drain;
use crate::flow::{Counters, FlowKey, FlowSample};

#[cfg(feature = "grpc")]
mod driver;
pub mod journal;
#[cfg(feature = "grpc")]
pub use driver::{
    Ack, ReportSink, Reporter, ReporterConfig, ReporterSummary, SampleTransform, SendError,
};

/// Default bound of the agent's pending set, in flows (`--max-buffered-flows`).
pub const DEFAULT_MAX_BUFFERED_FLOWS: usize = 200_000;

/// Default most samples in one report, the agent's and the aggregator's
/// (`--max-report-samples`, `--max-samples`). The agent splits its buffer
/// into reports of at most this many samples.
pub const DEFAULT_MAX_REPORT_SAMPLES: usize = 50_000;

/// Identity of one run of an agent: 16 random bytes, fresh at every start.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub [u8; 16]);

impl InstanceId {
    /// A fresh random id.
    pub fn random() -> Self {
        let hi = random_u64();
        let lo = random_u64();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&hi.to_be_bytes());
        b[8..].copy_from_slice(&lo.to_be_bytes());
        InstanceId(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

/// A random `u64` from the standard library's per-process random hasher
/// keys, mixed with the time and a counter. Good enough for instance ids and
/// jitter; not for cryptography.
pub(crate) fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::collections::hash_map::RandomState::new().hash_one((
        SystemTime::now(),
        std::process::id(),
        n,
    ))
}

/// One report from an agent: every flow counted in `[window_start,
/// window_end]` that was not reported before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Kubernetes node name of the reporting agent.
    pub node: String,
    /// The agent run that made the report.
    pub instance: InstanceId,
    /// Sequence number, from 1, one more for each new report of `instance`.
    pub seq: u64,
    /// Start of the window the counters cover.
    pub window_start: SystemTime,
    /// End of the window; the observation time used for resolution.
    pub window_end: SystemTime,
    /// Per-flow counters.
    pub samples: Vec<FlowSample>,
    /// Counted bytes without a flow identity (kernel table full, or the
    /// agent's buffer bound).
    pub overflow: Counters,
    /// How many flows the agent folded into `overflow` because of its
    /// buffer bound.
    pub folded_flows: u64,
}

impl Report {
    /// Sum of all samples plus the overflow.
    pub fn total(&self) -> Counters {
        let mut t = self.overflow;
        for s in &self.samples {
            t += s.counters;
        }
        t
    }
}

/// What [`ReportBuffer::add`] did with one drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddOutcome {
    /// Samples merged into the pending set (new or existing flows).
    pub merged: usize,
    /// New flows folded into overflow because the pending set was full.
    pub folded_flows: u64,
    /// Bytes and packets of those folded flows.
    pub folded: Counters,
}

/// The agent's memory-bounded store of unacknowledged counters. Pure logic:
/// no I/O, no clock; the caller passes window times in.
#[derive(Debug)]
pub struct ReportBuffer {
    node: String,
    instance: InstanceId,
    next_seq: u64,
    max_flows: usize,
    max_report_samples: usize,
    pending: HashMap<FlowKey, Counters>,
    pending_overflow: Counters,
    pending_folded: u64,
    pending_window: Option<(SystemTime, SystemTime)>,
    in_flight: Option<Report>,
}

impl ReportBuffer {
    /// An empty buffer for one agent run. `max_flows` bounds the pending set
    /// (and so each report); at least 1 is used.
    pub fn new(node: impl Into<String>, instance: InstanceId, max_flows: usize) -> Self {
        ReportBuffer {
            node: node.into(),
            instance,
            next_seq: 1,
            max_flows: max_flows.max(1),
            max_report_samples: DEFAULT_MAX_REPORT_SAMPLES,
            pending: HashMap::new(),
            pending_overflow: Counters::default(),
            pending_folded: 0,
            pending_window: None,
            in_flight: None,
        }
    }

    /// Bounds each report to `max` samples (at least 1): a larger pending
    /// set goes out as several reports, one after the other, each covering
    /// the pending window.
    pub fn with_max_report_samples(mut self, max: usize) -> Self {
        self.max_report_samples = max.max(1);
        self
    }

    /// The agent run this buffer belongs to.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// Merges one drain, covering `[window_start, window_end]`, into the
    /// pending set. Flows that do not fit are folded into overflow.
    pub fn add(
        &mut self,
        drain: Drain,
        window_start: SystemTime,
        window_end: SystemTime,
    ) -> AddOutcome {
        let mut out = AddOutcome::default();
        self.pending_window = Some(match self.pending_window {
            Some((s, e)) => (s.min(window_start), e.max(window_end)),
            None => (window_start, window_end.max(window_start)),
        });
        self.pending_overflow += drain.overflow;
        for s in drain.samples {
            if s.counters.is_zero() {
                continue;
            }
            if let Some(c) = self.pending.get_mut(&s.key) {
                *c += s.counters;
                out.merged += 1;
            } else if self.pending.len() < self.max_flows {
                self.pending.insert(s.key, s.counters);
                out.merged += 1;
            } else {
                self.pending_overflow += s.counters;
                self.pending_folded += 1;
                out.folded_flows += 1;
                out.folded += s.counters;
            }
        }
        out
    }

    /// The report to send now: the frozen in-flight report if there is one,
    /// else up to `max_report_samples` flows of the pending set frozen into
    /// a new report with the next sequence number (the first report of a
    /// split carries the overflow; the rest stays pending, with its
    /// window). `None` when there is nothing to send.
    pub fn next_report(&mut self) -> Option<&Report> {
        if self.in_flight.is_none() {
            if self.pending.is_empty() && self.pending_overflow.is_zero() {
                return None;
            }
            let samples: Vec<FlowSample> = if self.pending.len() <= self.max_report_samples {
                self.pending
                    .drain()
                    .map(|(key, counters)| FlowSample { key, counters })
                    .collect()
            } else {
                let keys: Vec<FlowKey> = self
                    .pending
                    .keys()
                    .take(self.max_report_samples)
                    .copied()
                    .collect();
                keys.into_iter()
                    .filter_map(|key| {
                        self.pending
                            .remove(&key)
                            .map(|counters| FlowSample { key, counters })
                    })
                    .collect()
            };
            let window = if self.pending.is_empty() {
                self.pending_window.take()
            } else {
                self.pending_window
            };
            let (window_start, window_end) =
                window.unwrap_or((SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH));
            let report = Report {
                node: self.node.clone(),
                instance: self.instance,
                seq: self.next_seq,
                window_start,
                window_end,
                samples,
                overflow: std::mem::take(&mut self.pending_overflow),
                folded_flows: std::mem::take(&mut self.pending_folded),
            };
            self.next_seq += 1;
            self.in_flight = Some(report);
        }
        self.in_flight.as_ref()
    }

    /// The frozen report, if one is waiting for its acknowledgement.
    pub fn in_flight(&self) -> Option<&Report> {
        self.in_flight.as_ref()
    }

    /// Forgets the in-flight report if `seq` is its sequence number. Returns
    /// whether it did.
    pub fn acknowledge(&mut self, seq: u64) -> bool {
        match &self.in_flight {
            Some(r) if r.seq == seq => {
                self.in_flight = None;
                true
            }
            _ => false,
        }
    }

    /// Drops the in-flight report without an acknowledgement (the aggregator
    /// rejected it for good) and returns it, so the caller can count what
    /// was lost.
    pub fn discard_in_flight(&mut self) -> Option<Report> {
        self.in_flight.take()
    }

    /// True when something is waiting to be sent or acknowledged.
    pub fn has_unacknowledged(&self) -> bool {
        self.in_flight.is_some() || !self.pending.is_empty() || !self.pending_overflow.is_zero()
    }

    /// Flows held: in flight plus pending.
    pub fn buffered_flows(&self) -> usize {
        self.pending.len() + self.in_flight.as_ref().map_or(0, |r| r.samples.len())
    }

    /// Bytes and packets held: in flight plus pending, overflow included.
    pub fn buffered_totals(&self) -> Counters {
        let mut t = self.pending_overflow;
        for c in self.pending.values() {
            t += *c;
        }
        if let Some(r) = &self.in_flight {
            t += r.total();
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Direction;
    use std::time::Duration;

    fn sample(src: &str, dst: &str, bytes: u64) -> FlowSample {
        FlowSample {
            key: FlowKey::new(
                src.parse().expect("test address"),
                dst.parse().expect("test address"),
                Direction::FromPod,
            ),
            counters: Counters::new(bytes, 1),
        }
    }

    fn drain(samples: Vec<FlowSample>) -> Drain {
        Drain {
            samples,
            overflow: Counters::default(),
            capacity: 16,
        }
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn sent_report_is_frozen_and_later_deltas_merge() {
        let mut b = ReportBuffer::new("n1", InstanceId([1; 16]), 10);
        b.add(
            drain(vec![sample("10.0.0.1", "10.0.0.2", 100)]),
            t(0),
            t(10),
        );
        let first = b.next_report().expect("something to send").clone();
        assert_eq!(first.seq, 1);
        // Not acknowledged; more traffic arrives, twice.
        b.add(drain(vec![sample("10.0.0.1", "10.0.0.2", 5)]), t(10), t(20));
        b.add(drain(vec![sample("10.0.0.1", "10.0.0.2", 7)]), t(20), t(30));
        // The retry is the same report, verbatim.
        assert_eq!(b.next_report(), Some(&first), "retry must not change");
        assert!(b.acknowledge(1), "ack of the in-flight seq");
        let second = b.next_report().expect("merged deltas").clone();
        assert_eq!(second.seq, 2);
        assert_eq!(second.samples.len(), 1, "deltas merged per flow");
        assert_eq!(second.samples[0].counters, Counters::new(12, 2));
        assert_eq!((second.window_start, second.window_end), (t(10), t(30)));
        assert!(!b.acknowledge(1), "a stale ack does nothing");
        assert!(b.acknowledge(2));
        assert!(b.next_report().is_none());
        assert!(!b.has_unacknowledged());
    }

    #[test]
    fn bound_folds_into_overflow_and_keeps_totals() {
        let mut b = ReportBuffer::new("n1", InstanceId([2; 16]), 2);
        let out = b.add(
            drain(vec![
                sample("10.0.0.1", "10.0.0.2", 10),
                sample("10.0.0.1", "10.0.0.3", 20),
                sample("10.0.0.1", "10.0.0.4", 30),
                sample("10.0.0.1", "10.0.0.5", 40),
                // Existing flow: merges even though the set is full.
                sample("10.0.0.1", "10.0.0.2", 1),
            ]),
            t(0),
            t(1),
        );
        assert_eq!(out.folded_flows, 2);
        assert_eq!(out.folded, Counters::new(70, 2));
        assert_eq!(b.buffered_totals(), Counters::new(101, 5));
        let r = b.next_report().expect("report").clone();
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.overflow, Counters::new(70, 2));
        assert_eq!(r.folded_flows, 2);
        assert_eq!(r.total(), Counters::new(101, 5), "no byte lost");
    }

    #[test]
    fn kernel_overflow_alone_is_reported() {
        let mut b = ReportBuffer::new("n1", InstanceId([3; 16]), 2);
        b.add(
            Drain {
                samples: vec![],
                overflow: Counters::new(9, 1),
                capacity: 2,
            },
            t(0),
            t(1),
        );
        let r = b.next_report().expect("overflow-only report");
        assert_eq!(r.overflow, Counters::new(9, 1));
    }

    #[test]
    fn instance_ids_differ() {
        assert_ne!(InstanceId::random(), InstanceId::random());
        assert_eq!(InstanceId([0xab; 16]).to_string().len(), 32);
    }

    #[test]
    fn a_large_buffer_goes_out_in_reports_within_the_limit() {
        let mut b = ReportBuffer::new("n1", InstanceId([4; 16]), 1000).with_max_report_samples(3);
        let samples = (1..=8)
            .map(|i| sample("10.0.0.1", &format!("10.0.1.{i}"), 100 * i))
            .collect();
        b.add(
            Drain {
                samples,
                overflow: Counters::new(50, 1),
                capacity: 16,
            },
            t(0),
            t(10),
        );
        let mut total = Counters::default();
        let mut sizes = Vec::new();
        let mut seq = 0;
        while let Some(r) = b.next_report() {
            let r = r.clone();
            assert!(r.samples.len() <= 3, "report of {}", r.samples.len());
            assert_eq!((r.window_start, r.window_end), (t(0), t(10)));
            assert_eq!(r.seq, seq + 1, "consecutive sequences");
            seq = r.seq;
            sizes.push(r.samples.len());
            total += r.total();
            assert!(b.acknowledge(r.seq));
        }
        assert_eq!(sizes, vec![3, 3, 2]);
        assert_eq!(total, Counters::new(3650, 9), "every byte, once");
        assert!(!b.has_unacknowledged());
    }
}
