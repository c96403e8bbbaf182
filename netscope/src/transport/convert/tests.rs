//! Tests of [`super`], apart from `convert.rs` so that it reads as the code it ships.

use super::*;
use prost::Message as _;

fn good() -> pb::FlowReport {
    let r = Report {
        node: "node-a".into(),
        instance: InstanceId([7; 16]),
        seq: 3,
        window_start: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        window_end: SystemTime::UNIX_EPOCH + Duration::from_secs(110),
        samples: vec![
            FlowSample {
                key: FlowKey::new(
                    "10.0.0.1".parse().expect("addr"),
                    "10.0.0.2".parse().expect("addr"),
                    Direction::FromPod,
                ),
                counters: Counters::new(1500, 1),
            },
            FlowSample {
                key: FlowKey {
                    src: "fd00::1".parse().expect("addr"),
                    dst: "fd00::2".parse().expect("addr"),
                    direction: Direction::ToPod,
                    l4: Some(L4 {
                        proto: 6,
                        src_port: 443,
                        dst_port: 50000,
                    }),
                },
                counters: Counters::new(60, 1),
            },
        ],
        overflow: Counters::new(100, 2),
        folded_flows: 1,
    };
    report_to_proto(&r)
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(120)
}

#[test]
fn round_trip() {
    let p = good();
    let v = report_from_proto(p.clone(), &ValidationLimits::default(), now()).expect("valid");
    assert_eq!(v.drops.total(), 0);
    assert_eq!(report_to_proto(&v.report), p);
}

#[test]
fn bad_reports_are_rejected_with_context() {
    let limits = ValidationLimits {
        max_samples: 2,
        ..ValidationLimits::default()
    };
    type Mutate = fn(&mut pb::FlowReport);
    let cases: Vec<(&str, Mutate, &str)> = vec![
        ("empty node", |r| r.node_name.clear(), "node_name is empty"),
        (
            "short id",
            |r| r.agent_instance_id.truncate(3),
            "agent_instance_id is 3 bytes",
        ),
        ("seq 0", |r| r.sequence = 0, "sequence 0"),
        (
            "window backwards",
            |r| r.window_end_unix_nanos = r.window_start_unix_nanos - 1,
            "before it starts",
        ),
        (
            "negative",
            |r| r.window_start_unix_nanos = -5,
            "before the Unix epoch",
        ),
        (
            "future",
            |r| r.window_end_unix_nanos = 10_000 * 1_000_000_000,
            "in the future",
        ),
        (
            "too many",
            |r| {
                let s = r.samples[0].clone();
                r.samples.push(s);
            },
            "3 samples, over the limit of 2",
        ),
        (
            "more than the line rate allows",
            |r| {
                // 2 x 1 PiB in 10 s: each sample is plausible, the sum
                // is not.
                for s in &mut r.samples {
                    s.bytes = 1 << 50;
                    s.packets = (1 << 50) / 1000;
                }
            },
            "more than a node can carry",
        ),
    ];
    for (name, mutate, want) in cases {
        let mut p = good();
        mutate(&mut p);
        match report_from_proto(p, &limits, now()) {
            Ok(_) => panic!("{name}: accepted a bad report"),
            Err(e) => assert!(
                e.to_string().contains(want),
                "{name}: error {e:?} does not mention {want:?}"
            ),
        }
    }
}

#[test]
fn bad_samples_are_dropped_and_the_rest_counts() {
    type Mutate = fn(&mut pb::FlowReport);
    let cases: Vec<(&str, Mutate, DropReason, &str)> = vec![
        (
            "src length",
            |r| r.samples[0].src = vec![1, 2, 3],
            DropReason::AddressLength,
            "sample 0: src address is 3 bytes",
        ),
        (
            "v6 dst length",
            |r| r.samples[1].dst = vec![1; 4],
            DropReason::AddressLength,
            "sample 1: dst address is 4 bytes",
        ),
        (
            "family",
            |r| r.samples[1].family = 5,
            DropReason::UnknownFamily,
            "unknown address family 5",
        ),
        (
            "direction",
            |r| r.samples[0].direction = 0,
            DropReason::UnknownDirection,
            "unknown direction 0",
        ),
        (
            "port",
            |r| r.samples[1].l4.as_mut().expect("l4").src_port = 70_000,
            DropReason::L4OutOfRange,
            "does not fit in 16 bits",
        ),
        (
            "bytes no packets",
            |r| r.samples[0].packets = 0,
            DropReason::BytesWithoutPackets,
            "bytes without packets",
        ),
        (
            "jumbo",
            |r| r.samples[0].bytes = 10_000_000,
            DropReason::AboveMaxPacket,
            "more bytes per packet",
        ),
        (
            "tiny packets",
            |r| r.samples[0].packets = 1_000,
            DropReason::BelowIpHeader,
            "fewer bytes per packet",
        ),
        (
            "one PiB and a byte",
            |r| {
                r.samples[0].bytes = (1 << 50) + 1;
                r.samples[0].packets = 1 << 40;
            },
            DropReason::SampleTooLarge,
            "more bytes than one sample",
        ),
        (
            "overflow",
            |r| r.overflow.as_mut().expect("overflow").bytes = u64::MAX,
            DropReason::SampleTooLarge,
            "overflow",
        ),
    ];
    let full = report_from_proto(good(), &ValidationLimits::default(), now())
        .expect("valid")
        .report
        .total();
    for (name, mutate, reason, want) in cases {
        let mut p = good();
        mutate(&mut p);
        let v = report_from_proto(p, &ValidationLimits::default(), now())
            .unwrap_or_else(|e| panic!("{name}: the whole report was refused: {e}"));
        assert_eq!(v.drops.total(), 1, "{name}: {:?}", v.drops);
        assert_eq!(v.drops.count(reason), 1, "{name}: {:?}", v.drops);
        let first = v.drops.first.as_ref().expect("first error kept");
        assert!(
            first.to_string().contains(want),
            "{name}: {first} lacks {want:?}"
        );
        // Exactly the dropped part is missing.
        let lost = full.bytes - v.report.total().bytes;
        assert!(
            lost == 1500 || lost == 60 || lost == 100,
            "{name}: lost {lost} bytes, not one sample's or the overflow's"
        );
    }
}

#[test]
fn encoded_samples_are_counted_without_decoding() {
    let p = good();
    assert_eq!(count_encoded_samples(&p.encode_to_vec()), Some(2));
    let empty = pb::FlowReport {
        samples: vec![pb::FlowSample::default(); 1000],
        ..good()
    };
    assert_eq!(count_encoded_samples(&empty.encode_to_vec()), Some(1000));
    assert_eq!(count_encoded_samples(&[]), Some(0));
    // Truncated length-delimited field, a group, an endless varint.
    assert_eq!(count_encoded_samples(&[0x32, 0x05, 1]), None);
    assert_eq!(count_encoded_samples(&[0x33]), None);
    assert_eq!(
        count_encoded_samples(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ]),
        None
    );
}

#[test]
fn worst_case_sample_size_holds() {
    let s = pb::FlowSample {
        src: vec![0xff; 16],
        dst: vec![0xff; 16],
        family: pb::AddressFamily::Ipv6 as i32,
        direction: pb::Direction::ToPod as i32,
        l4: Some(pb::L4 {
            protocol: 255,
            src_port: 65_535,
            dst_port: 65_535,
        }),
        bytes: u64::MAX,
        packets: u64::MAX,
    };
    let r = pb::FlowReport {
        samples: vec![s; 1],
        ..pb::FlowReport::default()
    };
    assert_eq!(r.encoded_len(), MAX_ENCODED_SAMPLE_BYTES);
}
