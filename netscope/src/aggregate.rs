//! Counting every byte once (docs/design.md §4): the aggregator's core. Pure
//! logic: the caller passes the current time in.
//!
//! Every cross-node flow is observed twice: as `FromPod` on the sender's
//! node and as `ToPod` on the receiver's node. A same-node flow is observed
//! twice by one agent. For each observation [`counted_direction`] decides
//! whether it is the one to keep:
//!
//! - the source is a pod on a monitored node: the sender's `FromPod`. A
//!   pod's packets always enter the host through its link's ingress hook,
//!   where netscope runs first, whatever the CNI does next; the receiver's
//!   egress hook is skipped by datapaths that deliver with
//!   `bpf_redirect_peer` (Cilium's BPF host routing, Calico eBPF, netkit);
//! - otherwise, when the destination is a pod: the receiver's `ToPod`
//!   (traffic from outside the cluster, from nodes, from pods on unmonitored
//!   nodes), except a reply whose source is still a Service address (its NAT
//!   was not resolved): the backend's own `FromPod` counts it;
//! - anything else: the sender's `FromPod`.
//!
//! Reports are identified by `(instance id, sequence)`; [`DedupTable`]
//! remembers, per agent instance, a sliding window of the sequence numbers it
//! counted, so a replayed report is acknowledged but not counted again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use crate::endpoint::{Endpoint, EndpointKind};
use crate::export::{Exporter, ResolvedFlow};
use crate::flow::Direction;
use crate::report::{InstanceId, Report};
use crate::resolve::{is_link_scoped, Resolver};

/// True when `ip` was a pod on `node` at the start of `report`'s window: a
/// pod that moved to another node during the window was still observed by
/// its old node (the sample keeps the attribution of the window's end).
fn on_node_at_start(resolver: &dyn Resolver, ip: IpAddr, report: &Report, node: &str) -> bool {
    let ep = resolver.resolve(ip, report.window_start);
    ep.kind == EndpointKind::Pod && &*ep.node == node
}

/// Which observation of a flow from `src` to `dst` is counted (docs/transport.md,
/// "Which observation counts"). `None`: neither (a reply from an unresolved
/// Service address into a pod, which the backend's `FromPod` counts).
pub fn counted_direction(
    src: &Endpoint,
    dst: &Endpoint,
    resolver: &dyn Resolver,
) -> Option<Direction> {
    counted_given(sender_counts(src, resolver), src.kind, dst.kind)
}

/// True when the source is a pod on a monitored node: its sender's
/// `FromPod` counts, whatever the destination.
fn sender_counts(src: &Endpoint, resolver: &dyn Resolver) -> bool {
    src.kind == EndpointKind::Pod && resolver.is_monitored_node(&src.node)
}

