//! TLS and mutual TLS between a reporter's sink and the server, with
//! certificates made by the `openssl` command for this test only.
#![cfg(feature = "grpc")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{aggregator, CountingExporter, Harness};
use netscope::report::ReportSink;
use netscope::transport::client::{ClientConfig, ClientTls, GrpcSink};
use netscope::transport::server::{ServerConfig, ServerTls};
use netscope::{Counters, Direction, FlowKey, FlowSample, InstanceId, Report};

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CA, server cert for `localhost`, client cert; all signed by the CA.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=netscope-test-ca",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\n{ext}"),
        )
        .expect("ext file");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN=netscope-test-{name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

fn report() -> Report {
    Report {
        node: "node-a".into(),
        instance: InstanceId::random(),
        seq: 1,
        window_start: SystemTime::now(),
        window_end: SystemTime::now(),
        samples: vec![FlowSample {
            key: FlowKey::new(
                "10.0.1.1".parse().expect("addr"),
                "8.8.8.8".parse().expect("addr"),
                Direction::FromPod,
            ),
            counters: Counters::new(1500, 1),
        }],
        overflow: Counters::default(),
        folded_flows: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_a_client_certificate_and_refuses_none() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED mutual_tls test: no openssl command to make certificates");
        return;
    }
    let dir =
        TempDir(std::env::temp_dir().join(format!("netscope-tls-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    make_certs(&dir.0);
    let read = |f: &str| std::fs::read(dir.0.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
    let exporter = Arc::new(CountingExporter::default());
    let config = ServerConfig {
        tls: Some(ServerTls {
            cert_pem: read("server.pem"),
            key_pem: read("server.key"),
            client_ca_pem: Some(read("ca.pem")),
        }),
        ..ServerConfig::default()
    };
    let server = Harness::start(
        "127.0.0.1:0".parse().expect("addr"),
        aggregator(exporter.clone()),
        config,
    )
    .await;
    let client = |identity: Option<(Vec<u8>, Vec<u8>)>| {
        let mut c = ClientConfig::new(format!("localhost:{}", server.addr.port()));
        c.request_timeout = Duration::from_secs(5);
        c.tls = Some(ClientTls {
            ca_pem: Some(read("ca.pem")),
            identity,
            domain: None,
        });
        GrpcSink::new(&c).expect("client config")
    };
    let with_cert = client(Some((read("client.pem"), read("client.key"))));
    let ack = with_cert
        .send(&report())
        .await
        .expect("mTLS report acknowledged");
    assert!(!ack.duplicate);
    let without = client(None);
    assert!(
        without.send(&report()).await.is_err(),
        "a client without a certificate got through"
    );
    assert_eq!(exporter.total(), Counters::new(1500, 1));
    server.stop().await;
}
