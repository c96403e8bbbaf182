//! The exact, double-buffered collector.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;

use netscope::collect::{CollectError, Collector, Drain, Staged};
use netscope::{Counters, FlowSample};

use crate::loader::Capture;
use crate::maps::{counters_at, decode_key, RawKey, CACHE_ENTRY_SIZE, KEY_SIZE, SLOT_SIZE};
use crate::sys;

/// Drains the capture program's flow slots.
///
/// Each [`Collector::stage`] flips the side (half of the slot array, the
/// per-CPU cache entries) the program counts into by moving to the next
/// generation, waits for every running program to finish (an RCU grace
/// period), then reads the side that is now idle: its slots straight from
/// the mapped array, its cache entries with one lookup per direction.
/// [`Collector::commit`] empties it. No increment is lost or returned
/// twice, however much traffic flows meanwhile.
#[derive(Debug)]
pub struct BpfCollector {
    capture: Arc<Capture>,
    buf: Vec<u8>,
}

impl BpfCollector {
    /// A collector for `capture`. Several collectors may exist; their drains
    /// are serialised.
    pub fn new(capture: Arc<Capture>) -> Self {
        BpfCollector {
            capture,
            buf: Vec::new(),
        }
    }

    fn map_err(op: &'static str, map: &'static str) -> impl FnOnce(std::io::Error) -> CollectError {
        move |source| CollectError::Map {
            op,
            map: map.to_string(),
            source,
        }
    }
}

/// Flows read from one side, summed by key: a flow can hold two slots (its
/// index entry evicted by the LRU, or two CPUs handing out a slot for it at
/// once) and a cache entry per CPU and direction.
pub(crate) struct SideReader {
    flows: HashMap<[u8; KEY_SIZE], Counters>,
    overflow: Counters,
    /// Slots the side had handed out.
    pub(crate) used: usize,
}

impl SideReader {
    fn add(&mut self, key: &[u8], counters: Counters) {
        if counters.is_zero() {
            return;
        }
        let key: [u8; KEY_SIZE] = key.try_into().expect("key size");
        *self.flows.entry(key).or_default() += counters;
    }

    /// Reads `side` of `cap`: its used slots, its overflow slot, its cache
    /// entries.
    pub(crate) fn read_side(
        cap: &Capture,
        side: usize,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<Self> {
        let used = cap.slots_used(side)?;
        let base = cap.side_base(side);
        let mut r = SideReader {
            flows: HashMap::with_capacity(used),
            overflow: Counters::default(),
            used,
        };
        cap.slot_mem.read(base, used, buf)?;
        for slot in buf.chunks_exact(SLOT_SIZE) {
            r.add(&slot[..KEY_SIZE], counters_at(slot, KEY_SIZE));
        }
        cap.slot_mem.read(base + cap.capacity as usize, 1, buf)?;
        r.overflow += counters_at(buf, KEY_SIZE);
        let mut cache = vec![0u8; cap.layout.cache_stride()];
        for dir in 0..2u32 {
            sys::map_lookup(
                cap.cache.as_fd(),
                &(side as u32 * 2 + dir).to_ne_bytes(),
                &mut cache,
            )?;
            for cpu in cache.chunks_exact(CACHE_ENTRY_SIZE) {
                if cpu[32] != 0 {
                    r.add(&cpu[..KEY_SIZE], counters_at(cpu, KEY_SIZE + 8));
                }
            }
        }
        Ok(r)
    }

    /// The drain: flows decoded, keys the program should never write
    /// counted as overflow.
    pub(crate) fn into_drain(self, capacity: u32) -> (Drain, u64) {
        let mut drain = Drain {
            capacity: capacity as usize,
            overflow: self.overflow,
            samples: Vec::with_capacity(self.flows.len()),
        };
        let mut invalid = 0;
        for (key, counters) in self.flows {
            match decode_key(&key) {
                RawKey::Flow(key) => drain.samples.push(FlowSample { key, counters }),
                RawKey::Overflow | RawKey::Invalid => {
                    invalid += 1;
                    drain.overflow += counters;
                }
            }
        }
        (drain, invalid)
    }
}

/// What the program's cumulative "lost" counters (the first 16 bytes of
/// `bss`: bytes, packets) gained since `seen`, which is moved on to them.
pub(crate) fn read_lost(
    bss: std::os::fd::BorrowedFd<'_>,
    seen: &mut (u64, u64),
) -> std::io::Result<Counters> {
    let mut v = [0u8; 16];
    if !sys::map_lookup(bss, &0u32.to_ne_bytes(), &mut v)? {
        return Ok(Counters::default());
    }
    let now = (
        u64::from_ne_bytes(v[0..8].try_into().expect("8 bytes")),
        u64::from_ne_bytes(v[8..16].try_into().expect("8 bytes")),
    );
    let delta = Counters::new(now.0.wrapping_sub(seen.0), now.1.wrapping_sub(seen.1));
    *seen = now;
    Ok(delta)
}

impl Collector for BpfCollector {
    fn drain(&mut self) -> Result<Drain, CollectError> {
        let staged = self.stage()?;
        self.commit(staged.epoch)?;
        Ok(staged.drain)
    }

