//! Exporter benchmarks (issue 6 targets, one core):
//!
//! - `render/*`: render `/metrics` with 100k pod-pair series; target
//!   <= 250 ms.
//!   - `netscope_100k_pod_pairs`: netscope's recorder
//!     (`netscope::export::recorder`, what the binaries install) with
//!     everything the exporter records for 100k pod pairs (bytes and
//!     packets, cross-zone twins, workload, zone and cost series).
//!   - `mep_100k_pod_pairs`: the same through `metrics-exporter-prometheus`
//!     0.18 (`PrometheusHandle::render`), the baseline. Both renders are
//!     checked to hold the same samples.
//!   - `mep_100k_bare_series`: 100k seed-metric series registered directly
//!     into `metrics-exporter-prometheus`, nothing else.
//!   - `floor_prerendered_lines`: the same lines written from prefixes
//!     formatted once, plus the values, from one flat vector. Not a
//!     recorder; a reference point.
//! - `update/*`: count 1M resolved flows (100k pairs seen 10 times each, in
//!   batches of 1000 like agent reports); target <= 1 s.
//!   - `baseline_counter_macro_per_flow`: the seed's approach, labels built
//!     and the counter looked up for every flow (two seed metrics only),
//!     into `metrics-exporter-prometheus`.
//!   - `netscope_steady_state`: the exporter with its handle cache warm,
//!     into netscope's recorder.
//!   - `mep_steady_state`: the same into `metrics-exporter-prometheus`.
//!   - `netscope_cold`: a fresh exporter and netscope recorder, so every
//!     pair is registered during the run.
//!
//! The machine these run on is shared, so every benchmark measures the
//! benchmark thread's own on-CPU time (`/proc/thread-self/schedstat`), which
//! is what "on one core" means, rather than wall-clock time that includes
//! waiting for a CPU. Each prints its wall-clock time too.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use metrics::Label;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use metrics_util::MetricKindMask;
use netscope::export::prometheus::{
    names, CardinalityLimits, PrometheusConfig, PrometheusExporter, POD_LABELS,
};
use netscope::export::recorder::{Recorder, RecorderBuilder};
use netscope::{Counters, Direction, Endpoint, EndpointKind, Exporter, ResolvedFlow, WorkloadKind};

const PAIRS: usize = 100_000;
const SRC_PODS: usize = 1_000;
const DST_PODS: usize = PAIRS / SRC_PODS;
const FLOWS: usize = 1_000_000;
const BATCH: usize = 1_000;
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// Nanoseconds this thread has spent on a CPU.
fn cpu_now() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat's first field");
    Duration::from_nanos(ns)
}

/// Runs `f` `iters` times; returns the on-CPU time and prints the mean wall time.
fn cpu_timed(name: &str, iters: u64, mut f: impl FnMut()) -> Duration {
    let (cpu, wall) = (cpu_now(), Instant::now());
    for _ in 0..iters {
        f();
    }
    let (cpu, wall) = (cpu_now() - cpu, wall.elapsed());
    eprintln!(
        "{name}: {iters} iterations, mean wall {:?}, mean on-CPU {:?}",
        wall / iters as u32,
        cpu / iters as u32
    );
    cpu
}

fn config() -> PrometheusConfig {
    PrometheusConfig {
        limits: CardinalityLimits {
            pod_pairs: PAIRS,
            ..CardinalityLimits::default()
        },
        ..PrometheusConfig::default()
    }
}

/// netscope's recorder, configured as the aggregator configures it.
fn recorder(config: &PrometheusConfig) -> Recorder {
    RecorderBuilder::new()
        .counter_idle_timeout(config.expiry.idle_timeout())
        .build()
        .expect("recorder")
}

/// The baseline: `metrics-exporter-prometheus`, as the aggregator used to
/// configure it.
fn mep_recorder(config: &PrometheusConfig) -> PrometheusRecorder {
    PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::COUNTER, Some(config.expiry.idle_timeout()))
        .build_recorder()
}

/// Sample lines of a text exposition, sorted.
fn sorted_samples(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    v.sort_unstable();
    v
}

