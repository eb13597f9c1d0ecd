//! Bounded walk of the outer IPv6 header chain, shared by egress and ingress.
//!
//! The common cases (IPv6 straight to TCP/UDP/ICMPv6, or with just a PDM header in
//! between) read at constant offsets through direct packet pointers. Extension headers take a slower path that reads through the
//! load-bytes helpers: their variable offsets then never become packet-pointer
//! arithmetic, which the verifier would have to track precisely through every
//! iteration (it gave up at a million instructions when we tried). Every read is
//! bounds-checked, so a truncated or lying packet only ends the walk.
//! Only the outer chain is walked: an ICMPv6 error's quoted packet is never looked at,
//! so a quoted PDM can never be taken as received.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::{
        bpf_loop, bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
};
use pdm_common::wire::{
    IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_ESP, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMPV6,
    IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, OPT_PADN, PDM_HEADER_LEN, PDM_OPTION_LEN,
    PDM_OPTION_TYPE, PdmFields,
};

pub const ETH_HLEN: usize = 14;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const IPV6_HLEN: usize = 40;
const ETH_P_IPV6: u16 = 0x86DD;

/// Extension headers walked before giving up (counted as unparsable).
const MAX_EXT_HEADERS: usize = 8;
/// Options examined inside one Destination Options header.
const MAX_OPTIONS: usize = 16;
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
    /// An Authentication Header protects the headers in front of it (AH's ICV covers
    /// the payload length and every header before it): nothing may be inserted there.
    pub has_ah: bool,
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
    /// [`FRAG_NONE`], or the first or a later fragment of a datagram, and its
    /// identification.
    pub frag: u8,
    pub frag_id: u32,
}

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment of a datagram (its ports are read).
pub const FRAG_FIRST: u8 = 1;
/// A later fragment (no ports in it).
pub const FRAG_LATER: u8 = 2;
/// An atomic fragment: offset 0 and no more to come, a whole datagram.
pub const FRAG_ATOMIC: u8 = 3;

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

/// The 16-octet address at `at` in the IPv6 header, as two 8-octet loads.
#[inline(always)]
fn addr(ip: &[u8; IPV6_HLEN], at: usize) -> [u8; 16] {
    let p = ip.as_ptr() as usize + at;
    let (hi, lo) = (load64(p), load64(p + 8));
    // SAFETY: two u64s and [u8; 16] have the same size, and any bits are valid.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([hi, lo]) }
}

/// Eight octets of the packet at `ptr` in one load, whatever its alignment. The
/// compiler, which may not assume the BPF target reads unaligned memory, turns an
/// unaligned Rust read into eight byte loads and the shifts to join them; an IPv6
/// header sits at an odd multiple of 2 in most frames, so that was 64 loads and 56
/// shifts per packet for the two addresses. The kernel's verifier allows unaligned
/// packet access where the CPU does it cheaply (x86-64, arm64) and rejects the program
/// at load time elsewhere.
#[inline(always)]
pub fn load64(ptr: usize) -> u64 {
    let value;
    // SAFETY: one read inside the bounds the caller checked; the verifier checks it
    // again against the packet's end.
    unsafe {
        core::arch::asm!(
            "{0} = *(u64 *)({1} + 0)",
            lateout(reg) value,
            in(reg) ptr,
            options(nostack, readonly, preserves_flags)
        )
    };
    value
}

