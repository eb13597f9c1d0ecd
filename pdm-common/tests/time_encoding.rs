//! PDM delta-time encoding: the exact vectors of `docs/pdm.md` §5, and property
//! tests of the encoder and decoders against unbounded-integer references.

use num_bigint::BigUint;
use pdm_common::time::{DeltaTime, decode_delta_attos, decode_delta_ns, encode_delta_ns};
use proptest::prelude::*;

const NS_PER_S: u64 = 1_000_000_000;

/// `docs/pdm.md` §5, "Test vectors": (nanoseconds, DELTA, SCALE).
const SPEC_VECTORS: &[(u64, u16, u8)] = &[
    (0, 0, 0),
    (1, 61035, 14),
    (65, 61988, 20),
    (100, 47683, 21),
    (1_000, 59604, 24),
    (10_000, 37252, 28),
    (100_000, 46566, 31),
    (1_000_000, 58207, 34),
    (2_000_000, 58207, 35),
    (10_000_000, 36379, 38),
    (62_000_000, 56388, 40),
    (100_000_000, 45474, 41),
    (NS_PER_S, 56843, 44),
    (10 * NS_PER_S, 35527, 48),
    (65_535_000_000, 58206, 50),
    (1 << 40, 61035, 54),
];

/// The spec's rule with unbounded integers: a = ns * 10^9, SCALE = max(0, bitlen(a) - 16),
/// DELTA = a >> SCALE.
fn reference_encode(ns: u64) -> DeltaTime {
    let a = BigUint::from(ns) * BigUint::from(NS_PER_S);
    let scale = a.bits().saturating_sub(16);
    let delta = a >> scale;
    DeltaTime {
        delta: u16::try_from(&delta).expect("DELTA has at most 16 bits"),
        scale: u8::try_from(scale).expect("SCALE fits u8"),
    }
}

/// `floor(DELTA * 2^SCALE / 10^9)` with unbounded integers, saturated to u64.
fn reference_decode_ns(dt: DeltaTime) -> u64 {
    let ns = (BigUint::from(dt.delta) << dt.scale) / BigUint::from(NS_PER_S);
    u64::try_from(&ns).unwrap_or(u64::MAX)
}

/// Asserts the decoded attoseconds are below `ns * 10^9` by less than 2^-15 of it
/// (truncating to 16 significant bits never rounds up).
fn assert_attos_within_2_pow_minus_15(ns: u64, dt: DeltaTime) {
    let exact = u128::from(ns) * u128::from(NS_PER_S);
    let decoded = decode_delta_attos(dt).expect("encoded values fit u128");
    assert!(
        decoded <= exact,
        "{ns} ns: decoded {decoded} > exact {exact}"
    );
    // (exact - decoded) / exact < 2^-15, without division (exact < 2^94, so no overflow).
    assert!(
        (exact - decoded) << 15 < exact || exact == 0,
        "{ns} ns: {dt:?} decodes to {decoded} attoseconds, exact {exact}"
    );
}

/// Asserts whole-nanosecond decoding loses less than 2^-15 of `ns` plus the final floor.
fn assert_ns_within_2_pow_minus_15(ns: u64, dt: DeltaTime) {
    let decoded = decode_delta_ns(dt);
    assert!(decoded <= ns, "{ns} ns decoded as {decoded} ns");
    let err = u128::from(ns - decoded);
    assert!(
        err << 15 < u128::from(ns) + (1 << 15),
        "{ns} ns: {dt:?} decodes to {decoded} ns"
    );
}

#[test]
fn spec_table_encodes_exactly() {
    for &(ns, delta, scale) in SPEC_VECTORS {
        assert_eq!(
            encode_delta_ns(ns),
            DeltaTime { delta, scale },
            "encode_delta_ns({ns})"
        );
    }
}

#[test]
fn spec_table_decodes_within_2_pow_minus_15() {
    for &(ns, delta, scale) in SPEC_VECTORS {
        let dt = DeltaTime { delta, scale };
        assert_attos_within_2_pow_minus_15(ns, dt);
        assert_ns_within_2_pow_minus_15(ns, dt);
        assert_eq!(decode_delta_ns(dt), reference_decode_ns(dt), "{dt:?}");
    }
}