/// [`counted_direction`] once [`sender_counts`] is known.
fn counted_given(sender: bool, src: EndpointKind, dst: EndpointKind) -> Option<Direction> {
    if sender {
        Some(Direction::FromPod)
    } else if dst == EndpointKind::Pod {
        (src != EndpointKind::Service).then_some(Direction::ToPod)
    } else {
        Some(Direction::FromPod)
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
    /// Most instances remembered per node name; a new one past it makes the
    /// node's oldest instance be forgotten (and counted). An agent restart
    /// makes one new instance, so a handful covers restarts within
    /// `idle_ttl`.
    pub max_instances_per_node: usize,
    /// How far ahead of an instance's highest counted sequence a report may
    /// jump. A well-behaved agent moves by one (more only when reports were
    /// refused for good); a report further ahead is refused, so a forged
    /// huge sequence cannot make the real agent's next reports look like
    /// replays.
    pub max_sequence_jump: u64,
    /// Further jump allowed per second since the instance's last counted
    /// report: an agent that reported to another aggregator replica for a
    /// while comes back this far ahead. 100 covers the shortest collection
    /// interval (100 ms) with ten reports per drain; a forged sequence still
    /// cannot reach further than the time since the real agent's last report
    /// allows.
    pub sequence_jump_per_second: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            idle_ttl: Duration::from_secs(6 * 3600),
            max_instances: 100_000,
            max_instances_per_node: 8,
            max_sequence_jump: 4096,
            sequence_jump_per_second: 100,
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
    /// Further ahead of the highest counted sequence than
    /// [`DedupConfig::max_sequence_jump`]: refused, not remembered.
    TooFarAhead {
        /// The instance's highest counted sequence.
        highest: u64,
    },
}

/// Window of sequence numbers remembered per instance.
const WINDOW: u64 = 64;

/// End of a list in [`DedupTable`]'s slots.
const NIL: usize = usize::MAX;

#[derive(Debug)]
struct InstanceState {
    id: InstanceId,
    node: Arc<str>,
    /// Highest sequence counted.
    highest: u64,
    /// Bit `i` set: `highest - i` was counted.
    seen: u64,
    last_seen: SystemTime,
    /// Neighbours in the recency list (towards the least and the most
    /// recently seen).
    older: usize,
    newer: usize,
}

#[derive(Debug, Default)]
struct NodeState {
    /// The instance that spoke for the node last.
    current: Option<InstanceId>,
    /// The node's remembered instances, oldest first (at most
    /// `max_instances_per_node`).
    instances: std::collections::VecDeque<InstanceId>,
}

/// Per-instance sliding windows of counted sequence numbers: memory is
/// bounded per instance (a few words), in the number of instances and in the
/// number of instances per node. Every operation is O(1): the instances form
/// a recency list (least recently seen first), so eviction takes the list's
/// head instead of scanning the table.
#[derive(Debug, Default)]
pub struct DedupTable {
    config: DedupConfig,
    slots: Vec<Option<InstanceState>>,
    free: Vec<usize>,
    index: HashMap<InstanceId, usize>,
    oldest: usize,
    newest: usize,
    nodes: HashMap<Arc<str>, NodeState>,
}

impl DedupTable {
    /// An empty table.
    pub fn new(config: DedupConfig) -> Self {
        DedupTable {
            config,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            oldest: NIL,
            newest: NIL,
            nodes: HashMap::new(),
        }
    }

    /// Instances remembered.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no instance is remembered.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Node names remembered.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    fn slot(&self, i: usize) -> Option<&InstanceState> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, i: usize) -> Option<&mut InstanceState> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    /// Takes slot `i` out of the recency list.
    fn unlink(&mut self, i: usize) {
        let Some((older, newer)) = self.slot(i).map(|s| (s.older, s.newer)) else {
            return;
        };
        match self.slot_mut(older) {
            Some(o) => o.newer = newer,
            None => self.oldest = newer,
        }
        match self.slot_mut(newer) {
            Some(n) => n.older = older,
            None => self.newest = older,
        }
    }

    /// Puts slot `i` at the most recent end of the list.
    fn push_newest(&mut self, i: usize) {
        let prev = self.newest;
        if let Some(s) = self.slot_mut(i) {
            s.older = prev;
            s.newer = NIL;
        }
        match self.slot_mut(prev) {
            Some(p) => p.newer = i,
            None => self.oldest = i,
        }
        self.newest = i;
    }

    /// Forgets the instance in slot `i`.
    fn remove_slot(&mut self, i: usize) -> Option<InstanceState> {
        self.unlink(i);
        let st = self.slots.get_mut(i).and_then(Option::take)?;
        self.free.push(i);
        self.index.remove(&st.id);
        if let Some(ns) = self.nodes.get_mut(&st.node) {
            if let Some(pos) = ns.instances.iter().position(|id| *id == st.id) {
                ns.instances.remove(pos);
            }
            if ns.current == Some(st.id) {
                ns.current = ns.instances.back().copied();
            }
            if ns.instances.is_empty() {
                self.nodes.remove(&st.node);
            }
        }
        Some(st)
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
        let Some(&i) = self.index.get(&instance) else {
            self.insert(node, instance, seq, now);
            return SeqCheck::New;
        };
        let (base_jump, per_second) = (
            self.config.max_sequence_jump.max(1),
            self.config.sequence_jump_per_second,
        );
        let Some(st) = self.slot_mut(i) else {
            return SeqCheck::New;
        };
        let away = now.duration_since(st.last_seen).map_or(0, |d| d.as_secs());
        let max_jump = base_jump.saturating_add(away.saturating_mul(per_second));
        if seq > st.highest && seq - st.highest > max_jump {
            return SeqCheck::TooFarAhead {
                highest: st.highest,
            };
        }
        st.last_seen = now;
        let first_node = st.node.clone();
        let check = if seq > st.highest {
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
        };
        self.unlink(i);
        self.push_newest(i);
        if &*first_node != node {
            metrics::counter!(crate::metrics::AGGREGATOR_NODE_IDENTITY_CONFLICTS_TOTAL)
                .increment(1);
            warn!(
                instance = %instance,
                first = ?first_node,
                now = ?node,
                "one agent instance reports under two node names; counting by instance"
            );
        } else if let Some(ns) = self.nodes.get_mut(node) {
            if ns.current != Some(instance) {
                // An older instance speaks again after a newer one appeared:
                // two live agents claim one node.
                metrics::counter!(crate::metrics::AGGREGATOR_NODE_IDENTITY_CONFLICTS_TOTAL)
                    .increment(1);
                warn!(
                    node = ?node,
                    instance = %instance,
                    other = ?ns.current,
                    "two live agent instances report for one node; both are counted, each once"
                );
                ns.current = Some(instance);
            }
        }
        check
    }

    fn insert(&mut self, node: &str, instance: InstanceId, seq: u64, now: SystemTime) {
        self.make_room(now);
        let node: Arc<str> = match self.nodes.get_key_value(node) {
            Some((k, _)) => k.clone(),
            None => Arc::from(node),
        };
        let per_node = self.config.max_instances_per_node.max(1);
        let ns = self.nodes.entry(node.clone()).or_default();
        if let Some(prev) = ns.current {
            info!(
                node = ?node,
                previous = %prev,
                instance = %instance,
                "new agent instance for node (agent restarted)"
            );
        }
        ns.current = Some(instance);
        ns.instances.push_back(instance);
        let evict = (ns.instances.len() > per_node)
            .then(|| ns.instances.front().copied())
            .flatten();
        let st = InstanceState {
            id: instance,
            node,
            highest: seq,
            seen: 1,
            last_seen: now,
            older: NIL,
            newer: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(st);
                i
            }
            None => {
                self.slots.push(Some(st));
                self.slots.len() - 1
            }
        };
        self.index.insert(instance, i);
        self.push_newest(i);
        if let Some(old) = evict {
            if let Some(&j) = self.index.get(&old) {
                if let Some(st) = self.remove_slot(j) {
                    metrics::counter!(crate::metrics::AGGREGATOR_INSTANCES_EVICTED_EARLY_TOTAL, "reason" => "per_node")
                        .increment(1);
                    warn!(
                        node = ?st.node,
                        instance = %st.id,
                        max = per_node,
                        "too many agent instances for one node: forgot its oldest"
                    );
                }
            }
        }
        metrics::gauge!(crate::metrics::AGGREGATOR_AGENT_INSTANCES).set(self.index.len() as f64);
    }

    /// Forgets idle instances from the least recent end; if the table is
    /// still full, the least recently seen one. Amortised O(1).
    fn make_room(&mut self, now: SystemTime) {
        let ttl = self.config.idle_ttl;
        let mut evicted = 0usize;
        while let Some(st) = self.slot(self.oldest) {
            let idle = now
                .duration_since(st.last_seen)
                .is_ok_and(|idle| idle >= ttl);
            if !idle {
                break;
            }
            self.remove_slot(self.oldest);
            evicted += 1;
        }
        if self.index.len() >= self.config.max_instances.max(1) {
            if let Some(st) = self.remove_slot(self.oldest) {
                evicted += 1;
                metrics::counter!(crate::metrics::AGGREGATOR_INSTANCES_EVICTED_EARLY_TOTAL, "reason" => "table_full")
                    .increment(1);
                warn!(
                    instance = %st.id,
                    max = self.config.max_instances,
                    "replay table full: forgot the longest-idle agent instance early"
                );
            }
        }
        if evicted > 0 {
            debug!(evicted, "replay table pruned");
        }
    }
}

