//! What each fuzz target checks, as plain functions: the libFuzzer targets
//! in `fuzz_targets/` call them, and `tests/replay.rs` replays the checked-in
//! corpora through them in the normal test suite.
//!
//! Every function takes arbitrary bytes and panics only on a real bug: a
//! crash, or a broken invariant stated next to the check.

pub mod frame;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use netscope::aggregate::DedupConfig;
use netscope::export::{Exporter, ResolvedFlow};
use netscope::resolve::{CustomEndpoints, StaticResolver};
use netscope::transport::convert::{report_from_proto, report_to_proto};
use netscope::transport::{pb, ValidationLimits};
use netscope::{Aggregator, Counters, IngestSink, Resolver};
use prost::Message;

/// Addresses every parsed resolver is asked about: the seeds' pods, nodes,
/// services and custom endpoints, and addresses of no one.
const PROBES: [&str; 8] = [
    "10.0.1.5",
    "10.0.2.5",
    "192.168.10.1",
    "10.96.0.10",
    "10.0.2.77",
    "fd00:1::5",
    "fd00:96::10",
    "203.0.113.9",
];

/// The topology the report target resolves against.
const TOPOLOGY: &str = r#"
zones:
  - {name: za, region: r}
  - {name: zb, region: r}
nodes:
  - {name: node-a, zone: za, ips: [192.168.10.1]}
  - {name: node-b, zone: zb, ips: [192.168.10.2]}
pods:
  - {name: web-1, namespace: shop, node: node-a, ips: [10.0.1.5, "fd00:1::5"]}
  - {name: db-1, namespace: shop, node: node-b, ips: [10.0.2.5, "fd00:2::5"]}
services:
  - {name: api, namespace: shop, ips: [10.96.0.10, "fd00:96::10"]}
service_cidrs: [10.96.0.0/12, "fd00:96::/112"]
"#;

fn resolver() -> Arc<dyn Resolver> {
    static R: OnceLock<Arc<dyn Resolver>> = OnceLock::new();
    R.get_or_init(|| {
        Arc::new(
            StaticResolver::from_yaml(TOPOLOGY)
                .unwrap_or_else(|e| panic!("the fuzz topology is invalid: {e}")),
        )
    })
    .clone()
}

/// Sums what the aggregator exports.
#[derive(Default)]
struct Sum(Mutex<(usize, Counters)>);

impl Exporter for Sum {
    fn export(&self, flows: &[ResolvedFlow]) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for f in flows {
            s.0 += 1;
            s.1 += f.counters;
        }
    }
}

/// Report decoding and validation: protobuf bytes → `FlowReport` →
/// `report_from_proto` → ingest by an aggregator.
///
/// Invariants: validation is stable on its own output (a valid report
/// re-encoded validates to the same report); a fresh aggregator counts or
/// sets aside every sample of a valid report, exports exactly what it
/// counted and at most the report's total, and takes the same report a
/// second time as a replay.
pub fn report(data: &[u8]) {
    let Ok(wire) = pb::FlowReport::decode(data) else {
        return;
    };
    let limits = ValidationLimits::default();
    // Validation as of the window's end: deterministic, and no window is
    // in the future.
    let now = SystemTime::UNIX_EPOCH
        + std::time::Duration::from_nanos(u64::try_from(wire.window_end_unix_nanos).unwrap_or(0));
    let Ok(validated) = report_from_proto(wire, &limits, now) else {
        return;
    };
    let report = validated.report;
    let again = report_from_proto(report_to_proto(&report), &limits, now)
        .unwrap_or_else(|e| panic!("a validated report fails validation once re-encoded: {e}"));
    assert_eq!(
        again.report, report,
        "re-encoding changed a validated report"
    );
    assert!(
        again.drops.total() == 0,
        "samples kept by validation were dropped once re-encoded: {:?}",
        again.drops
    );

    let sum = Arc::new(Sum::default());
    let agg = Aggregator::new(
        resolver(),
        vec![sum.clone() as Arc<dyn Exporter>],
        DedupConfig::default(),
    );
    let now = report.window_end;
    let n = report.samples.len();
    let total = report.total();
    let out = agg.ingest(report.clone(), now);
    assert!(
        !out.duplicate,
        "a fresh aggregator took a report as a replay"
    );
    if out.refused.is_some() {
        // Refused whole (implausible bytes for the window, say): nothing
        // may have been exported.
        assert_eq!(sum.0.lock().unwrap_or_else(|p| p.into_inner()).0, 0);
        return;
    }
    assert_eq!(
        out.counted + out.other_view + out.wrong_node + out.link_local,
        n,
        "samples neither counted nor set aside"
    );
    let (exported, counters) = *sum.0.lock().unwrap_or_else(|p| p.into_inner());
    assert_eq!(exported, out.counted, "exported flows != counted samples");
    assert!(
        counters.bytes <= total.bytes && counters.packets <= total.packets,
        "exported {counters:?}, more than the report's total {total:?}"
    );
    assert!(
        agg.ingest(report, now).duplicate,
        "the same report was counted twice"
    );
}

fn probe(r: &dyn Resolver) {
    let t = SystemTime::UNIX_EPOCH;
    for p in PROBES {
        let ip = p.parse().unwrap_or_else(|e| panic!("probe {p}: {e}"));
        let e = r.resolve(ip, t);
        let _ = r.is_monitored_node(&e.node);
    }
}

/// The topology-file parser (`StaticResolver::from_yaml`): any text is
/// parsed or refused with an error, and a parsed topology resolves.
pub fn topology(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = StaticResolver::from_yaml(text) {
        probe(&r);
    }
}

/// The custom-endpoints parser (`CustomEndpoints::from_yaml`): any text is
/// parsed or refused with an error, and a parsed set resolves.
pub fn custom_endpoints(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = CustomEndpoints::from_yaml(text) {
        probe(&c);
    }
}
