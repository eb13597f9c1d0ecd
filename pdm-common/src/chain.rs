//! An IPv6 packet's header chain as a host reads it — from a capture, inside an ICMPv6
//! error, in a test: every extension header in order, the PDM option wherever the
//! sender put it (after Hop-by-Hop/Routing, before or after a Fragment header, before
//! AH/ESP), the fragment, and the upper layer with its ports. One parser for every
//! userspace reader; the eBPF programs walk the chain their own bounded way
//! (`pdm-ebpf/src/parse.rs`). Never panics, whatever the input (a cargo-fuzz target
//! checks that).
//!
//! Placement rules: docs/pdm.md §3.

use crate::wire::{
    self, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_ESP, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, PdmFields,
};

/// Extension headers kept; a longer chain is [`ChainError::TooManyHeaders`].
pub const MAX_EXTENSIONS: usize = 16;

const IPV6_HLEN: usize = 40;

/// One extension header: its protocol number, where it starts (from the IPv6 header)
/// and its length in octets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extension {
    pub proto: u8,
    pub offset: usize,
    pub len: usize,
}

/// A Fragment header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data, in octets.
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

/// The upper layer, as far as the packet holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upper {
    Tcp {
        sport: u16,
        dport: u16,
        /// The flags octet (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
        flags: u8,
        /// Header length in octets (data offset × 4).
        header_len: usize,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmpv6 {
        ty: u8,
        code: u8,
        /// Echo request/reply: (identifier, sequence).
        echo: Option<(u16, u16)>,
    },
    /// Another protocol, ESP (encrypted), a non-first fragment, or an upper-layer header
    /// cut short: nothing more is read.
    Opaque,
}

/// Why a buffer is not an IPv6 packet whose chain can be walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// Shorter than the fixed header, or not version 6.
    NotIpv6,
    /// An extension header runs past the end of the buffer.
    Truncated { proto: u8, offset: usize },
    /// More than [`MAX_EXTENSIONS`] extension headers.
    TooManyHeaders,
}

impl core::fmt::Display for ChainError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NotIpv6 => f.write_str("not an IPv6 packet"),
            Self::Truncated { proto, offset } => write!(
                f,
                "extension header {proto} at offset {offset} runs past the end of the packet"
            ),
            Self::TooManyHeaders => write!(f, "more than {MAX_EXTENSIONS} extension headers"),
        }
    }
}

impl core::error::Error for ChainError {}

/// A walked IPv6 header chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub payload_len: u16,
    pub hop_limit: u8,
    extensions: [Extension; MAX_EXTENSIONS],
    count: usize,
    /// The PDM option of the first Destination Options header that carries a valid one.
    pub pdm: Option<PdmFields>,
    /// Index (into [`Chain::extensions`]) of the header `pdm` came from.
    pub pdm_header: Option<usize>,
    /// A Destination Options header with a PDM of the wrong length, or PDM twice, or
    /// otherwise malformed: counted by readers, never taken for a measurement.
    pub bad_pdm: bool,
    pub fragment: Option<Fragment>,
    /// An Authentication Header is in the chain.
    pub ah: bool,
    /// The protocol after the extension headers, and where it starts.
    pub upper_proto: u8,
    pub upper_offset: usize,
    pub upper: Upper,
}

