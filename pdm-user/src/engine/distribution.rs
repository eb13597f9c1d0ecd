//! Delay distributions: the exact samples of a sliding window, and a log-bucketed
//! histogram since the flow started.

use std::collections::VecDeque;

use super::Summary;

/// Exact samples of the last `span`.
#[derive(Debug, Default)]
pub(super) struct Window {
    samples: VecDeque<(u64, u64)>,
}

/// At most this many samples per window: a bulk flow can echo tens of thousands of
/// PSNs per second; beyond this the window keeps the most recent.
const WINDOW_CAP: usize = 50_000;

impl Window {
    /// Adds a sample taken at `ts` and forgets those more than `span` older. Pruning
    /// here, where the window is in the cache anyway, rather than on every refresh,
    /// keeps a refresh of 10 000 flows from touching 10 000 sample buffers.
    pub(super) fn push(&mut self, ts: u64, v: u64, span: u64) {
        if self.samples.len() == WINDOW_CAP {
            self.samples.pop_front();
        }
        self.samples.push_back((ts, v));
        while self
            .samples
            .front()
            .is_some_and(|&(old, _)| ts.saturating_sub(old) > span)
        {
            self.samples.pop_front();
        }
    }

    /// The samples of the `span` up to `now` (a flow that went quiet still holds older
    /// ones until its next sample: they are skipped here).
    pub(super) fn summary(&self, now: u64, span: u64) -> Summary {
        let fresh = |&&(ts, _): &&(u64, u64)| now.saturating_sub(ts) <= span;
        if !self.samples.back().is_some_and(|s| fresh(&s)) {
            return Summary::default();
        }
        thread_local! {
            // Reused across flows: one allocation instead of one per flow per refresh.
            static SORTED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SORTED.with_borrow_mut(|v| {
            v.clear();
            v.extend(self.samples.iter().filter(fresh).map(|&(_, x)| x));
            v.sort_unstable();
            Self::summarise(v)
        })
    }

    fn summarise(v: &[u64]) -> Summary {
        let pct = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        let sum: u128 = v.iter().map(|&x| x as u128).sum();
        Summary {
            samples: v.len() as u64,
            min: Some(v[0]),
            mean: Some((sum / v.len() as u128) as u64),
            p50: Some(pct(0.50)),
            p90: Some(pct(0.90)),
            p99: Some(pct(0.99)),
            max: Some(v[v.len() - 1]),
        }
    }
}

/// Log-bucketed histogram: exact below 64, then 32 buckets per power of two. Only the
/// range of buckets between the smallest and largest sample is stored: one flow's
/// delays span a few powers of two (a few hundred octets), where a full table would be
/// 8 KB per distribution and per flow.
#[derive(Debug)]
pub(super) struct Histogram {
    /// Index of `counts[0]`.
    base: usize,
    counts: Vec<u32>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

/// Values below 64 get a bucket each; above, each power of two is split in 32.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const HALF: usize = SUB / 2;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            base: 0,
            counts: Vec::new(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let shift = 64 - v.leading_zeros() - SUB_BITS;
        // The top SUB_BITS bits: in [HALF, SUB).
        let mant = (v >> shift) as usize;
        SUB + (shift as usize - 1) * HALF + (mant - HALF)
    }

    /// The middle of bucket `i`'s value range (relative error at most 1/64).
    fn value(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let j = i - SUB;
        let shift = (j / HALF) as u32 + 1;
        let low = ((j % HALF + HALF) as u64) << shift;
        low.saturating_add((1u64 << shift) / 2)
    }

    /// The non-empty buckets: (their middle value, count), ascending.
    pub(super) fn buckets(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| (Self::value(self.base + i), u64::from(c)))
            .collect()
    }

    pub(super) fn push(&mut self, v: u64) {
        let i = Self::index(v);
        if self.counts.is_empty() {
            self.base = i;
            self.counts.push(0);
        } else if i < self.base {
            self.counts
                .splice(0..0, std::iter::repeat_n(0, self.base - i));
            self.base = i;
        } else if i >= self.base + self.counts.len() {
            self.counts.resize(i - self.base + 1, 0);
        }
        self.counts[i - self.base] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub(super) fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        // One pass for the three percentiles.
        let ranks = [0.50, 0.90, 0.99].map(|p: f64| ((p * self.count as f64).ceil() as u64).max(1));
        let mut found = [self.max; 3];
        let (mut next, mut seen) = (0, 0u64);
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n as u64;
            while next < 3 && seen >= ranks[next] {
                found[next] = Self::value(self.base + i).clamp(self.min, self.max);
                next += 1;
            }
            if next == 3 {
                break;
            }
        }
        Summary {
            samples: self.count,
            min: Some(self.min),
            mean: Some((self.sum / self.count as u128) as u64),
            p50: Some(found[0]),
            p90: Some(found[1]),
            p99: Some(found[2]),
            max: Some(self.max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_are_within_one_sixty_fourth() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.push(v * 1000);
        }
        let s = h.summary();
        for (got, want) in [
            (s.p50, 50_000_000.0),
            (s.p90, 90_000_000.0),
            (s.p99, 99_000_000.0),
        ] {
            let got = got.expect("sample") as f64;
            assert!((got - want).abs() / want < 1.0 / 64.0, "{got} vs {want}");
        }
        assert_eq!((s.min, s.max), (Some(1000), Some(100_000_000)));
    }

    #[test]
    fn histogram_small_values_are_exact() {
        for v in 0..64u64 {
            assert_eq!(Histogram::value(Histogram::index(v)), v);
        }
        for v in [64u64, 65, 127, 128, 1 << 20, u64::MAX / 2, u64::MAX] {
            let got = Histogram::value(Histogram::index(v));
            assert!(
                (got as f64 - v as f64).abs() <= v as f64 / 64.0,
                "{v}: {got}"
            );
        }
    }

    #[test]
    fn window_percentiles_are_exact_and_age_out() {
        let mut w = Window::default();
        for i in 0..100u64 {
            w.push(i * 1_000_000_000, i, 1000 * 1_000_000_000);
        }
        let s = w.summary(99_000_000_000, 1000 * 1_000_000_000);
        assert_eq!(
            (s.min, s.p50, s.max, s.samples),
            (Some(0), Some(50), Some(99), 100)
        );
        // A shorter span, asked for later: only the last 10 s count.
        let span = 10_000_000_000;
        assert_eq!(w.summary(99_000_000_000, span).min, Some(89));
        assert_eq!(w.summary(105_000_000_000, span).min, Some(95));
        assert_eq!(w.summary(200_000_000_000, span), Summary::default());
        // Pushing forgets what fell out of the span.
        w.push(120_000_000_000, 7, span);
        assert_eq!(w.samples.len(), 1);
    }
}
