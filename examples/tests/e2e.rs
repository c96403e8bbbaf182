//! End-to-end: the simulated three-zone cluster with the real agents (one
//! per node namespace), the real aggregator and a real Prometheus, run
//! through `examples/demo.rs --verify`. Every `pod_network_traffic_bytes_total`
//! series (and every `pod_cross_zone_network_traffic_bytes_total` series,
//! where the simulation put the two ends in different zones) must equal
//! nftables' forward counters to the byte: counted once,
//! ClusterIP traffic attributed to the backend pod in both directions,
//! external traffic to the custom endpoint. Mid-run, one agent is killed
//! with SIGKILL and restarted, and at half the run replaced with SIGTERM by
//! an agent presenting another pinned layout (a rolling upgrade); its pairs
//! stay exact, because its maps and links are pinned and what it drained
//! but had not delivered is journaled (in legacy-TC mode its filters are
//! replaced, not duplicated). `e2e_failpoints_every_step_exact` kills that
//! agent at each step of its drain cycle instead. The
//! aggregator is killed after its last scrape and started again (agents
//! resend; the pre-restart scrape plus the new counters equal the
//! reference). At two fifths of the run the `storage` pod is
//! deleted and re-created under a new name, with the same IP, on a node in
//! another zone: the bytes before the move belong to the old pod and its
//! zone, those after to the new pod and its zone, each equal to the
//! reference. Throughout (`--hostile`), two pods send IPv4 frames whose
//! total length is below their header length, and a host on the underlay
//! reports in node-1's name: neither may change a count. One node delivers
//! into its pods with `bpf_redirect_peer` from its uplink and from its pod
//! links' ingress, as Cilium's BPF host routing does (the receiver's
//! egress hook never runs there): node-3 in TCX and legacy-TC mode, and
//! node-5, the `cache` Service's backend, in a third legacy-TC run. In TCX mode Prometheus also
//! scrapes the agents, and every query of the chart's Grafana dashboard
//! (charts/netscope/dashboards/netscope.json) must return data, its zone
//! matrix and cost panels equal to what the demo computed. The Service
//! series (`netscope_service_network_traffic_bytes_total`) equal the
//! reference attributed to the Service whose endpoints hold the pair's
//! destination or source (the simulation knows which ClusterIP each client
//! called), and the avoidable-bytes estimate equals the demo's computation
//! from the reference.
//! Needs root; removes everything it makes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The two runs share CPU-heavy traffic; run them one after the other.
static SERIAL: Mutex<()> = Mutex::new(());

fn target_dir() -> PathBuf {
    // target/debug/deps/e2e-<hash> -> target/debug
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The chart's Grafana dashboard.
fn dashboard() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/netscope/dashboards/netscope.json")
}

