//! Loading the capture program.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, Once};

use ipnet::IpNet;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::PrintLevel;
use netscope::flow::addr_to_raw;
use netscope::Direction;

use crate::maps::FlowMapLayout;
use crate::pin::{Meta, PinDir, PINNED_MAPS};
use crate::skel::{types, NetscopeSkelBuilder};
use crate::sys;

/// Most Service CIDRs the program matches against (`NS_MAX_SERVICE_CIDRS`).
pub const MAX_SERVICE_CIDRS: usize = 8;
/// Default flow-table capacity.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Largest accepted capacity: two sides of this many 56-byte slots, and an
/// index of as many entries.
pub const MAX_MAX_FLOWS: u32 = 4 * 1024 * 1024;

/// Settings applied before the program is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Flow-table capacity. Flows beyond it are counted in the overflow
    /// counter (their bytes stay in the totals).
    pub max_flows: u32,
    /// The cluster's Service CIDRs: packets whose remote address is inside
    /// one are keyed with protocol and ports, so the agent can undo the NAT.
    pub service_cidrs: Vec<IpNet>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            max_flows: DEFAULT_MAX_FLOWS,
            service_cidrs: Vec::new(),
        }
    }
}

/// Errors from loading the program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The configuration cannot be applied.
    #[error("invalid capture configuration: {0}")]
    Config(String),
    /// libbpf could not open the embedded object.
    #[error("opening the embedded BPF object")]
    Open(#[source] libbpf_rs::Error),
    /// The kernel refused the program or a map (the verifier log is in the
    /// debug log of target `libbpf`).
    #[error("loading the BPF program into the kernel (needs root or CAP_BPF+CAP_NET_ADMIN; verifier output is logged at debug level)")]
    Load(#[source] libbpf_rs::Error),
    /// The pin directory cannot be used (not bpffs, something else's pins,
    /// another layout).
    #[error("pinned state")]
    Pin(#[from] crate::pin::PinError),
    /// Preparing the loaded maps failed.
    #[error("preparing BPF map {map}")]
    Setup {
        /// Map name.
        map: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

/// State of the double buffer, guarded by one lock so drains never overlap.
#[derive(Debug)]
pub(crate) struct BufferState {
    /// The generation the program writes in now (`active_gen`).
    pub gen: u32,
    /// The side (0 or 1, the low bit of `gen`) the program writes to now.
    pub active: usize,
    /// Last values read of the lost_* counters (cumulative in the kernel).
    pub lost_seen: (u64, u64),
    /// Without pinning: the last stage's epoch and its side while it is
    /// uncommitted (with pinning they live in the meta map).
    pub epoch: (u64, Option<usize>),
}

/// The loaded capture program and its maps. Share it (`Arc`) between the
/// attacher and the collector; every handle is a kernel fd, so all of it is
/// `Send + Sync`.
#[derive(Debug)]
pub struct Capture {
    progs: [OwnedFd; 2],
    prog_ids: [u32; 2],
    /// `flow_slots`, and its mapping.
    pub(crate) slots: OwnedFd,
    pub(crate) slot_mem: sys::MappedArray,
    /// `flow_index` (kept open so that it lives as long as the program).
    pub(crate) index: OwnedFd,
    /// `slot_alloc`: next free slot per side.
    pub(crate) alloc: OwnedFd,
    pub(crate) cache: OwnedFd,
    /// Waits out running programs after a flip.
    pub(crate) barrier: sys::RcuBarrier,
    pub(crate) ctl: OwnedFd,
    pub(crate) bss: OwnedFd,
    pub(crate) layout: FlowMapLayout,
    pub(crate) capacity: u32,
    pub(crate) state: Mutex<BufferState>,
    /// Where the maps are pinned, when they are.
    pin: Option<PinDir>,
    /// The pinned meta map (epoch of the two-phase drain).
    meta: Option<OwnedFd>,
}

/// What [`Capture::load_pinned`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// Nothing was pinned: new maps, now pinned.
    Created,
    /// The maps of an earlier agent (same layout) were adopted: what they
    /// counted while no agent ran is in the next drain.
    Adopted,
}

pub(crate) fn route_libbpf_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        libbpf_rs::set_print(Some((PrintLevel::Debug, |level, msg| {
            let msg = msg.trim_end();
            // Querying an empty TC hook is how netscope checks for a free
            // slot, and creating clsact where one exists is how it makes
            // sure there is one: the kernel's complaints about either are
            // expected, not news.
            let expected = msg.contains("Cannot find specified filter chain")
                || msg.contains("Exclusivity flag on, cannot modify")
                || msg.contains("Parent Qdisc doesn't exists");
            match level {
                PrintLevel::Warn if !expected => tracing::warn!(target: "libbpf", "{msg}"),
                PrintLevel::Warn => tracing::debug!(target: "libbpf", "{msg}"),
                PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
                // The verifier's statistics, asked for by
                // NETSCOPE_VERIFIER_STATS=1 (see Capture::load).
                PrintLevel::Debug if msg.contains("-- BEGIN PROG LOAD LOG --") => {
                    tracing::info!(target: "libbpf", "{msg}")
                }
                PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
            }
        })));
    });
}

