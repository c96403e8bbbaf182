//! A simulated multi-zone cluster on one Linux machine, built from network
//! namespaces: three zones of two nodes, pods behind CNI-named veth pairs,
//! an underlay, an "external" database, a Service ClusterIP DNATed by
//! nftables the way kube-proxy would, and a traffic mix. Used by the demo
//! and the end-to-end test.
//!
//! With [`SimOptions::redirect_node`], one node delivers into its pods the
//! way Cilium's datapath does with BPF host routing: a program on the
//! node's uplink ingress (Cilium's `bpf_host`) and on every pod link's
//! ingress (`bpf_lxc`) rewrites the MACs and calls `bpf_redirect_peer()`,
//! so packets for its pods skip the node's IP stack (forward hook) and the
//! host-side link's egress hook.
//!
//! Every address lives inside the namespaces made here (all named
//! `<prefix>-…`, `<prefix>` starting with `ns-` or `netscope-test-`);
//! dropping the [`Cluster`] deletes them, and [`Cluster::build`] sweeps
//! stale ones first.
//!
//! Why this file is long (about 1,400 lines): it is the test harness (behind
//! the `testing` feature, not in the published crate), one topology built
//! step by step in namespaces, whose setup and teardown must be read together
//! to see that everything it creates is removed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netscope::Counters;

use super::netns::{no_offloads, sweep, veth, NetNs};
use super::topo::{ifindex_in, NftReference, RefHook};
use super::{tc_attach, tcx_append, TestPrograms};

/// The region of every simulated zone.
pub const REGION: &str = "us-east-1";
/// The simulated zones.
pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
/// The Service CIDR the agents are told about.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The ClusterIP of the `cache` Service.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The ClusterIP of the `catalog` Service, whose backends are in zones b
/// and c; clients in zones a and b call it.
pub const CATALOG_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// The aggregator's underlay address.
pub const AGGREGATOR_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 100);
/// The external database's address.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 200);
/// Port of every simulated server.
pub const SERVER_PORT: u16 = 8080;
/// Port the `cache` Service listens on (DNATed to [`SERVER_PORT`]).
pub const SERVICE_PORT: u16 = 80;

/// Handle of the redirect helper's legacy-TC filter ([`SimOptions::legacy_tc`]):
/// Cilium's loader uses handle 1.
pub const REDIRECT_TC_HANDLE: u32 = 1;
/// Priority of the redirect helper's legacy-TC filter: Cilium's loader uses
/// priority 1, netscope's own. The agents attach later, and cls_bpf runs
/// the newest filter of a priority first (netscope's guard keeps it so).
pub const REDIRECT_TC_PRIORITY: u32 = 1;

/// How [`Cluster::build_with`] builds the cluster.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimOptions {
    /// Index of a node that delivers into its pods with
    /// `bpf_redirect_peer` (Cilium with BPF host routing): from its
    /// uplink's ingress for traffic from elsewhere, from the sender's
    /// link ingress for traffic between its own pods. `None`: every node
    /// routes with the kernel.
    pub redirect_node: Option<usize>,
    /// Attach the redirect helper on the pod links as a legacy cls_bpf
    /// filter (handle [`REDIRECT_TC_HANDLE`], priority
    /// [`REDIRECT_TC_PRIORITY`], as Cilium's loader on kernels without TCX)
    /// instead of appending it to the TCX chain:
    /// use it when the agents attach in legacy TC mode, since a TCX
    /// program's redirect ends the hook before any legacy filter runs. The
    /// uplink, where netscope does not attach, always uses TCX.
    pub legacy_tc: bool,
}

/// A simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Node name (`node-1` …).
    pub name: String,
    /// Its zone.
    pub zone: &'static str,
    /// Its network namespace.
    pub ns: NetNs,
    /// Underlay IPv4 address.
    pub ip: Ipv4Addr,
    /// Underlay IPv6 address.
    pub ip6: Ipv6Addr,
}

/// A simulated pod.
#[derive(Debug)]
pub struct SimPod {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: &'static str,
    /// Owning Deployment.
    pub workload: &'static str,
    /// Index into [`Cluster::nodes`].
    pub node: usize,
    /// Host-side interface name (CNI-style).
    pub host_if: String,
    /// The pod's namespace.
    pub ns: NetNs,
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv6 address (dual-stack pods only).
    pub v6: Option<Ipv6Addr>,
    /// Its frames leave VLAN-tagged.
    pub vlan: bool,
}

/// The simulated cluster. Drop it to remove everything.
pub struct Cluster {
    /// Namespace prefix.
    pub prefix: String,
    /// Pods (dropped before their nodes).
    pub pods: Vec<SimPod>,
    /// Nodes.
    pub nodes: Vec<SimNode>,
    /// The external database.
    pub ext: NetNs,
    /// The aggregator's namespace.
    pub agg: NetNs,
    /// The underlay: a bridge every node, the aggregator and the database hang off.
    pub fabric: NetNs,
    /// Index of the pod behind [`CLUSTER_IP`].
    pub service_backend: usize,
    /// Index of the node whose nftables DNATs the ClusterIP (the client's).
    pub service_client_node: usize,
    /// The node that delivers with `bpf_redirect_peer` ([`SimOptions::redirect_node`]).
    pub redirect_node: Option<usize>,
    helpers: TestPrograms,
    links: Vec<OwnedFd>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.prefix)
            .field("nodes", &self.nodes.len())
            .field("pods", &self.pods.len())
            .finish()
    }
}

