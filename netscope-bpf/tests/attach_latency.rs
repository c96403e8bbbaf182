//! Issue 15, item 4: a new pod link gets both directions attached as one
//! step. The real agent binary runs in a namespace of this test's own
//! (`netscope-test-lat-*`, TCX, pinning on in a bpffs directory of its own);
//! pod links are created one after the other, and the test watches the TCX
//! hooks of each: both directions must carry netscope's program, and the
//! time from link creation to both directions counting, and between the
//! two directions, is printed (measured, not asserted). Needs root and
//! `target/debug/netscope-agent` (cargo build -p netscope-agent).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netscope::Direction;
use netscope_bpf::testing::netns::{sweep, NetNs};
use netscope_bpf::{interface, tcx_programs};

fn agent_bin() -> PathBuf {
    // target/debug/deps/attach_latency-<hash> -> target/debug/netscope-agent
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("netscope-agent");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p netscope-agent first",
        bin.display()
    );
    bin
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn both_directions_attach_as_one_step() {
    sweep("netscope-test-lat").expect("sweep stale namespaces");
    let ns = NetNs::new(&format!("netscope-test-lat{}", std::process::id()))
        .expect("netns (needs root)");
    let pin_root = format!("/sys/fs/bpf/{}", ns.name());
    let state = std::env::temp_dir().join(ns.name());
    let log = std::env::temp_dir().join(format!("{}.log", ns.name()));
    let agent = Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg("--")
        .arg(agent_bin())
        .args([
            "--node-name",
            "node-lat",
            "--server-endpoint",
            "127.0.0.1:1",
        ])
        .args(["--debug-addr", "127.0.0.1:0", "--attach-mode", "tcx"])
        .args(["--collection-interval", "1s", "--pin-root", &pin_root])
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("starting the agent");
    let agent = Kill(agent);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("netscope-agent running")
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut both, mut gap) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let name = format!("vethlat{i}");
        let peer = format!("plat{i}");
        let t0 = Instant::now();
        ns.exec(&[
            "ip", "link", "add", &name, "type", "veth", "peer", "name", &peer,
        ])
        .expect("ip link add");
        let n = name.clone();
        let (first, second) = ns.run(move || {
            let iface = interface(&n).expect("the new link");
            let (mut ingress, mut egress) = (None, None);
            let end = Instant::now() + Duration::from_secs(10);
            while (ingress.is_none() || egress.is_none()) && Instant::now() < end {
                if ingress.is_none()
                    && !tcx_programs(iface.ifindex, Direction::FromPod)
                        .unwrap_or_default()
                        .is_empty()
                {
                    ingress = Some(t0.elapsed());
                }
                if egress.is_none()
                    && !tcx_programs(iface.ifindex, Direction::ToPod)
                        .unwrap_or_default()
                        .is_empty()
                {
                    egress = Some(t0.elapsed());
                }
            }
            (ingress, egress)
        });
        let (Some(a), Some(b)) = (first, second) else {
            panic!(
                "{name}: ingress {first:?}, egress {second:?} after 10 s; agent log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        both.push(a.max(b).as_secs_f64() * 1e3);
        gap.push(a.abs_diff(b).as_secs_f64() * 1e3);
    }
    println!(
        "link creation -> both directions counting: median {:.1} ms (max {:.1} ms); between the two directions: median {:.2} ms (max {:.2} ms), 10 links, TCX",
        median(both.clone()),
        both.iter().copied().fold(0.0, f64::max),
        median(gap.clone()),
        gap.iter().copied().fold(0.0, f64::max),
    );
    drop(agent);
    let _ = netscope_bpf::pin::cleanup(std::path::Path::new(&pin_root));
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&log);
}
