//! Any octets into the shared IPv6 header-chain parser (pdm_common::chain): no panic;
//! the extension headers it reports are contiguous from the fixed header and lie within
//! the buffer; a PDM it reports comes from a Destination Options header of the chain
//! that decodes to the same fields; the upper layer starts where the chain ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdm_common::{
    chain,
    wire::{IPPROTO_DSTOPTS, decode_dstopts},
};

fuzz_target!(|data: &[u8]| {
    let Ok(c) = chain::parse(data) else {
        return;
    };
    let mut at = 40;
    for e in c.extensions() {
        assert_eq!(e.offset, at, "{c:?}");
        assert!(e.len >= 8 && e.offset + e.len <= data.len(), "{c:?}");
        at += e.len;
    }
    assert_eq!(c.upper_offset, at, "{c:?}");
    match (c.pdm, c.pdm_header) {
        (None, None) => {}
        (Some(pdm), Some(i)) => {
            let e = c.extensions()[i];
            assert_eq!(e.proto, IPPROTO_DSTOPTS, "{c:?}");
            let h = decode_dstopts(&data[e.offset..e.offset + e.len]).expect("decodes");
            assert_eq!(h.pdm, Some(pdm));
        }
        _ => panic!("PDM and its header disagree: {c:?}"),
    }
});
