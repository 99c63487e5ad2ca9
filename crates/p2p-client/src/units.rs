//! Sizes and speeds as people write and read them, for every program of the project: parsed
//! from p2pctl's flags and from p2pd's flags and config file alike (chunk sizes `64K`, `1MiB`;
//! speed limits `512K`, `10M`, `1G`, `unlimited`), and shown in the output (`12.3 MiB`,
//! `8.2 MiB/s`), with durations, ages and percentages.
//!
//! `K`, `M`, `G` and `T` (with or without `i`/`iB`) are binary, as in `dd` and `rsync`: `5M` is
//! 5 MiB = 5,242,880 bytes. Only the explicit decimal `KB`, `MB`, `GB` and `TB` mean powers of
//! 1000. A speed is a size per second (a trailing `/s` is allowed: `10M/s`, `10MiB/s`).
//! Sizes are shown in binary units (`KiB`, `MiB`, …) with one decimal.

use std::time::Duration;

/// The smallest speed limit, in bytes per second (0 means unlimited). The engine's rate limiter
/// uses this very constant: checking it here lets a client refuse `5` (meant as 5M) before
/// asking the daemon.
pub const MIN_RATE: u64 = 1024;

/// A speed limit below [`MIN_RATE`]. The message is the one the daemon gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a speed limit of {0} bytes/s is below the minimum of 1 KiB/s (did you leave out a unit, as in 5M?); use 0 or \"unlimited\" for no limit"
)]
pub struct RateTooLow(pub u64);

/// Checks a limit in bytes per second: 0 (unlimited) or at least [`MIN_RATE`].
///
/// # Errors
/// [`RateTooLow`] for 1 ..= 1023.
pub fn check_rate(bytes_per_second: u64) -> Result<(), RateTooLow> {
    if bytes_per_second != 0 && bytes_per_second < MIN_RATE {
        return Err(RateTooLow(bytes_per_second));
    }
    Ok(())
}

/// Why a size or speed was not understood. The messages quote the text and say what is
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// No number where one was expected.
    #[error(
        "{0:?} is not a size: expected a number with an optional unit, e.g. 4096, 64K, 1M or 1MiB"
    )]
    NotASize(String),
    /// No number where a speed was expected.
    #[error(
        "{0:?} is not a speed: expected bytes per second with an optional unit, e.g. 512K, 10M or 1G, or \"unlimited\""
    )]
    NotARate(String),
    /// The number part does not parse.
    #[error("{text:?} is not a size: {number:?} is not a number")]
    NotANumber {
        /// The whole text.
        text: String,
        /// Its number part.
        number: String,
    },
    /// An unknown unit.
    #[error(
        "unknown unit {unit:?} in {text:?}: use B, K/KiB, M/MiB, G/GiB or T/TiB (KB, MB, GB, TB are powers of 1000)"
    )]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// Its unit part.
        unit: String,
    },
    /// A fraction of a byte.
    #[error("{0:?} is not a whole number of bytes")]
    NotWhole(String),
    /// More than 64 bits hold.
    #[error("{0:?} is too large")]
    TooLarge(String),
    /// A speed below the limiter's minimum.
    #[error("{text:?}: {source}")]
    RateTooLow {
        /// The whole text.
        text: String,
        /// The check that failed.
        #[source]
        source: RateTooLow,
    },
}

/// Parses a byte size: `4096`, `64K`, `64KiB`, `1M`, `1.5M`, `2 GiB`, `1000KB`.
///
/// # Errors
/// The text is not a size, names an unknown unit, is not a whole number of bytes or does not
/// fit in 64 bits.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    if number.is_empty() {
        return Err(UnitError::NotASize(text.to_owned()));
    }
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(UnitError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    let too_big = || UnitError::TooLarge(text.to_owned());
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(factor).ok_or_else(too_big);
    }
    // A fraction such as 1.5M: exact in f64 for every size a chunk or file can have.
    let value: f64 = number.parse().map_err(|_| UnitError::NotANumber {
        text: text.to_owned(),
        number: number.to_owned(),
    })?;
    let total = value * factor as f64;
    if total.fract() != 0.0 {
        return Err(UnitError::NotWhole(text.to_owned()));
    }
    // `u64::MAX as f64` is 2^64, the first value that does not fit.
    if !(0.0..u64::MAX as f64).contains(&total) {
        return Err(too_big());
    }
    Ok(total as u64)
}

