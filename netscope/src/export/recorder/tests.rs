//! Tests of [`super`], apart from `recorder.rs` so that it reads as the code it ships.

use super::*;
use std::io::Write as _;
use std::process::{Command, Stdio};

fn recorder() -> Recorder {
    RecorderBuilder::new().build().expect("valid builder")
}

fn render(handle: &RecorderHandle, now: Instant) -> String {
    let mut out = String::new();
    handle.render_at(now, &mut out);
    out
}

#[test]
fn counters_and_gauges_grouped_with_help_and_type() {
    let rec = recorder();
    let handle = rec.handle();
    metrics::with_local_recorder(&rec, || {
        metrics::describe_counter!("requests_total", "Requests served.");
        metrics::counter!("requests_total", "code" => "200", "method" => "GET").increment(7);
        metrics::counter!("requests_total", "code" => "500", "method" => "GET").increment(2);
        metrics::counter!("requests_total", "code" => "200", "method" => "GET").increment(3);
        metrics::counter!("bare_total").absolute(41);
        metrics::counter!("bare_total").absolute(40);
        metrics::gauge!("temperature_celsius", "room" => "a").set(21.5);
        metrics::gauge!("temperature_celsius", "room" => "a").increment(1.0);
        metrics::gauge!("queue_depth").set(3.0);
        metrics::gauge!("queue_depth").decrement(5.0);
    });
    assert_eq!(
        render(&handle, Instant::now()),
        "# TYPE bare_total counter\n\
             bare_total 41\n\
             \n\
             # TYPE queue_depth gauge\n\
             queue_depth -2\n\
             \n\
             # HELP requests_total Requests served.\n\
             # TYPE requests_total counter\n\
             requests_total{code=\"200\",method=\"GET\"} 10\n\
             requests_total{code=\"500\",method=\"GET\"} 2\n\
             \n\
             # TYPE temperature_celsius gauge\n\
             temperature_celsius{room=\"a\"} 22.5\n\
             \n"
    );
    assert_eq!(handle.series(), 5);
}

#[test]
fn escapes_label_values_and_help_and_sanitizes_names() {
    let rec = recorder();
    let handle = rec.handle();
    metrics::with_local_recorder(&rec, || {
        metrics::describe_gauge!("odd.name-1", "Line one\nline \"two\" with a \\ backslash.");
        metrics::gauge!(
            "odd.name-1",
            "pod" => "a\"b\\c\nd",
            "1bad-key" => "plain"
        )
        .set(f64::INFINITY);
        metrics::gauge!("odd.name-1", "pod" => "x", "1bad-key" => "y").set(f64::NAN);
        metrics::gauge!("odd.name-1", "pod" => "z", "1bad-key" => "y").set(f64::NEG_INFINITY);
    });
    assert_eq!(
        render(&handle, Instant::now()),
        "# HELP odd_name_1 Line one\\nline \"two\" with a \\\\ backslash.\n\
             # TYPE odd_name_1 gauge\n\
             odd_name_1{pod=\"a\\\"b\\\\c\\nd\",_bad_key=\"plain\"} +Inf\n\
             odd_name_1{pod=\"x\",_bad_key=\"y\"} NaN\n\
             odd_name_1{pod=\"z\",_bad_key=\"y\"} -Inf\n\
             \n"
    );
}

#[test]
fn histograms_render_cumulative_buckets_sum_and_count() {
    let rec = RecorderBuilder::new()
        .histogram_buckets_for("size_bytes", &[100.0, 1000.0])
        .build()
        .expect("valid builder");
    let handle = rec.handle();
    let values = [0.001, 0.005, 0.2, 0.25, 3.0, 60.0];
    metrics::with_local_recorder(&rec, || {
        metrics::describe_histogram!("latency_seconds", "Latency.");
        let h = metrics::histogram!("latency_seconds", "op" => "send");
        // On a bound counts into that bucket (le is "less or equal").
        for v in values {
            h.record(v);
        }
        metrics::histogram!("size_bytes").record_many(500.0, 3);
        metrics::histogram!("size_bytes").record(5000.0);
    });
    let text = render(&handle, Instant::now());
    // The sum as the same additions in the same order give it.
    let sum = values.iter().fold(0.0, |a, v| a + v);
    assert!((sum - 63.456f64).abs() < 1e-9);
    assert_eq!(
        text,
        "# HELP latency_seconds Latency.\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_bucket{op=\"send\",le=\"0.005\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.01\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.025\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.05\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.1\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.25\"} 4\n\
             latency_seconds_bucket{op=\"send\",le=\"0.5\"} 4\n\
             latency_seconds_bucket{op=\"send\",le=\"1\"} 4\n\
             latency_seconds_bucket{op=\"send\",le=\"2.5\"} 4\n\
             latency_seconds_bucket{op=\"send\",le=\"5\"} 5\n\
             latency_seconds_bucket{op=\"send\",le=\"10\"} 5\n\
             latency_seconds_bucket{op=\"send\",le=\"+Inf\"} 6\n\
             latency_seconds_sum{op=\"send\"} SUM\n\
             latency_seconds_count{op=\"send\"} 6\n\
             \n\
             # TYPE size_bytes histogram\n\
             size_bytes_bucket{le=\"100\"} 0\n\
             size_bytes_bucket{le=\"1000\"} 3\n\
             size_bytes_bucket{le=\"+Inf\"} 4\n\
             size_bytes_sum 6500\n\
             size_bytes_count 4\n\
             \n"
        .replace("SUM", &sum.to_string())
    );
}

