//! Transfer history between two real daemons: every ending (completed both ways, rejected,
//! cancelled, failed) is recorded on both sides with its direction, bytes and reason; the
//! filters and the limit work through `ListHistory` and `p2pctl history`; `history clear`;
//! history survives a `kill -9` of the daemon; bad arguments are usage errors.

use std::path::Path;

use p2p_proto::control::v1 as pb;
use p2p_tests::api::{self, SHORT, T, history, state, wait_done};
use p2p_tests::files::random_file;
use p2p_tests::{Daemon, DaemonOptions, start, text};
use serde_json::Value;

async fn all_history(d: &Daemon) -> Vec<pb::HistoryEntry> {
    history(d, pb::ListHistoryRequest::default()).await
}

fn status(e: &pb::HistoryEntry) -> pb::HistoryStatus {
    pb::HistoryStatus::try_from(e.status).unwrap_or(pb::HistoryStatus::Unspecified)
}

fn direction(e: &pb::HistoryEntry) -> pb::Direction {
    pb::Direction::try_from(e.direction).unwrap_or(pb::Direction::Unspecified)
}

/// `p2pctl history ARGS… --json` on `d`, parsed; the command must succeed.
fn ctl_history(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["history", "--json"];
    argv.extend_from_slice(args);
    let out = d.ctl(&argv);
    assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(list)) => list,
        other => panic!("{argv:?}: not a JSON array: {other:?}"),
    }
}

fn ids(list: &[Value]) -> Vec<&str> {
    list.iter()
        .map(|e| e["id"].as_str().unwrap_or(""))
        .collect()
}

