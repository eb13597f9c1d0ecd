//! Randomized frames through the kernel programs (BPF_PROG_TEST_RUN): valid TCP, UDP and
//! ICMPv6 frames with random extension-header chains (Hop-by-Hop, Routing, Destination
//! Options with and without PDM, Fragment, AH, ESP), then bit flips, truncations, random
//! bytes, lying Hdr Ext Len and payload lengths. For every frame:
//!
//! - no program fails, and every one passes the packet on;
//! - egress returns the frame unchanged, or with exactly one 16-octet PDM header at the
//!   place a simple walk of the input says (after Hop-by-Hop and Routing), the Next Header
//!   chain relinked and the payload length grown by 16, and etherparse (an independent
//!   parser) reads the result whenever it read the input;
//! - ingress returns the frame unchanged, but for an MSS clamp on a TCP SYN;
//! - at the end, every packet is in exactly one outcome counter per program.
//!
//! `PDM_FUZZ_SEED` and `PDM_FUZZ_FRAMES` override the fixed seed and the frame count
//! (`cargo xtask fuzz` runs it long with a random seed). A failure prints the seed, the
//! frame's index and both frames in hex, which is all it takes to reproduce it.

mod common;

use aya::programs::ProgramError;
use etherparse::SlicedPacket;
use pdm_common::{
    chain,
    counters::Counter,
    wire::{PDM_HEADER_LEN, PDM_OPTION_LEN, PDM_OPTION_TYPE, PdmFields},
};
use pdm_user::kernel::{
    attach::{self, LoadOptions, Role},
    maps::{self, Totals},
    testrun::{self, Prog},
};

const DEFAULT_SEED: u64 = 0x5eed_0f9d_e42b;
const DEFAULT_FRAMES: u64 = 100_000;
const ETH: usize = 14;
const IP6: usize = 40;

/// splitmix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(default)
}

/// One extension header of the generated chain: its protocol number and octets (with
/// the Next Header octet filled in when the chain is assembled).
fn extension(rng: &mut Rng, first: bool) -> (u8, Vec<u8>) {
    let options = |rng: &mut Rng, units: usize| {
        // PadN filling the header: type 1, length, zeros.
        let len = units * 8;
        let mut h = vec![0, (units - 1) as u8, 1, (len - 4) as u8];
        h.resize(len, 0);
        if rng.chance(10) {
            h[4..].copy_from_slice(&rng.bytes(len - 4));
        }
        h
    };
    match rng.below(7) {
        0 if first => {
            let units = 1 + rng.below(3) as usize;
            (0, options(rng, units))
        }
        1 => {
            // Routing: type 4 (segment routing) with zero segments left, or random.
            let units = 1 + rng.below(3) as usize;
            let mut h = vec![0, (units - 1) as u8, 4, 0];
            h.resize(units * 8, 0);
            (43, h)
        }
        2 => {
            let f = PdmFields {
                psn_this: rng.next() as u16,
                psn_last_recv: rng.next() as u16,
                scale_dtlr: rng.below(64) as u8,
                scale_dtls: rng.below(64) as u8,
                dtlr: rng.next() as u16,
                dtls: rng.next() as u16,
            };
            (60, f.encode_header(0).to_vec())
        }
        3 => {
            let mut h = vec![0, 0];
            let offset: u16 = if rng.chance(70) {
                0
            } else {
                rng.next() as u16 & 0xfff8
            };
            h.extend_from_slice(&(offset | u16::from(rng.chance(50))).to_be_bytes());
            h.extend_from_slice(&rng.bytes(4));
            (44, h)
        }
        4 => {
            // AH: Payload Len in 4-octet units minus 2; 12 octets of ICV.
            let mut h = vec![0, 4, 0, 0];
            h.extend_from_slice(&rng.bytes(20));
            (51, h)
        }
        _ => {
            let units = 1 + rng.below(2) as usize;
            (60, options(rng, units))
        }
    }
}

