//! Ingress recorder (XDP or TC): read PDM from received packets into the flow entry,
//! and lower the MSS of incoming SYN/SYN-ACKs so our own full-size segments still fit
//! the MTU once egress adds PDM. Every packet is passed on.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::bpf_check_mtu,
    programs::{TcContext, XdpContext},
};
use pdm_common::{
    counters::{Counter, Counters},
    flow::{
        ECHO_DATA_TAKEN, ECHO_TICK_MASK, ECHO_TICK_SHIFT, ECHO_VALID, FLOW_CLOSED, FLOW_SELECTED,
        FlowKey, FlowState, NO_SAMPLE, PROBE_TIME_MASK, REORDERED_SHIFT, RX_PSN_VALID, RttSample,
    },
    psn::psn_gt,
    seq::{SeqEvent, seq_step},
    time::{DeltaTime, TimeFault, echo_rtt, encode_delta_ns},
    wire::{IPPROTO_TCP, IPV6_MIN_MTU, PDM_HEADER_LEN, PdmFields},
};

use crate::{
    CONFIG, SAMPLES,
    flow::{add, add32, bump, count, counters, get_or_create, now_ns, set_flags},
    parse::{ETH_HLEN, IPV6_HLEN, Packet, Skip, Source, TCP_FIN, TCP_RST, TCP_SYN, parse},
};

pub enum Hook<'a> {
    Xdp(&'a XdpContext),
    Tc(&'a TcContext),
}

impl Hook<'_> {
    #[inline(always)]
    pub fn source(&self) -> Source {
        match self {
            Hook::Xdp(c) => Source::Xdp(c.ctx),
            Hook::Tc(c) => Source::Skb(c.skb.skb),
        }
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        match self {
            Hook::Xdp(c) => c.as_ptr(),
            Hook::Tc(c) => c.as_ptr(),
        }
    }

    /// Wire packets and octets this run stands for (TC ingress may see GRO packets).
    #[inline(always)]
    pub fn packets_bytes(&self, data: usize, data_end: usize) -> (u32, u64) {
        match self {
            Hook::Xdp(_) => (1, (data_end - data) as u64),
            Hook::Tc(c) => {
                // SAFETY: the context pointer is valid for the program's run.
                let segs = unsafe { (*c.skb.skb).gso_segs };
                (if segs == 0 { 1 } else { segs }, c.len() as u64)
            }
        }
    }
}

#[inline(always)]
pub fn run(data: usize, data_end: usize, hook: Hook) {
    let c = counters();
    bump(c, Counter::IngressPackets);
    let p = match parse(data, data_end, hook.source()) {
        Ok(p) => p,
        Err(s) => {
            bump(
                c,
                match s {
                    Skip::NotIpv6 => Counter::IngressNotIpv6,
                    Skip::Unparsable => Counter::IngressUnparsable,
                    Skip::NdMld => Counter::IngressNdMld,
                    Skip::NotEligible => Counter::IngressNotEligible,
                },
            );
            return;
        }
    };
    if p.bad_pdm {
        bump(c, Counter::IngressBadPdm);
    }
    // A later fragment: its datagram's ports.
    crate::fragments::attribute(p, c);
    let selected = match record(p, data, data_end, &hook, c) {
        Ok(selected) => {
            bump(
                c,
                if p.pdm.is_some() {
                    Counter::IngressPdm
                } else {
                    Counter::IngressNoPdm
                },
            );
            selected
        }
        Err(reason) => {
            bump(c, reason);
            false
        }
    };
    // SAFETY: a global the loader sets before load.
    let clamp = unsafe { read_volatile(&raw const CONFIG.clamp_mss) } != 0;
    // Only flows that get PDM need room for it: `--only` leaves the rest untouched. A
    // fragmented SYN (no stack sends one) is left as it is.
    if clamp
        && selected
        && p.frag == crate::parse::FRAG_NONE
        && p.proto == IPPROTO_TCP
        && p.tcp_flags & TCP_SYN != 0
        && well_formed_syn(p, hook.packets_bytes(data, data_end).1)
    {
        // AH's integrity check covers the TCP segment: a lowered MSS would make the
        // receiver's IPsec drop the SYN, so an AH-protected SYN keeps it (as egress
        // leaves AH packets without PDM).
        if p.has_ah {
            bump(c, Counter::IngressMssSkipAh);
        } else if clamp_mss(p, &hook) {
            bump(c, Counter::IngressMssClamped);
        }
    }
}

