//! A Prometheus text-format recorder for the `metrics` facade, built for
//! hundreds of thousands of series.
//!
//! Libraries record through the facade; the binaries install this recorder
//! (with [`metrics::set_global_recorder`], through
//! [`RecorderBuilder::install`]) and serve [`RecorderHandle::render`] on
//! `/metrics`.
//!
//! # Cost model
//!
//! - Registering a series is the expensive step: the label text
//!   (`name{label="value",...} `) is escaped and formatted once, then kept
//!   with the series.
//! - Updating through a handle is an atomic add (counters), an atomic store
//!   or compare-and-swap (gauges), or a bucket add plus a sum update
//!   (histograms). No lock, no allocation, no clock.
//! - Rendering writes each series' stored prefix and its value, grouped per
//!   metric name, with `# HELP` (for described metrics) and `# TYPE` lines.
//!
//! # Output
//!
//! The format follows `metrics-exporter-prometheus` closely: metric families
//! sorted by name, each followed by a blank line; counters as integers,
//! gauges as floats; histograms as Prometheus histograms (`_bucket` with
//! cumulative counts and an `le` label, `_sum`, `_count`) with
//! [`DEFAULT_BUCKETS`] unless configured per metric. Metric names and label
//! names are sanitized to the Prometheus character sets; label values and
//! help text are escaped (backslash, double quote in label values, newline).
//!
//! # Idle expiry
//!
//! With [`RecorderBuilder::counter_idle_timeout`], a counter that was not
//! updated (an increment by zero counts as an update) for longer than the
//! timeout is removed at the next render or upkeep. Gauges and histograms
//! never expire. Activity is noticed when a render or upkeep sees it, so a
//! series is removed between one timeout and one timeout plus one
//! render/upkeep interval after its last update, never earlier. A handle that
//! is kept past its series' removal counts into nothing: the owner of cached
//! handles drops them before the timeout (see
//! [`super::prometheus::SeriesExpiry`]). Registering the key again creates a
//! fresh series at zero.
//!
//! # Locking
//!
//! Registration and rendering share one read-write lock: a render (or
//! upkeep) holds it for reading for its whole pass, so registering a new
//! series waits for a render in progress. Looking up an existing series and
//! updating through handles never wait.
//!
//! # Time
//!
//! Expiry reads no clock: [`RecorderHandle::render_at`] and
//! [`RecorderHandle::upkeep_at`] take the current monotonic time;
//! [`RecorderHandle::render`] and [`RecorderHandle::upkeep`] pass
//! [`Instant::now`].
//!
//! Why this file is long (about 950 lines, tests apart): storage, rendering
//! and expiry of the series are one data structure (a registry under an
//! `RwLock`, atomic cells behind cached handles) whose increment path and
//! render path share those cells; they are kept together so that their
//! ordering arguments can be read in one place.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
    SharedString, Unit,
};

/// The histogram buckets used unless a metric has its own: Prometheus'
/// client default, in seconds (5 ms to 10 s).
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Errors in a [`RecorderBuilder`] or while installing the recorder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    /// Histogram bucket bounds are empty, not finite or not strictly
    /// increasing.
    #[error("histogram buckets for {metric} must be finite, strictly increasing and not empty")]
    Buckets {
        /// The metric name, or `default`.
        metric: String,
    },
    /// The counter idle timeout is zero.
    #[error("counter idle timeout must be greater than zero")]
    ZeroIdleTimeout,
    /// Another global recorder is installed already.
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
}

/// Configures a [`Recorder`].
#[derive(Debug, Clone)]
pub struct RecorderBuilder {
    counter_idle_timeout: Option<Duration>,
    default_buckets: Vec<f64>,
    buckets: HashMap<String, Vec<f64>>,
}

impl Default for RecorderBuilder {
    fn default() -> Self {
        RecorderBuilder::new()
    }
}

impl RecorderBuilder {
    /// No expiry, [`DEFAULT_BUCKETS`] for every histogram.
    pub fn new() -> Self {
        RecorderBuilder {
            counter_idle_timeout: None,
            default_buckets: DEFAULT_BUCKETS.to_vec(),
            buckets: HashMap::new(),
        }
    }

    /// Removes counters not updated for longer than `timeout` (see the
    /// [module documentation](self)).
    pub fn counter_idle_timeout(mut self, timeout: Duration) -> Self {
        self.counter_idle_timeout = Some(timeout);
        self
    }

