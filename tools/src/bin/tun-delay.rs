//! `tun-delay`: a user-space link emulator between two network namespaces.
//!
//! This kernel has no `netem` qdisc, so latency comes from here. The relay creates one TUN
//! device in each of two named network namespaces (`ip netns add A`; it enters each with
//! setns(2) on `/var/run/netns/NAME` before opening `/dev/net/tun`, so each device is born in
//! its namespace) and forwards every IP packet from one device to the other:
//!
//! - through a FIFO bottleneck of `--rate-mbit` (a packet leaves the bottleneck when the one
//!   before it has been serialised; the link buffer holds at most `--queue-bytes`, packets
//!   beyond that are tail-dropped like on a switch port),
//! - then after a fixed one-way `--delay-ms`;
//! - with `--loss-percent P`, each packet is first dropped at random with probability P %
//!   (independently per packet and direction; `--seed` makes the pattern repeatable), as on
//!   a lossy radio link — the fault tests use this, the benchmarks do not.
//!
//! TCP runs end to end in the two kernels, so window scaling, congestion control, socket
//! buffer auto-tuning and the bandwidth-delay product behave as on a real path. Each device is
//! gone when the process ends (SIGTERM or SIGKILL are both fine). SIGUSR1 prints the
//! per-direction counters (packets, bytes, drops, deepest queue) to stderr; SIGTERM prints them
//! and exits.
//!
//! Once both devices exist it prints `ready` on stdout; the caller then configures them, e.g.
//! `ip -n A addr add 10.77.0.1 peer 10.77.0.2 dev tunA && ip -n A link set tunA up` and the
//! mirror image in B.
//!
//! With `--offload` the devices are created with `IFF_VNET_HDR` and TSO/checksum offload, so
//! the kernel hands over GSO packets of up to 64 KiB (each carrying a `virtio_net_hdr`) and the
//! relay forwards them whole: the TCP segments on the emulated wire still have the device's MTU
//! (1500), but the relay does ~40× fewer system calls. The bottleneck counts such a packet as
//! the bytes of all its segments (headers repeated); a tail drop then loses all of them, a
//! burst loss harsher than a real switch port — which is why the default buffer is two
//! bandwidth-delay products, deep enough that the benchmark's flows see no drops.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Clone)]
#[command(
    about = "Emulates a delayed, rate-limited link between two network namespaces (TUN relay)"
)]
struct Cli {
    /// First network namespace (as in `ip netns list`).
    #[arg(long)]
    ns_a: String,
    /// Second network namespace.
    #[arg(long)]
    ns_b: String,
    /// TUN device name created in the first namespace.
    #[arg(long, default_value = "tunA")]
    dev_a: String,
    /// TUN device name created in the second namespace.
    #[arg(long, default_value = "tunB")]
    dev_b: String,
    /// One-way delay in milliseconds, each direction (RTT = 2×).
    #[arg(long, default_value_t = 25.0)]
    delay_ms: f64,
    /// Bottleneck rate per direction in Mbit/s (IP bytes); 0 = unlimited.
    #[arg(long, default_value_t = 1000.0)]
    rate_mbit: f64,
    /// Link buffer per direction in bytes [default: two bandwidth-delay products].
    #[arg(long)]
    queue_bytes: Option<u64>,
    /// Bytes of framing added to every packet for the rate (38 = Ethernet incl. preamble/IFG).
    #[arg(long, default_value_t = 0)]
    overhead: u64,
    /// Pass GSO packets (virtio_net_hdr, TSO offload) instead of MTU-sized packets.
    #[arg(long)]
    offload: bool,
    /// Drop each packet at random with this probability, in percent (0..=50).
    #[arg(long, default_value_t = 0.0, value_parser = loss_percent)]
    loss_percent: f64,
    /// Seed of the random drops.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print per-direction counters to stderr every N seconds (0 = only at the end).
    #[arg(long, default_value_t = 0)]
    stats: u64,
}

fn loss_percent(text: &str) -> Result<f64, String> {
    let p: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=50.0).contains(&p) {
        return Err(format!("{p} is outside 0..=50 percent"));
    }
    Ok(p)
}

