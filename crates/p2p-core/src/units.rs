//! Sizes and speeds as people write them, parsed once for every program of the project: chunk
//! sizes (`64K`, `1MiB`) and speed limits (`512K`, `10M`, `1G`, `unlimited`), from p2pctl's
//! flags and from p2pd's flags and config file alike.
//!
//! `K`, `M`, `G` and `T` (with or without `i`/`iB`) are binary, as in `dd` and `rsync`: `5M` is
//! 5 MiB = 5,242,880 bytes. Only the explicit decimal `KB`, `MB`, `GB` and `TB` mean powers of
//! 1000. A speed is a size per second (a trailing `/s` is allowed: `10M/s`, `10MiB/s`).

use crate::transfer::ratelimit::{self, RateTooLow};

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
/// `1000000`. A limit must be at least [`ratelimit::MIN_RATE`] (1 KiB/s).
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
    ratelimit::check_rate(rate).map_err(|source| UnitError::RateTooLow {
        text: trimmed.to_owned(),
        source,
    })?;
    Ok(rate)
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
}
