//! netscope-agent: one per node. Attaches the capture program to every pod
//! link, drains it every collection interval, undoes Service NAT through
//! conntrack, and reports to the aggregator over gRPC. Wiring only; the
//! logic lives in the `netscope` and `netscope-bpf` libraries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ipnet::IpNet;
use netscope::cli::{
    bind, check_node_name, init_logging, parse_duration_within, parse_listen_addr, LogFormat,
};
use netscope::discover::{error_chain, InterfaceFilter, Reconciler, DEFAULT_PREFIXES};
use netscope::nat::{NetlinkConntrack, ServiceNat};
use netscope::report::journal::Journal;
use netscope::report::{Reporter, ReporterConfig};
use netscope::transport::client::{ClientConfig, ClientTls};
use netscope::transport::replicas::{ReplicaConfig, ReplicaSink};
use netscope::transport::server::{serve_http, HttpEndpoints};
use netscope::{AttachMode, Direction};
use netscope_bpf::netlink::LinkWatcher;
use netscope_bpf::{
    BpfAttacher, BpfCollector, Capture, CaptureConfig, UpgradeCollector, DEFAULT_MAX_FLOWS,
};
use tracing::{error, info};

/// Attaches netscope's capture program to this node's pod interfaces and
/// reports per-flow byte counts to the aggregator.
#[derive(Debug, Parser)]
#[command(name = "netscope-agent", version, about)]
struct Args {
    /// This node's name (the downward API's spec.nodeName). Not needed with --cleanup.
    #[arg(long, env = "NODE_NAME", required_unless_present = "cleanup")]
    node_name: Option<String>,
    /// The aggregator's gRPC address (host:port, or an http(s):// URI), or a
    /// comma-separated list; every address a name resolves to is a replica
    /// (a headless Service), the agent reports to one by rendezvous hashing;
    /// file:PATH reads the list from a file at every resolution.
    #[arg(long, default_value = "netscope-aggregator:8080")]
    server_endpoint: String,
    /// How often the --server-endpoint names are resolved again (100ms to 1h).
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    server_resolve_interval: Duration,
    /// A replica every send to which failed this long is gone: the report in
    /// flight moves to another replica (100ms to 1h).
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    replica_gone_after: Duration,
    /// How often to drain the counters and send a report (100ms to 1h).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    collection_interval: Duration,
    /// Address of /metrics, /healthz and /readyz. ":PORT" listens on all addresses.
    #[arg(long, default_value = ":6060", value_parser = parse_listen_addr)]
    debug_addr: SocketAddr,
    /// Log verbosity: 0 info, 1-2 debug, 3-4 trace for netscope, 5 trace for everything. RUST_LOG overrides.
    #[arg(short = 'v', long = "verbosity", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=5))]
    verbosity: u8,
    /// Log line format on stderr: text (ANSI colours only on a terminal) or
    /// json (one object per line, for log pipelines).
    #[arg(long, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Accepted for compatibility; the agent does not talk to the Kubernetes API.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// How to attach: auto (TCX on 6.6+, else legacy TC), tcx, or tc.
    #[arg(long, default_value = "auto")]
    attach_mode: AttachMode,
    /// Host-side name prefixes of pod interfaces (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_PREFIXES.iter().map(|s| s.to_string()))]
    interface_prefixes: Vec<String>,
    /// Also attach to veth/netkit interfaces whose name matches this regex.
    #[arg(long, value_name = "REGEX")]
    include_interfaces: Option<String>,
    /// Never attach to interfaces whose name matches this regex.
    #[arg(long, value_name = "REGEX")]
    exclude_interfaces: Option<String>,
    /// Flow-table capacity per drain interval; flows beyond it are counted as overflow.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1..=netscope_bpf::MAX_MAX_FLOWS as i64))]
    max_flows: u32,
    /// The cluster's Service CIDRs (comma-separated, at most 8): traffic to
    /// them is resolved to the real backend through conntrack.
    #[arg(long, value_delimiter = ',')]
    service_cidrs: Vec<IpNet>,
    /// Flows kept while the aggregator is unreachable; beyond it they fold into an overflow record.
    #[arg(long, default_value_t = netscope::report::DEFAULT_MAX_BUFFERED_FLOWS as u64, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    max_buffered_flows: u64,
    /// Most samples in one report: a larger buffer goes out as several reports. Keep it at or below the aggregator's --max-samples.
    #[arg(long, default_value_t = netscope::report::DEFAULT_MAX_REPORT_SAMPLES as u64, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_report_samples: u64,
    /// Largest report sent, in bytes; reports are split to fit. Keep it at or below the aggregator's --max-message-bytes.
    #[arg(long, default_value_t = netscope::transport::server::DEFAULT_MAX_MESSAGE_BYTES as u64, value_parser = clap::value_parser!(u64).range(netscope::transport::server::MIN_MESSAGE_BYTES as u64..=netscope::transport::server::MAX_MESSAGE_BYTES as u64))]
    max_message_bytes: u64,
    /// CA bundle (PEM) to verify the aggregator; turns on TLS.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name to verify the aggregator's certificate against (default: the endpoint's host).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// bpffs directory where the flow tables, control maps and TCX links are
    /// pinned (under a layout-versioned subdirectory), so they outlive the
    /// agent: a restarted or upgraded agent adopts them and counting never
    /// stops. "" turns pinning off (programs are detached on exit). See docs/restarts.md.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pin_root: PathBuf,
    /// Same as --pin-root "": nothing is pinned, everything is detached on exit.
    #[arg(long)]
    no_pin: bool,
    /// Directory of the agent's journal (reports drained but not yet
    /// acknowledged), replayed by the next agent after a crash. Used when
    /// pinning is on.
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    state_dir: PathBuf,
    /// Remove everything netscope attached and pinned on this node (TCX links,
    /// its legacy TC filters, pinned maps under --pin-root) and the journal
    /// under --state-dir, print what was removed, and exit 0. Idempotent; never
    /// removes what netscope did not create. For the chart's uninstall hook.
    #[arg(long)]
    cleanup: bool,
}