#[test]
fn idle_counters_expire_touched_ones_stay_gauges_never() {
    let idle = Duration::from_secs(60);
    let rec = RecorderBuilder::new()
        .counter_idle_timeout(idle)
        .build()
        .expect("valid builder");
    let handle = rec.handle();
    let t0 = Instant::now();
    let (busy, quiet) = metrics::with_local_recorder(&rec, || {
        metrics::gauge!("g").set(1.0);
        (
            metrics::counter!("c_total", "s" => "busy"),
            metrics::counter!("c_total", "s" => "quiet"),
        )
    });
    busy.increment(5);
    quiet.increment(9);
    // First seen at t0.
    assert_eq!(handle.upkeep_at(t0), 0);
    // Adding zero is activity.
    busy.increment(0);
    let text = render(&handle, t0 + idle);
    assert!(text.contains("c_total{s=\"quiet\"} 9\n"), "{text}");
    // One timeout after the last sighting: not yet idle *longer* than it.
    assert_eq!(handle.upkeep_at(t0 + idle), 0);
    let text = render(&handle, t0 + idle + Duration::from_secs(1));
    assert!(!text.contains("quiet"), "quiet expired:\n{text}");
    assert!(text.contains("c_total{s=\"busy\"} 5\n"), "{text}");
    assert!(text.contains("g 1\n"), "{text}");
    assert_eq!(handle.series(), 2);

    // The stale handle counts into nothing; registering again starts at zero.
    quiet.increment(1);
    let again = metrics::with_local_recorder(&rec, || metrics::counter!("c_total", "s" => "quiet"));
    again.increment(2);
    let text = render(&handle, t0 + idle * 2);
    assert!(text.contains("c_total{s=\"quiet\"} 2\n"), "{text}");

    // Everything idle: the whole counter family goes, header included.
    let late = t0 + idle * 4;
    assert_eq!(handle.upkeep_at(late), 2);
    assert_eq!(
        render(&handle, late),
        "# TYPE g gauge\ng 1\n\n",
        "gauges never expire"
    );
}

#[test]
fn without_timeout_nothing_expires_and_kinds_do_not_mix() {
    let rec = recorder();
    let handle = rec.handle();
    metrics::with_local_recorder(&rec, || {
        metrics::counter!("x_total").increment(1);
        // Another kind under the same name is refused, not rendered.
        metrics::gauge!("x_total").set(5.0);
        metrics::histogram!("x_total").record(5.0);
    });
    let text = render(&handle, Instant::now() + Duration::from_secs(86_400 * 365));
    assert_eq!(text, "# TYPE x_total counter\nx_total 1\n\n");
}

#[test]
fn render_into_appends_and_builder_rejects_bad_input() {
    let rec = recorder();
    let handle = rec.handle();
    metrics::with_local_recorder(&rec, || metrics::counter!("a_total").increment(1));
    let mut out = String::from("before\n");
    handle.render_into(&mut out);
    assert_eq!(out, "before\n# TYPE a_total counter\na_total 1\n\n");
    assert_eq!(handle.render(), "# TYPE a_total counter\na_total 1\n\n");

    for bad in [&[][..], &[1.0, 1.0], &[2.0, 1.0], &[1.0, f64::INFINITY]] {
        assert_eq!(
            RecorderBuilder::new()
                .histogram_buckets(bad)
                .build()
                .unwrap_err(),
            RecorderError::Buckets {
                metric: "default".into()
            },
            "{bad:?}"
        );
    }
    assert_eq!(
        RecorderBuilder::new()
            .counter_idle_timeout(Duration::ZERO)
            .build()
            .unwrap_err(),
        RecorderError::ZeroIdleTimeout
    );
}

