//! Tests of [`super`], apart from `prometheus.rs` so that it reads as the code it ships.

use super::super::cost::Price;
use super::super::recorder::{Recorder, RecorderBuilder, RecorderHandle};
use super::super::testutil::{flow, pod};
use super::*;
use crate::endpoint::{EndpointKind, WorkloadKind};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::BTreeMap;

type Labels = Vec<(String, String)>;

/// name -> label set (in key order) -> counter value.
fn counters(snapshotter: &Snapshotter) -> BTreeMap<String, BTreeMap<Labels, u64>> {
    let mut out: BTreeMap<String, BTreeMap<Labels, u64>> = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(v) = value {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            out.entry(key.key().name().to_string())
                .or_default()
                .insert(labels, v);
        }
    }
    out
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod_labels(values: [&str; 6]) -> Labels {
    POD_LABELS
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn node(name: &str, zone: &str) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        kind: EndpointKind::Node,
        name: name.into(),
        namespace: "".into(),
        workload: name.into(),
        workload_kind: WorkloadKind::Node,
        node: name.into(),
        zone: zone.into(),
        region: "us-west-2".into(),
    })
}

fn custom(name: &str, ns: &str, zone: &str) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        kind: EndpointKind::Custom,
        name: name.into(),
        namespace: ns.into(),
        workload: name.into(),
        workload_kind: WorkloadKind::Custom,
        node: "".into(),
        zone: zone.into(),
        region: "us-west-2".into(),
    })
}

fn exporter(config: PrometheusConfig) -> PrometheusExporter {
    PrometheusExporter::new(config).expect("valid config")
}

#[test]
fn seed_metrics_have_exact_labels_and_values() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let exp = exporter(PrometheusConfig::default());
    let a = pod("frontend-1", "shop", "frontend", "us-west-2a", "us-west-2");
    let b = pod("backend-1", "shop", "backend", "us-west-2b", "us-west-2");
    let a2 = pod("cache-1", "shop", "cache", "us-west-2a", "us-west-2");
    let n = node("ip-10-0-1-5", "us-west-2c");
    let rds = custom("rds-primary", "external", "us-west-2b");
    let ext = Endpoint::external();
    let no_zone = pod("batch-1", "jobs", "batch", "", "");

    metrics::with_local_recorder(&recorder, || {
        exp.export(&[
            flow(&a, &b, "10.0.1.1", "10.0.2.1", 1000, 10),
            flow(&a, &a2, "10.0.1.1", "10.0.1.2", 500, 5),
            flow(&a, &ext, "10.0.1.1", "203.0.113.7", 300, 3),
            flow(&n, &rds, "10.0.3.5", "10.0.2.50", 70, 1),
            flow(&no_zone, &b, "10.0.9.9", "10.0.2.1", 40, 1),
        ]);
        // A second batch adds to the same series.
        exp.export(&[flow(&a, &b, "10.0.1.1", "10.0.2.1", 234, 2)]);
    });

    let c = counters(&snap);
    let expected_total: BTreeMap<Labels, u64> = [
        (
            [
                "frontend-1",
                "shop",
                "backend-1",
                "shop",
                "us-west-2a",
                "us-west-2b",
            ],
            1234,
        ),
        (
            [
                "frontend-1",
                "shop",
                "cache-1",
                "shop",
                "us-west-2a",
                "us-west-2a",
            ],
            500,
        ),
        (
            [
                "frontend-1",
                "shop",
                "external",
                "external",
                "us-west-2a",
                "unknown",
            ],
            300,
        ),
        (
            [
                "ip-10-0-1-5",
                "node",
                "rds-primary",
                "external",
                "us-west-2c",
                "us-west-2b",
            ],
            70,
        ),
        (
            [
                "batch-1",
                "jobs",
                "backend-1",
                "shop",
                "unknown",
                "us-west-2b",
            ],
            40,
        ),
    ]
    .into_iter()
    .map(|(v, n)| (pod_labels(v), n))
    .collect();
    assert_eq!(c[names::POD_BYTES], expected_total);

    // Cross-zone only where both zones are known and differ.
    let expected_cross: BTreeMap<Labels, u64> = [
        (
            [
                "frontend-1",
                "shop",
                "backend-1",
                "shop",
                "us-west-2a",
                "us-west-2b",
            ],
            1234,
        ),
        (
            [
                "ip-10-0-1-5",
                "node",
                "rds-primary",
                "external",
                "us-west-2c",
                "us-west-2b",
            ],
            70,
        ),
    ]
    .into_iter()
    .map(|(v, n)| (pod_labels(v), n))
    .collect();
    assert_eq!(c[names::POD_CROSS_ZONE_BYTES], expected_cross);

    let packets = &c[names::POD_PACKETS];
    assert_eq!(
        packets[&pod_labels([
            "frontend-1",
            "shop",
            "backend-1",
            "shop",
            "us-west-2a",
            "us-west-2b"
        ])],
        12
    );
    assert_eq!(packets.len(), 5);
    assert_eq!(
        c[names::POD_CROSS_ZONE_PACKETS].values().sum::<u64>(),
        12 + 1
    );

    // No label value is ever empty.
    for (name, series) in &c {
        for labels in series.keys() {
            for (k, v) in labels {
                assert!(!v.is_empty(), "{name} has an empty {k}");
            }
        }
    }
}