    /// Bucket upper bounds for histograms without buckets of their own.
    pub fn histogram_buckets(mut self, bounds: &[f64]) -> Self {
        self.default_buckets = bounds.to_vec();
        self
    }

    /// Bucket upper bounds for the histogram named `metric`.
    pub fn histogram_buckets_for(mut self, metric: &str, bounds: &[f64]) -> Self {
        self.buckets.insert(metric.to_string(), bounds.to_vec());
        self
    }

    /// The recorder.
    ///
    /// # Errors
    ///
    /// [`RecorderError::Buckets`] for unusable bucket bounds,
    /// [`RecorderError::ZeroIdleTimeout`] for a zero idle timeout.
    pub fn build(self) -> Result<Recorder, RecorderError> {
        fn check(metric: &str, bounds: Vec<f64>) -> Result<Arc<[f64]>, RecorderError> {
            let ok = !bounds.is_empty()
                && bounds.iter().all(|b| b.is_finite())
                && bounds.windows(2).all(|w| w[0] < w[1]);
            if ok {
                Ok(bounds.into())
            } else {
                Err(RecorderError::Buckets {
                    metric: metric.to_string(),
                })
            }
        }
        let idle_timeout = match self.counter_idle_timeout {
            Some(t) if t.is_zero() => return Err(RecorderError::ZeroIdleTimeout),
            Some(t) => Some(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)),
            None => None,
        };
        let default_buckets = check("default", self.default_buckets)?;
        let buckets = self
            .buckets
            .into_iter()
            .map(|(name, bounds)| Ok((name.clone(), check(&name, bounds)?)))
            .collect::<Result<_, RecorderError>>()?;
        Ok(Recorder {
            inner: Arc::new(Inner {
                idle_timeout,
                default_buckets,
                buckets,
                base: OnceLock::new(),
                registry: RwLock::new(Registry::default()),
                last_len: AtomicUsize::new(0),
                saturations: Arc::new(AtomicU64::new(0)),
            }),
        })
    }

    /// Builds the recorder and installs it as the global recorder.
    ///
    /// # Errors
    ///
    /// As [`RecorderBuilder::build`], and [`RecorderError::AlreadyInstalled`]
    /// when a global recorder is installed already.
    pub fn install(self) -> Result<RecorderHandle, RecorderError> {
        let recorder = self.build()?;
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|_| RecorderError::AlreadyInstalled)?;
        crate::metrics::describe();
        Ok(handle)
    }
}

/// The recorder: implements [`metrics::Recorder`]. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// A handle that renders this recorder's series.
    pub fn handle(&self) -> RecorderHandle {
        RecorderHandle {
            inner: self.inner.clone(),
        }
    }
}

/// Renders and expires a [`Recorder`]'s series; cheap to clone.
#[derive(Debug, Clone)]
pub struct RecorderHandle {
    inner: Arc<Inner>,
}

impl RecorderHandle {
    /// The Prometheus text exposition of every series, after removing idle
    /// counters as of now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_at(Instant::now(), &mut out);
        out
    }

    /// Appends the text exposition to `out`, after removing idle counters as
    /// of now.
    pub fn render_into(&self, out: &mut String) {
        self.render_at(Instant::now(), out);
    }

    /// Appends the text exposition to `out`, after removing counters idle
    /// longer than the timeout at `now` (monotonic time).
    pub fn render_at(&self, now: Instant, out: &mut String) {
        let start = out.len();
        out.reserve(self.inner.last_len.load(Ordering::Relaxed));
        self.inner.pass(now, Some(out));
        let saturations = self.inner.saturations.load(Ordering::Relaxed);
        if saturations > 0 {
            use std::fmt::Write as _;
            let _ = write!(
                out,
                "# HELP {SATURATIONS_METRIC} Counter increments that would have passed 2^64-1 and stopped there.\n# TYPE {SATURATIONS_METRIC} counter\n{SATURATIONS_METRIC} {saturations}\n"
            );
        }
        self.inner
            .last_len
            .store(out.len() - start, Ordering::Relaxed);
    }

    /// Removes idle counters as of now; returns how many were removed. Call
    /// it now and then when scrapes may be rare, to free their memory.
    pub fn upkeep(&self) -> usize {
        self.upkeep_at(Instant::now())
    }

    /// Removes counters idle longer than the timeout at `now`; returns how
    /// many were removed.
    pub fn upkeep_at(&self, now: Instant) -> usize {
        self.inner.pass(now, None)
    }

    /// Series currently held, of every kind (a histogram is one).
    pub fn series(&self) -> usize {
        let reg = self.inner.read();
        reg.families.values().map(|f| f.series.len()).sum()
    }
}

