//! docs/metrics.md says what the code does: its flow-log example is what the
//! writer prints, and every metric the exporters record is documented.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use netscope::export::flowlog::{self, write_record};
use netscope::resolve::{custom, static_topo};
use netscope::{Counters, Direction, Endpoint, EndpointKind, ResolvedFlow, WorkloadKind};

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn pod(name: &str, workload: &str, zone: &str) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        kind: EndpointKind::Pod,
        name: name.into(),
        namespace: "production".into(),
        workload: workload.into(),
        workload_kind: WorkloadKind::Deployment,
        node: "".into(),
        zone: zone.into(),
        region: "us-west-2".into(),
    })
}

#[test]
fn flow_log_example_is_what_the_writer_prints() {
    let doc = doc();
    let example = doc
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```json block in docs/metrics.md");
    let flow = ResolvedFlow {
        timestamp: UNIX_EPOCH + Duration::from_secs(1_736_937_000),
        src_ip: "10.0.1.50".parse().unwrap(),
        dst_ip: "10.0.2.75".parse().unwrap(),
        src: pod("frontend-abc123", "frontend", "us-west-2a"),
        dst: pod("backend-xyz789", "backend", "us-west-2b"),
        direction_counted: Direction::ToPod,
        counters: Counters::new(4096, 3),
    };
    let mut out = Vec::new();
    write_record(&mut out, &flow).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), example);
}

#[test]
fn every_metric_is_documented() {
    let doc = doc();
    let common_names = [
        flowlog::FLOW_LOG_DROPPED,
        flowlog::FLOW_LOG_WRITTEN,
        flowlog::FLOW_LOG_WRITE_ERRORS,
        custom::REJECTED_COUNTER,
        custom::LOADED_GAUGE,
        static_topo::LOADS_COUNTER,
        static_topo::REJECTED_COUNTER,
        static_topo::PODS_GAUGE,
        static_topo::TOMBSTONES_GAUGE,
    ];
    #[cfg(not(feature = "prometheus"))]
    let names: Vec<&str> = common_names.to_vec();
    #[cfg(feature = "prometheus")]
    let names: Vec<&str> = {
        use netscope::export::prometheus::names::*;
        let mut names = common_names.to_vec();
        #[cfg(feature = "kube")]
        names.push(netscope::resolve::kube::WATCH_ERRORS_COUNTER);
        names.extend([
            POD_BYTES,
            POD_CROSS_ZONE_BYTES,
            POD_PACKETS,
            POD_CROSS_ZONE_PACKETS,
            WORKLOAD_BYTES,
            WORKLOAD_PACKETS,
            WORKLOAD_CROSS_ZONE_BYTES,
            WORKLOAD_CROSS_ZONE_PACKETS,
            ZONE_BYTES,
            ZONE_PACKETS,
            CROSS_REGION_BYTES,
            CROSS_REGION_PACKETS,
            CROSS_ZONE_COST,
            FOLDED_FLOWS,
            SERIES,
        ]);
        names
    };
    for name in names {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "{name} is not in the metrics table"
        );
    }
}

/// The README's example queries are among those docs/metrics.md lists, and
/// `prometheus_real.rs` runs every one of those against a real Prometheus
/// with known data; so each README query is proven too.
#[test]
fn readme_queries_are_checked_ones() {
    let norm = |q: &str| {
        q.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace("( ", "(")
            .replace(" )", ")")
    };
    let blocks = |text: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut cur: Option<String> = None;
        for line in text.lines() {
            match (&mut cur, line.trim()) {
                (None, "```promql") => cur = Some(String::new()),
                (Some(b), "```") => {
                    out.push(std::mem::take(b));
                    cur = None;
                }
                (Some(b), l) => {
                    b.push_str(l);
                    b.push('\n');
                }
                _ => {}
            }
        }
        out
    };
    let documented: Vec<String> = blocks(&doc()).iter().map(|b| norm(b)).collect();
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let mut n = 0;
    for block in blocks(&readme) {
        for q in block
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            n += 1;
            assert!(
                documented.contains(&norm(q)),
                "README query is not among the checked ones in docs/metrics.md: {q}"
            );
        }
    }
    assert!(n >= 5, "README shows only {n} queries");
}
