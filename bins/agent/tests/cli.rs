//! The agent binary as a user meets it: --help shows every flag with its
//! default, and bad values fail with a clear message and a non-zero exit
//! before anything is loaded.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_netscope-agent");

#[test]
fn help_lists_every_flag_with_defaults() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "--help failed: {out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--node-name",
        "--server-endpoint",
        "--collection-interval",
        "--debug-addr",
        "--verbosity",
        "--kubeconfig",
        "--attach-mode",
        "--interface-prefixes",
        "--include-interfaces",
        "--exclude-interfaces",
        "--max-flows",
        "--service-cidrs",
        "--max-buffered-flows",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--tls-server-name",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    for default in [
        "[env: NODE_NAME=",
        "[default: netscope-aggregator:8080]",
        "[default: 10s]",
        "[default: :6060]",
        "[default: 0]",
        "[default: auto]",
        "[default: veth eni cali lxc vlan gke]",
        "[default: 65536]",
        "[default: 200000]",
    ] {
        assert!(help.contains(default), "--help lacks {default}:\n{help}");
    }
}

#[test]
fn bad_flag_values_fail_clearly() {
    let cases: [(&[&str], &str); 8] = [
        (&[], "--node-name"),
        (&["--collection-interval", "5q"], "--collection-interval"),
        (&["--collection-interval", "10ms"], "shorter than 100ms"),
        (&["--attach-mode", "xdp"], "unknown attach mode"),
        (&["--debug-addr", "nowhere"], "--debug-addr"),
        (&["--service-cidrs", "10.96.0.0/33"], "--service-cidrs"),
        (&["--max-flows", "0"], "--max-flows"),
        (&["-v", "9"], "--verbosity"),
    ];
    for (args, want) in cases {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("NODE_NAME");
        if !args.is_empty() {
            cmd.args(["--node-name", "n1"]);
        }
        let out = cmd.args(args).output().expect("run the agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} must exit 2 (usage error), got {out:?}"
        );
        assert!(
            err.contains(want),
            "{args:?}: error should mention {want:?}:\n{err}"
        );
    }
}

#[test]
fn bad_interface_regex_is_rejected_before_loading() {
    let out = Command::new(BIN)
        .args(["--node-name", "n1", "--include-interfaces", "(unclosed"])
        .output()
        .expect("run the agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad regex must fail");
    assert!(
        err.contains("include") && err.contains("(unclosed"),
        "{err}"
    );
}
