//! The capture core embedded in a program of your own: discover pod links,
//! attach, and print every drained flow as a JSON line.
//!
//! ```text
//! sudo target/debug/examples/capture_local --mode auto --interval 1s --duration 10s
//! ```
//!
//! Logs go to stderr; flows go to stdout, one JSON object per line, plus a
//! `{"drain": …}` summary line per interval. SIGINT/SIGTERM detach
//! everything, drain once more and exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ipnet::IpNet;
use netscope::discover::{error_chain, InterfaceFilter, Reconciler, DEFAULT_PREFIXES};
use netscope::{AttachMode, Collector};
use netscope_bpf::netlink::LinkWatcher;
use netscope_bpf::{BpfAttacher, BpfCollector, Capture, CaptureConfig, DEFAULT_MAX_FLOWS};

#[derive(Debug, Parser)]
#[command(
    about = "netscope capture core: attach to pod links and print drained flows as JSON lines"
)]
struct Args {
    /// Attach mode: auto (TCX, falling back to legacy TC), tcx, or tc.
    #[arg(long, default_value = "auto")]
    mode: AttachMode,
    /// Interface name prefixes to attach to (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_PREFIXES.iter().map(|s| s.to_string()))]
    interface_prefixes: Vec<String>,
    /// Also attach to names matching this regex.
    #[arg(long)]
    include: Option<String>,
    /// Never attach to names matching this regex.
    #[arg(long)]
    exclude: Option<String>,
    /// Flow-table capacity.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS)]
    max_flows: u32,
    /// Service CIDRs (comma-separated): flows to them keep protocol and ports.
    #[arg(long, value_delimiter = ',')]
    service_cidrs: Vec<IpNet>,
    /// How often to drain.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop after this long (default: run until SIGINT/SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let filter = InterfaceFilter::new(
        &args.interface_prefixes,
        args.include.as_deref(),
        args.exclude.as_deref(),
    )?;
    let config = CaptureConfig {
        max_flows: args.max_flows,
        service_cidrs: args.service_cidrs.clone(),
    };
    let capture = Arc::new(Capture::load(&config).context("loading the capture program")?);
    tracing::info!(mode = %args.mode, prefixes = ?filter.prefixes(), max_flows = args.max_flows, "capture program loaded");

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }

    let attacher = Arc::new(BpfAttacher::new(capture.clone(), args.mode));
    let reconciler = Arc::new(Mutex::new(Reconciler::new(attacher, filter)));
    let mut watcher = LinkWatcher::new().context("opening the rtnetlink socket")?;
    let (r, s) = (reconciler.clone(), stop.clone());
    let discovery = std::thread::spawn(move || -> anyhow::Result<()> {
        while !s.load(Ordering::Relaxed) {
            let events = watcher
                .next(Duration::from_millis(100))
                .context("reading link events")?;
            let mut rec = r.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                rec.handle(e);
            }
        }
        Ok(())
    });

    let mut collector = BpfCollector::new(capture);
    let started = Instant::now();
    let mut n = 0u64;
    let mut next = started + args.interval;
    loop {
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(
                Duration::from_millis(20).min(next.saturating_duration_since(Instant::now())),
            );
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        next += args.interval;
        n += 1;
        print_drain(n, &mut collector)?;
    }

    // Stop discovery, detach everything, then the final drain.
    discovery
        .join()
        .map_err(|_| anyhow::anyhow!("discovery thread panicked"))??;
    let errors = reconciler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .detach_all();
    for e in &errors {
        tracing::error!(error = %error_chain(e), "detach failed");
    }
    print_drain(n + 1, &mut collector)?;
    tracing::info!(drains = n + 1, "stopped; everything detached");
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} detach errors", errors.len())
    }
}

fn print_drain(n: u64, collector: &mut BpfCollector) -> anyhow::Result<()> {
    let d = collector.drain().context("draining the flow table")?;
    for s in &d.samples {
        let mut line = serde_json::json!({
            "src": s.key.src.to_string(),
            "dst": s.key.dst.to_string(),
            "direction": s.key.direction.to_string(),
            "bytes": s.counters.bytes,
            "packets": s.counters.packets,
        });
        if let Some(l4) = s.key.l4 {
            line["proto"] = l4.proto.into();
            line["src_port"] = l4.src_port.into();
            line["dst_port"] = l4.dst_port.into();
        }
        println!("{line}");
    }
    let total = d.total();
    println!(
        "{}",
        serde_json::json!({
            "drain": n,
            "flows": d.samples.len(),
            "capacity": d.capacity,
            "bytes": total.bytes,
            "packets": total.packets,
            "overflow_bytes": d.overflow.bytes,
            "overflow_packets": d.overflow.packets,
        })
    );
    Ok(())
}
