//! Issue 20's upgrade path: an agent whose pinned layout is not 1 finds
//! `<pin root>/v1/`, left by a layout-1 agent, and drains it with
//! `V1Collector`, which needs no layout-1 program. The state is made by
//! `create_v1_dir` (layout 1's maps, shapes and names, without its program;
//! checked against the layout-1 program, map by map and with real frames,
//! before that program was replaced: commit 02f6f43).
//!
//! Needs root. Pins live under `/sys/fs/bpf/netscope-test-legacy-<pid>/`,
//! removed on drop, also when a test fails. Run with
//! `flock /tmp/netscope-netns.lock cargo test -p netscope-bpf --features testing --test upgrade_v1`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use netscope::{Collector, Counters, Direction, FlowKey, FlowSample, L4};
use netscope_bpf::legacy_v1::{
    create_v1_dir, v1_epoch, v1_put_cache, v1_put_flow, v1_put_flows, v1_replace_pin,
    v1_set_active, v1_set_epoch, v1_set_lost, v1_side_contents, V1Collector, V1_KEY_SIZE,
};
use netscope_bpf::maps::encode_key;
use netscope_bpf::pin::{self, PinError};

/// A pin root of this test's own, removed on drop (also after a panic).
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        let p = parent().join(name);
        let _ = pin::cleanup(&p);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating the pin root (root? bpffs mounted?)");
        Root(p)
    }
}

fn parent() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/netscope-test-legacy-{}",
        std::process::id()
    ))
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = pin::cleanup(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
        // The last test of this process takes the parent along.
        let _ = std::fs::remove_dir(parent());
    }
}

fn ncpus() -> usize {
    netscope_bpf::testing::possible_cpus()
}

fn flow(src: &str, dst: &str, direction: Direction) -> FlowKey {
    FlowKey::new(src.parse().unwrap(), dst.parse().unwrap(), direction)
}

/// Per-CPU counters with `c` on `cpu` (the last CPU when there are fewer).
fn on_cpu(cpu: usize, c: Counters) -> Vec<Counters> {
    let mut v = vec![Counters::default(); ncpus()];
    v[cpu.min(ncpus() - 1)] = c;
    v
}

/// Per-CPU cache entries with `e` on `cpu` (the last CPU when there are fewer).
fn cache_on(cpu: usize, key: &FlowKey, c: Counters) -> Vec<Option<([u8; V1_KEY_SIZE], Counters)>> {
    let mut v = vec![None; ncpus()];
    v[cpu.min(ncpus() - 1)] = Some((encode_key(key), c));
    v
}

/// Samples by key, summed.
fn by_key(samples: &[FlowSample]) -> HashMap<FlowKey, Counters> {
    let mut m = HashMap::new();
    for s in samples {
        *m.entry(s.key).or_default() += s.counters;
    }
    m
}

/// What each side holds: flows in table and cache, and the overflow slot.
struct Side {
    flows: HashMap<FlowKey, Counters>,
    overflow: Counters,
}

