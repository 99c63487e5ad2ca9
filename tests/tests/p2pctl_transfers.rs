//! `p2pctl` as a user runs it, against two real daemons: send with its summary, NDJSON and
//! exit codes, --detach, transfers, incoming/accept/reject, cancel, sessions; and keepalive
//! noticing a peer that stops answering.

use std::time::Duration;

use p2p_tests::ctl::json_lines;
use p2p_tests::files::{part_files, random_file, sha256_file};
use p2p_tests::{Daemon, DaemonDirs, DaemonOptions, api, block_on, text, wait_until};

/// A (`--accept auto`) and B (`--accept B_ACCEPT`), trusting each other.
fn pair(b_accept: &str) -> (Daemon, Daemon) {
    block_on(api::trusted_pair(
        DaemonOptions::accepting("auto"),
        DaemonOptions::accepting(b_accept),
    ))
}

#[test]
fn send_waits_prints_a_summary_and_exits_0() {
    let (a, b) = pair("auto");
    let src = a.dirs.root.path().join("photo.jpg");
    random_file(&src, 3 << 20, 1);
    let out = a.ctl(&["send", src.to_str().unwrap(), "--peer", &b.peer_addr()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("sent 1 file")
            && summary.contains(b.status()["device_name"].as_str().unwrap()),
        "{summary}"
    );
    assert_eq!(
        sha256_file(&b.dirs.download_dir.join("photo.jpg")),
        sha256_file(&src)
    );
    // Not a terminal: plain progress lines on stderr, no escape sequences.
    assert!(
        !text(&out.stderr).contains('\u{1b}'),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn send_json_is_ndjson_ending_in_completed() {
    let (a, b) = pair("auto");
    let dir = a.dirs.root.path().join("folder");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/a.txt"), b"a").unwrap();
    std::fs::write(dir.join("b.txt"), b"bb").unwrap();
    let out = a.ctl(&[
        "send",
        dir.to_str().unwrap(),
        "--peer",
        &b.peer_addr(),
        "--json",
        "--window",
        "1",
        "--chunk-size",
        "4K",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = json_lines(&out.stdout);
    let last = &events.last().expect("events")["transfer"];
    assert_eq!(last["state"], "completed");
    assert_eq!(last["direction"], "send");
    assert_eq!(last["total_files"], 2);
    assert_eq!(last["files_done"], 2);
    assert_eq!(
        std::fs::read(b.dirs.download_dir.join("folder/sub/a.txt")).unwrap(),
        b"a"
    );

    // The same transfer as the transfers table sees it.
    let out = a.ctl(&["transfers", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], last["id"]);
    let table = text(&a.ctl(&["transfers"]).stdout);
    assert!(
        table.contains(&last["id"].as_str().unwrap()[..8]),
        "{table}"
    );
}

#[test]
fn detach_returns_the_id_and_watch_follows_it() {
    let (a, b) = pair("auto");
    let src = a.dirs.root.path().join("x.bin");
    random_file(&src, 1 << 20, 2);
    let out = a.ctl(&[
        "send",
        src.to_str().unwrap(),
        "--peer",
        &b.peer_addr(),
        "--detach",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 36, "a transfer id: {id:?}");
    let out = a.ctl(&["watch", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        json_lines(&out.stdout).last().unwrap()["transfer"]["state"],
        "completed"
    );
    // Short ids work too.
    let out = a.ctl(&["watch", &id[..8]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_rejected_send_exits_1_with_the_reason() {
    let (a, b) = pair("ask");
    let src = a.dirs.root.path().join("unwanted.txt");
    std::fs::write(&src, b"no").unwrap();
    let sender = {
        let socket = a.dirs.socket.clone();
        let (src, peer) = (src.clone(), b.peer_addr());
        std::thread::spawn(move || {
            p2p_tests::ctl(&socket, &["send", src.to_str().unwrap(), "--peer", &peer])
        })
    };
    let mut offers = serde_json::Value::Null;
    assert!(wait_until(Duration::from_secs(10), || {
        offers = serde_json::from_slice(&b.ctl(&["incoming", "--json"]).stdout).unwrap_or_default();
        offers.as_array().is_some_and(|a| !a.is_empty())
    }));
    let id = offers[0]["transfer_id"].as_str().unwrap().to_owned();
    assert_eq!(offers[0]["roots"][0], "unwanted.txt");
    let out = b.ctl(&["reject", &id, "--reason", "no thanks"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sender.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("rejected") && err.contains("no thanks"),
        "{err}"
    );
}

#[test]
fn incoming_then_accept_into_a_chosen_directory() {
    let (a, b) = pair("ask");
    let src = a.dirs.root.path().join("wanted.txt");
    std::fs::write(&src, b"yes please").unwrap();
    let out = a.ctl(&[
        "send",
        src.to_str().unwrap(),
        "--peer",
        &b.peer_addr(),
        "--detach",
    ]);
    let id = text(&out.stdout).trim().to_owned();
    assert!(wait_until(Duration::from_secs(10), || text(
        &b.ctl(&["incoming"]).stdout
    )
    .contains(&id[..8])));
    let to = b.dirs.root.path().join("chosen");
    let out = b.ctl(&["accept", &id[..8], "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = a.ctl(&["watch", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(to.join("wanted.txt")).unwrap(), b"yes please");
    // Nothing waits any more.
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b.ctl(&["incoming", "--json"]).stdout)
            .unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn cancel_from_the_command_line() {
    let (a, b) = pair("auto");
    let src = a.dirs.root.path().join("big.bin");
    random_file(&src, 64 << 20, 3);
    let out = a.ctl(&[
        "send",
        src.to_str().unwrap(),
        "--peer",
        &b.peer_addr(),
        "--detach",
        "--window",
        "1",
        "--chunk-size",
        "4K",
        "--no-compress",
    ]);
    let id = text(&out.stdout).trim().to_owned();
    let out = a.ctl(&["cancel", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = a.ctl(&["watch", &id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled transfer is not a success"
    );
    assert!(wait_until(Duration::from_secs(10), || part_files(
        &b.dirs.download_dir
    )
    .is_empty()));
    assert!(!b.dirs.download_dir.join("big.bin").exists());
    let out = a.ctl(&["cancel", "no-such-id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unreachable_peer_and_missing_path_are_exit_1_with_clear_messages() {
    let a = Daemon::start_with(DaemonDirs::new(), DaemonOptions::accepting("auto"));
    let src = a.dirs.root.path().join("f.txt");
    std::fs::write(&src, b"f").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = a.ctl(&["send", src.to_str().unwrap(), "--peer", &closed]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach peer") && err.contains(&closed),
        "{err}"
    );
    let out = a.ctl(&["send", "/nonexistent/file", "--peer", &closed]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/file"));
}

#[test]
fn sessions_connect_and_disconnect_from_the_command_line() {
    let (a, b) = pair("auto");
    let out = a.ctl(&["connect", &b.peer_addr(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["peer_id"], b.status()["device_id"]);
    let table = text(&a.ctl(&["sessions"]).stdout);
    assert!(table.contains(&b.peer_addr()), "{table}");
    let out = a.ctl(&["disconnect", &b.peer_addr()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wait_until(
        Duration::from_secs(10),
        || a.status()["session_count"] == 0
    ));
}

#[test]
fn keepalive_notices_a_peer_that_stops_answering() {
    let (a, b) = pair("auto");
    let out = a.ctl(&["connect", &b.peer_addr()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A stopped process keeps its socket open but answers nothing: only keepalive can tell.
    p2p_tests::signal(b.pid, libc::SIGSTOP);
    let gone = wait_until(Duration::from_secs(25), || a.status()["session_count"] == 0);
    p2p_tests::signal(b.pid, libc::SIGCONT);
    assert!(
        gone,
        "the dead session is dropped within the keepalive timeout (15 s)"
    );
}
