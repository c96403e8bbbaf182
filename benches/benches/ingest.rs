//! Aggregator ingest: the core path (replay check + counting-once rule +
//! resolution + export) measured by criterion on one thread, then a load run
//! of simulated agents over real gRPC on loopback against an aggregator
//! whose server runtime has one worker thread.
//!
//! `cargo bench -p netscope-benches --bench ingest`. Environment knobs for
//! the load run: `INGEST_AGENTS` (default 500), `INGEST_SAMPLES` (200 per
//! report), `INGEST_ROUNDS` (20 reports per agent).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput};
use netscope::aggregate::DedupConfig;
use netscope::report::ReportSink;
use netscope::transport::client::{ClientConfig, GrpcSink};
use netscope::transport::server::{serve, HttpEndpoints, ServerConfig};
use netscope::{
    Aggregator, Counters, Direction, Exporter, FlowKey, FlowSample, IngestSink, InstanceId,
    MemoryResolver, Report, ResolvedFlow,
};

const PODS_PER_NODE: u32 = 20;

fn pod_ip(node: u32, pod: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        (node / 250) as u8,
        (node % 250) as u8,
        pod as u8 + 1,
    ))
}

/// A cluster of `nodes` nodes in three zones, 20 pods each.
fn cluster(nodes: u32) -> MemoryResolver {
    let mut r = MemoryResolver::new();
    for n in 0..nodes {
        let node = format!("node-{n}");
        let zone = format!("zone-{}", n % 3);
        for p in 0..PODS_PER_NODE {
            r.add_pod(
                pod_ip(n, p),
                &format!("pod-{n}-{p}"),
                "default",
                &node,
                &zone,
            );
        }
    }
    r
}

/// What the agent on `node` reports in one interval: a mix of the three
/// kinds the rule sees (the other view of pod->pod, the counted view of
/// pod->pod, pod->external).
fn samples(node: u32, nodes: u32, count: u32) -> Vec<FlowSample> {
    (0..count)
        .map(|i| {
            let local = pod_ip(node, i % PODS_PER_NODE);
            let peer = pod_ip((node + 1 + i) % nodes, (i / 3) % PODS_PER_NODE);
            let key = match i % 3 {
                0 => FlowKey::new(local, peer, Direction::FromPod),
                1 => FlowKey::new(peer, local, Direction::ToPod),
                _ => FlowKey::new(
                    local,
                    IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8)),
                    Direction::FromPod,
                ),
            };
            FlowSample {
                key,
                counters: Counters::new(1500 * u64::from(i % 9 + 1), u64::from(i % 9 + 1)),
            }
        })
        .collect()
}

fn report(node: u32, seq: u64, samples: Vec<FlowSample>) -> Report {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&node.to_be_bytes());
    Report {
        node: format!("node-{node}"),
        instance: InstanceId(id),
        seq,
        window_start: SystemTime::UNIX_EPOCH + Duration::from_secs(seq * 10),
        window_end: SystemTime::UNIX_EPOCH + Duration::from_secs(seq * 10 + 10),
        samples,
        overflow: Counters::default(),
        folded_flows: 0,
    }
}

/// Sums what it is given, as a cheap stand-in for a real exporter.
#[derive(Default)]
struct Summing {
    flows: AtomicU64,
    bytes: AtomicU64,
}

