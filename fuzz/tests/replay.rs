//! Replays the checked-in corpora (`corpus/<target>/*`) through the fuzz
//! targets' checks, so that every input the fuzzer ever kept stays a
//! regression test of the normal suite (`make test`). The bpf_frame corpus
//! runs through the real program and needs root.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), data)
        })
        .collect();
    out.sort();
    assert!(
        out.iter().any(|(p, _)| p.contains("/seed-")),
        "{}: no seed inputs (the corpus is missing)",
        dir.display()
    );
    out
}

fn replay(target: &str, check: fn(&[u8])) {
    let inputs = corpus(target);
    for (path, data) in &inputs {
        // A panic names the input, so that it can be run again alone.
        let r = std::panic::catch_unwind(|| check(data));
        assert!(r.is_ok(), "{target}: {path} fails (see the panic above)");
    }
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn report_corpus() {
    replay("report", netscope_fuzz::report);
}

#[test]
fn topology_corpus() {
    replay("topology", netscope_fuzz::topology);
}

#[test]
fn custom_endpoints_corpus() {
    replay("custom_endpoints", netscope_fuzz::custom_endpoints);
}

#[test]
fn bpf_frame_corpus() {
    replay("bpf_frame", netscope_fuzz::frame::bpf_frame);
}

/// The reference parser's verdicts on the seed frames, so that a change of
/// the byte definition shows up here and not only as a disagreement.
#[test]
fn reference_parser_counts_the_seeds() {
    use netscope::{Counters, Direction};
    use netscope_fuzz::frame::{expected, service_cidrs, Input};
    let svc = service_cidrs();
    let want: &[(&str, Option<Counters>)] = &[
        ("seed-v4-tcp-from", Some(Counters::new(20 + 20 + 40, 1))),
        ("seed-v4-tcp-gso", Some(Counters::new(3 * 40 + 40, 3))),
        (
            "seed-v6-ext-gso",
            Some(Counters::new(3 * (40 + 16 + 8) + 10, 3)),
        ),
        ("seed-qinq-to", Some(Counters::new(40 + 20 + 30, 1))),
        ("seed-v4-icmp-gso", Some(Counters::new(3 * 20 + 8 + 16, 3))),
        ("seed-row1", None),
    ];
    let inputs = corpus("bpf_frame");
    for (name, counters) in want {
        let (_, data) = inputs
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap_or_else(|| panic!("{name} is not in the corpus"));
        let input = Input::parse(data).expect("a seed parses");
        let got = expected(
            input.frame,
            input.direction,
            input.gso_segs.unwrap_or(0),
            &svc,
        );
        assert_eq!(got.map(|(_, c)| c), *counters, "{name}");
        if let Some((key, _)) = got {
            assert_eq!(key.direction, input.direction, "{name}");
        }
    }
    // The Service seed carries protocol and ports; the plain one does not.
    let svc_in = inputs
        .iter()
        .find(|(p, _)| p.ends_with("seed-v4-svc-from"))
        .expect("v4-svc seed");
    let i = Input::parse(&svc_in.1).expect("parses");
    let (key, _) = expected(i.frame, Direction::FromPod, 0, &svc).expect("counted");
    assert_eq!(
        key.l4.map(|l| (l.proto, l.src_port, l.dst_port)),
        Some((6, 41000, 80))
    );
}