/// Updates the flow entry: counters always, reception state when PDM is present.
/// Returns whether the flow gets PDM (see `--only`).
#[inline(always)]
fn record(
    p: &Packet,
    data: usize,
    data_end: usize,
    hook: &Hook,
    c: Option<*mut Counters>,
) -> Result<bool, Counter> {
    // Received: we are the destination.
    let key = FlowKey::new(p.dst, p.src, p.dport, p.sport, p.proto);
    let (state, slot) = get_or_create(&key, c).ok_or(Counter::IngressFlowMapFull)?;
    let (packets, octets) = hook.packets_bytes(data, data_end);
    // SAFETY: `state` points into a live map value; egress reads these fields
    // concurrently and tolerates either old or new values.
    unsafe {
        // Atomic: one flow's packets may be received on several CPUs at once.
        count(
            &raw mut (*state).rx_packets,
            packets,
            if p.pdm.is_some() { packets } else { 0 },
        );
        add(&raw mut (*state).rx_bytes, octets);
        if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            set_flags(&raw mut (*state).flags, FLOW_CLOSED);
        }
        if let Some(pdm) = p.pdm {
            let now = now_ns();
            let last_send = read_volatile(&raw const (*state).last_send_ns);
            let dtls = if last_send != 0 {
                encode_delta_ns(now.saturating_sub(last_send))
            } else {
                DeltaTime::default()
            };
            write_volatile(
                &raw mut (*state).dtls,
                (dtls.scale as u32) << 16 | dtls.delta as u32,
            );
            write_volatile(&raw mut (*state).last_recv_ns, now);
            write_volatile(&raw mut (*state).rx_psn, RX_PSN_VALID | pdm.psn_this as u32);
            sequence(
                &raw mut (*state).rx_seq,
                (&raw mut (*state).rx_duplicate).cast(),
                pdm.psn_this,
                c,
                Counter::IngressSeqContended,
            );
            rtt(&key, slot, &mut *state, &pdm, now, carries_data(p), c);
        }
        Ok(read_volatile(&raw const (*state).flags) & FLOW_SELECTED != 0)
    }
}

/// Whether the packet carries upper-layer data: a TCP segment with payload, or any
/// UDP/ICMPv6/other packet. Only those make a server-delay sample.
#[inline(always)]
pub fn carries_data(p: &Packet) -> bool {
    if p.proto != IPPROTO_TCP || p.l4_off == 0 {
        return true;
    }
    let headers = p.l4_off - (ETH_HLEN + IPV6_HLEN) + p.l4_hdr_len;
    p.payload_len as usize > headers
}

/// Loss, reordering and duplicates from the peer's PSN sequence (see
/// `pdm_common::seq`): the state word is replaced with compare-and-swap, so packets of
/// one flow received on several CPUs at once are each classified exactly once. A
/// packet whose update lost the race is classified again against the winner's state.
/// `pair` is the (duplicate, reordered) counter pair; None when other CPUs kept
/// winning (counted as `contended`).
#[inline(always)]
pub fn sequence(
    word: *mut u64,
    pair: *mut u32,
    psn: u16,
    c: Option<*mut Counters>,
    contended: Counter,
) -> Option<SeqEvent> {
    // SAFETY: `word` points into a live map value, 8-aligned, only ever changed by
    // this compare-and-swap; the counter pair by atomic adds.
    unsafe {
        let mut old = read_volatile(word);
        for _ in 0..SEQ_ATTEMPTS {
            let (new, event) = seq_step(old, psn);
            if new != old {
                let (seen, won) =
                    atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                        word, old, new,
                    );
                if !won {
                    old = seen;
                    continue;
                }
            }
            match event {
                SeqEvent::None => {}
                SeqEvent::Duplicate => add32(pair, 1),
                SeqEvent::Reordered => add32(pair, 1 << REORDERED_SHIFT),
            }
            return Some(event);
        }
    }
    bump(c, contended);
    None
}

/// Compare-and-swap attempts per packet. Each failure means another CPU updated the
/// same flow in between; with two CPUs on a flow a second attempt nearly always wins.
const SEQ_ATTEMPTS: usize = 8;

