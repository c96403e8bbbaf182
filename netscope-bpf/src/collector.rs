//! The exact, double-buffered collector.

use std::os::fd::AsFd;
use std::sync::Arc;

use netscope::collect::{CollectError, Collector, Drain, Staged};
use netscope::{Counters, FlowSample};

use crate::loader::Capture;
use crate::maps::{decode_key, RawKey, CACHE_SIZE, KEY_SIZE};
use crate::sys;

/// Entries fetched per batch syscall.
const BATCH: usize = 16384;

/// Drains the capture program's flow tables.
///
/// Each [`Collector::drain`] flips the side (flow table + per-CPU cache
/// entry) the program writes to, waits for every running program to finish
/// (an RCU grace period, through a map-in-map update), then reads and
/// empties the side that is now idle. No increment is lost or
/// returned twice, however much traffic flows meanwhile.
#[derive(Debug)]
pub struct BpfCollector {
    capture: Arc<Capture>,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl BpfCollector {
    /// A collector for `capture`. Several collectors may exist; their drains
    /// are serialised.
    pub fn new(capture: Arc<Capture>) -> Self {
        let slots = BATCH.min(capture.capacity as usize + 1);
        let stride = capture.layout.value_stride();
        BpfCollector {
            keys: vec![0; slots * KEY_SIZE],
            values: vec![0; slots * stride],
            capture,
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

const TABLE_NAMES: [&str; 2] = ["flows_a", "flows_b"];

impl BpfCollector {
    /// Deletes every entry of table `idle` (the committed stage).
    fn clear_table(&mut self, idle: usize) -> Result<(), CollectError> {
        let cap = Arc::clone(&self.capture);
        let stride = cap.layout.value_stride();
        let mut token = None;
        loop {
            let (_, done) = sys::map_lookup_and_delete_batch(
                cap.tables[idle].as_fd(),
                &mut token,
                &mut self.keys,
                KEY_SIZE,
                &mut self.values,
                stride,
            )
            .map_err(Self::map_err("lookup_and_delete_batch", TABLE_NAMES[idle]))?;
            if done {
                return Ok(());
            }
        }
    }
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
                let next = 1 - idle;
                // The standby table always holds the overflow slot before it goes live.
                cap.install_overflow_slot(next)
                    .map_err(Self::map_err("update", TABLE_NAMES[next]))?;
                // Flip the side programs write to ...
                sys::map_update(
                    cap.ctl.as_fd(),
                    &0u32.to_ne_bytes(),
                    &(next as u32).to_ne_bytes(),
                    0,
                )
                .map_err(Self::map_err("update", "data_ctl"))?;
                // ... and wait for programs that may still use the old side: an
                // update of a map-in-map returns only after an RCU grace period
                // (kernel/bpf/syscall.c, maybe_wait_bpf_programs). The update itself
                // changes nothing: it puts the same table back in its slot.
                let idle_fd = std::os::fd::AsRawFd::as_raw_fd(&cap.tables[idle]);
                sys::map_update(
                    cap.flow_tables.as_fd(),
                    &(idle as u32).to_ne_bytes(),
                    &idle_fd.to_ne_bytes(),
                    0,
                )
                .map_err(Self::map_err("update", "flow_tables"))?;
                state.active = next;
                epoch += 1;
                cap.store_epoch(&mut state, epoch, Some(idle))
                    .map_err(Self::map_err("update", "meta"))?;
                idle
            }
        };

        // The per-CPU cache entries of the idle side: at most one flow per CPU.
        let cstride = cap.layout.cache_stride();
        let mut cache = vec![0u8; cstride];
        sys::map_lookup(cap.cache.as_fd(), &(idle as u32).to_ne_bytes(), &mut cache)
            .map_err(Self::map_err("lookup", "flow_cache"))?;
        let mut cached: Vec<([u8; KEY_SIZE], Counters)> = Vec::new();
        for cpu in cache.chunks_exact(CACHE_SIZE) {
            let counters = cap.layout.fold(&cpu[KEY_SIZE..]);
            if cpu[32] == 0 || counters.is_zero() {
                continue;
            }
            let key: [u8; KEY_SIZE] = cpu[..KEY_SIZE].try_into().expect("key size");
            match cached.iter_mut().find(|(k, _)| *k == key) {
                Some((_, c)) => *c += counters,
                None => cached.push((key, counters)),
            }
        }

        let stride = cap.layout.value_stride();
        let mut drain = Drain {
            capacity: cap.capacity as usize,
            ..Drain::default()
        };
        let mut token = None;
        let mut invalid = 0u64;
        loop {
            let (n, done) = sys::map_lookup_batch(
                cap.tables[idle].as_fd(),
                &mut token,
                &mut self.keys,
                KEY_SIZE,
                &mut self.values,
                stride,
            )
            .map_err(Self::map_err("lookup_batch", TABLE_NAMES[idle]))?;
            drain.samples.reserve(n);
            for i in 0..n {
                let key = &self.keys[i * KEY_SIZE..(i + 1) * KEY_SIZE];
                let mut counters = cap.layout.fold(&self.values[i * stride..(i + 1) * stride]);
                // Merge a cached entry of the same flow into this one.
                if !cached.is_empty() {
                    if let Some(pos) = cached.iter().position(|(k, _)| k.as_slice() == key) {
                        counters += cached.swap_remove(pos).1;
                    }
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
                "flow table held keys with an unknown family or direction; counted as overflow"
            );
        }
        // Bytes that found not even the overflow slot (should never happen).
        let mut bss = [0u8; 16];
        if sys::map_lookup(cap.bss.as_fd(), &0u32.to_ne_bytes(), &mut bss)
            .map_err(Self::map_err("lookup", "bss"))?
        {
            let lost = (
                u64::from_ne_bytes(bss[0..8].try_into().expect("8 bytes")),
                u64::from_ne_bytes(bss[8..16].try_into().expect("8 bytes")),
            );
            let delta = Counters::new(
                lost.0.wrapping_sub(state.lost_seen.0),
                lost.1.wrapping_sub(state.lost_seen.1),
            );
            if !delta.is_zero() {
                tracing::error!(
                    bytes = delta.bytes,
                    packets = delta.packets,
                    "bytes found no flow slot and no overflow slot; counted as overflow"
                );
                drain.overflow += delta;
            }
            state.lost_seen = lost;
        }
        // Fill of the table just drained: how close the interval came to
        // overflowing (1.0 = full; then see the overflow counters).
        metrics::gauge!(netscope::metrics::AGENT_FLOW_TABLE_FILL_RATIO)
            .set(drain.samples.len() as f64 / f64::from(cap.capacity.max(1)));
        metrics::gauge!(netscope::metrics::AGENT_FLOW_TABLE_CAPACITY).set(f64::from(cap.capacity));
        Ok(Staged {
            drain,
            epoch,
            scope: cap.meta_id(),
        })
    }

    /// Empties the staged side (table, cache entries; the overflow slot is
    /// put back) and records that the epoch is committed.
    fn commit(&mut self, epoch: u64) -> Result<(), CollectError> {
        let cap = Arc::clone(&self.capture);
        let mut state = cap.state.lock().unwrap_or_else(|p| p.into_inner());
        let (current, staged) = cap
            .load_epoch(&state)
            .map_err(Self::map_err("lookup", "meta"))?;
        let Some(idle) = staged.filter(|_| current == epoch) else {
            return Ok(());
        };
        self.clear_table(idle)?;
        let zero = vec![0u8; cap.layout.cache_stride()];
        sys::map_update(cap.cache.as_fd(), &(idle as u32).to_ne_bytes(), &zero, 0)
            .map_err(Self::map_err("update", "flow_cache"))?;
        // The overflow slot was cleared with the rest; put it back so the
        // table is ready for its next turn.
        cap.install_overflow_slot(idle)
            .map_err(Self::map_err("update", TABLE_NAMES[idle]))?;
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
#[derive(Debug)]
pub struct UpgradeCollector {
    new: BpfCollector,
    old: Vec<(BpfCollector, std::path::PathBuf)>,
    /// Sides of the current old layout drained and committed.
    empty_commits: u8,
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// Which collector the last stage came from (true: the first old one).
    staged_old: bool,
}

impl UpgradeCollector {
    /// `old`: the captures of older layouts (adopted from their pins) and
    /// their directories.
    pub fn new(
        new: Arc<Capture>,
        old: Vec<(Arc<Capture>, std::path::PathBuf)>,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        UpgradeCollector {
            new: BpfCollector::new(new),
            old: old
                .into_iter()
                .map(|(c, d)| (BpfCollector::new(c), d))
                .collect(),
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