/// Eight octets into the packet at `ptr` in one store, whatever its alignment (see
/// [`load64`]).
#[inline(always)]
pub fn store64(ptr: usize, value: u64) {
    // SAFETY: one write inside the bounds the caller checked; the verifier checks it
    // again against the packet's end.
    unsafe {
        core::arch::asm!(
            "*(u64 *)({0} + 0) = {1}",
            in(reg) ptr,
            in(reg) value,
            options(nostack, preserves_flags)
        )
    };
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
        // Uninitialised: the helper fills it (or fails). Zeroing it first costs a memset
        // loop that the verifier walks byte by byte, on every path.
        let mut buf = core::mem::MaybeUninit::<[u8; N]>::uninit();
        let dst = buf.as_mut_ptr().cast();
        // SAFETY: `buf` holds N octets; the helpers check the packet side.
        let ret = unsafe {
            match self {
                Source::Skb(skb) => bpf_skb_load_bytes(skb.cast(), off as u32, dst, N as u32),
                Source::Xdp(xdp) => bpf_xdp_load_bytes(xdp, off as u32, dst, N as u32),
            }
        };
        // SAFETY: a zero return means all N octets were written.
        if ret == 0 {
            Some(unsafe { buf.assume_init() })
        } else {
            None
        }
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
pub fn parse(data: usize, data_end: usize, src: Source) -> Result<&'static mut Packet, Skip> {
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
    let src_addr = addr(ip, 8);
    let dst_addr = addr(ip, 24);

    let scr = scratch().ok_or(Skip::Unparsable)?;
    // SAFETY: per-CPU map memory; nothing else runs on this CPU until we return. Kept
    // there rather than on the stack: the stack is small (512 octets with the loop
    // callbacks), and values in map memory are not tracked by the verifier, so what
    // follows is verified once rather than once per way through the parser.
    let p = unsafe { &mut (*scr).pkt };
    *p = Packet {
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
        has_ah: false,
        pdm: None,
        bad_pdm: false,
        l4_off: 0,
        l4_hdr_len: 0,
        tcp_flags: 0,
        frag: FRAG_NONE,
        frag_id: 0,
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
    if ip[6] == IPPROTO_DSTOPTS
        && let Some(d) = bytes::<PDM_HEADER_LEN>(data, data_end, ETH_HLEN + IPV6_HLEN)
    {
        // SAFETY: bounds-checked above.
        let d = unsafe { &*d };
        if is_plain_pdm_header(d) {
            // Fast path for what a PDM peer sends: IPv6, one Destination Options
            // header holding just PDM (as pdm and RFC 8250's example lay it out), then
            // the upper layer at a constant offset.
            const L4: usize = ETH_HLEN + IPV6_HLEN + PDM_HEADER_LEN;
            let h = bytes::<8>(data, data_end, L4).ok_or(Skip::Unparsable)?;
            // SAFETY: bounds-checked above.
            let h = unsafe { &*h };
            let tcp = if d[0] == IPPROTO_TCP {
                // SAFETY: bounds-checked before use.
                bytes::<20>(data, data_end, L4).map(|t| unsafe { [(*t)[12], (*t)[13]] })
            } else {
                None
            };
            p.proto = d[0];
            p.has_dstopts = true;
            p.pdm = Some(PdmFields {
                scale_dtlr: d[4],
                scale_dtls: d[5],
                psn_this: be16(d, 6),
                psn_last_recv: be16(d, 8),
                dtlr: be16(d, 10),
                dtls: be16(d, 12),
            });
            p.l4_off = L4;
            return upper_layer(p, h, tcp);
        }
    }
    walk(p, src)
}

/// A 16-octet Destination Options header holding exactly one well-formed PDM option
/// and a 2-octet PadN, in front of TCP, UDP or ICMPv6.
#[inline(always)]
fn is_plain_pdm_header(d: &[u8; PDM_HEADER_LEN]) -> bool {
    d[1] == 1
        && d[2] == PDM_OPTION_TYPE
        && d[3] == PDM_OPTION_LEN
        && d[14] == OPT_PADN
        && d[15] == 0
        && matches!(d[0], IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6)
}

/// Per-CPU scratch for the slow path. Loop state lives in map memory on purpose: the
/// verifier does not track values stored there, so the many ways through the header
/// loop all leave it in one state instead of one state per path (which took the
/// egress program past the verifier's million-instruction budget).
#[repr(C)]
pub struct Scratch {
    pkt: Packet,
    walk: Walk,
    scan: Scan,
}

#[inline(always)]
fn scratch() -> Option<*mut Scratch> {
    crate::SCRATCH.get_ptr_mut(0)
}

/// Where the extension-header walk is.
#[repr(C)]
struct Walk {
    /// Offset of the header `nh` names.
    off: usize,
    nh: u8,
    /// One of the `WALK_*` states.
    state: u8,
    /// Still in the part of the chain that must precede PDM (Hop-by-Hop, Routing).
    in_prefix: bool,
    has_ah: bool,
    first: bool,
    nh_at_insert: u8,
    nh_field_off: usize,
    insert_off: usize,
    /// The first Destination Options header (offset, length), 0 if none.
    dst_off: usize,
    dst_len: usize,
    /// What the Fragment header says, if there is one (see [`Packet::frag`]).
    frag: u8,
    frag_id: u32,
}

const WALK_RUNNING: u8 = 0;
/// At TCP, UDP or ICMPv6.
const WALK_UPPER: u8 = 1;
/// At a fragment or ESP: nothing more to read.
const WALK_OPAQUE: u8 = 2;
const WALK_UNPARSABLE: u8 = 3;
const WALK_NOT_ELIGIBLE: u8 = 4;

/// The slow path: extension headers, read through the helpers, one header per
/// iteration of bpf_loop. The kernel verifies a bpf_loop callback once rather than
/// once per iteration and path, which keeps verification small and stable.
#[inline(always)]
fn walk(p: &'static mut Packet, src: Source) -> Result<&'static mut Packet, Skip> {
    let w = scratch().ok_or(Skip::Unparsable)?;
    // SAFETY: per-CPU map memory; nothing else runs on this CPU meanwhile.
    let w = unsafe { &mut (*w).walk };
    *w = Walk {
        off: ETH_HLEN + IPV6_HLEN,
        nh: p.proto,
        state: WALK_RUNNING,
        in_prefix: true,
        has_ah: false,
        first: true,
        nh_at_insert: p.nh_at_insert,
        nh_field_off: p.nh_field_off,
        insert_off: p.insert_off,
        dst_off: 0,
        dst_len: 0,
        frag: FRAG_NONE,
        frag_id: 0,
    };
    // The callback gets the packet source on the stack (a context pointer cannot be
    // stored in a map) and finds the rest in the scratch map.
    let mut ctx = src;
    // SAFETY: the callback only reads `ctx`, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_EXT_HEADERS as u32,
            walk_step as *mut c_void,
            (&raw mut ctx).cast(),
            0,
        )
    };
    let off = w.off;
    p.proto = w.nh;
    p.has_ah = w.has_ah;
    p.nh_at_insert = w.nh_at_insert;
    p.nh_field_off = w.nh_field_off;
    p.insert_off = w.insert_off;
    p.frag = w.frag;
    p.frag_id = w.frag_id;
    match w.state {
        WALK_UPPER => {}
        WALK_OPAQUE => {
            return if matches!(
                w.nh,
                IPPROTO_TCP
                    | IPPROTO_UDP
                    | IPPROTO_ICMPV6
                    | IPPROTO_ESP
                    | IPPROTO_AH
                    | IPPROTO_DSTOPTS
            ) {
                scan_dstopts(p, src, w.dst_off, w.dst_len)
            } else {
                Err(Skip::NotEligible)
            };
        }
        WALK_NOT_ELIGIBLE => return Err(Skip::NotEligible),
        // Unparsable, or still running: more headers than we walk.
        _ => return Err(Skip::Unparsable),
    }
    let h = src.load::<8>(off).ok_or(Skip::Unparsable)?;
    let tcp = if w.nh == IPPROTO_TCP {
        src.load::<20>(off).map(|t| [t[12], t[13]])
    } else {
        None
    };
    p.l4_off = off;
    let (dst_off, dst_len) = (w.dst_off, w.dst_len);
    let p = upper_layer(p, &h, tcp)?;
    scan_dstopts(p, src, dst_off, dst_len)
}