fn pod(side: &str, i: usize) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        kind: EndpointKind::Pod,
        name: format!("{side}-{}-{i:05}", i / 10).into(),
        namespace: format!("ns-{}", i % 20).into(),
        workload: format!("{side}-{}", i / 10).into(),
        workload_kind: WorkloadKind::Deployment,
        node: format!("node-{}", i % 50).into(),
        zone: ZONES[i % ZONES.len()].into(),
        region: "us-east-1".into(),
    })
}

/// 100k distinct pairs; flow `k` uses pair `k % PAIRS`.
fn flows(n: usize) -> Vec<ResolvedFlow> {
    let srcs: Vec<_> = (0..SRC_PODS).map(|i| pod("client", i)).collect();
    let dsts: Vec<_> = (0..DST_PODS).map(|i| pod("server", i)).collect();
    let now = SystemTime::now();
    (0..n)
        .map(|k| {
            let pair = k % PAIRS;
            ResolvedFlow {
                timestamp: now,
                src_ip: "10.0.0.1".parse().expect("ip"),
                dst_ip: "10.0.0.2".parse().expect("ip"),
                src: srcs[pair / DST_PODS].clone(),
                dst: dsts[pair % DST_PODS].clone(),
                direction_counted: Direction::ToPod,
                counters: Counters::new(1_400 + (k as u64 % 1_000), 1 + (k as u64 % 3)),
            }
        })
        .collect()
}

fn seed_labels(f: &ResolvedFlow) -> Vec<Label> {
    let values = [
        f.src.pod_label(),
        f.src.namespace_label(),
        f.dst.pod_label(),
        f.dst.namespace_label(),
        f.src.zone_label(),
        f.dst.zone_label(),
    ];
    POD_LABELS
        .iter()
        .zip(values)
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}

