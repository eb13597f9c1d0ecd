//! Any delay through the delta-time encoder: the wire value is the spec's floor to 16
//! significant bits, and decoding gives it back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdm_common::time::{DeltaTime, decode_delta_attos, decode_delta_ns, encode_delta_ns};

fuzz_target!(|input: (u64, u16, u8)| {
    let (ns, delta, scale) = input;
    let e = encode_delta_ns(ns);
    let attos = u128::from(ns) * 1_000_000_000;
    let back = decode_delta_attos(e).expect("an encoded value fits 128 bits");
    assert!(back <= attos && attos - back < 1u128 << e.scale, "{ns}: {e:?}");
    assert!(ns == 0 || e.delta >= 0x8000, "{ns}: not normalised: {e:?}");
    assert!(decode_delta_ns(e) <= ns);
    // Whatever a peer sends decodes without panicking, to floor(attos / 10^9).
    let any = DeltaTime { delta, scale };
    if let Some(a) = decode_delta_attos(any) {
        let ns = a / 1_000_000_000;
        assert_eq!(u128::from(decode_delta_ns(any)), ns.min(u128::from(u64::MAX)));
    }
});
