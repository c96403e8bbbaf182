//! Cross-zone traffic per Service, and an estimate of what in-zone routing
//! (`trafficDistribution: PreferClose`, topology-aware hints) would save.
//!
//! # Attribution
//!
//! A resolved flow belongs to a Service when one of its ends is an endpoint
//! of that Service in the [`ServiceTopology`] (EndpointSlices, or the static
//! topology's `services:` section): `via="endpointslice"`. The destination is
//! tried first (a request: the source is the client), then the source (a
//! reply: the destination is the client). A pod listed by several Services
//! is attributed to the first in (namespace, name) order and the flow is
//! counted in [`names::AMBIGUOUS_FLOWS`]. Since the agent undoes
//! kube-proxy's DNAT before reporting, traffic sent to a ClusterIP reaches
//! the aggregator with the backend pod's address and is attributed the same
//! way; a flow whose NAT could not be undone still has the ClusterIP as its
//! destination and is attributed to that Service with `via="clusterip"`
//! (its backend zone is unknown, so it never counts as cross-zone here).
//!
//! # The estimate
//!
//! For each Service, over the bytes attributed to it since the exporter
//! started, with the client zone C (the non-endpoint side) and the endpoint
//! zone E, counting only inter-AZ billed bytes (both zones known, different,
//! same region; see [`super::cost`]):
//!
//! - `cross_zone_bytes`: every byte with C != E (a measurement);
//! - `avoidable_bytes`: those of them whose client zone C has at least one
//!   ready endpoint of the Service now (an **estimate**);
//! - `remaining_cross_zone_bytes = cross_zone_bytes - avoidable_bytes`.
//!
//! Dollars are the bytes times the sum of both billing sides' prices,
//! computed exactly on the totals. Assumptions, stated wherever the number
//! is shown ([`ASSUMPTIONS`]): the in-zone endpoints can absorb the load of
//! their zone's clients; the request mix and sizes stay the same; only the
//! ready endpoints of the current topology count; the monthly figure
//! extrapolates the observed rate to 30 days.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::cost::Pricing;
use super::{Exporter, ResolvedFlow};
use crate::endpoint::{Endpoint, EndpointKind};
use crate::resolve::services::{ServiceInfo, ServiceRef, ServiceTopology};

/// Metric names of this module.
pub mod names {
    /// Bytes attributed to a Service, by zone pair and attribution.
    pub const BYTES: &str = "netscope_service_network_traffic_bytes_total";
    /// The same, only where both zones are known and differ.
    pub const CROSS_ZONE_BYTES_TOTAL: &str =
        "netscope_service_cross_zone_network_traffic_bytes_total";
    /// Flows folded into `other` labels by the cardinality guard.
    pub const FOLDED_FLOWS: &str = "netscope_service_folded_flows_total";
    /// Flows whose endpoint is listed by more than one Service.
    pub const AMBIGUOUS_FLOWS: &str = "netscope_service_ambiguous_flows_total";
    /// Measured inter-AZ bytes of a Service since start (gauge).
    pub const CROSS_ZONE_BYTES: &str = "netscope_service_cross_zone_bytes";
    /// Their cost in dollars (gauge).
    pub const CROSS_ZONE_DOLLARS: &str = "netscope_service_cross_zone_dollars";
    /// Estimated avoidable inter-AZ bytes (gauge).
    pub const AVOIDABLE_BYTES: &str = "netscope_service_cross_zone_avoidable_bytes";
    /// Estimated avoidable cost in dollars (gauge).
    pub const AVOIDABLE_DOLLARS: &str = "netscope_service_cross_zone_avoidable_dollars";
    /// Ready endpoints of a Service per zone (gauge).
    pub const READY_ENDPOINTS: &str = "netscope_service_ready_endpoints";
}

/// The assumptions behind every avoidable figure; shown next to it.
pub const ASSUMPTIONS: [&str; 4] = [
    "estimate, not a measurement: bytes that would stay in the client's zone if the Service routed in-zone (trafficDistribution: PreferClose) wherever it has ready endpoints in that zone",
    "the in-zone endpoints can absorb their zone's load",
    "the request mix and sizes stay as observed",
    "monthly figure: the observed rate extrapolated to 30 days",
];

/// Label value of folded label sets.
pub const OTHER: &str = "other";

/// Which attribution put a flow on a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The flow's destination is still the ClusterIP (NAT not undone).
    Clusterip,
    /// One end is an endpoint listed by the Service's EndpointSlices.
    Endpointslice,
}

