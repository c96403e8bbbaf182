//! The capture core in a few lines: load the program, follow pod links,
//! drain exact per-flow counters.
//!
//! [`CaptureBuilder`] takes the attach mode, the interface selection, the
//! flow-table capacity and the Service CIDRs; [`CaptureBuilder::start`]
//! loads the program and returns a [`RunningCapture`]. A thread of its own
//! watches rtnetlink link events in the namespace `start` was called in and
//! attaches to (and detaches from) every selected link as pods come and go.
//! [`RunningCapture::drain`] returns the counters since the previous drain:
//! it never blocks (a few `bpf(2)` calls), so a Tokio task can call it on a
//! `tokio::time::interval` directly; [`RunningCapture::drains`] is the
//! blocking iterator for threads. [`RunningCapture::stop`] (or dropping it)
//! stops the watcher and detaches from every link.
//!
//! ```no_run
//! use std::time::Duration;
//! use netscope_bpf::capture::CaptureBuilder;
//!
//! # fn main() -> Result<(), netscope_bpf::capture::CaptureError> {
//! let mut capture = CaptureBuilder::new().interface_prefixes(["veth", "lxc"]).start()?;
//! for drain in capture.drains(Duration::from_secs(1)).take(3) {
//!     for s in drain?.samples {
//!         println!("{} -> {}: {} bytes", s.key.src, s.key.dst, s.counters.bytes);
//!     }
//! }
//! let last = capture.stop()?; // detached; the counters after the last drain
//! # let _ = last;
//! # Ok(())
//! # }
//! ```
//!
//! # Minimum kernel version
//! Linux 5.10 (legacy TC attachment; TCX from 6.6). Loading needs root or
//! `CAP_BPF`, `CAP_NET_ADMIN`, `CAP_PERFMON` (and `CAP_SYS_RESOURCE` before
//! 5.11).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netscope::discover::{DiscoverError, InterfaceFilter, Reconciler, DEFAULT_PREFIXES};
use netscope::{AttachError, AttachMode, CollectError, Collector, Drain, Interface};

use crate::netlink::LinkWatcher;
use crate::{BpfAttacher, BpfCollector, Capture, CaptureConfig, LoadError, DEFAULT_MAX_FLOWS};

/// How long the watcher thread waits for link events before it looks at
/// the stop flag again: the bound on how long `stop` waits for it.
const WATCH_POLL: Duration = Duration::from_millis(100);

