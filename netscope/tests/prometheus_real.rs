//! The exporter against a real Prometheus server.
//!
//! Installs netscope's recorder (`netscope::export::recorder`), as the
//! aggregator does, serves its `/metrics` on 127.0.0.1, feeds the exporter
//! known flows, checks `/metrics` with `promtool check metrics`, then starts
//! `/usr/bin/prometheus` (Debian package `prometheus`, installed by
//! `make deps`) scraping it every second, and runs every PromQL query in
//! `docs/metrics.md` through the HTTP API, checking the numbers.
//!
//! Exactness: every series is first exported at zero (a flow with zero
//! counters creates its series), Prometheus scrapes that, then the real
//! counts are exported. Queries are evaluated at the timestamp of a scrape
//! taken after the counts. With a first sample of 0 and the evaluation time on
//! a sample, Prometheus does not extrapolate, so `increase(x[r])` is exactly
//! the count and `rate(x[r])` exactly the count divided by `r`.
#![cfg(feature = "prometheus")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netscope::export::prometheus::{PrometheusConfig, PrometheusExporter};
use netscope::export::recorder::{RecorderBuilder, RecorderHandle};
use netscope::{Counters, Direction, Endpoint, EndpointKind, Exporter, ResolvedFlow, WorkloadKind};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

fn require(tool: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is missing: this test needs a real Prometheus server and promtool. \
         Run `make deps` (installs the Debian package `prometheus`)."
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A temporary directory and a Prometheus process, both gone when dropped,
/// also when the test fails.
struct Guard {
    dir: PathBuf,
    child: Option<Child>,
}

impl Guard {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "netscope-prometheus-test-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Guard { dir, child: None }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- prometheus.log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serves `handle.render()` on every request to a 127.0.0.1 port, from a
/// thread of its own (one connection at a time, closed after the answer);
/// returns the address.
fn serve_metrics(handle: RecorderHandle) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            // Read the request head; the body (none for GET) is ignored.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = handle.render();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// A plain HTTP/1.0 GET (no chunked encoding) to 127.0.0.1.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs an instant query, optionally at `time`; returns the result vector as
/// (labels, value) pairs.
fn query(prom: SocketAddr, q: &str, time: Option<&str>) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut path = format!("/api/v1/query?query={}", encode(q));
    if let Some(t) = time {
        path.push_str(&format!("&time={t}"));
    }
    let (status, body) = http_get(prom, &path).unwrap_or_else(|e| panic!("query {q}: {e}"));
    let json: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {q}: {e}: {body}"));
    assert_eq!(status, 200, "query {q}: {body}");
    assert_eq!(json["status"], "success", "query {q}: {body}");
    let data = &json["data"];
    let parse = |v: &Value| -> f64 {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("query {q}: bad value {v}"))
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .expect("metric")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                (labels, parse(&r["value"][1]))
            })
            .collect(),
        Some("scalar") => vec![(BTreeMap::new(), parse(&data["result"][1]))],
        other => panic!("query {q}: unexpected result type {other:?}: {body}"),
    }
}

/// The raw value of `time` from a scalar-valued instant query.
fn query_raw_value(prom: SocketAddr, q: &str) -> Option<String> {
    let path = format!("/api/v1/query?query={}", encode(q));
    let (_, body) = http_get(prom, &path).ok()?;
    let json: Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_string)
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// The ```promql blocks of docs/metrics.md, in order.
fn documented_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let doc =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut queries = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```promql") => current = Some(String::new()),
            (Some(q), "```") => {
                queries.push(q.trim().to_string());
                current = None;
            }
            (Some(q), l) => {
                q.push_str(l);
                q.push('\n');
            }
            _ => {}
        }
    }
    queries
}

fn endpoint(
    kind: EndpointKind,
    name: &str,
    ns: &str,
    workload: &str,
    wk: WorkloadKind,
    zone: &str,
    region: &str,
) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        kind,
        name: name.into(),
        namespace: ns.into(),
        workload: workload.into(),
        workload_kind: wk,
        node: "".into(),
        zone: zone.into(),
        region: region.into(),
    })
}

fn pod(name: &str, workload: &str, zone: &str, region: &str) -> Arc<Endpoint> {
    endpoint(
        EndpointKind::Pod,
        name,
        "shop",
        workload,
        WorkloadKind::Deployment,
        zone,
        region,
    )
}

/// One test flow with what the checks need to know about it.
struct TestFlow {
    src: Arc<Endpoint>,
    dst: Arc<Endpoint>,
    bytes: u64,
    packets: u64,
}