#[inline(always)]
fn scan_dstopts(
    p: &'static mut Packet,
    src: Source,
    off: usize,
    len: usize,
) -> Result<&'static mut Packet, Skip> {
    if off != 0 {
        p.has_dstopts = true;
        find_pdm(p, src, off, len);
    }
    Ok(p)
}

#[inline(never)]
extern "C" fn walk_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `walk` gave it.
    let src = unsafe { *ctx.cast::<Source>() };
    let Some(s) = scratch() else {
        return 1;
    };
    // SAFETY: per-CPU map memory; nothing else runs on this CPU meanwhile.
    let w = unsafe { &mut (*s).walk };
    w.state = walk_one(w, src);
    (w.state != WALK_RUNNING) as i64
}

/// Steps over the header `w.nh` names at `w.off`.
#[inline(always)]
fn walk_one(w: &mut Walk, src: Source) -> u8 {
    let first = core::mem::replace(&mut w.first, false);
    match w.nh {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => WALK_UPPER,
        IPPROTO_ESP => {
            // Encrypted from here on: no ports to read. SPI and sequence must exist.
            if src.load::<8>(w.off).is_none() {
                return WALK_UNPARSABLE;
            }
            WALK_OPAQUE
        }
        IPPROTO_FRAGMENT => {
            let Some(h) = src.load::<8>(w.off) else {
                return WALK_UNPARSABLE;
            };
            w.nh = h[0];
            w.has_ah |= w.nh == IPPROTO_AH;
            // What follows is the fragmentable part: PDM goes in front of the Fragment
            // header, so that every fragment carries one.
            w.in_prefix = false;
            w.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let offset = u16::from_be_bytes([h[2], h[3]]) & 0xfff8;
            let more = h[3] & 1 != 0;
            if offset == 0 && w.frag == FRAG_NONE {
                // The first fragment holds the ports: walk on to them. (An atomic
                // fragment, with no more to come, is a whole datagram.)
                w.frag = if more { FRAG_FIRST } else { FRAG_ATOMIC };
                w.off += 8;
                return WALK_RUNNING;
            }
            // A later fragment: no ports here (fragments.rs finds its datagram's).
            w.frag = FRAG_LATER;
            WALK_OPAQUE
        }
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
            let this = w.nh;
            if this == IPPROTO_HOPOPTS && !first {
                return WALK_UNPARSABLE;
            }
            let Some([next, hlen]) = src.load::<2>(w.off) else {
                return WALK_UNPARSABLE;
            };
            let len = if this == IPPROTO_AH {
                (hlen as usize + 2) * 4
            } else {
                (hlen as usize + 1) * 8
            };
            // The whole header must be in the packet: egress moves Hop-by-Hop and
            // Routing octets, and must never act on a length that lies.
            if src.load::<1>(w.off + len - 1).is_none() {
                return WALK_UNPARSABLE;
            }
            // Behind a Fragment header, a header is in the first fragment only: what
            // the programs do must not differ between a datagram's fragments.
            if this == IPPROTO_DSTOPTS && w.dst_off == 0 && w.frag == FRAG_NONE {
                w.dst_off = w.off;
                w.dst_len = len;
            }
            if this == IPPROTO_DSTOPTS || this == IPPROTO_AH {
                w.in_prefix = false;
            }
            w.has_ah |= this == IPPROTO_AH && w.frag == FRAG_NONE;
            if w.in_prefix {
                w.nh_field_off = w.off;
                w.nh_at_insert = next;
                w.insert_off = w.off + len;
            }
            w.nh = next;
            w.off += len;
            WALK_RUNNING
        }
        _ => WALK_NOT_ELIGIBLE,
    }
}

