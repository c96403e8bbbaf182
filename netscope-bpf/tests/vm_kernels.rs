//! Older and other kernels, booted: Debian's stock Linux 5.10 (bullseye;
//! Amazon Linux 2's line), 6.1 (bookworm; Amazon Linux 2023, Bottlerocket)
//! and 6.12 (trixie; Amazon Linux 2023, Bottlerocket), each in qemu (TCG),
//! running the real `capture_local` example in auto mode on two pod links.
//! The VM (tests/vm/init, built by tests/vm/run.sh) reports on a serial
//! port; for each kernel this test asserts:
//!
//! - the BPF object passes that kernel's verifier with the most Service
//!   CIDRs (8), and the verifier's own count ("processed N insns (limit
//!   L)") is within L and within netscope's budget;
//! - the attach mode auto chose: on 5.10 and 6.1 the TCX attach gets
//!   EINVAL, auto mode says so once and falls back to legacy TC (netscope's
//!   cls_bpf filters are on both hooks); on 6.12 auto mode attaches TCX
//!   links (the kernel's fdinfo shows them) and touches no TC hook;
//! - every (src, dst, direction) is counted exactly against nftables'
//!   forward counters, summed over several drains taken during traffic;
//! - after SIGTERM nothing of netscope's is left on any hook;
//! - the `BPF_PROG_TEST_RUN` packet tests (tests/packets.rs, its real
//!   harness copied into the VM) pass on that kernel.
//!
//! The tests run one VM at a time (a lock), whatever `--test-threads` says.
//! Needs qemu-system-x86_64, busybox-static, cpio, xz, iproute2, nftables,
//! ethtool and a host whose apt sources name Debian's archive (`make
//! deps`), and a built `capture_local` (`cargo build -p netscope-examples
//! --example capture_local`) and packets harness (`cargo test -p
//! netscope-bpf --test packets --no-run`); `make test-vm` builds both. Fails
//! when any of that is missing. `NETSCOPE_SKIP_VM=1` skips them, loudly.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// Most instructions the verifier may process for one program, with the
/// most Service CIDRs (the worst case: the VM passes 8), on any kernel
/// here. Every kernel's own limit is 1,000,000 (`BPF_COMPLEXITY_LIMIT_INSNS`,
/// asserted separately from the verifier's log); this budget is a tenth of
/// it, so a change that multiplies the verifier's work fails here long
/// before a kernel refuses the program. Per-kernel figures: docs/kernels.md.
const VERIFIER_BUDGET: u64 = 100_000;

/// Traffic the VM sends (tests/vm/init).
const PING4_COUNT: u64 = 40;
const PING4_L3_BYTES: u64 = 20 + 8 + 1000;
const PING6_COUNT: u64 = 20;
const TCP_BYTES: u64 = 200_000;

const A4: &str = "10.91.1.2";
const B4: &str = "10.91.2.2";
const A6: &str = "fd91:1::2";
const B6: &str = "fd91:2::2";
const DEVS: [&str; 2] = ["enivma", "calivmb"];

/// `BPF_TCX_INGRESS` and `BPF_TCX_EGRESS` (enum bpf_attach_type).
const BPF_TCX_INGRESS: u64 = 46;
const BPF_TCX_EGRESS: u64 = 47;

/// One VM at a time: each takes both cores under TCG.
static ONE_VM: Mutex<()> = Mutex::new(());

/// What auto mode must choose on a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// No TCX (before 6.6): EINVAL, one warning, legacy TC everywhere.
    FallbackToLegacyTc,
    /// TCX (6.6+): links, no TC filter, no fallback.
    Tcx,
}

fn report_lines(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read the VM report {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("VM "))
        .map(|l| {
            let l = l.trim_end_matches('\r');
            match l.split_once(' ') {
                Some((t, rest)) => (t.to_string(), rest.to_string()),
                None => (l.to_string(), String::new()),
            }
        })
        .collect()
}

/// The most recently built cargo test harness named `<prefix><hash>`.
fn newest_test_binary(deps: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(deps)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix)
                && !name.contains('.')
                && e.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The word after `key` in a line of `key value` pairs (fdinfo, flattened).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == key)
        .and_then(|i| words.get(i + 1))
        .copied()
}

