//! The embedding, run for real: two namespaces of our own joined by a veth,
//! the consumer binary attached to the veth end in the first, ICMP both
//! ways, and its per-pair bytes and packets compared, exactly, with
//! nftables counters in that namespace (output and input hooks, L3 bytes).
//! Needs root; wrap in `flock /tmp/netscope-netns.lock`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

const A_ADDR: &str = "10.251.0.1";
const B_ADDR: &str = "10.251.0.2";

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Deletes our namespaces and kills our child, also when the test panics.
struct Cleanup {
    namespaces: Vec<String>,
    child: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// (packets, bytes) of the counter in `chain` of table `ip embed`.
fn nft_counter(ns: &str, chain: &str) -> (u64, u64) {
    let table = run(&[
        "ip", "netns", "exec", ns, "nft", "list", "table", "ip", "embed",
    ]);
    let section = table
        .split("chain ")
        .find(|s| s.starts_with(chain))
        .unwrap_or_else(|| panic!("no chain {chain} in {table}"));
    let words: Vec<&str> = section.split_whitespace().collect();
    let at = |name: &str| -> u64 {
        let i = words
            .iter()
            .position(|w| *w == name)
            .unwrap_or_else(|| panic!("no {name} in {section}"));
        words[i + 1]
            .parse()
            .unwrap_or_else(|e| panic!("{name} in {section}: {e}"))
    };
    (at("packets"), at("bytes"))
}

#[test]
fn counts_real_traffic_exactly() {
    let id = std::process::id();
    let (a, b) = (
        format!("netscope-test-embed-{id}-a"),
        format!("netscope-test-embed-{id}-b"),
    );
    let (va, vb) = (format!("nse{id}a"), format!("nse{id}b"));
    let mut cleanup = Cleanup {
        namespaces: Vec::new(),
        child: None,
    };
    for ns in [&a, &b] {
        run(&["ip", "netns", "add", ns]);
        cleanup.namespaces.push(ns.clone());
        // No IPv6 (router solicitations would be counted by one side only).
        for conf in ["all", "default"] {
            let key = format!("net.ipv6.conf.{conf}.disable_ipv6=1");
            run(&["ip", "netns", "exec", ns, "sysctl", "-qw", &key]);
        }
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    run(&[
        "ip", "-n", &a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &b,
    ]);
    run(&[
        "ip",
        "-n",
        &a,
        "addr",
        "add",
        &format!("{A_ADDR}/30"),
        "dev",
        &va,
    ]);
    run(&[
        "ip",
        "-n",
        &b,
        "addr",
        "add",
        &format!("{B_ADDR}/30"),
        "dev",
        &vb,
    ]);
    run(&["ip", "-n", &a, "link", "set", &va, "up"]);
    run(&["ip", "-n", &b, "link", "set", &vb, "up"]);
    let rules = format!(
        "table ip embed {{\n\
         chain out {{ type filter hook output priority 0; ip daddr {B_ADDR} counter; }}\n\
         chain in {{ type filter hook input priority 0; ip saddr {B_ADDR} counter; }}\n\
         }}\n"
    );
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &a, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawning nft");
    nft.stdin
        .take()
        .expect("nft stdin")
        .write_all(rules.as_bytes())
        .expect("writing rules");
    assert!(nft.wait().expect("nft").success(), "nft refused {rules}");

    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            env!("CARGO_BIN_EXE_netscope-embed-check"),
            "nse",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the consumer");
    let child = cleanup.child.insert(child);
    let mut out = BufReader::new(child.stdout.take().expect("consumer stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("reading the consumer");
    assert!(
        line.starts_with("ready"),
        "consumer did not attach: {line:?}"
    );
    println!("consumer: {}", line.trim());

    // Bounded traffic: A pings B with two sizes, B pings A once.
    run(&[
        "ip", "netns", "exec", &a, "ping", "-q", "-c", "30", "-i", "0.01", "-s", "1000", B_ADDR,
    ]);
    run(&[
        "ip", "netns", "exec", &a, "ping", "-q", "-c", "20", "-i", "0.01", "-s", "56", B_ADDR,
    ]);
    run(&[
        "ip", "netns", "exec", &b, "ping", "-q", "-c", "25", "-i", "0.01", "-s", "333", A_ADDR,
    ]);

    child
        .stdin
        .take()
        .expect("consumer stdin")
        .write_all(b"stop\n")
        .expect("stopping the consumer");
    let mut flows = Vec::new();
    for l in out.lines() {
        let l = l.expect("reading the consumer");
        println!("consumer: {l}");
        flows.push(l);
    }
    let status = child.wait().expect("waiting for the consumer");
    assert!(status.success(), "consumer failed: {status}");
    let pair = |src: &str, dst: &str| -> (u64, u64) {
        let prefix = format!("flow {src} {dst} ");
        let l = flows
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {src} -> {dst} in {flows:?}"));
        let v: Vec<u64> = l[prefix.len()..]
            .split(' ')
            .map(|x| x.parse().expect("number"))
            .collect();
        (v[1], v[0])
    };
    assert!(
        flows.iter().any(|l| l == "overflow 0"),
        "overflow: {flows:?}"
    );
    let (sent, received) = (nft_counter(&a, "out"), nft_counter(&a, "in"));
    println!("nftables: A->B {sent:?}, B->A {received:?} (packets, bytes)");
    assert_eq!(sent.0, 30 + 20 + 25, "nftables saw other traffic A->B");
    assert_eq!(
        pair(A_ADDR, B_ADDR),
        sent,
        "A->B (packets, bytes) vs nftables output"
    );
    assert_eq!(
        pair(B_ADDR, A_ADDR),
        received,
        "B->A (packets, bytes) vs nftables input"
    );
    // Only the two pairs: nothing else crossed the link as IP.
    assert_eq!(
        flows.iter().filter(|l| l.starts_with("flow ")).count(),
        2,
        "{flows:?}"
    );
}
