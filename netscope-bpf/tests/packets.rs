//! Packet tests: crafted frames through the real program with
//! `BPF_PROG_TEST_RUN`, asserting the return code and the exact flow-table
//! contents. Needs root (CAP_BPF + CAP_NET_ADMIN).

use std::collections::BTreeMap;
use std::sync::Arc;

use netscope::{Collector, Counters, Direction, FlowKey, L4};
use netscope_bpf::testing::{skb_ctx, FrameSpec, L4Spec, ETH_P_8021AD, ETH_P_8021Q};
use netscope_bpf::{test_run, BpfCollector, Capture, CaptureConfig};

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1

/// Pins the calling test thread to CPU 0, so that every test run of one
/// test hits the same per-CPU cache entry and table slot.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; the
    // call affects only this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU 0"
        );
    }
}

fn load(config: CaptureConfig) -> Arc<Capture> {
    pin_to_cpu0();
    // libbpf's messages (the verifier log on a refused load) go to the test output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("libbpf=debug")
        .with_test_writer()
        .try_init();
    Arc::new(Capture::load(&config).unwrap_or_else(|e| {
        panic!("loading the netscope program failed (these tests need root): {e:#?}")
    }))
}

/// Runs `frame` through the program for `dir` and checks it is transparent.
fn run(cap: &Capture, dir: Direction, frame: &[u8]) {
    let out = test_run(cap, dir, frame, None, 1).expect("BPF_PROG_TEST_RUN");
    assert_eq!(
        out.retval, TC_ACT_UNSPEC,
        "the program must return TC_ACT_UNSPEC"
    );
}

fn drained(cap: &Arc<Capture>) -> (BTreeMap<FlowKey, Counters>, Counters) {
    let d = BpfCollector::new(cap.clone()).drain().expect("drain");
    let mut m = BTreeMap::new();
    for s in d.samples {
        assert!(
            m.insert(s.key, s.counters).is_none(),
            "a key was returned twice in one drain"
        );
    }
    (m, d.overflow)
}

fn key(src: &str, dst: &str, dir: Direction) -> FlowKey {
    FlowKey::new(src.parse().unwrap(), dst.parse().unwrap(), dir)
}

#[test]
fn ipv4_tcp_udp_icmp_counted_at_l3() {
    let cap = load(CaptureConfig::default());
    let tcp = FrameSpec::new("10.0.0.1", "10.0.1.2", L4Spec::Tcp(40000, 80), 100);
    let udp = FrameSpec::new("10.0.0.1", "10.0.1.3", L4Spec::Udp(5353, 53), 30);
    let icmp = FrameSpec::new("10.0.1.2", "10.0.0.1", L4Spec::Icmp, 56);
    run(&cap, Direction::FromPod, &tcp.build());
    run(&cap, Direction::FromPod, &tcp.build());
    run(&cap, Direction::FromPod, &udp.build());
    run(&cap, Direction::ToPod, &icmp.build());
    let (m, overflow) = drained(&cap);
    assert_eq!(tcp.l3_len(), 20 + 20 + 100);
    let want = BTreeMap::from([
        (
            key("10.0.0.1", "10.0.1.2", Direction::FromPod),
            Counters::new(2 * 140, 2),
        ),
        (
            key("10.0.0.1", "10.0.1.3", Direction::FromPod),
            Counters::new(20 + 8 + 30, 1),
        ),
        (
            key("10.0.1.2", "10.0.0.1", Direction::ToPod),
            Counters::new(20 + 8 + 56, 1),
        ),
    ]);
    assert_eq!(m, want);
    assert_eq!(overflow, Counters::default());
    // Drained means gone: a second drain is empty.
    let (m, _) = drained(&cap);
    assert!(m.is_empty(), "second drain returned {m:?}");
}

