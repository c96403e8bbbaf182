//! JSON flow logs: one object per flow and line.
//!
//! [`FlowLogExporter`] never blocks the ingest path. [`Exporter::export`]
//! only clones each flow (reference-count increments) into a bounded queue;
//! a writer thread of its own serialises and writes them. When the writer
//! cannot keep up (a slow or blocked stdout), records that find the queue
//! full are dropped, counted in [`FLOW_LOG_DROPPED`] and in
//! [`FlowLogStats::dropped`], and logged at warning level once per stall.
//!
//! # Fields
//!
//! The seed's fields, in the seed's order, then netscope's additions:
//!
//! | field | meaning |
//! | --- | --- |
//! | `timestamp` | end of the counting window, RFC 3339 in UTC |
//! | `src_pod`, `src_namespace` | source name and namespace, as in the metric labels ([`Endpoint::pod_label`], [`Endpoint::namespace_label`]) |
//! | `src_ip` | source address |
//! | `src_zone` | source zone, `unknown` when unknown |
//! | `dst_pod`, `dst_namespace`, `dst_ip`, `dst_zone` | the same for the destination |
//! | `bytes` | L3 bytes in the window |
//! | `packets` | packets in the window |
//! | `src_kind`, `dst_kind` | `pod`, `node`, `service`, `custom` or `external` |
//! | `src_workload`, `src_workload_kind`, `dst_workload`, `dst_workload_kind` | owning workload and its kind (`Deployment`, `StatefulSet`, ...) |
//! | `src_region`, `dst_region` | regions, `unknown` when unknown |
//! | `direction_counted` | which observation was counted: `from_pod` (sender's node) or `to_pod` (receiver's node) |
//! | `cross_zone` | both zones known and different |
//!
//! [`Endpoint::pod_label`]: crate::Endpoint::pod_label
//! [`Endpoint::namespace_label`]: crate::Endpoint::namespace_label

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Exporter, ResolvedFlow};
use crate::flow::Direction;

/// Counter: flow-log records dropped because the queue was full.
pub const FLOW_LOG_DROPPED: &str = crate::metrics::FLOW_LOG_RECORDS_DROPPED_TOTAL;
/// Counter: flow-log records written.
pub const FLOW_LOG_WRITTEN: &str = crate::metrics::FLOW_LOG_RECORDS_WRITTEN_TOTAL;
/// Counter: failed writes or flushes of the flow-log output.
pub const FLOW_LOG_WRITE_ERRORS: &str = crate::metrics::FLOW_LOG_WRITE_ERRORS_TOTAL;

/// Which flows are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FlowLogFilter {
    /// Every flow.
    #[default]
    All,
    /// Only flows whose zones are both known and differ (what the seed logged).
    CrossZoneOnly,
}

/// Flow-log settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLogConfig {
    /// Records the queue holds before new ones are dropped. At least 1.
    pub queue_capacity: usize,
    /// Which flows are logged.
    pub filter: FlowLogFilter,
}

impl FlowLogConfig {
    /// The default queue capacity: about 100 bytes per queued flow.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;
}

impl Default for FlowLogConfig {
    fn default() -> Self {
        FlowLogConfig {
            queue_capacity: FlowLogConfig::DEFAULT_QUEUE_CAPACITY,
            filter: FlowLogFilter::All,
        }
    }
}

/// Errors from the flow-log writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowLogError {
    /// The writer thread could not be started.
    #[error("cannot start the flow-log writer thread")]
    Spawn(#[source] io::Error),
    /// The writer did not finish writing the queued records in time.
    #[error("flow-log writer did not finish within {timeout:?}")]
    ShutdownTimeout {
        /// How long it was given.
        timeout: Duration,
    },
    /// The writer thread panicked.
    #[error("flow-log writer thread panicked")]
    WriterPanicked,
}

/// What the flow logger did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowLogStats {
    /// Records written and flushed to the output.
    pub written: u64,
    /// Records dropped because the queue was full or the writer had stopped.
    pub dropped: u64,
    /// Writes or flushes that failed.
    pub write_errors: u64,
}

#[derive(Debug, Default)]
struct Shared {
    written: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    /// A drop was logged and the writer has not caught up since.
    stalled: AtomicBool,
}

/// Writes one JSON object per flow and line to any [`io::Write`] (stdout in
/// the aggregator), through a bounded queue and a writer thread.
///
/// Share it behind an `Arc` (the `Exporter` impl for `Arc` forwards), and
/// call [`FlowLogExporter::shutdown`] on the way out so queued records reach
/// the output.
pub struct FlowLogExporter {
    writer: std::sync::Mutex<Writer>,
    shared: Arc<Shared>,
    config: FlowLogConfig,
}