impl Via {
    /// The `via` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Clusterip => "clusterip",
            Via::Endpointslice => "endpointslice",
        }
    }
}

/// Settings of the [`ServiceExporter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Prices of each billing side.
    pub pricing: Pricing,
    /// Distinct `netscope_service_network_traffic_bytes_total` label sets
    /// before new ones fold into `other`.
    pub max_series: usize,
    /// Services tracked for the estimate; flows of further Services are
    /// counted in the folded series only.
    pub max_services: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            pricing: Pricing::default(),
            max_series: 10_000,
            max_services: 2_000,
        }
    }
}

/// Zone pairs kept per Service; further pairs' bytes count as not avoidable.
const MAX_ZONE_PAIRS: usize = 1_024;

#[derive(Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    service: Arc<str>,
    namespace: Arc<str>,
    src_zone: Arc<str>,
    dst_zone: Arc<str>,
    via: Via,
}

#[derive(Debug, Default)]
struct Totals {
    /// All attributed bytes.
    bytes: u64,
    /// Inter-AZ billed bytes by (client zone, endpoint zone).
    cross: HashMap<(Arc<str>, Arc<str>), u64>,
    /// Inter-AZ billed bytes beyond [`MAX_ZONE_PAIRS`] (never avoidable).
    cross_unplaced: u64,
}

struct State {
    series: HashSet<SeriesKey>,
    services: HashMap<ServiceRef, Totals>,
    first_seen: Option<SystemTime>,
    last_seen: Option<SystemTime>,
    described: bool,
}

/// Function that returns the Service topology in force.
pub type TopologySource = Arc<dyn Fn() -> Arc<ServiceTopology> + Send + Sync>;

/// Records per-Service series and keeps the totals behind the estimate. See
/// the [module documentation](self).
pub struct ServiceExporter {
    config: ServiceConfig,
    topology: TopologySource,
    other: Arc<str>,
    unknown: Arc<str>,
    state: Mutex<State>,
}

impl std::fmt::Debug for ServiceExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceExporter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Who the client is and where the Service's end is.
struct Attribution<'a> {
    service: &'a ServiceRef,
    via: Via,
    client: &'a Endpoint,
    server: &'a Endpoint,
    ambiguous: bool,
}

fn attribute<'a>(topology: &'a ServiceTopology, flow: &'a ResolvedFlow) -> Option<Attribution<'a>> {
    let by_endpoint = |ip: IpAddr| {
        let mut it = topology.services_of_endpoint(ip);
        it.next().map(|first| (first, it.next().is_some()))
    };
    if let Some((s, ambiguous)) = by_endpoint(flow.dst_ip) {
        return Some(Attribution {
            service: &s.service,
            via: Via::Endpointslice,
            client: &flow.src,
            server: &flow.dst,
            ambiguous,
        });
    }
    if let Some((s, ambiguous)) = by_endpoint(flow.src_ip) {
        return Some(Attribution {
            service: &s.service,
            via: Via::Endpointslice,
            client: &flow.dst,
            server: &flow.src,
            ambiguous,
        });
    }
    // NAT not undone: the ClusterIP is still the destination (request) or
    // the source (reply). The resolver names it.
    let clusterip = |e: &Endpoint| {
        (e.kind == EndpointKind::Service && e.name.as_ref() != Endpoint::UNKNOWN).then(|| {
            ServiceRef {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
            }
        })
    };
    let (service, client, server) = if let Some(s) = clusterip(&flow.dst) {
        (s, &flow.src, &flow.dst)
    } else {
        let s = clusterip(&flow.src)?;
        (s, &flow.dst, &flow.src)
    };
    let info = topology.get(&service)?;
    Some(Attribution {
        service: &info.service,
        via: Via::Clusterip,
        client,
        server,
        ambiguous: false,
    })
}

impl ServiceExporter {
    /// An exporter reading the Service topology from `topology` at each
    /// batch (it should be cheap: an `Arc` clone of the snapshot in force).
    pub fn new(config: ServiceConfig, topology: TopologySource) -> Self {
        ServiceExporter {
            config,
            topology,
            other: Arc::from(OTHER),
            unknown: Arc::from(Endpoint::UNKNOWN),
            state: Mutex::new(State {
                series: Default::default(),
                services: HashMap::new(),
                first_seen: None,
                last_seen: None,
                described: false,
            }),
        }
    }

    /// The endpoint's zone label without allocating.
    fn zone_of(&self, e: &Endpoint) -> Arc<str> {
        if e.known_zone().is_some() {
            e.zone.clone()
        } else {
            self.unknown.clone()
        }
    }