#[test]
fn workload_zone_region_and_cost_series() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let exp = exporter(PrometheusConfig::default());
    let a1 = pod("api-7d9f-abcde", "shop", "api", "us-west-2a", "us-west-2");
    // The same workload after a restart: a new pod name, same workload.
    let a2 = pod("api-7d9f-fghij", "shop", "api", "us-west-2a", "us-west-2");
    let db = pod("db-0", "shop", "db", "us-west-2b", "us-west-2");
    let eu = pod("replica-0", "shop", "replica", "eu-west-1a", "eu-west-1");

    metrics::with_local_recorder(&recorder, || {
        exp.export(&[
            flow(&a1, &db, "10.0.1.1", "10.0.2.1", 2_500_000_000, 100),
            flow(&a2, &db, "10.0.1.3", "10.0.2.1", 500_000_123, 50),
            flow(&db, &eu, "10.0.2.1", "10.9.0.1", 7_000, 7),
        ]);
    });
    let c = counters(&snap);

    // Two pod series, one workload series.
    assert_eq!(c[names::POD_BYTES].len(), 3);
    let wl = l(&[
        ("src_workload", "api"),
        ("src_workload_kind", "Deployment"),
        ("src_namespace", "shop"),
        ("dst_workload", "db"),
        ("dst_workload_kind", "Deployment"),
        ("dst_namespace", "shop"),
        ("src_zone", "us-west-2a"),
        ("dst_zone", "us-west-2b"),
        ("src_region", "us-west-2"),
        ("dst_region", "us-west-2"),
    ]);
    assert_eq!(c[names::WORKLOAD_BYTES][&wl], 3_000_000_123);
    assert_eq!(c[names::WORKLOAD_PACKETS][&wl], 150);
    assert_eq!(c[names::WORKLOAD_CROSS_ZONE_BYTES][&wl], 3_000_000_123);
    assert_eq!(c[names::WORKLOAD_CROSS_ZONE_BYTES].len(), 2);

    let zone = |s: &str, d: &str, sr: &str, dr: &str| {
        l(&[
            ("src_zone", s),
            ("dst_zone", d),
            ("src_region", sr),
            ("dst_region", dr),
        ])
    };
    assert_eq!(
        c[names::ZONE_BYTES][&zone("us-west-2a", "us-west-2b", "us-west-2", "us-west-2")],
        3_000_000_123
    );
    assert_eq!(
        c[names::ZONE_BYTES][&zone("us-west-2b", "eu-west-1a", "us-west-2", "eu-west-1")],
        7_000
    );

    // Only the inter-region flow is cross-region.
    let region = l(&[("src_region", "us-west-2"), ("dst_region", "eu-west-1")]);
    assert_eq!(
        c[names::CROSS_REGION_BYTES],
        BTreeMap::from([(region.clone(), 7_000)])
    );
    assert_eq!(
        c[names::CROSS_REGION_PACKETS],
        BTreeMap::from([(region, 7)])
    );

    // Cost: $0.01 per 10^9 bytes on each side, whole microdollars rounded
    // down: 3_000_000_123 bytes -> 30_000.00123 cents*1000 -> 30_000 µ$.
    // The inter-region flow is not billed at the inter-AZ price.
    let mut cost_labels = zone("us-west-2a", "us-west-2b", "us-west-2", "us-west-2");
    cost_labels.push(("side".into(), "sending".into()));
    let mut receiving = cost_labels.clone();
    receiving[4].1 = "receiving".into();
    assert_eq!(
        c[names::CROSS_ZONE_COST],
        BTreeMap::from([(cost_labels, 30_000), (receiving, 30_000)])
    );
}

