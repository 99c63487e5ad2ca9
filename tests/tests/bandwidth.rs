//! Speed limits between two real daemons on loopback: a per-transfer limit (`send --max-speed`,
//! `SendOptions.max_speed`), changing it on a running transfer (`p2pctl limit`,
//! `SetTransferLimit`), the global limit of the config file and its SIGHUP reload, and the
//! errors for bad input.
//!
//! Timing is checked from below only: a limited transfer takes at least the time its limit
//! implies, less the burst the limiter allows. That is a guarantee of the limiter, whatever the
//! machine's speed; how close to the target it stays is proven by the limiter's unit tests on a
//! simulated clock and measured by `bench/run.sh --only throttle`.

use std::path::Path;
use std::time::{Duration, Instant};

use p2p_proto::control::v1 as pb;
use p2p_tests::api::{self, SHORT, T, state, wait_done, wait_for};
use p2p_tests::files::{MIB, assert_same_file, random_file};
use p2p_tests::{Daemon, DaemonDirs, DaemonOptions, text, wait_until};

/// Two daemons that trust each other, both `--accept auto`; the first (the sender) with
/// `sender_config` as its config file.
async fn pair(sender_config: Option<&str>) -> (Daemon, Daemon) {
    let sender = DaemonOptions {
        config: sender_config.map(str::to_owned),
        ..DaemonOptions::accepting("auto")
    };
    api::trusted_pair(sender, DaemonOptions::accepting("auto")).await
}

/// The least time `wire_bytes` can take through a limiter at `rate`: everything but the burst
/// (100 ms at the rate, `p2p_core::transfer::ratelimit::BURST`) is paid for before it is sent.
fn least_time(wire_bytes: u64, rate: u64) -> Duration {
    let burst = p2p_core::transfer::ratelimit::BURST.as_secs_f64() * rate as f64;
    Duration::from_secs_f64((wire_bytes as f64 - burst).max(0.0) / rate as f64)
}