impl TestFlow {
    fn resolved(&self, counters: Counters) -> ResolvedFlow {
        ResolvedFlow {
            timestamp: SystemTime::now(),
            src_ip: "10.0.0.1".parse().expect("ip"),
            dst_ip: "10.0.0.2".parse().expect("ip"),
            src: self.src.clone(),
            dst: self.dst.clone(),
            direction_counted: Direction::ToPod,
            counters,
        }
    }
    fn zones_differ(&self) -> bool {
        let (a, b) = (&self.src.zone, &self.dst.zone);
        !a.is_empty() && !b.is_empty() && a != b
    }
    fn regions_differ(&self) -> bool {
        let (a, b) = (&self.src.region, &self.dst.region);
        !a.is_empty() && !b.is_empty() && a != b
    }
}

type Expected = Vec<(BTreeMap<String, String>, f64)>;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Adds `value` to the entry with `key` labels.
fn add(
    map: &mut BTreeMap<BTreeMap<String, String>, f64>,
    key: BTreeMap<String, String>,
    value: f64,
) {
    *map.entry(key).or_insert(0.0) += value;
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

fn assert_result(q: &str, mut got: Expected, mut want: Expected) {
    let key = |r: &(BTreeMap<String, String>, f64)| format!("{:?}", r.0);
    got.sort_by_key(key);
    want.sort_by_key(key);
    let ok = got.len() == want.len()
        && got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.0 == w.0 && close(g.1, w.1));
    assert!(ok, "query:\n{q}\ngot:  {got:?}\nwant: {want:?}");
}

