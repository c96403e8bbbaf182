//! Prometheus metrics, recorded through the [`metrics`] facade.
//!
//! [`PrometheusExporter`] records counters for every resolved flow; the
//! binary installs the recorder ([`super::recorder`]) and serves `/metrics`.
//! The library never installs one. `docs/metrics.md` lists every metric with
//! its labels, the example PromQL queries and the pricing rules; [`names`]
//! holds the metric names.
//!
//! # Wiring it up
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//!
//! use netscope::export::prometheus::{PrometheusConfig, PrometheusExporter, SeriesExpiry};
//! use netscope::export::recorder::RecorderBuilder;
//! use netscope::{Endpoint, EndpointKind};
//!
//! let config = PrometheusConfig {
//!     expiry: SeriesExpiry::new(Duration::from_secs(600))?,
//!     ..PrometheusConfig::default()
//! };
//! // Only the binary installs a recorder. The idle timeout applies to
//! // counters only: the exporter's gauges must stay.
//! let handle = RecorderBuilder::new()
//!     .counter_idle_timeout(config.expiry.idle_timeout())
//!     .install()?;
//! let exporter = Arc::new(PrometheusExporter::new(config)?);
//!
//! // In a task of its own, every `config.expiry.upkeep_interval()`:
//! let pod_exists = |_namespace: &str, _name: &str| true; // ask the resolver's snapshot
//! exporter.upkeep(Instant::now(), &|ep: &Endpoint| {
//!     ep.kind != EndpointKind::Pod || pod_exists(&ep.namespace, &ep.name)
//! });
//! // `/metrics` answers with:
//! let body: String = handle.render();
//! # drop(body);
//! # Ok(())
//! # }
//! ```
//!
//! # Hot path
//!
//! Counter handles are cached per pair of endpoints (keyed by the identity of
//! the resolver's `Arc<Endpoint>`s, which the cache keeps alive), so counting
//! a flow of a known pair is one hash lookup on two pointers and a dozen
//! atomic increments, with no allocation and no label formatting.
//!
//! # Series expiry
//!
//! The recorder removes a counter that did not change for
//! [`SeriesExpiry::idle_timeout`]. A cached handle must never outlive its
//! series, or increments would go to a counter that is no longer rendered. So
//! [`PrometheusExporter::upkeep`] drops handles idle for
//! [`SeriesExpiry::handle_ttl`] (half the idle timeout), and it keeps the
//! series of pairs whose endpoints both still exist alive by touching them
//! (adding zero, which the recorder sees as activity). Series of gone pods
//! therefore disappear one idle timeout after their last traffic, while an
//! idle pair of live pods keeps its series (and `increase()` over it stays
//! exact when traffic resumes).
//!
//! # Cardinality guard
//!
//! [`CardinalityLimits`] caps the distinct label sets per level. Beyond the
//! cap, new pairs are folded: their pod, namespace, workload and kind labels
//! become [`OTHER`] (zone and region labels are kept, so totals, cross-zone
//! sums and cost stay exact), and [`names::FOLDED_FLOWS`] counts the flows
//! recorded that way.
//!
//! Why this file is long (about 970 lines, tests apart): the label-set cache,
//! the three cardinality guards, the cost meters and the idle expiry all live
//! under one lock and keep invariants across each other (a cached handle
//! never outlives its series, a folded label set is counted once); split into
//! files, each half would need the other's internals.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::{Counter, Key, Label, Level, Metadata};

use super::cost::{BillingSide, CostMeter, Pricing};
use super::{Exporter, ResolvedFlow};
use crate::endpoint::Endpoint;
use crate::flow::Counters;

