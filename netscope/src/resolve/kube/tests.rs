//! Unit tests of the index rules: watcher events in (objects shaped like the
//! API's JSON), snapshots out, time passed in.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::watcher::Event;
use serde_json::{json, Value};

use super::state::{KubeIndex, StateConfig};
use super::workload::parse_selector;
use crate::endpoint::{EndpointKind, WorkloadKind};
use crate::resolve::{ClusterSnapshot, IpPrefix};

const T0: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn rfc3339(secs: u64) -> String {
    let ts = k8s_openapi::jiff::Timestamp::from_second((T0 + secs) as i64)
        .unwrap_or_else(|e| panic!("timestamp: {e}"));
    ts.to_string()
}

fn obj<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("bad test object: {e}"))
}

struct PodSpec<'a> {
    name: &'a str,
    ns: &'a str,
    node: &'a str,
    ips: &'a [&'a str],
    phase: &'a str,
    start: u64,
    owner: Option<(&'a str, &'a str)>,
    labels: Value,
    ready: bool,
    host_network: bool,
}

fn base<'a>(name: &'a str, node: &'a str, ips: &'a [&'a str], start: u64) -> PodSpec<'a> {
    PodSpec {
        name,
        ns: "shop",
        node,
        ips,
        phase: "Running",
        start,
        owner: None,
        labels: json!({}),
        ready: true,
        host_network: false,
    }
}

fn pod(p: &PodSpec<'_>) -> Pod {
    let owners: Vec<Value> = p
        .owner
        .iter()
        .map(|(kind, name)| {
            json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true, "blockOwnerDeletion": true})
        })
        .collect();
    obj(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.ns,
            "uid": format!("uid-{}-{}", p.name, p.start),
            "resourceVersion": "1",
            "creationTimestamp": rfc3339(p.start),
            "labels": p.labels,
            "ownerReferences": owners,
        },
        "spec": {"nodeName": p.node, "hostNetwork": p.host_network, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {
            "phase": p.phase,
            "startTime": rfc3339(p.start),
            "podIP": p.ips.first().copied().unwrap_or(""),
            "podIPs": p.ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}],
        },
    }))
}

fn node(name: &str, zone: &str, region: &str, ips: &[&str], beta_labels: bool) -> Node {
    let labels = if beta_labels {
        json!({"failure-domain.beta.kubernetes.io/zone": zone, "failure-domain.beta.kubernetes.io/region": region})
    } else {
        json!({"topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": region, "kubernetes.io/hostname": name})
    };
    let mut addresses: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": name}));
    addresses.push(json!({"type": "ExternalIP", "address": "203.0.113.77"}));
    obj(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1", "labels": labels},
        "status": {"addresses": addresses},
    }))
}

fn service(name: &str, ips: &[&str]) -> Service {
    obj(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-svc-{name}"), "resourceVersion": "1"},
        "spec": {"clusterIP": ips.first().copied().unwrap_or("None"), "clusterIPs": ips, "ports": [{"port": 80}]},
    }))
}

fn service_cidr(name: &str, cidrs: &[&str]) -> ServiceCIDR {
    obj(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1"},
        "spec": {"cidrs": cidrs},
    }))
}

fn state(grace_secs: u64) -> KubeIndex {
    state_with(grace_secs, 0)
}

fn state_with(grace_secs: u64, absence_secs: u64) -> KubeIndex {
    KubeIndex::with_config(
        StateConfig {
            agent_selector: parse_selector("app.kubernetes.io/name=netscope-agent")
                .unwrap_or_else(|e| panic!("{e}")),
            tombstone_grace: Duration::from_secs(grace_secs),
            agent_absence_grace: Duration::from_secs(absence_secs),
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap_or_else(|e| panic!("{e}"))],
        },
        true,
    )
}