fn svc_cidr(net: &IpNet) -> types::svc_cidr {
    let words = |b: [u8; 16]| {
        let mut w = [0u32; 4];
        for (i, c) in b.chunks_exact(4).enumerate() {
            // Keep network byte order: the program compares raw packet words.
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        w
    };
    // An IPv4 CIDR is matched against IPv4-mapped addresses: the mask covers
    // the 96 mapping bits as well.
    let (addr, prefix) = match net {
        IpNet::V4(n) => (IpAddr::V4(n.network()), 96 + u32::from(n.prefix_len())),
        IpNet::V6(n) => (IpAddr::V6(n.network()), u32::from(n.prefix_len())),
    };
    let mask_bits: u128 = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    let mask = mask_bits.to_be_bytes();
    let mut raw = addr_to_raw(addr);
    for (b, m) in raw.iter_mut().zip(mask) {
        *b &= m;
    }
    types::svc_cidr {
        addr: words(raw),
        mask: words(mask),
    }
}

impl Capture {
    /// Loads the program with `config`.
    ///
    /// # Errors
    /// [`LoadError::Config`] for a capacity of 0 or above [`MAX_MAX_FLOWS`],
    /// or more than [`MAX_SERVICE_CIDRS`] CIDRs; [`LoadError::Load`] when the
    /// kernel refuses (no privileges, verifier).
    ///
    /// # Minimum kernel version
    /// 5.10 (per-CPU hash batch operations, zero-filled per-CPU inserts).
    pub fn load(config: &CaptureConfig) -> Result<Capture, LoadError> {
        Self::load_inner(config, None).map(|(c, _)| c)
    }

    /// Like [`Capture::load`], with the maps pinned in `pin` (checked and
    /// adopted when an earlier agent of the same layout pinned them, made and
    /// pinned otherwise). A pinned capacity other than `config.max_flows`
    /// wins (the tables cannot be resized without losing their counts): the
    /// new capacity applies after `netscope-agent --cleanup`.
    ///
    /// # Errors
    /// As [`Capture::load`], and [`LoadError::Pin`] when the directory is not
    /// on bpffs or holds something that is not this layout's.
    pub fn load_pinned(
        config: &CaptureConfig,
        pin: &PinDir,
    ) -> Result<(Capture, Pinned), LoadError> {
        Self::load_inner(config, Some(pin))
    }

    fn load_inner(
        config: &CaptureConfig,
        pin: Option<&PinDir>,
    ) -> Result<(Capture, Pinned), LoadError> {
        if config.max_flows == 0 || config.max_flows > MAX_MAX_FLOWS {
            return Err(LoadError::Config(format!(
                "max_flows must be between 1 and {MAX_MAX_FLOWS}, got {}",
                config.max_flows
            )));
        }
        if config.service_cidrs.len() > MAX_SERVICE_CIDRS {
            return Err(LoadError::Config(format!(
                "at most {MAX_SERVICE_CIDRS} Service CIDRs are supported, got {}",
                config.service_cidrs.len()
            )));
        }
        route_libbpf_logs();

        let mut storage = MaybeUninit::uninit();
        let mut open = NetscopeSkelBuilder::default()
            .open(&mut storage)
            .map_err(LoadError::Open)?;

        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| LoadError::Config("the BPF object has no .rodata section".into()))?;
        rodata.svc_cidr_count = config.service_cidrs.len() as u32;
        for (slot, net) in rodata.svc_cidrs.iter_mut().zip(&config.service_cidrs) {
            *slot = svc_cidr(net);
        }

        let ncpus = sys::possible_cpus().map_err(|source| LoadError::Setup {
            map: "flow_slots",
            source,
        })?;
        let mut max_flows = config.max_flows;
        let mut adopted = None;
        if let Some(pin) = pin {
            pin.prepare()?;
            let want = Meta::current(pin.layout(), config.max_flows, ncpus);
            if let Some(meta) = pin.check_existing(&want)? {
                if meta.max_flows != config.max_flows {
                    tracing::warn!(pinned = meta.max_flows, wanted = config.max_flows, dir = ?pin.dir(),
                        "the pinned flow tables keep their capacity; --max-flows applies after netscope-agent --cleanup");
                }
                max_flows = meta.max_flows;
                let mut fds = Vec::new();
                for name in PINNED_MAPS {
                    fds.push(pin.open_map(name)?);
                }
                adopted = Some(fds);
            }
        }
        // Two sides of max_flows slots plus an overflow slot each; an index
        // entry per slot, and room for what the LRU keeps on each CPU's local
        // free list (it takes nodes 128 at a time), so that a full side does
        // not already lose live index entries (a lost entry costs a second
        // slot, never a count).
        let index_entries =
            max_flows.saturating_add(u32::try_from(ncpus.saturating_mul(256)).unwrap_or(u32::MAX));
        let slot_entries = max_flows
            .checked_add(1)
            .and_then(|n| n.checked_mul(2))
            .ok_or_else(|| LoadError::Config(format!("max_flows {max_flows} is too large")))?;
        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
            rodata.slot_cap = max_flows;
        }
        open.maps
            .flow_slots
            .set_max_entries(slot_entries)
            .map_err(LoadError::Open)?;
        open.maps
            .flow_index
            .set_max_entries(index_entries)
            .map_err(LoadError::Open)?;
        if let Some(fds) = &adopted {
            let maps = [
                &mut open.maps.flow_slots,
                &mut open.maps.flow_index,
                &mut open.maps.slot_alloc,
                &mut open.maps.flow_cache,
                &mut open.maps.data_ctl,
                &mut open.maps.bss,
            ];
            // libbpf compares type, sizes, flags and capacity.
            for (map, fd) in maps.into_iter().zip(fds) {
                map.reuse_fd(fd.as_fd()).map_err(LoadError::Open)?;
            }
        }

        // NETSCOPE_VERIFIER_STATS=1 asks the verifier for its statistics
        // (BPF_LOG_STATS, 5.2+: "processed N insns (limit L) ..."), logged
        // at info for each program. Kernels before 5.16 have no
        // verified_insns in fdinfo; this is how their cost is read.
        if std::env::var_os("NETSCOPE_VERIFIER_STATS").is_some_and(|v| v == "1") {
            open.progs.netscope_from_pod.set_log_level(4);
            open.progs.netscope_to_pod.set_log_level(4);
        }
        let skel = open.load().map_err(LoadError::Load)?;
        let dup = |fd: BorrowedFd<'_>, map: &'static str| {
            fd.try_clone_to_owned()
                .map_err(|source| LoadError::Setup { map, source })
        };
        let progs = [
            dup(skel.progs.netscope_from_pod.as_fd(), "netscope_from_pod")?,
            dup(skel.progs.netscope_to_pod.as_fd(), "netscope_to_pod")?,
        ];
        let prog_ids = [
            sys::prog_id(progs[0].as_fd()).map_err(|source| LoadError::Setup {
                map: "netscope_from_pod",
                source,
            })?,
            sys::prog_id(progs[1].as_fd()).map_err(|source| LoadError::Setup {
                map: "netscope_to_pod",
                source,
            })?,
        ];
        let slots = dup(skel.maps.flow_slots.as_fd(), "flow_slots")?;
        let index = dup(skel.maps.flow_index.as_fd(), "flow_index")?;
        let alloc = dup(skel.maps.slot_alloc.as_fd(), "slot_alloc")?;
        let cache = dup(skel.maps.flow_cache.as_fd(), "flow_cache")?;
        let ctl = dup(skel.maps.data_ctl.as_fd(), "data_ctl")?;
        let bss = dup(skel.maps.bss.as_fd(), "bss")?;
        // The fds above keep every kernel object alive; the skeleton (and
        // the libbpf object behind it) is no longer needed.
        drop(skel);

        let layout = FlowMapLayout::new(ncpus);
        // The generation the program writes in now (an adopted data_ctl keeps it).
        let mut gen = [0u8; 4];
        sys::map_lookup(ctl.as_fd(), &0u32.to_ne_bytes(), &mut gen).map_err(|source| {
            LoadError::Setup {
                map: "data_ctl",
                source,
            }
        })?;
        let gen = u32::from_ne_bytes(gen);
        let slot_mem = sys::MappedArray::new(slots.as_fd()).map_err(|source| LoadError::Setup {
            map: "flow_slots",
            source,
        })?;
        let barrier = sys::RcuBarrier::new().map_err(|source| LoadError::Setup {
            map: "netscope_rcu",
            source,
        })?;
        // The lost counters are cumulative: an adopted bss starts from what
        // it holds (the previous agent reported up to about there).
        let mut bss_now = [0u8; 16];
        let lost_seen = match sys::map_lookup(bss.as_fd(), &0u32.to_ne_bytes(), &mut bss_now) {
            Ok(true) if adopted.is_some() => (
                u64::from_ne_bytes(bss_now[0..8].try_into().expect("8 bytes")),
                u64::from_ne_bytes(bss_now[8..16].try_into().expect("8 bytes")),
            ),
            _ => (0, 0),
        };
        let capture = Capture {
            progs,
            prog_ids,
            slots,
            slot_mem,
            index,
            alloc,
            cache,
            barrier,
            ctl,
            bss,
            layout,
            capacity: max_flows,
            state: Mutex::new(BufferState {
                gen,
                active: (gen & 1) as usize,
                lost_seen,
                epoch: (0, None),
            }),
            pin: pin.cloned(),
            meta: None,
        };
        let mut capture = capture;
        let how = match (pin, adopted.is_some()) {
            (Some(_), true) => Pinned::Adopted,
            (Some(pin), false) => {
                let fds = [
                    capture.slots.as_fd(),
                    capture.index.as_fd(),
                    capture.alloc.as_fd(),
                    capture.cache.as_fd(),
                    capture.ctl.as_fd(),
                    capture.bss.as_fd(),
                ];
                for (name, fd) in PINNED_MAPS.into_iter().zip(fds) {
                    pin.pin_map(name, fd)?;
                }
                // Last: a directory with meta is complete.
                pin.write_meta(&Meta::current(pin.layout(), max_flows, ncpus))?;
                Pinned::Created
            }
            (None, _) => Pinned::Created,
        };
        if let Some(pin) = pin {
            capture.meta = Some(pin.open_map(crate::pin::META)?);
        }
        if how == Pinned::Adopted {
            metrics::counter!(netscope::metrics::AGENT_PINNED_MAPS_ADOPTED_TOTAL).increment(1);
        }
        Ok((capture, how))
    }

    /// Kernel id of the pinned meta map (0 without pinning): the scope of
    /// the drain epochs.
    pub(crate) fn meta_id(&self) -> u64 {
        self.meta
            .as_ref()
            .and_then(|m| sys::map_info(m.as_fd()).ok())
            .map_or(0, |i| u64::from(i.id))
    }

    /// The two-phase drain's epoch and its uncommitted side, if any.
    pub(crate) fn load_epoch(&self, state: &BufferState) -> std::io::Result<(u64, Option<usize>)> {
        match &self.meta {
            Some(m) => crate::pin::read_epoch(m.as_fd()),
            None => Ok(state.epoch),
        }
    }

    /// Records the epoch and its uncommitted side (`None` once committed).
    pub(crate) fn store_epoch(
        &self,
        state: &mut BufferState,
        epoch: u64,
        staged: Option<usize>,
    ) -> std::io::Result<()> {
        state.epoch = (epoch, staged);
        match &self.meta {
            Some(m) => crate::pin::write_epoch(m.as_fd(), epoch, staged),
            None => Ok(()),
        }
    }

    /// The pin directory, when the maps are pinned.
    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pin.as_ref()
    }

    /// First entry of `side` in `flow_slots`.
    pub(crate) fn side_base(&self, side: usize) -> usize {
        side * (self.capacity as usize + 1)
    }

    /// Slots handed out on `side` (at most the capacity).
    pub(crate) fn slots_used(&self, side: usize) -> std::io::Result<usize> {
        let mut v = [0u8; crate::maps::SLOT_ALLOC_SIZE];
        sys::map_lookup(self.alloc.as_fd(), &(side as u32).to_ne_bytes(), &mut v)?;
        let next = u32::from_ne_bytes(v[4..8].try_into().expect("4 bytes"));
        Ok(next.min(self.capacity) as usize)
    }

    /// Empties `side`, which no program writes to: its used slots and its
    /// overflow slot, its allocator, its cache entries (both directions).
    /// The index keeps its entries: they are of an older generation now.
    pub(crate) fn clear_side(&self, side: usize) -> std::io::Result<()> {
        let used = self.slots_used(side)?;
        let base = self.side_base(side);
        self.slot_mem.zero(base, used)?;
        self.slot_mem.zero(base + self.capacity as usize, 1)?;
        sys::map_update(
            self.alloc.as_fd(),
            &(side as u32).to_ne_bytes(),
            &[0u8; crate::maps::SLOT_ALLOC_SIZE],
            0,
        )?;
        let zero = vec![0u8; self.layout.cache_stride()];
        for dir in 0..2u32 {
            sys::map_update(
                self.cache.as_fd(),
                &(side as u32 * 2 + dir).to_ne_bytes(),
                &zero,
                0,
            )?;
        }
        Ok(())
    }

    /// Makes the program count in generation `gen` (side `gen & 1`).
    pub(crate) fn set_generation(&self, state: &mut BufferState, gen: u32) -> std::io::Result<()> {
        sys::map_update(self.ctl.as_fd(), &0u32.to_ne_bytes(), &gen.to_ne_bytes(), 0)?;
        state.gen = gen;
        state.active = (gen & 1) as usize;
        Ok(())
    }

    /// The program for `direction`: attach `FromPod` to host-side ingress
    /// and `ToPod` to host-side egress.
    pub fn program(&self, direction: Direction) -> BorrowedFd<'_> {
        self.progs[direction.as_raw() as usize].as_fd()
    }

    /// Kernel id of the program for `direction` (as `bpftool prog` shows it).
    pub fn program_id(&self, direction: Direction) -> u32 {
        self.prog_ids[direction.as_raw() as usize]
    }

    /// Flow-table capacity (excluding the overflow slot).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}
