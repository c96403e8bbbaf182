//! `promtool check metrics` on the real aggregator's /metrics: every
//! self-metric has `# HELP` and `# TYPE` (netscope::metrics), nothing else
//! to complain about. A metric added without a line in the registry fails
//! here with promtool's "no help text" naming it.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{free_port, promtool_findings, wait_http, Killed};

const BIN: &str = env!("CARGO_BIN_EXE_netscope-aggregator");
const PROMTOOL: &str = "/usr/bin/promtool";

#[test]
fn metrics_pass_promtool() {
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: run `make deps`"
    );
    let dir = std::env::temp_dir().join(format!("netscope-agg-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let topo = dir.join("topology.yaml");
    std::fs::write(&topo, "nodes:\n  - {name: node-a, zone: zone-1}\n").expect("write topology");
    let addr = free_port();
    let child = Command::new(BIN)
        .args(["--listen-addr", &addr.to_string(), "--topology"])
        .arg(&topo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the aggregator");
    let mut child = Killed(child);
    let response = wait_http(
        &mut child,
        addr,
        "/metrics",
        Duration::from_secs(20),
        |_| true,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    assert!(
        body.contains("# HELP netscope_topology_loads_total "),
        "no help text:\n{body}"
    );

    let (status, findings) = promtool_findings(PROMTOOL, body);
    let unexpected: Vec<&str> = findings.lines().collect();
    assert!(
        unexpected.is_empty() && status.success(),
        "promtool check metrics on the aggregator's /metrics:\n{}\n(a metric without HELP: add it to netscope/src/metrics.rs)\n---\n{body}",
        unexpected.join("\n")
    );
}