/// Runs a complete initial list for every kind with the given objects.
fn initial(
    s: &mut KubeIndex,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    services: Vec<Service>,
    now: SystemTime,
) {
    s.apply_node(Event::Init, now);
    for n in nodes {
        s.apply_node(Event::InitApply(n), now);
    }
    s.apply_node(Event::InitDone, now);
    s.apply_pod(Event::Init, now);
    for p in pods {
        s.apply_pod(Event::InitApply(p), now);
    }
    s.apply_pod(Event::InitDone, now);
    s.apply_service(Event::Init, now);
    for v in services {
        s.apply_service(Event::InitApply(v), now);
    }
    s.apply_service(Event::InitDone, now);
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn who(snap: &ClusterSnapshot, addr: &str, t: SystemTime) -> (EndpointKind, String, String) {
    let e = snap.resolve(ip(addr), t);
    (e.kind, e.name.to_string(), e.zone.to_string())
}

#[test]
fn pods_resolve_in_both_families_with_node_zone_and_workload() {
    let mut s = state(120);
    let mut web = base(
        "web-7d9c8b6f5-x2x1z",
        "node-a",
        &["10.0.1.5", "fd00:1::5"],
        0,
    );
    web.owner = Some(("ReplicaSet", "web-7d9c8b6f5"));
    web.labels = json!({"app": "web", "pod-template-hash": "7d9c8b6f5"});
    initial(
        &mut s,
        vec![pod(&web)],
        vec![node(
            "node-a",
            "us-west-2a",
            "us-west-2",
            &["192.168.0.1"],
            false,
        )],
        vec![],
        at(10),
    );
    let (snap, changed) = s.snapshot(at(10));
    assert!(changed);
    for addr in ["10.0.1.5", "fd00:1::5", "::ffff:10.0.1.5"] {
        let e = snap.resolve(ip(addr), at(20));
        assert_eq!(e.kind, EndpointKind::Pod, "{addr}");
        assert_eq!(&*e.name, "web-7d9c8b6f5-x2x1z");
        assert_eq!(&*e.namespace, "shop");
        assert_eq!(
            (&*e.workload, e.workload_kind),
            ("web", WorkloadKind::Deployment)
        );
        assert_eq!(
            (&*e.node, &*e.zone, &*e.region),
            ("node-a", "us-west-2a", "us-west-2")
        );
    }
    assert_eq!(
        who(&snap, "192.168.0.1", at(20)),
        (EndpointKind::Node, "node-a".into(), "us-west-2a".into())
    );
    // Only InternalIPs are the node's.
    assert_eq!(who(&snap, "203.0.113.77", at(20)).0, EndpointKind::External);
}

#[test]
fn zone_falls_back_to_the_beta_label_and_pods_follow_a_late_or_relabelled_node() {
    let mut s = state(120);
    // The pod arrives before its node: no zone yet.
    s.apply_pod(
        Event::Apply(pod(&base("p", "node-b", &["10.0.2.5"], 0))),
        at(1),
    );
    let (snap, _) = s.snapshot(at(1));
    assert_eq!(who(&snap, "10.0.2.5", at(1)).2, "");
    s.apply_node(
        Event::Apply(node("node-b", "eu-west-1b", "eu-west-1", &[], true)),
        at(2),
    );
    let (snap, changed) = s.snapshot(at(2));
    assert!(changed, "pod endpoints changed with their node");
    let e = snap.resolve(ip("10.0.2.5"), at(2));
    assert_eq!((&*e.zone, &*e.region), ("eu-west-1b", "eu-west-1"));
    // Relabelled to another zone.
    s.apply_node(
        Event::Apply(node("node-b", "eu-west-1c", "eu-west-1", &[], false)),
        at(3),
    );
    let (snap, _) = s.snapshot(at(3));
    assert_eq!(who(&snap, "10.0.2.5", at(3)).2, "eu-west-1c");
}

#[test]
fn only_pending_and_running_pods_own_ips_and_finished_ones_expire_after_grace() {
    let mut s = state(120);
    let mut job = base("report-29371440-abcde", "node-a", &["10.0.3.3"], 0);
    job.owner = Some(("Job", "report-29371440"));
    s.apply_pod(Event::Apply(pod(&job)), at(5));
    let (snap, _) = s.snapshot(at(5));
    let e = snap.resolve(ip("10.0.3.3"), at(5));
    assert_eq!(
        (&*e.workload, e.workload_kind),
        ("report", WorkloadKind::CronJob)
    );

    // It finishes at t=100: still resolves for the grace period, then not.
    job.phase = "Succeeded";
    s.apply_pod(Event::Apply(pod(&job)), at(100));
    let (snap, _) = s.snapshot(at(150));
    assert_eq!(who(&snap, "10.0.3.3", at(90)).1, "report-29371440-abcde");
    assert_eq!(s.next_expiry(at(150)), Some(at(220)));
    let (snap, _) = s.snapshot(at(221));
    assert_eq!(who(&snap, "10.0.3.3", at(90)).0, EndpointKind::External);
    // Nothing left to expire: the driver must not keep republishing.
    assert_eq!(s.next_expiry(at(221)), None);

    // A Pending pod with an IP owns it.
    let mut pending = base("starting", "node-a", &["10.0.3.4"], 200);
    pending.phase = "Pending";
    pending.ready = false;
    s.apply_pod(Event::Apply(pod(&pending)), at(201));
    let (snap, _) = s.snapshot(at(201));
    assert_eq!(who(&snap, "10.0.3.4", at(201)).1, "starting");
}

#[test]
fn deleted_pods_are_tombstones_for_the_grace_period() {
    let mut s = state(120);
    let p = pod(&base("gone", "node-a", &["10.0.4.4"], 0));
    s.apply_pod(Event::Apply(p.clone()), at(1));
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    assert!(s.snapshot(at(2)).0.has_pod(&ns, "gone"));
    s.apply_pod(Event::Delete(p), at(50));
    let (snap, _) = s.snapshot(at(60));
    assert!(!snap.has_pod(&ns, "gone"), "a tombstone is no live pod");
    assert_eq!(who(&snap, "10.0.4.4", at(40)).1, "gone");
    assert_eq!(
        who(&snap, "10.0.4.4", at(55)).1,
        "gone",
        "a late report after deletion"
    );
    assert_eq!(s.pod_counts(), (0, 1));
    let (snap, changed) = s.snapshot(at(50 + 120));
    assert!(changed, "expiry changes the pod mapping");
    assert_eq!(who(&snap, "10.0.4.4", at(40)).0, EndpointKind::External);
    assert_eq!(s.pod_counts(), (0, 0));
}

#[test]
fn a_reused_ip_resolves_by_observation_time() {
    let mut s = state(120);
    let old = pod(&base("old", "node-a", &["10.0.5.5"], 0));
    s.apply_pod(Event::Apply(old.clone()), at(1));
    s.apply_pod(Event::Delete(old), at(100));
    s.apply_pod(
        Event::Apply(pod(&base("new", "node-a", &["10.0.5.5"], 105))),
        at(106),
    );
    let (snap, _) = s.snapshot(at(110));
    assert_eq!(who(&snap, "10.0.5.5", at(50)).1, "old");
    assert_eq!(who(&snap, "10.0.5.5", at(102)).1, "old");
    assert_eq!(who(&snap, "10.0.5.5", at(105)).1, "new");
    assert_eq!(who(&snap, "10.0.5.5", at(500)).1, "new");
}

#[test]
fn host_network_pods_resolve_to_their_node() {
    let mut s = state(120);
    let mut agent = base("netscope-agent-abcde", "node-a", &["192.168.0.1"], 0);
    agent.host_network = true;
    agent.owner = Some(("DaemonSet", "netscope-agent"));
    let mut cni = base("cni-xyz", "node-c", &["192.168.0.3"], 0);
    cni.host_network = true;
    initial(
        &mut s,
        vec![pod(&agent), pod(&cni)],
        vec![node("node-a", "za", "r", &["192.168.0.1"], false)],
        vec![],
        at(1),
    );
    let (snap, _) = s.snapshot(at(1));
    assert_eq!(
        who(&snap, "192.168.0.1", at(1)),
        (EndpointKind::Node, "node-a".into(), "za".into())
    );
    // Its node object is unknown: still the node, by name.
    assert_eq!(
        who(&snap, "192.168.0.3", at(1)),
        (EndpointKind::Node, "node-c".into(), "".into())
    );
}

#[test]
fn services_resolve_in_both_families_and_headless_ones_are_skipped() {
    let mut s = state(120);
    initial(
        &mut s,
        vec![],
        vec![],
        vec![
            service("api", &["10.96.0.10", "fd00:96::10"]),
            service("headless", &[]),
        ],
        at(1),
    );
    let (snap, _) = s.snapshot(at(1));
    for addr in ["10.96.0.10", "fd00:96::10"] {
        let e = snap.resolve(ip(addr), at(1));
        assert_eq!(
            (e.kind, &*e.name, &*e.namespace),
            (EndpointKind::Service, "api", "shop")
        );
        assert_eq!(e.workload_kind, WorkloadKind::Service);
    }
    // Configured CIDR: unknown ClusterIPs are still services.
    assert_eq!(who(&snap, "10.96.7.7", at(1)).1, "unknown");
    s.apply_service(
        Event::Delete(service("api", &["10.96.0.10", "fd00:96::10"])),
        at(2),
    );
    let (snap, _) = s.snapshot(at(2));
    assert_eq!(who(&snap, "fd00:96::10", at(2)).0, EndpointKind::External);
}

#[test]
fn service_cidrs_from_the_api_replace_configured_ones() {
    let mut s = state(120);
    let (snap, _) = s.snapshot(at(0));
    assert_eq!(
        snap.service_cidrs(),
        &["10.96.0.0/12"
            .parse::<IpPrefix>()
            .unwrap_or_else(|e| panic!("{e}"))]
    );
    s.apply_service_cidr(Event::Init, at(1));
    s.apply_service_cidr(
        Event::InitApply(service_cidr(
            "kubernetes",
            &["172.20.0.0/16", "fd00:20::/108"],
        )),
        at(1),
    );
    s.apply_service_cidr(Event::InitDone, at(1));
    let (snap, _) = s.snapshot(at(1));
    let got: Vec<String> = snap
        .service_cidrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, vec!["172.20.0.0/16", "fd00:20::/108"]);
    assert_eq!(who(&snap, "172.20.9.9", at(1)).0, EndpointKind::Service);
    assert_eq!(who(&snap, "10.96.0.1", at(1)).0, EndpointKind::External);
}

