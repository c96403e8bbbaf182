//! A node network namespace with pods behind veth pairs named like a CNI's,
//! plus traffic generators and an nftables reference counter. For tests.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use netscope::Counters;

use super::netns::{no_offloads, veth, NetNs};

/// One pod to create.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Host-side interface name (`eni…`, `cali…`, `veth…`, `lxc…`, …).
    pub host_if: String,
    /// Give the pod an IPv6 address too.
    pub ipv6: bool,
}

/// A created pod.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace (its interface is `eth0`).
    pub ns: NetNs,
    /// Host-side interface name, in the node namespace.
    pub host_if: String,
    /// Host-side ifindex, in the node namespace.
    pub host_ifindex: u32,
    /// The pod's IPv4 address.
    pub v4: Ipv4Addr,
    /// The pod's IPv6 address, if any.
    pub v6: Option<Ipv6Addr>,
}

/// A node namespace that routes between its pods.
#[derive(Debug)]
pub struct Node {
    /// Pods (dropped first, so their links go before the node).
    pub pods: Vec<Pod>,
    /// The node's namespace.
    pub ns: NetNs,
}

/// Creates `<prefix>-node` and one `<prefix>-pN` per spec. Pod `i` gets
/// 10.`net`.`i+1`.2/24 (gateway .1 on the host side) and, with `ipv6`,
/// fd`net`:`i+1`::2/64. Offloads are off on every link so counters of
/// different layers see the same packets.
///
/// # Errors
/// When a namespace, link or address cannot be made.
pub fn node(prefix: &str, net: u8, specs: &[PodSpec]) -> io::Result<Node> {
    let ns = NetNs::new(&format!("{prefix}-node"))?;
    ns.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")?;
    let mut pods = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let sub = i as u8 + 1;
        let pns = NetNs::new(&format!("{prefix}-p{sub}"))?;
        veth(&ns, &spec.host_if, &pns, "eth0")?;
        no_offloads(&ns, &spec.host_if)?;
        no_offloads(&pns, "eth0")?;
        let v4 = Ipv4Addr::new(10, net, sub, 2);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.{sub}.1/24"),
            "dev",
            &spec.host_if,
        ])?;
        pns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        pns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.{net}.{sub}.1"),
        ])?;
        let v6 = if spec.ipv6 {
            let v6: Ipv6Addr = format!("fd{net:02x}:{sub}::2").parse().expect("valid v6");
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd{net:02x}:{sub}::1/64"),
                "dev",
                &spec.host_if,
                "nodad",
            ])?;
            pns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            pns.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd{net:02x}:{sub}::1"),
            ])?;
            Some(v6)
        } else {
            None
        };
        let host_ifindex = ifindex_in(&ns, &spec.host_if)?;
        pods.push(Pod {
            ns: pns,
            host_if: spec.host_if.clone(),
            host_ifindex,
            v4,
            v6,
        });
    }
    Ok(Node { pods, ns })
}

/// Interface index of `dev` inside `ns`.
///
/// # Errors
/// When `ip` fails or prints something unexpected.
pub fn ifindex_in(ns: &NetNs, dev: &str) -> io::Result<u32> {
    let out = ns.exec(&["ip", "-o", "link", "show", "dev", dev])?;
    out.split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected `ip link` output: {out}")))
}

/// nftables counters per (saddr, daddr) on a node's forward hook: the
/// independent reference for netscope's byte counts.
#[derive(Debug)]
pub struct NftReference {
    names: Vec<((IpAddr, IpAddr), String)>,
}

/// The nftables table the reference lives in.
pub const NFT_TABLE: &str = "netscope_ref";

/// The netfilter hook an [`NftReference`] counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefHook {
    /// Forward: what a router forwards (a node).
    Forward,
    /// Prerouting: everything that arrives (a pod's own namespace, for
    /// packets that skip their node's forward hook).
    Prerouting,
}

impl NftReference {
    /// Installs one named counter per ordered pair, in `ns`'s forward hook
    /// (table [`NFT_TABLE`], created on first use).
    ///
    /// # Errors
    /// When nft refuses the rules.
    pub fn install(ns: &NetNs, pairs: &[(IpAddr, IpAddr)]) -> io::Result<Self> {
        Self::install_at(ns, RefHook::Forward, pairs)
    }

