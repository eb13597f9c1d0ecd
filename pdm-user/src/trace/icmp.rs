//! ICMPv6 answers to probes: what kind of answer, and which probe the packet quoted
//! inside an error was (the destination address plus the UDP/TCP ports or the echo
//! identifier and sequence), and whether that quoted probe still carried PDM.

use std::net::Ipv6Addr;

use libc::c_int;
use pdm_common::chain::{self, Upper};

/// `ICMP6_FILTER` (netinet/icmp6.h; not in the libc crate), at level IPPROTO_ICMPV6.
pub(super) const ICMP6_FILTER: c_int = 1;

pub(super) const ICMPV6_DEST_UNREACH: u8 = 1;
pub(super) const ICMPV6_PKT_TOOBIG: u8 = 2;
pub(super) const ICMPV6_TIME_EXCEED: u8 = 3;
pub(super) const ICMPV6_PARAMPROB: u8 = 4;
pub(super) const ICMPV6_ECHO_REQUEST: u8 = 128;
pub(super) const ICMPV6_ECHO_REPLY: u8 = 129;

/// What answered a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// ICMPv6 Time Exceeded: a router on the way.
    TimeExceeded,
    /// ICMPv6 Destination Unreachable with its code (4: port unreachable).
    Unreachable(u8),
    PacketTooBig,
    /// ICMPv6 Parameter Problem with its code (2: unrecognised option).
    ParamProblem(u8),
    EchoReply,
    SynAck,
    Rst,
    /// The destination answered a UDP probe with data.
    UdpReply,
}

impl ReplyKind {
    pub fn label(self) -> String {
        match self {
            ReplyKind::TimeExceeded => "time-exceeded".into(),
            ReplyKind::Unreachable(0) => "no-route".into(),
            ReplyKind::Unreachable(1) => "admin-prohibited".into(),
            ReplyKind::Unreachable(3) => "address-unreachable".into(),
            ReplyKind::Unreachable(4) => "port-unreachable".into(),
            ReplyKind::Unreachable(5) => "source-policy-failed".into(),
            ReplyKind::Unreachable(6) => "reject-route".into(),
            ReplyKind::Unreachable(c) => format!("unreachable-code-{c}"),
            ReplyKind::PacketTooBig => "packet-too-big".into(),
            ReplyKind::ParamProblem(2) => "parameter-problem-unrecognized-option".into(),
            ReplyKind::ParamProblem(c) => format!("parameter-problem-code-{c}"),
            ReplyKind::EchoReply => "echo-reply".into(),
            ReplyKind::SynAck => "syn-ack".into(),
            ReplyKind::Rst => "rst".into(),
            ReplyKind::UdpReply => "udp-reply".into(),
        }
    }

    /// Only the probed host itself sends these.
    pub(super) fn only_from_destination(self) -> bool {
        matches!(
            self,
            ReplyKind::EchoReply | ReplyKind::SynAck | ReplyKind::Rst | ReplyKind::UdpReply
        )
    }
}

/// What names a probe in the packet an ICMPv6 error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Udp { sport: u16, dport: u16 },
    Tcp { sport: u16, dport: u16 },
    Echo { id: u16, seq: u16 },
}

/// The probe an ICMPv6 message answers, as far as the message tells.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parsed {
    pub(super) key: Key,
    pub(super) kind: ReplyKind,
    pub(super) quoted_pdm: Option<bool>,
}

/// An ICMPv6 message as a raw socket delivers it (no IPv6 header). Errors count only
/// when the packet they quote went to `target`.
pub(super) fn parse(msg: &[u8], target: Ipv6Addr) -> Option<Parsed> {
    let (&ty, rest) = msg.split_first()?;
    let code = *rest.first()?;
    let kind = match ty {
        ICMPV6_ECHO_REPLY => {
            let id = u16::from_be_bytes([*msg.get(4)?, *msg.get(5)?]);
            let seq = u16::from_be_bytes([*msg.get(6)?, *msg.get(7)?]);
            return Some(Parsed {
                key: Key::Echo { id, seq },
                kind: ReplyKind::EchoReply,
                quoted_pdm: None,
            });
        }
        ICMPV6_DEST_UNREACH => ReplyKind::Unreachable(code),
        ICMPV6_PKT_TOOBIG => ReplyKind::PacketTooBig,
        ICMPV6_TIME_EXCEED => ReplyKind::TimeExceeded,
        ICMPV6_PARAMPROB => ReplyKind::ParamProblem(code),
        _ => return None,
    };
    let quoted = parse_quoted(msg.get(8..)?)?;
    (quoted.dst == target).then_some(Parsed {
        key: quoted.key,
        kind,
        quoted_pdm: Some(quoted.pdm),
    })
}