#[test]
fn spec_rtt_example() {
    // docs/pdm.md §6, the observer's RTT: DTLS(p3) - DTLR(p2) = 62 ms - 2 ms.
    let dtlr = decode_delta_ns(DeltaTime {
        delta: 58207,
        scale: 35,
    });
    let dtls = decode_delta_ns(DeltaTime {
        delta: 56388,
        scale: 40,
    });
    let rtt = dtls - dtlr;
    assert!(rtt.abs_diff(60_000_000) < 60_000_000 >> 14, "rtt {rtt} ns");
}

#[test]
fn first_65536_nanoseconds_match_reference() {
    for ns in 0..=1 << 16 {
        assert_eq!(encode_delta_ns(ns), reference_encode(ns), "ns = {ns}");
    }
}

#[test]
fn above_2_pow_43_is_exact() {
    // ns * 5^9 stops fitting one u64 just above 2^43: the two-limb path takes over there.
    for ns in [
        (1 << 43) - 1,
        1 << 43,
        (1 << 43) + 1,
        u64::MAX / 1_953_125,
        u64::MAX / 1_953_125 + 1,
        1 << 63,
        u64::MAX - 1,
        u64::MAX,
    ] {
        assert_eq!(encode_delta_ns(ns), reference_encode(ns), "ns = {ns}");
    }
    assert_eq!(
        encode_delta_ns(u64::MAX),
        DeltaTime {
            delta: 61035,
            scale: 78
        }
    );
}

#[test]
fn decode_ns_saturates() {
    // 2^16 - 1 << 78 attoseconds is about 1.98e10 s, more than u64::MAX ns (1.8e10 s).
    let dt = DeltaTime {
        delta: u16::MAX,
        scale: 78,
    };
    assert_eq!(decode_delta_ns(dt), u64::MAX);
    assert_eq!(reference_decode_ns(dt), u64::MAX);
    // Zero stays zero at any scale.
    assert_eq!(
        decode_delta_ns(DeltaTime {
            delta: 0,
            scale: 255
        }),
        0
    );
}

/// Nanosecond values around every point where bitlen(ns * 10^9) or bitlen(ns * 5^9)
/// changes, i.e. where SCALE steps or the encoder moves to its second limb.
fn boundaries() -> Vec<u64> {
    let mut v = Vec::new();
    for (bits, factor) in (0..=94u32)
        .map(|b| (b, NS_PER_S))
        .chain((0..=85u32).map(|b| (b, 1_953_125)))
    {
        let edge = ((BigUint::from(1u8) << bits) + factor - 1u8) / factor;
        if let Ok(edge) = u64::try_from(&edge) {
            v.extend([edge.saturating_sub(1), edge, edge.saturating_add(1)]);
        }
    }
    v
}

/// Covers 0..=2^40 uniformly, every power of two and its neighbours, the SCALE
/// boundaries, and the whole u64 range including above 2^43.
fn ns_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..=1u64 << 40,
        1 => (0..64u32, -2i64..=2).prop_map(|(k, d)| (1u64 << k).wrapping_add_signed(d)),
        1 => prop::sample::select(boundaries()),
        2 => (1u64 << 43)..=u64::MAX,
        1 => any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn encode_matches_reference(ns in ns_strategy()) {
        prop_assert_eq!(encode_delta_ns(ns), reference_encode(ns));
    }

    #[test]
    fn encode_above_2_pow_43_matches_reference(ns in (1u64 << 43)..=u64::MAX) {
        let dt = encode_delta_ns(ns);
        prop_assert_eq!(dt, reference_encode(ns));
        assert_attos_within_2_pow_minus_15(ns, dt);
    }

    #[test]
    fn round_trip_within_2_pow_minus_15(ns in ns_strategy()) {
        let dt = encode_delta_ns(ns);
        assert_attos_within_2_pow_minus_15(ns, dt);
        assert_ns_within_2_pow_minus_15(ns, dt);
    }

    #[test]
    fn decode_ns_matches_reference(delta in any::<u16>(), scale in any::<u8>()) {
        let dt = DeltaTime { delta, scale };
        prop_assert_eq!(decode_delta_ns(dt), reference_decode_ns(dt));
    }

    #[test]
    fn decode_attos_matches_reference(delta in any::<u16>(), scale in any::<u8>()) {
        let dt = DeltaTime { delta, scale };
        let exact = BigUint::from(delta) << scale;
        prop_assert_eq!(decode_delta_attos(dt), u128::try_from(&exact).ok());
    }
}