/// Fills side 0 and side 1 of `dir`: table entries spread over CPUs, cache
/// entries of flows in the table and of flows only in the cache, the
/// overflow slot. Returns what each side holds.
fn fill_both_sides(dir: &Path) -> [Side; 2] {
    let k1 = flow("10.0.0.1", "10.1.0.1", Direction::FromPod);
    let k2 = flow("fd00::1", "fd00::2", Direction::ToPod);
    let k3 = flow("10.0.0.3", "10.1.0.3", Direction::ToPod);
    let svc = FlowKey {
        l4: Some(L4 {
            proto: 6,
            src_port: 40_000,
            dst_port: 80,
        }),
        ..flow("10.0.0.4", "10.96.0.10", Direction::FromPod)
    };
    let k5 = flow("10.0.0.5", "10.1.0.5", Direction::FromPod);

    // Side 0: k1 on two CPUs and in CPU 0's cache; k2 in the table;
    // k3 only in a cache.
    v1_put_flow(
        dir,
        0,
        &encode_key(&k1),
        &[Counters::new(1_000, 10), Counters::new(2_000, 20)][..ncpus().min(2)],
    )
    .expect("k1");
    v1_put_flow(
        dir,
        0,
        &encode_key(&k2),
        &on_cpu(1, Counters::new(1_500, 3)),
    )
    .expect("k2");
    let mut cache0 = cache_on(0, &k1, Counters::new(60, 1));
    if ncpus() > 1 {
        cache0[1] = Some((encode_key(&k3), Counters::new(70, 2)));
    }
    v1_put_cache(dir, 0, &cache0).expect("cache 0");
    let mut side0 = HashMap::new();
    let k1_total = if ncpus() > 1 { 3_060 } else { 1_060 };
    let k1_packets = if ncpus() > 1 { 31 } else { 11 };
    side0.insert(k1, Counters::new(k1_total, k1_packets));
    side0.insert(k2, Counters::new(1_500, 3));
    if ncpus() > 1 {
        side0.insert(k3, Counters::new(70, 2));
    }

    // Side 1: the Service-keyed flow, the overflow slot, and k5 in the
    // cache of two CPUs (the same flow on both: merged).
    v1_put_flow(
        dir,
        1,
        &encode_key(&svc),
        &on_cpu(0, Counters::new(9_000, 6)),
    )
    .expect("svc");
    v1_put_flow(
        dir,
        1,
        &[0u8; V1_KEY_SIZE],
        &on_cpu(1, Counters::new(333, 4)),
    )
    .expect("overflow");
    let mut cache1 = cache_on(0, &k5, Counters::new(40, 1));
    if ncpus() > 1 {
        cache1[1] = Some((encode_key(&k5), Counters::new(41, 1)));
    }
    v1_put_cache(dir, 1, &cache1).expect("cache 1");
    let mut side1 = HashMap::new();
    side1.insert(svc, Counters::new(9_000, 6));
    side1.insert(
        k5,
        if ncpus() > 1 {
            Counters::new(81, 2)
        } else {
            Counters::new(40, 1)
        },
    );
    [
        Side {
            flows: side0,
            overflow: Counters::default(),
        },
        Side {
            flows: side1,
            overflow: Counters::new(333, 4),
        },
    ]
}

fn assert_side(drain: &netscope::Drain, want: &Side, what: &str) {
    assert_eq!(by_key(&drain.samples), want.flows, "{what}: flows");
    assert_eq!(
        drain.samples.len(),
        want.flows.len(),
        "{what}: one sample a flow"
    );
    assert_eq!(drain.overflow, want.overflow, "{what}: overflow");
}

/// Both tables hold only the (empty) overflow slot, both caches are empty.
fn assert_empty(dir: &Path) {
    for side in 0..2 {
        let (keys, families) = v1_side_contents(dir, side).expect("contents");
        assert_eq!(
            keys,
            vec![[0u8; V1_KEY_SIZE]],
            "side {side}: only the overflow slot"
        );
        assert!(
            families.iter().all(|&f| f == 0),
            "side {side} cache: {families:?}"
        );
    }
}

#[test]
fn an_old_agents_stage_and_both_sides_are_drained_exactly_once() {
    let root = Root::new("rounds");
    let dir = create_v1_dir(&root.0, 64).expect("create the v1 dir (needs root)");
    let sides = fill_both_sides(&dir);
    // The old agent staged side 1 under epoch 7 (it flipped to side 0) and
    // was replaced before it committed.
    v1_set_active(&dir, 0).expect("active");
    v1_set_epoch(&dir, 7, Some(1)).expect("epoch");
    // Lost counts the old agent had already reported.
    v1_set_lost(&dir, 500, 5).expect("lost");

    let mut c = V1Collector::open(&dir).expect("open the v1 dir");
    assert_eq!(c.capacity(), 64);
    // Lost after the adoption: the new agent's to report.
    v1_set_lost(&dir, 520, 6).expect("lost");

    let first = c.stage().expect("stage 1");
    assert_eq!(first.epoch, 7, "the old agent's stage, under its epoch");
    assert!(first.scope > 0, "{first:?}");
    let mut want1 = Side {
        flows: sides[1].flows.clone(),
        overflow: sides[1].overflow,
    };
    want1.overflow += Counters::new(20, 1);
    assert_side(&first.drain, &want1, "round 1 (side 1)");
    c.commit(first.epoch).expect("commit 1");
    assert_eq!(v1_epoch(&dir).expect("epoch"), (7, None));

    let second = c.stage().expect("stage 2");
    assert_eq!((second.epoch, second.scope), (8, first.scope));
    assert_side(&second.drain, &sides[0], "round 2 (side 0)");
    c.commit(second.epoch).expect("commit 2");

    let third = c.drain().expect("round 3");
    assert_eq!(third.total(), Counters::default(), "{third:?}");
    assert!(third.samples.is_empty());
    assert_eq!(v1_epoch(&dir).expect("epoch"), (9, None));
    assert_empty(&dir);

    // The caller then removes the directory.
    drop(c);
    let gone = pin::remove_layout(&dir).expect("remove the v1 layout");
    assert_eq!(gone.maps.len(), 7, "{gone:?}");
    assert!(!dir.exists(), "{} is gone", dir.display());
}

