//! Bounded walk of the outer IPv6 header chain, shared by egress and ingress.
//!
//! The common case (IPv6 straight to TCP/UDP/ICMPv6) reads at constant offsets through
//! direct packet pointers. Extension headers take a slower path that reads through the
//! load-bytes helpers: their variable offsets then never become packet-pointer
//! arithmetic, which the verifier would have to track precisely through every
//! iteration (it gave up at a million instructions when we tried). Every read is
//! bounds-checked, so a truncated or lying packet only ends the walk.
//! Only the outer chain is walked: an ICMPv6 error's quoted packet is never looked at,
//! so a quoted PDM can never be taken as received.

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::{bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
};
use pdm_common::wire::{
    IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_ESP, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMPV6,
    IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, PDM_OPTION_LEN, PDM_OPTION_TYPE, PdmFields,
};

pub const ETH_HLEN: usize = 14;
pub const IPV6_HLEN: usize = 40;
const ETH_P_IPV6: u16 = 0x86DD;

/// Extension headers walked before giving up (counted as unparsable).
const MAX_EXT_HEADERS: usize = 6;
/// Options examined inside one Destination Options header.
const MAX_OPTIONS: usize = 8;
/// Hop-by-Hop + Routing octets egress will move to keep RFC 8200 order.
pub const MAX_PREFIX: usize = 256;

/// Why a packet was not handled; each maps to its own counter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotIpv6,
    Unparsable,
    NdMld,
    NotEligible,
}

/// What the walk learnt about one packet. Offsets are from the start of the frame.
pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Upper-layer protocol (or ESP when the rest is encrypted).
    pub proto: u8,
    pub payload_len: u16,
    /// Where PDM goes on egress: after the IPv6 header and any Hop-by-Hop/Routing.
    pub insert_off: usize,
    /// Offset of the Next Header byte that must point at our header on egress.
    pub nh_field_off: usize,
    /// The Next Header value found at `nh_field_off` (what PDM's own field becomes).
    pub nh_at_insert: u8,
    /// A Destination Options header is present (with or without PDM).
    pub has_dstopts: bool,
    /// PDM found in the first Destination Options header.
    pub pdm: Option<PdmFields>,
    /// PDM present but malformed (wrong length, or twice).
    pub bad_pdm: bool,
    /// Offset of the upper-layer header (TCP/UDP/ICMPv6), 0 if absent (fragment, ESP).
    pub l4_off: usize,
    /// TCP header length in octets, 8 for UDP, 0 otherwise.
    pub l4_hdr_len: usize,
    /// TCP flags byte (SYN detection), 0 for other protocols.
    pub tcp_flags: u8,
}

/// Returns a pointer to `N` readable octets at `off`, or None past `data_end`.
#[inline(always)]
pub fn bytes<const N: usize>(data: usize, data_end: usize, off: usize) -> Option<*mut [u8; N]> {
    let start = data + off;
    if start + N > data_end {
        return None;
    }
    Some(start as *mut [u8; N])
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

pub const fn is_nd_mld(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=138 | 143)
}

/// Where slow-path reads come from.
#[derive(Clone, Copy)]
pub enum Source {
    Skb(*mut __sk_buff),
    Xdp(*mut xdp_md),
}

impl Source {
    /// `N` octets at `off` through the helper (bounds-checked by the kernel).
    #[inline(always)]
    pub fn load<const N: usize>(self, off: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        let dst = buf.as_mut_ptr().cast();
        // SAFETY: `buf` holds N octets; the helpers check the packet side.
        let ret = unsafe {
            match self {
                Source::Skb(skb) => bpf_skb_load_bytes(skb.cast(), off as u32, dst, N as u32),
                Source::Xdp(xdp) => bpf_xdp_load_bytes(xdp, off as u32, dst, N as u32),
            }
        };
        if ret == 0 { Some(buf) } else { None }
    }