/// xorshift64*: a small, seedable generator for the random drops (quality is plenty here).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in 0..1.
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
/// `struct virtio_net_hdr` (no mergeable buffers): the default vnet header size of TUN.
const VNET_HDR_LEN: usize = 10;
/// A packet is written this early rather than sleeping for less than it.
const SLACK: Duration = Duration::from_micros(20);

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Enters the network namespace in `path` (this thread only).
fn enter_netns(path: &str) -> Result<(), String> {
    let ns = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    // SAFETY: plain system call on a valid descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(os_err(&format!("setns({path})")));
    }
    Ok(())
}

/// Creates TUN device `name` in namespace `ns` and returns its descriptor.
fn create_tun(ns: &str, name: &str, offload: bool) -> Result<File, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!("bad device name {name:?}"));
    }
    enter_netns(&format!("/var/run/netns/{ns}"))?;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | if offload { IFF_VNET_HDR } else { 0 },
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReq lays out.
    if unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(os_err(&format!("TUNSETIFF {name} in netns {ns}")));
    }
    if offload {
        let flags: libc::c_uint = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } != 0 {
            return Err(os_err(&format!("TUNSETOFFLOAD {name}")));
        }
    }
    Ok(dev)
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicU64,
    write_errors: AtomicU64,
    max_queue: AtomicU64,
}

/// Packets waiting for their delivery time, in delivery order.
struct Pipe {
    q: Mutex<VecDeque<(Instant, Vec<u8>)>>,
    cv: Condvar,
}

/// Bytes a packet occupies on the emulated wire.
fn wire_len(pkt: &[u8], offload: bool, overhead: u64) -> u64 {
    if !offload {
        return pkt.len() as u64 + overhead;
    }
    let ip = &pkt[VNET_HDR_LEN.min(pkt.len())..];
    let gso_type = pkt.get(1).copied().unwrap_or(0);
    let hdr_len = u64::from(u16::from_le_bytes([pkt[2], pkt[3]]));
    let gso_size = u64::from(u16::from_le_bytes([pkt[4], pkt[5]]));
    if gso_type == 0 || gso_size == 0 || hdr_len == 0 || ip.len() as u64 <= hdr_len {
        return ip.len() as u64 + overhead;
    }
    let payload = ip.len() as u64 - hdr_len;
    let segs = payload.div_ceil(gso_size);
    payload + segs * (hdr_len + overhead)
}

