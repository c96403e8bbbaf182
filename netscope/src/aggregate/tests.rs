//! Tests of [`super`], apart from `aggregate.rs` so that it reads as the code it ships.

use super::*;

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(s)
}

/// Every link-local and multicast prefix, in both directions and both
/// address families, between a pod on node-a and its node, is left out
/// and counted; the pod's ordinary traffic next to it is kept.
#[test]
fn link_local_and_multicast_traffic_is_left_out() {
    use crate::flow::{Counters, FlowKey, FlowSample};
    use crate::resolve::StaticResolver;
    let resolver = StaticResolver::from_yaml(
        r#"
nodes:
  - {name: node-a, zone: za, ips: [10.0.0.1, "fd00::1"]}
  - {name: node-b, zone: zb, ips: [10.0.0.2]}
pods:
  - {name: p1, namespace: ns, node: node-a, ips: [10.1.0.5, "fd00:1::5"]}
  - {name: p2, namespace: ns, node: node-b, ips: [10.1.1.5]}
"#,
    )
    .unwrap_or_else(|e| panic!("test topology: {e}"));
    let agg = Aggregator::new(Arc::new(resolver), vec![], DedupConfig::default());
    let ip = |a: &str| -> IpAddr { a.parse().unwrap_or_else(|e| panic!("{a}: {e}")) };
    let (from, to) = (Direction::FromPod, Direction::ToPod);
    // (src, dst, direction): what the pod's link carries to and from
    // its node with link-scoped addresses.
    let scoped = [
        // IPv6 ND and MLD: a link-local source, multicast destinations.
        ("fe80::a8c1:abff:fe12:3456", "ff02::16", from),
        ("fe80::a8c1:abff:fe12:3456", "ff02::1:ff00:1", from),
        // The pod's global address soliciting its gateway, and the
        // node's link-local answer to it.
        ("fd00:1::5", "ff02::1:ff00:1", from),
        ("fd00:1::5", "fe80::1", from),
        ("fe80::1", "fd00:1::5", to),
        ("fe80::1", "ff02::1", to),
        // IPv4: the metadata endpoint, NodeLocal DNSCache, mDNS, IGMP.
        ("10.1.0.5", "169.254.169.254", from),
        ("169.254.169.254", "10.1.0.5", to),
        ("10.1.0.5", "169.254.20.10", from),
        ("10.1.0.5", "224.0.0.251", from),
        ("10.1.0.5", "239.255.255.250", from),
        ("224.0.0.1", "10.1.0.5", to),
        // IPv4-mapped, as a report may carry it.
        ("::ffff:10.1.0.5", "::ffff:169.254.1.1", from),
    ];
    let mut samples: Vec<FlowSample> = scoped
        .iter()
        .enumerate()
        .map(|(i, (s, d, dir))| FlowSample {
            key: FlowKey::new(ip(s), ip(d), *dir),
            counters: Counters::new(72 + i as u64, 1),
        })
        .collect();
    // Ordinary traffic of the same pod: to another node's pod, and to
    // its own node's address (not link-scoped: kept, as a node).
    samples.push(FlowSample {
        key: FlowKey::new(ip("10.1.0.5"), ip("10.1.1.5"), from),
        counters: Counters::new(1000, 2),
    });
    samples.push(FlowSample {
        key: FlowKey::new(ip("10.1.0.5"), ip("10.0.0.1"), from),
        counters: Counters::new(500, 1),
    });
    let report = Report {
        node: "node-a".into(),
        instance: InstanceId([7; 16]),
        seq: 1,
        window_start: t(100),
        window_end: t(110),
        samples,
        overflow: Counters::default(),
        folded_flows: 0,
    };
    let mut out = Vec::new();
    let counts = agg.resolve_counts(&report, &mut out);
    assert_eq!(
        counts.link_local,
        scoped.len(),
        "every link-scoped sample left out"
    );
    let want_bytes: u64 = (0..scoped.len() as u64).map(|i| 72 + i).sum();
    assert_eq!(counts.link_local_bytes, want_bytes);
    assert_eq!((counts.other_view, counts.wrong_node), (0, 0));
    let kept: Vec<(String, EndpointKind, u64)> = out
        .iter()
        .map(|f| (f.dst.name.to_string(), f.dst.kind, f.counters.bytes))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("p2".to_string(), EndpointKind::Pod, 1000),
            ("node-a".to_string(), EndpointKind::Node, 500),
        ]
    );
    assert!(
        out.iter()
            .all(|f| f.src.kind != EndpointKind::External && f.dst.kind != EndpointKind::External),
        "nothing under external"
    );
    let outcome = agg.ingest(report, t(111));
    assert_eq!((outcome.counted, outcome.link_local), (2, scoped.len()));
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
        ..DedupConfig::default()
    });
    for i in 0..10u8 {
        d.check_and_mark("n", InstanceId([i; 16]), 1, t(u64::from(i)));
        assert!(d.len() <= 3, "table grew to {}", d.len());
    }
}

