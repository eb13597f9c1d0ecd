//! Medians and spreads of repeated measurements.

use serde_json::{Value, json};

/// Linear-interpolated quantile of sorted values.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// `{ "median", "min", "max", "values" }` of the finite values.
pub fn summary(values: &[f64]) -> Value {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return json!({ "median": null, "min": null, "max": null, "values": [] });
    }
    json!({
        "median": quantile_sorted(&v, 0.5),
        "min": v[0],
        "max": v[v.len() - 1],
        "values": values,
    })
}

/// Median of a summary, NaN if absent.
pub fn med(s: &Value) -> f64 {
    s["median"].as_f64().unwrap_or(f64::NAN)
}

/// Indices 0..n in the order round `round` measures them: forwards, then backwards in
/// the next round. A drift that is linear over a round then adds as much to each side
/// of a comparison between neighbours.
pub fn round_order(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| {
        if round.is_multiple_of(2) {
            i
        } else {
            n - 1 - i
        }
    })
}
