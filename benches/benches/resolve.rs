//! Resolver benchmark: 1M lookups against 10k pods plus 1k custom CIDRs,
//! and the memory the Kubernetes index and its snapshot take for 10k pods.
//!
//! The pods go through the real path: API-shaped JSON -> k8s-openapi `Pod`
//! -> watcher events -> `KubeIndex` -> `ClusterSnapshot`. Custom endpoints
//! are parsed from a generated file in the seed format. Lookups go through
//! `LayeredResolver` (cluster first, then custom endpoints), as the
//! aggregator calls it.
//!
//! Run: `cargo bench -p netscope-benches --bench resolve`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;
use netscope::resolve::kube::{KubeIndex, KubeResolverConfig};
use netscope::resolve::{
    ClusterSnapshot, CustomEndpoints, LayeredResolver, Resolver, StaticResolver,
};
use serde_json::json;

/// Counts live heap bytes, to report what the index retains.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the counter is only
// bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; `ptr` came from this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const PODS: u32 = 10_000;
const NODES: u32 = 100;
const CUSTOM_CIDRS: u32 = 1_000;
const CUSTOM_IPS: u32 = 100;
const LOOKUPS: usize = 1_000_000;

/// Deterministic xorshift, so every run looks up the same addresses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn pod_ip6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn nodes() -> Vec<Node> {
    (0..NODES)
        .map(|i| {
            let zone = ["us-west-2a", "us-west-2b", "us-west-2c"][(i % 3) as usize];
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("node-{i:03}"), "uid": format!("node-uid-{i}"),
                             "resourceVersion": "1",
                             "labels": {"topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": "us-west-2",
                                        "kubernetes.io/hostname": format!("node-{i:03}")}},
                "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i).to_string()},
                                         {"type": "Hostname", "address": format!("node-{i:03}")}]}
            }))
            .unwrap_or_else(|e| panic!("node json: {e}"))
        })
        .collect()
}

fn pods() -> Vec<Pod> {
    (0..PODS)
        .map(|i| {
            let ns = format!("team-{:02}", i % 20);
            let (owner_kind, owner, name, hash) = match i % 10 {
                0 => ("StatefulSet", format!("db-{}", i % 50), format!("db-{}-{}", i % 50, i / 50), None),
                1 => ("DaemonSet", "netscope-agent".to_owned(), format!("netscope-agent-{i:05}"), None),
                2 => ("Job", format!("report-{}", 29_371_440 + i), format!("report-{}-x{i}", 29_371_440 + i), None),
                _ => {
                    let hash = format!("{:x}", 0x5f6d_7000 + i % 300);
                    let app = format!("svc-{}", i % 300);
                    ("ReplicaSet", format!("{app}-{hash}"), format!("{app}-{hash}-{i:05}"), Some(hash))
                }
            };
            let mut ips = vec![json!({"ip": pod_ip(i).to_string()})];
            if i % 4 == 0 {
                ips.push(json!({"ip": pod_ip6(i).to_string()}));
            }
            let mut labels = json!({"app": owner});
            if let Some(h) = &hash {
                labels["pod-template-hash"] = json!(h);
            }
            if owner_kind == "DaemonSet" {
                labels["app.kubernetes.io/name"] = json!("netscope-agent");
            }
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "namespace": ns, "uid": format!("pod-uid-{i}"), "resourceVersion": "1",
                    "creationTimestamp": "2026-11-28T00:00:00Z", "labels": labels,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner,
                                          "uid": format!("owner-{i}"), "controller": true}],
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-27T00:00:00Z"},
                },
                "spec": {"nodeName": format!("node-{:03}", i % NODES),
                         "containers": [{"name": "app", "image": "registry.example/app:1",
                                         "env": [{"name": "A", "value": "b"}]}]},
                "status": {"phase": "Running", "podIP": pod_ip(i).to_string(), "podIPs": ips,
                           "startTime": "2026-11-28T00:00:01Z",
                           "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .unwrap_or_else(|e| panic!("pod json: {e}"))
        })
        .collect()
}

