//! The reader of pinned layout 1: the flow tables of agents built before the
//! flow tables became slot arrays (issue 20), so that an upgraded agent
//! drains what its predecessor counted, exactly once (docs/restarts.md,
//! "Upgrading from layout 1").
//!
//! ```text
//! <pin root>/v1/
//!   meta          netscope_meta: magic, layout 1, max_flows, key 40, value 16, CPUs;
//!                 the drain's epoch (bytes 32..40), staged flag (40) and side (41)
//!   flows_a flows_b   BPF_MAP_TYPE_PERCPU_HASH, key 40 B, value 16 B per CPU,
//!                 max_flows + 1 entries (the all-zero key is the overflow slot)
//!   flow_tables   ARRAY_OF_MAPS, 2 slots: flows_a, flows_b
//!   flow_cache    PERCPU_ARRAY, 2 entries of 56 B (key + bytes + packets), one per side
//!   data_ctl      ARRAY, 1 entry: the side the program writes to (u32)
//!   bss           ARRAY, 1 entry: lost_bytes, lost_packets (u64 each)
//!   links/        TCX link pins
//! ```
//!
//! [`V1Collector`] works on those pins alone, with no BPF object: every map
//! is checked against the shapes above (type, key and value size, capacity)
//! before it is used, and the flow-table slots must hold the two pinned
//! tables. Its stage and commit are the double-buffered collector's of
//! layout 1, on those fds. Nothing writes to the maps once the new program
//! runs behind every pinned link; two stage/commit rounds then cover both
//! sides, and the caller removes the directory ([`crate::pin::remove_layout`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use netscope::collect::{CollectError, Collector, Drain, Staged};
use netscope::{Counters, FlowSample};

use crate::maps::{decode_key, RawKey};
use crate::pin::{self, PinError};
use crate::sys;

/// The layout version this module reads.
pub const V1_LAYOUT: u32 = 1;
/// Layout 1's `sizeof(struct flow_key)`.
pub const V1_KEY_SIZE: usize = 40;
/// Layout 1's `sizeof(struct flow_value)`: bytes and packets, u64 each.
pub const V1_VALUE_SIZE: usize = 16;
/// Layout 1's `sizeof(struct flow_cache)`: a key and a value.
pub const V1_CACHE_SIZE: usize = V1_KEY_SIZE + V1_VALUE_SIZE;
/// Layout 1's `.bss`: lost_bytes and lost_packets.
const V1_BSS_SIZE: usize = 16;
/// Layout 1's largest capacity (its loader's `MAX_MAX_FLOWS`).
pub const V1_MAX_FLOWS: u32 = 4 * 1024 * 1024;
/// Size of the meta value.
const META_SIZE: u32 = 64;
/// Entries fetched per batch syscall.
const BATCH: usize = 16384;
/// The two flow tables, by side.
const TABLES: [&str; 2] = ["flows_a", "flows_b"];

/// The shape of one pinned map of layout 1, as the kernel describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct V1Map {
    /// Name of the pin in the layout directory.
    pin: &'static str,
    /// The map's name in the kernel (what `bpftool map` shows).
    kernel_name: &'static str,
    /// `BPF_MAP_TYPE_*`.
    map_type: u32,
    /// Key size.
    key_size: u32,
    /// Value size (per CPU for per-CPU maps).
    value_size: u32,
    /// Capacity; 0 stands for the flow tables' `max_flows + 1`.
    max_entries: u32,
    /// `map_flags` (the global-data arrays are mmap-able).
    flags: u32,
}

impl V1Map {
    fn entries(&self, max_flows: u32) -> u32 {
        if self.max_entries == 0 {
            max_flows.saturating_add(1)
        } else {
            self.max_entries
        }
    }
}

