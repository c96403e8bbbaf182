//! Issue 12, the agent's share of the hostile-input table about flags and
//! logs (rows 8 and 10, the ANSI and JSON cases), against the real binary.
//! Each run stops at the forged node name (refused: not a Kubernetes node
//! name) or a bad `--include-interfaces` regex, after logging is set up and
//! the start line is written but before anything needs root.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_netscope-agent");

/// A node name that would forge a second log line if written raw.
const FORGED_NODE: &str = "node-1\nERROR forged: all traffic dropped";

fn run(node: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .env_remove("NODE_NAME")
        .env_remove("RUST_LOG")
        .args(["--node-name", node, "--include-interfaces", "(unclosed"])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("run {BIN}: {e}"))
}

/// One row per case: the flags, and what the stderr (a pipe, not a
/// terminal) must show.
#[test]
fn log_cases() {
    type Check = fn(&str);
    let cases: [(&str, &[&str], Check); 2] = [
        ("text, forged node name", &[], |err| {
            assert!(
                err.contains(r#"node="node-1\nERROR forged: all traffic dropped""#),
                "the node name is not escaped in the start line:\n{err}"
            );
            for line in err.lines() {
                assert!(!line.starts_with("ERROR forged"), "forged line: {line:?}");
            }
            assert!(!err.contains('\u{1b}'), "ANSI codes on a pipe: {err:?}");
        }),
        ("json, forged node name", &["--log-format", "json"], |err| {
            let mut started = false;
            for line in err.lines() {
                // The final error (anyhow's report) is not a log line.
                if line.starts_with("Error:") || !line.starts_with('{') {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
                if v["message"] == "netscope-agent starting" {
                    assert_eq!(v["level"], "INFO", "{line}");
                    // Debug-formatted, then JSON-escaped: the value keeps
                    // its quotes and its `\n` stays two characters.
                    assert_eq!(
                        v["node"].as_str(),
                        Some(r#""node-1\nERROR forged: all traffic dropped""#),
                        "{line}"
                    );
                    started = true;
                }
            }
            assert!(started, "no JSON start line:\n{err}");
            assert!(!err.contains('\u{1b}'), "ANSI codes in JSON: {err:?}");
        }),
    ];
    for (name, extra, check) in cases {
        let out = run(FORGED_NODE, extra);
        assert!(
            !out.status.success(),
            "{name}: the forged name was accepted"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                r#""node-1\nERROR forged: all traffic dropped" is not a valid Kubernetes node name"#
            ),
            "{name}: the refusal does not name the (escaped) node name:\n{err}"
        );
        check(&err);
    }
}

/// Row 8 for the agent: a collection interval whose time arithmetic would
/// overflow is refused by the flag parser, with the bound; so is an
/// unknown log format.
#[test]
fn unbounded_flags_are_refused() {
    let cases: [(&[&str], &str); 2] = [
        (
            &["--collection-interval", "400000000000y"],
            "upper bound 1h",
        ),
        (&["--log-format", "xml"], "text or json"),
    ];
    for (args, want) in cases {
        let out = run("n1", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: usage error expected:\n{err}"
        );
        assert!(
            err.contains(want),
            "{args:?}: stderr lacks {want:?}:\n{err}"
        );
        assert!(
            err.contains(args[0]),
            "{args:?}: the flag is not named:\n{err}"
        );
    }
}
