//! The Kubernetes backend: pods, nodes, Services and Service CIDRs from the
//! API, through kube-runtime watchers.
//!
//! [`KubeResolver::new`] returns two halves:
//!
//! - the [`KubeResolver`], a cheap clonable handle that implements
//!   [`Resolver`] by reading the current [`ClusterSnapshot`] through an
//!   atomic pointer swap (no lock, never blocks);
//! - the [`KubeDriver`], whose [`run`](KubeDriver::run) future watches the
//!   API and publishes new snapshots. The binary spawns it.
//!
//! Only what resolution needs is kept of each object (names, owner-derived
//! workload, IPs, zone labels, times): full objects are dropped as soon as
//! they are read, so 10k pods cost a few MB.
//!
//! Rules (see `docs/resolution.md`):
//!
//! - pod IPs from `status.podIPs` (both families), else `status.podIP`; only
//!   Pending and Running pods own an IP; a pod that reaches Succeeded or
//!   Failed, or is deleted, keeps its claim as a tombstone for
//!   [`tombstone_grace`](KubeResolverConfig::tombstone_grace);
//! - a reused IP resolves to the pod that held it at the observation time;
//! - hostNetwork pods and node InternalIPs resolve to the node;
//! - zone from `topology.kubernetes.io/zone`, falling back to
//!   `failure-domain.beta.kubernetes.io/zone`; region likewise;
//! - Service ClusterIPs (both families) resolve to the Service; the Service
//!   CIDRs come from the ServiceCIDR API (`networking.k8s.io/v1`) when the
//!   cluster serves it, else from configuration;
//! - a node is monitored while a Running, Ready pod that matches
//!   [`agent_selector`](KubeResolverConfig::agent_selector) runs on it, and
//!   for [`agent_absence_grace`](KubeResolverConfig::agent_absence_grace)
//!   after the last one went away (a restart or an upgrade).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use crate::endpoint::Endpoint;
use crate::resolve::{error_chain, ClusterSnapshot, IpPrefix, ResolveError, Resolver};

mod state;
mod workload;

use state::Kind;
pub use state::KubeIndex;

/// Name of the counter of watch errors, labelled by `resource`.
pub const WATCH_ERRORS_COUNTER: &str = crate::metrics::KUBE_WATCH_ERRORS_TOTAL;

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeResolverConfig {
    /// Label selector (API syntax) that picks netscope agent pods. Default
    /// `app.kubernetes.io/name=netscope-agent`.
    pub agent_selector: String,
    /// How long a deleted or finished pod keeps resolving. Default 2 minutes.
    pub tombstone_grace: Duration,
    /// How long a node stays monitored after its last Ready agent pod went
    /// away or stopped being Ready (an agent restart or upgrade). Its pinned
    /// programs keep counting meanwhile and the next agent reports it, so
    /// counting the receivers' view then would count those bytes twice.
    /// Default 5 minutes; zero ends monitoring with the pod's readiness.
    pub agent_absence_grace: Duration,
    /// Service CIDRs to use when the cluster has no ServiceCIDR API (or it
    /// lists none).
    pub service_cidrs: Vec<IpPrefix>,
    /// Ask the cluster for its ServiceCIDR objects. Default true; when the
    /// API is not served, [`service_cidrs`](Self::service_cidrs) is used.
    pub service_cidr_api: bool,
    /// Shortest time between two published snapshots: bursts of events are
    /// folded into one rebuild. Default 100 ms.
    pub publish_interval: Duration,
}

impl Default for KubeResolverConfig {
    fn default() -> Self {
        KubeResolverConfig {
            agent_selector: "app.kubernetes.io/name=netscope-agent".to_owned(),
            tombstone_grace: Duration::from_secs(120),
            agent_absence_grace: Duration::from_secs(300),
            service_cidrs: Vec::new(),
            service_cidr_api: true,
            publish_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug)]
struct Shared {
    snapshot: ArcSwap<ClusterSnapshot>,
    synced: AtomicBool,
}

/// Resolves from the API's view of the cluster. Clone it freely: all clones
/// read the snapshots that one [`KubeDriver`] publishes.
#[derive(Debug, Clone)]
pub struct KubeResolver {
    shared: Arc<Shared>,
}

/// Watches the API and feeds the [`KubeResolver`]s made with it. Spawn
/// [`run`](Self::run).
pub struct KubeDriver {
    client: Client,
    config: KubeResolverConfig,
    state: KubeIndex,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KubeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDriver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KubeResolver {
    /// Builds the resolver and the driver that feeds it. Nothing talks to
    /// the API until the driver runs; until its first lists are in,
    /// [`is_synced`](Resolver::is_synced) is false and everything resolves
    /// as external.
    ///
    /// # Errors
    ///
    /// [`ResolveError::BadSelector`] when the agent selector does not parse.
    pub fn new(
        client: Client,
        config: KubeResolverConfig,
    ) -> Result<(KubeResolver, KubeDriver), ResolveError> {
        let state = KubeIndex::new(&config)?;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(ClusterSnapshot::default()),
            synced: AtomicBool::new(false),
        });
        Ok((
            KubeResolver {
                shared: shared.clone(),
            },
            KubeDriver {
                client,
                config,
                state,
                shared,
            },
        ))
    }

