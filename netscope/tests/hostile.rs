//! Hostile inputs of issue 12 (rows 1-7, 11-13), against a real gRPC server
//! on loopback while a valid agent reports alongside: each hostile input is
//! refused or absorbed with a clear status and a counter, the server keeps
//! serving, and the valid agent's counts stay exact.
//!
//! Loopback addresses stand in for nodes: 127.0.0.1 is node-a (the valid
//! agent), 127.0.0.3 is node-b, 127.0.0.2 is no node at all.
#![cfg(feature = "grpc")]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use common::{ip, CountingExporter, FakeCollector, Harness};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use netscope::aggregate::{DedupConfig, OTHER_NODE};
use netscope::report::{Reporter, ReporterConfig};
use netscope::transport::client::{ClientConfig, GrpcSink};
use netscope::transport::convert::{report_to_proto, time_to_nanos};
use netscope::transport::pb;
use netscope::transport::server::{serve, HttpEndpoints, ServeError, ServerConfig};
use netscope::{
    Aggregator, Counters, Direction, FlowKey, FlowSample, InstanceId, MemoryResolver, Report,
};
use tonic::Code;

const NODE_A: &str = "127.0.0.1";
const NOT_A_NODE: &str = "127.0.0.2";
const NODE_B: &str = "127.0.0.3";

fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let r = DebuggingRecorder::new();
        let s = r.snapshotter();
        r.install().expect("the only recorder of this test binary");
        s
    })
}

type SeriesKey = (String, Vec<(String, String)>);

/// Counter totals since the start. `DebuggingRecorder` snapshots reset its
/// counters, so every snapshot is added up here (the tests of this binary
/// run concurrently and share it).
fn totals() -> std::sync::MutexGuard<'static, std::collections::HashMap<SeriesKey, u64>> {
    static ACC: OnceLock<std::sync::Mutex<std::collections::HashMap<SeriesKey, u64>>> =
        OnceLock::new();
    let mut acc = ACC
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (k, _, _, v) in snapshotter().snapshot().into_vec() {
        if let DebugValue::Counter(c) = v {
            let labels = k
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            *acc.entry((k.key().name().to_owned(), labels)).or_default() += c;
        }
    }
    acc
}

/// Total of counter `name` over the series whose label `key` is `value`.
fn counter(name: &str, key: &str, value: &str) -> u64 {
    totals()
        .iter()
        .filter(|((n, labels), _)| n == name && labels.iter().any(|(k, v)| k == key && v == value))
        .map(|(_, v)| *v)
        .sum()
}

/// Series of counter `name`.
fn series(name: &str) -> Vec<Vec<(String, String)>> {
    totals()
        .keys()
        .filter(|(n, _)| n == name)
        .map(|(_, labels)| labels.clone())
        .collect()
}

fn rejected(reason: &str) -> u64 {
    counter(
        "netscope_aggregator_rejected_reports_total",
        "reason",
        reason,
    )
}

fn dropped(reason: &str) -> u64 {
    counter(
        "netscope_aggregator_dropped_samples_total",
        "reason",
        reason,
    )
}

/// The common test cluster, plus node-b's loopback address.
fn resolver() -> Arc<MemoryResolver> {
    let mut r = common::cluster();
    r.add_node(ip(NODE_B), "node-b", "zone-2");
    Arc::new(r)
}

fn sample(src: &str, dst: &str, dir: Direction, bytes: u64, packets: u64) -> FlowSample {
    FlowSample {
        key: FlowKey::new(ip(src), ip(dst), dir),
        counters: Counters::new(bytes, packets),
    }
}

/// A report with a 10 s window that ended a second ago.
fn report(node: &str, instance: u8, seq: u64, samples: Vec<FlowSample>) -> pb::FlowReport {
    let end = SystemTime::now() - Duration::from_secs(1);
    report_to_proto(&Report {
        node: node.into(),
        instance: InstanceId([instance; 16]),
        seq,
        window_start: end - Duration::from_secs(10),
        window_end: end,
        samples,
        overflow: Counters::default(),
        folded_flows: 0,
    })
}

/// A client whose connections come from `from`.
async fn client(
    server: SocketAddr,
    from: &str,
) -> pb::flow_service_client::FlowServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .expect("endpoint")
        .local_address(Some(ip(from)))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting from {from}: {e}"));
    pb::flow_service_client::FlowServiceClient::new(channel).max_encoding_message_size(usize::MAX)
}

