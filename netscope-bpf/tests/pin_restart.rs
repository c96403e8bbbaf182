//! Issue 15: kernel state that outlives the process. The maps are pinned in
//! a bpffs directory of this test's own (`/sys/fs/bpf/netscope-test-pin-*`),
//! a capture is dropped as a killed agent's would be, and a new one adopts
//! the maps: a stage left uncommitted comes back with its epoch and every
//! byte, nothing twice. Hostile pins are refused with the path named.
//! `--cleanup`'s removal is idempotent. Needs root; removes what it makes.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use netscope::{Collector, Counters, Direction, FlowKey};
use netscope_bpf::pin::{self, PinDir};
use netscope_bpf::testing::fill_active_table;
use netscope_bpf::{BpfCollector, Capture, CaptureConfig, LoadError, Pinned};

/// A pin root of this test's own, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/netscope-test-pin-{name}-{}",
            std::process::id()
        ));
        let _ = pin::cleanup(&p);
        Root(p)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = pin::cleanup(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys(n: u32) -> Vec<FlowKey> {
    (0..n)
        .map(|i| {
            FlowKey::new(
                std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
                "10.200.0.1".parse().unwrap(),
                Direction::FromPod,
            )
        })
        .collect()
}

fn config(max_flows: u32) -> CaptureConfig {
    CaptureConfig {
        max_flows,
        ..CaptureConfig::default()
    }
}

#[test]
fn a_killed_agents_stage_is_adopted_exactly_once() {
    let root = Root::new("adopt");
    let dir = PinDir::new(&root.0);
    let (cap, how) = Capture::load_pinned(&config(1024), &dir).expect("load pinned (needs root)");
    assert_eq!(how, Pinned::Created);
    let cap = Arc::new(cap);
    fill_active_table(&cap, &keys(100), Counters::new(1000, 1)).expect("fill");
    let mut c = BpfCollector::new(cap.clone());
    let staged = c.stage().expect("stage");
    assert_eq!(staged.drain.total(), Counters::new(100_000, 100));
    assert!(staged.epoch > 0 && staged.scope > 0, "{staged:?}");
    // Counted after the flip, on the other side, while "no agent runs".
    fill_active_table(&cap, &keys(10), Counters::new(7, 1)).expect("fill");
    // The agent dies: nothing committed, nothing detached.
    drop(c);
    drop(cap);

    let (cap2, how) = Capture::load_pinned(&config(1024), &dir).expect("adopt");
    assert_eq!(how, Pinned::Adopted);
    let mut c2 = BpfCollector::new(Arc::new(cap2));
    let again = c2.stage().expect("stage after adoption");
    assert_eq!(
        (again.epoch, again.scope),
        (staged.epoch, staged.scope),
        "the uncommitted stage comes back under its epoch"
    );
    assert_eq!(again.drain.total(), Counters::new(100_000, 100));
    c2.commit(again.epoch).expect("commit");
    // Committing twice does nothing.
    c2.commit(again.epoch).expect("commit again");
    let next = c2.stage().expect("next stage");
    assert_eq!(next.epoch, again.epoch + 1);
    assert_eq!(
        next.drain.total(),
        Counters::new(70, 10),
        "what was counted while no agent ran, once"
    );
    c2.commit(next.epoch).expect("commit");
    assert_eq!(c2.drain().expect("drain").total(), Counters::default());
    drop(c2);

    // --cleanup: everything under the root goes; a second run finds nothing.
    let done = pin::cleanup(&root.0).expect("cleanup");
    assert!(done.maps.len() >= 7, "{done:?}");
    assert!(!root.0.exists(), "the root is gone");
    assert_eq!(
        pin::cleanup(&root.0).expect("cleanup again"),
        pin::Cleanup::default()
    );
}

#[test]
fn hostile_pins_are_refused_with_their_path() {
    let root = Root::new("hostile");
    let dir = PinDir::new(&root.0);
    let other = PinDir::new(root.0.join("other"));
    let (cap, _) = Capture::load_pinned(&config(64), &other).expect("load pinned (needs root)");
    drop(cap);
    // A map with the right name and the wrong layout: another map pinned as meta.
    dir.prepare().expect("prepare");
    let flows = other.open_map("flow_slots").expect("open flow_slots");
    dir.pin_map(pin::META, flows.as_fd())
        .expect("pin a wrong map as meta");
    let meta_path = dir.map_path(pin::META);
    let e = Capture::load_pinned(&config(64), &dir).expect_err("a foreign meta is refused");
    let msg = chain(&e);
    assert!(
        msg.contains(&meta_path.display().to_string()) && msg.contains("not netscope's meta map"),
        "{msg}"
    );
    assert!(matches!(e, LoadError::Pin(_)), "{e:?}");
    std::fs::remove_file(&meta_path).expect("rm");

    // A meta of another key size: refused, never adopted.
    let meta = pin::Meta::current(dir.layout(), 64, 1);
    dir.write_meta(&pin::Meta {
        key_size: 41,
        ..meta
    })
    .expect("write a wrong meta");
    let msg = chain(&Capture::load_pinned(&config(64), &dir).expect_err("wrong layout refused"));
    assert!(
        msg.contains("differs from this agent's") && msg.contains(&meta_path.display().to_string()),
        "{msg}"
    );
    std::fs::remove_file(&meta_path).expect("rm");

    // Something that is not netscope's in its layout directory.
    let junk = dir.dir().join("junk");
    std::fs::create_dir(&junk).expect("mkdir in bpffs");
    let msg = chain(&Capture::load_pinned(&config(64), &dir).expect_err("unknown pin refused"));
    assert!(msg.contains(&junk.display().to_string()), "{msg}");
    std::fs::remove_dir(&junk).expect("rmdir");

    // Not bpffs at all.
    let tmp = std::env::temp_dir().join(format!("netscope-test-pin-notbpf-{}", std::process::id()));
    let msg = chain(&Capture::load_pinned(&config(64), &PinDir::new(&tmp)).expect_err("not bpffs"));
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(msg.contains("is not on a bpffs mount"), "{msg}");
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s += &format!(": {x}");
        src = x.source();
    }
    s
}

/// The two-phase drain of 100,000 flows, stage and commit timed apart
/// (printed, not asserted: the criterion bench is the measurement of
/// record), and exact.
#[test]
fn two_phase_drain_of_100k_flows() {
    let cap = Arc::new(Capture::load(&config(131_072)).expect("load"));
    let k = keys(100_000);
    let mut c = BpfCollector::new(cap.clone());
    let (mut stage_ms, mut commit_ms) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        fill_active_table(&cap, &k, Counters::new(1500, 1)).expect("fill");
        let t = Instant::now();
        let s = c.stage().expect("stage");
        stage_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(s.drain.samples.len(), 100_000);
        assert_eq!(s.drain.total(), Counters::new(150_000_000, 100_000));
        let t = Instant::now();
        c.commit(s.epoch).expect("commit");
        commit_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stage_ms.sort_by(f64::total_cmp);
    commit_ms.sort_by(f64::total_cmp);
    println!(
        "two-phase drain of 100k flows (this build's profile): stage median {:.1} ms, commit median {:.1} ms",
        stage_ms[2], commit_ms[2]
    );
    assert_eq!(c.drain().expect("drain").total(), Counters::default());
}
