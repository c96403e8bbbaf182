//! Tests of [`super`], apart from `flowlog.rs` so that it reads as the code it ships.

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
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
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
