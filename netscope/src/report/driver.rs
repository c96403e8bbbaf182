//! The async driver: drain, transform (Service NAT), buffer, send, retry.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::journal::Journal;
use super::{
    random_u64, InstanceId, Report, ReportBuffer, DEFAULT_MAX_BUFFERED_FLOWS,
    DEFAULT_MAX_REPORT_SAMPLES,
};
use crate::collect::Collector;
use crate::flow::{Counters, FlowSample};

/// The aggregator's acknowledgement of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The acknowledged sequence number.
    pub seq: u64,
    /// True when the aggregator had counted this report before.
    pub duplicate: bool,
}

/// Errors from sending one report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The RPC failed (aggregator down, rejected, deadline exceeded, ...).
    #[error("report {seq} to {endpoint} failed")]
    Rpc {
        /// Where the report went.
        endpoint: String,
        /// Sequence number of the report.
        seq: u64,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// The aggregator acknowledged a different sequence number.
    #[error("report {seq} to {endpoint} was acknowledged as {acked}")]
    AckMismatch {
        /// Where the report went.
        endpoint: String,
        /// Sequence number sent.
        seq: u64,
        /// Sequence number acknowledged.
        acked: u64,
    },
}

impl SendError {
    /// True when retrying the same report cannot succeed: the aggregator
    /// rejected its content (`InvalidArgument`) or its size
    /// (`ResourceExhausted`).
    pub fn is_permanent(&self) -> bool {
        match self {
            SendError::Rpc { source, .. } => matches!(
                source.code(),
                tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
            ),
            SendError::AckMismatch { .. } => false,
        }
    }
}

/// Where reports go: the gRPC client
/// ([`GrpcSink`](crate::transport::client::GrpcSink)), or anything else
/// (an in-process aggregator in tests and benchmarks).
pub trait ReportSink: Send + Sync {
    /// Delivers one report and waits for its acknowledgement.
    ///
    /// # Errors
    /// [`SendError`] when the report was not acknowledged. It may still have
    /// been counted; the caller retries the same report.
    fn send<'a>(
        &'a self,
        report: &'a Report,
    ) -> Pin<Box<dyn Future<Output = Result<Ack, SendError>> + Send + 'a>>;
}

/// Rewrites drained samples before they are buffered: the agent's Service
/// NAT resolution ([`crate::nat::ServiceNat`]) plugs in here.
pub trait SampleTransform: Send {
    /// Returns the rewritten samples. Must keep every byte.
    fn transform(&mut self, samples: Vec<FlowSample>) -> Vec<FlowSample>;
}

/// Settings of a [`Reporter`].
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// Node name put into every report.
    pub node_name: String,
    /// How often to drain the collector.
    pub interval: Duration,
    /// Bound of the pending set, in flows.
    pub max_buffered_flows: usize,
    /// Most samples in one report; a larger pending set goes out as several
    /// reports. Keep it within what the aggregator accepts
    /// ([`crate::transport::convert::samples_per_report`]).
    pub max_report_samples: usize,
    /// First retry delay after a failed send.
    pub backoff_initial: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// At shutdown, how long to keep trying to deliver what is buffered.
    pub shutdown_flush_timeout: Duration,
}

impl ReporterConfig {
    /// Defaults for `node_name`: a 10 s interval, 200 000 buffered flows
    /// ([`DEFAULT_MAX_BUFFERED_FLOWS`]), reports of at most 50 000 samples
    /// ([`DEFAULT_MAX_REPORT_SAMPLES`]), backoff from 200 ms to 10 s, a 5 s
    /// flush at shutdown.
    pub fn new(node_name: impl Into<String>) -> Self {
        ReporterConfig {
            node_name: node_name.into(),
            interval: Duration::from_secs(10),
            max_buffered_flows: DEFAULT_MAX_BUFFERED_FLOWS,
            max_report_samples: DEFAULT_MAX_REPORT_SAMPLES,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            shutdown_flush_timeout: Duration::from_secs(5),
        }
    }
}

/// What a [`Reporter`] did over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReporterSummary {
    /// Reports acknowledged.
    pub reports_acked: u64,
    /// Failed send attempts.
    pub send_failures: u64,
    /// Bytes and packets the aggregator rejected for good.
    pub rejected: Counters,
    /// Bytes and packets still buffered when the reporter stopped (the
    /// aggregator stayed away through the shutdown flush).
    pub unsent: Counters,
}