/// 1k CIDRs (nested /16, /20, /24, /28 inside 172.16.0.0/12, a tenth IPv6)
/// and 100 exact IPs, in the seed format.
fn custom_yaml() -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::from("endpoints:\n");
    let mut n = 0;
    while n < CUSTOM_CIDRS {
        let cidr = if n % 10 == 9 {
            format!("fd00:{:x}:{:x}::/48", rng.below(16), rng.below(4096))
        } else {
            let len = [16u32, 20, 24, 28][rng.below(4) as usize];
            let addr = 0xac10_0000u32 | (rng.next() as u32 & 0x000f_ffff);
            let net = addr & (u32::MAX << (32 - len));
            format!("{}/{len}", Ipv4Addr::from(net))
        };
        if seen.insert(cidr.clone()) {
            let _ = writeln!(out, "  - {{name: ext-{n}, namespace: external, zone: us-west-2{}, cidrs: [\"{cidr}\"]}}", ["a", "b", "c"][(n % 3) as usize]);
            n += 1;
        }
    }
    for i in 0..CUSTOM_IPS {
        let _ = writeln!(
            out,
            "  - {{name: host-{i}, namespace: external, zone: us-west-2a, ips: [172.31.{}.{}]}}",
            i / 200,
            i % 200 + 1
        );
    }
    out
}

fn lookups() -> Vec<IpAddr> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..LOOKUPS)
        .map(|_| match rng.below(100) {
            0..=44 => IpAddr::V4(pod_ip(rng.below(PODS))),
            45..=49 => IpAddr::V6(pod_ip6(rng.below(PODS / 4) * 4)),
            50..=54 => IpAddr::V4(node_ip(rng.below(NODES))),
            55..=79 => IpAddr::V4(Ipv4Addr::from(
                0xac10_0000u32 | (rng.next() as u32 & 0x000f_ffff),
            )),
            _ => IpAddr::V4(Ipv4Addr::from(
                0x0800_0000u32 | (rng.next() as u32 & 0x00ff_ffff),
            )),
        })
        .collect()
}

fn build_index(now: SystemTime) -> KubeIndex {
    let config = KubeResolverConfig {
        service_cidr_api: false,
        ..KubeResolverConfig::default()
    };
    let mut index = KubeIndex::new(&config).unwrap_or_else(|e| panic!("index: {e}"));
    let (nodes, pods) = (nodes(), pods());
    index.apply_node(Event::Init, now);
    for n in nodes {
        index.apply_node(Event::InitApply(n), now);
    }
    index.apply_node(Event::InitDone, now);
    index.apply_pod(Event::Init, now);
    for p in pods {
        index.apply_pod(Event::InitApply(p), now);
    }
    index.apply_pod(Event::InitDone, now);
    index
}

