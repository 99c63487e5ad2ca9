//! Bandwidth limits: a token bucket whose rate can change at any time, and the waiting that
//! throttles a sending thread through one or more of them.
//!
//! This module owns the arithmetic of the limit ([`TokenBucket`], a pure state machine driven by
//! the caller's clock, so that its accuracy is proven by deterministic tests) and the shared,
//! thread-safe [`RateLimiter`] that the transfer registry hands to each outgoing transfer: one
//! per transfer, plus one global limiter shared by all of them.
//!
//! # Model
//!
//! Tokens are bytes. The bucket is credited `rate` tokens per second, up to [`BURST`] worth of
//! tokens more than it has handed out. A sender *reserves* the bytes of a chunk before the chunk
//! is queued, and may queue it once the bucket's credit has caught up with the reservation
//! ("pay before sending"). Reservations are kept as positions in a running total, so several
//! senders sharing one bucket (the global limit) are served in the order they reserved, and the
//! bytes that went out by time `t` never exceed `burst + rate × t`. A chunk larger than the
//! burst is fine: it just waits for its own bytes.
//!
//! Everything is counted in nano-bytes (bytes × 10⁹) so that `rate × elapsed nanoseconds` is an
//! exact integer: no rounding drift however long a transfer runs.
//!
//! A rate of 0 means unlimited. Then [`RateLimiter::reserve`] is one atomic load: no lock, no
//! clock read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How much the bucket may save up while a sender is slower than the limit: the tokens of 100 ms
/// at the current rate.
///
/// Why 100 ms: the burst is the only thing that lets the limiter exceed its rate, and over a
/// window of `T` seconds it can add at most `BURST / T` to the measured rate: 1 % over 10 s,
/// whatever the rate, well inside the ±5 % the limit promises. It is also the slack a sender has
/// between two chunks: a sender that comes back up to 100 ms late (disk read, compression, a
/// full socket, the scheduler of a busy 2-core machine) loses none of its rate, because the
/// credit it earned meanwhile is kept. A burst in bytes that does not follow the rate would be
/// either far too large at low rates (a 1 MiB burst is 8 s at 128 KiB/s) or lose rate at high
/// ones.
pub const BURST: Duration = Duration::from_millis(100);

// The floor of every limit, and its check, are shared with the clients (p2pctl refuses `5`,
// meant as 5M, before asking the daemon): one definition, in p2p-client. Lower values are
// almost certainly a unit left out, and a 1 MiB chunk would wait longer than a day.
pub use p2p_client::units::{MIN_RATE, RateTooLow, check_rate};

/// Nano-bytes per byte.
const NANOS: u128 = 1_000_000_000;

/// The wait was cancelled: the transfer is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// A reservation made with [`TokenBucket::reserve`]: the bytes may go once the bucket's credit
/// reaches `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Position in the bucket's running total of reservations (nano-bytes).
    end: u128,
    /// The bytes reserved, for a refund.
    bytes: u64,
}

/// The arithmetic of a token bucket with a changeable rate, driven by the caller's clock: `now`
/// is any monotonic time (the same origin for every call). No locking, no sleeping, no clock of
/// its own — [`RateLimiter`] adds those.
///
/// Invariant: `credited <= reserved + burst(rate)` while the rate is not 0; a reservation whose
/// `end` is at most `credited` may go.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    /// Tokens credited so far, nano-bytes.
    credited: u128,
    /// Tokens reserved so far, nano-bytes.
    reserved: u128,
    /// When `credited` was last brought up to date.
    last: Duration,
}

/// The burst of `rate`, in nano-bytes: `rate × BURST`.
fn burst(rate: u64) -> u128 {
    u128::from(rate).saturating_mul(BURST.as_nanos())
}

impl TokenBucket {
    /// A bucket at `rate` bytes per second (0 = unlimited), full: a burst may go at once.
    pub fn new(rate: u64, now: Duration) -> Self {
        TokenBucket {
            rate,
            credited: burst(rate),
            reserved: 0,
            last: now,
        }
    }