    /// Flips the side the program writes to (unless an earlier stage, of
    /// this process or of the agent before it, is still uncommitted: then
    /// that side again), waits out running programs, and reads the idle
    /// side without clearing it. The epoch and the staged side live in the
    /// pinned meta map when the maps are pinned, so a crash at any step
    /// leaves the next agent knowing what was staged.
    fn stage(&mut self) -> Result<Staged, CollectError> {
        let cap = Arc::clone(&self.capture);
        let mut state = cap.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut epoch, staged) = cap
            .load_epoch(&state)
            .map_err(Self::map_err("lookup", "meta"))?;
        let idle = match staged {
            Some(side) => side,
            None => {
                let idle = state.active;
                // Flip: the next generation counts into the other side ...
                let next = state.gen.wrapping_add(1);
                cap.set_generation(&mut state, next)
                    .map_err(Self::map_err("update", "data_ctl"))?;
                // ... and wait for programs that may still use the old one.
                cap.barrier
                    .wait()
                    .map_err(Self::map_err("update", "netscope_rcu"))?;
                epoch += 1;
                cap.store_epoch(&mut state, epoch, Some(idle))
                    .map_err(Self::map_err("update", "meta"))?;
                idle
            }
        };

        let reader = SideReader::read_side(&cap, idle, &mut self.buf)
            .map_err(Self::map_err("read", "flow_slots"))?;
        let used = reader.used;
        let (mut drain, invalid) = reader.into_drain(cap.capacity);
        if invalid > 0 {
            tracing::error!(
                entries = invalid,
                "flow slots held keys with an unknown family or direction; counted as overflow"
            );
        }
        // Bytes that found no slot (should never happen).
        let lost = read_lost(cap.bss.as_fd(), &mut state.lost_seen)
            .map_err(Self::map_err("lookup", "bss"))?;
        if !lost.is_zero() {
            tracing::error!(
                bytes = lost.bytes,
                packets = lost.packets,
                "bytes found no flow slot; counted as overflow"
            );
            drain.overflow += lost;
        }
        // Fill of the side just drained: how close the interval came to
        // overflowing (1.0 = full; then see the overflow counters).
        metrics::gauge!(netscope::metrics::AGENT_FLOW_TABLE_FILL_RATIO)
            .set(used as f64 / f64::from(cap.capacity.max(1)));
        metrics::gauge!(netscope::metrics::AGENT_FLOW_TABLE_CAPACITY).set(f64::from(cap.capacity));
        Ok(Staged {
            drain,
            epoch,
            scope: cap.meta_id(),
        })
    }

