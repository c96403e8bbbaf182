//! Shared pieces of the kernel tests: a reconciler running in a node
//! namespace, and queries of what is attached where.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netscope::discover::{InterfaceFilter, Reconciler};
use netscope::{AttachMode, Direction, Interface};
use netscope_bpf::netlink::LinkWatcher;
use netscope_bpf::testing::netns::NetNs;
use netscope_bpf::testing::tc_query;
use netscope_bpf::{tcx_programs, BpfAttacher, Capture, TC_HANDLE, TC_PRIORITY};

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,libbpf=warn")
        .with_test_writer()
        .try_init();
}

/// A reconciler fed by a real rtnetlink watcher, on a thread inside `ns`.
pub struct Discovery {
    pub state: Arc<Mutex<Reconciler>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl Discovery {
    pub fn start(
        ns: &NetNs,
        capture: Arc<Capture>,
        mode: AttachMode,
        filter: InterfaceFilter,
    ) -> Self {
        let attacher = Arc::new(BpfAttacher::new(capture, mode));
        let state = Arc::new(Mutex::new(Reconciler::new(attacher, filter)));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let mut watcher = LinkWatcher::new().expect("rtnetlink socket");
            tx.send(()).expect("test alive");
            while !sp.load(Ordering::Relaxed) {
                let events = watcher
                    .next(Duration::from_millis(50))
                    .expect("link events");
                let mut r = st.lock().unwrap();
                for e in events {
                    r.handle(e);
                }
            }
            // Detach from the namespace's own thread (legacy TC needs it).
            let errors = st.lock().unwrap().detach_all();
            errors.iter().map(|e| format!("{e:#}")).collect()
        });
        rx.recv().expect("watcher started");
        Discovery {
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until the names in `want` are all attached (and returns the
    /// attached set), or panics after `timeout`.
    pub fn wait_attached(&self, want: &[String], timeout: Duration) -> Vec<Interface> {
        let end = Instant::now() + timeout;
        loop {
            let attached = self.state.lock().unwrap().attached();
            if want.iter().all(|w| attached.iter().any(|a| &a.name == w)) {
                return attached;
            }
            assert!(
                Instant::now() < end,
                "not attached after {timeout:?}: want {want:?}, have {attached:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the watcher, detaching everything; returns detach errors.
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("discovery thread")
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// netscope's presence on one interface: program ids on the TCX hooks
/// (ingress, egress) and at netscope's legacy-TC slot (ingress, egress).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Presence {
    pub tcx: [Vec<u32>; 2],
    pub tc: [Option<u32>; 2],
}

/// Looks at `ifindexes` inside `ns`.
pub fn presence(ns: &NetNs, ifindexes: Vec<u32>) -> Vec<Presence> {
    ns.run(move || {
        ifindexes
            .iter()
            .map(|&i| Presence {
                tcx: Direction::BOTH.map(|d| tcx_programs(i, d).unwrap_or_default()),
                tc: [true, false]
                    .map(|ing| tc_query(i, ing, TC_HANDLE, TC_PRIORITY).unwrap_or(None)),
            })
            .collect()
    })
}

/// True when `p` shows netscope's two programs attached in `mode`.
pub fn attached_in(p: &Presence, capture: &Capture, mode: AttachMode) -> bool {
    let ids = Direction::BOTH.map(|d| capture.program_id(d));
    match mode {
        AttachMode::Tc => p.tc == [Some(ids[0]), Some(ids[1])],
        _ => p.tcx[0].first() == Some(&ids[0]) && p.tcx[1].first() == Some(&ids[1]),
    }
}

/// True when none of `capture`'s programs is on `p`'s hooks.
pub fn clean_of(p: &Presence, capture: &Capture) -> bool {
    let ids = Direction::BOTH.map(|d| capture.program_id(d));
    !p.tcx.iter().flatten().any(|id| ids.contains(id))
        && !p.tc.iter().flatten().any(|id| ids.contains(id))
}