/// Metric names.
pub mod names {
    /// Seed metric: bytes between two endpoints.
    /// Labels: [`POD_LABELS`](super::POD_LABELS).
    pub const POD_BYTES: &str = "pod_network_traffic_bytes_total";
    /// Seed metric: bytes between two endpoints in different known zones.
    /// Labels: [`POD_LABELS`](super::POD_LABELS).
    pub const POD_CROSS_ZONE_BYTES: &str = "pod_cross_zone_network_traffic_bytes_total";
    /// Packets between two endpoints.
    pub const POD_PACKETS: &str = "pod_network_traffic_packets_total";
    /// Packets between two endpoints in different known zones.
    pub const POD_CROSS_ZONE_PACKETS: &str = "pod_cross_zone_network_traffic_packets_total";
    /// Bytes between two workloads. Labels: [`WORKLOAD_LABELS`](super::WORKLOAD_LABELS).
    pub const WORKLOAD_BYTES: &str = "netscope_workload_network_traffic_bytes_total";
    /// Packets between two workloads.
    pub const WORKLOAD_PACKETS: &str = "netscope_workload_network_traffic_packets_total";
    /// Bytes between two workloads in different known zones.
    pub const WORKLOAD_CROSS_ZONE_BYTES: &str =
        "netscope_workload_cross_zone_network_traffic_bytes_total";
    /// Packets between two workloads in different known zones.
    pub const WORKLOAD_CROSS_ZONE_PACKETS: &str =
        "netscope_workload_cross_zone_network_traffic_packets_total";
    /// Bytes between two zones (same-zone pairs included).
    /// Labels: [`ZONE_LABELS`](super::ZONE_LABELS).
    pub const ZONE_BYTES: &str = "netscope_zone_network_traffic_bytes_total";
    /// Packets between two zones.
    pub const ZONE_PACKETS: &str = "netscope_zone_network_traffic_packets_total";
    /// Bytes between two different known regions. Labels: `src_region, dst_region`.
    pub const CROSS_REGION_BYTES: &str = "netscope_cross_region_network_traffic_bytes_total";
    /// Packets between two different known regions.
    pub const CROSS_REGION_PACKETS: &str = "netscope_cross_region_network_traffic_packets_total";
    /// Estimated inter-AZ cost in whole microdollars (1e-6 USD), per billing
    /// side. Labels: [`ZONE_LABELS`](super::ZONE_LABELS) plus `side`.
    pub const CROSS_ZONE_COST: &str = "netscope_cross_zone_cost_microdollars_total";
    /// Flows whose labels were folded into `other` by the cardinality guard.
    /// Label: `level` (`pod`, `workload`, `zone`).
    pub const FOLDED_FLOWS: &str = crate::metrics::EXPORTER_FOLDED_FLOWS_TOTAL;
    /// Gauge: label sets the exporter currently tracks, per `level`.
    pub const SERIES: &str = crate::metrics::EXPORTER_SERIES;
}

/// Labels of the pod-level (seed) metrics, in order.
pub const POD_LABELS: [&str; 6] = [
    "src_pod",
    "src_namespace",
    "dst_pod",
    "dst_namespace",
    "src_zone",
    "dst_zone",
];

/// Labels of the workload-level metrics, in order.
pub const WORKLOAD_LABELS: [&str; 10] = [
    "src_workload",
    "src_workload_kind",
    "src_namespace",
    "dst_workload",
    "dst_workload_kind",
    "dst_namespace",
    "src_zone",
    "dst_zone",
    "src_region",
    "dst_region",
];

/// Labels of the zone-level metrics, in order (the cost counter adds `side`).
pub const ZONE_LABELS: [&str; 4] = ["src_zone", "dst_zone", "src_region", "dst_region"];

/// The label value that folded label sets carry.
pub const OTHER: &str = "other";

/// One level of aggregation, each with its own cardinality limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesLevel {
    /// Pod pairs: the seed metrics.
    Pod,
    /// Workload pairs.
    Workload,
    /// Zone pairs.
    Zone,
}

impl SeriesLevel {
    /// All levels.
    pub const ALL: [SeriesLevel; 3] = [SeriesLevel::Pod, SeriesLevel::Workload, SeriesLevel::Zone];

