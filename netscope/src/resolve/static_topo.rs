//! A static topology from a YAML file: the same pods, nodes and Services the
//! Kubernetes backend would find, for local runs, the demo and hosts without
//! Kubernetes.
//!
//! Format (every list is optional):
//!
//! ```yaml
//! zones:                      # optional: lets nodes name only their zone
//!   - name: us-west-2a
//!     region: us-west-2
//! nodes:
//!   - name: node-a
//!     zone: us-west-2a        # required
//!     region: us-west-2       # optional; else the zone's region
//!     ips: [192.168.10.1]     # the node's own addresses (InternalIPs)
//!     agent: true             # runs a netscope agent; default true
//! pods:
//!   - name: web-7c9f-x2x1z
//!     namespace: shop         # required
//!     node: node-a            # required, must be a node above
//!     ips: [10.0.1.5, "fd00:1::5"]
//!     workload: web           # optional; default the pod's own name
//!     workload_kind: Deployment  # optional; default Pod
//!     host_network: false     # optional; true: the pod's IPs are the node's
//! services:
//!   - name: api
//!     namespace: shop
//!     ips: [10.96.0.10, "fd00:96::10"]   # ClusterIPs
//! service_cidrs: [10.96.0.0/12, "fd00:96::/108"]
//! ```
//!
//! Unknown fields, missing names, malformed addresses, a pod on an unknown
//! node and two entries claiming one address are errors that name the entry
//! and the field.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::endpoint::{Endpoint, EndpointKind, WorkloadKind};

use super::{ClusterSnapshot, ClusterSnapshotBuilder, EntryRef, IpPrefix, ResolveError, Resolver};

/// Largest topology file accepted (16 MiB: about 100k pods).
pub const MAX_TOPOLOGY_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    zones: Vec<RawZone>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    service_cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: Option<String>,
    region: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    zone: Option<String>,
    region: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default = "yes")]
    agent: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    name: Option<String>,
    namespace: Option<String>,
    node: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    workload: Option<String>,
    workload_kind: Option<WorkloadKind>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
}

fn required(
    value: Option<String>,
    entry: &EntryRef,
    field: &'static str,
) -> Result<String, ResolveError> {
    value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ResolveError::MissingField {
            entry: entry.clone(),
            field,
        })
}

/// Tracks which entry claimed which address, to reject duplicates.
#[derive(Default)]
struct Claims(HashMap<IpAddr, EntryRef>);

impl Claims {
    fn parse(&mut self, entry: &EntryRef, ips: &[String]) -> Result<Vec<IpAddr>, ResolveError> {
        let mut out = Vec::with_capacity(ips.len());
        for (i, text) in ips.iter().enumerate() {
            let field = format!("ips[{i}]");
            let ip = text
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| ResolveError::BadAddress {
                    entry: entry.clone(),
                    field: field.clone(),
                    value: text.clone(),
                })?
                .to_canonical();
            if let Some(first) = self.0.get(&ip) {
                return Err(ResolveError::Duplicate {
                    entry: entry.clone(),
                    field,
                    value: ip.to_string(),
                    first: Box::new(first.clone()),
                });
            }
            self.0.insert(ip, entry.clone());
            out.push(ip);
        }
        Ok(out)
    }
}

