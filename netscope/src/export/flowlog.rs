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
mod tests {
    use super::super::testutil::{flow, pod};
    use super::*;
    use crate::endpoint::Endpoint;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use std::sync::{Condvar, Mutex};
    use std::time::Instant;

    fn at(secs: i64, nanos: u32) -> String {
        let t = if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(nanos.into())
        };
        Rfc3339(t).to_string()
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        // `date -u -d @1736937000`
        assert_eq!(at(1_736_937_000, 0), "2025-01-15T10:30:00Z");
        assert_eq!(at(1_736_937_000, 250_000_000), "2025-01-15T10:30:00.25Z");
        assert_eq!(at(1_736_937_000, 1), "2025-01-15T10:30:00.000000001Z");
        // A leap day and the last second of a leap year.
        assert_eq!(at(1_709_164_800, 0), "2024-02-29T00:00:00Z");
        assert_eq!(at(1_735_689_599, 0), "2024-12-31T23:59:59Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00Z");
        // Before the epoch.
        assert_eq!(at(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(at(-1, 500_000_000), "1969-12-31T23:59:59.5Z");
        assert_eq!(at(-86_400 * 365, 0), "1969-01-01T00:00:00Z");
    }

    /// An `io::Write` that appends to a shared buffer.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl SharedBuf {
        fn lines(&self) -> Vec<serde_json::Value> {
            let buf = self.0.lock().unwrap();
            std::str::from_utf8(&buf)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
                .collect()
        }
    }

    #[test]
    fn writes_seed_fields_plus_additions() {
        let buf = SharedBuf::default();
        let log = FlowLogExporter::spawn(buf.clone(), FlowLogConfig::default()).unwrap();
        let a = pod(
            "frontend-abc123",
            "production",
            "frontend",
            "us-west-2a",
            "us-west-2",
        );
        let b = pod(
            "backend-xyz789",
            "production",
            "backend",
            "us-west-2b",
            "us-west-2",
        );
        let ext = Endpoint::external();
        log.export(&[
            flow(&a, &b, "10.0.1.50", "10.0.2.75", 4096, 3),
            flow(&a, &ext, "10.0.1.50", "203.0.113.9", 100, 1),
        ]);
        let stats = log.shutdown(Duration::from_secs(10)).unwrap();
        assert_eq!(
            stats,
            FlowLogStats {
                written: 2,
                dropped: 0,
                write_errors: 0
            }
        );

        let lines = buf.lines();
        assert_eq!(lines.len(), 2);
        let expected = serde_json::json!({
            "timestamp": "2025-01-15T10:30:00Z",
            "src_pod": "frontend-abc123",
            "src_namespace": "production",
            "src_ip": "10.0.1.50",
            "src_zone": "us-west-2a",
            "dst_pod": "backend-xyz789",
            "dst_namespace": "production",
            "dst_ip": "10.0.2.75",
            "dst_zone": "us-west-2b",
            "bytes": 4096,
            "packets": 3,
            "src_kind": "pod",
            "src_workload": "frontend",
            "src_workload_kind": "Deployment",
            "src_region": "us-west-2",
            "dst_kind": "pod",
            "dst_workload": "backend",
            "dst_workload_kind": "Deployment",
            "dst_region": "us-west-2",
            "direction_counted": "to_pod",
            "cross_zone": true,
        });
        assert_eq!(lines[0], expected);
        // Unknown external addresses get fixed values, never empty strings.
        assert_eq!(lines[1]["dst_pod"], "external");
        assert_eq!(lines[1]["dst_namespace"], "external");
        assert_eq!(lines[1]["dst_zone"], "unknown");
        assert_eq!(lines[1]["dst_region"], "unknown");
        assert_eq!(lines[1]["dst_kind"], "external");
        assert_eq!(lines[1]["cross_zone"], false);
        // The seed's field order comes first.
        let raw = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let first = raw.lines().next().unwrap();
        let order = [
            "timestamp",
            "src_pod",
            "src_namespace",
            "src_ip",
            "src_zone",
            "dst_pod",
            "dst_namespace",
            "dst_ip",
            "dst_zone",
            "bytes",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|k| first.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{first}");
    }

    #[test]
    fn cross_zone_only_filter() {
        let buf = SharedBuf::default();
        let config = FlowLogConfig {
            filter: FlowLogFilter::CrossZoneOnly,
            ..FlowLogConfig::default()
        };
        let log = FlowLogExporter::spawn(buf.clone(), config).unwrap();
        let a = pod("a", "ns", "a", "z1", "r");
        let a2 = pod("a2", "ns", "a", "z1", "r");
        let b = pod("b", "ns", "b", "z2", "r");
        log.export(&[
            flow(&a, &a2, "10.0.0.1", "10.0.0.2", 10, 1),
            flow(&a, &b, "10.0.0.1", "10.0.0.3", 20, 1),
        ]);
        log.shutdown(Duration::from_secs(10)).unwrap();
        let lines = buf.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["bytes"], 20);
    }

