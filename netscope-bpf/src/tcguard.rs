//! Legacy TC: stay first, or say so.
//!
//! On kernels without TCX (below 6.6) netscope's program is a cls_bpf
//! filter at priority [`TC_PRIORITY`] 1, protocol
//! all. A CNI's loader (Cilium's `pkg/datapath/loader/tc.go`: priority 1,
//! handle 1, protocol all) that adds its filter later shares that
//! priority's classifier, and cls_bpf runs the newest filter of a priority
//! first: the CNI's verdict (`TC_ACT_OK`, `TC_ACT_REDIRECT`) ends the hook
//! and netscope never sees the packet. A filter at a priority number below
//! netscope's would do the same; 1 is the lowest a filter can ask for.
//!
//! A [`TcGuard`] watches rtnetlink filter events of one network namespace
//! and, for every hook netscope attached in legacy mode, checks after each
//! change that netscope's filter is still the first one the kernel runs
//! (chain 0, the dump's order). When a foreign filter is ahead it deletes
//! and re-adds netscope's own filter (same handle and priority), which puts
//! it at the head of its priority again; when netscope's filter is gone
//! (deleted by someone else, or the clsact qdisc with it) it attaches it
//! again. It never touches another filter. Every such event is counted,
//! logged at warn with the foreign filter's priority, handle and program
//! name, and the time the hook was blind (from the event's arrival to the
//! moment netscope is first again) is added up:
//! `netscope_agent_tc_preempted_total`, `netscope_agent_tc_reattached_total`,
//! `netscope_agent_tc_blind_microseconds_total`, and the gauge
//! `netscope_agent_tc_hooks_not_first` (hooks where netscope is not first
//! right now, e.g. after giving up on a tool that keeps pushing ahead).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::tc::TcHandle;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use netscope::Direction;

use crate::attach::{TC_HANDLE, TC_PRIORITY};
use crate::loader::Capture;
use crate::netlink::{tc_filters, TcFilterEntry};
use crate::sys::TcFilter;

/// `RTMGRP_TC`: the multicast group of qdisc and filter changes.
const RTMGRP_TC: u32 = 0x8;
/// How often every guarded hook is checked even without an event.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// More restores than this within [`FIGHT_WINDOW`] on one hook: another
/// tool is fighting for the head; stop and report instead of looping.
const MAX_RESTORES: usize = 10;
const FIGHT_WINDOW: Duration = Duration::from_secs(60);

/// What a guard has seen and done, summed over its hooks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TcGuardStats {
    /// Times a foreign filter was found ahead of netscope's.
    pub preempted: u64,
    /// Times netscope's filter was found gone and attached again.
    pub reattached: u64,
    /// Restores that did not put netscope first (or that failed).
    pub failed: u64,
    /// Seconds hooks were blind, from the event to netscope being first again.
    pub blind_seconds: f64,
    /// Hooks where netscope is not first right now.
    pub not_first: u64,
}

#[derive(Debug)]
struct Guarded {
    name: String,
    direction: Direction,
    /// Since when the hook is known not to run netscope first.
    blind_since: Option<Instant>,
    restores: VecDeque<Instant>,
    gave_up: bool,
}

#[derive(Debug, Default)]
struct State {
    hooks: HashMap<(u32, bool), Guarded>,
    stats: TcGuardStats,
}