    /// Empties the staged side (slots, allocator, cache entries) and records
    /// that the epoch is committed.
    fn commit(&mut self, epoch: u64) -> Result<(), CollectError> {
        let cap = Arc::clone(&self.capture);
        let mut state = cap.state.lock().unwrap_or_else(|p| p.into_inner());
        let (current, staged) = cap
            .load_epoch(&state)
            .map_err(Self::map_err("lookup", "meta"))?;
        let Some(idle) = staged.filter(|_| current == epoch) else {
            return Ok(());
        };
        cap.clear_side(idle)
            .map_err(Self::map_err("clear", "flow_slots"))?;
        cap.store_epoch(&mut state, epoch, None)
            .map_err(Self::map_err("update", "meta"))?;
        Ok(())
    }
}

/// The collector of an agent that took over from an agent of another pinned
/// layout (an upgrade): it swapped first (its program, writing into its own
/// maps, now runs behind the pinned links), then drains the old maps, which
/// nothing writes to any more, completely (both sides, through the same
/// two-phase stage and commit), then removes the old layout's directory.
/// Until `ready` (the initial link dump applied: every link swapped), and
/// after the old maps are gone, it is the plain collector of the new maps.
pub struct UpgradeCollector {
    new: BpfCollector,
    old: Vec<(Box<dyn Collector>, std::path::PathBuf)>,
    /// Sides of the current old layout drained and committed.
    empty_commits: u8,
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// Which collector the last stage came from (true: the first old one).
    staged_old: bool,
}

impl std::fmt::Debug for UpgradeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeCollector")
            .field("new", &self.new)
            .field("old", &self.old.iter().map(|(_, d)| d).collect::<Vec<_>>())
            .field("empty_commits", &self.empty_commits)
            .field("staged_old", &self.staged_old)
            .finish_non_exhaustive()
    }
}

impl UpgradeCollector {
    /// `old`: collectors of the maps older layouts pinned (a
    /// [`V1Collector`](crate::legacy_v1::V1Collector) for layout 1, a
    /// [`BpfCollector`] of the adopted maps for a layout of this build's
    /// format) and their directories.
    pub fn new(
        new: Arc<Capture>,
        old: Vec<(Box<dyn Collector>, std::path::PathBuf)>,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        UpgradeCollector {
            new: BpfCollector::new(new),
            old,
            empty_commits: 0,
            ready,
            staged_old: false,
        }
    }
}

impl Collector for UpgradeCollector {
    fn drain(&mut self) -> Result<Drain, CollectError> {
        let staged = self.stage()?;
        self.commit(staged.epoch)?;
        Ok(staged.drain)
    }

    fn stage(&mut self) -> Result<Staged, CollectError> {
        self.staged_old =
            !self.old.is_empty() && self.ready.load(std::sync::atomic::Ordering::Acquire);
        match self.old.first_mut() {
            Some((old, _)) if self.staged_old => old.stage(),
            _ => self.new.stage(),
        }
    }

    fn commit(&mut self, epoch: u64) -> Result<(), CollectError> {
        if !self.staged_old {
            return self.new.commit(epoch);
        }
        let Some((old, dir)) = self.old.first_mut() else {
            return Ok(());
        };
        // Nothing writes to the old maps any more: two stage/commit rounds
        // cover both sides (the first takes a stage the old agent left
        // uncommitted, or flips; the second flips to the other side).
        old.commit(epoch)?;
        self.empty_commits += 1;
        if self.empty_commits >= 2 {
            let dir = dir.clone();
            self.old.remove(0);
            self.empty_commits = 0;
            match crate::pin::remove_layout(&dir) {
                Ok(done) => {
                    tracing::info!(dir = ?dir, maps = done.maps.len(), links = done.links.len(), "the older layout's maps are drained (both sides) and removed")
                }
                Err(e) => {
                    tracing::error!(dir = ?dir, error = %e, "removing the older layout's pins failed")
                }
            }
        }
        Ok(())
    }
}
