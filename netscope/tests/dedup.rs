//! The counting-once rule of docs/design.md §4, as a table: every byte of every
//! flow is counted exactly once, from the observation the rule picks.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{cluster, ip, CountingExporter};
use netscope::aggregate::DedupConfig;
use netscope::{
    Aggregator, Counters, Direction, EndpointKind, FlowKey, FlowSample, IngestSink, InstanceId,
    Report,
};

struct Case {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    /// Which nodes' agents observe the flow, and in which direction.
    observed: &'static [(&'static str, Direction)],
    /// The observation that must be counted (`None`: neither, another
    /// observation of the same bytes under other addresses counts).
    counted: Option<Direction>,
    dst_kind: EndpointKind,
}

fn report(node: &str, instance: u8, seq: u64, samples: Vec<FlowSample>) -> Report {
    Report {
        node: node.into(),
        instance: InstanceId([instance; 16]),
        seq,
        window_start: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        window_end: SystemTime::UNIX_EPOCH + Duration::from_secs(110),
        samples,
        overflow: Counters::default(),
        folded_flows: 0,
    }
}

#[test]
fn each_byte_counted_once_table() {
    use Direction::{FromPod, ToPod};
    let cases = [
        Case {
            name: "same node",
            src: "10.0.1.1",
            dst: "10.0.1.2",
            observed: &[("node-a", FromPod), ("node-a", ToPod)],
            counted: Some(FromPod),
            dst_kind: EndpointKind::Pod,
        },
        Case {
            name: "cross node",
            src: "10.0.1.1",
            dst: "10.0.2.1",
            observed: &[("node-a", FromPod), ("node-b", ToPod)],
            counted: Some(FromPod),
            dst_kind: EndpointKind::Pod,
        },
        Case {
            name: "pod to external",
            src: "10.0.1.1",
            dst: "8.8.8.8",
            observed: &[("node-a", FromPod)],
            counted: Some(FromPod),
            dst_kind: EndpointKind::External,
        },
        Case {
            name: "external to pod",
            src: "8.8.8.8",
            dst: "10.0.2.1",
            observed: &[("node-b", ToPod)],
            counted: Some(ToPod),
            dst_kind: EndpointKind::Pod,
        },
        // node-c runs no Ready agent; one that starts up (not yet Ready)
        // may still report its ToPod view: it must not count too.
        Case {
            name: "dst on unmonitored node",
            src: "10.0.1.1",
            dst: "10.0.3.1",
            observed: &[("node-a", FromPod), ("node-c", ToPod)],
            counted: Some(FromPod),
            dst_kind: EndpointKind::Pod,
        },
        Case {
            name: "external to pod on unmonitored node",
            src: "8.8.4.4",
            dst: "10.0.3.1",
            observed: &[("node-c", ToPod)],
            counted: Some(ToPod),
            dst_kind: EndpointKind::Pod,
        },
        Case {
            name: "pod to unresolved Service",
            src: "10.0.1.1",
            dst: "10.96.0.10",
            observed: &[("node-a", FromPod)],
            counted: Some(FromPod),
            dst_kind: EndpointKind::Service,
        },
        // The reply's NAT was not undone on the client's node: the
        // backend's FromPod (backend -> client, real addresses) counts it.
        Case {
            name: "unresolved Service reply to pod",
            src: "10.96.0.10",
            dst: "10.0.1.1",
            observed: &[("node-a", ToPod)],
            counted: None,
            dst_kind: EndpointKind::Pod,
        },
        Case {
            name: "pod to node (hostNetwork)",
            src: "10.0.2.1",
            dst: "192.168.0.1",
            observed: &[("node-b", FromPod)],
            counted: Some(FromPod),
            dst_kind: EndpointKind::Node,
        },
        Case {
            name: "node to pod",
            src: "192.168.0.1",
            dst: "10.0.2.1",
            observed: &[("node-b", ToPod)],
            counted: Some(ToPod),
            dst_kind: EndpointKind::Pod,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let exporter = Arc::new(CountingExporter::keeping_batches());
        let agg = Aggregator::new(
            Arc::new(cluster()),
            vec![exporter.clone()],
            DedupConfig::default(),
        );
        let bytes = Counters::new(1000 * (i as u64 + 1), i as u64 + 1);
        for (n, (node, dir)) in c.observed.iter().enumerate() {
            let s = FlowSample {
                key: FlowKey::new(ip(c.src), ip(c.dst), *dir),
                counters: bytes,
            };
            agg.ingest(
                report(node, n as u8 + 1, 1, vec![s]),
                SystemTime::UNIX_EPOCH,
            );
        }
        let snap = exporter.snapshot();
        let Some(counted) = c.counted else {
            assert!(
                snap.is_empty(),
                "{}: nothing may count, got {snap:?}",
                c.name
            );
            continue;
        };
        assert_eq!(
            snap.len(),
            1,
            "{}: expected exactly one counted observation, got {snap:?}",
            c.name
        );
        assert_eq!(
            exporter.get(c.src, c.dst, counted),
            bytes,
            "{}: wrong observation counted",
            c.name
        );
        let batches = exporter.batches.lock().expect("batches");
        let f = batches.iter().flatten().next().expect("a flow");
        assert_eq!(f.dst.kind, c.dst_kind, "{}: dst kind", c.name);
    }
}

#[test]
fn unknown_and_duplicate_node_identities() {
    let exporter = Arc::new(CountingExporter::default());
    let agg = Aggregator::new(
        Arc::new(cluster()),
        vec![exporter.clone()],
        DedupConfig::default(),
    );
    let now = SystemTime::UNIX_EPOCH;
    let s = |dst: &str, b: u64| FlowSample {
        key: FlowKey::new(ip("10.0.1.1"), ip(dst), Direction::FromPod),
        counters: Counters::new(b, 1),
    };
    // A node nobody knows: its observations follow the same rule (of a
    // source that is no other node's pod: that would be dropped).
    let ghost = FlowSample {
        key: FlowKey::new(ip("10.9.9.9"), ip("8.8.8.8"), Direction::FromPod),
        counters: Counters::new(100, 1),
    };
    let o = agg.ingest(report("ghost-node", 1, 1, vec![ghost]), now);
    assert_eq!((o.duplicate, o.counted), (false, 1));
    // Two live instances claim node-a: each instance's reports count once.
    let o = agg.ingest(report("node-a", 2, 1, vec![s("1.1.1.1", 200)]), now);
    assert_eq!((o.duplicate, o.counted), (false, 1));
    let o = agg.ingest(report("node-a", 3, 1, vec![s("1.1.1.1", 300)]), now);
    assert_eq!(
        (o.duplicate, o.counted),
        (false, 1),
        "same seq, other instance: new"
    );
    let o = agg.ingest(report("node-a", 2, 2, vec![s("1.1.1.1", 400)]), now);
    assert_eq!((o.duplicate, o.counted), (false, 1));
    // Replays of each are acknowledged as duplicates, not counted.
    for inst in [1u8, 2, 3] {
        let node = if inst == 1 { "ghost-node" } else { "node-a" };
        let o = agg.ingest(report(node, inst, 1, vec![s("1.1.1.1", 999)]), now);
        assert!(o.duplicate, "replay of instance {inst} counted");
    }
    assert_eq!(
        exporter.get("10.9.9.9", "8.8.8.8", Direction::FromPod),
        Counters::new(100, 1)
    );
    assert_eq!(
        exporter.get("10.0.1.1", "1.1.1.1", Direction::FromPod),
        Counters::new(900, 3)
    );
}
