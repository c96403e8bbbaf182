//! Shared helpers of the integration tests: a fake collector, a counting
//! exporter, a small cluster for the resolver, a server harness.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::HashMap;
use std::net::IpAddr;
#[cfg(feature = "grpc")]
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
#[cfg(feature = "grpc")]
use std::time::Duration;

use netscope::aggregate::DedupConfig;
#[cfg(feature = "grpc")]
use netscope::transport::server::{serve, HttpEndpoints, ServerConfig};
use netscope::{
    Aggregator, CollectError, Collector, Counters, Direction, Drain, Exporter, FlowKey, FlowSample,
    MemoryResolver, ResolvedFlow,
};

pub fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
}

/// Sums exported flows per (src ip, dst ip, counted direction).
#[derive(Default)]
pub struct CountingExporter {
    pub flows: Mutex<HashMap<(IpAddr, IpAddr, Direction), Counters>>,
    pub batches: Mutex<Vec<Vec<ResolvedFlow>>>,
    pub keep_batches: bool,
}

impl CountingExporter {
    pub fn keeping_batches() -> Self {
        CountingExporter {
            keep_batches: true,
            ..Self::default()
        }
    }
    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for c in self.flows.lock().expect("exporter lock").values() {
            t += *c;
        }
        t
    }
    pub fn get(&self, src: &str, dst: &str, dir: Direction) -> Counters {
        self.flows
            .lock()
            .expect("exporter lock")
            .get(&(ip(src), ip(dst), dir))
            .copied()
            .unwrap_or_default()
    }
    pub fn snapshot(&self) -> HashMap<(IpAddr, IpAddr, Direction), Counters> {
        self.flows.lock().expect("exporter lock").clone()
    }
}

impl Exporter for CountingExporter {
    fn export(&self, flows: &[ResolvedFlow]) {
        let mut m = self.flows.lock().expect("exporter lock");
        for f in flows {
            *m.entry((f.src_ip, f.dst_ip, f.direction_counted))
                .or_default() += f.counters;
        }
        if self.keep_batches {
            self.batches
                .lock()
                .expect("exporter lock")
                .push(flows.to_vec());
        }
    }
}

/// A collector that generates traffic on every drain from a fixed list of
/// flows, remembering everything it handed out.
pub struct FakeCollector {
    flows: Vec<FlowKey>,
    round: u64,
    /// Everything drained so far, per key.
    pub generated: Arc<Mutex<HashMap<FlowKey, Counters>>>,
    /// Stop generating after this many drains (then drains are empty).
    pub max_rounds: u64,
}

impl FakeCollector {
    pub fn new(flows: Vec<FlowKey>, max_rounds: u64) -> Self {
        FakeCollector {
            flows,
            round: 0,
            generated: Arc::new(Mutex::new(HashMap::new())),
            max_rounds,
        }
    }
}

impl Collector for FakeCollector {
    fn drain(&mut self) -> Result<Drain, CollectError> {
        self.round += 1;
        let mut samples = Vec::new();
        if self.round <= self.max_rounds {
            let mut g = self.generated.lock().expect("generated lock");
            for (i, k) in self.flows.iter().enumerate() {
                let packets = 1 + (self.round + i as u64) % 7;
                let c = Counters::new(packets * 1000 + (i as u64 % 13), packets);
                *g.entry(*k).or_default() += c;
                samples.push(FlowSample {
                    key: *k,
                    counters: c,
                });
            }
        }
        Ok(Drain {
            samples,
            overflow: Counters::default(),
            capacity: 65536,
        })
    }
}

/// Pods on nodes in two zones; node-c is not monitored.
pub fn cluster() -> MemoryResolver {
    let mut r = MemoryResolver::new();
    r.add_pod(ip("10.0.1.1"), "a1", "default", "node-a", "zone-1")
        .add_pod(ip("10.0.1.2"), "a2", "default", "node-a", "zone-1")
        .add_pod(ip("10.0.2.1"), "b1", "default", "node-b", "zone-2")
        .add_pod(ip("10.0.3.1"), "c1", "default", "node-c", "zone-2")
        .add_node(ip("192.168.0.1"), "node-a", "zone-1")
        // The loopback tests' agent: reports for node-a come from here.
        .add_node(ip("127.0.0.1"), "node-a", "zone-1")
        .add_service(ip("10.96.0.10"), "svc", "default")
        .set_monitored(["node-a", "node-b"]);
    r
}

/// A running aggregator on loopback.
#[cfg(feature = "grpc")]
pub struct Harness {
    pub addr: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

#[cfg(feature = "grpc")]
impl Harness {
    /// Serves `aggregator` on `addr` (port 0 for any).
    pub async fn start(
        addr: SocketAddr,
        aggregator: Arc<Aggregator>,
        config: ServerConfig,
    ) -> Harness {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let http = HttpEndpoints::default();
        http.ready.store(true, std::sync::atomic::Ordering::Release);
        let task = tokio::spawn(async move {
            serve(listener, aggregator, config, http, async {
                let _ = rx.await;
            })
            .await
            .expect("server failed");
        });
        Harness {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Graceful stop: in-flight reports finish (counted and acknowledged).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server did not stop within 10 s")
                .expect("server task panicked");
        }
    }
}

pub fn aggregator(exporter: Arc<CountingExporter>) -> Arc<Aggregator> {
    Arc::new(Aggregator::new(
        Arc::new(cluster()),
        vec![exporter],
        DedupConfig::default(),
    ))
}