#[test]
fn ipv6_tcp_and_extension_headers_counted_by_outer_addresses() {
    let cap = load(CaptureConfig::default());
    let plain = FrameSpec::new("fd00::1", "fd00::2", L4Spec::Tcp(443, 50000), 1000);
    let mut ext = FrameSpec::new("fd00::1", "fd00::3", L4Spec::Udp(1, 2), 10);
    ext.ipv6_ext = 2; // hop-by-hop + destination options
    run(&cap, Direction::ToPod, &plain.build());
    run(&cap, Direction::FromPod, &ext.build());
    let (m, overflow) = drained(&cap);
    let want = BTreeMap::from([
        (
            key("fd00::1", "fd00::2", Direction::ToPod),
            Counters::new(40 + 20 + 1000, 1),
        ),
        (
            key("fd00::1", "fd00::3", Direction::FromPod),
            Counters::new(40 + 16 + 8 + 10, 1),
        ),
    ]);
    assert_eq!(m, want);
    assert!(overflow.is_zero());
}

#[test]
fn vlan_8021q_and_qinq_excluded_from_bytes() {
    let cap = load(CaptureConfig::default());
    let mut q = FrameSpec::new("10.1.0.1", "10.1.0.2", L4Spec::Udp(1000, 2000), 200);
    q.vlans = vec![(ETH_P_8021Q, 100)];
    let mut qinq = FrameSpec::new("10.1.0.1", "10.1.0.3", L4Spec::Tcp(1000, 2000), 300);
    qinq.vlans = vec![(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)];
    let mut q6 = FrameSpec::new("fd00::a", "fd00::b", L4Spec::Udp(1, 2), 50);
    q6.vlans = vec![(ETH_P_8021Q, 7)];
    run(&cap, Direction::FromPod, &q.build());
    run(&cap, Direction::FromPod, &qinq.build());
    run(&cap, Direction::ToPod, &q6.build());
    let (m, _) = drained(&cap);
    let want = BTreeMap::from([
        (
            key("10.1.0.1", "10.1.0.2", Direction::FromPod),
            Counters::new(20 + 8 + 200, 1),
        ),
        (
            key("10.1.0.1", "10.1.0.3", Direction::FromPod),
            Counters::new(20 + 20 + 300, 1),
        ),
        (
            key("fd00::a", "fd00::b", Direction::ToPod),
            Counters::new(40 + 8 + 50, 1),
        ),
    ]);
    assert_eq!(m, want);
    // Three tags: the third is not walked, so the frame is not IP to us.
    let mut three = FrameSpec::new("10.1.0.1", "10.1.0.4", L4Spec::Udp(1, 2), 10);
    three.vlans = vec![(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)];
    run(&cap, Direction::FromPod, &three.build());
    let (m, overflow) = drained(&cap);
    assert!(
        m.is_empty() && overflow.is_zero(),
        "a triple-tagged frame was counted: {m:?}"
    );
}

#[test]
fn ipv4_options_included_in_l3_bytes() {
    let cap = load(CaptureConfig::default());
    let mut f = FrameSpec::new("10.2.0.1", "10.2.0.2", L4Spec::Tcp(1, 2), 64);
    f.ipv4_options = 12;
    run(&cap, Direction::FromPod, &f.build());
    let (m, _) = drained(&cap);
    assert_eq!(
        m,
        BTreeMap::from([(
            key("10.2.0.1", "10.2.0.2", Direction::FromPod),
            Counters::new(32 + 20 + 64, 1)
        )])
    );
}

