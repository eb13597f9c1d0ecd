//! Loss, reordering and duplicates from a peer's PSN sequence, as one 64-bit state word.
//!
//! A flow's packets can be received on several CPUs at once (a veth fed from several
//! sending CPUs, RPS, a NIC spreading one flow over queues), so the receive-side state
//! must change in one atomic step: the whole state is one word that the kernel replaces
//! with compare-and-swap, and the classification of a packet is the transition that
//! won. The totals are then those of some serial order of the packets, whatever the
//! CPUs did, which is what a capture of the interface shows too.
//!
//! The word: bits 0..32 a window of the last [`SEQ_WINDOW`] PSNs (bit k: PSN highest − k
//! was received), bits 32..48 the highest PSN received (serial order, RFC 1982), bits
//! 48..64 the PSNs skipped and not (yet) arrived, wrapping. 0: nothing received (a valid
//! state always has bit 0 set). Anything else that classifies PSNs (capture analysis, an
//! observer) is meant to call the same function, so that they and the kernel classify
//! the same packets alike. More in docs/pdm.md §8.
//!
//! - A PSN ahead of the highest by n counts n − 1 as skipped.
//! - Equal to the highest: a segmentation-offload segment repeating its burst's header
//!   (PDMv2) — nothing.
//! - Behind, inside the window, not yet seen: reordered; it is no longer skipped.
//! - Behind, inside the window, seen: a duplicate.
//! - Behind the window: late — received, so no longer skipped, and counted as
//!   reordered (a duplicate that old cannot be told apart from a late arrival).
//!
//! PSNs before the first one received count as seen: a flow joined in the middle does
//! not report the packets it never saw as lost.

/// PSNs the window holds: how far a packet may be reordered and still be told from a
/// duplicate.
pub const SEQ_WINDOW: u32 = 32;

/// What one received PSN was, besides moving the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqEvent {
    /// In order, ahead with a gap, or a repeat of the highest (offload).
    None,
    /// Already received (inside the window).
    Duplicate,
    /// Arrived after a later PSN: inside the window, or behind it (late).
    Reordered,
}

/// The state word after receiving `psn`, and what the packet was.
#[inline(always)]
pub const fn seq_step(word: u64, psn: u16) -> (u64, SeqEvent) {
    if word == 0 {
        return (pack(u32::MAX, psn, 0), SeqEvent::None);
    }
    let (window, high, skipped) = unpack(word);
    let ahead = psn.wrapping_sub(high) as i16;
    if ahead == 0 {
        return (word, SeqEvent::None);
    }
    if ahead > 0 {
        let ahead = ahead as u32;
        let window = if ahead >= SEQ_WINDOW {
            1
        } else {
            (window << ahead) | 1
        };
        let skipped = skipped.wrapping_add((ahead - 1) as u16);
        return (pack(window, psn, skipped), SeqEvent::None);
    }
    let back = (-(ahead as i32)) as u32;
    if back < SEQ_WINDOW {
        if window & (1 << back) != 0 {
            return (word, SeqEvent::Duplicate);
        }
        let window = window | (1 << back);
        return (
            pack(window, high, skipped.wrapping_sub(1)),
            SeqEvent::Reordered,
        );
    }
    (
        pack(window, high, skipped.wrapping_sub(1)),
        SeqEvent::Reordered,
    )
}

#[inline(always)]
const fn pack(window: u32, high: u16, skipped: u16) -> u64 {
    window as u64 | (high as u64) << 32 | (skipped as u64) << 48
}

/// (window, highest PSN, skipped and not arrived).
#[inline(always)]
pub const fn unpack(word: u64) -> (u32, u16, u16) {
    (word as u32, (word >> 32) as u16, (word >> 48) as u16)
}