/// (namespace, workload, node index, CNI prefix, dual-stack, VLAN-tagged)
const PODS: &[(&str, &str, usize, &str, bool, bool)] = &[
    ("shop", "frontend", 0, "eni", true, false),
    ("shop", "web", 0, "eni", false, false),
    ("shop", "frontend", 1, "eni", false, false),
    ("batch", "reports", 1, "vlan", false, true),
    ("shop", "api", 2, "cali", true, false),
    ("shop", "api", 2, "cali", false, false),
    ("shop", "orders", 3, "cali", false, false),
    ("shop", "cache", 4, "lxc", false, false),
    ("batch", "storage", 5, "veth", false, false),
    ("shop", "cache", 5, "veth", false, false),
    // Appended so that the pods above keep their names and addresses.
    ("shop", "catalog", 3, "cali", false, false),
    ("shop", "catalog", 5, "veth", false, false),
];

/// A Service of the simulation, as its EndpointSlices would list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimService {
    /// Name.
    pub name: &'static str,
    /// Namespace.
    pub namespace: &'static str,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Its endpoints (all ready): indices into [`Cluster::pods`].
    pub endpoints: Vec<usize>,
}

fn ok<T>(r: io::Result<T>, what: &str) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

impl Cluster {
    /// Builds the cluster under `prefix` (which must start with `ns-` or
    /// `netscope-test-`), sweeping stale namespaces of that prefix first.
    ///
    /// # Errors
    /// When a namespace, link, address, route, nftables rule or helper
    /// program cannot be set up (not root, say).
    pub fn build(prefix: &str) -> io::Result<Cluster> {
        Self::build_with(prefix, SimOptions::default())
    }