impl Exporter for Summing {
    fn export(&self, flows: &[ResolvedFlow]) {
        let b: u64 = flows.iter().map(|f| f.counters.bytes).sum();
        self.flows.fetch_add(flows.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(b, Ordering::Relaxed);
    }
}

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn core_path(c: &mut Criterion) {
    let agents = 500;
    let per = 200;
    let agg = Aggregator::new(
        Arc::new(cluster(agents)),
        vec![Arc::new(Summing::default())],
        DedupConfig::default(),
    );
    let reports: Vec<Report> = (0..agents)
        .map(|n| report(n, 1, samples(n, agents, per)))
        .collect();
    let mut g = c.benchmark_group("ingest_core");
    g.throughput(Throughput::Elements(u64::from(agents * per)));
    // One interval of the whole cluster: 500 reports x 200 samples.
    let mut seq = 1u64;
    g.bench_function("500_agents_x_200_samples", |b| {
        b.iter(|| {
            seq += 1;
            for r in &reports {
                let mut r = r.clone();
                r.seq = seq;
                black_box(agg.ingest(r, SystemTime::UNIX_EPOCH));
            }
        })
    });
    // The rule and resolution alone, without the replay check and cloning.
    g.bench_function("resolve_only", |b| {
        let mut out = Vec::with_capacity(per as usize);
        b.iter(|| {
            for r in &reports {
                out.clear();
                black_box(agg.resolve_report(r, &mut out));
            }
        })
    });
    g.finish();
}

/// CPU time of this process's live threads whose name starts with
/// `prefix` (from /proc/self/task/*/schedstat, nanoseconds on CPU).
fn thread_cpu(prefix: &str) -> Duration {
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        total += s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(total)
}

fn grpc_load() {
    let agents = env("INGEST_AGENTS", 500);
    let per = env("INGEST_SAMPLES", 200);
    let rounds = env("INGEST_ROUNDS", 20);
    let exporter = Arc::new(Summing::default());
    let agg: Arc<Aggregator> = Arc::new(Aggregator::new(
        Arc::new(cluster(agents)),
        vec![exporter.clone()],
        DedupConfig::default(),
    ));
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("agg-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sink: Arc<dyn IngestSink> = agg.clone();
    let server = server_rt.spawn(async move {
        serve(
            listener,
            sink,
            // 500 simulated nodes share 127.0.0.1: no peer-node check.
            ServerConfig {
                verify_peer_node: false,
                ..ServerConfig::default()
            },
            HttpEndpoints::default(),
            async {
                let _ = stop_rx.await;
            },
        )
        .await
    });

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("agents")
        .enable_all()
        .build()
        .expect("client runtime");
    // Reports are built before the clock starts.
    let all: Vec<Vec<Report>> = (0..agents)
        .map(|n| {
            let s = samples(n, agents, per);
            (1..=u64::from(rounds))
                .map(|seq| report(n, seq, s.clone()))
                .collect()
        })
        .collect();
    let cpu0 = thread_cpu("agg-server");
    let pcpu0 = thread_cpu("");
    let t0 = Instant::now();
    let acked = client_rt.block_on(async move {
        let mut tasks = Vec::new();
        for reports in all {
            let sink = {
                let mut c = ClientConfig::new(addr.to_string());
                c.request_timeout = Duration::from_secs(60);
                GrpcSink::new(&c).expect("client")
            };
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                for r in &reports {
                    // Each agent sends its next interval as soon as the
                    // previous one is acknowledged: intervals compressed.
                    loop {
                        match sink.send(r).await {
                            Ok(_) => break,
                            Err(e) => {
                                eprintln!("retry: {e}");
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                    n += r.samples.len() as u64;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("agent task");
        }
        total
    });
    let wall = t0.elapsed();
    let cpu = thread_cpu("agg-server") - cpu0;
    let pcpu = thread_cpu("").saturating_sub(pcpu0);
    let _ = stop_tx.send(());
    let _ = server_rt.block_on(server);
    let rate = acked as f64 / wall.as_secs_f64();
    let per_core = acked as f64 / cpu.as_secs_f64().max(1e-9);
    println!();
    println!("ingest over gRPC on loopback: {agents} agents x {per} samples x {rounds} reports = {acked} samples");
    println!(
        "  wall {:.2} s -> {:.0} samples/s ({:.0} reports/s)",
        wall.as_secs_f64(),
        rate,
        f64::from(agents * rounds) / wall.as_secs_f64()
    );
    println!(
        "  aggregator server thread CPU {:.2} s ({:.0}% of one core) -> {:.0} samples per CPU-second",
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        per_core
    );
    println!(
        "  whole process CPU (agents + server) {:.2} s",
        pcpu.as_secs_f64()
    );
    println!(
        "  exported {} flows, {} bytes (counted views only)",
        exporter.flows.load(Ordering::Relaxed),
        exporter.bytes.load(Ordering::Relaxed)
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    core_path(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    grpc_load();
}