/// PSNs skipped since an earlier state `before` that are still inside the window of
/// `now` and have not arrived: too recent to call lost (they may be reordered).
/// Both words must be of the same flow.
pub const fn recent_holes(before: u64, now: u64) -> u32 {
    if now == 0 {
        return 0;
    }
    let (window, high, _) = unpack(now);
    let holes = !window;
    if before == 0 {
        return holes.count_ones();
    }
    let (old_window, old_high, _) = unpack(before);
    let moved = high.wrapping_sub(old_high) as i16;
    if moved <= 0 {
        // No new PSN ahead: nothing was skipped since `before`.
        return 0;
    }
    let moved = moved as u32;
    // Holes that were holes already at `before` (its bit k is now bit k + moved).
    let old_holes = if moved >= SEQ_WINDOW {
        0
    } else {
        !old_window << moved
    };
    (holes & !old_holes).count_ones()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// Runs `psns` through a fresh state: (skipped, duplicates, reordered, word).
    fn run(psns: &[u16]) -> (u16, u32, u32, u64) {
        let (mut w, mut dup, mut reo) = (0, 0, 0);
        for &p in psns {
            let (n, e) = seq_step(w, p);
            w = n;
            match e {
                SeqEvent::Duplicate => dup += 1,
                SeqEvent::Reordered => reo += 1,
                SeqEvent::None => {}
            }
        }
        (unpack(w).2, dup, reo, w)
    }

    #[test]
    fn in_order_and_offload_repeats() {
        let (s, d, r, _) = run(&[10, 11, 11, 11, 12, 13]);
        assert_eq!((s, d, r), (0, 0, 0));
    }

    #[test]
    fn gaps_reordering_duplicates_and_late() {
        // 12 and 13 skipped; 12 arrives late within the window.
        let (s, d, r, _) = run(&[10, 11, 14, 12]);
        assert_eq!((s, d, r), (1, 0, 1));
        // A duplicate inside the window.
        let (s, d, r, _) = run(&[10, 11, 12, 11]);
        assert_eq!((s, d, r), (0, 1, 0));
        // 11 arrives 40 PSNs late: received, counted reordered, not lost.
        let mut psns = vec![10];
        psns.extend(12..52);
        psns.push(11);
        let (s, d, r, _) = run(&psns);
        assert_eq!((s, d, r), (0, 0, 1));
        // Across the wrap.
        let (s, d, r, _) = run(&[65534, 65535, 1, 0]);
        assert_eq!((s, d, r), (0, 0, 1));
        // Before the first PSN received: counted as seen.
        let (s, d, r, _) = run(&[100, 99]);
        assert_eq!((s, d, r), (0, 1, 0));
    }

    /// Any interleaving of the same packets gives the same loss once the window has
    /// passed them: the figure does not depend on which CPU ran first.
    #[test]
    fn loss_is_independent_of_small_reordering() {
        let sent: Vec<u16> = (0..200u16).map(|i| i.wrapping_add(65500)).collect();
        let received: Vec<u16> = sent.iter().copied().filter(|p| p % 7 != 3).collect();
        let dropped = (sent.len() - received.len()) as u16;
        let mut shuffled = received.clone();
        // Pairs two apart swapped, the first packet left first (see the start rule).
        for i in (1..shuffled.len() - 3).step_by(4) {
            shuffled.swap(i, i + 2);
        }
        assert_eq!(run(&received).0, dropped);
        let (s, d, _, _) = run(&shuffled);
        assert_eq!((s, d), (dropped, 0));
    }

    #[test]
    fn recent_holes_are_the_new_ones() {
        let (_, _, _, a) = run(&[10, 11, 13]); // 12 skipped
        assert_eq!(recent_holes(0, a), 1);
        assert_eq!(recent_holes(a, a), 0);
        let (_, _, _, b) = run(&[10, 11, 13, 14, 16]); // 12 and 15 skipped
        assert_eq!(recent_holes(a, b), 1, "only 15 is new");
        let (_, _, _, c) = run(&[10, 11, 13, 14, 16, 12]); // 12 arrived late
        assert_eq!(recent_holes(a, c), 1);
        let mut far = vec![10, 11, 13];
        far.extend(14..80);
        far.push(90); // 80..90 skipped, all new
        let (_, _, _, d) = run(&far);
        assert_eq!(recent_holes(a, d), 10);
    }
}
