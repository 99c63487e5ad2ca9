//! A bad link: two network namespaces joined by the user-space relay `tun-delay` (this kernel
//! has no `netem`), which delays, rate-limits and drops packets at random, and can be stopped
//! (SIGSTOP) to stall the link; a daemon at either end.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Namespaces, ip};
use crate::daemon::{Daemon, DaemonDirs, DaemonOptions, bin};
use crate::process::{blocking, signal};

/// Address of end A (point to point with B).
pub const ADDR_A: &str = "10.97.0.1";
/// Address of end B.
pub const ADDR_B: &str = "10.97.0.2";

static LINK_COUNTER: AtomicU32 = AtomicU32::new(0);

/// An end of a [`Link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The first namespace, at [`ADDR_A`].
    A,
    /// The second namespace, at [`ADDR_B`].
    B,
}

/// Two namespaces joined by `tun-delay`. Dropping it stops the relay, then deletes the
/// namespaces (killing what is left in them).
#[derive(Debug)]
pub struct Link {
    /// Namespace of end A.
    pub a: String,
    /// Namespace of end B.
    pub b: String,
    relay: Child,
    relay_log: PathBuf,
    _dir: tempfile::TempDir,
    // Dropped after the relay is gone.
    _namespaces: Namespaces,
}

impl Link {
    /// Creates the namespaces and starts the relay between them: `delay_ms` each way,
    /// `loss_percent` of the packets dropped at random, at most `rate_mbit`. Panics (failing
    /// the test) with the reason if it cannot.
    pub fn new(delay_ms: u32, loss_percent: f64, rate_mbit: u32) -> Link {
        let k = LINK_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("p2pl-{}-{k}", std::process::id());
        let (a, b) = (format!("{base}-a"), format!("{base}-b"));
        let mut namespaces = Namespaces::default();
        for ns in [&a, &b] {
            namespaces.add(ns).unwrap_or_else(|e| {
                panic!("tests on a link of namespaces need root and iproute2: {e:#}")
            });
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

    /// Starts a daemon at `end`, listening on that end's address, with `extra` arguments.
    pub async fn start(&self, end: End, extra: &[&str]) -> Daemon {
        let (ns, addr) = match end {
            End::A => (&self.a, ADDR_A),
            End::B => (&self.b, ADDR_B),
        };
        let mut args = vec!["--listen".to_owned(), format!("{addr}:0")];
        args.extend(extra.iter().map(|s| s.to_string()));
        let opts = DaemonOptions {
            args,
            netns: Some(ns.clone()),
            ..Default::default()
        };
        Daemon::launch(DaemonDirs::new(), opts).await
    }

    /// Stops (true) or continues (false) the relay: nothing crosses the link meanwhile.
    pub fn stall(&self, stalled: bool) {
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
    pub fn lost(&self) -> u64 {
        let before = std::fs::read_to_string(&self.relay_log)
            .unwrap_or_default()
            .len();
        signal(self.relay.id(), libc::SIGUSR1);
        let deadline = Instant::now() + Duration::from_secs(5);
        blocking(|| {
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
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        signal(self.relay.id(), libc::SIGCONT);
        let _ = self.relay.kill();
        let _ = self.relay.wait();
    }
}
