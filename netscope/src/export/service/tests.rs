//! Tests of [`super`], apart from `service.rs` so that it reads as the code it ships.

use super::super::cost::Price;
use super::super::testutil::{flow, pod};
use super::*;
use crate::endpoint::WorkloadKind;
use crate::resolve::services::{ServiceEndpoint, ServiceTopologyBuilder};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const GB: u64 = 1_000_000_000;

fn ep(ip: &str, zone: &str) -> ServiceEndpoint {
    ServiceEndpoint {
        ips: vec![ip.parse().unwrap()],
        zone: Some(Arc::from(zone)),
        ready: true,
    }
}

/// shop/api: endpoints in zones a and b; shop/db: one endpoint in b.
fn topology() -> TopologySource {
    let mut b = ServiceTopologyBuilder::default();
    let api = ServiceRef::new("shop", "api");
    b.service(api.clone(), None);
    b.endpoint(api.clone(), ep("10.0.1.1", "a"));
    b.endpoint(api, ep("10.0.2.1", "b"));
    b.endpoint(ServiceRef::new("shop", "db"), ep("10.0.2.9", "b"));
    let t = Arc::new(b.build());
    Arc::new(move || t.clone())
}

fn pricing() -> Pricing {
    Pricing {
        sending: Price::per_gb(0.01).unwrap(),
        receiving: Price::per_gb(0.01).unwrap(),
    }
}

type Series = BTreeMap<(String, Vec<(String, String)>), u64>;

fn counters(recorder: &DebuggingRecorder) -> Series {
    let mut out = Series::new();
    for (key, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
        if let DebugValue::Counter(v) = value {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            out.insert((key.key().name().to_string(), labels), v);
        }
    }
    out
}

fn svc(service: &str, src: &str, dst: &str, via: &str) -> (String, Vec<(String, String)>) {
    let l = [
        ("service", service),
        (
            "service_namespace",
            if service == OTHER { OTHER } else { "shop" },
        ),
        ("src_zone", src),
        ("dst_zone", dst),
        ("via", via),
    ];
    (
        names::BYTES.to_owned(),
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn flows() -> Vec<ResolvedFlow> {
    let pa = pod("api-a", "shop", "api", "a", "r");
    let pb = pod("api-b", "shop", "api", "b", "r");
    let cc = pod("client-c", "shop", "client", "c", "r");
    let ca = pod("client-a", "shop", "client", "a", "r");
    let mut out = vec![
        // From zone c, which has no api endpoint: stays cross-zone.
        flow(&cc, &pa, "10.0.3.1", "10.0.1.1", GB, 1),
        flow(&pa, &cc, "10.0.1.1", "10.0.3.1", 5 * GB, 5),
        // From zone a to the endpoint in b: avoidable.
        flow(&ca, &pb, "10.0.1.7", "10.0.2.1", 2 * GB, 2),
        flow(&pb, &ca, "10.0.2.1", "10.0.1.7", 7 * GB, 7),
        // In-zone.
        flow(&ca, &pa, "10.0.1.7", "10.0.1.1", 300, 1),
        // Not a Service's endpoint on either side.
        flow(&ca, &cc, "10.0.1.7", "10.0.3.1", 999, 1),
    ];
    // The last window ends 100 s after the first.
    out[3].timestamp += Duration::from_secs(100);
    out
}

#[test]
fn series_attribute_requests_and_replies_and_the_estimate_adds_up() {
    let recorder = DebuggingRecorder::new();
    let exporter = ServiceExporter::new(
        ServiceConfig {
            pricing: pricing(),
            ..ServiceConfig::default()
        },
        topology(),
    );
    metrics::with_local_recorder(&recorder, || exporter.export(&flows()));
    let got = counters(&recorder);
    let mut want = Series::from([
        (svc("api", "c", "a", "endpointslice"), GB),
        (svc("api", "a", "c", "endpointslice"), 5 * GB),
        (svc("api", "a", "b", "endpointslice"), 2 * GB),
        (svc("api", "b", "a", "endpointslice"), 7 * GB),
        (svc("api", "a", "a", "endpointslice"), 300),
    ]);
    // The cross-zone subset: all but a -> a.
    let cross: Vec<_> = want
        .iter()
        .filter(|((_, l), _)| l[2].1 != l[3].1)
        .map(|((_, l), v)| ((names::CROSS_ZONE_BYTES_TOTAL.to_owned(), l.clone()), *v))
        .collect();
    want.extend(cross);
    assert_eq!(got, want);

    let report = exporter.report(10);
    assert_eq!(report.kind, "estimate");
    assert_eq!(report.services.len(), 1);
    let api = &report.services[0];
    assert_eq!((api.namespace.as_str(), api.name.as_str()), ("shop", "api"));
    assert_eq!(api.bytes, 15 * GB + 300);
    assert_eq!(api.cross_zone_bytes, 15 * GB);
    // Zone a has an api endpoint: its clients' 9 GB would stay in zone a.
    assert_eq!(api.avoidable_bytes, 9 * GB);
    // Zone c has none: its 6 GB would still cross.
    assert_eq!(api.remaining_cross_zone_bytes, 6 * GB);
    // $0.01/GB on each side.
    assert_eq!(api.avoidable_microdollars, 9 * 20_000);
    assert_eq!(api.cross_zone_microdollars, 15 * 20_000);
    assert!((api.avoidable_dollars - 0.18).abs() < 1e-12);
    assert!((api.remaining_dollars - 0.12).abs() < 1e-12);
    assert_eq!(report.observed_seconds, 100.0);
    // $0.18 per 100 s, over 30 days.
    let monthly = 0.18 * 30.0 * 86_400.0 / 100.0;
    assert!((api.monthly_saving_dollars - monthly).abs() < 1e-6);
    assert_eq!(
        api.cross_zone_bytes_by_client_zone,
        BTreeMap::from([("a".to_owned(), 9 * GB), ("c".to_owned(), 6 * GB)])
    );
    assert_eq!(
        api.ready_endpoints_by_zone,
        BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)])
    );
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["kind"], "estimate");
    assert!(json["assumptions"][0]
        .as_str()
        .is_some_and(|a| a.starts_with("estimate, not a measurement")));
}

