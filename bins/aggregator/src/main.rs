//! netscope-aggregator: receives the agents' reports over gRPC, counts every
//! byte once, resolves endpoints and hands the flows to the exporters.
//! Wiring only; the logic lives in the `netscope` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use netscope::aggregate::DedupConfig;
use netscope::cli::{
    bind, init_logging, parse_duration_within, parse_listen_addr, LogFormat, Supervisor,
};
use netscope::export::cost::{Price, Pricing};
use netscope::export::flowlog::{FlowLogConfig, FlowLogExporter};
use netscope::export::prometheus::{
    CardinalityLimits, PrometheusConfig, PrometheusExporter, SeriesExpiry,
};
use netscope::export::recorder::RecorderBuilder;
use netscope::export::service::{ServiceConfig, ServiceExporter, REPORT_LIMIT};
use netscope::resolve::kube::{KubeResolver, KubeResolverConfig};
use netscope::resolve::{
    CustomEndpoints, CustomEndpointsOptions, IpPrefix, LayeredResolver, ServiceTopology,
    StaticResolver, StaticTopologyOptions,
};
use netscope::transport::server::{
    serve, serve_http, HttpEndpoints, ServerConfig, ServerTls, DEFAULT_MAX_MESSAGE_BYTES,
};
use netscope::{Aggregator, EndpointKind, Exporter, Resolver};
use tracing::{error, info};

/// Receives netscope agents' flow reports, counts every byte once and
/// exports cross-zone traffic.
#[derive(Debug, Parser)]
#[command(name = "netscope-aggregator", version, about)]
struct Args {
    /// Address for gRPC (agents' reports) and HTTP (/metrics, /healthz,
    /// /readyz), on one port. ":PORT" listens on all addresses.
    #[arg(long, default_value = ":8080", value_parser = parse_listen_addr)]
    listen_addr: SocketAddr,
    /// Also serve /metrics, /healthz and /readyz in plain HTTP on this
    /// address, for probes and scrapers when mutual TLS on --listen-addr asks
    /// every client for a certificate. ":PORT" listens on all addresses.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    http_listen_addr: Option<SocketAddr>,
    /// Static topology file (nodes, pods, services; YAML), reloaded on change.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Custom endpoints file (name, namespace, zone, ips; YAML).
    #[arg(long, value_name = "FILE")]
    custom_endpoints: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes resolver.
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Largest report accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES as u64, value_parser = clap::value_parser!(u64).range(netscope::transport::server::MIN_MESSAGE_BYTES as u64..=netscope::transport::server::MAX_MESSAGE_BYTES as u64))]
    max_message_bytes: u64,
    /// Most samples in one report; checked on the wire before decoding.
    #[arg(long, default_value_t = netscope::report::DEFAULT_MAX_REPORT_SAMPLES as u64, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_samples: u64,
    /// Most reports read, decoded and counted at once (more wait).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_reports_in_flight: u64,
    /// Accept reports for a node from any address. By default a report for node X must come from an address of node X; turn this on only where agents reach the aggregator through NAT.
    #[arg(long)]
    allow_any_peer_node: bool,
    /// Forget an agent instance after this long without a report (seconds,
    /// 1 to 2592000 = 30 days); keep it above the longest time an agent
    /// retries one report.
    #[arg(long, default_value_t = 6 * 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_DEDUP_IDLE_TTL_SECS))]
    dedup_idle_ttl_secs: u64,
    /// Server certificate (PEM). With --tls-key, serves TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that agents' client certificates must chain to:
    /// turns on mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// The cluster's Service CIDRs, where the ServiceCIDR API is not available (comma-separated).
    #[arg(long, value_delimiter = ',')]
    service_cidrs: Vec<IpPrefix>,
    /// Label selector of netscope agent pods: nodes running a Ready one are "monitored".
    #[arg(long, default_value = "app.kubernetes.io/name=netscope-agent")]
    agent_selector: String,
    /// How long a deleted pod's IPs still resolve to it, for late reports
    /// (Kubernetes backend and static topology). At most 24h.
    #[arg(long, default_value = "2m", value_parser = parse_tombstone_grace)]
    tombstone_grace: Duration,
    /// How long a node stays monitored after its last Ready agent pod went
    /// away (a restart or an upgrade: its pinned programs keep counting and
    /// the next agent reports it). Kubernetes backend; 0 to 1h.
    #[arg(long, default_value = "5m", value_parser = parse_agent_absence_grace)]
    agent_absence_grace: Duration,
    /// How often the --topology and --custom-endpoints files are checked
    /// for changes. Above zero, at most 1h.
    #[arg(long, default_value = "10s", value_parser = parse_reload_interval)]
    reload_interval: Duration,
    /// Write one JSON object per resolved flow to stdout.
    #[arg(long, env = "ENABLE_FLOW_LOGS")]
    enable_flow_logs: bool,
    /// Price per GB (10^9 bytes) charged on the sending side of cross-zone traffic, in dollars (AWS: 0.01).
    #[arg(long, default_value_t = 0.01)]
    price_per_gb_sending: f64,
    /// Price per GB charged on the receiving side, in dollars (AWS: 0.01).
    #[arg(long, default_value_t = 0.01)]
    price_per_gb_receiving: f64,
    /// Remove series idle for longer than this (gone pods' series go away).
    /// Above zero, at most 7d.
    #[arg(long, default_value = "10m", value_parser = parse_series_idle_timeout)]
    series_idle_timeout: Duration,
    /// Cardinality guard: most distinct pod pairs; more fold into `other`.
    #[arg(long, default_value_t = 100_000)]
    max_pod_pairs: usize,
    /// Cardinality guard: most distinct workload pairs.
    #[arg(long, default_value_t = 20_000)]
    max_workload_pairs: usize,
    /// Cardinality guard: most distinct label sets of
    /// netscope_service_network_traffic_bytes_total (more fold into `other`).
    #[arg(long, default_value_t = 10_000)]
    max_service_series: usize,
    /// Do not serve gRPC reflection.
    #[arg(long)]
    no_reflection: bool,
    /// Log verbosity: 0 info, 1-2 debug, 3-4 trace for netscope, 5 trace
    /// for everything. RUST_LOG overrides.
    #[arg(short = 'v', long = "verbosity", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=5))]
    verbosity: u8,
    /// Log line format on stderr: text (ANSI colours only on a terminal) or
    /// json (one object per line, for log pipelines).
    #[arg(long, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Upper bound of --dedup-idle-ttl-secs: 30 days.
