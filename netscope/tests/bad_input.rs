//! Bad reports through a raw gRPC client: each is rejected with the promised
//! code, counted and logged, and the server keeps serving good reports.
//! (Bad samples in an otherwise good report are dropped, not rejected:
//! tests/hostile.rs.)
#![cfg(feature = "grpc")]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut};
use common::{aggregator, CountingExporter, Harness};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use netscope::transport::convert::report_to_proto;
use netscope::transport::pb;
use netscope::transport::server::ServerConfig;
use netscope::{Counters, Direction, FlowKey, FlowSample, InstanceId, Report};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Sends and receives raw bytes: the test decides every byte on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let r = DebuggingRecorder::new();
        let s = r.snapshotter();
        r.install().expect("the only recorder of this test binary");
        s
    })
}

fn rejected(reason: &str) -> u64 {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| {
            k.key().name() == "netscope_aggregator_rejected_reports_total"
                && k.key()
                    .labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
        })
        .map(|(.., v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

fn good_report(seq: u64) -> pb::FlowReport {
    report_to_proto(&Report {
        node: "node-a".into(),
        instance: InstanceId([9; 16]),
        seq,
        window_start: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
        window_end: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_010),
        samples: vec![FlowSample {
            key: FlowKey::new(
                "10.0.1.1".parse().expect("addr"),
                "8.8.8.8".parse().expect("addr"),
                Direction::FromPod,
            ),
            counters: Counters::new(3000, 2),
        }],
        overflow: Counters::default(),
        folded_flows: 0,
    })
}

async fn call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/netscope.v1.FlowService/Report");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reports_are_rejected_and_the_server_keeps_serving() {
    let _ = snapshotter();
    let exporter = Arc::new(CountingExporter::default());
    let config = ServerConfig {
        max_message_bytes: 64 << 10,
        ..ServerConfig::default()
    };
    let server = Harness::start(
        "127.0.0.1:0".parse().expect("addr"),
        aggregator(exporter.clone()),
        config,
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the test server");
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);

    type Mutate = fn(&mut pb::FlowReport);
    let invalid: Vec<(&str, Mutate, &str)> = vec![
        (
            "window ends before start",
            |r| r.window_end_unix_nanos = r.window_start_unix_nanos - 1_000,
            "before it starts",
        ),
        ("empty node", |r| r.node_name.clear(), "node_name is empty"),
        (
            "instance id of 3 bytes",
            |r| r.agent_instance_id = vec![1, 2, 3],
            "agent_instance_id is 3 bytes",
        ),
        ("sequence 0", |r| r.sequence = 0, "sequence 0"),
        (
            "too many samples",
            |r| {
                let s = r.samples[0].clone();
                r.samples = vec![s; 200_001];
            },
            "",
        ),
    ];
    for (name, mutate, want) in invalid {
        let mut r = good_report(1);
        mutate(&mut r);
        let bytes = r.encode_to_vec();
        let (code, reason) = if bytes.len() > 64 << 10 {
            (Code::ResourceExhausted, "oversize")
        } else {
            (Code::InvalidArgument, "invalid")
        };
        let before = rejected(reason);
        match call(&mut grpc, bytes).await {
            Ok(_) => panic!("{name}: accepted"),
            Err(s) => {
                assert_eq!(s.code(), code, "{name}: {s:?}");
                assert!(
                    s.message().contains(want),
                    "{name}: message {:?} lacks {want:?}",
                    s.message()
                );
            }
        }
        assert_eq!(
            rejected(reason),
            before + 1,
            "{name}: not counted as {reason}"
        );
    }

    // Not protobuf at all.
    let before = rejected("malformed");
    match call(&mut grpc, vec![0xff; 64]).await {
        Ok(_) => panic!("garbage accepted"),
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "garbage: {s:?}"),
    }
    assert_eq!(rejected("malformed"), before + 1, "garbage not counted");

    // Over the size limit, whatever the content.
    let before = rejected("oversize");
    match call(&mut grpc, vec![0u8; 100 << 10]).await {
        Ok(_) => panic!("oversize accepted"),
        Err(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted, "oversize: {s:?}");
            assert!(
                s.message().contains("65536"),
                "oversize message: {}",
                s.message()
            );
        }
    }
    assert_eq!(rejected("oversize"), before + 1, "oversize not counted");

    // Still serving: on the same connection and on a new one.
    let ack = call(&mut grpc, good_report(1).encode_to_vec())
        .await
        .expect("a good report after the bad ones");
    let ack = pb::ReportAck::decode(ack.as_slice()).expect("an ack");
    assert_eq!((ack.sequence, ack.duplicate), (1, false));
    let mut client =
        pb::flow_service_client::FlowServiceClient::connect(format!("http://{}", server.addr))
            .await
            .expect("a new connection");
    let ack = client
        .report(good_report(1))
        .await
        .expect("replay")
        .into_inner();
    assert!(ack.duplicate, "the replay was counted again");
    assert_eq!(exporter.total(), Counters::new(3000, 2), "counted once");
    server.stop().await;
}
