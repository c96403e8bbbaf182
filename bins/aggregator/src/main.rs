//! netscope-aggregator: receives the agents' reports over gRPC, counts every
//! byte once, resolves endpoints and hands the flows to the exporters.
//! Wiring only; the logic lives in the `netscope` library.

mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use netscope::aggregate::DedupConfig;
use netscope::transport::server::{
    serve, HttpEndpoints, ServerConfig, ServerTls, DEFAULT_MAX_MESSAGE_BYTES,
};
use netscope::{Aggregator, Exporter, ResolvedFlow};
use tracing::{debug, info};

/// Receives netscope agents' flow reports, counts every byte once and
/// exports cross-zone traffic.
#[derive(Debug, Parser)]
#[command(name = "netscope-aggregator", version, about)]
struct Args {
    /// Address for gRPC (agents' reports) and HTTP (/metrics, /healthz,
    /// /readyz), on one port. ":PORT" listens on all addresses.
    #[arg(long, default_value = ":8080", value_parser = parse_listen_addr)]
    listen_addr: SocketAddr,
    /// Static topology file (nodes, pods, services; YAML).
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Custom endpoints file (name, namespace, zone, ips; YAML).
    #[arg(long, value_name = "FILE")]
    custom_endpoints: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes resolver.
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Largest report accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Forget an agent instance after this long without a report (seconds);
    /// keep it above the longest time an agent retries one report.
    #[arg(long, default_value_t = 6 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
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
    /// Do not serve gRPC reflection.
    #[arg(long)]
    no_reflection: bool,
    /// Log verbosity: 0 info, 1-2 debug, 3-4 trace for netscope, 5 trace
    /// for everything. RUST_LOG overrides.
    #[arg(short = 'v', long = "verbosity", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=5))]
    verbosity: u8,
}

fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("[::]{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|e| format!("{s:?} is not HOST:PORT or :PORT ({e})"))
}

fn init_logging(verbosity: u8) {
    let default = match verbosity {
        0 => "info",
        1 | 2 => "info,netscope=debug,netscope_aggregator=debug",
        3 | 4 => "info,netscope=trace,netscope_aggregator=trace",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Minimal exporter until the Prometheus and flow-log exporters are wired:
/// logs a summary per batch and each flow at trace level.
struct LogExporter;

impl Exporter for LogExporter {
    fn export(&self, flows: &[ResolvedFlow]) {
        let bytes: u64 = flows.iter().map(|f| f.counters.bytes).sum();
        debug!(flows = flows.len(), bytes, "exported flows");
        for f in flows {
            tracing::trace!(
                src = %f.src_ip, src_name = %f.src.name, src_zone = %f.src.zone,
                dst = %f.dst_ip, dst_name = %f.dst.name, dst_zone = %f.dst.zone,
                bytes = f.counters.bytes, counted = %f.direction_counted, "flow"
            );
        }
    }
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(args.verbosity);

    if let Some(k) = &args.kubeconfig {
        bail!(
            "--kubeconfig {}: the Kubernetes resolver is not part of this build yet; use --topology",
            k.display()
        );
    }
    let resolver = topology::load(args.topology.as_deref(), args.custom_endpoints.as_deref())?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
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
    let aggregator = Arc::new(Aggregator::new(
        Arc::new(resolver),
        vec![Arc::new(LogExporter)],
        DedupConfig {
            idle_ttl: Duration::from_secs(args.dedup_idle_ttl_secs),
            ..DedupConfig::default()
        },
    ));
    let config = ServerConfig {
        max_message_bytes: args.max_message_bytes,
        tls,
        reflection: !args.no_reflection,
        ..ServerConfig::default()
    };
    let listener = match tokio::net::TcpListener::bind(args.listen_addr).await {
        Ok(l) => l,
        // No IPv6 on this host: ":PORT" falls back to IPv4.
        Err(_) if args.listen_addr.ip().is_unspecified() && args.listen_addr.is_ipv6() => {
            tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], args.listen_addr.port())))
                .await
                .with_context(|| format!("listening on {}", args.listen_addr))?
        }
        Err(e) => return Err(e).with_context(|| format!("listening on {}", args.listen_addr)),
    };
    let handle = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            handle.run_upkeep();
        }
    });
    let http = HttpEndpoints {
        metrics: Some(Arc::new(move || prometheus.render())),
        ..HttpEndpoints::default()
    };
    http.ready.store(true, Ordering::Release);
    info!(addr = %listener.local_addr()?, "netscope-aggregator listening (gRPC + HTTP)");
    serve(listener, aggregator, config, http, shutdown_signal()).await?;
    info!("netscope-aggregator stopped");
    Ok(())
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
