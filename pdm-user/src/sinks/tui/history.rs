//! What the live view remembers of a flow over time, for its detail view and the
//! table's trend column: a fixed ring per flow, one point per refresh, kept only for
//! the flows on screen and the one whose detail is open (the others are forgotten at
//! each refresh), so memory stays bounded whatever the number of flows.

use pdm_common::flow::FlowKey;

use crate::engine::{FastMap, FlowRow};

/// Points per flow: 5 minutes at the default 1 s refresh. A point is 40 octets, a flow's
/// ring 12 KiB.
pub const POINTS: usize = 300;

/// One refresh of a flow (µs for delays, `NAN` without a sample).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub rtt_p50: f32,
    pub rtt_max: f32,
    pub server_delay_p50: f32,
    pub server_delay_max: f32,
    /// Lost and reordered PSNs in this interval.
    pub lost: u32,
    pub reordered: u32,
    pub pps: f32,
    /// The flow's cumulative counts, to take the next point's deltas from.
    lost_total: u64,
    reordered_total: u64,
}

/// The last [`POINTS`] points of a flow, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    points: Vec<Point>,
    next: usize,
}

impl Ring {
    fn push(&mut self, p: Point) {
        if self.points.len() < POINTS {
            self.points.push(p);
        } else {
            self.points[self.next] = p;
            self.next = (self.next + 1) % POINTS;
        }
    }

    fn last(&self) -> Option<&Point> {
        if self.points.len() < POINTS {
            self.points.last()
        } else {
            self.points.get((self.next + POINTS - 1) % POINTS)
        }
    }

    /// The points, oldest first.
    pub fn points(&self) -> impl Iterator<Item = &Point> {
        let (a, b) = self.points.split_at(self.next.min(self.points.len()));
        b.iter().chain(a)
    }
}

fn us(ns: Option<u64>) -> f32 {
    ns.map_or(f32::NAN, |v| v as f32 / 1e3)
}

/// The rings of the flows the view shows.
#[derive(Debug, Default)]
pub struct History {
    rings: FastMap<FlowKey, Ring>,
}

impl History {
    /// Adds a refresh of `rows` (their window summaries filled in) and forgets every
    /// flow not among them.
    pub fn update<'a>(&mut self, rows: impl Iterator<Item = &'a FlowRow>) {
        let mut kept: FastMap<FlowKey, Ring> = FastMap::default();
        for r in rows {
            let key = r.key();
            let mut ring = self.rings.remove(&key).unwrap_or_default();
            let (lost0, reordered0) = ring.last().map_or((r.rx_lost, r.rx_reordered), |p| {
                (p.lost_total, p.reordered_total)
            });
            ring.push(Point {
                rtt_p50: us(r.rtt.p50),
                rtt_max: us(r.rtt.max),
                server_delay_p50: us(r.server_delay.p50),
                server_delay_max: us(r.server_delay.max),
                lost: r.rx_lost.saturating_sub(lost0) as u32,
                reordered: r.rx_reordered.saturating_sub(reordered0) as u32,
                pps: (r.tx_pps + r.rx_pps) as f32,
                lost_total: r.rx_lost,
                reordered_total: r.rx_reordered,
            });
            kept.insert(key, ring);
        }
        self.rings = kept;
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Ring> {
        self.rings.get(key)
    }

    pub fn len(&self) -> usize {
        self.rings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// RTT p50 over the last `points` points as `width` block characters (the largest
    /// of each group of points), scaled to their own range; a space where there is no
    /// sample.
    pub fn trend(&self, key: &FlowKey, points: usize, width: usize) -> Option<String> {
        let ring = self.rings.get(key)?;
        let all: Vec<f32> = ring.points().map(|p| p.rtt_p50).collect();
        let last = &all[all.len().saturating_sub(points)..];
        let group = points.div_ceil(width.max(1)).max(1);
        let v: Vec<f32> = last
            .chunks(group)
            .map(|c| {
                c.iter()
                    .copied()
                    .filter(|x| x.is_finite())
                    .fold(f32::NAN, f32::max)
            })
            .collect();
        let (lo, hi) = v
            .iter()
            .filter(|x| x.is_finite())
            .fold((f32::MAX, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
        if lo > hi {
            return None;
        }
        const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        Some(
            v.iter()
                .map(|&x| {
                    if !x.is_finite() {
                        ' '
                    } else if hi == lo {
                        BLOCKS[3]
                    } else {
                        BLOCKS[(((x - lo) / (hi - lo)) * 7.0).round() as usize]
                    }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::test_row;

    #[test]
    fn rings_are_bounded_and_kept_only_for_flows_shown() {
        let mut h = History::default();
        let a = test_row(17, "fd00::1", 1, "fd00::2", 2);
        let mut b = test_row(17, "fd00::1", 3, "fd00::2", 4);
        for i in 0..(POINTS as u64 + 50) {
            b.rtt.p50 = Some(1000 + i);
            b.rx_lost = i / 10;
            h.update([&a, &b].into_iter());
        }
        let ring = h.get(&b.key()).expect("kept");
        assert_eq!(ring.points().count(), POINTS, "bounded");
        let first = ring.points().next().unwrap();
        assert_eq!(first.rtt_p50, (1000 + 50) as f32 / 1e3, "the oldest kept");
        let last_i = POINTS as u32 + 49;
        assert_eq!(
            ring.points().map(|p| p.lost).sum::<u32>(),
            last_i / 10 - 49 / 10
        );
        let t = h.trend(&b.key(), 60, 20).expect("a trend");
        assert_eq!(t.chars().count(), 20);
        assert!(t.ends_with('█') && t.starts_with('▁'), "{t}");
        h.update([&a].into_iter());
        assert!(h.get(&b.key()).is_none(), "forgotten once off screen");
        assert_eq!(h.len(), 1);
    }
}
