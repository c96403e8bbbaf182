//! Every self-metric of netscope, named and described in one place.
//!
//! The code that updates a metric uses the constant here, never a string
//! literal, and [`describe`] hands every name's type and help text to the
//! installed `metrics` recorder, so `/metrics` carries `# HELP` and `# TYPE`
//! for each (`promtool check metrics` flags a metric without help). Adding a
//! metric is one line in the table below. The flow metrics themselves
//! (`netscope_workload_…`, `netscope_zone_…`, cost) are rendered with their
//! help by the Prometheus exporter and are not listed here.

/// How a metric behaves, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution.
    Histogram,
}

/// One self-metric: name, type and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfMetric {
    /// The metric name, as exported.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
}

macro_rules! self_metrics {
    ($($konst:ident = $name:literal, $kind:ident, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $konst: &str = $name;
        )*
        /// Every self-metric, in the order of the table.
        pub const ALL: &[SelfMetric] = &[$(SelfMetric { name: $name, kind: Kind::$kind, help: $help }),*];
    };
}

self_metrics! {
    // Agent: capture and attachment.
    AGENT_FLOW_TABLE_FILL_RATIO = "netscope_agent_flow_table_fill_ratio", Gauge, "Fill of the flow table at the last drain (1 = full: bytes then go to the overflow counters).";
    AGENT_FLOW_TABLE_CAPACITY = "netscope_agent_flow_table_capacity", Gauge, "Flows the flow table holds per collection interval (--max-flows).";
    AGENT_FOREIGN_INGRESS_PROGRAMS = "netscope_agent_foreign_ingress_programs", Gauge, "BPF programs of others (a CNI's) on the ingress hooks netscope is attached to.";
    AGENT_TC_HOOKS_NOT_FIRST = "netscope_agent_tc_hooks_not_first", Gauge, "Legacy-TC hooks where another filter currently runs before netscope's.";
    AGENT_TC_PREEMPTED_TOTAL = "netscope_agent_tc_preempted_total", Counter, "Times another legacy-TC filter was found ahead of netscope's.";
    AGENT_TC_REATTACHED_TOTAL = "netscope_agent_tc_reattached_total", Counter, "Times netscope's legacy-TC filter was put back in first place.";
    AGENT_TC_RESTORE_FAILURES_TOTAL = "netscope_agent_tc_restore_failures_total", Counter, "Failed attempts to put netscope's legacy-TC filter back in first place.";
    AGENT_TC_BLIND_MICROSECONDS_TOTAL = "netscope_agent_tc_blind_microseconds_total", Counter, "Microseconds during which a legacy-TC hook ran another filter before netscope's, summed over hooks.";
    AGENT_INTERFACES_ATTACHED = "netscope_agent_interfaces_attached", Gauge, "Interfaces the capture program is attached to.";
    AGENT_ATTACH_ERRORS_TOTAL = "netscope_agent_attach_errors_total", Counter, "Failed attempts to attach to an interface, by reason.";
    // Agent: Service NAT.
    AGENT_NAT_RESOLVED_TOTAL = "netscope_agent_nat_resolved_total", Counter, "Service samples rewritten to their backend through conntrack.";
    AGENT_NAT_UNRESOLVED_TOTAL = "netscope_agent_nat_unresolved_total", Counter, "Service samples without a conntrack entry, reported with the Service address.";
    AGENT_NAT_UNRESOLVED_BYTES_TOTAL = "netscope_agent_nat_unresolved_bytes_total", Counter, "Bytes of Service samples without a conntrack entry.";
    AGENT_NAT_LOOKUP_ERRORS_TOTAL = "netscope_agent_nat_lookup_errors_total", Counter, "Failed conntrack lookups.";
    // Agent: reporting.
    AGENT_DRAIN_ERRORS_TOTAL = "netscope_agent_drain_errors_total", Counter, "Failed drains of the flow table (the counters stay in the kernel for the next one).";
    AGENT_FLOWS_DRAINED_TOTAL = "netscope_agent_flows_drained_total", Counter, "Flow samples drained from the kernel.";
    AGENT_OVERFLOW_BYTES_TOTAL = "netscope_agent_overflow_bytes_total", Counter, "Bytes counted without a flow identity because the flow table was full.";
    AGENT_OVERFLOW_PACKETS_TOTAL = "netscope_agent_overflow_packets_total", Counter, "Packets counted without a flow identity because the flow table was full.";
    AGENT_REPORT_FOLDED_FLOWS_TOTAL = "netscope_agent_report_folded_flows_total", Counter, "Flows folded into the overflow totals because the report buffer was full.";
    AGENT_REPORT_FOLDED_BYTES_TOTAL = "netscope_agent_report_folded_bytes_total", Counter, "Bytes of flows folded into the overflow totals because the report buffer was full.";
    AGENT_BUFFERED_FLOWS = "netscope_agent_buffered_flows", Gauge, "Flows waiting in the report buffer.";
    AGENT_REPORT_LATENCY_SECONDS = "netscope_agent_report_latency_seconds", Histogram, "Time from sending a report to the aggregator's answer.";
    AGENT_REPORTS_SENT_TOTAL = "netscope_agent_reports_sent_total", Counter, "Reports the aggregator acknowledged.";
    AGENT_REPORTS_REJECTED_TOTAL = "netscope_agent_reports_rejected_total", Counter, "Reports the aggregator refused as a whole (their bytes are not counted).";
    AGENT_REJECTED_BYTES_TOTAL = "netscope_agent_rejected_bytes_total", Counter, "Bytes of reports the aggregator refused.";
    AGENT_REPORTS_FAILED_TOTAL = "netscope_agent_reports_failed_total", Counter, "Report attempts that failed in transport (retried).";
    // Agent: pinned state, journal, aggregator replicas.
    AGENT_PINNED_MAPS_ADOPTED_TOTAL = "netscope_agent_pinned_maps_adopted_total", Counter, "Agent starts that adopted the pinned maps of an earlier agent (a restart or upgrade without a gap).";
    AGENT_PINNED_LINKS_ADOPTED_TOTAL = "netscope_agent_pinned_links_adopted_total", Counter, "Pinned TCX links whose program the agent replaced in place (BPF_LINK_UPDATE).";
    AGENT_JOURNAL_BYTES = "netscope_agent_journal_bytes", Gauge, "Size of the agent's journal of unacknowledged reports as last written.";
    AGENT_JOURNAL_WRITES_TOTAL = "netscope_agent_journal_writes_total", Counter, "Journal writes (fsync and atomic rename).";
    AGENT_JOURNAL_WRITE_ERRORS_TOTAL = "netscope_agent_journal_write_errors_total", Counter, "Journal writes that failed (a crash then loses what was buffered).";
    AGENT_JOURNAL_CORRUPT_TOTAL = "netscope_agent_journal_corrupt_total", Counter, "Journals moved aside as corrupt, oversized or another node's.";
    AGENT_JOURNAL_RESUMED_TOTAL = "netscope_agent_journal_resumed_total", Counter, "Agent starts that resumed a journal (instance id, sequence numbers, buffer).";
    AGENT_JOURNAL_REPLAYED_BYTES_TOTAL = "netscope_agent_journal_replayed_bytes_total", Counter, "Bytes found unacknowledged in the journal at start and sent again.";
    AGENT_REPLICAS = "netscope_agent_replicas", Gauge, "Aggregator replicas in the agent's last resolved set.";
    AGENT_REPLICA_SWITCHES_TOTAL = "netscope_agent_replica_switches_total", Counter, "Moves of this agent from one aggregator replica to another, by reason (set_changed, gone).";
    AGENT_REPLICA_RESOLVE_ERRORS_TOTAL = "netscope_agent_replica_resolve_errors_total", Counter, "Resolutions of the aggregator endpoints that failed for at least one name; the last set stays in force.";
    AGGREGATOR_LINK_LOCAL_BYTES_TOTAL = "netscope_aggregator_link_local_bytes_total", Counter, "Bytes of samples with a link-local or multicast address, left out of the traffic metrics (they never leave the node).";
    // Aggregator.
    AGGREGATOR_REPORTS_TOTAL = "netscope_aggregator_reports_total", Counter, "Reports received, by result (counted, replay, ...).";
    AGGREGATOR_SAMPLES_TOTAL = "netscope_aggregator_samples_total", Counter, "Samples received, by whether they were the observation counted.";
    AGGREGATOR_DROPPED_SAMPLES_TOTAL = "netscope_aggregator_dropped_samples_total", Counter, "Samples dropped from reports whose other samples counted, by reason.";
    AGGREGATOR_REJECTED_REPORTS_TOTAL = "netscope_aggregator_rejected_reports_total", Counter, "Reports refused as a whole, none of their bytes counted, by reason.";
    AGGREGATOR_OVERFLOW_BYTES_TOTAL = "netscope_aggregator_overflow_bytes_total", Counter, "Bytes agents counted without a flow identity, by node.";
    AGGREGATOR_OVERFLOW_PACKETS_TOTAL = "netscope_aggregator_overflow_packets_total", Counter, "Packets agents counted without a flow identity, by node.";
    AGGREGATOR_REPORTS_FROM_UNMONITORED_NODES_TOTAL = "netscope_aggregator_reports_from_unmonitored_nodes_total", Counter, "Reports from nodes not known to run a Ready agent.";
    AGGREGATOR_NODE_IDENTITY_CONFLICTS_TOTAL = "netscope_aggregator_node_identity_conflicts_total", Counter, "Reports from an older agent instance after a newer one appeared for the same node.";
    AGGREGATOR_INSTANCES_EVICTED_EARLY_TOTAL = "netscope_aggregator_instances_evicted_early_total", Counter, "Agent instances the replay table forgot before their idle TTL, by reason.";
    AGGREGATOR_AGENT_INSTANCES = "netscope_aggregator_agent_instances", Gauge, "Agent instances in the replay table.";
    // Resolution and export.
    TOPOLOGY_LOADS_TOTAL = "netscope_topology_loads_total", Counter, "Static topology files loaded, the first one at start-up included.";
    TOPOLOGY_REJECTED_TOTAL = "netscope_topology_rejected_total", Counter, "Static topology files rejected at reload; the previous topology stays in force.";
    TOPOLOGY_PODS = "netscope_topology_pods", Gauge, "Pods listed in the static topology in force, hostNetwork ones included.";
    TOPOLOGY_TOMBSTONES = "netscope_topology_tombstones", Gauge, "Ended pod address claims the static topology keeps for the grace period.";
    CUSTOM_ENDPOINTS = "netscope_custom_endpoints", Gauge, "Custom endpoints in force.";
    CUSTOM_ENDPOINTS_REJECTED_TOTAL = "netscope_custom_endpoints_rejected_total", Counter, "Custom endpoints files rejected; the previous set stays in force.";
    KUBE_WATCH_ERRORS_TOTAL = "netscope_kube_watch_errors_total", Counter, "Errors of the Kubernetes resolver's list/watch streams, by resource (each retried with backoff).";
    EXPORTER_FOLDED_FLOWS_TOTAL = "netscope_exporter_folded_flows_total", Counter, "Flows recorded under 'other' labels because a level's cardinality limit was reached.";
    EXPORTER_SERIES = "netscope_exporter_series", Gauge, "Label sets the exporter currently tracks, by level.";
    FLOW_LOG_RECORDS_WRITTEN_TOTAL = "netscope_flow_log_records_written_total", Counter, "Flow-log records written.";
    FLOW_LOG_RECORDS_DROPPED_TOTAL = "netscope_flow_log_records_dropped_total", Counter, "Flow-log records dropped because the output was too slow.";
    FLOW_LOG_WRITE_ERRORS_TOTAL = "netscope_flow_log_write_errors_total", Counter, "Failed writes of the flow log.";
}

/// Gives every self-metric's type and help text to the installed recorder.
/// The binaries call it right after installing theirs; calling it again is
/// harmless.
pub fn describe() {
    for m in ALL {
        match m.kind {
            Kind::Counter => ::metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => ::metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => ::metrics::describe_histogram!(m.name, m.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prometheus_names_with_help() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(
                m.name.starts_with("netscope_")
                    && m.name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{} is not a netscope metric name",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                m.name
            );
            assert!(
                m.help.ends_with('.') && m.help.len() > 10,
                "{}: help {:?}",
                m.name,
                m.help
            );
        }
    }
}