/// Why the aggregator refused a report after validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestRefusal {
    /// The sequence jumps too far ahead of the instance's highest counted
    /// one.
    #[error("sequence {seq} jumps more than {max_jump} ahead of the highest counted sequence {highest} of instance {instance}")]
    SequenceJump {
        /// The instance.
        instance: InstanceId,
        /// The report's sequence.
        seq: u64,
        /// The highest counted one.
        highest: u64,
        /// The largest jump allowed.
        max_jump: u64,
    },
}

/// A report for a node that did not come from one of the node's addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a report for node {node:?} must come from one of its addresses; {peer} is {peer_is}")]
pub struct NotTheNode {
    /// The node the report is for.
    pub node: String,
    /// The caller's address.
    pub peer: IpAddr,
    /// What the caller's address resolves to.
    pub peer_is: String,
}

/// What the aggregator did with one report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// The report had been counted before (or is too old to tell); it was
    /// acknowledged and not counted again.
    pub duplicate: bool,
    /// Samples kept (the counted observation of their flow).
    pub counted: usize,
    /// Samples dropped because the other observation of their flow counts.
    pub other_view: usize,
    /// Samples dropped because the reporting node is not the observed
    /// pod's node (counted as `wrong_node` in
    /// `netscope_aggregator_dropped_samples_total`).
    pub wrong_node: usize,
    /// Samples left out as link-local or multicast traffic between a pod
    /// and its own node.
    pub link_local: usize,
    /// Set when the report was refused and not counted.
    pub refused: Option<IngestRefusal>,
}