/// Default of --pin-root.
const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/netscope";
/// Default of --state-dir.
const DEFAULT_STATE_DIR: &str = "/var/lib/netscope";

fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, Duration::from_millis(100), Duration::from_secs(3600))
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// `--cleanup`: removes what netscope attached and pinned on this node, and
/// the journal; prints what it removed.
fn cleanup(args: &Args) -> Result<()> {
    let mut removed = 0usize;
    if let Some(root) = pin_root(args) {
        let done = netscope_bpf::pin::cleanup(&root)
            .with_context(|| format!("cleaning up --pin-root {}", root.display()))?;
        for p in done.links.iter() {
            println!("removed TCX link {}", p.display());
        }
        for p in done.maps.iter() {
            println!("removed pinned map {}", p.display());
        }
        for p in done.dirs.iter() {
            println!("removed directory {}", p.display());
        }
        removed += done.links.len() + done.maps.len() + done.dirs.len();
    }
    for (iface, direction) in
        netscope_bpf::remove_tc_filters().context("removing netscope's tc filters")?
    {
        println!("removed tc filter on {iface:?} {direction}");
        removed += 1;
    }
    for p in netscope::report::journal::remove(&args.state_dir).with_context(|| {
        format!(
            "removing the journal under --state-dir {}",
            args.state_dir.display()
        )
    })? {
        println!("removed journal {}", p.display());
        removed += 1;
    }
    println!("netscope cleanup: {removed} objects removed");
    Ok(())
}

/// The pin root, or `None` when pinning is off.
fn pin_root(args: &Args) -> Option<PathBuf> {
    (!args.no_pin && !args.pin_root.as_os_str().is_empty()).then(|| args.pin_root.clone())
}

fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(args.verbosity, args.log_format, &["netscope_agent"]).context("--log-format")?;
    if args.cleanup {
        return cleanup(&args);
    }
    let node_name = args.node_name.clone().context("--node-name is required")?;
    // The node name is untrusted text (an env var): Debug-escaped.
    info!(node = ?node_name, version = env!("CARGO_PKG_VERSION"), "netscope-agent starting");
    // Every report carries it; a name the API server would refuse is a
    // misconfiguration (or a forgery), not a node.
    check_node_name(&node_name)
        .map_err(anyhow::Error::msg)
        .context("--node-name")?;
    if args.kubeconfig.is_some() {
        info!("--kubeconfig is accepted for compatibility and not used: the agent needs no Kubernetes API access");
    }
    let filter = InterfaceFilter::new(
        &args.interface_prefixes,
        args.include_interfaces.as_deref(),
        args.exclude_interfaces.as_deref(),
    )
    .context("--interface-prefixes / --include-interfaces / --exclude-interfaces")?;
    let tls = match &args.tls_ca {
        Some(ca) => Some(ClientTls {
            ca_pem: Some(read(ca, "--tls-ca")?),
            identity: match (&args.tls_cert, &args.tls_key) {
                (Some(c), Some(k)) => Some((read(c, "--tls-cert")?, read(k, "--tls-key")?)),
                _ => None,
            },
            domain: args.tls_server_name.clone(),
        }),
        None => None,
    };
    let prometheus = netscope::export::recorder::RecorderBuilder::new()
        .install()
        .context("installing the metrics recorder")?;

    let config = CaptureConfig {
        max_flows: args.max_flows,
        service_cidrs: args.service_cidrs.clone(),
    };
    let mut pin = pin_root(&args).map(netscope_bpf::pin::PinDir::new);
    let pinned = match &pin {
        Some(p) => match Capture::load_pinned(&config, p) {
            Ok((capture, how)) => {
                info!(dir = ?p.dir(), layout = p.layout(), state = ?how, "flow tables pinned");
                Some(capture)
            }
            // No bpffs where the pins would go: run as without pinning.
            Err(netscope_bpf::LoadError::Pin(e @ netscope_bpf::pin::PinError::NotBpffs { .. })) => {
                error!(error = %e, "pinning is off: restarts of this agent lose what it had not reported");
                None
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "loading the capture program with its maps pinned in {}",
                        p.dir().display()
                    )
                })
            }
        },
        None => None,
    };
    if pinned.is_none() {
        pin = None;
    }
    let capture = Arc::new(match pinned {
        Some(capture) => capture,
        None => {
            info!("pinning is off: the programs are detached on exit");
            Capture::load(&config).context("loading the capture program")?
        }
    });
    let persist = pin.is_some();
    // An upgrade from another pinned layout: its maps are adopted to be
    // drained once this agent's program runs behind every pinned link.
    let mut older = Vec::new();
    if let Some(pin) = &pin {
        for (layout, dir) in pin.other_layouts() {
            match netscope_bpf::pin::meta_of(&dir) {
                Ok(meta) => {
                    let adopting = || {
                        format!(
                            "adopting the maps of layout {layout} in {} to drain them",
                            dir.display()
                        )
                    };
                    // Layout 1 has other maps (per-CPU hash tables): its own
                    // reader. Any other layout must have this build's maps.
                    let old: Box<dyn netscope::Collector> =
                        if meta.layout == netscope_bpf::legacy_v1::V1_LAYOUT {
                            Box::new(
                                netscope_bpf::legacy_v1::V1Collector::open(&dir)
                                    .with_context(adopting)?,
                            )
                        } else {
                            let old_pin =
                                netscope_bpf::pin::PinDir::with_layout(pin.root(), meta.layout);
                            let (old, _) =
                                Capture::load_pinned(&config, &old_pin).with_context(adopting)?;
                            Box::new(BpfCollector::new(Arc::new(old)))
                        };
                    info!(dir = ?dir, layout, "an older layout's maps are pinned: drained once every link runs this agent's program, then removed");
                    older.push((old, dir));
                }
                Err(e) => {
                    error!(dir = ?dir, error = %e, "not adopting this directory: not a complete netscope layout")
                }
            }
        }
    }
    info!(node = ?node_name, mode = %args.attach_mode, prefixes = ?filter.prefixes(), max_flows = args.max_flows,
          service_cidrs = ?args.service_cidrs, "capture program loaded");

    // Does this node deliver into pods past the host-side egress hook?
    netscope_bpf::datapath::report_foreign_ingress(
        &filter,
        &Direction::BOTH.map(|d| capture.program_id(d)),
    );

    // Discovery on its own thread: link events -> attach/detach.
    let attacher = Arc::new(BpfAttacher::new(capture.clone(), args.attach_mode));
    let reconciler = Arc::new(Mutex::new(Reconciler::new(attacher, filter)));
    let stop_discovery = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    // False once a supervised part (discovery, the drain loop, the debug
    // server) stopped: /healthz fails, and the agent exits non-zero.
    let live = Arc::new(AtomicBool::new(true));
    let (stopped_tx, stopped_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let mut watcher = LinkWatcher::new().context("opening the rtnetlink socket")?;
    let discovery = {
        let (r, stop, ready) = (reconciler.clone(), stop_discovery.clone(), ready.clone());
        let notice = StopNotice {
            part: "discovery",
            expected: stop_discovery.clone(),
            live: live.clone(),
            tx: stopped_tx.clone(),
        };
        std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || -> Result<()> {
                // Dropped on return and on panic alike.
                let _notice = notice;
                while !stop.load(Ordering::Relaxed) {
                    let events = watcher
                        .next(Duration::from_millis(200))
                        .context("reading link events")?;
                    let mut rec = r.lock().unwrap_or_else(|p| p.into_inner());
                    for e in events {
                        rec.handle(e);
                    }
                    // Ready once the initial link dump is applied.
                    ready.store(true, Ordering::Release);
                }
                Ok(())
            })?
    };

    let failed: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let http_stopping = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        let listener = bind(args.debug_addr)
            .await
            .with_context(|| format!("listening on --debug-addr {}", args.debug_addr))?;
        let http = HttpEndpoints {
            metrics: Some(Arc::new(move || prometheus.render())),
            ready: ready.clone(),
            live: Some(live.clone()),
            report: None,
        };
        let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let http_notice = StopNotice {
            part: "debug HTTP server",
            expected: http_stopping.clone(),
            live: live.clone(),
            tx: stopped_tx.clone(),
        };
        let http_task = tokio::spawn(async move {
            let _notice = http_notice;
            let result = serve_http(listener, http, async {
                let _ = http_stop_rx.await;
            })
            .await;
            if let Err(e) = &result {
                error!(error = ?e, "the debug HTTP server stopped");
            }
            result
        });

        let mut client = ClientConfig::new(args.server_endpoint.clone());
        client.tls = tls;
        client.max_message_bytes = usize::try_from(args.max_message_bytes).unwrap_or(usize::MAX);
        let mut replicas = ReplicaConfig::new(args.server_endpoint.clone(), node_name.clone());
        (replicas.resolve_interval, replicas.gone_after) = (args.server_resolve_interval, args.replica_gone_after);
        replicas.client = client.clone();
        let sink = ReplicaSink::new(replicas).with_context(|| format!("--server-endpoint {:?}", args.server_endpoint))?;
        let mut rc = ReporterConfig::new(node_name.clone());
        rc.interval = args.collection_interval;
        rc.max_buffered_flows = usize::try_from(args.max_buffered_flows).unwrap_or(usize::MAX);
        rc.max_report_samples = netscope::transport::convert::samples_per_report(
            usize::try_from(args.max_report_samples).unwrap_or(usize::MAX),
            client.max_message_bytes,
        );
        let collector: Box<dyn netscope::Collector> = if older.is_empty() {
            Box::new(BpfCollector::new(capture.clone()))
        } else {
            Box::new(UpgradeCollector::new(capture.clone(), std::mem::take(&mut older), ready.clone()))
        };
        let mut reporter = Reporter::new(rc, collector, Box::new(sink));
        if !args.service_cidrs.is_empty() {
            reporter = reporter.with_transform(Box::new(ServiceNat::new(NetlinkConntrack::new())));
        }
        if persist {
            // With the kernel state pinned, what was drained and not yet
            // acknowledged outlives the process too (docs/restarts.md).
            reporter = reporter.with_journal(Journal::new(
                &args.state_dir,
                usize::try_from(args.max_buffered_flows).unwrap_or(usize::MAX),
            ));
        }
        info!(server = %args.server_endpoint, interval = ?args.collection_interval, debug_addr = %args.debug_addr, "netscope-agent running");

        // On SIGTERM/SIGINT: detach everything first, so that the reporter's
        // final drain holds every packet that was counted; then it flushes.
        let (r, stop) = (reconciler.clone(), stop_discovery.clone());
        let (failed_part, not_ready, not_live) = (failed.clone(), ready.clone(), live.clone());
        let mut stopped_rx = stopped_rx;
        let shutdown = async move {
            tokio::select! {
                _ = shutdown_signal() => {
                    info!(pinned = persist, "shutting down: a final drain and report (detaching first unless pinned)");
                }
                Some(part) = stopped_rx.recv() => {
                    not_ready.store(false, Ordering::Release);
                    not_live.store(false, Ordering::Release);
                    error!(part, "a supervised part of the agent stopped: detaching, a final drain and report, then exiting non-zero");
                    *failed_part.lock().unwrap_or_else(|p| p.into_inner()) = Some(part);
                }
            }
            stop.store(true, Ordering::Relaxed);
            if persist {
                // The programs keep counting into the pinned maps for the
                // next agent: the final drain takes what was counted up to
                // now, the next agent's first drain the rest.
                info!("pinning is on: leaving the programs attached for the next agent");
                return;
            }
            let errors = tokio::task::spawn_blocking(move || r.lock().unwrap_or_else(|p| p.into_inner()).detach_all())
                .await
                .unwrap_or_default();
            for e in &errors {
                error!(error = ?error_chain(e), "detach failed");
            }
        };
        let summary = reporter.run(shutdown).await;
        // The drain loop has stopped.
        live.store(false, Ordering::Release);
        http_stopping.store(true, Ordering::Release);
        let _ = http_stop_tx.send(());
        let _ = http_task.await;
        anyhow::Ok(summary)
    })?;
    stop_discovery.store(true, Ordering::Relaxed);
    match discovery.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = ?format!("{e:#}"), "discovery stopped with an error"),
        Err(_) => error!("discovery thread panicked"),
    }
    // Anything attached after the shutdown began (with pinning, it stays).
    if !persist {
        for e in reconciler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .detach_all()
        {
            error!(error = ?error_chain(&e), "detach failed");
        }
    }
    info!(
        reports_acked = summary.reports_acked,
        send_failures = summary.send_failures,
        unsent_bytes = summary.unsent.bytes,
        "netscope-agent stopped"
    );
    if let Some(part) = *failed.lock().unwrap_or_else(|p| p.into_inner()) {
        anyhow::bail!("{part} stopped unexpectedly; exiting so that the pod is restarted");
    }
    if summary.unsent.bytes > 0 && persist {
        info!(
            bytes = summary.unsent.bytes,
            state_dir = ?args.state_dir,
            "undelivered bytes are kept in the journal for the next agent"
        );
    } else if summary.unsent.bytes > 0 {
        anyhow::bail!(
            "{} bytes could not be delivered before shutdown (see the log above)",
            summary.unsent.bytes
        );
    }
    Ok(())
}

/// Tells the agent's main loop that a supervised part stopped, when it
/// stops without being asked to (`expected` not set): on return or panic.
struct StopNotice {
    part: &'static str,
    expected: Arc<AtomicBool>,
    live: Arc<AtomicBool>,
    tx: tokio::sync::mpsc::UnboundedSender<&'static str>,
}

impl Drop for StopNotice {
    fn drop(&mut self) {
        if !self.expected.load(Ordering::Acquire) {
            self.live.store(false, Ordering::Release);
            let _ = self.tx.send(self.part);
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
