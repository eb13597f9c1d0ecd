//! Packet Sequence Number (PSN) comparison with RFC 1982 serial-number arithmetic
//! (SERIAL_BITS = 16).
//!
//! PSNs start at a random value per flow and wrap mod 2^16, so plain `<` is wrong near
//! the wrap: 65535 precedes 0. RFC 1982 orders two serials by the shorter way round the
//! circle and leaves a distance of exactly 2^15 undefined; here such a pair is "not
//! less" in both orders (neither precedes the other), which keeps [`psn_lt`]
//! antisymmetric without inventing an order.

/// Half the serial-number space: the distance at which RFC 1982 ordering is undefined.
const HALF: u16 = 1 << 15;

/// `a` precedes `b` (RFC 1982 `a < b`): `b` is 1..=2^15-1 steps after `a`, wrapping.
///
/// Returns `false` when `a == b` and when they are exactly 2^15 apart (undefined in
/// RFC 1982), in both argument orders.
#[inline(always)]
pub const fn psn_lt(a: u16, b: u16) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < HALF
}

/// `a` follows `b` (RFC 1982 `a > b`); the same as `psn_lt(b, a)`.
#[inline(always)]
pub const fn psn_gt(a: u16, b: u16) -> bool {
    psn_lt(b, a)
}

/// How a received PSN relates to the previous one received on the same flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsnOrder {
    /// `received == last + 1` (wrapping): nothing lost, nothing reordered.
    InOrder,
    /// `received` is ahead of `last + 1`; the value is how many PSNs were skipped
    /// (1..=2^15 - 2), e.g. `last = 65535, received = 2` skipped 0 and 1: `Gap(2)`.
    Gap(u16),
    /// `received` is older than `last` (or exactly 2^15 away, where RFC 1982 gives no
    /// order): a late or reordered packet, or a flow that restarted.
    Reordered,
    /// `received == last`: a duplicate, or segmentation offload repeating one header.
    Duplicate,
}

/// Classifies `received` against `last`, the last PSN received on the flow
/// (the expected next PSN is `last + 1`, wrapping).
#[inline(always)]
pub const fn classify(last: u16, received: u16) -> PsnOrder {
    if received == last {
        return PsnOrder::Duplicate;
    }
    if !psn_lt(last, received) {
        return PsnOrder::Reordered;
    }
    // last < received in serial order, so received - (last + 1) is 0..=2^15 - 2.
    match received.wrapping_sub(last.wrapping_add(1)) {
        0 => PsnOrder::InOrder,
        skipped => PsnOrder::Gap(skipped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps() {
        assert!(psn_lt(65535, 0));
        assert!(psn_gt(0, 65535));
        assert!(!psn_lt(0, 32768));
        assert!(!psn_lt(32768, 0));
        assert_eq!(classify(65535, 0), PsnOrder::InOrder);
        assert_eq!(classify(65535, 2), PsnOrder::Gap(2));
        assert_eq!(classify(0, 65535), PsnOrder::Reordered);
        assert_eq!(classify(7, 7), PsnOrder::Duplicate);
    }
}