    /// The settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The estimate for every tracked Service, highest avoidable cost first,
    /// at most `limit` Services (the rest are counted in
    /// [`ServiceReport::services_omitted`]).
    pub fn report(&self, limit: usize) -> ServiceReport {
        let topology = (self.topology)();
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut services: Vec<ServiceEstimate> = state
            .services
            .iter()
            .map(|(service, totals)| {
                estimate(
                    service,
                    totals,
                    topology.get(service),
                    &self.config.pricing,
                    observed(&state),
                    true,
                )
            })
            .collect();
        let observed_seconds = observed(&state).as_secs_f64();
        drop(state);
        services.sort_by(|a, b| {
            b.avoidable_microdollars
                .cmp(&a.avoidable_microdollars)
                .then(b.cross_zone_bytes.cmp(&a.cross_zone_bytes))
                .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
        });
        let services_omitted = services.len().saturating_sub(limit);
        services.truncate(limit);
        ServiceReport {
            kind: "estimate",
            assumptions: ASSUMPTIONS.to_vec(),
            observed_seconds,
            price_dollars_per_gb: self.config.pricing.sending.dollars_per_gb()
                + self.config.pricing.receiving.dollars_per_gb(),
            services,
            services_omitted,
        }
    }

    fn publish(&self, service: &ServiceRef, e: &ServiceEstimate, info: Option<&ServiceInfo>) {
        let labels = [
            ("service", service.name.to_string()),
            ("service_namespace", service.namespace.to_string()),
        ];
        metrics::gauge!(names::CROSS_ZONE_BYTES, &labels).set(e.cross_zone_bytes as f64);
        metrics::gauge!(names::CROSS_ZONE_DOLLARS, &labels).set(e.cross_zone_dollars);
        metrics::gauge!(names::AVOIDABLE_BYTES, &labels).set(e.avoidable_bytes as f64);
        metrics::gauge!(names::AVOIDABLE_DOLLARS, &labels).set(e.avoidable_dollars);
        if let Some(info) = info {
            for (zone, n) in &info.ready_by_zone {
                metrics::gauge!(
                    names::READY_ENDPOINTS,
                    "service" => service.name.to_string(),
                    "service_namespace" => service.namespace.to_string(),
                    "zone" => zone.to_string()
                )
                .set(f64::from(*n));
            }
        }
    }
}

