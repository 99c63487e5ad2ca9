//! Showing a transfer while it runs: two-tier progress bars on a terminal, plain lines at most
//! about once a second elsewhere (and with `NO_COLOR`), or each event as one JSON line.
//! Also the one-line texts for progress, events and the final summary.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2p_client::units;
use p2p_client::words::{direction_short, is_final, peer_label, short_id, state_word};
use p2p_proto::control::v1 as pb;

use crate::json;

/// How often a plain progress line may be printed per transfer; state changes always print.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Writes one line to stdout; a closed pipe is an error instead of a panic.
///
/// # Errors
/// Stdout cannot be written (e.g. the reading end of a pipe closed).
pub(crate) fn stdout_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Whether progress bars can be drawn: stdout and stderr are terminals and `NO_COLOR` is unset.
/// Otherwise the plain line fallback is used.
pub(crate) fn bars_possible() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    !no_color
        && !dumb
        && std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal()
        && !ProgressDrawTarget::stderr().is_hidden()
}

/// The progress display of `p2pctl send`.
pub(crate) enum SendView {
    /// Progress bars on stderr.
    Bars(Bars),
    /// Plain lines on stderr.
    Lines(RateLimiter),
    /// Each event as one JSON object per line on stdout.
    Json,
}

impl SendView {
    /// The display that suits the output: JSON if asked for, else bars or plain lines.
    pub(crate) fn new(json: bool) -> Self {
        if json {
            Self::Json
        } else if bars_possible() {
            Self::Bars(Bars::new())
        } else {
            Self::Lines(RateLimiter::new(LINE_INTERVAL))
        }
    }

