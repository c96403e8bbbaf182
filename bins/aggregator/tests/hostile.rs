//! Issue 12, the aggregator's share of the hostile-input table that is about
//! flags, files and logs (rows 8, 9, 10, 13 "duplicate zones", the ANSI and
//! JSON log cases), run against the real binary. Each input is refused with
//! a clear error, or absorbed (counted and logged, escaped) while the
//! process keeps answering probes and counting valid reports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use netscope::report::ReportSink;
use netscope::transport::client::{ClientConfig, GrpcSink};
use netscope::{Counters, Direction, FlowKey, FlowSample, InstanceId, Report};

mod support;
use support::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_netscope-aggregator");

/// A valid topology: one node, one pod.
const TOPOLOGY: &str = "zones:\n  - {name: zone-1, region: r1}\nnodes:\n  - {name: node-a, zone: zone-1, ips: [192.168.0.1, 127.0.0.1]}\npods:\n  - {name: a1, namespace: default, node: node-a, ips: [10.0.1.1]}\n";

/// 200 KB of nested flow sequences: serde_yaml alone spent tens of seconds
/// on it (quadratic in the depth), on the async workers.
fn nested_flow(key: &str) -> String {
    let n = 100_000;
    format!("{key}: {}{}", "[".repeat(n), "]".repeat(n))
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "netscope-test-robust-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Write then rename, as the kubelet swaps a ConfigMap.
        let tmp = self.0.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {tmp:?}: {e}"));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename {path:?}: {e}"));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary to its exit (it must exit: every case here is refused at
/// start) and returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {BIN}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} was accepted:\n{err}");
    err
}

/// Row 8 and the other duration flags: values whose arithmetic would
/// overflow time are refused by the flag parser with the bound, before any
/// task runs; so are the other unbounded numbers of the same kind.
#[test]
fn unbounded_durations_are_refused_with_their_bound() {
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--tombstone-grace", "400000000000y"],
            &["--tombstone-grace", "upper bound 1day"],
        ),
        (
            &["--reload-interval", "400000000000y"],
            &["--reload-interval", "upper bound 1h"],
        ),
        (
            &["--series-idle-timeout", "400000000000y"],
            &["--series-idle-timeout", "upper bound 7days"],
        ),
        (
            &["--series-idle-timeout", "0s"],
            &["--series-idle-timeout", "shorter than"],
        ),
        (
            &["--dedup-idle-ttl-secs", "18446744073709551615"],
            &["--dedup-idle-ttl-secs", "2592000"],
        ),
        (&["--log-format", "xml"], &["--log-format", "text or json"]),
    ];
    for (args, wants) in cases {
        let mut all = args.to_vec();
        // Never reached: the flag parser refuses first.
        all.extend(["--topology", "/nonexistent/netscope-topology.yaml"]);
        let err = refused(&all);
        for want in wants {
            assert!(
                err.contains(want),
                "{args:?}: stderr lacks {want:?}:\n{err}"
            );
        }
        assert!(!err.contains("netscope-topology.yaml"), "{args:?}: {err}");
    }
}

/// Rows 9 and 13 at start: a pathological or ambiguous file is refused with
/// an error that says what is wrong and where.
#[test]
fn bad_files_at_start_are_refused_clearly() {
    let dir = Scratch::new("start");
    let good = dir.file("good.yaml", TOPOLOGY);
    let deep_topology = dir.file("deep-topology.yaml", &nested_flow("pods"));
    let deep_custom = dir.file("deep-custom.yaml", &nested_flow("endpoints"));
    let dup_zones = dir.file(
        "dup-zones.yaml",
        "zones:\n  - {name: zone-1, region: r1}\n  - {name: zone-2, region: r1}\n  - {name: zone-1, region: r2}\nnodes:\n  - {name: node-a, zone: zone-1}\n",
    );
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec!["--topology".into(), s(&deep_topology)],
            vec![
                "deep-topology.yaml",
                "static topology file rejected before parsing: nested deeper than 32 levels",
            ],
        ),
        (
            vec![
                "--topology".into(),
                s(&good),
                "--custom-endpoints".into(),
                s(&deep_custom),
            ],
            vec![
                "--custom-endpoints",
                "custom endpoints file rejected before parsing: nested deeper than 32 levels",
            ],
        ),
        (
            vec!["--topology".into(), s(&dup_zones)],
            vec!["zones[2] (zone-1): field `name`: zone-1 is already claimed by zones[0] (zone-1)"],
        ),
    ];
    for (args, wants) in cases {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--listen-addr", "127.0.0.1:0"]);
        let err = refused(&all);
        for want in wants {
            assert!(
                err.contains(want),
                "{args:?}: stderr lacks {want:?}:\n{err}"
            );
        }
    }
}

