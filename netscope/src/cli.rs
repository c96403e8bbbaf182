//! Small pieces the binaries share: listen-address syntax, binding with an
//! IPv4 fallback, bounded duration flags, the `-v` levels and the one log
//! setup of both binaries.

use std::net::SocketAddr;
use std::time::Duration;

/// Parses `HOST:PORT`, or `:PORT` for every address (`[::]:PORT`).
///
/// # Errors
/// A message naming the bad value, for clap.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("[::]{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|e| format!("{s:?} is not HOST:PORT or :PORT ({e})"))
}

/// The log filter for `-v LEVEL`: 0 info, 1-2 debug and 3-4 trace for
/// netscope's own crates (`crates`, plus the libraries), 5 trace for all.
pub fn log_filter(verbosity: u8, crates: &[&str]) -> String {
    let own = ["netscope", "netscope_bpf"].iter().chain(crates);
    let level = match verbosity {
        0 => return "info".into(),
        1 | 2 => "debug",
        3 | 4 => "trace",
        _ => return "trace".into(),
    };
    let mut f = String::from("info");
    for c in own {
        f.push_str(&format!(",{c}={level}"));
    }
    f
}

/// Parses a duration flag (`humantime` syntax: `10s`, `500ms`, `2m`,
/// `1h 30m`) and checks it lies within `min..=max`, so that no later
/// `SystemTime`/`Instant` arithmetic on it can overflow.
///
/// # Errors
/// A message naming the bad value and the bounds, for clap.
pub fn parse_duration_within(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?}: {e} (use e.g. 10s, 500ms, 2m, 1h)"))?;
    if d < min {
        return Err(format!(
            "{s:?} is shorter than {}",
            humantime::format_duration(min)
        ));
    }
    if d > max {
        return Err(format!(
            "{s:?} is longer than the upper bound {}",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// Checks that `name` is a valid Kubernetes node name (a DNS-1123
/// subdomain: at most 253 characters, dot-separated labels of at most 63
/// lowercase letters, digits and `-`, each starting and ending with a
/// letter or digit), as the API server enforces.
///
/// # Errors
/// A message with the name Debug-escaped (it may hold control characters).
pub fn check_node_name(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid Kubernetes node name (lowercase letters, digits, '-' and '.', at most 253 characters)"
        ))
    }
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (fields flattened), for log pipelines.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format (text or json)")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The log subscriber could not be installed.
#[cfg(feature = "logging")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// Another global subscriber is already installed.
    #[error("installing the {format} log subscriber")]
    Install {
        /// The format asked for.
        format: LogFormat,
        /// tracing-subscriber's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Installs the log subscriber both binaries use: lines on stderr, filtered
/// by `RUST_LOG` or else by [`log_filter`]`(verbosity, crates)`, in `format`.
/// Text lines carry ANSI colours only when stderr is a terminal; JSON lines
/// never do. Untrusted strings must still go into fields with `?` (Debug),
/// which escapes newlines and quotes in text lines; JSON escapes them anyway.
///
/// # Errors
/// [`LoggingError::Install`] when a global subscriber is already set.
#[cfg(feature = "logging")]
pub fn init_logging(verbosity: u8, format: LogFormat, crates: &[&str]) -> Result<(), LoggingError> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(log_filter(verbosity, crates)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
    };
    result.map_err(|source| LoggingError::Install { format, source })
}

/// Binds a TCP listener; an all-addresses IPv6 bind (`:PORT`) falls back to
/// IPv4 on hosts without IPv6.
///
/// # Errors
/// The bind error of the address asked for.
#[cfg(feature = "grpc")]
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(_) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port()))).await
        }
        Err(e) => Err(e),
    }
}

/// A supervised task stopped: the process is no longer whole.
#[cfg(feature = "grpc")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskExit {
    /// The task returned, though it should run as long as the process.
    #[error("task {name:?} stopped")]
    Ended {
        /// The task's name.
        name: &'static str,
    },
    /// The task panicked.
    #[error("task {name:?} panicked: {message}")]
    Panicked {
        /// The task's name.
        name: &'static str,
        /// The panic's message, when it is a string.
        message: String,
    },
}