    /// Like [`new`](Self::new) with a client inferred from the environment
    /// (in-cluster service account, else `KUBECONFIG`).
    ///
    /// # Errors
    ///
    /// The client configuration cannot be inferred, or the selector is bad.
    pub async fn try_default(
        config: KubeResolverConfig,
    ) -> Result<(KubeResolver, KubeDriver), ResolveError> {
        let client = Client::try_default()
            .await
            .map_err(|source| ResolveError::Kube {
                what: "build a client from the environment",
                source,
            })?;
        KubeResolver::new(client, config)
    }

    /// The snapshot currently in force.
    pub fn snapshot(&self) -> Arc<ClusterSnapshot> {
        self.shared.snapshot.load_full()
    }
}

impl Resolver for KubeResolver {
    #[inline]
    fn resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Arc<Endpoint> {
        self.shared.snapshot.load().resolve(ip, observed_at)
    }

    #[inline]
    fn try_resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Option<Arc<Endpoint>> {
        self.shared.snapshot.load().lookup(ip, observed_at).cloned()
    }

    fn is_monitored_node(&self, node: &str) -> bool {
        self.shared.snapshot.load().is_monitored_node(node)
    }

    fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    fn service_cidrs(&self) -> Vec<IpPrefix> {
        self.shared.snapshot.load().service_cidrs().to_vec()
    }

    /// Pods that hold an address now (Pending or Running, not deleted).
    fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.shared.snapshot.load().has_pod(namespace, name)
    }

    /// From the Services and their EndpointSlices.
    fn service_topology(&self) -> Option<Arc<crate::resolve::ServiceTopology>> {
        Some(self.shared.snapshot.load().service_topology().clone())
    }
}

/// One item from the merged watch streams.
#[expect(
    clippy::large_enum_variant,
    reason = "one message at a time passes from the stream to the index; boxing would add an allocation per event"
)]
enum Msg {
    Pod(Result<watcher::Event<Pod>, watcher::Error>),
    Node(Result<watcher::Event<Node>, watcher::Error>),
    Service(Result<watcher::Event<Service>, watcher::Error>),
    ServiceCidr(Result<watcher::Event<ServiceCIDR>, watcher::Error>),
    ServiceCidrApiAbsent,
    EndpointSlice(Result<watcher::Event<EndpointSlice>, watcher::Error>),
}