/// Test-only: `NETSCOPE_FAILPOINT=<step>[:<n>]` makes the agent SIGKILL
/// itself the `n`th time (default 1) it reaches `<step>` of the drain cycle,
/// one of [`FAILPOINT_STEPS`] (docs/restarts.md). Never set it in production.
pub const FAILPOINT_ENV: &str = "NETSCOPE_FAILPOINT";

/// The steps of the drain cycle, in order, where a failpoint can kill the
/// agent: after the kernel stage is read, after the journal holds it, after
/// the kernel copy is cleared, after the aggregator acknowledged a report
/// (before the agent recorded it), after the agent recorded the
/// acknowledgement in the journal.
pub const FAILPOINT_STEPS: [&str; 5] = [
    "after-stage",
    "after-journal",
    "after-commit",
    "after-send",
    "after-ack",
];

#[derive(Debug)]
struct Failpoint {
    step: &'static str,
    nth: u64,
    hits: u64,
}

impl Failpoint {
    fn from_env() -> Option<Failpoint> {
        let v = std::env::var(FAILPOINT_ENV).ok()?;
        let (step, nth) = match v.split_once(':') {
            Some((s, n)) => (s.to_string(), n.parse::<u64>().ok()),
            None => (v.clone(), Some(1)),
        };
        let known = FAILPOINT_STEPS.iter().find(|s| **s == step);
        match (known, nth) {
            (Some(step), Some(nth)) if nth >= 1 => {
                warn!(
                    step,
                    nth, "test-only failpoint armed: the agent kills itself there"
                );
                Some(Failpoint { step, nth, hits: 0 })
            }
            _ => {
                error!(value = ?v, steps = ?FAILPOINT_STEPS, "ignoring an invalid {FAILPOINT_ENV}");
                None
            }
        }
    }

    fn hit(&mut self, step: &str) {
        if step != self.step {
            return;
        }
        self.hits += 1;
        if self.hits == self.nth {
            error!(step, hit = self.hits, "failpoint: SIGKILL");
            // SIGKILL through kill(1) (this crate keeps off libc); where
            // there is no kill(1), abort: as abrupt, nothing is flushed.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(1));
            std::process::abort();
        }
    }
}

/// Drains a [`Collector`] every interval and delivers the counters through a
/// [`ReportSink`], exactly once, with retries, backoff and jitter.
pub struct Reporter {
    config: ReporterConfig,
    collector: Box<dyn Collector>,
    sink: Box<dyn ReportSink>,
    transform: Option<Box<dyn SampleTransform>>,
    buffer: ReportBuffer,
    last_drain: SystemTime,
    failures_in_a_row: u32,
    summary: ReporterSummary,
    journal: Option<Journal>,
    /// Per scope, the last epoch of the kernel stages held in `buffer` (see
    /// [`crate::collect::Staged`]), most recent last.
    epochs: Vec<(u64, u64)>,
    failpoint: Option<Failpoint>,
}

impl Reporter {
    /// A reporter with a fresh [`InstanceId`]. The first window starts now.
    pub fn new(
        config: ReporterConfig,
        collector: Box<dyn Collector>,
        sink: Box<dyn ReportSink>,
    ) -> Self {
        let buffer = ReportBuffer::new(
            config.node_name.clone(),
            InstanceId::random(),
            config.max_buffered_flows,
        )
        .with_max_report_samples(config.max_report_samples);
        info!(
            node = ?config.node_name,
            instance = %buffer.instance(),
            "reporter started with a fresh instance id"
        );
        // Counters that only move when something goes wrong, exported at
        // zero from the start: a dashboard panel or an alert on them then
        // has a series (rate() of a missing series is no data, not zero).
        for name in [
            crate::metrics::AGENT_OVERFLOW_BYTES_TOTAL,
            crate::metrics::AGENT_OVERFLOW_PACKETS_TOTAL,
            crate::metrics::AGENT_REPORTS_FAILED_TOTAL,
            crate::metrics::AGENT_REPORTS_REJECTED_TOTAL,
            crate::metrics::AGENT_DRAIN_ERRORS_TOTAL,
        ] {
            metrics::counter!(name).increment(0);
        }
        Reporter {
            config,
            collector,
            sink,
            transform: None,
            buffer,
            last_drain: SystemTime::now(),
            failures_in_a_row: 0,
            summary: ReporterSummary::default(),
            journal: None,
            epochs: Vec::new(),
            failpoint: Failpoint::from_env(),
        }
    }

