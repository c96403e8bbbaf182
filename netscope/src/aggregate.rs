//! Counting every byte once (DESIGN.md §4): the aggregator's core. Pure
//! logic: the caller passes the current time in.
//!
//! Every cross-node flow is observed twice: as `FromPod` on the sender's
//! node and as `ToPod` on the receiver's node. A same-node flow is observed
//! twice by one agent. For each observation [`counted_direction`] decides
//! whether it is the one to keep:
//!
//! - the destination is a pod on a monitored node: the receiver's `ToPod`;
//! - the source is outside the cluster (external or custom) and the
//!   destination is a pod: `ToPod`;
//! - anything else (custom, external, unresolved Service, node, or a pod on
//!   an unmonitored node): the sender's `FromPod`.
//!
//! Reports are identified by `(instance id, sequence)`; [`DedupTable`]
//! remembers, per agent instance, a sliding window of the sequence numbers it
//! counted, so a replayed report is acknowledged but not counted again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use crate::endpoint::{Endpoint, EndpointKind};
use crate::export::{Exporter, ResolvedFlow};
use crate::flow::Direction;
use crate::report::{InstanceId, Report};
use crate::resolve::Resolver;

/// What the aggregator did with one report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// The report had been counted before (or is too old to tell); it was
    /// acknowledged and not counted again.
    pub duplicate: bool,
    /// Samples kept (the counted observation of their flow).
    pub counted: usize,
    /// Samples dropped because the other observation of their flow counts.
    pub other_view: usize,
}

/// Takes validated reports. The gRPC server hands every report to one.
pub trait IngestSink: Send + Sync {
    /// Counts `report` (once), at time `now`.
    fn ingest(&self, report: Report, now: SystemTime) -> IngestOutcome;
}

/// True for endpoints outside the cluster: external addresses and custom
/// endpoints.
fn outside_cluster(ep: &Endpoint) -> bool {
    matches!(ep.kind, EndpointKind::External | EndpointKind::Custom)
}

/// Which observation of a flow from `src` to `dst` is counted (DESIGN.md §4).
pub fn counted_direction(src: &Endpoint, dst: &Endpoint, resolver: &dyn Resolver) -> Direction {
    if dst.kind == EndpointKind::Pod
        && (outside_cluster(src) || resolver.is_monitored_node(&dst.node))
    {
        Direction::ToPod
    } else {
        Direction::FromPod
    }
}

/// Settings of the replay table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// An instance not heard from for this long is forgotten. Keep it well
    /// above the longest time an agent may retry one report.
    pub idle_ttl: Duration,
    /// Most agent instances remembered; past it the longest-idle one is
    /// forgotten (and counted).
    pub max_instances: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            idle_ttl: Duration::from_secs(6 * 3600),
            max_instances: 100_000,
        }
    }
}

/// Replay check result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not seen before: count it.
    New,
    /// Counted before: acknowledge, do not count.
    Replay,
    /// Older than the window: cannot tell, so it is not counted (an agent
    /// never has more than one report in flight, so this does not happen
    /// with a well-behaved agent).
    TooOld,
}

/// Window of sequence numbers remembered per instance.
const WINDOW: u64 = 64;

#[derive(Debug)]
struct InstanceState {
    node: Arc<str>,
    /// Highest sequence counted.
    highest: u64,
    /// Bit `i` set: `highest - i` was counted.
    seen: u64,
    last_seen: SystemTime,
}

#[derive(Debug)]
struct NodeState {
    current: InstanceId,
}

/// Per-instance sliding windows of counted sequence numbers: memory is
/// bounded per instance (a few words) and in the number of instances.
#[derive(Debug, Default)]
pub struct DedupTable {
    config: DedupConfig,
    instances: HashMap<InstanceId, InstanceState>,
    nodes: HashMap<Arc<str>, NodeState>,
}

impl DedupTable {
    /// An empty table.
    pub fn new(config: DedupConfig) -> Self {
        DedupTable {
            config,
            instances: HashMap::new(),
            nodes: HashMap::new(),
        }
    }

