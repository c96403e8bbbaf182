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
mod tests {
    use super::super::cost::Price;
    use super::super::recorder::{Recorder, RecorderBuilder, RecorderHandle};
    use super::super::testutil::{flow, pod};
    use super::*;
    use crate::endpoint::{EndpointKind, WorkloadKind};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use std::collections::BTreeMap;

    type Labels = Vec<(String, String)>;

    /// name -> label set (in key order) -> counter value.
    fn counters(snapshotter: &Snapshotter) -> BTreeMap<String, BTreeMap<Labels, u64>> {
        let mut out: BTreeMap<String, BTreeMap<Labels, u64>> = BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            if let DebugValue::Counter(v) = value {
                let labels = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect();
                out.entry(key.key().name().to_string())
                    .or_default()
                    .insert(labels, v);
            }
        }
        out
    }

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod_labels(values: [&str; 6]) -> Labels {
        POD_LABELS
            .iter()
            .zip(values)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn node(name: &str, zone: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            kind: EndpointKind::Node,
            name: name.into(),
            namespace: "".into(),
            workload: name.into(),
            workload_kind: WorkloadKind::Node,
            node: name.into(),
            zone: zone.into(),
            region: "us-west-2".into(),
        })
    }

    fn custom(name: &str, ns: &str, zone: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            kind: EndpointKind::Custom,
            name: name.into(),
            namespace: ns.into(),
            workload: name.into(),
            workload_kind: WorkloadKind::Custom,
            node: "".into(),
            zone: zone.into(),
            region: "us-west-2".into(),
        })
    }

    fn exporter(config: PrometheusConfig) -> PrometheusExporter {
        PrometheusExporter::new(config).expect("valid config")
    }

    #[test]
    fn seed_metrics_have_exact_labels_and_values() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let exp = exporter(PrometheusConfig::default());
        let a = pod("frontend-1", "shop", "frontend", "us-west-2a", "us-west-2");
        let b = pod("backend-1", "shop", "backend", "us-west-2b", "us-west-2");
        let a2 = pod("cache-1", "shop", "cache", "us-west-2a", "us-west-2");
        let n = node("ip-10-0-1-5", "us-west-2c");
        let rds = custom("rds-primary", "external", "us-west-2b");
        let ext = Endpoint::external();
        let no_zone = pod("batch-1", "jobs", "batch", "", "");

        metrics::with_local_recorder(&recorder, || {
            exp.export(&[
                flow(&a, &b, "10.0.1.1", "10.0.2.1", 1000, 10),
                flow(&a, &a2, "10.0.1.1", "10.0.1.2", 500, 5),
                flow(&a, &ext, "10.0.1.1", "203.0.113.7", 300, 3),
                flow(&n, &rds, "10.0.3.5", "10.0.2.50", 70, 1),
                flow(&no_zone, &b, "10.0.9.9", "10.0.2.1", 40, 1),
            ]);
            // A second batch adds to the same series.
            exp.export(&[flow(&a, &b, "10.0.1.1", "10.0.2.1", 234, 2)]);
        });

        let c = counters(&snap);
        let expected_total: BTreeMap<Labels, u64> = [
            (
                [
                    "frontend-1",
                    "shop",
                    "backend-1",
                    "shop",
                    "us-west-2a",
                    "us-west-2b",
                ],
                1234,
            ),
            (
                [
                    "frontend-1",
                    "shop",
                    "cache-1",
                    "shop",
                    "us-west-2a",
                    "us-west-2a",
                ],
                500,
            ),
            (
                [
                    "frontend-1",
                    "shop",
                    "external",
                    "external",
                    "us-west-2a",
                    "unknown",
                ],
                300,
            ),
            (
                [
                    "ip-10-0-1-5",
                    "node",
                    "rds-primary",
                    "external",
                    "us-west-2c",
                    "us-west-2b",
                ],
                70,
            ),
            (
                [
                    "batch-1",
                    "jobs",
                    "backend-1",
                    "shop",
                    "unknown",
                    "us-west-2b",
                ],
                40,
            ),
        ]
        .into_iter()
        .map(|(v, n)| (pod_labels(v), n))
        .collect();
        assert_eq!(c[names::POD_BYTES], expected_total);

        // Cross-zone only where both zones are known and differ.
        let expected_cross: BTreeMap<Labels, u64> = [
            (
                [
                    "frontend-1",
                    "shop",
                    "backend-1",
                    "shop",
                    "us-west-2a",
                    "us-west-2b",
                ],
                1234,
            ),
            (
                [
                    "ip-10-0-1-5",
                    "node",
                    "rds-primary",
                    "external",
                    "us-west-2c",
                    "us-west-2b",
                ],
                70,
            ),
        ]
        .into_iter()
        .map(|(v, n)| (pod_labels(v), n))
        .collect();
        assert_eq!(c[names::POD_CROSS_ZONE_BYTES], expected_cross);

        let packets = &c[names::POD_PACKETS];
        assert_eq!(
            packets[&pod_labels([
                "frontend-1",
                "shop",
                "backend-1",
                "shop",
                "us-west-2a",
                "us-west-2b"
            ])],
            12
        );
        assert_eq!(packets.len(), 5);
        assert_eq!(
            c[names::POD_CROSS_ZONE_PACKETS].values().sum::<u64>(),
            12 + 1
        );

        // No label value is ever empty.
        for (name, series) in &c {
            for labels in series.keys() {
                for (k, v) in labels {
                    assert!(!v.is_empty(), "{name} has an empty {k}");
                }
            }
        }
    }

    #[test]
    fn workload_zone_region_and_cost_series() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let exp = exporter(PrometheusConfig::default());
        let a1 = pod("api-7d9f-abcde", "shop", "api", "us-west-2a", "us-west-2");
        // The same workload after a restart: a new pod name, same workload.
        let a2 = pod("api-7d9f-fghij", "shop", "api", "us-west-2a", "us-west-2");
        let db = pod("db-0", "shop", "db", "us-west-2b", "us-west-2");
        let eu = pod("replica-0", "shop", "replica", "eu-west-1a", "eu-west-1");

        metrics::with_local_recorder(&recorder, || {
            exp.export(&[
                flow(&a1, &db, "10.0.1.1", "10.0.2.1", 2_500_000_000, 100),
                flow(&a2, &db, "10.0.1.3", "10.0.2.1", 500_000_123, 50),
                flow(&db, &eu, "10.0.2.1", "10.9.0.1", 7_000, 7),
            ]);
        });
        let c = counters(&snap);

        // Two pod series, one workload series.
        assert_eq!(c[names::POD_BYTES].len(), 3);
        let wl = l(&[
            ("src_workload", "api"),
            ("src_workload_kind", "Deployment"),
            ("src_namespace", "shop"),
            ("dst_workload", "db"),
            ("dst_workload_kind", "Deployment"),
            ("dst_namespace", "shop"),
            ("src_zone", "us-west-2a"),
            ("dst_zone", "us-west-2b"),
            ("src_region", "us-west-2"),
            ("dst_region", "us-west-2"),
        ]);
        assert_eq!(c[names::WORKLOAD_BYTES][&wl], 3_000_000_123);
        assert_eq!(c[names::WORKLOAD_PACKETS][&wl], 150);
        assert_eq!(c[names::WORKLOAD_CROSS_ZONE_BYTES][&wl], 3_000_000_123);
        assert_eq!(c[names::WORKLOAD_CROSS_ZONE_BYTES].len(), 2);

        let zone = |s: &str, d: &str, sr: &str, dr: &str| {
            l(&[
                ("src_zone", s),
                ("dst_zone", d),
                ("src_region", sr),
                ("dst_region", dr),
            ])
        };
        assert_eq!(
            c[names::ZONE_BYTES][&zone("us-west-2a", "us-west-2b", "us-west-2", "us-west-2")],
            3_000_000_123
        );
        assert_eq!(
            c[names::ZONE_BYTES][&zone("us-west-2b", "eu-west-1a", "us-west-2", "eu-west-1")],
            7_000
        );

        // Only the inter-region flow is cross-region.
        let region = l(&[("src_region", "us-west-2"), ("dst_region", "eu-west-1")]);
        assert_eq!(
            c[names::CROSS_REGION_BYTES],
            BTreeMap::from([(region.clone(), 7_000)])
        );
        assert_eq!(
            c[names::CROSS_REGION_PACKETS],
            BTreeMap::from([(region, 7)])
        );

        // Cost: $0.01 per 10^9 bytes on each side, whole microdollars rounded
        // down: 3_000_000_123 bytes -> 30_000.00123 cents*1000 -> 30_000 µ$.
        // The inter-region flow is not billed at the inter-AZ price.
        let mut cost_labels = zone("us-west-2a", "us-west-2b", "us-west-2", "us-west-2");
        cost_labels.push(("side".into(), "sending".into()));
        let mut receiving = cost_labels.clone();
        receiving[4].1 = "receiving".into();
        assert_eq!(
            c[names::CROSS_ZONE_COST],
            BTreeMap::from([(cost_labels, 30_000), (receiving, 30_000)])
        );
    }

    #[test]
    fn custom_prices_per_side() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let exp = exporter(PrometheusConfig {
            pricing: Pricing {
                sending: Price::per_gib(0.02).unwrap(),
                receiving: Price::FREE,
            },
            ..PrometheusConfig::default()
        });
        let a = pod("a", "ns", "a", "z1", "r");
        let b = pod("b", "ns", "b", "z2", "r");
        metrics::with_local_recorder(&recorder, || {
            // 1.5 GiB in three flows.
            for _ in 0..3 {
                exp.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 1 << 29, 1)]);
            }
        });
        let c = counters(&snap);
        let by_side: BTreeMap<String, u64> = c[names::CROSS_ZONE_COST]
            .iter()
            .map(|(labels, v)| (labels[4].1.clone(), *v))
            .collect();
        assert_eq!(by_side["sending"], 30_000, "1.5 GiB at $0.02/GiB = $0.03");
        assert_eq!(by_side["receiving"], 0);
    }

    #[test]
    fn cardinality_guard_folds_into_other_and_counts() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let exp = exporter(PrometheusConfig {
            limits: CardinalityLimits {
                pod_pairs: 2,
                workload_pairs: 1,
                zone_pairs: 100,
            },
            ..PrometheusConfig::default()
        });
        let srv = pod("srv", "ns", "srv", "z2", "r");
        let clients: Vec<_> = (0..5)
            .map(|i| pod(&format!("c{i}"), "ns", &format!("w{i}"), "z1", "r"))
            .collect();
        metrics::with_local_recorder(&recorder, || {
            for (i, client) in clients.iter().enumerate() {
                exp.export(&[flow(
                    client,
                    &srv,
                    "10.0.0.1",
                    "10.0.0.2",
                    100 + i as u64,
                    1,
                )]);
            }
            // Again, through the cache.
            exp.export(&[flow(&clients[4], &srv, "10.0.0.1", "10.0.0.2", 1000, 1)]);
        });
        let c = counters(&snap);
        let pods = &c[names::POD_BYTES];
        assert_eq!(
            pods.len(),
            3,
            "two real label sets and one folded: {pods:?}"
        );
        assert_eq!(
            pods[&pod_labels(["c0", "ns", "srv", "ns", "z1", "z2"])],
            100
        );
        assert_eq!(
            pods[&pod_labels(["c1", "ns", "srv", "ns", "z1", "z2"])],
            101
        );
        assert_eq!(
            pods[&pod_labels(["other", "other", "other", "other", "z1", "z2"])],
            102 + 103 + 104 + 1000
        );
        // Totals stay exact at every level.
        let total = 100 + 101 + 102 + 103 + 104 + 1000;
        for name in [
            names::POD_BYTES,
            names::POD_CROSS_ZONE_BYTES,
            names::WORKLOAD_BYTES,
            names::ZONE_BYTES,
        ] {
            assert_eq!(c[name].values().sum::<u64>(), total, "{name}");
        }
        assert_eq!(c[names::WORKLOAD_BYTES].len(), 2);
        let folds = &c[names::FOLDED_FLOWS];
        assert_eq!(folds[&l(&[("level", "pod")])], 4);
        assert_eq!(folds[&l(&[("level", "workload")])], 5);
        assert!(!folds.contains_key(&l(&[("level", "zone")])));
    }

    #[test]
    fn zero_flows_create_series_at_zero() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let exp = exporter(PrometheusConfig::default());
        let a = pod("a", "ns", "a", "z1", "r");
        let b = pod("b", "ns", "b", "z2", "r");
        metrics::with_local_recorder(&recorder, || {
            exp.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 0, 0)]);
        });
        let c = counters(&snap);
        for name in [
            names::POD_BYTES,
            names::POD_CROSS_ZONE_BYTES,
            names::WORKLOAD_CROSS_ZONE_BYTES,
            names::ZONE_BYTES,
            names::CROSS_ZONE_COST,
        ] {
            assert!(!c[name].is_empty(), "{name} exists");
            assert!(c[name].values().all(|v| *v == 0), "{name} is zero");
        }
    }

    #[test]
    fn equal_endpoints_behind_different_arcs_share_series() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let exp = exporter(PrometheusConfig::default());
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..3 {
                // Fresh Arcs each time, as after a resolver snapshot rebuild.
                let a = pod("a", "ns", "a", "z1", "r");
                let b = pod("b", "ns", "b", "z2", "r");
                exp.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 10, 1)]);
            }
        });
        let c = counters(&snap);
        assert_eq!(
            c[names::POD_BYTES],
            BTreeMap::from([(pod_labels(["a", "ns", "b", "ns", "z1", "z2"]), 30)])
        );
    }

    /// The recorder the binaries install, with the exporter's idle timeout.
    fn expiring_recorder(expiry: SeriesExpiry) -> (Recorder, RecorderHandle) {
        let recorder = RecorderBuilder::new()
            .counter_idle_timeout(expiry.idle_timeout())
            .build()
            .expect("valid recorder");
        let handle = recorder.handle();
        (recorder, handle)
    }

    fn render_at(handle: &RecorderHandle, now: Instant) -> String {
        let mut text = String::new();
        handle.render_at(now, &mut text);
        text
    }

    #[test]
    fn a_zone_pair_dropped_while_idle_keeps_its_cost_exact_when_it_returns() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let expiry = SeriesExpiry::new(Duration::from_secs(600)).unwrap();
        let exp = exporter(PrometheusConfig {
            expiry,
            ..PrometheusConfig::default()
        });
        let gone = pod("gone", "ns", "a", "z1", "r");
        let b = pod("b", "ns", "b", "z2", "r");
        let fresh = pod("fresh", "ns", "a", "z1", "r");
        let is_live = |e: &Endpoint| &*e.name != "gone";
        let t0 = Instant::now();
        exp.upkeep(t0, &is_live);
        // $0.01/GB per side: one microdollar per 100 kB. 150 kB: 1 and a half.
        metrics::with_local_recorder(&recorder, || {
            exp.export(&[flow(&gone, &b, "10.0.0.1", "10.0.0.2", 150_000, 1)]);
        });
        // The pair's pod is gone: its handles, then the zone label set, drop.
        let stats = exp.upkeep(t0 + expiry.idle_timeout(), &is_live);
        assert_eq!(stats.pairs_evicted, 1);
        assert_eq!(stats.series[2], 0, "the zone label set was dropped");
        // Another pod of the zone pair: 60 kB more, 210 kB in all.
        metrics::with_local_recorder(&recorder, || {
            exp.export(&[flow(&fresh, &b, "10.0.0.3", "10.0.0.2", 60_000, 1)]);
        });
        let c = counters(&snap);
        let cost: u64 = c[names::CROSS_ZONE_COST].values().sum();
        assert_eq!(cost, 2 * 2, "floor(210 kB x price) on each side, not 1 + 0");
    }

    #[test]
    fn slow_cost_counters_of_active_pairs_never_expire() {
        let expiry = SeriesExpiry::new(Duration::from_secs(600)).unwrap();
        let (recorder, handle) = expiring_recorder(expiry);
        let exp = exporter(PrometheusConfig {
            expiry,
            ..PrometheusConfig::default()
        });
        let a = pod("a", "ns", "a", "z1", "r");
        let b = pod("b", "ns", "b", "z2", "r");
        // 10 kB per window at $0.01/GB: a whole microdollar (100 kB) only
        // after ten windows, long after the idle timeout.
        let t0 = Instant::now();
        exp.upkeep(t0, &|_| true);
        let mut now = t0;
        for _ in 0..12 {
            metrics::with_local_recorder(&recorder, || {
                exp.export(&[flow(&a, &b, "10.0.0.1", "10.0.0.2", 10_000, 7)]);
            });
            now += expiry.upkeep_interval();
            exp.upkeep(now, &|_| true);
            render_at(&handle, now);
        }
        assert!(now - t0 >= expiry.idle_timeout() * 2);
        let text = render_at(&handle, now);
        for side in ["sending", "receiving"] {
            assert_eq!(
                sample(
                    &text,
                    names::CROSS_ZONE_COST,
                    &[&format!("side=\"{side}\"")]
                ),
                Some(1),
                "120 kB is one whole microdollar per side:\n{text}"
            );
        }
        assert_eq!(sample(&text, names::POD_BYTES, &[]), Some(120_000));
    }

    /// Captures events (level, fields) from `tracing`.
    #[derive(Default)]
    struct Capture(std::sync::Mutex<Vec<(tracing::Level, BTreeMap<String, String>)>>);

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Fields<'a>(&'a mut BTreeMap<String, String>);
            impl tracing::field::Visit for Fields<'_> {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.insert(f.name().to_string(), format!("{v:?}"));
                }
                fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                    self.0.insert(f.name().to_string(), v.to_string());
                }
            }
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            self.0
                .lock()
                .unwrap()
                .push((*event.metadata().level(), fields));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn logs_recorded_cross_zone_traffic_at_debug() {
        let capture = Arc::new(Capture::default());
        let exp = exporter(PrometheusConfig::default());
        let a = pod("a-1", "ns", "a", "z1", "r");
        let b = pod("b-1", "ns", "b", "z2", "r");
        let a2 = pod("a-2", "ns", "a", "z1", "r");
        let recorder = DebuggingRecorder::new();
        tracing::subscriber::with_default(capture.clone(), || {
            metrics::with_local_recorder(&recorder, || {
                exp.export(&[
                    flow(&a, &b, "10.0.0.1", "10.0.0.2", 4096, 3),
                    flow(&a, &a2, "10.0.0.1", "10.0.0.3", 10, 1),
                ]);
            })
        });
        let events = capture.0.lock().unwrap();
        let recorded: Vec<_> = events
            .iter()
            .filter(|(_, f)| {
                f.get("message").map(String::as_str) == Some("Recorded cross-zone traffic")
            })
            .collect();
        assert_eq!(
            recorded.len(),
            1,
            "only the cross-zone flow is logged: {events:?}"
        );
        let (level, fields) = recorded[0];
        assert_eq!(*level, tracing::Level::DEBUG);
        assert_eq!(fields["src"], "a-1");
        assert_eq!(fields["dst"], "b-1");
        assert_eq!(fields["src_zone"], "z1");
        assert_eq!(fields["dst_zone"], "z2");
        assert_eq!(fields["bytes"], "4096");
    }

    #[test]
    fn rejects_bad_config() {
        assert_eq!(
            SeriesExpiry::new(Duration::ZERO),
            Err(PrometheusConfigError::ZeroIdleTimeout)
        );
        let err = PrometheusExporter::new(PrometheusConfig {
            limits: CardinalityLimits {
                workload_pairs: 0,
                ..CardinalityLimits::default()
            },
            ..PrometheusConfig::default()
        })
        .unwrap_err();
        assert_eq!(
            err,
            PrometheusConfigError::ZeroLimit {
                level: SeriesLevel::Workload
            }
        );
        let e = SeriesExpiry::new(Duration::from_secs(600)).unwrap();
        assert_eq!(e.handle_ttl(), Duration::from_secs(300));
        assert_eq!(e.upkeep_interval(), Duration::from_secs(150));
    }

    /// The value of the first rendered sample of `name` whose line contains
    /// every one of `needles`.
    fn sample(text: &str, name: &str, needles: &[&str]) -> Option<u64> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .find(|line| needles.iter().all(|n| line.contains(n)))
            .and_then(|line| line.rsplit(' ').next())
            .map(|v| v.parse().expect("integer counter"))
    }

    #[test]
    fn gone_pairs_expire_live_pairs_stay_and_nothing_is_lost() {
        let expiry = SeriesExpiry::new(Duration::from_secs(600)).unwrap();
        let (recorder, handle) = expiring_recorder(expiry);
        let exp = exporter(PrometheusConfig {
            expiry,
            ..PrometheusConfig::default()
        });
        let live_a = pod("live-a", "ns", "a", "z1", "r");
        let live_b = pod("live-b", "ns", "b", "z2", "r");
        let gone_c = pod("gone-c", "ns", "c", "z1", "r");
        let is_live = |e: &Endpoint| &*e.name != "gone-c";

        let t0 = Instant::now();
        exp.upkeep(t0, &is_live);
        metrics::with_local_recorder(&recorder, || {
            exp.export(&[
                flow(&live_a, &live_b, "10.0.0.1", "10.0.0.2", 111, 1),
                flow(&gone_c, &live_b, "10.0.0.3", "10.0.0.2", 222, 2),
            ]);
        });
        let text = render_at(&handle, t0);
        assert_eq!(
            sample(&text, names::POD_BYTES, &["src_pod=\"live-a\""]),
            Some(111)
        );
        assert_eq!(
            sample(&text, names::POD_BYTES, &["src_pod=\"gone-c\""]),
            Some(222)
        );

        // Three idle timeouts of upkeep and scrapes, no traffic.
        let stop = t0 + expiry.idle_timeout() * 3;
        let mut now = t0;
        let mut evicted = 0;
        let mut kept = 0;
        let mut gone_seen_until = None;
        while now < stop {
            now += expiry.upkeep_interval();
            let stats = exp.upkeep(now, &is_live);
            evicted += stats.pairs_evicted;
            kept += stats.pairs_kept_alive;
            let text = render_at(&handle, now);
            if text.contains("src_pod=\"gone-c\"") {
                gone_seen_until = Some(now);
            }
        }
        assert_eq!(evicted, 1, "the gone pair's handles were dropped once");
        assert!(kept > 0);
        // Rendered until one idle timeout after it was last seen active (at
        // the scrape at t0), gone one upkeep interval later.
        assert_eq!(gone_seen_until, Some(t0 + expiry.idle_timeout()));
        let text = render_at(&handle, now);
        assert_eq!(
            sample(&text, names::POD_BYTES, &["src_pod=\"live-a\""]),
            Some(111),
            "an idle pair of live pods keeps its series:\n{text}"
        );
        assert_eq!(
            sample(&text, names::POD_CROSS_ZONE_BYTES, &["src_pod=\"live-a\""]),
            Some(111)
        );
        assert_eq!(
            sample(&text, names::POD_BYTES, &["src_pod=\"gone-c\""]),
            None,
            "{text}"
        );
        assert_eq!(
            sample(&text, names::WORKLOAD_BYTES, &["src_workload=\"c\""]),
            None
        );

        // Traffic for the expired pair is counted again, not lost into a
        // removed handle; the live pair keeps counting on its series.
        metrics::with_local_recorder(&recorder, || {
            exp.export(&[
                flow(&gone_c, &live_b, "10.0.0.3", "10.0.0.2", 7, 1),
                flow(&live_a, &live_b, "10.0.0.1", "10.0.0.2", 9, 1),
            ]);
        });
        let text = render_at(&handle, now);
        assert_eq!(
            sample(&text, names::POD_BYTES, &["src_pod=\"gone-c\""]),
            Some(7)
        );
        assert_eq!(
            sample(&text, names::POD_BYTES, &["src_pod=\"live-a\""]),
            Some(120)
        );
        // The zone pair z1 -> z2 is shared by both pairs; it stayed alive.
        assert_eq!(
            sample(
                &text,
                names::ZONE_BYTES,
                &["src_zone=\"z1\"", "dst_zone=\"z2\""]
            ),
            Some(111 + 222 + 7 + 9)
        );
    }
}