#[test]
fn the_upgrade_collector_drains_v1_then_counts_only_the_new_maps() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let root = Root::new("upgrade");
    let dir = create_v1_dir(&root.0, 64).expect("create the v1 dir (needs root)");
    let sides = fill_both_sides(&dir);
    let new = Arc::new(
        netscope_bpf::Capture::load(&netscope_bpf::CaptureConfig::default())
            .expect("load this build's program"),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let old: Box<dyn Collector> = Box::new(V1Collector::open(&dir).expect("open the v1 dir"));
    let mut c = netscope_bpf::UpgradeCollector::new(new, vec![(old, dir.clone())], ready.clone());
    // Until every link runs the new program, only the new maps are drained.
    assert!(c.drain().expect("drain").samples.is_empty());
    assert!(dir.exists());
    ready.store(true, std::sync::atomic::Ordering::Release);
    let mut got = HashMap::new();
    let mut overflow = Counters::default();
    for _ in 0..2 {
        let d = c.drain().expect("drain the v1 maps");
        for (k, v) in by_key(&d.samples) {
            *got.entry(k).or_insert_with(Counters::default) += v;
        }
        overflow += d.overflow;
    }
    let mut want: HashMap<FlowKey, Counters> = HashMap::new();
    let mut want_overflow = Counters::default();
    for side in &sides {
        for (k, v) in &side.flows {
            *want.entry(*k).or_default() += *v;
        }
        want_overflow += side.overflow;
    }
    assert_eq!(got, want, "every v1 flow once");
    assert_eq!(overflow, want_overflow);
    assert!(
        !dir.exists(),
        "the v1 directory is removed after both sides"
    );
    // From then on: the new maps only.
    let d = c.drain().expect("drain");
    assert!(d.samples.is_empty() && d.overflow.is_zero(), "{d:?}");
}

#[test]
fn a_crash_between_stage_and_commit_restages_the_same_counts() {
    let root = Root::new("crash");
    let dir = create_v1_dir(&root.0, 16).expect("create the v1 dir (needs root)");
    let sides = fill_both_sides(&dir);

    let mut c = V1Collector::open(&dir).expect("open");
    let staged = c.stage().expect("stage");
    assert_eq!(staged.epoch, 1);
    assert_side(&staged.drain, &sides[0], "side 0 (active when opened)");
    // The agent dies before its commit.
    drop(c);

    let mut c = V1Collector::open(&dir).expect("reopen");
    let again = c.stage().expect("stage after the crash");
    assert_eq!((again.epoch, again.scope), (staged.epoch, staged.scope));
    assert_eq!(by_key(&again.drain.samples), by_key(&staged.drain.samples));
    assert_eq!(again.drain.overflow, staged.drain.overflow);
    // A stale or repeated commit does nothing.
    c.commit(again.epoch - 1).expect("stale commit");
    c.commit(again.epoch).expect("commit");
    c.commit(again.epoch).expect("commit again");

    // Dies after the commit of side 1's stage this time: nothing again.
    let next = c.stage().expect("stage side 1");
    assert_eq!(next.epoch, 2);
    assert_side(&next.drain, &sides[1], "side 1");
    c.commit(next.epoch).expect("commit");
    drop(c);
    let mut c = V1Collector::open(&dir).expect("reopen");
    assert_eq!(c.drain().expect("drain").total(), Counters::default());
    assert_eq!(c.drain().expect("drain").total(), Counters::default());
    assert_empty(&dir);
}

