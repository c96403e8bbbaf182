//! `make demo`: a simulated three-zone cluster on this machine, measured by
//! the real netscope agents and aggregator.
//!
//! It builds six node namespaces in three zones with ten pods behind
//! CNI-named veth pairs, starts one `netscope-agent` per node and a
//! `netscope-aggregator`, runs a traffic mix for `--duration`, and prints a
//! zone-to-zone matrix, the top cross-zone talkers and the monthly cost.
//! With `--verify` it also checks every pod-pair series against nftables
//! counters the kernel kept independently, to the byte (the end-to-end
//! test runs it that way). Needs root. Everything it creates is removed on
//! exit, on Ctrl-C and on failure.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use netscope::AttachMode;
use netscope::Counters;
use netscope_bpf::testing::netns::{self, NetNs};
use netscope_bpf::testing::sim::{self, Cluster, PodMove, Reference, Traffic, AGGREGATOR_IP};

mod demo_deploy;
use demo_deploy::Launch;

#[derive(Debug, Parser)]
#[command(
    about = "netscope demo: a simulated three-zone cluster measured by the real agents and aggregator"
)]
struct Args {
    /// How long the traffic mix runs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Attach mode the agents use.
    #[arg(long, default_value = "auto")]
    attach_mode: AttachMode,
    /// Local address where the aggregator's /metrics is served (proxied into its namespace).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Agents' collection interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    collection_interval: Duration,
    /// Check every pod pair against the nftables reference and exit non-zero on a mismatch.
    #[arg(long)]
    verify: bool,
    /// Exit after the report instead of serving /metrics until Ctrl-C (the
    /// default when stdin is not a terminal).
    #[arg(long)]
    exit: bool,
    /// Also run a real Prometheus server (/usr/bin/prometheus) on this
    /// address, scraping the aggregator, and answer the README's queries
    /// through its HTTP API.
    #[arg(long)]
    prometheus: Option<SocketAddr>,
    /// Mid-run restarts (for the end-to-end test): kill -9 and restart one
    /// agent at a third of the run; at two thirds, hold the agents' reports
    /// back, scrape, kill -9 the aggregator and start it again.
    #[arg(long)]
    restarts: bool,
    /// With --restarts: the restarted agent runs with the test-only
    /// NETSCOPE_FAILPOINT=STEP[:N] (after-stage, after-journal,
    /// after-commit, after-send, after-ack), so it SIGKILLs itself at that
    /// step of its drain cycle; the demo starts it a third time, and every
    /// pair must still be exact.
    #[arg(long, requires = "restarts", value_name = "STEP[:N]")]
    failpoint: Option<String>,
    /// With --restarts: at half the run, a rolling upgrade of the restarted
    /// node's agent: SIGTERM, then an agent presenting another pinned
    /// layout (test-only NETSCOPE_TEST_LAYOUT_VERSION = this build's + 1) takes over its
    /// links and drains the old layout's maps. Every pair stays exact.
    #[arg(long, requires = "restarts")]
    upgrade: bool,
    /// With --upgrade: the agent binary to upgrade to, run as it is (for
    /// example this build, when --bin-dir holds a build of an older pinned
    /// layout). Default: the same binary, presenting the next layout.
    #[arg(long, requires = "upgrade", value_name = "PATH")]
    upgrade_to: Option<PathBuf>,
    /// Mid-run (for the end-to-end test): at two fifths, delete the
    /// `storage` pod and re-create it under a new name with the same IP on
    /// a node in another zone; bytes must follow the pod that held the IP.
    #[arg(long)]
    move_pod: bool,
    /// Hostile inputs (for the end-to-end test): a pod sends a malformed
    /// IPv4 frame (total length below its header length) every half
    /// collection interval, and a host on the underlay that is not a node
    /// reports traffic in node-1's name. Neither may change a count.
    #[arg(long)]
    hostile: bool,
    /// Node number (1-6) that delivers into its pods with
    /// `bpf_redirect_peer` from its uplink's and its pod links' ingress, as
    /// Cilium with BPF host routing does; adds a same-node pod pair on it.
    /// 0: every node routes through the kernel.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=6))]
    redirect_node: u8,

    /// Aggregator replicas (for the end-to-end test of issue 18): the agents
    /// share them through an endpoints file (as through a headless
    /// Service). With more than one, at a third of the run the replica
    /// serving the most agents is held, scraped and killed (-9), and at
    /// half of the run one is added.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5),
        conflicts_with_all = ["restarts", "prometheus", "aggregator_image"])]
    aggregators: u8,

    /// Namespace prefix (must start with ns- or netscope-test-).
    #[arg(long, default_value = "ns-sim")]
    prefix: String,
    /// Where the binaries are (default: next to this one, then target/{release,debug}).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run the agents from this container image (make images) instead of
    /// the binary, each in its node's namespace with `--agent-caps` only.
    #[arg(long, conflicts_with = "restarts")]
    agent_image: Option<String>,
    /// Run the aggregator from this container image, as the chart's
    /// non-root user without capabilities.
    #[arg(long, conflicts_with = "restarts")]
    aggregator_image: Option<String>,
    /// The container engine for the images (podman: it joins an existing
    /// network namespace without a daemon, bridge or iptables rule).
    #[arg(long, default_value = "podman")]
    engine: String,
    /// The capabilities the agent container gets (the chart's
    /// agent.capabilities).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "BPF,NET_ADMIN,PERFMON,SYS_RESOURCE"
    )]
    agent_caps: Vec<String>,
    /// Also scrape the agents, and after the run run every query of this
    /// Grafana dashboard JSON through the Prometheus (--prometheus), and
    /// compare its exact panels with what the demo computed.
    #[arg(long, requires = "prometheus")]
    check_dashboard: Option<PathBuf>,
}

/// A child process killed (and reaped) on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        // SIGTERM first: agents detach and flush; then make sure.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "demo: {} did not stop on SIGTERM; killed (log: {})",
            self.name,
            self.log.display()
        );
    }
}

fn spawn_in(ns: &NetNs, name: &str, bin: &Launch, args: &[String], dir: &Path) -> Result<Proc> {
    spawn_in_env(ns, name, bin, args, dir, &[])
}

/// [`spawn_in`] with extra environment variables (binaries only, not images).
fn spawn_in_env(
    ns: &NetNs,
    name: &str,
    bin: &Launch,
    args: &[String],
    dir: &Path,
    env: &[(&str, &str)],
) -> Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let mut command = bin.command(&ns.path(), &format!("{}-{name}", ns.name()), args);
    command.envs(env.iter().copied());
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {bin:?}"))?;
    Ok(Proc {
        name: name.to_string(),
        child,
        log,
    })
}

/// The agents' pin directories: whatever they left pinned (they leave
/// their programs attached on SIGTERM) is removed on drop, the way the
/// chart's uninstall hook runs `netscope-agent --cleanup`. Declared before
/// the agents, so dropped after them.
struct PinRoots(Vec<PathBuf>);

impl Drop for PinRoots {
    fn drop(&mut self) {
        for root in &self.0 {
            if let Err(e) = netscope_bpf::pin::cleanup(root) {
                eprintln!("demo: cleaning up {}: {e}", root.display());
            }
        }
    }
}

fn find_bin(args: &Args, name: &str) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = &args.bin_dir {
        dirs.push(d.clone());
    }
    if let Some(d) = std::env::current_exe()?.parent().and_then(Path::parent) {
        dirs.push(d.to_path_buf());
    }
    dirs.push("target/release".into());
    dirs.push("target/debug".into());
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).with_context(|| {
        format!("{name} not found in {dirs:?}: build it first (cargo build --release -p netscope-agent -p netscope-aggregator)")
    })
}