/// Every pinned map of layout 1, in the order [`V1Collector::open`] opens
/// them (checked against the maps today's program makes by
/// `tests/upgrade_v1.rs`).
const V1_MAPS: [V1Map; 7] = [
    V1Map {
        pin: "flows_a",
        kernel_name: "flows_a",
        map_type: libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH,
        key_size: V1_KEY_SIZE as u32,
        value_size: V1_VALUE_SIZE as u32,
        max_entries: 0,
        flags: 0,
    },
    V1Map {
        pin: "flows_b",
        kernel_name: "flows_b",
        map_type: libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH,
        key_size: V1_KEY_SIZE as u32,
        value_size: V1_VALUE_SIZE as u32,
        max_entries: 0,
        flags: 0,
    },
    V1Map {
        pin: "flow_tables",
        kernel_name: "flow_tables",
        map_type: libbpf_sys::BPF_MAP_TYPE_ARRAY_OF_MAPS,
        key_size: 4,
        value_size: 4,
        max_entries: 2,
        flags: 0,
    },
    V1Map {
        pin: "flow_cache",
        kernel_name: "flow_cache",
        map_type: libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY,
        key_size: 4,
        value_size: V1_CACHE_SIZE as u32,
        max_entries: 2,
        flags: 0,
    },
    V1Map {
        pin: "data_ctl",
        kernel_name: ".data.ctl",
        map_type: libbpf_sys::BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        flags: libbpf_sys::BPF_F_MMAPABLE,
    },
    V1Map {
        pin: "bss",
        kernel_name: "netscope.bss",
        map_type: libbpf_sys::BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: V1_BSS_SIZE as u32,
        max_entries: 1,
        flags: libbpf_sys::BPF_F_MMAPABLE,
    },
    V1Map {
        pin: pin::META,
        kernel_name: "netscope_meta",
        map_type: libbpf_sys::BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: META_SIZE,
        max_entries: 1,
        flags: 0,
    },
];

/// Sums the per-CPU values of one layout-1 entry (saturating).
fn fold(value: &[u8]) -> Counters {
    let mut c = Counters::default();
    for cpu in value.chunks_exact(V1_VALUE_SIZE) {
        let bytes = u64::from_ne_bytes(cpu[0..8].try_into().expect("8 bytes"));
        let packets = u64::from_ne_bytes(cpu[8..16].try_into().expect("8 bytes"));
        c += Counters::new(bytes, packets);
    }
    c
}

/// A map type as `bpftool` names it.
fn type_name(t: u32) -> String {
    match t {
        libbpf_sys::BPF_MAP_TYPE_HASH => "hash".into(),
        libbpf_sys::BPF_MAP_TYPE_ARRAY => "array".into(),
        libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH => "percpu_hash".into(),
        libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY => "percpu_array".into(),
        libbpf_sys::BPF_MAP_TYPE_ARRAY_OF_MAPS => "array_of_maps".into(),
        libbpf_sys::BPF_MAP_TYPE_LRU_PERCPU_HASH => "lru_percpu_hash".into(),
        t => format!("type {t}"),
    }
}