/// The tasks a binary spawns that must run as long as the process: each
/// has a name, and [`first_exit`](Self::first_exit) reports the first one
/// that ends or panics, so that `main` can fail `/readyz` and exit non-zero
/// (Kubernetes then restarts the pod) rather than stay up half dead.
#[cfg(feature = "grpc")]
#[derive(Debug, Default)]
pub struct Supervisor {
    tasks: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

#[cfg(feature = "grpc")]
impl Supervisor {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` on the current runtime under `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// How many tasks are supervised.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is supervised.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits for the first task to end or panic and says which; with no
    /// task, waits forever.
    pub async fn first_exit(&mut self) -> TaskExit {
        let Some(result) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        match result {
            Ok((id, ())) => TaskExit::Ended {
                name: self.names.remove(&id).unwrap_or("unnamed"),
            },
            Err(e) => {
                let name = self.names.remove(&e.id()).unwrap_or("unnamed");
                let message = if e.is_panic() {
                    let payload = e.into_panic();
                    payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(not a string)".to_owned())
                } else {
                    "cancelled".to_owned()
                };
                TaskExit::Panicked { name, message }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_forms() {
        assert_eq!(
            parse_listen_addr(":8080").unwrap(),
            "[::]:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:6060").unwrap(),
            "127.0.0.1:6060".parse().unwrap()
        );
        assert!(parse_listen_addr("nowhere")
            .unwrap_err()
            .contains("nowhere"));
    }

    #[test]
    fn durations_are_bounded() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(3600));
        assert_eq!(
            parse_duration_within("10s", min, max).unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(parse_duration_within("1h", min, max).unwrap(), max);
        let long = parse_duration_within("400000000000y", min, max).unwrap_err();
        assert!(long.contains("upper bound 1h"), "{long}");
        let short = parse_duration_within("10ms", min, max).unwrap_err();
        assert!(short.contains("shorter than 100ms"), "{short}");
        let bad = parse_duration_within("soon", min, max).unwrap_err();
        assert!(bad.contains("\"soon\""), "{bad}");
    }

    #[cfg(feature = "grpc")]
    #[tokio::test]
    async fn supervisor_names_the_task_that_stops_or_panics() {
        let mut tasks = Supervisor::new();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("ends", async {});
        match tasks.first_exit().await {
            TaskExit::Ended { name } => assert_eq!(name, "ends"),
            other => panic!("expected \"ends\" to have ended, got {other}"),
        }
        tasks.spawn("panics", async {
            tokio::task::yield_now().await;
            panic!("time overflow");
        });
        match tasks.first_exit().await {
            TaskExit::Panicked { name, message } => {
                assert_eq!((name, message.as_str()), ("panics", "time overflow"));
            }
            other => panic!("expected \"panics\" to have panicked, got {other}"),
        }
        assert_eq!(tasks.len(), 1, "the pending task is still supervised");
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        for ok in ["node-1", "ip-10-0-1-5.eu-west-1.compute.internal", "a"] {
            assert_eq!(check_node_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "Node-1",
            "node_1",
            "-node",
            "node-",
            "a..b",
            &long,
            "node-1\nERROR forged",
        ] {
            let e = check_node_name(bad).expect_err(bad);
            assert!(e.contains("not a valid Kubernetes node name"), "{e}");
            assert!(!e.contains('\n'), "the name is escaped: {e:?}");
        }
    }

    #[test]
    fn log_formats() {
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::Json.to_string(), "json");
        assert!("xml"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("text or json"));
    }

    #[test]
    fn verbosity_levels() {
        assert_eq!(log_filter(0, &["x"]), "info");
        assert_eq!(
            log_filter(2, &["x"]),
            "info,netscope=debug,netscope_bpf=debug,x=debug"
        );
        assert_eq!(log_filter(5, &[]), "trace");
    }
}