/// Forwards `listen` (this namespace) to `target` inside `ns`, so the
/// aggregator's /metrics is reachable on this machine's loopback.
fn proxy(
    listen: SocketAddr,
    ns_path: String,
    target: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    l.set_nonblocking(true)?;
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((client, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let path = ns_path.clone();
            std::thread::spawn(move || {
                if netns::enter(&path).is_err() {
                    return;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    return;
                };
                let _ = client.set_nonblocking(false);
                let (mut c2, mut s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let (mut s, mut c) = (server, client);
                let _ = std::io::copy(&mut s, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    Ok(())
}

/// The node whose agent the restart test kills (node-3, zone b: the `api` pods).
const RESTARTED_NODE: usize = 2;
/// The workload whose pod `--move-pod` deletes and re-creates elsewhere
/// (on node-6, zone c; a server only, so pausing its traffic is simple).
const MOVED_WORKLOAD: &str = "storage";
/// Where it comes back: node-4, zone b.
const MOVED_TO_NODE: usize = 3;

/// A pod move and the reference counters read at the moment of the move,
/// when no traffic to or from the address was in flight.
struct Moved {
    info: PodMove,
    at_move: HashMap<(IpAddr, IpAddr), Counters>,
}

fn wait_attached(p: &mut Proc, want: usize, interrupted: &AtomicBool) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if !p.alive() {
            bail!(
                "{} exited early; its log:\n{}",
                p.name,
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        let n = std::fs::read_to_string(&p.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" attached "))
            .count();
        if n >= want {
            return Ok(());
        }
        if Instant::now() > end || interrupted.load(Ordering::Relaxed) {
            bail!(
                "{} did not attach to its {want} hooks within 30 s (log: {})",
                p.name,
                p.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Links an agent must attach to: both directions of each of its node's pods.
fn links_of(cluster: &Cluster, node: usize) -> usize {
    2 * cluster.pods.iter().filter(|p| p.node == node).count()
}

/// Deletes the `storage` pod and re-creates it, same IP, on a node in
/// another zone, in the order that makes every byte attributable: its
/// traffic stops; the pod moves; the agents report the old pod's last
/// bytes (two collection intervals); the reference is read; the topology
/// file changes and the aggregator reloads it (the old pod's claim on the
/// address ends then, the new one's starts); the new node's agent attaches;
/// the traffic starts again.
#[expect(clippy::too_many_arguments, reason = "the demo's moving parts")]
fn move_pod(
    cluster: &mut Cluster,
    reference: &mut Reference,
    traffic: &mut Traffic,
    agent: &mut Proc,
    topo: &Path,
    args: &Args,
    deadline: Instant,
    interrupted: &AtomicBool,
) -> Result<Moved> {
    let i = cluster
        .pods
        .iter()
        .position(|p| p.workload == MOVED_WORKLOAD)
        .context("no pod to move")?;
    traffic.pause_pod(i);
    // Connection teardown (FIN, last ACK) is over well within a second.
    std::thread::sleep(Duration::from_secs(1));
    let info = cluster
        .move_pod(i, MOVED_TO_NODE, reference)
        .context("moving the pod")?;
    std::thread::sleep(args.collection_interval * 2 + Duration::from_secs(1));
    let at_move = reference
        .read(cluster)
        .context("reading the reference at the move")?;
    let loads = |s: &[Sample]| sum(s, "netscope_topology_loads_total");
    let before = loads(&scrape(args.metrics_addr).context("scraping before the move")?);
    let tmp = topo.with_extension("yaml.new");
    std::fs::write(&tmp, cluster.topology_yaml())?;
    std::fs::rename(&tmp, topo)?;
    let end = Instant::now() + Duration::from_secs(30);
    while loads(&scrape(args.metrics_addr)?) <= before {
        if Instant::now() > end || interrupted.load(Ordering::Relaxed) {
            bail!("the aggregator did not reload the topology within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_attached(agent, links_of(cluster, MOVED_TO_NODE), interrupted)?;
    traffic.resume_pod(
        cluster,
        i,
        deadline.max(Instant::now() + Duration::from_secs(4)),
    );
    Ok(Moved { info, at_move })
}

/// One Prometheus sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn scrape(addr: SocketAddr) -> Result<Vec<Sample>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .context("connecting to /metrics")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let text = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(parse_metrics(text))
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
            None => (head.to_string(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        m.insert(k.trim_start_matches(',').to_string(), val);
        rest = &after[end..];
    }
    m
}

/// One sample per series: the values of `a` and `b` added.
fn merge(a: Vec<Sample>, b: Vec<Sample>) -> Vec<Sample> {
    let mut by_series: BTreeMap<(String, BTreeMap<String, String>), f64> = BTreeMap::new();
    for (name, labels, v) in a.into_iter().chain(b) {
        *by_series.entry((name, labels)).or_default() += v;
    }
    by_series
        .into_iter()
        .map(|((name, labels), v)| (name, labels, v))
        .collect()
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples.iter().filter(|s| s.0 == name).map(|s| s.2).sum()
}

fn human(bytes: f64) -> String {
    // Also turns the -0.0 of an empty float sum into 0.
    let bytes = if bytes > 0.0 { bytes } else { 0.0 };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads BPF programs: run it as root (sudo make demo)");
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let dir = std::env::temp_dir().join(format!("netscope-demo-{}", std::process::id()));
    let image = |image: &Option<String>, caps: Option<Vec<String>>, bin: &str| -> Result<Launch> {
        Ok(match image {
            Some(image) => Launch::Image {
                engine: args.engine.clone(),
                image: image.clone(),
                caps,
                dir: dir.clone(),
            },
            None => Launch::Bin(find_bin(&args, bin)?),
        })
    };
    let agent_bin = image(
        &args.agent_image,
        Some(args.agent_caps.clone()),
        "netscope-agent",
    )?;
    let agg_bin = image(&args.aggregator_image, None, "netscope-aggregator")?;
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &agent_bin, &agg_bin, &dir, &interrupted);
    let _ = std::fs::remove_dir_all(&dir);
    if interrupted.load(Ordering::Relaxed) && result.is_ok() {
        println!("\ndemo: stopped; every namespace, link and program it made is gone.");
    }
    result
}

// Kept out of the libc crate dependency: one symbol.
unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run(
    args: &Args,
    agent_bin: &Launch,
    agg_bin: &Launch,
    dir: &Path,
    interrupted: &Arc<AtomicBool>,
) -> Result<()> {
    println!("demo: building the simulated cluster (3 zones x 2 nodes, 12 pods, an external database) ...");
    let opts = sim::SimOptions {
        redirect_node: (args.redirect_node > 0).then(|| usize::from(args.redirect_node) - 1),
        legacy_tc: args.attach_mode == AttachMode::Tc,
    };
    let mut cluster =
        Cluster::build_with(&args.prefix, opts).context("building the simulated cluster")?;
    let mut reference = cluster
        .install_reference()
        .context("installing the nftables reference counters")?;
    let topo = dir.join("topology.yaml");
    let custom = dir.join("custom-endpoints.yaml");
    std::fs::write(&topo, cluster.topology_yaml())?;
    std::fs::write(&custom, cluster.custom_endpoints_yaml())?;

    let listen = SocketAddr::new(IpAddr::V4(AGGREGATOR_IP), 8080);
    let agg_args: Vec<String> = vec![
        "--listen-addr".into(),
        listen.to_string(),
        "--topology".into(),
        topo.display().to_string(),
        "--custom-endpoints".into(),
        custom.display().to_string(),
        "--reload-interval".into(),
        "1s".into(),
    ];
    // Each node's agent pins its maps and links in its own bpffs directory
    // and journals in its own state directory (issue 15): the restarted
    // agent adopts them. Removed when the run ends, after the agents stop.
    let _pins = PinRoots(
        cluster
            .nodes
            .iter()
            .map(|n| PathBuf::from(format!("/sys/fs/bpf/{}", n.ns.name())))
            .collect(),
    );
    let replicas_file = dir.join("aggregator-replicas.txt");
    let server_endpoint = if args.aggregators > 1 {
        format!("file:{}", replicas_file.display())
    } else {
        listen.to_string()
    };
    let agent_args = |n: &sim::SimNode| -> Vec<String> {
        let mut a = vec![
            "--pin-root".into(),
            format!("/sys/fs/bpf/{}", n.ns.name()),
            "--state-dir".into(),
            dir.join(format!("state-{}", n.name)).display().to_string(),
            "--node-name".into(),
            n.name.clone(),
            "--server-endpoint".into(),
            server_endpoint.clone(),
            "--collection-interval".into(),
            humantime::format_duration(args.collection_interval).to_string(),
            "--service-cidrs".into(),
            sim::SERVICE_CIDR.into(),
            "--attach-mode".into(),
            args.attach_mode.to_string(),
            "--debug-addr".into(),
            "127.0.0.1:6060".into(),
        ];
        if args.aggregators > 1 {
            a.extend(replicas::AGENT_ARGS.iter().map(|x| x.to_string()));
        }
        a
    };
    let mut aggregator = spawn_in(&cluster.agg, "aggregator", agg_bin, &agg_args, dir)?;
    let mut replicas = if args.aggregators > 1 {
        Some(replicas::Replicas::start(
            &cluster,
            agg_bin,
            &agg_args,
            dir,
            usize::from(args.aggregators),
            &replicas_file,
            args.metrics_addr,
        )?)
    } else {
        None
    };
    let stop_proxy = Arc::new(AtomicBool::new(false));
    proxy(
        args.metrics_addr,
        cluster.agg.path(),
        listen,
        stop_proxy.clone(),
    )?;
    // With --check-dashboard, Prometheus scrapes the agents' debug ports
    // too, forwarded from each node's namespace.
    let mut agent_targets = Vec::new();
    if args.check_dashboard.is_some() {
        for (i, n) in cluster.nodes.iter().enumerate() {
            let port = args
                .metrics_addr
                .port()
                .checked_add(100 + i as u16)
                .context(
                    "--metrics-addr's port + 106 (the agents' forwarded ports) is over 65535",
                )?;
            let l = SocketAddr::new(args.metrics_addr.ip(), port);
            proxy(
                l,
                n.ns.path(),
                "127.0.0.1:6060".parse()?,
                stop_proxy.clone(),
            )?;
            agent_targets.push(l);
        }
    }
    let _prometheus = match args.prometheus {
        Some(addr) => Some(start_prometheus(
            addr,
            args.metrics_addr,
            &agent_targets,
            dir,
        )?),
        None => None,
    };
    let mut agents = cluster
        .nodes
        .iter()
        .map(|n| {
            spawn_in(
                &n.ns,
                &format!("agent-{}", n.name),
                agent_bin,
                &agent_args(n),
                dir,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    // Links an agent must attach to: both directions of each of its pods.
    // Wait until every agent attached to all of its pods' links.
    for (i, agent) in agents.iter_mut().enumerate() {
        wait_attached(agent, links_of(&cluster, i), interrupted)?;
    }
    if !aggregator.alive() {
        bail!(
            "the aggregator exited; its log:\n{}",
            std::fs::read_to_string(&aggregator.log).unwrap_or_default()
        );
    }
    println!(
        "demo: 6 agents attached ({} mode) to {} pod links; aggregator at {listen} (metrics: http://{}/metrics)",
        args.attach_mode,
        cluster.pods.len(),
        args.metrics_addr
    );

    println!(
        "demo: running the traffic mix for {} ...",
        humantime::format_duration(args.duration)
    );
    let t0 = Instant::now();
    let deadline = t0 + args.duration;
    let mut traffic = Traffic::start(&cluster, deadline);
    if args.hostile {
        // Where the sender's observation is the counted one: to the
        // external database. From `orders`, which queries it, a frame
        // counted by mistake inflates a verified pair; from `web`, which
        // never talks to it, it makes a flow of its own whose one packet
        // is shorter than an IP header.
        for from in [
            pod_index(&cluster, "orders", 3),
            pod_index(&cluster, "web", 0),
        ] {
            traffic
                .send_malformed(
                    &cluster,
                    from,
                    sim::EXTERNAL_IP,
                    args.collection_interval / 2,
                    deadline,
                )
                .context("starting the malformed-frame sender")?;
        }
    }
    let impersonation_refused = if args.hostile {
        Some(impersonate_node(&cluster, listen, args.metrics_addr)?)
    } else {
        None
    };
    let mut next_progress = t0 + Duration::from_secs(5);
    let (agent_restart_at, agg_restart_at) = (t0 + args.duration / 3, t0 + args.duration * 2 / 3);
    let (mut agent_restarted, mut agg_restarted) = (!args.restarts, !args.restarts);
    let (move_at, mut moved) = (t0 + args.duration * 2 / 5, None);
    let mut before_agg_restart: Vec<Sample> = Vec::new();
    // A disruption that a slow machine pushed past the deadline still runs.
    let mut failpoint_fired = args.failpoint.is_none();
    let (upgrade_at, mut upgraded) = (t0 + args.duration / 2, !args.upgrade);
    while (Instant::now() < deadline
        || !failpoint_fired
        || !upgraded
        || !agent_restarted
        || !agg_restarted
        || (args.move_pod && moved.is_none()))
        && !interrupted.load(Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_millis(100));
        if !agent_restarted && Instant::now() >= agent_restart_at {
            agent_restarted = true;
            let i = RESTARTED_NODE;
            let p = &mut agents[i];
            let _ = p.child.kill(); // SIGKILL: nothing detached, nothing flushed
            let _ = p.child.wait();
            println!(
                "  {:>4}s  agent on {} killed (-9); starting it again",
                t0.elapsed().as_secs(),
                cluster.nodes[i].name
            );
            let n = &cluster.nodes[i];
            let env: Vec<(&str, &str)> = args
                .failpoint
                .iter()
                .map(|f| ("NETSCOPE_FAILPOINT", f.as_str()))
                .collect();
            agents[i] = spawn_in_env(
                &n.ns,
                &format!("agent-{}-2", n.name),
                agent_bin,
                &agent_args(n),
                dir,
                &env,
            )?;
            wait_attached(&mut agents[i], links_of(&cluster, i), interrupted)?;
        }
        if agent_restarted && !failpoint_fired {
            let i = RESTARTED_NODE;
            if !agents[i].alive() {
                failpoint_fired = true;
                println!(
                    "  {:>4}s  agent on {} killed itself at failpoint {}; starting it again",
                    t0.elapsed().as_secs(),
                    cluster.nodes[i].name,
                    args.failpoint.as_deref().unwrap_or_default()
                );
                let n = &cluster.nodes[i];
                agents[i] = spawn_in(
                    &n.ns,
                    &format!("agent-{}-3", n.name),
                    agent_bin,
                    &agent_args(n),
                    dir,
                )?;
                wait_attached(&mut agents[i], links_of(&cluster, i), interrupted)?;
            } else if Instant::now() > deadline + Duration::from_secs(30) {
                bail!(
                    "the failpoint {:?} never fired (log: {})",
                    args.failpoint,
                    agents[i].log.display()
                );
            }
        }
        if !upgraded && failpoint_fired && agent_restarted && Instant::now() >= upgrade_at {
            upgraded = true;
            let i = RESTARTED_NODE;
            let n = &cluster.nodes[i];
            let _ = Command::new("kill")
                .args(["-TERM", &agents[i].child.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(20);
            while agents[i].alive() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            if agents[i].alive() {
                bail!("the agent on {} did not stop on SIGTERM", n.name);
            }
            let next = netscope_bpf::pin::LAYOUT_VERSION + 1;
            agents[i] = match &args.upgrade_to {
                Some(bin) => {
                    println!(
                        "  {:>4}s  agent on {} stopped (SIGTERM) and replaced by {} (rolling upgrade)",
                        t0.elapsed().as_secs(),
                        n.name,
                        bin.display()
                    );
                    let name = format!("agent-{}-upgraded", n.name);
                    spawn_in(&n.ns, &name, &Launch::Bin(bin.clone()), &agent_args(n), dir)?
                }
                None => {
                    println!(
                        "  {:>4}s  agent on {} stopped (SIGTERM) and replaced by a build of pinned layout v{next} (rolling upgrade)",
                        t0.elapsed().as_secs(),
                        n.name
                    );
                    let env = [("NETSCOPE_TEST_LAYOUT_VERSION", next.to_string())];
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let name = format!("agent-{}-v{next}", n.name);
                    spawn_in_env(&n.ns, &name, agent_bin, &agent_args(n), dir, &env)?
                }
            };
            wait_attached(&mut agents[i], links_of(&cluster, i), interrupted)?;
        }
        if args.move_pod && moved.is_none() && Instant::now() >= move_at {
            let m = move_pod(
                &mut cluster,
                &mut reference,
                &mut traffic,
                &mut agents[MOVED_TO_NODE],
                &topo,
                args,
                deadline,
                interrupted,
            )?;
            let p = &cluster.pods[m.info.pod];
            println!(
                "  {:>4}s  pod {} deleted on {} ({}); {} created on {} ({}) with the same IP {}",
                t0.elapsed().as_secs(),
                m.info.old_name,
                cluster.nodes[m.info.old_node].name,
                cluster.nodes[m.info.old_node].zone,
                p.name,
                cluster.nodes[p.node].name,
                cluster.nodes[p.node].zone,
                p.v4
            );
            moved = Some(m);
        }
        if !agg_restarted && Instant::now() >= agg_restart_at {
            agg_restarted = true;
            // Hold the agents' reports back (they buffer and retry), take
            // the last scrape, then restart the aggregator.
            cluster
                .agg
                .exec(&["nft", "add table inet netscope_demo_hold"])?;
            cluster.agg.exec(&["nft", "add chain inet netscope_demo_hold input { type filter hook input priority 0; policy accept; }"])?;
            cluster.agg.exec(&[
                "nft",
                "add rule inet netscope_demo_hold input iifname uplink tcp dport 8080 drop",
            ])?;
            std::thread::sleep(Duration::from_millis(500));
            before_agg_restart =
                scrape(args.metrics_addr).context("scraping before the aggregator restart")?;
            // Kill the old one (nothing reaches it any more, so it has
            // nothing left to count), and only then start the new one on
            // the same port. A graceful stop would wait out its shutdown
            // grace for the agents' held connections.
            let _ = aggregator.child.kill();
            let _ = aggregator.child.wait();
            aggregator = spawn_in(&cluster.agg, "aggregator-2", agg_bin, &agg_args, dir)?;
            cluster
                .agg
                .exec(&["nft", "delete table inet netscope_demo_hold"])?;
            println!(
                "  {:>4}s  aggregator killed (-9) after its last scrape and started again; agents resend what it had not acknowledged",
                t0.elapsed().as_secs()
            );
        }
        if let Some(r) = replicas.as_mut() {
            r.step(&cluster, t0, args.duration, agg_bin, dir)?;
        }
        if Instant::now() >= next_progress {
            next_progress = Instant::now() + Duration::from_secs(5);
            if let Ok(s) = scrape(args.metrics_addr) {
                println!(
                    "  {:>4}s  counted {:>10}  cross-zone {:>10}",
                    t0.elapsed().as_secs(),
                    human(sum(&s, "pod_network_traffic_bytes_total")),
                    human(sum(&s, "pod_cross_zone_network_traffic_bytes_total"))
                );
            }
        }
    }
    let exchanges = traffic.stop();
    let elapsed = t0.elapsed();
    if interrupted.load(Ordering::Relaxed) {
        return Ok(());
    }
    // Let the agents drain and report the last interval.
    std::thread::sleep(args.collection_interval * 2 + Duration::from_secs(1));
    let last = scrape(args.metrics_addr).context("scraping the aggregator")?;
    // Counters restart with the aggregator: the totals are the last scrape
    // before the restart plus everything after it.
    let mut samples = merge(last.clone(), before_agg_restart);
    if let Some(r) = replicas.as_mut() {
        samples = r.finish(&cluster, samples)?;
    }
    report(&samples, elapsed, &exchanges);
    report_services(&samples, elapsed);

    let mut failed = args.verify && impersonation_refused == Some(false);
    if let Some(addr) = args.prometheus {
        // Prometheus holds the counters the aggregator exports now (since
        // its restart, if any).
        failed |= !prometheus_queries(addr, &last, args.verify)?;
        failed |= !prometheus_service_query(addr, &last, args.verify)?;
        if let Some(path) = &args.check_dashboard {
            failed |= !demo_deploy::check_dashboard(addr, path, &last, elapsed)?;
        }
    }
    if args.verify {
        failed |= !verify(
            &cluster,
            &reference,
            &samples,
            args.restarts,
            moved.as_ref(),
        )?;
        if args.upgrade {
            // The next layout's agent took the links over and drained the old maps.
            let log = std::fs::read_to_string(&agents[RESTARTED_NODE].log).unwrap_or_default();
            let drained =
                log.contains("the older layout's maps are drained (both sides) and removed");
            let adopted = log.matches("adopted a pinned TCX link").count();
            let who = match &args.upgrade_to {
                Some(bin) => format!("the older layout drained and removed by {}", bin.display()),
                None => format!(
                    "layout v{} drained and removed by the v{} agent",
                    netscope_bpf::pin::LAYOUT_VERSION,
                    netscope_bpf::pin::LAYOUT_VERSION + 1
                ),
            };
            println!(
                "verify: rolling upgrade: {who}: {drained}; pinned TCX links it adopted: {adopted}"
            );
            failed |= !drained;
        }
        if args.restarts && args.attach_mode == AttachMode::Tc {
            // The restarted agent replaced its filters; it did not add copies.
            for p in cluster.pods.iter().filter(|p| p.node == RESTARTED_NODE) {
                for hook in ["ingress", "egress"] {
                    let out = cluster.nodes[RESTARTED_NODE]
                        .ns
                        .exec(&["tc", "filter", "show", "dev", &p.host_if, hook])?;
                    let n = out.matches("handle 0x4e53").count();
                    println!(
                        "verify: {} {hook}: {n} netscope filter(s) after the restart",
                        p.host_if
                    );
                    failed |= n != 1;
                }
            }
        }
        failed |= !verify_services(&cluster, &reference, &samples)?;
        if let Some(r) = cluster.redirect_node {
            let (done, refused) = cluster.redirected_packets()?;
            println!("verify: node-{}: {done} packets delivered with bpf_redirect_peer, {refused} refused", r + 1);
            failed |= done == 0 || refused > 0;
        }
        let tagged = cluster.vlan_tagged_packets()?;
        println!("verify: {tagged} packets of the VLAN pod carried their tag in skb metadata at the host side");
        if tagged == 0 {
            failed = true;
        }
    }
    if failed {
        bail!("verification failed; logs in {}", dir.display());
    }

    let interactive = std::io::stdin().is_terminal() && !args.exit;
    if interactive {
        println!("\ndemo: /metrics stays served at http://{}/metrics; press Ctrl-C to stop and clean up.", args.metrics_addr);
        while !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop_proxy.store(true, Ordering::Relaxed);
    // Agents first (they detach and flush), then the aggregator.
    drop(agents);
    drop(replicas);
    drop(aggregator);
    drop(cluster);
    Ok(())
}

/// From the external database's host (on the underlay, not a node), sends
/// a report in node-1's name that claims traffic from node-1's `web` pod to
/// the database (hostile_report --kind impersonate). If it were counted, a
/// `web -> rds-primary` series would appear that nftables never saw. True
/// when the aggregator refused it and counted the refusal.
fn impersonate_node(c: &Cluster, aggregator: SocketAddr, metrics: SocketAddr) -> Result<bool> {
    let bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("hostile_report"))
        .filter(|p| p.is_file())
        .context("hostile_report not found next to the demo: cargo build -p netscope-examples --example hostile_report")?;
    let refusals = |s: &[Sample]| -> f64 {
        s.iter()
            .filter(|(n, l, _)| {
                n == "netscope_aggregator_rejected_reports_total"
                    && l.get("reason").map(String::as_str) == Some("not_the_node")
            })
            .map(|s| s.2)
            .sum()
    };
    let before = refusals(&scrape(metrics)?);
    let node = &c.nodes[0];
    let web = c.pods[pod_index(c, "web", 0)].v4;
    let out = c.ext.exec(&[
        &bin.to_string_lossy(),
        "--addr",
        &aggregator.to_string(),
        "--node",
        &node.name,
        "--kind",
        "impersonate",
        "--pod-ip",
        &web.to_string(),
        "--remote-ip",
        &sim::EXTERNAL_IP.to_string(),
    ])?;
    let after = refusals(&scrape(metrics)?);
    let refused = out.contains("PermissionDenied") && after == before + 1.0;
    println!(
        "  hostile: {} (underlay, not a node) reported for {}: {}; rejected_reports_total{{reason=\"not_the_node\"}} {} -> {}",
        sim::EXTERNAL_IP,
        node.name,
        out.trim(),
        before as u64,
        after as u64
    );
    Ok(refused)
}

/// Index of the pod of `workload` on node index `node`.
fn pod_index(c: &Cluster, workload: &str, node: usize) -> usize {
    c.pods
        .iter()
        .position(|p| p.workload == workload && p.node == node)
        .unwrap_or_else(|| panic!("no {workload} pod on node index {node}"))
}

fn report(samples: &[Sample], elapsed: Duration, exchanges: &[(&'static str, u64)]) {
    let secs = elapsed.as_secs_f64();
    println!("\n== traffic mix ({:.0} s) ==", secs);
    for (name, n) in exchanges {
        let unit = if name.starts_with("malformed") {
            "frames"
        } else {
            "exchanges"
        };
        println!("  {name:<26} {n:>7} {unit}");
    }
    // Zone matrix.
    let zones = sim::ZONES;
    let mut m: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (name, l, v) in samples {
        if name == "netscope_zone_network_traffic_bytes_total" {
            *m.entry((l["src_zone"].clone(), l["dst_zone"].clone()))
                .or_default() += v;
        }
    }
    println!("\n== bytes by zone (rows: source, columns: destination; counted once) ==");
    print!("{:<14}", "");
    for z in zones {
        print!("{z:>14}");
    }
    println!("{:>14}", "other");
    let mut rows: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
    rows.push("unknown".into());
    for src in &rows {
        print!("{src:<14}");
        for dst in zones {
            print!(
                "{:>14}",
                human(*m.get(&(src.clone(), dst.to_string())).unwrap_or(&0.0))
            );
        }
        let other: f64 = m
            .iter()
            .filter(|((s, d), _)| s == src && !zones.contains(&d.as_str()))
            .map(|(_, v)| v)
            .sum();
        println!("{:>14}", human(other.max(0.0)));
    }
    // Top cross-zone talkers by workload.
    let mut talkers: Vec<(String, f64)> = samples
        .iter()
        .filter(|s| s.0 == "netscope_workload_cross_zone_network_traffic_bytes_total")
        .map(|(_, l, v)| {
            (
                format!(
                    "{}/{} ({}) -> {}/{} ({})",
                    l["src_namespace"],
                    l["src_workload"],
                    l["src_zone"],
                    l["dst_namespace"],
                    l["dst_workload"],
                    l["dst_zone"]
                ),
                *v,
            )
        })
        .collect();
    talkers.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("\n== top cross-zone talkers by workload ==");
    for (who, v) in talkers.iter().take(8) {
        println!("  {:>10}  {who}", human(*v));
    }
    // Cost.
    let total = sum(samples, "pod_network_traffic_bytes_total");
    let cross = sum(samples, "pod_cross_zone_network_traffic_bytes_total");
    let mut sides: BTreeMap<String, f64> = BTreeMap::new();
    for (name, l, v) in samples {
        if name == "netscope_cross_zone_cost_microdollars_total" {
            *sides.entry(l["side"].clone()).or_default() += v / 1e6;
        }
    }
    let month = 30.0 * 86400.0 / secs;
    println!("\n== cost (AWS inter-AZ: $0.01/GB sent + $0.01/GB received) ==");
    println!(
        "  counted {} in {secs:.0} s, of which cross-zone {} ({:.1}%)",
        human(total),
        human(cross),
        if total > 0.0 {
            100.0 * cross / total
        } else {
            0.0
        }
    );
    let both: f64 = sides.values().sum();
    for (side, d) in &sides {
        println!(
            "  {side:<10} ${d:.6} in this run  ->  ${:.2} per 30 days at this rate",
            d * month
        );
    }
    println!(
        "  both sides ${both:.6} in this run  ->  ${:.2} per 30 days at this rate",
        both * month
    );
}

/// The Service ranking: measured cross-zone bytes per Service and the
/// estimate of what in-zone routing would avoid, from the aggregator's
/// gauges (the scrape before its restart plus the one after).
fn report_services(samples: &[Sample], elapsed: Duration) {
    let month = 30.0 * 86400.0 / elapsed.as_secs_f64().max(1.0);
    let per_service = |metric: &str| -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (_, l, v) in samples.iter().filter(|s| s.0 == metric) {
            *m.entry(format!("{}/{}", l["service_namespace"], l["service"]))
                .or_default() += v;
        }
        m
    };
    let cross = per_service("netscope_service_cross_zone_bytes");
    let cross_usd = per_service("netscope_service_cross_zone_dollars");
    let avoid = per_service("netscope_service_cross_zone_avoidable_bytes");
    let avoid_usd = per_service("netscope_service_cross_zone_avoidable_dollars");
    let mut ranked: Vec<&String> = cross.keys().collect();
    ranked.sort_by(|a, b| {
        let v = |m: &BTreeMap<String, f64>, k: &String| m.get(k).copied().unwrap_or(0.0);
        v(&avoid_usd, b)
            .total_cmp(&v(&avoid_usd, a))
            .then(v(&cross, b).total_cmp(&v(&cross, a)))
    });
    println!("\n== Services by avoidable cross-zone cost (ESTIMATE, not a measurement) ==");
    println!("  assumes: in-zone routing (trafficDistribution: PreferClose) wherever the Service has ready endpoints in the client's zone;");
    println!(
        "           those endpoints absorb the load; same request mix; this run's rate for 30 days"
    );
    println!(
        "  {:<16} {:>12} {:>12} {:>14} {:>12} {:>18}",
        "service", "cross-zone", "cost/30d", "avoidable", "remaining", "saving/30d (est.)"
    );
    let mut total_saving = 0.0;
    for k in ranked {
        let v = |m: &BTreeMap<String, f64>| m.get(k).copied().unwrap_or(0.0);
        total_saving += v(&avoid_usd) * month;
        println!(
            "  {:<16} {:>12} {:>12} {:>14} {:>12} {:>18}",
            k,
            human(v(&cross)),
            format!("${:.2}", v(&cross_usd) * month),
            human(v(&avoid)),
            human(v(&cross) - v(&avoid)),
            format!("${:.2}", v(&avoid_usd) * month)
        );
    }
    println!("  monthly saving if these Services routed in-zone (estimate): ${total_saving:.2}");
}

/// The Service series and the estimate against the nftables reference:
/// each pair's bytes belong to the Service whose endpoints hold its
/// destination (a request) or else its source (a reply), between the zones
/// the simulation placed its ends in; a cross-zone pair is avoidable when
/// the client's zone holds an endpoint of the Service.
fn verify_services(cluster: &Cluster, reference: &Reference, samples: &[Sample]) -> Result<bool> {
    let refs = reference.read(cluster)?;
    let services = cluster.services();
    let zone_of = |ip: IpAddr| -> Option<&'static str> {
        cluster
            .pods
            .iter()
            .find(|p| IpAddr::V4(p.v4) == ip || p.v6.map(IpAddr::V6) == Some(ip))
            .map(|p| cluster.nodes[p.node].zone)
    };
    let holds = |s: &sim::SimService, ip: IpAddr| {
        s.endpoints.iter().any(|&i| {
            let p = &cluster.pods[i];
            IpAddr::V4(p.v4) == ip || p.v6.map(IpAddr::V6) == Some(ip)
        })
    };
    let mut want: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut want_avoidable: BTreeMap<String, u64> = BTreeMap::new();
    let mut want_cross: BTreeMap<String, u64> = BTreeMap::new();
    for ((src, dst), c) in refs.iter().filter(|(_, c)| c.bytes > 0) {
        let attributed = services
            .iter()
            .find(|s| holds(s, *dst))
            .map(|s| (s, *src))
            .or_else(|| services.iter().find(|s| holds(s, *src)).map(|s| (s, *dst)));
        let Some((s, client)) = attributed else {
            continue;
        };
        let (Some(sz), Some(dz)) = (zone_of(*src), zone_of(*dst)) else {
            continue;
        };
        *want
            .entry((s.name.to_string(), sz.to_string(), dz.to_string()))
            .or_default() += c.bytes;
        if sz != dz {
            *want_cross.entry(s.name.to_string()).or_default() += c.bytes;
            let client_zone = zone_of(client);
            let in_zone = s
                .endpoints
                .iter()
                .any(|&i| Some(cluster.nodes[cluster.pods[i].node].zone) == client_zone);
            if in_zone {
                *want_avoidable.entry(s.name.to_string()).or_default() += c.bytes;
            }
        }
    }
    let mut got: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let gauge = |metric: &str| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (_, l, v) in samples.iter().filter(|s| s.0 == metric) {
            *m.entry(l["service"].clone()).or_default() += *v as u64;
        }
        m
    };
    let got_avoidable = gauge("netscope_service_cross_zone_avoidable_bytes");
    let got_cross = gauge("netscope_service_cross_zone_bytes");
    // The cross-zone counter is the subset of the series whose zones differ.
    let mut got_cross_series: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for (_, l, v) in samples
        .iter()
        .filter(|s| s.0 == "netscope_service_cross_zone_network_traffic_bytes_total")
    {
        *got_cross_series
            .entry((
                l["service"].clone(),
                l["src_zone"].clone(),
                l["dst_zone"].clone(),
            ))
            .or_default() += *v as u64;
    }
    let want_cross_series: BTreeMap<(String, String, String), u64> = want
        .iter()
        .filter(|(k, _)| k.1 != k.2)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for (_, l, v) in samples
        .iter()
        .filter(|s| s.0 == "netscope_service_network_traffic_bytes_total")
    {
        *got.entry((
            l["service"].clone(),
            l["src_zone"].clone(),
            l["dst_zone"].clone(),
        ))
        .or_default() += *v as u64;
    }
    println!("\n== verify: netscope_service_network_traffic_bytes_total against nftables (pre-DNAT Service known from the simulation) ==");
    let mut ok = !want.is_empty();
    for key in want
        .keys()
        .chain(got.keys().filter(|k| !want.contains_key(*k)))
    {
        let (w, g) = (
            want.get(key).copied().unwrap_or(0),
            got.get(key).copied().unwrap_or(0),
        );
        let mark = if w == g { "ok" } else { "MISMATCH" };
        ok &= w == g;
        println!(
            "  {mark:<8} {} {} -> {}: netscope {g} B, nftables {w} B",
            key.0, key.1, key.2
        );
    }
    let cross_ok = got_cross_series == want_cross_series;
    ok &= cross_ok;
    println!(
        "  {:<8} netscope_service_cross_zone_network_traffic_bytes_total: {} cross-zone series equal the reference's cross-zone pairs",
        if cross_ok { "ok" } else { "MISMATCH" },
        got_cross_series.len()
    );
    for s in &services {
        let n = s.name.to_string();
        let (wc, gc) = (
            want_cross.get(&n).copied().unwrap_or(0),
            got_cross.get(&n).copied().unwrap_or(0),
        );
        let (wa, ga) = (
            want_avoidable.get(&n).copied().unwrap_or(0),
            got_avoidable.get(&n).copied().unwrap_or(0),
        );
        let good = wc == gc && wa == ga;
        ok &= good;
        println!(
            "  {:<8} {n}: cross-zone {gc} B (nftables {wc} B), avoidable estimate {ga} B (computed from nftables {wa} B)",
            if good { "ok" } else { "MISMATCH" }
        );
    }
    let verdict = if ok {
        "all equal to the byte"
    } else {
        "FAILED"
    };
    println!(
        "verify: Service series and estimate: {} series, {verdict}",
        want.len()
    );
    Ok(ok)
}

/// Compares every pod-pair series with the nftables reference.
fn verify(
    cluster: &Cluster,
    reference: &sim::Reference,
    samples: &[Sample],
    restarts: bool,
    moved: Option<&Moved>,
) -> Result<bool> {
    // A restarted agent (kill -9) loses nothing: its pinned maps kept
    // counting and its journal kept what it had drained but not delivered
    // (issue 15). Every pair is exact.
    let refs = reference.read(cluster)?;
    // Address -> (pod label, namespace label) as the exporter names them.
    let mut names: HashMap<IpAddr, (String, String)> = HashMap::new();
    for p in &cluster.pods {
        names.insert(IpAddr::V4(p.v4), (p.name.clone(), p.namespace.to_string()));
        if let Some(v6) = p.v6 {
            names.insert(IpAddr::V6(v6), (p.name.clone(), p.namespace.to_string()));
        }
    }
    names.insert(
        IpAddr::V4(sim::EXTERNAL_IP),
        ("rds-primary".into(), "external".into()),
    );
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for ((s, d), c) in &refs {
        let (src, dst) = (names[s].0.clone(), names[d].0.clone());
        let mut bytes = c.bytes;
        if let Some(m) = moved.filter(|m| m.info.holds(*s) || m.info.holds(*d)) {
            // Up to the move the address was the old pod's; after it, the
            // new pod's. The reference read at the move splits the bytes.
            let before = m.at_move.get(&(*s, *d)).map_or(0, |c| c.bytes);
            if before > 0 {
                let old = |ip: &IpAddr, name: &String| {
                    if m.info.holds(*ip) {
                        m.info.old_name.clone()
                    } else {
                        name.clone()
                    }
                };
                *want.entry((old(s, &src), old(d, &dst))).or_default() += before;
            }
            bytes -= before;
        }
        if bytes > 0 {
            *want.entry((src, dst)).or_default() += bytes;
        }
    }
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (name, l, v) in samples {
        if name == "pod_network_traffic_bytes_total" {
            *got.entry((l["src_pod"].clone(), l["dst_pod"].clone()))
                .or_default() += *v as u64;
        }
    }
    let mut ok = true;
    println!("\n== verify: every pod_network_traffic_bytes_total series against nftables ==");
    for (pair, w) in &want {
        let g = got.get(pair).copied().unwrap_or(0);
        let good = g == *w;
        let mark = if good { "ok" } else { "MISMATCH" };
        if !good {
            ok = false;
        }
        println!(
            "  {mark:<8} {} -> {}: netscope {g} B, nftables {w} B",
            pair.0, pair.1
        );
    }
    // Every series must be one nftables saw: link-local and multicast
    // traffic between a pod and its own node (IPv6 neighbour discovery,
    // MLD), which the forward hook cannot see, is left out by the
    // aggregator (docs/resolution.md), so anything extra is a
    // misattribution.
    for (pair, g) in &got {
        if !want.contains_key(pair) {
            ok = false;
            println!(
                "  EXTRA    {} -> {}: netscope {g} B, nftables saw nothing",
                pair.0, pair.1
            );
        }
    }
    // Nothing may be attributed to the ClusterIP: the agents undid the NAT.
    let service_series = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "pod_network_traffic_bytes_total"
                && (l["dst_pod"] == "cache" || l["src_pod"] == "cache")
        })
        .count();
    if service_series > 0 {
        ok = false;
        println!(
            "  MISMATCH {service_series} series attributed to the Service instead of its backend"
        );
    }
    ok &= verify_cross_zone(cluster, moved, samples, &want, &got);
    if let Some(m) = moved {
        ok &= verify_move(cluster, m, samples, &want);
    }
    let verdict = match (ok, restarts) {
        (false, _) => "FAILED",
        (true, false) => "all equal to the byte",
        (true, true) => "all equal to the byte, across the agent's kill -9 and restart",
    };
    println!("verify: {} pod pairs, {verdict}", want.len());
    Ok(ok)
}

/// `pod_cross_zone_network_traffic_bytes_total`: for every pair the
/// reference saw, where the two ends are in different zones (as the
/// simulation placed them), it equals the pair's
/// `pod_network_traffic_bytes_total` (checked against nftables above);
/// where they share a zone, or a zone is unknown, there is no such series.
fn verify_cross_zone(
    cluster: &Cluster,
    moved: Option<&Moved>,
    samples: &[Sample],
    want: &BTreeMap<(String, String), u64>,
    got: &BTreeMap<(String, String), u64>,
) -> bool {
    let mut zone_of: HashMap<&str, &str> = cluster
        .pods
        .iter()
        .map(|p| (p.name.as_str(), cluster.nodes[p.node].zone))
        .collect();
    if let Some(m) = moved {
        zone_of.insert(&m.info.old_name, cluster.nodes[m.info.old_node].zone);
    }
    // The custom endpoint's zone, from the file the demo wrote.
    zone_of.insert("rds-primary", sim::ZONES[2]);
    let mut cross: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (name, l, v) in samples {
        if name == "pod_cross_zone_network_traffic_bytes_total" {
            *cross
                .entry((l["src_pod"].clone(), l["dst_pod"].clone()))
                .or_default() += *v as u64;
        }
    }
    let mut ok = true;
    let (mut n_cross, mut n_same) = (0, 0);
    for pair in want.keys() {
        let is_cross = matches!(
            (zone_of.get(pair.0.as_str()), zone_of.get(pair.1.as_str())),
            (Some(a), Some(b)) if a != b
        );
        let g = got.get(pair).copied().unwrap_or(0);
        let c = cross.get(pair).copied().unwrap_or(0);
        let expect = if is_cross { g } else { 0 };
        if is_cross {
            n_cross += 1;
        } else {
            n_same += 1;
        }
        if c != expect {
            ok = false;
            println!(
                "  MISMATCH {} -> {}: cross-zone series {c} B, want {expect} B",
                pair.0, pair.1
            );
        }
    }
    for (pair, c) in &cross {
        if !want.contains_key(pair) {
            ok = false;
            println!(
                "  EXTRA    {} -> {}: cross-zone series {c} B for a pair nftables never saw",
                pair.0, pair.1
            );
        }
    }
    println!(
        "verify: pod_cross_zone_network_traffic_bytes_total: {n_cross} cross-zone pairs equal their pod series, {n_same} same-zone pairs have none{}",
        if ok { "" } else { " -- MISMATCH" }
    );
    ok
}

/// The moved pod: the old pod's series carry the old zone, the new pod's
/// the new zone, and both got traffic (their bytes were checked against
/// the reference above).
fn verify_move(
    cluster: &Cluster,
    m: &Moved,
    samples: &[Sample],
    want: &BTreeMap<(String, String), u64>,
) -> bool {
    let new = &cluster.pods[m.info.pod];
    let mut ok = true;
    let mut report = Vec::new();
    for (name, node) in [(&m.info.old_name, m.info.old_node), (&new.name, new.node)] {
        let zone = cluster.nodes[node].zone;
        let mut bytes = 0u64;
        for (metric, l, v) in samples {
            if metric != "pod_network_traffic_bytes_total" {
                continue;
            }
            for side in ["src", "dst"] {
                if &l[&format!("{side}_pod")] == name {
                    bytes += *v as u64;
                    if l[&format!("{side}_zone")] != zone {
                        ok = false;
                        println!(
                            "  MISMATCH {name} has a series in zone {}, want {zone}",
                            l[&format!("{side}_zone")]
                        );
                    }
                }
            }
        }
        let reference: u64 = want
            .iter()
            .filter(|((s, d), _)| s == name || d == name)
            .map(|(_, b)| b)
            .sum();
        ok &= bytes > 0 && bytes == reference;
        report.push(format!("{name} ({zone}) {bytes} B"));
    }
    println!(
        "verify: moved pod, same IP {}: {} before the move, {} after; {}",
        m.info.v4,
        report[0],
        report[1],
        if ok {
            "ok: zones right, equal to nftables"
        } else {
            "MISMATCH"
        }
    );
    ok
}

fn start_prometheus(
    addr: SocketAddr,
    target: SocketAddr,
    agents: &[SocketAddr],
    dir: &Path,
) -> Result<Proc> {
    let bin = Path::new("/usr/bin/prometheus");
    if !bin.is_file() {
        bail!(
            "--prometheus needs /usr/bin/prometheus: run `make deps` (Debian package prometheus)"
        );
    }
    let data = dir.join("prometheus-data");
    std::fs::create_dir_all(&data)?;
    let config = dir.join("prometheus.yml");
    let mut yml = format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: netscope-aggregator\n    static_configs:\n      - targets: ['{target}']\n");
    if !agents.is_empty() {
        let t: Vec<String> = agents.iter().map(|a| format!("'{a}'")).collect();
        yml += &format!(
            "  - job_name: netscope-agent\n    static_configs:\n      - targets: [{}]\n",
            t.join(", ")
        );
    }
    std::fs::write(&config, yml)?;
    let log = dir.join("prometheus.log");
    let out = std::fs::File::create(&log)?;
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting prometheus")?;
    println!("demo: Prometheus at http://{addr} scrapes the aggregator every second");
    Ok(Proc {
        name: "prometheus".into(),
        child,
        log,
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant query through Prometheus' HTTP API: the sum of the result vector.
fn promql(addr: SocketAddr, query: &str) -> Result<Option<f64>> {
    let data = demo_deploy::api(addr, &format!("/api/v1/query?query={}", urlencode(query)))
        .with_context(|| format!("query {query:?}"))?;
    let results = data["result"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        return Ok(None);
    }
    let mut total = 0.0;
    for r in results {
        total += r["value"][1]
            .as_str()
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
    }
    Ok(Some(total))
}

/// Runs queries from the README through the real Prometheus and, with
/// `check`, compares them with what the aggregator's /metrics says.
/// The README's PromQL for the avoidable Service bytes, run by a real
/// Prometheus, equals the aggregator's own estimate gauge: a cross-zone
/// Service byte is avoidable when both its zones have ready endpoints.
const AVOIDABLE_PROMQL: &str = r#"sum(sum by (service_namespace, service, src_zone, dst_zone) (netscope_service_cross_zone_network_traffic_bytes_total) * on (service_namespace, service, src_zone) group_left() label_replace(max by (service_namespace, service, zone) (netscope_service_ready_endpoints) > bool 0, "src_zone", "$1", "zone", "(.*)") * on (service_namespace, service, dst_zone) group_left() label_replace(max by (service_namespace, service, zone) (netscope_service_ready_endpoints) > bool 0, "dst_zone", "$1", "zone", "(.*)"))"#;

fn prometheus_service_query(addr: SocketAddr, samples: &[Sample], check: bool) -> Result<bool> {
    let want = sum(samples, "netscope_service_cross_zone_avoidable_bytes");
    let got = promql(addr, AVOIDABLE_PROMQL)?.unwrap_or(f64::NAN);
    let same = got == want && want > 0.0;
    println!(
        "  {:<8} {:<28} {got:<16.6} (the exporter's estimate: {want}) {AVOIDABLE_PROMQL}",
        if same { "ok" } else { "MISMATCH" },
        "avoidable Service bytes"
    );
    Ok(same || !check)
}

fn prometheus_queries(addr: SocketAddr, samples: &[Sample], check: bool) -> Result<bool> {
    let total = sum(samples, "pod_network_traffic_bytes_total");
    let cross = sum(samples, "pod_cross_zone_network_traffic_bytes_total");
    let cost = sum(samples, "netscope_cross_zone_cost_microdollars_total") / 1e6;
    let queries: [(&str, &str, f64); 3] = [
        ("bytes counted", "sum(pod_network_traffic_bytes_total)", total),
        ("cross-zone share, %", "100 * sum(pod_cross_zone_network_traffic_bytes_total) / sum(pod_network_traffic_bytes_total)", 100.0 * cross / total),
        ("cost so far, both sides, $", "sum(netscope_cross_zone_cost_microdollars_total) / 1e6", cost),
    ];
    // Wait until Prometheus has scraped the final values.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let got = promql(addr, queries[0].1)?;
        if got == Some(total) {
            break;
        }
        if Instant::now() > end {
            println!("prometheus: never saw the final scrape (last answer {got:?}, want {total})");
            return Ok(!check);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("\n== the same numbers through a real Prometheus (http://{addr}) ==");
    let mut ok = true;
    for (what, q, want) in queries {
        let got = promql(addr, q)?.unwrap_or(f64::NAN);
        let same = (got - want).abs() <= want.abs() * 1e-9 + 1e-9;
        ok &= same;
        println!(
            "  {:<8} {what:<28} {got:<16.6} {q}",
            if same { "ok" } else { "MISMATCH" }
        );
    }
    Ok(ok || !check)
}

/// `--aggregators N`: more aggregator replicas beside the first (which
/// stays on port 8080 for everything else the demo does), shared by the
/// agents through an endpoints file; one is killed, one is added.
mod replicas {
    use super::*;
    use netscope::transport::replicas::rendezvous_pick;

    /// The agents' flags with several replicas: re-read the file every
    /// second, move off a dead replica after 2 s.
    pub const AGENT_ARGS: [&str; 4] = [
        "--server-resolve-interval",
        "1s",
        "--replica-gone-after",
        "2s",
    ];

    struct Replica {
        listen: SocketAddr,
        metrics: SocketAddr,
        proc: Option<Proc>,
        /// Its /metrics as last scraped (final once it is dead).
        last: Vec<Sample>,
    }

    pub struct Replicas {
        /// Index 0 is the demo's own aggregator (not owned here).
        replicas: Vec<Replica>,
        agg_args: Vec<String>,
        file: PathBuf,
        metrics_base: SocketAddr,
        stop_proxy: Arc<AtomicBool>,
        killed: Option<usize>,
        added: Option<usize>,
    }

    fn at(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(AGGREGATOR_IP), port)
    }

    /// Ports for replicas 1..n (replica 0 is on 8080) such that every
    /// replica serves at least one of the six agents: six names are too few
    /// for rendezvous hashing to spread them evenly by chance, and a
    /// replica without agents would prove nothing.
    fn pick_ports(cluster: &Cluster, n: usize) -> Result<Vec<u16>> {
        fn search(cluster: &Cluster, n: usize, from: u16, ports: &mut Vec<u16>) -> bool {
            if ports.len() == n {
                let addrs: Vec<SocketAddr> = ports.iter().map(|p| at(*p)).collect();
                return Replicas::agents_of(cluster, &addrs).len() == n;
            }
            for p in from..8140 {
                ports.push(p);
                if search(cluster, n, p + 1, ports) {
                    return true;
                }
                ports.pop();
            }
            false
        }
        let mut ports = vec![8080];
        if search(cluster, n, 8081, &mut ports) {
            Ok(ports)
        } else {
            bail!("no ports in 8081..8140 give each of {n} replicas an agent")
        }
    }

    impl Replicas {
        pub fn start(
            cluster: &Cluster,
            bin: &Launch,
            agg_args: &[String],
            dir: &Path,
            n: usize,
            file: &Path,
            metrics_base: SocketAddr,
        ) -> Result<Replicas> {
            let mut r = Replicas {
                replicas: Vec::new(),
                agg_args: agg_args.to_vec(),
                file: file.to_path_buf(),
                metrics_base,
                stop_proxy: Arc::new(AtomicBool::new(false)),
                killed: None,
                added: None,
            };
            r.replicas.push(Replica {
                listen: at(8080),
                metrics: metrics_base,
                proc: None,
                last: Vec::new(),
            });
            for port in pick_ports(cluster, n)?.into_iter().skip(1) {
                r.spawn(cluster, bin, dir, port)?;
            }
            r.write_file()?;
            println!(
                "demo: {n} aggregator replicas at {}; agents read them from {}",
                r.live()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                file.display()
            );
            Ok(r)
        }

        fn spawn(&mut self, cluster: &Cluster, bin: &Launch, dir: &Path, port: u16) -> Result<()> {
            let i = self.replicas.len();
            let listen = at(port);
            let mut a = self.agg_args.clone();
            let at = a
                .iter()
                .position(|x| x == "--listen-addr")
                .context("no --listen-addr")?;
            a[at + 1] = listen.to_string();
            let p = spawn_in(
                &cluster.agg,
                &format!("aggregator-replica-{i}"),
                bin,
                &a,
                dir,
            )?;
            let port = self
                .metrics_base
                .port()
                .checked_add(200 + i as u16)
                .context("--metrics-addr's port + 205 is over 65535")?;
            let metrics = SocketAddr::new(self.metrics_base.ip(), port);
            proxy(metrics, cluster.agg.path(), listen, self.stop_proxy.clone())?;
            self.replicas.push(Replica {
                listen,
                metrics,
                proc: Some(p),
                last: Vec::new(),
            });
            Ok(())
        }

        fn live(&self) -> impl Iterator<Item = SocketAddr> + '_ {
            self.replicas
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != self.killed)
                .map(|(_, r)| r.listen)
        }

        /// The endpoints file, replaced atomically (the agents re-read it).
        fn write_file(&self) -> Result<()> {
            let text: String = self.live().map(|a| format!("{a}\n")).collect();
            let tmp = self.file.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &self.file)?;
            Ok(())
        }

        /// Agents per replica (by rendezvous hashing over `addrs`).
        fn agents_of(cluster: &Cluster, addrs: &[SocketAddr]) -> BTreeMap<SocketAddr, Vec<String>> {
            let mut m: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
            for n in &cluster.nodes {
                if let Some(a) = rendezvous_pick(&n.name, addrs.iter().copied()) {
                    m.entry(a).or_default().push(n.name.clone());
                }
            }
            m
        }

        pub fn step(
            &mut self,
            cluster: &Cluster,
            t0: Instant,
            duration: Duration,
            bin: &Launch,
            dir: &Path,
        ) -> Result<()> {
            if self.killed.is_none() && t0.elapsed() >= duration / 3 {
                // The replica (not the demo's own) that serves the most agents.
                let addrs: Vec<SocketAddr> = self.live().collect();
                let by = Self::agents_of(cluster, &addrs);
                let i = (1..self.replicas.len())
                    .max_by_key(|i| by.get(&self.replicas[*i].listen).map_or(0, Vec::len))
                    .context("no replica to kill")?;
                let port = self.replicas[i].listen.port().to_string();
                // Hold its reports (in-flight ones finish: their acks still
                // go out), take its last scrape, then kill -9: the scrape is
                // everything it counted, so nothing it counted is lost.
                let rule = format!("add rule inet netscope_demo_replica input iifname uplink tcp dport {port} drop");
                cluster
                    .agg
                    .exec(&["nft", "add table inet netscope_demo_replica"])?;
                cluster.agg.exec(&["nft", "add chain inet netscope_demo_replica input { type filter hook input priority 0; policy accept; }"])?;
                cluster.agg.exec(&["nft", &rule])?;
                std::thread::sleep(Duration::from_millis(500));
                let r = &mut self.replicas[i];
                r.last = scrape(r.metrics).context("scraping the replica before killing it")?;
                if let Some(mut p) = r.proc.take() {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                }
                cluster
                    .agg
                    .exec(&["nft", "delete table inet netscope_demo_replica"])?;
                self.killed = Some(i);
                println!(
                    "  {:>4}s  aggregator replica {} ({}, agents {:?}) killed (-9) right after its last scrape ({} counted); it stays listed until a replica is added",
                    t0.elapsed().as_secs(),
                    i,
                    self.replicas[i].listen,
                    by.get(&self.replicas[i].listen).cloned().unwrap_or_default(),
                    human(sum(&self.replicas[i].last, "pod_network_traffic_bytes_total"))
                );
            }
            if self.killed.is_some() && self.added.is_none() && t0.elapsed() >= duration / 2 {
                // A port that takes over at least one agent.
                let live: Vec<SocketAddr> = self.live().collect();
                let port = (8140..8200)
                    .find(|p| {
                        let mut with = live.clone();
                        with.push(at(*p));
                        Self::agents_of(cluster, &with).contains_key(&at(*p))
                    })
                    .context("no port in 8140..8200 takes an agent")?;
                self.spawn(cluster, bin, dir, port)?;
                let i = self.replicas.len() - 1;
                self.added = Some(i);
                // Wait until it serves before listing it (as readiness gates
                // a pod's DNS record).
                let end = Instant::now() + Duration::from_secs(20);
                while scrape(self.replicas[i].metrics).is_err() {
                    if Instant::now() > end {
                        bail!("the added aggregator replica never served /metrics");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                self.write_file()?;
                let addrs: Vec<SocketAddr> = self.live().collect();
                println!(
                    "  {:>4}s  aggregator replica {i} ({}) added, the killed one unlisted; agents per replica now {:?}",
                    t0.elapsed().as_secs(),
                    self.replicas[i].listen,
                    Self::agents_of(cluster, &addrs)
                );
            }
            Ok(())
        }

        /// Adds the other replicas' final scrapes (and the killed one's last)
        /// to the demo's own aggregator's `samples`.
        pub fn finish(
            &mut self,
            cluster: &Cluster,
            mut samples: Vec<Sample>,
        ) -> Result<Vec<Sample>> {
            let addrs: Vec<SocketAddr> = self.live().collect();
            let by = Self::agents_of(cluster, &addrs);
            println!("\n== aggregator replicas ==");
            println!(
                "  replica 0 {}: counted {} (agents {:?})",
                self.replicas[0].listen,
                human(sum(&samples, "pod_network_traffic_bytes_total")),
                by.get(&self.replicas[0].listen)
                    .cloned()
                    .unwrap_or_default()
            );
            for i in 1..self.replicas.len() {
                if Some(i) != self.killed {
                    let m = self.replicas[i].metrics;
                    self.replicas[i].last =
                        scrape(m).with_context(|| format!("scraping replica {i}"))?;
                }
                let r = &self.replicas[i];
                let what = if Some(i) == self.killed {
                    "killed; its last scrape"
                } else if Some(i) == self.added {
                    "added"
                } else {
                    "live"
                };
                println!(
                    "  replica {i} {} ({what}): counted {} (agents {:?})",
                    r.listen,
                    human(sum(&r.last, "pod_network_traffic_bytes_total")),
                    by.get(&r.listen).cloned().unwrap_or_default()
                );
                samples = merge(samples, r.last.clone());
            }
            println!(
                "  lost with the killed replica (counted after its last scrape): 0 B by construction (its traffic was held before the scrape); the sum over replicas is checked against nftables below"
            );
            // The agents' own account of their moves (their /metrics).
            let mut moves: BTreeMap<String, f64> = BTreeMap::new();
            for n in &cluster.nodes {
                let text =
                    n.ns.exec(&[
                        "curl",
                        "-s",
                        "--max-time",
                        "5",
                        "http://127.0.0.1:6060/metrics",
                    ])
                    .with_context(|| format!("scraping the agent on {}", n.name))?;
                for (name, labels, v) in parse_metrics(&text) {
                    if name == "netscope_agent_replica_switches_total" {
                        let reason = labels.get("reason").cloned().unwrap_or_default();
                        *moves.entry(reason).or_default() += v;
                    }
                }
            }
            println!(
                "  agents' netscope_agent_replica_switches_total: gone {}, set_changed {}",
                moves.get("gone").copied().unwrap_or(0.0),
                moves.get("set_changed").copied().unwrap_or(0.0)
            );
            Ok(samples)
        }
    }

    impl Drop for Replicas {
        fn drop(&mut self) {
            self.stop_proxy.store(true, Ordering::Relaxed);
        }
    }
}