/// Takes validated reports. The gRPC server hands every report to one.
pub trait IngestSink: Send + Sync {
    /// Counts `report` (once), at time `now`.
    fn ingest(&self, report: Report, now: SystemTime) -> IngestOutcome;

    /// Whether a caller at `peer` may report for `node`, at time `now`.
    /// The default allows everyone.
    ///
    /// # Errors
    /// [`NotTheNode`] when it may not.
    fn authorize(&self, node: &str, peer: IpAddr, now: SystemTime) -> Result<(), NotTheNode> {
        let _ = (node, peer, now);
        Ok(())
    }
}

/// Counts of one report's samples by what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolveCounts {
    /// Dropped: the other observation of the flow counts.
    pub other_view: usize,
    /// Dropped: the reporting node is not the observed pod's node.
    pub wrong_node: usize,
    /// Left out: link-local or multicast traffic between a pod and its own
    /// node ([`is_link_scoped`]), which never leaves the node.
    pub link_local: usize,
    /// The bytes of those samples.
    pub link_local_bytes: u64,
}

/// The aggregator's core: replay check, dedup of the two observations,
/// resolution, hand-off to the exporters.
pub struct Aggregator {
    resolver: Arc<dyn Resolver>,
    exporters: Vec<Arc<dyn Exporter>>,
    dedup: Mutex<DedupTable>,
    max_sequence_jump: u64,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("exporters", &self.exporters.len())
            .finish_non_exhaustive()
    }
}