    /// A writer that blocks inside `write` until released, like a stdout
    /// whose reader stopped reading.
    #[derive(Clone)]
    struct BlockedWriter {
        inner: SharedBuf,
        gate: Arc<(Mutex<(bool, bool)>, Condvar)>, // (entered, released)
    }
    impl BlockedWriter {
        fn wait_entered(&self) {
            let (lock, cv) = &*self.gate;
            let guard = lock.lock().unwrap();
            let (_g, res) = cv
                .wait_timeout_while(guard, Duration::from_secs(10), |s| !s.0)
                .unwrap();
            assert!(!res.timed_out(), "the writer never started writing");
        }
        fn release(&self) {
            let (lock, cv) = &*self.gate;
            lock.lock().unwrap().1 = true;
            cv.notify_all();
        }
    }
    impl Write for BlockedWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.gate;
            let mut s = lock.lock().unwrap();
            s.0 = true;
            cv.notify_all();
            while !s.1 {
                s = cv.wait(s).unwrap();
            }
            drop(s);
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocked_output_never_blocks_export_and_drops_are_counted() {
        let writer = BlockedWriter {
            inner: SharedBuf::default(),
            gate: Arc::new((Mutex::new((false, false)), Condvar::new())),
        };
        const CAPACITY: usize = 8;
        let log = FlowLogExporter::spawn(
            writer.clone(),
            FlowLogConfig {
                queue_capacity: CAPACITY,
                filter: FlowLogFilter::All,
            },
        )
        .unwrap();
        let a = pod("a", "ns", "a", "z1", "r");
        let b = pod("b", "ns", "b", "z2", "r");

        // One record reaches the writer, which then blocks in write().
        log.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 1, 1)]);
        writer.wait_entered();

        // Now 1000 more: CAPACITY fit in the queue, the rest are dropped, and
        // export returns at once.
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let batch: Vec<_> = (0..1000)
            .map(|i| flow(&a, &b, "10.0.0.1", "10.0.0.2", i, 1))
            .collect();
        let started = Instant::now();
        metrics::with_local_recorder(&recorder, || log.export(&batch));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "export blocked for {took:?}");
        let dropped = (1000 - CAPACITY) as u64;
        assert_eq!(log.stats().dropped, dropped);
        let counted: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == FLOW_LOG_DROPPED)
            .map(|(.., v)| v)
            .collect();
        assert_eq!(counted, vec![DebugValue::Counter(dropped)]);

        // Once released, everything that was queued is written.
        writer.release();
        let stats = log.shutdown(Duration::from_secs(10)).unwrap();
        assert_eq!(stats.written, 1 + CAPACITY as u64);
        assert_eq!(stats.dropped, dropped);
        let lines = writer.inner.lines();
        assert_eq!(lines.len(), 1 + CAPACITY);
        // The queued ones are the first CAPACITY of the batch, in order.
        let bytes: Vec<u64> = lines.iter().map(|l| l["bytes"].as_u64().unwrap()).collect();
        let mut expected = vec![1];
        expected.extend(0..CAPACITY as u64);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn shutdown_times_out_on_a_blocked_output() {
        let writer = BlockedWriter {
            inner: SharedBuf::default(),
            gate: Arc::new((Mutex::new((false, false)), Condvar::new())),
        };
        let log = FlowLogExporter::spawn(writer.clone(), FlowLogConfig::default()).unwrap();
        let a = pod("a", "ns", "a", "z1", "r");
        log.export(&[flow(&a, &a, "10.0.0.1", "10.0.0.1", 1, 1)]);
        writer.wait_entered();
        let err = log.shutdown(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, FlowLogError::ShutdownTimeout { .. }), "{err}");
        writer.release();
    }

    #[test]
    fn shared_behind_arc_and_shut_down_in_place() {
        let buf = SharedBuf::default();
        let log = Arc::new(FlowLogExporter::spawn(buf.clone(), FlowLogConfig::default()).unwrap());
        let fan = super::super::Fanout::new().with(Box::new(log.clone()));
        let a = pod("a", "ns", "a", "z1", "r");
        fan.export(&[flow(&a, &a, "10.0.0.1", "10.0.0.1", 5, 1)]);
        let stats = log.shutdown(Duration::from_secs(10)).unwrap();
        assert_eq!(stats.written, 1);
        assert_eq!(buf.lines().len(), 1);
        // Late flows are counted as dropped, never written or lost silently.
        fan.export(&[flow(&a, &a, "10.0.0.1", "10.0.0.1", 6, 1)]);
        assert_eq!(log.stats().dropped, 1);
        assert_eq!(log.shutdown(Duration::from_secs(1)).unwrap().written, 1);
    }

    /// A writer whose every write fails.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
        }
    }

    #[test]
    fn write_errors_are_counted_not_fatal() {
        // A BufWriter only writes through on flush; with a tiny record count
        // the failure shows up there.
        let log = FlowLogExporter::spawn(Broken, FlowLogConfig::default()).unwrap();
        let a = pod("a", "ns", "a", "z1", "r");
        log.export(&[flow(&a, &a, "10.0.0.1", "10.0.0.1", 1, 1)]);
        let stats = log.shutdown(Duration::from_secs(10)).unwrap();
        assert!(stats.write_errors >= 1, "{stats:?}");
    }
}