    /// The `level` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SeriesLevel::Pod => "pod",
            SeriesLevel::Workload => "workload",
            SeriesLevel::Zone => "zone",
        }
    }

    fn index(self) -> usize {
        match self {
            SeriesLevel::Pod => 0,
            SeriesLevel::Workload => 1,
            SeriesLevel::Zone => 2,
        }
    }
}

/// Errors in a [`PrometheusConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrometheusConfigError {
    /// The idle timeout is zero.
    #[error("series idle timeout must be greater than zero")]
    ZeroIdleTimeout,
    /// A cardinality limit is zero.
    #[error("cardinality limit for {level:?} series must be at least 1")]
    ZeroLimit {
        /// The level whose limit is zero.
        level: SeriesLevel,
    },
}

/// When series of idle pairs are removed from the output.
///
/// The binary passes [`SeriesExpiry::idle_timeout`] to its recorder
/// ([`RecorderBuilder::counter_idle_timeout`](super::recorder::RecorderBuilder::counter_idle_timeout)) and calls
/// [`PrometheusExporter::upkeep`] every [`SeriesExpiry::upkeep_interval`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesExpiry {
    idle_timeout: Duration,
}

impl SeriesExpiry {
    /// Ten minutes.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

    /// Series idle for longer than `idle_timeout`, whose endpoints are gone,
    /// are removed.
    ///
    /// # Errors
    ///
    /// [`PrometheusConfigError::ZeroIdleTimeout`] for a zero duration.
    pub fn new(idle_timeout: Duration) -> Result<Self, PrometheusConfigError> {
        if idle_timeout.is_zero() {
            return Err(PrometheusConfigError::ZeroIdleTimeout);
        }
        Ok(SeriesExpiry { idle_timeout })
    }

    /// The recorder's idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How long the exporter keeps an unused counter handle: half the idle
    /// timeout, so that a handle is always dropped before the recorder can
    /// remove its series.
    pub fn handle_ttl(&self) -> Duration {
        self.idle_timeout / 2
    }

    /// How often to call [`PrometheusExporter::upkeep`]: a quarter of the idle
    /// timeout. Calling it less often than [`SeriesExpiry::handle_ttl`] minus
    /// this interval risks counting into removed series.
    pub fn upkeep_interval(&self) -> Duration {
        self.idle_timeout / 4
    }
}

impl Default for SeriesExpiry {
    fn default() -> Self {
        SeriesExpiry {
            idle_timeout: SeriesExpiry::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// The label-cardinality guard: distinct label sets per level before new
/// ones fold into [`OTHER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardinalityLimits {
    /// Distinct pod-pair label sets (each makes 2 series, 4 when cross-zone).
    pub pod_pairs: usize,
    /// Distinct workload-pair label sets.
    pub workload_pairs: usize,
    /// Distinct zone-pair label sets.
    pub zone_pairs: usize,
}

impl CardinalityLimits {
    fn get(&self, level: SeriesLevel) -> usize {
        match level {
            SeriesLevel::Pod => self.pod_pairs,
            SeriesLevel::Workload => self.workload_pairs,
            SeriesLevel::Zone => self.zone_pairs,
        }
    }
}

impl Default for CardinalityLimits {
    fn default() -> Self {
        CardinalityLimits {
            pod_pairs: 100_000,
            workload_pairs: 20_000,
            zone_pairs: 2_000,
        }
    }
}

/// Settings of the [`PrometheusExporter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrometheusConfig {
    /// Prices of each billing side, for the cost counter.
    pub pricing: Pricing,
    /// The cardinality guard.
    pub limits: CardinalityLimits,
    /// Series expiry.
    pub expiry: SeriesExpiry,
}

/// What one [`PrometheusExporter::upkeep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpkeepStats {
    /// Pairs whose cached handles were dropped (idle, and an endpoint is gone).
    pub pairs_evicted: usize,
    /// Idle pairs of live endpoints whose series were touched to keep them.
    pub pairs_kept_alive: usize,
    /// Pairs still cached.
    pub pairs: usize,
    /// Label sets tracked per level (pod, workload, zone), folded ones included.
    pub series: [usize; 3],
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

fn register(name: &'static str, labels: Vec<Label>) -> Counter {
    let key = Key::from_parts(name, labels);
    metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA))
}

