//! `promtool check metrics` on the real agent's /metrics, with no finding:
//! every self-metric has `# HELP` and `# TYPE` (netscope::metrics). The
//! agent runs as root, loads the program and attaches inside a network
//! namespace of its own (`netscope-test-promtool-*`), so the root
//! namespace is never touched; /metrics is read from inside it. Kernel
//! test: run under `flock /tmp/netscope-netns.lock`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../aggregator/tests/support/mod.rs"]
mod support;

const BIN: &str = env!("CARGO_BIN_EXE_netscope-agent");
const PROMTOOL: &str = "/usr/bin/promtool";

/// Our namespace and our agent, removed and killed even on failure.
struct Cleanup {
    ns: String,
    agent: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(a) = self.agent.as_mut() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool() {
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: run `make deps`"
    );
    let ns = format!("netscope-test-promtool-{}", std::process::id());
    ok(Command::new("ip").args(["netns", "add", &ns]));
    let mut cleanup = Cleanup {
        ns: ns.clone(),
        agent: None,
    };
    ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
    let debug = "127.0.0.1:9101";
    let agent = Command::new("ip")
        .args(["netns", "exec", &ns, BIN, "--node-name", "node-a"])
        // Nothing listens there: the agent keeps its reports and retries,
        // which is enough for its metrics to exist.
        .args([
            "--server-endpoint",
            "http://127.0.0.1:1",
            "--debug-addr",
            debug,
        ])
        .args(["--collection-interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    let agent = cleanup.agent.insert(agent);
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "curl",
                "-sf",
                &format!("http://{debug}/metrics"),
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Wait for the first drain's metrics, not only the registered ones.
        if out.status.success() && text.contains("netscope_agent_flow_table_capacity") {
            break text;
        }
        assert!(
            agent.try_wait().expect("wait").is_none(),
            "the agent exited early"
        );
        assert!(
            Instant::now() < deadline,
            "no /metrics with a drain from the agent"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        body.contains("# HELP netscope_agent_overflow_bytes_total "),
        "no help text:\n{body}"
    );

    let (status, findings) = support::promtool_findings(PROMTOOL, &body);
    assert!(
        findings.trim().is_empty() && status.success(),
        "promtool check metrics on the agent's /metrics:\n{findings}\n(a metric without HELP: add it to netscope/src/metrics.rs)\n---\n{body}"
    );
}
