//! The binary as a user meets it: --help, bad flags, and a smoke run that
//! takes a report over gRPC and shows it in /metrics on the same port.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use netscope::report::ReportSink;
use netscope::transport::client::{ClientConfig, GrpcSink};
use netscope::{Counters, Direction, FlowKey, FlowSample, InstanceId, Report};

mod support;
use support::{free_port, http_get, wait_http, Killed};

const BIN: &str = env!("CARGO_BIN_EXE_netscope-aggregator");

#[test]
fn help_lists_every_flag_with_defaults() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "--help failed: {out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen-addr",
        "--topology",
        "--custom-endpoints",
        "--kubeconfig",
        "--max-message-bytes",
        "--dedup-idle-ttl-secs",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--no-reflection",
        "--reload-interval",
        "--verbosity",
        "-v",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    for default in [
        "[default: :8080]",
        "[default: 4194304]",
        "[default: 21600]",
        "[default: 10s]",
        "[default: 0]",
    ] {
        assert!(help.contains(default), "--help lacks {default}:\n{help}");
    }
}

#[test]
fn bad_flag_values_fail_clearly() {
    let cases: [(&[&str], &str); 5] = [
        (&["--listen-addr", "nowhere"], "--listen-addr"),
        (&["-v", "9"], "--verbosity"),
        (&["--max-message-bytes", "lots"], "--max-message-bytes"),
        (&["--tls-cert", "/tmp/x.pem"], "--tls-key"),
        (
            &["--topology", "/nonexistent/topology.yaml"],
            "/nonexistent/topology.yaml",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(BIN)
            .args(args)
            .output()
            .expect("run the binary");
        assert!(!out.status.success(), "{args:?} exited 0");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want),
            "{args:?}: stderr does not mention {want}:\n{err}"
        );
    }
}

#[test]
fn zero_reload_interval_is_refused() {
    let out = Command::new(BIN)
        .args([
            "--reload-interval",
            "0s",
            "--topology",
            "/nonexistent/topology.yaml",
        ])
        .output()
        .expect("run the binary");
    assert!(!out.status.success(), "--reload-interval 0s exited 0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--reload-interval") && err.contains("must be greater than zero"),
        "stderr does not say why --reload-interval 0s is refused:\n{err}"
    );
    // Refused by the flag parser, before any file is read.
    assert!(!err.contains("/nonexistent/topology.yaml"), "{err}");
}

/// `--http-listen-addr`: /healthz, /readyz and /metrics in plain HTTP on a
/// second port (what probes and scrapers use under mutual TLS).
#[test]
fn plain_http_port_serves_health_and_metrics() {
    let dir = std::env::temp_dir().join(format!("netscope-agg-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let topo = dir.join("topology.yaml");
    std::fs::write(&topo, "nodes:\n  - {name: node-a, zone: zone-1}\n").expect("write topology");
    let (main, plain) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["--listen-addr", &main.to_string()])
        .args(["--http-listen-addr", &plain.to_string(), "--topology"])
        .arg(&topo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the aggregator");
    let mut child = Killed(child);
    let health = wait_http(
        &mut child,
        plain,
        "/healthz",
        Duration::from_secs(20),
        |_| true,
    );
    assert!(health.starts_with("HTTP/1.1 200"), "healthz: {health}");
    let ready = http_get(plain, "/readyz").expect("readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "readyz: {ready}");
    let metrics = http_get(plain, "/metrics").expect("metrics");
    assert!(
        metrics.starts_with("HTTP/1.1 200") && metrics.contains("netscope_topology_loads_total 1"),
        "metrics: {metrics}"
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serves_grpc_and_http_on_one_port() {
    let dir = std::env::temp_dir().join(format!("netscope-agg-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let topo = dir.join("topology.yaml");
    std::fs::write(
        &topo,
        "nodes:\n  - {name: node-a, zone: zone-1, ips: [192.168.0.1, 127.0.0.1]}\npods:\n  - {name: a1, namespace: default, node: node-a, ips: [10.0.1.1]}\n",
    )
    .expect("write topology");
    let addr = free_port();
    let child = Command::new(BIN)
        .args(["--listen-addr", &addr.to_string(), "--topology"])
        .arg(&topo)
        .args(["-v", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the aggregator");
    let mut child = Killed(child);
    let health = wait_http(
        &mut child,
        addr,
        "/healthz",
        Duration::from_secs(20),
        |_| true,
    );
    assert!(health.starts_with("HTTP/1.1 200"), "healthz: {health}");
    let ready = http_get(addr, "/readyz").expect("readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "readyz: {ready}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = Report {
        node: "node-a".into(),
        instance: InstanceId::random(),
        seq: 1,
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
    };
    let _rt_guard = rt.enter();
    let sink = GrpcSink::new(&ClientConfig::new(addr.to_string())).expect("client");
    let ack = rt
        .block_on(sink.send(&report))
        .expect("report acknowledged");
    assert!(!ack.duplicate);
    let again = rt
        .block_on(sink.send(&report))
        .expect("replay acknowledged");
    assert!(again.duplicate, "a replay was counted");

    let metrics = http_get(addr, "/metrics").expect("metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "metrics: {metrics}");
    assert!(
        metrics.contains("netscope_aggregator_reports_total{result=\"counted\"} 1"),
        "metrics lack the counted report:\n{metrics}"
    );
    assert!(
        metrics.contains("netscope_aggregator_reports_total{result=\"replay\"} 1"),
        "metrics lack the replay:\n{metrics}"
    );

    // SIGTERM: a clean stop (with the client gone; a client that stays is
    // cut after the grace period).
    drop(sink);
    drop(_rt_guard);
    drop(rt);
    let pid = child.0.id().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "exit after SIGTERM: {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains("Received traffic data"),
        "no debug log per report at -v 2:\n{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