struct Quoted {
    dst: Ipv6Addr,
    pdm: bool,
    key: Key,
}

/// The invoking packet an ICMPv6 error quotes: IPv6 header, extension headers, and the
/// start of the upper layer (the shared chain parser, pdm_common::chain).
fn parse_quoted(p: &[u8]) -> Option<Quoted> {
    let c = chain::parse(p).ok()?;
    let key = match c.upper {
        Upper::Udp { sport, dport } => Key::Udp { sport, dport },
        Upper::Tcp { sport, dport, .. } => Key::Tcp { sport, dport },
        Upper::Icmpv6 {
            ty: ICMPV6_ECHO_REQUEST,
            echo: Some((id, seq)),
            ..
        } => Key::Echo { id, seq },
        _ => return None,
    };
    Some(Quoted {
        dst: Ipv6Addr::from(c.dst),
        pdm: c.pdm.is_some(),
        key,
    })
}

/// The ICMP6_FILTER bitmap: a set bit blocks that message type.
#[repr(C)]
pub(super) struct Icmp6Filter([u32; 8]);

impl Icmp6Filter {
    pub(super) fn block_all() -> Self {
        Icmp6Filter([u32::MAX; 8])
    }

    pub(super) fn pass(&mut self, ty: u8) {
        self.0[usize::from(ty >> 5)] &= !(1 << (ty & 31));
    }
}

#[cfg(test)]
mod tests {
    use pdm_common::wire::{IPPROTO_DSTOPTS, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, PdmFields};

    use super::*;

    /// A UDP probe's payload (any will do).
    const PAYLOAD: &[u8; 8] = b"pdmtrace";

    const SRC: &str = "fd10:1::1";
    const DST: &str = "fd10:4::2";

    fn a(s: &str) -> Ipv6Addr {
        s.parse().expect("literal")
    }

