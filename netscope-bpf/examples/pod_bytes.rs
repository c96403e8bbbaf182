//! Exact bytes per pod link, every second, from a program of your own:
//! `sudo cargo run -p netscope-bpf --example pod_bytes -- 10` (seconds).
use std::collections::BTreeMap;
use std::time::Duration;

use netscope_bpf::capture::CaptureBuilder;
use netscope_bpf::netscope::Direction;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: usize = std::env::args().nth(1).map_or(Ok(10), |s| s.parse())?;
    // Pod links: veth/netkit named like the common CNIs name them.
    let mut capture = CaptureBuilder::new()
        .interface_prefixes(["veth", "lxc", "cali", "eni"])
        .start()?;
    // (pod address) -> (bytes sent, bytes received), L3, exact.
    let mut pods: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for _ in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        for s in capture.drain()?.samples {
            // from_pod: sent by the pod behind the link; to_pod: received.
            let (pod, sent) = match s.key.direction {
                Direction::FromPod => (s.key.src, true),
                Direction::ToPod => (s.key.dst, false),
            };
            let e = pods.entry(pod.to_string()).or_default();
            *if sent { &mut e.0 } else { &mut e.1 } += s.counters.bytes;
        }
        println!("{} links: {pods:?}", capture.attached().len());
    }
    capture.stop()?; // detaches from every link
    Ok(())
}
