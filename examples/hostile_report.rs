//! Sends one crafted report to an aggregator and prints the gRPC status it
//! got: a hostile client for demos and manual checks (issue 12).
//!
//! ```text
//! cargo run -p netscope-examples --example hostile_report -- \
//!     --addr 172.31.0.100:8080 --node node-1 --kind impersonate
//! ```
//!
//! Kinds:
//! - `impersonate`: a plausible report for `--node` from wherever this runs
//!   (refused with `PermissionDenied` unless this host is that node);
//! - `oversized`: more samples than the aggregator's limit (empty ones);
//! - `huge-bytes`: 16,384 samples of 1 PiB each;
//! - `seq-jump`: sequence 2^63 (give `--instance` to aim at a live agent);
//! - `future-window`: a window ending a day from now;
//! - `wrong-node-observation`: a `to_pod` observation of `--pod-ip`, a pod
//!   that runs on another node than `--node`;
//! - `below-header`: one sample with fewer bytes per packet than an IP
//!   header next to a good one (the bad one is dropped, the good one counts).
//!
//! Prints `status: CODE: message` or `acknowledged: ...`; exits 0 when the
//! aggregator answered (whatever it answered), 1 when it could not be
//! reached.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use netscope::transport::convert::{report_to_proto, time_to_nanos};
use netscope::transport::pb;
use netscope::{Counters, Direction, FlowKey, FlowSample, InstanceId, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Impersonate,
    Oversized,
    HugeBytes,
    SeqJump,
    FutureWindow,
    WrongNodeObservation,
    BelowHeader,
}

/// Sends one crafted report to a netscope aggregator.
#[derive(Debug, Parser)]
#[command(name = "hostile_report")]
struct Args {
    /// Aggregator address, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// Node name the report claims to come from.
    #[arg(long)]
    node: String,
    /// What to send.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Agent instance id, 32 hex digits (default: random).
    #[arg(long)]
    instance: Option<String>,
    /// Source pod address of the samples (default 10.244.1.10).
    #[arg(long, default_value = "10.244.1.10")]
    pod_ip: IpAddr,
    /// Remote address of the samples.
    #[arg(long, default_value = "192.0.2.1")]
    remote_ip: IpAddr,
    /// Samples for `oversized` (default: one more than the default limit).
    #[arg(long, default_value_t = netscope::report::DEFAULT_MAX_REPORT_SAMPLES + 1)]
    samples: usize,
}

fn instance(hex: Option<&str>) -> Result<InstanceId> {
    let Some(hex) = hex else {
        return Ok(InstanceId::random());
    };
    anyhow::ensure!(hex.len() == 32, "--instance must be 32 hex digits");
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .with_context(|| format!("--instance {hex:?} is not hex"))?;
    }
    Ok(InstanceId(b))
}

fn build(args: &Args) -> Result<pb::FlowReport> {
    let now = SystemTime::now();
    let end = now - Duration::from_secs(1);
    let sample = |src: IpAddr, dst: IpAddr, dir, bytes, packets| FlowSample {
        key: FlowKey::new(src, dst, dir),
        counters: Counters::new(bytes, packets),
    };
    let good = sample(args.pod_ip, args.remote_ip, Direction::FromPod, 1500, 1);
    let mut report = Report {
        node: args.node.clone(),
        instance: instance(args.instance.as_deref())?,
        seq: 1,
        window_start: end - Duration::from_secs(10),
        window_end: end,
        samples: vec![good],
        overflow: Counters::default(),
        folded_flows: 0,
    };
    match args.kind {
        Kind::Impersonate => {}
        Kind::Oversized => report.samples.clear(),
        Kind::HugeBytes => {
            report.samples = vec![
                sample(
                    args.pod_ip,
                    args.remote_ip,
                    Direction::FromPod,
                    1 << 50,
                    (1 << 50) / 1000
                );
                16_384
            ]
        }
        Kind::SeqJump => report.seq = 1 << 63,
        Kind::FutureWindow => {
            report.window_end = now + Duration::from_secs(24 * 3600);
            report.window_start = report.window_end - Duration::from_secs(10);
        }
        Kind::WrongNodeObservation => {
            report.samples = vec![sample(
                args.remote_ip,
                args.pod_ip,
                Direction::ToPod,
                5000,
                4,
            )]
        }
        Kind::BelowHeader => report.samples.push(sample(
            args.pod_ip,
            args.remote_ip,
            Direction::FromPod,
            10,
            1,
        )),
    }
    let mut wire = report_to_proto(&report);
    if args.kind == Kind::Oversized {
        wire.samples = vec![pb::FlowSample::default(); args.samples];
    }
    if args.kind == Kind::FutureWindow {
        wire.window_end_unix_nanos = time_to_nanos(report.window_end);
    }
    Ok(wire)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let report = build(&args)?;
    let uri = format!("http://{}", args.addr);
    let mut client = match pb::flow_service_client::FlowServiceClient::connect(uri.clone()).await {
        Ok(c) => c.max_encoding_message_size(usize::MAX),
        Err(e) => {
            eprintln!("hostile_report: cannot reach {uri}: {e}");
            std::process::exit(1);
        }
    };
    match client.report(report).await {
        Ok(ack) => {
            let ack = ack.into_inner();
            println!(
                "acknowledged: sequence {} duplicate {}",
                ack.sequence, ack.duplicate
            );
        }
        Err(status) => println!("status: {:?}: {}", status.code(), status.message()),
    }
    Ok(())
}