/// The global limit `status --json` reports.
fn status_max_speed(d: &Daemon) -> u64 {
    d.status()["max_speed"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_file_at_5m_arrives_intact_and_takes_at_least_the_limited_time() {
    let (a, b) = pair(None).await;
    let src = a.dirs.root.path().join("big.bin");
    random_file(&src, (50 * MIB) as usize, 5);
    let rate = 5 * MIB;
    let started = Instant::now();
    let id = api::send(
        &a,
        &[&src],
        &b.peer_addr(),
        Some(pb::SendOptions {
            max_speed: rate,
            ..Default::default()
        }),
    )
    .await;
    let running = wait_for(&a, &id, SHORT, |t| {
        state(t) == pb::TransferState::Running || api::is_final(t)
    })
    .await;
    assert_eq!(running.max_speed, rate, "the Transfer shows its limit");
    let t = wait_done(&a, &id, T).await;
    let elapsed = started.elapsed();
    api::expect_completed(&t);
    assert_eq!(t.max_speed, rate);
    assert_same_file(&b.dirs.download_dir.join("big.bin"), &src);
    let floor = least_time(t.wire_bytes, rate);
    eprintln!(
        "50 MiB at 5 MiB/s: {elapsed:.2?} ({:.3} MiB/s; at least {floor:.2?} by the limit)",
        (50 * MIB) as f64 / MIB as f64 / elapsed.as_secs_f64()
    );
    assert!(
        elapsed >= floor,
        "{} wire bytes at {rate} B/s took {elapsed:?}, less than the {floor:?} the limit allows",
        t.wire_bytes
    );
    // The receiver does not limit, and says so.
    let received = wait_done(&b, &id, SHORT).await;
    assert_eq!(received.max_speed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2pctl_limit_changes_a_running_transfer_and_unlimited_lets_it_finish() {
    let (a, b) = pair(None).await;
    let src = a.dirs.root.path().join("slow.bin");
    random_file(&src, (16 * MIB) as usize, 6);
    // 64 KiB/s: 16 MiB would take over four minutes.
    let out = a.ctl(&[
        "send",
        src.to_str().unwrap(),
        "--peer",
        &b.peer_addr(),
        "--detach",
        "--max-speed",
        "64K",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let t = wait_for(&a, &id, SHORT, |t| {
        state(t) == pb::TransferState::Running || api::is_final(t)
    })
    .await;
    assert_eq!(state(&t), pb::TransferState::Running, "{}", t.error);
    assert_eq!(t.max_speed, 64 << 10);

    // The table and the JSON list show the limit.
    let table = text(&a.ctl(&["transfers"]).stdout);
    assert!(
        table.contains("LIMIT") && table.contains("64.0 KiB/s"),
        "{table}"
    );
    let list: serde_json::Value =
        serde_json::from_slice(&a.ctl(&["transfers", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["max_speed"], 65_536);

    // A limit below the minimum is refused over the API, and the transfer keeps its limit.
    let err = api::client(&a)
        .await
        .set_transfer_limit(pb::SetTransferLimitRequest {
            id: id.clone(),
            max_speed: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("minimum"), "{}", err.message());

    // A short id works, --json prints the transfer with its new limit.
    let out = a.ctl(&["limit", &id[..8], "128K", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let changed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(changed["id"], id.as_str());
    assert_eq!(changed["max_speed"], 131_072);
    assert_eq!(changed["state"], "running");

    let out = a.ctl(&["limit", &id[..8], "unlimited"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("transfer {id}: no speed limit of its own")
    );
    // The chunk that was waiting goes at once: the transfer finishes long before the four
    // minutes the old limit needed.
    let t = wait_done(&a, &id, T).await;
    api::expect_completed(&t);
    assert_eq!(t.max_speed, 0, "the Transfer shows the new limit");
    assert_same_file(&b.dirs.download_dir.join("slow.bin"), &src);

    // An ended transfer, an incoming one and an unknown id are refused with the reason.
    let out = a.ctl(&["limit", &id, "1M"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("failed precondition") && err.contains("already ended"),
        "{err}"
    );
    let out = b.ctl(&["limit", &id, "1M"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("failed precondition")
            && err.contains("incoming")
            && err.contains("sending daemon"),
        "{err}"
    );
    let out = a.ctl(&["limit", "no-such-transfer", "1M"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
    let err = api::client(&a)
        .await
        .set_transfer_limit(pb::SetTransferLimitRequest {
            id: "no-such-transfer".into(),
            max_speed: MIB,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_config_limit_throttles_and_sighup_changes_it_live() {
    let (a, b) = pair(Some("max_speed = \"4M\"\n")).await;
    let rate = 4 * MIB;
    assert_eq!(status_max_speed(&a), rate);
    let status = text(&a.ctl(&["status"]).stdout);
    assert!(
        status.contains("limit:      4.0 MiB/s for all outgoing transfers"),
        "{status}"
    );

    // No limit of its own: the global one sets the pace.
    let src = a.dirs.root.path().join("global.bin");
    random_file(&src, (20 * MIB) as usize, 7);
    let started = Instant::now();
    let id = api::send(&a, &[&src], &b.peer_addr(), None).await;
    let t = wait_done(&a, &id, T).await;
    let elapsed = started.elapsed();
    api::expect_completed(&t);
    assert_eq!(t.max_speed, 0, "the transfer has no limit of its own");
    assert_same_file(&b.dirs.download_dir.join("global.bin"), &src);
    let floor = least_time(t.wire_bytes, rate);
    assert!(
        elapsed >= floor,
        "20 MiB under a global 4 MiB/s took {elapsed:?}, less than {floor:?}"
    );

    // SIGHUP: a much lower limit…
    let reload = |config: &str| {
        std::fs::write(&a.dirs.config_file, config).unwrap();
        p2p_tests::signal(a.pid, libc::SIGHUP);
    };
    reload("max_speed = \"64K\"\n");
    assert!(
        wait_until(SHORT, || status_max_speed(&a) == 65_536),
        "{}",
        a.stderr()
    );
    let src2 = a.dirs.root.path().join("reloaded.bin");
    random_file(&src2, (16 * MIB) as usize, 8);
    let id2 = api::send(&a, &[&src2], &b.peer_addr(), None).await;
    let t = wait_for(&a, &id2, SHORT, |t| {
        state(t) == pb::TransferState::Running || api::is_final(t)
    })
    .await;
    assert_eq!(state(&t), pb::TransferState::Running, "{}", t.error);
    // …a bad value is logged and keeps the running limit…
    reload("max_speed = \"fast\"\n");
    assert!(
        wait_until(SHORT, || a.stderr().contains("config not reloaded")),
        "{}",
        a.stderr()
    );
    assert!(a.stderr().contains("max_speed"), "{}", a.stderr());
    assert_eq!(status_max_speed(&a), 65_536);
    // …and unlimited lets the running transfer finish (16 MiB at 64 KiB/s would be 4 minutes).
    reload("max_speed = \"unlimited\"\n");
    assert!(
        wait_until(SHORT, || status_max_speed(&a) == 0),
        "{}",
        a.stderr()
    );
    let t = wait_done(&a, &id2, T).await;
    api::expect_completed(&t);
    assert_same_file(&b.dirs.download_dir.join("reloaded.bin"), &src2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_below_the_minimum_is_refused_by_send() {
    let (a, b) = pair(None).await;
    let src = a.dirs.root.path().join("f.txt");
    std::fs::write(&src, b"f").unwrap();
    let err = api::try_send(
        &a,
        &[&src],
        &b.peer_addr(),
        Some(pb::SendOptions {
            max_speed: 1023,
            ..Default::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("1 KiB/s"), "{}", err.message());
}

#[test]
fn bad_rates_are_usage_errors_and_a_bad_config_value_names_file_and_key() {
    // p2pctl checks RATE before it needs a daemon: exit 2, the problem named.
    let nowhere = Path::new("/nonexistent/p2pd.sock");
    for (rate, reason) in [
        ("", "not a speed"),
        ("10X", "unknown unit"),
        ("-1", "not a speed"),
        ("1.5.5M", "not a number"),
        ("99999999999T", "too large"),
        ("5", "below the minimum"),
    ] {
        for args in [
            &["limit", "0123abcd", rate][..],
            &["send", "/", "--peer", "127.0.0.1:1", "--max-speed", rate],
        ] {
            let out = p2p_tests::ctl(nowhere, args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?}: {}",
                text(&out.stderr)
            );
            let err = text(&out.stderr);
            assert!(
                err.contains(reason) && err.contains("RATE"),
                "{args:?}: {err}"
            );
        }
    }

    // p2pd: a bad --max-speed is a usage error, a bad config value names the file and the key.
    let out = p2p_tests::run_p2pd(&["--max-speed", "fast"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--max-speed"),
        "{}",
        text(&out.stderr)
    );
    let dirs = DaemonDirs::new();
    for (config, problem) in [
        ("max_speed = \"10X\"\n", "unknown unit"),
        ("max_speed = \"\"\n", "not a speed"),
        ("max_speed = -1\n", "negative"),
        ("max_speed = 100\n", "below the minimum"),
        ("max_speed = true\n", "expected a speed"),
    ] {
        std::fs::write(&dirs.config_file, config).unwrap();
        let config_file = dirs.config_file.to_str().unwrap();
        let args = dirs.args_with(&["--listen", "127.0.0.1:0", "--config", config_file]);
        let out = p2p_tests::run_p2pd(&args, Duration::from_secs(10));
        assert!(!out.status.success(), "{config}");
        let err = text(&out.stderr);
        assert!(
            err.contains("`max_speed`")
                && err.contains(dirs.config_file.to_str().unwrap())
                && err.contains(problem),
            "{config}: {err}"
        );
        assert!(!dirs.socket.exists(), "nothing started for {config}");
    }
}