#[test]
fn non_ip_and_truncated_frames_are_not_counted() {
    let cap = load(CaptureConfig::default());
    // ARP request (28-byte payload after the Ethernet header).
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    arp.extend_from_slice(&0x0806u16.to_be_bytes());
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0u8; 20]);
    run(&cap, Direction::FromPod, &arp);

    // Frames cut inside each header. BPF_PROG_TEST_RUN refuses frames
    // shorter than 14 bytes, and (for an IP ethertype) shorter than the IP
    // header, so cuts inside the IP headers are made behind a VLAN tag,
    // where the kernel does not look.
    let v4 = FrameSpec::new("10.3.0.1", "10.3.0.2", L4Spec::Tcp(1, 2), 0).build();
    let tagged = |src: &str, dst: &str, vlans: Vec<(u16, u16)>| {
        let mut f = FrameSpec::new(src, dst, L4Spec::Tcp(1, 2), 0);
        f.vlans = vlans;
        f.build()
    };
    let t4 = tagged("10.3.0.1", "10.3.0.2", vec![(ETH_P_8021Q, 5)]);
    let t6 = tagged("fd00::1", "fd00::2", vec![(ETH_P_8021Q, 5)]);
    let qinq = tagged(
        "10.3.0.1",
        "10.3.0.2",
        vec![(ETH_P_8021AD, 5), (ETH_P_8021Q, 6)],
    );
    let cuts: Vec<(&str, &[u8])> = vec![
        ("inside the 802.1Q tag", &t4[..16]),
        ("inside the inner QinQ tag", &qinq[..20]),
        ("after the tag, before IPv4", &t4[..18]),
        ("inside the IPv4 header", &t4[..18 + 10]),
        ("inside the IPv4 header, QinQ", &qinq[..22 + 19]),
        ("inside the IPv6 header", &t6[..18 + 39]),
    ];
    for (what, cut) in cuts {
        for dir in Direction::BOTH {
            let out = test_run(&cap, dir, cut, None, 1)
                .unwrap_or_else(|e| panic!("test run of a frame cut {what}: {e}"));
            assert_eq!(out.retval, TC_ACT_UNSPEC, "frame cut {what}");
        }
    }
    // IPv4 header claiming version 5 / IHL < 5: malformed, not counted.
    let mut bad = v4.clone();
    bad[14] = 0x54;
    run(&cap, Direction::FromPod, &bad);
    bad[14] = 0x44;
    run(&cap, Direction::FromPod, &bad);

    let (m, overflow) = drained(&cap);
    assert!(
        m.is_empty(),
        "non-IP or truncated frames were counted: {m:?}"
    );
    assert!(overflow.is_zero());
}

#[test]
fn ethernet_padding_is_not_counted() {
    let cap = load(CaptureConfig::default());
    // A 28-byte IPv4/ICMP packet padded to the 60-byte Ethernet minimum.
    let f = FrameSpec::new("10.4.0.1", "10.4.0.2", L4Spec::Icmp, 0);
    let mut frame = f.build();
    assert_eq!(frame.len(), 14 + 28);
    frame.resize(60, 0);
    run(&cap, Direction::FromPod, &frame);
    let (m, _) = drained(&cap);
    assert_eq!(
        m,
        BTreeMap::from([(
            key("10.4.0.1", "10.4.0.2", Direction::FromPod),
            Counters::new(28, 1)
        )])
    );
}

#[test]
fn gso_packet_counts_its_segments() {
    let cap = load(CaptureConfig::default());
    // A TSO super-packet of 3 segments with 1000, 1000 and 500 payload bytes.
    let f = FrameSpec::new("10.5.0.1", "10.5.0.2", L4Spec::Tcp(1, 2), 2500);
    let mut ctx = skb_ctx(3, 1000);
    let out = test_run(&cap, Direction::FromPod, &f.build(), Some(&mut ctx), 1).expect("test run");
    assert_eq!(out.retval, TC_ACT_UNSPEC);
    // IPv6 UDP GSO with an extension header: 4 segments.
    let mut f6 = FrameSpec::new("fd00::5", "fd00::6", L4Spec::Udp(1, 2), 2000);
    f6.ipv6_ext = 1;
    let mut ctx = skb_ctx(4, 500);
    test_run(&cap, Direction::ToPod, &f6.build(), Some(&mut ctx), 1).expect("test run");
    let (m, _) = drained(&cap);
    let want = BTreeMap::from([
        // 3 x (20 IP + 20 TCP) headers + 2500 payload.
        (
            key("10.5.0.1", "10.5.0.2", Direction::FromPod),
            Counters::new(3 * 40 + 2500, 3),
        ),
        // 4 x (40 IPv6 + 8 ext + 8 UDP) headers + 2000 payload.
        (
            key("fd00::5", "fd00::6", Direction::ToPod),
            Counters::new(4 * 56 + 2000, 4),
        ),
    ]);
    assert_eq!(m, want);
}