/// What a hostile input must lead to.
struct Expect {
    /// `None`: acknowledged.
    code: Option<Code>,
    /// Text the status message must contain.
    message: &'static str,
    /// `(metric, label value, increase)`: rejected reports by reason
    /// (`rejected`), dropped samples by reason (`dropped`).
    counters: &'static [(&'static str, &'static str, u64)],
}

fn read(metric: &str, label: &str) -> u64 {
    match metric {
        "rejected" => rejected(label),
        "dropped" => dropped(label),
        other => panic!("unknown metric shorthand {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_or_absorbed_and_valid_counts_stay_exact() {
    let _ = snapshotter();
    let exporter = Arc::new(CountingExporter::default());
    let aggregator = Arc::new(Aggregator::new(
        resolver(),
        vec![exporter.clone()],
        DedupConfig {
            max_instances_per_node: 8,
            ..DedupConfig::default()
        },
    ));
    let server = Harness::start(
        "127.0.0.1:0".parse().expect("addr"),
        aggregator,
        ServerConfig::default(),
    )
    .await;
    let addr = server.addr;

    // The valid agent of node-a, reporting every 50 ms throughout.
    let valid_flows = vec![
        // pod -> external: node-a's view counts.
        FlowKey::new(ip("10.0.1.1"), ip("8.8.8.8"), Direction::FromPod),
        // a1 -> node-b's pod: node-a's view (the sender's) counts.
        FlowKey::new(ip("10.0.1.1"), ip("10.0.2.1"), Direction::FromPod),
        // external -> a1: node-a's view (the receiver's) counts.
        FlowKey::new(ip("8.8.8.8"), ip("10.0.1.1"), Direction::ToPod),
    ];
    let collector = FakeCollector::new(valid_flows.clone(), 40);
    let generated = collector.generated.clone();
    let mut rc = ReporterConfig::new("node-a");
    rc.interval = Duration::from_millis(50);
    let mut cc = ClientConfig::new(addr.to_string());
    cc.request_timeout = Duration::from_secs(30);
    let valid = Reporter::new(
        rc,
        Box::new(collector),
        Box::new(GrpcSink::new(&cc).expect("client")),
    );
    let valid_instance = valid.instance_id();
    let (stop_valid, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let valid_task = tokio::spawn(valid.run(async {
        let _ = stop_rx.await;
    }));

    // Row 4 needs the valid agent's instance to be known: wait for its
    // first report.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while exporter.total().bytes == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the valid agent's first report never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let future_end = SystemTime::now() + Duration::from_secs(24 * 3600);
    type Build = Box<dyn Fn() -> pb::FlowReport>;
    let cases: Vec<(&str, &str, Build, Expect)> = vec![
        (
            "row 1: a sample below an IP header per packet, next to a good one",
            NODE_B,
            Box::new(|| {
                report(
                    "node-b",
                    21,
                    1,
                    vec![
                        sample("10.0.2.1", "9.9.9.9", Direction::FromPod, 10, 1),
                        sample("10.0.2.1", "8.8.4.4", Direction::FromPod, 5000, 4),
                    ],
                )
            }),
            Expect {
                code: None,
                message: "",
                counters: &[("dropped", "below_ip_header", 1)],
            },
        ),
        (
            "row 1: every other per-sample fault, one each",
            NODE_B,
            Box::new(|| {
                let mut r = report(
                    "node-b",
                    21,
                    2,
                    vec![sample("10.0.2.1", "8.8.4.4", Direction::FromPod, 1000, 1); 6],
                );
                r.samples[0].src = vec![1, 2, 3, 4, 5];
                r.samples[1].family = 42;
                r.samples[2].direction = 7;
                r.samples[3].packets = 0;
                r.samples[4].bytes = 70_000;
                // samples[5] stays good: 1000 B count.
                r
            }),
            Expect {
                code: None,
                message: "",
                counters: &[
                    ("dropped", "address_length", 1),
                    ("dropped", "unknown_family", 1),
                    ("dropped", "unknown_direction", 1),
                    ("dropped", "bytes_without_packets", 1),
                    ("dropped", "above_max_packet", 1),
                ],
            },
        ),
        (
            "row 2: 60,000 empty samples (over the 50,000 limit, 120 kB)",
            NODE_B,
            Box::new(|| pb::FlowReport {
                samples: vec![pb::FlowSample::default(); 60_000],
                ..report("node-b", 22, 1, vec![])
            }),
            Expect {
                code: Some(Code::InvalidArgument),
                message: "60000 samples, over the limit of 50000",
                counters: &[("rejected", "too_many_samples", 1)],
            },
        ),
        (
            "row 2: a 5 MiB report (over the 4 MiB message limit)",
            NODE_B,
            Box::new(|| pb::FlowReport {
                samples: vec![
                    pb::FlowSample {
                        src: vec![0; 64 << 10],
                        ..pb::FlowSample::default()
                    };
                    80
                ],
                ..report("node-b", 22, 2, vec![])
            }),
            Expect {
                code: Some(Code::ResourceExhausted),
                message: "maximum message size",
                counters: &[("rejected", "oversize", 1)],
            },
        ),
        (
            "row 3: 16,384 samples of 1 PiB each",
            NODE_B,
            Box::new(|| {
                report(
                    "node-b",
                    23,
                    1,
                    vec![
                        sample(
                            "10.0.2.1",
                            "8.8.4.4",
                            Direction::FromPod,
                            1 << 50,
                            (1 << 50) / 1000
                        );
                        16_384
                    ],
                )
            }),
            Expect {
                code: Some(Code::InvalidArgument),
                message: "more than a node can carry",
                counters: &[("rejected", "implausible", 1)],
            },
        ),
        (
            "row 3: the same, again",
            NODE_B,
            Box::new(|| {
                report(
                    "node-b",
                    23,
                    2,
                    vec![
                        sample(
                            "10.0.2.1",
                            "8.8.4.4",
                            Direction::FromPod,
                            1 << 50,
                            (1 << 50) / 1000
                        );
                        16_384
                    ],
                )
            }),
            Expect {
                code: Some(Code::InvalidArgument),
                message: "more than a node can carry",
                counters: &[("rejected", "implausible", 1)],
            },
        ),
        (
            "row 4: the valid agent's instance id with sequence 2^63",
            NODE_A,
            Box::new(move || {
                let mut r = report(
                    "node-a",
                    0,
                    1 << 63,
                    vec![sample("10.0.1.1", "8.8.8.8", Direction::FromPod, 999, 1)],
                );
                r.agent_instance_id = valid_instance.as_bytes().to_vec();
                r
            }),
            Expect {
                code: Some(Code::InvalidArgument),
                message: "jumps more than 4096 ahead",
                counters: &[("rejected", "seq_jump", 1)],
            },
        ),
        (
            "row 6/7: a host that is no node reports for node-a",
            NOT_A_NODE,
            Box::new(|| {
                report(
                    "node-a",
                    27,
                    1,
                    vec![sample("10.0.1.1", "8.8.8.8", Direction::FromPod, 777, 1)],
                )
            }),
            Expect {
                code: Some(Code::PermissionDenied),
                message: "127.0.0.2 is not a known node address",
                counters: &[("rejected", "not_the_node", 1)],
            },
        ),
        (
            "row 7: node-b reports for node-a",
            NODE_B,
            Box::new(|| {
                report(
                    "node-a",
                    28,
                    1,
                    vec![sample("10.0.1.1", "8.8.8.8", Direction::FromPod, 777, 1)],
                )
            }),
            Expect {
                code: Some(Code::PermissionDenied),
                message: "127.0.0.3 is node \"node-b\"",
                counters: &[("rejected", "not_the_node", 1)],
            },
        ),
        (
            "row 12: node-b reports a to_pod observation of a pod on node-a",
            NODE_B,
            Box::new(|| {
                report(
                    "node-b",
                    32,
                    1,
                    vec![sample("10.0.3.1", "10.0.1.1", Direction::ToPod, 5000, 4)],
                )
            }),
            Expect {
                code: None,
                message: "",
                counters: &[("dropped", "wrong_node", 1)],
            },
        ),
        (
            "row 12: node-b reports a from_pod observation of a pod on node-a",
            NODE_B,
            Box::new(|| {
                report(
                    "node-b",
                    32,
                    2,
                    vec![sample("10.0.1.2", "8.8.8.8", Direction::FromPod, 5000, 4)],
                )
            }),
            Expect {
                code: None,
                message: "",
                counters: &[("dropped", "wrong_node", 1)],
            },
        ),
        (
            "row 13: a window ending a day in the future",
            NODE_B,
            Box::new(move || {
                let mut r = report(
                    "node-b",
                    33,
                    1,
                    vec![sample("10.0.2.1", "8.8.4.4", Direction::FromPod, 1000, 1)],
                );
                r.window_end_unix_nanos = time_to_nanos(future_end);
                r.window_start_unix_nanos = r.window_end_unix_nanos - 10_000_000_000;
                r
            }),
            Expect {
                code: Some(Code::InvalidArgument),
                message: "in the future",
                counters: &[("rejected", "future_window", 1)],
            },
        ),
    ];

    for (name, from, build, expect) in &cases {
        let before: Vec<u64> = expect.counters.iter().map(|(m, l, _)| read(m, l)).collect();
        let mut c = client(addr, from).await;
        let res = c.report(build()).await;
        match (&res, expect.code) {
            (Ok(ack), None) => {
                assert!(!ack.get_ref().duplicate, "{name}: acknowledged as a replay")
            }
            (Err(s), Some(code)) => {
                assert_eq!(s.code(), code, "{name}: {s:?}");
                assert!(
                    s.message().contains(expect.message),
                    "{name}: message {:?} lacks {:?}",
                    s.message(),
                    expect.message
                );
            }
            (res, want) => panic!("{name}: got {res:?}, wanted {want:?}"),
        }
        for ((m, l, n), b) in expect.counters.iter().zip(before) {
            assert_eq!(read(m, l), b + n, "{name}: {m}{{reason={l}}}");
        }
    }

    // Row 5/6: a flood of new instance ids for one node stays bounded per
    // node; made-up node names from a host that is no node are refused.
    let evicted_before = counter(
        "netscope_aggregator_instances_evicted_early_total",
        "reason",
        "per_node",
    );
    let mut c = client(addr, NODE_B).await;
    for i in 0..200u32 {
        let mut r = report("node-b", 0, 1, vec![]);
        r.agent_instance_id = [&i.to_be_bytes()[..], &[0xee; 12]].concat();
        r.overflow = Some(pb::Counters {
            bytes: 100,
            packets: 1,
        });
        c.report(r).await.expect("a new instance of node-b");
    }
    assert!(
        counter(
            "netscope_aggregator_instances_evicted_early_total",
            "reason",
            "per_node"
        ) >= evicted_before + 190,
        "node-b's instances were not bounded"
    );
    let not_the_node = rejected("not_the_node");
    let mut c = client(addr, NOT_A_NODE).await;
    for i in 0..300u32 {
        let mut r = report(&format!("made-up-{i}"), 0, 1, vec![]);
        r.agent_instance_id = [&i.to_be_bytes()[..], &[0xdd; 12]].concat();
        r.overflow = Some(pb::Counters {
            bytes: 100,
            packets: 1,
        });
        let s = c.report(r).await.expect_err("a made-up node");
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    }
    assert_eq!(rejected("not_the_node"), not_the_node + 300);
    for labels in series("netscope_aggregator_overflow_bytes_total") {
        for (k, v) in labels {
            assert!(
                k != "node" || v == "node-a" || v == "node-b" || v == OTHER_NODE,
                "overflow series for node {v:?}"
            );
        }
    }

    // Row 11: an agent whose buffer holds 60,000 flows (more than one
    // report may carry) splits them; every byte is counted once.
    let big_flows: Vec<FlowKey> = (0..60_000u32)
        .map(|i| {
            FlowKey::new(
                IpAddr::V4(std::net::Ipv4Addr::new(10, 201, (i >> 8) as u8, i as u8)),
                ip("9.9.9.9"),
                Direction::FromPod,
            )
        })
        .collect();
    let big = FakeCollector::new(big_flows.clone(), 1);
    let big_generated = big.generated.clone();
    let mut rc = ReporterConfig::new("node-a");
    rc.interval = Duration::from_millis(200);
    rc.max_buffered_flows = 200_000;
    let big = Reporter::new(
        rc,
        Box::new(big),
        Box::new(GrpcSink::new(&cc).expect("client")),
    );
    let (stop_big, rx) = tokio::sync::oneshot::channel::<()>();
    let big_task = tokio::spawn(big.run(async {
        let _ = rx.await;
    }));

    // Let the valid agent run out its rounds and the big agent's reports
    // arrive (a loaded debug build may take a while), then stop both.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let want: u64 = big_generated
            .lock()
            .expect("generated")
            .values()
            .map(|c| c.bytes)
            .sum();
        let got: u64 = big_flows
            .iter()
            .map(|k| {
                exporter
                    .get(&k.src.to_string(), "9.9.9.9", Direction::FromPod)
                    .bytes
            })
            .sum();
        if want > 0 && got >= want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "row 11: the big agent's reports did not arrive ({got} of {want} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_valid.send(());
    let _ = stop_big.send(());
    let summary = valid_task.await.expect("valid agent task");
    let big_summary = big_task.await.expect("big agent task");
    assert_eq!(
        summary.rejected,
        Counters::default(),
        "valid agent: {summary:?}"
    );
    assert_eq!(
        summary.unsent,
        Counters::default(),
        "valid agent: {summary:?}"
    );
    assert!(summary.reports_acked > 0, "valid agent: {summary:?}");
    assert_eq!(big_summary.rejected, Counters::default(), "{big_summary:?}");
    assert_eq!(big_summary.unsent, Counters::default(), "{big_summary:?}");
    assert!(big_summary.reports_acked >= 2, "not split: {big_summary:?}");

    // Exact counts: the valid agent's flows, the big agent's flows, and the
    // good samples the hostile reports carried.
    let generated = generated.lock().expect("generated").clone();
    for k in &valid_flows {
        let want = generated.get(k).copied().unwrap_or_default();
        assert!(
            want.bytes > 0,
            "the valid agent generated nothing for {k:?}"
        );
        assert_eq!(
            exporter.get(&k.src.to_string(), &k.dst.to_string(), k.direction),
            want,
            "valid agent's {k:?}"
        );
    }
    let big_generated = big_generated.lock().expect("generated").clone();
    let mut big_total = Counters::default();
    let mut big_counted = Counters::default();
    for k in &big_flows {
        big_total += big_generated.get(k).copied().unwrap_or_default();
        big_counted += exporter.get(&k.src.to_string(), "9.9.9.9", Direction::FromPod);
    }
    assert!(big_total.bytes > 0);
    assert_eq!(
        big_counted, big_total,
        "row 11: split reports lost or doubled bytes"
    );
    assert_eq!(
        exporter.get("10.0.2.1", "8.8.4.4", Direction::FromPod),
        Counters::new(6000, 5),
        "row 1: the good samples next to the bad ones"
    );
    assert_eq!(
        exporter.get("10.0.2.1", "9.9.9.9", Direction::FromPod),
        Counters::default()
    );
    assert_eq!(
        exporter.get("10.0.3.1", "10.0.1.1", Direction::ToPod),
        Counters::default(),
        "row 12: node-b's to_pod observation of node-a's pod"
    );
    assert_eq!(
        exporter.get("10.0.1.2", "8.8.8.8", Direction::FromPod),
        Counters::default(),
        "row 12: node-b's from_pod observation of node-a's pod"
    );
    server.stop().await;
}

/// Row 6 with the peer check off (a NAT'd setup): made-up node names fold
/// into one `node` label value instead of making series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_node_names_fold_into_one_label_value() {
    let _ = snapshotter();
    let exporter = Arc::new(CountingExporter::default());
    let server = Harness::start(
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(Aggregator::new(
            resolver(),
            vec![exporter.clone()],
            DedupConfig::default(),
        )),
        ServerConfig {
            verify_peer_node: false,
            ..ServerConfig::default()
        },
    )
    .await;
    let before = counter(
        "netscope_aggregator_overflow_bytes_total",
        "node",
        OTHER_NODE,
    );
    let mut c = client(server.addr, NOT_A_NODE).await;
    for i in 0..300u32 {
        let mut r = report(&format!("invented-{i}"), 0, 1, vec![]);
        r.agent_instance_id = [&i.to_be_bytes()[..], &[0xcc; 12]].concat();
        r.overflow = Some(pb::Counters {
            bytes: 100,
            packets: 1,
        });
        c.report(r).await.expect("accepted with the check off");
    }
    assert_eq!(
        counter(
            "netscope_aggregator_overflow_bytes_total",
            "node",
            OTHER_NODE
        ),
        before + 300 * 100
    );
    for labels in series("netscope_aggregator_overflow_bytes_total") {
        for (k, v) in labels {
            assert!(
                k != "node" || !v.starts_with("invented-"),
                "a series for made-up node {v:?}"
            );
        }
    }
    server.stop().await;
}

/// Row 13: settings that cannot work are refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_server_settings_are_refused_at_start() {
    for (name, config, want) in [
        (
            "max message bytes 0",
            ServerConfig {
                max_message_bytes: 0,
                ..ServerConfig::default()
            },
            "maximum message size of 0 bytes",
        ),
        (
            "no reports in flight",
            ServerConfig {
                max_reports_in_flight: 0,
                ..ServerConfig::default()
            },
            "max_reports_in_flight",
        ),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let agg = Arc::new(Aggregator::new(resolver(), vec![], DedupConfig::default()));
        match serve(listener, agg, config, HttpEndpoints::default(), async {}).await {
            Err(ServeError::Config { source }) => assert!(
                source.to_string().contains(want),
                "{name}: {source} lacks {want:?}"
            ),
            other => panic!("{name}: served anyway: {other:?}"),
        }
    }
}
