//! TC egress: insert the 16-octet PDM Destination Options header.

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_NET},
    helpers::{bpf_check_mtu, bpf_loop},
    programs::TcContext,
};
use pdm_common::{
    counters::{Counter, Counters},
    flow::{FLOW_CLOSED, FLOW_SELECTED, FlowKey, FlowState, PROBE_TIME_MASK, RX_PSN_VALID},
    time::encode_delta_ns,
    wire::{IPPROTO_DSTOPTS, IPPROTO_TCP, IPV6_MIN_MTU, PDM_HEADER_LEN, PdmFields},
};

use crate::{
    flow::{add, bump, count, counters, get_or_create, next_psn, now_ns, set_flags},
    parse::{
        ETH_HLEN, IPV6_HLEN, MAX_PREFIX, Skip, Source, TCP_FIN, TCP_RST, bytes, parse, store64,
    },
};

const PDM_LEN: usize = PDM_HEADER_LEN;

#[inline(always)]
pub fn run(ctx: &TcContext) {
    let c = counters();
    bump(c, Counter::EgressPackets);
    match try_egress(ctx, c) {
        Ok(()) => bump(c, Counter::EgressInserted),
        Err(reason) => bump(c, reason),
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext, c: Option<*mut Counters>) -> Result<(), Counter> {
    let p = parse(ctx.data(), ctx.data_end(), Source::Skb(ctx.skb.skb)).map_err(|s| match s {
        Skip::NotIpv6 => Counter::EgressNotIpv6,
        Skip::Unparsable => Counter::EgressUnparsable,
        Skip::NdMld => Counter::EgressNdMld,
        Skip::NotEligible => Counter::EgressNotEligible,
    })?;
    if p.pdm.is_some() || p.bad_pdm {
        return Err(Counter::EgressAlreadyPdm);
    }
    if p.has_ah {
        return Err(Counter::EgressAh);
    }
    if p.has_dstopts {
        // A second Destination Options header at the same place would break RFC 8200
        // order; merging into the existing one is not worth the risk.
        return Err(Counter::EgressOtherDstOpts);
    }
    let prefix = p.insert_off - (ETH_HLEN + IPV6_HLEN);
    if prefix > MAX_PREFIX {
        return Err(Counter::EgressPrefixTooLong);
    }
    // The stack writes the payload length of every packet it sends (0 for jumbograms);
    // one that disagrees with the packet is not understood, so not touched. Nor is one
    // whose length field cannot grow by our 16 octets.
    if p.payload_len != 0 {
        if ETH_HLEN + IPV6_HLEN + p.payload_len as usize != ctx.len() as usize {
            return Err(Counter::EgressUnparsable);
        }
        if p.payload_len as usize > u16::MAX as usize - PDM_LEN {
            return Err(Counter::EgressTooBig);
        }
    }

    // A later fragment: its datagram's ports.
    crate::fragments::attribute(p, c);
    // Sent: we are the source.
    let key = FlowKey::new(p.src, p.dst, p.sport, p.dport, p.proto);
    let (state, _) = get_or_create(&key, c).ok_or(Counter::EgressFlowMapFull)?;
    let now = now_ns();

    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's run.
    let (gso_size, gso_segs) = unsafe { ((*skb).gso_size, (*skb).gso_segs) };
    let segs = if gso_segs == 0 { 1 } else { gso_segs };
    // SAFETY: `state` points into a live map value.
    unsafe { add(&raw mut (*state).tx_bytes, ctx.len() as u64) };
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // SAFETY: as above.
        set_flags(unsafe { &raw mut (*state).flags }, FLOW_CLOSED);
    }
    let inserted = insert(ctx, p, state, now, gso_size, prefix);
    // Packets and PDM packets in one atomic add, once the outcome is known.
    let pdm = if inserted.is_ok() { segs } else { 0 };
    // SAFETY: `state` points into a live map value.
    unsafe { count(&raw mut (*state).tx_packets, segs, pdm) };
    inserted
}

/// Inserts PDM into a packet of a flow known to the table (unless `--only` leaves the
/// flow out, or the packet would no longer fit).
#[inline(always)]
fn insert(
    ctx: &TcContext,
    p: &crate::parse::Packet,
    state: *mut FlowState,
    now: u64,
    gso_size: u32,
    prefix: usize,
) -> Result<(), Counter> {
    // SAFETY: `state` points into a live map value.
    if unsafe { read_volatile(&raw const (*state).flags) } & FLOW_SELECTED == 0 {
        return Err(Counter::EgressFiltered);
    }

    let flags = adjust_flags(ctx, p, gso_size)?;
    ctx.adjust_room(PDM_LEN as i32, BPF_ADJ_ROOM_NET, flags)
        .map_err(|_| Counter::EgressAdjustFailed)?;

    let fields = fields(state, now);
    let header = fields.encode_header(p.nh_at_insert);
    if write_header(ctx, prefix, p.nh_field_off, p.payload_len, &header).is_none() {
        // Cannot happen for a header chain we just read, but never leave 16 zero octets
        // in a packet: take the room back out.
        let _ = ctx.adjust_room(-(PDM_LEN as i32), BPF_ADJ_ROOM_NET, flags);
        return Err(Counter::EgressAdjustFailed);
    }
    // SAFETY: `state` points into a live map value.
    unsafe {
        // No probe outstanding: when the peer echoes this PSN, the RTT is measured from
        // now. Ingress clears the probe once it is answered or passed.
        if read_volatile(&raw const (*state).probe) == 0 {
            write_volatile(
                &raw mut (*state).probe,
                (fields.psn_this as u64) << 48 | (now & PROBE_TIME_MASK),
            );
        }
    }
    Ok(())
}

