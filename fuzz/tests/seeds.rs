//! Writes the seed inputs of each target into `corpus/<target>/seed-*`.
//! Run once by hand (`cargo test --manifest-path fuzz/Cargo.toml --test
//! seeds -- --ignored`); the fuzzer grows the corpora from there.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use netscope::transport::convert::report_to_proto;
use netscope::{Counters, Direction, FlowKey, FlowSample, InstanceId, Report, L4};
use netscope_bpf::testing::{FrameSpec, L4Spec, ETH_P_8021AD, ETH_P_8021Q};
use netscope_fuzz::frame::Input;
use prost::Message;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn sample(src: &str, dst: &str, dir: Direction, l4: Option<L4>, b: u64, p: u64) -> FlowSample {
    FlowSample {
        key: FlowKey {
            l4,
            ..FlowKey::new(src.parse().unwrap(), dst.parse().unwrap(), dir)
        },
        counters: Counters::new(b, p),
    }
}

#[test]
#[ignore = "writes the seed corpora; run by hand"]
fn write_seeds() {
    // --- report
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let report = Report {
        node: "node-a".into(),
        instance: InstanceId([7; 16]),
        seq: 1,
        window_start: t,
        window_end: t + Duration::from_secs(10),
        samples: vec![
            sample("10.0.1.5", "10.0.2.5", Direction::FromPod, None, 1500, 10),
            sample("10.0.2.5", "10.0.1.5", Direction::ToPod, None, 64, 1),
            sample(
                "10.0.1.5",
                "10.96.0.10",
                Direction::FromPod,
                Some(L4 {
                    proto: 6,
                    src_port: 40000,
                    dst_port: 80,
                }),
                90,
                1,
            ),
            sample("fd00:1::5", "fd00:2::5", Direction::ToPod, None, 4000, 3),
            sample("10.0.1.5", "203.0.113.9", Direction::FromPod, None, 20, 1),
        ],
        overflow: Counters::new(100, 2),
        folded_flows: 1,
    };
    write("report", "valid", &report_to_proto(&report).encode_to_vec());
    let mut empty = report.clone();
    empty.samples.clear();
    empty.overflow = Counters::default();
    write("report", "empty", &report_to_proto(&empty).encode_to_vec());
    let mut bad = report_to_proto(&report);
    bad.samples[0].bytes = 1; // fewer bytes than packets * IP header
    write("report", "bad-sample", &bad.encode_to_vec());

    // --- topology and custom endpoints
    write(
        "topology",
        "full",
        br#"
zones:
  - {name: us-west-2a, region: us-west-2}
  - {name: us-west-2b, region: us-west-2}
nodes:
  - {name: node-a, zone: us-west-2a, ips: [192.168.10.1]}
  - {name: node-b, zone: us-west-2b, region: us-west-2-override, ips: [192.168.10.2], agent: false}
pods:
  - name: web-1
    namespace: shop
    node: node-a
    ips: [10.0.1.5, "fd00:1::5"]
    workload: web
    workload_kind: Deployment
  - {name: solo, namespace: shop, node: node-b, ips: [10.0.2.5]}
  - {name: cni, namespace: kube-system, node: node-b, ips: [192.168.10.20], host_network: true}
services:
  - {name: api, namespace: shop, ips: [10.96.0.10, "fd00:96::10"]}
service_cidrs: [10.96.0.0/12]
"#,
    );
    write(
        "topology",
        "minimal",
        b"nodes:\n  - {name: n, zone: z}\npods: []\n",
    );
    write(
        "custom_endpoints",
        "full",
        br#"
endpoints:
  - name: rds-primary
    namespace: external
    zone: us-west-2a
    ips: [10.0.1.50]
  - name: elasticsearch
    namespace: external
    zone: us-west-2b
    cidrs: [10.0.2.0/24, "fd00::/16"]
"#,
    );
    write("custom_endpoints", "empty", b"endpoints: []\n");

    // --- bpf_frame
    let mut frames: Vec<(&str, FrameSpec)> = vec![
        (
            "v4-tcp",
            FrameSpec::new("10.0.0.1", "10.0.1.2", L4Spec::Tcp(40000, 80), 40),
        ),
        (
            "v4-udp",
            FrameSpec::new("10.0.0.1", "10.0.1.3", L4Spec::Udp(5353, 53), 30),
        ),
        (
            "v4-icmp",
            FrameSpec::new("10.0.1.2", "10.0.0.1", L4Spec::Icmp, 16),
        ),
        (
            "v4-svc",
            FrameSpec::new("10.0.0.5", "10.96.0.10", L4Spec::Tcp(41000, 80), 20),
        ),
        (
            "v6-tcp",
            FrameSpec::new("fd00::1", "fd00::2", L4Spec::Tcp(443, 50000), 40),
        ),
        (
            "v6-svc",
            FrameSpec::new("fd00::5", "fd00:96::a", L4Spec::Udp(5353, 53), 20),
        ),
    ];
    let mut opt = FrameSpec::new("10.2.0.1", "10.2.0.2", L4Spec::Tcp(1, 2), 24);
    opt.ipv4_options = 12;
    frames.push(("v4-options", opt));
    let mut ext = FrameSpec::new("fd00::1", "fd00:96::3", L4Spec::Udp(1, 2), 10);
    ext.ipv6_ext = 2;
    frames.push(("v6-ext", ext));
    let mut q = FrameSpec::new("10.1.0.1", "10.1.0.2", L4Spec::Udp(1000, 2000), 20);
    q.vlans = vec![(ETH_P_8021Q, 100)];
    frames.push(("8021q", q));
    let mut qinq = FrameSpec::new("fd00::1", "fd00::3", L4Spec::Tcp(1000, 2000), 30);
    qinq.vlans = vec![(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)];
    frames.push(("qinq", qinq));
    for (name, spec) in &frames {
        let frame = spec.build();
        for (dir, d) in [(Direction::FromPod, "from"), (Direction::ToPod, "to")] {
            let plain = Input {
                direction: dir,
                gso_segs: None,
                frame: &frame,
            };
            write("bpf_frame", &format!("{name}-{d}"), &plain.encode());
        }
        let gso = Input {
            direction: Direction::FromPod,
            gso_segs: Some(3),
            frame: &frame,
        };
        write("bpf_frame", &format!("{name}-gso"), &gso.encode());
    }
    // Row 1 of issue 12: an IPv4 total length below the header length.
    let mut row1 = frames[0].1.build();
    row1[16..18].copy_from_slice(&1u16.to_be_bytes());
    let row1 = Input {
        direction: Direction::FromPod,
        gso_segs: None,
        frame: &row1,
    };
    write("bpf_frame", "row1", &row1.encode());
}
