//! TCX and legacy-TC attachers.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use netscope::{AttachError, AttachMode, Attacher, Attachment, Direction, Interface};

use crate::loader::Capture;
use crate::sys::{self, TcFilter};
use crate::tcguard::{TcGuard, TcGuardStats};

/// Handle of netscope's legacy-TC filters (`tc filter show` prints 0x4e53, "NS").
pub const TC_HANDLE: u32 = 0x4e53;
/// Priority of netscope's legacy-TC filters. 1 is the first slot, so netscope
/// sees packets before filters of higher priority numbers.
pub const TC_PRIORITY: u32 = 1;
/// Prefix of the kernel names of netscope's programs (`netscope_from_p`,
/// `netscope_to_pod`: the kernel keeps 15 bytes).
pub const PROGRAM_NAME_PREFIX: &str = "netscope_";

fn tcx_attach_type(direction: Direction) -> libbpf_sys::bpf_attach_type {
    match direction {
        Direction::FromPod => libbpf_sys::BPF_TCX_INGRESS,
        Direction::ToPod => libbpf_sys::BPF_TCX_EGRESS,
    }
}

/// A TCX link. Closing the fd removes exactly this link, unless it is
/// pinned (`pin`): then it stays until [`Attachment::detach`] or
/// `netscope-agent --cleanup`.
#[derive(Debug)]
struct TcxAttachment {
    link: Option<OwnedFd>,
    pin: Option<PathBuf>,
    iface: Interface,
    direction: Direction,
}

