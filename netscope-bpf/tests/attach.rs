//! Attach tests in network namespaces the tests create (`netscope-test-at*`):
//! discovery of CNI-named pod links through rtnetlink, exact counts in
//! TCX, legacy-TC and auto mode, coexistence with a CNI's own programs,
//! restart safety and churn. Needs root.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{attached_in, clean_of, init_logs, presence, Discovery};
use netscope::discover::InterfaceFilter;
use netscope::{AttachMode, Attacher, Collector, Counters, Direction, FlowKey};
use netscope_bpf::testing::netns::sweep;
use netscope_bpf::testing::topo::{self, NftReference, PodSpec};
use netscope_bpf::testing::{prog_id, tc_attach, tc_detach, tc_query, tcx_append, TestPrograms};
use netscope_bpf::{
    interface, tcx_programs, BpfAttacher, BpfCollector, Capture, CaptureConfig, TC_HANDLE,
    TC_PRIORITY,
};

fn load() -> Arc<Capture> {
    init_logs();
    Arc::new(Capture::load(&CaptureConfig::default()).expect("load netscope (needs root)"))
}

fn drain_all(c: &mut BpfCollector) -> HashMap<FlowKey, Counters> {
    let mut m = HashMap::new();
    for s in c.drain().expect("drain").samples {
        *m.entry(s.key).or_default() += s.counters;
    }
    m
}

