//! PDM delta-time encoding (RFC 8250 section 3.2): a 16-bit DELTA and an 8-bit SCALE
//! such that the delay in attoseconds is `DELTA << SCALE`.
//!
//! The encoder is the exact rule from `pdm-spec.md` section 2:
//! `a = ns * 10^9`, `SCALE = max(0, bitlen(a) - 16)`, `DELTA = a >> SCALE` (truncating).
//!
//! `a` needs up to 94 bits, but the kernel side runs on BPF, which has no 128-bit
//! multiply, so nothing the kernel calls uses `u128`. Instead `10^9 = 2^9 * 5^9` is split:
//! the `2^9` part only adds 9 to the scale, and `m = ns * 5^9` (at most 85 bits) is formed
//! as two `u64` limbs. The result is therefore exact for every `u64` input, including
//! above 2^43 ns (where `ns * 5^9` stops fitting in one `u64`) and at `u64::MAX`
//! (DELTA 61035, SCALE 78). No pre-shift approximation is involved anywhere.

/// `10^9 / 2^9`: the odd part of the nanosecond-to-attosecond factor.
const FIVE_POW_9: u64 = 1_953_125;

/// `10^9`: attoseconds per nanosecond.
const ATTOS_PER_NS: u64 = 1_000_000_000;

/// A PDM delta time as it appears on the wire: `DELTA << SCALE` attoseconds.
///
/// `DeltaTime::default()` (0, 0) is what RFC 8250 sends when there is no previous
/// packet to measure from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaTime {
    /// The 16-bit mantissa (DTLR or DTLS field).
    pub delta: u16,
    /// The shift applied to `delta` (ScaleDTLR or ScaleDTLS field).
    pub scale: u8,
}

/// Number of significant bits of `x` (0 for 0).
#[inline(always)]
const fn bitlen(x: u64) -> u32 {
    u64::BITS - x.leading_zeros()
}

/// Encodes a delay in nanoseconds exactly as the spec's unbounded-integer rule does.
///
/// Loop-free, no `u128`, no panics: usable from BPF programs.
#[inline(always)]
pub const fn encode_delta_ns(ns: u64) -> DeltaTime {
    if ns == 0 {
        return DeltaTime { delta: 0, scale: 0 };
    }
    // m = ns * 5^9 = high * 2^64 + low. Each partial product is < 2^32 * 2^21 = 2^53,
    // so none of the u64 operations below can overflow.
    let lo_prod = (ns & 0xFFFF_FFFF) * FIVE_POW_9;
    let hi_prod = (ns >> 32) * FIVE_POW_9;
    let low = (hi_prod << 32).wrapping_add(lo_prod);
    let carry = (low < lo_prod) as u64;
    let high = (hi_prod >> 32) + carry; // < 2^21 + 1

    // bitlen(a) = bitlen(m) + 9 and SCALE = bitlen(a) - 16 = bitlen(m) - 7.
    // ns >= 1 gives m >= 5^9 (21 bits), so SCALE >= 14 and the shift k below is >= 5:
    // the max(0, ..) of the rule never applies to a non-zero input.
    let m_bits = if high != 0 {
        64 + bitlen(high)
    } else {
        bitlen(low)
    };
    // k = bitlen(m) - 16 is the shift that leaves 16 significant bits of m.
    let k = m_bits - 16;
    let delta = if k >= 64 {
        // Only reached when high != 0; k - 64 <= 5.
        high >> (k - 64)
    } else if high != 0 {
        // 48 < k < 64: the top bits come from both limbs.
        (high << (64 - k)) | (low >> k)
    } else {
        low >> k
    };
    DeltaTime {
        // m >> k has exactly 16 significant bits by construction of k.
        delta: delta as u16,
        scale: (m_bits - 7) as u8,
    }
}

