//! Legacy TC: netscope stays first on its hooks when a CNI-like filter
//! that ends the chain (returns `TC_ACT_OK`) lands at priority 1, handle 1,
//! protocol all, as Cilium's loader puts its own; and re-attaches when its
//! filter is deleted by someone else. Both orders. Namespaces
//! `netscope-test-cil*`. Needs root.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::init_logs;
use netscope::{AttachMode, Attacher, Collector, Counters, Direction, FlowKey};
use netscope_bpf::netlink::{tc_filters, TcFilterEntry};
use netscope_bpf::testing::netns::{sweep, NetNs};
use netscope_bpf::testing::topo::{self, PodSpec};
use netscope_bpf::testing::{prog_id, tc_attach, tc_detach, tc_query, TestPrograms};
use netscope_bpf::{
    interface, BpfAttacher, BpfCollector, Capture, CaptureConfig, TC_HANDLE, TC_PRIORITY,
};

/// Cilium's loader: priority 1, handle 1 (protocol all, as libbpf's).
const CNI_PRIORITY: u32 = 1;
const CNI_HANDLE: u32 = 1;

fn drain_all(c: &mut BpfCollector) -> HashMap<FlowKey, Counters> {
    let mut m = HashMap::new();
    for s in c.drain().expect("drain").samples {
        *m.entry(s.key).or_default() += s.counters;
    }
    m
}

fn filters(ns: &NetNs, ifindex: u32) -> Vec<TcFilterEntry> {
    ns.run(move || tc_filters(ifindex, true).expect("filter dump"))
}

fn netscope_first(f: &[TcFilterEntry]) -> bool {
    f.first()
        .is_some_and(|f| f.handle == TC_HANDLE && f.priority == TC_PRIORITY)
}

/// Waits (bounded) until netscope's filter is the first on the hook;
/// returns how long that took.
fn wait_first(ns: &NetNs, ifindex: u32, what: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let f = filters(ns, ifindex);
        if netscope_first(&f) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: netscope's filter never came back first: {f:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends 40 UDP datagrams A -> B; netscope must have counted all of them
/// on A's host-side ingress.
fn exact_from_a(a: &topo::Pod, b: &topo::Pod, collector: &mut BpfCollector, what: &str) {
    let (a4, b4) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));
    drain_all(collector);
    let deadline = Instant::now() + Duration::from_secs(2);
    let sink = topo::udp_sink(&b.ns, SocketAddr::new(b4, 5005), deadline);
    let sent = topo::udp_send(
        &a.ns,
        SocketAddr::new(b4, 5005),
        deadline,
        40,
        300,
        Duration::from_millis(2),
    )
    .join()
    .expect("sender");
    assert_eq!(sent, 40, "{what}: sent");
    assert_eq!(sink.join().expect("sink"), 40, "{what}: delivered");
    let got = drain_all(collector);
    let per = 20 + 8 + 300;
    assert_eq!(
        got.get(&FlowKey::new(a4, b4, Direction::FromPod)),
        Some(&Counters::new(40 * per, 40)),
        "{what}: netscope counts every packet on the guarded hook"
    );
}