    /// An ICMPv6 error of `ty`/`code` quoting an IPv6 packet to DST with optional PDM
    /// and the given upper layer.
    fn error(ty: u8, code: u8, pdm: bool, upper: u8, upper_bytes: &[u8]) -> Vec<u8> {
        let mut quoted = vec![0x60, 0, 0, 0, 0, 0, 0, 1];
        quoted[6] = if pdm { IPPROTO_DSTOPTS } else { upper };
        quoted.extend(a(SRC).octets());
        quoted.extend(a(DST).octets());
        if pdm {
            quoted.extend(PdmFields::default().encode_header(upper));
        }
        quoted.extend(upper_bytes);
        let plen = (quoted.len() - 40) as u16;
        quoted[4..6].copy_from_slice(&plen.to_be_bytes());
        let mut msg = vec![ty, code, 0, 0, 0, 0, 0, 0];
        msg.extend(quoted);
        msg
    }

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend(sport.to_be_bytes());
        u.extend(dport.to_be_bytes());
        u.extend([0, 16, 0, 0]);
        u.extend(PAYLOAD);
        u
    }

    /// Hostile answers (any router on the path can send anything): mutated and truncated
    /// errors never panic the parser, and what it accepts quotes a packet to the target.
    #[test]
    fn mutated_answers_never_panic() {
        let mut x: u64 = 0x9d1c_e5ee_d000_0001;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let z = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb) ^ (z >> 31)
        };
        let valid = [
            error(3, 0, true, IPPROTO_UDP, &udp(40000, 33435)),
            error(1, 4, false, IPPROTO_UDP, &udp(40000, 33434)),
            error(4, 1, true, IPPROTO_TCP, &[0; 20]),
        ];
        let mut accepted = 0;
        for i in 0..200_000 {
            let mut m = valid[i % valid.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % m.len() as u64) as usize;
                m[at] = next() as u8;
            }
            m.truncate((next() % (m.len() as u64 + 8)) as usize);
            if let Some(p) = parse(&m, a(DST)) {
                accepted += 1;
                assert!(
                    p.kind == ReplyKind::EchoReply || m.get(32..48) == Some(&a(DST).octets()[..])
                );
            }
        }
        assert!(
            accepted > 1000,
            "only {accepted} accepted: the mutations are too coarse"
        );
    }

    #[test]
    fn time_exceeded_quoting_a_pdm_udp_probe() {
        let msg = error(3, 0, true, IPPROTO_UDP, &udp(40000, 33435));
        assert_eq!(
            parse(&msg, a(DST)),
            Some(Parsed {
                key: Key::Udp {
                    sport: 40000,
                    dport: 33435
                },
                kind: ReplyKind::TimeExceeded,
                quoted_pdm: Some(true),
            })
        );
    }

    #[test]
    fn port_unreachable_quoting_a_plain_probe() {
        let msg = error(1, 4, false, IPPROTO_UDP, &udp(40000, 33434));
        let p = parse(&msg, a(DST)).expect("matches");
        assert_eq!(p.kind, ReplyKind::Unreachable(4));
        assert_eq!(p.quoted_pdm, Some(false));
        assert_eq!(p.kind.label(), "port-unreachable");
    }

    #[test]
    fn quoted_tcp_and_echo() {
        let mut tcp = Vec::new();
        tcp.extend(51000u16.to_be_bytes());
        tcp.extend(80u16.to_be_bytes());
        tcp.extend([0; 16]);
        let msg = error(3, 0, true, IPPROTO_TCP, &tcp);
        assert_eq!(
            parse(&msg, a(DST)).map(|p| p.key),
            Some(Key::Tcp {
                sport: 51000,
                dport: 80
            })
        );
        let echo = [ICMPV6_ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 7];
        let msg = error(3, 0, false, IPPROTO_ICMPV6, &echo);
        assert_eq!(
            parse(&msg, a(DST)).map(|p| p.key),
            Some(Key::Echo { id: 0x1234, seq: 7 })
        );
    }

    #[test]
    fn echo_reply() {
        let msg = [ICMPV6_ECHO_REPLY, 0, 0, 0, 0xab, 0xcd, 0, 3, b'x'];
        let p = parse(&msg, a(DST)).expect("echo reply");
        assert_eq!(p.key, Key::Echo { id: 0xabcd, seq: 3 });
        assert_eq!(p.kind, ReplyKind::EchoReply);
        assert!(p.kind.only_from_destination());
    }

    #[test]
    fn ignores_other_targets_truncation_and_noise() {
        let msg = error(3, 0, true, IPPROTO_UDP, &udp(1, 2));
        assert_eq!(parse(&msg, a("fd99::1")), None);
        for cut in 0..msg.len() - PAYLOAD.len() - 4 {
            // Whatever is cut off, no panic; a quote without the ports never matches.
            let p = parse(&msg[..cut], a(DST));
            assert!(p.is_none(), "cut at {cut}: {p:?}");
        }
        assert_eq!(parse(&[135, 0, 0, 0], a(DST)), None);
        assert_eq!(parse(&[], a(DST)), None);
        // An echo request quoted in an error is matched, but a quoted reply is not ours.
        let msg = error(
            3,
            0,
            false,
            IPPROTO_ICMPV6,
            &[ICMPV6_ECHO_REPLY, 0, 0, 0, 0, 1, 0, 1],
        );
        assert_eq!(parse(&msg, a(DST)), None);
    }

    #[test]
    fn filter_bits() {
        let mut f = Icmp6Filter::block_all();
        f.pass(ICMPV6_TIME_EXCEED);
        f.pass(ICMPV6_ECHO_REPLY);
        assert_eq!(f.0[0], !(1 << 3));
        assert_eq!(f.0[4], !(1 << 1));
        assert_eq!(f.0[1], u32::MAX);
    }
}