/// Parses and validates a topology document into a snapshot.
fn parse(text: &str, path: &Path) -> Result<ClusterSnapshot, ResolveError> {
    let raw: RawTopology = if text.trim().is_empty() {
        RawTopology {
            zones: Vec::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            service_cidrs: Vec::new(),
        }
    } else {
        serde_yaml::from_str(text).map_err(|source| ResolveError::Yaml {
            path: path.to_owned(),
            what: "static topology",
            source,
        })?
    };
    let empty: Arc<str> = Arc::from("");
    let mut regions: HashMap<String, Arc<str>> = HashMap::new();
    for (index, z) in raw.zones.into_iter().enumerate() {
        let entry = EntryRef::new("zones", index, z.name.as_deref());
        let name = required(z.name, &entry, "name")?;
        let region = required(z.region, &entry, "region")?;
        regions.insert(name, Arc::from(region));
    }

    let mut claims = Claims::default();
    let mut builder = ClusterSnapshotBuilder::with_capacity(raw.pods.len());
    let mut nodes: HashMap<String, (Arc<Endpoint>, EntryRef)> = HashMap::new();
    for (index, n) in raw.nodes.into_iter().enumerate() {
        let entry = EntryRef::new("nodes", index, n.name.as_deref());
        let name = required(n.name, &entry, "name")?;
        if let Some((_, first)) = nodes.get(&name) {
            return Err(ResolveError::Duplicate {
                entry: entry.clone(),
                field: "name".to_owned(),
                value: name,
                first: Box::new(first.clone()),
            });
        }
        let zone = required(n.zone, &entry, "zone")?;
        let region = n
            .region
            .filter(|r| !r.trim().is_empty())
            .map(|r| Arc::from(r.trim()))
            .or_else(|| regions.get(&zone).cloned())
            .unwrap_or_else(|| empty.clone());
        let ips = claims.parse(&entry, &n.ips)?;
        let name: Arc<str> = Arc::from(name);
        let endpoint = Arc::new(Endpoint {
            kind: EndpointKind::Node,
            name: name.clone(),
            namespace: empty.clone(),
            workload: name.clone(),
            workload_kind: WorkloadKind::Node,
            node: name.clone(),
            zone: Arc::from(zone),
            region,
        });
        for ip in ips {
            builder.node_ip(ip, endpoint.clone());
        }
        if n.agent {
            builder.monitored_node(name.clone());
        }
        nodes.insert(name.to_string(), (endpoint, entry));
    }

    for (index, p) in raw.pods.into_iter().enumerate() {
        let entry = EntryRef::new("pods", index, p.name.as_deref());
        let name = required(p.name, &entry, "name")?;
        let namespace = required(p.namespace, &entry, "namespace")?;
        let node_name = required(p.node, &entry, "node")?;
        let node = nodes
            .get(&node_name)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| ResolveError::UnknownReference {
                entry: entry.clone(),
                field: "node",
                value: node_name.clone(),
            })?;
        let ips = claims.parse(&entry, &p.ips)?;
        if p.host_network {
            for ip in ips {
                builder.node_ip(ip, node.clone());
            }
            continue;
        }
        let name: Arc<str> = Arc::from(name);
        let (workload, workload_kind) = match p.workload.filter(|w| !w.trim().is_empty()) {
            Some(w) => (
                Arc::from(w.trim()),
                p.workload_kind.unwrap_or(WorkloadKind::Pod),
            ),
            None => (name.clone(), p.workload_kind.unwrap_or(WorkloadKind::Pod)),
        };
        let endpoint = Arc::new(Endpoint {
            kind: EndpointKind::Pod,
            name,
            namespace: Arc::from(namespace),
            workload,
            workload_kind,
            node: node.name.clone(),
            zone: node.zone.clone(),
            region: node.region.clone(),
        });
        for ip in ips {
            builder.pod_ip(ip, endpoint.clone(), SystemTime::UNIX_EPOCH, None);
        }
    }

    for (index, s) in raw.services.into_iter().enumerate() {
        let entry = EntryRef::new("services", index, s.name.as_deref());
        let name: Arc<str> = Arc::from(required(s.name, &entry, "name")?);
        let namespace = required(s.namespace, &entry, "namespace")?;
        let ips = claims.parse(&entry, &s.ips)?;
        let endpoint = Arc::new(Endpoint {
            kind: EndpointKind::Service,
            name: name.clone(),
            namespace: Arc::from(namespace),
            workload: name,
            workload_kind: WorkloadKind::Service,
            node: empty.clone(),
            zone: empty.clone(),
            region: empty.clone(),
        });
        for ip in ips {
            builder.service_ip(ip, endpoint.clone());
        }
    }

    for (index, text) in raw.service_cidrs.iter().enumerate() {
        let prefix: IpPrefix = text.parse().map_err(|source| ResolveError::BadCidr {
            entry: EntryRef::new("service_cidrs", index, None),
            field: "service_cidrs".to_owned(),
            value: text.clone(),
            source,
        })?;
        builder.service_cidr(prefix);
    }
    Ok(builder.build())
}