    /// Instances remembered.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// True when no instance is remembered.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Checks `(instance, seq)` and marks it counted when new. Also tracks
    /// which instance currently speaks for `node`, and reports two live
    /// instances with one node name.
    pub fn check_and_mark(
        &mut self,
        node: &str,
        instance: InstanceId,
        seq: u64,
        now: SystemTime,
    ) -> SeqCheck {
        if !self.instances.contains_key(&instance) {
            self.make_room(now);
            let node: Arc<str> = Arc::from(node);
            match self.nodes.get(&node) {
                Some(prev) if prev.current != instance => info!(
                    node = %node,
                    previous = %prev.current,
                    instance = %instance,
                    "new agent instance for node (agent restarted)"
                ),
                _ => {}
            }
            self.nodes
                .insert(node.clone(), NodeState { current: instance });
            self.instances.insert(
                instance,
                InstanceState {
                    node,
                    highest: seq,
                    seen: 1,
                    last_seen: now,
                },
            );
            metrics::gauge!("netscope_aggregator_agent_instances").set(self.instances.len() as f64);
            return SeqCheck::New;
        }
        let Some(st) = self.instances.get_mut(&instance) else {
            return SeqCheck::New;
        };
        st.last_seen = now;
        if &*st.node != node {
            metrics::counter!("netscope_aggregator_node_identity_conflicts_total").increment(1);
            warn!(
                instance = %instance,
                first = %st.node,
                now = node,
                "one agent instance reports under two node names; counting by instance"
            );
        } else if let Some(ns) = self.nodes.get_mut(node) {
            if ns.current != instance {
                // An older instance speaks again after a newer one appeared:
                // two live agents claim one node.
                metrics::counter!("netscope_aggregator_node_identity_conflicts_total").increment(1);
                warn!(
                    node,
                    instance = %instance,
                    other = %ns.current,
                    "two live agent instances report for one node; both are counted, each once"
                );
                ns.current = instance;
            }
        }
        if seq > st.highest {
            let shift = seq - st.highest;
            st.seen = if shift >= WINDOW { 0 } else { st.seen << shift };
            st.seen |= 1;
            st.highest = seq;
            SeqCheck::New
        } else {
            let back = st.highest - seq;
            if back >= WINDOW {
                SeqCheck::TooOld
            } else if st.seen & (1 << back) != 0 {
                SeqCheck::Replay
            } else {
                st.seen |= 1 << back;
                SeqCheck::New
            }
        }
    }

    /// Forgets idle instances; if still full, the longest-idle one.
    fn make_room(&mut self, now: SystemTime) {
        if self.instances.len() < self.config.max_instances.max(1) {
            return;
        }
        let ttl = self.config.idle_ttl;
        let before = self.instances.len();
        self.instances.retain(|_, st| {
            now.duration_since(st.last_seen)
                .map_or(true, |idle| idle < ttl)
        });
        let mut evicted = before - self.instances.len();
        if self.instances.len() >= self.config.max_instances.max(1) {
            if let Some(oldest) = self
                .instances
                .iter()
                .min_by_key(|(_, st)| st.last_seen)
                .map(|(id, _)| *id)
            {
                self.instances.remove(&oldest);
                evicted += 1;
                metrics::counter!("netscope_aggregator_instances_evicted_early_total").increment(1);
                warn!(
                    instance = %oldest,
                    max = self.config.max_instances,
                    "replay table full: forgot the longest-idle agent instance early"
                );
            }
        }
        let live: std::collections::HashSet<InstanceId> = self.instances.keys().copied().collect();
        self.nodes.retain(|_, ns| live.contains(&ns.current));
        debug!(evicted, "replay table pruned");
    }
}

/// The aggregator's core: replay check, dedup of the two observations,
/// resolution, hand-off to the exporters.
pub struct Aggregator {
    resolver: Arc<dyn Resolver>,
    exporters: Vec<Arc<dyn Exporter>>,
    dedup: Mutex<DedupTable>,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("exporters", &self.exporters.len())
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    /// An aggregator resolving through `resolver` and exporting to
    /// `exporters`.
    pub fn new(
        resolver: Arc<dyn Resolver>,
        exporters: Vec<Arc<dyn Exporter>>,
        dedup: DedupConfig,
    ) -> Self {
        Aggregator {
            resolver,
            exporters,
            dedup: Mutex::new(DedupTable::new(dedup)),
        }
    }

    /// Applies the counting rule to `report`'s samples and returns the kept
    /// flows, without the replay check and without exporting. The pure core
    /// of [`Aggregator::ingest`], public for benchmarks and embedders.
    pub fn resolve_report(&self, report: &Report, out: &mut Vec<ResolvedFlow>) -> usize {
        let resolver = &*self.resolver;
        let at = report.window_end;
        let mut other_view = 0;
        for s in &report.samples {
            let dst = resolver.resolve(s.key.dst, at);
            let dst_is_pod = dst.kind == EndpointKind::Pod;
            // Decide as much as possible before resolving the source.
            let other = match s.key.direction {
                Direction::ToPod => !dst_is_pod,
                Direction::FromPod => dst_is_pod && resolver.is_monitored_node(&dst.node),
            };
            if other {
                other_view += 1;
                continue;
            }
            let src = resolver.resolve(s.key.src, at);
            if counted_direction(&src, &dst, resolver) != s.key.direction {
                other_view += 1;
                continue;
            }
            out.push(ResolvedFlow {
                timestamp: at,
                src_ip: s.key.src,
                dst_ip: s.key.dst,
                src,
                dst,
                direction_counted: s.key.direction,
                counters: s.counters,
            });
        }
        other_view
    }