#[test]
fn custom_prices_per_side() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let exp = exporter(PrometheusConfig {
        pricing: Pricing {
            sending: Price::per_gib(0.02).unwrap(),
            receiving: Price::FREE,
        },
        ..PrometheusConfig::default()
    });
    let a = pod("a", "ns", "a", "z1", "r");
    let b = pod("b", "ns", "b", "z2", "r");
    metrics::with_local_recorder(&recorder, || {
        // 1.5 GiB in three flows.
        for _ in 0..3 {
            exp.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 1 << 29, 1)]);
        }
    });
    let c = counters(&snap);
    let by_side: BTreeMap<String, u64> = c[names::CROSS_ZONE_COST]
        .iter()
        .map(|(labels, v)| (labels[4].1.clone(), *v))
        .collect();
    assert_eq!(by_side["sending"], 30_000, "1.5 GiB at $0.02/GiB = $0.03");
    assert_eq!(by_side["receiving"], 0);
}

#[test]
fn cardinality_guard_folds_into_other_and_counts() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let exp = exporter(PrometheusConfig {
        limits: CardinalityLimits {
            pod_pairs: 2,
            workload_pairs: 1,
            zone_pairs: 100,
        },
        ..PrometheusConfig::default()
    });
    let srv = pod("srv", "ns", "srv", "z2", "r");
    let clients: Vec<_> = (0..5)
        .map(|i| pod(&format!("c{i}"), "ns", &format!("w{i}"), "z1", "r"))
        .collect();
    metrics::with_local_recorder(&recorder, || {
        for (i, client) in clients.iter().enumerate() {
            exp.export(&[flow(
                client,
                &srv,
                "10.0.0.1",
                "10.0.0.2",
                100 + i as u64,
                1,
            )]);
        }
        // Again, through the cache.
        exp.export(&[flow(&clients[4], &srv, "10.0.0.1", "10.0.0.2", 1000, 1)]);
    });
    let c = counters(&snap);
    let pods = &c[names::POD_BYTES];
    assert_eq!(
        pods.len(),
        3,
        "two real label sets and one folded: {pods:?}"
    );
    assert_eq!(
        pods[&pod_labels(["c0", "ns", "srv", "ns", "z1", "z2"])],
        100
    );
    assert_eq!(
        pods[&pod_labels(["c1", "ns", "srv", "ns", "z1", "z2"])],
        101
    );
    assert_eq!(
        pods[&pod_labels(["other", "other", "other", "other", "z1", "z2"])],
        102 + 103 + 104 + 1000
    );
    // Totals stay exact at every level.
    let total = 100 + 101 + 102 + 103 + 104 + 1000;
    for name in [
        names::POD_BYTES,
        names::POD_CROSS_ZONE_BYTES,
        names::WORKLOAD_BYTES,
        names::ZONE_BYTES,
    ] {
        assert_eq!(c[name].values().sum::<u64>(), total, "{name}");
    }
    assert_eq!(c[names::WORKLOAD_BYTES].len(), 2);
    let folds = &c[names::FOLDED_FLOWS];
    assert_eq!(folds[&l(&[("level", "pod")])], 4);
    assert_eq!(folds[&l(&[("level", "workload")])], 5);
    assert!(!folds.contains_key(&l(&[("level", "zone")])));
}