/// The demo binary in `dir`, after checking that it, both netscope
/// binaries and `extra` (paths under `dir`) were built.
fn demo_and_binaries(dir: &Path, extra: &[&str]) -> PathBuf {
    let demo = dir.join("examples/demo");
    let bins = [
        demo.clone(),
        dir.join("netscope-agent"),
        dir.join("netscope-aggregator"),
    ];
    for bin in bins.into_iter().chain(extra.iter().map(|e| dir.join(e))) {
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build --workspace --all-targets` first (make test does)",
            bin.display()
        );
    }
    demo
}

/// No network namespace whose name contains `prefix` is left.
fn assert_no_namespaces(prefix: &str) {
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let left = String::from_utf8_lossy(&ns.stdout);
    assert!(!left.contains(prefix), "namespaces left behind: {left}");
}

fn run_demo(
    mode: &str,
    prefix: &str,
    metrics_port: u16,
    prom_port: u16,
    check_dashboard: bool,
    redirect_node: u8,
) {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir();
    let demo = demo_and_binaries(&dir, &["examples/hostile_report"]);
    let out = Command::new(&demo)
        .args([
            "--duration",
            "24s",
            "--verify",
            "--restarts",
            "--upgrade",
            "--move-pod",
            "--hostile",
            "--exit",
            "--attach-mode",
            mode,
            "--prefix",
            prefix,
        ])
        .args(["--redirect-node", &redirect_node.to_string()])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--prometheus", &format!("127.0.0.1:{prom_port}")])
        .args(["--bin-dir", &dir.to_string_lossy()])
        .args(if check_dashboard {
            vec![
                "--check-dashboard".to_string(),
                dashboard().display().to_string(),
            ]
        } else {
            vec![]
        })
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "demo --verify failed in {mode} mode:\n{stdout}\n{stderr}"
    );
    // The run really checked something.
    assert!(
        stdout.contains("all equal to the byte"),
        "no verification summary:\n{stdout}"
    );
    let pairs = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("ok ") && l.contains("nftables"))
        .count();
    assert!(pairs >= 12, "only {pairs} pod pairs verified:\n{stdout}");
    assert!(
        stdout.contains("cache-") && stdout.contains("-> web-"),
        "ClusterIP backend traffic missing:\n{stdout}"
    );
    // The cross-zone series were checked too, and there were some.
    let cross = stdout
        .lines()
        .find(|l| l.starts_with("verify: pod_cross_zone_network_traffic_bytes_total: "))
        .unwrap_or_else(|| panic!("cross-zone series not verified:\n{stdout}"));
    assert!(
        !cross.contains(": 0 cross-zone pairs") && !cross.contains("MISMATCH"),
        "{cross}"
    );
    // The Service series and the in-zone routing estimate equal what the
    // demo computed from the nftables reference, and the ranking found
    // something to save (catalog: zone b's client went to zone c).
    let services = stdout
        .lines()
        .find(|l| l.starts_with("verify: Service series and estimate: "))
        .unwrap_or_else(|| panic!("Service series not verified:\n{stdout}"));
    assert!(services.ends_with("all equal to the byte"), "{services}");
    assert!(
        stdout
            .contains("== Services by avoidable cross-zone cost (ESTIMATE, not a measurement) ==")
            && stdout.contains("monthly saving if these Services routed in-zone (estimate): $"),
        "no Service ranking:\n{stdout}"
    );
    let catalog = stdout
        .lines()
        .find(|l| l.contains(" catalog: cross-zone "))
        .unwrap_or_else(|| panic!("no catalog estimate:\n{stdout}"));
    assert!(
        catalog.trim_start().starts_with("ok") && !catalog.contains("avoidable estimate 0 B"),
        "{catalog}"
    );
    // The disruptions really happened.
    assert!(
        stdout.contains("killed (-9); starting it again")
            && stdout.contains("aggregator killed (-9) after its last scrape"),
        "the agent and aggregator restarts did not run:\n{stdout}"
    );
    assert!(
        stdout.contains("replaced by a build of pinned layout v")
            && stdout.contains("drained and removed by the v")
            && stdout.contains("agent: true;"),
        "the rolling upgrade did not run or did not drain the old layout:\n{stdout}"
    );
    if mode == "tcx" {
        assert!(
            !stdout.contains("pinned TCX links it adopted: 0"),
            "the upgraded agent did not take the pinned TCX links over:\n{stdout}"
        );
    }
    if mode == "tc" {
        assert!(
            stdout.contains("1 netscope filter(s) after the restart"),
            "the restarted agent's filters were not checked:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("verify: moved pod") && stdout.contains("ok: zones right"),
        "the pod move was not verified:\n{stdout}"
    );
    assert!(
        stdout.contains("rds-primary"),
        "external endpoint traffic missing:\n{stdout}"
    );
    if check_dashboard {
        assert!(
            stdout.contains("every one with data: true")
                && stdout.contains("cells equal what the demo computed (zone_matrix)")
                && stdout.contains("cells equal what the demo computed (cost_by_side)")
                && !stdout.contains("MISMATCH")
                && !stdout.contains("NO DATA"),
            "the dashboard check failed:\n{stdout}"
        );
    }
    // The hostile inputs really ran: malformed frames went out, and the
    // impersonating report was refused and counted (verify above proves
    // that neither changed a count).
    let frames = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("malformed IPv4 (hostile)"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(frames > 0, "no malformed frame was sent:\n{stdout}");
    assert!(
        stdout.contains("reported for node-1: status: PermissionDenied")
            && stdout.contains("not_the_node\"} 0 -> 1"),
        "the impersonating report was not refused and counted:\n{stdout}"
    );
    // The redirect node delivered into its pods the way Cilium's BPF host
    // routing does, and its pairs (checked above, with the pod-side
    // reference) were exact.
    let redirected = stdout
        .lines()
        .find(|l| l.starts_with(&format!("verify: node-{redirect_node}: ")))
        .unwrap_or_else(|| panic!("no redirect summary for node-{redirect_node}:\n{stdout}"));
    assert!(
        redirected.ends_with("delivered with bpf_redirect_peer, 0 refused")
            && !redirected.contains(": 0 packets"),
        "{redirected}"
    );
    // Nothing left behind.
    assert_no_namespaces(prefix);
}

// Node-3 (the two `api` pods, one dual-stack) redirects: pairs into it
// from other nodes, IPv6, and between its own two pods.
#[test]
fn e2e_simulated_cluster_tcx() {
    run_demo("tcx", "netscope-test-e2ex", 19464, 19090, true, 3);
}

#[test]
fn e2e_simulated_cluster_legacy_tc() {
    run_demo("tc", "netscope-test-e2et", 19465, 19091, false, 3);
}

// Node-5 redirects: it holds the backend of the `cache` ClusterIP.
#[test]
fn e2e_simulated_cluster_legacy_tc_service_backend_redirected() {
    run_demo("tc", "netscope-test-e2eb", 19466, 19092, false, 5);
}

/// Issue 18: three aggregator replicas share the six agents (through an
/// endpoints file the agents re-read, as a headless Service's DNS); at a
/// third of the run the replica serving the most agents is held, scraped
/// and killed with SIGKILL, at half of the run a fourth is added. The sum
/// over replicas of every pod series (the killed one's last scrape
/// included) must equal nftables to the byte: no report counted twice, none
/// lost except what the killed replica counted after its last scrape,
/// which the hold makes zero.
#[test]
fn e2e_three_aggregator_replicas_tcx() {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir();
    let demo = demo_and_binaries(&dir, &[]);
    let prefix = "netscope-test-e2er";
    let out = Command::new(&demo)
        .args([
            "--duration",
            "24s",
            "--verify",
            "--exit",
            "--attach-mode",
            "tcx",
            "--aggregators",
            "3",
            "--prefix",
            prefix,
            "--metrics-addr",
            "127.0.0.1:19467",
        ])
        .args(["--bin-dir", &dir.to_string_lossy()])
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "demo --aggregators 3 --verify failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("verify: ") && stdout.contains("pod pairs, all equal to the byte"),
        "no verification summary:\n{stdout}"
    );
    assert!(
        stdout.contains("killed (-9) right after its last scrape")
            && stdout.contains(") added, the killed one unlisted"),
        "the replica kill and scale-up did not run:\n{stdout}"
    );
    // Every replica, the killed and the added one included, counted
    // something: the agents really moved.
    let counted: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("replica ") && l.contains("counted "))
        .collect();
    assert_eq!(counted.len(), 4, "four replicas expected:\n{stdout}");
    for l in &counted {
        assert!(
            !l.contains("counted 0.0 B"),
            "a replica counted nothing: {l}"
        );
    }
    // The agents moved for both reasons: off the killed replica (gone) and
    // to the added one (set_changed).
    let moves = stdout
        .lines()
        .find(|l| l.contains("netscope_agent_replica_switches_total: "))
        .unwrap_or_else(|| panic!("no agent switch counts:\n{stdout}"));
    assert!(
        !moves.contains("gone 0,") && !moves.ends_with("set_changed 0"),
        "agents did not move off the killed replica and onto the added one: {moves}"
    );
    assert_no_namespaces(prefix);
}

/// The restarted agent SIGKILLs itself at each step of its drain cycle
/// (test-only NETSCOPE_FAILPOINT, on its second pass there), is started
/// again, and every pair equals nftables to the byte.
#[test]
fn e2e_failpoints_every_step_exact() {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir();
    let demo = demo_and_binaries(&dir, &[]);
    for (i, step) in [
        "after-stage",
        "after-journal",
        "after-commit",
        "after-send",
        "after-ack",
    ]
    .iter()
    .enumerate()
    {
        let prefix = format!("netscope-test-e2ef{i}");
        let out = Command::new(&demo)
            .args(["--duration", "12s", "--verify", "--restarts", "--exit"])
            .args(["--failpoint", &format!("{step}:2")])
            .args(["--attach-mode", "tcx", "--prefix", &prefix])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", 19470 + i)])
            .args(["--bin-dir", &dir.to_string_lossy()])
            .output()
            .expect("running the demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "demo --failpoint {step} failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("killed itself at failpoint {step}:2")),
            "the failpoint {step} did not fire:\n{stdout}"
        );
        assert!(
            stdout.contains("all equal to the byte") && !stdout.contains("MISMATCH"),
            "not exact after the failpoint {step}:\n{stdout}"
        );
        let pairs = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("ok ") && l.contains("nftables"))
            .count();
        assert!(
            pairs >= 12,
            "only {pairs} pod pairs verified after {step}:\n{stdout}"
        );
    }
}
