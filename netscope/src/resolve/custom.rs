//! Custom endpoints: addresses outside the cluster that users name themselves
//! (a managed database, a search cluster in another VPC).
//!
//! The file (seed format, usually a mounted ConfigMap):
//!
//! ```yaml
//! endpoints:
//!   - name: rds-primary
//!     namespace: external
//!     zone: us-west-2a
//!     ips: [10.0.1.50]
//!   - name: elasticsearch
//!     namespace: external
//!     zone: us-west-2b
//!     region: us-west-2        # optional
//!     cidrs: [10.0.2.0/24, "fd00:2::/64"]
//! ```
//!
//! Matching: an exact IP beats any CIDR, and a more specific CIDR beats a
//! wider one (longest-prefix match, IPv4 and IPv6).
//!
//! Validation rejects the whole file, naming the entry and the field, when:
//! the YAML does not parse or has unknown fields; `name` or `zone` is missing
//! or empty; an entry has neither `ips` nor `cidrs`; an IP or CIDR is
//! malformed (a CIDR with host bits set included); two entries claim the same
//! exact IP or the same CIDR; or the file exceeds the size limit. A rejected
//! file never replaces the running set.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::endpoint::{Endpoint, EndpointKind, WorkloadKind};

use super::ipmap::IpMap;
use super::watched::{check_yaml_shape, every, WatchedFile};
use super::{error_chain, EntryRef, IpPrefix, PrefixTable, ResolveError, Resolver};

/// Name of the counter of rejected custom-endpoint files.
pub const REJECTED_COUNTER: &str = crate::metrics::CUSTOM_ENDPOINTS_REJECTED_TOTAL;
/// Name of the gauge holding the number of custom endpoints in force.
pub const LOADED_GAUGE: &str = crate::metrics::CUSTOM_ENDPOINTS;

/// Limits and timing for a file-backed [`CustomEndpoints`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomEndpointsOptions {
    /// Files larger than this are rejected. Default 1 MiB, the largest
    /// ConfigMap Kubernetes accepts.
    pub max_bytes: u64,
    /// How often [`CustomEndpoints::watch`] checks the file. Default 10 s;
    /// anything under 100 ms counts as 100 ms.
    pub poll_interval: Duration,
}

impl Default for CustomEndpointsOptions {
    fn default() -> Self {
        CustomEndpointsOptions {
            max_bytes: 1024 * 1024,
            poll_interval: Duration::from_secs(10),
        }
    }
}

/// What a [`CustomEndpoints::reload`] or a
/// [`StaticResolver::reload`](super::StaticResolver::reload) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// The file has not changed since the last attempt; nothing was done.
    Unchanged,
    /// A new set of custom endpoints is in force.
    Loaded {
        /// Number of endpoints in it.
        endpoints: usize,
    },
    /// A new static topology is in force.
    TopologyLoaded {
        /// Pods listed in the file (hostNetwork ones included).
        pods: usize,
        /// Distinct addresses indexed, tombstones' included.
        addresses: usize,
        /// Pod address claims this load started (new pods, and pods that
        /// changed).
        claims_started: usize,
        /// Pod address claims this load ended (pods gone or changed); they
        /// are kept as tombstones.
        claims_ended: usize,
        /// Ended claims kept as tombstones after this load, within the
        /// tombstone grace.
        tombstones: usize,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    zone: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    cidrs: Vec<String>,
}

/// One validated, immutable set of custom endpoints.
#[derive(Debug, Default)]
struct CustomSet {
    exact: IpMap<Arc<Endpoint>>,
    cidrs: PrefixTable<Arc<Endpoint>>,
    endpoints: usize,
}

