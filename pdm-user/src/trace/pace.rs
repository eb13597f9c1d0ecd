//! Pacing probes so that routers' ICMPv6 rate limits do not pass for drops.
//!
//! A router answering an expiring hop limit limits how many errors it sends (Linux: a
//! bucket of 6 per destination, one more every `net.ipv6.icmp.ratelimit` — 1000 ms by
//! default on older kernels, 100 ms on newer ones — shortened for wider routes back).
//! Every trace of a survey crosses the routers near the source at the same hop limit,
//! so the budget is per hop limit and shared by all destinations: on average one probe
//! per interval, in bursts of at most one pair (a plain and a PDM probe back to back).
//! Where a trace's answers from one hop come and go (some probes answered, others
//! not), that hop limit's interval doubles, up to [`SLOWEST`].

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The longest interval slowing down goes to: Linux's older default rate limit, one
/// error a second towards a destination once its burst is spent.
pub const SLOWEST: Duration = Duration::from_secs(1);

pub struct Pacer {
    interval: Duration,
    hops: Mutex<[Hop; 256]>,
}

#[derive(Clone, Copy)]
struct Hop {
    /// When the next probe may leave.
    next: Option<Instant>,
    interval: Duration,
}

impl Pacer {
    pub fn new(interval: Duration) -> Self {
        Pacer {
            interval,
            hops: Mutex::new(
                [Hop {
                    next: None,
                    interval,
                }; 256],
            ),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes the budget of `probes` probes with hop limit `hop` if it is there now;
    /// otherwise says when it will be.
    pub fn take(&self, hop: u8, probes: u32) -> Result<(), Instant> {
        let now = Instant::now();
        let mut hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        let h = &mut hops[usize::from(hop)];
        match h.next {
            Some(t) if t > now => Err(t),
            _ => {
                h.next = Some(now + h.interval * probes);
                Ok(())
            }
        }
    }

    /// Answers from hop limit `hop` look rate-limited: its probes leave twice as far
    /// apart from now on, up to [`SLOWEST`]. Without pacing (`--pace 0`), nothing.
    pub fn slow_down(&self, hop: u8) {
        if self.interval.is_zero() {
            return;
        }
        let mut hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        let h = &mut hops[usize::from(hop)];
        h.interval = (h.interval * 2).min(SLOWEST.max(self.interval));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pair_per_two_intervals_per_hop_limit() {
        let p = Pacer::new(Duration::from_secs(60));
        assert_eq!(p.take(1, 2), Ok(()));
        let until = p.take(1, 2).expect_err("hop 1 has spent its budget");
        assert!(until > Instant::now() + Duration::from_secs(119));
        // Other hop limits have budgets of their own.
        assert_eq!(p.take(2, 1), Ok(()));
        assert!(p.take(2, 1).is_err());
    }

    #[test]
    fn no_interval_never_holds_back() {
        let p = Pacer::new(Duration::ZERO);
        p.slow_down(7);
        for _ in 0..100 {
            assert_eq!(p.take(7, 2), Ok(()));
        }
    }

    #[test]
    fn slowing_down_doubles_a_hop_limits_interval_up_to_a_second() {
        let p = Pacer::new(Duration::from_millis(250));
        p.slow_down(1);
        let gap = |hop| {
            let before = Instant::now();
            assert_eq!(p.take(hop, 1), Ok(()));
            p.take(hop, 1).expect_err("spent") - before
        };
        let g = gap(1);
        assert!(
            g >= Duration::from_millis(500) && g < Duration::from_millis(510),
            "{g:?}"
        );
        for _ in 0..6 {
            p.slow_down(3);
        }
        let g = gap(3);
        assert!(
            g >= SLOWEST && g < SLOWEST + Duration::from_millis(10),
            "{g:?}"
        );
        assert!(gap(2) < Duration::from_millis(260));
    }
}
