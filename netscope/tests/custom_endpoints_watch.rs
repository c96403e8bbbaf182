//! The custom-endpoints watcher, end to end: a real file rewritten the way
//! the kubelet updates a mounted ConfigMap, the polling driver on a Tokio
//! runtime, and the log lines it writes.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use netscope::resolve::{CustomEndpoints, CustomEndpointsOptions, Resolver};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// Writes a new file and renames it over the old one (atomic replace).
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename: {e}"));
}

fn name_of(c: &CustomEndpoints, addr: &str) -> String {
    let ip: IpAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
    c.resolve(ip, SystemTime::now()).name.to_string()
}

async fn wait_for_len(c: &CustomEndpoints, want: usize) {
    for _ in 0..300 {
        if c.len() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "custom endpoints never reached {want} entries (have {})",
        c.len()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn watcher_picks_up_changes_keeps_good_set_and_logs() {
    let logs = Capture::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("endpoints.yaml");
    write(
        &path,
        "endpoints:\n  - {name: rds-primary, namespace: external, zone: us-west-2a, ips: [10.0.1.50]}\n  - {name: elasticsearch, namespace: external, zone: us-west-2b, cidrs: [10.0.2.0/24]}\n",
    );
    let c = Arc::new(CustomEndpoints::watching(
        &path,
        CustomEndpointsOptions {
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        },
    ));
    let task = tokio::spawn(c.clone().watch());

    wait_for_len(&c, 2).await;
    assert_eq!(name_of(&c, "10.0.2.9"), "elasticsearch");

    write(
        &path,
        "endpoints:\n  - {name: only, zone: z, ips: [192.0.2.1]}\n",
    );
    wait_for_len(&c, 1).await;
    assert_eq!(name_of(&c, "192.0.2.1"), "only");
    assert_eq!(name_of(&c, "10.0.2.9"), "external");

    write(
        &path,
        "endpoints:\n  - {name: broken, zone: z, ips: [nope]}\n",
    );
    for _ in 0..300 {
        if logs.text().contains("Rejected custom endpoints file") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.len(), 1);
    assert_eq!(name_of(&c, "192.0.2.1"), "only");
    task.abort();

    let text = logs.text();
    assert!(text.contains("Loaded custom endpoints count=2"), "{text}");
    assert!(text.contains("Loaded custom endpoints count=1"), "{text}");
    assert!(
        text.contains("Rejected custom endpoints file")
            && text.contains(
                r#"endpoints[0] (broken): field `ips[0]`: \"nope\" is not an IP address"#
            ),
        "{text}"
    );
    assert_eq!(
        text.matches("Rejected custom endpoints file").count(),
        1,
        "a bad file is reported once, not on every poll: {text}"
    );
}