/// Ports (or echo identifier) from the first 8 octets of the upper-layer header;
/// `tcp` = the data-offset and flags octets of a complete TCP header.
#[inline(always)]
fn upper_layer(
    p: &'static mut Packet,
    h: &[u8; 8],
    tcp: Option<[u8; 2]>,
) -> Result<&'static mut Packet, Skip> {
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

/// Options scan of one Destination Options header.
#[repr(C)]
struct Scan {
    o: usize,
    end: usize,
    found: bool,
    bad: bool,
    pdm: PdmFields,
}

/// Looks for PDM among the options of the Destination Options header at `off`.
#[inline(always)]
fn find_pdm(p: &mut Packet, src: Source, off: usize, len: usize) {
    let Some(scr) = scratch() else {
        return;
    };
    // SAFETY: per-CPU map memory; nothing else runs on this CPU meanwhile.
    let s = unsafe { &mut (*scr).scan };
    *s = Scan {
        o: off + 2,
        end: off + len,
        found: false,
        bad: false,
        pdm: PdmFields {
            scale_dtlr: 0,
            scale_dtls: 0,
            psn_this: 0,
            psn_last_recv: 0,
            dtlr: 0,
            dtls: 0,
        },
    };
    let mut ctx = src;
    // SAFETY: the callback only reads `ctx`, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_OPTIONS as u32,
            scan_step as *mut c_void,
            (&raw mut ctx).cast(),
            0,
        )
    };
    p.bad_pdm = s.bad;
    if s.found && !s.bad {
        p.pdm = Some(s.pdm);
    }
}

#[inline(never)]
extern "C" fn scan_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `find_pdm` gave it.
    let src = unsafe { *ctx.cast::<Source>() };
    let Some(scr) = scratch() else {
        return 1;
    };
    // SAFETY: per-CPU map memory; nothing else runs on this CPU meanwhile.
    scan_one(unsafe { &mut (*scr).scan }, src) as i64
}

/// Steps over one option; true when the scan is over.
#[inline(always)]
fn scan_one(s: &mut Scan, src: Source) -> bool {
    if s.o >= s.end {
        return true;
    }
    // One 2-octet read for type and length: a Pad1 in the very last octet of the
    // packet fails it, which is fine, since no PDM can follow it.
    let Some([ty, olen]) = src.load::<2>(s.o) else {
        return true;
    };
    if ty == 0 {
        // Pad1 has no length octet.
        s.o += 1;
        return false;
    }
    let olen = olen as usize;
    if ty == PDM_OPTION_TYPE {
        if olen != PDM_OPTION_LEN as usize || s.found || s.o + 2 + olen > s.end {
            s.bad = true;
            return true;
        }
        let Some(d) = src.load::<10>(s.o + 2) else {
            s.bad = true;
            return true;
        };
        s.pdm = PdmFields::from_option_data(&d);
        s.found = true;
    }
    s.o += 2 + olen;
    false
}