#[test]
fn monitored_nodes_need_a_ready_running_agent_pod() {
    let mut s = state(120);
    let agent_labels = json!({"app.kubernetes.io/name": "netscope-agent"});
    let mut a = base("agent-a", "node-a", &["10.0.6.1"], 0);
    a.labels = agent_labels.clone();
    let mut b = base("agent-b", "node-b", &["10.0.6.2"], 0);
    b.labels = agent_labels.clone();
    b.ready = false;
    let mut c = base("agent-c", "node-c", &["10.0.6.3"], 0);
    c.labels = agent_labels;
    c.phase = "Pending";
    let d = base("web", "node-d", &["10.0.6.4"], 0);
    initial(
        &mut s,
        vec![pod(&a), pod(&b), pod(&c), pod(&d)],
        vec![],
        vec![],
        at(1),
    );
    let (snap, _) = s.snapshot(at(1));
    assert!(snap.is_monitored_node("node-a"));
    assert!(!snap.is_monitored_node("node-b"), "not Ready");
    assert!(!snap.is_monitored_node("node-c"), "not Running");
    assert!(!snap.is_monitored_node("node-d"), "not an agent");
    // The agent on node-b turns Ready; the one on node-a is deleted.
    b.ready = true;
    s.apply_pod(Event::Apply(pod(&b)), at(2));
    s.apply_pod(Event::Delete(pod(&a)), at(2));
    let (snap, _) = s.snapshot(at(2));
    assert!(snap.is_monitored_node("node-b"));
    assert!(!snap.is_monitored_node("node-a"));
}