fn observed(state: &State) -> Duration {
    match (state.first_seen, state.last_seen) {
        (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

fn describe() {
    metrics::describe_counter!(
        names::BYTES,
        "L3 bytes attributed to a Service (requests and replies), by source and destination zone and by attribution ('via': clusterip or endpointslice)."
    );
    metrics::describe_counter!(
        names::CROSS_ZONE_BYTES_TOTAL,
        "L3 bytes attributed to a Service between two known, different zones (a subset of netscope_service_network_traffic_bytes_total)."
    );
    metrics::describe_counter!(
        names::FOLDED_FLOWS,
        "Service flows recorded under 'other' labels because the Service series limit was reached."
    );
    metrics::describe_counter!(
        names::AMBIGUOUS_FLOWS,
        "Service flows whose endpoint is listed by several Services; attributed to the first in namespace/name order."
    );
    metrics::describe_gauge!(
        names::CROSS_ZONE_BYTES,
        "Inter-AZ billed bytes attributed to the Service since the aggregator started (measured)."
    );
    metrics::describe_gauge!(
        names::CROSS_ZONE_DOLLARS,
        "Cost in dollars of the Service's inter-AZ bytes since the aggregator started (both billing sides)."
    );
    metrics::describe_gauge!(
        names::AVOIDABLE_BYTES,
        "ESTIMATE, not a measurement: inter-AZ bytes since start that in-zone routing would have kept in the client's zone (the client's zone has ready endpoints; assumes they absorb the load and the request mix is unchanged)."
    );
    metrics::describe_gauge!(
        names::AVOIDABLE_DOLLARS,
        "ESTIMATE, not a measurement: cost in dollars of the avoidable inter-AZ bytes (see netscope_service_cross_zone_avoidable_bytes)."
    );
    metrics::describe_gauge!(
        names::READY_ENDPOINTS,
        "Ready endpoints of the Service per zone, from its EndpointSlices (or the static topology)."
    );
}

fn dollars(pricing: &Pricing, bytes: u64) -> (u64, f64) {
    let micro = pricing
        .sending
        .microdollars(bytes)
        .saturating_add(pricing.receiving.microdollars(bytes));
    (micro, micro as f64 / 1e6)
}

fn estimate(
    service: &ServiceRef,
    totals: &Totals,
    info: Option<&ServiceInfo>,
    pricing: &Pricing,
    observed: Duration,
    detail: bool,
) -> ServiceEstimate {
    let mut cross = totals.cross_unplaced;
    let mut avoidable = 0u64;
    let mut by_client_zone: BTreeMap<String, u64> = BTreeMap::new();
    for ((client_zone, _), bytes) in &totals.cross {
        cross = cross.saturating_add(*bytes);
        if detail {
            let slot = by_client_zone.entry(client_zone.to_string()).or_insert(0);
            *slot = slot.saturating_add(*bytes);
        }
        if info.is_some_and(|i| i.has_ready_in(client_zone)) {
            avoidable = avoidable.saturating_add(*bytes);
        }
    }
    let (cross_micro, cross_zone_dollars) = dollars(pricing, cross);
    let (avoidable_microdollars, avoidable_dollars) = dollars(pricing, avoidable);
    let remaining = cross - avoidable;
    let monthly_saving_dollars = if observed >= Duration::from_secs(1) {
        avoidable_dollars * (30.0 * 86_400.0) / observed.as_secs_f64()
    } else {
        0.0
    };
    ServiceEstimate {
        namespace: service.namespace.to_string(),
        name: service.name.to_string(),
        bytes: totals.bytes,
        cross_zone_bytes: cross,
        cross_zone_dollars,
        cross_zone_microdollars: cross_micro,
        avoidable_bytes: avoidable,
        avoidable_dollars,
        avoidable_microdollars,
        remaining_cross_zone_bytes: remaining,
        remaining_dollars: dollars(pricing, remaining).1,
        monthly_saving_dollars,
        cross_zone_bytes_by_client_zone: by_client_zone,
        ready_endpoints_by_zone: info
            .filter(|_| detail)
            .map(|i| {
                i.ready_by_zone
                    .iter()
                    .map(|(z, n)| (z.to_string(), *n))
                    .collect()
            })
            .unwrap_or_default(),
        traffic_distribution: info
            .and_then(|i| i.traffic_distribution.as_deref().map(str::to_owned)),
        hints: info.is_some_and(|i| i.hints),
    }
}

/// The estimate for one Service. Byte fields other than `avoidable_*` and
/// `remaining_*` are measurements; those are estimates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceEstimate {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// All bytes attributed to the Service (requests and replies).
    pub bytes: u64,
    /// Inter-AZ billed bytes (measured).
    pub cross_zone_bytes: u64,
    /// Their cost in dollars.
    pub cross_zone_dollars: f64,
    /// Their cost in whole microdollars (exact).
    pub cross_zone_microdollars: u64,
    /// Estimate: inter-AZ bytes in-zone routing would have avoided.
    pub avoidable_bytes: u64,
    /// Estimate: their cost in dollars.
    pub avoidable_dollars: f64,
    /// Estimate: their cost in whole microdollars (exact on the bytes).
    pub avoidable_microdollars: u64,
    /// Estimate: inter-AZ bytes that would remain (client zones without a
    /// ready endpoint).
    pub remaining_cross_zone_bytes: u64,
    /// Estimate: their cost in dollars.
    pub remaining_dollars: f64,
    /// Estimate: `avoidable_dollars` extrapolated to 30 days at the observed
    /// rate; 0 before a second of traffic was observed.
    pub monthly_saving_dollars: f64,
    /// Measured inter-AZ bytes by the client's zone (in `/report` only).
    pub cross_zone_bytes_by_client_zone: BTreeMap<String, u64>,
    /// Ready endpoints per zone now (in `/report` only).
    pub ready_endpoints_by_zone: BTreeMap<String, u32>,
    /// `spec.trafficDistribution`, if set.
    pub traffic_distribution: Option<String>,
    /// True when the EndpointSlices carry zone hints.
    pub hints: bool,
}

/// What `/report` answers: the estimate for the top Services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceReport {
    /// Always `"estimate"`: the avoidable figures are not measurements.
    pub kind: &'static str,
    /// The assumptions behind the avoidable figures.
    pub assumptions: Vec<&'static str>,
    /// Seconds between the first and the last attributed window.
    pub observed_seconds: f64,
    /// Price of one inter-AZ GB (10^9 bytes), both billing sides.
    pub price_dollars_per_gb: f64,
    /// Services by avoidable cost, highest first.
    pub services: Vec<ServiceEstimate>,
    /// Services left out by the limit.
    pub services_omitted: usize,
}

impl ServiceReport {
    /// The report as pretty JSON (what `/report` serves).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
    }
}