/// The upper layer: (protocol, octets).
fn upper(rng: &mut Rng) -> (u8, Vec<u8>) {
    let n = rng.below(48) as usize;
    let payload = rng.bytes(n);
    match rng.below(5) {
        0 | 1 => {
            let mut h = Vec::new();
            h.extend_from_slice(&(rng.next() as u16).to_be_bytes());
            h.extend_from_slice(&(rng.next() as u16).to_be_bytes());
            h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&rng.bytes(2));
            h.extend_from_slice(&payload);
            (17, h)
        }
        2 | 3 => {
            let syn = rng.chance(30);
            let mut h = rng.bytes(20);
            let options: Vec<u8> = if syn {
                let mss = if rng.chance(50) {
                    65_500
                } else {
                    rng.next() as u16
                };
                let mut o = vec![2, 4];
                o.extend_from_slice(&mss.to_be_bytes());
                if rng.chance(50) {
                    o.insert(0, 1);
                    o.extend_from_slice(&[1, 1, 1]);
                }
                o
            } else {
                Vec::new()
            };
            h[12] = (((20 + options.len()) / 4) as u8) << 4;
            h[13] = if syn { 0x02 } else { rng.next() as u8 & !0x02 };
            h.extend_from_slice(&options);
            h.extend_from_slice(&payload);
            (6, h)
        }
        _ => {
            let ty = match rng.below(4) {
                0 => 128,
                1 => 129,
                2 => 135,
                _ => rng.next() as u8,
            };
            let mut h = vec![ty, 0];
            h.extend_from_slice(&rng.bytes(6));
            h.extend_from_slice(&payload);
            (58, h)
        }
    }
}

/// A well-formed frame: Ethernet, IPv6, up to a handful of extension headers (now and
/// then more than the programs walk), an upper layer or ESP.
fn frame(rng: &mut Rng) -> Vec<u8> {
    let count = if rng.chance(5) {
        6 + rng.below(5) as usize
    } else {
        rng.below(4) as usize
    };
    let exts: Vec<(u8, Vec<u8>)> = (0..count).map(|i| extension(rng, i == 0)).collect();
    let (last, body) = if rng.chance(5) {
        let n = 8 + rng.below(32) as usize;
        (50, rng.bytes(n))
    } else {
        upper(rng)
    };
    let mut payload = Vec::new();
    for (i, (_, h)) in exts.iter().enumerate() {
        let mut h = h.clone();
        h[0] = exts.get(i + 1).map_or(last, |(p, _)| *p);
        payload.extend_from_slice(&h);
    }
    payload.extend_from_slice(&body);
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.push(exts.first().map_or(last, |(p, _)| *p));
    f.push(64);
    f.extend_from_slice(&[0xfd, 0x0d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfd, 0x0d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&payload);
    f
}

/// Breaks a frame the ways hostile or broken senders do.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    match rng.below(10) {
        0..=2 => {}
        3..=5 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
        }
        6 => f.truncate(rng.below(f.len() as u64 + 1) as usize),
        7 => {
            // A random octet in the headers (where the walk looks).
            let i = ETH + rng.below((f.len() - ETH).min(120) as u64) as usize;
            f[i] = rng.next() as u8;
        }
        8 => {
            // A lying Hdr Ext Len in the first extension header, if any.
            if f.len() > ETH + IP6 + 1 {
                f[ETH + IP6 + 1] = rng.next() as u8;
            }
        }
        _ => {
            let v = rng.next() as u16;
            f[ETH + 4..ETH + 6].copy_from_slice(&v.to_be_bytes());
        }
    }
}

