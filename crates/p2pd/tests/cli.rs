//! The `p2pd` command line: help, version and flag errors, run as a real process.

use std::process::Command;

fn p2pd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_p2pd"))
        .args(args)
        .env_remove("P2PD_SOCKET")
        .output()
        .expect("run p2pd")
}

#[test]
fn help_lists_every_flag() {
    let out = p2pd(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--socket",
        "--state-dir",
        "--config",
        "--listen",
        "--name",
        "--download-dir",
        "--log-level",
        "--daemon",
        "--pidfile",
        "P2PD_SOCKET",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn version_is_the_package_version() {
    let out = p2pd(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("p2pd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_listen_address_names_the_flag() {
    let out = p2pd(&["--listen", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen"), "{err}");
}

#[test]
fn pidfile_needs_daemon() {
    let out = p2pd(&["--pidfile", "/tmp/x.pid"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--daemon"));
}