/// adjust_room flags, or the too-big verdict. A plain packet must fit the MTU with our
/// header. A GSO packet's segments must: keep gso_size when they do (FIXED_GSO), else let
/// the kernel shrink gso_size by 16 (TCP only; UDP GSO cannot change its segment size).
#[inline(always)]
fn adjust_flags(ctx: &TcContext, p: &crate::parse::Packet, gso_size: u32) -> Result<u64, Counter> {
    // Every IPv6 link carries 1280 octets: a packet that fits that with our header needs
    // no MTU lookup (most small packets: one helper call fewer).
    if gso_size == 0 && ctx.len() as usize - ETH_HLEN + PDM_LEN <= IPV6_MIN_MTU as usize {
        return Ok(0);
    }
    let mut mtu: u32 = 0;
    // SAFETY: valid context; ifindex 0 = the skb's device.
    let ret = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, 0, &mut mtu, PDM_LEN as i32, 0) };
    if gso_size == 0 {
        return if ret == 0 {
            Ok(0)
        } else {
            Err(Counter::EgressTooBig)
        };
    }
    if p.l4_off != 0 {
        let segment = p.l4_off - ETH_HLEN + p.l4_hdr_len + gso_size as usize + PDM_LEN;
        if segment <= mtu as usize {
            return Ok(BPF_F_ADJ_ROOM_FIXED_GSO as u64);
        }
    }
    if p.proto == IPPROTO_TCP {
        Ok(0)
    } else {
        Err(Counter::EgressTooBig)
    }
}

/// PDM fields for a packet sent now, from the flow's reception state (RFC 8250 3.x).
#[inline(always)]
fn fields(state: *mut FlowState, now: u64) -> PdmFields {
    let psn_this = next_psn(state);
    // SAFETY: `state` points into a live map value; the ingress side writes these
    // concurrently, and any torn-free value is acceptable.
    unsafe {
        let rx = read_volatile(&raw const (*state).rx_psn);
        write_volatile(&raw mut (*state).last_send_ns, now);
        if rx & RX_PSN_VALID == 0 {
            return PdmFields {
                psn_this,
                ..PdmFields::default()
            };
        }
        let last_recv = read_volatile(&raw const (*state).last_recv_ns);
        let dtlr = encode_delta_ns(now.saturating_sub(last_recv));
        // Encoded by ingress when it measured it.
        let dtls = read_volatile(&raw const (*state).dtls);
        PdmFields {
            scale_dtlr: dtlr.scale,
            scale_dtls: (dtls >> 16) as u8,
            psn_this,
            psn_last_recv: rx as u16,
            dtlr: dtlr.delta,
            dtls: dtls as u16,
        }
    }
}

/// After adjust_room opened 16 zero octets right behind the IPv6 header: move any
/// Hop-by-Hop/Routing headers back in front of them, write PDM, relink Next Header and
/// grow the payload length.
#[inline(always)]
fn write_header(
    ctx: &TcContext,
    prefix: usize,
    nh_field_off: usize,
    payload_len: u16,
    header: &[u8; PDM_LEN],
) -> Option<()> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let base = ETH_HLEN + IPV6_HLEN;
    // The IPv6 header plus the 16 new octets, at constant offsets.
    let ip = bytes::<{ IPV6_HLEN + PDM_LEN }>(data, data_end, ETH_HLEN)?;
    // SAFETY: bounds-checked above.
    let ip = unsafe { &mut *ip };
    if prefix == 0 {
        // SAFETY: [u8; 16] and two u64s have the same size, and any bits are valid.
        let words = unsafe { core::mem::transmute::<[u8; PDM_LEN], [u64; 2]>(*header) };
        let at = ip.as_ptr() as usize + IPV6_HLEN;
        store64(at, words[0]);
        store64(at + 8, words[1]);
        ip[6] = IPPROTO_DSTOPTS;
    } else {
        // Rare path (Hop-by-Hop/Routing present): move them through the helpers, 8
        // octets at a time towards lower addresses, so each chunk is read before it is
        // overwritten. The walk checked that every octet of them is in the packet.
        let mut m = Move {
            src: Source::Skb(ctx.skb.skb),
            failed: false,
        };
        // SAFETY: the callback only touches `m`, which outlives the call.
        unsafe {
            bpf_loop(
                (prefix / 8) as u32,
                move_step as *mut c_void,
                (&raw mut m).cast(),
                0,
            )
        };
        if m.failed {
            return None;
        }
        ctx.store(base + prefix, header, 0).ok()?;
        ctx.store(nh_field_off, &IPPROTO_DSTOPTS, 0).ok()?;
    }
    // Last, once the header is in place. The helper stores above may have moved the
    // data, so take the pointer again.
    let plen = bytes::<2>(ctx.data(), ctx.data_end(), ETH_HLEN + 4)?;
    // Zero means a jumbo/BIG TCP packet whose length lives elsewhere: leave it.
    if payload_len != 0 {
        // SAFETY: bounds-checked above.
        unsafe { *plen = (payload_len + PDM_LEN as u16).to_be_bytes() };
    }
    Some(())
}

/// The prefix move, as a bpf_loop callback (verified once, whatever the prefix length).
#[repr(C)]
struct Move {
    src: Source,
    failed: bool,
}

#[inline(never)]
extern "C" fn move_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `write_header` gave it.
    let m = unsafe { &mut *ctx.cast::<Move>() };
    let base = ETH_HLEN + IPV6_HLEN + i as usize * 8;
    let ok = match m.src.load::<8>(base + PDM_LEN) {
        Some(chunk) => m.src.store(base, &chunk).is_some(),
        None => false,
    };
    m.failed = !ok;
    (!ok) as i64
}