/// Parses a speed limit in bytes per second: `unlimited` (or `0`) is 0, otherwise a size as
/// [`parse_size`] reads it, optionally followed by `/s`: `512K`, `10M`, `1G`, `2.5MiB/s`,
/// `1000000`. A limit must be at least [`MIN_RATE`] (1 KiB/s).
///
/// # Errors
/// The text is not a size, or is a limit below the minimum.
pub fn parse_rate(text: &str) -> Result<u64, UnitError> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let size = trimmed
        .strip_suffix("/s")
        .or_else(|| trimmed.strip_suffix("/S"))
        .unwrap_or(trimmed);
    let rate = parse_size(size).map_err(|e| match e {
        UnitError::NotASize(_) => UnitError::NotARate(trimmed.to_owned()),
        other => other,
    })?;
    check_rate(rate).map_err(|source| UnitError::RateTooLow {
        text: trimmed.to_owned(),
        source,
    })?;
    Ok(rate)
}

// Formatting for the output.

const BINARY_UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `512 B`, `1.0 KiB`, `12.3 MiB`, `4.0 GiB`.
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    // Display only: f64 is far more precise than the one decimal shown.
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < BINARY_UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // 1023.96 KiB would round to "1024.0 KiB": show it as the next unit instead.
    if value >= 1023.95 && unit < BINARY_UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", BINARY_UNITS[unit])
}

/// `8.2 MiB/s`.
pub fn speed(bytes_per_second: u64) -> String {
    format!("{}/s", bytes(bytes_per_second))
}

/// A measured span: `0.4 s`, `2.1 s` below a minute, then as [`duration_coarse`].
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        duration_coarse(d)
    }
}

/// Whole units only: `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
pub fn duration_coarse(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// How long ago, in its largest whole unit: `just now` (under a second), `12s ago`, `3m ago`,
/// `2h ago`, `5d ago`.
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "just now".to_owned(),
        1..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `done` of `total` as a whole percentage, rounded down so that `100%` means finished.
/// Nothing to do (`total == 0`) counts as `100%`.
pub fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "100%".to_owned();
    }
    let pct = u128::from(done.min(total)) * 100 / u128::from(total);
    format!("{pct}%")
}