    /// Keeps what is drained and not yet acknowledged in `journal`, and
    /// resumes from it: a journal left by the agent before this one (killed,
    /// say) is loaded, and its reports are resent with their original
    /// instance id and sequence numbers, so the aggregator's replay check
    /// drops what it had counted. A corrupt journal is moved aside, logged
    /// and counted (`netscope_agent_journal_corrupt_total`); the reporter
    /// then starts fresh.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        for name in [
            crate::metrics::AGENT_JOURNAL_CORRUPT_TOTAL,
            crate::metrics::AGENT_JOURNAL_WRITE_ERRORS_TOTAL,
            crate::metrics::AGENT_JOURNAL_RESUMED_TOTAL,
            crate::metrics::AGENT_JOURNAL_REPLAYED_BYTES_TOTAL,
        ] {
            metrics::counter!(name).increment(0);
        }
        match journal.load(&self.config.node_name) {
            Ok(Some(state)) => {
                let totals = state.buffer.buffered_totals();
                self.buffer = state
                    .buffer
                    .with_max_report_samples(self.config.max_report_samples);
                // Epochs of kernel state that did not outlive its process
                // (scope 0) mean nothing to this one.
                self.epochs = state.epochs.into_iter().filter(|(s, _)| *s != 0).collect();
                metrics::counter!(crate::metrics::AGENT_JOURNAL_RESUMED_TOTAL).increment(1);
                metrics::counter!(crate::metrics::AGENT_JOURNAL_REPLAYED_BYTES_TOTAL)
                    .increment(totals.bytes);
                info!(
                    journal = ?journal.path(),
                    instance = %self.buffer.instance(),
                    in_flight = self.buffer.in_flight().map(|r| r.seq),
                    flows = self.buffer.buffered_flows(),
                    bytes = totals.bytes,
                    epochs = ?self.epochs,
                    "resumed from the journal: its reports are resent with their original instance id and sequence numbers"
                );
            }
            Ok(None) => {}
            Err(e) => error!(error = %e, "the journal cannot be used; starting fresh"),
        }
        self.journal = Some(journal);
        self
    }

    fn fail(&mut self, step: &str) {
        if let Some(f) = self.failpoint.as_mut() {
            f.hit(step);
        }
    }

    fn write_journal(&mut self) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.write(&self.buffer, &self.epochs) {
                metrics::counter!(crate::metrics::AGENT_JOURNAL_WRITE_ERRORS_TOTAL).increment(1);
                error!(error = %e, "writing the journal failed: a crash now would lose what is buffered");
            }
        }
    }

    /// Adds a sample transform (Service NAT resolution) run on every drain.
    pub fn with_transform(mut self, transform: Box<dyn SampleTransform>) -> Self {
        self.transform = Some(transform);
        self
    }

    /// This run's instance id.
    pub fn instance_id(&self) -> InstanceId {
        self.buffer.instance()
    }

    /// The buffer, for inspection.
    pub fn buffer(&self) -> &ReportBuffer {
        &self.buffer
    }

    /// Drains the collector once into the buffer, for the window from the
    /// previous drain to `now`. A collector error is logged and counted; the
    /// counters stay in the kernel for the next drain.
    pub fn drain_once(&mut self, now: SystemTime) {
        // Two phases: read (stage), journal, then clear in the kernel
        // (commit). A crash between any two steps leaves either the kernel
        // copy or the journal, and the epoch says which (docs/restarts.md).
        let staged = match self.collector.stage() {
            Ok(d) => d,
            Err(e) => {
                metrics::counter!(crate::metrics::AGENT_DRAIN_ERRORS_TOTAL).increment(1);
                warn!(error = %e, "draining the collector failed; retrying next interval");
                return;
            }
        };
        self.fail("after-stage");
        let journaled = staged.epoch != 0
            && self
                .epochs
                .iter()
                .any(|&(s, e)| s == staged.scope && staged.epoch <= e);
        if journaled {
            info!(
                epoch = staged.epoch,
                "this stage is in the journal already (the agent before stopped before clearing it): clearing it without counting it again"
            );
        } else {
            self.add_drain(staged.drain, now);
            if staged.epoch != 0 {
                self.epochs.retain(|(s, _)| *s != staged.scope);
                self.epochs.push((staged.scope, staged.epoch));
                let extra = self.epochs.len().saturating_sub(super::journal::MAX_SCOPES);
                self.epochs.drain(..extra);
            }
            self.write_journal();
        }
        self.fail("after-journal");
        if let Err(e) = self.collector.commit(staged.epoch) {
            metrics::counter!("netscope_agent_drain_errors_total").increment(1);
            warn!(error = %e, "clearing the drained counters failed; they are in the journal and are cleared next interval");
        }
        self.fail("after-commit");
    }

    fn add_drain(&mut self, mut drain: crate::collect::Drain, now: SystemTime) {
        metrics::counter!(crate::metrics::AGENT_FLOWS_DRAINED_TOTAL)
            .increment(drain.samples.len() as u64);
        if !drain.overflow.is_zero() {
            metrics::counter!(crate::metrics::AGENT_OVERFLOW_BYTES_TOTAL)
                .increment(drain.overflow.bytes);
            metrics::counter!(crate::metrics::AGENT_OVERFLOW_PACKETS_TOTAL)
                .increment(drain.overflow.packets);
        }
        if let Some(t) = self.transform.as_mut() {
            drain.samples = t.transform(std::mem::take(&mut drain.samples));
        }
        let start = self.last_drain;
        self.last_drain = now;
        let out = self.buffer.add(drain, start, now);
        if out.folded_flows > 0 {
            metrics::counter!(crate::metrics::AGENT_REPORT_FOLDED_FLOWS_TOTAL)
                .increment(out.folded_flows);
            metrics::counter!(crate::metrics::AGENT_REPORT_FOLDED_BYTES_TOTAL)
                .increment(out.folded.bytes);
            warn!(
                flows = out.folded_flows,
                bytes = out.folded.bytes,
                max = self.config.max_buffered_flows,
                "report buffer full: flows folded into overflow (bytes kept, identity lost)"
            );
        }
        metrics::gauge!(crate::metrics::AGENT_BUFFERED_FLOWS)
            .set(self.buffer.buffered_flows() as f64);
    }

    /// Sends what is due (the in-flight report, or the pending set as a new
    /// report) once. Returns `Ok(true)` when a report was acknowledged,
    /// `Ok(false)` when there was nothing to send.
    ///
    /// # Errors
    /// [`SendError`] when the report was not acknowledged; it stays in flight
    /// unless the error [is permanent](SendError::is_permanent), in which case
    /// it is dropped, logged and counted.
    pub async fn send_once(&mut self) -> Result<bool, SendError> {
        if self.buffer.in_flight().is_none() {
            if self.buffer.next_report().is_none() {
                return Ok(false);
            }
            // A new report is frozen: journal it before it leaves, so that
            // a resent copy has the same content under the same sequence.
            self.write_journal();
        }
        let Some(report) = self.buffer.in_flight() else {
            return Ok(false);
        };
        let seq = report.seq;
        let samples = report.samples.len();
        let started = std::time::Instant::now();
        let res = self.sink.send(report).await;
        metrics::histogram!(crate::metrics::AGENT_REPORT_LATENCY_SECONDS)
            .record(started.elapsed().as_secs_f64());
        match res {
            Ok(ack) if ack.seq == seq => {
                self.fail("after-send");
                self.buffer.acknowledge(seq);
                self.write_journal();
                self.fail("after-ack");
                self.failures_in_a_row = 0;
                self.summary.reports_acked += 1;
                metrics::counter!(crate::metrics::AGENT_REPORTS_SENT_TOTAL).increment(1);
                metrics::gauge!(crate::metrics::AGENT_BUFFERED_FLOWS)
                    .set(self.buffer.buffered_flows() as f64);
                debug!(seq, samples, duplicate = ack.duplicate, "Sent traffic data");
                Ok(true)
            }
            Ok(ack) => {
                self.note_failure();
                Err(SendError::AckMismatch {
                    endpoint: String::from("sink"),
                    seq,
                    acked: ack.seq,
                })
            }
            Err(e) => {
                self.note_failure();
                if e.is_permanent() {
                    if let Some(lost) = self.buffer.discard_in_flight() {
                        self.write_journal();
                        let t = lost.total();
                        self.summary.rejected += t;
                        metrics::counter!(crate::metrics::AGENT_REPORTS_REJECTED_TOTAL)
                            .increment(1);
                        metrics::counter!(crate::metrics::AGENT_REJECTED_BYTES_TOTAL)
                            .increment(t.bytes);
                        error!(
                            seq,
                            bytes = t.bytes,
                            error = %e,
                            "the aggregator rejected a report for good; its bytes are lost"
                        );
                    }
                }
                Err(e)
            }
        }
    }

    fn note_failure(&mut self) {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        self.summary.send_failures += 1;
        metrics::counter!(crate::metrics::AGENT_REPORTS_FAILED_TOTAL).increment(1);
    }

    /// The delay before the next retry: exponential from
    /// `backoff_initial`, capped at `backoff_max`, with jitter (a random
    /// point in the upper half).
    fn backoff(&self) -> Duration {
        let exp = self.failures_in_a_row.saturating_sub(1).min(20);
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.config.backoff_max);
        let half = base / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 { 0 } else { random_u64() % nanos };
        half + Duration::from_nanos(jitter)
    }

    /// Runs until `shutdown` resolves: drains every interval, sends, retries
    /// with backoff. At shutdown it drains one last time and keeps trying to
    /// deliver for up to `shutdown_flush_timeout`; what is still buffered
    /// then is logged as an error and returned in the summary.
    pub async fn run<F>(mut self, shutdown: F) -> ReporterSummary
    where
        F: Future<Output = ()> + Send,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let interval = self.config.interval.max(Duration::from_millis(1));
        let mut next_drain = Instant::now() + interval;
        let mut send_at: Option<Instant> = None;
        loop {
            let wake = send_at.map_or(next_drain, |s| s.min(next_drain));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = &mut shutdown => break,
            }
            let now = Instant::now();
            if now >= next_drain {
                self.drain_once(SystemTime::now());
                while next_drain <= now {
                    next_drain += interval;
                }
                send_at.get_or_insert(now);
            }
            if send_at.is_some_and(|s| s <= now) {
                send_at = match self.send_once().await {
                    Ok(_) if self.buffer.has_unacknowledged() => Some(Instant::now()),
                    Ok(_) => None,
                    Err(e) => {
                        let delay = self.backoff();
                        warn!(error = %e, retry_in = ?delay, "report not acknowledged; will retry");
                        Some(Instant::now() + delay)
                    }
                };
            }
        }
        self.flush().await
    }

    /// Final drain and delivery attempts, bounded by `shutdown_flush_timeout`.
    async fn flush(mut self) -> ReporterSummary {
        self.drain_once(SystemTime::now());
        let deadline = Instant::now() + self.config.shutdown_flush_timeout;
        while self.buffer.has_unacknowledged() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.send_once()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let delay = self
                        .backoff()
                        .min(deadline.saturating_duration_since(Instant::now()));
                    debug!(error = %e, "final report not acknowledged; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(_) => break,
            }
        }
        self.summary.unsent = self.buffer.buffered_totals();
        if !self.summary.unsent.is_zero() {
            error!(
                bytes = self.summary.unsent.bytes,
                packets = self.summary.unsent.packets,
                "stopping with unacknowledged counters: the aggregator stayed away"
            );
        }
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{CollectError, Drain};

    struct Nothing;
    impl Collector for Nothing {
        fn drain(&mut self) -> Result<Drain, CollectError> {
            Ok(Drain::default())
        }
    }
    struct Down;
    impl ReportSink for Down {
        fn send<'a>(
            &'a self,
            report: &'a Report,
        ) -> Pin<Box<dyn Future<Output = Result<Ack, SendError>> + Send + 'a>> {
            let seq = report.seq;
            Box::pin(async move {
                Err(SendError::Rpc {
                    endpoint: "down".into(),
                    seq,
                    source: tonic::Status::unavailable("down"),
                })
            })
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut c = ReporterConfig::new("n");
        c.backoff_initial = Duration::from_millis(100);
        c.backoff_max = Duration::from_secs(2);
        let mut r = Reporter::new(c, Box::new(Nothing), Box::new(Down));
        for failures in 1..=12u32 {
            r.failures_in_a_row = failures;
            let step = Duration::from_millis(100)
                .saturating_mul(1 << (failures - 1).min(20))
                .min(Duration::from_secs(2));
            for _ in 0..20 {
                let d = r.backoff();
                assert!(
                    d >= step / 2 && d <= step,
                    "failure {failures}: {d:?} outside [{:?}, {step:?}]",
                    step / 2
                );
            }
        }
    }
}