/// Errors of the high-level capture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The include or exclude pattern does not compile.
    #[error("interface selection")]
    Filter(#[from] DiscoverError),
    /// The program could not be loaded.
    #[error("loading the capture program")]
    Load(#[from] LoadError),
    /// The rtnetlink socket could not be opened, or reading link events
    /// failed (the watcher has stopped: links added since are not attached).
    #[error("watching link events")]
    Netlink(#[source] std::io::Error),
    /// Draining the flow table failed; the counters stay in the kernel.
    #[error("draining the flow table")]
    Collect(#[from] CollectError),
    /// Detaching from some links failed (the program may still be attached
    /// to them).
    #[error("detaching from {} link(s): {}", .0.len(), .0.iter().map(|e| netscope::discover::error_chain(e)).collect::<Vec<_>>().join("; "))]
    Detach(Vec<AttachError>),
    /// The watcher thread panicked.
    #[error("the link watcher thread panicked")]
    WatcherPanicked,
}

/// Settings of a capture; [`CaptureBuilder::start`] runs it.
#[derive(Debug, Clone)]
pub struct CaptureBuilder {
    mode: AttachMode,
    prefixes: Vec<String>,
    include: Option<String>,
    exclude: Option<String>,
    config: CaptureConfig,
}

impl Default for CaptureBuilder {
    fn default() -> Self {
        CaptureBuilder {
            mode: AttachMode::Auto,
            prefixes: DEFAULT_PREFIXES.iter().map(|p| p.to_string()).collect(),
            include: None,
            exclude: None,
            config: CaptureConfig {
                max_flows: DEFAULT_MAX_FLOWS,
                service_cidrs: Vec::new(),
            },
        }
    }
}

impl CaptureBuilder {
    /// Auto attach mode, the default pod-link prefixes
    /// ([`DEFAULT_PREFIXES`]), [`DEFAULT_MAX_FLOWS`], no Service CIDRs.
    pub fn new() -> Self {
        Self::default()
    }

    /// How to attach: TCX, legacy TC, or auto (TCX, falling back to TC).
    pub fn mode(mut self, mode: AttachMode) -> Self {
        self.mode = mode;
        self
    }

    /// Attach to veth/netkit links whose name starts with one of these
    /// (replaces the defaults).
    pub fn interface_prefixes<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Also attach to links whose name matches this regex.
    pub fn include(mut self, regex: &str) -> Self {
        self.include = Some(regex.to_string());
        self
    }

    /// Never attach to links whose name matches this regex.
    pub fn exclude(mut self, regex: &str) -> Self {
        self.exclude = Some(regex.to_string());
        self
    }

    /// Flow-table capacity: flows beyond it land in [`Drain::overflow`]
    /// (their bytes stay in the totals). At most [`crate::MAX_MAX_FLOWS`].
    pub fn capacity(mut self, max_flows: u32) -> Self {
        self.config.max_flows = max_flows;
        self
    }

    /// The cluster's Service CIDRs: flows to them keep protocol and ports,
    /// so Service NAT can be undone later.
    pub fn service_cidrs<I: IntoIterator<Item = IpNet>>(mut self, cidrs: I) -> Self {
        self.config.service_cidrs = cidrs.into_iter().collect();
        self
    }

    /// Loads the program and starts following links in the calling
    /// thread's network namespace.
    ///
    /// # Errors
    /// [`CaptureError::Filter`] for a bad pattern, [`CaptureError::Load`]
    /// when the kernel refuses the program (privileges, kernel version,
    /// capacity), [`CaptureError::Netlink`] when the link-event socket
    /// cannot be opened.
    pub fn start(self) -> Result<RunningCapture, CaptureError> {
        let filter = InterfaceFilter::new(
            &self.prefixes,
            self.include.as_deref(),
            self.exclude.as_deref(),
        )?;
        let capture = Arc::new(Capture::load(&self.config)?);
        let attacher = Arc::new(BpfAttacher::new(capture.clone(), self.mode));
        let reconciler = Arc::new(Mutex::new(Reconciler::new(attacher.clone(), filter)));
        // Opened here, so the namespace is the caller's.
        let mut watcher = LinkWatcher::new().map_err(CaptureError::Netlink)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (reconciler.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("netscope-links".into())
            .spawn(move || -> std::io::Result<()> {
                while !s.load(Ordering::Relaxed) {
                    let events = watcher.next(WATCH_POLL)?;
                    let mut rec = lock(&r);
                    for e in events {
                        rec.handle(e);
                    }
                }
                Ok(())
            })
            .map_err(CaptureError::Netlink)?;
        Ok(RunningCapture {
            collector: BpfCollector::new(capture),
            attacher,
            reconciler,
            stop,
            thread: Some(thread),
        })
    }
}

fn lock(r: &Mutex<Reconciler>) -> MutexGuard<'_, Reconciler> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// A loaded program following links; see the [module docs](self).
/// Dropping it detaches from every link (errors are logged; call
/// [`RunningCapture::stop`] to see them and to get the last counters).
#[derive(Debug)]
pub struct RunningCapture {
    collector: BpfCollector,
    attacher: Arc<BpfAttacher>,
    reconciler: Arc<Mutex<Reconciler>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningCapture {
    /// The flows counted since the previous drain, exactly: no increment is
    /// lost or returned twice. Does not block.
    ///
    /// # Errors
    /// [`CaptureError::Collect`] when a map operation fails (the counters
    /// stay in the kernel for the next drain); [`CaptureError::Netlink`]
    /// once the link watcher has stopped on an error (call
    /// [`RunningCapture::stop`] to get the remaining counters).
    pub fn drain(&mut self) -> Result<Drain, CaptureError> {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            self.join_watcher()?;
        }
        Ok(self.collector.drain()?)
    }

    /// A blocking iterator that drains every `interval`, forever (use
    /// `take`, or break out of the loop).
    pub fn drains(&mut self, interval: Duration) -> Drains<'_> {
        Drains {
            capture: self,
            interval,
            next: Instant::now() + interval,
        }
    }

    /// The links the program is attached to now.
    pub fn attached(&self) -> Vec<Interface> {
        lock(&self.reconciler).attached()
    }

    /// Attach failures so far, per reason, as the reconciler counts them.
    pub fn attach_errors(&self) -> Vec<(String, u64)> {
        lock(&self.reconciler)
            .errors()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The mode auto mode settled on, once something is attached.
    pub fn effective_mode(&self) -> Option<AttachMode> {
        self.attacher.effective_mode()
    }

    /// Stops the watcher, detaches from every link and returns the counters
    /// since the last drain.
    ///
    /// # Errors
    /// [`CaptureError::Detach`] when some detach failed,
    /// [`CaptureError::Netlink`] when the watcher had stopped on an error
    /// (everything is detached and drained in both cases, but the final
    /// counters are then lost: drain first if they matter).
    pub fn stop(mut self) -> Result<Drain, CaptureError> {
        let watcher = self.shutdown();
        let errors = lock(&self.reconciler).detach_all();
        let last = self.collector.drain()?;
        watcher?;
        if errors.is_empty() {
            Ok(last)
        } else {
            Err(CaptureError::Detach(errors))
        }
    }

    fn shutdown(&mut self) -> Result<(), CaptureError> {
        self.stop.store(true, Ordering::Relaxed);
        self.join_watcher()
    }

    fn join_watcher(&mut self) -> Result<(), CaptureError> {
        match self.thread.take() {
            None => Ok(()),
            Some(t) => match t.join() {
                Ok(r) => r.map_err(CaptureError::Netlink),
                Err(_) => Err(CaptureError::WatcherPanicked),
            },
        }
    }
}

impl Drop for RunningCapture {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %netscope::discover::error_chain(&e), "link watcher stopped with an error");
        }
        for e in lock(&self.reconciler).detach_all() {
            tracing::error!(error = %netscope::discover::error_chain(&e), "detach failed");
        }
    }
}

/// The iterator of [`RunningCapture::drains`].
#[derive(Debug)]
pub struct Drains<'a> {
    capture: &'a mut RunningCapture,
    interval: Duration,
    next: Instant,
}

impl Iterator for Drains<'_> {
    type Item = Result<Drain, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        std::thread::sleep(self.next.saturating_duration_since(Instant::now()));
        self.next += self.interval;
        Some(self.capture.drain())
    }
}
