//! A file that is re-read only when it changed: what the custom endpoints
//! and the static topology share to follow their files.
//!
//! A change is noticed by the file's size, mtime, device and inode, which
//! catches both in-place writes and the kubelet's symlink swap of ConfigMap
//! volumes; a new version whose content hashes the same as the last one is
//! still "unchanged". Every version is attempted once, good or bad, so a bad
//! file is not re-reported on every poll.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::ResolveError;

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

fn fingerprint(meta: &std::fs::Metadata) -> Fingerprint {
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        dev,
        ino,
    }
}

#[derive(Debug, Default)]
struct FileState {
    /// The file version last attempted, good or bad.
    seen: Option<Fingerprint>,
    /// Hash of the content last attempted.
    content: Option<u64>,
}

/// A file read whole, at most `max_bytes`, and only when it changed.
#[derive(Debug)]
pub(super) struct WatchedFile {
    path: PathBuf,
    max_bytes: u64,
    state: Mutex<FileState>,
}

impl WatchedFile {
    /// A file not read yet: the first [`if_changed`](Self::if_changed)
    /// reads it.
    pub(super) fn new(path: PathBuf, max_bytes: u64) -> Self {
        WatchedFile {
            path,
            max_bytes,
            state: Mutex::new(FileState::default()),
        }
    }

    /// The file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file if it changed since the last attempt and hands the
    /// text to `apply`. `None`: unchanged (same fingerprint, or same
    /// content), `apply` was not called.
    ///
    /// Attempts are serialised: `apply` runs under the file's lock, so two
    /// concurrent callers cannot apply two versions out of order.
    ///
    /// # Errors
    ///
    /// [`ResolveError::Read`] or [`ResolveError::TooLarge`] for the file, or
    /// what `apply` returned. The version counts as attempted either way.
    pub(super) fn if_changed<T>(
        &self,
        apply: impl FnOnce(&str) -> Result<T, ResolveError>,
    ) -> Result<Option<T>, ResolveError> {
        let path = &self.path;
        let read_err = |source| ResolveError::Read {
            path: path.clone(),
            source,
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let print = fingerprint(&meta);
        if state.seen == Some(print) {
            return Ok(None);
        }
        state.seen = Some(print);
        let limit = self.max_bytes;
        if meta.len() > limit {
            return Err(ResolveError::TooLarge {
                path: path.clone(),
                size: meta.len(),
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        std::fs::File::open(path)
            .and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut bytes))
            .map_err(read_err)?;
        if bytes.len() as u64 > limit {
            return Err(ResolveError::TooLarge {
                path: path.clone(),
                size: bytes.len() as u64,
                limit,
            });
        }
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let hash = h.finish();
        if state.content == Some(hash) {
            return Ok(None);
        }
        state.content = Some(hash);
        apply(&String::from_utf8_lossy(&bytes)).map(Some)
    }
}

/// Deepest nesting of collections accepted in a topology or custom
/// endpoints file (a topology needs 4: document, `pods`, a pod, its `ips`).
pub const MAX_YAML_DEPTH: usize = 32;

/// Checks the shape of a YAML document in time linear in its size before
/// serde_yaml parses it: libyaml's scanner spends time proportional to the
/// flow nesting depth on every token, so a 200 KB `[[[[…` took tens of
/// seconds. Refuses nesting deeper than [`MAX_YAML_DEPTH`] (block or flow)
/// and text that is not well-formed YAML. Events, nodes and scalar bytes
/// are bounded by the file size limit checked before.
///
/// # Errors
///
/// [`ResolveError::TooDeep`] or [`ResolveError::Malformed`], naming `path`.
pub(super) fn check_yaml_shape(
    text: &str,
    path: &Path,
    what: &'static str,
) -> Result<(), ResolveError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    // The size limit bounds these; a 16 MiB topology has millions of events.
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // The error names the line and column; no snippet of the (untrusted)
    // file in log lines.
    options.with_snippet = false;
    match serde_saphyr::from_str_with_options::<serde::de::IgnoredAny>(text, options) {
        Ok(_) => Ok(()),
        Err(source) => {
            let too_deep = matches!(source, serde_saphyr::Error::Budget { .. }) || {
                let text = source.to_string();
                text.contains("recursion limit exceeded") || text.contains("budget breached")
            };
            if too_deep {
                Err(ResolveError::TooDeep {
                    path: path.to_owned(),
                    what,
                    max_depth: MAX_YAML_DEPTH,
                    source: Box::new(source),
                })
            } else {
                Err(ResolveError::Malformed {
                    path: path.to_owned(),
                    what,
                    source: Box::new(source),
                })
            }
        }
    }
}

/// The shortest poll interval: a zero one would spin (and Tokio's
/// interval timer refuses it).
pub(super) const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `tick(&state)` every `interval` (at least [`MIN_POLL_INTERVAL`]),
/// the first time at once, on Tokio's blocking pool: reading and parsing a
/// file never holds up the async workers that answer probes. A late tick
/// delays the next ones rather than bunching them. Runs until dropped, or
/// until a tick panics: then it logs and returns, so that whoever
/// supervises the task sees it end.
pub(super) async fn every<S: Send + Sync + 'static>(
    interval: Duration,
    state: std::sync::Arc<S>,
    what: &'static str,
    tick: fn(&S),
) {
    let mut ticker = tokio::time::interval(interval.max(MIN_POLL_INTERVAL));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let state = state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || tick(&state)).await {
            tracing::error!(what, error = ?e, "file watch stopped: a reload panicked");
            return;
        }
    }
}

/// Helpers for the tests of the file-backed resolvers.
#[cfg(test)]
pub(super) mod testing {
    use std::io::Write;
    use std::path::Path;

    use metrics_util::debugging::DebugValue;

    /// Writes a new file and renames it over the old one, as the kubelet's
    /// atomic writer does for ConfigMap volumes.
    pub(in crate::resolve) fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).unwrap_or_else(|e| panic!("create: {e}"));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write: {e}"));
        drop(f);
        std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename: {e}"));
    }

    /// What a `DebuggingRecorder` snapshot holds.
    pub(in crate::resolve) type Snapshot = [(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )];

    fn value<'a>(snapshot: &'a Snapshot, name: &str) -> Option<&'a DebugValue> {
        snapshot
            .iter()
            .find(|(k, ..)| k.key().name() == name)
            .map(|(.., v)| v)
    }

    /// The counter `name` (0 when not recorded).
    pub(in crate::resolve) fn counter(snapshot: &Snapshot, name: &str) -> u64 {
        match value(snapshot, name) {
            None => 0,
            Some(DebugValue::Counter(n)) => *n,
            Some(other) => panic!("{name} is not a counter: {other:?}"),
        }
    }

    /// The gauge `name` (0 when not recorded).
    pub(in crate::resolve) fn gauge(snapshot: &Snapshot, name: &str) -> f64 {
        match value(snapshot, name) {
            None => 0.0,
            Some(DebugValue::Gauge(g)) => g.into_inner(),
            Some(other) => panic!("{name} is not a gauge: {other:?}"),
        }
    }
}