    /// [`Cluster::build`] with options: see [`SimOptions`].
    ///
    /// # Errors
    /// As [`Cluster::build`]; also when the redirect node is out of range
    /// or the redirect helper cannot be attached (`bpf_redirect_peer`
    /// needs a 5.10+ kernel).
    pub fn build_with(prefix: &str, opts: SimOptions) -> io::Result<Cluster> {
        if let Some(r) = opts.redirect_node {
            if r >= 6 {
                return Err(io::Error::other(format!(
                    "redirect node {r} out of range (0..6)"
                )));
            }
        }
        sweep(prefix)?;
        let fabric = ok(NetNs::new(&format!("{prefix}-fabric")), "fabric namespace")?;
        fabric.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        fabric.exec(&["ip", "link", "set", "br0", "up"])?;
        let attach = |ns: &NetNs, port: &str, ip: &str, ip6: &str| -> io::Result<()> {
            veth(&fabric, port, ns, "uplink")?;
            fabric.exec(&["ip", "link", "set", port, "master", "br0"])?;
            no_offloads(&fabric, port)?;
            no_offloads(ns, "uplink")?;
            ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "uplink"])?;
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                "uplink",
                "nodad",
            ])?;
            Ok(())
        };

        let agg = NetNs::new(&format!("{prefix}-agg"))?;
        attach(&agg, "p-agg", &AGGREGATOR_IP.to_string(), "fd00:31::100")?;
        let ext = NetNs::new(&format!("{prefix}-ext"))?;
        attach(&ext, "p-ext", &EXTERNAL_IP.to_string(), "fd00:31::200")?;

        let mut nodes = Vec::new();
        for i in 0..6 {
            let ns = NetNs::new(&format!("{prefix}-node{}", i + 1))?;
            let ip = Ipv4Addr::new(172, 31, 0, 11 + i as u8);
            let ip6: Ipv6Addr = format!("fd00:31::{}", 11 + i).parse().expect("valid");
            attach(
                &ns,
                &format!("p-node{}", i + 1),
                &ip.to_string(),
                &ip6.to_string(),
            )?;
            ns.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")?;
            nodes.push(SimNode {
                name: format!("node-{}", i + 1),
                zone: ZONES[i / 2],
                ns,
                ip,
                ip6,
            });
        }
        // Pod CIDR routes between nodes (10.100.<n>.0/24, fd00:100:<n>::/64).
        for (i, n) in nodes.iter().enumerate() {
            for (j, m) in nodes.iter().enumerate().filter(|&(j, _)| j != i) {
                route_via(&n.ns, &format!("10.100.{}.0/24", j + 1), m.ip.into())?;
                route_via(&n.ns, &format!("fd00:100:{}::/64", j + 1), m.ip6.into())?;
            }
        }
        // The database and the aggregator route pod traffic back via the owning node.
        for (j, m) in nodes.iter().enumerate() {
            for ns in [&ext, &agg] {
                route_via(ns, &format!("10.100.{}.0/24", j + 1), m.ip.into())?;
            }
        }

        let helpers = TestPrograms::load(300, 0)
            .map_err(|e| io::Error::other(format!("helper programs: {e}")))?;
        let mut links = Vec::new();
        let mut pods = Vec::new();
        let mut per_node = [0u8; 6];
        for (k, &(namespace, workload, node, cni, dual, vlan)) in PODS.iter().enumerate() {
            per_node[node] += 1;
            let slot = 9 + per_node[node];
            let name = format!("{workload}-{}", pod_suffix(k));
            let host_if = format!("{cni}{:x}{k:02}", 0xa0 + node);
            let v4 = Ipv4Addr::new(10, 100, node as u8 + 1, slot);
            let v6 = dual.then(|| {
                format!("fd00:100:{}::{slot}", node + 1)
                    .parse::<Ipv6Addr>()
                    .expect("valid")
            });
            let n = &nodes[node];
            let ns = plumb_pod(&format!("{prefix}-pod{k}"), n, &host_if, v4, v6)?;
            if vlan {
                // Tag on the pod's egress; untag on the host side after
                // netscope (TCX: appended after netscope's head position;
                // legacy TC: priority 2, after netscope's 1).
                let idx = ns.run(|| super::super::interface("eth0").map(|i| i.ifindex));
                let idx = ok(idx, "pod eth0")?;
                let push = helpers.vlan_push.try_clone()?;
                links.push(ns.run(move || tcx_append(push.as_fd(), idx, false))?);
                let hidx = ifindex_in(&n.ns, &host_if)?;
                let pop = helpers.vlan_pop.try_clone()?;
                links.push(n.ns.run(move || tcx_append(pop.as_fd(), hidx, true))?);
            }
            pods.push(SimPod {
                name,
                namespace,
                workload,
                node,
                host_if,
                ns,
                v4,
                v6,
                vlan,
            });
        }

        // The `cache` Service: ClusterIP DNATed, in the client's node, to a
        // backend in another zone (kube-proxy's PREROUTING rule).
        let service_client_node = 0;
        let service_backend = pods
            .iter()
            .position(|p| p.workload == "cache" && p.node == 4)
            .expect("cache pod");
        let backend = pods[service_backend].v4;
        let rules = format!(
            "table ip netscope_sim_kubeproxy {{\n chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n  ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT} dnat to {backend}:{SERVER_PORT}\n }}\n}}\n"
        );
        nodes[service_client_node].ns.exec(&["nft", &rules])?;
        catalog_dnat(&nodes, &pods)?;

        if let Some(r) = opts.redirect_node {
            redirect_node_setup(&helpers, &nodes[r], &pods, r, opts.legacy_tc, &mut links)?;
        }

        Ok(Cluster {
            prefix: prefix.to_string(),
            pods,
            nodes,
            ext,
            agg,
            fabric,
            service_backend,
            service_client_node,
            redirect_node: opts.redirect_node,
            helpers,
            links,
        })
    }

    /// The Services and their endpoints: `cache` (both backends in zone
    /// c) and `catalog` (zones b and c).
    pub fn services(&self) -> Vec<SimService> {
        let of = |w: &str| -> Vec<usize> {
            (0..self.pods.len())
                .filter(|&i| self.pods[i].workload == w)
                .collect()
        };
        vec![
            SimService {
                name: "cache",
                namespace: "shop",
                cluster_ip: CLUSTER_IP,
                endpoints: of("cache"),
            },
            SimService {
                name: "catalog",
                namespace: "shop",
                cluster_ip: CATALOG_IP,
                endpoints: of("catalog"),
            },
        ]
    }

    /// The static topology file for the aggregator.
    pub fn topology_yaml(&self) -> String {
        let mut y = String::from("zones:\n");
        for z in ZONES {
            y.push_str(&format!("  - name: {z}\n    region: {REGION}\n"));
        }
        y.push_str("nodes:\n");
        for n in &self.nodes {
            y.push_str(&format!(
                "  - name: {}\n    zone: {}\n    ips: [{}, \"{}\"]\n",
                n.name, n.zone, n.ip, n.ip6
            ));
        }
        y.push_str("pods:\n");
        for p in &self.pods {
            let ips = match p.v6 {
                Some(v6) => format!("[{}, \"{v6}\"]", p.v4),
                None => format!("[{}]", p.v4),
            };
            y.push_str(&format!(
                "  - name: {}\n    namespace: {}\n    node: {}\n    ips: {ips}\n    workload: {}\n    workload_kind: Deployment\n",
                p.name, p.namespace, self.nodes[p.node].name, p.workload
            ));
        }
        y.push_str("services:\n");
        for s in self.services() {
            let endpoints: Vec<&str> = s
                .endpoints
                .iter()
                .map(|&i| self.pods[i].name.as_str())
                .collect();
            y.push_str(&format!(
                "  - name: {}\n    namespace: {}\n    ips: [{}]\n    endpoints: [{}]\n",
                s.name,
                s.namespace,
                s.cluster_ip,
                endpoints.join(", ")
            ));
        }
        y.push_str(&format!("service_cidrs: [{SERVICE_CIDR}]\n"));
        y
    }

    /// The custom-endpoints file: the external database.
    pub fn custom_endpoints_yaml(&self) -> String {
        format!("endpoints:\n  - name: rds-primary\n    namespace: external\n    zone: {}\n    ips: [{EXTERNAL_IP}]\n", ZONES[2])
    }

    /// The node namespace of pod `i`.
    pub fn node_of(&self, i: usize) -> &SimNode {
        &self.nodes[self.pods[i].node]
    }

    /// Installs nftables reference counters: for every ordered pair of
    /// addresses that can talk, in the forward hook of the node that
    /// forwards the packets first (the source pod's node, or for traffic
    /// from the database, the destination pod's node). Forward sees real,
    /// post-DNAT addresses, as netscope's final attribution should.
    ///
    /// # Errors
    /// When nft refuses the rules.
    ///
    /// On the redirect node ([`SimOptions::redirect_node`]) packets for its
    /// pods skip its forward hook: the pairs from the database to its pods
    /// and between two of its pods are counted in the destination pod's
    /// own namespace instead, in its prerouting hook (the first place the
    /// redirected packets reach a netfilter hook; same L3 bytes).
    pub fn install_reference(&self) -> io::Result<Reference> {
        let mut reference = Reference { refs: Vec::new() };
        let mut in_pod: Vec<Vec<(IpAddr, IpAddr)>> = vec![Vec::new(); self.pods.len()];
        for node in 0..self.nodes.len() {
            let mut pairs = Vec::new();
            for i in (0..self.pods.len()).filter(|&i| self.pods[i].node == node) {
                for pair in self.reference_pairs(i) {
                    match self.redirected_to(pair.1) {
                        Some(q)
                            if self.redirect_node == Some(node)
                                || pair.0 == IpAddr::V4(EXTERNAL_IP) =>
                        {
                            in_pod[q].push(pair);
                        }
                        _ => pairs.push(pair),
                    }
                }
            }
            reference.add(self, Where::Node(node), &pairs)?;
        }
        for (q, pairs) in in_pod.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
            reference.add(self, Where::Pod(q), pairs)?;
        }
        Ok(reference)
    }

    /// The pod on the redirect node that holds `ip`, if any: packets to it
    /// arriving on that node are redirected into its namespace.
    fn redirected_to(&self, ip: IpAddr) -> Option<usize> {
        let r = self.redirect_node?;
        self.pods.iter().position(|p| {
            p.node == r && (IpAddr::V4(p.v4) == ip || p.v6.map(IpAddr::V6) == Some(ip))
        })
    }

    /// Packets the redirect node's helper delivered with
    /// `bpf_redirect_peer`, and redirects the kernel refused.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn redirected_packets(&self) -> io::Result<(u64, u64)> {
        self.helpers.redirect_counters()
    }

    /// The address pairs whose packets pod `i`'s node forwards first:
    /// from the pod to every other pod (IPv4, and IPv6 between dual-stack
    /// pods) and to the database, and from the database to the pod.
    fn reference_pairs(&self, i: usize) -> Vec<(IpAddr, IpAddr)> {
        let p = &self.pods[i];
        let ext = IpAddr::V4(EXTERNAL_IP);
        let mut pairs = Vec::new();
        for q in self.pods.iter().filter(|q| q.name != p.name) {
            pairs.push((IpAddr::V4(p.v4), IpAddr::V4(q.v4)));
            if let (Some(a), Some(b)) = (p.v6, q.v6) {
                pairs.push((IpAddr::V6(a), IpAddr::V6(b)));
            }
        }
        pairs.push((IpAddr::V4(p.v4), ext));
        pairs.push((ext, IpAddr::V4(p.v4)));
        pairs
    }

    /// Deletes pod `i` (its namespace, veth pair and host routes go with
    /// it) and creates a new pod of the same workload with the same
    /// addresses on node `to`, the way a rescheduled pod that got its old
    /// IP back would come up in another zone. Every node, the database and
    /// the aggregator route the addresses to the new node; the reference
    /// gets counters for the new pod on its node (the old node's counters
    /// keep what they counted).
    ///
    /// Stop the pod's traffic first: packets in flight when its interface
    /// disappears are forwarded by one node and never delivered.
    ///
    /// # Errors
    /// When the new namespace, link, routes or counters cannot be made.
    pub fn move_pod(
        &mut self,
        i: usize,
        to: usize,
        reference: &mut Reference,
    ) -> io::Result<PodMove> {
        if self
            .redirect_node
            .is_some_and(|r| self.pods[i].node == r || to == r)
        {
            // The redirect helper's targets and the reference in the pod's
            // namespace would go stale.
            return Err(io::Error::other(
                "moving a pod from or to the redirect node is not supported",
            ));
        }
        if self.pods[i].vlan {
            // Its tagging helpers are attached to its links.
            return Err(io::Error::other(
                "moving the VLAN-tagged pod is not supported",
            ));
        }
        let old = self.pods.remove(i);
        let (v4, v6) = (old.v4, old.v6);
        let done = PodMove {
            pod: i,
            old_name: old.name.clone(),
            old_node: old.node,
            v4,
            v6,
        };
        let (namespace, workload) = (old.namespace, old.workload);
        drop(old);
        let cni = PODS
            .iter()
            .find(|p| p.2 == to && !p.5)
            .map_or("veth", |p| p.3);
        let host_if = format!("{cni}{:x}{:02}", 0xa0 + to, PODS.len() + i);
        let node = &self.nodes[to];
        let ns = plumb_pod(
            &format!("{}-pod{}-moved", self.prefix, i),
            node,
            &host_if,
            v4,
            v6,
        )?;
        for (_, n) in self.nodes.iter().enumerate().filter(|&(j, _)| j != to) {
            route_via(&n.ns, &format!("{v4}/32"), node.ip.into())?;
            if let Some(v6) = v6 {
                route_via(&n.ns, &format!("{v6}/128"), node.ip6.into())?;
            }
        }
        for ns in [&self.ext, &self.agg] {
            route_via(ns, &format!("{v4}/32"), node.ip.into())?;
        }
        self.pods.insert(
            i,
            SimPod {
                name: format!("{workload}-{}", pod_suffix(PODS.len() + i)),
                namespace,
                workload,
                node: to,
                host_if,
                ns,
                v4,
                v6,
                vlan: false,
            },
        );
        let pairs = self.reference_pairs(i);
        reference.add(self, Where::Node(to), &pairs)?;
        Ok(done)
    }

    /// Packets the VLAN pod sent that carried a metadata tag at the host side.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn vlan_tagged_packets(&self) -> io::Result<u64> {
        self.helpers.vlan_popped()
    }

    /// Live helper links (kept so they stay attached).
    pub fn helper_links(&self) -> usize {
        self.links.len()
    }
}

