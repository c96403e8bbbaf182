//! Service NAT undone through the real conntrack table. Needs root: builds
//! its own network namespaces (`netscope-test-nat-<pid>-*`), a "node" with
//! an nftables DNAT rule standing in for kube-proxy, a client pod and a
//! backend pod, pushes one bounded TCP exchange through the ClusterIP, then
//! looks the connection up over ctnetlink from inside the node namespace.
//!
//! Network safety: every address, route and rule lives inside namespaces
//! this test created; nothing touches the root namespace or a real
//! interface; the namespaces are deleted by a Drop guard, also on failure,
//! and stale ones of dead test processes are swept at start.
#![cfg(all(target_os = "linux", feature = "conntrack"))]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{ip, CountingExporter};
use netscope::aggregate::DedupConfig;
use netscope::nat::{NatStats, NetlinkConntrack, ServiceNat};
use netscope::{
    Aggregator, Counters, Direction, EndpointKind, FlowKey, FlowSample, IngestSink, InstanceId,
    MemoryResolver, Report, L4,
};

const PREFIX: &str = "netscope-test-nat-";
const REQUEST: usize = 1_000;
const RESPONSE: usize = 28_000;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("setup step failed: {e}");
    }
}

/// Deletes the namespaces it made, in reverse order, even when the test
/// panics.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn sweep_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            // Only namespaces whose creating test process is gone: a
            // parallel run keeps its own.
            if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }

    fn add(&mut self, role: &str) -> String {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        self.names.push(name.clone());
        name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            if let Err(e) = run(&["ip", "netns", "del", n]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

struct Net {
    client: IpAddr,
    backend: IpAddr,
    vip: IpAddr,
}

fn v4() -> Net {
    Net {
        client: ip("10.200.1.2"),
        backend: ip("10.200.2.2"),
        vip: ip("10.96.0.10"),
    }
}

fn v6() -> Net {
    Net {
        client: ip("fd00:200:1::2"),
        backend: ip("fd00:200:2::2"),
        vip: ip("fd00:96::10"),
    }
}

fn build(ns: &mut Netns) -> (String, String, String) {
    let node = ns.add("node");
    let client = ns.add("client");
    let backend = ns.add("backend");
    for (pod, host, v4net, v6net) in [
        (&client, "vethnsc", "10.200.1", "fd00:200:1"),
        (&backend, "vethnsb", "10.200.2", "fd00:200:2"),
    ] {
        must(&[
            "ip", "-n", &node, "link", "add", host, "type", "veth", "peer", "name", "eth0",
            "netns", pod,
        ]);
        must(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{v4net}.1/24"),
            "dev",
            host,
        ]);
        must(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{v6net}::1/64"),
            "dev",
            host,
            "nodad",
        ]);
        must(&["ip", "-n", &node, "link", "set", host, "up"]);
        must(&[
            "ip",
            "-n",
            pod,
            "addr",
            "add",
            &format!("{v4net}.2/24"),
            "dev",
            "eth0",
        ]);
        must(&[
            "ip",
            "-n",
            pod,
            "addr",
            "add",
            &format!("{v6net}::2/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        must(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
        must(&["ip", "-n", pod, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            &format!("{v4net}.1"),
        ]);
        must(&[
            "ip",
            "-n",
            pod,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("{v6net}::1"),
        ]);
    }
    must(&["ip", "-n", &node, "link", "set", "lo", "up"]);
    must(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    must(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    let rules = "table ip netscope_test {\n  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr 10.96.0.10 tcp dport 80 dnat to 10.200.2.2:8080\n  }\n}\n\
                 table ip6 netscope_test {\n  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n    ip6 daddr fd00:96::10 tcp dport 80 dnat to [fd00:200:2::2]:8080\n  }\n}\n";
    let file = std::env::temp_dir().join(format!("{PREFIX}{}.nft", std::process::id()));
    std::fs::write(&file, rules).expect("write nft rules");
    let res = run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "nft",
        "-f",
        &file.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&file);
    if let Err(e) = res {
        panic!("nftables DNAT rule: {e}");
    }
    (node, client, backend)
}

/// One TCP exchange client -> ClusterIP:80 -> backend:8080, bounded in
/// bytes and time. Returns the client's source port.
fn exchange(client_ns: &str, backend_ns: &str, net: &Net) -> u16 {
    let backend_addr = SocketAddr::new(net.backend, 8080);
    let server = in_netns(backend_ns, move || {
        let l =
            TcpListener::bind(backend_addr).unwrap_or_else(|e| panic!("bind {backend_addr}: {e}"));
        l.set_nonblocking(true).expect("nonblocking listener");
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut s, _) = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("backend accept: {e}"),
            }
        };
        s.set_nonblocking(false).expect("blocking stream");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut req = vec![0u8; REQUEST];
        s.read_exact(&mut req).expect("backend reads the request");
        s.write_all(&vec![7u8; RESPONSE]).expect("backend answers");
    });
    let vip = SocketAddr::new(net.vip, 80);
    let client = in_netns(client_ns, move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut s = loop {
            match TcpStream::connect_timeout(&vip, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("client connect to {vip}: {e}"),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let port = s.local_addr().expect("client addr").port();
        s.write_all(&vec![1u8; REQUEST]).expect("client sends");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("client reads the answer");
        assert_eq!(got.len(), RESPONSE, "response length");
        port
    });
    server.join().expect("backend thread");
    client.join().expect("client thread")
}

fn l4(sport: u16, dport: u16) -> Option<L4> {
    Some(L4 {
        proto: 6,
        src_port: sport,
        dst_port: dport,
    })
}

#[test]
fn service_nat_resolves_requests_and_replies_through_conntrack() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED service_nat_resolves_requests_and_replies_through_conntrack: needs root (network namespaces, nftables, conntrack)");
        return;
    }
    Netns::sweep_stale();
    let mut ns = Netns { names: Vec::new() };
    let (node, client_ns, backend_ns) = build(&mut ns);

    for net in [v4(), v6()] {
        let port = exchange(&client_ns, &backend_ns, &net);
        let req = Counters::new(REQUEST as u64 + 52, 2);
        let resp = Counters::new(RESPONSE as u64 + 520, 20);
        let gone = Counters::new(60, 1);
        // What the data path keys on the client pod's host-side interface.
        let samples = vec![
            FlowSample {
                key: FlowKey {
                    src: net.client,
                    dst: net.vip,
                    direction: Direction::FromPod,
                    l4: l4(port, 80),
                },
                counters: req,
            },
            FlowSample {
                key: FlowKey {
                    src: net.vip,
                    dst: net.client,
                    direction: Direction::ToPod,
                    l4: l4(80, port),
                },
                counters: resp,
            },
            // A connection conntrack never saw (port 9 is not ours).
            FlowSample {
                key: FlowKey {
                    src: net.client,
                    dst: net.vip,
                    direction: Direction::FromPod,
                    l4: l4(9, 80),
                },
                counters: gone,
            },
        ];
        let (out, stats): (Vec<FlowSample>, NatStats) = in_netns(&node, move || {
            let mut nat = ServiceNat::new(NetlinkConntrack::new());
            nat.resolve(samples)
        })
        .join()
        .expect("lookup thread");
        assert_eq!(stats.errors, 0, "{stats:?}");
        assert_eq!((stats.resolved, stats.unresolved), (2, 1), "{stats:?}");
        assert_eq!(stats.unresolved_counters, gone);
        let find = |src: IpAddr, dst: IpAddr, d: Direction| {
            out.iter()
                .find(|s| s.key.src == src && s.key.dst == dst && s.key.direction == d)
                .map(|s| s.counters)
        };
        assert_eq!(
            find(net.client, net.backend, Direction::FromPod),
            Some(req),
            "request -> backend: {out:?}"
        );
        assert_eq!(
            find(net.backend, net.client, Direction::ToPod),
            Some(resp),
            "reply from backend: {out:?}"
        );
        assert_eq!(
            find(net.client, net.vip, Direction::FromPod),
            Some(gone),
            "unresolved kept: {out:?}"
        );

        // Through the aggregator, with the backend node's own views: each
        // byte once, attributed to the backend pod and its zone; the
        // unresolved bytes under kind `service`.
        let mut r = MemoryResolver::new();
        r.add_pod(net.client, "client", "default", "node-a", "zone-1")
            .add_pod(net.backend, "backend", "default", "node-b", "zone-2")
            .add_service(net.vip, "svc", "default");
        let exporter = Arc::new(CountingExporter::keeping_batches());
        let agg = Aggregator::new(Arc::new(r), vec![exporter.clone()], DedupConfig::default());
        let at = SystemTime::now();
        let rep = |node: &str, id: u8, samples| Report {
            node: node.into(),
            instance: InstanceId([id; 16]),
            seq: 1,
            window_start: at,
            window_end: at,
            samples,
            overflow: Counters::default(),
            folded_flows: 0,
        };
        agg.ingest(rep("node-a", 1, out.clone()), at);
        agg.ingest(
            rep(
                "node-b",
                2,
                vec![
                    FlowSample {
                        key: FlowKey::new(net.client, net.backend, Direction::ToPod),
                        counters: req,
                    },
                    FlowSample {
                        key: FlowKey::new(net.backend, net.client, Direction::FromPod),
                        counters: resp,
                    },
                ],
            ),
            at,
        );
        let batches = exporter.batches.lock().expect("batches").concat();
        let mut total = Counters::default();
        for f in &batches {
            total += f.counters;
        }
        assert_eq!(
            total.bytes,
            req.bytes + resp.bytes + gone.bytes,
            "each byte once: {batches:?}"
        );
        let request = batches
            .iter()
            .find(|f| f.dst_ip == net.backend)
            .expect("request counted");
        assert_eq!(
            (&*request.dst.name, &*request.dst.zone, request.counters),
            ("backend", "zone-2", req)
        );
        let reply = batches
            .iter()
            .find(|f| f.src_ip == net.backend)
            .expect("reply counted");
        assert_eq!(
            (&*reply.src.name, &*reply.src.zone, reply.counters),
            ("backend", "zone-2", resp)
        );
        let svc = batches
            .iter()
            .find(|f| f.dst_ip == net.vip)
            .expect("unresolved counted");
        assert_eq!((svc.dst.kind, svc.counters), (EndpointKind::Service, gone));
    }
}