/// `1 file`, `3 files`.
pub fn files(n: u64) -> String {
    if n == 1 {
        "1 file".to_owned()
    } else {
        format!("{n} files")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        for (text, want) in [
            ("4096", 4096),
            ("0", 0),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("64KiB", 64 << 10),
            ("64 KiB", 64 << 10),
            ("1M", 1 << 20),
            ("1MiB", 1 << 20),
            ("1mi", 1 << 20),
            ("1.5M", 3 << 19),
            ("2G", 2 << 30),
            ("1T", 1 << 40),
            ("512B", 512),
            ("1000KB", 1_000_000),
            ("1MB", 1_000_000),
            ("1GB", 1_000_000_000),
            (" 16M ", 16 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "not a size"),
            ("K", "not a size"),
            ("abc", "not a size"),
            ("-1K", "not a size"),
            ("1X", "unknown unit"),
            ("1 KiBs", "unknown unit"),
            ("1.2.3M", "not a number"),
            ("0.3K", "whole number"),
            ("1.5", "whole number"),
            ("99999999999T", "too large"),
            ("18446744073709551616", "too large"),
        ] {
            let err = parse_size(text).expect_err(text).to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn every_accepted_form_of_a_rate_parses() {
        for (text, want) in [
            ("512K", 512 << 10),
            ("10M", 10 << 20),
            ("5M", 5 * 1_048_576),
            ("1G", 1 << 30),
            ("unlimited", 0),
            ("Unlimited", 0),
            (" UNLIMITED ", 0),
            ("0", 0),
            ("1024", 1024),
            ("1000000", 1_000_000),
            ("2.5M", 5 << 19),
            ("10MiB", 10 << 20),
            ("10M/s", 10 << 20),
            ("10MiB/s", 10 << 20),
            ("10 MB/s", 10_000_000),
            ("1K", 1024),
            ("1T", 1 << 40),
        ] {
            assert_eq!(parse_rate(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_rates_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "not a speed"),
            ("   ", "not a speed"),
            ("fast", "not a speed"),
            ("10X", "unknown unit \"X\""),
            ("-1", "not a speed"),
            ("-5M", "not a speed"),
            ("1.5.5M", "not a number"),
            ("0.5", "whole number"),
            ("99999999999T", "too large"),
            ("18446744073709551616", "too large"),
            ("5", "below the minimum of 1 KiB/s"),
            ("1023", "below the minimum"),
            ("10M/h", "unknown unit"),
            ("unlimitedd", "not a speed"),
        ] {
            let err = parse_rate(text).expect_err(text).to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
        // The message quotes what was given.
        assert!(
            parse_rate("10X")
                .unwrap_err()
                .to_string()
                .contains("\"10X\"")
        );
        assert!(
            parse_rate("5")
                .unwrap_err()
                .to_string()
                .starts_with("\"5\"")
        );
    }

    #[test]
    fn rates_below_the_minimum_are_refused() {
        assert_eq!(check_rate(0), Ok(()));
        assert_eq!(check_rate(MIN_RATE), Ok(()));
        assert_eq!(check_rate(u64::MAX), Ok(()));
        assert_eq!(check_rate(MIN_RATE - 1), Err(RateTooLow(MIN_RATE - 1)));
        let err = check_rate(5).unwrap_err().to_string();
        assert!(
            err.contains("below the minimum") && err.contains("unlimited"),
            "{err}"
        );
    }

    #[test]
    fn bytes_use_binary_units_with_one_decimal() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 * 1024 * 1024 + 300 * 1024), "12.3 MiB");
        assert_eq!(bytes(40 << 20), "40.0 MiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
        assert_eq!(bytes((1 << 20) - 1), "1.0 MiB", "never 1024.0 KiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn speeds_are_bytes_per_second() {
        assert_eq!(speed(0), "0 B/s");
        assert_eq!(speed(8_598_323), "8.2 MiB/s");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(Duration::from_millis(400)), "0.4 s");
        assert_eq!(duration(Duration::from_millis(2_140)), "2.1 s");
        assert_eq!(duration(Duration::from_secs(250)), "4m 10s");
        assert_eq!(duration_coarse(Duration::from_secs(12)), "12s");
        assert_eq!(duration_coarse(Duration::from_secs(250)), "4m 10s");
        assert_eq!(duration_coarse(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(
            duration_coarse(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
    }

    #[test]
    fn ago_uses_the_largest_whole_unit() {
        assert_eq!(ago(Duration::from_millis(999)), "just now");
        assert_eq!(ago(Duration::from_secs(1)), "1s ago");
        assert_eq!(ago(Duration::from_secs(59)), "59s ago");
        assert_eq!(ago(Duration::from_secs(60)), "1m ago");
        assert_eq!(ago(Duration::from_secs(3 * 60 + 59)), "3m ago");
        assert_eq!(ago(Duration::from_secs(2 * 3600 + 1800)), "2h ago");
        assert_eq!(ago(Duration::from_secs(5 * 86_400 + 3600)), "5d ago");
    }

    #[test]
    fn percent_rounds_down_and_handles_nothing_to_do() {
        assert_eq!(percent(0, 100), "0%");
        assert_eq!(percent(999, 1000), "99%");
        assert_eq!(percent(1000, 1000), "100%");
        assert_eq!(percent(5, 0), "100%");
        assert_eq!(percent(u64::MAX, u64::MAX), "100%");
        assert_eq!(percent(20, 10), "100%", "never above 100");
    }

    #[test]
    fn file_counts_agree_in_number() {
        assert_eq!(files(0), "0 files");
        assert_eq!(files(1), "1 file");
        assert_eq!(files(10), "10 files");
    }
}
