//! Byte counts, speeds, durations and percentages: human formatting for the output.
//!
//! Sizes are shown in binary units (`KiB`, `MiB`, …) with one decimal. Sizes and speeds on the
//! command line are parsed by [`p2p_core::units`], where `K`, `M`, `G` and `T` are binary too.

use std::time::Duration;

const BINARY_UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `512 B`, `1.0 KiB`, `12.3 MiB`, `4.0 GiB`.
pub(crate) fn bytes(n: u64) -> String {
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
pub(crate) fn speed(bytes_per_second: u64) -> String {
    format!("{}/s", bytes(bytes_per_second))
}

/// A measured span: `0.4 s`, `2.1 s` below a minute, then as [`duration_coarse`].
pub(crate) fn duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        duration_coarse(d)
    }
}

/// Whole units only: `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
pub(crate) fn duration_coarse(d: Duration) -> String {
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
pub(crate) fn ago(d: Duration) -> String {
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
pub(crate) fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "100%".to_owned();
    }
    let pct = u128::from(done.min(total)) * 100 / u128::from(total);
    format!("{pct}%")
}

/// `1 file`, `3 files`.
pub(crate) fn files(n: u64) -> String {
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
