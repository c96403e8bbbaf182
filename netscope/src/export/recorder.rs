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
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn recorder() -> Recorder {
        RecorderBuilder::new().build().expect("valid builder")
    }

    fn render(handle: &RecorderHandle, now: Instant) -> String {
        let mut out = String::new();
        handle.render_at(now, &mut out);
        out
    }

    #[test]
    fn counters_and_gauges_grouped_with_help_and_type() {
        let rec = recorder();
        let handle = rec.handle();
        metrics::with_local_recorder(&rec, || {
            metrics::describe_counter!("requests_total", "Requests served.");
            metrics::counter!("requests_total", "code" => "200", "method" => "GET").increment(7);
            metrics::counter!("requests_total", "code" => "500", "method" => "GET").increment(2);
            metrics::counter!("requests_total", "code" => "200", "method" => "GET").increment(3);
            metrics::counter!("bare_total").absolute(41);
            metrics::counter!("bare_total").absolute(40);
            metrics::gauge!("temperature_celsius", "room" => "a").set(21.5);
            metrics::gauge!("temperature_celsius", "room" => "a").increment(1.0);
            metrics::gauge!("queue_depth").set(3.0);
            metrics::gauge!("queue_depth").decrement(5.0);
        });
        assert_eq!(
            render(&handle, Instant::now()),
            "# TYPE bare_total counter\n\
             bare_total 41\n\
             \n\
             # TYPE queue_depth gauge\n\
             queue_depth -2\n\
             \n\
             # HELP requests_total Requests served.\n\
             # TYPE requests_total counter\n\
             requests_total{code=\"200\",method=\"GET\"} 10\n\
             requests_total{code=\"500\",method=\"GET\"} 2\n\
             \n\
             # TYPE temperature_celsius gauge\n\
             temperature_celsius{room=\"a\"} 22.5\n\
             \n"
        );
        assert_eq!(handle.series(), 5);
    }

    #[test]
    fn escapes_label_values_and_help_and_sanitizes_names() {
        let rec = recorder();
        let handle = rec.handle();
        metrics::with_local_recorder(&rec, || {
            metrics::describe_gauge!("odd.name-1", "Line one\nline \"two\" with a \\ backslash.");
            metrics::gauge!(
                "odd.name-1",
                "pod" => "a\"b\\c\nd",
                "1bad-key" => "plain"
            )
            .set(f64::INFINITY);
            metrics::gauge!("odd.name-1", "pod" => "x", "1bad-key" => "y").set(f64::NAN);
            metrics::gauge!("odd.name-1", "pod" => "z", "1bad-key" => "y").set(f64::NEG_INFINITY);
        });
        assert_eq!(
            render(&handle, Instant::now()),
            "# HELP odd_name_1 Line one\\nline \"two\" with a \\\\ backslash.\n\
             # TYPE odd_name_1 gauge\n\
             odd_name_1{pod=\"a\\\"b\\\\c\\nd\",_bad_key=\"plain\"} +Inf\n\
             odd_name_1{pod=\"x\",_bad_key=\"y\"} NaN\n\
             odd_name_1{pod=\"z\",_bad_key=\"y\"} -Inf\n\
             \n"
        );
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let rec = RecorderBuilder::new()
            .histogram_buckets_for("size_bytes", &[100.0, 1000.0])
            .build()
            .expect("valid builder");
        let handle = rec.handle();
        let values = [0.001, 0.005, 0.2, 0.25, 3.0, 60.0];
        metrics::with_local_recorder(&rec, || {
            metrics::describe_histogram!("latency_seconds", "Latency.");
            let h = metrics::histogram!("latency_seconds", "op" => "send");
            // On a bound counts into that bucket (le is "less or equal").
            for v in values {
                h.record(v);
            }
            metrics::histogram!("size_bytes").record_many(500.0, 3);
            metrics::histogram!("size_bytes").record(5000.0);
        });
        let text = render(&handle, Instant::now());
        // The sum as the same additions in the same order give it.
        let sum = values.iter().fold(0.0, |a, v| a + v);
        assert!((sum - 63.456f64).abs() < 1e-9);
        assert_eq!(
            text,
            "# HELP latency_seconds Latency.\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_bucket{op=\"send\",le=\"0.005\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.01\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.025\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.05\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.1\"} 2\n\
             latency_seconds_bucket{op=\"send\",le=\"0.25\"} 4\n\
             latency_seconds_bucket{op=\"send\",le=\"0.5\"} 4\n\
             latency_seconds_bucket{op=\"send\",le=\"1\"} 4\n\
             latency_seconds_bucket{op=\"send\",le=\"2.5\"} 4\n\
             latency_seconds_bucket{op=\"send\",le=\"5\"} 5\n\
             latency_seconds_bucket{op=\"send\",le=\"10\"} 5\n\
             latency_seconds_bucket{op=\"send\",le=\"+Inf\"} 6\n\
             latency_seconds_sum{op=\"send\"} SUM\n\
             latency_seconds_count{op=\"send\"} 6\n\
             \n\
             # TYPE size_bytes histogram\n\
             size_bytes_bucket{le=\"100\"} 0\n\
             size_bytes_bucket{le=\"1000\"} 3\n\
             size_bytes_bucket{le=\"+Inf\"} 4\n\
             size_bytes_sum 6500\n\
             size_bytes_count 4\n\
             \n"
            .replace("SUM", &sum.to_string())
        );
    }

    #[test]
    fn idle_counters_expire_touched_ones_stay_gauges_never() {
        let idle = Duration::from_secs(60);
        let rec = RecorderBuilder::new()
            .counter_idle_timeout(idle)
            .build()
            .expect("valid builder");
        let handle = rec.handle();
        let t0 = Instant::now();
        let (busy, quiet) = metrics::with_local_recorder(&rec, || {
            metrics::gauge!("g").set(1.0);
            (
                metrics::counter!("c_total", "s" => "busy"),
                metrics::counter!("c_total", "s" => "quiet"),
            )
        });
        busy.increment(5);
        quiet.increment(9);
        // First seen at t0.
        assert_eq!(handle.upkeep_at(t0), 0);
        // Adding zero is activity.
        busy.increment(0);
        let text = render(&handle, t0 + idle);
        assert!(text.contains("c_total{s=\"quiet\"} 9\n"), "{text}");
        // One timeout after the last sighting: not yet idle *longer* than it.
        assert_eq!(handle.upkeep_at(t0 + idle), 0);
        let text = render(&handle, t0 + idle + Duration::from_secs(1));
        assert!(!text.contains("quiet"), "quiet expired:\n{text}");
        assert!(text.contains("c_total{s=\"busy\"} 5\n"), "{text}");
        assert!(text.contains("g 1\n"), "{text}");
        assert_eq!(handle.series(), 2);

        // The stale handle counts into nothing; registering again starts at zero.
        quiet.increment(1);
        let again =
            metrics::with_local_recorder(&rec, || metrics::counter!("c_total", "s" => "quiet"));
        again.increment(2);
        let text = render(&handle, t0 + idle * 2);
        assert!(text.contains("c_total{s=\"quiet\"} 2\n"), "{text}");

        // Everything idle: the whole counter family goes, header included.
        let late = t0 + idle * 4;
        assert_eq!(handle.upkeep_at(late), 2);
        assert_eq!(
            render(&handle, late),
            "# TYPE g gauge\ng 1\n\n",
            "gauges never expire"
        );
    }

    #[test]
    fn without_timeout_nothing_expires_and_kinds_do_not_mix() {
        let rec = recorder();
        let handle = rec.handle();
        metrics::with_local_recorder(&rec, || {
            metrics::counter!("x_total").increment(1);
            // Another kind under the same name is refused, not rendered.
            metrics::gauge!("x_total").set(5.0);
            metrics::histogram!("x_total").record(5.0);
        });
        let text = render(&handle, Instant::now() + Duration::from_secs(86_400 * 365));
        assert_eq!(text, "# TYPE x_total counter\nx_total 1\n\n");
    }

    #[test]
    fn render_into_appends_and_builder_rejects_bad_input() {
        let rec = recorder();
        let handle = rec.handle();
        metrics::with_local_recorder(&rec, || metrics::counter!("a_total").increment(1));
        let mut out = String::from("before\n");
        handle.render_into(&mut out);
        assert_eq!(out, "before\n# TYPE a_total counter\na_total 1\n\n");
        assert_eq!(handle.render(), "# TYPE a_total counter\na_total 1\n\n");

        for bad in [&[][..], &[1.0, 1.0], &[2.0, 1.0], &[1.0, f64::INFINITY]] {
            assert_eq!(
                RecorderBuilder::new()
                    .histogram_buckets(bad)
                    .build()
                    .unwrap_err(),
                RecorderError::Buckets {
                    metric: "default".into()
                },
                "{bad:?}"
            );
        }
        assert_eq!(
            RecorderBuilder::new()
                .counter_idle_timeout(Duration::ZERO)
                .build()
                .unwrap_err(),
            RecorderError::ZeroIdleTimeout
        );
    }

    #[test]
    fn concurrent_updates_registrations_and_renders_lose_nothing() {
        let rec = Arc::new(
            RecorderBuilder::new()
                .counter_idle_timeout(Duration::from_secs(600))
                .build()
                .expect("valid builder"),
        );
        let handle = rec.handle();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    metrics::with_local_recorder(&*rec, || {
                        let shared = metrics::counter!("shared_total");
                        for i in 0..10_000u64 {
                            shared.increment(1);
                            if i % 100 == 0 {
                                // New series while others render.
                                metrics::counter!("own_total", "t" => t.to_string(), "i" => i.to_string())
                                    .increment(i);
                            }
                            metrics::histogram!("h_seconds").record(0.01);
                        }
                    });
                })
            })
            .collect();
        let mut renders = 0;
        while threads.iter().any(|t| !t.is_finished()) {
            let _ = handle.render();
            renders += 1;
        }
        for t in threads {
            t.join().expect("updater");
        }
        let text = handle.render();
        assert!(text.contains("\nshared_total 40000\n"), "{text}");
        assert!(text.contains("\nh_seconds_count 40000\n"), "{text}");
        assert_eq!(text.matches("own_total{").count(), 4 * 100);
        assert!(text.contains("own_total{t=\"3\",i=\"9900\"} 9900\n"));
        assert!(renders > 0);
    }

    /// Sample lines (not comments, not blank), sorted.
    fn samples(text: &str) -> Vec<&str> {
        let mut v: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        v.sort_unstable();
        v
    }

    /// The same calls through this recorder and `metrics-exporter-prometheus`
    /// give the same samples and the same HELP/TYPE lines.
    #[test]
    fn counters_and_gauges_match_metrics_exporter_prometheus() {
        let ours = recorder();
        let theirs = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let record = || {
            metrics::describe_counter!("pod_bytes_total", "Bytes \"per\" pod.");
            for i in 0..50u64 {
                metrics::counter!(
                    "pod_bytes_total",
                    "src_pod" => format!("pod-{i}"),
                    "note" => "quote \" and\nnewline"
                )
                .increment(i * 1000 + 7);
            }
            metrics::describe_gauge!("series", "Series per level.");
            metrics::gauge!("series", "level" => "pod").set(50.0);
            metrics::gauge!("series", "level" => "zone").set(0.25);
            metrics::gauge!("unlabelled").set(-3.5);
        };
        metrics::with_local_recorder(&ours, record);
        metrics::with_local_recorder(&theirs, record);
        let a = ours.handle().render();
        let b = theirs.handle().render();
        assert_eq!(samples(&a), samples(&b), "ours:\n{a}\ntheirs:\n{b}");
        let headers = |t: &str| {
            let mut v: Vec<String> = t
                .lines()
                .filter(|l| l.starts_with('#'))
                .map(String::from)
                .collect();
            v.sort();
            v
        };
        assert_eq!(headers(&a), headers(&b));
    }

    /// `promtool check metrics` accepts the output (and has no lint to
    /// report) for counters, gauges and histograms with escaped labels.
    #[test]
    fn promtool_accepts_the_output() {
        const PROMTOOL: &str = "/usr/bin/promtool";
        if !std::path::Path::new(PROMTOOL).exists() {
            eprintln!("SKIPPED promtool_accepts_the_output: {PROMTOOL} is missing (make deps installs it)");
            return;
        }
        let rec = RecorderBuilder::new()
            .counter_idle_timeout(Duration::from_secs(600))
            .build()
            .expect("valid builder");
        metrics::with_local_recorder(&rec, || {
            metrics::describe_counter!("netscope_test_bytes_total", "Bytes.\nSecond line \\ here.");
            for i in 0..20u64 {
                metrics::counter!(
                    "netscope_test_bytes_total",
                    "pod" => format!("p\"{i}\\\n"),
                    "zone" => "us-east-1a"
                )
                .increment(i);
            }
            metrics::describe_gauge!("netscope_test_series", "Series.");
            metrics::gauge!("netscope_test_series", "level" => "pod").set(20.0);
            metrics::gauge!("netscope_test_series", "level" => "inf").set(f64::INFINITY);
            metrics::describe_histogram!("netscope_test_latency_seconds", "Latency.");
            for v in [0.003, 0.07, 1.5, 42.0] {
                metrics::histogram!("netscope_test_latency_seconds", "op" => "send").record(v);
            }
        });
        let text = rec.handle().render();
        let mut child = Command::new(PROMTOOL)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feed promtool");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}\n{}{}\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.matches("netscope_test_bytes_total{").count(), 20);
        assert!(text.contains("netscope_test_latency_seconds_count{op=\"send\"} 4\n"));
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        let rec = recorder();
        let handle = rec.handle();
        metrics::with_local_recorder(&rec, || {
            let c = metrics::counter!("huge_total");
            c.increment(u64::MAX - 5);
            c.increment(10);
            c.increment(1);
        });
        let out = render(&handle, Instant::now());
        assert!(
            out.contains(&format!("huge_total {}\n", u64::MAX)),
            "not saturated: {out}"
        );
        let line = out
            .lines()
            .find(|l| l.starts_with(SATURATIONS_METRIC))
            .unwrap_or_else(|| panic!("no saturation count in {out}"));
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert_eq!(n, 2, "two saturated increments");
    }
}
