//! Tests of [`super`], apart from `static_topo.rs` so that it reads as the code it ships.

use super::*;
use crate::resolve::{error_chain, MAX_YAML_DEPTH};

const TOPOLOGY: &str = r#"
zones:
  - {name: us-west-2a, region: us-west-2}
  - {name: us-west-2b, region: us-west-2}
nodes:
  - {name: node-a, zone: us-west-2a, ips: [192.168.10.1]}
  - {name: node-b, zone: us-west-2b, region: us-west-2-override, ips: [192.168.10.2], agent: false}
pods:
  - name: web-1
    namespace: shop
    node: node-a
    ips: [10.0.1.5, "fd00:1::5"]
    workload: web
    workload_kind: Deployment
  - {name: solo, namespace: shop, node: node-b, ips: [10.0.2.5]}
  - {name: cni, namespace: kube-system, node: node-b, ips: [192.168.10.20], host_network: true}
services:
  - {name: api, namespace: shop, ips: [10.96.0.10, "fd00:96::10"]}
service_cidrs: [10.96.0.0/12]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn topo() -> StaticResolver {
    StaticResolver::from_yaml(TOPOLOGY).unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

#[test]
fn pods_nodes_and_services_resolve() {
    let r = topo();
    let t = SystemTime::now();
    for addr in ["10.0.1.5", "fd00:1::5"] {
        let web = r.resolve(ip(addr), t);
        assert_eq!(web.kind, EndpointKind::Pod);
        assert_eq!((&*web.name, &*web.namespace), ("web-1", "shop"));
        assert_eq!(
            (&*web.workload, web.workload_kind),
            ("web", WorkloadKind::Deployment)
        );
        assert_eq!(
            (&*web.node, &*web.zone, &*web.region),
            ("node-a", "us-west-2a", "us-west-2")
        );
    }
    let solo = r.resolve(ip("10.0.2.5"), t);
    assert_eq!(
        (&*solo.workload, solo.workload_kind),
        ("solo", WorkloadKind::Pod)
    );
    assert_eq!(
        (&*solo.zone, &*solo.region),
        ("us-west-2b", "us-west-2-override")
    );
    let node = r.resolve(ip("192.168.10.1"), t);
    assert_eq!(
        (node.kind, &*node.name, &*node.zone),
        (EndpointKind::Node, "node-a", "us-west-2a")
    );
    let host = r.resolve(ip("192.168.10.20"), t);
    assert_eq!((host.kind, &*host.name), (EndpointKind::Node, "node-b"));
    let svc = r.resolve(ip("fd00:96::10"), t);
    assert_eq!(
        (svc.kind, &*svc.name, &*svc.namespace),
        (EndpointKind::Service, "api", "shop")
    );
    let unknown_svc = r.resolve(ip("10.96.3.3"), t);
    assert_eq!(
        (unknown_svc.kind, &*unknown_svc.name),
        (EndpointKind::Service, Endpoint::UNKNOWN)
    );
    assert_eq!(r.resolve(ip("8.8.8.8"), t).kind, EndpointKind::External);
    assert_eq!(
        r.service_cidrs(),
        vec!["10.96.0.0/12".parse().unwrap_or_else(|e| panic!("{e}"))]
    );
}

#[test]
fn agent_nodes_default_to_all() {
    let r = topo();
    assert!(r.is_monitored_node("node-a"));
    assert!(!r.is_monitored_node("node-b"), "agent: false");
    assert!(!r.is_monitored_node("node-z"), "not in the file");
    assert!(r.is_synced());
}

fn err_of(text: &str) -> String {
    match StaticResolver::from_yaml(text) {
        Ok(_) => panic!("accepted {text:?}"),
        Err(e) => error_chain(&e),
    }
}

#[test]
fn invalid_topologies_name_entry_and_field() {
    let e = err_of("nodes:\n  - {name: a, ips: [10.0.0.1]}\n");
    assert!(e.contains("nodes[0] (a): field `zone`"), "{e}");
    let e = err_of("nodes:\n  - {name: a, zone: z}\npods:\n  - {name: p, namespace: n, node: b, ips: [10.0.0.1]}\n");
    assert!(
        e.contains("pods[0] (p): field `node`: \"b\" is not defined"),
        "{e}"
    );
    let e = err_of("nodes:\n  - {name: a, zone: z, ips: [10.0.0.1]}\npods:\n  - {name: p, namespace: n, node: a, ips: [10.0.0.1]}\n");
    assert!(
        e.contains("pods[0] (p): field `ips[0]`: 10.0.0.1 is already claimed by nodes[0] (a)"),
        "{e}"
    );
    let e = err_of("pods:\n  - {name: p, namespace: n, node: a, ips: [10.0.0.x]}\nnodes: []\n");
    assert!(
        e.contains("pods[0] (p): field `node`") || e.contains("ips[0]"),
        "{e}"
    );
    let e = err_of("nodes:\n  - {name: a, zone: z, ip: [10.0.0.1]}\n");
    assert!(e.contains("unknown field `ip`"), "{e}");
    let e = err_of("service_cidrs: [10.96.0.1/12]\n");
    assert!(
        e.contains("service_cidrs[0]") && e.contains("host bits"),
        "{e}"
    );
    let e = err_of("nodes:\n  - {name: a, zone: z}\n  - {name: a, zone: y}\n");
    assert!(e.contains("nodes[1] (a): field `name`"), "{e}");
}

#[test]
fn services_list_their_endpoints_per_zone() {
    let r = StaticResolver::from_yaml(
            "nodes:\n  - {name: a, zone: za, ips: [192.168.0.1]}\n  - {name: b, zone: zb}\n\
             pods:\n  - {name: p1, namespace: n, node: a, ips: [10.0.1.1]}\n\
             \x20 - {name: p2, namespace: n, node: b, ips: [10.0.2.1, \"fd00::2\"]}\n\
             \x20 - {name: p3, namespace: n, node: b, ips: [10.0.2.2]}\n\
             services:\n  - {name: api, namespace: n, ips: [10.96.0.1], endpoints: [p1, p2, p3], traffic_distribution: PreferClose}\n\
             \x20 - {name: old, namespace: n, endpoints: [p3], hints: true}\n\
             \x20 - {name: none, namespace: n}\n",
        )
        .expect("valid topology");
    let snap = r.snapshot();
    let t = snap.service_topology();
    assert_eq!(t.len(), 3);
    let api = t.get(&ServiceRef::new("n", "api")).expect("api");
    assert_eq!(
        api.ready_by_zone
            .iter()
            .map(|(z, n)| (&**z, *n))
            .collect::<Vec<_>>(),
        [("za", 1), ("zb", 2)]
    );
    assert_eq!(api.traffic_distribution.as_deref(), Some("PreferClose"));
    assert!(t.get(&ServiceRef::new("n", "old")).expect("old").hints);
    assert!(!t
        .get(&ServiceRef::new("n", "none"))
        .expect("none")
        .routes_in_zone());
    let of = |a: &str| -> Vec<String> {
        t.services_of_endpoint(ip(a))
            .map(|s| s.service.to_string())
            .collect()
    };
    assert_eq!(of("fd00::2"), ["n/api"]);
    assert_eq!(of("10.0.2.2"), ["n/api", "n/old"]);
    assert!(of("10.96.0.1").is_empty(), "a ClusterIP is no endpoint");

    let e = err_of(
        "nodes:\n  - {name: a, zone: z}\npods:\n  - {name: p, namespace: other, node: a}\n\
             services:\n  - {name: s, namespace: n, endpoints: [p]}\n",
    );
    assert!(e.contains("services[0] (s): field `endpoints`"), "{e}");
}

#[test]
fn duplicate_zone_names_name_both_entries() {
    let e = err_of(
            "zones:\n  - {name: z1, region: r1}\n  - {name: z2, region: r1}\n  - {name: z1, region: r2}\n",
        );
    assert!(
        e.contains("zones[2] (z1): field `name`: z1 is already claimed by zones[0] (z1)"),
        "{e}"
    );
}

/// 200 KB (and more) of nesting, flow and block, is refused by the
/// linear pre-pass; serde_yaml alone took seconds to minutes on it.
#[test]
fn deep_nesting_is_refused_before_parsing() {
    let n = 100_000;
    let deep = [
        format!("pods: {}{}", "[".repeat(n), "]".repeat(n)),
        format!("nodes: {}{}", "{a: ".repeat(n / 2), "}".repeat(n / 2)),
        format!("{}{}", "[".repeat(n), "]".repeat(n)),
        (0..200).map(|i| format!("{}- \n", " ".repeat(i))).collect(),
        (0..200).map(|i| format!("{}a:\n", " ".repeat(i))).collect(),
    ];
    for text in &deep {
        match StaticResolver::from_yaml(text) {
            Err(ResolveError::TooDeep { max_depth, .. }) => {
                assert_eq!(max_depth, MAX_YAML_DEPTH);
            }
            Err(other) => panic!("refused, but not as too deep: {}", error_chain(&other)),
            Ok(_) => panic!("accepted {} bytes of nesting", text.len()),
        }
        let e = err_of(text);
        assert!(
            e.contains(
                "static topology file rejected before parsing: nested deeper than 32 levels"
            ),
            "{e}"
        );
    }
    // At the limit's edge a document is still parsed (and refused for
    // its shape by serde_yaml, with serde_yaml's message).
    let e = err_of(&format!("pods: {}{}", "[".repeat(20), "]".repeat(20)));
    assert!(e.contains("not a valid static topology file"), "{e}");
}

#[test]
fn tombstone_grace_that_overflows_time_never_expires() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("topology.yaml");
    let nodes = "nodes:\n  - {name: a, zone: z}\n";
    std::fs::write(
        &path,
        format!("{nodes}pods:\n  - {{name: p, namespace: n, node: a, ips: [10.0.0.1]}}\n"),
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    let r = StaticResolver::load(
        &path,
        StaticTopologyOptions {
            tombstone_grace: Duration::MAX,
            ..StaticTopologyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    crate::resolve::watched::testing::write(&path, nodes);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    // Before: `until + grace` panicked on overflow here.
    assert!(r.reload_at(now).is_ok());
    assert!(!r.expire_at(now + Duration::from_secs(3600 * 24 * 365)));
    assert_eq!(&*r.resolve(ip("10.0.0.1"), now).name, "p");
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("topology.yaml");
    std::fs::write(&path, TOPOLOGY).unwrap_or_else(|e| panic!("write: {e}"));
    let r = StaticResolver::load(&path, StaticTopologyOptions::default())
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert_eq!(&*r.resolve(ip("10.0.1.5"), SystemTime::now()).name, "web-1");
    assert_eq!(r.path(), Some(path.as_path()));
    assert!(matches!(
        StaticResolver::load(
            dir.path().join("missing.yaml"),
            StaticTopologyOptions::default()
        ),
        Err(ResolveError::Read { .. })
    ));
}

// ---- reloading ----

use metrics_util::debugging::DebuggingRecorder;

use crate::resolve::watched::testing::{counter, gauge, write};

const NODES: &str = "nodes:
  - {name: node-a, zone: zone-a, ips: [192.168.0.1]}
  - {name: node-b, zone: zone-b, ips: [192.168.0.2]}
";

const GRACE: Duration = Duration::from_secs(120);

/// Seconds after a fixed time, later than any real start-up in these
/// tests.
fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000 + secs)
}

fn with_pods(pods: &str) -> String {
    format!("{NODES}pods:\n{pods}")
}

/// A resolver loaded from `text` in a fresh directory (kept alive by the
/// returned guard).
fn loaded(text: &str) -> (tempfile::TempDir, PathBuf, StaticResolver) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("topology.yaml");
    write(&path, text);
    let r = StaticResolver::load(
        &path,
        StaticTopologyOptions {
            tombstone_grace: GRACE,
            ..StaticTopologyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    (dir, path, r)
}

/// Rewrites the file and reloads it as of `now`.
fn rewrite(r: &StaticResolver, path: &Path, text: &str, now: SystemTime) -> ReloadOutcome {
    write(path, text);
    r.reload_at(now)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

/// (name, node, zone) of what `addr` resolved to at `t`.
fn owner(r: &StaticResolver, addr: &str, t: SystemTime) -> (String, String, String) {
    let e = r.resolve(ip(addr), t);
    (e.name.to_string(), e.node.to_string(), e.zone.to_string())
}

fn who(name: &str, node: &str, zone: &str) -> (String, String, String) {
    (name.to_owned(), node.to_owned(), zone.to_owned())
}

/// Rewrites the file and reloads it as of `now`: the claims started and
/// ended, and the tombstones kept.
fn changed(r: &StaticResolver, path: &Path, text: &str, now: SystemTime) -> (usize, usize, usize) {
    match rewrite(r, path, text, now) {
        ReloadOutcome::TopologyLoaded {
            claims_started,
            claims_ended,
            tombstones,
            ..
        } => (claims_started, claims_ended, tombstones),
        other => panic!("not a topology load: {other:?}"),
    }
}

#[test]
fn reused_ip_on_another_zone_resolves_by_observation_time() {
    let before = with_pods("  - {name: old, namespace: shop, node: node-a, ips: [10.0.0.7]}\n");
    let after = with_pods("  - {name: new, namespace: shop, node: node-b, ips: [10.0.0.7]}\n");
    let (_dir, path, r) = loaded(&before);
    assert_eq!(changed(&r, &path, &after, at(100)), (1, 1, 1));
    let old = who("old", "node-a", "zone-a");
    let new = who("new", "node-b", "zone-b");
    assert_eq!(owner(&r, "10.0.0.7", SystemTime::UNIX_EPOCH), old);
    assert_eq!(owner(&r, "10.0.0.7", at(0)), old);
    assert_eq!(owner(&r, "10.0.0.7", at(99)), old);
    assert_eq!(owner(&r, "10.0.0.7", at(100)), new);
    assert_eq!(owner(&r, "10.0.0.7", at(100_000)), new);
    // After the grace the old pod is forgotten, whatever the time.
    assert!(!r.expire_at(at(219)));
    assert!(r.expire_at(at(220)));
    assert_eq!(owner(&r, "10.0.0.7", at(0)), new);
    assert_eq!(r.snapshot().ended_claim_count(), 0);
}

#[test]
fn deleted_pod_is_a_tombstone_until_the_grace_passes() {
    let stays = "  - {name: stays, namespace: shop, node: node-b, ips: [10.0.0.8]}\n";
    let (_dir, path, r) = loaded(&with_pods(&format!(
        "  - {{name: gone, namespace: shop, node: node-a, ips: [10.0.0.7]}}\n{stays}"
    )));
    assert!(r.has_pod("shop", "gone"));
    assert_eq!(changed(&r, &path, &with_pods(stays), at(100)), (0, 1, 1));
    assert!(!r.has_pod("shop", "gone"), "a tombstone is no live pod");
    assert!(r.has_pod("shop", "stays"));
    let gone = who("gone", "node-a", "zone-a");
    // Late reports, even stamped after the deletion, still resolve.
    assert_eq!(owner(&r, "10.0.0.7", at(50)), gone);
    assert_eq!(owner(&r, "10.0.0.7", at(200)), gone);
    assert!(!r.expire_at(at(100) + GRACE - Duration::from_secs(1)));
    assert_eq!(owner(&r, "10.0.0.7", at(200)), gone);
    assert!(r.expire_at(at(100) + GRACE));
    assert_eq!(
        r.resolve(ip("10.0.0.7"), at(50)).kind,
        EndpointKind::External
    );
    assert_eq!(owner(&r, "10.0.0.8", at(50)).0, "stays");
    assert!(!r.expire_at(at(10_000)), "nothing left to expire");

    // A reload also drops expired tombstones.
    assert_eq!(
        changed(&r, &path, &format!("{NODES}pods: []\n"), at(1_000)),
        (0, 1, 1)
    );
    assert_eq!(changed(&r, &path, NODES, at(1_000) + GRACE), (0, 0, 0));
    assert_eq!(
        r.resolve(ip("10.0.0.8"), at(1_000)).kind,
        EndpointKind::External
    );
}

#[test]
fn unchanged_pods_keep_their_claim() {
    let (_dir, path, r) = loaded(&with_pods(
            "  - {name: web, namespace: shop, node: node-a, ips: [10.0.0.8]}\n  - {name: p, namespace: shop, node: node-a, ips: [10.0.0.7]}\n",
        ));
    let web = "  - {name: web, namespace: shop, node: node-a, ips: [10.0.0.8]}\n";
    let q = "  - {name: q, namespace: shop, node: node-b, ips: [10.0.0.7]}\n";
    // web unchanged; p replaced by q at 100.
    assert_eq!(
        changed(&r, &path, &with_pods(&format!("{web}{q}")), at(100)),
        (1, 1, 1)
    );
    // Stamped long before the reload, web's traffic is still web's: its
    // claim still runs from the epoch.
    assert_eq!(owner(&r, "10.0.0.8", at(0)).0, "web");
    assert_eq!(owner(&r, "10.0.0.8", SystemTime::UNIX_EPOCH).0, "web");
    {
        let history = r.source.as_ref().map(|s| s.history());
        let since = history.as_ref().and_then(|h| h.open.get(&ip("10.0.0.8")));
        assert_eq!(since.map(|(_, s)| *s), Some(SystemTime::UNIX_EPOCH));
    }
    // Another change elsewhere at 200 leaves q's claim from 100 alone:
    // a report at 150 is q's, not the tombstone p's.
    assert_eq!(
        changed(
            &r,
            &path,
            &with_pods(&format!(
                "{web}{q}  - {{name: r, namespace: shop, node: node-a, ips: [10.0.0.9]}}\n"
            )),
            at(200),
        ),
        (1, 0, 1)
    );
    assert_eq!(owner(&r, "10.0.0.7", at(150)).0, "q");
    assert_eq!(owner(&r, "10.0.0.7", at(50)).0, "p");
    // Reordering the file and adding comments changes no claim.
    assert_eq!(
            changed(
            &r,
            &path,
            &format!(
                "# reordered\n{NODES}pods:\n  - {{name: r, namespace: shop, node: node-a, ips: [10.0.0.9]}}\n{q}{web}"
            ),
            at(300),
        ),
            // (p's tombstone, ended at 100, has expired by 300.)
            (0, 0, 0)
        );
}

#[test]
fn pod_moved_to_another_node_is_a_new_claim() {
    let (_dir, path, r) = loaded(&with_pods(
        "  - {name: web, namespace: shop, node: node-a, ips: [10.0.0.7, \"fd00::7\"]}\n",
    ));
    let moved =
        with_pods("  - {name: web, namespace: shop, node: node-b, ips: [10.0.0.7, \"fd00::7\"]}\n");
    // One claim per address.
    assert_eq!(changed(&r, &path, &moved, at(100)), (2, 2, 2));
    for addr in ["10.0.0.7", "fd00::7"] {
        assert_eq!(owner(&r, addr, at(99)), who("web", "node-a", "zone-a"));
        assert_eq!(owner(&r, addr, at(100)), who("web", "node-b", "zone-b"));
    }
    // So is a change of workload (any field of the endpoint).
    let deployment = with_pods(
            "  - {name: web, namespace: shop, node: node-b, ips: [10.0.0.7, \"fd00::7\"], workload: web, workload_kind: Deployment}\n",
        );
    assert_eq!(changed(&r, &path, &deployment, at(200)), (2, 2, 4));
    assert_eq!(
        r.resolve(ip("10.0.0.7"), at(150)).workload_kind,
        WorkloadKind::Pod
    );
    assert_eq!(
        r.resolve(ip("10.0.0.7"), at(250)).workload_kind,
        WorkloadKind::Deployment
    );
}

#[test]
fn bad_reload_keeps_the_previous_topology_and_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (_dir, path, r) = loaded(TOPOLOGY);
        assert_eq!(r.reload_at(at(1)).ok(), Some(ReloadOutcome::Unchanged));
        // The same content, written anew, is unchanged too.
        write(&path, TOPOLOGY);
        assert_eq!(r.reload_at(at(2)).ok(), Some(ReloadOutcome::Unchanged));
        for (bad, want) in [
                ("pods: [", "not a valid static topology file"),
                (
                    "nodes:\n  - {name: a, zone: z}\npods:\n  - {name: p, namespace: n, node: b, ips: [10.0.0.1]}\n",
                    "pods[0] (p): field `node`",
                ),
            ] {
                write(&path, bad);
                let err = match r.reload_at(at(3)) {
                    Ok(o) => panic!("{bad:?} accepted: {o:?}"),
                    Err(e) => error_chain(&e),
                };
                assert!(err.contains(want), "{err}");
                assert_eq!(&*r.resolve(ip("10.0.1.5"), at(3)).name, "web-1");
                assert!(r.is_monitored_node("node-a"));
                // The same bad file is not re-reported on every poll.
                assert_eq!(r.reload_at(at(4)).ok(), Some(ReloadOutcome::Unchanged));
            }
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("rm: {e}"));
        assert!(matches!(r.reload_at(at(5)), Err(ResolveError::Read { .. })));
        assert_eq!(&*r.resolve(ip("10.0.1.5"), at(5)).name, "web-1");

        let snap = snapshotter.snapshot().into_vec();
        assert_eq!(counter(&snap, REJECTED_COUNTER), 3);
        assert_eq!(counter(&snap, LOADS_COUNTER), 1);
    });
}