fn stays_first(cni_first: bool, tag: &str, net: u8) {
    init_logs();
    let prefix = format!("netscope-test-cil{tag}");
    sweep(&prefix).expect("sweep");
    let specs = [
        PodSpec {
            host_if: format!("lxc{tag}a"),
            ipv6: false,
        },
        PodSpec {
            host_if: format!("lxc{tag}b"),
            ipv6: false,
        },
    ];
    let node = topo::node(&prefix, net, &specs).expect("topology");
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let ai = a.host_ifindex;
    let capture = Arc::new(Capture::load(&CaptureConfig::default()).expect("load (needs root)"));
    let cni = Arc::new(TestPrograms::load(1, 9).expect("cni programs"));
    let cni_id = prog_id(cni.cni_count.as_fd()).expect("id");
    let add_cni = {
        let cni = cni.clone();
        move || {
            tc_attach(cni.cni_count.as_fd(), ai, true, CNI_HANDLE, CNI_PRIORITY)
                .expect("the CNI-like filter")
        }
    };
    a.ns.exec(&["ping", "-c", "1", "-W", "2", &b.v4.to_string()])
        .expect("ping");

    if cni_first {
        node.ns.run(add_cni.clone());
    }
    let (cap, name) = (capture.clone(), a.host_if.clone());
    let (attacher, attachment) = node.ns.run(move || {
        let att = BpfAttacher::new(cap, AttachMode::Tc);
        let x = att
            .attach(&interface(&name).expect("iface"), Direction::FromPod)
            .unwrap_or_else(|e| panic!("{e:#}"));
        (att, x)
    });
    let mut collector = BpfCollector::new(capture.clone());

    if cni_first {
        // Measured: within one priority (one protocol, one classifier)
        // cls_bpf runs the newest filter first, so attaching after the
        // CNI puts netscope ahead without any help.
        let f = filters(&node.ns, ai);
        assert!(netscope_first(&f), "netscope added last runs first: {f:?}");
        assert_eq!(attacher.tc_guard_stats().preempted, 0);
    } else {
        node.ns.run(add_cni.clone());
        let took = wait_first(&node.ns, ai, "after the CNI's filter");
        let s = attacher.tc_guard_stats();
        println!(
            "tc guard: netscope first again {:.3} ms after the CNI filter was added; blind interval counted {:.3} ms",
            took.as_secs_f64() * 1e3,
            s.blind_seconds * 1e3
        );
        assert_eq!(s.preempted, 1, "one preemption counted: {s:?}");
        assert!(
            s.blind_seconds > 0.0,
            "the blind interval is measured: {s:?}"
        );
        assert_eq!(s.not_first, 0, "{s:?}");
    }
    // The other program is never touched: same id, same place.
    let f = filters(&node.ns, ai);
    assert_eq!(f.len(), 2, "netscope's filter and the CNI's: {f:?}");
    assert_eq!((f[1].priority, f[1].handle), (CNI_PRIORITY, CNI_HANDLE));
    assert_eq!(f[1].prog_name, "cni_count");
    assert_eq!(
        node.ns
            .run(move || tc_query(ai, true, CNI_HANDLE, CNI_PRIORITY).unwrap()),
        Some(cni_id)
    );
    let (seen0, _) = cni.cni_counters().expect("cni counters");
    exact_from_a(a, b, &mut collector, "netscope ahead of the CNI");
    let (seen1, _) = cni.cni_counters().expect("cni counters");
    assert!(
        seen1 - seen0 >= 40,
        "the CNI's program still runs after netscope's"
    );

    // Someone else deletes netscope's filter: it comes back.
    let before = attacher.tc_guard_stats();
    node.ns
        .run(move || tc_detach(ai, true, TC_HANDLE, TC_PRIORITY))
        .expect("foreign delete");
    let took = wait_first(&node.ns, ai, "after its deletion");
    let s = attacher.tc_guard_stats();
    println!(
        "tc guard: netscope's deleted filter back first after {:.3} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(s.reattached, before.reattached + 1, "{s:?}");
    assert!(s.blind_seconds > before.blind_seconds, "{s:?}");
    exact_from_a(a, b, &mut collector, "re-attached");
    assert_eq!(
        node.ns
            .run(move || tc_query(ai, true, CNI_HANDLE, CNI_PRIORITY).unwrap()),
        Some(cni_id),
        "the CNI's filter stays"
    );

    // netscope's own detach is not undone by its guard.
    node.ns.run(move || attachment.detach().expect("detach"));
    std::thread::sleep(Duration::from_millis(300));
    let f = filters(&node.ns, ai);
    assert!(
        f.iter().all(|f| f.handle != TC_HANDLE),
        "no netscope filter after detach: {f:?}"
    );
    assert_eq!(f.len(), 1, "the CNI's filter stays: {f:?}");
    drop(attacher);
    node.ns
        .run(move || tc_detach(ai, true, CNI_HANDLE, CNI_PRIORITY))
        .expect("remove the CNI-like filter");
}

#[test]
fn legacy_tc_netscope_first_then_cni() {
    stays_first(false, "f", 61);
}

#[test]
fn legacy_tc_cni_first_then_netscope() {
    stays_first(true, "r", 62);
}

/// The start-up check sees other programs on link ingress hooks: on a
/// host link (an "uplink", as Cilium's bpf_host) and on a pod link (as
/// bpf_lxc), and not netscope's own.
#[test]
fn detects_foreign_ingress_programs() {
    init_logs();
    let prefix = "netscope-test-cild";
    sweep(prefix).expect("sweep");
    let specs = [
        PodSpec {
            host_if: "lxcda".into(),
            ipv6: false,
        },
        PodSpec {
            host_if: "lxcdb".into(),
            ipv6: false,
        },
    ];
    let node = topo::node(prefix, 63, &specs).expect("topology");
    node.ns
        .exec(&[
            "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "wire",
        ])
        .expect("uplink");
    let capture = Arc::new(Capture::load(&CaptureConfig::default()).expect("load (needs root)"));
    let cni = Arc::new(TestPrograms::load(1, 9).expect("cni programs"));
    let ids = Direction::BOTH.map(|d| capture.program_id(d));
    let a = node.pods[0].host_ifindex;
    let (cap, h) = (capture.clone(), cni.clone());
    let found = node.ns.run(move || {
        let none =
            netscope_bpf::datapath::foreign_ingress(&Default::default(), &ids).expect("inspect");
        let up = interface("uplink").expect("uplink").ifindex;
        let links = [
            netscope_bpf::testing::tcx_append(h.cni_count.as_fd(), up, true).expect("on uplink"),
            netscope_bpf::testing::tcx_append(h.cni_count.as_fd(), a, true).expect("on lxcda"),
        ];
        // netscope's own programs do not count.
        let att = BpfAttacher::new(cap, AttachMode::Tcx);
        let mine = Direction::BOTH.map(|d| {
            att.attach(&interface("lxcdb").expect("lxcdb"), d)
                .unwrap_or_else(|e| panic!("{e:#}"))
        });
        let some =
            netscope_bpf::datapath::foreign_ingress(&Default::default(), &ids).expect("inspect");
        for m in mine {
            m.detach().expect("detach");
        }
        drop(links);
        (none, some)
    });
    assert_eq!(
        found.0,
        Default::default(),
        "nothing before the CNI's programs"
    );
    assert_eq!(found.1.host_links, vec![("uplink".to_string(), 1)]);
    assert_eq!(found.1.pod_links, vec![("lxcda".to_string(), 1)]);
}