/// Formats `v` in decimal into `buf`.
fn itoa(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

fn render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    let config = config();
    let pair_flows = flows(PAIRS);

    // Everything the exporter records for 100k pod pairs, into both recorders.
    let full = recorder(&config);
    let exporter = PrometheusExporter::new(config).expect("config");
    metrics::with_local_recorder(&full, || {
        for batch in pair_flows.chunks(BATCH) {
            exporter.export(batch);
        }
    });
    let full_handle = full.handle();
    let mep_full = mep_recorder(&config);
    let mep_exporter = PrometheusExporter::new(config).expect("config");
    metrics::with_local_recorder(&mep_full, || {
        for batch in pair_flows.chunks(BATCH) {
            mep_exporter.export(batch);
        }
    });
    let mep_handle = mep_full.handle();

    let text = full_handle.render();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let seed = text
        .lines()
        .filter(|l| l.starts_with("pod_network_traffic_bytes_total{"))
        .count();
    eprintln!(
        "render/netscope_100k_pod_pairs: {seed} pod pairs, {series} series, {} bytes",
        text.len()
    );
    assert_eq!(seed, PAIRS, "every pair got its own series");
    let mep_text = mep_handle.render();
    assert!(
        sorted_samples(&text) == sorted_samples(&mep_text),
        "netscope's recorder and metrics-exporter-prometheus render the same samples"
    );

    // The first renders after setup, one by one: a scrape does not get
    // criterion's warm-up.
    for i in 0..3 {
        cpu_timed(
            &format!("render/netscope_100k_pod_pairs first renders #{i}"),
            1,
            || {
                black_box(full_handle.render().len());
            },
        );
    }
    group.bench_function("netscope_100k_pod_pairs", |b| {
        b.iter_custom(|iters| {
            cpu_timed("render/netscope_100k_pod_pairs", iters, || {
                black_box(full_handle.render().len());
            })
        })
    });
    // The same, into a buffer kept from one render to the next.
    let mut buffer = String::new();
    group.bench_function("netscope_100k_pod_pairs_reused_buffer", |b| {
        b.iter_custom(|iters| {
            cpu_timed(
                "render/netscope_100k_pod_pairs_reused_buffer",
                iters,
                || {
                    buffer.clear();
                    full_handle.render_into(&mut buffer);
                    black_box(buffer.len());
                },
            )
        })
    });

    // Reference point: the same text from pre-formatted prefixes.
    let prerendered: Vec<(String, u64)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (prefix, value) = l.rsplit_once(' ')?;
            Some((format!("{prefix} "), value.parse().ok()?))
        })
        .collect();
    group.bench_function("floor_prerendered_lines", |b| {
        b.iter_custom(|iters| {
            cpu_timed("render/floor_prerendered_lines", iters, || {
                let mut out = String::with_capacity(text.len());
                for (prefix, value) in &prerendered {
                    out.push_str(prefix);
                    out.push_str(itoa(*value, &mut [0u8; 20]));
                    out.push('\n');
                }
                black_box(out.len());
            })
        })
    });

    // Baselines: metrics-exporter-prometheus.
    group.bench_function("mep_100k_pod_pairs", |b| {
        b.iter_custom(|iters| {
            cpu_timed("render/mep_100k_pod_pairs", iters, || {
                black_box(mep_handle.render().len());
            })
        })
    });
    drop((mep_exporter, mep_full));
    let bare = mep_recorder(&config);
    metrics::with_local_recorder(&bare, || {
        for f in &pair_flows {
            metrics::counter!(names::POD_BYTES, seed_labels(f)).increment(f.counters.bytes);
        }
    });
    let bare_handle = bare.handle();
    let lines = bare_handle.render().lines().count();
    eprintln!("render/mep_100k_bare_series: {lines} lines");
    group.bench_function("mep_100k_bare_series", |b| {
        b.iter_custom(|iters| {
            cpu_timed("render/mep_100k_bare_series", iters, || {
                black_box(bare_handle.render().len());
            })
        })
    });
    group.finish();
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(15));
    let config = config();
    let all = flows(FLOWS);

    let naive = mep_recorder(&config);
    group.bench_function("baseline_counter_macro_per_flow", |b| {
        b.iter_custom(|iters| {
            cpu_timed("update/baseline_counter_macro_per_flow", iters, || {
                metrics::with_local_recorder(&naive, || {
                    for f in &all {
                        metrics::counter!(names::POD_BYTES, seed_labels(f))
                            .increment(f.counters.bytes);
                        if f.is_cross_zone() {
                            metrics::counter!(names::POD_CROSS_ZONE_BYTES, seed_labels(f))
                                .increment(f.counters.bytes);
                        }
                    }
                })
            })
        })
    });

    let warm = recorder(&config);
    let exporter = PrometheusExporter::new(config).expect("config");
    exporter.upkeep(Instant::now(), &|_| true);
    metrics::with_local_recorder(&warm, || exporter.export(&all[..PAIRS]));
    group.bench_function("netscope_steady_state", |b| {
        b.iter_custom(|iters| {
            cpu_timed("update/netscope_steady_state", iters, || {
                metrics::with_local_recorder(&warm, || {
                    for batch in all.chunks(BATCH) {
                        exporter.export(batch);
                    }
                })
            })
        })
    });

    let mep_warm = mep_recorder(&config);
    let mep_exporter = PrometheusExporter::new(config).expect("config");
    mep_exporter.upkeep(Instant::now(), &|_| true);
    metrics::with_local_recorder(&mep_warm, || mep_exporter.export(&all[..PAIRS]));
    group.bench_function("mep_steady_state", |b| {
        b.iter_custom(|iters| {
            cpu_timed("update/mep_steady_state", iters, || {
                metrics::with_local_recorder(&mep_warm, || {
                    for batch in all.chunks(BATCH) {
                        mep_exporter.export(batch);
                    }
                })
            })
        })
    });
    drop((mep_exporter, mep_warm));

    group.bench_function("netscope_cold", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = recorder(&config);
                let exporter = PrometheusExporter::new(config).expect("config");
                total += cpu_timed("update/netscope_cold", 1, || {
                    metrics::with_local_recorder(&fresh, || {
                        for batch in all.chunks(BATCH) {
                            exporter.export(batch);
                        }
                    })
                });
                // Dropping 100k pairs' worth of handles is not part of the update.
                drop((exporter, fresh));
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, render, update);
criterion_main!(benches);