#[test]
fn loads_pods_and_tombstones_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (_dir, path, r) = loaded(TOPOLOGY);
        let snap = snapshotter.snapshot().into_vec();
        assert_eq!(counter(&snap, LOADS_COUNTER), 1);
        // web-1, solo and the hostNetwork cni pod.
        assert_eq!(gauge(&snap, PODS_GAUGE), 3.0);
        assert_eq!(gauge(&snap, TOMBSTONES_GAUGE), 0.0);

        // web-1 (two addresses) goes.
        let without_web = TOPOLOGY.replace(
                "  - name: web-1\n    namespace: shop\n    node: node-a\n    ips: [10.0.1.5, \"fd00:1::5\"]\n    workload: web\n    workload_kind: Deployment\n",
                "",
            );
        assert_ne!(without_web, TOPOLOGY);
        let outcome = rewrite(&r, &path, &without_web, at(100));
        assert_eq!(
            outcome,
            ReloadOutcome::TopologyLoaded {
                pods: 2,
                addresses: r.snapshot().address_count(),
                claims_started: 0,
                claims_ended: 2,
                tombstones: 2,
            }
        );
        // (A debugging snapshot takes counters as deltas, and resets
        // gauges.)
        let snap = snapshotter.snapshot().into_vec();
        assert_eq!(counter(&snap, LOADS_COUNTER), 1);
        assert_eq!(gauge(&snap, PODS_GAUGE), 2.0);
        assert_eq!(gauge(&snap, TOMBSTONES_GAUGE), 2.0);

        assert!(r.expire_at(at(100) + GRACE));
        let snap = snapshotter.snapshot().into_vec();
        assert_eq!(gauge(&snap, PODS_GAUGE), 2.0, "gauges set again");
        assert_eq!(gauge(&snap, TOMBSTONES_GAUGE), 0.0);
        assert_eq!(counter(&snap, LOADS_COUNTER), 0, "expiry is no load");
        assert_eq!(counter(&snap, REJECTED_COUNTER), 0);
    });
}

#[test]
fn inline_and_built_resolvers_do_not_reload() {
    let r = topo();
    assert_eq!(r.reload().ok(), Some(ReloadOutcome::Unchanged));
    assert!(!r.expire_at(at(0)));
    assert_eq!(r.path(), None);
}