/// An RTT sample when the peer echoes a PSN whose send time we hold: reception − send
/// time − the peer's DTLR. Two send times are held: the last packet's (request/response
/// flows echo it), and an outstanding probe (bulk flows echo older PSNs: the probe is
/// the first packet sent after the previous probe was answered). At most two samples
/// per echoed PSN: the first packet echoing it, and the first data-carrying one (whose
/// DTLR is the peer application's turnaround: the server delay; a pure ACK's DTLR is
/// only its stack's). An echo past the probe means its own echo was skipped (the peer
/// acknowledged several packets at once): the probe is retired, and egress arms the
/// next one.
#[inline(always)]
fn rtt(
    key: &FlowKey,
    slot: u32,
    s: &mut FlowState,
    pdm: &PdmFields,
    now: u64,
    data: bool,
    c: Option<*mut Counters>,
) {
    let echoed = pdm.psn_last_recv;
    if echoed == 0 && pdm.dtlr == 0 && pdm.scale_dtlr == 0 {
        return; // the peer has not received anything from us yet
    }
    // SAFETY: `s` is a live map value that egress writes concurrently. The last send
    // time is read before the PSN counter: egress takes a PSN and then writes the time,
    // so a PSN that matches here is never newer than the time read.
    let (last_send, latest, probe) = unsafe {
        let last_send = read_volatile(&raw const s.last_send_ns);
        let latest = (read_volatile(&raw const s.psn_next) as u16).wrapping_sub(1);
        (last_send, latest, read_volatile(&raw const s.probe))
    };
    let probe_psn = (probe >> 48) as u16;
    let probe_hit = probe != 0 && probe_psn == echoed;
    if probe != 0 && psn_gt(echoed, probe_psn) {
        // SAFETY: as above; egress only arms a probe while it is 0, only we clear it.
        unsafe { write_volatile(&raw mut s.probe, 0) };
    }
    let sent = if latest == echoed && last_send != 0 {
        last_send
    } else if probe_hit {
        probe & PROBE_TIME_MASK
    } else {
        return;
    };
    let seen = s.echo & ECHO_VALID != 0 && s.echo as u16 == echoed;
    let data_sample = data && !(seen && s.echo & ECHO_DATA_TAKEN != 0);
    if seen && !data_sample {
        return; // a further pure ACK, or more data: no new information
    }
    let echo_tick = s.echo & (ECHO_TICK_MASK << ECHO_TICK_SHIFT);
    if !seen {
        // A new echoed PSN is sampled only in a tick other than the last sampled one's.
        // A skipped PSN is still marked taken: a later echo of it would be late.
        // SAFETY: a global the loader sets before attaching.
        let shift = unsafe { read_volatile(&raw const CONFIG.sample_tick_shift) } as u32;
        let tick = ((now >> shift) as u32 & ECHO_TICK_MASK) << ECHO_TICK_SHIFT;
        if shift != 0 && s.echo & ECHO_VALID != 0 && tick == echo_tick {
            s.echo = ECHO_VALID | ECHO_DATA_TAKEN | echo_tick | echoed as u32;
            if probe_hit {
                // SAFETY: as above.
                unsafe { write_volatile(&raw mut s.probe, 0) };
            }
            bump(c, Counter::IngressSamplesThinned);
            return;
        }
        s.echo = ECHO_VALID | tick | echoed as u32 | if data_sample { ECHO_DATA_TAKEN } else { 0 };
    } else {
        s.echo = ECHO_VALID | echo_tick | echoed as u32 | ECHO_DATA_TAKEN;
    }
    if probe_hit && data_sample {
        // SAFETY: as above.
        unsafe { write_volatile(&raw mut s.probe, 0) };
    }
    let elapsed = now.wrapping_sub(sent) & PROBE_TIME_MASK;
    let dtlr = DeltaTime {
        delta: pdm.dtlr,
        scale: pdm.scale_dtlr,
    };
    let (rtt_ns, server_delay_ns, fault) = match echo_rtt(elapsed, dtlr) {
        Ok((rtt, held)) => (rtt, if data_sample { held } else { NO_SAMPLE }, 0),
        Err(f) => {
            bump(
                c,
                match f {
                    TimeFault::Implausible => Counter::IngressImplausibleDtlr,
                    TimeFault::NotRfcExact => Counter::IngressDtlrNotExact,
                    TimeFault::Malformed => Counter::IngressDtlrMalformed,
                },
            );
            (NO_SAMPLE, NO_SAMPLE, f as u8)
        }
    };
    let sample = RttSample {
        key: *key,
        ts_ns: now,
        rtt_ns,
        server_delay_ns,
        psn: echoed,
        fault,
        _pad: 0,
        slot,
    };
    // No wakeup: userspace reads the ring on a timer, not on readiness.
    match SAMPLES.output::<RttSample>(&sample, BPF_RB_NO_WAKEUP as u64) {
        Ok(()) if fault == 0 => bump(c, Counter::IngressRttSamples),
        Ok(()) => {}
        Err(_) => bump(c, Counter::IngressSamplesDropped),
    }
}