#[derive(Debug)]
struct Shared {
    capture: Arc<Capture>,
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps netscope's legacy-TC filters first on the hooks of one network
/// namespace (the calling thread's at [`TcGuard::start`]). Dropping it or
/// [`TcGuard::shutdown`] stops its thread; it never detaches anything
/// itself.
#[derive(Debug)]
pub struct TcGuard {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl TcGuard {
    /// Subscribes to filter events in the calling thread's namespace and
    /// starts the watching thread there.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened or the thread not started.
    pub fn start(capture: Arc<Capture>) -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_TC))?;
        let _ = sock.set_rx_buf_sz(4 << 20);
        let shared = Arc::new(Shared {
            capture,
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        // A new thread shares the creating thread's network namespace.
        let thread = std::thread::Builder::new()
            .name("tc-guard".into())
            .spawn(move || run(&s, sock))?;
        Ok(TcGuard {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Guards netscope's filter on `ifindex`'s hook for `direction`, and
    /// checks it once now (a CNI's filter may already be ahead).
    pub fn watch(&self, ifindex: u32, name: &str, direction: Direction) {
        let ingress = direction == Direction::FromPod;
        if self.shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.shared.lock();
        st.hooks.insert(
            (ifindex, ingress),
            Guarded {
                name: name.to_string(),
                direction,
                blind_since: None,
                restores: VecDeque::new(),
                gave_up: false,
            },
        );
        check(&self.shared, &mut st, (ifindex, ingress), Instant::now());
    }

    /// Stops guarding a hook; call before detaching netscope's filter there.
    pub fn unwatch(&self, ifindex: u32, direction: Direction) {
        let ingress = direction == Direction::FromPod;
        let mut st = self.shared.lock();
        if let Some(g) = st.hooks.remove(&(ifindex, ingress)) {
            if let Some(since) = g.blind_since {
                add_blind(&mut st.stats, since.elapsed());
            }
        }
        publish_not_first(&mut st);
    }

    /// What the guard has counted so far.
    pub fn stats(&self) -> TcGuardStats {
        self.shared.lock().stats
    }

    /// Stops watching (and restoring) for good, and waits for the thread.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Drop for TcGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(shared: &Shared, sock: Socket) {
    let mut buf = vec![0u8; 1 << 16];
    let mut last_sweep = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        let now = Instant::now();
        let mut touched: Vec<(u32, bool)> = Vec::new();
        let mut all = last_sweep.elapsed() >= SWEEP_EVERY;
        if n > 0 {
            loop {
                match sock.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                    Ok(size) => hooks_of(&buf[..size], &mut touched),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        tracing::warn!("tc event socket overflowed; checking every guarded hook");
                        all = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading tc events failed; only the periodic check runs");
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                }
            }
        }
        if touched.is_empty() && !all {
            continue;
        }
        let mut st = shared.lock();
        let keys: Vec<(u32, bool)> = if all {
            last_sweep = now;
            st.hooks.keys().copied().collect()
        } else {
            touched.sort_unstable();
            touched.dedup();
            touched
        };
        for k in keys {
            if st.hooks.contains_key(&k) {
                check(shared, &mut st, k, now);
            }
        }
    }
}

/// The (ifindex, ingress) hooks that filter and qdisc events in `bytes` touch.
fn hooks_of(mut bytes: &[u8], out: &mut Vec<(u32, bool)>) {
    while !bytes.is_empty() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
            return;
        };
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewTrafficFilter(m) | RouteNetlinkMessage::DelTrafficFilter(m),
            ) => {
                let p = m.header.parent;
                if p.major == 0xffff && p.minor == TcHandle::MIN_INGRESS {
                    out.push((m.header.index as u32, true));
                } else if p.major == 0xffff && p.minor == TcHandle::MIN_EGRESS {
                    out.push((m.header.index as u32, false));
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelQueueDiscipline(m)) => {
                let i = m.header.index as u32;
                out.extend([(i, true), (i, false)]);
            }
            _ => {}
        }
        if len == 0 || len > bytes.len() {
            return;
        }
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
    }
}

fn ours(f: &TcFilterEntry) -> bool {
    f.chain == 0 && f.handle == TC_HANDLE && f.priority == TC_PRIORITY
}

/// Where netscope stands on a hook: `Ok(None)` first, `Ok(Some(ahead))`
/// behind `ahead`, `Err(())` absent.
fn position(filters: &[TcFilterEntry]) -> Result<Option<Vec<TcFilterEntry>>, ()> {
    let chain0: Vec<_> = filters.iter().filter(|f| f.chain == 0).cloned().collect();
    match chain0.iter().position(ours) {
        Some(0) => Ok(None),
        Some(i) => Ok(Some(chain0[..i].to_vec())),
        None => Err(()),
    }
}

fn publish_not_first(st: &mut State) {
    st.stats.not_first = st
        .hooks
        .values()
        .filter(|g| g.blind_since.is_some())
        .count() as u64;
    metrics::gauge!(netscope::metrics::AGENT_TC_HOOKS_NOT_FIRST).set(st.stats.not_first as f64);
}