const MAX_DEDUP_IDLE_TTL_SECS: u64 = 30 * 24 * 3600;
const HOUR: Duration = Duration::from_secs(3600);

fn parse_reload_interval(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than zero (e.g. 10s)".into()),
        _ => parse_duration_within(s, Duration::from_millis(1), HOUR),
    }
}

fn parse_tombstone_grace(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, Duration::ZERO, 24 * HOUR)
}

fn parse_agent_absence_grace(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, Duration::ZERO, HOUR)
}

fn parse_series_idle_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, Duration::from_millis(1), 7 * 24 * HOUR)
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(args.verbosity, args.log_format, &["netscope_aggregator"])
        .context("--log-format")?;
    let mut tasks = Supervisor::new();

    // The recorder first: exporters cache handles to it.
    let expiry = SeriesExpiry::new(args.series_idle_timeout).context("--series-idle-timeout")?;
    let prometheus = RecorderBuilder::new()
        .counter_idle_timeout(expiry.idle_timeout())
        .install()
        .context("installing the Prometheus recorder")?;
    let resolver = build_resolver(&args, &mut tasks).await?;
    let pricing = Pricing {
        sending: Price::per_gb(args.price_per_gb_sending).context("--price-per-gb-sending")?,
        receiving: Price::per_gb(args.price_per_gb_receiving)
            .context("--price-per-gb-receiving")?,
    };
    pricing.record_gauges();
    let limits = CardinalityLimits {
        pod_pairs: args.max_pod_pairs,
        workload_pairs: args.max_workload_pairs,
        ..CardinalityLimits::default()
    };
    let prom = Arc::new(
        PrometheusExporter::new(PrometheusConfig {
            pricing,
            limits,
            expiry,
        })
        .context("Prometheus exporter")?,
    );
    let services = service_exporter(&resolver, pricing, args.max_service_series);
    let mut exporters: Vec<Arc<dyn Exporter>> = vec![prom.clone(), services.clone()];
    let flowlog = if args.enable_flow_logs {
        let f = Arc::new(FlowLogExporter::stdout(FlowLogConfig::default()).context("flow logs")?);
        exporters.push(f.clone());
        Some(f)
    } else {
        None
    };
    // Series upkeep: idle series of pods that are gone (deleted, or removed
    // from the topology file) expire; live pods' and other kinds' stay.
    {
        let (prom, resolver) = (prom.clone(), resolver.clone());
        let every = expiry.upkeep_interval();
        tasks.spawn("series upkeep", async move {
            loop {
                tokio::time::sleep(every).await;
                prom.upkeep(Instant::now(), &|ep| {
                    ep.kind != EndpointKind::Pod || resolver.has_pod(&ep.namespace, &ep.name)
                });
            }
        });
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert_pem: read(cert, "TLS certificate")?,
            key_pem: read(key, "TLS key")?,
            client_ca_pem: args
                .tls_client_ca
                .as_ref()
                .map(|p| read(p, "client CA"))
                .transpose()?,
        }),
        _ => None,
    };
    let ready_resolver = resolver.clone();
    let aggregator = Arc::new(Aggregator::new(
        resolver,
        exporters,
        DedupConfig {
            idle_ttl: Duration::from_secs(args.dedup_idle_ttl_secs),
            ..DedupConfig::default()
        },
    ));
    let config = ServerConfig {
        max_message_bytes: usize::try_from(args.max_message_bytes).unwrap_or(usize::MAX),
        limits: netscope::transport::ValidationLimits {
            max_samples: usize::try_from(args.max_samples).unwrap_or(usize::MAX),
            ..netscope::transport::ValidationLimits::default()
        },
        max_reports_in_flight: usize::try_from(args.max_reports_in_flight).unwrap_or(usize::MAX),
        verify_peer_node: !args.allow_any_peer_node,
        tls,
        reflection: !args.no_reflection,
        ..ServerConfig::default()
    };
    let listener = bind(args.listen_addr)
        .await
        .with_context(|| format!("listening on {}", args.listen_addr))?;

    let handle = prometheus.clone();
    tasks.spawn("recorder upkeep", async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            handle.upkeep();
        }
    });
    let live = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let http = HttpEndpoints {
        metrics: Some(Arc::new(move || prometheus.render())),
        live: Some(live.clone()),
        report: Some(Arc::new(move || services.report(REPORT_LIMIT).to_json())),
        ..HttpEndpoints::default()
    };
    // Ready once the resolver has its initial lists.
    {
        let ready = http.ready.clone();
        tasks.spawn("readiness", async move {
            while !ready_resolver.is_synced() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ready.store(true, Ordering::Release);
            info!("resolver synced; ready");
            // Supervised like the others: it must not end.
            std::future::pending::<()>().await;
        });
    }
    if let Some(addr) = args.http_listen_addr {
        let l = bind(addr)
            .await
            .with_context(|| format!("listening on --http-listen-addr {addr}"))?;
        info!(addr = %l.local_addr()?, "plain HTTP for /metrics, /healthz and /readyz");
        let http = http.clone();
        tasks.spawn("plain HTTP port", async move {
            // Runs until the process exits.
            if let Err(e) = serve_http(l, http, std::future::pending()).await {
                error!(error = ?e, "the plain HTTP port stopped serving");
            }
        });
    }
    info!(addr = %listener.local_addr()?, "netscope-aggregator listening (gRPC + HTTP)");
    let ready = http.ready.clone();
    let served = tokio::select! {
        r = serve(listener, aggregator, config, http, shutdown_signal()) => {
            r.map_err(anyhow::Error::from)
        }
        exit = tasks.first_exit() => {
            // Not ready, not live: Kubernetes restarts the pod.
            ready.store(false, Ordering::Release);
            live.store(false, Ordering::Release);
            error!(error = %exit, "a supervised task stopped; exiting");
            Err(anyhow::Error::from(exit))
        }
    };
    if let Some(f) = flowlog {
        if let Err(e) = f.shutdown(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "flow log did not flush completely");
        }
    }
    served?;
    info!("netscope-aggregator stopped");
    Ok(())
}

