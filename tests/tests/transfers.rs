//! Transfers between two real daemons on loopback, driven through the control API: sizes at
//! the chunk boundaries, large files, folder trees, compression, both directions over one
//! session, concurrency, cancel, reject, ask-then-accept, name collisions and error codes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_proto::control::v1 as pb;
use p2p_tests::api::{self, SHORT, T, state, wait_done};
use p2p_tests::files::{part_files, random_file, sha256_file, tree, wait_no_part_files};
use p2p_tests::{Daemon, DaemonOptions};

/// A (`--accept auto`) and B (`--accept B_ACCEPT`), trusting each other.
async fn pair(b_accept: &str) -> (Daemon, Daemon) {
    api::trusted_pair(
        DaemonOptions::accepting("auto"),
        DaemonOptions::accepting(b_accept),
    )
    .await
}

fn opts(chunk_size: u32, window: u32, compress: Option<bool>) -> Option<pb::SendOptions> {
    Some(pb::SendOptions {
        compress,
        level: 0,
        chunk_size,
        window,
        max_speed: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_boundary_sizes_arrive_intact_with_mode_and_mtime() {
    let (a, b) = pair("auto").await;
    let chunk: usize = 64 << 10;
    let src = a.dirs.root.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let sizes = [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 5];
    let mut paths = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let p = src.join(format!("f{i}-{size}.bin"));
        random_file(&p, *size, i as u64);
        std::fs::set_permissions(
            &p,
            std::fs::Permissions::from_mode(if i % 2 == 0 { 0o640 } else { 0o755 }),
        )
        .unwrap();
        paths.push(p);
    }
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let id = api::send(&a, &refs, &b.peer_addr(), opts(chunk as u32, 0, None)).await;
    let t = wait_done(&a, &id, T).await;
    api::expect_completed(&t);
    assert_eq!(t.total_files, sizes.len() as u64);
    assert_eq!(t.files_done, sizes.len() as u64);
    assert_eq!(t.bytes_done, sizes.iter().sum::<usize>() as u64);
    for p in &paths {
        let got = b.dirs.download_dir.join(p.file_name().unwrap());
        assert_eq!(sha256_file(&got), sha256_file(p), "{}", got.display());
        let (m1, m2) = (
            std::fs::metadata(p).unwrap(),
            std::fs::metadata(&got).unwrap(),
        );
        assert_eq!(
            m1.permissions().mode() & 0o777,
            m2.permissions().mode() & 0o777,
            "mode of {}",
            got.display()
        );
        assert_eq!(
            (m1.mtime(), m1.mtime_nsec()),
            (m2.mtime(), m2.mtime_nsec()),
            "mtime of {}",
            got.display()
        );
    }
    // The receiver's record agrees.
    let rt = wait_done(&b, &id, SHORT).await;
    api::expect_completed(&rt);
    assert_eq!(rt.destination, b.dirs.download_dir.display().to_string());
    assert!(part_files(&b.dirs.download_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_random_file_is_verified() {
    let (a, b) = pair("auto").await;
    let src = a.dirs.root.path().join("big.bin");
    random_file(&src, 100 << 20, 42);
    let id = api::send(&a, &[&src], &b.peer_addr(), None).await;
    let t = wait_done(&a, &id, Duration::from_secs(120)).await;
    api::expect_completed(&t);
    assert_eq!(
        sha256_file(&b.dirs.download_dir.join("big.bin")),
        sha256_file(&src)
    );
    // Incompressible data: adaptive compression switches itself off, nothing is gained or lost.
    assert!(
        t.wire_bytes >= t.total_bytes,
        "wire {} < total {}",
        t.wire_bytes,
        t.total_bytes
    );
    assert!(
        t.wire_bytes <= t.total_bytes + (t.total_bytes / 100),
        "wire {} vs total {}",
        t.wire_bytes,
        t.total_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_data_is_compressed_on_the_wire() {
    let (a, b) = pair("auto").await;
    let src = a.dirs.root.path().join("log.txt");
    let line =
        "2026-11-21T21:00:00Z INFO p2pd: a fairly repetitive log line with some words in it\n";
    std::fs::write(&src, line.repeat((20 << 20) / line.len())).unwrap();
    let id = api::send(&a, &[&src], &b.peer_addr(), None).await;
    let t = wait_done(&a, &id, T).await;
    api::expect_completed(&t);
    assert!(
        t.wire_bytes * 4 < t.total_bytes,
        "compression should shrink text: wire {} of {}",
        t.wire_bytes,
        t.total_bytes
    );
    assert_eq!(
        sha256_file(&b.dirs.download_dir.join("log.txt")),
        sha256_file(&src)
    );

    // With compression off, the bytes go as they are.
    let id = api::send(&a, &[&src], &b.peer_addr(), opts(0, 0, Some(false))).await;
    let t = wait_done(&a, &id, T).await;
    api::expect_completed(&t);
    assert_eq!(t.wire_bytes, t.total_bytes);
    assert_eq!(
        sha256_file(&b.dirs.download_dir.join("log (1).txt")),
        sha256_file(&src),
        "collision gets a new name"
    );
    assert_eq!(
        sha256_file(&b.dirs.download_dir.join("log.txt")),
        sha256_file(&src),
        "the first copy is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_tree_with_10000_small_files_keeps_its_structure() {
    let (a, b) = pair("auto").await;
    let root = a.dirs.root.path().join("Fotos 2026 ✓");
    std::fs::create_dir_all(root.join("empty/also empty")).unwrap();
    std::fs::create_dir_all(root.join("naïve/日本語")).unwrap();
    std::fs::write(root.join("naïve/日本語/ファイル.txt"), "こんにちは").unwrap();
    std::fs::write(root.join("zero"), b"").unwrap();
    let script = root.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("a-symlink")).unwrap();
    let many = root.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..10_000u64 {
        let sub = many.join(format!("d{:02}", i % 50));
        if i < 50 {
            std::fs::create_dir(&sub).unwrap();
        }
        random_file(&sub.join(format!("f{i:05}.dat")), 4096, i);
    }
    let id = api::send(&a, &[&root], &b.peer_addr(), None).await;
    let t = wait_done(&a, &id, Duration::from_secs(180)).await;
    api::expect_completed(&t);
    assert_eq!(t.total_files, 10_003);
    let got = b.dirs.download_dir.join("Fotos 2026 ✓");
    let mut want = tree(&root);
    want.retain(|(p, _, _)| p != "a-symlink");
    assert_eq!(tree(&got), want, "same tree (symlink skipped)");
    assert!(!got.join("a-symlink").exists());

    // Sending the same folder again does not merge into the first copy.
    let id = api::send(&a, &[&root], &b.peer_addr(), None).await;
    api::expect_completed(&wait_done(&a, &id, Duration::from_secs(180)).await);
    assert!(
        b.dirs
            .download_dir
            .join("Fotos 2026 ✓ (1)/many/d00/f00000.dat")
            .is_file()
    );
}

/// Many small files through the widest window: the receiver batches acknowledgements and the
/// syncer reports files in batches, and still no more answers than the window may be in
/// flight towards the sender (whose frame channel holds only the window and a little slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_through_the_widest_window_stay_within_it() {
    let (a, b) = pair("auto").await;
    let root = a.dirs.root.path().join("small");
    std::fs::create_dir(&root).unwrap();
    for i in 0..3_000u64 {
        random_file(
            &root.join(format!("f{i:05}")),
            1000 + (i as usize % 3) * 2000,
            i,
        );
    }
    let id = api::send(&a, &[&root], &b.peer_addr(), opts(128 << 10, 1024, None)).await;
    let t = wait_done(&a, &id, Duration::from_secs(180)).await;
    api::assert_completed(&t, &a, &b);
    assert_eq!(t.total_files, 3_000);
    assert_eq!(t.bytes_done, t.total_bytes);
    assert_eq!(
        tree(&b.dirs.download_dir.join("small")),
        tree(&root),
        "same files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_and_concurrent_transfers_share_one_session() {
    let (a, b) = pair("auto").await;
    let mut files = Vec::new();
    for i in 0..3 {
        let p = a.dirs.root.path().join(format!("a{i}.bin"));
        random_file(&p, (3 << 20) + i * 1000, i as u64);
        files.push(p);
    }
    let back = b.dirs.root.path().join("from-b.bin");
    random_file(&back, 5 << 20, 99);

    // First contact opens the session from A.
    let first = api::send(&a, &[&files[0]], &b.peer_addr(), None).await;
    api::expect_completed(&wait_done(&a, &first, T).await);

    let (to_b, to_a) = (b.peer_addr(), a.peer_addr());
    let (f1, f2): (&Path, &Path) = (&files[1], &files[2]);
    let (s1, s2, s3) = ([f1], [f2], [back.as_path()]);
    let (r1, r2, r3) = tokio::join!(
        api::send(&a, &s1, &to_b, None),
        api::send(&a, &s2, &to_b, opts(0, 1, None)),
        api::send(&b, &s3, &to_a, None),
    );
    for (d, id) in [(&a, &r1), (&a, &r2), (&b, &r3)] {
        api::expect_completed(&wait_done(d, id, T).await);
    }
    for f in &files {
        assert_eq!(
            sha256_file(&b.dirs.download_dir.join(f.file_name().unwrap())),
            sha256_file(f)
        );
    }
    assert_eq!(
        sha256_file(&a.dirs.download_dir.join("from-b.bin")),
        sha256_file(&back)
    );

    let sessions = |d: &Daemon| d.status()["session_count"].as_u64().unwrap();
    assert_eq!(sessions(&a), 1, "A reuses its session to B");
    assert_eq!(sessions(&b), 1, "B sends back over the session A opened");
    let list = api::sessions(&a).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].peer_id, b.status()["device_id"].as_str().unwrap());
    assert!(list[0].outgoing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_midway_leaves_no_partial_file() {
    let (a, b) = pair("auto").await;
    let src = a.dirs.root.path().join("slow.bin");
    random_file(&src, 64 << 20, 7);
    // Small chunks, one at a time: slow enough to cancel in the middle.
    let id = api::send(&a, &[&src], &b.peer_addr(), opts(4096, 1, Some(false))).await;
    api::wait_for(&a, &id, T, |t| t.bytes_done > 256 << 10).await;
    api::cancel(&a, &id).await;
    let t = wait_done(&a, &id, SHORT).await;
    assert_eq!(state(&t), pb::TransferState::Cancelled);
    assert!(t.bytes_done < t.total_bytes);
    let rt = wait_done(&b, &id, SHORT).await;
    assert_eq!(
        state(&rt),
        pb::TransferState::Cancelled,
        "the receiver is told: {}",
        rt.error
    );
    assert!(
        !b.dirs.download_dir.join("slow.bin").exists(),
        "no partial file under the final name"
    );
    // Temporary files removed.
    wait_no_part_files(&b.dirs.download_dir, SHORT).await;
    // Cancelling again is a precondition error.
    let again = api::try_cancel(&a, &id).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_can_cancel_too() {
    let (a, b) = pair("auto").await;
    let src = a.dirs.root.path().join("slow.bin");
    random_file(&src, 64 << 20, 8);
    let id = api::send(&a, &[&src], &b.peer_addr(), opts(4096, 1, Some(false))).await;
    api::wait_for(&b, &id, T, |t| t.bytes_done > 256 << 10).await;
    api::cancel(&b, &id).await;
    let t = wait_done(&a, &id, SHORT).await;
    assert_eq!(state(&t), pb::TransferState::Cancelled, "{}", t.error);
    assert!(!b.dirs.download_dir.join("slow.bin").exists());
    wait_no_part_files(&b.dirs.download_dir, SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_policy_waits_then_reject_is_reported_to_the_sender() {
    let (a, b) = pair("ask").await;
    let src = a.dirs.root.path().join("offer.txt");
    std::fs::write(&src, b"do you want this?").unwrap();
    let id = api::send(&a, &[&src], &b.peer_addr(), None).await;
    let offer = api::wait_offer(&b, SHORT).await;
    assert_eq!(offer.transfer_id, id);
    assert_eq!(offer.roots, vec!["offer.txt".to_owned()]);
    assert_eq!(offer.total_bytes, 17);
    assert_eq!(offer.peer_id, a.status()["device_id"].as_str().unwrap());
    let t = api::wait_for(&a, &id, SHORT, |t| state(t) == pb::TransferState::Offered).await;
    assert_eq!(t.bytes_done, 0);

    api::reject(&b, &id, "not now").await;
    let t = wait_done(&a, &id, SHORT).await;
    assert_eq!(state(&t), pb::TransferState::Rejected);
    assert!(t.error.contains("not now"), "{}", t.error);
    assert!(!b.dirs.download_dir.join("offer.txt").exists());
    let err = api::try_accept(&b, &id, None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_then_accept_into_another_directory() {
    let (a, b) = pair("ask").await;
    let src = a.dirs.root.path().join("report.pdf");
    random_file(&src, 300_000, 3);
    let id = api::send(&a, &[&src], &b.peer_addr(), None).await;
    let offer = api::wait_offer(&b, SHORT).await;
    let elsewhere = b.dirs.root.path().join("elsewhere/inbox");
    api::accept(&b, &offer.transfer_id, Some(&elsewhere)).await;
    api::expect_completed(&wait_done(&a, &id, T).await);
    assert_eq!(
        sha256_file(&elsewhere.join("report.pdf")),
        sha256_file(&src)
    );
    assert!(!b.dirs.download_dir.join("report.pdf").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_fitting_status_codes() {
    let a = p2p_tests::start(&["--accept", "auto"]).await;
    let missing = a.dirs.root.path().join("missing.bin");
    let e = api::try_send(&a, &[&missing], "127.0.0.1:9", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("missing.bin"), "{e}");

    let src = a.dirs.root.path().join("x.txt");
    std::fs::write(&src, b"x").unwrap();
    // A port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let e = api::try_send(&a, &[&src], &closed, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(e.message().contains(&closed), "{e}");

    for (o, word) in [
        (opts(1, 0, None), "chunk size"),
        (opts(0, 5000, None), "window"),
        (
            Some(pb::SendOptions {
                level: 99,
                ..Default::default()
            }),
            "level",
        ),
    ] {
        let e = api::try_send(&a, &[&src], &closed, o).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(word), "{e}");
    }
    let e = api::try_send(&a, &[&src], "not an address", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = api::try_send(&a, &[Path::new("relative.txt")], &closed, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = api::client(&a)
        .await
        .get_transfer(pb::GetTransferRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = api::client(&a)
        .await
        .disconnect(pb::DisconnectRequest {
            peer: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // The daemon is still fine.
    assert_eq!(a.status()["active_transfer_count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_disconnect_sessions() {
    let (a, b) = pair("auto").await;
    let s = api::connect(&a, &b.peer_addr()).await;
    assert_eq!(s.peer_id, b.status()["device_id"].as_str().unwrap());
    assert_eq!(s.peer_address, b.peer_addr());
    assert!(p2p_tests::wait_until(SHORT, || b.status()["session_count"] == 1));
    api::client(&a)
        .await
        .disconnect(pb::DisconnectRequest {
            peer: s.peer_id.clone(),
        })
        .await
        .expect("disconnect");
    assert!(p2p_tests::wait_until(SHORT, || a.status()["session_count"]
        == 0
        && b.status()["session_count"] == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_receiver_leaves_the_transfer_retrying_until_cancelled() {
    let (a, b) = pair("auto").await;
    let src = a.dirs.root.path().join("slow.bin");
    random_file(&src, 64 << 20, 9);
    let id = api::send(&a, &[&src], &b.peer_addr(), opts(4096, 1, Some(false))).await;
    api::wait_for(&a, &id, T, |t| t.bytes_done > 64 << 10).await;
    let b_dirs = b.into_dirs();
    // Transient: the sender waits and tries again (resume is covered by resume.rs).
    let t = api::wait_for(&a, &id, Duration::from_secs(30), |t| {
        state(t) == pb::TransferState::Retrying
    })
    .await;
    assert!(t.error.contains("session"), "{}", t.error);
    assert!(t.next_attempt_at_ms > t.started_at_ms, "{t:?}");
    assert!(!b_dirs.download_dir.join("slow.bin").exists());
    assert_eq!(a.status()["session_count"], 0);
    let out = a.ctl(&["cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    let t = wait_done(&a, &id, SHORT).await;
    assert_eq!(state(&t), pb::TransferState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sender_leaves_the_receivers_transfer_interrupted_until_cancelled() {
    let (a, b) = pair("auto").await;
    let src = a.dirs.root.path().join("slow.bin");
    random_file(&src, 64 << 20, 10);
    let id = api::send(&a, &[&src], &b.peer_addr(), opts(4096, 1, Some(false))).await;
    api::wait_for(&b, &id, T, |t| t.bytes_done > 64 << 10).await;
    assert!(
        !part_files(&b.dirs.download_dir).is_empty(),
        "a part file exists mid-transfer"
    );
    drop(a.into_dirs());
    let t = api::wait_for(&b, &id, Duration::from_secs(30), |t| {
        state(t) == pb::TransferState::Interrupted
    })
    .await;
    assert!(t.error.contains("session"), "{}", t.error);
    // What arrived is kept for a resume, under the hidden temporary name only.
    assert_eq!(part_files(&b.dirs.download_dir).len(), 1);
    assert!(!b.dirs.download_dir.join("slow.bin").exists());
    // Cancelling it here removes it.
    let out = b.ctl(&["cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    let t = wait_done(&b, &id, SHORT).await;
    assert_eq!(state(&t), pb::TransferState::Cancelled);
    wait_no_part_files(&b.dirs.download_dir, SHORT).await;
    assert_eq!(b.status()["active_transfer_count"], 0);
}