#[test]
fn request_and_response_of_one_connection_both_stay_cached() {
    let cap = load(CaptureConfig::default());
    let req = FrameSpec::new("10.7.0.1", "10.7.1.1", L4Spec::Tcp(40000, 80), 100);
    let resp = FrameSpec::new("10.7.1.1", "10.7.0.1", L4Spec::Tcp(80, 40000), 1000);
    for _ in 0..100 {
        run(&cap, Direction::FromPod, &req.build());
        run(&cap, Direction::ToPod, &resp.build());
    }
    // One cache entry per direction: after the first packet of each, every
    // packet was a cache hit, so nothing has been added into a slot yet
    // (with one entry for both directions, each packet would move the
    // other direction's flow into its slot: 198 packets there).
    assert_eq!(
        netscope_bpf::testing::active_slot_totals(&cap).expect("read the slots"),
        Counters::default(),
        "alternating directions evicted each other from the cache"
    );
    let (m, overflow) = drained(&cap);
    assert!(overflow.is_zero());
    assert_eq!(
        m.get(&key("10.7.0.1", "10.7.1.1", Direction::FromPod)),
        Some(&Counters::new(100 * req.l3_len() as u64, 100))
    );
    assert_eq!(
        m.get(&key("10.7.1.1", "10.7.0.1", Direction::ToPod)),
        Some(&Counters::new(100 * resp.l3_len() as u64, 100))
    );
    assert_eq!(m.len(), 2);
}

#[test]
fn a_flow_with_two_slots_is_returned_once_with_both() {
    // A flow whose index entry is lost (evicted by the LRU, or two CPUs
    // handing out a slot at once) takes a second slot in the same side;
    // the drain adds them and returns the flow once.
    let cap = load(CaptureConfig::default());
    let mut sent = BTreeMap::new();
    for round in 0..3 {
        for i in 0..40u8 {
            let dst = format!("10.8.1.{i}");
            let f = FrameSpec::new("10.8.0.1", &dst, L4Spec::Udp(1, 2), 10 + round);
            run(&cap, Direction::FromPod, &f.build());
            *sent
                .entry(key("10.8.0.1", &dst, Direction::FromPod))
                .or_insert_with(Counters::default) += Counters::new(f.l3_len() as u64, 1);
        }
        let forgotten = netscope_bpf::testing::forget_index(&cap).expect("empty the index");
        assert_eq!(forgotten, 40, "one index entry per flow");
    }
    let (got, overflow) = drained(&cap);
    assert!(overflow.is_zero());
    assert_eq!(got, sent, "every flow once, with all its slots");
}

#[test]
fn full_table_overflows_into_the_overflow_counter() {
    let cap = load(CaptureConfig {
        max_flows: 4,
        ..CaptureConfig::default()
    });
    let mut total = Counters::default();
    for i in 0..10u8 {
        let f = FrameSpec::new("10.6.0.1", &format!("10.6.1.{i}"), L4Spec::Udp(1, 2), 100);
        run(&cap, Direction::FromPod, &f.build());
        total += Counters::new(f.l3_len() as u64, 1);
    }
    let d = BpfCollector::new(cap.clone()).drain().expect("drain");
    // Each new flow moves the previous one from the CPU's cache entry into
    // the table: 4 fit, the next 5 overflow, the last is still cached.
    assert_eq!(
        d.samples.len(),
        5,
        "max_flows table slots + the CPU's cache entry"
    );
    assert_eq!(d.overflow, Counters::new(5 * 128, 5));
    assert_eq!(
        d.total(),
        total,
        "flows + overflow add up to everything sent"
    );
    assert_eq!(d.capacity, 4);
    // After the drain the table has room again, and the overflow slot is back.
    for i in 0..6u8 {
        let f = FrameSpec::new("10.6.0.1", &format!("10.6.2.{i}"), L4Spec::Udp(1, 2), 100);
        run(&cap, Direction::FromPod, &f.build());
    }
    let d = BpfCollector::new(cap.clone()).drain().expect("drain");
    assert_eq!((d.samples.len(), d.overflow), (5, Counters::new(128, 1)));
    // And the other table (used after the first swap) behaves the same.
    let d = BpfCollector::new(cap.clone()).drain().expect("drain");
    assert!(d.samples.is_empty() && d.overflow.is_zero());
}