/// Decodes to whole nanoseconds: `floor(DELTA * 2^SCALE / 10^9)`, saturating at
/// `u64::MAX` (any SCALE up to 255 is accepted, since a peer may send anything).
///
/// Exact (not an approximation) for every input, without `u128`: usable from BPF.
#[inline(always)]
pub const fn decode_delta_ns(dt: DeltaTime) -> u64 {
    let delta = dt.delta as u64;
    let scale = dt.scale as u32;
    if delta == 0 {
        return 0;
    }
    if scale <= 48 {
        // delta < 2^16, so delta << 48 < 2^64.
        return (delta << scale) / ATTOS_PER_NS;
    }
    // DELTA * 2^SCALE / 10^9 = DELTA * 2^e / 5^9 with e = SCALE - 9 >= 40.
    let e = scale - 9;
    if e <= 48 {
        return (delta << e) / FIVE_POW_9;
    }
    // e > 48: write delta * 2^48 = q * 5^9 + r, then
    // floor(delta * 2^e / 5^9) = q * 2^sh + floor(r * 2^sh / 5^9) with sh = e - 48.
    let sh = e - 48;
    let top = delta << 48;
    let q = top / FIVE_POW_9; // >= 2^48 / 5^9 > 2^27, so q has at least 28 bits
    let r = top % FIVE_POW_9; // < 2^21
    if q.leading_zeros() < sh {
        // q * 2^sh does not fit. This also bounds sh <= 36 below.
        return u64::MAX;
    }
    let hi = q << sh;
    let lo = (r << sh) / FIVE_POW_9; // r << sh < 2^57; lo < 2^sh, so hi + lo fits.
    hi + lo
}

/// Exact attoseconds `DELTA << SCALE`, or `None` if that needs more than 128 bits.
///
/// For userspace only (the kernel side must not use 128-bit arithmetic).
#[inline]
pub const fn decode_delta_attos(dt: DeltaTime) -> Option<u128> {
    let delta = dt.delta as u128;
    if delta == 0 {
        return Some(0);
    }
    if dt.scale as u32 > delta.leading_zeros() {
        return None;
    }
    Some(delta << dt.scale)
}

// Compile-time spot checks (also evaluated when building for BPF): vectors from the
// table in pdm-spec.md section 2, and the two-limb path at u64::MAX.
const _: () = {
    let one_ns = encode_delta_ns(1);
    assert!(one_ns.delta == 61035 && one_ns.scale == 14);
    let one_us = encode_delta_ns(1_000);
    assert!(one_us.delta == 59604 && one_us.scale == 24);
    let one_s = encode_delta_ns(1_000_000_000);
    assert!(one_s.delta == 56843 && one_s.scale == 44);
    let max = encode_delta_ns(u64::MAX);
    assert!(max.delta == 61035 && max.scale == 78);
    assert!(decode_delta_ns(one_s) == 999_992_631);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_zero_scale_zero() {
        assert_eq!(encode_delta_ns(0), DeltaTime { delta: 0, scale: 0 });
        assert_eq!(decode_delta_ns(DeltaTime::default()), 0);
    }

    #[test]
    fn u64_max_is_exact() {
        // 18446744073709551615e9 has 94 bits; its top 16 bits are 61035.
        assert_eq!(
            encode_delta_ns(u64::MAX),
            DeltaTime {
                delta: 61035,
                scale: 78
            }
        );
    }

    #[test]
    fn decode_saturates() {
        let dt = DeltaTime {
            delta: u16::MAX,
            scale: u8::MAX,
        };
        assert_eq!(decode_delta_ns(dt), u64::MAX);
        assert_eq!(decode_delta_attos(dt), None);
    }

    #[test]
    fn decode_attos_boundary() {
        // 0xFFFF << 112 uses exactly 128 bits; one more does not fit.
        let fits = DeltaTime {
            delta: u16::MAX,
            scale: 112,
        };
        assert_eq!(decode_delta_attos(fits), Some(0xFFFF_u128 << 112));
        let over = DeltaTime {
            delta: u16::MAX,
            scale: 113,
        };
        assert_eq!(decode_delta_attos(over), None);
    }
}
