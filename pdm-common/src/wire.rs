//! The IPv6 Destination Options header carrying the PDM option (RFC 8250 section 3),
//! as laid out in `docs/pdm.md` §2.
//!
//! Encoding is a fixed 16-octet array so the BPF side can write it with no bounds checks
//! to satisfy. Decoding walks arbitrary headers from the wire and is for userspace and
//! tests; it never panics, whatever the input.

use core::fmt;

/// IPv6 Hop-by-Hop Options header.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 Routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 Fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// Encapsulating Security Payload.
pub const IPPROTO_ESP: u8 = 50;
/// Authentication Header.
pub const IPPROTO_AH: u8 = 51;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// No next header.
pub const IPPROTO_NONE: u8 = 59;
/// IPv6 Destination Options header.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Wireshark's names of the six PDM fields, in wire order (raw values; tshark does not
/// apply the scales). `ipv6.opt.pdm` alone is not a field.
pub const TSHARK_PDM_FIELDS: [&str; 6] = [
    "ipv6.opt.pdm.scale_dtlr",
    "ipv6.opt.pdm.scale_dtls",
    "ipv6.opt.pdm.psn_this_pkt",
    "ipv6.opt.pdm.psn_last_recv",
    "ipv6.opt.pdm.delta_last_recv",
    "ipv6.opt.pdm.delta_last_sent",
];

/// Pad1 option: a single zero octet with no length field.
pub const OPT_PAD1: u8 = 0;
/// PadN option: type, length, then `length` zero octets.
pub const OPT_PADN: u8 = 1;

/// PDM option type. 0b00_0_01111: unknown to a receiver means "skip and continue",
/// and the data does not change en route.
pub const PDM_OPTION_TYPE: u8 = 0x0F;
/// PDM option data length; anything else is invalid (Wireshark: "PDM: Invalid length").
pub const PDM_OPTION_LEN: u8 = 10;
/// Hdr Ext Len of the header we insert: 8-octet units beyond the first, `16 / 8 - 1`.
pub const PDM_HDR_EXT_LEN: u8 = 1;
/// Length of the whole Destination Options header we insert: 2 + (2 + 10) + 2 (PadN).
pub const PDM_HEADER_LEN: usize = 16;
/// The smallest MTU of any link that carries IPv6 (RFC 8200 section 5).
pub const IPV6_MIN_MTU: u32 = 1280;

/// The PDM option fields, as host-order values (the wire is big-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PdmFields {
    /// ScaleDTLR: scale of `dtlr`.
    pub scale_dtlr: u8,
    /// ScaleDTLS: scale of `dtls`.
    pub scale_dtls: u8,
    /// PSN This Packet.
    pub psn_this: u16,
    /// PSN Last Received: PSNTP of the last packet received on the reverse direction.
    pub psn_last_recv: u16,
    /// Delta Time Last Received (mantissa).
    pub dtlr: u16,
    /// Delta Time Last Sent (mantissa).
    pub dtls: u16,
}

impl PdmFields {
    /// The 16-octet header:
    /// `[next_header, 1, 0x0F, 10, scale_dtlr, scale_dtls, psn_this BE, psn_last_recv BE,
    /// dtlr BE, dtls BE, 0x01, 0x00]`. The trailing PadN of length 0 rounds the header up
    /// to a multiple of 8 octets.
    #[inline(always)]
    pub const fn encode_header(&self, next_header: u8) -> [u8; PDM_HEADER_LEN] {
        let psn_this = self.psn_this.to_be_bytes();
        let psn_last_recv = self.psn_last_recv.to_be_bytes();
        let dtlr = self.dtlr.to_be_bytes();
        let dtls = self.dtls.to_be_bytes();
        [
            next_header,
            PDM_HDR_EXT_LEN,
            PDM_OPTION_TYPE,
            PDM_OPTION_LEN,
            self.scale_dtlr,
            self.scale_dtls,
            psn_this[0],
            psn_this[1],
            psn_last_recv[0],
            psn_last_recv[1],
            dtlr[0],
            dtlr[1],
            dtls[0],
            dtls[1],
            OPT_PADN,
            0,
        ]
    }

    /// Parses the 10 option-data octets (those after the option type and length).
    #[inline(always)]
    pub const fn from_option_data(d: &[u8; PDM_OPTION_LEN as usize]) -> Self {
        Self {
            scale_dtlr: d[0],
            scale_dtls: d[1],
            psn_this: u16::from_be_bytes([d[2], d[3]]),
            psn_last_recv: u16::from_be_bytes([d[4], d[5]]),
            dtlr: u16::from_be_bytes([d[6], d[7]]),
            dtls: u16::from_be_bytes([d[8], d[9]]),
        }
    }
}

/// A decoded Destination Options header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DstOptsHeader {
    /// Protocol of the header that follows.
    pub next_header: u8,
    /// Total length in octets, `(Hdr Ext Len + 1) * 8`: where the next header starts.
    pub len: usize,
    /// The PDM option, if the header carries one.
    pub pdm: Option<PdmFields>,
}