/// Whether the cluster serves `networking.k8s.io/v1` ServiceCIDRs. Retries
/// (with backoff) on anything but a clear answer.
async fn service_cidr_api_served(api: Api<ServiceCIDR>) -> bool {
    let mut delay = Duration::from_millis(500);
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return true,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::info!(
                    "The cluster has no ServiceCIDR API; using configured Service CIDRs"
                );
                return false;
            }
            Err(kube::Error::Api(status)) if status.code == 403 => {
                tracing::warn!(
                    "Not allowed to list ServiceCIDRs (grant list and watch on \
                     networking.k8s.io servicecidrs); using configured Service CIDRs"
                );
                return false;
            }
            Err(err) => {
                metrics::counter!(WATCH_ERRORS_COUNTER, "resource" => Kind::ServiceCidr.as_str())
                    .increment(1);
                tracing::warn!(error = ?error_chain(&err), "Probing the ServiceCIDR API failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

impl KubeDriver {
    /// Watches pods, nodes, Services and (where served) ServiceCIDRs, and
    /// publishes a new snapshot after changes, at most once per
    /// [`publish_interval`](KubeResolverConfig::publish_interval), and when
    /// tombstones expire. Watch errors are logged, counted in
    /// `netscope_kube_watch_errors_total{resource}` and retried with
    /// kube-runtime's default backoff; a `410 Gone` relists. Runs until
    /// dropped.
    pub async fn run(self) {
        let KubeDriver {
            client,
            config,
            mut state,
            shared,
        } = self;
        let wc = watcher::Config::default();
        let pods = watcher(Api::<Pod>::all(client.clone()), wc.clone())
            .default_backoff()
            .map(Msg::Pod)
            .boxed();
        let nodes = watcher(Api::<Node>::all(client.clone()), wc.clone())
            .default_backoff()
            .map(Msg::Node)
            .boxed();
        let services = watcher(Api::<Service>::all(client.clone()), wc.clone())
            .default_backoff()
            .map(Msg::Service)
            .boxed();
        // Not required for sync: only the Service estimate reads them.
        let slices = watcher(Api::<EndpointSlice>::all(client.clone()), wc.clone())
            .default_backoff()
            .map(Msg::EndpointSlice)
            .boxed();
        let mut streams: Vec<BoxStream<'static, Msg>> = vec![pods, nodes, services, slices];
        if config.service_cidr_api {
            let api = Api::<ServiceCIDR>::all(client.clone());
            let cidrs = stream::once(service_cidr_api_served(api.clone()))
                .flat_map(move |served| {
                    if served {
                        watcher(api.clone(), wc.clone())
                            .default_backoff()
                            .map(Msg::ServiceCidr)
                            .boxed()
                    } else {
                        stream::iter([Msg::ServiceCidrApiAbsent]).boxed()
                    }
                })
                .boxed();
            streams.push(cidrs);
        }
        let mut events = stream::select_all(streams);

        let interval = config.publish_interval.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_publish: Option<tokio::time::Instant> = None;
        let mut next_expiry: Option<SystemTime> = None;
        loop {
            tokio::select! {
                msg = events.next() => match msg {
                    Some(msg) => apply(&mut state, msg, SystemTime::now()),
                    None => {
                        tracing::warn!("All Kubernetes watch streams ended");
                        return;
                    }
                },
                _ = ticker.tick() => {}
            }
            let now = SystemTime::now();
            let expired = next_expiry.is_some_and(|t| t <= now);
            let due = last_publish.is_none_or(|t| t.elapsed() >= interval);
            if (state.is_dirty() || expired) && due {
                publish(&mut state, &shared, now);
                next_expiry = state.next_expiry(now);
                last_publish = Some(tokio::time::Instant::now());
            }
        }
    }
}

fn log_watch_error(kind: Kind, err: &watcher::Error) {
    metrics::counter!(WATCH_ERRORS_COUNTER, "resource" => kind.as_str()).increment(1);
    match err {
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::info!(
                resource = kind.as_str(),
                "Watch expired (410 Gone); relisting"
            );
        }
        _ => tracing::warn!(
            resource = kind.as_str(),
            error = ?error_chain(err),
            "Kubernetes watch failed; retrying with backoff"
        ),
    }
}

fn apply(state: &mut KubeIndex, msg: Msg, now: SystemTime) {
    match msg {
        Msg::Pod(Ok(ev)) => state.apply_pod(ev, now),
        Msg::Node(Ok(ev)) => state.apply_node(ev, now),
        Msg::Service(Ok(ev)) => state.apply_service(ev, now),
        Msg::ServiceCidr(Ok(ev)) => state.apply_service_cidr(ev, now),
        Msg::ServiceCidrApiAbsent => state.service_cidr_api_absent(),
        Msg::EndpointSlice(Ok(ev)) => state.apply_endpoint_slice(ev, now),
        Msg::EndpointSlice(Err(e)) => log_watch_error(Kind::EndpointSlice, &e),
        Msg::Pod(Err(e)) => log_watch_error(Kind::Pod, &e),
        Msg::Node(Err(e)) => log_watch_error(Kind::Node, &e),
        Msg::Service(Err(e)) => log_watch_error(Kind::Service, &e),
        Msg::ServiceCidr(Err(e)) => log_watch_error(Kind::ServiceCidr, &e),
    }
}

fn publish(state: &mut KubeIndex, shared: &Shared, now: SystemTime) {
    let (snapshot, pods_changed) = state.snapshot(now);
    if pods_changed {
        let (pods, tombstones) = state.pod_counts();
        tracing::debug!(
            pods,
            tombstones,
            addresses = snapshot.address_count(),
            "Updated pod mapping"
        );
    }
    shared.snapshot.store(Arc::new(snapshot));
    if state.is_synced() && !shared.synced.swap(true, Ordering::AcqRel) {
        tracing::info!("Kubernetes resolver synced");
    }
}

#[cfg(test)]
mod tests;