/// Resolves from a static topology (see the module docs for the format).
#[derive(Debug, Clone)]
pub struct StaticResolver {
    snapshot: Arc<ClusterSnapshot>,
    path: Option<PathBuf>,
}

impl StaticResolver {
    /// Parses a topology document.
    ///
    /// # Errors
    ///
    /// [`ResolveError`] naming the entry and the field that is wrong.
    pub fn from_yaml(text: &str) -> Result<Self, ResolveError> {
        Ok(StaticResolver {
            snapshot: Arc::new(parse(text, Path::new("<inline>"))?),
            path: None,
        })
    }

    /// Loads a topology file (at most [`MAX_TOPOLOGY_BYTES`]).
    ///
    /// # Errors
    ///
    /// The file cannot be read, is too large, or is invalid.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, ResolveError> {
        let path = path.into();
        let read_err = |source| ResolveError::Read {
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(&path).map_err(read_err)?.len();
        if size > MAX_TOPOLOGY_BYTES {
            return Err(ResolveError::TooLarge {
                path,
                size,
                limit: MAX_TOPOLOGY_BYTES,
            });
        }
        let text = std::fs::read_to_string(&path).map_err(read_err)?;
        let snapshot = Arc::new(parse(&text, &path)?);
        tracing::info!(
            path = %path.display(),
            addresses = snapshot.address_count(),
            "Loaded static topology"
        );
        Ok(StaticResolver {
            snapshot,
            path: Some(path),
        })
    }

    /// Resolves from a snapshot built in code (with a
    /// [`ClusterSnapshotBuilder`], or taken from a
    /// [`KubeIndex`](crate::resolve::kube::KubeIndex)).
    pub fn from_snapshot(snapshot: ClusterSnapshot) -> Self {
        StaticResolver {
            snapshot: Arc::new(snapshot),
            path: None,
        }
    }

