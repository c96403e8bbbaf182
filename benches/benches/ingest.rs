//! Aggregator ingest: the core path (replay check + counting-once rule +
//! resolution + export) measured by criterion on one thread, then a load run
//! of simulated agents over real gRPC on loopback against an aggregator
//! whose server runtime has one worker thread.
//!
//! `cargo bench -p netscope-benches --bench ingest`. Environment knobs for
//! the load run: `INGEST_AGENTS` (default 500), `INGEST_SAMPLES` (200 per
//! report), `INGEST_ROUNDS` (20 reports per agent).
//!
//! With `INGEST_REPLICAS` (e.g. `1,2,4`) the load run is instead made
//! against that many `netscope-aggregator` processes on loopback (the
//! release binary next to the bench, or `INGEST_AGGREGATOR_BIN`), loaded
//! with a static topology of the simulated cluster; each simulated agent
//! picks its replica through a `ReplicaSink` (rendezvous hashing), and each
//! replica's CPU is read from /proc.

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
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        let mut c = Criterion::default().configure_from_args();
        core_path(&mut c);
        return;
    }
    if let Ok(list) = std::env::var("INGEST_REPLICAS") {
        for n in list
            .split(',')
            .filter_map(|x| x.trim().parse::<usize>().ok())
        {
            replicas::load(n);
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    core_path(&mut c);
    c.final_summary();
    grpc_load();
}

/// The load run against N aggregator processes.
mod replicas {
    use super::*;
    use netscope::transport::replicas::{ReplicaConfig, ReplicaSink};
    use std::io::{Read, Write};
    use std::process::{Child, Command, Stdio};

    /// The simulated cluster as a static topology file.
    fn topology(nodes: u32) -> String {
        let mut t = String::from("nodes:\n");
        for n in 0..nodes {
            t += &format!(
                "  - {{name: node-{n}, zone: zone-{}, ips: [172.16.{}.{}]}}\n",
                n % 3,
                n / 250,
                n % 250 + 1
            );
        }
        t += "pods:\n";
        for n in 0..nodes {
            for p in 0..PODS_PER_NODE {
                t += &format!(
                    "  - {{name: pod-{n}-{p}, namespace: default, node: node-{n}, ips: [{}]}}\n",
                    pod_ip(n, p)
                );
            }
        }
        t
    }

    fn bin() -> std::path::PathBuf {
        if let Ok(b) = std::env::var("INGEST_AGGREGATOR_BIN") {
            return b.into();
        }
        // target/release/deps/ingest-<hash> -> target/release
        let exe = std::env::current_exe().expect("bench path");
        exe.parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .join("netscope-aggregator")
    }

    /// CPU time of every thread of process `pid`.
    fn process_cpu(pid: u32) -> Duration {
        let mut total = 0u64;
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in dir.flatten() {
                let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Duration::from_nanos(total)
    }

    fn ready(port: u16) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200")
    }

    struct Replica {
        child: Child,
        port: u16,
    }

    impl Drop for Replica {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn load(n: usize) {
        let agents = env("INGEST_AGENTS", 5000);
        let per = env("INGEST_SAMPLES", 200);
        let rounds = env("INGEST_ROUNDS", 4);
        let dir = std::env::temp_dir().join(format!("netscope-ingest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let topo = dir.join("topology.yaml");
        std::fs::write(&topo, topology(agents)).expect("write topology");
        let bin = bin();
        assert!(
            bin.is_file(),
            "{} is missing: cargo build --release -p netscope-aggregator",
            bin.display()
        );
        let mut reps = Vec::new();
        for i in 0..n {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let child = Command::new(&bin)
                .args(["--listen-addr", &format!("127.0.0.1:{port}")])
                .arg("--topology")
                .arg(&topo)
                .arg("--allow-any-peer-node")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("replica-{i}.log"))).expect("log"))
                .spawn()
                .expect("start netscope-aggregator");
            reps.push(Replica { child, port });
        }
        for r in &mut reps {
            let end = Instant::now() + Duration::from_secs(120);
            while !ready(r.port) {
                assert!(
                    matches!(r.child.try_wait(), Ok(None)),
                    "a replica exited; logs in {}",
                    dir.display()
                );
                assert!(Instant::now() < end, "a replica never became ready");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let list = reps
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect::<Vec<_>>()
            .join(",");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("agents")
            .enable_all()
            .build()
            .expect("client runtime");
        let all: Vec<Vec<Report>> = (0..agents)
            .map(|a| {
                let s = samples(a, agents, per);
                (1..=u64::from(rounds))
                    .map(|seq| report(a, seq, s.clone()))
                    .collect()
            })
            .collect();
        let cpu0: Vec<Duration> = reps.iter().map(|r| process_cpu(r.child.id())).collect();
        let t0 = Instant::now();
        let per_replica = rt.block_on(async {
            let mut tasks = Vec::new();
            for (a, reports) in all.into_iter().enumerate() {
                let mut c = ReplicaConfig::new(list.clone(), format!("node-{a}"));
                c.client.request_timeout = Duration::from_secs(120);
                let sink = ReplicaSink::new(c).expect("replica sink");
                tasks.push(tokio::spawn(async move {
                    let mut samples = 0u64;
                    for r in &reports {
                        while let Err(e) = sink.send(r).await {
                            eprintln!("retry: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        samples += r.samples.len() as u64;
                    }
                    (sink.current().await, samples)
                }));
            }
            let mut by: std::collections::BTreeMap<u16, (u32, u64)> = Default::default();
            for t in tasks {
                let (addr, samples) = t.await.expect("agent task");
                let e = by.entry(addr.map_or(0, |a| a.port())).or_default();
                e.0 += 1;
                e.1 += samples;
            }
            by
        });
        let wall = t0.elapsed();
        let total: u64 = per_replica.values().map(|v| v.1).sum();
        println!();
        println!(
            "ingest, {n} aggregator process(es) on loopback: {agents} agents x {per} samples x {rounds} reports = {total} samples in {:.2} s -> {:.0} samples/s in all",
            wall.as_secs_f64(),
            total as f64 / wall.as_secs_f64()
        );
        for (i, r) in reps.iter().enumerate() {
            let cpu = process_cpu(r.child.id()).saturating_sub(cpu0[i]);
            let (ag, sm) = per_replica.get(&r.port).copied().unwrap_or_default();
            let st = std::fs::read_to_string(format!("/proc/{}/status", r.child.id()))
                .unwrap_or_default();
            let mib = |key: &str| {
                st.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
                    .map_or(0, |k| k / 1024)
            };
            println!(
                "  replica {i}: {ag} agents, {sm} samples, {:.0} samples/s, CPU {:.2} s -> {:.0} samples per CPU-second, RSS {} MiB at the end (peak {} MiB, topology load included)",
                sm as f64 / wall.as_secs_f64(),
                cpu.as_secs_f64(),
                sm as f64 / cpu.as_secs_f64().max(1e-9),
                mib("VmRSS"),
                mib("VmHWM")
            );
        }
        drop(reps);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