/// Services listed by `/report` at most.
pub const REPORT_LIMIT: usize = 100;

impl Exporter for ServiceExporter {
    fn export(&self, flows: &[ResolvedFlow]) {
        if flows.is_empty() {
            return;
        }
        let topology = (self.topology)();
        if topology.is_empty() {
            return;
        }
        let mut increments: HashMap<SeriesKey, u64> = HashMap::new();
        let mut touched: HashSet<ServiceRef> = HashSet::new();
        let (mut folded, mut ambiguous) = (0u64, 0u64);
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        let describe_now = !std::mem::replace(&mut state.described, true);
        for flow in flows {
            let Some(a) = attribute(&topology, flow) else {
                continue;
            };
            ambiguous += u64::from(a.ambiguous);
            state.first_seen = Some(match state.first_seen {
                Some(t) => t.min(flow.timestamp),
                None => flow.timestamp,
            });
            state.last_seen = Some(match state.last_seen {
                Some(t) => t.max(flow.timestamp),
                None => flow.timestamp,
            });
            let mut key = SeriesKey {
                service: a.service.name.clone(),
                namespace: a.service.namespace.clone(),
                src_zone: self.zone_of(&flow.src),
                dst_zone: self.zone_of(&flow.dst),
                via: a.via,
            };
            if !state.series.contains(&key) {
                if state.series.len() < self.config.max_series {
                    state.series.insert(key.clone());
                } else {
                    // Zones are kept (they are few, and cross-zone sums stay
                    // exact), as at the other levels.
                    key.service = self.other.clone();
                    key.namespace = self.other.clone();
                    folded += 1;
                }
            }
            let n = increments.entry(key).or_insert(0);
            *n = n.saturating_add(flow.counters.bytes);

            if !state.services.contains_key(a.service)
                && state.services.len() >= self.config.max_services
            {
                continue;
            }
            let totals = state.services.entry(a.service.clone()).or_default();
            if !touched.contains(a.service) {
                touched.insert(a.service.clone());
            }
            totals.bytes = totals.bytes.saturating_add(flow.counters.bytes);
            if flow.is_billed_cross_zone() {
                let (Some(cz), Some(sz)) = (a.client.known_zone(), a.server.known_zone()) else {
                    continue;
                };
                let pair = (Arc::<str>::from(cz), Arc::<str>::from(sz));
                let bytes = flow.counters.bytes;
                if let Some(b) = totals.cross.get_mut(&pair) {
                    *b = b.saturating_add(bytes);
                } else if totals.cross.len() < MAX_ZONE_PAIRS {
                    totals.cross.insert(pair, bytes);
                } else {
                    totals.cross_unplaced = totals.cross_unplaced.saturating_add(bytes);
                }
            }
        }
        let observed_now = observed(state);
        let estimates: Vec<(ServiceRef, ServiceEstimate)> = touched
            .into_iter()
            .filter_map(|s| {
                let totals = state.services.get(&s)?;
                let e = estimate(
                    &s,
                    totals,
                    topology.get(&s),
                    &self.config.pricing,
                    observed_now,
                    false,
                );
                Some((s, e))
            })
            .collect();
        drop(guard);
        if describe_now {
            describe();
        }
        for (key, bytes) in increments {
            let labels = [
                ("service", key.service.to_string()),
                ("service_namespace", key.namespace.to_string()),
                ("src_zone", key.src_zone.to_string()),
                ("dst_zone", key.dst_zone.to_string()),
                ("via", key.via.as_str().to_owned()),
            ];
            metrics::counter!(names::BYTES, &labels).increment(bytes);
            let unknown = |z: &Arc<str>| Arc::ptr_eq(z, &self.unknown);
            if key.src_zone != key.dst_zone && !unknown(&key.src_zone) && !unknown(&key.dst_zone) {
                metrics::counter!(names::CROSS_ZONE_BYTES_TOTAL, &labels).increment(bytes);
            }
        }
        if folded > 0 {
            metrics::counter!(names::FOLDED_FLOWS).increment(folded);
        }
        if ambiguous > 0 {
            metrics::counter!(names::AMBIGUOUS_FLOWS).increment(ambiguous);
        }
        for (service, e) in &estimates {
            self.publish(service, e, topology.get(service));
        }
    }
}

#[cfg(test)]
mod tests;
