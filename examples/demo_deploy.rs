//! The demo's deployment checks: running the agent and the aggregator from
//! their container images (`--agent-image`, `--aggregator-image`), and
//! running a Grafana dashboard's every query against the demo's Prometheus
//! (`--check-dashboard`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{urlencode, Sample};

/// How a netscope binary is started inside a node's (or the underlay's)
/// network namespace.
#[derive(Debug, Clone)]
pub enum Launch {
    /// The binary itself, through nsenter.
    Bin(PathBuf),
    /// A container of `image`, run by `engine` (podman) in the namespace
    /// (`--network ns:PATH`), with exactly the chart's security settings.
    Image {
        engine: String,
        image: String,
        /// The agent: uid 0 with these capabilities and nothing else; the
        /// aggregator (None): the chart's non-root uid, no capabilities.
        caps: Option<Vec<String>>,
        /// Files the binary reads (topology, custom endpoints), mounted
        /// read-only at the same path.
        dir: PathBuf,
    },
}

impl Launch {
    /// The command that runs the binary with `args` in `ns_path`. `name`
    /// names the container (unique per run: the namespace prefix is in it).
    pub fn command(&self, ns_path: &str, name: &str, args: &[String]) -> Command {
        match self {
            Launch::Bin(bin) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns_path}"))
                    .arg("--")
                    .arg(bin)
                    .args(args);
                c.env("RUST_LOG", "info");
                c
            }
            Launch::Image {
                engine,
                image,
                caps,
                dir,
            } => {
                let mut c = Command::new(engine);
                c.args(["run", "--rm", "--replace", "--name", name])
                    .arg(format!("--network=ns:{ns_path}"))
                    // The chart: readOnlyRootFilesystem, drop ALL,
                    // allowPrivilegeEscalation false, RuntimeDefault seccomp.
                    .args(["--read-only", "--cap-drop=all"])
                    .args(["--security-opt", "no-new-privileges"])
                    .args(["--env", "RUST_LOG=info"])
                    .arg(format!("--volume={0}:{0}:ro", dir.display()));
                match caps {
                    Some(caps) => {
                        c.args(["--user", "0:0"]);
                        c.arg(format!("--cap-add={}", caps.join(",")));
                        // agent.mountBpffs.
                        c.arg("--volume=/sys/fs/bpf:/sys/fs/bpf");
                    }
                    None => {
                        c.args(["--user", "65532:65532"]);
                    }
                }
                c.arg(image).args(args);
                c
            }
        }
    }
}

/// One HTTP GET against Prometheus' API: the JSON `data`.
pub(crate) fn api(addr: SocketAddr, path_and_query: &str) -> Result<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .context("connecting to Prometheus")?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let json = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("Prometheus answered: {json}"))?;
    if v["status"] != "success" {
        bail!("{path_and_query} failed: {json}");
    }
    Ok(v["data"].clone())
}

/// `label_values(metric, label)`: the values, sorted.
fn label_values(addr: SocketAddr, query: &str) -> Result<Vec<String>> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .with_context(|| format!("variable query {query:?} is not label_values(metric, label)"))?;
    let (metric, label) = inner
        .rsplit_once(',')
        .with_context(|| format!("variable query {query:?} has no label"))?;
    let data = api(
        addr,
        &format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            urlencode(metric.trim())
        ),
    )?;
    let mut out: Vec<String> = data
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    Ok(out)
}

/// The regex a multi-value variable with these values expands to.
fn regex_of(values: &[String]) -> String {
    let esc: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .flat_map(|c| {
                    if "\\.+*?()|[]{}^$".contains(c) {
                        vec!['\\', '\\', c]
                    } else {
                        vec![c]
                    }
                })
                .collect()
        })
        .collect();
    format!("({})", esc.join("|"))
}

/// The result vector of an instant query, as (labels, value).
type Vector = Vec<(BTreeMap<String, String>, f64)>;