#[test]
fn zero_flows_create_series_at_zero() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let exp = exporter(PrometheusConfig::default());
    let a = pod("a", "ns", "a", "z1", "r");
    let b = pod("b", "ns", "b", "z2", "r");
    metrics::with_local_recorder(&recorder, || {
        exp.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 0, 0)]);
    });
    let c = counters(&snap);
    for name in [
        names::POD_BYTES,
        names::POD_CROSS_ZONE_BYTES,
        names::WORKLOAD_CROSS_ZONE_BYTES,
        names::ZONE_BYTES,
        names::CROSS_ZONE_COST,
    ] {
        assert!(!c[name].is_empty(), "{name} exists");
        assert!(c[name].values().all(|v| *v == 0), "{name} is zero");
    }
}

#[test]
fn equal_endpoints_behind_different_arcs_share_series() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let exp = exporter(PrometheusConfig::default());
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..3 {
            // Fresh Arcs each time, as after a resolver snapshot rebuild.
            let a = pod("a", "ns", "a", "z1", "r");
            let b = pod("b", "ns", "b", "z2", "r");
            exp.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 10, 1)]);
        }
    });
    let c = counters(&snap);
    assert_eq!(
        c[names::POD_BYTES],
        BTreeMap::from([(pod_labels(["a", "ns", "b", "ns", "z1", "z2"]), 30)])
    );
}

/// The recorder the binaries install, with the exporter's idle timeout.
fn expiring_recorder(expiry: SeriesExpiry) -> (Recorder, RecorderHandle) {
    let recorder = RecorderBuilder::new()
        .counter_idle_timeout(expiry.idle_timeout())
        .build()
        .expect("valid recorder");
    let handle = recorder.handle();
    (recorder, handle)
}

fn render_at(handle: &RecorderHandle, now: Instant) -> String {
    let mut text = String::new();
    handle.render_at(now, &mut text);
    text
}

#[test]
fn a_zone_pair_dropped_while_idle_keeps_its_cost_exact_when_it_returns() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let expiry = SeriesExpiry::new(Duration::from_secs(600)).unwrap();
    let exp = exporter(PrometheusConfig {
        expiry,
        ..PrometheusConfig::default()
    });
    let gone = pod("gone", "ns", "a", "z1", "r");
    let b = pod("b", "ns", "b", "z2", "r");
    let fresh = pod("fresh", "ns", "a", "z1", "r");
    let is_live = |e: &Endpoint| &*e.name != "gone";
    let t0 = Instant::now();
    exp.upkeep(t0, &is_live);
    // $0.01/GB per side: one microdollar per 100 kB. 150 kB: 1 and a half.
    metrics::with_local_recorder(&recorder, || {
        exp.export(&[flow(&gone, &b, "10.0.0.1", "10.0.0.2", 150_000, 1)]);
    });
    // The pair's pod is gone: its handles, then the zone label set, drop.
    let stats = exp.upkeep(t0 + expiry.idle_timeout(), &is_live);
    assert_eq!(stats.pairs_evicted, 1);
    assert_eq!(stats.series[2], 0, "the zone label set was dropped");
    // Another pod of the zone pair: 60 kB more, 210 kB in all.
    metrics::with_local_recorder(&recorder, || {
        exp.export(&[flow(&fresh, &b, "10.0.0.3", "10.0.0.2", 60_000, 1)]);
    });
    let c = counters(&snap);
    let cost: u64 = c[names::CROSS_ZONE_COST].values().sum();
    assert_eq!(cost, 2 * 2, "floor(210 kB x price) on each side, not 1 + 0");
}

