//! Stand-in static resolution for `--topology` and `--custom-endpoints`
//! until the full resolvers (static file, custom endpoints with CIDRs,
//! Kubernetes) are wired in. Exact addresses only.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use netscope::{Endpoint, EndpointKind, MemoryResolver, WorkloadKind};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Topology {
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(default)]
    pods: Vec<Pod>,
    #[serde(default)]
    services: Vec<Service>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Node {
    name: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    ips: Vec<IpAddr>,
    /// Whether a netscope agent runs there (default: yes).
    #[serde(default = "yes")]
    monitored: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pod {
    name: String,
    #[serde(default)]
    namespace: String,
    node: String,
    ips: Vec<IpAddr>,
    #[serde(default)]
    workload: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    name: String,
    #[serde(default)]
    namespace: String,
    ips: Vec<IpAddr>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Custom {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    ips: Vec<IpAddr>,
    #[serde(default)]
    cidrs: Vec<String>,
}

fn s(v: &str) -> Arc<str> {
    Arc::from(v)
}

/// Builds the resolver from the optional files.
pub fn load(topology: Option<&Path>, custom: Option<&Path>) -> Result<MemoryResolver> {
    let mut r = MemoryResolver::new();
    if let Some(path) = custom {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading custom endpoints {}", path.display()))?;
        let list: Vec<Custom> = serde_yaml::from_str(&text)
            .with_context(|| format!("parsing custom endpoints {}", path.display()))?;
        for c in list {
            if !c.cidrs.is_empty() {
                bail!(
                    "custom endpoint {:?} in {}: CIDRs need the full custom-endpoints resolver, which this build does not have yet; list exact ips",
                    c.name,
                    path.display()
                );
            }
            let ep = Arc::new(Endpoint {
                kind: EndpointKind::Custom,
                name: s(&c.name),
                namespace: s(&c.namespace),
                workload: s(&c.name),
                workload_kind: WorkloadKind::Custom,
                node: s(""),
                zone: s(&c.zone),
                region: s(""),
            });
            for ip in c.ips {
                r.insert(ip, ep.clone());
            }
        }
    }
    let Some(path) = topology else {
        return Ok(r);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading topology {}", path.display()))?;
    let t: Topology = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing topology {}", path.display()))?;
    let mut monitored = Vec::new();
    for n in &t.nodes {
        if n.monitored {
            monitored.push(n.name.clone());
        }
        let ep = Arc::new(Endpoint {
            kind: EndpointKind::Node,
            name: s(&n.name),
            namespace: s(""),
            workload: s(&n.name),
            workload_kind: WorkloadKind::Node,
            node: s(&n.name),
            zone: s(&n.zone),
            region: s(&n.region),
        });
        for ip in &n.ips {
            r.insert(*ip, ep.clone());
        }
    }
    for p in t.pods {
        let Some(node) = t.nodes.iter().find(|n| n.name == p.node) else {
            bail!(
                "topology {}: pod {:?} is on unknown node {:?}",
                path.display(),
                p.name,
                p.node
            );
        };
        let (workload, kind) = match &p.workload {
            Some(w) => (w.as_str(), WorkloadKind::Deployment),
            None => (p.name.as_str(), WorkloadKind::Pod),
        };
        let ep = Arc::new(Endpoint {
            kind: EndpointKind::Pod,
            name: s(&p.name),
            namespace: s(&p.namespace),
            workload: s(workload),
            workload_kind: kind,
            node: s(&node.name),
            zone: s(&node.zone),
            region: s(&node.region),
        });
        for ip in p.ips {
            r.insert(ip, ep.clone());
        }
    }
    for svc in t.services {
        for ip in svc.ips {
            r.add_service(ip, &svc.name, &svc.namespace);
        }
    }
    r.set_monitored(monitored);
    Ok(r)
}
