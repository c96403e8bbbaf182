//! Counts exact L3 bytes per (source, destination) on the pod links whose
//! name starts with the first argument, in the network namespace it runs
//! in. Prints `ready` once attached, drains every 200 ms until a line
//! arrives on stdin, then stops (detaching) and prints one
//! `flow <src> <dst> <bytes> <packets>` line per pair and `overflow <bytes>`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netscope_bpf::capture::CaptureBuilder;
use netscope_bpf::netscope::Drain;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prefix = std::env::args()
        .nth(1)
        .ok_or("usage: netscope-embed-check PREFIX")?;
    let mut capture = CaptureBuilder::new().interface_prefixes([prefix]).start()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while capture.attached().is_empty() {
        if Instant::now() > deadline {
            return Err(format!("nothing attached: {:?}", capture.attach_errors()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("ready {:?}", capture.effective_mode());

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().lock().lines().next();
        let _ = tx.send(());
    });
    let mut flows: BTreeMap<(IpAddr, IpAddr), (u64, u64)> = BTreeMap::new();
    let mut overflow = 0;
    let mut add = |d: Drain| {
        overflow += d.overflow.bytes;
        for s in d.samples {
            let e = flows.entry((s.key.src, s.key.dst)).or_default();
            e.0 += s.counters.bytes;
            e.1 += s.counters.packets;
        }
    };
    while rx.recv_timeout(Duration::from_millis(200)).is_err() {
        add(capture.drain()?);
    }
    add(capture.stop()?);
    for ((src, dst), (bytes, packets)) in &flows {
        println!("flow {src} {dst} {bytes} {packets}");
    }
    println!("overflow {overflow}");
    Ok(())
}
