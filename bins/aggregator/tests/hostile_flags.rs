//! Issue 12, row 13: limits that cannot work are refused at start, naming
//! the flag, instead of making every report fail later.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_netscope-aggregator");

#[test]
fn unusable_limits_are_refused_at_start() {
    for (args, flag) in [
        (&["--max-message-bytes", "0"][..], "--max-message-bytes"),
        (&["--max-message-bytes", "100"][..], "--max-message-bytes"),
        (
            &["--max-message-bytes", "1000000000"][..],
            "--max-message-bytes",
        ),
        (&["--max-samples", "0"][..], "--max-samples"),
        (
            &["--max-reports-in-flight", "0"][..],
            "--max-reports-in-flight",
        ),
    ] {
        let out = Command::new(BIN)
            .args(args)
            .args(["--topology", "/nonexistent/topology.yaml"])
            .output()
            .expect("run the aggregator");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag),
            "{args:?}: the error does not name {flag}: {err}"
        );
        assert!(
            !err.contains("/nonexistent/topology.yaml"),
            "{args:?}: refused for the topology, not the flag: {err}"
        );
    }
}