    /// Writes `N` octets at `off` through the helper.
    #[inline(always)]
    pub fn store<const N: usize>(self, off: usize, v: &[u8; N]) -> Option<()> {
        let from = v.as_ptr() as *mut core::ffi::c_void;
        // SAFETY: `v` holds N octets; the helpers check the packet side.
        let ret = unsafe {
            match self {
                Source::Skb(skb) => bpf_skb_store_bytes(skb.cast(), off as u32, from, N as u32, 0),
                Source::Xdp(xdp) => bpf_xdp_store_bytes(xdp, off as u32, from, N as u32),
            }
        };
        if ret == 0 { Some(()) } else { None }
    }
}

/// Walks Ethernet / IPv6 / extension headers / upper-layer header.
#[inline(always)]
pub fn parse(data: usize, data_end: usize, src: Source) -> Result<Packet, Skip> {
    let eth = bytes::<ETH_HLEN>(data, data_end, 0).ok_or(Skip::Unparsable)?;
    // SAFETY: bounds-checked above.
    let eth = unsafe { &*eth };
    if be16(eth, 12) != ETH_P_IPV6 {
        return Err(Skip::NotIpv6);
    }
    let ip = bytes::<IPV6_HLEN>(data, data_end, ETH_HLEN).ok_or(Skip::Unparsable)?;
    // SAFETY: bounds-checked above.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return Err(Skip::Unparsable);
    }
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    src_addr.copy_from_slice(&ip[8..24]);
    dst_addr.copy_from_slice(&ip[24..40]);

    let mut p = Packet {
        src: src_addr,
        dst: dst_addr,
        sport: 0,
        dport: 0,
        proto: ip[6],
        payload_len: be16(ip, 4),
        insert_off: ETH_HLEN + IPV6_HLEN,
        nh_field_off: ETH_HLEN + 6,
        nh_at_insert: ip[6],
        has_dstopts: false,
        pdm: None,
        bad_pdm: false,
        l4_off: 0,
        l4_hdr_len: 0,
        tcp_flags: 0,
    };
    if matches!(ip[6], IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
        // Fast path: no extension headers, upper layer at a constant offset.
        let h = bytes::<8>(data, data_end, ETH_HLEN + IPV6_HLEN).ok_or(Skip::Unparsable)?;
        // SAFETY: bounds-checked above.
        let h = unsafe { &*h };
        let tcp = if ip[6] == IPPROTO_TCP {
            // SAFETY: bounds-checked before use.
            bytes::<20>(data, data_end, ETH_HLEN + IPV6_HLEN)
                .map(|t| unsafe { [(*t)[12], (*t)[13]] })
        } else {
            None
        };
        p.l4_off = ETH_HLEN + IPV6_HLEN;
        return upper_layer(p, h, tcp);
    }
    walk(p, src)
}

