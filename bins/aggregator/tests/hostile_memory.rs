//! Issue 12, row 2: the aggregator's memory while three clients each send
//! maximum-size hostile reports, against its idle memory, in one run of the
//! real binary. Prints both; asserts the bound (a memory bound, not a
//! timing one): peak RSS at most 128 MiB above idle.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use netscope::transport::convert::time_to_nanos;
use netscope::transport::pb;

mod support;
use support::{free_port, http_get, is_200, wait_http, Killed};

const BIN: &str = env!("CARGO_BIN_EXE_netscope-aggregator");

fn ready(addr: SocketAddr) -> bool {
    http_get(addr, "/readyz").is_some_and(|r| is_200(&r))
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn base(instance: u8, seq: u64) -> pb::FlowReport {
    let end = SystemTime::now() - Duration::from_secs(1);
    pb::FlowReport {
        node_name: "node-a".into(),
        agent_instance_id: vec![instance; 16],
        sequence: seq,
        window_start_unix_nanos: time_to_nanos(end - Duration::from_secs(10)),
        window_end_unix_nanos: time_to_nanos(end),
        ..pb::FlowReport::default()
    }
}

/// The hostile reports, each as large as the limits let it be.
fn hostile(instance: u8, seq: u64) -> Vec<(&'static str, pb::FlowReport)> {
    let widest = pb::FlowSample {
        src: vec![0xfd; 16],
        dst: vec![0xfe; 16],
        family: pb::AddressFamily::Ipv6 as i32,
        direction: pb::Direction::ToPod as i32,
        l4: Some(pb::L4 {
            protocol: 255,
            src_port: 65_535,
            dst_port: 65_535,
        }),
        bytes: u64::MAX,
        packets: u64::MAX,
    };
    vec![
        (
            "50,000 samples of the widest encoding (decoded, every one dropped)",
            pb::FlowReport {
                samples: vec![widest; 50_000],
                ..base(instance, seq)
            },
        ),
        (
            "2,000,000 empty samples in 4 MB (refused before decoding)",
            pb::FlowReport {
                samples: vec![pb::FlowSample::default(); 2_000_000],
                ..base(instance, seq + 1)
            },
        ),
        (
            "60 samples with 64 KiB addresses (decoded, every one dropped)",
            pb::FlowReport {
                samples: vec![
                    pb::FlowSample {
                        src: vec![1; 64 << 10],
                        ..pb::FlowSample::default()
                    };
                    60
                ],
                ..base(instance, seq + 2)
            },
        ),
        (
            "8 MiB (over the message limit)",
            pb::FlowReport {
                samples: vec![
                    pb::FlowSample {
                        src: vec![2; 64 << 10],
                        ..pb::FlowSample::default()
                    };
                    130
                ],
                ..base(instance, seq + 3)
            },
        ),
    ]
}

#[test]
fn three_hostile_clients_stay_within_128_mib_of_idle() {
    let dir = std::env::temp_dir().join(format!("netscope-trust-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let topo = dir.join("topology.yaml");
    std::fs::write(
        &topo,
        "nodes:\n  - {name: node-a, zone: zone-1, ips: [127.0.0.1]}\n",
    )
    .expect("write topology");
    let addr = free_port();
    let child = Command::new(BIN)
        .args(["--listen-addr", &addr.to_string(), "--topology"])
        .arg(&topo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the aggregator");
    let pid = child.id();
    let mut guard = Killed(child);
    wait_http(&mut guard, addr, "/readyz", Duration::from_secs(30), is_200);
    std::thread::sleep(Duration::from_secs(1));
    let (idle_rss, idle_hwm) = rss_kib(pid);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcomes = rt.block_on(async move {
        let mut tasks = Vec::new();
        for client in 0..3u8 {
            // Built before connecting, so all three send at once.
            let rounds: Vec<_> = (0..2u64).map(|r| hostile(client + 1, 1 + r * 4)).collect();
            tasks.push(tokio::spawn(async move {
                let mut c =
                    pb::flow_service_client::FlowServiceClient::connect(format!("http://{addr}"))
                        .await
                        .expect("connect")
                        .max_encoding_message_size(usize::MAX);
                let mut seen = Vec::new();
                for round in rounds {
                    for (what, r) in round {
                        let code = match c.report(r).await {
                            Ok(_) => String::from("Ok"),
                            Err(s) => format!("{:?}", s.code()),
                        };
                        seen.push(format!("{what}: {code}"));
                    }
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    });
    let (after_rss, peak) = rss_kib(pid);
    assert!(ready(addr), "the aggregator stopped serving");
    let mut kinds = outcomes.clone();
    kinds.sort();
    kinds.dedup();
    println!(
        "aggregator under 3 hostile clients ({} reports):",
        outcomes.len()
    );
    for k in &kinds {
        println!("  {k}");
    }
    println!(
        "idle RSS {} KiB (peak before {} KiB); peak RSS under attack {} KiB; RSS after {} KiB; peak above idle {} KiB ({:.1} MiB)",
        idle_rss,
        idle_hwm,
        peak,
        after_rss,
        peak.saturating_sub(idle_rss),
        peak.saturating_sub(idle_rss) as f64 / 1024.0
    );
    assert_eq!(outcomes.len(), 3 * 2 * 4, "every report answered");
    assert!(
        kinds.iter().any(|k| k.contains("InvalidArgument"))
            && kinds.iter().any(|k| k.contains("ResourceExhausted")),
        "the hostile reports were not refused: {kinds:?}"
    );
    assert!(
        peak.saturating_sub(idle_rss) < 128 * 1024,
        "peak RSS {peak} KiB is more than 128 MiB above idle {idle_rss} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
