//! Workload and label rules that need no API calls: the owning workload from
//! a pod's owner references, and label selectors evaluated locally.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::{Expression, Selector, SelectorExt};

use crate::endpoint::WorkloadKind;
use crate::resolve::ResolveError;

/// The label the Deployment controller puts on a ReplicaSet's pods; the
/// ReplicaSet is named `<deployment>-<hash>` with the same hash.
pub(crate) const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Fewest digits in the suffix of a Job created by a CronJob. The CronJob
/// controller names Jobs `<cronjob>-<scheduled time>`, the time in minutes
/// since the epoch (8 digits since 1989; the old controller used seconds, 10
/// digits), so a short numeric suffix (`migrate-2`) stays a plain Job.
const CRONJOB_SUFFIX_MIN_DIGITS: usize = 8;

/// The workload that owns a pod, from its controller owner reference alone
/// (no ReplicaSet or Job is looked up):
///
/// - ReplicaSet `<name>-<hash>` where `<hash>` is the pod's
///   `pod-template-hash` label: Deployment `<name>`; any other ReplicaSet:
///   ReplicaSet;
/// - StatefulSet, DaemonSet: themselves;
/// - Job `<name>-<digits>` (at least 8 digits): CronJob `<name>`; other
///   Jobs: Job;
/// - no owner, or a Node (a static pod's mirror): the pod itself;
/// - anything else (a CRD controller): that owner, kind `Other`.
pub(crate) fn workload_of<'a>(
    pod_name: &'a str,
    owners: &'a [OwnerReference],
    pod_template_hash: Option<&str>,
) -> (&'a str, WorkloadKind) {
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    let Some(owner) = owner else {
        return (pod_name, WorkloadKind::Pod);
    };
    let name = owner.name.as_str();
    match owner.kind.as_str() {
        "ReplicaSet" => match pod_template_hash.and_then(|h| strip_suffix(name, h)) {
            Some(deployment) => (deployment, WorkloadKind::Deployment),
            None => (name, WorkloadKind::ReplicaSet),
        },
        "StatefulSet" => (name, WorkloadKind::StatefulSet),
        "DaemonSet" => (name, WorkloadKind::DaemonSet),
        "Job" => match cronjob_of(name) {
            Some(cronjob) => (cronjob, WorkloadKind::CronJob),
            None => (name, WorkloadKind::Job),
        },
        "Node" => (pod_name, WorkloadKind::Pod),
        _ => (name, WorkloadKind::Other),
    }
}

/// `name` without its `-<suffix>`, if it has that suffix and something
/// before it.
fn strip_suffix<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    if suffix.is_empty() {
        return None;
    }
    let base = name.strip_suffix(suffix)?.strip_suffix('-')?;
    (!base.is_empty()).then_some(base)
}

/// The CronJob a Job name points to, when it ends in `-<digits>`.
fn cronjob_of(job: &str) -> Option<&str> {
    let (base, digits) = job.rsplit_once('-')?;
    (!base.is_empty()
        && digits.len() >= CRONJOB_SUFFIX_MIN_DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit()))
    .then_some(base)
}

/// Parses a label selector in the API's string syntax: comma-separated
/// `key`, `!key`, `key=value`, `key==value`, `key!=value`,
/// `key in (a,b)`, `key notin (a,b)`. An empty selector is refused: it
/// would mark every node with any Ready pod as monitored.
pub(crate) fn parse_selector(text: &str) -> Result<Selector, ResolveError> {
    let bad = |reason: &str| ResolveError::BadSelector {
        selector: text.to_owned(),
        reason: reason.to_owned(),
    };
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or_else(|| bad("unbalanced `)`"))?,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced `(`"));
    }
    parts.push(&text[start..]);
    let mut exprs = Vec::new();
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad("empty requirement"));
        }
        exprs.push(parse_requirement(part).ok_or_else(|| bad(&format!("cannot parse {part:?}")))?);
    }
    Ok(exprs.into_iter().collect())
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