#[test]
fn a_stage_of_the_active_side_still_drains_both_sides() {
    // No layout-1 agent leaves this (a stage flips away from the side it
    // stages), but the two rounds must cover both sides anyway.
    let root = Root::new("inconsistent");
    let dir = create_v1_dir(&root.0, 16).expect("create the v1 dir (needs root)");
    let sides = fill_both_sides(&dir);
    v1_set_active(&dir, 0).expect("active");
    v1_set_epoch(&dir, 3, Some(0)).expect("epoch");
    let mut c = V1Collector::open(&dir).expect("open");
    let first = c.stage().expect("stage 1");
    assert_eq!(first.epoch, 3);
    assert_side(&first.drain, &sides[0], "round 1 (the staged side 0)");
    c.commit(first.epoch).expect("commit");
    let second = c.drain().expect("round 2");
    assert_side(&second, &sides[1], "round 2 (side 1)");
    assert_eq!(c.drain().expect("round 3").total(), Counters::default());
    assert_empty(&dir);
}

#[test]
fn full_tables_drain_exactly_over_many_batches() {
    // 100,000 flows (a full table) on side 0 and 50,000 on side 1: the
    // reads and deletes take several batch calls each.
    let root = Root::new("full");
    let dir = create_v1_dir(&root.0, 100_000).expect("create the v1 dir (needs root)");
    let mut want = [HashMap::new(), HashMap::new()];
    for (side, n, direction) in [
        (0, 100_000u32, Direction::FromPod),
        (1, 50_000, Direction::ToPod),
    ] {
        let flows: Vec<(FlowKey, Counters)> = (0..n)
            .map(|i| {
                let key = FlowKey::new(
                    std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
                    "10.200.0.1".parse().unwrap(),
                    direction,
                );
                (
                    key,
                    Counters::new(1_000 + u64::from(i), 1 + u64::from(i % 7)),
                )
            })
            .collect();
        let raw: Vec<_> = flows.iter().map(|(k, c)| (encode_key(k), *c)).collect();
        v1_put_flows(&dir, side, &raw).expect("fill");
        want[side] = flows.into_iter().collect();
    }

    let mut c = V1Collector::open(&dir).expect("open");
    for (round, want) in want.iter().enumerate() {
        let t = std::time::Instant::now();
        let staged = c.stage().expect("stage");
        let staged_in = t.elapsed();
        let t = std::time::Instant::now();
        c.commit(staged.epoch).expect("commit");
        eprintln!(
            "round {}: {} flows, stage {:?}, commit {:?}",
            round + 1,
            staged.drain.samples.len(),
            staged_in,
            t.elapsed()
        );
        assert_eq!(
            staged.drain.samples.len(),
            want.len(),
            "round {}",
            round + 1
        );
        assert_eq!(&by_key(&staged.drain.samples), want, "round {}", round + 1);
        assert_eq!(staged.drain.overflow, Counters::default());
    }
    assert_eq!(c.drain().expect("round 3").total(), Counters::default());
    assert_empty(&dir);
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Opens `dir`, expecting a refusal that names `path` and says `what`.
fn refused(dir: &Path, path: &Path, what: &str) -> PinError {
    let e = V1Collector::open(dir).expect_err("a hostile pin is refused");
    let msg = chain(&e);
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains(what),
        "expected {} and {what:?} in: {msg}",
        path.display()
    );
    e
}

