//! A LAN of network namespaces: a bridge namespace and `n` host namespaces on it, each with
//! an address of one /24 of its own; and [`LanDaemon`]s, daemons started in those hosts with
//! LAN discovery on. No packet reaches the host's networks.

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

use super::{Namespaces, ip};
use crate::daemon::{Daemon, DaemonDirs, DaemonOptions};

static LAN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bridge namespace and `n` host namespaces, each with a veth pair into the bridge and the
/// address 10.X.Y.(i+1)/24 on its `eth0`. Dropping it kills every process left in the
/// namespaces (by pid) and deletes them.
#[derive(Debug)]
pub struct Lan {
    // Deletes the namespaces (and kills what runs in them) when the test ends.
    namespaces: Namespaces,
    bridge: String,
    hosts: Vec<String>,
    addrs: Vec<Ipv4Addr>,
    /// The LAN's broadcast address.
    pub broadcast: Ipv4Addr,
}

impl Lan {
    /// Creates the namespaces; panics (failing the test) with the reason if it cannot.
    pub fn new(n: usize) -> Lan {
        if let Err(e) = Command::new("ip").arg("-V").output() {
            panic!(
                "tests on a LAN of namespaces need the `ip` command (Debian/Ubuntu package \
                 iproute2) and root: {e}"
            );
        }
        let pid = std::process::id();
        let k = LAN_COUNTER.fetch_add(1, Ordering::Relaxed);
        // 10.X.Y.0/24, distinct per LAN of this process (and likely across processes).
        let x = 100 + (k % 100) as u8;
        let y = (pid % 251) as u8;
        let mut lan = Lan {
            namespaces: Namespaces::default(),
            bridge: format!("p2pt-br-{pid}-{k}"),
            hosts: Vec::new(),
            addrs: Vec::new(),
            broadcast: Ipv4Addr::new(10, x, y, 255),
        };
        if let Err(e) = lan.build(n, x, y) {
            panic!(
                "cannot set up network namespaces (tests on a LAN need root and iproute2): \
                 {e:#}"
            );
        }
        lan
    }

    fn build(&mut self, n: usize, x: u8, y: u8) -> Result<()> {
        let br = self.bridge.clone();
        self.namespaces.add(&br)?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = format!("{br}-h{i}").replacen("-br-", "-", 1);
            self.namespaces.add(&host)?;
            self.hosts.push(host.clone());
            let addr = Ipv4Addr::new(10, x, y, i as u8 + 1);
            self.addrs.push(addr);
            let veth = format!("v{i}");
            ip(&[
                "-n", &br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &host,
            ])?;
            ip(&["-n", &br, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{addr}/24"),
                "brd",
                "+",
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Name of host namespace `i`.
    pub fn host(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// IPv4 address of host `i`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.addrs[i]
    }

    /// A UDP socket (broadcast allowed) that lives in host namespace `i`: it sends from that
    /// host's address whichever thread uses it.
    pub fn udp_socket(&self, i: usize) -> UdpSocket {
        let path = format!("/var/run/netns/{}", self.host(i));
        std::thread::spawn(move || {
            let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on this (short-lived) thread only; the fd is valid while `f` lives.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket in the namespace");
            s.set_broadcast(true).expect("SO_BROADCAST");
            s
        })
        .join()
        .expect("thread in the namespace")
    }

    /// Starts a daemon named `name` in host `host` and waits until it answers: discovery on
    /// (unless `extra` says otherwise), `--accept auto`, `--listen 0.0.0.0:0` (unless `extra`
    /// has `--listen`), then `extra`.
    pub fn start(&self, host: usize, name: &str, extra: &[&str]) -> LanDaemon {
        let mut args: Vec<String> = vec![
            "--name".into(),
            name.into(),
            "--accept".into(),
            "auto".into(),
        ];
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "0.0.0.0:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let opts = DaemonOptions {
            args,
            netns: Some(self.host(host).to_owned()),
            discovery: true,
            ..Default::default()
        };
        LanDaemon {
            daemon: Daemon::start_with(DaemonDirs::new(), opts),
            name: name.to_owned(),
            ip: self.addr(host),
        }
    }

    /// Starts the daemons `(host, name, extra args)` at the same time (see [`start`]) and
    /// waits until all answer.
    ///
    /// [`start`]: Self::start
    pub fn start_all(&self, specs: &[(usize, &str, &[&str])]) -> Vec<LanDaemon> {
        std::thread::scope(|s| {
            let started: Vec<_> = specs
                .iter()
                .map(|(host, name, extra)| s.spawn(move || self.start(*host, name, extra)))
                .collect();
            started
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }
}

/// A daemon in a host of a [`Lan`]: a [`Daemon`] (it derefs to one) with the name it was
/// given and its host's address.
#[derive(Debug)]
pub struct LanDaemon {
    daemon: Daemon,
    /// The name it was started with (`--name`).
    pub name: String,
    /// Its host's address on the LAN.
    pub ip: Ipv4Addr,
}

impl LanDaemon {
    /// Its peer port.
    pub fn listen_port(&self) -> u16 {
        self.daemon.listen_addr().port()
    }

    /// Its peer address as the others on the LAN see it (`IP:PORT`).
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.listen_port())
    }
}

impl Deref for LanDaemon {
    type Target = Daemon;

    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for LanDaemon {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}