#[test]
fn documented_queries_return_exact_numbers_from_a_real_prometheus() {
    require(PROMETHEUS);
    require(PROMTOOL);
    let guard = Guard::new();

    // The recorder, as the aggregator installs it.
    let config = PrometheusConfig::default();
    let handle = RecorderBuilder::new()
        .counter_idle_timeout(config.expiry.idle_timeout())
        .install()
        .expect("install the recorder");
    let metrics_addr = serve_metrics(handle);
    let exporter = PrometheusExporter::new(config).expect("exporter");

    let (a, b, c) = ("us-east-1a", "us-east-1b", "us-east-1c");
    let (use1, euw1) = ("us-east-1", "eu-west-1");
    let frontend1 = pod("frontend-1", "frontend", a, use1);
    let frontend2 = pod("frontend-2", "frontend", a, use1);
    let api = pod("api-1", "api", b, use1);
    let cache = pod("cache-1", "cache", b, use1);
    let db = endpoint(
        EndpointKind::Pod,
        "db-0",
        "shop",
        "db",
        WorkloadKind::StatefulSet,
        c,
        use1,
    );
    let replica = endpoint(
        EndpointKind::Pod,
        "replica-0",
        "dr",
        "replica",
        WorkloadKind::StatefulSet,
        "eu-west-1a",
        euw1,
    );
    let node = endpoint(
        EndpointKind::Node,
        "ip-10-0-0-10",
        "",
        "ip-10-0-0-10",
        WorkloadKind::Node,
        a,
        use1,
    );
    let rds = endpoint(
        EndpointKind::Custom,
        "rds-primary",
        "external",
        "rds-primary",
        WorkloadKind::Custom,
        c,
        use1,
    );
    let ext = Endpoint::external();
    let f = |src: &Arc<Endpoint>, dst: &Arc<Endpoint>, bytes, packets| TestFlow {
        src: src.clone(),
        dst: dst.clone(),
        bytes,
        packets,
    };
    let flows = [
        f(&frontend1, &api, 3_000_000_000, 2_000_000),
        f(&frontend2, &api, 1_000_000_000, 700_000),
        f(&api, &db, 500_000_000, 350_000),
        f(&api, &cache, 2_000_000_000, 1_400_000),
        f(&frontend1, &ext, 250_000_000, 170_000),
        f(&db, &replica, 100_000_000, 70_000),
        f(&node, &rds, 12_345_678, 9_000),
    ];

    // Phase 1: every series at zero.
    exporter.export(
        &flows
            .iter()
            .map(|t| t.resolved(Counters::default()))
            .collect::<Vec<_>>(),
    );
    let phase1_done = SystemTime::now();

    // Prometheus, scraping every second.
    let prom_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config_path = guard.dir.join("prometheus.yml");
    std::fs::write(
        &config_path,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: netscope\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
             static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let log = std::fs::File::create(guard.dir.join("prometheus.log")).expect("log file");
    let mut guard = guard;
    guard.child = Some(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                guard.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    wait_until("Prometheus to be ready", Duration::from_secs(60), || {
        matches!(http_get(prom_addr, "/-/ready"), Ok((200, _)))
    });
    wait_until(
        "the netscope target to be up",
        Duration::from_secs(60),
        || query(prom_addr, "up{job=\"netscope\"} == 1", None).len() == 1,
    );
    let scraped_after = |t: SystemTime| {
        let t = t.duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
        move || {
            query_raw_value(prom_addr, "max(timestamp(up{job=\"netscope\"}))")
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|ts| ts > t)
        }
    };
    wait_until(
        "a scrape of the zero series",
        Duration::from_secs(30),
        scraped_after(phase1_done),
    );

    // Phase 2: the real counts.
    exporter.export(
        &flows
            .iter()
            .map(|t| t.resolved(Counters::new(t.bytes, t.packets)))
            .collect::<Vec<_>>(),
    );
    let phase2_done = SystemTime::now();
    wait_until(
        "a scrape of the counts",
        Duration::from_secs(30),
        scraped_after(phase2_done),
    );
    let at = query_raw_value(prom_addr, "max(timestamp(up{job=\"netscope\"}))").expect("timestamp");

    // promtool on what Prometheus scrapes.
    let (status, text) = http_get(metrics_addr, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200);
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The expected numbers, from the flows, with independent arithmetic.
    let total: u64 = flows.iter().map(|t| t.bytes).sum();
    let cross: Vec<&TestFlow> = flows.iter().filter(|t| t.zones_differ()).collect();
    let cross_bytes: u64 = cross.iter().map(|t| t.bytes).sum();
    let zl = |t: &TestFlow| {
        let z = |e: &Endpoint| {
            if e.zone.is_empty() {
                "unknown".to_string()
            } else {
                e.zone.to_string()
            }
        };
        (z(&t.src), z(&t.dst))
    };
    let mut cross_by_zone = BTreeMap::new();
    let mut by_zone = BTreeMap::new();
    let mut billed_by_zone: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut by_region = BTreeMap::new();
    let mut top_workloads = BTreeMap::new();
    let mut top_pods = BTreeMap::new();
    let mut by_src_workload = BTreeMap::new();
    for t in &flows {
        let (sz, dz) = zl(t);
        let zone_labels = labels(&[("src_zone", &sz), ("dst_zone", &dz)]);
        add(&mut by_zone, zone_labels.clone(), t.bytes as f64 / 300.0);
        if !t.zones_differ() {
            continue;
        }
        add(&mut cross_by_zone, zone_labels, t.bytes as f64);
        let ns = |e: &Endpoint| match e.kind {
            EndpointKind::Node => "node".to_string(),
            _ => e.namespace.to_string(),
        };
        add(
            &mut top_workloads,
            labels(&[
                ("src_namespace", &ns(&t.src)),
                ("src_workload", &t.src.workload),
                ("dst_namespace", &ns(&t.dst)),
                ("dst_workload", &t.dst.workload),
            ]),
            t.bytes as f64,
        );
        add(
            &mut top_pods,
            labels(&[
                ("src_pod", &t.src.name),
                ("src_namespace", &ns(&t.src)),
                ("dst_pod", &t.dst.name),
                ("dst_namespace", &ns(&t.dst)),
            ]),
            t.bytes as f64 / 300.0,
        );
        add(
            &mut by_src_workload,
            labels(&[
                ("src_namespace", &ns(&t.src)),
                ("src_workload", &t.src.workload),
            ]),
            t.bytes as f64 / 1e9 * (0.01 + 0.01),
        );
        if t.regions_differ() {
            add(
                &mut by_region,
                labels(&[("src_region", &t.src.region), ("dst_region", &t.dst.region)]),
                t.bytes as f64,
            );
        } else {
            *billed_by_zone.entry((sz, dz)).or_default() += t.bytes;
        }
    }
    // $0.01 per 10^9 bytes, in whole microdollars per zone pair and side:
    // bytes * 0.01 * 1e6 / 1e9 = bytes / 1e5, rounded down.
    let micro: BTreeMap<(String, String), u64> = billed_by_zone
        .iter()
        .map(|(k, b)| (k.clone(), b / 100_000))
        .collect();
    let micro_per_side: u64 = micro.values().sum();
    assert_eq!(
        micro_per_side,
        40_000 + 5_000 + 123,
        "the test's own arithmetic"
    );
    let dollars_both = 2.0 * micro_per_side as f64 / 1e6;
    let cost_by_zone: Expected = micro
        .iter()
        .map(|((s, d), m)| {
            (
                labels(&[("src_zone", s), ("dst_zone", d)]),
                2.0 * *m as f64 / 1e6,
            )
        })
        .collect();
    let one = |v: f64| vec![(BTreeMap::new(), v)];
    let vec_of = |m: BTreeMap<BTreeMap<String, String>, f64>| m.into_iter().collect::<Expected>();

    let expectations: Vec<(&str, Expected)> = vec![
        ("sum(rate(pod_network_traffic_bytes_total[5m]))", one(total as f64 / 300.0)),
        (
            "sum by (src_zone, dst_zone) (increase(pod_cross_zone_network_traffic_bytes_total[1h]))",
            vec_of(cross_by_zone),
        ),
        (
            "100 * sum(rate(pod_cross_zone_network_traffic_bytes_total[5m]))\n  / sum(rate(pod_network_traffic_bytes_total[5m]))",
            one(100.0 * cross_bytes as f64 / total as f64),
        ),
        (
            "topk(10, sum by (src_namespace, src_workload, dst_namespace, dst_workload) (\n  increase(netscope_workload_cross_zone_network_traffic_bytes_total[1h])\n))",
            vec_of(top_workloads),
        ),
        (
            "topk(10, sum by (src_pod, src_namespace, dst_pod, dst_namespace) (\n  rate(pod_cross_zone_network_traffic_bytes_total[5m])\n))",
            vec_of(top_pods),
        ),
        (
            "sum by (src_zone, dst_zone) (rate(netscope_zone_network_traffic_bytes_total[5m]))",
            vec_of(by_zone),
        ),
        (
            "sum by (src_region, dst_region) (increase(netscope_cross_region_network_traffic_bytes_total[1h]))",
            vec_of(by_region),
        ),
        (
            "sum(increase(netscope_cross_zone_cost_microdollars_total[30d])) / 1e6",
            one(dollars_both),
        ),
        (
            "sum by (side) (increase(netscope_cross_zone_cost_microdollars_total[30d])) / 1e6",
            vec![
                (labels(&[("side", "sending")]), micro_per_side as f64 / 1e6),
                (labels(&[("side", "receiving")]), micro_per_side as f64 / 1e6),
            ],
        ),
        (
            "sum(rate(netscope_cross_zone_cost_microdollars_total[1h])) * 30 * 86400 / 1e6",
            one(2.0 * micro_per_side as f64 / 3600.0 * 30.0 * 86400.0 / 1e6),
        ),
        (
            "sum by (src_zone, dst_zone) (increase(netscope_cross_zone_cost_microdollars_total[30d])) / 1e6",
            cost_by_zone,
        ),
        (
            "sum by (src_namespace, src_workload) (\n  increase(netscope_workload_cross_zone_network_traffic_bytes_total[30d])\n) / 1e9 * (0.01 + 0.01)",
            vec_of(by_src_workload),
        ),
        (
            "sum by (level) (rate(netscope_exporter_folded_flows_total[5m])) > 0",
            vec![],
        ),
    ];

    // Docs and checks stay in lockstep.
    let documented = documented_queries();
    let checked: Vec<&str> = expectations.iter().map(|(q, _)| *q).collect();
    assert_eq!(
        documented, checked,
        "docs/metrics.md and this test must list the same queries, in the same order"
    );

    for (q, want) in expectations {
        let got = query(prom_addr, q, Some(&at));
        assert_result(q, got, want);
    }

    // The headline numbers, spelled out.
    let pct = query(
        prom_addr,
        "100 * sum(rate(pod_cross_zone_network_traffic_bytes_total[5m]))\n  / sum(rate(pod_network_traffic_bytes_total[5m]))",
        Some(&at),
    );
    assert!(
        close(pct[0].1, 100.0 * 4_612_345_678.0 / 6_862_345_678.0),
        "{pct:?}"
    );
    let cost = query(
        prom_addr,
        "sum(increase(netscope_cross_zone_cost_microdollars_total[30d])) / 1e6",
        Some(&at),
    );
    // 4.5123456 GB billed inter-AZ (the eu-west-1 flow is inter-region):
    // $0.045123 per side after rounding down to whole microdollars per zone pair.
    assert!(close(cost[0].1, 0.090_246), "{cost:?}");
    drop(guard);
}
