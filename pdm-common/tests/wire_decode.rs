//! Decoding Destination Options headers: valid headers with PDM among other options,
//! and each malformation `DecodeError` distinguishes.

use pdm_common::wire::{
    DecodeError, DstOptsHeader, IPPROTO_TCP, IPPROTO_UDP, OPT_PAD1, OPT_PADN, PDM_HEADER_LEN,
    PDM_OPTION_LEN, PDM_OPTION_TYPE, PdmFields, decode_dstopts,
};
use proptest::prelude::*;

const FIELDS: PdmFields = PdmFields {
    scale_dtlr: 35,
    scale_dtls: 40,
    psn_this: 0xFFFF,
    psn_last_recv: 0x0102,
    dtlr: 58207,
    dtls: 56388,
};

/// The 12 octets of a PDM option (type, length, data) for [`FIELDS`].
fn pdm_option() -> [u8; 12] {
    let hdr = FIELDS.encode_header(0);
    hdr[2..14].try_into().unwrap()
}

#[test]
fn our_header_decodes() {
    let mut buf = FIELDS.encode_header(IPPROTO_UDP).to_vec();
    // Trailing upper-layer bytes are not part of the header.
    buf.extend_from_slice(&[0xAA; 8]);
    assert_eq!(
        decode_dstopts(&buf),
        Ok(DstOptsHeader {
            next_header: IPPROTO_UDP,
            len: PDM_HEADER_LEN,
            pdm: Some(FIELDS),
        })
    );
}

#[test]
fn pdm_among_padding_and_unknown_options() {
    // 24 octets: Pad1, unknown option 0x1E (4 data octets), PDM, PadN(2), Pad1 x2.
    let mut buf = vec![IPPROTO_TCP, 2, OPT_PAD1, 0x1E, 4, 9, 9, 9, 9];
    buf.extend_from_slice(&pdm_option());
    buf.extend_from_slice(&[OPT_PADN, 0, OPT_PAD1]);
    assert_eq!(buf.len(), 24);
    assert_eq!(
        decode_dstopts(&buf),
        Ok(DstOptsHeader {
            next_header: IPPROTO_TCP,
            len: 24,
            pdm: Some(FIELDS),
        })
    );
}

#[test]
fn header_without_pdm() {
    // Unknown option with the "discard" action bits set is still just skipped.
    let buf = [IPPROTO_UDP, 0, 0xC2, 2, 0, 0, OPT_PAD1, OPT_PAD1];
    assert_eq!(
        decode_dstopts(&buf),
        Ok(DstOptsHeader {
            next_header: IPPROTO_UDP,
            len: 8,
            pdm: None,
        })
    );
}

#[test]
fn wrong_pdm_length() {
    for len in [0, 8, 9, 11, 12] {
        let mut buf = FIELDS.encode_header(IPPROTO_UDP);
        buf[3] = len;
        if len < PDM_OPTION_LEN {
            // Keep the option inside the header; fill the rest with Pad1.
            buf[4 + usize::from(len)..].fill(OPT_PAD1);
        }
        assert_eq!(
            decode_dstopts(&buf),
            Err(DecodeError::BadPdmLength { len }),
            "length {len}"
        );
    }
}

#[test]
fn truncated_header() {
    assert_eq!(
        decode_dstopts(&[]),
        Err(DecodeError::Truncated { need: 2, have: 0 })
    );
    assert_eq!(
        decode_dstopts(&[IPPROTO_UDP]),
        Err(DecodeError::Truncated { need: 2, have: 1 })
    );
}

#[test]
fn hdr_ext_len_past_end() {
    let hdr = FIELDS.encode_header(IPPROTO_UDP);
    assert_eq!(
        decode_dstopts(&hdr[..15]),
        Err(DecodeError::HdrExtLenPastEnd {
            header_len: 16,
            available: 15,
        })
    );
    let mut long = hdr;
    long[1] = 255;
    assert_eq!(
        decode_dstopts(&long),
        Err(DecodeError::HdrExtLenPastEnd {
            header_len: 2048,
            available: 16,
        })
    );
}

