//! What the aggregator's binary tests share: a free loopback port, one
//! HTTP/1.1 GET (once, or until an answer is accepted), a child process that
//! is killed and reaped on drop, and promtool's findings on an exposition.
//! The agent's promtool test includes it too.

#![allow(dead_code, reason = "each test binary uses a part of this module")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::Duration;

/// A loopback address with a port nothing listens on right now.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr")
}

/// One HTTP/1.1 GET of `path`; `None` when nothing answers within 5 s (a
/// refused connection answers at once).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A child process, killed and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GETs `path` on `addr` every 100 ms until `ok` accepts the answer, and
/// returns it. Panics when the child exits first (with its stderr, when
/// piped) or after `timeout`.
pub fn wait_http(
    child: &mut Killed,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(r) = http_get(addr, path).filter(|r| ok(r)) {
            return r;
        }
        if let Some(status) = child.0.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the process exited early ({status}):\n{err}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no accepted answer to GET {path} on {addr} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An answer with status 200.
pub fn is_200(r: &str) -> bool {
    r.starts_with("HTTP/1.1 200")
}

/// `promtool check metrics` on `text`: its exit status and what it found
/// (stdout and stderr; empty when the exposition is clean).
pub fn promtool_findings(promtool: &str, text: &str) -> (std::process::ExitStatus, String) {
    use std::process::{Command, Stdio};
    let mut p = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = p.wait_with_output().expect("promtool");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, findings)
}