    /// The rate in bytes per second; 0 = unlimited.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The burst at the current rate, in bytes.
    pub fn burst_bytes(&self) -> u64 {
        u64::try_from(burst(self.rate) / NANOS).unwrap_or(u64::MAX)
    }

    /// Credits the tokens earned since the last call, up to the burst.
    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_nanos();
        self.last = self.last.max(now);
        if self.rate == 0 {
            return;
        }
        let cap = self.reserved.saturating_add(burst(self.rate));
        if self.credited < cap {
            let earned = u128::from(self.rate).saturating_mul(elapsed);
            self.credited = self.credited.saturating_add(earned).min(cap);
        }
    }

    /// Changes the rate from `now` on. Tokens earned until now count at the old rate; a debt
    /// (bytes reserved but not yet earned) is paid at the new rate, or forgiven when the new
    /// rate is 0 (unlimited). Going from unlimited to a limit starts with a full bucket.
    pub fn set_rate(&mut self, rate: u64, now: Duration) {
        self.refill(now);
        if rate == 0 {
            // Every outstanding reservation may go now.
            self.credited = self.credited.max(self.reserved);
        } else if self.rate == 0 {
            self.credited = self.reserved.saturating_add(burst(rate));
        } else {
            self.credited = self.credited.min(self.reserved.saturating_add(burst(rate)));
        }
        self.rate = rate;
    }

    /// Reserves `bytes` at `now`; [`wait`](Self::wait) tells when they may go.
    pub fn reserve(&mut self, bytes: u64, now: Duration) -> Ticket {
        self.refill(now);
        if self.rate == 0 {
            return Ticket { end: 0, bytes };
        }
        self.reserved = self
            .reserved
            .saturating_add(u128::from(bytes).saturating_mul(NANOS));
        Ticket {
            end: self.reserved,
            bytes,
        }
    }

    /// How long from `now` until the bytes of `ticket` may go; zero when they may go now.
    pub fn wait(&mut self, ticket: Ticket, now: Duration) -> Duration {
        self.refill(now);
        if self.rate == 0 || self.credited >= ticket.end {
            return Duration::ZERO;
        }
        let missing = ticket.end - self.credited;
        let nanos = missing.div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Gives back the tokens of a reservation whose bytes will not be sent (the sender was
    /// cancelled while it waited), so that other senders sharing the bucket do not pay for them.
    pub fn refund(&mut self, ticket: Ticket, now: Duration) {
        self.refill(now);
        if self.rate == 0 {
            return;
        }
        let cap = self.reserved.saturating_add(burst(self.rate));
        self.credited = self
            .credited
            .saturating_add(u128::from(ticket.bytes).saturating_mul(NANOS))
            .min(cap);
    }
}

/// A thread-safe token bucket with a live-changeable rate: a transfer's own limit, or the
/// daemon's global limit shared by every outgoing transfer.
#[derive(Debug)]
pub struct RateLimiter {
    // The bucket's rate, mirrored outside the lock so that the unlimited case costs one atomic
    // load. Written only under the bucket's lock (in `set_rate`), read anywhere.
    rate: AtomicU64,
    // The arithmetic; held only for a few arithmetic operations, never across a wait.
    bucket: Mutex<TokenBucket>,
    // Wakes the senders waiting on this limiter when its rate changes, so a new limit (or
    // "unlimited") applies at once rather than after the sleep computed under the old one.
    changed: Notify,
    // The origin of the bucket's clock.
    origin: Instant,
}

impl RateLimiter {
    /// A limiter at `rate` bytes per second (0 = unlimited), with a full bucket.
    pub fn new(rate: u64) -> Self {
        RateLimiter {
            rate: AtomicU64::new(rate),
            bucket: Mutex::new(TokenBucket::new(rate, Duration::ZERO)),
            changed: Notify::new(),
            origin: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        match self.bucket.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The rate in bytes per second; 0 = unlimited.
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Changes the rate (0 = unlimited); senders waiting on this limiter re-plan at once.
    pub fn set_rate(&self, rate: u64) {
        {
            let mut bucket = self.lock();
            bucket.set_rate(rate, self.now());
            self.rate.store(rate, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }

    /// Reserves `bytes`. `None` when they may go at once (always when unlimited: one atomic
    /// load); otherwise the ticket to [`wait`](Self::wait) for.
    pub fn reserve(&self, bytes: u64) -> Option<Ticket> {
        if self.rate.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = self.now();
        let mut bucket = self.lock();
        let ticket = bucket.reserve(bytes, now);
        (!bucket.wait(ticket, now).is_zero()).then_some(ticket)
    }

    /// Waits until the bytes of `ticket` may go, re-planning whenever the rate changes.
    ///
    /// # Errors
    /// [`Cancelled`] as soon as `cancel` is cancelled; the ticket's tokens are then not given
    /// back (see [`refund`](Self::refund)).
    pub async fn wait(&self, ticket: Ticket, cancel: &CancellationToken) -> Result<(), Cancelled> {
        loop {
            // Registered before the bucket is read, so a rate change in between still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let now = self.now();
                self.lock().wait(ticket, now)
            };
            if wait.is_zero() {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Cancelled),
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Gives back the tokens of a ticket whose bytes will not be sent.
    pub fn refund(&self, ticket: Ticket) {
        let now = self.now();
        self.lock().refund(ticket, now);
    }
}

/// Waits until `bytes` may go through every limiter of `limiters` (a transfer's own and the
/// global one): the bytes are reserved on all of them at once, so the slowest sets the pace and
/// the waits overlap instead of adding up.
///
/// # Errors
/// [`Cancelled`] as soon as `cancel` is cancelled; the reservations are refunded.
pub async fn acquire(
    limiters: &[&RateLimiter],
    bytes: u64,
    cancel: &CancellationToken,
) -> Result<(), Cancelled> {
    let held = reserve_all(limiters, bytes);
    wait_all(&held, cancel).await
}

/// [`acquire`] for a blocking thread (the sending side reads and compresses on one): returns at
/// once, without entering the runtime, when every limiter is unlimited or the bytes may go now.
///
/// # Errors
/// [`Cancelled`] as soon as `cancel` is cancelled.
pub fn blocking_acquire(
    limiters: &[&RateLimiter],
    bytes: u64,
    rt: &tokio::runtime::Handle,
    cancel: &CancellationToken,
) -> Result<(), Cancelled> {
    let held = reserve_all(limiters, bytes);
    if held.is_empty() {
        return Ok(());
    }
    rt.block_on(wait_all(&held, cancel))
}

/// The reservations that must be waited for (none when every limiter lets the bytes go now).
fn reserve_all<'a>(limiters: &[&'a RateLimiter], bytes: u64) -> Vec<(&'a RateLimiter, Ticket)> {
    let mut held = Vec::new();
    for limiter in limiters {
        if let Some(ticket) = limiter.reserve(bytes) {
            held.push((*limiter, ticket));
        }
    }
    held
}

async fn wait_all(
    held: &[(&RateLimiter, Ticket)],
    cancel: &CancellationToken,
) -> Result<(), Cancelled> {
    // The tickets clear by time, all at once: waiting for them one after the other takes as
    // long as the longest.
    for (limiter, ticket) in held {
        if let Err(e) = limiter.wait(*ticket, cancel).await {
            for (limiter, ticket) in held {
                limiter.refund(*ticket);
            }
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A sender on a simulated clock: reserves `chunk` bytes, waits as the bucket says (waking
    /// `late` after that), "sends", then spends `work` before reserving the next chunk. Returns
    /// the simulated times at which each chunk went.
    struct Sim {
        bucket: TokenBucket,
        now: Duration,
        sent: Vec<(Duration, u64)>,
    }

    impl Sim {
        fn new(rate: u64) -> Self {
            Sim {
                bucket: TokenBucket::new(rate, Duration::ZERO),
                now: Duration::ZERO,
                sent: Vec::new(),
            }
        }

        /// Sends chunks until `bytes` more went; returns the time the last one went.
        fn send(&mut self, bytes: u64, chunk: u64, late: Duration, work: Duration) -> Duration {
            let mut done = 0;
            while done < bytes {
                let ticket = self.bucket.reserve(chunk, self.now);
                let wait = self.bucket.wait(ticket, self.now);
                if !wait.is_zero() {
                    self.now += wait + late;
                }
                assert!(self.bucket.wait(ticket, self.now).is_zero());
                self.sent.push((self.now, chunk));
                done += chunk;
                self.now += work;
            }
            self.now - work
        }

        /// Bytes that went in `[from, to)`.
        fn bytes_between(&self, from: Duration, to: Duration) -> u64 {
            self.sent
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|(_, n)| n)
                .sum()
        }
    }

    fn assert_within_5_percent(measured: f64, target: f64, what: &str) {
        let ratio = measured / target;
        assert!(
            (0.95..=1.05).contains(&ratio),
            "{what}: measured {measured:.0} B/s for a target of {target:.0} B/s (×{ratio:.4})"
        );
    }

    #[test]
    fn fifty_mib_at_5_mib_per_second_take_10_seconds_within_5_percent() {
        let mut sim = Sim::new(5 * MIB);
        let last = sim.send(50 * MIB, MIB, Duration::ZERO, Duration::ZERO);
        // Pay before sending: the last chunk goes when 50 MiB minus the burst are earned.
        let burst = 5 * MIB / 10;
        assert_eq!(burst, sim.bucket.burst_bytes());
        assert_eq!(last, Duration::from_millis(9900));
        assert_within_5_percent(
            (50 * MIB) as f64 / last.as_secs_f64(),
            (5 * MIB) as f64,
            "whole transfer",
        );
        // Any 10 s window once running.
        let mut sim = Sim::new(5 * MIB);
        sim.send(200 * MIB, MIB, Duration::ZERO, Duration::ZERO);
        for start in [0.0, 1.0, 7.3, 12.5, 29.9] {
            let bytes = sim.bytes_between(secs(start), secs(start + 10.0));
            assert_within_5_percent(bytes as f64 / 10.0, (5 * MIB) as f64, "10 s window");
        }
    }

    #[test]
    fn a_late_or_busy_sender_keeps_its_rate_up_to_the_burst() {
        // Wakes 30 ms late after every wait and spends 20 ms on each chunk: 50 ms of slack per
        // 200 ms chunk, inside the 100 ms burst, so nothing is lost.
        let mut sim = Sim::new(5 * MIB);
        let last = sim.send(50 * MIB, MIB, secs(0.030), secs(0.020));
        assert_within_5_percent(
            (50 * MIB) as f64 / last.as_secs_f64(),
            (5 * MIB) as f64,
            "late sender",
        );
    }

    #[test]
    fn chunks_larger_and_smaller_than_the_burst_keep_the_rate() {
        for chunk in [4 << 10, 64 << 10, MIB, 16 * MIB] {
            let mut sim = Sim::new(5 * MIB);
            let last = sim.send(50 * MIB, chunk, Duration::ZERO, Duration::ZERO);
            let total: u64 = sim.sent.iter().map(|(_, n)| n).sum();
            // Never faster than burst + rate × t.
            let burst = sim.bucket.burst_bytes();
            assert!(
                last.as_secs_f64() >= (total - burst) as f64 / (5 * MIB) as f64 - 1e-9,
                "chunk {chunk}: {last:?}"
            );
            assert_within_5_percent(
                total as f64 / last.as_secs_f64(),
                (5 * MIB) as f64,
                &format!("chunk {chunk}"),
            );
        }
    }

    #[test]
    fn a_rate_change_mid_way_applies_from_then_on() {
        let mut sim = Sim::new(5 * MIB);
        let t = sim.send(25 * MIB, MIB, Duration::ZERO, Duration::ZERO);
        assert!(t < secs(5.0));
        // Lower: 2 MiB/s from 5 s on.
        sim.now = secs(5.0);
        sim.bucket.set_rate(2 * MIB, sim.now);
        let start = sim.now;
        let end = sim.send(20 * MIB, MIB, Duration::ZERO, Duration::ZERO);
        assert_within_5_percent(
            (20 * MIB) as f64 / (end - start).as_secs_f64(),
            (2 * MIB) as f64,
            "after lowering",
        );
        // Higher: 8 MiB/s.
        sim.now = end;
        sim.bucket.set_rate(8 * MIB, sim.now);
        let start = sim.now;
        let end = sim.send(80 * MIB, MIB, Duration::ZERO, Duration::ZERO);
        assert_within_5_percent(
            (80 * MIB) as f64 / (end - start).as_secs_f64(),
            (8 * MIB) as f64,
            "after raising",
        );
        assert_eq!(sim.bucket.rate(), 8 * MIB);
    }

    #[test]
    fn a_debt_is_paid_at_the_new_rate_or_forgiven_when_unlimited() {
        let mut b = TokenBucket::new(MIN_RATE, Duration::ZERO);
        // 1 MiB at 1 KiB/s: about 1024 s minus the burst.
        let ticket = b.reserve(MIB, Duration::ZERO);
        assert!(b.wait(ticket, Duration::ZERO) > secs(1000.0));
        // Ten seconds later the rate goes up to 1 MiB/s: the rest takes under a second.
        b.set_rate(MIB, secs(10.0));
        let w = b.wait(ticket, secs(10.0));
        assert!(w > secs(0.9) && w < secs(1.0), "{w:?}");
        // Unlimited: it may go at once, and so does anything reserved later.
        b.set_rate(0, secs(10.5));
        assert_eq!(b.wait(ticket, secs(10.5)), Duration::ZERO);
        let t2 = b.reserve(100 * MIB, secs(10.5));
        assert_eq!(b.wait(t2, secs(10.5)), Duration::ZERO);
        // Back to a limit: a full bucket, then the rate.
        b.set_rate(MIB, secs(11.0));
        let t3 = b.reserve(MIB / 10, secs(11.0));
        assert_eq!(b.wait(t3, secs(11.0)), Duration::ZERO, "the burst");
        let t4 = b.reserve(MIB, secs(11.0));
        let w = b.wait(t4, secs(11.0));
        assert!(w > secs(0.999) && w <= secs(1.0), "{w:?}");
    }

    #[test]
    fn an_idle_sender_saves_up_at_most_the_burst() {
        let mut b = TokenBucket::new(5 * MIB, Duration::ZERO);
        let t = b.reserve(5 * MIB, Duration::ZERO);
        b.wait(t, Duration::ZERO);
        // An hour idle, then 10 MiB at once: only the burst is free.
        let now = secs(3600.0);
        let t = b.reserve(10 * MIB, now);
        let w = b.wait(t, now);
        let burst = b.burst_bytes();
        assert_eq!(burst, MIB / 2);
        // (10 MiB - 0.5 MiB) / 5 MiB/s
        assert_eq!(w, Duration::from_millis(1900));
    }

    #[test]
    fn two_limits_give_the_slower_pace_and_a_shared_one_is_split() {
        // A transfer's own 10 MiB/s under a global 4 MiB/s: 4 MiB/s.
        let (mut own, mut global) = (
            TokenBucket::new(10 * MIB, Duration::ZERO),
            TokenBucket::new(4 * MIB, Duration::ZERO),
        );
        let mut now = Duration::ZERO;
        for _ in 0..40 {
            let (a, b) = (own.reserve(MIB, now), global.reserve(MIB, now));
            now += own.wait(a, now).max(global.wait(b, now));
        }
        assert_within_5_percent(
            (40 * MIB) as f64 / now.as_secs_f64(),
            (4 * MIB) as f64,
            "own and global",
        );
        // Two unlimited transfers taking turns on one global 4 MiB/s bucket: 4 MiB/s together.
        let mut global = TokenBucket::new(4 * MIB, Duration::ZERO);
        let mut clocks = [Duration::ZERO; 2];
        let mut total = 0;
        while clocks[0].min(clocks[1]) < secs(10.0) {
            let i = usize::from(clocks[1] < clocks[0]);
            let t = global.reserve(MIB, clocks[i]);
            clocks[i] += global.wait(t, clocks[i]);
            total += MIB;
        }
        let end = clocks[0].max(clocks[1]);
        assert_within_5_percent(total as f64 / end.as_secs_f64(), (4 * MIB) as f64, "shared");
    }

    #[test]
    fn a_refund_lets_the_next_reservation_go_sooner() {
        let mut b = TokenBucket::new(MIB, Duration::ZERO);
        let first = b.reserve(2 * MIB, Duration::ZERO);
        let second = b.reserve(MIB, Duration::ZERO);
        let before = b.wait(second, Duration::ZERO);
        b.refund(first, Duration::ZERO);
        let after = b.wait(second, Duration::ZERO);
        assert_eq!(before - after, secs(2.0));
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let mut b = TokenBucket::new(u64::MAX, Duration::ZERO);
        let t = b.reserve(u64::MAX, Duration::MAX);
        // One second's worth of bytes, less the burst of 100 ms.
        assert_eq!(b.wait(t, Duration::MAX), Duration::from_millis(900));
        let mut b = TokenBucket::new(MIN_RATE, Duration::ZERO);
        let t = b.reserve(u64::MAX, Duration::ZERO);
        assert!(b.wait(t, Duration::ZERO) > secs(1e9));
        // A clock that goes backwards is treated as standing still.
        let t = b.reserve(1, secs(5.0));
        assert!(b.wait(t, secs(1.0)) > Duration::ZERO);
    }

    #[test]
    fn rates_below_the_minimum_are_refused() {
        assert_eq!(check_rate(0), Ok(()));
        assert_eq!(check_rate(MIN_RATE), Ok(()));
        assert_eq!(check_rate(u64::MAX), Ok(()));
        let err = check_rate(5).unwrap_err().to_string();
        assert!(
            err.contains("below the minimum") && err.contains("unlimited"),
            "{err}"
        );
    }

    #[test]
    fn unlimited_takes_the_fast_path_and_leaves_the_bucket_alone() {
        let l = RateLimiter::new(0);
        for _ in 0..1000 {
            assert_eq!(l.reserve(MIB), None);
        }
        let bucket = l.lock().clone();
        assert_eq!((bucket.reserved, bucket.last), (0, Duration::ZERO));
        // A limit far above the traffic: reserved and let go at once.
        let l = RateLimiter::new(u64::MAX / 2);
        assert_eq!(l.reserve(MIB), None);
        assert_ne!(l.lock().reserved, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_cancel_ends_a_long_wait_and_refunds_it() {
        let l = std::sync::Arc::new(RateLimiter::new(MIN_RATE));
        let cancel = CancellationToken::new();
        let rt = tokio::runtime::Handle::current();
        let waiter = {
            let (l, cancel) = (l.clone(), cancel.clone());
            // 1 MiB at 1 KiB/s would take 17 minutes.
            tokio::task::spawn_blocking(move || blocking_acquire(&[&l], MIB, &rt, &cancel))
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the cancelled wait ends at once")
            .expect("join");
        assert_eq!(result, Err(Cancelled));
        // The refund leaves the bucket about full again.
        assert_eq!(l.reserve(MIN_RATE / 20), None);
    }

    #[tokio::test]
    async fn a_rate_change_wakes_the_waiters() {
        let own = RateLimiter::new(MIN_RATE);
        let global = RateLimiter::new(0);
        let cancel = CancellationToken::new();
        let started = std::time::Instant::now();
        let both = [&own, &global];
        let wait = acquire(&both, MIB, &cancel);
        let change = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            own.set_rate(0);
        };
        let (result, ()) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(wait, change) })
                .await
                .expect("unlimited lets the waiter go at once");
        assert_eq!(result, Ok(()));
        assert!(started.elapsed() < Duration::from_secs(5));
        // A limited global one paces the next bytes, lowered and raised live.
        global.set_rate(MIN_RATE);
        let ticket = global.reserve(MIB).expect("must wait");
        let raise = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            global.set_rate(100 * MIB);
        };
        let (result, ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(global.wait(ticket, &cancel), raise)
        })
        .await
        .expect("a higher rate re-plans the wait");
        assert_eq!(result, Ok(()));
    }
}