#[test]
fn a_node_stays_monitored_while_its_agent_restarts() {
    let mut s = state_with(120, 300);
    let agent_labels = json!({"app.kubernetes.io/name": "netscope-agent"});
    let mut old = base("agent-old", "node-a", &["10.0.6.1"], 0);
    old.labels = agent_labels.clone();
    let mut other = base("agent-b", "node-b", &["10.0.6.2"], 0);
    other.labels = agent_labels.clone();
    initial(&mut s, vec![pod(&old), pod(&other)], vec![], vec![], at(1));
    assert!(s.snapshot(at(1)).0.is_monitored_node("node-a"));
    // A rolling upgrade: the old pod stops being Ready, then is deleted;
    // the new one is Pending, then Running but not Ready yet.
    old.ready = false;
    s.apply_pod(Event::Apply(pod(&old)), at(10));
    assert!(
        s.snapshot(at(10)).0.is_monitored_node("node-a"),
        "not Ready"
    );
    s.apply_pod(Event::Delete(pod(&old)), at(40));
    let mut new = base("agent-new", "node-a", &["10.0.6.1"], 0);
    new.labels = agent_labels.clone();
    new.phase = "Pending";
    s.apply_pod(Event::Apply(pod(&new)), at(45));
    assert!(
        s.snapshot(at(300)).0.is_monitored_node("node-a"),
        "within the grace"
    );
    new.phase = "Running";
    s.apply_pod(Event::Apply(pod(&new)), at(305));
    let (snap, _) = s.snapshot(at(400));
    assert!(snap.is_monitored_node("node-a"), "the new agent is Ready");
    // node-b's agent goes away for good: monitored for the grace, then not.
    s.apply_pod(Event::Delete(pod(&other)), at(500));
    assert!(s.snapshot(at(799)).0.is_monitored_node("node-b"));
    assert!(s.next_expiry(at(799)).is_some_and(|t| t <= at(800)));
    assert!(
        !s.snapshot(at(800)).0.is_monitored_node("node-b"),
        "grace over"
    );
    assert!(s.snapshot(at(800)).0.is_monitored_node("node-a"));
}