#[test]
fn slow_cost_counters_of_active_pairs_never_expire() {
    let expiry = SeriesExpiry::new(Duration::from_secs(600)).unwrap();
    let (recorder, handle) = expiring_recorder(expiry);
    let exp = exporter(PrometheusConfig {
        expiry,
        ..PrometheusConfig::default()
    });
    let a = pod("a", "ns", "a", "z1", "r");
    let b = pod("b", "ns", "b", "z2", "r");
    // 10 kB per window at $0.01/GB: a whole microdollar (100 kB) only
    // after ten windows, long after the idle timeout.
    let t0 = Instant::now();
    exp.upkeep(t0, &|_| true);
    let mut now = t0;
    for _ in 0..12 {
        metrics::with_local_recorder(&recorder, || {
            exp.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 10_000, 7)]);
        });
        now += expiry.upkeep_interval();
        exp.upkeep(now, &|_| true);
        render_at(&handle, now);
    }
    assert!(now - t0 >= expiry.idle_timeout() * 2);
    let text = render_at(&handle, now);
    for side in ["sending", "receiving"] {
        assert_eq!(
            sample(
                &text,
                names::CROSS_ZONE_COST,
                &[&format!("side=\"{side}\"")]
            ),
            Some(1),
            "120 kB is one whole microdollar per side:\n{text}"
        );
    }
    assert_eq!(sample(&text, names::POD_BYTES, &[]), Some(120_000));
}

/// Captures events (level, fields) from `tracing`.
#[derive(Default)]
struct Capture(std::sync::Mutex<Vec<(tracing::Level, BTreeMap<String, String>)>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields<'a>(&'a mut BTreeMap<String, String>);
        impl tracing::field::Visit for Fields<'_> {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.insert(f.name().to_string(), format!("{v:?}"));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.insert(f.name().to_string(), v.to_string());
            }
        }
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn logs_recorded_cross_zone_traffic_at_debug() {
    let capture = Arc::new(Capture::default());
    let exp = exporter(PrometheusConfig::default());
    let a = pod("a-1", "ns", "a", "z1", "r");
    let b = pod("b-1", "ns", "b", "z2", "r");
    let a2 = pod("a-2", "ns", "a", "z1", "r");
    let recorder = DebuggingRecorder::new();
    tracing::subscriber::with_default(capture.clone(), || {
        metrics::with_local_recorder(&recorder, || {
            exp.export(&[
                flow(&a, &b, "10.0.0.1", "10.0.0.2", 4096, 3),
                flow(&a, &a2, "10.0.0.1", "10.0.0.3", 10, 1),
            ]);
        })
    });
    let events = capture.0.lock().unwrap();
    let recorded: Vec<_> = events
        .iter()
        .filter(|(_, f)| {
            f.get("message").map(String::as_str) == Some("Recorded cross-zone traffic")
        })
        .collect();
    assert_eq!(
        recorded.len(),
        1,
        "only the cross-zone flow is logged: {events:?}"
    );
    let (level, fields) = recorded[0];
    assert_eq!(*level, tracing::Level::DEBUG);
    assert_eq!(fields["src"], "a-1");
    assert_eq!(fields["dst"], "b-1");
    assert_eq!(fields["src_zone"], "z1");
    assert_eq!(fields["dst_zone"], "z2");
    assert_eq!(fields["bytes"], "4096");
}

#[test]
fn rejects_bad_config() {
    assert_eq!(
        SeriesExpiry::new(Duration::ZERO),
        Err(PrometheusConfigError::ZeroIdleTimeout)
    );
    let err = PrometheusExporter::new(PrometheusConfig {
        limits: CardinalityLimits {
            workload_pairs: 0,
            ..CardinalityLimits::default()
        },
        ..PrometheusConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        err,
        PrometheusConfigError::ZeroLimit {
            level: SeriesLevel::Workload
        }
    );
    let e = SeriesExpiry::new(Duration::from_secs(600)).unwrap();
    assert_eq!(e.handle_ttl(), Duration::from_secs(300));
    assert_eq!(e.upkeep_interval(), Duration::from_secs(150));
}

/// The value of the first rendered sample of `name` whose line contains
/// every one of `needles`.
fn sample(text: &str, name: &str, needles: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| needles.iter().all(|n| line.contains(n)))
        .and_then(|line| line.rsplit(' ').next())
        .map(|v| v.parse().expect("integer counter"))
}