/// The verifier's statistics per program from capture_local's log
/// (NETSCOPE_VERIFIER_STATS=1): `prog 'NAME': -- BEGIN PROG LOAD LOG --`,
/// then `processed N insns (limit L) ...`. Returns name -> (N, L).
fn verifier_stats(log: &[&str]) -> HashMap<String, (u64, u64)> {
    let mut stats = HashMap::new();
    let mut current: Option<String> = None;
    for l in log {
        if let Some(i) = l.find("prog '") {
            if l.contains("-- BEGIN PROG LOAD LOG --") {
                let rest = &l[i + "prog '".len()..];
                current = rest.split_once('\'').map(|(name, _)| name.to_string());
                continue;
            }
        }
        if l.contains("-- END PROG LOAD LOG --") {
            current = None;
            continue;
        }
        let Some(name) = &current else { continue };
        if let Some(rest) = l.trim_start().strip_prefix("processed ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let n = words.first().and_then(|w| w.parse::<u64>().ok());
            let limit = words
                .iter()
                .position(|w| *w == "(limit")
                .and_then(|i| words.get(i + 1))
                .and_then(|w| w.trim_end_matches(')').parse::<u64>().ok());
            match (words.get(1), n, limit) {
                (Some(&"insns"), Some(n), Some(limit)) => {
                    stats.insert(name.clone(), (n, limit));
                }
                _ => panic!("unexpected verifier statistics line for {name}: {l:?}"),
            }
        }
    }
    stats
}

