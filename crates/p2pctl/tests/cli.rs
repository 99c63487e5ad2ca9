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
    for word in [
        "status",
        "shutdown",
        "send",
        "transfers",
        "watch",
        "cancel",
        "incoming",
        "accept",
        "reject",
        "sessions",
        "connect",
        "disconnect",
        "--json",
        "--socket",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    // The device commands, each as the first word of its line in the command list.
    for command in ["id", "devices", "pending", "trust", "untrust", "peers"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(command)),
            "--help lacks the command {command}:\n{text}"
        );
    }
}

#[test]
fn trust_help_explains_its_flags() {
    let out = p2pctl(&["trust", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--name",
        "--accept",
        "--download-dir",
        "auto",
        "ask",
        "reject",
    ] {
        assert!(text.contains(word), "trust --help lacks {word}:\n{text}");
    }
}

#[test]
fn trust_needs_an_id() {
    for args in [&["trust"][..], &["trust", "--accept", "auto"], &["untrust"]] {
        let out = p2pctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("<ID>"), "{args:?}: {err}");
    }
}

#[test]
fn an_unknown_accept_rule_is_a_usage_error_naming_the_flag() {
    let out = p2pctl(&["trust", "X", "--accept", "sometimes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--accept"), "{err}");
    assert!(err.contains("sometimes"), "{err}");
    assert!(err.contains("auto"), "lists the possible values: {err}");
}

#[test]
fn a_peer_may_name_its_device_id() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p2pd.sock");
    let sock = sock.to_str().unwrap();
    // Valid: the command goes on to the (missing) daemon.
    let out = p2pctl(&["--socket", sock, "connect", "P56IOI7@127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // Not a peer: a usage error before any daemon is asked.
    for bad in ["@127.0.0.1:1", "P56IOI7@127.0.0.1", "P56IOI7@"] {
        let out = p2pctl(&["--socket", sock, "connect", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let out = p2pctl(&["--socket", sock, "send", "/tmp", "--peer", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--peer"));
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

#[test]
fn send_help_explains_its_flags() {
    let out = p2pctl(&["send", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--peer",
        "--detach",
        "--no-compress",
        "--level",
        "--chunk-size",
        "--window",
    ] {
        assert!(text.contains(word), "send --help lacks {word}:\n{text}");
    }
}

#[test]
fn a_missing_path_is_reported_before_contacting_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p2pd.sock");
    let missing = dir.path().join("no-such-file");
    for path in ["/nonexistent", missing.to_str().unwrap()] {
        let out = p2pctl(&[
            "--socket",
            sock.to_str().unwrap(),
            "send",
            path,
            "--peer",
            "127.0.0.1:1",
        ]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(path), "names the path: {err}");
        assert!(
            !err.contains("no p2pd daemon"),
            "checked before connecting: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn an_existing_path_goes_on_to_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p2pd.sock");
    let out = p2pctl(&[
        "--socket",
        sock.to_str().unwrap(),
        "send",
        dir.path().to_str().unwrap(),
        "--peer",
        "127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(3), "no daemon: {out:?}");
}

#[test]
fn send_needs_a_peer() {
    let out = p2pctl(&["send", "/tmp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--peer"));
    for bad in ["", "   ", "no-port:", "host:0", "127.0.0.1"] {
        let out = p2pctl(&["send", "/tmp", "--peer", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--peer"),
            "{bad:?}: {out:?}"
        );
    }
}

#[test]
fn a_peer_name_or_id_prefix_goes_on_to_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p2pd.sock");
    let sock = sock.to_str().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"x").unwrap();
    let file = file.to_str().unwrap();
    for peer in ["kitchen-pc", "P56I", "kitchen pc", "kitchen-pc.local"] {
        let out = p2pctl(&["--socket", sock, "send", file, "--peer", peer]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "not a usage error: {peer}: {out:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no p2pd daemon"), "{peer}: {err}");
        let out = p2pctl(&["--socket", sock, "connect", peer]);
        assert_eq!(out.status.code(), Some(3), "{peer}: {out:?}");
    }
}

#[test]
fn peer_help_mentions_names_from_p2pctl_peers() {
    for args in [&["send", "--help"][..], &["connect", "--help"]] {
        let out = p2pctl(args);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["<PEER>", "p2pctl peers", "HOST:PORT", "DEVICE-ID@HOST:PORT"] {
            assert!(text.contains(word), "{args:?} lacks {word}:\n{text}");
        }
    }
    let out = p2pctl(&["peers", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--watch"), "{text}");
}

#[test]
fn a_bad_chunk_size_is_a_usage_error_naming_the_flag() {
    for bad in ["lots", "1X", "1K", "32M"] {
        let out = p2pctl(&["send", "/tmp", "--peer", "127.0.0.1:1", "--chunk-size", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--chunk-size"), "{bad}: {err}");
    }
}

#[test]
fn every_daemon_command_without_a_daemon_is_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p2pd.sock");
    let sock = sock.to_str().unwrap();
    for args in [
        &["transfers"][..],
        &["watch"],
        &["watch", "abc"],
        &["cancel", "abc"],
        &["incoming"],
        &["accept", "abc", "--to", "."],
        &["reject", "abc"],
        &["sessions"],
        &["connect", "127.0.0.1:1"],
        &["connect", "P56IOI7@127.0.0.1:1"],
        &["disconnect", "127.0.0.1:1"],
        &["id"],
        &["devices"],
        &["pending"],
        &["trust", "P56IOI7"],
        &[
            "trust",
            "P56IOI7",
            "--name",
            "beta",
            "--accept",
            "ask",
            "--download-dir",
            "in",
        ],
        &["untrust", "P56IOI7"],
        &["peers"],
        &["peers", "--watch"],
        &["connect", "kitchen-pc"],
    ] {
        for json in [false, true] {
            let mut all = vec!["--socket", sock];
            all.extend_from_slice(args);
            if json {
                all.push("--json");
            }
            let out = p2pctl(&all);
            assert_eq!(out.status.code(), Some(3), "{all:?}: {out:?}");
            assert!(out.stdout.is_empty(), "{all:?}: {out:?}");
        }
    }
}