impl Attachment for TcxAttachment {
    fn interface(&self) -> &Interface {
        &self.iface
    }
    fn direction(&self) -> Direction {
        self.direction
    }
    fn mode(&self) -> AttachMode {
        AttachMode::Tcx
    }
    fn detach(mut self: Box<Self>) -> Result<(), AttachError> {
        let link = self.link.take().expect("a live attachment has its link");
        let res = sys::link_detach(link.as_fd());
        drop(link);
        if let Some(p) = self.pin.take() {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(AttachError::Pin {
                        iface: self.iface.clone(),
                        direction: self.direction,
                        path: p,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        match res {
            // ENOLINK: the interface is gone and took the link with it.
            Err(e) if e.raw_os_error() != Some(libc::ENOLINK) => Err(AttachError::Detach {
                iface: self.iface.clone(),
                direction: self.direction,
                mode: AttachMode::Tcx,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// A legacy cls_bpf filter, identified by netscope's handle and priority.
#[derive(Debug)]
struct TcAttachment {
    filter: Option<TcFilter>,
    /// Keeps the filter first; told before the filter is removed.
    guard: Option<Arc<TcGuard>>,
    /// Pinning on: dropping leaves the filter counting for the next agent
    /// (only `detach` removes it).
    persist: bool,
    netns: u64,
    iface: Interface,
    direction: Direction,
}

impl TcAttachment {
    fn remove(&mut self) -> io::Result<()> {
        let Some(filter) = self.filter.take() else {
            return Ok(());
        };
        if let Some(g) = self.guard.take() {
            g.unwatch(self.iface.ifindex, self.direction);
        }
        // Netlink works on the calling thread's namespace: refuse to touch
        // an interface with the same index somewhere else.
        if sys::current_netns()? != self.netns {
            return Err(io::Error::other(
                "detach called from another network namespace than the attach",
            ));
        }
        match filter.detach() {
            // The interface (and its filters) is already gone.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(()),
            other => other,
        }
    }
}

impl Attachment for TcAttachment {
    fn interface(&self) -> &Interface {
        &self.iface
    }
    fn direction(&self) -> Direction {
        self.direction
    }
    fn mode(&self) -> AttachMode {
        AttachMode::Tc
    }
    fn detach(mut self: Box<Self>) -> Result<(), AttachError> {
        self.remove().map_err(|source| AttachError::Detach {
            iface: self.iface.clone(),
            direction: self.direction,
            mode: AttachMode::Tc,
            source,
        })
    }
}

impl Drop for TcAttachment {
    fn drop(&mut self) {
        if self.persist {
            if let (Some(g), Some(_)) = (self.guard.take(), &self.filter) {
                g.unwatch(self.iface.ifindex, self.direction);
            }
            return;
        }
        if let Err(e) = self.remove() {
            tracing::warn!(iface = %self.iface.name, ifindex = self.iface.ifindex, direction = %self.direction, mode = "tc", error = %e, "detach failed");
        }
    }
}

const RESOLVED_UNKNOWN: u8 = 0;
const RESOLVED_TCX: u8 = 1;
const RESOLVED_TC: u8 = 2;

/// Attaches the capture program in TCX, legacy-TC or auto mode.
///
/// The same loaded program serves every interface: `FromPod` goes on the
/// host-side ingress hook, `ToPod` on egress. Calls act on the calling
/// thread's network namespace.
#[derive(Debug)]
pub struct BpfAttacher {
    capture: Arc<Capture>,
    mode: AttachMode,
    /// For [`AttachMode::Auto`]: what the kernel accepted first.
    resolved: AtomicU8,
    /// Legacy TC: one guard per network namespace (by inode) that keeps
    /// netscope's filters first ([`TcGuard`]).
    guards: Mutex<HashMap<u64, Arc<TcGuard>>>,
}

impl BpfAttacher {
    /// An attacher for `capture` in `mode`.
    pub fn new(capture: Arc<Capture>, mode: AttachMode) -> Self {
        BpfAttacher {
            capture,
            mode,
            resolved: AtomicU8::new(RESOLVED_UNKNOWN),
            guards: Mutex::new(HashMap::new()),
        }
    }

    /// What the legacy-TC guards have seen and done, summed over network
    /// namespaces (all zero in TCX mode).
    pub fn tc_guard_stats(&self) -> TcGuardStats {
        let guards = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        let mut sum = TcGuardStats::default();
        for g in guards.values() {
            let s = g.stats();
            sum.preempted += s.preempted;
            sum.reattached += s.reattached;
            sum.failed += s.failed;
            sum.blind_seconds += s.blind_seconds;
            sum.not_first += s.not_first;
        }
        sum
    }

    /// The guard of the calling thread's namespace, started on first use.
    fn guard(&self, netns: u64) -> io::Result<Arc<TcGuard>> {
        let mut guards = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = guards.get(&netns) {
            return Ok(g.clone());
        }
        let g = Arc::new(TcGuard::start(self.capture.clone())?);
        guards.insert(netns, g.clone());
        Ok(g)
    }

    /// The mode auto mode settled on, once it has attached something.
    pub fn effective_mode(&self) -> Option<AttachMode> {
        match self.mode {
            AttachMode::Auto => match self.resolved.load(Ordering::Relaxed) {
                RESOLVED_TCX => Some(AttachMode::Tcx),
                RESOLVED_TC => Some(AttachMode::Tc),
                _ => None,
            },
            m => Some(m),
        }
    }

    fn attach_tcx(
        &self,
        iface: &Interface,
        direction: Direction,
    ) -> io::Result<Box<dyn Attachment>> {
        let found = self.find_tcx(iface, direction)?;
        self.finish_tcx(iface, direction, found)
    }

    /// The pinned link of `iface`/`direction` to adopt, if any (of this
    /// layout, or moved over from another one in an upgrade).
    fn find_tcx(&self, iface: &Interface, direction: Direction) -> io::Result<Option<OwnedFd>> {
        let Some(pin) = self.capture.pin_dir() else {
            return Ok(None);
        };
        let path = pin.link_path(iface.ifindex, direction);
        let pin_err = |e: crate::pin::PinError| io::Error::other(e);
        if let Some(fd) =
            crate::pin::adopt_link(&path, iface.ifindex, direction).map_err(pin_err)?
        {
            return Ok(Some(fd));
        }
        for (_, old_dir) in pin.other_layouts() {
            let old = crate::pin::link_path(&old_dir, iface.ifindex, direction);
            if let Some(fd) =
                crate::pin::adopt_link(&old, iface.ifindex, direction).map_err(pin_err)?
            {
                sys::obj_pin(fd.as_fd(), &path)?;
                std::fs::remove_file(&old)?;
                return Ok(Some(fd));
            }
        }
        Ok(None)
    }

    /// Puts the program behind `found` (no gap) or creates the link, and
    /// pins it when pinning is on.
    fn finish_tcx(
        &self,
        iface: &Interface,
        direction: Direction,
        found: Option<OwnedFd>,
    ) -> io::Result<Box<dyn Attachment>> {
        let prog = self.capture.program(direction);
        let path = self
            .capture
            .pin_dir()
            .map(|p| p.link_path(iface.ifindex, direction));
        let link = match found {
            Some(fd) => {
                sys::link_update(fd.as_fd(), prog)?;
                metrics::counter!(netscope::metrics::AGENT_PINNED_LINKS_ADOPTED_TOTAL).increment(1);
                tracing::info!(iface = ?iface.name, ifindex = iface.ifindex, direction = %direction, "adopted a pinned TCX link: program replaced in place");
                fd
            }
            None => {
                let fd = sys::tcx_link_create(prog, iface.ifindex, tcx_attach_type(direction))?;
                if let Some(path) = &path {
                    if let Err(e) = sys::obj_pin(fd.as_fd(), path) {
                        let _ = sys::link_detach(fd.as_fd());
                        return Err(io::Error::new(
                            e.kind(),
                            format!("pinning the TCX link at {}: {e}", path.display()),
                        ));
                    }
                }
                fd
            }
        };
        Ok(Box::new(TcxAttachment {
            link: Some(link),
            pin: path,
            iface: iface.clone(),
            direction,
        }))
    }

    /// TCX, both directions as one step: every lookup first, then the two
    /// attaches back to back; both or neither.
    fn attach_tcx_both(&self, iface: &Interface) -> io::Result<[Box<dyn Attachment>; 2]> {
        let found_in = self.find_tcx(iface, Direction::FromPod)?;
        let found_eg = self.find_tcx(iface, Direction::ToPod)?;
        let a = self.finish_tcx(iface, Direction::FromPod, found_in)?;
        match self.finish_tcx(iface, Direction::ToPod, found_eg) {
            Ok(b) => Ok([a, b]),
            Err(e) => {
                let _ = a.detach();
                Err(e)
            }
        }
    }

    fn attach_tc(
        &self,
        iface: &Interface,
        direction: Direction,
    ) -> io::Result<Box<dyn Attachment>> {
        let netns = sys::current_netns()?;
        let prog = self.capture.program(direction);
        let filter = TcFilter {
            ifindex: iface.ifindex,
            ingress: direction == Direction::FromPod,
            handle: TC_HANDLE,
            priority: TC_PRIORITY,
        };
        // Creates the clsact qdisc unless there is one; never deletes it later.
        filter.create_clsact()?;
        // A filter already at our handle and priority: replace it only if it
        // is netscope's (left by a killed agent), never someone else's.
        let existing = filter.query()?;
        if let Some(id) = existing {
            // By id needs CAP_SYS_ADMIN; the filter dump does not.
            let name = match sys::prog_name_by_id(id) {
                Ok(n) => n,
                Err(_) => crate::netlink::tc_filter_prog_name(
                    iface.ifindex,
                    filter.ingress,
                    TC_HANDLE,
                    TC_PRIORITY,
                )?
                .unwrap_or_default(),
            };
            if !name.starts_with(PROGRAM_NAME_PREFIX) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("handle {TC_HANDLE:#x} priority {TC_PRIORITY} holds another tool's program (id {id}, name {name:?}); not replacing it"),
                ));
            }
            if id != self.capture.program_id(direction) {
                tracing::info!(iface = %iface.name, ifindex = iface.ifindex, direction = %direction, old_prog_id = id, "replacing a stale netscope filter left by an earlier agent");
            }
        }
        filter.attach(prog, existing.is_some())?;
        // Without the guard the filter still counts until a CNI's filter
        // lands ahead of it: attach, and say so.
        let guard = match self.guard(netns) {
            Ok(g) => {
                g.watch(iface.ifindex, &iface.name, direction);
                Some(g)
            }
            Err(e) => {
                tracing::error!(iface = %iface.name, ifindex = iface.ifindex, direction = %direction, error = %e, "cannot watch tc filter events: a CNI filter added ahead of netscope's would go unnoticed");
                None
            }
        };
        Ok(Box::new(TcAttachment {
            filter: Some(filter),
            guard,
            persist: self.capture.pin_dir().is_some(),
            netns,
            iface: iface.clone(),
            direction,
        }))
    }
}

impl Drop for BpfAttacher {
    /// The guards go with their attacher (as with a killed agent): nothing
    /// re-adds a filter after this.
    fn drop(&mut self) {
        let guards = self.guards.get_mut().unwrap_or_else(|p| p.into_inner());
        for g in guards.values() {
            g.shutdown();
        }
    }
}

/// True for the errors a kernel without TCX gives for a TCX attach.
fn tcx_unsupported(e: &io::Error) -> bool {
    // EINVAL: unknown attach type (checked on 6.1); EOPNOTSUPP/ENOTSUPP(524):
    // not supported for this program or device.
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(524)
    )
}

impl Attacher for BpfAttacher {
    fn attach(
        &self,
        iface: &Interface,
        direction: Direction,
    ) -> Result<Box<dyn Attachment>, AttachError> {
        let err = |mode, source| AttachError::Attach {
            iface: iface.clone(),
            direction,
            mode,
            source,
        };
        match self.mode {
            AttachMode::Tcx => self
                .attach_tcx(iface, direction)
                .map_err(|e| err(AttachMode::Tcx, e)),
            AttachMode::Tc => self
                .attach_tc(iface, direction)
                .map_err(|e| err(AttachMode::Tc, e)),
            AttachMode::Auto => {
                if self.resolved.load(Ordering::Relaxed) != RESOLVED_TC {
                    match self.attach_tcx(iface, direction) {
                        Ok(a) => {
                            self.resolved.store(RESOLVED_TCX, Ordering::Relaxed);
                            return Ok(a);
                        }
                        Err(e)
                            if tcx_unsupported(&e)
                                && self.resolved.load(Ordering::Relaxed) == RESOLVED_UNKNOWN =>
                        {
                            tracing::warn!(iface = %iface.name, ifindex = iface.ifindex, direction = %direction, error = %e, "TCX attach refused; this kernel has no TCX (needs 6.6+): falling back to legacy TC for all interfaces");
                            self.resolved.store(RESOLVED_TC, Ordering::Relaxed);
                        }
                        Err(e) => return Err(err(AttachMode::Tcx, e)),
                    }
                }
                self.attach_tc(iface, direction)
                    .map_err(|e| err(AttachMode::Tc, e))
            }
        }
    }

    fn attach_both(&self, iface: &Interface) -> Result<[Box<dyn Attachment>; 2], AttachError> {
        let tcx = match self.mode {
            AttachMode::Tcx => true,
            AttachMode::Tc => false,
            AttachMode::Auto => self.resolved.load(Ordering::Relaxed) == RESOLVED_TCX,
        };
        if !tcx {
            // Legacy TC (or auto mode before it settled): one direction
            // after the other, both or neither.
            let a = self.attach(iface, Direction::FromPod)?;
            return match self.attach(iface, Direction::ToPod) {
                Ok(b) => Ok([a, b]),
                Err(e) => {
                    let _ = a.detach();
                    Err(e)
                }
            };
        }
        self.attach_tcx_both(iface)
            .map_err(|source| AttachError::Attach {
                iface: iface.clone(),
                direction: Direction::FromPod,
                mode: AttachMode::Tcx,
                source,
            })
    }

    fn mode(&self) -> AttachMode {
        self.mode
    }
}

/// Looks `name` up in the calling thread's network namespace.
///
/// # Errors
/// `ENODEV` when there is no such interface.
pub fn interface(name: &str) -> io::Result<Interface> {
    Ok(Interface {
        name: name.to_string(),
        ifindex: sys::ifindex(name)?,
    })
}

/// Program ids on a TCX hook of `ifindex`, in run order (for tests and
/// diagnostics).
///
/// # Errors
/// The kernel's error (EINVAL on kernels without TCX).
pub fn tcx_programs(ifindex: u32, direction: Direction) -> io::Result<Vec<u32>> {
    sys::tcx_query(ifindex, tcx_attach_type(direction))
}

/// Removes netscope's legacy-TC filters (handle [`TC_HANDLE`], priority
/// [`TC_PRIORITY`], a program named `netscope_*`) from every interface of the
/// calling thread's network namespace; for `netscope-agent --cleanup`.
/// Another tool's filter at the same place is left alone. Returns the
/// interfaces and directions cleaned.
///
/// # Errors
/// Listing the interfaces failed; per-filter failures are logged.
pub fn remove_tc_filters() -> io::Result<Vec<(String, Direction)>> {
    crate::loader::route_libbpf_logs();
    let mut removed = Vec::new();
    for (name, ifindex) in sys::interfaces()? {
        for direction in Direction::BOTH {
            let filter = TcFilter {
                ifindex,
                ingress: direction == Direction::FromPod,
                handle: TC_HANDLE,
                priority: TC_PRIORITY,
            };
            let Ok(Some(id)) = filter.query() else {
                continue;
            };
            let prog = match sys::prog_name_by_id(id) {
                Ok(n) => n,
                Err(_) => crate::netlink::tc_filter_prog_name(
                    ifindex,
                    filter.ingress,
                    TC_HANDLE,
                    TC_PRIORITY,
                )?
                .unwrap_or_default(),
            };
            if !prog.starts_with(PROGRAM_NAME_PREFIX) {
                tracing::warn!(iface = ?name, direction = %direction, prog = ?prog, "a filter at netscope's handle and priority runs another tool's program: left alone");
                continue;
            }
            match filter.detach() {
                Ok(()) => removed.push((name.clone(), direction)),
                Err(e) => {
                    tracing::error!(iface = ?name, direction = %direction, error = %e, "removing netscope's tc filter failed")
                }
            }
        }
    }
    Ok(removed)
}
