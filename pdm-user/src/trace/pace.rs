//! Pacing probes so that routers' ICMPv6 rate limits do not pass for drops.
//!
//! A router answering an expiring hop limit limits how many errors it sends (Linux: a
//! bucket of 6 per destination, one more every `net.ipv6.icmp.ratelimit` — 1000 ms by
//! default on older kernels, 100 ms on newer ones — shortened for wider routes back).
//! Every trace of a survey crosses the routers near the source at the same hop limit,
//! so the budget is per hop limit and shared by all destinations: on average one probe
//! per interval, in bursts of at most one pair (a plain and a PDM probe back to back).

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

pub struct Pacer {
    interval: Duration,
    /// Per hop limit: when the next probe may leave.
    next: Mutex<[Option<Instant>; 256]>,
}

impl Pacer {
    pub fn new(interval: Duration) -> Self {
        Pacer {
            interval,
            next: Mutex::new([None; 256]),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes the budget of `probes` probes with hop limit `hop` if it is there now;
    /// otherwise says when it will be.
    pub fn take(&self, hop: u8, probes: u32) -> Result<(), Instant> {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut next[usize::from(hop)];
        match *slot {
            Some(t) if t > now => Err(t),
            _ => {
                *slot = Some(now + self.interval * probes);
                Ok(())
            }
        }
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
        for _ in 0..100 {
            assert_eq!(p.take(7, 2), Ok(()));
        }
    }
}