fn valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_requirement(part: &str) -> Option<Expression> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key).then(|| Expression::DoesNotExist(key.to_owned()));
    }
    if let Some(open) = part.find('(') {
        let close = part.strip_suffix(')')?;
        let head = part[..open].trim();
        let values: Option<std::collections::BTreeSet<String>> = close[open + 1..]
            .split(',')
            .map(str::trim)
            .map(|v| valid_value(v).then(|| v.to_owned()))
            .collect();
        let values = values?;
        let (key, op) = head.rsplit_once(char::is_whitespace)?;
        let key = key.trim();
        if !valid_key(key) {
            return None;
        }
        return match op {
            "in" => Some(Expression::In(key.to_owned(), values)),
            "notin" => Some(Expression::NotIn(key.to_owned(), values)),
            _ => None,
        };
    }
    let (key, value, negate) = if let Some((k, v)) = part.split_once("!=") {
        (k, v, true)
    } else if let Some((k, v)) = part.split_once("==") {
        (k, v, false)
    } else if let Some((k, v)) = part.split_once('=') {
        (k, v, false)
    } else {
        return valid_key(part).then(|| Expression::Exists(part.to_owned()));
    };
    let (key, value) = (key.trim(), value.trim());
    if !valid_key(key) || !valid_value(value) {
        return None;
    }
    Some(if negate {
        Expression::NotEqual(key.to_owned(), value.to_owned())
    } else {
        Expression::Equal(key.to_owned(), value.to_owned())
    })
}

/// True when `labels` match `selector`.
pub(crate) fn selects(selector: &Selector, labels: Option<&BTreeMap<String, String>>) -> bool {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    selector.matches(labels.unwrap_or(&EMPTY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn workloads_from_owner_references() {
        let cases = [
            (
                vec![owner("ReplicaSet", "web-7d9c8b6f5", true)],
                Some("7d9c8b6f5"),
                ("web", WorkloadKind::Deployment),
            ),
            (
                vec![owner("ReplicaSet", "my-api-v2-5f6d7", true)],
                Some("5f6d7"),
                ("my-api-v2", WorkloadKind::Deployment),
            ),
            // A ReplicaSet whose pods lack the hash label is not a Deployment's.
            (
                vec![owner("ReplicaSet", "legacy-rs", true)],
                None,
                ("legacy-rs", WorkloadKind::ReplicaSet),
            ),
            (
                vec![owner("ReplicaSet", "web-abc", true)],
                Some("zzz"),
                ("web-abc", WorkloadKind::ReplicaSet),
            ),
            (
                vec![owner("StatefulSet", "db", true)],
                None,
                ("db", WorkloadKind::StatefulSet),
            ),
            (
                vec![owner("DaemonSet", "netscope-agent", true)],
                None,
                ("netscope-agent", WorkloadKind::DaemonSet),
            ),
            (
                vec![owner("Job", "nightly-report-29371440", true)],
                None,
                ("nightly-report", WorkloadKind::CronJob),
            ),
            (
                vec![owner("Job", "migrate-2", true)],
                None,
                ("migrate-2", WorkloadKind::Job),
            ),
            (
                vec![owner("Job", "backfill", true)],
                None,
                ("backfill", WorkloadKind::Job),
            ),
            (
                vec![owner("Node", "node-a", true)],
                None,
                ("kube-apiserver-node-a", WorkloadKind::Pod),
            ),
            (
                vec![owner("Rollout", "canary", true)],
                None,
                ("canary", WorkloadKind::Other),
            ),
            (vec![], None, ("kube-apiserver-node-a", WorkloadKind::Pod)),
            // The controller reference wins over other owners.
            (
                vec![
                    owner("ConfigMap", "cm", false),
                    owner("StatefulSet", "kafka", true),
                ],
                None,
                ("kafka", WorkloadKind::StatefulSet),
            ),
        ];
        for (owners, hash, want) in cases {
            assert_eq!(
                workload_of("kube-apiserver-node-a", &owners, hash),
                want,
                "owners {owners:?}"
            );
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_parse_and_match() {
        let agent = labels(&[
            ("app.kubernetes.io/name", "netscope-agent"),
            ("tier", "node"),
        ]);
        let other = labels(&[("app.kubernetes.io/name", "web")]);
        let check = |sel: &str, l: &BTreeMap<String, String>| {
            let s = parse_selector(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            selects(&s, Some(l))
        };
        assert!(check("app.kubernetes.io/name=netscope-agent", &agent));
        assert!(!check("app.kubernetes.io/name=netscope-agent", &other));
        assert!(check("app.kubernetes.io/name==netscope-agent,tier", &agent));
        assert!(!check(
            "app.kubernetes.io/name==netscope-agent,!tier",
            &agent
        ));
        assert!(check(
            "app.kubernetes.io/name in (netscope-agent, other),tier!=control",
            &agent
        ));
        assert!(!check(
            "app.kubernetes.io/name notin (netscope-agent)",
            &agent
        ));
        assert!(check(
            "app.kubernetes.io/name notin (netscope-agent)",
            &other
        ));
        for bad in ["", "a=b,", "a in (b", "a in b)", "a = b c", "a ~ b", "=b"] {
            assert!(parse_selector(bad).is_err(), "{bad:?} parsed");
        }
    }
}