    /// The file it was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The index it resolves from.
    pub fn snapshot(&self) -> &ClusterSnapshot {
        &self.snapshot
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Arc<Endpoint> {
        self.snapshot.resolve(ip, observed_at)
    }

    fn try_resolve(&self, ip: IpAddr, observed_at: SystemTime) -> Option<Arc<Endpoint>> {
        self.snapshot.lookup(ip, observed_at).cloned()
    }

    /// Nodes listed in the file, unless marked `agent: false`.
    fn is_monitored_node(&self, node: &str) -> bool {
        self.snapshot.is_monitored_node(node)
    }

    /// Always true: the file is loaded whole at construction.
    fn is_synced(&self) -> bool {
        true
    }

    fn service_cidrs(&self) -> Vec<IpPrefix> {
        self.snapshot.service_cidrs().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::error_chain;

    const TOPOLOGY: &str = r#"
zones:
  - {name: us-west-2a, region: us-west-2}
  - {name: us-west-2b, region: us-west-2}
nodes:
  - {name: node-a, zone: us-west-2a, ips: [192.168.10.1]}
  - {name: node-b, zone: us-west-2b, region: us-west-2-override, ips: [192.168.10.2], agent: false}
pods:
  - name: web-1
    namespace: shop
    node: node-a
    ips: [10.0.1.5, "fd00:1::5"]
    workload: web
    workload_kind: Deployment
  - {name: solo, namespace: shop, node: node-b, ips: [10.0.2.5]}
  - {name: cni, namespace: kube-system, node: node-b, ips: [192.168.10.20], host_network: true}
services:
  - {name: api, namespace: shop, ips: [10.96.0.10, "fd00:96::10"]}
service_cidrs: [10.96.0.0/12]
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn topo() -> StaticResolver {
        StaticResolver::from_yaml(TOPOLOGY).unwrap_or_else(|e| panic!("{}", error_chain(&e)))
    }

    #[test]
    fn pods_nodes_and_services_resolve() {
        let r = topo();
        let t = SystemTime::now();
        for addr in ["10.0.1.5", "fd00:1::5"] {
            let web = r.resolve(ip(addr), t);
            assert_eq!(web.kind, EndpointKind::Pod);
            assert_eq!((&*web.name, &*web.namespace), ("web-1", "shop"));
            assert_eq!(
                (&*web.workload, web.workload_kind),
                ("web", WorkloadKind::Deployment)
            );
            assert_eq!(
                (&*web.node, &*web.zone, &*web.region),
                ("node-a", "us-west-2a", "us-west-2")
            );
        }
        let solo = r.resolve(ip("10.0.2.5"), t);
        assert_eq!(
            (&*solo.workload, solo.workload_kind),
            ("solo", WorkloadKind::Pod)
        );
        assert_eq!(
            (&*solo.zone, &*solo.region),
            ("us-west-2b", "us-west-2-override")
        );
        let node = r.resolve(ip("192.168.10.1"), t);
        assert_eq!(
            (node.kind, &*node.name, &*node.zone),
            (EndpointKind::Node, "node-a", "us-west-2a")
        );
        let host = r.resolve(ip("192.168.10.20"), t);
        assert_eq!((host.kind, &*host.name), (EndpointKind::Node, "node-b"));
        let svc = r.resolve(ip("fd00:96::10"), t);
        assert_eq!(
            (svc.kind, &*svc.name, &*svc.namespace),
            (EndpointKind::Service, "api", "shop")
        );
        let unknown_svc = r.resolve(ip("10.96.3.3"), t);
        assert_eq!(
            (unknown_svc.kind, &*unknown_svc.name),
            (EndpointKind::Service, Endpoint::UNKNOWN)
        );
        assert_eq!(r.resolve(ip("8.8.8.8"), t).kind, EndpointKind::External);
        assert_eq!(
            r.service_cidrs(),
            vec!["10.96.0.0/12".parse().unwrap_or_else(|e| panic!("{e}"))]
        );
    }

    #[test]
    fn agent_nodes_default_to_all() {
        let r = topo();
        assert!(r.is_monitored_node("node-a"));
        assert!(!r.is_monitored_node("node-b"), "agent: false");
        assert!(!r.is_monitored_node("node-z"), "not in the file");
        assert!(r.is_synced());
    }

    fn err_of(text: &str) -> String {
        match StaticResolver::from_yaml(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => error_chain(&e),
        }
    }

    #[test]
    fn invalid_topologies_name_entry_and_field() {
        let e = err_of("nodes:\n  - {name: a, ips: [10.0.0.1]}\n");
        assert!(e.contains("nodes[0] (a): field `zone`"), "{e}");
        let e = err_of("nodes:\n  - {name: a, zone: z}\npods:\n  - {name: p, namespace: n, node: b, ips: [10.0.0.1]}\n");
        assert!(
            e.contains("pods[0] (p): field `node`: \"b\" is not defined"),
            "{e}"
        );
        let e = err_of("nodes:\n  - {name: a, zone: z, ips: [10.0.0.1]}\npods:\n  - {name: p, namespace: n, node: a, ips: [10.0.0.1]}\n");
        assert!(
            e.contains("pods[0] (p): field `ips[0]`: 10.0.0.1 is already claimed by nodes[0] (a)"),
            "{e}"
        );
        let e = err_of("pods:\n  - {name: p, namespace: n, node: a, ips: [10.0.0.x]}\nnodes: []\n");
        assert!(
            e.contains("pods[0] (p): field `node`") || e.contains("ips[0]"),
            "{e}"
        );
        let e = err_of("nodes:\n  - {name: a, zone: z, ip: [10.0.0.1]}\n");
        assert!(e.contains("unknown field `ip`"), "{e}");
        let e = err_of("service_cidrs: [10.96.0.1/12]\n");
        assert!(
            e.contains("service_cidrs[0]") && e.contains("host bits"),
            "{e}"
        );
        let e = err_of("nodes:\n  - {name: a, zone: z}\n  - {name: a, zone: y}\n");
        assert!(e.contains("nodes[1] (a): field `name`"), "{e}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("topology.yaml");
        std::fs::write(&path, TOPOLOGY).unwrap_or_else(|e| panic!("write: {e}"));
        let r = StaticResolver::load(&path).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        assert_eq!(&*r.resolve(ip("10.0.1.5"), SystemTime::now()).name, "web-1");
        assert_eq!(r.path(), Some(path.as_path()));
        assert!(matches!(
            StaticResolver::load(dir.path().join("missing.yaml")),
            Err(ResolveError::Read { .. })
        ));
    }
}