/// The entry of transfer `id` in `list`.
fn find<'a>(list: &'a [pb::HistoryEntry], id: &str) -> &'a pb::HistoryEntry {
    list.iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("transfer {id} is not in history: {list:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_is_recorded_on_both_sides_with_its_reason() {
    let (a, b) = tokio::join!(start(&["--accept", "auto"]), start(&["--accept", "auto"]));
    let (ida, idb) = (a.device_id().to_owned(), b.device_id().to_owned());
    api::trust_with(&a, &idb, pb::DeviceAccept::Auto, None).await;
    api::trust_with(&b, &ida, pb::DeviceAccept::Auto, None).await;

    // Completed, a → b: a folder of two files and a file.
    let folder = a.dirs.root.path().join("album");
    std::fs::create_dir(&folder).unwrap();
    random_file(&folder.join("one.bin"), 100_000, 1);
    random_file(&folder.join("two.bin"), 23_456, 2);
    let single = a.dirs.root.path().join("notes.txt");
    std::fs::write(&single, b"hello history").unwrap();
    let sent = api::send(&a, &[&folder, &single], &b.peer_addr(), None).await;
    let t = wait_done(&a, &sent, T).await;
    assert_eq!(state(&t), pb::TransferState::Completed, "{}", t.error);
    wait_done(&b, &sent, SHORT).await;

    // Completed, b → a.
    let back = b.dirs.root.path().join("reply.bin");
    random_file(&back, 1 << 20, 3);
    let received = api::send(&b, &[&back], &a.peer_addr(), None).await;
    let t = wait_done(&b, &received, T).await;
    assert_eq!(state(&t), pb::TransferState::Completed, "{}", t.error);
    wait_done(&a, &received, SHORT).await;

    // Rejected by b's user, with a reason.
    api::trust_with(&b, &ida, pb::DeviceAccept::Ask, None).await;
    let rejected = api::send(&a, &[&single], &b.peer_addr(), None).await;
    api::wait_offer(&b, SHORT).await;
    api::reject(&b, &rejected, "not now, thanks").await;
    wait_done(&a, &rejected, SHORT).await;
    wait_done(&b, &rejected, SHORT).await;

    // Cancelled by a while b's user has not decided yet.
    let cancelled = api::send(&a, &[&single], &b.peer_addr(), None).await;
    api::wait_offer(&b, SHORT).await;
    api::cancel(&a, &cancelled).await;
    wait_done(&a, &cancelled, SHORT).await;
    wait_done(&b, &cancelled, SHORT).await;

    // Failed on b: its destination for a cannot be created (a file is in the way); a hears
    // the reason as a rejection.
    let blocker = b.dirs.root.path().join("blocker");
    std::fs::write(&blocker, b"a file, not a directory").unwrap();
    api::trust_with(
        &b,
        &ida,
        pb::DeviceAccept::Auto,
        Some(&blocker.join("inbox")),
    )
    .await;
    let failed = api::send(&a, &[&single], &b.peer_addr(), None).await;
    wait_done(&a, &failed, SHORT).await;
    wait_done(&b, &failed, SHORT).await;

    let (ha, hb) = (all_history(&a).await, all_history(&b).await);
    let order = [&failed, &cancelled, &rejected, &received, &sent];
    assert_eq!(
        ha.iter().map(|e| &e.id).collect::<Vec<_>>(),
        order,
        "newest first on a"
    );
    assert_eq!(
        hb.iter().map(|e| &e.id).collect::<Vec<_>>(),
        order,
        "newest first on b"
    );

    // The completed ones, from both ends.
    let total = 100_000 + 23_456 + 13;
    for (e, dir, peer) in [
        (find(&ha, &sent), pb::Direction::Send, &idb),
        (find(&hb, &sent), pb::Direction::Receive, &ida),
    ] {
        assert_eq!(status(e), pb::HistoryStatus::Completed);
        assert_eq!(direction(e), dir);
        assert_eq!(&e.peer_id, peer);
        assert!(!e.peer_name.is_empty());
        assert_eq!(e.roots, ["album", "notes.txt"]);
        assert_eq!(e.root_count, 2);
        assert_eq!((e.total_files, e.files_done), (3, 3));
        assert_eq!((e.total_bytes, e.bytes_done), (total, total));
        assert_eq!(e.reason, "");
        assert!(e.started_at_ms > 0 && e.finished_at_ms >= e.started_at_ms);
        assert_eq!(e.duration_ms, e.finished_at_ms - e.started_at_ms);
        if let Some(speed) = (e.bytes_done * 1000).checked_div(e.duration_ms) {
            assert_eq!(e.bytes_per_second, speed);
        }
    }
    for (e, dir) in [
        (find(&hb, &received), pb::Direction::Send),
        (find(&ha, &received), pb::Direction::Receive),
    ] {
        assert_eq!(
            (status(e), direction(e)),
            (pb::HistoryStatus::Completed, dir)
        );
        assert_eq!((e.total_bytes, e.bytes_done), (1 << 20, 1 << 20));
        assert_eq!(e.roots, ["reply.bin"]);
    }

    // Rejected: the receiver's reason on both sides.
    for e in [find(&ha, &rejected), find(&hb, &rejected)] {
        assert_eq!(status(e), pb::HistoryStatus::Rejected);
        assert_eq!(e.reason, "not now, thanks");
        assert_eq!((e.files_done, e.bytes_done), (0, 0));
    }
    assert_eq!(direction(find(&hb, &rejected)), pb::Direction::Receive);

    // Cancelled: by the user here, by the sender there.
    let e = find(&ha, &cancelled);
    assert_eq!(status(e), pb::HistoryStatus::Cancelled);
    assert_eq!(e.reason, "cancelled by user");
    let e = find(&hb, &cancelled);
    assert_eq!(status(e), pb::HistoryStatus::Cancelled);
    assert_eq!(e.reason, "cancelled by sender");

    // Failed on the receiver with the cause; the sender was told.
    let e = find(&hb, &failed);
    assert_eq!(status(e), pb::HistoryStatus::Failed);
    assert!(
        e.reason.contains("cannot prepare destination") && e.reason.contains("blocker"),
        "{}",
        e.reason
    );
    let e = find(&ha, &failed);
    assert_eq!(status(e), pb::HistoryStatus::Rejected);
    assert!(
        e.reason.contains("cannot prepare destination"),
        "{}",
        e.reason
    );

    // The table shows the outcomes and the reasons.
    let table = text(&b.ctl(&["history"]).stdout);
    for part in [
        &failed[..8],
        "failed",
        "cannot prepare destination",
        "cancelled by sender",
        "not now, thanks",
        "album, notes.txt",
        "recv",
        "send",
    ] {
        assert!(table.contains(part), "{part} in\n{table}");
    }
    for d in [&a, &b] {
        assert!(
            !d.stderr().contains("cannot record the transfer in history"),
            "{}",
            d.stderr()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_limit_clear_and_a_restart() {
    let (a, b) = api::trusted_pair(
        DaemonOptions::accepting("auto"),
        DaemonOptions::accepting("auto"),
    )
    .await;
    let (ida, idb) = (a.device_id().to_owned(), b.device_id().to_owned());
    let file = a.dirs.root.path().join("f.txt");
    std::fs::write(&file, b"0123456789").unwrap();
    let mut ab = Vec::new();
    for _ in 0..2 {
        let id = api::send(&a, &[&file], &b.peer_addr(), None).await;
        wait_done(&a, &id, T).await;
        wait_done(&b, &id, SHORT).await;
        ab.push(id);
    }
    let back = b.dirs.root.path().join("g.txt");
    std::fs::write(&back, b"abc").unwrap();
    let ba = api::send(&b, &[&back], &a.peer_addr(), None).await;
    wait_done(&b, &ba, T).await;
    wait_done(&a, &ba, SHORT).await;
    // b refuses a from now on: the next send is rejected at once.
    api::trust_with(&b, &ida, pb::DeviceAccept::Reject, None).await;
    let refused = api::send(&a, &[&file], &b.peer_addr(), None).await;
    wait_done(&a, &refused, SHORT).await;
    wait_done(&b, &refused, SHORT).await;

    // Through p2pctl.
    let all = ctl_history(&a, &[]);
    assert_eq!(ids(&all), [&refused, &ba, &ab[1], &ab[0]]);
    assert_eq!(all[0]["status"], "rejected");
    assert_eq!(all[0]["direction"], "send");
    assert!(
        all[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refuses transfers")),
        "{}",
        all[0]
    );
    assert_eq!(all[1]["direction"], "receive");
    assert_eq!(all[2]["status"], "completed");
    assert_eq!(all[2]["bytes_done"], 10);
    assert_eq!(all[2]["peer_id"], idb.as_str());
    assert_eq!(ids(&ctl_history(&a, &["-n", "1"])), [&refused]);
    assert_eq!(ids(&ctl_history(&a, &["--limit", "2"])), [&refused, &ba]);
    assert_eq!(
        ids(&ctl_history(&a, &["--direction", "send"])),
        [&refused, &ab[1], &ab[0]]
    );
    assert_eq!(ids(&ctl_history(&a, &["--direction", "receive"])), [&ba]);
    assert_eq!(
        ids(&ctl_history(&a, &["--completed"])),
        [&ba, &ab[1], &ab[0]]
    );
    assert_eq!(
        ids(&ctl_history(
            &a,
            &["--completed", "--direction", "send", "-n", "1"]
        )),
        [&ab[1]]
    );
    assert_eq!(ids(&ctl_history(&a, &["--rejected"])), [&refused]);
    assert!(ctl_history(&a, &["--failed"]).is_empty());
    assert_eq!(ctl_history(&a, &["--failed", "--rejected"]).len(), 1);
    assert_eq!(ctl_history(&a, &["--peer", &idb[..7]]).len(), 4);
    assert_eq!(ctl_history(&a, &["--peer", &idb.to_lowercase()]).len(), 4);
    assert!(ctl_history(&a, &["--peer", "nobody-here"]).is_empty());
    assert_eq!(ctl_history(&a, &["--since", "1h"]).len(), 4);
    let out = a.ctl(&["history", "--failed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no transfer in history matches\n");
    let out = a.ctl(&["history", "-n", "2"]);
    let table = text(&out.stdout);
    assert!(table.starts_with("ID  "), "{table}");
    assert!(
        table.contains(&refused[..8]) && table.contains(&ba[..8]) && !table.contains(&ab[0][..8]),
        "{table}"
    );
    assert!(table.contains("the newest 2 shown"), "{table}");

    // Through gRPC.
    let got = history(
        &a,
        pb::ListHistoryRequest {
            direction: pb::Direction::Send as i32,
            statuses: vec![pb::HistoryStatus::Completed as i32],
            limit: 5,
            peer: idb[..7].to_owned(),
            since_ms: 1,
        },
    )
    .await;
    assert_eq!(
        got.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&ab[1], &ab[0]]
    );
    for (req, want) in [
        (
            pb::ListHistoryRequest {
                direction: 9,
                ..Default::default()
            },
            "direction 9",
        ),
        (
            pb::ListHistoryRequest {
                statuses: vec![0],
                ..Default::default()
            },
            "history status 0",
        ),
        (
            pb::ListHistoryRequest {
                limit: 10_001,
                ..Default::default()
            },
            "limit 10001",
        ),
        (
            pb::ListHistoryRequest {
                peer: "  ".into(),
                ..Default::default()
            },
            "peer filter",
        ),
    ] {
        let err = api::client(&a)
            .await
            .list_history(req)
            .await
            .expect_err("a bad filter");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "{want}: {}", err.message());
    }

    // History survives kill -9 and a restart.
    let before = all_history(&b).await;
    assert_eq!(before.len(), 4);
    let dirs = b.into_dirs();
    let b = Daemon::launch(dirs, DaemonOptions::accepting("auto")).await;
    assert_eq!(all_history(&b).await, before);
    assert_eq!(b.status()["active_transfer_count"], 0);

    // Clear: a's history only.
    let out = a.ctl(&["history", "clear"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "history cleared: 4 transfers removed\n");
    let out = a.ctl(&["history", "clear", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v, serde_json::json!({ "removed": 0 }));
    assert_eq!(
        text(&a.ctl(&["history"]).stdout),
        "no transfers in history\n"
    );
    assert_eq!(all_history(&b).await.len(), 4);

    // Recording goes on after a clear.
    api::trust_with(&b, &ida, pb::DeviceAccept::Auto, None).await;
    let after = api::send(&a, &[&file], &b.peer_addr(), None).await;
    wait_done(&a, &after, T).await;
    assert_eq!(ids(&ctl_history(&a, &[])), [&after]);
}

#[test]
fn bad_history_arguments_are_usage_errors() {
    // Usage is checked before any daemon is contacted.
    let socket = Path::new("/nonexistent/p2pd.sock");
    for (args, want) in [
        (&["history", "--direction", "sideways"][..], "sideways"),
        (&["history", "-n", "abc"], "abc"),
        (&["history", "-n", "0"], "1..=10000"),
        (&["history", "--since", "yesterday"], "yesterday"),
        (&["history", "--peer", ""], "--peer"),
        (&["history", "clear", "-n", "3"], "-n"),
        (&["history", "wipe"], "wipe"),
    ] {
        let out = p2p_tests::ctl(socket, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = p2p_tests::ctl(socket, &["history"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "no daemon: {}",
        text(&out.stderr)
    );
}