/// Pods named like each CNI plus a VLAN-tagged one; a bridge and a
/// non-matching veth that must be left alone; exact counts against
/// nftables; nothing left after stop.
fn cni_names_in_mode(mode: AttachMode, tag: &str, net: u8) {
    let prefix = format!("netscope-test-at{tag}");
    sweep(&prefix).expect("sweep");
    let names = ["eni", "cali", "veth", "lxc", "vlan"].map(|p| format!("{p}{tag}x"));
    let specs: Vec<PodSpec> = names
        .iter()
        .map(|n| PodSpec {
            host_if: n.clone(),
            ipv6: n.starts_with("cali"),
        })
        .collect();
    let node = topo::node(&prefix, net, &specs).expect("topology");
    // Not pod links: a bridge with a matching name and a veth with a foreign name.
    node.ns
        .exec(&[
            "ip",
            "link",
            "add",
            &format!("veth{tag}br"),
            "type",
            "bridge",
        ])
        .expect("bridge");
    node.ns
        .exec(&[
            "ip",
            "link",
            "add",
            &format!("tap{tag}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("tapp{tag}"),
        ])
        .expect("veth");
    let capture = load();
    let helpers = Arc::new(TestPrograms::load(200, 0).expect("helpers"));

    // The VLAN pod tags its frames; the node pops the tag after netscope.
    let vlan_pod = &node.pods[4];
    let h = helpers.clone();
    let _push = vlan_pod.ns.run(move || {
        tcx_append(
            h.vlan_push.as_fd(),
            interface("eth0").unwrap().ifindex,
            false,
        )
        .expect("push")
    });
    let (h, vidx) = (helpers.clone(), vlan_pod.host_ifindex);
    let pop_mode = mode;
    let _pop = node.ns.run(move || match pop_mode {
        // Legacy TC: a filter after netscope's priority. TCX: appended.
        AttachMode::Tc => {
            tc_attach(h.vlan_pop.as_fd(), vidx, true, 1, TC_PRIORITY + 1).expect("pop filter");
            None
        }
        _ => Some(tcx_append(h.vlan_pop.as_fd(), vidx, true).expect("pop link")),
    });

    let disc = Discovery::start(&node.ns, capture.clone(), mode, InterfaceFilter::default());
    let attached = disc.wait_attached(names.as_ref(), Duration::from_secs(5));
    assert_eq!(
        attached.len(),
        names.len(),
        "exactly the pod links are attached: {attached:?}"
    );

    let mut collector = BpfCollector::new(capture.clone());
    // Everyone talks to the eni pod; the cali pods also over IPv6.
    let server = &node.pods[0];
    let s4 = IpAddr::V4(server.v4);
    let mut pairs = Vec::new();
    for p in &node.pods[1..] {
        pairs.push((IpAddr::V4(p.v4), s4));
        pairs.push((s4, IpAddr::V4(p.v4)));
    }
    let reference = NftReference::install(&node.ns, &pairs).expect("nft");
    for p in &node.pods[1..] {
        p.ns.exec(&[
            "ping",
            "-c",
            "3",
            "-i",
            "0.05",
            "-s",
            "700",
            "-W",
            "2",
            &server.v4.to_string(),
        ])
        .expect("ping");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let sink = topo::udp_sink(&server.ns, SocketAddr::new(s4, 6000), deadline);
    let senders: Vec<_> = node.pods[1..]
        .iter()
        .map(|p| {
            topo::udp_send(
                &p.ns,
                SocketAddr::new(s4, 6000),
                deadline,
                300,
                900,
                Duration::from_millis(1),
            )
        })
        .collect();
    let sent: u64 = senders.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        sink.join().unwrap(),
        sent,
        "every datagram arrives: netscope is transparent"
    );
    std::thread::sleep(Duration::from_millis(100));
    let got = drain_all(&mut collector);
    let want = reference.read(&node.ns).expect("nft read");
    for (s, d) in &pairs {
        let w = want[&(*s, *d)];
        assert!(!w.is_zero(), "no traffic {s} -> {d}");
        assert_eq!(
            got.get(&FlowKey::new(*s, *d, Direction::FromPod)),
            Some(&w),
            "{mode}: FromPod {s} -> {d}"
        );
        assert_eq!(
            got.get(&FlowKey::new(*s, *d, Direction::ToPod)),
            Some(&w),
            "{mode}: ToPod {s} -> {d}"
        );
    }
    let popped = helpers.vlan_popped().unwrap();
    assert!(
        popped >= 300,
        "the VLAN pod's frames carried a metadata tag ({popped})"
    );

    // The effective mode is what the hooks show.
    let effective = if mode == AttachMode::Auto {
        AttachMode::Tcx
    } else {
        mode
    };
    let idx: Vec<u32> = node.pods.iter().map(|p| p.host_ifindex).collect();
    let others: Vec<u32> = [format!("veth{tag}br"), format!("tap{tag}")]
        .iter()
        .map(|n| topo::ifindex_in(&node.ns, n).unwrap())
        .collect();
    for p in presence(&node.ns, idx.clone()) {
        assert!(attached_in(&p, &capture, effective), "{mode}: {p:?}");
    }
    for p in presence(&node.ns, others.clone()) {
        assert!(
            clean_of(&p, &capture),
            "{mode}: a non-pod link was attached: {p:?}"
        );
    }

    let errors = disc.stop();
    assert!(errors.is_empty(), "detach errors: {errors:?}");
    for p in presence(&node.ns, idx) {
        assert!(
            clean_of(&p, &capture),
            "{mode}: left behind after stop: {p:?}"
        );
    }
    if mode == AttachMode::Tc {
        node.ns
            .run(move || tc_detach(vidx, true, 1, TC_PRIORITY + 1).expect("remove pop filter"));
    }
}

#[test]
fn cni_named_links_tcx() {
    cni_names_in_mode(AttachMode::Tcx, "x", 221);
}

#[test]
fn cni_named_links_legacy_tc() {
    cni_names_in_mode(AttachMode::Tc, "t", 222);
}

#[test]
fn cni_named_links_auto() {
    cni_names_in_mode(AttachMode::Auto, "a", 223);
}

/// A CNI's programs on the same hooks keep running and keep their verdicts:
/// one drops marked UDP (port 9) on the sender's host-side ingress, one
/// counts on the receiver's host-side egress.
fn coexistence(mode: AttachMode, tag: &str, net: u8) {
    let prefix = format!("netscope-test-co{tag}");
    sweep(&prefix).expect("sweep");
    let specs = [
        PodSpec {
            host_if: format!("cali{tag}a"),
            ipv6: false,
        },
        PodSpec {
            host_if: format!("cali{tag}b"),
            ipv6: false,
        },
        PodSpec {
            host_if: format!("cali{tag}c"),
            ipv6: false,
        },
    ];
    let node = topo::node(&prefix, net, &specs).expect("topology");
    let (a, b, c) = (&node.pods[0], &node.pods[1], &node.pods[2]);
    let capture = load();
    let cni = Arc::new(TestPrograms::load(1, 9).expect("cni programs"));
    let (drop_id, count_id) = (
        prog_id(cni.cni_drop.as_fd()).unwrap(),
        prog_id(cni.cni_count.as_fd()).unwrap(),
    );

    // The CNI was there first.
    let (h, ai, bi, ci) = (cni.clone(), a.host_ifindex, b.host_ifindex, c.host_ifindex);
    let cni_links = node.ns.run(move || match mode {
        AttachMode::Tc => {
            tc_attach(h.cni_drop.as_fd(), ai, true, 1, 2).expect("cni drop filter");
            tc_attach(h.cni_count.as_fd(), bi, false, 1, 2).expect("cni count filter");
            // A foreign filter squatting on netscope's own handle/priority.
            tc_attach(h.cni_count.as_fd(), ci, true, TC_HANDLE, TC_PRIORITY).expect("squatter");
            Vec::new()
        }
        _ => vec![
            tcx_append(h.cni_drop.as_fd(), ai, true).expect("cni drop link"),
            tcx_append(h.cni_count.as_fd(), bi, false).expect("cni count link"),
        ],
    });

    let cap2 = capture.clone();
    let (names, cname) = ([a.host_if.clone(), b.host_if.clone()], c.host_if.clone());
    let (attachments, squat_err) = node.ns.run(move || {
        let att = BpfAttacher::new(cap2, mode);
        let mut v = Vec::new();
        for n in &names {
            for d in Direction::BOTH {
                v.push(
                    att.attach(&interface(n).unwrap(), d)
                        .unwrap_or_else(|e| panic!("{e:#}")),
                );
            }
        }
        let squat = att
            .attach(&interface(&cname).unwrap(), Direction::FromPod)
            .err()
            .map(|e| {
                let mut s = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    s += &format!(": {src}");
                }
                s
            });
        (v, squat)
    });

    // Order on the hooks: netscope first, then the CNI.
    let ids = Direction::BOTH.map(|d| capture.program_id(d));
    if mode == AttachMode::Tcx {
        let order = node.ns.run(move || {
            (
                tcx_programs(ai, Direction::FromPod).unwrap(),
                tcx_programs(bi, Direction::ToPod).unwrap(),
            )
        });
        assert_eq!(
            order,
            (vec![ids[0], drop_id], vec![ids[1], count_id]),
            "netscope must run first"
        );
    } else {
        let err = squat_err.expect("attaching over another tool's filter must fail");
        assert!(
            err.contains(&c.host_if) && err.contains("from_pod") && err.contains("tc"),
            "error names iface, direction, mode: {err}"
        );
        assert!(err.contains("another tool"), "{err}");
        let still = node
            .ns
            .run(move || tc_query(ci, true, TC_HANDLE, TC_PRIORITY).unwrap());
        assert_eq!(still, Some(count_id), "the foreign filter must stay");
        let name = node.ns.run(move || {
            netscope_bpf::netlink::tc_filter_prog_name(ci, true, TC_HANDLE, TC_PRIORITY).unwrap()
        });
        assert_eq!(
            name.as_deref(),
            Some("cni_count"),
            "the dump names the squatter's program"
        );
    }

    let mut collector = BpfCollector::new(capture.clone());
    let (a4, b4) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));
    a.ns.exec(&["ping", "-c", "1", "-W", "2", &b.v4.to_string()])
        .expect("ping");
    drain_all(&mut collector);
    let (seen0, _) = cni.cni_counters().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let ok_sink = topo::udp_sink(&b.ns, SocketAddr::new(b4, 5005), deadline);
    let marked_sink = topo::udp_sink(&b.ns, SocketAddr::new(b4, 9), deadline);
    let ok = topo::udp_send(
        &a.ns,
        SocketAddr::new(b4, 5005),
        deadline,
        50,
        500,
        Duration::from_millis(2),
    )
    .join()
    .unwrap();
    let marked = topo::udp_send(
        &a.ns,
        SocketAddr::new(b4, 9),
        deadline,
        40,
        500,
        Duration::from_millis(2),
    )
    .join()
    .unwrap();
    assert_eq!((ok, marked), (50, 40));
    assert_eq!(
        ok_sink.join().unwrap(),
        50,
        "unmarked traffic passes both programs"
    );
    assert_eq!(
        marked_sink.join().unwrap(),
        0,
        "the CNI's drop verdict is kept"
    );
    let (seen1, dropped) = cni.cni_counters().unwrap();
    assert_eq!(dropped, 40, "the CNI dropped exactly the marked packets");
    assert!(
        seen1 - seen0 >= 50 + 40 + 50,
        "the CNI programs kept running ({})",
        seen1 - seen0
    );
    std::thread::sleep(Duration::from_millis(50));
    let got = drain_all(&mut collector);
    let per = 20 + 8 + 500;
    // netscope saw every packet leave A (before the CNI dropped some) ...
    assert_eq!(
        got.get(&FlowKey::new(a4, b4, Direction::FromPod)),
        Some(&Counters::new(90 * per, 90))
    );
    // ... and only the delivered ones enter B.
    assert_eq!(
        got.get(&FlowKey::new(a4, b4, Direction::ToPod)),
        Some(&Counters::new(50 * per, 50))
    );

    // Detaching netscope leaves the CNI's programs (and the clsact) alone.
    node.ns.run(move || {
        for a in attachments {
            a.detach().expect("detach");
        }
    });
    let after = node.ns.run(move || match mode {
        AttachMode::Tc => (
            vec![tc_query(ai, true, 1, 2).unwrap().unwrap_or(0)],
            vec![tc_query(bi, false, 1, 2).unwrap().unwrap_or(0)],
        ),
        _ => (
            tcx_programs(ai, Direction::FromPod).unwrap(),
            tcx_programs(bi, Direction::ToPod).unwrap(),
        ),
    });
    assert_eq!(
        after,
        (vec![drop_id], vec![count_id]),
        "the CNI's programs must survive netscope's detach"
    );
    drop(cni_links);
    if mode == AttachMode::Tc {
        node.ns.run(move || {
            tc_detach(ai, true, 1, 2).unwrap();
            tc_detach(bi, false, 1, 2).unwrap();
            tc_detach(ci, true, TC_HANDLE, TC_PRIORITY).unwrap();
        });
    }
}