/// The MAC address of `dev` in `ns`.
fn link_mac(ns: &NetNs, dev: &str) -> io::Result<[u8; 6]> {
    let link = ns.exec(&["ip", "-o", "link", "show", "dev", dev])?;
    let mac = link
        .split_once("link/ether ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .ok_or_else(|| io::Error::other(format!("no MAC for {dev}: {link:?}")))?;
    parse_mac(mac)
}

/// Makes node `r` deliver into its pods with `bpf_redirect_peer`: the
/// helper learns every pod address of the node (destination MAC: the
/// pod's own `eth0`), and is attached to the uplink's ingress (TCX) and to
/// every pod link's ingress (TCX after netscope, or legacy TC at Cilium's
/// priority 1, handle 1).
fn redirect_node_setup(
    helpers: &TestPrograms,
    node: &SimNode,
    pods: &[SimPod],
    r: usize,
    legacy_tc: bool,
    links: &mut Vec<OwnedFd>,
) -> io::Result<()> {
    for p in pods.iter().filter(|p| p.node == r) {
        let ifindex = ifindex_in(&node.ns, &p.host_if)?;
        let pod_mac = link_mac(&p.ns, "eth0")?;
        let host_mac = link_mac(&node.ns, &p.host_if)?;
        for addr in std::iter::once(IpAddr::V4(p.v4)).chain(p.v6.map(IpAddr::V6)) {
            helpers.redirect_to(addr, ifindex, pod_mac, host_mac)?;
        }
        let prog = helpers.redirect_peer.try_clone()?;
        if legacy_tc {
            node.ns.run(move || {
                tc_attach(
                    prog.as_fd(),
                    ifindex,
                    true,
                    REDIRECT_TC_HANDLE,
                    REDIRECT_TC_PRIORITY,
                )
                .map(drop)
            })?;
        } else {
            links.push(
                node.ns
                    .run(move || tcx_append(prog.as_fd(), ifindex, true))?,
            );
        }
    }
    let up = ifindex_in(&node.ns, "uplink")?;
    let prog = helpers.redirect_peer.try_clone()?;
    links.push(ok(
        node.ns.run(move || tcx_append(prog.as_fd(), up, true)),
        "redirect helper on the uplink",
    )?);
    Ok(())
}

/// Routes `prefix` via `gateway` in `ns`, replacing a route to the same
/// prefix (a moved pod's address).
fn route_via(ns: &NetNs, prefix: &str, gateway: IpAddr) -> io::Result<()> {
    let family = if gateway.is_ipv4() { "-4" } else { "-6" };
    ns.exec(&[
        "ip",
        family,
        "route",
        "replace",
        prefix,
        "via",
        &gateway.to_string(),
    ])
    .map(drop)
}

/// Creates the pod namespace `ns_name` behind `host_if` on `node`, with
/// `v4` (and `v6`): Calico-style point-to-point links whose gateway is a
/// link-local address every host-side interface carries, and host routes
/// to the pod on its node.
fn plumb_pod(
    ns_name: &str,
    node: &SimNode,
    host_if: &str,
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
) -> io::Result<NetNs> {
    let ns = NetNs::new(ns_name)?;
    veth(&node.ns, host_if, &ns, "eth0")?;
    no_offloads(&node.ns, host_if)?;
    no_offloads(&ns, "eth0")?;
    ns.exec(&["ip", "addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
    ns.exec(&[
        "ip",
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ])?;
    ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ])?;
    node.ns
        .exec(&["ip", "addr", "add", "169.254.1.1/32", "dev", host_if])?;
    node.ns
        .exec(&["ip", "route", "add", &format!("{v4}/32"), "dev", host_if])?;
    if let Some(v6) = v6 {
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        node.ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fe80::1/64",
            "dev",
            host_if,
            "nodad",
        ])?;
        ns.exec(&[
            "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ])?;
        node.ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{v6}/128"),
            "dev",
            host_if,
        ])?;
    }
    Ok(ns)
}