fn reader(
    src: Arc<File>,
    pipe: Arc<Pipe>,
    cfg: Cli,
    counters: Arc<Counters>,
    mut rng: Rng,
) -> Result<(), String> {
    let loss = cfg.loss_percent / 100.0;
    let delay = Duration::from_secs_f64(cfg.delay_ms / 1000.0);
    let bits_per_sec = cfg.rate_mbit * 1e6;
    let queue_limit = cfg
        .queue_bytes
        .unwrap_or_else(|| (2.0 * bits_per_sec / 8.0 * 2.0 * delay.as_secs_f64()) as u64)
        .max(64 * 1024);
    let mut buf = vec![0u8; 70_000];
    let mut next_free = Instant::now();
    loop {
        // SAFETY: reading into a buffer we own, of the stated length.
        let n = unsafe { libc::read(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("read: {e}"));
        }
        if n == 0 {
            return Ok(());
        }
        let pkt = &buf[..n as usize];
        if loss > 0.0 && rng.unit() < loss {
            counters.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        let deliver_at = if bits_per_sec > 0.0 {
            let start = next_free.max(now);
            let backlog_bytes = ((start - now).as_secs_f64() * bits_per_sec / 8.0) as u64;
            counters
                .max_queue
                .fetch_max(backlog_bytes, Ordering::Relaxed);
            let len = wire_len(pkt, cfg.offload, cfg.overhead);
            if backlog_bytes + len > queue_limit {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            next_free = start + Duration::from_secs_f64(len as f64 * 8.0 / bits_per_sec);
            next_free + delay
        } else {
            now + delay
        };
        counters.packets.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(pkt.len() as u64, Ordering::Relaxed);
        let mut q = pipe.q.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = q.is_empty();
        q.push_back((deliver_at, pkt.to_vec()));
        drop(q);
        if was_empty {
            pipe.cv.notify_one();
        }
    }
}

fn writer(dst: Arc<File>, pipe: Arc<Pipe>, counters: Arc<Counters>) {
    let mut q = pipe.q.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let Some(&(at, _)) = q.front() else {
            q = pipe.cv.wait(q).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let now = Instant::now();
        if at > now + SLACK {
            drop(q);
            thread::sleep(at - now);
            q = pipe.q.lock().unwrap_or_else(|p| p.into_inner());
            continue;
        }
        // Take every packet that is due, then write them without holding the lock.
        let mut due = Vec::new();
        while let Some(&(at, _)) = q.front() {
            if at > now + SLACK {
                break;
            }
            if let Some((_, p)) = q.pop_front() {
                due.push(p);
            }
        }
        drop(q);
        for p in due {
            // SAFETY: writing a buffer we own, of the stated length.
            let n = unsafe { libc::write(dst.as_raw_fd(), p.as_ptr().cast(), p.len()) };
            if n < 0 {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        q = pipe.q.lock().unwrap_or_else(|p| p.into_inner());
    }
}

fn report(name: &str, c: &Counters) {
    eprintln!(
        "tun-delay {name}: {} packets, {} bytes, {} dropped (queue full), {} lost (random), {} write errors, max queue {} bytes",
        c.packets.load(Ordering::Relaxed),
        c.bytes.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.lost.load(Ordering::Relaxed),
        c.write_errors.load(Ordering::Relaxed),
        c.max_queue.load(Ordering::Relaxed),
    );
}

fn run(cli: Cli) -> Result<(), String> {
    // Precise sleeps for the delay line (the default timer slack is 50 µs).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| format!("cannot open own netns: {e}"))?;
    let a = Arc::new(create_tun(&cli.ns_a, &cli.dev_a, cli.offload)?);
    let b = Arc::new(create_tun(&cli.ns_b, &cli.dev_b, cli.offload)?);
    // SAFETY: plain system call on a valid descriptor.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(os_err("setns(back)"));
    }
    let ab = Arc::new(Counters::default());
    let ba = Arc::new(Counters::default());
    let mut handles = Vec::new();
    for (src, dst, counters, name, seed) in [
        (a.clone(), b.clone(), ab.clone(), "a->b", cli.seed),
        (b.clone(), a.clone(), ba.clone(), "b->a", cli.seed ^ 0x5555),
    ] {
        let pipe = Arc::new(Pipe {
            q: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
        });
        let (p, c) = (pipe.clone(), counters.clone());
        thread::Builder::new()
            .name(format!("write {name}"))
            .spawn(move || writer(dst, p, c))
            .map_err(|e| format!("thread: {e}"))?;
        let cfg = cli.clone();
        handles.push(
            thread::Builder::new()
                .name(format!("read {name}"))
                .spawn(move || reader(src, pipe, cfg, counters, Rng::new(seed)))
                .map_err(|e| format!("thread: {e}"))?,
        );
    }
    if cli.stats > 0 {
        let (ab, ba) = (ab.clone(), ba.clone());
        let every = Duration::from_secs(cli.stats);
        thread::spawn(move || {
            loop {
                thread::sleep(every);
                report("a->b", &ab);
                report("b->a", &ba);
            }
        });
    }
    // Signals: print the counters (and leave on SIGTERM/SIGINT; the devices vanish with the
    // descriptors).
    let (ab2, ba2) = (ab.clone(), ba.clone());
    thread::spawn(move || wait_for_signal(ab2, ba2));
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => return Err("reader thread panicked".into()),
        }
    }
    Ok(())
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: initialising a sigset_t through the libc API.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        set
    }
}

/// SIGUSR1 prints the counters; SIGTERM/SIGINT print them and end the process.
fn wait_for_signal(ab: Arc<Counters>, ba: Arc<Counters>) {
    let set = signal_set();
    loop {
        let mut sig = 0;
        // SAFETY: sigwait on signals that `main` blocked in every thread before spawning any.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        report("a->b", &ab);
        report("b->a", &ba);
        if sig != libc::SIGUSR1 {
            std::process::exit(0);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Block the signals in every thread (inherited), so `wait_for_signal` receives them.
    let set = signal_set();
    // SAFETY: setting the signal mask before any other thread exists.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tun-delay: {e}");
            ExitCode::FAILURE
        }
    }
}