/// CPU time this thread has used: unlike wall time, not inflated when other
/// processes share the core, so it measures throughput per core.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call, and CLOCK_THREAD_CPUTIME_ID is supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `pass` (one pass over all lookups) 7 times after a warm-up and
/// prints the median rate per CPU-second.
fn per_core_rate(name: &str, mut pass: impl FnMut()) -> f64 {
    pass();
    let mut rates: Vec<f64> = (0..7)
        .map(|_| {
            let start = thread_cpu_time();
            pass();
            LOOKUPS as f64 / (thread_cpu_time() - start).as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "  {name}: {:.1} M lookups/s per core (median of 7 passes over {LOOKUPS}, thread CPU time; min {:.1}, max {:.1})",
        median / 1e6,
        rates[0] / 1e6,
        rates[rates.len() - 1] / 1e6
    );
    median
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Prints what the index, the snapshot and the custom set retain.
fn report_memory() -> (KubeIndex, ClusterSnapshot, CustomEndpoints) {
    let now = SystemTime::now();
    let (nodes, pods) = (nodes(), pods());
    let yaml = custom_yaml();
    let before = live();
    let config = KubeResolverConfig {
        service_cidr_api: false,
        ..KubeResolverConfig::default()
    };
    let mut index = KubeIndex::new(&config).unwrap_or_else(|e| panic!("index: {e}"));
    // The source objects stay alive; each event gets a clone that the index
    // drops after reading, so the difference is what the index retains.
    for n in &nodes {
        index.apply_node(Event::Apply(n.clone()), now);
    }
    for p in &pods {
        index.apply_pod(Event::Apply(p.clone()), now);
    }
    let after_index = live();
    let (snapshot, _) = index.snapshot(now);
    let after_snapshot = live();
    let custom = CustomEndpoints::from_yaml(&yaml).unwrap_or_else(|e| panic!("custom: {e}"));
    let after_custom = live();
    println!("memory (live heap bytes, counting allocator):");
    println!(
        "  Kubernetes index, {PODS} pods ({} dual-stack) on {NODES} nodes: {:.2} MiB ({} bytes/pod)",
        PODS / 4,
        mib(after_index - before),
        (after_index - before) / PODS as isize
    );
    println!(
        "  published snapshot ({} addresses): {:.2} MiB",
        snapshot.address_count(),
        mib(after_snapshot - after_index)
    );
    println!(
        "  custom endpoints ({CUSTOM_CIDRS} CIDRs + {CUSTOM_IPS} IPs): {:.2} MiB",
        mib(after_custom - after_snapshot)
    );
    drop((nodes, pods));
    (index, snapshot, custom)
}

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    let (_index, snapshot, custom) = report_memory();
    let snapshot = Arc::new(snapshot);
    let cluster = Arc::new(StaticResolver::from_snapshot((*snapshot).clone()));
    let custom = Arc::new(custom);
    let layered = LayeredResolver::new(vec![cluster, custom.clone()]);
    let addrs = lookups();

    // Sanity: the mix hits what it should, so the numbers are not of misses.
    let mut kinds = std::collections::BTreeMap::new();
    for ip in &addrs {
        *kinds
            .entry(layered.resolve(*ip, now).kind.as_str())
            .or_insert(0usize) += 1;
    }
    println!("lookup mix over {LOOKUPS} addresses: {kinds:?}");
    assert!(
        kinds.get("pod").copied().unwrap_or(0) > LOOKUPS * 45 / 100,
        "{kinds:?}"
    );
    assert!(
        kinds.get("custom").copied().unwrap_or(0) > LOOKUPS / 10,
        "{kinds:?}"
    );

    println!("throughput per core:");
    per_core_rate("layered (cluster + custom)", || {
        for ip in &addrs {
            black_box(layered.resolve(black_box(*ip), now));
        }
    });
    per_core_rate("cluster snapshot only", || {
        for ip in &addrs {
            black_box(snapshot.lookup(black_box(*ip), now));
        }
    });
    per_core_rate("custom endpoints only", || {
        for ip in &addrs {
            black_box(custom.lookup(black_box(*ip)));
        }
    });

    let mut g = c.benchmark_group("resolve");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("layered_1M_lookups", |b| {
        b.iter(|| {
            for ip in &addrs {
                black_box(layered.resolve(black_box(*ip), now));
            }
        })
    });
    g.bench_function("cluster_snapshot_1M_lookups", |b| {
        b.iter(|| {
            for ip in &addrs {
                black_box(snapshot.lookup(black_box(*ip), now));
            }
        })
    });
    g.bench_function("custom_lpm_1M_lookups", |b| {
        b.iter(|| {
            for ip in &addrs {
                black_box(custom.lookup(black_box(*ip)));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("publish");
    g.sample_size(10);
    let mut index = build_index(now);
    g.bench_function("snapshot_10k_pods", |b| {
        b.iter(|| black_box(index.snapshot(now)))
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
