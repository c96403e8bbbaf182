//! Small pieces the binaries share: listen-address syntax, binding with an
//! IPv4 fallback, and the `-v` levels.

use std::net::SocketAddr;

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
    fn verbosity_levels() {
        assert_eq!(log_filter(0, &["x"]), "info");
        assert_eq!(
            log_filter(2, &["x"]),
            "info,netscope=debug,netscope_bpf=debug,x=debug"
        );
        assert_eq!(log_filter(5, &[]), "trace");
    }
}
