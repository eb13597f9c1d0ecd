//! The passive observer (`pdm observe`): reads PDM on packets crossing an interface,
//! either way, into one entry per flow with both ends' state, and pairs each end's
//! echoes with the other end's packets (see `pdm_common::observe`). It writes nothing
//! into a packet and every packet is passed on; nothing a packet carries switches
//! anything on.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::bindings::BPF_RB_NO_WAKEUP;
use pdm_common::{
    counters::{Counter, Counters},
    flow::{
        ECHO_DATA_TAKEN, ECHO_TICK_MASK, ECHO_TICK_SHIFT, ECHO_VALID, FLOW_CLOSED, FLOW_VALID,
        FlowKey, NO_SAMPLE, PROBE_TIME_MASK,
    },
    observe::{
        OBS_CLIENT_HIGHER, ObservedDir, ObservedSample, ObservedSlot, ObservedState,
        SAMPLE_CLIENT_HIGHER, SAMPLE_FROM_HIGHER, ends_ordered,
    },
    psn::psn_gt,
    seq::SeqEvent,
    time::{DeltaTime, TimeFault, decode_received, echo_rtt, observed_rtt},
    wire::{IPPROTO_TCP, PdmFields},
};

use crate::{
    CONFIG, OBSERVED, SAMPLES,
    flow::{Place, add, bump, claim, count, counters, impl_slot, now_ns, place, set_flags},
    ingress::{Hook, carries_data, sequence},
    parse::{Packet, Skip, TCP_FIN, TCP_RST, TCP_SYN, parse},
};

impl_slot!(ObservedSlot, ObservedState);

const TCP_ACK: u8 = 0x10;

#[inline(always)]
pub fn run(data: usize, data_end: usize, hook: Hook) {
    let c = counters();
    bump(c, Counter::ObservePackets);
    let p = match parse(data, data_end, hook.source()) {
        Ok(p) => p,
        Err(s) => {
            bump(
                c,
                match s {
                    Skip::NotIpv6 => Counter::ObserveNotIpv6,
                    Skip::Unparsable => Counter::ObserveUnparsable,
                    Skip::NdMld => Counter::ObserveNdMld,
                    Skip::NotEligible => Counter::ObserveNotEligible,
                },
            );
            return;
        }
    };
    if p.bad_pdm {
        bump(c, Counter::ObserveBadPdm);
    }
    crate::fragments::attribute(p, c);
    bump(
        c,
        match record(p, hook.packets_bytes(data, data_end), c) {
            Ok(()) if p.pdm.is_some() => Counter::ObservePdm,
            Ok(()) => Counter::ObserveNoPdm,
            Err(reason) => reason,
        },
    );
}

#[inline(always)]
fn record(
    p: &Packet,
    (packets, octets): (u32, u64),
    c: Option<*mut Counters>,
) -> Result<(), Counter> {
    // The key's ends in a fixed order, so both directions find one entry.
    let from_lower = ends_ordered(&p.src, p.sport, &p.dst, p.dport);
    let key = if from_lower {
        FlowKey::new(p.src, p.dst, p.sport, p.dport, p.proto)
    } else {
        FlowKey::new(p.dst, p.src, p.dport, p.sport, p.proto)
    };
    let from = (!from_lower) as usize;
    let (slot, index) = match place(&OBSERVED, &key, c).ok_or(Counter::ObserveFlowMapFull)? {
        Place::Found(s, i) => (s, i),
        Place::Take(s, i) => {
            // The first packet's sender is the client, but a SYN-ACK's receiver.
            let syn_ack =
                p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
            let client_higher = from_lower == syn_ack;
            let state = claim(s, &key);
            let flags = FLOW_VALID | if client_higher { OBS_CLIENT_HIGHER } else { 0 };
            // SAFETY: the slot just claimed; its flags validate it last.
            unsafe { write_volatile(&raw mut (*state).flags, flags) };
            (s, i)
        }
    };
    // SAFETY: `slot` points into the live map; the other direction's packets update
    // the same entry on other CPUs (see ObservedDir for what is atomic).
    unsafe {
        let state = &raw mut (*slot).state;
        let me = &raw mut (*state).dir[from & 1];
        let pdm_packets = if p.pdm.is_some() { packets } else { 0 };
        count(&raw mut (*me).packets, packets, pdm_packets);
        add(&raw mut (*me).bytes, octets);
        if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            set_flags(&raw mut (*state).flags, FLOW_CLOSED);
        }
        if let Some(pdm) = p.pdm {
            let other = &raw mut (*state).dir[(from ^ 1) & 1];
            let flags = read_volatile(&raw const (*state).flags);
            let mut sample_flags = if from == 1 { SAMPLE_FROM_HIGHER } else { 0 };
            if flags & OBS_CLIENT_HIGHER != 0 {
                sample_flags |= SAMPLE_CLIENT_HIGHER;
            }
            pair(
                &key,
                index,
                me,
                other,
                &pdm,
                carries_data(p),
                sample_flags,
                c,
            );
        }
    }
    Ok(())
}