struct Running {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Running {
    /// Starts the aggregator with stderr into a file (a pipe nobody reads
    /// could fill and block it) and waits until /readyz answers 200.
    fn start(dir: &Scratch, extra: &[&str]) -> Self {
        let addr = free_port();
        let stderr = dir.0.join("stderr.log");
        let log = std::fs::File::create(&stderr).unwrap_or_else(|e| panic!("{stderr:?}: {e}"));
        let child = Command::new(BIN)
            .args(["--listen-addr", &addr.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {BIN}: {e}"));
        let mut this = Running {
            child,
            addr,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(addr, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return this;
            }
            if let Some(status) = this.child.try_wait().expect("wait") {
                panic!("the aggregator exited early ({status}):\n{}", this.log());
            }
            assert!(
                Instant::now() < deadline,
                "the aggregator was not ready on {addr}:\n{}",
                this.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn get(&self, path: &str) -> String {
        http_get(self.addr, path).unwrap_or_else(|| {
            panic!(
                "{path} did not answer within 5 s on {}:\n{}",
                self.addr,
                self.log()
            )
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an unlabelled counter in a /metrics answer (0 if absent).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name} {v:?}: {e}"))
        })
}

fn report(seq: u64, instance: InstanceId) -> Report {
    Report {
        node: "node-a".into(),
        instance,
        seq,
        window_start: SystemTime::now(),
        window_end: SystemTime::now(),
        samples: vec![FlowSample {
            key: FlowKey::new(
                "10.0.1.1".parse().expect("addr"),
                "8.8.8.8".parse().expect("addr"),
                Direction::FromPod,
            ),
            counters: Counters::new(1500, 1),
        }],
        overflow: Counters::default(),
        folded_flows: 0,
    }
}

/// Rows 9 and 10 at reload, and the ANSI case: while a 200 KB nested file
/// and a file with forged log lines in its names are rejected, /healthz
/// keeps answering, the topology in force stays, a valid agent's report is
/// counted, and no log line is forged or coloured.
#[test]
fn hostile_reloads_are_rejected_while_probes_answer() {
    let dir = Scratch::new("reload");
    let topo = dir.file("topology.yaml", TOPOLOGY);
    let agg = Running::start(
        &dir,
        &[
            "--topology",
            topo.to_str().expect("utf-8 path"),
            "--reload-interval",
            "100ms",
        ],
    );
    let forged = "nodes:\n  - {name: \"n\\nERROR forged line\", zone: z}\n  - {name: \"n\\nERROR forged line\", zone: z}\n";
    let files = [nested_flow("pods"), forged.to_owned()];
    for (i, text) in files.iter().enumerate() {
        dir.file("topology.yaml", text);
        let want = i as u64 + 1;
        // Until the reload task has rejected this version (it polls every
        // 100 ms), every probe must answer; a stalled worker would not
        // answer within http_get's 5 s. The deadline only bounds the loop.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut probes = 0;
        loop {
            let health = agg.get("/healthz");
            assert!(health.starts_with("HTTP/1.1 200"), "healthz: {health}");
            probes += 1;
            let metrics = agg.get("/metrics");
            if counter(&metrics, "netscope_topology_rejected_total") >= want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "file {i} was not rejected:\n{}",
                agg.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(probes >= 1);
        let ready = agg.get("/readyz");
        assert!(ready.starts_with("HTTP/1.1 200"), "readyz: {ready}");
    }

    // The topology in force is the first one: a valid agent is counted.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let counted = {
        let _guard = rt.enter();
        let sink = GrpcSink::new(&ClientConfig::new(agg.addr.to_string())).expect("client");
        rt.block_on(sink.send(&report(1, InstanceId::random())))
            .expect("report acknowledged")
    };
    assert!(!counted.duplicate);
    let metrics = agg.get("/metrics");
    assert!(
        metrics.contains("netscope_aggregator_reports_total{result=\"counted\"} 1"),
        "the valid report was not counted:\n{metrics}"
    );
    assert_eq!(counter(&metrics, "netscope_topology_loads_total"), 1);

    let log = agg.log();
    assert!(
        log.contains("rejected before parsing: nested deeper than 32 levels"),
        "no rejection logged for the nested file:\n{log}"
    );
    assert!(
        log.contains("Rejected static topology file"),
        "no rejection logged:\n{log}"
    );
    // The names' newlines are escaped: no line starts with the forgery.
    assert!(
        log.contains(r"n\nERROR forged line"),
        "the forged name is not in the log, escaped:\n{log}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("ERROR forged"),
            "forged log line: {line:?}"
        );
    }
    // stderr is a file, not a terminal: no colour codes.
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a file:\n{log:?}"
    );
}

/// `--log-format json`: every line of stderr is one JSON object, with the
/// message and level as fields.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = Scratch::new("json");
    let topo = dir.file("topology.yaml", TOPOLOGY);
    let agg = Running::start(
        &dir,
        &[
            "--topology",
            topo.to_str().expect("utf-8 path"),
            "--log-format",
            "json",
        ],
    );
    let log = agg.log();
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(v["level"].is_string(), "no level: {line}");
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains("netscope-aggregator listening")),
        "no startup message among {messages:?}"
    );
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in JSON lines");
}