/// The queue's sending end and the writer thread, until shutdown.
struct Writer {
    tx: Option<SyncSender<ResolvedFlow>>,
    /// Signalled by the writer thread when it is done.
    done: Option<Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for FlowLogExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowLogExporter")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FlowLogExporter {
    /// Starts a writer thread that writes to `out`.
    ///
    /// # Errors
    ///
    /// [`FlowLogError::Spawn`] when the thread cannot be started.
    pub fn spawn<W>(out: W, config: FlowLogConfig) -> Result<Self, FlowLogError>
    where
        W: Write + Send + 'static,
    {
        let config = FlowLogConfig {
            queue_capacity: config.queue_capacity.max(1),
            ..config
        };
        metrics::describe_counter!(
            FLOW_LOG_DROPPED,
            "Flow-log records dropped because the output was too slow and the queue was full."
        );
        metrics::describe_counter!(FLOW_LOG_WRITTEN, "Flow-log records written.");
        metrics::describe_counter!(
            FLOW_LOG_WRITE_ERRORS,
            "Failed writes of the flow-log output."
        );
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("netscope-flowlog".into())
            .spawn(move || {
                run_writer(rx, out, &thread_shared);
                let _ = done_tx.send(());
            })
            .map_err(FlowLogError::Spawn)?;
        Ok(FlowLogExporter {
            writer: std::sync::Mutex::new(Writer {
                tx: Some(tx),
                done: Some(done_rx),
                thread: Some(thread),
            }),
            shared,
            config,
        })
    }

    /// Starts a writer thread that writes to the process's stdout.
    ///
    /// # Errors
    ///
    /// As for [`FlowLogExporter::spawn`].
    pub fn stdout(config: FlowLogConfig) -> Result<Self, FlowLogError> {
        FlowLogExporter::spawn(io::stdout(), config)
    }

    /// Counts so far.
    pub fn stats(&self) -> FlowLogStats {
        FlowLogStats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            write_errors: self.shared.write_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting flows, lets the writer write what is queued and flush,
    /// and waits for it for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`FlowLogError::ShutdownTimeout`] when the output is still blocked after
    /// `timeout` (the thread is left to finish on its own);
    /// [`FlowLogError::WriterPanicked`] if the thread panicked.
    pub fn shutdown(&self, timeout: Duration) -> Result<FlowLogStats, FlowLogError> {
        let (done, thread) = {
            let mut writer = self.lock();
            writer.tx = None;
            (writer.done.take(), writer.thread.take())
        };
        if let Some(done) = done {
            match done.recv_timeout(timeout) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(FlowLogError::ShutdownTimeout { timeout });
                }
            }
        }
        if let Some(thread) = thread {
            thread.join().map_err(|_| FlowLogError::WriterPanicked)?;
        }
        Ok(self.stats())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FlowLogExporter {
    /// Closes the queue. The writer thread writes what is queued and exits on
    /// its own; dropping never waits for a blocked output.
    fn drop(&mut self) {
        self.lock().tx = None;
    }
}

impl Exporter for FlowLogExporter {
    fn export(&self, flows: &[ResolvedFlow]) {
        let mut dropped = 0u64;
        {
            // Held for the batch: try_send never blocks.
            let writer = self.lock();
            for flow in flows {
                if self.config.filter == FlowLogFilter::CrossZoneOnly && !flow.is_cross_zone() {
                    continue;
                }
                // After shutdown every record is a drop.
                let sent = writer.tx.as_ref().map(|tx| tx.try_send(flow.clone()));
                match sent {
                    Some(Ok(())) => {}
                    Some(Err(TrySendError::Full(_)))
                    | Some(Err(TrySendError::Disconnected(_)))
                    | None => dropped += 1,
                }
            }
        }
        if dropped > 0 {
            let total = self.shared.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            // Registered on each use, so an idle-timeout in the recorder can
            // never leave us incrementing a removed handle.
            metrics::counter!(FLOW_LOG_DROPPED).increment(dropped);
            if !self.shared.stalled.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    dropped,
                    dropped_total = total,
                    queue_capacity = self.config.queue_capacity,
                    "Flow log output is too slow: queue full, dropping flow-log records"
                );
            }
        }
    }
}