/// Lowers the MSS option of a received SYN/SYN-ACK to MTU − 40 − 20 − 16, so the
/// segments our stack sends to this peer leave room for PDM. The TCP checksum is fixed
/// incrementally, which also keeps any CHECKSUM_COMPLETE sum valid.
#[inline(always)]
fn clamp_mss(p: &Packet, hook: &Hook) -> bool {
    let mut mtu: u32 = 0;
    // SAFETY: valid context; ifindex 0 = the packet's device.
    if unsafe { bpf_check_mtu(hook.ctx_ptr(), 0, &mut mtu, 0, 0) } != 0 || mtu < IPV6_MIN_MTU {
        return false;
    }
    let limit = (mtu as usize - IPV6_HLEN - 20 - PDM_HEADER_LEN) as u16;
    let src = hook.source();
    // Read again, not reused from `well_formed_syn`: offsets whose range the verifier
    // knows make it walk the option loop once per possible value (450 000 instructions
    // instead of 27 000).
    // SAFETY: plain reads of the scratch map's packet record.
    let (l4, hdr_len) = unsafe { (read_volatile(&p.l4_off), read_volatile(&p.l4_hdr_len)) };
    let end = l4 + hdr_len;
    let mut o = l4 + 20;
    // Options are read through the helpers: variable offsets stay out of packet-pointer
    // arithmetic (see parse.rs). SYNs are rare, so the cost does not matter.
    for _ in 0..MAX_TCP_OPTIONS {
        if o >= end {
            return false;
        }
        let Some([kind, len]) = src.load::<2>(o) else {
            return false;
        };
        match kind {
            0 => return false,
            1 => o += 1,
            2 if len == 4 => {
                let Some(v) = src.load::<2>(o + 2) else {
                    return false;
                };
                let mss = u16::from_be_bytes(v);
                if mss <= limit {
                    return false;
                }
                let Some(c) = src.load::<2>(l4 + 16) else {
                    return false;
                };
                // The checksum sums 16-bit words from the start of the TCP header: a
                // value at an odd offset straddles two of them, byte-swapped.
                let (old, new) = if (o + 2 - l4) % 2 == 1 {
                    (mss.swap_bytes(), limit.swap_bytes())
                } else {
                    (mss, limit)
                };
                let csum = csum_replace(u16::from_be_bytes(c), old, new);
                return src.store(o + 2, &limit.to_be_bytes()).is_some()
                    && src.store(l4 + 16, &csum.to_be_bytes()).is_some();
            }
            _ => {
                if len < 2 {
                    return false;
                }
                o += len as usize;
            }
        }
    }
    false
}

/// A SYN whose lengths agree: the payload length within the frame, the TCP header at
/// least 20 octets and within the payload. Anything else is malformed (the stack drops
/// it) and is left as it came.
#[inline(always)]
fn well_formed_syn(p: &Packet, frame_len: u64) -> bool {
    let payload_end = ETH_HLEN + IPV6_HLEN + p.payload_len as usize;
    payload_end as u64 <= frame_len && p.l4_hdr_len >= 20 && p.l4_off + p.l4_hdr_len <= payload_end
}

/// TCP options: at most 40 octets, so at most 40 single-octet options.
const MAX_TCP_OPTIONS: usize = 40;

/// RFC 1624 incremental update: HC' = ~(~HC + ~m + m').
#[inline(always)]
fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