    /// The replay check alone.
    pub fn check_replay(&self, report: &Report, now: SystemTime) -> SeqCheck {
        match self.dedup.lock() {
            Ok(mut t) => t.check_and_mark(&report.node, report.instance, report.seq, now),
            Err(poisoned) => {
                poisoned
                    .into_inner()
                    .check_and_mark(&report.node, report.instance, report.seq, now)
            }
        }
    }
}

impl IngestSink for Aggregator {
    fn ingest(&self, report: Report, now: SystemTime) -> IngestOutcome {
        debug!(
            node = %report.node,
            instance = %report.instance,
            seq = report.seq,
            samples = report.samples.len(),
            "Received traffic data"
        );
        match self.check_replay(&report, now) {
            SeqCheck::New => {}
            check => {
                let reason = if check == SeqCheck::Replay {
                    "replay"
                } else {
                    "too_old"
                };
                metrics::counter!("netscope_aggregator_reports_total", "result" => reason)
                    .increment(1);
                debug!(
                    node = %report.node,
                    instance = %report.instance,
                    seq = report.seq,
                    reason,
                    "report already counted; acknowledged, not counted again"
                );
                return IngestOutcome {
                    duplicate: true,
                    ..IngestOutcome::default()
                };
            }
        }
        let mut flows = Vec::with_capacity(report.samples.len() / 2 + 1);
        let other_view = self.resolve_report(&report, &mut flows);
        for e in &self.exporters {
            e.export(&flows);
        }
        metrics::counter!("netscope_aggregator_reports_total", "result" => "counted").increment(1);
        metrics::counter!("netscope_aggregator_samples_total", "result" => "counted")
            .increment(flows.len() as u64);
        metrics::counter!("netscope_aggregator_samples_total", "result" => "other_view")
            .increment(other_view as u64);
        if !report.overflow.is_zero() {
            metrics::counter!("netscope_aggregator_overflow_bytes_total", "node" => report.node.clone())
                .increment(report.overflow.bytes);
            metrics::counter!("netscope_aggregator_overflow_packets_total", "node" => report.node.clone())
                .increment(report.overflow.packets);
        }
        if !self.resolver.is_monitored_node(&report.node) {
            metrics::counter!("netscope_aggregator_reports_from_unmonitored_nodes_total")
                .increment(1);
            debug!(node = %report.node, "report from a node not known as monitored");
        }
        IngestOutcome {
            duplicate: false,
            counted: flows.len(),
            other_view,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn replay_window() {
        let mut d = DedupTable::new(DedupConfig::default());
        let a = InstanceId([1; 16]);
        assert_eq!(d.check_and_mark("n", a, 1, t(0)), SeqCheck::New);
        assert_eq!(d.check_and_mark("n", a, 1, t(1)), SeqCheck::Replay);
        assert_eq!(d.check_and_mark("n", a, 3, t(2)), SeqCheck::New);
        assert_eq!(
            d.check_and_mark("n", a, 2, t(3)),
            SeqCheck::New,
            "late but unseen"
        );
        assert_eq!(d.check_and_mark("n", a, 2, t(3)), SeqCheck::Replay);
        assert_eq!(d.check_and_mark("n", a, 3, t(3)), SeqCheck::Replay);
        assert_eq!(d.check_and_mark("n", a, 200, t(4)), SeqCheck::New);
        assert_eq!(d.check_and_mark("n", a, 100, t(5)), SeqCheck::TooOld);
        // Another instance on the same node is independent.
        let b = InstanceId([2; 16]);
        assert_eq!(d.check_and_mark("n", b, 1, t(6)), SeqCheck::New);
        assert_eq!(d.check_and_mark("n", b, 1, t(6)), SeqCheck::Replay);
    }

    #[test]
    fn table_is_bounded() {
        let mut d = DedupTable::new(DedupConfig {
            idle_ttl: Duration::from_secs(10),
            max_instances: 3,
        });
        for i in 0..10u8 {
            d.check_and_mark("n", InstanceId([i; 16]), 1, t(u64::from(i)));
            assert!(d.len() <= 3, "table grew to {}", d.len());
        }
    }
}