#[test]
fn coexists_with_cni_programs_tcx() {
    coexistence(AttachMode::Tcx, "x", 224);
}

#[test]
fn coexists_with_cni_filters_legacy_tc() {
    coexistence(AttachMode::Tc, "t", 225);
}

/// Legacy-TC filters outlive their process. A restarted agent replaces its
/// own stale filters instead of adding a second copy (which would double
/// count) and leaves nothing behind when it stops.
#[test]
fn restart_replaces_stale_legacy_tc_filters() {
    sweep("netscope-test-rs").expect("sweep");
    let specs = [
        PodSpec {
            host_if: "enirsa".into(),
            ipv6: false,
        },
        PodSpec {
            host_if: "enirsb".into(),
            ipv6: false,
        },
    ];
    let node = topo::node("netscope-test-rs", 226, &specs).expect("topology");
    let idx: Vec<u32> = node.pods.iter().map(|p| p.host_ifindex).collect();

    // First "agent": attaches, then dies without detaching (as after kill -9).
    let old = load();
    let old2 = old.clone();
    node.ns.run(move || {
        let att = BpfAttacher::new(old2, AttachMode::Tc);
        let mut v = Vec::new();
        for n in ["enirsa", "enirsb"] {
            for d in Direction::BOTH {
                v.push(att.attach(&interface(n).unwrap(), d).expect("attach"));
            }
        }
        // Its filters stay in the kernel, like a killed process's.
        std::mem::forget(v);
    });
    for p in presence(&node.ns, idx.clone()) {
        assert!(
            attached_in(&p, &old, AttachMode::Tc),
            "stale filters present: {p:?}"
        );
    }
    let old_ids = Direction::BOTH.map(|d| old.program_id(d));
    // How a restarted agent without CAP_SYS_ADMIN recognises its own filter:
    // the program name in the rtnetlink filter dump.
    let ia = idx[0];
    let names = node.ns.run(move || {
        [true, false].map(|ing| {
            netscope_bpf::netlink::tc_filter_prog_name(ia, ing, TC_HANDLE, TC_PRIORITY)
                .expect("filter dump")
        })
    });
    assert_eq!(
        names,
        [
            Some("netscope_from_p".to_string()),
            Some("netscope_to_pod".to_string())
        ]
    );
    let none = node.ns.run(move || {
        netscope_bpf::netlink::tc_filter_prog_name(ia, true, TC_HANDLE, TC_PRIORITY + 5)
            .expect("filter dump")
    });
    assert_eq!(none, None, "no filter at another priority");
    drop(old);

    // Second agent: a fresh load, same handle/priority.
    let new = load();
    let disc = Discovery::start(
        &node.ns,
        new.clone(),
        AttachMode::Tc,
        InterfaceFilter::default(),
    );
    disc.wait_attached(
        &["enirsa".to_string(), "enirsb".to_string()],
        Duration::from_secs(5),
    );
    for p in presence(&node.ns, idx.clone()) {
        assert!(
            attached_in(&p, &new, AttachMode::Tc),
            "replaced by the new program: {p:?}"
        );
        assert!(!p.tc.iter().flatten().any(|id| old_ids.contains(id)));
    }
    // One netscope filter per hook, not two: count them the way tc shows them.
    let a = &node.pods[0];
    let mut collector = BpfCollector::new(new.clone());
    a.ns.exec(&[
        "ping",
        "-c",
        "5",
        "-i",
        "0.05",
        "-W",
        "2",
        &node.pods[1].v4.to_string(),
    ])
    .expect("ping");
    let got = drain_all(&mut collector);
    let icmp = FlowKey::new(
        IpAddr::V4(a.v4),
        IpAddr::V4(node.pods[1].v4),
        Direction::FromPod,
    );
    assert_eq!(
        got.get(&icmp),
        Some(&Counters::new(5 * 84, 5)),
        "counted once per packet, not twice"
    );
    for dev in ["enirsa", "enirsb"] {
        for hook in ["ingress", "egress"] {
            let out = node
                .ns
                .exec(&["tc", "filter", "show", "dev", dev, hook])
                .expect("tc filter show");
            assert_eq!(
                out.matches("handle 0x4e53").count(),
                1,
                "{dev} {hook}: {out}"
            );
        }
    }
    let errors = disc.stop();
    assert!(errors.is_empty(), "{errors:?}");
    for p in presence(&node.ns, idx) {
        assert!(
            p.tc == [None, None],
            "nothing left after a clean stop: {p:?}"
        );
    }
}

