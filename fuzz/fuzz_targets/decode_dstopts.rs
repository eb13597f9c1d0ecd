//! Any octets into the Destination Options decoder: no panic; a header it accepts lies
//! within the buffer; a PDM option it finds survives our own encoder and decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdm_common::wire::decode_dstopts;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = decode_dstopts(data) else {
        return;
    };
    assert!(h.len >= 8 && h.len % 8 == 0 && h.len <= data.len(), "{h:?}");
    assert_eq!(h.next_header, data[0]);
    if let Some(pdm) = h.pdm {
        let again = decode_dstopts(&pdm.encode_header(h.next_header)).expect("our own header");
        assert_eq!(again.pdm, Some(pdm));
        assert_eq!(again.next_header, h.next_header);
    }
});