#[test]
fn gone_pairs_expire_live_pairs_stay_and_nothing_is_lost() {
    let expiry = SeriesExpiry::new(Duration::from_secs(600)).unwrap();
    let (recorder, handle) = expiring_recorder(expiry);
    let exp = exporter(PrometheusConfig {
        expiry,
        ..PrometheusConfig::default()
    });
    let live_a = pod("live-a", "ns", "a", "z1", "r");
    let live_b = pod("live-b", "ns", "b", "z2", "r");
    let gone_c = pod("gone-c", "ns", "c", "z1", "r");
    let is_live = |e: &Endpoint| &*e.name != "gone-c";

    let t0 = Instant::now();
    exp.upkeep(t0, &is_live);
    metrics::with_local_recorder(&recorder, || {
        exp.export(&[
            flow(&live_a, &live_b, "10.0.0.1", "10.0.0.2", 111, 1),
            flow(&gone_c, &live_b, "10.0.0.3", "10.0.0.2", 222, 2),
        ]);
    });
    let text = render_at(&handle, t0);
    assert_eq!(
        sample(&text, names::POD_BYTES, &["src_pod=\"live-a\""]),
        Some(111)
    );
    assert_eq!(
        sample(&text, names::POD_BYTES, &["src_pod=\"gone-c\""]),
        Some(222)
    );

    // Three idle timeouts of upkeep and scrapes, no traffic.
    let stop = t0 + expiry.idle_timeout() * 3;
    let mut now = t0;
    let mut evicted = 0;
    let mut kept = 0;
    let mut gone_seen_until = None;
    while now < stop {
        now += expiry.upkeep_interval();
        let stats = exp.upkeep(now, &is_live);
        evicted += stats.pairs_evicted;
        kept += stats.pairs_kept_alive;
        let text = render_at(&handle, now);
        if text.contains("src_pod=\"gone-c\"") {
            gone_seen_until = Some(now);
        }
    }
    assert_eq!(evicted, 1, "the gone pair's handles were dropped once");
    assert!(kept > 0);
    // Rendered until one idle timeout after it was last seen active (at
    // the scrape at t0), gone one upkeep interval later.
    assert_eq!(gone_seen_until, Some(t0 + expiry.idle_timeout()));
    let text = render_at(&handle, now);
    assert_eq!(
        sample(&text, names::POD_BYTES, &["src_pod=\"live-a\""]),
        Some(111),
        "an idle pair of live pods keeps its series:\n{text}"
    );
    assert_eq!(
        sample(&text, names::POD_CROSS_ZONE_BYTES, &["src_pod=\"live-a\""]),
        Some(111)
    );
    assert_eq!(
        sample(&text, names::POD_BYTES, &["src_pod=\"gone-c\""]),
        None,
        "{text}"
    );
    assert_eq!(
        sample(&text, names::WORKLOAD_BYTES, &["src_workload=\"c\""]),
        None
    );

    // Traffic for the expired pair is counted again, not lost into a
    // removed handle; the live pair keeps counting on its series.
    metrics::with_local_recorder(&recorder, || {
        exp.export(&[
            flow(&gone_c, &live_b, "10.0.0.3", "10.0.0.2", 7, 1),
            flow(&live_a, &live_b, "10.0.0.1", "10.0.0.2", 9, 1),
        ]);
    });
    let text = render_at(&handle, now);
    assert_eq!(
        sample(&text, names::POD_BYTES, &["src_pod=\"gone-c\""]),
        Some(7)
    );
    assert_eq!(
        sample(&text, names::POD_BYTES, &["src_pod=\"live-a\""]),
        Some(120)
    );
    // The zone pair z1 -> z2 is shared by both pairs; it stayed alive.
    assert_eq!(
        sample(
            &text,
            names::ZONE_BYTES,
            &["src_zone=\"z1\"", "dst_zone=\"z2\""]
        ),
        Some(111 + 222 + 7 + 9)
    );
}