/// A pass-through hasher for [`Key`], which hashes itself as one `u64`
/// computed when the key was built.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; FNV-1a keeps any other use correct.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The series of one kind under one metric name, in registration order
/// (removal swaps the last one into the gap).
struct Table<E> {
    entries: Vec<Arc<E>>,
    keys: Vec<Key>,
    index: HashMap<Key, usize, BuildHasherDefault<KeyHasher>>,
}

impl<E> Default for Table<E> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            keys: Vec::new(),
            index: HashMap::default(),
        }
    }
}

impl<E> Table<E> {
    fn get(&self, key: &Key) -> Option<&Arc<E>> {
        self.index.get(key).map(|&i| &self.entries[i])
    }

    fn insert(&mut self, key: Key, entry: Arc<E>) {
        self.index.insert(key.clone(), self.entries.len());
        self.keys.push(key);
        self.entries.push(entry);
    }

    /// Removes `key` if its entry is still `entry`.
    fn remove(&mut self, key: &Key, entry: &Arc<E>) -> bool {
        let Some(&i) = self.index.get(key) else {
            return false;
        };
        if !Arc::ptr_eq(&self.entries[i], entry) {
            return false;
        }
        self.index.remove(key);
        self.entries.swap_remove(i);
        self.keys.swap_remove(i);
        if let Some(moved) = self.keys.get(i) {
            self.index.insert(moved.clone(), i);
        }
        true
    }
}

enum Series {
    Counter(Table<CounterEntry>),
    Gauge(Table<GaugeEntry>),
    Histogram {
        bounds: Arc<[f64]>,
        table: Table<HistogramEntry>,
    },
}

impl Series {
    fn len(&self) -> usize {
        match self {
            Series::Counter(t) => t.entries.len(),
            Series::Gauge(t) => t.entries.len(),
            Series::Histogram { table, .. } => table.entries.len(),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Series::Counter(_) => "counter",
            Series::Gauge(_) => "gauge",
            Series::Histogram { .. } => "histogram",
        }
    }
}

struct Family {
    /// The sanitized metric name.
    name: String,
    series: Series,
    /// Set once a registration of another kind under this name was refused.
    kind_conflict_logged: AtomicBool,
}

#[derive(Default)]
struct Registry {
    /// By the name as registered.
    families: HashMap<String, Family>,
    /// Escaped help text, by the name as described.
    help: HashMap<String, String>,
}

struct Inner {
    /// Nanoseconds; `None` disables expiry.
    idle_timeout: Option<u64>,
    default_buckets: Arc<[f64]>,
    buckets: HashMap<String, Arc<[f64]>>,
    /// The first time passed to a render or upkeep: ticks count from it.
    base: OnceLock<Instant>,
    registry: RwLock<Registry>,
    /// Length of the last render, to reserve the next one's buffer.
    last_len: AtomicUsize,
    /// Counter increments that would have passed `u64::MAX` and stopped
    /// there: rendered as [`SATURATIONS_METRIC`] once non-zero.
    saturations: Arc<AtomicU64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("idle_timeout_ns", &self.idle_timeout)
            .field("default_buckets", &self.default_buckets)
            .finish_non_exhaustive()
    }
}

/// A counter: the value, whether it changed since the last render or
/// upkeep, and the tick at which a change was last seen.
struct CounterEntry {
    value: AtomicU64,
    touched: AtomicBool,
    last_seen: AtomicU64,
    prefix: Box<str>,
    /// The recorder's count of saturated increments.
    saturations: Arc<AtomicU64>,
}

/// Name of the self-metric counting saturated increments.
pub const SATURATIONS_METRIC: &str = "netscope_counter_saturations_total";