    /// Shows one event.
    ///
    /// # Errors
    /// Stdout cannot be written (JSON mode).
    pub(crate) fn event(&mut self, event: &pb::TransferEvent) -> Result<()> {
        match self {
            Self::Json => stdout_line(&json::transfer_event(event).to_string()),
            Self::Bars(bars) => {
                if let Some(t) = &event.transfer {
                    bars.update(t);
                }
                Ok(())
            }
            Self::Lines(limiter) => {
                if let Some(t) = &event.transfer {
                    if limiter.allow(&t.id, t.state, Instant::now()) {
                        if let Some(line) = send_progress_line(t) {
                            eprintln!("{line}");
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Removes the bars, before the summary or an error is printed.
    pub(crate) fn finish(&mut self) {
        if let Self::Bars(bars) = self {
            bars.clear();
        }
    }
}

/// An overall bar (bytes, speed, ETA, files) and, for more than one file, a bar of the current
/// file.
pub(crate) struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    file: Option<ProgressBar>,
    /// Whether the overall bar shows the transfer running (rather than waiting for a decision).
    running: bool,
}

const WAITING_TEMPLATE: &str = "{prefix:>9} {spinner} {msg}";
const OVERALL_TEMPLATE: &str = "{prefix:>9} [{bar:30}] {binary_bytes}/{binary_total_bytes}  {binary_bytes_per_sec}  ETA {eta}  {msg}";
const FILE_TEMPLATE: &str = "          [{bar:30}] {binary_bytes}/{binary_total_bytes}  {wide_msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0).with_style(style(WAITING_TEMPLATE)));
        overall.enable_steady_tick(Duration::from_millis(120));
        Self {
            multi,
            overall,
            file: None,
            running: false,
        }
    }

    fn update(&mut self, t: &pb::Transfer) {
        let sending = t.direction == pb::Direction::Send as i32;
        self.overall
            .set_prefix(if sending { "sending" } else { "receiving" });
        self.overall.set_length(t.total_bytes);
        self.overall.set_position(t.bytes_done);
        let waiting = match pb::TransferState::try_from(t.state) {
            Ok(pb::TransferState::Offered) => Some(format!(
                "waiting for {} to accept {} ({})",
                peer_label(t),
                units::files(t.total_files),
                units::bytes(t.total_bytes)
            )),
            Ok(pb::TransferState::WaitingAccept) => Some("waiting for your accept".to_owned()),
            Ok(
                pb::TransferState::Retrying
                | pb::TransferState::Paused
                | pb::TransferState::Interrupted,
            ) => Some(pause_text(t)),
            _ => None,
        };
        if let Some(message) = waiting {
            self.overall.set_message(message);
            return;
        }
        if !self.running {
            // Speed and ETA count from here, not from the offer.
            self.running = true;
            self.overall.set_style(style(OVERALL_TEMPLATE));
            self.overall.reset_eta();
            self.overall.reset_elapsed();
        }
        self.overall
            .set_message(format!("{}/{} files", t.files_done, t.total_files));
        if t.total_files > 1 && !t.current_file.is_empty() {
            let file = self.file.get_or_insert_with(|| {
                self.multi
                    .add(ProgressBar::new(0).with_style(style(FILE_TEMPLATE)))
            });
            file.set_length(t.current_file_size);
            file.set_position(t.current_file_bytes);
            file.set_message(t.current_file.clone());
        }
    }

    fn clear(&mut self) {
        if let Some(file) = self.file.take() {
            file.finish_and_clear();
        }
        self.overall.finish_and_clear();
        // Best effort: the terminal may be gone.
        let _ = self.multi.clear();
    }
}

/// Lets through at most one line per transfer per interval, but always a change of state.
pub(crate) struct RateLimiter {
    every: Duration,
    /// Per transfer id: the state and time of the last line. Ended transfers are dropped.
    last: HashMap<String, (i32, Instant)>,
}

impl RateLimiter {
    /// A limiter of one line per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether a line about transfer `id`, now in `state`, may be printed at `now`.
    pub(crate) fn allow(&mut self, id: &str, state: i32, now: Instant) -> bool {
        let allowed = match self.last.get(id) {
            Some(&(last_state, at)) => last_state != state || now.duration_since(at) >= self.every,
            None => true,
        };
        if is_final(state) {
            self.last.remove(id);
        } else if allowed {
            self.last.insert(id.to_owned(), (state, now));
        }
        allowed
    }
}

/// `3/10 files, 12.0 MiB / 40.0 MiB, 8.2 MiB/s`, and ` (limit 10.0 MiB/s)` when the transfer
/// has a speed limit of its own.
fn progress_text(t: &pb::Transfer) -> String {
    format!(
        "{}/{} files, {} / {}, {}{}",
        t.files_done,
        t.total_files,
        units::bytes(t.bytes_done),
        units::bytes(t.total_bytes),
        units::speed(t.bytes_per_second),
        limit_suffix(t),
    )
}

/// ` (limit 10.0 MiB/s)`, or nothing for a transfer without a limit of its own.
fn limit_suffix(t: &pb::Transfer) -> String {
    if t.max_speed == 0 {
        String::new()
    } else {
        format!(" (limit {})", units::speed(t.max_speed))
    }
}

/// The plain progress line of `send` (and any one transfer), or `None` once it has ended (the
/// summary follows then): `sending 3/10 files, 12.0 MiB / 40.0 MiB, 8.2 MiB/s`.
pub(crate) fn send_progress_line(t: &pb::Transfer) -> Option<String> {
    let verb = if t.direction == pb::Direction::Receive as i32 {
        "receiving"
    } else {
        "sending"
    };
    match pb::TransferState::try_from(t.state) {
        Ok(pb::TransferState::Offered) => Some(format!(
            "offered {} ({}) to {}, waiting for acceptance",
            units::files(t.total_files),
            units::bytes(t.total_bytes),
            peer_label(t)
        )),
        Ok(pb::TransferState::WaitingAccept) => Some(format!(
            "{} ({}) from {} waits for your accept",
            units::files(t.total_files),
            units::bytes(t.total_bytes),
            peer_label(t)
        )),
        Ok(
            pb::TransferState::Retrying
            | pb::TransferState::Paused
            | pb::TransferState::Interrupted,
        ) => Some(format!("{verb} {}: {}", progress_text(t), pause_text(t))),
        _ if is_final(t.state) => None,
        _ => Some(format!("{verb} {}", progress_text(t))),
    }
}

/// Why a transfer is not moving: `retrying in 4 s (attempt 2): session to peer lost`,
/// `paused`, `interrupted: REASON; waiting for the sender`.
pub(crate) fn pause_text(t: &pb::Transfer) -> String {
    match pb::TransferState::try_from(t.state) {
        Ok(pb::TransferState::Retrying) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let wait = Duration::from_millis(t.next_attempt_at_ms.saturating_sub(now));
            format!(
                "retrying in {} (attempt {}): {}",
                units::duration_coarse(wait),
                t.attempt + 1,
                t.error
            )
        }
        Ok(pb::TransferState::Paused) => "paused (`p2pctl resume` continues it)".to_owned(),
        Ok(pb::TransferState::Interrupted) => {
            format!("interrupted: {}; waiting for the sender", t.error)
        }
        _ => String::new(),
    }
}

/// Duration of an ended transfer, if the daemon gave both times.
fn elapsed(t: &pb::Transfer) -> Option<Duration> {
    (t.finished_at_ms >= t.started_at_ms && t.started_at_ms > 0)
        .then(|| Duration::from_millis(t.finished_at_ms - t.started_at_ms))
}

/// `sent 10 files (40.0 MiB) to kitchen-pc in 2.1 s, 19.0 MiB/s` (`received … from …` for the
/// other direction).
pub(crate) fn completed_summary(t: &pb::Transfer) -> String {
    let (verb, to) = if t.direction == pb::Direction::Receive as i32 {
        ("received", "from")
    } else {
        ("sent", "to")
    };
    format!(
        "{verb} {} ({}) {to} {}{}",
        units::files(t.total_files),
        units::bytes(t.total_bytes),
        peer_label(t),
        time_and_speed(t)
    )
}

/// ` in 2.1 s, 19.0 MiB/s` for an ended transfer; parts the daemon gave no data for are left out.
fn time_and_speed(t: &pb::Transfer) -> String {
    let mut text = String::new();
    let elapsed = elapsed(t);
    if let Some(d) = elapsed {
        text.push_str(&format!(" in {}", units::duration(d)));
    }
    let speed = match elapsed {
        Some(d) if d.as_millis() > 0 => {
            u64::try_from(u128::from(t.total_bytes) * 1000 / d.as_millis()).unwrap_or(u64::MAX)
        }
        _ => t.bytes_per_second,
    };
    if speed > 0 {
        text.push_str(&format!(", {}", units::speed(speed)));
    }
    text
}

/// Why an ended transfer did not complete: `transfer ID failed: REASON`, `transfer ID was
/// rejected: REASON`, `transfer ID was cancelled`. `None` if it completed.
pub(crate) fn failure_text(t: &pb::Transfer) -> Option<String> {
    let what = match pb::TransferState::try_from(t.state) {
        Ok(pb::TransferState::Completed) => return None,
        Ok(pb::TransferState::Failed) => "failed",
        Ok(pb::TransferState::Rejected) => "was rejected",
        Ok(pb::TransferState::Cancelled) => "was cancelled",
        _ => {
            return Some(format!(
                "transfer {} did not end: the daemon stopped reporting while it was {}",
                t.id,
                state_word(t.state)
            ));
        }
    };
    Some(match t.error.trim() {
        "" => format!("transfer {} {what}", t.id),
        reason => format!("transfer {} {what}: {reason}", t.id),
    })
}

/// One line of `p2pctl watch`:
/// `01234567 send running kitchen-pc 3/10 files, 12.0 MiB / 40.0 MiB (30%), 8.2 MiB/s`.
pub(crate) fn event_line(t: &pb::Transfer) -> String {
    let head = format!(
        "{} {} {} {}",
        short_id(&t.id),
        direction_short(t.direction),
        state_word(t.state),
        peer_label(t)
    );
    let tail = match pb::TransferState::try_from(t.state) {
        Ok(pb::TransferState::Completed) => format!(
            "{} ({}){}",
            units::files(t.total_files),
            units::bytes(t.total_bytes),
            time_and_speed(t)
        ),
        Ok(
            pb::TransferState::Failed | pb::TransferState::Rejected | pb::TransferState::Cancelled,
        ) => t.error.clone(),
        Ok(pb::TransferState::Offered | pb::TransferState::WaitingAccept) => format!(
            "{} ({}) {}",
            units::files(t.total_files),
            units::bytes(t.total_bytes),
            t.roots.join(", ")
        ),
        Ok(
            pb::TransferState::Retrying
            | pb::TransferState::Paused
            | pb::TransferState::Interrupted,
        ) => format!(
            "{} / {} ({}): {}",
            units::bytes(t.bytes_done),
            units::bytes(t.total_bytes),
            units::percent(t.bytes_done, t.total_bytes),
            pause_text(t)
        ),
        _ => format!(
            "{}/{} files, {} / {} ({}), {}{}",
            t.files_done,
            t.total_files,
            units::bytes(t.bytes_done),
            units::bytes(t.total_bytes),
            units::percent(t.bytes_done, t.total_bytes),
            units::speed(t.bytes_per_second),
            limit_suffix(t),
        ),
    };
    if tail.is_empty() {
        head
    } else {
        format!("{head} {tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::sample_transfer;

    fn ended(state: pb::TransferState, error: &str) -> pb::Transfer {
        pb::Transfer {
            state: state as i32,
            files_done: 10,
            bytes_done: 40 << 20,
            finished_at_ms: 1_700_000_002_100,
            error: error.to_owned(),
            ..sample_transfer()
        }
    }

    #[test]
    fn a_transfer_that_waits_says_why_and_until_when() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let retrying = pb::Transfer {
            state: pb::TransferState::Retrying as i32,
            attempt: 2,
            next_attempt_at_ms: now + 4_500,
            error: "session to peer lost".into(),
            ..sample_transfer()
        };
        let text = pause_text(&retrying);
        assert!(
            text.starts_with("retrying in 4s (attempt 3): session to peer lost")
                || text.starts_with("retrying in 3s (attempt 3)"),
            "{text}"
        );
        let line = send_progress_line(&retrying).unwrap();
        assert!(
            line.starts_with("sending ") && line.contains("retrying in"),
            "{line}"
        );
        assert!(
            event_line(&retrying).contains("retrying"),
            "{}",
            event_line(&retrying)
        );

        let paused = pb::Transfer {
            state: pb::TransferState::Paused as i32,
            ..sample_transfer()
        };
        assert!(pause_text(&paused).contains("p2pctl resume"));
        let interrupted = pb::Transfer {
            state: pb::TransferState::Interrupted as i32,
            direction: pb::Direction::Receive as i32,
            error: "session to peer lost".into(),
            ..sample_transfer()
        };
        assert_eq!(
            pause_text(&interrupted),
            "interrupted: session to peer lost; waiting for the sender"
        );
        // Should the daemon stop reporting meanwhile, `send` says in which state.
        assert!(failure_text(&paused).is_some_and(|t| t.contains("paused")));
    }

    #[test]
    fn the_fallback_line_tells_files_bytes_and_speed() {
        let t = sample_transfer();
        assert_eq!(
            send_progress_line(&t).as_deref(),
            Some("sending 3/10 files, 12.0 MiB / 40.0 MiB, 8.2 MiB/s (limit 10.0 MiB/s)")
        );
        let unlimited = pb::Transfer {
            max_speed: 0,
            ..t.clone()
        };
        assert_eq!(
            send_progress_line(&unlimited).as_deref(),
            Some("sending 3/10 files, 12.0 MiB / 40.0 MiB, 8.2 MiB/s")
        );
        let receiving = pb::Transfer {
            direction: pb::Direction::Receive as i32,
            ..t.clone()
        };
        assert!(
            send_progress_line(&receiving)
                .unwrap()
                .starts_with("receiving 3/10")
        );
        let offered = pb::Transfer {
            state: pb::TransferState::Offered as i32,
            ..t
        };
        assert_eq!(
            send_progress_line(&offered).as_deref(),
            Some("offered 10 files (40.0 MiB) to kitchen-pc, waiting for acceptance")
        );
        assert_eq!(
            send_progress_line(&ended(pb::TransferState::Completed, "")),
            None
        );
    }

    #[test]
    fn the_summary_names_count_size_peer_time_and_speed() {
        let t = ended(pb::TransferState::Completed, "");
        assert_eq!(
            completed_summary(&t),
            "sent 10 files (40.0 MiB) to kitchen-pc in 2.1 s, 19.0 MiB/s"
        );
        let anonymous = pb::Transfer {
            peer_name: String::new(),
            direction: pb::Direction::Receive as i32,
            total_files: 1,
            ..t
        };
        assert!(
            completed_summary(&anonymous)
                .starts_with("received 1 file (40.0 MiB) from 192.0.2.7:14567 in 2.1 s"),
        );
        assert_eq!(failure_text(&ended(pb::TransferState::Completed, "")), None);
    }

    #[test]
    fn failures_say_what_happened_and_why() {
        let t = ended(pb::TransferState::Failed, "peer went away");
        assert_eq!(
            failure_text(&t).unwrap(),
            "transfer 0123456789abcdef failed: peer went away"
        );
        let t = ended(pb::TransferState::Rejected, "no space");
        assert_eq!(
            failure_text(&t).unwrap(),
            "transfer 0123456789abcdef was rejected: no space"
        );
        let t = ended(pb::TransferState::Cancelled, "");
        assert_eq!(
            failure_text(&t).unwrap(),
            "transfer 0123456789abcdef was cancelled"
        );
        let running = sample_transfer();
        assert!(
            failure_text(&running)
                .unwrap()
                .contains("while it was running")
        );
    }

    #[test]
    fn watch_lines() {
        assert_eq!(
            event_line(&sample_transfer()),
            "01234567 send running kitchen-pc 3/10 files, 12.0 MiB / 40.0 MiB (30%), 8.2 MiB/s (limit 10.0 MiB/s)"
        );
        assert_eq!(
            event_line(&ended(pb::TransferState::Completed, "")),
            "01234567 send completed kitchen-pc 10 files (40.0 MiB) in 2.1 s, 19.0 MiB/s"
        );
        assert_eq!(
            event_line(&ended(pb::TransferState::Failed, "disk full")),
            "01234567 send failed kitchen-pc disk full"
        );
    }

    #[test]
    fn lines_are_limited_to_one_per_interval_except_state_changes() {
        let running = pb::TransferState::Running as i32;
        let mut limiter = RateLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(limiter.allow("a", pb::TransferState::Offered as i32, t0));
        assert!(limiter.allow("a", running, t0), "state change");
        assert!(!limiter.allow("a", running, t0 + Duration::from_millis(200)));
        assert!(
            limiter.allow("b", running, t0 + Duration::from_millis(200)),
            "per transfer"
        );
        assert!(limiter.allow("a", running, t0 + Duration::from_millis(1000)));
        assert!(!limiter.allow("a", running, t0 + Duration::from_millis(1500)));
        assert!(limiter.allow(
            "a",
            pb::TransferState::Completed as i32,
            t0 + Duration::from_millis(1600)
        ));
        assert!(
            !limiter.last.contains_key("a"),
            "ended transfers are forgotten"
        );
    }

    #[test]
    fn bar_templates_are_valid() {
        assert!(ProgressStyle::with_template(WAITING_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(OVERALL_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(FILE_TEMPLATE).is_ok());
    }
}
