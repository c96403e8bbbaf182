//! Network namespaces for tests and the local demo: created, entered and
//! always removed. Every address and route lives inside a namespace made
//! here; nothing is added to the namespace the process started in.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};

/// Names this harness may create and sweep.
pub const PREFIXES: &[&str] = &["netscope-test-", "ns-"];

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Runs `ip` with `args` in the caller's namespace (used only for commands
/// that create links directly inside test namespaces, and for `netns`).
///
/// # Errors
/// When `ip` fails; the message carries its stderr.
pub fn ip(args: &[&str]) -> io::Result<String> {
    run(Command::new("ip").args(args)).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Deletes stale namespaces whose names start with `prefix` (which must
/// start with one of [`PREFIXES`]).
///
/// # Errors
/// When `ip netns list` fails.
pub fn sweep(prefix: &str) -> io::Result<usize> {
    assert!(
        PREFIXES.iter().any(|p| prefix.starts_with(p)),
        "refusing to sweep namespaces outside {PREFIXES:?}"
    );
    let list = ip(&["netns", "list"])?;
    let mut n = 0;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(prefix) {
            let _ = ip(&["netns", "del", name]);
            n += 1;
        }
    }
    Ok(n)
}

/// A network namespace that is deleted on drop (with every link in it).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `name` (one of [`PREFIXES`] must start it), replacing a stale
    /// namespace of that name, and brings its loopback up.
    ///
    /// # Errors
    /// When `ip netns add` fails (not root, say).
    pub fn new(name: &str) -> io::Result<NetNs> {
        assert!(
            PREFIXES.iter().any(|p| name.starts_with(p)),
            "test namespaces must be named {PREFIXES:?}*"
        );
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        // No duplicate address detection: links are usable the moment they are up.
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace handle.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace (`nsenter --net`, which keeps
    /// the caller's /sys so bpffs pins stay visible). Returns its stdout.
    ///
    /// # Errors
    /// When the command fails; the message carries its stderr.
    pub fn exec(&self, argv: &[&str]) -> io::Result<String> {
        let net = format!("--net={}", self.path());
        run(Command::new("nsenter").arg(net).arg("--").args(argv))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs a shell snippet inside the namespace.
    ///
    /// # Errors
    /// As [`NetNs::exec`].
    pub fn sh(&self, script: &str) -> io::Result<String> {
        self.exec(&["sh", "-c", script])
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns
    /// its result. Sockets and netlink calls made in `f` act inside the
    /// namespace.
    ///
    /// # Panics
    /// When `f` panics (the panic is propagated) or the namespace cannot be
    /// entered.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Like [`NetNs::run`], but returns the thread's handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path).unwrap_or_else(|e| panic!("entering network namespace {path}: {e}"));
            f()
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
///
/// # Errors
/// When the namespace cannot be opened or joined.
pub fn enter(path: &str) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread
    // (CLONE_NEWNET, no CLONE_FS sharing concerns for network namespaces).
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Creates a veth pair with one end in each namespace, both up, without
/// the pair ever existing in the caller's namespace.
///
/// # Errors
/// When `ip link add` fails.
pub fn veth(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> io::Result<()> {
    ip(&[
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    a.exec(&["ip", "link", "set", a_name, "up"])?;
    b.exec(&["ip", "link", "set", b_name, "up"])?;
    Ok(())
}

/// Turns off TSO, GSO and GRO on `dev` in `ns`, so that every skb is a wire
/// packet and byte counters of different layers agree.
///
/// # Errors
/// When ethtool fails.
pub fn no_offloads(ns: &NetNs, dev: &str) -> io::Result<()> {
    ns.exec(&[
        "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
    ])
    .map(|_| ())
}