#[test]
fn sequence_may_not_jump_arbitrarily_ahead() {
    let mut d = DedupTable::new(DedupConfig {
        max_sequence_jump: 10,
        sequence_jump_per_second: 0,
        ..DedupConfig::default()
    });
    let a = InstanceId([1; 16]);
    assert_eq!(d.check_and_mark("n", a, 1, t(0)), SeqCheck::New);
    assert_eq!(
        d.check_and_mark("n", a, 1 << 63, t(1)),
        SeqCheck::TooFarAhead { highest: 1 }
    );
    // The real agent's next reports still count.
    assert_eq!(d.check_and_mark("n", a, 2, t(2)), SeqCheck::New);
    assert_eq!(d.check_and_mark("n", a, 12, t(3)), SeqCheck::New);
    assert_eq!(
        d.check_and_mark("n", a, 23, t(4)),
        SeqCheck::TooFarAhead { highest: 12 }
    );
}

#[test]
fn an_agent_back_from_another_replica_may_be_further_ahead() {
    let mut d = DedupTable::new(DedupConfig {
        max_sequence_jump: 10,
        sequence_jump_per_second: 2,
        ..DedupConfig::default()
    });
    let a = InstanceId([1; 16]);
    assert_eq!(d.check_and_mark("n", a, 1, t(0)), SeqCheck::New);
    // 100 s on another replica: 10 + 2 x 100 = 210 ahead is allowed.
    assert_eq!(d.check_and_mark("n", a, 211, t(100)), SeqCheck::New);
    // ... and no more than that, counted from the last counted report.
    assert_eq!(
        d.check_and_mark("n", a, 211 + 10 + 2 * 5 + 1, t(105)),
        SeqCheck::TooFarAhead { highest: 211 }
    );
    assert_eq!(
        d.check_and_mark("n", a, 211 + 10 + 2 * 5, t(105)),
        SeqCheck::New
    );
    // A forged far-future sequence stays refused.
    assert_eq!(
        d.check_and_mark("n", a, 1 << 63, t(106)),
        SeqCheck::TooFarAhead { highest: 231 }
    );
}

#[test]
fn eviction_takes_the_least_recently_seen() {
    let mut d = DedupTable::new(DedupConfig {
        idle_ttl: Duration::from_secs(1000),
        max_instances: 3,
        ..DedupConfig::default()
    });
    let id = |i: u8| InstanceId([i; 16]);
    d.check_and_mark("n1", id(1), 1, t(1));
    d.check_and_mark("n2", id(2), 1, t(2));
    d.check_and_mark("n3", id(3), 1, t(3));
    // 1 speaks again: 2 is now the least recently seen.
    assert_eq!(d.check_and_mark("n1", id(1), 2, t(4)), SeqCheck::New);
    d.check_and_mark("n4", id(4), 1, t(5));
    assert_eq!(d.len(), 3);
    assert_eq!(d.check_and_mark("n1", id(1), 2, t(6)), SeqCheck::Replay);
    assert_eq!(d.check_and_mark("n3", id(3), 1, t(6)), SeqCheck::Replay);
    // 2 was forgotten: its replay looks new (the price of the bound).
    assert_eq!(d.check_and_mark("n2", id(2), 1, t(7)), SeqCheck::New);
    assert_eq!(d.nodes(), 3, "forgotten instances take their node along");
    // Idle instances go first, all of them.
    d.check_and_mark("n5", id(5), 1, t(2000));
    assert_eq!(d.len(), 1);
    assert_eq!(d.nodes(), 1);
}

#[test]
fn instances_per_node_are_bounded() {
    let mut d = DedupTable::new(DedupConfig {
        max_instances_per_node: 2,
        ..DedupConfig::default()
    });
    let real = InstanceId([200; 16]);
    assert_eq!(d.check_and_mark("n", real, 1, t(0)), SeqCheck::New);
    for i in 0..100u8 {
        d.check_and_mark("n", InstanceId([i; 16]), 1, t(1));
        assert!(d.len() <= 2, "{} instances for one node", d.len());
    }
    assert_eq!(d.nodes(), 1);
}

#[test]
fn a_large_table_stays_fast_to_update() {
    // 200k instances through a table of 100k: every insert past the
    // bound evicts one, without scanning (this would take minutes at
    // O(n) per insert in a debug build).
    let mut d = DedupTable::new(DedupConfig::default());
    for i in 0..200_000u32 {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&i.to_be_bytes());
        d.check_and_mark("n", InstanceId(b), 1, t(u64::from(i)));
    }
    assert_eq!(d.len(), 8, "per-node bound");
    let mut d = DedupTable::new(DedupConfig::default());
    for i in 0..200_000u32 {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&i.to_be_bytes());
        let node = format!("n{i}");
        d.check_and_mark(&node, InstanceId(b), 1, t(0));
    }
    assert_eq!(d.len(), 100_000);
    assert_eq!(d.nodes(), 100_000);
}
