//! Medians and spreads of repeated measurements.

use super::results::Summary;

/// Linear-interpolated quantile of sorted values.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Median, min and max of the finite values; the values kept as they were measured.
pub fn summary(values: &[f64]) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary {
            median: None,
            min: None,
            max: None,
            values: Vec::new(),
        };
    }
    Summary {
        median: Some(quantile_sorted(&v, 0.5)),
        min: Some(v[0]),
        max: Some(v[v.len() - 1]),
        values: values.to_vec(),
    }
}

/// Median of the finite values, NaN if there are none.
pub fn median(values: &[f64]) -> f64 {
    summary(values).median_or_nan()
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