fn foreign(path: &Path, reason: String) -> PinError {
    PinError::Foreign {
        path: path.to_path_buf(),
        reason,
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the pin of `m` in `dir` and checks it against layout 1's shape.
fn open_checked(dir: &Path, m: &V1Map, max_flows: u32) -> Result<(OwnedFd, u32), PinError> {
    let path = dir.join(m.pin);
    let fd = sys::obj_get(&path).map_err(io_err("opening", &path))?;
    let info =
        sys::map_info(fd.as_fd()).map_err(|e| foreign(&path, format!("not a BPF map ({e})")))?;
    let want = m.entries(max_flows);
    if info.map_type != m.map_type
        || info.key_size != m.key_size
        || info.value_size != m.value_size
        || info.max_entries != want
    {
        return Err(foreign(
            &path,
            format!(
                "not layout 1's {} map: the kernel says {}, key {} B, value {} B, {} entries; \
                 layout 1 has {}, key {} B, value {} B, {} entries",
                m.pin,
                type_name(info.map_type),
                info.key_size,
                info.value_size,
                info.max_entries,
                type_name(m.map_type),
                m.key_size,
                m.value_size,
                want
            ),
        ));
    }
    Ok((fd, info.id))
}

/// Drains the pinned maps of layout 1 (an agent upgraded from a layout-1
/// build): the double-buffered collector of that layout, on its pins.
///
/// Its [`Collector::stage`] flips the side (`data_ctl`), waits for running
/// programs (an update of `flow_tables`), records the epoch and the staged
/// side in the layout's `meta`, and reads the idle side (table and cache
/// entry) without clearing it; a side that is staged and not committed (by
/// this process or the agent before it) is read again under its epoch, with
/// no flip. [`Collector::commit`] clears that side and records the commit.
/// [`Staged::scope`] is the kernel id of the layout's meta map.
///
/// Once nothing writes to the maps (the new program runs behind every
/// link), two stage/commit rounds return everything they hold, each byte
/// once; later rounds return nothing.
#[derive(Debug)]
pub struct V1Collector {
    dir: PathBuf,
    tables: [OwnedFd; 2],
    flow_tables: OwnedFd,
    cache: OwnedFd,
    ctl: OwnedFd,
    bss: OwnedFd,
    meta: OwnedFd,
    meta_id: u64,
    capacity: u32,
    ncpus: usize,
    /// The side the program wrote to last (from `data_ctl`).
    active: usize,
    /// Last values read of the lost counters (cumulative in the kernel).
    lost_seen: (u64, u64),
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl V1Collector {
    /// Opens the layout-1 directory `dir` (`<pin root>/v1`).
    ///
    /// # Errors
    /// [`PinError::Foreign`] naming the path when `meta` is not a layout-1
    /// meta of this machine, a pin is no map or a map of another shape, or
    /// the flow-table slots do not hold the pinned tables;
    /// [`PinError::Io`] naming the path when a pin cannot be opened or read.
    pub fn open(dir: &Path) -> Result<Self, PinError> {
        let meta_path = dir.join(pin::META);
        let meta = pin::meta_of(dir)?;
        let ncpus = sys::possible_cpus().map_err(io_err("counting possible CPUs for", dir))?;
        if meta.layout != V1_LAYOUT
            || meta.key_size != V1_KEY_SIZE as u32
            || meta.value_size != V1_VALUE_SIZE as u32
            || meta.ncpus as usize != ncpus
            || meta.max_flows == 0
            || meta.max_flows > V1_MAX_FLOWS
        {
            return Err(foreign(
                &meta_path,
                format!(
                    "not a layout-1 meta of this machine: {meta:?} (layout 1 has {V1_KEY_SIZE}-byte keys, \
                     {V1_VALUE_SIZE}-byte values, 1 to {V1_MAX_FLOWS} flows; this machine has {ncpus} possible CPUs)"
                ),
            ));
        }
        let max_flows = meta.max_flows;
        let [a, b, tables_m, cache_m, ctl_m, bss_m, meta_m] = &V1_MAPS;
        let (flows_a, id_a) = open_checked(dir, a, max_flows)?;
        let (flows_b, id_b) = open_checked(dir, b, max_flows)?;
        let (flow_tables, _) = open_checked(dir, tables_m, max_flows)?;
        let (cache, _) = open_checked(dir, cache_m, max_flows)?;
        let (ctl, _) = open_checked(dir, ctl_m, max_flows)?;
        let (bss, _) = open_checked(dir, bss_m, max_flows)?;
        let (meta_fd, meta_id) = open_checked(dir, meta_m, max_flows)?;

        // The program picks its table from flow_tables: its slots must hold
        // the two pinned tables (a lookup from user space gives the inner
        // map's id), or the flip and the barrier would act on other maps.
        if id_a == id_b {
            return Err(foreign(
                &dir.join(b.pin),
                format!("the same map (id {id_a}) as {}", a.pin),
            ));
        }
        let tables_path = dir.join(tables_m.pin);
        for (side, id) in [id_a, id_b].into_iter().enumerate() {
            let mut slot = [0u8; 4];
            let found =
                sys::map_lookup(flow_tables.as_fd(), &(side as u32).to_ne_bytes(), &mut slot)
                    .map_err(io_err("reading", &tables_path))?;
            let held = u32::from_ne_bytes(slot);
            if !found || held != id {
                return Err(foreign(
                    &tables_path,
                    format!(
                        "slot {side} holds map id {} where the pinned {} has id {id}",
                        if found {
                            held.to_string()
                        } else {
                            "none".into()
                        },
                        TABLES[side]
                    ),
                ));
            }
        }

        let ctl_path = dir.join(ctl_m.pin);
        let mut active = [0u8; 4];
        sys::map_lookup(ctl.as_fd(), &0u32.to_ne_bytes(), &mut active)
            .map_err(io_err("reading", &ctl_path))?;
        let mut active = usize::from(u32::from_ne_bytes(active) == 1);
        // A stage always flips away from the side it stages, so a staged
        // side that is also the active one is a state no layout-1 agent
        // leaves. Taken as written, the second round would read the staged
        // side again and never the other: the other side is taken as
        // active instead, so that two rounds still cover both.
        let (_, staged) =
            pin::read_epoch(meta_fd.as_fd()).map_err(io_err("reading", &meta_path))?;
        if staged == Some(active) {
            tracing::warn!(dir = ?dir, side = active, "the layout-1 meta stages the side data_ctl names active; draining the other side next");
            active = 1 - active;
        }
        // The lost counters are cumulative: what they hold now was the
        // previous agent's to report (as when an agent adopts its own layout).
        let bss_path = dir.join(bss_m.pin);
        let mut lost = [0u8; V1_BSS_SIZE];
        sys::map_lookup(bss.as_fd(), &0u32.to_ne_bytes(), &mut lost)
            .map_err(io_err("reading", &bss_path))?;
        let lost_seen = (
            u64::from_ne_bytes(lost[0..8].try_into().expect("8 bytes")),
            u64::from_ne_bytes(lost[8..16].try_into().expect("8 bytes")),
        );

        let slots = BATCH.min(max_flows as usize + 1);
        Ok(V1Collector {
            dir: dir.to_path_buf(),
            tables: [flows_a, flows_b],
            flow_tables,
            cache,
            ctl,
            bss,
            meta: meta_fd,
            meta_id: u64::from(meta_id),
            capacity: max_flows,
            ncpus,
            active,
            lost_seen,
            keys: vec![0; slots * V1_KEY_SIZE],
            values: vec![0; slots * V1_VALUE_SIZE * ncpus],
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The flow tables' capacity (without the overflow slot), from `meta`.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn map_err<'a>(
        &'a self,
        op: &'static str,
        map: &'static str,
    ) -> impl FnOnce(io::Error) -> CollectError + 'a {
        move |source| CollectError::Map {
            op,
            map: self.dir.join(map).display().to_string(),
            source,
        }
    }

    /// Puts the all-zero overflow key into table `side` unless it is there.
    fn install_overflow_slot(&self, side: usize) -> io::Result<()> {
        let zero_key = [0u8; V1_KEY_SIZE];
        let zero_val = vec![0u8; V1_VALUE_SIZE * self.ncpus];
        match sys::map_update(
            self.tables[side].as_fd(),
            &zero_key,
            &zero_val,
            u64::from(libbpf_sys::BPF_NOEXIST),
        ) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes every entry of table `side` (the committed stage).
    fn clear_table(&mut self, side: usize) -> Result<(), CollectError> {
        let stride = V1_VALUE_SIZE * self.ncpus;
        let mut token = None;
        loop {
            let r = sys::map_lookup_and_delete_batch(
                self.tables[side].as_fd(),
                &mut token,
                &mut self.keys,
                V1_KEY_SIZE,
                &mut self.values,
                stride,
            );
            let (_, done) = r.map_err(self.map_err("lookup_and_delete_batch", TABLES[side]))?;
            if done {
                return Ok(());
            }
        }
    }

    /// Flips the side the (former) program writes to and waits for programs
    /// that may still use the old one. Returns the side now idle.
    fn flip(&mut self) -> Result<usize, CollectError> {
        let idle = self.active;
        let next = 1 - idle;
        // The standby table always holds the overflow slot before it goes live.
        self.install_overflow_slot(next)
            .map_err(self.map_err("update", TABLES[next]))?;
        sys::map_update(
            self.ctl.as_fd(),
            &0u32.to_ne_bytes(),
            &(next as u32).to_ne_bytes(),
            0,
        )
        .map_err(self.map_err("update", "data_ctl"))?;
        // An update of a map-in-map returns after an RCU grace period
        // (kernel/bpf/syscall.c, maybe_wait_bpf_programs); it puts the same
        // table back in its slot.
        let idle_fd = self.tables[idle].as_raw_fd();
        sys::map_update(
            self.flow_tables.as_fd(),
            &(idle as u32).to_ne_bytes(),
            &idle_fd.to_ne_bytes(),
            0,
        )
        .map_err(self.map_err("update", "flow_tables"))?;
        self.active = next;
        Ok(idle)
    }

    /// The per-CPU cache entries of `side`, merged by key (at most one flow
    /// per CPU).
    fn read_cache(&self, side: usize) -> Result<Vec<([u8; V1_KEY_SIZE], Counters)>, CollectError> {
        let mut cache = vec![0u8; V1_CACHE_SIZE * self.ncpus];
        sys::map_lookup(self.cache.as_fd(), &(side as u32).to_ne_bytes(), &mut cache)
            .map_err(self.map_err("lookup", "flow_cache"))?;
        let mut cached: Vec<([u8; V1_KEY_SIZE], Counters)> = Vec::new();
        for cpu in cache.chunks_exact(V1_CACHE_SIZE) {
            let counters = fold(&cpu[V1_KEY_SIZE..]);
            // Byte 32 is the family: 0 = an empty entry.
            if cpu[32] == 0 || counters.is_zero() {
                continue;
            }
            let key: [u8; V1_KEY_SIZE] = cpu[..V1_KEY_SIZE].try_into().expect("key size");
            match cached.iter_mut().find(|(k, _)| *k == key) {
                Some((_, c)) => *c += counters,
                None => cached.push((key, counters)),
            }
        }
        Ok(cached)
    }
}

impl Collector for V1Collector {
    fn drain(&mut self) -> Result<Drain, CollectError> {
        let staged = self.stage()?;
        self.commit(staged.epoch)?;
        Ok(staged.drain)
    }

    fn stage(&mut self) -> Result<Staged, CollectError> {
        let (mut epoch, staged) =
            pin::read_epoch(self.meta.as_fd()).map_err(self.map_err("lookup", pin::META))?;
        let idle = match staged {
            Some(side) => side,
            None => {
                let idle = self.flip()?;
                epoch += 1;
                pin::write_epoch(self.meta.as_fd(), epoch, Some(idle))
                    .map_err(self.map_err("update", pin::META))?;
                idle
            }
        };

        let mut cached = self.read_cache(idle)?;
        let stride = V1_VALUE_SIZE * self.ncpus;
        let mut drain = Drain {
            capacity: self.capacity as usize,
            ..Drain::default()
        };
        let mut token = None;
        let mut invalid = 0u64;
        loop {
            let r = sys::map_lookup_batch(
                self.tables[idle].as_fd(),
                &mut token,
                &mut self.keys,
                V1_KEY_SIZE,
                &mut self.values,
                stride,
            );
            let (n, done) = r.map_err(self.map_err("lookup_batch", TABLES[idle]))?;
            drain.samples.reserve(n);
            for i in 0..n {
                let key = &self.keys[i * V1_KEY_SIZE..(i + 1) * V1_KEY_SIZE];
                let mut counters = fold(&self.values[i * stride..(i + 1) * stride]);
                // A cached entry of the same flow joins this one.
                if let Some(pos) = cached.iter().position(|(k, _)| k.as_slice() == key) {
                    counters += cached.swap_remove(pos).1;
                }
                match decode_key(key) {
                    RawKey::Flow(key) if !counters.is_zero() => {
                        drain.samples.push(FlowSample { key, counters })
                    }
                    RawKey::Flow(_) => {}
                    RawKey::Overflow => drain.overflow += counters,
                    RawKey::Invalid => {
                        invalid += 1;
                        drain.overflow += counters;
                    }
                }
            }
            if done {
                break;
            }
        }
        // Cached flows that had no table entry.
        for (key, counters) in cached {
            match decode_key(&key) {
                RawKey::Flow(key) => drain.samples.push(FlowSample { key, counters }),
                RawKey::Overflow | RawKey::Invalid => {
                    invalid += 1;
                    drain.overflow += counters;
                }
            }
        }
        if invalid > 0 {
            tracing::error!(
                entries = invalid,
                dir = ?self.dir,
                "the layout-1 flow table held keys with an unknown family or direction; counted as overflow"
            );
        }
        // Bytes that found not even the overflow slot (should never happen).
        let lost = crate::collector::read_lost(self.bss.as_fd(), &mut self.lost_seen)
            .map_err(self.map_err("lookup", "bss"))?;
        if !lost.is_zero() {
            tracing::error!(
                bytes = lost.bytes,
                packets = lost.packets,
                dir = ?self.dir,
                "bytes found no flow slot and no overflow slot in the layout-1 maps; counted as overflow"
            );
            drain.overflow += lost;
        }
        Ok(Staged {
            drain,
            epoch,
            scope: self.meta_id,
        })
    }

    fn commit(&mut self, epoch: u64) -> Result<(), CollectError> {
        let (current, staged) =
            pin::read_epoch(self.meta.as_fd()).map_err(self.map_err("lookup", pin::META))?;
        let Some(idle) = staged.filter(|_| current == epoch) else {
            return Ok(());
        };
        self.clear_table(idle)?;
        let zero = vec![0u8; V1_CACHE_SIZE * self.ncpus];
        sys::map_update(self.cache.as_fd(), &(idle as u32).to_ne_bytes(), &zero, 0)
            .map_err(self.map_err("update", "flow_cache"))?;
        // The overflow slot was cleared with the rest; put it back so the
        // table is as layout 1 keeps it.
        self.install_overflow_slot(idle)
            .map_err(self.map_err("update", TABLES[idle]))?;
        pin::write_epoch(self.meta.as_fd(), epoch, None)
            .map_err(self.map_err("update", pin::META))?;
        Ok(())
    }
}

/// Test support: genuine layout-1 state made without the layout-1 program
/// (maps of the exact shapes, pinned as its loader pins them), and ways to
/// put counts into it.
#[cfg(feature = "testing")]
mod fixtures {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
    use std::path::{Path, PathBuf};

    use netscope::Counters;

    use super::{
        V1Map, TABLES, V1_CACHE_SIZE, V1_KEY_SIZE, V1_LAYOUT, V1_MAPS, V1_MAX_FLOWS, V1_VALUE_SIZE,
    };
    use crate::pin::{self, Meta, PinDir};
    use crate::sys;

    /// What the kernel says about a pinned map, flags included.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct V1MapShape {
        /// The kernel's name of the map.
        pub name: String,
        /// `BPF_MAP_TYPE_*`.
        pub map_type: u32,
        /// Key size.
        pub key_size: u32,
        /// Value size (per CPU for per-CPU maps).
        pub value_size: u32,
        /// Capacity.
        pub max_entries: u32,
        /// `map_flags`.
        pub flags: u32,
    }

    /// The pins of a layout-1 directory, meta included.
    pub fn v1_pins() -> Vec<&'static str> {
        V1_MAPS.iter().map(|m| m.pin).collect()
    }

    /// The shape of the map pinned at `path`.
    ///
    /// # Errors
    /// The kernel's error (EINVAL when the pin is no map).
    pub fn v1_map_shape(path: &Path) -> io::Result<V1MapShape> {
        let fd = sys::obj_get(path)?;
        let info = sys::map_info(fd.as_fd())?;
        let mut raw = libbpf_sys::bpf_map_info::default();
        let mut len = std::mem::size_of::<libbpf_sys::bpf_map_info>() as u32;
        // SAFETY: raw is a bpf_map_info of len bytes whose pointer fields are
        // null: the kernel writes scalars only, at most len bytes.
        let ret = unsafe { libbpf_sys::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut raw, &mut len) };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        Ok(V1MapShape {
            name: info.name,
            map_type: info.map_type,
            key_size: info.key_size,
            value_size: info.value_size,
            max_entries: info.max_entries,
            flags: raw.map_flags,
        })
    }

    /// `BPF_MAP_CREATE` with flags and an optional inner map (map-in-map).
    fn create_map(
        name: &str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
        inner: Option<BorrowedFd<'_>>,
    ) -> io::Result<OwnedFd> {
        let n = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "map name has a NUL byte"))?;
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: flags,
            inner_map_fd: inner.map_or(0, |fd| fd.as_raw_fd() as u32),
            ..Default::default()
        };
        // SAFETY: n is NUL-terminated and outlives the call; opts is a sized,
        // zero-initialised struct whose only fd (inner) stays open for the call.
        let fd = unsafe {
            libbpf_sys::bpf_map_create(
                map_type,
                n.as_ptr(),
                key_size,
                value_size,
                max_entries,
                &opts,
            )
        };
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(-fd));
        }
        // SAFETY: the kernel just returned this new map fd, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn create(m: &V1Map, max_flows: u32, inner: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
        create_map(
            m.kernel_name,
            m.map_type,
            m.key_size,
            m.value_size,
            m.entries(max_flows),
            m.flags,
            inner,
        )
    }

    fn pin_err(e: pin::PinError) -> io::Error {
        io::Error::other(e)
    }

    /// Makes `<root>/v1` as a layout-1 agent leaves it (before any
    /// traffic): every map of layout 1 with its exact shape, kernel name
    /// and flags, both tables with their overflow slot, `flow_tables`
    /// holding the two tables, side 0 active, and the meta pinned last.
    /// Returns the directory.
    ///
    /// # Errors
    /// The kernel's or the filesystem's error; `InvalidInput` for a
    /// capacity outside layout 1's range.
    pub fn create_v1_dir(root: &Path, max_flows: u32) -> io::Result<PathBuf> {
        if max_flows == 0 || max_flows > V1_MAX_FLOWS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("layout 1 holds 1 to {V1_MAX_FLOWS} flows, not {max_flows}"),
            ));
        }
        let ncpus = sys::possible_cpus()?;
        let pd = PinDir::with_layout(root, V1_LAYOUT);
        pd.prepare().map_err(pin_err)?;
        let [a, b, tables_m, cache_m, ctl_m, bss_m, _] = &V1_MAPS;
        let flows_a = create(a, max_flows, None)?;
        let flows_b = create(b, max_flows, None)?;
        let zero_val = vec![0u8; V1_VALUE_SIZE * ncpus];
        for t in [&flows_a, &flows_b] {
            sys::map_update(t.as_fd(), &[0u8; V1_KEY_SIZE], &zero_val, 0)?;
        }
        // The outer map takes its inner maps' shape from a template: a table.
        let flow_tables = create(tables_m, max_flows, Some(flows_a.as_fd()))?;
        for (side, t) in [&flows_a, &flows_b].into_iter().enumerate() {
            sys::map_update(
                flow_tables.as_fd(),
                &(side as u32).to_ne_bytes(),
                &t.as_raw_fd().to_ne_bytes(),
                0,
            )?;
        }
        let cache = create(cache_m, max_flows, None)?;
        let ctl = create(ctl_m, max_flows, None)?;
        let bss = create(bss_m, max_flows, None)?;
        for (m, fd) in [a, b, tables_m, cache_m, ctl_m, bss_m].into_iter().zip([
            &flows_a,
            &flows_b,
            &flow_tables,
            &cache,
            &ctl,
            &bss,
        ]) {
            pd.pin_map(m.pin, fd.as_fd()).map_err(pin_err)?;
        }
        // Last: a directory with meta is complete.
        pd.write_meta(&Meta {
            layout: V1_LAYOUT,
            max_flows,
            key_size: V1_KEY_SIZE as u32,
            value_size: V1_VALUE_SIZE as u32,
            ncpus: ncpus as u32,
        })
        .map_err(pin_err)?;
        Ok(pd.dir())
    }

    fn open(dir: &Path, name: &str) -> io::Result<OwnedFd> {
        sys::obj_get(&dir.join(name))
    }

    fn check_side(side: usize) -> io::Result<()> {
        if side > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("side {side}: layout 1 has sides 0 and 1"),
            ));
        }
        Ok(())
    }

    fn check_cpus(n: usize) -> io::Result<usize> {
        let ncpus = sys::possible_cpus()?;
        if n > ncpus {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{n} per-CPU values for {ncpus} possible CPUs"),
            ));
        }
        Ok(ncpus)
    }

    /// Sets the entry `key` of side `side`'s table (0 = flows_a) in layout
    /// directory `dir` to `per_cpu` (CPU i's counters; the other CPUs 0),
    /// as the program leaves it. The all-zero key is the overflow slot.
    ///
    /// # Errors
    /// The kernel's error (E2BIG when the table is full); `InvalidInput`
    /// for a side other than 0 and 1 or more values than CPUs.
    pub fn v1_put_flow(
        dir: &Path,
        side: usize,
        key: &[u8; V1_KEY_SIZE],
        per_cpu: &[Counters],
    ) -> io::Result<()> {
        check_side(side)?;
        let ncpus = check_cpus(per_cpu.len())?;
        let mut value = vec![0u8; V1_VALUE_SIZE * ncpus];
        for (cpu, c) in per_cpu.iter().enumerate() {
            let v = &mut value[cpu * V1_VALUE_SIZE..(cpu + 1) * V1_VALUE_SIZE];
            v[0..8].copy_from_slice(&c.bytes.to_ne_bytes());
            v[8..16].copy_from_slice(&c.packets.to_ne_bytes());
        }
        sys::map_update(open(dir, TABLES[side])?.as_fd(), key, &value, 0)
    }

    /// Sets many entries of side `side`'s table at once (one batch update):
    /// flow i's counters on CPU `i % CPUs`.
    ///
    /// # Errors
    /// As [`v1_put_flow`].
    pub fn v1_put_flows(
        dir: &Path,
        side: usize,
        flows: &[([u8; V1_KEY_SIZE], Counters)],
    ) -> io::Result<()> {
        check_side(side)?;
        let ncpus = sys::possible_cpus()?;
        let stride = V1_VALUE_SIZE * ncpus;
        let mut keys = Vec::with_capacity(flows.len() * V1_KEY_SIZE);
        let mut values = vec![0u8; flows.len() * stride];
        for (i, (key, c)) in flows.iter().enumerate() {
            keys.extend_from_slice(key);
            let at = i * stride + (i % ncpus) * V1_VALUE_SIZE;
            values[at..at + 8].copy_from_slice(&c.bytes.to_ne_bytes());
            values[at + 8..at + 16].copy_from_slice(&c.packets.to_ne_bytes());
        }
        let table = open(dir, TABLES[side])?;
        sys::map_update_batch(table.as_fd(), &keys, V1_KEY_SIZE, &values, stride)
    }

    /// Sets side `side`'s per-CPU cache entry in `dir`: CPU i holds
    /// `per_cpu[i]` (a flow and its counters not yet in the table), or
    /// nothing.
    ///
    /// # Errors
    /// As [`v1_put_flow`].
    pub fn v1_put_cache(
        dir: &Path,
        side: usize,
        per_cpu: &[Option<([u8; V1_KEY_SIZE], Counters)>],
    ) -> io::Result<()> {
        check_side(side)?;
        let ncpus = check_cpus(per_cpu.len())?;
        let mut value = vec![0u8; V1_CACHE_SIZE * ncpus];
        for (cpu, e) in per_cpu.iter().enumerate() {
            let Some((key, c)) = e else { continue };
            let v = &mut value[cpu * V1_CACHE_SIZE..(cpu + 1) * V1_CACHE_SIZE];
            v[..V1_KEY_SIZE].copy_from_slice(key);
            v[V1_KEY_SIZE..V1_KEY_SIZE + 8].copy_from_slice(&c.bytes.to_ne_bytes());
            v[V1_KEY_SIZE + 8..].copy_from_slice(&c.packets.to_ne_bytes());
        }
        sys::map_update(
            open(dir, "flow_cache")?.as_fd(),
            &(side as u32).to_ne_bytes(),
            &value,
            0,
        )
    }

    /// Sets the side the program writes to (`data_ctl`).
    ///
    /// # Errors
    /// As [`v1_put_flow`].
    pub fn v1_set_active(dir: &Path, side: usize) -> io::Result<()> {
        check_side(side)?;
        sys::map_update(
            open(dir, "data_ctl")?.as_fd(),
            &0u32.to_ne_bytes(),
            &(side as u32).to_ne_bytes(),
            0,
        )
    }

    /// Records `epoch` and the side staged under it (not committed) in the
    /// meta, as an agent that staged and died leaves it.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn v1_set_epoch(dir: &Path, epoch: u64, staged: Option<usize>) -> io::Result<()> {
        if let Some(side) = staged {
            check_side(side)?;
        }
        pin::write_epoch(open(dir, pin::META)?.as_fd(), epoch, staged)
    }

    /// The epoch and the staged side recorded in the meta.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn v1_epoch(dir: &Path) -> io::Result<(u64, Option<usize>)> {
        pin::read_epoch(open(dir, pin::META)?.as_fd())
    }

    /// Sets the lost counters (`bss`: lost_bytes, lost_packets).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn v1_set_lost(dir: &Path, bytes: u64, packets: u64) -> io::Result<()> {
        let mut v = [0u8; 16];
        v[0..8].copy_from_slice(&bytes.to_ne_bytes());
        v[8..16].copy_from_slice(&packets.to_ne_bytes());
        sys::map_update(open(dir, "bss")?.as_fd(), &0u32.to_ne_bytes(), &v, 0)
    }

    /// The keys in side `side`'s table, and its cache entry's per-CPU
    /// families (0 = empty).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn v1_side_contents(
        dir: &Path,
        side: usize,
    ) -> io::Result<(Vec<[u8; V1_KEY_SIZE]>, Vec<u8>)> {
        check_side(side)?;
        let table = open(dir, TABLES[side])?;
        let mut keys = Vec::new();
        let mut next = [0u8; V1_KEY_SIZE];
        let mut prev: Option<[u8; V1_KEY_SIZE]> = None;
        while sys::map_get_next_key(table.as_fd(), prev.as_ref().map(|k| &k[..]), &mut next)? {
            keys.push(next);
            prev = Some(next);
        }
        let ncpus = sys::possible_cpus()?;
        let mut cache = vec![0u8; V1_CACHE_SIZE * ncpus];
        sys::map_lookup(
            open(dir, "flow_cache")?.as_fd(),
            &(side as u32).to_ne_bytes(),
            &mut cache,
        )?;
        Ok((
            keys,
            cache.chunks_exact(V1_CACHE_SIZE).map(|c| c[32]).collect(),
        ))
    }

    /// Replaces the pin `name` in `dir` by a new map of the given shape (a
    /// hostile or broken pin, for tests of the checks).
    ///
    /// # Errors
    /// The kernel's or the filesystem's error.
    pub fn v1_replace_pin(
        dir: &Path,
        name: &str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    ) -> io::Result<()> {
        let fd = create_map(name, map_type, key_size, value_size, max_entries, 0, None)?;
        let path = dir.join(name);
        std::fs::remove_file(&path)?;
        sys::obj_pin(fd.as_fd(), &path)
    }
}

#[cfg(feature = "testing")]
#[doc(hidden)]
pub use fixtures::{
    create_v1_dir, v1_epoch, v1_map_shape, v1_pins, v1_put_cache, v1_put_flow, v1_put_flows,
    v1_replace_pin, v1_set_active, v1_set_epoch, v1_set_lost, v1_side_contents, V1MapShape,
};