fn run_writer<W: Write>(rx: Receiver<ResolvedFlow>, out: W, shared: &Shared) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut batch = Some(first);
        let mut written = 0u64;
        let mut open = true;
        while let Some(flow) = batch.take() {
            line.clear();
            if write_record(&mut line, &flow).is_ok() {
                line.push(b'\n');
                match out.write_all(&line) {
                    Ok(()) => written += 1,
                    Err(err) => note_error(shared, &mut failing, &err),
                }
            }
            match rx.try_recv() {
                Ok(next) => batch = Some(next),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // Records count as written once they reached the output.
        match out.flush() {
            Ok(()) => {
                failing = false;
                shared.written.fetch_add(written, Ordering::Relaxed);
                metrics::counter!(FLOW_LOG_WRITTEN).increment(written);
            }
            Err(err) => note_error(shared, &mut failing, &err),
        }
        if shared.stalled.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                dropped_total = shared.dropped.load(Ordering::Relaxed),
                "Flow log writer caught up after dropping records"
            );
        }
        if !open {
            return;
        }
    }
    if let Err(err) = out.flush() {
        note_error(shared, &mut failing, &err);
    }
}

fn note_error(shared: &Shared, failing: &mut bool, err: &io::Error) {
    shared.write_errors.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(FLOW_LOG_WRITE_ERRORS).increment(1);
    if !*failing {
        *failing = true;
        tracing::warn!(error = %err, "Cannot write flow logs");
    }
}

/// One flow-log line's fields, borrowed from the flow.
#[derive(serde::Serialize)]
struct Record<'a> {
    timestamp: Rfc3339,
    src_pod: &'a str,
    src_namespace: &'a str,
    src_ip: IpAddr,
    src_zone: &'a str,
    dst_pod: &'a str,
    dst_namespace: &'a str,
    dst_ip: IpAddr,
    dst_zone: &'a str,
    bytes: u64,
    packets: u64,
    src_kind: &'a str,
    src_workload: &'a str,
    src_workload_kind: &'a str,
    src_region: &'a str,
    dst_kind: &'a str,
    dst_workload: &'a str,
    dst_workload_kind: &'a str,
    dst_region: &'a str,
    direction_counted: Direction,
    cross_zone: bool,
}

/// Serialises one flow as a JSON object (no newline) into `out`.
///
/// # Errors
///
/// Only the errors of `out` itself.
pub fn write_record<W: Write>(out: W, flow: &ResolvedFlow) -> io::Result<()> {
    let (src, dst) = (&flow.src, &flow.dst);
    let record = Record {
        timestamp: Rfc3339(flow.timestamp),
        src_pod: src.pod_label(),
        src_namespace: src.namespace_label(),
        src_ip: flow.src_ip,
        src_zone: src.zone_label(),
        dst_pod: dst.pod_label(),
        dst_namespace: dst.namespace_label(),
        dst_ip: flow.dst_ip,
        dst_zone: dst.zone_label(),
        bytes: flow.counters.bytes,
        packets: flow.counters.packets,
        src_kind: src.kind.as_str(),
        src_workload: src.workload_label(),
        src_workload_kind: src.workload_kind.as_str(),
        src_region: src.region_label(),
        dst_kind: dst.kind.as_str(),
        dst_workload: dst.workload_label(),
        dst_workload_kind: dst.workload_kind.as_str(),
        dst_region: dst.region_label(),
        direction_counted: flow.direction_counted,
        cross_zone: flow.is_cross_zone(),
    };
    serde_json::to_writer(out, &record).map_err(io::Error::from)
}

/// A time formatted as RFC 3339 in UTC, with as many fractional digits as
/// needed (none for whole seconds), like `2025-01-15T10:30:00Z` or
/// `2025-01-15T10:30:00.25Z`. Times outside years 0000-9999 are clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Seconds since the epoch, and nanoseconds in [0, 1e9).
        let (secs, nanos) = match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                d.subsec_nanos(),
            ),
            Err(e) => {
                let d = e.duration();
                let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => (-s, 0),
                    n => (-s - 1, 1_000_000_000 - n),
                }
            }
        };
        // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
        const MIN: i64 = -62_167_219_200;
        const MAX: i64 = 253_402_300_799;
        let (secs, nanos) = if secs < MIN {
            (MIN, 0)
        } else if secs > MAX {
            (MAX, 999_999_999)
        } else {
            (secs, nanos)
        };
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )?;
        if nanos != 0 {
            let mut frac = nanos;
            let mut digits = 9;
            while frac % 10 == 0 {
                frac /= 10;
                digits -= 1;
            }
            write!(f, ".{frac:0digits$}")?;
        }
        f.write_str("Z")
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