impl Chain {
    /// The extension headers, in order.
    pub fn extensions(&self) -> &[Extension] {
        &self.extensions[..self.count]
    }
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Walks the chain of the IPv6 packet `p` (starting at its IPv6 header).
pub fn parse(p: &[u8]) -> Result<Chain, ChainError> {
    if p.len() < IPV6_HLEN || p[0] >> 4 != 6 {
        return Err(ChainError::NotIpv6);
    }
    let mut c = Chain {
        src: p[8..24].try_into().expect("16 octets"),
        dst: p[24..40].try_into().expect("16 octets"),
        payload_len: u16::from_be_bytes([p[4], p[5]]),
        hop_limit: p[7],
        extensions: [Extension::default(); MAX_EXTENSIONS],
        count: 0,
        pdm: None,
        pdm_header: None,
        bad_pdm: false,
        fragment: None,
        ah: false,
        upper_proto: p[6],
        upper_offset: IPV6_HLEN,
        upper: Upper::Opaque,
    };
    let (mut next, mut off) = (p[6], IPV6_HLEN);
    loop {
        let truncated = ChainError::Truncated {
            proto: next,
            offset: off,
        };
        let len = match next {
            // Hop-by-Hop is only valid first; later it is left to the upper-layer rule.
            IPPROTO_HOPOPTS if c.count == 0 => ext_len(p, next, off, 8)?,
            IPPROTO_ROUTING => ext_len(p, next, off, 8)?,
            IPPROTO_DSTOPTS => {
                let len = ext_len(p, next, off, 8)?;
                match wire::decode_dstopts(&p[off..off + len]) {
                    Ok(h) => {
                        if let (Some(pdm), None) = (h.pdm, c.pdm) {
                            c.pdm = Some(pdm);
                            c.pdm_header = Some(c.count);
                        }
                    }
                    Err(_) => c.bad_pdm |= has_pdm_type(&p[off..off + len]),
                }
                len
            }
            IPPROTO_FRAGMENT => {
                let f = p.get(off..off + 8).ok_or(truncated)?;
                let word = u16::from_be_bytes([f[2], f[3]]);
                c.fragment = Some(Fragment {
                    offset: word & !7,
                    more: word & 1 != 0,
                    id: u32::from_be_bytes([f[4], f[5], f[6], f[7]]),
                });
                8
            }
            IPPROTO_AH => {
                c.ah = true;
                ext_len(p, next, off, 4)?
            }
            _ => break,
        };
        if c.count == MAX_EXTENSIONS {
            return Err(ChainError::TooManyHeaders);
        }
        c.extensions[c.count] = Extension {
            proto: next,
            offset: off,
            len,
        };
        c.count += 1;
        next = p[off];
        off += len;
    }
    c.upper_proto = next;
    c.upper_offset = off;
    let first_fragment = c.fragment.is_none_or(|f| f.offset == 0);
    if first_fragment && next != IPPROTO_ESP && next != IPPROTO_NONE {
        c.upper = upper(next, p.get(off..).unwrap_or_default()).unwrap_or(Upper::Opaque);
    }
    Ok(c)
}

/// Length of the extension header at `off` whose Hdr Ext Len counts `unit`-octet units
/// beyond the first (8 for most; AH counts 4-octet units beyond the first two).
fn ext_len(p: &[u8], proto: u8, off: usize, unit: usize) -> Result<usize, ChainError> {
    let truncated = ChainError::Truncated { proto, offset: off };
    let n = usize::from(*p.get(off + 1).ok_or(truncated)?);
    let len = if unit == 4 { (n + 2) * 4 } else { (n + 1) * 8 };
    if off + len > p.len() {
        return Err(truncated);
    }
    Ok(len)
}

/// Whether a (malformed) Destination Options header holds an option of PDM's type:
/// options walked as far as their lengths allow.
fn has_pdm_type(h: &[u8]) -> bool {
    let mut i = 2;
    while let Some(&ty) = h.get(i) {
        if ty == wire::PDM_OPTION_TYPE {
            return true;
        }
        if ty == wire::OPT_PAD1 {
            i += 1;
            continue;
        }
        let Some(&len) = h.get(i + 1) else {
            return false;
        };
        i += 2 + usize::from(len);
    }
    false
}

fn upper(proto: u8, u: &[u8]) -> Option<Upper> {
    Some(match proto {
        IPPROTO_TCP => Upper::Tcp {
            sport: be16(u, 0)?,
            dport: be16(u, 2)?,
            flags: *u.get(13)?,
            header_len: usize::from(*u.get(12)? >> 4) * 4,
        },
        IPPROTO_UDP => Upper::Udp {
            sport: be16(u, 0)?,
            dport: be16(u, 2)?,
        },
        IPPROTO_ICMPV6 => {
            let (ty, code) = (*u.first()?, *u.get(1)?);
            // Echo request (128) and reply (129) carry an identifier and a sequence.
            let echo = matches!(ty, 128 | 129)
                .then(|| Some((be16(u, 4)?, be16(u, 6)?)))
                .flatten();
            Upper::Icmpv6 { ty, code, echo }
        }
        _ => Upper::Opaque,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    const PDM: PdmFields = PdmFields {
        scale_dtlr: 35,
        scale_dtls: 40,
        psn_this: 0x1234,
        psn_last_recv: 0x0abc,
        dtlr: 58207,
        dtls: 56388,
    };

    /// An IPv6 packet from `exts` (protocol, body without its Next Header octet) and an
    /// upper layer.
    fn packet(exts: &[(u8, Vec<u8>)], upper_proto: u8, upper: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (_, e)) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(upper_proto, |n| n.0);
            body.push(next);
            body.extend_from_slice(e);
        }
        body.extend_from_slice(upper);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(body.len() as u16).to_be_bytes());
        p.push(exts.first().map_or(upper_proto, |e| e.0));
        p.push(64);
        p.extend_from_slice(&[0xfd; 16]);
        p.extend_from_slice(&[0xfe; 16]);
        p.extend_from_slice(&body);
        p
    }