/// Where egress must put PDM in `f`, by a walk of our own: after the IPv6 header and any
/// Hop-by-Hop (first only) and Routing headers. (offset, offset of the Next Header octet
/// pointing there).
fn expected_insert(f: &[u8]) -> Option<(usize, usize)> {
    let (mut at, mut nh_at) = (ETH + IP6, ETH + 6);
    let mut nh = *f.get(nh_at)?;
    let mut first = true;
    while nh == 43 || (nh == 0 && first) {
        let len = (usize::from(*f.get(at + 1)?) + 1) * 8;
        nh_at = at;
        nh = *f.get(at)?;
        at += len;
        first = false;
    }
    Some((at, nh_at))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The egress contract for one frame; Err says what is wrong.
fn check_egress(input: &[u8], out: &[u8]) -> Result<bool, String> {
    if out == input {
        return Ok(false);
    }
    if out.len() != input.len() + PDM_HEADER_LEN {
        return Err(format!("length {} → {}", input.len(), out.len()));
    }
    let (at, nh_at) = expected_insert(input).ok_or("changed a frame it cannot have walked")?;
    let h = &out[at..at + PDM_HEADER_LEN];
    let well_formed = h[1] == 1
        && h[2] == PDM_OPTION_TYPE
        && h[3] == PDM_OPTION_LEN
        && h[14..] == [1, 0]
        && h[0] == input[nh_at];
    if !well_formed {
        return Err(format!("no PDM header at offset {at}: {}", hex(h)));
    }
    if out[at + PDM_HEADER_LEN..] != input[at..] {
        return Err("octets after the inserted header changed".into());
    }
    let mut front = input[..at].to_vec();
    front[nh_at] = 60;
    let plen = u16::from_be_bytes([input[ETH + 4], input[ETH + 5]]);
    if plen != 0 {
        let grown = plen
            .checked_add(PDM_HEADER_LEN as u16)
            .ok_or("inserted where the payload length cannot grow")?;
        front[ETH + 4..ETH + 6].copy_from_slice(&grown.to_be_bytes());
    }
    if out[..at] != front[..] {
        return Err("headers in front are not the input's, relinked and 16 longer".into());
    }
    if SlicedPacket::from_ethernet(input).is_ok() && SlicedPacket::from_ethernet(out).is_err() {
        return Err("etherparse reads the input but not the output".into());
    }
    // The shared host-side parser (what `pdm trace` and captures use) finds the PDM
    // egress put there, in the header egress put it in.
    if chain::parse(&input[ETH..]).is_ok() {
        let c = chain::parse(&out[ETH..]).map_err(|e| format!("chain parser: {e}"))?;
        let ours = wire_pdm(h);
        let found_at = c.pdm_header.map(|i| c.extensions()[i].offset + ETH);
        if ours.is_none() || c.pdm != ours || found_at != Some(at) {
            return Err(format!(
                "chain parser sees PDM {:?} in header {:?}, egress put {ours:?} at {at}",
                c.pdm, c.pdm_header
            ));
        }
    }
    Ok(true)
}

/// The PDM option of a 16-octet header as egress writes it.
fn wire_pdm(h: &[u8]) -> Option<PdmFields> {
    pdm_common::wire::decode_dstopts(h).ok()?.pdm
}

/// Whether the IPv6 header chain of `f` holds an Authentication Header, by a walk of
/// our own (AH's length is in 4-octet units, the others' in 8).
fn carries_ah(f: &[u8]) -> bool {
    let (mut at, mut nh) = (ETH + IP6, f.get(ETH + 6).copied());
    while let Some(h) = nh {
        let len = match h {
            51 => return true,
            44 => 8,
            0 | 43 | 60 => f.get(at + 1).map_or(0, |&l| (usize::from(l) + 1) * 8),
            _ => return false,
        };
        nh = f.get(at).copied();
        at += len;
        if len == 0 {
            return false;
        }
    }
    false
}

/// The ingress contract: unchanged, or a SYN's MSS (and the TCP checksum) lowered
/// unless an Authentication Header covers the segment.
fn check_ingress(input: &[u8], out: &[u8]) -> Result<(), String> {
    if out == input {
        return Ok(());
    }
    if carries_ah(input) {
        return Err("changed a packet an Authentication Header covers".into());
    }
    if out.len() != input.len() {
        return Err("length changed".into());
    }
    let changed: Vec<usize> = (0..out.len()).filter(|&i| out[i] != input[i]).collect();
    let tcp_syn = SlicedPacket::from_ethernet(input)
        .ok()
        .and_then(|p| match p.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => Some(t.syn()),
            _ => None,
        });
    if tcp_syn == Some(true) && changed.len() <= 4 {
        return Ok(());
    }
    Err(format!("octets {changed:?} changed"))
}

fn moved(before: &Totals, after: &Totals, c: Counter) -> u64 {
    after.get(c) - before.get(c)
}

