//! `promtool check metrics` on the real aggregator's /metrics: every
//! self-metric has `# HELP` and `# TYPE` (netscope::metrics), nothing else
//! to complain about. A metric added without a line in the registry fails
//! here with promtool's "no help text" naming it.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, http_get, Killed};

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
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        if let Some(r) = http_get(addr, "/metrics") {
            break r;
        }
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "the aggregator exited early"
        );
        assert!(Instant::now() < deadline, "nothing on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_dir_all(&dir);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    assert!(
        body.contains("# HELP netscope_topology_loads_total "),
        "no help text:\n{body}"
    );

    let findings = promtool(body);
    let unexpected: Vec<&str> = findings.lines().collect();
    assert!(
        unexpected.is_empty(),
        "promtool check metrics on the aggregator's /metrics:\n{}\n(a metric without HELP: add it to netscope/src/metrics.rs)\n---\n{body}",
        unexpected.join("\n")
    );
}

/// promtool's findings (stdout and stderr) on `text`.
fn promtool(text: &str) -> String {
    let mut p = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = p.wait_with_output().expect("promtool");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