fn pod_suffix(k: usize) -> String {
    const A: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = (k as u64 + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut s = String::new();
    for _ in 0..5 {
        s.push(A[(x % A.len() as u64) as usize] as char);
        x /= A.len() as u64;
    }
    format!("5d8f{}-{s}", k % 10)
}

/// What [`Cluster::move_pod`] did.
#[derive(Debug, Clone)]
pub struct PodMove {
    /// Index of the pod in [`Cluster::pods`] (the new pod has the same one).
    pub pod: usize,
    /// The deleted pod's name.
    pub old_name: String,
    /// The deleted pod's node (index into [`Cluster::nodes`]).
    pub old_node: usize,
    /// The address both pods held.
    pub v4: Ipv4Addr,
    /// The IPv6 address both pods held, if any.
    pub v6: Option<Ipv6Addr>,
}

impl PodMove {
    /// True when `ip` is one of the moved addresses.
    pub fn holds(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V4(self.v4) || self.v6.is_some_and(|v6| ip == IpAddr::V6(v6))
    }
}

/// Where a set of reference counters lives.
#[derive(Debug, Clone, Copy)]
enum Where {
    /// A node's forward hook.
    Node(usize),
    /// A pod's own prerouting hook (pods on the redirect node, which never move).
    Pod(usize),
}

/// The nftables reference counters of a [`Cluster`].
#[derive(Debug)]
pub struct Reference {
    /// (where, its counters); a node may have several sets.
    refs: Vec<(Where, NftReference)>,
}

impl Reference {
    /// Installs counters for `pairs` in node `node`'s forward hook, or in
    /// a pod's prerouting hook.
    fn add(&mut self, cluster: &Cluster, at: Where, pairs: &[(IpAddr, IpAddr)]) -> io::Result<()> {
        let r = match at {
            Where::Node(n) => NftReference::install(&cluster.nodes[n].ns, pairs)?,
            Where::Pod(p) => {
                NftReference::install_at(&cluster.pods[p].ns, RefHook::Prerouting, pairs)?
            }
        };
        self.refs.push((at, r));
        Ok(())
    }

    /// Every pair's counters, summed over the nodes that count it.
    ///
    /// # Errors
    /// When nft fails.
    pub fn read(&self, cluster: &Cluster) -> io::Result<HashMap<(IpAddr, IpAddr), Counters>> {
        let mut all: HashMap<(IpAddr, IpAddr), Counters> = HashMap::new();
        for (at, r) in &self.refs {
            let ns = match *at {
                Where::Node(n) => &cluster.nodes[n].ns,
                Where::Pod(p) => &cluster.pods[p].ns,
            };
            for (pair, c) in r.read(ns)? {
                *all.entry(pair).or_default() += c;
            }
        }
        Ok(all)
    }
}

/// Runs the request/response server every simulated service uses, in `ns`
/// on `addr`, until `stop`. Protocol: the client sends an 8-byte header
/// (response size, request size, big-endian u32s) and the request bytes;
/// the server answers with the response bytes.
pub fn serve(ns: &NetNs, addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        l.set_nonblocking(true).expect("nonblocking listener");
        tx.send(()).expect("caller alive");
        let mut conns = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    let stop = stop.clone();
                    conns.push(std::thread::spawn(move || {
                        let _ = handle(s, &stop);
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    });
    rx.recv().expect("server started");
    h
}

fn handle(mut s: TcpStream, stop: &AtomicBool) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0u8; 64 * 1024];
    let zeros = vec![0x42u8; 64 * 1024];
    loop {
        let mut hdr = [0u8; 8];
        if !read_full(&mut s, &mut hdr, stop)? {
            return Ok(());
        }
        let resp = u32::from_be_bytes(hdr[0..4].try_into().expect("4")) as usize;
        let mut req = u32::from_be_bytes(hdr[4..8].try_into().expect("4")) as usize;
        while req > 0 {
            let n = req.min(buf.len());
            if !read_full(&mut s, &mut buf[..n], stop)? {
                return Ok(());
            }
            req -= n;
        }
        let mut left = resp;
        while left > 0 {
            let n = left.min(zeros.len());
            s.write_all(&zeros[..n])?;
            left -= n;
        }
    }
}