/// Boots Debian's `line` kernel, runs the checks in the module doc.
fn boot_and_check(line: &str, expect: Expect) {
    if std::env::var("NETSCOPE_SKIP_VM").as_deref() == Ok("1") {
        eprintln!(
            "SKIPPED: NETSCOPE_SKIP_VM=1: the Linux {line} VM test did not run; \
             nothing about {line} is proven by this run"
        );
        return;
    }
    // A failed VM test poisons the lock; the next kernel still runs.
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    // target/<profile>/deps/vm_kernels-<hash> -> target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile> directory")
        .to_path_buf();
    let bin = std::env::var_os("NETSCOPE_CAPTURE_LOCAL")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir.join("examples/capture_local"));
    assert!(
        bin.exists(),
        "no capture_local at {}: build it with `cargo build -p netscope-examples --example capture_local` \
         (or set NETSCOPE_SKIP_VM=1 on machines that cannot run the VM)",
        bin.display()
    );
    let packets = std::env::var_os("NETSCOPE_PACKETS_TEST")
        .map(PathBuf::from)
        .or_else(|| newest_test_binary(&profile_dir.join("deps"), "packets-"))
        .unwrap_or_else(|| {
            panic!(
                "no packets test binary in {}: build it with `cargo test -p netscope-bpf --test packets --no-run`",
                profile_dir.join("deps").display()
            )
        });
    let out = profile_dir.join("vm").join(line);
    let status = Command::new("bash")
        .arg(root.join("tests/vm/run.sh"))
        .arg(line)
        .arg(&bin)
        .arg(&packets)
        .env("VM_OUT", &out)
        .status()
        .expect("run tests/vm/run.sh");
    let results = out.join("results.log");
    assert!(
        status.success(),
        "the Linux {line} VM run failed ({status}); report: {}, console: {}",
        results.display(),
        out.join("console.log").display()
    );
    let lines = report_lines(&results);
    let all = |tag: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|(t, _)| t == tag)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    let one = |tag: &str| -> &str {
        let v = all(tag);
        assert_eq!(
            v.len(),
            1,
            "expected one {tag} line in the report, got {v:?}"
        );
        v[0]
    };

    // The kernel really is the line asked for.
    let kernel = one("KERNEL");
    assert!(
        kernel.starts_with(&format!("{line}.")),
        "the VM ran {kernel}, not {line}"
    );
    let version = one("PROC_VERSION");
    assert_eq!(one("EXIT"), "0", "capture_local exit status after SIGTERM");

    // Auto mode's choice.
    let log = all("LOG");
    let fallback: Vec<_> = log
        .iter()
        .filter(|l| l.contains("TCX attach refused") && l.contains("falling back to legacy TC"))
        .collect();
    let attached: Vec<_> = log
        .iter()
        .filter(|l| l.contains(" attached iface="))
        .collect();
    let detached: Vec<_> = log
        .iter()
        .filter(|l| l.contains(" detached iface="))
        .collect();
    assert_eq!(attached.len(), 4, "2 links x 2 hooks: {attached:#?}");
    assert_eq!(
        detached.len(),
        4,
        "every attachment detached on SIGTERM:\n{}",
        log.join("\n")
    );
    let mode = match expect {
        Expect::FallbackToLegacyTc => "tc",
        Expect::Tcx => "tcx",
    };
    for l in attached.iter().chain(&detached) {
        assert!(
            l.split_whitespace().any(|w| w == format!("mode={mode}")),
            "auto mode on {line} should use mode={mode}: {l}"
        );
    }
    let tc_attached = all("TC_ATTACHED");
    let links = all("LINK");
    let progs = all("PROG");
    assert_eq!(progs.len(), 2, "two loaded programs expected: {progs:#?}");
    let prog_ids: HashSet<&str> = progs
        .iter()
        .map(|p| field(p, "prog_id:").unwrap_or_else(|| panic!("no prog_id: {p}")))
        .collect();
    match expect {
        Expect::FallbackToLegacyTc => {
            assert_eq!(
                fallback.len(),
                1,
                "one fallback warning expected on {line}:\n{}",
                log.join("\n")
            );
            assert!(
                fallback[0].contains("os error 22"),
                "the TCX attach should fail with EINVAL on {line}: {}",
                fallback[0]
            );
            assert!(links.is_empty(), "no BPF links on {line}: {links:#?}");
            // netscope's cls_bpf filters on both hooks of both links.
            for dev in DEVS {
                for dir in ["ingress", "egress"] {
                    let prefix = format!("{dev} {dir} ");
                    assert!(
                        tc_attached.iter().any(|l| l.starts_with(&prefix)
                            && l.contains("netscope_")
                            && l.contains("handle 0x4e53")
                            && l.contains("direct-action")),
                        "no netscope filter on {dev} {dir} while attached: {tc_attached:#?}"
                    );
                }
            }
        }
        Expect::Tcx => {
            assert!(
                fallback.is_empty() && !log.iter().any(|l| l.contains("TCX attach refused")),
                "auto mode fell back on {line}:\n{}",
                log.join("\n")
            );
            assert!(
                !tc_attached
                    .iter()
                    .any(|l| l.contains("netscope_") || l.contains("0x4e53")),
                "TC filters on {line} with TCX: {tc_attached:#?}"
            );
            // The kernel's view: one TCX link per hook, running one of the
            // two programs.
            let mut hooks = HashSet::new();
            for l in &links {
                assert_eq!(field(l, "link_type:"), Some("tcx"), "not a TCX link: {l}");
                let prog = field(l, "prog_id:").unwrap_or_else(|| panic!("no prog_id: {l}"));
                assert!(prog_ids.contains(prog), "link runs another program: {l}");
                let ifindex = field(l, "ifindex:").unwrap_or_else(|| panic!("no ifindex: {l}"));
                let at: u64 = field(l, "attach_type:")
                    .and_then(|w| w.parse().ok())
                    .unwrap_or_else(|| panic!("no attach_type: {l}"));
                hooks.insert((ifindex.to_string(), at, prog.to_string()));
            }
            let mut want = HashSet::new();
            for dev in DEVS {
                let ifindex = all("IFINDEX")
                    .iter()
                    .find_map(|l| l.strip_prefix(&format!("{dev} ")))
                    .unwrap_or_else(|| panic!("no ifindex of {dev}"))
                    .to_string();
                for at in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                    want.insert((ifindex.clone(), at));
                }
            }
            let got: HashSet<(String, u64)> =
                hooks.iter().map(|(i, a, _)| (i.clone(), *a)).collect();
            assert_eq!(
                (got, links.len()),
                (want, 4),
                "one TCX link per hook of each link: {links:#?}"
            );
            // Each program on one side: ingress runs one, egress the other.
            let by_hook = |at: u64| -> HashSet<&str> {
                hooks
                    .iter()
                    .filter(|(_, a, _)| *a == at)
                    .map(|(_, _, p)| p.as_str())
                    .collect()
            };
            let (ing, eg) = (by_hook(BPF_TCX_INGRESS), by_hook(BPF_TCX_EGRESS));
            assert!(
                ing.len() == 1 && eg.len() == 1 && ing != eg,
                "ingress and egress should run one program each: {links:#?}"
            );
            // TCX needs no clsact: auto mode created none.
            let qdiscs = all("QDISC_AFTER");
            assert!(
                !qdiscs.iter().any(|l| l.contains("clsact")),
                "a clsact qdisc on {line} with TCX: {qdiscs:#?}"
            );
        }
    }
    // Nothing of netscope's left on any hook after SIGTERM, nothing pinned.
    for dev in DEVS {
        for dir in ["ingress", "egress"] {
            let prefix = format!("{dev} {dir} ");
            assert_eq!(
                all("TC_AFTER_COUNT")
                    .iter()
                    .find(|l| l.starts_with(&prefix))
                    .copied(),
                Some(format!("{prefix}0").as_str()),
                "filters left on {dev} {dir} after SIGTERM: {:#?}",
                all("TC_AFTER")
            );
        }
    }
    assert_eq!(one("BPFFS_AFTER"), "0", "objects pinned in /sys/fs/bpf");

    // The verifier accepted both programs; its count on this kernel, from
    // its own statistics, against its own limit and the budget. Where
    // fdinfo has verified_insns (5.16+), it is the same number.
    let stats = verifier_stats(&log);
    let mut insns = Vec::new();
    for name in ["netscope_from_pod", "netscope_to_pod"] {
        let (n, limit) = *stats
            .get(name)
            .unwrap_or_else(|| panic!("no verifier statistics for {name}:\n{}", log.join("\n")));
        assert_eq!(limit, 1_000_000, "the verifier's limit on {line}");
        assert!(
            n > 0 && n <= limit && n <= VERIFIER_BUDGET,
            "verifier processed {n} instructions for {name} on {line}: limit {limit}, budget {VERIFIER_BUDGET}"
        );
        insns.push(n);
    }
    for p in &progs {
        assert_eq!(
            field(p, "prog_type:"),
            Some("3"),
            "not a sched_cls program: {p}"
        );
        if let Some(v) = field(p, "verified_insns:") {
            let v: u64 = v.parse().expect("verified_insns is a number");
            assert!(
                insns.contains(&v),
                "fdinfo verified_insns {v} is not the verifier's count {insns:?}: {p}"
            );
        }
    }
    let fdinfo_insns = progs.iter().any(|p| p.contains("verified_insns:"));

    // The traffic really happened.
    let pings = all("PING");
    for (fam, n) in [("v4", PING4_COUNT), ("v6", PING6_COUNT)] {
        let l = pings
            .iter()
            .find(|l| l.starts_with(fam))
            .unwrap_or_else(|| panic!("no {fam} ping result: {pings:?}"));
        assert!(
            l.contains("rc=0")
                && l.contains(&format!("{n} packets transmitted, {n} packets received")),
            "{fam} ping lost packets: {l}"
        );
    }
    assert_eq!(
        one("TCP"),
        format!("rc=0 received={TCP_BYTES}"),
        "TCP transfer"
    );

    // Drains: flows and per-drain summaries from capture_local's stdout.
    let mut totals: HashMap<(String, String, String), (u64, u64)> = HashMap::new();
    let mut per_drain: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut summaries = Vec::new();
    let mut pending = (0u64, 0u64);
    for l in all("OUT") {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}"));
        if let Some(n) = v["drain"].as_u64() {
            let (b, p) = (v["bytes"].as_u64().unwrap(), v["packets"].as_u64().unwrap());
            assert_eq!(
                pending,
                (b, p),
                "drain {n}: flow lines do not add up to the summary"
            );
            assert_eq!(
                v["overflow_bytes"].as_u64(),
                Some(0),
                "overflow in drain {n}"
            );
            per_drain.insert(n, (b, p));
            summaries.push(n);
            pending = (0, 0);
        } else {
            let key = (
                v["src"].as_str().unwrap().to_string(),
                v["dst"].as_str().unwrap().to_string(),
                v["direction"].as_str().unwrap().to_string(),
            );
            let (b, p) = (v["bytes"].as_u64().unwrap(), v["packets"].as_u64().unwrap());
            let t = totals.entry(key).or_default();
            t.0 += b;
            t.1 += p;
            pending.0 += b;
            pending.1 += p;
        }
    }
    assert_eq!(pending, (0, 0), "flow lines after the last drain summary");
    assert!(
        summaries.windows(2).all(|w| w[1] == w[0] + 1) && summaries.first() == Some(&1),
        "drains should be numbered 1, 2, ...: {summaries:?}"
    );
    let busy = per_drain.values().filter(|(b, _)| *b > 0).count();
    assert!(
        busy >= 4,
        "traffic should spread over several drains, only {busy} of {} carried bytes",
        summaries.len()
    );

    // Exactness against nftables' forward counters in the VM.
    let nft: Value = serde_json::from_str(one("NFT")).expect("nft -j output");
    let mut reference = HashMap::new();
    for item in nft["nftables"].as_array().expect("nftables array") {
        if let Some(c) = item.get("counter") {
            reference.insert(
                c["name"].as_str().unwrap().to_string(),
                (c["bytes"].as_u64().unwrap(), c["packets"].as_u64().unwrap()),
            );
        }
    }
    for (name, src, dst) in [
        ("a4b4", A4, B4),
        ("b4a4", B4, A4),
        ("a6b6", A6, B6),
        ("b6a6", B6, A6),
    ] {
        let want = *reference
            .get(name)
            .unwrap_or_else(|| panic!("no nftables counter {name}: {nft}"));
        assert!(want.1 > 0, "nftables counted nothing for {src} -> {dst}");
        for dir in ["from_pod", "to_pod"] {
            let got = totals
                .get(&(src.to_string(), dst.to_string(), dir.to_string()))
                .copied()
                .unwrap_or_default();
            assert_eq!(
                got, want,
                "{src} -> {dst} {dir} on {line}: netscope (bytes, packets) vs nftables"
            );
        }
    }
    // The IPv4 pair carried only the pings: the exact arithmetic holds too.
    let ping4 = (PING4_COUNT * PING4_L3_BYTES, PING4_COUNT);
    assert_eq!(reference["a4b4"], ping4, "echo requests a -> b");
    assert_eq!(reference["b4a4"], ping4, "echo replies b -> a");
    assert!(
        reference["b6a6"].0 > TCP_BYTES,
        "the TCP transfer b -> a should be in the IPv6 counters: {:?}",
        reference["b6a6"]
    );

    // The BPF_PROG_TEST_RUN packet tests, run by their own harness in the VM.
    let packets_out = all("PACKETS");
    let summary = packets_out
        .iter()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or_else(|| panic!("no packet test summary:\n{}", packets_out.join("\n")));
    assert!(
        one("PACKETS_EXIT") == "0"
            && summary.starts_with("test result: ok.")
            && summary.contains(" 0 failed"),
        "packet tests failed on {line}:\n{}",
        packets_out.join("\n")
    );
    let passed = packets_out.iter().filter(|l| l.ends_with("... ok")).count();
    assert!(
        passed >= 10,
        "too few packet tests ran on {line}: {summary}"
    );

    let boot = one("HOST_BOOT_SECONDS");
    let init = one("UPTIME_AT_INIT");
    eprintln!(
        "vm {line}: {version}\n  auto mode: {mode}; verifier processed {insns:?} insns \
         (from_pod, to_pod; limit 1000000, budget {VERIFIER_BUDGET}; fdinfo verified_insns: {}); \
         {} drains ({busy} with traffic), exact vs nftables; {passed} packet tests passed; \
         /init after {init} s of guest uptime, VM wall time {boot} s",
        if fdinfo_insns { "equal" } else { "absent" },
        summaries.len()
    );
}

#[test]
fn vm_kernel_5_10_auto_mode_falls_back_to_legacy_tc_and_counts_exactly() {
    boot_and_check("5.10", Expect::FallbackToLegacyTc);
}

#[test]
fn vm_kernel_6_1_auto_mode_falls_back_to_legacy_tc_and_counts_exactly() {
    boot_and_check("6.1", Expect::FallbackToLegacyTc);
}

#[test]
fn vm_kernel_6_12_auto_mode_uses_tcx_and_counts_exactly() {
    boot_and_check("6.12", Expect::Tcx);
}