#[test]
fn the_guard_folds_new_label_sets_and_counts_them() {
    let recorder = DebuggingRecorder::new();
    let exporter = ServiceExporter::new(
        ServiceConfig {
            pricing: pricing(),
            max_series: 2,
            max_services: 1,
        },
        topology(),
    );
    let db = pod("db-b", "shop", "db", "b", "r");
    let ca = pod("client-a", "shop", "client", "a", "r");
    let mut f = flows();
    f.push(flow(&ca, &db, "10.0.1.7", "10.0.2.9", 40, 1));
    metrics::with_local_recorder(&recorder, || exporter.export(&f));
    let got = counters(&recorder);
    let total: u64 = got
        .iter()
        .filter(|((name, _), _)| name == names::BYTES)
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 15 * GB + 300 + 40, "folding keeps every byte");
    assert_eq!(got[&svc("api", "c", "a", "endpointslice")], GB);
    assert_eq!(got[&svc("api", "a", "c", "endpointslice")], 5 * GB);
    // Folded: Service and namespace are `other`, the zones are kept.
    assert_eq!(got[&svc(OTHER, "a", "b", "endpointslice")], 2 * GB + 40);
    assert_eq!(got[&svc(OTHER, "b", "a", "endpointslice")], 7 * GB);
    assert_eq!(got[&svc(OTHER, "a", "a", "endpointslice")], 300);
    assert_eq!(got[&(names::FOLDED_FLOWS.to_owned(), vec![])], 4);
    // One Service tracked: db's flow is in the series only.
    let report = exporter.report(10);
    assert_eq!(report.services.len(), 1);
    assert_eq!(report.services[0].name, "api");
}

#[test]
fn ambiguous_endpoints_and_unresolved_clusterips() {
    let mut b = ServiceTopologyBuilder::default();
    for name in ["b-second", "a-first"] {
        b.endpoint(ServiceRef::new("shop", name), ep("10.0.2.1", "b"));
    }
    b.service(ServiceRef::new("shop", "vip"), Some("PreferClose"));
    let t = Arc::new(b.build());
    let recorder = DebuggingRecorder::new();
    let exporter = ServiceExporter::new(ServiceConfig::default(), Arc::new(move || t.clone()));
    let pb = pod("x", "shop", "x", "b", "r");
    let ca = pod("client-a", "shop", "client", "a", "r");
    let vip = Arc::new(Endpoint {
        kind: EndpointKind::Service,
        name: "vip".into(),
        namespace: "shop".into(),
        workload: "vip".into(),
        workload_kind: WorkloadKind::Service,
        node: "".into(),
        zone: "".into(),
        region: "".into(),
    });
    let f = [
        flow(&ca, &pb, "10.0.1.7", "10.0.2.1", 10, 1),
        flow(&ca, &vip, "10.0.1.7", "10.96.0.1", 20, 1),
        flow(&vip, &ca, "10.96.0.1", "10.0.1.7", 30, 1),
    ];
    metrics::with_local_recorder(&recorder, || exporter.export(&f));
    let got = counters(&recorder);
    let mut first = svc("a-first", "a", "b", "endpointslice");
    assert_eq!(got[&first], 10);
    first = svc("vip", "a", "unknown", "clusterip");
    assert_eq!(got[&first], 20);
    assert_eq!(got[&svc("vip", "unknown", "a", "clusterip")], 30);
    assert_eq!(got[&(names::AMBIGUOUS_FLOWS.to_owned(), vec![])], 1);
    let report = exporter.report(1);
    // a-first has the cross-zone bytes; vip's zone is unknown.
    assert_eq!(report.services[0].name, "a-first");
    assert_eq!(report.services[0].cross_zone_bytes, 10);
    assert_eq!(report.services_omitted, 1);
    let vip = exporter.report(5);
    let vip = vip.services.iter().find(|s| s.name == "vip").unwrap();
    assert_eq!((vip.bytes, vip.cross_zone_bytes), (50, 0));
    assert_eq!(vip.traffic_distribution.as_deref(), Some("PreferClose"));
}