#[test]
fn a_relist_turns_missing_pods_into_tombstones_and_syncs() {
    let mut s = state(120);
    assert!(!s.is_synced());
    initial(
        &mut s,
        vec![
            pod(&base("stay", "n", &["10.0.7.1"], 0)),
            pod(&base("vanish", "n", &["10.0.7.2"], 0)),
        ],
        vec![],
        vec![],
        at(1),
    );
    assert!(!s.is_synced(), "ServiceCIDRs still awaited");
    s.service_cidr_api_absent();
    assert!(s.is_synced());
    // A relist (after 410 Gone) that no longer contains "vanish".
    s.apply_pod(Event::Init, at(30));
    s.apply_pod(
        Event::InitApply(pod(&base("stay", "n", &["10.0.7.1"], 0))),
        at(30),
    );
    s.apply_pod(Event::InitDone, at(30));
    let (snap, _) = s.snapshot(at(31));
    assert_eq!(s.pod_counts(), (1, 1));
    assert_eq!(who(&snap, "10.0.7.2", at(20)).1, "vanish");
    assert_eq!(who(&snap, "10.0.7.1", at(31)).1, "stay");
}

#[test]
fn unchanged_updates_do_not_dirty_the_index() {
    let mut s = state(120);
    let p = pod(&base("steady", "n", &["10.0.8.1"], 0));
    s.apply_pod(Event::Apply(p.clone()), at(1));
    let _ = s.snapshot(at(1));
    assert!(!s.is_dirty());
    s.apply_pod(Event::Apply(p), at(2));
    assert!(!s.is_dirty(), "a status heartbeat with the same facts");
}

/// A tombstone grace so long that `end + grace` overflows `SystemTime`
/// (an unchecked addition panicked the driver): the claim never expires.
#[test]
fn grace_that_overflows_time_never_expires() {
    let mut s = state(u64::MAX);
    let mut job = base("report-1-abcde", "node-a", &["10.0.3.3"], 0);
    job.owner = Some(("Job", "report-1"));
    s.apply_pod(Event::Apply(pod(&job)), at(5));
    job.phase = "Succeeded";
    s.apply_pod(Event::Apply(pod(&job)), at(100));
    s.apply_pod(Event::Delete(pod(&job)), at(110));
    for t in [at(150), at(100_000_000)] {
        let (snap, _) = s.snapshot(t);
        assert_eq!(who(&snap, "10.0.3.3", at(90)).1, "report-1-abcde");
        assert_eq!(s.next_expiry(t), None, "nothing expires within time");
    }
}