/// The slow path: extension headers, read through the helpers.
#[inline(always)]
fn walk(mut p: Packet, src: Source) -> Result<Packet, Skip> {
    let mut nh = p.proto;
    let mut off = ETH_HLEN + IPV6_HLEN;
    // Still in the part of the chain that must precede PDM (Hop-by-Hop, Routing).
    let mut in_prefix = true;
    let mut end = End::Exhausted;
    for i in 0..MAX_EXT_HEADERS {
        match nh {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {
                end = End::Upper;
                break;
            }
            IPPROTO_ESP => {
                // Encrypted from here on: no ports to read.
                end = End::Opaque;
                break;
            }
            IPPROTO_FRAGMENT => {
                let h = src.load::<2>(off).ok_or(Skip::Unparsable)?;
                // Only the first fragment has ports, so every fragment of a datagram is
                // keyed with ports 0 and the protocol it carries.
                nh = h[0];
                end = End::Opaque;
                break;
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                if nh == IPPROTO_HOPOPTS && i != 0 {
                    return Err(Skip::Unparsable);
                }
                let [next, hlen] = src.load::<2>(off).ok_or(Skip::Unparsable)?;
                let len = if nh == IPPROTO_AH {
                    (hlen as usize + 2) * 4
                } else {
                    (hlen as usize + 1) * 8
                };
                if nh == IPPROTO_DSTOPTS && !p.has_dstopts {
                    p.has_dstopts = true;
                    find_pdm(&mut p, src, off, len);
                }
                if nh == IPPROTO_DSTOPTS || nh == IPPROTO_AH {
                    in_prefix = false;
                }
                if in_prefix {
                    p.nh_field_off = off;
                    p.nh_at_insert = next;
                    p.insert_off = off + len;
                }
                nh = next;
                off += len;
            }
            _ => return Err(Skip::NotEligible),
        }
    }
    p.proto = nh;
    match end {
        End::Exhausted => Err(Skip::Unparsable),
        End::Opaque => {
            if matches!(
                nh,
                IPPROTO_TCP
                    | IPPROTO_UDP
                    | IPPROTO_ICMPV6
                    | IPPROTO_ESP
                    | IPPROTO_AH
                    | IPPROTO_DSTOPTS
            ) {
                Ok(p)
            } else {
                Err(Skip::NotEligible)
            }
        }
        End::Upper => {
            let h = src.load::<8>(off).ok_or(Skip::Unparsable)?;
            let tcp = if nh == IPPROTO_TCP {
                src.load::<20>(off).map(|t| [t[12], t[13]])
            } else {
                None
            };
            p.l4_off = off;
            upper_layer(p, &h, tcp)
        }
    }
}

/// Where the header walk stopped.
enum End {
    /// Ran out of iterations: too many extension headers.
    Exhausted,
    /// At TCP, UDP or ICMPv6.
    Upper,
    /// At a fragment or ESP: nothing more to read.
    Opaque,
}

/// Ports (or echo identifier) from the first 8 octets of the upper-layer header;
/// `tcp` = the data-offset and flags octets of a complete TCP header.
#[inline(always)]
fn upper_layer(mut p: Packet, h: &[u8; 8], tcp: Option<[u8; 2]>) -> Result<Packet, Skip> {
    match p.proto {
        IPPROTO_TCP => {
            let [doff, flags] = tcp.ok_or(Skip::Unparsable)?;
            p.sport = be16(h, 0);
            p.dport = be16(h, 2);
            p.l4_hdr_len = ((doff >> 4) as usize) * 4;
            p.tcp_flags = flags;
        }
        IPPROTO_UDP => {
            p.sport = be16(h, 0);
            p.dport = be16(h, 2);
            p.l4_hdr_len = 8;
        }
        _ => {
            if is_nd_mld(h[0]) {
                return Err(Skip::NdMld);
            }
            // Echo request/reply: the identifier stands in for the ports.
            if h[0] == 128 || h[0] == 129 {
                p.sport = be16(h, 4);
                p.dport = p.sport;
            }
        }
    }
    Ok(p)
}

/// Looks for PDM among the options of the Destination Options header at `off`.
#[inline(always)]
fn find_pdm(p: &mut Packet, src: Source, off: usize, len: usize) {
    let end = off + len;
    let mut o = off + 2;
    for _ in 0..MAX_OPTIONS {
        if o >= end {
            return;
        }
        // One 2-octet read for type and length: a Pad1 in the very last octet of the
        // packet fails it, which is fine, since no PDM can follow it.
        let Some([ty, olen]) = src.load::<2>(o) else {
            return;
        };
        if ty == 0 {
            // Pad1 has no length octet.
            o += 1;
            continue;
        }
        let olen = olen as usize;
        if ty == PDM_OPTION_TYPE {
            if olen != PDM_OPTION_LEN as usize || p.pdm.is_some() || o + 2 + olen > end {
                p.bad_pdm = true;
                p.pdm = None;
                return;
            }
            let Some(d) = src.load::<10>(o + 2) else {
                p.bad_pdm = true;
                return;
            };
            p.pdm = Some(PdmFields::from_option_data(&d));
        }
        o += 2 + olen;
    }
}