#[test]
fn service_cidr_traffic_carries_protocol_and_ports() {
    let cap = load(CaptureConfig {
        service_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:96::/112".parse().unwrap(),
        ],
        ..CaptureConfig::default()
    });
    // Request to a ClusterIP (remote = dst for FromPod): ports kept.
    let req = FrameSpec::new("10.0.0.5", "10.96.0.10", L4Spec::Tcp(41000, 80), 50);
    // Reply from the ClusterIP (remote = src for ToPod): ports kept.
    let rep = FrameSpec::new("10.96.0.10", "10.0.0.5", L4Spec::Tcp(80, 41000), 500);
    // UDP DNS to a v6 ClusterIP.
    let dns6 = FrameSpec::new("fd00::5", "fd00:96::a", L4Spec::Udp(5353, 53), 40);
    // Outside the CIDRs: no ports.
    let plain = FrameSpec::new("10.0.0.5", "10.112.0.1", L4Spec::Tcp(41000, 80), 50);
    // A ClusterIP as *local* address does not count (FromPod remote is dst).
    let local = FrameSpec::new("10.96.0.10", "10.0.0.9", L4Spec::Udp(7, 8), 10);
    for (dir, f) in [
        (Direction::FromPod, &req),
        (Direction::ToPod, &rep),
        (Direction::FromPod, &dns6),
        (Direction::FromPod, &plain),
        (Direction::FromPod, &local),
    ] {
        run(&cap, dir, &f.build());
    }
    let (m, _) = drained(&cap);
    let l4 = |proto, s, d| {
        Some(L4 {
            proto,
            src_port: s,
            dst_port: d,
        })
    };
    let with = |src: &str, dst: &str, dir, l| FlowKey {
        l4: l,
        ..key(src, dst, dir)
    };
    let want = BTreeMap::from([
        (
            with(
                "10.0.0.5",
                "10.96.0.10",
                Direction::FromPod,
                l4(6, 41000, 80),
            ),
            Counters::new(90, 1),
        ),
        (
            with("10.96.0.10", "10.0.0.5", Direction::ToPod, l4(6, 80, 41000)),
            Counters::new(540, 1),
        ),
        (
            with(
                "fd00::5",
                "fd00:96::a",
                Direction::FromPod,
                l4(17, 5353, 53),
            ),
            Counters::new(88, 1),
        ),
        (
            key("10.0.0.5", "10.112.0.1", Direction::FromPod),
            Counters::new(90, 1),
        ),
        (
            key("10.96.0.10", "10.0.0.9", Direction::FromPod),
            Counters::new(38, 1),
        ),
    ]);
    assert_eq!(m, want);
}

#[test]
fn without_service_cidrs_no_ports_are_kept() {
    let cap = load(CaptureConfig::default());
    let req = FrameSpec::new("10.0.0.5", "10.96.0.10", L4Spec::Tcp(41000, 80), 50);
    run(&cap, Direction::FromPod, &req.build());
    let (m, _) = drained(&cap);
    assert_eq!(
        m,
        BTreeMap::from([(
            key("10.0.0.5", "10.96.0.10", Direction::FromPod),
            Counters::new(90, 1)
        )])
    );
}