/// Reads exactly `buf.len()` bytes; false on EOF or stop.
fn read_full(s: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// One traffic pattern: a client in `ns` that sends `req` bytes and reads
/// `resp` bytes back, `every` apart, on one connection, until `stop` or
/// `deadline`. Returns the request/response pairs completed.
#[expect(
    clippy::too_many_arguments,
    reason = "a traffic pattern has this many knobs"
)]
pub fn client(
    ns: &NetNs,
    to: SocketAddr,
    req: u32,
    resp: u32,
    every: Duration,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    label: &'static str,
) -> JoinHandle<(&'static str, u64)> {
    ns.spawn(move || {
        let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => panic!("{label}: connect {to}: {e}"),
        };
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let payload = vec![0x17u8; req as usize];
        let mut rbuf = vec![0u8; 64 * 1024];
        let mut done = 0u64;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut msg = Vec::with_capacity(8 + payload.len());
            msg.extend_from_slice(&resp.to_be_bytes());
            msg.extend_from_slice(&req.to_be_bytes());
            msg.extend_from_slice(&payload);
            if s.write_all(&msg).is_err() {
                break;
            }
            let mut left = resp as usize;
            while left > 0 {
                match s.read(&mut rbuf[..left.min(64 * 1024)]) {
                    Ok(0) | Err(_) => return (label, done),
                    Ok(n) => left -= n,
                }
            }
            done += 1;
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
        (label, done)
    })
}

/// One client of the traffic mix: what [`client`] is started with.
#[derive(Debug, Clone)]
struct Pattern {
    /// The client pod (index into [`Cluster::pods`]).
    from: usize,
    to: SocketAddr,
    /// The pod that answers (for the ClusterIP, its backend); `None` for the database.
    target: Option<usize>,
    req: u32,
    resp: u32,
    every: Duration,
    label: &'static str,
}

/// A started thread and the flag that stops it.
#[derive(Debug)]
struct Running<T> {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<T>,
}