/// Checks one hook and restores netscope's place when needed. `event` is
/// when the change that triggered the check arrived.
fn check(shared: &Shared, st: &mut State, key: (u32, bool), event: Instant) {
    let (ifindex, ingress) = key;
    let filters = match tc_filters(ifindex, ingress) {
        Ok(f) => f,
        // The interface is going away; its detach will unwatch it.
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return,
        Err(e) => {
            tracing::warn!(ifindex, ingress, error = %e, "reading the tc filters failed");
            return;
        }
    };
    let pos = position(&filters);
    let Some(g) = st.hooks.get_mut(&key) else {
        return;
    };
    let hook = if ingress { "ingress" } else { "egress" };
    let reattach = match &pos {
        Ok(None) => {
            g.gave_up = false;
            if let Some(since) = g.blind_since.take() {
                // Whoever was ahead left on its own.
                add_blind(&mut st.stats, since.elapsed());
                tracing::info!(iface = ?g.name, ifindex, hook, "netscope's tc filter is first again");
            }
            finish(st);
            return;
        }
        Ok(Some(_)) if g.gave_up => {
            finish(st);
            return;
        }
        Ok(Some(ahead)) => {
            for f in ahead {
                tracing::warn!(iface = ?g.name, ifindex, hook, foreign_priority = f.priority, foreign_handle = format_args!("{:#x}", f.handle), foreign_kind = ?f.kind, foreign_prog = ?f.prog_name, "another tc filter runs before netscope's: packets it ends are not counted; moving netscope's filter back to the head");
            }
            if g.blind_since.is_none() {
                st.stats.preempted += 1;
                metrics::counter!(netscope::metrics::AGENT_TC_PREEMPTED_TOTAL).increment(1);
            }
            false
        }
        Err(()) => {
            tracing::warn!(iface = ?g.name, ifindex, hook, "netscope's tc filter was removed by someone else; attaching it again");
            if g.blind_since.is_none() {
                st.stats.reattached += 1;
                metrics::counter!(netscope::metrics::AGENT_TC_REATTACHED_TOTAL).increment(1);
            }
            true
        }
    };
    g.blind_since.get_or_insert(event);
    let now = Instant::now();
    while g
        .restores
        .front()
        .is_some_and(|t| now.duration_since(*t) > FIGHT_WINDOW)
    {
        g.restores.pop_front();
    }
    if g.restores.len() >= MAX_RESTORES {
        if !g.gave_up {
            g.gave_up = true;
            tracing::error!(iface = ?g.name, ifindex, hook, restores = g.restores.len(), "another tool keeps putting its tc filter ahead of netscope's; giving up on this hook for now: its traffic is undercounted (netscope_agent_tc_hooks_not_first)");
        }
        finish(st);
        return;
    }
    g.restores.push_back(now);
    let filter = TcFilter {
        ifindex,
        ingress,
        handle: TC_HANDLE,
        priority: TC_PRIORITY,
    };
    let prog = shared.capture.program(g.direction);
    // Delete and add again: cls_bpf puts the newest filter of a priority
    // first. Netscope is blind behind the foreign filter already, so the
    // moment between the two calls adds nothing.
    let res = (|| {
        if reattach {
            filter.create_clsact()?;
        } else {
            match filter.detach() {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                _ => {}
            }
        }
        filter.attach(prog, false).map(drop)
    })();
    let first = res.is_ok()
        && matches!(
            tc_filters(ifindex, ingress).as_deref().map(position),
            Ok(Ok(None))
        );
    if first {
        if let Some(since) = g.blind_since.take() {
            let blind = since.elapsed();
            add_blind(&mut st.stats, blind);
            tracing::warn!(iface = ?g.name, ifindex, hook, blind_ms = blind.as_secs_f64() * 1e3, "netscope's tc filter is first again");
        }
    } else {
        st.stats.failed += 1;
        metrics::counter!(netscope::metrics::AGENT_TC_RESTORE_FAILURES_TOTAL).increment(1);
        match res {
            Err(e) => {
                tracing::error!(iface = ?g.name, ifindex, hook, error = %e, "could not put netscope's tc filter back at the head: this hook is blind")
            }
            Ok(()) => {
                tracing::error!(iface = ?g.name, ifindex, hook, "netscope's tc filter is still not first after re-adding it: this hook is blind")
            }
        }
    }
    finish(st);
}

fn finish(st: &mut State) {
    publish_not_first(st);
}

/// Adds a blind interval. Exported in microseconds: the metrics facade's
/// counters are integers, and most intervals are below a second.
fn add_blind(stats: &mut TcGuardStats, d: Duration) {
    stats.blind_seconds += d.as_secs_f64();
    metrics::counter!(netscope::metrics::AGENT_TC_BLIND_MICROSECONDS_TOTAL)
        .increment(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(priority: u32, handle: u32, chain: u32) -> TcFilterEntry {
        TcFilterEntry {
            priority,
            protocol: 3,
            handle,
            kind: "bpf".into(),
            prog_name: String::new(),
            chain,
        }
    }

    #[test]
    fn position_reads_the_run_order() {
        assert_eq!(position(&[f(1, TC_HANDLE, 0), f(1, 1, 0)]), Ok(None));
        assert_eq!(
            position(&[f(1, 1, 0), f(1, TC_HANDLE, 0), f(2, 7, 0)]),
            Ok(Some(vec![f(1, 1, 0)]))
        );
        // Filters of other chains run only when a filter jumps there.
        assert_eq!(position(&[f(1, 1, 5), f(1, TC_HANDLE, 0)]), Ok(None));
        // Netscope's handle at another priority is not netscope's filter.
        assert_eq!(position(&[f(1, 1, 0), f(2, TC_HANDLE, 0)]), Err(()));
        assert_eq!(position(&[]), Err(()));
    }
}