/// Why a buffer is not a well-formed Destination Options header.
///
/// Checks run in wire order: the fixed two octets, then the header length, then each
/// option in turn; an option must fit in the header before its PDM-specific rules are
/// checked, so the first problem met is the one reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer than the 2 octets (Next Header, Hdr Ext Len) every header has.
    Truncated {
        /// Octets needed (2).
        need: usize,
        /// Octets in the buffer.
        have: usize,
    },
    /// Hdr Ext Len says the header is longer than the buffer.
    HdrExtLenPastEnd {
        /// `(Hdr Ext Len + 1) * 8`.
        header_len: usize,
        /// Octets in the buffer.
        available: usize,
    },
    /// The option starting at `offset` (from the start of the header) has its length
    /// octet, or its data, past the end of the header.
    OptionPastEnd {
        /// Offset of the option's type octet.
        offset: usize,
    },
    /// A PDM option whose data length is not [`PDM_OPTION_LEN`].
    BadPdmLength {
        /// The length octet found.
        len: u8,
    },
    /// A second PDM option in the same header (RFC 8250 allows one).
    DuplicatePdm,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { need, have } => write!(
                f,
                "destination options header truncated: need {need} octets, have {have}"
            ),
            Self::HdrExtLenPastEnd {
                header_len,
                available,
            } => write!(
                f,
                "destination options Hdr Ext Len gives {header_len} octets but only {available} available"
            ),
            Self::OptionPastEnd { offset } => write!(
                f,
                "option at offset {offset} runs past the end of the destination options header"
            ),
            Self::BadPdmLength { len } => {
                write!(f, "PDM option length is {len}, expected {PDM_OPTION_LEN}")
            }
            Self::DuplicatePdm => {
                f.write_str("more than one PDM option in one destination options header")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

/// Decodes a whole Destination Options header starting at `buf[0]`; `buf` may extend
/// past it (the upper-layer header usually follows).
///
/// Walks every option: Pad1 is one octet, PadN and unknown options are skipped by their
/// length whatever their action bits say (this is a parser, not a receiver deciding to
/// drop), and PDM is parsed. Padding contents are not checked.
pub fn decode_dstopts(buf: &[u8]) -> Result<DstOptsHeader, DecodeError> {
    let (next_header, hdr_ext_len) = match buf {
        [nh, len, ..] => (*nh, *len),
        _ => {
            return Err(DecodeError::Truncated {
                need: 2,
                have: buf.len(),
            });
        }
    };
    let len = (usize::from(hdr_ext_len) + 1) * 8;
    let Some(header) = buf.get(..len) else {
        return Err(DecodeError::HdrExtLenPastEnd {
            header_len: len,
            available: buf.len(),
        });
    };

    let mut pdm = None;
    let mut offset = 2;
    while let Some(&opt_type) = header.get(offset) {
        if opt_type == OPT_PAD1 {
            offset += 1;
            continue;
        }
        let Some(&opt_len) = header.get(offset + 1) else {
            return Err(DecodeError::OptionPastEnd { offset });
        };
        let data_start = offset + 2;
        let Some(data) = header.get(data_start..data_start + usize::from(opt_len)) else {
            return Err(DecodeError::OptionPastEnd { offset });
        };
        if opt_type == PDM_OPTION_TYPE {
            let Ok(data) = <&[u8; PDM_OPTION_LEN as usize]>::try_from(data) else {
                return Err(DecodeError::BadPdmLength { len: opt_len });
            };
            if pdm.is_some() {
                return Err(DecodeError::DuplicatePdm);
            }
            pdm = Some(PdmFields::from_option_data(data));
        }
        offset = data_start + data.len();
    }

    Ok(DstOptsHeader {
        next_header,
        len,
        pdm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_header_literal() {
        let f = PdmFields {
            scale_dtlr: 0x23,
            scale_dtls: 0x28,
            psn_this: 0x1234,
            psn_last_recv: 0xABCD,
            dtlr: 0xE35F,
            dtls: 0xDC44,
        };
        assert_eq!(
            f.encode_header(IPPROTO_UDP),
            [
                17, 1, 0x0F, 10, 0x23, 0x28, 0x12, 0x34, 0xAB, 0xCD, 0xE3, 0x5F, 0xDC, 0x44, 0x01,
                0x00
            ]
        );
    }

    #[test]
    fn encode_header_zero_and_max() {
        assert_eq!(
            PdmFields::default().encode_header(IPPROTO_TCP),
            [6, 1, 0x0F, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
        let max = PdmFields {
            scale_dtlr: 0xFF,
            scale_dtls: 0xFF,
            psn_this: 0xFFFF,
            psn_last_recv: 0xFFFF,
            dtlr: 0xFFFF,
            dtls: 0xFFFF,
        };
        assert_eq!(
            max.encode_header(IPPROTO_NONE),
            [
                59, 1, 0x0F, 10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 0
            ]
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let f = PdmFields {
            scale_dtlr: 14,
            scale_dtls: 54,
            psn_this: 0,
            psn_last_recv: 65535,
            dtlr: 61035,
            dtls: 1,
        };
        let hdr = f.encode_header(IPPROTO_ICMPV6);
        assert_eq!(
            decode_dstopts(&hdr),
            Ok(DstOptsHeader {
                next_header: IPPROTO_ICMPV6,
                len: PDM_HEADER_LEN,
                pdm: Some(f),
            })
        );
    }
}