#[test]
fn concurrent_updates_registrations_and_renders_lose_nothing() {
    let rec = Arc::new(
        RecorderBuilder::new()
            .counter_idle_timeout(Duration::from_secs(600))
            .build()
            .expect("valid builder"),
    );
    let handle = rec.handle();
    let threads: Vec<_> = (0..4)
            .map(|t| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    metrics::with_local_recorder(&*rec, || {
                        let shared = metrics::counter!("shared_total");
                        for i in 0..10_000u64 {
                            shared.increment(1);
                            if i % 100 == 0 {
                                // New series while others render.
                                metrics::counter!("own_total", "t" => t.to_string(), "i" => i.to_string())
                                    .increment(i);
                            }
                            metrics::histogram!("h_seconds").record(0.01);
                        }
                    });
                })
            })
            .collect();
    let mut renders = 0;
    while threads.iter().any(|t| !t.is_finished()) {
        let _ = handle.render();
        renders += 1;
    }
    for t in threads {
        t.join().expect("updater");
    }
    let text = handle.render();
    assert!(text.contains("\nshared_total 40000\n"), "{text}");
    assert!(text.contains("\nh_seconds_count 40000\n"), "{text}");
    assert_eq!(text.matches("own_total{").count(), 4 * 100);
    assert!(text.contains("own_total{t=\"3\",i=\"9900\"} 9900\n"));
    assert!(renders > 0);
}

/// Sample lines (not comments, not blank), sorted.
fn samples(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    v.sort_unstable();
    v
}

/// The same calls through this recorder and `metrics-exporter-prometheus`
/// give the same samples and the same HELP/TYPE lines.
#[test]
fn counters_and_gauges_match_metrics_exporter_prometheus() {
    let ours = recorder();
    let theirs = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let record = || {
        metrics::describe_counter!("pod_bytes_total", "Bytes \"per\" pod.");
        for i in 0..50u64 {
            metrics::counter!(
                "pod_bytes_total",
                "src_pod" => format!("pod-{i}"),
                "note" => "quote \" and\nnewline"
            )
            .increment(i * 1000 + 7);
        }
        metrics::describe_gauge!("series", "Series per level.");
        metrics::gauge!("series", "level" => "pod").set(50.0);
        metrics::gauge!("series", "level" => "zone").set(0.25);
        metrics::gauge!("unlabelled").set(-3.5);
    };
    metrics::with_local_recorder(&ours, record);
    metrics::with_local_recorder(&theirs, record);
    let a = ours.handle().render();
    let b = theirs.handle().render();
    assert_eq!(samples(&a), samples(&b), "ours:\n{a}\ntheirs:\n{b}");
    let headers = |t: &str| {
        let mut v: Vec<String> = t
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    assert_eq!(headers(&a), headers(&b));
}

/// `promtool check metrics` accepts the output (and has no lint to
/// report) for counters, gauges and histograms with escaped labels.
#[test]
fn promtool_accepts_the_output() {
    const PROMTOOL: &str = "/usr/bin/promtool";
    if !std::path::Path::new(PROMTOOL).exists() {
        eprintln!(
            "SKIPPED promtool_accepts_the_output: {PROMTOOL} is missing (make deps installs it)"
        );
        return;
    }
    let rec = RecorderBuilder::new()
        .counter_idle_timeout(Duration::from_secs(600))
        .build()
        .expect("valid builder");
    metrics::with_local_recorder(&rec, || {
        metrics::describe_counter!("netscope_test_bytes_total", "Bytes.\nSecond line \\ here.");
        for i in 0..20u64 {
            metrics::counter!(
                "netscope_test_bytes_total",
                "pod" => format!("p\"{i}\\\n"),
                "zone" => "us-east-1a"
            )
            .increment(i);
        }
        metrics::describe_gauge!("netscope_test_series", "Series.");
        metrics::gauge!("netscope_test_series", "level" => "pod").set(20.0);
        metrics::gauge!("netscope_test_series", "level" => "inf").set(f64::INFINITY);
        metrics::describe_histogram!("netscope_test_latency_seconds", "Latency.");
        for v in [0.003, 0.07, 1.5, 42.0] {
            metrics::histogram!("netscope_test_latency_seconds", "op" => "send").record(v);
        }
    });
    let text = rec.handle().render();
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("netscope_test_bytes_total{").count(), 20);
    assert!(text.contains("netscope_test_latency_seconds_count{op=\"send\"} 4\n"));
}

#[test]
fn counters_saturate_instead_of_wrapping() {
    let rec = recorder();
    let handle = rec.handle();
    metrics::with_local_recorder(&rec, || {
        let c = metrics::counter!("huge_total");
        c.increment(u64::MAX - 5);
        c.increment(10);
        c.increment(1);
    });
    let out = render(&handle, Instant::now());
    assert!(
        out.contains(&format!("huge_total {}\n", u64::MAX)),
        "not saturated: {out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with(SATURATIONS_METRIC))
        .unwrap_or_else(|| panic!("no saturation count in {out}"));
    let n: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    assert_eq!(n, 2, "two saturated increments");
}