#[test]
fn bad_config_is_rejected_with_a_clear_error() {
    let e = Capture::load(&CaptureConfig {
        max_flows: 0,
        ..CaptureConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("max_flows"), "{e}");
    let nets = (0..9)
        .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
        .collect();
    let e = Capture::load(&CaptureConfig {
        service_cidrs: nets,
        ..CaptureConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("at most 8 Service CIDRs"), "{e}");
}

/// Offset of the IP header in an untagged frame.
const L3: usize = 14;

fn set_be16(frame: &mut [u8], off: usize, v: u16) {
    frame[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// The byte definition for lengths (README, "What a byte is"): a frame the
/// kernel's IP receive path drops as malformed (ip_rcv_core, ipv6_rcv)
/// never reaches a forward hook, so it is not counted; a valid one counts
/// its IP length. Issue 12, row 1: an IPv4 total length below the header
/// length used to count 1 byte, which the aggregator refused.
#[test]
fn ip_lengths_the_kernel_drops_are_not_counted() {
    let cap = load(CaptureConfig::default());
    let v4 = FrameSpec::new("10.7.0.1", "10.7.0.2", L4Spec::Udp(1, 2), 100);
    let mut v4o = FrameSpec::new("10.7.0.1", "10.7.0.3", L4Spec::Udp(1, 2), 100);
    v4o.ipv4_options = 8; // IHL 7: a 28-byte header
    let v6 = FrameSpec::new("fd07::1", "fd07::2", L4Spec::Udp(1, 2), 100);
    let mut v6h = FrameSpec::new("fd07::1", "fd07::3", L4Spec::Udp(1, 2), 100);
    v6h.ipv6_ext = 1; // hop-by-hop first
    let (l4, l4o, l6, l6h) = (v4.l3_len(), v4o.l3_len(), v6.l3_len(), v6h.l3_len());
    assert_eq!((l4, l4o, l6, l6h), (128, 136, 148, 156));

    // (what, spec, frame edit: total/payload length, bytes padded after, counted L3 bytes)
    type Case = (&'static str, FrameSpec, u16, usize, Option<u64>);
    let cases: Vec<Case> = vec![
        ("IPv4 as built", v4.clone(), l4 as u16, 0, Some(128)),
        ("IPv4 padded", v4.clone(), l4 as u16, 20, Some(128)),
        ("IPv4 shorter than its frame", v4.clone(), 60, 0, Some(60)),
        (
            "IPv4 total length = header length",
            v4.clone(),
            20,
            0,
            Some(20),
        ),
        ("IPv4 total length 1 (row 1)", v4.clone(), 1, 0, None),
        ("IPv4 total length 19", v4.clone(), 19, 0, None),
        ("IPv4 total length 0, not GSO", v4.clone(), 0, 0, None),
        (
            "IPv4 total length beyond the frame",
            v4.clone(),
            129,
            0,
            None,
        ),
        ("IPv4 total length 65535", v4.clone(), 65535, 0, None),
        (
            "IPv4 options, length = header",
            v4o.clone(),
            28,
            0,
            Some(28),
        ),
        ("IPv4 options, length < header", v4o.clone(), 27, 0, None),
        ("IPv4 options, length 20", v4o.clone(), 20, 0, None),
        ("IPv6 as built", v6.clone(), (l6 - 40) as u16, 0, Some(148)),
        ("IPv6 padded", v6.clone(), (l6 - 40) as u16, 30, Some(148)),
        (
            "IPv6 payload beyond the frame",
            v6.clone(),
            (l6 - 39) as u16,
            0,
            None,
        ),
        ("IPv6 payload 65535", v6.clone(), 65535, 0, None),
        // ipv6_rcv trims the packet to its header and passes it on.
        ("IPv6 payload 0, no hop-by-hop", v6.clone(), 0, 0, Some(40)),
        // Hop-by-hop (a jumbogram): the kernel forwards the whole frame.
        ("IPv6 payload 0, hop-by-hop", v6h.clone(), 0, 0, Some(156)),
        (
            "IPv6 payload 0, hop-by-hop, padded",
            v6h.clone(),
            0,
            4,
            Some(160),
        ),
        (
            "IPv6 hop-by-hop as built",
            v6h.clone(),
            (l6h - 40) as u16,
            0,
            Some(156),
        ),
    ];
    for (i, (what, mut spec, len, pad, want)) in cases.into_iter().enumerate() {
        // A distinct destination per case, so that each one has its own flow.
        spec.dst = match spec.dst {
            std::net::IpAddr::V4(_) => format!("10.7.1.{i}").parse().unwrap(),
            std::net::IpAddr::V6(_) => format!("fd07::1:{i}").parse().unwrap(),
        };
        let mut frame = spec.build();
        let len_off = if spec.src.is_ipv4() { L3 + 2 } else { L3 + 4 };
        set_be16(&mut frame, len_off, len);
        frame.resize(frame.len() + pad, 0);
        // Followed by a valid frame of another flow: it counts exactly.
        let ok = FrameSpec::new("10.7.0.9", "10.7.0.10", L4Spec::Tcp(1, 2), 10);
        for dir in Direction::BOTH {
            run(&cap, dir, &frame);
            run(&cap, dir, &ok.build());
        }
        let (m, overflow) = drained(&cap);
        let mut expect = BTreeMap::new();
        for dir in Direction::BOTH {
            if let Some(bytes) = want {
                expect.insert(
                    FlowKey::new(spec.src, spec.dst, dir),
                    Counters::new(bytes, 1),
                );
            }
            expect.insert(key("10.7.0.9", "10.7.0.10", dir), Counters::new(50, 1));
        }
        assert_eq!(m, expect, "{what}: length field {len}, {pad} bytes padding");
        assert!(overflow.is_zero(), "{what}: overflow {overflow:?}");
    }
}

/// GSO keeps its rules under the length checks: a zero IPv4 total length
/// or IPv6 payload length (BIG TCP, over 64 KiB) means the whole skb; a
/// length beyond the skb is still dropped.
#[test]
fn gso_lengths_big_tcp_and_malformed() {
    let cap = load(CaptureConfig::default());
    let f4 = FrameSpec::new("10.8.0.1", "10.8.0.2", L4Spec::Tcp(1, 2), 2500);
    let f6 = FrameSpec::new("fd08::1", "fd08::2", L4Spec::Tcp(1, 2), 2500);
    let mut big4 = f4.build();
    set_be16(&mut big4, L3 + 2, 0);
    let mut big6 = f6.build();
    set_be16(&mut big6, L3 + 4, 0);
    let mut long4 = f4.build();
    set_be16(&mut long4, L3 + 2, (f4.l3_len() + 1) as u16);
    let mut long6 = FrameSpec::new("fd08::1", "fd08::3", L4Spec::Tcp(1, 2), 2500).build();
    set_be16(&mut long6, L3 + 4, (f6.l3_len() - 39) as u16);
    for frame in [&big4, &big6, &long4, &long6] {
        let mut ctx = skb_ctx(3, 1000);
        let out = test_run(&cap, Direction::FromPod, frame, Some(&mut ctx), 1).expect("test run");
        assert_eq!(out.retval, TC_ACT_UNSPEC);
    }
    let (m, overflow) = drained(&cap);
    let want = BTreeMap::from([
        // 3 x (IP + 20 TCP) headers + 2500 payload.
        (
            key("10.8.0.1", "10.8.0.2", Direction::FromPod),
            Counters::new(3 * 40 + 2500, 3),
        ),
        (
            key("fd08::1", "fd08::2", Direction::FromPod),
            Counters::new(3 * 60 + 2500, 3),
        ),
    ]);
    assert_eq!(m, want);
    assert!(overflow.is_zero());
}