/// Everything the traffic mix started.
#[derive(Debug)]
pub struct Traffic {
    /// (serving pod, or `None` for the database; its server).
    servers: Vec<(Option<usize>, Running<()>)>,
    clients: Vec<(Pattern, Running<(&'static str, u64)>)>,
    /// Clients stopped by [`Traffic::pause_pod`], to start again.
    paused: Vec<Pattern>,
    /// Exchanges of clients that have already stopped.
    finished: Vec<(&'static str, u64)>,
    /// Senders of hostile frames ([`Traffic::send_malformed`]).
    raw: Vec<Running<(&'static str, u64)>>,
}

/// The workloads that serve on [`SERVER_PORT`].
const SERVERS: [&str; 5] = ["api", "cache", "storage", "frontend", "catalog"];

/// The `catalog` clients, each behind its node's DNAT ([`catalog_dnat`]):
/// from zone a, which has no catalog endpoint, and from zone b, whose
/// node sends it to the endpoint in zone c although zone b has one (what
/// in-zone routing would avoid).
fn catalog_patterns(c: &Cluster) -> Vec<Pattern> {
    CATALOG_CLIENTS
        .iter()
        .filter_map(|&(workload, node, backend_node, label)| {
            let from = c
                .pods
                .iter()
                .position(|p| p.workload == workload && p.node == node)?;
            let target = c
                .pods
                .iter()
                .position(|p| p.workload == "catalog" && p.node == backend_node)?;
            Some(Pattern {
                from,
                to: SocketAddr::new(IpAddr::V4(CATALOG_IP), SERVICE_PORT),
                target: Some(target),
                req: 200,
                resp: 6_000,
                every: Duration::from_millis(20),
                label,
            })
        })
        .collect()
}

/// (client workload, client node, backend node its node DNATs to, label).
const CATALOG_CLIENTS: [(&str, usize, usize, &str); 2] = [
    ("frontend", 1, 3, "frontend->catalog (ClusterIP)"),
    ("orders", 3, 5, "orders->catalog (ClusterIP)"),
];

/// kube-proxy's rule for the `catalog` ClusterIP on each client's node,
/// pinned to one backend per node so that the run is repeatable.
fn catalog_dnat(nodes: &[SimNode], pods: &[SimPod]) -> io::Result<()> {
    for &(_, node, backend_node, _) in &CATALOG_CLIENTS {
        let backend = pods
            .iter()
            .find(|p| p.workload == "catalog" && p.node == backend_node)
            .map(|p| p.v4)
            .ok_or_else(|| io::Error::other("no catalog pod on the backend node"))?;
        let rules = format!(
            "table ip netscope_sim_kubeproxy_catalog {{\n chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n  ip daddr {CATALOG_IP} tcp dport {SERVICE_PORT} dnat to {backend}:{SERVER_PORT}\n }}\n}}\n"
        );
        nodes[node].ns.exec(&["nft", &rules])?;
    }
    Ok(())
}

fn serve_pod(c: &Cluster, i: usize) -> Vec<(Option<usize>, Running<()>)> {
    let p = &c.pods[i];
    if !SERVERS.contains(&p.workload) {
        return Vec::new();
    }
    let mut addrs = vec![IpAddr::V4(p.v4)];
    addrs.extend(p.v6.map(IpAddr::V6));
    addrs
        .into_iter()
        .map(|ip| {
            let stop = Arc::new(AtomicBool::new(false));
            let handle = serve(&p.ns, SocketAddr::new(ip, SERVER_PORT), stop.clone());
            (Some(i), Running { stop, handle })
        })
        .collect()
}

fn start_client(
    c: &Cluster,
    p: Pattern,
    deadline: Instant,
) -> (Pattern, Running<(&'static str, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = client(
        &c.pods[p.from].ns,
        p.to,
        p.req,
        p.resp,
        p.every,
        deadline,
        stop.clone(),
        p.label,
    );
    (p, Running { stop, handle })
}

impl Traffic {
    /// Starts the demo's traffic mix, running until `deadline` (or
    /// [`Traffic::stop`]): HTTP-like request/response (frontend -> api,
    /// across zones, over IPv4 and IPv6), a bulk transfer (reports ->
    /// storage, VLAN-tagged), a chatty client of the `cache` Service behind
    /// the ClusterIP, same-zone calls, and queries to the external database.
    pub fn start(c: &Cluster, deadline: Instant) -> Traffic {
        let mut servers: Vec<_> = (0..c.pods.len()).flat_map(|i| serve_pod(c, i)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = serve(
            &c.ext,
            SocketAddr::new(IpAddr::V4(EXTERNAL_IP), 5432),
            stop.clone(),
        );
        servers.push((None, Running { stop, handle }));
        let pod = |w: &str, node: usize| {
            c.pods
                .iter()
                .position(|p| p.workload == w && p.node == node)
                .expect("pod")
        };
        let (fe1, web, fe2, reports) = (
            pod("frontend", 0),
            pod("web", 0),
            pod("frontend", 1),
            pod("reports", 1),
        );
        let (api1, orders, storage) = (pod("api", 2), pod("orders", 3), pod("storage", 5));
        let api2 = c
            .pods
            .iter()
            .rposition(|p| p.workload == "api")
            .expect("api");
        let ms = Duration::from_millis;
        let to_pod = |from: usize, to: usize, req, resp, every, label| Pattern {
            from,
            to: SocketAddr::new(IpAddr::V4(c.pods[to].v4), SERVER_PORT),
            target: Some(to),
            req,
            resp,
            every,
            label,
        };
        let mut patterns = vec![
            // HTTP-like: small requests, 24 KB responses, zone a -> b.
            to_pod(fe1, api1, 400, 24_000, ms(20), "frontend->api"),
            to_pod(fe2, api2, 350, 16_000, ms(25), "frontend->api"),
            // Bulk: 256 KB uploads, zone a -> c, from the VLAN-tagged pod.
            to_pod(reports, storage, 256 * 1024, 0, ms(40), "reports->storage"),
            // Chatty, through the ClusterIP: tiny requests, 2 KB answers.
            Pattern {
                from: web,
                to: SocketAddr::new(IpAddr::V4(CLUSTER_IP), SERVICE_PORT),
                target: Some(c.service_backend),
                req: 120,
                resp: 2_000,
                every: ms(5),
                label: "web->cache (ClusterIP)",
            },
            // Same zone: web -> frontend on the other zone-a node.
            to_pod(web, fe2, 200, 4_000, ms(30), "web->frontend"),
            // The external database, from zone b.
            Pattern {
                from: orders,
                to: SocketAddr::new(IpAddr::V4(EXTERNAL_IP), 5432),
                target: None,
                req: 300,
                resp: 8_000,
                every: ms(25),
                label: "orders->rds",
            },
        ];
        patterns.extend(catalog_patterns(c));
        // IPv6: frontend (zone a) -> api (zone b), both dual-stack.
        if let (Some(_), Some(v6)) = (c.pods[fe1].v6, c.pods[api1].v6) {
            patterns.push(Pattern {
                to: SocketAddr::new(IpAddr::V6(v6), SERVER_PORT),
                ..to_pod(fe1, api1, 300, 12_000, ms(40), "frontend->api (IPv6)")
            });
        }
        // Same node on the redirect node: the sender's link ingress
        // redirects straight into the receiver (never on the uplink).
        if let Some(r) = c.redirect_node {
            let on_r: Vec<usize> = (0..c.pods.len()).filter(|&i| c.pods[i].node == r).collect();
            let server = on_r
                .iter()
                .copied()
                .find(|&i| SERVERS.contains(&c.pods[i].workload));
            let from = on_r.iter().copied().find(|&i| Some(i) != server);
            if let (Some(from), Some(server)) = (from, server) {
                patterns.push(to_pod(
                    from,
                    server,
                    500,
                    6_000,
                    ms(30),
                    "same node (redirect node)",
                ));
            }
        }
        let clients = patterns
            .into_iter()
            .map(|p| start_client(c, p, deadline))
            .collect();
        Traffic {
            servers,
            clients,
            paused: Vec::new(),
            finished: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// Makes pod `from` send, every `every` until `deadline`, one IPv4
    /// frame that the kernel drops as malformed: a valid header checksum,
    /// but a total length ([`MALFORMED_TOT_LEN`]) below the header's own 20
    /// bytes, addressed to `to`. Any pod with CAP_NET_RAW can send it.
    /// The receiving host drops it in `ip_rcv` before forwarding, so the
    /// nftables reference never sees it, and a correct monitor counts
    /// nothing for it either. Sent on an AF_PACKET socket on the pod's
    /// `eth0` to the host-side link's MAC.
    ///
    /// # Errors
    /// When the host-side link's MAC cannot be read.
    pub fn send_malformed(
        &mut self,
        c: &Cluster,
        from: usize,
        to: Ipv4Addr,
        every: Duration,
        deadline: Instant,
    ) -> io::Result<()> {
        let pod = &c.pods[from];
        let dst_mac = link_mac(&c.nodes[pod.node].ns, &pod.host_if)?;
        let frame = malformed_ipv4(dst_mac, pod.v4, to);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = pod.ns.spawn(move || {
            let mut sent = 0u64;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match send_raw("eth0", &frame) {
                    Ok(()) => sent += 1,
                    Err(e) => eprintln!("sim: sending a malformed frame failed: {e}"),
                }
                std::thread::sleep(every);
            }
            ("malformed IPv4 (hostile)", sent)
        });
        self.raw.push(Running { stop, handle });
        Ok(())
    }

    /// Stops every client that talks to or from pod `i`, then the pod's
    /// servers, and waits for them: when it returns, no connection of the
    /// pod is open.
    pub fn pause_pod(&mut self, i: usize) {
        let (hit, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.clients)
            .into_iter()
            .partition(|(p, _)| p.from == i || p.target == Some(i));
        self.clients = keep;
        for (_, r) in &hit {
            r.stop.store(true, Ordering::Relaxed);
        }
        for (p, r) in hit {
            self.finished
                .push(r.handle.join().unwrap_or(("panicked", 0)));
            self.paused.push(p);
        }
        let (hit, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.servers)
            .into_iter()
            .partition(|(pod, _)| *pod == Some(i));
        self.servers = keep;
        for (_, r) in &hit {
            r.stop.store(true, Ordering::Relaxed);
        }
        for (_, r) in hit {
            let _ = r.handle.join();
        }
    }

    /// Starts pod `i`'s servers again (in its current namespace: after
    /// [`Cluster::move_pod`], the new pod's) and the clients
    /// [`pause_pod`](Self::pause_pod) stopped, running until `deadline`.
    pub fn resume_pod(&mut self, c: &Cluster, i: usize, deadline: Instant) {
        self.servers.extend(serve_pod(c, i));
        let (resume, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.paused)
            .into_iter()
            .partition(|p| p.from == i || p.target == Some(i));
        self.paused = keep;
        for p in resume {
            self.clients.push(start_client(c, p, deadline));
        }
    }

    /// Waits for the clients to reach their deadline, stops the servers and
    /// returns (pattern, completed exchanges), a pattern's runs summed.
    pub fn stop(self) -> Vec<(&'static str, u64)> {
        let mut out = self.finished;
        for r in &self.raw {
            r.stop.store(true, Ordering::Relaxed);
        }
        out.extend(
            self.raw
                .into_iter()
                .map(|r| r.handle.join().unwrap_or(("panicked", 0))),
        );
        out.extend(
            self.clients
                .into_iter()
                .map(|(_, r)| r.handle.join().unwrap_or(("panicked", 0))),
        );
        for (_, r) in &self.servers {
            r.stop.store(true, Ordering::Relaxed);
        }
        for (_, r) in self.servers {
            let _ = r.handle.join();
        }
        let mut summed: Vec<(&'static str, u64)> = Vec::new();
        for (label, n) in out {
            match summed.iter_mut().find(|(l, _)| *l == label) {
                Some(e) => e.1 += n,
                None => summed.push((label, n)),
            }
        }
        summed
    }
}

/// The IPv4 total length [`Traffic::send_malformed`] writes: below the
/// 20-byte header it comes with.
pub const MALFORMED_TOT_LEN: u16 = 10;

fn parse_mac(s: &str) -> io::Result<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| io::Error::other(format!("MAC {s:?}: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| io::Error::other(format!("MAC {s:?}: not 6 bytes")))
}

/// An Ethernet frame with an IPv4 header whose total length is
/// [`MALFORMED_TOT_LEN`] (checksum valid), then zero padding to 60 bytes.
fn malformed_ipv4(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&MALFORMED_TOT_LEN.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.resize(60, 0);
    f
}

/// Sends `frame` as is on `dev` (in the calling thread's namespace) through
/// an AF_PACKET socket.
fn send_raw(dev: &str, frame: &[u8]) -> io::Result<()> {
    let ifindex = super::super::interface(dev)?.ifindex;
    // SAFETY: plain socket(2) call; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: the buffer and address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