#[test]
fn option_data_past_end() {
    // PadN claiming 2 data octets where only 1 remains in the 8-octet header.
    let buf = [IPPROTO_UDP, 0, OPT_PAD1, OPT_PAD1, OPT_PAD1, OPT_PADN, 2, 0];
    assert_eq!(
        decode_dstopts(&buf),
        Err(DecodeError::OptionPastEnd { offset: 5 })
    );
    // Extra buffer after the header does not make the option fit.
    let mut longer = buf.to_vec();
    longer.extend_from_slice(&[0; 8]);
    assert_eq!(
        decode_dstopts(&longer),
        Err(DecodeError::OptionPastEnd { offset: 5 })
    );
    // PDM in an 8-octet header: structural error before the PDM length rule.
    let mut short = [0u8; 8];
    short[..2].copy_from_slice(&[IPPROTO_UDP, 0]);
    short[2..].copy_from_slice(&pdm_option()[..6]);
    assert_eq!(
        decode_dstopts(&short),
        Err(DecodeError::OptionPastEnd { offset: 2 })
    );
}

#[test]
fn option_length_octet_past_end() {
    // Last octet of the header is an option type with no room for its length.
    let buf = [IPPROTO_UDP, 0, OPT_PADN, 3, 0, 0, 0, 0x1E];
    assert_eq!(
        decode_dstopts(&buf),
        Err(DecodeError::OptionPastEnd { offset: 7 })
    );
}

#[test]
fn pdm_twice() {
    let mut buf = vec![IPPROTO_UDP, 3];
    buf.extend_from_slice(&pdm_option());
    buf.extend_from_slice(&pdm_option());
    buf.extend_from_slice(&[OPT_PADN, 4, 0, 0, 0, 0]);
    assert_eq!(buf.len(), 32);
    assert_eq!(decode_dstopts(&buf), Err(DecodeError::DuplicatePdm));
}

#[test]
fn errors_display() {
    let cases: [(DecodeError, &str); 5] = [
        (
            DecodeError::Truncated { need: 2, have: 1 },
            "destination options header truncated: need 2 octets, have 1",
        ),
        (
            DecodeError::HdrExtLenPastEnd {
                header_len: 16,
                available: 15,
            },
            "destination options Hdr Ext Len gives 16 octets but only 15 available",
        ),
        (
            DecodeError::OptionPastEnd { offset: 5 },
            "option at offset 5 runs past the end of the destination options header",
        ),
        (
            DecodeError::BadPdmLength { len: 12 },
            "PDM option length is 12, expected 10",
        ),
        (
            DecodeError::DuplicatePdm,
            "more than one PDM option in one destination options header",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
        let _: &dyn std::error::Error = &err;
    }
}

#[test]
fn option_type_constant_is_skippable() {
    // Top two bits 00: unknown-option action "skip"; third bit 0: data does not change.
    assert_eq!(PDM_OPTION_TYPE >> 5, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Any bytes give `Ok` or a typed error, never a panic, and `Ok` lengths are sane.
    #[test]
    fn never_panics_on_arbitrary_bytes(
        mut buf in prop::collection::vec(any::<u8>(), 0..64),
        small_len in any::<bool>(),
    ) {
        // Mostly keep Hdr Ext Len within the buffer so the option walk is exercised.
        if small_len && buf.len() > 1 {
            buf[1] %= 8;
        }
        if let Ok(h) = decode_dstopts(&buf) {
            prop_assert!(h.len <= buf.len() && h.len % 8 == 0);
            prop_assert_eq!(h.next_header, buf[0]);
        }
    }

    /// Any PDM field values survive encode_header then decode_dstopts.
    #[test]
    fn encode_then_decode(
        scale_dtlr in any::<u8>(), scale_dtls in any::<u8>(), psn_this in any::<u16>(),
        psn_last_recv in any::<u16>(), dtlr in any::<u16>(), dtls in any::<u16>(),
        next_header in any::<u8>(),
    ) {
        let f = PdmFields { scale_dtlr, scale_dtls, psn_this, psn_last_recv, dtlr, dtls };
        let hdr = f.encode_header(next_header);
        prop_assert_eq!(
            decode_dstopts(&hdr),
            Ok(DstOptsHeader { next_header, len: PDM_HEADER_LEN, pdm: Some(f) })
        );
        let data: &[u8; 10] = hdr[4..14].try_into().unwrap();
        prop_assert_eq!(PdmFields::from_option_data(data), f);
    }
}
