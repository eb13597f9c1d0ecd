//! PDM delta-time encoding (RFC 8250 section 3.2): a 16-bit DELTA and an 8-bit SCALE
//! such that the delay in attoseconds is `DELTA << SCALE`.
//!
//! The encoder is the exact rule of `docs/pdm.md` §5:
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

/// Encodes a delay in nanoseconds exactly as the unbounded-integer rule of docs/pdm.md §5
/// does.
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

/// Why a time a peer sent cannot be used: the delta itself (see [`decode_received`]),
/// or what it claims against our own clock (see [`echo_rtt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TimeFault {
    /// A zero DELTA with a non-zero SCALE, or a value beyond what 64-bit nanoseconds
    /// hold (about 584 years): no encoder of a real delay produces it.
    Malformed = 1,
    /// A non-zero SCALE with DELTA below 2^15: RFC 8250's encoding keeps 16 significant
    /// bits, so this came from an encoder that is not the RFC's (public PDM code exists
    /// whose scale is one shift short and whose value wraps at 16 bits). Such a peer's
    /// other values are wrong too, by up to a factor of two, but cannot be told apart.
    NotRfcExact = 2,
    /// The peer claims to have held our packet (DTLR) longer than the time between our
    /// sending it and receiving its echo: impossible whatever the path (RFC 8250 §6:
    /// PDM fields can be spoofed).
    Implausible = 3,
}

impl TimeFault {
    /// From the value carried in [`RttSample::fault`](crate::flow::RttSample::fault).
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Malformed),
            2 => Some(Self::NotRfcExact),
            3 => Some(Self::Implausible),
            _ => None,
        }
    }
}

/// The round trip of an echo, and the peer's time within it: `elapsed_ns` is the time
/// between sending the echoed PSN and receiving the echo on our clock, `dtlr` the
/// peer's Delta Time Last Received. A DTLR equal to the elapsed time gives RTT 0; one
/// larger is [`TimeFault::Implausible`] and gives nothing, never a clamped 0.
/// Usable from BPF.
#[inline(always)]
pub const fn echo_rtt(elapsed_ns: u64, dtlr: DeltaTime) -> Result<(u64, u64), TimeFault> {
    let held = match decode_received(dtlr) {
        Ok(ns) => ns,
        Err(f) => return Err(f),
    };
    if held > elapsed_ns {
        return Err(TimeFault::Implausible);
    }
    Ok((elapsed_ns - held, held))
}

/// Decodes a delta time received from a peer, refusing what RFC 8250's encoder never
/// produces (see [`TimeFault`]). Usable from BPF.
#[inline(always)]
pub const fn decode_received(dt: DeltaTime) -> Result<u64, TimeFault> {
    if dt.scale == 0 {
        return Ok(dt.delta as u64 / ATTOS_PER_NS);
    }
    if dt.delta == 0 {
        return Err(TimeFault::Malformed);
    }
    if dt.delta < 1 << 15 {
        return Err(TimeFault::NotRfcExact);
    }
    match decode_delta_ns(dt) {
        u64::MAX => Err(TimeFault::Malformed),
        ns => Ok(ns),
    }
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

/// The round trip an observer (a capture point, a router) computes from the PDM fields
/// alone: `DTLS(p3) − DTLR(p2)`, where the client's p3 echoes the server's p2 and p2
/// echoed the client's last packet before it. DTLS spans the whole round trip at the
/// client and DTLR the server's part of it, so a DTLR longer than the DTLS is
/// [`TimeFault::Implausible`]: no sample, never a clamped 0.
#[inline(always)]
pub const fn observed_rtt(dtls_p3: DeltaTime, dtlr_p2: DeltaTime) -> Result<u64, TimeFault> {
    let span = match decode_received(dtls_p3) {
        Ok(ns) => ns,
        Err(f) => return Err(f),
    };
    match echo_rtt(span, dtlr_p2) {
        Ok((rtt, _)) => Ok(rtt),
        Err(f) => Err(f),
    }
}

// Compile-time spot checks (also evaluated when building for BPF): vectors from the
// table in docs/pdm.md §5, and the two-limb path at u64::MAX.
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
    fn received_deltas_an_exact_encoder_cannot_send_are_refused() {
        let dt = |delta, scale| DeltaTime { delta, scale };
        // Everything the encoder sends decodes as before.
        for ns in [
            0,
            1,
            65,
            1_000,
            2_000_000,
            10_000_000_000,
            1 << 40,
            u64::MAX / 2,
        ] {
            let e = encode_delta_ns(ns);
            assert_eq!(decode_received(e), Ok(decode_delta_ns(e)), "{ns} ns");
        }
        // Scale 0: any value (below 1 ns).
        assert_eq!(decode_received(dt(40_000, 0)), Ok(0));
        assert_eq!(decode_received(dt(0, 35)), Err(TimeFault::Malformed));
        assert_eq!(decode_received(dt(61035, 80)), Err(TimeFault::Malformed));
        assert_eq!(decode_received(dt(65535, 255)), Err(TimeFault::Malformed));
        // One shift short: 1 us as 119208 at scale 23, wrapped to 16 bits.
        assert_eq!(decode_received(dt(119208u32 as u16, 23)), Ok(450));
        assert_eq!(
            decode_received(dt((0x1_2000u32 & 0xffff) as u16, 23)),
            Err(TimeFault::NotRfcExact)
        );
        assert_eq!(decode_received(dt(32767, 30)), Err(TimeFault::NotRfcExact));
        assert!(decode_received(dt(32768, 30)).is_ok());
    }

    #[test]
    fn an_echo_is_plausible_up_to_the_time_we_measured() {
        let two_ms = encode_delta_ns(2_000_000);
        let held = decode_delta_ns(two_ms);
        assert_eq!(echo_rtt(60_000_000, two_ms), Ok((60_000_000 - held, held)));
        assert_eq!(echo_rtt(held + 1, two_ms), Ok((1, held)));
        assert_eq!(echo_rtt(held, two_ms), Ok((0, held)), "equal: RTT 0");
        assert_eq!(echo_rtt(held - 1, two_ms), Err(TimeFault::Implausible));
        let ten_s = encode_delta_ns(10_002_000_000);
        assert_eq!(echo_rtt(2_500_000, ten_s), Err(TimeFault::Implausible));
        let bad = DeltaTime {
            delta: 100,
            scale: 30,
        };
        assert_eq!(echo_rtt(u64::MAX, bad), Err(TimeFault::NotRfcExact));
    }

    /// The spec's example: DTLR(p2) = 2 ms, DTLS(p3) = 62 ms gives 60 ms (to the
    /// encoding's precision); a DTLR longer than the DTLS gives nothing.
    #[test]
    fn an_observer_takes_dtlr_from_dtls() {
        let dtlr = DeltaTime {
            delta: 58207,
            scale: 35,
        };
        let dtls = DeltaTime {
            delta: 56388,
            scale: 40,
        };
        let rtt = observed_rtt(dtls, dtlr).expect("plausible");
        assert!((59_990_000..60_010_000).contains(&rtt), "{rtt} ns");
        assert_eq!(observed_rtt(dtlr, dtls), Err(TimeFault::Implausible));
        assert_eq!(observed_rtt(dtls, dtls), Ok(0));
        let inexact = DeltaTime {
            delta: 1,
            scale: 40,
        };
        assert_eq!(observed_rtt(inexact, dtlr), Err(TimeFault::NotRfcExact));
    }

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
