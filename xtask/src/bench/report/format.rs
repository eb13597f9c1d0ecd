//! How figures are written: what is missing (or not a number) shows as "–".

use std::fmt::Write as _;

use crate::bench::results::{Outcome, Summary};

/// A number with `p` decimals, or "–".
pub fn num(x: impl Into<Option<f64>>, p: usize) -> String {
    match x.into() {
        Some(x) if x.is_finite() => format!("{x:.p$}"),
        _ => "–".into(),
    }
}

/// A count, or "–".
pub fn count(n: Option<u64>) -> String {
    n.map_or("–".into(), |n| n.to_string())
}

/// "median (min–max)" of a summary; just the median when there is one value.
pub fn spread<'a>(s: impl Into<Option<&'a Summary>>, p: usize) -> String {
    let Some((s, median)) = s.into().and_then(|s| Some((s, s.median?))) else {
        return "–".into();
    };
    if s.values.len() <= 1 {
        return num(median, p);
    }
    format!("{} ({}–{})", num(median, p), num(s.min, p), num(s.max, p))
}

pub fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "",
    }
}

/// A benchmark's figures; if it failed, says so and gives none (and nothing when this
/// file has no such part).
pub fn done<'a, T>(s: &mut String, part: Option<&'a Outcome<T>>) -> Option<&'a T> {
    match part? {
        Outcome::Done(figures) => Some(figures),
        Outcome::Failed(e) => {
            let _ = writeln!(s, "**This benchmark failed:** `{e}`\n");
            None
        }
    }
}