    /// [`NftReference::install`] in the given hook.
    ///
    /// # Errors
    /// When nft refuses the rules.
    pub fn install_at(ns: &NetNs, hook: RefHook, pairs: &[(IpAddr, IpAddr)]) -> io::Result<Self> {
        let (chain, hook) = match hook {
            RefHook::Forward => ("forward_ref", "forward"),
            RefHook::Prerouting => ("prerouting_ref", "prerouting"),
        };
        let mut script = format!(
            "table inet {NFT_TABLE} {{\n chain {chain} {{ type filter hook {hook} priority -300; policy accept; }}\n}}\n"
        );
        // Several sets may share a namespace's table: names are unique per process.
        static SET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let set = SET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut names = Vec::new();
        for (i, (s, d)) in pairs.iter().enumerate() {
            let name = format!("c{set}_{i}");
            let fam = if s.is_ipv4() { "ip" } else { "ip6" };
            script.push_str(&format!("add counter inet {NFT_TABLE} {name}\n"));
            script.push_str(&format!(
                "add rule inet {NFT_TABLE} {chain} {fam} saddr {s} {fam} daddr {d} counter name {name}\n"
            ));
            names.push(((*s, *d), name));
        }
        let path = std::env::temp_dir().join(format!("{}-{}.nft", ns.name(), std::process::id()));
        std::fs::write(&path, script)?;
        let res = ns.exec(&["nft", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        res?;
        Ok(NftReference { names })
    }

    /// Reads every counter.
    ///
    /// # Errors
    /// When nft fails or its JSON is not as expected.
    pub fn read(&self, ns: &NetNs) -> io::Result<HashMap<(IpAddr, IpAddr), Counters>> {
        let out = ns.exec(&["nft", "-j", "list", "counters", "table", "inet", NFT_TABLE])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(io::Error::other)?;
        let mut by_name = HashMap::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(c) = item.get("counter") {
                let (Some(name), Some(p), Some(b)) = (
                    c["name"].as_str(),
                    c["packets"].as_u64(),
                    c["bytes"].as_u64(),
                ) else {
                    continue;
                };
                by_name.insert(name.to_string(), Counters::new(b, p));
            }
        }
        self.names
            .iter()
            .map(|(pair, name)| {
                by_name
                    .get(name)
                    .map(|c| (*pair, *c))
                    .ok_or_else(|| io::Error::other(format!("nft counter {name} missing")))
            })
            .collect()
    }
}

/// Starts a TCP sink in `ns` on `addr`; the thread returns the bytes read.
pub fn tcp_sink(ns: &NetNs, addr: SocketAddr, deadline: Instant) -> std::thread::JoinHandle<u64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("test thread alive");
        l.set_nonblocking(true).expect("nonblocking");
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .expect("timeout");
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => return total,
                            Ok(n) => total += n as u64,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                ) =>
                            {
                                if Instant::now() > deadline + Duration::from_secs(5) {
                                    return total;
                                }
                            }
                            Err(_) => return total,
                        }
                    }
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => return total,
            }
        }
    });
    rx.recv().expect("sink started");
    h
}

/// Sends TCP data from `ns` to `to` until `deadline` or `max_bytes`, in
/// `chunk`-byte writes; returns the bytes written.
pub fn tcp_send(
    ns: &NetNs,
    to: SocketAddr,
    deadline: Instant,
    max_bytes: u64,
    chunk: usize,
) -> std::thread::JoinHandle<u64> {
    ns.spawn(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        let buf = vec![0x5au8; chunk];
        let mut sent = 0u64;
        while Instant::now() < deadline && sent < max_bytes {
            s.write_all(&buf)
                .unwrap_or_else(|e| panic!("send to {to}: {e}"));
            sent += chunk as u64;
        }
        s.shutdown(std::net::Shutdown::Write).ok();
        sent
    })
}

/// Sends `size`-byte UDP datagrams from `ns` to `to` until `deadline` or
/// `max` datagrams, pausing `gap` between them; returns datagrams sent.
pub fn udp_send(
    ns: &NetNs,
    to: SocketAddr,
    deadline: Instant,
    max: u64,
    size: usize,
    gap: Duration,
) -> std::thread::JoinHandle<u64> {
    ns.spawn(move || {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(bind).expect("bind udp");
        let buf = vec![0x33u8; size];
        let mut n = 0;
        while Instant::now() < deadline && n < max {
            if s.send_to(&buf, to).is_ok() {
                n += 1;
            }
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        n
    })
}

/// Starts a UDP sink in `ns` on `addr` that reads until `deadline`.
pub fn udp_sink(ns: &NetNs, addr: SocketAddr, deadline: Instant) -> std::thread::JoinHandle<u64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("test thread alive");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while Instant::now() < deadline + Duration::from_millis(500) {
            if s.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    });
    rx.recv().expect("sink started");
    h
}