impl CounterFn for CounterEntry {
    fn increment(&self, value: u64) {
        // Counters never wrap: an increment that would pass u64::MAX stops
        // there and is counted. The compare-exchange costs about what
        // fetch_add does when uncontended.
        let mut cur = self.value.load(Ordering::Relaxed);
        loop {
            let (next, saturated) = match cur.checked_add(value) {
                Some(n) => (n, false),
                None => (u64::MAX, true),
            };
            match self
                .value
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if saturated {
                        self.saturations.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Err(actual) => cur = actual,
            }
        }
        self.touched.store(true, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, Ordering::Relaxed);
        self.touched.store(true, Ordering::Relaxed);
    }
}

impl CounterEntry {
    /// Whether the counter is still alive at `tick`, given the idle
    /// timeout; notes activity.
    fn alive(&self, tick: u64, idle_timeout: u64) -> bool {
        if self.touched.load(Ordering::Relaxed) && self.touched.swap(false, Ordering::Relaxed) {
            self.last_seen.fetch_max(tick, Ordering::Relaxed);
            return true;
        }
        tick.saturating_sub(self.last_seen.load(Ordering::Relaxed)) <= idle_timeout
    }
}

/// A gauge: the bits of an `f64`.
struct GaugeEntry {
    value: AtomicU64,
    prefix: Box<str>,
}