impl Traffic {
    /// Bytes and packets series under `names[0..2]`, and, when `cross`,
    /// the cross-zone pair under `names[2..4]`, all with the same labels.
    fn new(
        label_names: &[&'static str],
        values: &[Arc<str>],
        names: [&'static str; 4],
        cross: bool,
    ) -> Self {
        let v: Vec<&Arc<str>> = values.iter().collect();
        let l = || labels(label_names, &v);
        Traffic {
            bytes: register(names[0], l()),
            packets: register(names[1], l()),
            extra: cross.then(|| (register(names[2], l()), register(names[3], l()))),
            last_used: AtomicU64::new(0),
        }
    }
}

fn labels(names: &[&'static str], values: &[&Arc<str>]) -> Vec<Label> {
    names
        .iter()
        .zip(values)
        .map(|(name, value)| Label::new(*name, Arc::clone(value)))
        .collect()
}

/// Bytes and packets counters, plus a second pair that only some label sets
/// have (cross-zone at pod and workload level, cross-region at zone level).
struct Traffic {
    bytes: Counter,
    packets: Counter,
    extra: Option<(Counter, Counter)>,
    /// Tick of the last upkeep before the last use.
    last_used: AtomicU64,
}

impl Traffic {
    fn record(&self, c: Counters, tick: u64) {
        self.bytes.increment(c.bytes);
        self.packets.increment(c.packets);
        if let Some((bytes, packets)) = &self.extra {
            bytes.increment(c.bytes);
            packets.increment(c.packets);
        }
        self.last_used.store(tick, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.record(Counters::default(), self.last_used.load(Ordering::Relaxed));
    }
}

struct ZoneSeries {
    traffic: Traffic,
    /// Cost counter and meter per billing side; only for label sets that can
    /// be billed.
    cost: Option<[(Counter, CostMeter); 2]>,
}

/// Everything one pair of endpoints records into.
struct PairSeries {
    /// Kept so the pointer identity used as the cache key stays unique.
    src: Arc<Endpoint>,
    dst: Arc<Endpoint>,
    pod: Arc<Traffic>,
    workload: Arc<Traffic>,
    zone: Arc<ZoneSeries>,
    cross_zone: bool,
    billed: bool,
    folded: [bool; 3],
    last_used: AtomicU64,
}

impl PairSeries {
    fn record(&self, c: Counters, tick: u64) {
        self.pod.record(c, tick);
        self.workload.record(c, tick);
        self.zone.traffic.record(c, tick);
        if let Some(cost) = &self.zone.cost {
            for (counter, meter) in cost {
                // Incremented even by zero: a cached handle must change
                // whenever its pair records, or the recorder could expire
                // it (small flows may take many windows to make a whole
                // microdollar) while we still hold it.
                let micro = if self.billed { meter.add(c.bytes) } else { 0 };
                counter.increment(micro);
            }
        }
        self.last_used.store(tick, Ordering::Relaxed);
    }

    /// Adds zero everywhere this pair records, so the recorder sees activity.
    fn touch(&self) {
        self.pod.touch();
        self.workload.touch();
        self.zone.traffic.touch();
        if let Some(cost) = &self.zone.cost {
            for (counter, _) in cost {
                counter.increment(0);
            }
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PodKey {
    values: [Arc<str>; 6],
    folded: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct WorkloadKey {
    values: [Arc<str>; 10],
    folded: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ZoneKey {
    values: [Arc<str>; 4],
    folded: bool,
}

/// A fast hasher for the pointer-pair cache key (splitmix64 mixing).
#[derive(Default)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_add(0x9e37_79b9_7f4a_7c15)
            .rotate_left(23);
        self.0 = self.0.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

type PairMap = HashMap<(usize, usize), PairSeries, BuildHasherDefault<PtrHasher>>;

struct State {
    pairs: PairMap,
    pods: HashMap<PodKey, Arc<Traffic>>,
    workloads: HashMap<WorkloadKey, Arc<Traffic>>,
    zones: HashMap<ZoneKey, Arc<ZoneSeries>>,
    /// The cost meters' remainders of zone label sets dropped while idle:
    /// when the label set comes back, its meters go on from them, so the
    /// microdollar counter stays floor(total bytes x price) across the drop
    /// (the recorder keeps the counter's value meanwhile). At most one entry
    /// per zone label set that was dropped and has not come back.
    cost_carry: HashMap<ZoneKey, [u64; 2]>,
    /// Label sets per level that are not folded, for the limits.
    unfolded: [usize; 3],
    /// Monotonic tick of the last upkeep, 0 before the first. Nanoseconds
    /// since `base`, plus one.
    tick: u64,
    base: Option<Instant>,
    described: bool,
    other: Arc<str>,
}

/// Records resolved flows as Prometheus counters through the `metrics`
/// facade. See the [module documentation](self).
pub struct PrometheusExporter {
    config: PrometheusConfig,
    max_pairs: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusExporter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PrometheusExporter {
    /// An exporter with the given settings. Counters are registered with the
    /// recorder that is installed when a flow first needs them, and handles
    /// are cached: install the recorder before the first
    /// [`Exporter::export`].
    ///
    /// # Errors
    ///
    /// [`PrometheusConfigError::ZeroLimit`] when a cardinality limit is zero.
    pub fn new(config: PrometheusConfig) -> Result<Self, PrometheusConfigError> {
        for level in SeriesLevel::ALL {
            if config.limits.get(level) == 0 {
                return Err(PrometheusConfigError::ZeroLimit { level });
            }
        }
        Ok(PrometheusExporter {
            config,
            // Pairs of endpoints outnumber pod label sets only when a
            // resolver hands out several `Arc`s for one endpoint.
            max_pairs: config.limits.pod_pairs.saturating_mul(4).max(1024),
            state: Mutex::new(State {
                pairs: PairMap::default(),
                pods: HashMap::new(),
                workloads: HashMap::new(),
                zones: HashMap::new(),
                cost_carry: HashMap::new(),
                unfolded: [0; 3],
                tick: 0,
                base: None,
                described: false,
                other: Arc::from(OTHER),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &PrometheusConfig {
        &self.config
    }

    /// Expires and keeps alive; call it every
    /// [`SeriesExpiry::upkeep_interval`] with the current monotonic time.
    ///
    /// Pairs unused for [`SeriesExpiry::handle_ttl`] are dropped from the
    /// cache unless `is_live` says both endpoints still exist, in which case
    /// their series are touched so the recorder keeps them. A sensible
    /// `is_live` answers from the resolver's snapshot: for pods, whether the
    /// pod still exists; `true` for kinds that do not come and go.
    pub fn upkeep(&self, now: Instant, is_live: &dyn Fn(&Endpoint) -> bool) -> UpkeepStats {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        let base = *state.base.get_or_insert(now);
        let now_tick = u64::try_from(now.saturating_duration_since(base).as_nanos())
            .unwrap_or(u64::MAX - 1)
            + 1;
        state.tick = state.tick.max(now_tick);
        let ttl = u64::try_from(self.config.expiry.handle_ttl().as_nanos()).unwrap_or(u64::MAX);
        // Stamps are never later than the use they record, so this never
        // under-estimates idleness. 0 means "before the first upkeep".
        let idle = |last: u64| last == 0 || now_tick.saturating_sub(last) >= ttl;

        let mut stats = UpkeepStats::default();
        state.pairs.retain(|_, pair| {
            if !idle(pair.last_used.load(Ordering::Relaxed)) {
                return true;
            }
            if is_live(&pair.src) && is_live(&pair.dst) {
                pair.touch();
                stats.pairs_kept_alive += 1;
                true
            } else {
                stats.pairs_evicted += 1;
                false
            }
        });

        // A label set nobody caches any more, idle as long, goes too.
        let unfolded = &mut state.unfolded;
        state.pods.retain(|key, s| {
            let keep = Arc::strong_count(s) > 1 || !idle(s.last_used.load(Ordering::Relaxed));
            if !keep && !key.folded {
                unfolded[0] = unfolded[0].saturating_sub(1);
            }
            keep
        });
        state.workloads.retain(|key, s| {
            let keep = Arc::strong_count(s) > 1 || !idle(s.last_used.load(Ordering::Relaxed));
            if !keep && !key.folded {
                unfolded[1] = unfolded[1].saturating_sub(1);
            }
            keep
        });
        let carry = &mut state.cost_carry;
        let carry_limit = self.config.limits.zone_pairs.saturating_mul(4).max(64);
        state.zones.retain(|key, s| {
            let keep =
                Arc::strong_count(s) > 1 || !idle(s.traffic.last_used.load(Ordering::Relaxed));
            if !keep && !key.folded {
                unfolded[2] = unfolded[2].saturating_sub(1);
            }
            if !keep {
                if let Some(cost) = &s.cost {
                    let rem = [cost[0].1.remainder(), cost[1].1.remainder()];
                    // Bounded: past it, a returning label set loses less
                    // than a microdollar per side.
                    if rem != [0, 0] && carry.len() < carry_limit {
                        carry.insert(key.clone(), rem);
                    }
                }
            }
            keep
        });
        stats.pairs = state.pairs.len();
        stats.series = [state.pods.len(), state.workloads.len(), state.zones.len()];
        drop(guard);
        publish_series_gauges(stats.series);
        stats
    }

    fn build_pair(
        &self,
        state: &mut State,
        src: &Arc<Endpoint>,
        dst: &Arc<Endpoint>,
    ) -> PairSeries {
        let flow_like =
            |a: Option<&str>, b: Option<&str>| matches!((a, b), (Some(x), Some(y)) if x != y);
        let cross_zone = flow_like(src.known_zone(), dst.known_zone());
        let cross_region = flow_like(src.known_region(), dst.known_region());
        let billed = cross_zone && !cross_region;

        let s = |v: &str| -> Arc<str> { Arc::from(v) };
        let src_zone = s(src.zone_label());
        let dst_zone = s(dst.zone_label());
        let src_region = s(src.region_label());
        let dst_region = s(dst.region_label());
        let other = state.other.clone();
        let mut folded = [false; 3];
        let limits = self.config.limits;

        // Pod level.
        let key = PodKey {
            values: [
                s(src.pod_label()),
                s(src.namespace_label()),
                s(dst.pod_label()),
                s(dst.namespace_label()),
                src_zone.clone(),
                dst_zone.clone(),
            ],
            folded: false,
        };
        let pod = series_for(
            &mut state.pods,
            key,
            (&mut state.unfolded[0], limits.pod_pairs, &mut folded[0]),
            || PodKey {
                values: [
                    other.clone(),
                    other.clone(),
                    other.clone(),
                    other.clone(),
                    src_zone.clone(),
                    dst_zone.clone(),
                ],
                folded: true,
            },
            |key| {
                Arc::new(Traffic::new(
                    &POD_LABELS,
                    &key.values,
                    [
                        names::POD_BYTES,
                        names::POD_PACKETS,
                        names::POD_CROSS_ZONE_BYTES,
                        names::POD_CROSS_ZONE_PACKETS,
                    ],
                    cross_zone,
                ))
            },
        );

        // Workload level.
        let key = WorkloadKey {
            values: [
                s(src.workload_label()),
                s(src.workload_kind.as_str()),
                s(src.namespace_label()),
                s(dst.workload_label()),
                s(dst.workload_kind.as_str()),
                s(dst.namespace_label()),
                src_zone.clone(),
                dst_zone.clone(),
                src_region.clone(),
                dst_region.clone(),
            ],
            folded: false,
        };
        let workload = series_for(
            &mut state.workloads,
            key,
            (
                &mut state.unfolded[1],
                limits.workload_pairs,
                &mut folded[1],
            ),
            || WorkloadKey {
                values: [
                    other.clone(),
                    other.clone(),
                    other.clone(),
                    other.clone(),
                    other.clone(),
                    other.clone(),
                    src_zone.clone(),
                    dst_zone.clone(),
                    src_region.clone(),
                    dst_region.clone(),
                ],
                folded: true,
            },
            |key| {
                Arc::new(Traffic::new(
                    &WORKLOAD_LABELS,
                    &key.values,
                    [
                        names::WORKLOAD_BYTES,
                        names::WORKLOAD_PACKETS,
                        names::WORKLOAD_CROSS_ZONE_BYTES,
                        names::WORKLOAD_CROSS_ZONE_PACKETS,
                    ],
                    cross_zone,
                ))
            },
        );

        // Zone level.
        let key = ZoneKey {
            values: [
                src_zone.clone(),
                dst_zone.clone(),
                src_region.clone(),
                dst_region.clone(),
            ],
            folded: false,
        };
        let pricing = self.config.pricing;
        let carry = &mut state.cost_carry;
        let zone = series_for(
            &mut state.zones,
            key,
            (&mut state.unfolded[2], limits.zone_pairs, &mut folded[2]),
            || ZoneKey {
                values: [
                    other.clone(),
                    other.clone(),
                    src_region.clone(),
                    dst_region.clone(),
                ],
                folded: true,
            },
            |key| {
                let v: Vec<&Arc<str>> = key.values.iter().collect();
                let l = || labels(&ZONE_LABELS, &v);
                let regions = [&src_region, &dst_region];
                let rl = || labels(&["src_region", "dst_region"], &regions);
                // A folded label set mixes billed and unbilled pairs;
                // the pair decides whether to charge.
                let billable = billed || key.folded;
                let rem = carry.remove(key).unwrap_or([0, 0]);
                Arc::new(ZoneSeries {
                    traffic: Traffic {
                        bytes: register(names::ZONE_BYTES, l()),
                        packets: register(names::ZONE_PACKETS, l()),
                        extra: cross_region.then(|| {
                            (
                                register(names::CROSS_REGION_BYTES, rl()),
                                register(names::CROSS_REGION_PACKETS, rl()),
                            )
                        }),
                        last_used: AtomicU64::new(0),
                    },
                    cost: billable.then(|| {
                        let mut i = 0;
                        BillingSide::BOTH.map(|side| {
                            let mut cl = l();
                            cl.push(Label::from_static_parts("side", side.as_str()));
                            i += 1;
                            (
                                register(names::CROSS_ZONE_COST, cl),
                                CostMeter::with_remainder(pricing.side(side), rem[i - 1]),
                            )
                        })
                    }),
                })
            },
        );

        PairSeries {
            src: src.clone(),
            dst: dst.clone(),
            pod,
            workload,
            zone,
            cross_zone,
            billed,
            folded,
            last_used: AtomicU64::new(0),
        }
    }
}

/// The series of one level for `key`: the cached one, or a new one; past the
/// level's limit the key is replaced by its folded form (`other` labels,
/// zones and regions kept) and the fold is flagged.
fn series_for<K: std::hash::Hash + Eq, S: Clone>(
    map: &mut HashMap<K, S>,
    key: K,
    (used, limit, folded): (&mut usize, usize, &mut bool),
    fold: impl FnOnce() -> K,
    make: impl FnOnce(&K) -> S,
) -> S {
    if let Some(series) = map.get(&key) {
        return series.clone();
    }
    let key = if *used < limit {
        *used += 1;
        key
    } else {
        *folded = true;
        fold()
    };
    map.entry(key).or_insert_with_key(|key| make(key)).clone()
}

fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        names::POD_BYTES,
        "L3 bytes from src to dst endpoint (pods; nodes, Services and custom endpoints by name; 'external' otherwise)."
    );
    describe_counter!(
        names::POD_CROSS_ZONE_BYTES,
        "L3 bytes from src to dst endpoint where both zones are known and differ."
    );
    describe_counter!(names::POD_PACKETS, "Packets from src to dst endpoint.");
    describe_counter!(
        names::POD_CROSS_ZONE_PACKETS,
        "Packets from src to dst endpoint where both zones are known and differ."
    );
    describe_counter!(names::WORKLOAD_BYTES, "L3 bytes from src to dst workload.");
    describe_counter!(names::WORKLOAD_PACKETS, "Packets from src to dst workload.");
    describe_counter!(
        names::WORKLOAD_CROSS_ZONE_BYTES,
        "L3 bytes from src to dst workload where both zones are known and differ."
    );
    describe_counter!(
        names::WORKLOAD_CROSS_ZONE_PACKETS,
        "Packets from src to dst workload where both zones are known and differ."
    );
    describe_counter!(
        names::ZONE_BYTES,
        "L3 bytes from src to dst zone, same-zone pairs included."
    );
    describe_counter!(names::ZONE_PACKETS, "Packets from src to dst zone.");
    describe_counter!(
        names::CROSS_REGION_BYTES,
        "L3 bytes from src to dst region where both regions are known and differ."
    );
    describe_counter!(
        names::CROSS_REGION_PACKETS,
        "Packets between two different regions."
    );
    describe_counter!(
        names::CROSS_ZONE_COST,
        "Estimated inter-AZ transfer cost in microdollars (1e-6 USD) for the billing side in 'side'."
    );
    describe_counter!(
        names::FOLDED_FLOWS,
        "Flows recorded under 'other' labels because the level's cardinality limit was reached."
    );
    metrics::describe_gauge!(names::SERIES, "Label sets the exporter tracks, per level.");
}

fn publish_series_gauges(series: [usize; 3]) {
    for level in SeriesLevel::ALL {
        metrics::gauge!(names::SERIES, "level" => level.as_str()).set(series[level.index()] as f64);
    }
}

fn record_one(pair: &PairSeries, flow: &ResolvedFlow, tick: u64, folds: &mut [u64; 3]) {
    pair.record(flow.counters, tick);
    for (n, folded) in folds.iter_mut().zip(pair.folded) {
        *n += u64::from(folded);
    }
    if pair.cross_zone && flow.counters.bytes > 0 {
        tracing::debug!(
            src = flow.src.pod_label(),
            src_namespace = flow.src.namespace_label(),
            dst = flow.dst.pod_label(),
            dst_namespace = flow.dst.namespace_label(),
            src_zone = flow.src.zone_label(),
            dst_zone = flow.dst.zone_label(),
            bytes = flow.counters.bytes,
            "Recorded cross-zone traffic"
        );
    }
}

impl Exporter for PrometheusExporter {
    /// Counts every flow. A flow with zero counters creates its series at
    /// zero, which lets Prometheus see a counter start from zero.
    fn export(&self, flows: &[ResolvedFlow]) {
        if flows.is_empty() {
            return;
        }
        let mut folds = [0u64; 3];
        let mut created = false;
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        if !state.described {
            describe();
            state.described = true;
        }
        let tick = state.tick;
        for flow in flows {
            let key = (
                Arc::as_ptr(&flow.src) as usize,
                Arc::as_ptr(&flow.dst) as usize,
            );
            if let Some(pair) = state.pairs.get(&key) {
                record_one(pair, flow, tick, &mut folds);
                continue;
            }
            created = true;
            let pair = self.build_pair(state, &flow.src, &flow.dst);
            record_one(&pair, flow, tick, &mut folds);
            if state.pairs.len() < self.max_pairs {
                state.pairs.insert(key, pair);
            }
        }
        let series = [state.pods.len(), state.workloads.len(), state.zones.len()];
        drop(guard);
        for level in SeriesLevel::ALL {
            let n = folds[level.index()];
            if n > 0 {
                metrics::counter!(names::FOLDED_FLOWS, "level" => level.as_str()).increment(n);
            }
        }
        if created {
            publish_series_gauges(series);
        }
    }
}

#[cfg(test)]
mod tests;
