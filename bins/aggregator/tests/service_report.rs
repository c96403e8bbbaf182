//! Service attribution end to end through the binary: reports over gRPC,
//! Services from the static topology, the per-Service series in /metrics
//! and the estimate in /report.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use netscope::report::ReportSink;
use netscope::transport::client::{ClientConfig, GrpcSink};
use netscope::{Counters, Direction, FlowKey, FlowSample, InstanceId, Report};

mod support;
use support::{free_port, http_get, is_200, wait_http, Killed};

const BIN: &str = env!("CARGO_BIN_EXE_netscope-aggregator");
const GB: u64 = 1_000_000_000;

/// api has endpoints in zones a and b; clients in zones a and c call it.
const TOPOLOGY: &str = "\
nodes:
  - {name: node-a, zone: a, region: r, ips: [192.168.0.1]}
  - {name: node-b, zone: b, region: r, ips: [192.168.0.2]}
  - {name: node-c, zone: c, region: r, ips: [192.168.0.3]}
pods:
  - {name: api-a, namespace: shop, node: node-a, ips: [10.0.1.1], workload: api}
  - {name: api-b, namespace: shop, node: node-b, ips: [10.0.2.1], workload: api}
  - {name: client-a, namespace: shop, node: node-a, ips: [10.0.1.7], workload: client}
  - {name: client-c, namespace: shop, node: node-c, ips: [10.0.3.1], workload: client}
services:
  - {name: api, namespace: shop, ips: [10.96.0.10], endpoints: [api-a, api-b]}
service_cidrs: [10.96.0.0/12]
";

fn sample(src: &str, dst: &str, bytes: u64) -> FlowSample {
    FlowSample {
        key: FlowKey::new(
            src.parse().expect("addr"),
            dst.parse().expect("addr"),
            Direction::FromPod,
        ),
        counters: Counters::new(bytes, bytes / 1500 + 1),
    }
}

fn report(node: &str, end: SystemTime, samples: Vec<FlowSample>) -> Report {
    Report {
        node: node.into(),
        instance: InstanceId::random(),
        seq: 1,
        window_start: end - Duration::from_secs(60),
        window_end: end,
        samples,
        overflow: Counters::default(),
        folded_flows: 0,
    }
}

#[test]
fn service_series_and_report_from_a_static_topology() {
    let dir = std::env::temp_dir().join(format!("netscope-agg-svc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let topo = dir.join("topology.yaml");
    std::fs::write(&topo, TOPOLOGY).expect("write topology");
    let addr = free_port();
    let child = Command::new(BIN)
        .args(["--listen-addr", &addr.to_string(), "--topology"])
        .arg(&topo)
        // Every report comes from loopback, whatever its node.
        .arg("--allow-any-peer-node")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the aggregator");
    let mut child = Killed(child);
    wait_http(&mut child, addr, "/readyz", Duration::from_secs(20), is_200);

    // Each flow counted once, as the sender's FromPod; the last window ends
    // 100 s after the first.
    let t0 = SystemTime::now() - Duration::from_secs(200);
    let reports = [
        report("node-c", t0, vec![sample("10.0.3.1", "10.0.1.1", GB)]),
        report(
            "node-a",
            t0 + Duration::from_secs(50),
            vec![
                sample("10.0.1.1", "10.0.3.1", 5 * GB),
                sample("10.0.1.7", "10.0.2.1", 2 * GB),
                sample("10.0.1.7", "10.0.1.1", 300),
            ],
        ),
        report(
            "node-b",
            t0 + Duration::from_secs(100),
            vec![sample("10.0.2.1", "10.0.1.7", 7 * GB)],
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let guard = rt.enter();
    let sink = GrpcSink::new(&ClientConfig::new(addr.to_string())).expect("client");
    for r in &reports {
        let ack = rt.block_on(sink.send(r)).expect("report acknowledged");
        assert!(!ack.duplicate);
    }
    drop(sink);
    drop(guard);
    drop(rt);

    let metrics = http_get(addr, "/metrics").expect("metrics");
    for (src, dst, bytes) in [
        ("c", "a", GB),
        ("a", "c", 5 * GB),
        ("a", "b", 2 * GB),
        ("b", "a", 7 * GB),
        ("a", "a", 300),
    ] {
        let line = format!(
            "netscope_service_network_traffic_bytes_total{{service=\"api\",service_namespace=\"shop\",src_zone=\"{src}\",dst_zone=\"{dst}\",via=\"endpointslice\"}} {bytes}"
        );
        assert!(metrics.contains(&line), "no {line} in:\n{metrics}");
    }
    assert!(
        metrics.contains("netscope_service_cross_zone_avoidable_bytes{service=\"api\",service_namespace=\"shop\"} 9000000000"),
        "no avoidable gauge in:\n{metrics}"
    );
    assert!(
        metrics.contains(
            "# HELP netscope_service_cross_zone_avoidable_bytes ESTIMATE, not a measurement"
        ),
        "the gauge's HELP must say it is an estimate:\n{metrics}"
    );

    let resp = http_get(addr, "/report").expect("report");
    assert!(resp.starts_with("HTTP/1.1 200"), "report: {resp}");
    assert!(resp.contains("application/json"), "report: {resp}");
    let body = resp.split("\r\n\r\n").nth(1).expect("a body");
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(json["kind"], "estimate");
    assert_eq!(json["observed_seconds"], 100.0);
    let api = &json["services"][0];
    assert_eq!(api["name"], "api");
    // Computed by hand: zone a has an endpoint, so its clients' 2 + 7 GB
    // would stay in zone a; zone c has none, its 1 + 5 GB still cross.
    assert_eq!(api["cross_zone_bytes"], 15 * GB);
    assert_eq!(api["avoidable_bytes"], 9 * GB);
    assert_eq!(api["remaining_cross_zone_bytes"], 6 * GB);
    // $0.01/GB on each side.
    assert_eq!(api["avoidable_microdollars"], 180_000);
    let monthly = api["monthly_saving_dollars"].as_f64().expect("a number");
    assert!(
        (monthly - 0.18 * 30.0 * 86_400.0 / 100.0).abs() < 1e-6,
        "{monthly}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