fn add_f64(cell: &AtomicU64, delta: f64) {
    let mut current = cell.load(Ordering::Relaxed);
    loop {
        let new = (f64::from_bits(current) + delta).to_bits();
        match cell.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

impl GaugeFn for GaugeEntry {
    fn increment(&self, value: f64) {
        add_f64(&self.value, value);
    }

    fn decrement(&self, value: f64) {
        add_f64(&self.value, -value);
    }

    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// A histogram: per-bucket (not cumulative) counts, the last bucket being
/// `+Inf`, and the sum of observations.
struct HistogramEntry {
    bounds: Arc<[f64]>,
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    /// One prefix per bucket (`+Inf` last), then `_sum` and `_count`.
    prefixes: Box<[Box<str>]>,
}

impl HistogramEntry {
    fn bucket(&self, value: f64) -> usize {
        if value.is_nan() {
            self.bounds.len()
        } else {
            self.bounds.partition_point(|b| *b < value)
        }
    }
}

impl HistogramFn for HistogramEntry {
    fn record(&self, value: f64) {
        self.counts[self.bucket(value)].fetch_add(1, Ordering::Relaxed);
        add_f64(&self.sum, value);
    }

    fn record_many(&self, value: f64, count: usize) {
        let n = u64::try_from(count).unwrap_or(u64::MAX);
        self.counts[self.bucket(value)].fetch_add(n, Ordering::Relaxed);
        add_f64(&self.sum, value * count as f64);
    }
}

fn valid_name_char(c: char, first: bool, colon: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
}

/// Replaces characters outside `[a-zA-Z_:][a-zA-Z0-9_:]*` (metric names,
/// `colon`) or `[a-zA-Z_][a-zA-Z0-9_]*` (label names) with `_`.
fn sanitize_name(name: &str, colon: bool) -> String {
    if name.is_empty() {
        return "_".to_string();
    }
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if valid_name_char(c, i == 0, colon) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Appends `name`, sanitized as [`sanitize_name`] does.
fn push_name(out: &mut String, name: &str, colon: bool) {
    let valid = !name.is_empty()
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| valid_name_char(c, i == 0, colon));
    if valid {
        out.push_str(name);
    } else {
        out.push_str(&sanitize_name(name, colon));
    }
}

/// Appends `value` escaped for a label value (`quote`) or help text.
fn push_escaped(out: &mut String, value: &str, quote: bool) {
    if !value
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// `name[suffix]{k="v",...[,extra]} `.
fn series_prefix(name: &str, suffix: &str, key: &Key, extra: Option<(&str, &str)>) -> Box<str> {
    let mut out = String::with_capacity(name.len() + suffix.len() + 64);
    out.push_str(name);
    out.push_str(suffix);
    let mut first = true;
    let labels = key.labels().map(|l| (l.key(), l.value()));
    for (k, v) in labels.chain(extra) {
        out.push(if first { '{' } else { ',' });
        first = false;
        push_name(&mut out, k, false);
        out.push_str("=\"");
        push_escaped(&mut out, v, true);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.into_boxed_str()
}

fn push_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Nanoseconds since the first time seen, plus one.
    fn tick(&self, now: Instant) -> u64 {
        let base = *self.base.get_or_init(|| now);
        u64::try_from(now.saturating_duration_since(base).as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn describe(&self, key: KeyName, description: SharedString) {
        let mut help = String::with_capacity(description.len());
        push_escaped(&mut help, &description, false);
        self.write().help.insert(key.as_str().to_string(), help);
    }

    fn new_family(&self, raw: &str, kind: Kind) -> Family {
        let series = match kind {
            Kind::Counter => Series::Counter(Table::default()),
            Kind::Gauge => Series::Gauge(Table::default()),
            Kind::Histogram => Series::Histogram {
                bounds: self
                    .buckets
                    .get(raw)
                    .unwrap_or(&self.default_buckets)
                    .clone(),
                table: Table::default(),
            },
        };
        Family {
            name: sanitize_name(raw, true),
            series,
            kind_conflict_logged: AtomicBool::new(false),
        }
    }

    /// Finds or creates the series of `key`. `pick` selects the table of the
    /// right kind (None: the name is registered with another kind) and
    /// `make` builds a new entry from the family's name and bounds.
    fn register<E>(
        &self,
        key: &Key,
        kind: Kind,
        pick: fn(&mut Series) -> Option<&mut Table<E>>,
        peek: fn(&Series) -> Option<&Table<E>>,
        make: impl FnOnce(&str, &Series) -> E,
    ) -> Option<Arc<E>> {
        {
            let reg = self.read();
            if let Some(family) = reg.families.get(key.name()) {
                match peek(&family.series) {
                    Some(table) => {
                        if let Some(entry) = table.get(key) {
                            return Some(entry.clone());
                        }
                    }
                    None => return conflict(family, kind),
                }
            }
        }
        let mut reg = self.write();
        if !reg.families.contains_key(key.name()) {
            let family = self.new_family(key.name(), kind);
            reg.families.insert(key.name().to_string(), family);
        }
        let family = reg.families.get_mut(key.name())?;
        if peek(&family.series).is_none() {
            return conflict(family, kind);
        }
        if let Some(entry) = peek(&family.series).and_then(|t| t.get(key)) {
            return Some(entry.clone());
        }
        let entry = Arc::new(make(&family.name, &family.series));
        pick(&mut family.series)?.insert(key.clone(), entry.clone());
        Some(entry)
    }

    /// One pass over every family: notes counter activity, collects
    /// counters idle at `now` and, with `out`, renders the rest. Then
    /// removes the idle counters that are still idle. Returns how many were
    /// removed.
    fn pass(&self, now: Instant, mut out: Option<&mut String>) -> usize {
        let tick = self.tick(now);
        let mut expired: Vec<(String, Key, Arc<CounterEntry>)> = Vec::new();
        {
            let reg = self.read();
            let mut names: Vec<&String> = reg.families.keys().collect();
            names.sort_unstable();
            for raw in names {
                let family = &reg.families[raw];
                let header_at = out.as_ref().map(|o| o.len());
                if let Some(out) = out.as_deref_mut() {
                    if let Some(help) = reg.help.get(raw) {
                        out.push_str("# HELP ");
                        out.push_str(&family.name);
                        out.push(' ');
                        out.push_str(help);
                        out.push('\n');
                    }
                    out.push_str("# TYPE ");
                    out.push_str(&family.name);
                    out.push(' ');
                    out.push_str(family.series.type_name());
                    out.push('\n');
                }
                let mut lines = 0usize;
                match &family.series {
                    Series::Counter(table) => {
                        for (i, entry) in table.entries.iter().enumerate() {
                            if let Some(idle) = self.idle_timeout {
                                if !entry.alive(tick, idle) {
                                    expired.push((
                                        raw.clone(),
                                        table.keys[i].clone(),
                                        entry.clone(),
                                    ));
                                    continue;
                                }
                            }
                            if let Some(out) = out.as_deref_mut() {
                                out.push_str(&entry.prefix);
                                push_u64(out, entry.value.load(Ordering::Relaxed));
                                out.push('\n');
                            }
                            lines += 1;
                        }
                    }
                    Series::Gauge(table) => {
                        if let Some(out) = out.as_deref_mut() {
                            for entry in &table.entries {
                                out.push_str(&entry.prefix);
                                push_f64(out, f64::from_bits(entry.value.load(Ordering::Relaxed)));
                                out.push('\n');
                            }
                        }
                        lines += table.entries.len();
                    }
                    Series::Histogram { table, .. } => {
                        if let Some(out) = out.as_deref_mut() {
                            for entry in &table.entries {
                                let mut cumulative = 0u64;
                                for (prefix, count) in entry.prefixes.iter().zip(&*entry.counts) {
                                    cumulative += count.load(Ordering::Relaxed);
                                    out.push_str(prefix);
                                    push_u64(out, cumulative);
                                    out.push('\n');
                                }
                                let n = entry.counts.len();
                                out.push_str(&entry.prefixes[n]);
                                push_f64(out, f64::from_bits(entry.sum.load(Ordering::Relaxed)));
                                out.push('\n');
                                out.push_str(&entry.prefixes[n + 1]);
                                push_u64(out, cumulative);
                                out.push('\n');
                            }
                        }
                        lines += table.entries.len();
                    }
                }
                if let (Some(out), Some(at)) = (out.as_deref_mut(), header_at) {
                    if lines == 0 {
                        out.truncate(at);
                    } else {
                        out.push('\n');
                    }
                }
            }
        }
        if expired.is_empty() {
            return 0;
        }
        let mut reg = self.write();
        let mut removed = 0;
        for (raw, key, entry) in expired {
            // Updated since it was found idle: keep it.
            if entry.touched.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(Series::Counter(table)) = reg.families.get_mut(&raw).map(|f| &mut f.series)
            {
                removed += usize::from(table.remove(&key, &entry));
            }
        }
        removed
    }
}

fn conflict<E>(family: &Family, wanted: Kind) -> Option<Arc<E>> {
    if !family.kind_conflict_logged.swap(true, Ordering::Relaxed) {
        let wanted = match wanted {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        tracing::warn!(
            metric = %family.name,
            registered = family.series.type_name(),
            wanted,
            "metric name already registered as another kind; not recording"
        );
    }
    None
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.inner.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.inner.describe(key, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.inner.describe(key, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        self.inner
            .register(
                key,
                Kind::Counter,
                |s| match s {
                    Series::Counter(t) => Some(t),
                    _ => None,
                },
                |s| match s {
                    Series::Counter(t) => Some(t),
                    _ => None,
                },
                |name, _| CounterEntry {
                    value: AtomicU64::new(0),
                    // Registration counts as activity.
                    touched: AtomicBool::new(true),
                    last_seen: AtomicU64::new(0),
                    prefix: series_prefix(name, "", key, None),
                    saturations: self.inner.saturations.clone(),
                },
            )
            .map_or_else(Counter::noop, Counter::from_arc)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        self.inner
            .register(
                key,
                Kind::Gauge,
                |s| match s {
                    Series::Gauge(t) => Some(t),
                    _ => None,
                },
                |s| match s {
                    Series::Gauge(t) => Some(t),
                    _ => None,
                },
                |name, _| GaugeEntry {
                    value: AtomicU64::new(0f64.to_bits()),
                    prefix: series_prefix(name, "", key, None),
                },
            )
            .map_or_else(Gauge::noop, Gauge::from_arc)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        self.inner
            .register(
                key,
                Kind::Histogram,
                |s| match s {
                    Series::Histogram { table, .. } => Some(table),
                    _ => None,
                },
                |s| match s {
                    Series::Histogram { table, .. } => Some(table),
                    _ => None,
                },
                |name, series| {
                    let bounds = match series {
                        Series::Histogram { bounds, .. } => bounds.clone(),
                        _ => Arc::from(DEFAULT_BUCKETS.as_slice()),
                    };
                    let mut prefixes: Vec<Box<str>> = bounds
                        .iter()
                        .map(|b| {
                            let le = b.to_string();
                            series_prefix(name, "_bucket", key, Some(("le", &le)))
                        })
                        .collect();
                    prefixes.push(series_prefix(name, "_bucket", key, Some(("le", "+Inf"))));
                    prefixes.push(series_prefix(name, "_sum", key, None));
                    prefixes.push(series_prefix(name, "_count", key, None));
                    HistogramEntry {
                        counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                        bounds,
                        sum: AtomicU64::new(0f64.to_bits()),
                        prefixes: prefixes.into_boxed_slice(),
                    }
                },
            )
            .map_or_else(Histogram::noop, Histogram::from_arc)
    }
}

#[cfg(test)]
mod tests;
