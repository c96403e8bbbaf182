//! Drain exactness under sustained traffic: the collector drains every
//! 50 ms for several seconds while TCP, UDP (VLAN-tagged) and IPv6 flows
//! run between pods, and the sum of everything drained must equal
//! nftables' forward counters to the byte and packet.
//!
//! Runs as root in network namespaces it creates (`netscope-test-dx-*`)
//! and removes, even on failure.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netscope::{AttachMode, Attacher, Collector, Counters, Direction, FlowKey};
use netscope_bpf::testing::netns::sweep;
use netscope_bpf::testing::topo::{self, NftReference, PodSpec};
use netscope_bpf::testing::{tcx_append, TestPrograms};
use netscope_bpf::{interface, BpfAttacher, BpfCollector, Capture, CaptureConfig};

const TRAFFIC: Duration = Duration::from_secs(6);

#[test]
fn drain_every_50ms_loses_nothing() {
    sweep("netscope-test-dx").expect("sweep stale namespaces");
    let specs = [
        PodSpec {
            host_if: "enidxa".into(),
            ipv6: true,
        },
        PodSpec {
            host_if: "calidxb".into(),
            ipv6: true,
        },
        PodSpec {
            host_if: "lxcdxc".into(),
            ipv6: false,
        }, // VLAN-tagged pod
    ];
    let node =
        topo::node("netscope-test-dx", 211, &specs).expect("build the test topology (needs root)");
    let (a, b, c) = (&node.pods[0], &node.pods[1], &node.pods[2]);
    let (a4, b4, c4) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4), IpAddr::V4(c.v4));
    let (a6, b6) = (IpAddr::V6(a.v6.unwrap()), IpAddr::V6(b.v6.unwrap()));

    let mut pairs = Vec::new();
    for (x, y) in [(a4, b4), (a4, c4), (b4, c4), (a6, b6)] {
        pairs.push((x, y));
        pairs.push((y, x));
    }
    let reference = NftReference::install(&node.ns, &pairs).expect("install nftables reference");

    // Load, and attach both directions of every pod's host side (TCX).
    let capture =
        Arc::new(Capture::load(&CaptureConfig::default()).expect("load netscope (needs root)"));
    let helpers = Arc::new(TestPrograms::load(100, 0).expect("load helper programs"));
    let names: Vec<String> = node.pods.iter().map(|p| p.host_if.clone()).collect();
    let cap2 = capture.clone();
    let helpers2 = helpers.clone();
    let c_if = c.host_if.clone();
    let (attachments, pop_link) = node.ns.run(move || {
        let attacher = BpfAttacher::new(cap2, AttachMode::Tcx);
        let mut v = Vec::new();
        for n in &names {
            let iface = interface(n).expect("host-side interface");
            for d in Direction::BOTH {
                v.push(
                    attacher
                        .attach(&iface, d)
                        .unwrap_or_else(|e| panic!("attach: {e:#}")),
                );
            }
        }
        // Pod c's frames arrive tagged (tag in skb metadata); pop it after
        // netscope so the node can route them.
        let c_idx = interface(&c_if).expect("c host side").ifindex;
        let pop = tcx_append(std::os::fd::AsFd::as_fd(&helpers2.vlan_pop), c_idx, true)
            .expect("attach vlan_pop");
        (v, pop)
    });
    let helpers3 = helpers.clone();
    let push_link = c.ns.run(move || {
        let idx = interface("eth0").expect("pod eth0").ifindex;
        tcx_append(std::os::fd::AsFd::as_fd(&helpers3.vlan_push), idx, false)
            .expect("attach vlan_push")
    });

    // Warm up neighbours, then clear what that counted from both sides.
    for (p, dst) in [(a, b4), (b, a4), (c, a4), (a, b6)] {
        p.ns.exec(&["ping", "-c", "1", "-W", "2", &dst.to_string()])
            .expect("ping between pods");
    }

    let mut collector = BpfCollector::new(capture.clone());
    collector.drain().expect("initial drain");
    let base = reference.read(&node.ns).expect("read nft");

    let deadline = Instant::now() + TRAFFIC;
    let sink_ab = topo::tcp_sink(&b.ns, SocketAddr::new(b4, 5001), deadline);
    let sink_ba6 = topo::tcp_sink(&a.ns, SocketAddr::new(a6, 5003), deadline);
    let sink_ca = topo::udp_sink(&a.ns, SocketAddr::new(a4, 5002), deadline);
    let senders = vec![
        topo::tcp_send(
            &a.ns,
            SocketAddr::new(b4, 5001),
            deadline,
            2 << 30,
            16 * 1024,
        ),
        topo::tcp_send(&b.ns, SocketAddr::new(a6, 5003), deadline, 2 << 30, 9000),
        topo::udp_send(
            &c.ns,
            SocketAddr::new(a4, 5002),
            deadline,
            400_000,
            1200,
            Duration::from_micros(50),
        ),
    ];

    // Drain every 50 ms while the traffic runs.
    let mut totals: HashMap<FlowKey, Counters> = HashMap::new();
    let mut overflow = Counters::default();
    let (mut drains, mut busy_drains) = (0u32, 0u32);
    let running = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let mut next = started;
    while drains < 100 || Instant::now() < deadline + Duration::from_millis(300) {
        // A fixed 50 ms cadence, whatever a drain itself takes.
        next += Duration::from_millis(50);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let d = collector.drain().expect("drain");
        drains += 1;
        if !d.samples.is_empty() {
            busy_drains += 1;
        }
        overflow += d.overflow;
        for s in d.samples {
            *totals.entry(s.key).or_default() += s.counters;
        }
    }
    running.store(false, Ordering::Relaxed);
    let sent: Vec<u64> = senders
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    let received = (
        sink_ab.join().expect("sink"),
        sink_ba6.join().expect("sink"),
        sink_ca.join().expect("sink"),
    );
    // Let the last packets (FINs, ACKs) settle, then the final drain.
    std::thread::sleep(Duration::from_millis(500));
    let d = collector.drain().expect("final drain");
    overflow += d.overflow;
    for s in d.samples {
        *totals.entry(s.key).or_default() += s.counters;
    }
    let after = reference.read(&node.ns).expect("read nft");

    eprintln!(
        "drains: {drains} ({busy_drains} non-empty) over {:?}; sent {sent:?}; received {received:?}",
        started.elapsed()
    );
    assert!(
        drains >= 100,
        "expected at least 100 drains in {TRAFFIC:?}, got {drains}"
    );
    assert!(
        busy_drains >= 80,
        "traffic must flow during the drains (only {busy_drains} non-empty)"
    );
    assert!(
        sent[0] > 10 << 20 && sent[1] > 10 << 20,
        "TCP streams too small to mean anything: {sent:?}"
    );
    assert!(sent[2] > 1000, "too few UDP datagrams: {}", sent[2]);
    assert!(overflow.is_zero(), "nothing should overflow: {overflow:?}");

    let mut checked = 0;
    for (s, d) in &pairs {
        let want = Counters::new(
            after[&(*s, *d)].bytes - base[&(*s, *d)].bytes,
            after[&(*s, *d)].packets - base[&(*s, *d)].packets,
        );
        let from = totals
            .get(&FlowKey::new(*s, *d, Direction::FromPod))
            .copied()
            .unwrap_or_default();
        let to = totals
            .get(&FlowKey::new(*s, *d, Direction::ToPod))
            .copied()
            .unwrap_or_default();
        assert_eq!(from, want, "FromPod {s} -> {d} vs nftables");
        assert_eq!(to, want, "ToPod {s} -> {d} vs nftables");
        if !want.is_zero() {
            checked += 1;
        }
    }
    // a->b, b->a (acks), b->a v6, a->b v6 (acks), c->a.
    assert!(checked >= 5, "only {checked} pairs carried traffic");
    let tagged = totals[&FlowKey::new(c4, a4, Direction::FromPod)].packets;
    assert!(tagged >= 1000, "tagged UDP flow was not counted");
    // The tag really was in skb metadata when netscope saw those packets.
    let popped = helpers.vlan_popped().expect("read vlan_pop counter");
    assert!(
        popped >= tagged,
        "only {popped} of {tagged} packets from pod c carried a metadata tag"
    );

    drop(push_link);
    drop(pop_link);
    let leftover: Vec<_> = attachments
        .into_iter()
        .filter_map(|a| a.detach().err())
        .collect();
    assert!(leftover.is_empty(), "detach failed: {leftover:?}");
    let ifx: Vec<u32> = node.pods.iter().map(|p| p.host_ifindex).collect();
    let remaining = node.ns.run(move || {
        ifx.iter()
            .flat_map(|&i| {
                Direction::BOTH.map(|d| netscope_bpf::tcx_programs(i, d).expect("tcx query").len())
            })
            .sum::<usize>()
    });
    assert_eq!(remaining, 0, "programs left on the hooks after detach");
}