/// Takes one end's PDM packet: its sequence, its place as the end's last packet (and
/// probe), and the figures its echo of the other end's PSN gives.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pair(
    key: &FlowKey,
    slot: u32,
    me: *mut ObservedDir,
    other: *mut ObservedDir,
    pdm: &PdmFields,
    data: bool,
    sample_flags: u8,
    c: Option<*mut Counters>,
) {
    // SAFETY: both point into a live map value; see ObservedDir for the concurrency.
    unsafe {
        let event = sequence(
            &raw mut (*me).seq,
            (&raw mut (*me).duplicate).cast(),
            pdm.psn_this,
            c,
            Counter::ObserveSeqContended,
        );
        if event == Some(SeqEvent::Duplicate) {
            // A copy: pairing it would count a round trip twice.
            return;
        }
        let now = now_ns();
        let stamp = (pdm.psn_this as u64) << 48 | now & PROBE_TIME_MASK;
        write_volatile(&raw mut (*me).last, stamp);
        write_volatile(
            &raw mut (*me).fields,
            (pdm.psn_this as u64) << 48
                | (pdm.psn_last_recv as u64) << 32
                | (pdm.scale_dtlr as u64) << 16
                | pdm.dtlr as u64,
        );
        if read_volatile(&raw const (*me).probe) == 0 {
            write_volatile(&raw mut (*me).probe, stamp);
        }
        let echoed = pdm.psn_last_recv;
        if echoed == 0 && pdm.dtlr == 0 && pdm.scale_dtlr == 0 {
            return; // this end has not received anything yet
        }
        let probe = read_volatile(&raw const (*other).probe);
        let probe_psn = (probe >> 48) as u16;
        let probe_hit = probe != 0 && probe_psn == echoed;
        if probe != 0 && psn_gt(echoed, probe_psn) {
            write_volatile(&raw mut (*other).probe, 0);
        }
        // One figure set per echoed PSN: its first echo, and its first data-carrying
        // echo (a pure ACK's DTLR is its stack's, not its application's), thinned to one
        // echoed PSN per tick as in `pdm run`.
        let echo = read_volatile(&raw const (*me).echo);
        let seen = echo & ECHO_VALID != 0 && echo as u16 == echoed;
        let data_sample = data && !(seen && echo & ECHO_DATA_TAKEN != 0);
        if seen && !data_sample {
            return;
        }
        let echo_tick = echo & (ECHO_TICK_MASK << ECHO_TICK_SHIFT);
        if !seen {
            let shift = read_volatile(&raw const CONFIG.sample_tick_shift) as u32;
            let tick = ((now >> shift) as u32 & ECHO_TICK_MASK) << ECHO_TICK_SHIFT;
            if shift != 0 && echo & ECHO_VALID != 0 && tick == echo_tick {
                write_volatile(
                    &raw mut (*me).echo,
                    ECHO_VALID | ECHO_DATA_TAKEN | echo_tick | echoed as u32,
                );
                if probe_hit {
                    write_volatile(&raw mut (*other).probe, 0);
                }
                bump(c, Counter::ObserveSamplesThinned);
                return;
            }
            let taken = if data_sample { ECHO_DATA_TAKEN } else { 0 };
            write_volatile(
                &raw mut (*me).echo,
                ECHO_VALID | tick | echoed as u32 | taken,
            );
        } else {
            write_volatile(
                &raw mut (*me).echo,
                ECHO_VALID | echo_tick | echoed as u32 | ECHO_DATA_TAKEN,
            );
        }
        if probe_hit && data_sample {
            write_volatile(&raw mut (*other).probe, 0);
        }
        let dtlr = DeltaTime {
            delta: pdm.dtlr,
            scale: pdm.scale_dtlr,
        };
        let mut fault = 0u8;
        let mut held = NO_SAMPLE;
        if data_sample {
            match decode_received(dtlr) {
                Ok(ns) => held = ns,
                Err(f) => fault = f as u8,
            }
        }
        let mut side_rtt = NO_SAMPLE;
        let mut rtt = NO_SAMPLE;
        if !seen {
            // When the echoed packet passed here: the other end's last, or its probe.
            let last = read_volatile(&raw const (*other).last);
            let sent = if last != 0 && (last >> 48) as u16 == echoed {
                last
            } else if probe_hit {
                probe
            } else {
                0
            };
            if sent != 0 {
                let elapsed = now.wrapping_sub(sent) & PROBE_TIME_MASK;
                match echo_rtt(elapsed, dtlr) {
                    Ok((r, _)) => side_rtt = r,
                    // A hold longer than the observer saw pass: a lie, not a delay.
                    Err(TimeFault::Implausible) => {
                        fault = TimeFault::Implausible as u8;
                        held = NO_SAMPLE;
                    }
                    Err(f) => fault = f as u8,
                }
            }
            // The client's own round trip, when the packet it echoes answered its
            // previous one: DTLS here spans it, that packet's DTLR the server's part. (A
            // server's DTLS spans the client's think time, and many servers send none.)
            let from_client = (sample_flags & SAMPLE_FROM_HIGHER != 0)
                == (sample_flags & SAMPLE_CLIENT_HIGHER != 0);
            let f = read_volatile(&raw const (*other).fields);
            if from_client
                && (f >> 48) as u16 == echoed
                && (f >> 32) as u16 == pdm.psn_this.wrapping_sub(1)
            {
                let dtls = DeltaTime {
                    delta: pdm.dtls,
                    scale: pdm.scale_dtls,
                };
                let their = DeltaTime {
                    delta: f as u16,
                    scale: (f >> 16) as u8,
                };
                match observed_rtt(dtls, their) {
                    Ok(r) => rtt = r,
                    Err(TimeFault::Implausible) => fault = TimeFault::Implausible as u8,
                    // The other end's malformed DTLR was counted on its own packet.
                    Err(_) => {}
                }
            }
        }
        if fault != 0 {
            bump(c, Counter::ObserveDtlrFaults);
        } else if rtt == NO_SAMPLE && held == NO_SAMPLE && side_rtt == NO_SAMPLE {
            return;
        }
        emit(
            key,
            slot,
            now,
            rtt,
            held,
            side_rtt,
            sample_flags,
            fault,
            echoed,
            c,
        );
    }
}

/// Writes a sample straight into the ring (not built on the stack first).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    key: &FlowKey,
    slot: u32,
    now: u64,
    rtt: u64,
    held: u64,
    side_rtt: u64,
    flags: u8,
    fault: u8,
    psn: u16,
    c: Option<*mut Counters>,
) {
    let Some(mut entry) = SAMPLES.reserve::<ObservedSample>(0) else {
        bump(c, Counter::ObserveSamplesDropped);
        return;
    };
    let s = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned ring entry of the sample's size.
    unsafe {
        (*s).key = *key;
        (*s).ts_ns = now;
        (*s).rtt_ns = rtt;
        (*s).held_ns = held;
        (*s).side_rtt_ns = side_rtt;
        (*s).slot = slot;
        (*s).flags = flags;
        (*s).fault = fault;
        (*s).psn = psn;
    }
    // No wakeup: userspace reads the ring on a timer.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    bump(c, Counter::ObserveSamples);
}