    fn pdm_ext() -> (u8, Vec<u8>) {
        (IPPROTO_DSTOPTS, PDM.encode_header(0)[1..].to_vec())
    }

    fn frag(offset: u16, more: bool) -> (u8, Vec<u8>) {
        let word = offset | u16::from(more);
        let mut f = vec![0];
        f.extend_from_slice(&word.to_be_bytes());
        f.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        (IPPROTO_FRAGMENT, f)
    }

    const UDP: [u8; 8] = [0x13, 0x88, 0x17, 0x70, 0, 8, 0, 0];

    #[test]
    fn pdm_is_found_wherever_the_sender_put_it() {
        let hbh = (IPPROTO_HOPOPTS, vec![0, 1, 4, 0, 0, 0, 0]);
        let routing = (IPPROTO_ROUTING, vec![0, 0, 0, 0, 0, 0, 0]);
        let ah = (IPPROTO_AH, vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for (what, exts, at) in [
            ("right after IPv6", vec![pdm_ext()], 0),
            (
                "after Hop-by-Hop and Routing",
                vec![hbh.clone(), routing, pdm_ext()],
                2,
            ),
            (
                "before a Fragment header (FreeBSD)",
                vec![pdm_ext(), frag(0, true)],
                0,
            ),
            (
                "after a Fragment header (Linux)",
                vec![frag(0, true), pdm_ext()],
                1,
            ),
            ("before AH", vec![pdm_ext(), ah], 0),
        ] {
            let c = parse(&packet(&exts, IPPROTO_UDP, &UDP)).expect(what);
            assert_eq!((c.pdm, c.pdm_header), (Some(PDM), Some(at)), "{what}");
            assert_eq!(
                c.upper,
                Upper::Udp {
                    sport: 5000,
                    dport: 6000
                },
                "{what}"
            );
        }
    }

    #[test]
    fn fragments_esp_and_malformed_pdm() {
        let later = parse(&packet(
            &[pdm_ext(), frag(1448, true)],
            IPPROTO_UDP,
            &[0; 8],
        ))
        .unwrap();
        assert_eq!(later.pdm, Some(PDM));
        assert_eq!(
            later.fragment,
            Some(Fragment {
                offset: 1448,
                more: true,
                id: 0xdead_beef
            })
        );
        assert_eq!(later.upper, Upper::Opaque, "no ports in a later fragment");
        let esp = parse(&packet(&[pdm_ext()], IPPROTO_ESP, &[1; 16])).unwrap();
        assert_eq!(
            (esp.pdm, esp.upper_proto, esp.upper),
            (Some(PDM), IPPROTO_ESP, Upper::Opaque)
        );
        let mut short = pdm_ext();
        short.1[2] = 8; // PDM option length 8
        let bad = parse(&packet(&[short], IPPROTO_UDP, &UDP)).unwrap();
        assert_eq!((bad.pdm, bad.bad_pdm), (None, true));
    }

    #[test]
    fn truncation_and_garbage_are_errors_not_panics() {
        let p = packet(&[pdm_ext()], IPPROTO_UDP, &UDP);
        assert_eq!(parse(&p[..20]), Err(ChainError::NotIpv6));
        assert!(matches!(parse(&p[..50]), Err(ChainError::Truncated { .. })));
        // Cut inside the upper layer: the chain is fine, the ports are not there.
        let c = parse(&p[..p.len() - 6]).unwrap();
        assert_eq!(c.upper, Upper::Opaque);
        for len in 0..p.len() {
            let _ = parse(&p[..len]);
        }
    }
}