/// 220 pod links come and go while traffic flows: every link that remains
/// is attached, nothing is left on any link after stop, and the counted
/// flow stays exact.
fn churn(mode: AttachMode, tag: &str, net: u8) {
    let prefix = format!("netscope-test-ch{tag}");
    sweep(&prefix).expect("sweep");
    let specs = [
        PodSpec {
            host_if: format!("veth{tag}a"),
            ipv6: false,
        },
        PodSpec {
            host_if: format!("veth{tag}b"),
            ipv6: false,
        },
    ];
    let node = topo::node(&prefix, net, &specs).expect("topology");
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let capture = load();
    let disc = Discovery::start(&node.ns, capture.clone(), mode, InterfaceFilter::default());
    disc.wait_attached(
        &[a.host_if.clone(), b.host_if.clone()],
        Duration::from_secs(5),
    );
    let (a4, b4) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));
    let reference = NftReference::install(&node.ns, &[(a4, b4)]).expect("nft");
    let mut collector = BpfCollector::new(capture.clone());
    drain_all(&mut collector);

    let deadline = Instant::now() + Duration::from_secs(30);
    let sink = topo::udp_sink(&b.ns, SocketAddr::new(b4, 7000), deadline);
    let sender = topo::udp_send(
        &a.ns,
        SocketAddr::new(b4, 7000),
        deadline,
        3000,
        300,
        Duration::from_millis(2),
    );

    // Create 220 links with CNI names (peers named so they don't match),
    // deleting most of them again as we go.
    let prefixes = ["veth", "cali", "eni", "lxc", "gke"];
    let name = |i: usize| format!("{}{tag}{i}", prefixes[i % prefixes.len()]);
    let mut script = String::new();
    for i in 0..220 {
        script.push_str(&format!(
            "link add {} type veth peer name pc{tag}{i}\nlink set {} up\n",
            name(i),
            name(i)
        ));
        // Delete the link made 20 rounds earlier, unless its index is a multiple of 4.
        if i >= 20 && (i - 20) % 4 != 0 {
            script.push_str(&format!("link del {}\n", name(i - 20)));
        }
    }
    let remaining: Vec<String> = (0..220)
        .filter(|j| j % 4 == 0 || *j >= 200)
        .map(name)
        .collect();
    let path = std::env::temp_dir().join(format!("{prefix}.batch"));
    std::fs::write(&path, &script).unwrap();
    // In chunks, so the watcher sees adds and deletes interleaved with traffic.
    for chunk in script.lines().collect::<Vec<_>>().chunks(40) {
        std::fs::write(&path, chunk.join("\n") + "\n").unwrap();
        node.ns
            .exec(&["ip", "-batch", &path.to_string_lossy()])
            .expect("ip -batch");
        std::thread::sleep(Duration::from_millis(30));
    }
    let _ = std::fs::remove_file(&path);
    let sent = sender.join().unwrap();
    assert_eq!(sink.join().unwrap(), sent);

    // Which links exist now, really.
    let listed = node
        .ns
        .exec(&["ip", "-o", "link", "show", "type", "veth"])
        .unwrap();
    let existing: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| {
            prefixes.iter().any(|p| n.starts_with(p))
                && !n.starts_with(&format!("veth{tag}a"))
                && !n.starts_with(&format!("veth{tag}b"))
        })
        .collect();
    let mut want = remaining.clone();
    want.sort();
    let mut have = existing.clone();
    have.sort();
    assert_eq!(have, want, "the churn script left the links it meant to");
    let attached = disc.wait_attached(&existing, Duration::from_secs(10));
    assert_eq!(
        attached.len(),
        existing.len() + 2,
        "attached to every remaining pod link and nothing else"
    );
    assert!(
        disc.state.lock().unwrap().attached_total() >= 220,
        "every created link was attached at some point"
    );
    assert!(
        disc.state.lock().unwrap().errors().is_empty(),
        "{:?}",
        disc.state.lock().unwrap().errors()
    );
    let idx: Vec<u32> = existing
        .iter()
        .map(|n| topo::ifindex_in(&node.ns, n).unwrap())
        .collect();
    for p in presence(&node.ns, idx.clone()) {
        let effective = if mode == AttachMode::Auto {
            AttachMode::Tcx
        } else {
            mode
        };
        assert!(attached_in(&p, &capture, effective), "{p:?}");
    }

    std::thread::sleep(Duration::from_millis(50));
    let got = drain_all(&mut collector);
    let want = reference.read(&node.ns).unwrap()[&(a4, b4)];
    assert_eq!(want.packets, sent, "nft saw every datagram");
    assert_eq!(
        got.get(&FlowKey::new(a4, b4, Direction::FromPod)),
        Some(&want)
    );
    assert_eq!(
        got.get(&FlowKey::new(a4, b4, Direction::ToPod)),
        Some(&want)
    );

    let errors = disc.stop();
    assert!(errors.is_empty(), "{errors:?}");
    let mut all = idx;
    all.extend([a.host_ifindex, b.host_ifindex]);
    for p in presence(&node.ns, all) {
        assert!(clean_of(&p, &capture), "left behind after stop: {p:?}");
    }
}

#[test]
fn churn_tcx() {
    churn(AttachMode::Tcx, "x", 227);
}

#[test]
fn churn_legacy_tc() {
    churn(AttachMode::Tc, "t", 228);
}
