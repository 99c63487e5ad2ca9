//! The `p2pctl` command line with no daemon behind the socket, run as a real process.

use std::process::Command;

fn p2pctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_p2pctl"))
        .args(args)
        .env_remove("P2PD_SOCKET")
        .output()
        .expect("run p2pctl")
}

#[test]
fn help_lists_the_commands() {
    let out = p2pctl(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["status", "shutdown", "--json", "--socket"] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

#[test]
fn no_daemon_is_one_clear_line_and_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p2pd.sock");
    for json in [false, true] {
        let mut args = vec!["--socket", sock.to_str().unwrap(), "status"];
        if json {
            args.push("--json");
        }
        let out = p2pctl(&args);
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("no p2pd daemon is running at") && err.contains(sock.to_str().unwrap()),
            "{err}"
        );
        assert!(err.contains("p2pd --daemon"), "says how to start it: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn p2pd_socket_env_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("env.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_p2pctl"))
        .arg("status")
        .env("P2PD_SOCKET", &sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(sock.to_str().unwrap()));
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = p2pctl(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}
