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

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use p2p_proto::control::v1 as pb;
use p2p_tests::api::{self, random_file, sha256_file, trust_each_other, wait_done, wait_for};
use p2p_tests::netns::{Namespaces, ip};
use p2p_tests::{Daemon, DaemonDirs, DaemonOptions, bin, signal};

const MIB: u64 = 1 << 20;
const ADDR_A: &str = "10.97.0.1";
const ADDR_B: &str = "10.97.0.2";
const LONG: Duration = Duration::from_secs(120);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Two namespaces joined by `tun-delay`. Dropping it stops the relay, then deletes the
/// namespaces (killing what is left in them).
struct Link {
    a: String,
    b: String,
    relay: Child,
    relay_log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    // Dropped after the relay is gone.
    _namespaces: Namespaces,
}

impl Link {
    fn new(delay_ms: u32, loss_percent: f64, rate_mbit: u32) -> Link {
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("p2pl-{}-{k}", std::process::id());
        let (a, b) = (format!("{base}-a"), format!("{base}-b"));
        let mut namespaces = Namespaces::default();
        for ns in [&a, &b] {
            namespaces
                .add(ns)
                .unwrap_or_else(|e| panic!("the lossy-link tests need root and iproute2: {e}"));
        }
        let dir = tempfile::tempdir().unwrap();
        let relay_log = dir.path().join("relay.err");
        let mut relay = Command::new(bin("tun-delay"))
            .args([
                "--ns-a", &a, "--ns-b", &b, "--dev-a", "p2pla", "--dev-b", "p2plb",
            ])
            .args(["--delay-ms", &delay_ms.to_string()])
            .args(["--rate-mbit", &rate_mbit.to_string()])
            .arg(format!("--loss-percent={loss_percent}"))
            .args(["--seed", &(u64::from(k) + 7).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&relay_log).unwrap())
            .spawn()
            .expect("spawn tun-delay");
        let stdout = relay.stdout.take().expect("relay stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        assert!(
            ready.contains("ready"),
            "tun-delay did not start: {}",
            std::fs::read_to_string(&relay_log).unwrap_or_default()
        );
        for (ns, dev, me, peer) in [(&a, "p2pla", ADDR_A, ADDR_B), (&b, "p2plb", ADDR_B, ADDR_A)] {
            ip(&["-n", ns, "addr", "add", me, "peer", peer, "dev", dev]).unwrap();
            ip(&["-n", ns, "link", "set", dev, "up"]).unwrap();
        }
        Link {
            a,
            b,
            relay,
            relay_log,
            _dir: dir,
            _namespaces: namespaces,
        }
    }

    /// Stops (true) or continues (false) the relay: nothing crosses the link meanwhile.
    fn stall(&self, stalled: bool) {
        signal(
            self.relay.id(),
            if stalled {
                libc::SIGSTOP
            } else {
                libc::SIGCONT
            },
        );
    }

    /// Packets the relay dropped at random so far, both directions.
    fn lost(&self) -> u64 {
        let before = std::fs::read_to_string(&self.relay_log)
            .unwrap_or_default()
            .len();
        signal(self.relay.id(), libc::SIGUSR1);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(&self.relay_log).unwrap_or_default();
            let fresh = &log[before.min(log.len())..];
            let counts: Vec<u64> = fresh
                .lines()
                .filter_map(|l| {
                    let (head, _) = l.split_once(" lost (random)")?;
                    head.rsplit(", ").next()?.trim().parse().ok()
                })
                .collect();
            if counts.len() == 2 {
                return counts.iter().sum();
            }
            assert!(
                Instant::now() < deadline,
                "no counters from tun-delay: {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        signal(self.relay.id(), libc::SIGCONT);
        let _ = self.relay.kill();
        let _ = self.relay.wait();
    }
}

async fn start_in(ns: &str, addr: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--listen".to_owned(), format!("{addr}:0")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let opts = DaemonOptions {
        args,
        netns: Some(ns.to_owned()),
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || Daemon::start_with(DaemonDirs::new(), opts))
        .await
        .expect("start daemon")
}

/// A in the first namespace, B (`--accept auto`) in the second, trusting each other.
async fn pair(link: &Link) -> (Daemon, Daemon) {
    let (a, b) = tokio::join!(
        start_in(&link.a, ADDR_A, &[]),
        start_in(&link.b, ADDR_B, &["--accept", "auto"])
    );
    trust_each_other(&a, &b).await;
    (a, b)
}

fn payload(dir: &Path, size: u64) -> (std::path::PathBuf, String) {
    let p = dir.join("data.bin");
    random_file(&p, size as usize, 5);
    let sha = sha256_file(&p);
    (p, sha)
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
    let src = tempfile::tempdir().unwrap();
    let (path, sha) = payload(src.path(), 8 * MIB);
    let id = api::send(&a, &[&path], &api::peer_addr(&b), options(0)).await;
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
    let src = tempfile::tempdir().unwrap();
    let (path, sha) = payload(src.path(), 16 * MIB);
    let id = api::send(&a, &[&path], &api::peer_addr(&b), options(4 * MIB)).await;
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
