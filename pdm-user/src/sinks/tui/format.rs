//! Numbers for a narrow column: three significant digits and a unit.

use super::*;

/// Three significant digits: `5.00`, `12.3`, `812`.
pub(super) fn sig3(v: f64) -> String {
    if v < 9.995 {
        format!("{v:.2}")
    } else if v < 99.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// `v` in the largest unit that keeps it below 1000 (the last unit has no limit); the
/// first unit is shown as an integer when `integral` (nanoseconds, bytes).
pub(super) fn human(v: f64, step: f64, units: &[&str], integral: bool) -> String {
    let mut v = v;
    let mut i = 0;
    while i + 1 < units.len() && v >= 999.5 {
        v /= step;
        i += 1;
    }
    if i == 0 && integral {
        format!("{v:.0}{}", units[0])
    } else {
        format!("{}{}", sig3(v), units[i])
    }
}

/// `850ns`, `812µs`, `12.3ms`, `1.20s`.
pub fn format_ns(ns: u64) -> String {
    human(ns as f64, 1000.0, &["ns", "µs", "ms", "s"], true)
}

/// `512B`, `1.50KiB`, `12.3MiB`.
pub fn format_bytes(bytes: u64) -> String {
    human(
        bytes as f64,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB"],
        true,
    )
}

/// `0`, `0.50`, `12.3`, `1.20k`, `3.40M`.
pub fn format_count(v: f64) -> String {
    if v <= 0.0 {
        return "0".to_owned();
    }
    human(v, 1000.0, &["", "k", "M", "G"], false)
}

/// `0%`, `0.05%`, `5.00%`, `12.5%`, `100%`.
pub fn format_percent(p: f64) -> String {
    if p <= 0.0 {
        return "0%".to_owned();
    }
    format!("{}%", sig3(p))
}

/// Ages and intervals: `850ms`, `42s`, `12m05s`, `3h07m`, `2d05h`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.subsec_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}