fn vector(data: &serde_json::Value) -> Vector {
    data["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let labels = r["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let v = r["value"][1]
                        .as_str()
                        .and_then(|x| x.parse::<f64>().ok())
                        .unwrap_or(f64::NAN);
                    (labels, v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sums `name`'s samples by the values of `by`.
fn sum_by(samples: &[Sample], name: &str, by: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for (n, labels, v) in samples {
        if n == name {
            let key = by
                .iter()
                .map(|l| labels.get(*l).cloned().unwrap_or_default())
                .collect();
            *out.entry(key).or_insert(0.0) += v;
        }
    }
    out
}

/// What the exact panels must show, computed from the aggregator's last
/// scrape: the zone matrix from the pod-level series (which `--verify`
/// compares with nftables), the cost from the cross-zone bytes and the
/// prices, floor(bytes x price) per zone and region pair and side.
fn expected(kind: &str, samples: &[Sample]) -> Result<BTreeMap<Vec<String>, f64>> {
    Ok(match kind {
        "zone_matrix" => sum_by(
            samples,
            "pod_network_traffic_bytes_total",
            &["src_zone", "dst_zone"],
        ),
        "cost_by_zone_side" | "cost_by_side" => {
            let prices = sum_by(
                samples,
                "netscope_cross_zone_price_dollars_per_gigabyte",
                &["side"],
            );
            if prices.is_empty() {
                bail!("the aggregator exports no netscope_cross_zone_price_dollars_per_gigabyte");
            }
            // The exporter prices each zone label set, which also carries
            // the two regions (a custom endpoint may have a zone and no
            // region), so floor per zone and region pair, then add up. The
            // workload level has the region labels; its bytes are the pod
            // level's, summed.
            let bytes = sum_by(
                samples,
                "netscope_workload_cross_zone_network_traffic_bytes_total",
                &["src_zone", "dst_zone", "src_region", "dst_region"],
            );
            let mut out = BTreeMap::new();
            for (side, price) in &prices {
                // Picodollars per GB are integers for any price with at most
                // 12 decimals; then exact integer arithmetic as the exporter.
                let pico_per_gb = (price * 1e12).round() as u128;
                for (labels, b) in &bytes {
                    let (pair, regions) = labels.split_at(2);
                    // Between two known regions: not billed at the AZ price.
                    let known = |r: &String| !r.is_empty() && r != "unknown";
                    if known(&regions[0]) && known(&regions[1]) && regions[0] != regions[1] {
                        continue;
                    }
                    let micro = (*b as u128 * pico_per_gb / 1_000_000_000_000_000) as f64;
                    let key = if kind == "cost_by_side" {
                        side.clone()
                    } else {
                        let mut k = pair.to_vec();
                        k.extend(side.iter().cloned());
                        k
                    };
                    *out.entry(key).or_insert(0.0) += micro / 1e6;
                }
            }
            out
        }
        other => bail!("unknown exact panel kind {other:?}"),
    })
}

/// The label names an exact panel's result is keyed by.
fn key_labels(kind: &str) -> &'static [&'static str] {
    match kind {
        "zone_matrix" => &["src_zone", "dst_zone"],
        "cost_by_zone_side" => &["src_zone", "dst_zone", "side"],
        _ => &["side"],
    }
}

/// Runs every query of the dashboard at `path` through Prometheus at
/// `addr`, template variables substituted (label_values variables with the
/// values Prometheus has, `$__range` with the run's length,
/// `$__rate_interval` with four scrape intervals), and requires data from
/// each; the panels marked `netscopeExact` must equal what the demo
/// computed from the aggregator's last scrape (`last`). Range queries run
/// over the run, instant ones at its end.
pub fn check_dashboard(
    addr: SocketAddr,
    path: &Path,
    last: &[Sample],
    run: Duration,
) -> Result<bool> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the dashboard {}", path.display()))?;
    let dash: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    println!(
        "\n== the dashboard {} through the real Prometheus (http://{addr}) ==",
        path.display()
    );
    let range = format!("{}s", run.as_secs() + 30);
    let mut vars: Vec<(String, String)> = vec![
        ("$__range".into(), range.clone()),
        ("$__rate_interval".into(), "4s".into()),
    ];
    let mut ok = true;
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("");
        match v["type"].as_str() {
            Some("query") => {
                let values = label_values(addr, v["query"].as_str().unwrap_or(""))?;
                println!("  variable ${name} = {values:?}");
                if values.is_empty() {
                    println!("  MISMATCH variable ${name}: its query finds no values");
                    ok = false;
                }
                let re = regex_of(&values);
                vars.push((format!("${{{name}}}"), re.clone()));
                vars.push((format!("${name}"), re));
            }
            Some("datasource") => {}
            other => bail!("variable ${name} of type {other:?}: the check cannot substitute it"),
        }
    }
    // Longer names first, so that $agent does not eat into $agents.
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock")?
        .as_secs_f64();
    let (mut panels, mut queries) = (0, 0);
    for p in dash["panels"].as_array().into_iter().flatten() {
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        panels += 1;
        let title = p["title"].as_str().unwrap_or("?");
        for t in targets {
            queries += 1;
            let mut expr = t["expr"].as_str().unwrap_or("").to_string();
            for (k, v) in &vars {
                expr = expr.replace(k.as_str(), v);
            }
            if expr.contains('$') {
                println!("  MISMATCH {title}: unsubstituted variable in {expr}");
                ok = false;
                continue;
            }
            let instant = t["instant"].as_bool() == Some(true);
            let data = if instant {
                api(
                    addr,
                    &format!("/api/v1/query?query={}&time={now:.3}", urlencode(&expr)),
                )?
            } else {
                let start = now - run.as_secs_f64() - 30.0;
                api(
                    addr,
                    &format!(
                        "/api/v1/query_range?query={}&start={start:.3}&end={now:.3}&step=1",
                        urlencode(&expr)
                    ),
                )?
            };
            let n = data["result"].as_array().map_or(0, Vec::len);
            let has_data = n > 0;
            ok &= has_data;
            println!(
                "  {:<8} {title} [{}] {n} series ({})",
                if has_data { "ok" } else { "NO DATA" },
                t["refId"].as_str().unwrap_or("?"),
                if instant { "instant" } else { "range" }
            );
            if let (Some(kind), true) = (p["netscopeExact"].as_str(), instant && has_data) {
                let want = expected(kind, last)?;
                let got: BTreeMap<Vec<String>, f64> = vector(&data)
                    .into_iter()
                    .map(|(labels, v)| {
                        (
                            key_labels(kind)
                                .iter()
                                .map(|l| labels.get(*l).cloned().unwrap_or_default())
                                .collect(),
                            v,
                        )
                    })
                    .collect();
                let same = want.len() == got.len()
                    && want.iter().all(|(k, w)| {
                        got.get(k)
                            .is_some_and(|g| (g - w).abs() <= w.abs() * 1e-12 + 1e-9)
                    });
                ok &= same;
                println!(
                    "  {:<8} {title}: {} cells equal what the demo computed ({kind})",
                    if same { "ok" } else { "MISMATCH" },
                    want.len()
                );
                if !same {
                    println!("           want {want:?}\n           got  {got:?}");
                }
            }
        }
    }
    println!("dashboard: {panels} panels, {queries} queries, every one with data: {ok}");
    if panels == 0 {
        bail!(
            "the dashboard {} has no panels with queries",
            path.display()
        );
    }
    Ok(ok)
}