#[test]
fn random_and_mutated_frames_through_every_program() {
    let seed = env_u64("PDM_FUZZ_SEED", DEFAULT_SEED);
    let frames = env_u64("PDM_FUZZ_FRAMES", DEFAULT_FRAMES);
    eprintln!("fuzz: seed {seed:#x}, {frames} frames (PDM_FUZZ_SEED / PDM_FUZZ_FRAMES)");
    let ebpf = attach::load(&LoadOptions {
        max_flows: 4096,
        ..LoadOptions::default()
    })
    .expect("load the eBPF programs (needs root)");
    let observer = attach::load(&LoadOptions {
        role: Role::Observe,
        max_flows: 4096,
        sample_tick_shift: 0,
        ..LoadOptions::default()
    })
    .expect("load the observer programs");
    let start = maps::totals(&ebpf).expect("counters");
    let observer_start = maps::totals(&observer).expect("counters");
    let mut observed = 0u64;
    let mut rng = Rng(seed);
    let (mut egress_runs, mut ingress_runs, mut inserted, mut refused) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..frames {
        let mut f = frame(&mut rng);
        mutate(&mut rng, &mut f);
        let fail = |what: &str, out: &[u8]| -> ! {
            panic!(
                "fuzz seed {seed:#x} frame {i}: {what}\n in: {}\nout: {}",
                hex(&f),
                hex(out)
            )
        };
        for prog in Prog::ALL.into_iter().chain(Prog::OBSERVE) {
            let loaded = if Prog::OBSERVE.contains(&prog) {
                &observer
            } else {
                &ebpf
            };
            let (ret, out) = match testrun::run(loaded, prog, &f, None, 1) {
                Ok(r) => (r.ret, r.frame),
                // The kernel refuses skb test runs shorter than the headers the
                // ethertype announces (and XDP runs shorter than Ethernet), before any
                // program runs.
                Err(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EINVAL) && f.len() < ETH + IP6 =>
                {
                    refused += 1;
                    continue;
                }
                Err(e) => fail(&format!("{}: test run failed: {e}", prog.name()), &[]),
            };
            let prog_name = prog.name();
            if ret != prog.pass() {
                fail(&format!("{prog_name} returned {ret}, not pass"), &out);
            }
            if Prog::OBSERVE.contains(&prog) {
                // Read-only: not one octet may differ, whatever the frame.
                observed += 1;
                if out != f {
                    fail(&format!("{prog_name} changed the frame"), &out);
                }
            } else if prog == Prog::Egress {
                egress_runs += 1;
                match check_egress(&f, &out) {
                    Ok(true) => inserted += 1,
                    Ok(false) => {}
                    Err(e) => fail(&format!("egress: {e}"), &out),
                }
            } else {
                ingress_runs += 1;
                if let Err(e) = check_ingress(&f, &out) {
                    fail(&format!("{prog_name}: {e}"), &out);
                }
            }
        }
    }
    let end = maps::totals(&ebpf).expect("counters");
    let m = |c| moved(&start, &end, c);
    assert_eq!(
        m(Counter::EgressPackets),
        egress_runs,
        "egress runs counted"
    );
    assert_eq!(m(Counter::EgressInserted), inserted, "insertions counted");
    let egress_outcomes: u64 = Counter::ALL
        .iter()
        .filter(|c| c.name().starts_with("egress_") && **c != Counter::EgressPackets)
        .map(|&c| m(c))
        .sum();
    assert_eq!(
        egress_outcomes, egress_runs,
        "one egress outcome per packet"
    );
    assert_eq!(
        m(Counter::IngressPackets),
        ingress_runs,
        "ingress runs counted"
    );
    let ingress_outcomes: u64 = [
        Counter::IngressPdm,
        Counter::IngressNoPdm,
        Counter::IngressNotIpv6,
        Counter::IngressNdMld,
        Counter::IngressNotEligible,
        Counter::IngressUnparsable,
        Counter::IngressFlowMapFull,
    ]
    .into_iter()
    .map(m)
    .sum();
    assert_eq!(
        ingress_outcomes, ingress_runs,
        "one ingress outcome per packet"
    );
    let observer_end = maps::totals(&observer).expect("counters");
    let o = |c| moved(&observer_start, &observer_end, c);
    assert_eq!(
        o(Counter::ObservePackets),
        observed,
        "observer runs counted"
    );
    let observe_outcomes: u64 = Counter::ALL
        .iter()
        .filter(|c| {
            c.name().starts_with("observe_skip_")
                || matches!(c, Counter::ObservePdm | Counter::ObserveNoPdm)
        })
        .map(|&c| o(c))
        .sum();
    assert_eq!(
        observe_outcomes, observed,
        "one observer outcome per packet"
    );
    assert!(
        o(Counter::ObservePdm) > 0 && o(Counter::ObserveNoPdm) > 0,
        "the frames exercise both outcomes"
    );
    eprintln!(
        "fuzz: {frames} frames, {egress_runs} egress runs ({inserted} with PDM inserted), \
         {ingress_runs} ingress runs, {observed} observer runs ({} with PDM, {} samples), \
         {refused} refused by the kernel as too short; \
         egress skips: unparsable {}, already PDM {}, other dstopts {}, AH {}, not eligible {}, \
         prefix too long {}, too big {}",
        o(Counter::ObservePdm),
        o(Counter::ObserveSamples),
        m(Counter::EgressUnparsable),
        m(Counter::EgressAlreadyPdm),
        m(Counter::EgressOtherDstOpts),
        m(Counter::EgressAh),
        m(Counter::EgressNotEligible),
        m(Counter::EgressPrefixTooLong),
        m(Counter::EgressTooBig),
    );
    assert!(
        inserted > frames / 10,
        "the generator should give egress plenty to insert into"
    );
}
