//! Transfers over an emulated bad link: two network namespaces the test creates, joined by
//! the user-space relay `tun-delay` (this kernel has no `netem`), with one daemon in each.
//!
//! - random packet loss and delay on the link: TCP recovers, the transfer completes with the
//!   right SHA-256;
//! - the whole link stalls (the relay is stopped with SIGSTOP) for longer than the session
//!   keepalive: the session dies, the sender waits and retries, and once the link is back the
//!   transfer resumes and completes on its own.
//!
//! Needs root and iproute2, like the discovery tests.

use std::time::Duration;

use p2p_proto::control::v1 as pb;
use p2p_tests::Daemon;
use p2p_tests::api::{self, trust_each_other, wait_done, wait_for};
use p2p_tests::files::{MIB, sha256_file, temp_random_file};
use p2p_tests::netns::{End, Link};

const LONG: Duration = Duration::from_secs(120);

/// A at one end, B (`--accept auto`) at the other, trusting each other.
async fn pair(link: &Link) -> (Daemon, Daemon) {
    let (a, b) = tokio::join!(
        link.start(End::A, &[]),
        link.start(End::B, &["--accept", "auto"])
    );
    trust_each_other(&a, &b).await;
    (a, b)
}

fn options(max_speed: u64) -> Option<pb::SendOptions> {
    Some(pb::SendOptions {
        compress: Some(false),
        max_speed,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_delay_on_the_link_do_not_stop_a_transfer() {
    let link = Link::new(2, 1.0, 200);
    let (a, b) = pair(&link).await;
    let (_src, path) = temp_random_file("data.bin", (8 * MIB) as usize, 5);
    let sha = sha256_file(&path);
    let id = api::send(&a, &[&path], &b.peer_addr(), options(0)).await;
    let t = wait_done(&a, &id, LONG).await;
    api::assert_completed(&t, &a, &b);
    assert_eq!(sha256_file(&b.dirs.download_dir.join("data.bin")), sha);
    let lost = link.lost();
    assert!(lost > 0, "the relay dropped packets on the way");
    eprintln!("{lost} packets lost on the link; {} attempt(s)", t.attempt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_is_survived() {
    let link = Link::new(1, 0.0, 500);
    let (a, b) = pair(&link).await;
    let (_src, path) = temp_random_file("data.bin", (16 * MIB) as usize, 5);
    let sha = sha256_file(&path);
    let id = api::send(&a, &[&path], &b.peer_addr(), options(4 * MIB)).await;
    wait_for(&b, &id, LONG, |t| t.bytes_done >= 4 * MIB).await;
    link.stall(true);
    // Keepalive gives up on the silent session within ~15 s; the sender then waits to retry.
    api::wait_state(
        &a,
        &id,
        pb::TransferState::Retrying,
        Duration::from_secs(45),
    )
    .await;
    link.stall(false);
    let t = wait_done(&a, &id, LONG).await;
    api::assert_completed(&t, &a, &b);
    assert!(t.attempt >= 2, "{t:?}");
    assert!(t.resumed_bytes > 0, "resumed, not restarted: {t:?}");
    assert_eq!(sha256_file(&b.dirs.download_dir.join("data.bin")), sha);
}