/// Label value of `node` for node names the resolver does not know as
/// monitored: they fold into one series.
pub const OTHER_NODE: &str = "other";

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
            max_sequence_jump: dedup.max_sequence_jump,
            dedup: Mutex::new(DedupTable::new(dedup)),
        }
    }

    /// Applies the counting rule to `report`'s samples and returns the kept
    /// flows, without the replay check and without exporting. Returns the
    /// samples dropped for any reason (see [`Aggregator::resolve_counts`]).
    pub fn resolve_report(&self, report: &Report, out: &mut Vec<ResolvedFlow>) -> usize {
        let c = self.resolve_counts(report, out);
        c.other_view + c.wrong_node + c.link_local
    }

    /// The pure core of [`Aggregator::ingest`], public for benchmarks and
    /// embedders: applies the counting rule, and drops observations that
    /// the reporting node cannot have made (a `ToPod` sample whose
    /// destination, or a `FromPod` sample whose source, is a pod on another
    /// node at both the window's end and its start).
    pub fn resolve_counts(&self, report: &Report, out: &mut Vec<ResolvedFlow>) -> ResolveCounts {
        let resolver = &*self.resolver;
        let at = report.window_end;
        let node = report.node.as_str();
        let mut counts = ResolveCounts::default();
        for s in &report.samples {
            // Link-local and multicast traffic stays between the pod and its
            // node (docs/resolution.md, "Link-local and multicast").
            if is_link_scoped(s.key.src) || is_link_scoped(s.key.dst) {
                counts.link_local += 1;
                counts.link_local_bytes = counts.link_local_bytes.saturating_add(s.counters.bytes);
                continue;
            }
            let src = resolver.resolve(s.key.src, at);
            let sender = sender_counts(&src, resolver);
            // The receiver's view of a monitored pod's traffic (half of all
            // pod-to-pod samples) is settled without resolving its
            // destination.
            if sender && s.key.direction == Direction::ToPod {
                counts.other_view += 1;
                continue;
            }
            let dst = resolver.resolve(s.key.dst, at);
            if counted_given(sender, src.kind, dst.kind) != Some(s.key.direction) {
                counts.other_view += 1;
                continue;
            }
            // The kept observation must be one the reporting node can have
            // made: of a pod on that node (at the window's end, or at its
            // start for a pod that moved during the window).
            let (observed, ip) = match s.key.direction {
                Direction::ToPod => (&dst, s.key.dst),
                Direction::FromPod => (&src, s.key.src),
            };
            if observed.kind == EndpointKind::Pod
                && &*observed.node != node
                && !on_node_at_start(resolver, ip, report, node)
            {
                counts.wrong_node += 1;
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
        counts
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

    /// The `node` label value for `node`: itself when the resolver knows it
    /// as monitored, [`OTHER_NODE`] otherwise (so made-up names cannot
    /// create series).
    pub fn node_label(&self, node: &str) -> String {
        if self.resolver.is_monitored_node(node) {
            node.to_owned()
        } else {
            OTHER_NODE.to_owned()
        }
    }
}

impl IngestSink for Aggregator {
    fn authorize(&self, node: &str, peer: IpAddr, now: SystemTime) -> Result<(), NotTheNode> {
        let peer = peer.to_canonical();
        let ep = self.resolver.resolve(peer, now);
        if ep.kind == EndpointKind::Node && &*ep.name == node {
            return Ok(());
        }
        let peer_is = match ep.kind {
            EndpointKind::External => String::from("not a known node address"),
            EndpointKind::Node => format!("node {:?}", &*ep.name),
            kind => format!("{kind:?} {:?}", &*ep.name),
        };
        Err(NotTheNode {
            node: node.to_owned(),
            peer,
            peer_is,
        })
    }

    fn ingest(&self, report: Report, now: SystemTime) -> IngestOutcome {
        debug!(
            node = ?report.node,
            instance = %report.instance,
            seq = report.seq,
            samples = report.samples.len(),
            "Received traffic data"
        );
        match self.check_replay(&report, now) {
            SeqCheck::New => {}
            SeqCheck::TooFarAhead { highest } => {
                metrics::counter!(crate::metrics::AGGREGATOR_REPORTS_TOTAL, "result" => "seq_jump")
                    .increment(1);
                return IngestOutcome {
                    refused: Some(IngestRefusal::SequenceJump {
                        instance: report.instance,
                        seq: report.seq,
                        highest,
                        max_jump: self.max_sequence_jump,
                    }),
                    ..IngestOutcome::default()
                };
            }
            check => {
                let reason = if check == SeqCheck::Replay {
                    "replay"
                } else {
                    "too_old"
                };
                metrics::counter!(crate::metrics::AGGREGATOR_REPORTS_TOTAL, "result" => reason)
                    .increment(1);
                debug!(
                    node = ?report.node,
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
        let counts = self.resolve_counts(&report, &mut flows);
        for e in &self.exporters {
            e.export(&flows);
        }
        metrics::counter!(crate::metrics::AGGREGATOR_REPORTS_TOTAL, "result" => "counted")
            .increment(1);
        metrics::counter!(crate::metrics::AGGREGATOR_SAMPLES_TOTAL, "result" => "counted")
            .increment(flows.len() as u64);
        metrics::counter!(crate::metrics::AGGREGATOR_SAMPLES_TOTAL, "result" => "other_view")
            .increment(counts.other_view as u64);
        if counts.link_local > 0 {
            metrics::counter!("netscope_aggregator_samples_total", "result" => "link_local")
                .increment(counts.link_local as u64);
            metrics::counter!(crate::metrics::AGGREGATOR_LINK_LOCAL_BYTES_TOTAL)
                .increment(counts.link_local_bytes);
        }
        if counts.wrong_node > 0 {
            metrics::counter!(crate::metrics::AGGREGATOR_DROPPED_SAMPLES_TOTAL, "reason" => "wrong_node")
                .increment(counts.wrong_node as u64);
            warn!(
                node = ?report.node,
                instance = %report.instance,
                seq = report.seq,
                samples = counts.wrong_node,
                "dropped observations of pods on other nodes: a node may only report its own pods"
            );
        }
        let monitored = self.resolver.is_monitored_node(&report.node);
        if !report.overflow.is_zero() {
            let node = if monitored {
                report.node.clone()
            } else {
                String::from(OTHER_NODE)
            };
            metrics::counter!(crate::metrics::AGGREGATOR_OVERFLOW_BYTES_TOTAL, "node" => node.clone())
                .increment(report.overflow.bytes);
            metrics::counter!(crate::metrics::AGGREGATOR_OVERFLOW_PACKETS_TOTAL, "node" => node)
                .increment(report.overflow.packets);
        }
        if !monitored {
            metrics::counter!(crate::metrics::AGGREGATOR_REPORTS_FROM_UNMONITORED_NODES_TOTAL)
                .increment(1);
            debug!(node = ?report.node, "report from a node not known as monitored");
        }
        IngestOutcome {
            duplicate: false,
            counted: flows.len(),
            other_view: counts.other_view,
            wrong_node: counts.wrong_node,
            link_local: counts.link_local,
            refused: None,
        }
    }
}

#[cfg(test)]
mod tests;