/// Service series and the in-zone routing estimate, from the resolver's
/// Service topology (static `services:` section, or EndpointSlices).
fn service_exporter(
    resolver: &Arc<dyn Resolver>,
    pricing: Pricing,
    max_series: usize,
) -> Arc<ServiceExporter> {
    let resolver = resolver.clone();
    let empty = Arc::new(ServiceTopology::default());
    let topology = Arc::new(move || resolver.service_topology().unwrap_or_else(|| empty.clone()));
    Arc::new(ServiceExporter::new(
        ServiceConfig {
            pricing,
            max_series: max_series.max(1),
            ..ServiceConfig::default()
        },
        topology,
    ))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Resolution: Kubernetes (with --kubeconfig or in a cluster) or a static
/// topology, then custom endpoints, layered with the fixed precedence
/// pod > node > service > custom > external.
async fn build_resolver(args: &Args, tasks: &mut Supervisor) -> Result<Arc<dyn Resolver>> {
    let mut layers: Vec<Arc<dyn Resolver>> = Vec::new();
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if let Some(path) = &args.topology {
        let options = StaticTopologyOptions {
            poll_interval: args.reload_interval,
            tombstone_grace: args.tombstone_grace,
            ..StaticTopologyOptions::default()
        };
        // Off the async workers: a large or hostile file must not stall them.
        let file = path.clone();
        let r = Arc::new(
            tokio::task::spawn_blocking(move || StaticResolver::load(file, options))
                .await
                .context("loading --topology")?
                .with_context(|| format!("--topology {}", path.display()))?,
        );
        tasks.spawn("topology file watch", r.clone().watch());
        layers.push(r);
    } else if args.kubeconfig.is_some() || in_cluster {
        let config = KubeResolverConfig {
            agent_selector: args.agent_selector.clone(),
            tombstone_grace: args.tombstone_grace,
            agent_absence_grace: args.agent_absence_grace,
            service_cidrs: args.service_cidrs.clone(),
            ..KubeResolverConfig::default()
        };
        let client = match &args.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("--kubeconfig {}", path.display()))?;
                let cfg = kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
                kube::Client::try_from(cfg).context("building the Kubernetes client")?
            }
            None => kube::Client::try_default()
                .await
                .context("building the in-cluster Kubernetes client")?,
        };
        let (r, driver) = KubeResolver::new(client, config).context("Kubernetes resolver")?;
        tasks.spawn("Kubernetes watch", driver.run());
        let r = Arc::new(r);
        layers.push(r);
    } else {
        anyhow::bail!("no resolution source: pass --topology FILE, or --kubeconfig FILE (in a cluster the service account is used)");
    }
    if let Some(path) = &args.custom_endpoints {
        let (file, options) = (
            path.clone(),
            CustomEndpointsOptions {
                poll_interval: args.reload_interval,
                ..CustomEndpointsOptions::default()
            },
        );
        let c = Arc::new(
            tokio::task::spawn_blocking(move || CustomEndpoints::load(file, options))
                .await
                .context("loading --custom-endpoints")?
                .with_context(|| format!("--custom-endpoints {}", path.display()))?,
        );
        tasks.spawn("custom endpoints file watch", c.clone().watch());
        layers.push(c);
    }
    Ok(Arc::new(LayeredResolver::new(layers)))
}