impl CustomSet {
    #[inline]
    fn lookup(&self, ip: IpAddr) -> Option<&Arc<Endpoint>> {
        self.exact.get(ip).or_else(|| self.cidrs.get(ip))
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Parses and validates a custom-endpoints document.
fn parse(text: &str, path: &Path) -> Result<CustomSet, ResolveError> {
    if text.trim().is_empty() {
        return Ok(CustomSet::default());
    }
    check_yaml_shape(text, path, "custom endpoints")?;
    let raw: RawFile = serde_yaml::from_str(text).map_err(|source| ResolveError::Yaml {
        path: path.to_owned(),
        what: "custom endpoints",
        source: super::YamlError::from_serde(source),
    })?;
    let mut exact: HashMap<IpAddr, (Arc<Endpoint>, EntryRef)> = HashMap::new();
    let mut prefixes: HashMap<IpPrefix, EntryRef> = HashMap::new();
    let mut table = Vec::new();
    let endpoints = raw.endpoints.len();
    for (index, e) in raw.endpoints.into_iter().enumerate() {
        let entry = EntryRef::new("endpoints", index, e.name.as_deref());
        let name = non_empty(e.name).ok_or_else(|| ResolveError::MissingField {
            entry: entry.clone(),
            field: "name",
        })?;
        let zone = non_empty(e.zone).ok_or_else(|| ResolveError::MissingField {
            entry: entry.clone(),
            field: "zone",
        })?;
        if e.ips.is_empty() && e.cidrs.is_empty() {
            return Err(ResolveError::MissingField {
                entry,
                field: "ips or cidrs",
            });
        }
        let name: Arc<str> = Arc::from(name);
        let endpoint = Arc::new(Endpoint {
            kind: EndpointKind::Custom,
            name: name.clone(),
            namespace: Arc::from(non_empty(e.namespace).unwrap_or_default()),
            workload: name,
            workload_kind: WorkloadKind::Custom,
            node: Arc::from(""),
            zone: Arc::from(zone),
            region: Arc::from(non_empty(e.region).unwrap_or_default()),
        });
        for (i, text) in e.ips.iter().enumerate() {
            let ip: IpAddr = text.trim().parse().map_err(|_| ResolveError::BadAddress {
                entry: entry.clone(),
                field: format!("ips[{i}]"),
                value: text.clone(),
            })?;
            let ip = ip.to_canonical();
            if let Some((_, first)) = exact.get(&ip) {
                return Err(ResolveError::Duplicate {
                    entry,
                    field: format!("ips[{i}]"),
                    value: ip.to_string(),
                    first: Box::new(first.clone()),
                });
            }
            exact.insert(ip, (endpoint.clone(), entry.clone()));
        }
        for (i, text) in e.cidrs.iter().enumerate() {
            let prefix: IpPrefix = text.parse().map_err(|source| ResolveError::BadCidr {
                entry: entry.clone(),
                field: format!("cidrs[{i}]"),
                value: text.clone(),
                source,
            })?;
            if let Some(first) = prefixes.get(&prefix) {
                return Err(ResolveError::Duplicate {
                    entry,
                    field: format!("cidrs[{i}]"),
                    value: prefix.to_string(),
                    first: Box::new(first.clone()),
                });
            }
            prefixes.insert(prefix, entry.clone());
            table.push((prefix, endpoint.clone()));
        }
    }
    Ok(CustomSet {
        exact: {
            let mut map = IpMap::with_capacity(exact.len());
            for (ip, (e, _)) in exact {
                map.insert_if_absent(ip, e);
            }
            map
        },
        cidrs: PrefixTable::build(table),
        endpoints,
    })
}

/// Custom endpoints, optionally backed by a file that is reloaded when it
/// changes. Lookups read the set in force without locking; a reload swaps
/// in a new set atomically, and only if the new file is valid.
#[derive(Debug)]
pub struct CustomEndpoints {
    set: ArcSwap<CustomSet>,
    source: Option<FileSource>,
}

#[derive(Debug)]
struct FileSource {
    file: WatchedFile,
    poll_interval: Duration,
}

impl CustomEndpoints {
    /// No custom endpoints.
    pub fn empty() -> Self {
        CustomEndpoints {
            set: ArcSwap::from_pointee(CustomSet::default()),
            source: None,
        }
    }

    /// Parses a document in the custom-endpoints format. Not file-backed:
    /// [`reload`](Self::reload) does nothing.
    ///
    /// # Errors
    ///
    /// [`ResolveError`] naming the entry and field that is wrong.
    pub fn from_yaml(text: &str) -> Result<Self, ResolveError> {
        let set = parse(text, Path::new("<inline>"))?;
        Ok(CustomEndpoints {
            set: ArcSwap::from_pointee(set),
            source: None,
        })
    }

    /// Loads the file at `path`. It is reloaded by [`reload`](Self::reload)
    /// and [`watch`](Self::watch).
    ///
    /// # Errors
    ///
    /// The file cannot be read, is too large or is invalid. A caller that
    /// wants to start anyway (and pick the file up once it is fixed) can use
    /// [`CustomEndpoints::watching`] instead.
    pub fn load(
        path: impl Into<PathBuf>,
        options: CustomEndpointsOptions,
    ) -> Result<Self, ResolveError> {
        let this = CustomEndpoints::watching(path, options);
        this.try_reload()?;
        Ok(this)
    }

    /// A file-backed set that starts empty; the first
    /// [`reload`](Self::reload) (or [`watch`](Self::watch) tick) loads it.
    pub fn watching(path: impl Into<PathBuf>, options: CustomEndpointsOptions) -> Self {
        CustomEndpoints {
            set: ArcSwap::from_pointee(CustomSet::default()),
            source: Some(FileSource {
                file: WatchedFile::new(path.into(), options.max_bytes),
                poll_interval: options.poll_interval,
            }),
        }
    }

    /// Number of endpoints in force.
    pub fn len(&self) -> usize {
        self.set.load().endpoints
    }

    /// True when no endpoint is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The custom endpoint `ip` belongs to, if any.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<Endpoint>> {
        self.set.load().lookup(ip).cloned()
    }

    /// Re-reads the file if it changed since the last attempt. A valid file
    /// replaces the set in force and logs "Loaded custom endpoints" with the
    /// count. An invalid one is logged, counted in
    /// `netscope_custom_endpoints_rejected_total`, and the previous set
    /// stays. A file that is not backed by a file always returns
    /// [`ReloadOutcome::Unchanged`].
    ///
    /// # Errors
    ///
    /// Why the file was rejected (after it was logged and counted).
    pub fn reload(&self) -> Result<ReloadOutcome, ResolveError> {
        let result = self.try_reload();
        if let (Err(err), Some(source)) = (&result, &self.source) {
            metrics::counter!(REJECTED_COUNTER).increment(1);
            tracing::warn!(
                path = ?source.file.path(),
                error = ?error_chain(err),
                kept = self.len(),
                "Rejected custom endpoints file; keeping the previous set"
            );
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadOutcome, ResolveError> {
        let Some(source) = &self.source else {
            return Ok(ReloadOutcome::Unchanged);
        };
        let path = source.file.path();
        let loaded = source.file.if_changed(|text| {
            let set = parse(text, path)?;
            let endpoints = set.endpoints;
            self.set.store(Arc::new(set));
            metrics::gauge!(LOADED_GAUGE).set(endpoints as f64);
            tracing::info!(
                count = endpoints,
                path = ?path,
                "Loaded custom endpoints"
            );
            Ok(ReloadOutcome::Loaded { endpoints })
        })?;
        Ok(loaded.unwrap_or(ReloadOutcome::Unchanged))
    }

    /// The driver that keeps a file-backed set fresh: checks the file every
    /// [`poll_interval`](CustomEndpointsOptions::poll_interval) and
    /// reloads it when it changed. Polling (rather than inotify) follows the
    /// symlink swap with which the kubelet updates a mounted ConfigMap.
    /// Runs until dropped; spawn it on a Tokio runtime.
    pub async fn watch(self: Arc<Self>) {
        let Some(interval) = self.source.as_ref().map(|s| s.poll_interval) else {
            return;
        };
        every(interval, self, "custom endpoints", |this| {
            // Errors are logged and counted inside; the old set stays.
            let _ = this.reload();
        })
        .await;
    }
}

impl Default for CustomEndpoints {
    fn default() -> Self {
        CustomEndpoints::empty()
    }
}

impl Resolver for CustomEndpoints {
    fn resolve(&self, ip: IpAddr, _observed_at: SystemTime) -> Arc<Endpoint> {
        self.lookup(ip).unwrap_or_else(Endpoint::external)
    }

    #[inline]
    fn try_resolve(&self, ip: IpAddr, _observed_at: SystemTime) -> Option<Arc<Endpoint>> {
        self.lookup(ip)
    }

    /// Custom endpoints know no nodes.
    fn is_monitored_node(&self, _node: &str) -> bool {
        false
    }

    /// Always true: a set (possibly empty) is always in force.
    fn is_synced(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::DebuggingRecorder;

    use super::*;
    use crate::resolve::watched::testing::{counter, write};

    const SEED: &str = r#"
endpoints:
  - name: rds-primary
    namespace: external
    zone: us-west-2a
    ips: [10.0.1.50]
  - name: elasticsearch
    namespace: external
    zone: us-west-2b
    cidrs: [10.0.2.0/24]
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn name_of(c: &CustomEndpoints, addr: &str) -> String {
        c.resolve(ip(addr), SystemTime::UNIX_EPOCH).name.to_string()
    }

    fn err_of(text: &str) -> String {
        match CustomEndpoints::from_yaml(text) {
            Ok(_) => panic!("expected {text:?} to be rejected"),
            Err(e) => error_chain(&e),
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let n = 100_000;
        for text in [
            format!("endpoints: {}{}", "[".repeat(n), "]".repeat(n)),
            format!("endpoints: {}{}", "{a: ".repeat(n / 2), "}".repeat(n / 2)),
        ] {
            let e = err_of(&text);
            assert!(
                e.contains(
                    "custom endpoints file rejected before parsing: nested deeper than 32 levels"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn seed_format_resolves() {
        let c = CustomEndpoints::from_yaml(SEED).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.len(), 2);
        let rds = c.resolve(ip("10.0.1.50"), SystemTime::UNIX_EPOCH);
        assert_eq!(rds.kind, EndpointKind::Custom);
        assert_eq!(&*rds.name, "rds-primary");
        assert_eq!(&*rds.namespace, "external");
        assert_eq!(&*rds.zone, "us-west-2a");
        assert_eq!(rds.workload_kind, WorkloadKind::Custom);
        let es = c.resolve(ip("10.0.2.77"), SystemTime::UNIX_EPOCH);
        assert_eq!(&*es.name, "elasticsearch");
        assert_eq!(&*es.zone, "us-west-2b");
        assert_eq!(
            c.resolve(ip("10.0.1.51"), SystemTime::UNIX_EPOCH).kind,
            EndpointKind::External
        );
        assert!(!c.is_monitored_node("anything"));
    }

    #[test]
    fn exact_ip_beats_cidr_and_narrow_cidr_beats_wide() {
        let c = CustomEndpoints::from_yaml(
            r#"
endpoints:
  - {name: vpc, zone: z1, cidrs: [10.0.0.0/8, "fd00::/16"]}
  - {name: subnet, zone: z2, cidrs: [10.0.2.0/24, "fd00:2::/64"]}
  - {name: host, zone: z3, ips: [10.0.2.9, "fd00:2::9"]}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(name_of(&c, "10.9.9.9"), "vpc");
        assert_eq!(name_of(&c, "10.0.2.8"), "subnet");
        assert_eq!(name_of(&c, "10.0.2.9"), "host");
        assert_eq!(name_of(&c, "::ffff:10.0.2.9"), "host");
        assert_eq!(name_of(&c, "fd00:1::1"), "vpc");
        assert_eq!(name_of(&c, "fd00:2::1"), "subnet");
        assert_eq!(name_of(&c, "fd00:2::9"), "host");
        assert_eq!(name_of(&c, "fd01::1"), Endpoint::EXTERNAL_NAME);
    }

    #[test]
    fn invalid_files_name_the_entry_and_field() {
        let e = err_of("endpoints:\n  - {name: a, zone: z, ips: [10.0.0.300]}\n");
        assert!(
            e.contains("endpoints[0] (a)") && e.contains("`ips[0]`") && e.contains("10.0.0.300"),
            "{e}"
        );
        let e = err_of("endpoints:\n  - {name: a, zone: z, ips: [10.0.0.1]}\n  - {name: b, zone: z, cidrs: [10.0.2.1/24]}\n");
        assert!(
            e.contains("endpoints[1] (b)") && e.contains("`cidrs[0]`") && e.contains("host bits"),
            "{e}"
        );
        let e = err_of("endpoints:\n  - {zone: z, ips: [10.0.0.1]}\n");
        assert!(e.contains("endpoints[0]") && e.contains("`name`"), "{e}");
        let e = err_of("endpoints:\n  - {name: db, zone: '', ips: [10.0.0.1]}\n");
        assert!(
            e.contains("endpoints[0] (db)") && e.contains("`zone`"),
            "{e}"
        );
        let e = err_of("endpoints:\n  - {name: db, zone: z}\n");
        assert!(
            e.contains("endpoints[0] (db)") && e.contains("ips or cidrs"),
            "{e}"
        );
        let e = err_of(
            "endpoints:\n  - {name: a, zone: z, ips: [10.0.0.1]}\n  - {name: b, zone: z, ips: [10.0.0.2, 10.0.0.1]}\n",
        );
        assert!(
            e.contains("endpoints[1] (b)")
                && e.contains("`ips[1]`")
                && e.contains("already claimed by endpoints[0] (a)"),
            "{e}"
        );
        let e = err_of("endpoints:\n  - {name: a, zone: z, cidrs: [10.0.0.0/8]}\n  - {name: b, zone: z, cidrs: [10.0.0.0/8]}\n");
        assert!(
            e.contains("endpoints[1] (b)") && e.contains("already claimed by endpoints[0] (a)"),
            "{e}"
        );
        let e = err_of("endpoints:\n  - {name: a, zone: z, cidr: [10.0.0.0/8]}\n");
        assert!(e.contains("unknown field `cidr`"), "{e}");
        let e = err_of("endpoints: [\n");
        assert!(e.contains("not a valid custom endpoints file"), "{e}");
    }

    #[test]
    fn empty_document_is_an_empty_set() {
        assert_eq!(
            CustomEndpoints::from_yaml("").map(|c| c.len()).ok(),
            Some(0)
        );
        assert_eq!(
            CustomEndpoints::from_yaml("endpoints: []")
                .map(|c| c.len())
                .ok(),
            Some(0)
        );
    }

    #[test]
    fn bad_reload_keeps_the_previous_set_and_is_counted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("endpoints.yaml");
        write(&path, SEED);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let c = CustomEndpoints::load(
                &path,
                CustomEndpointsOptions {
                    max_bytes: 4096,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.len(), 2);
            assert_eq!(c.reload().ok(), Some(ReloadOutcome::Unchanged));

            // Unparsable, then a duplicate IP, then too large: all rejected.
            for bad in [
                "endpoints: [".to_owned(),
                "endpoints:\n  - {name: a, zone: z, ips: [10.0.0.1]}\n  - {name: b, zone: z, ips: [10.0.0.1]}\n".to_owned(),
                format!("endpoints: []\n#{}\n", "x".repeat(5000)),
            ] {
                write(&path, &bad);
                assert!(c.reload().is_err(), "{bad:.40} accepted");
                assert_eq!(c.len(), 2);
                assert_eq!(name_of(&c, "10.0.1.50"), "rds-primary");
                // The same bad file is not re-reported on every poll.
                assert_eq!(c.reload().ok(), Some(ReloadOutcome::Unchanged));
            }
            let snap = snapshotter.snapshot().into_vec();
            assert_eq!(counter(&snap, REJECTED_COUNTER), 3);

            // A good file replaces the set.
            write(
                &path,
                "endpoints:\n  - {name: cache, zone: us-west-2c, cidrs: [\"fd00:9::/48\"]}\n",
            );
            assert_eq!(
                c.reload().ok(),
                Some(ReloadOutcome::Loaded { endpoints: 1 })
            );
            assert_eq!(name_of(&c, "fd00:9::1"), "cache");
            assert_eq!(name_of(&c, "10.0.1.50"), Endpoint::EXTERNAL_NAME);

            // A vanished file is an error too, and keeps the set.
            std::fs::remove_file(&path).unwrap_or_else(|e| panic!("rm: {e}"));
            assert!(matches!(c.reload(), Err(ResolveError::Read { .. })));
            assert_eq!(name_of(&c, "fd00:9::1"), "cache");
        });
    }

    #[test]
    fn initial_bad_file_fails_load() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("endpoints.yaml");
        write(&path, "endpoints:\n  - {name: x, ips: [10.0.0.1]}\n");
        match CustomEndpoints::load(&path, CustomEndpointsOptions::default()) {
            Ok(_) => panic!("a file without zone loaded"),
            Err(e) => assert!(
                error_chain(&e).contains("endpoints[0] (x): field `zone`"),
                "{e}"
            ),
        }
    }
}