#[test]
fn pins_of_another_shape_are_refused_with_their_path() {
    let root = Root::new("hostile");
    let array = libbpf_sys::BPF_MAP_TYPE_ARRAY;
    let percpu_hash = libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH;

    // flows_a replaced by an array.
    let dir = create_v1_dir(&root.0.join("a"), 32).expect("create (needs root)");
    v1_replace_pin(&dir, "flows_a", array, 4, 16, 33).expect("replace");
    let e = refused(
        &dir,
        &dir.join("flows_a"),
        "not layout 1's flows_a map: the kernel says array",
    );
    assert!(matches!(e, PinError::Foreign { .. }), "{e:?}");

    // flows_b: the right type with another capacity.
    let dir = create_v1_dir(&root.0.join("b"), 32).expect("create");
    v1_replace_pin(&dir, "flows_b", percpu_hash, 40, 16, 34).expect("replace");
    refused(&dir, &dir.join("flows_b"), "34 entries");

    // flows_a of the right shape, but not the table the program writes to.
    let dir = create_v1_dir(&root.0.join("c"), 32).expect("create");
    v1_replace_pin(&dir, "flows_a", percpu_hash, 40, 16, 33).expect("replace");
    refused(&dir, &dir.join("flow_tables"), "slot 0 holds map id");

    // flows_b pinned as a second name of flows_a.
    let pd = pin::PinDir::with_layout(root.0.join("c2"), 1);
    let dir = create_v1_dir(pd.root(), 32).expect("create");
    std::fs::remove_file(dir.join("flows_b")).expect("rm flows_b");
    let flows_a = pd.open_map("flows_a").expect("open flows_a");
    pd.pin_map("flows_b", std::os::fd::AsFd::as_fd(&flows_a))
        .expect("pin flows_a as flows_b");
    refused(&dir, &dir.join("flows_b"), "the same map");

    // A cache with another value size, a bss of another size.
    let dir = create_v1_dir(&root.0.join("d"), 32).expect("create");
    v1_replace_pin(
        &dir,
        "flow_cache",
        libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        48,
        2,
    )
    .expect("replace");
    refused(&dir, &dir.join("flow_cache"), "value 48 B");
    let dir = create_v1_dir(&root.0.join("e"), 32).expect("create");
    v1_replace_pin(&dir, "bss", array, 4, 24, 1).expect("replace");
    refused(&dir, &dir.join("bss"), "value 24 B");

    // A pin that is no map at all (a directory where a map should be).
    let dir = create_v1_dir(&root.0.join("f"), 32).expect("create");
    std::fs::remove_file(dir.join("data_ctl")).expect("rm");
    std::fs::create_dir(dir.join("data_ctl")).expect("mkdir");
    let e = refused(&dir, &dir.join("data_ctl"), "opening");
    assert!(matches!(e, PinError::Io { .. }), "{e:?}");
    std::fs::remove_dir(dir.join("data_ctl")).expect("rmdir");
    // A missing pin.
    refused(&dir, &dir.join("data_ctl"), "No such file");

    // A meta of another layout, and a meta that is no netscope meta.
    let dir = create_v1_dir(&root.0.join("g"), 32).expect("create");
    let meta = dir.join(pin::META);
    std::fs::remove_file(&meta).expect("rm meta");
    let ncpus = ncpus() as u32;
    pin::PinDir::with_layout(root.0.join("g"), 1)
        .write_meta(&pin::Meta {
            layout: 2,
            max_flows: 32,
            key_size: 40,
            value_size: 16,
            ncpus,
        })
        .expect("a layout-2 meta");
    refused(&dir, &meta, "not a layout-1 meta");
    std::fs::remove_file(&meta).expect("rm meta");
    pin::PinDir::with_layout(root.0.join("g"), 1)
        .write_meta(&pin::Meta {
            layout: 1,
            max_flows: 31,
            key_size: 40,
            value_size: 16,
            ncpus,
        })
        .expect("a meta with another capacity");
    refused(&dir, &dir.join("flows_a"), "32 entries");
    v1_replace_pin(&dir, pin::META, array, 4, 64, 1).expect("replace meta");
    refused(&dir, &meta, "not netscope's meta map");

    // Nothing was written to by the refusals: a good directory still opens.
    let dir = create_v1_dir(&root.0.join("h"), 32).expect("create");
    V1Collector::open(&dir).expect("a genuine v1 dir opens");
}
