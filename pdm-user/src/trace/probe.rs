//! Sending hop-limited probes and matching the answers to them.
//!
//! Every ICMPv6 answer (Time Exceeded, Destination Unreachable, Echo Reply, ...) is read
//! from one raw ICMPv6 socket and matched to its probe through the packet it quotes:
//! the destination address plus the UDP/TCP ports or the echo identifier and sequence.
//! UDP and TCP probes each get a socket of their own, so their local port names them,
//! and the destination's own answers (a UDP reply, SYN-ACK or RST) arrive there.
//! The PDM header is the kernel's: the sticky `IPV6_DSTOPTS` socket option.

use std::{
    io,
    mem::{self, MaybeUninit},
    net::Ipv6Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant, SystemTime},
};

use libc::c_int;
use pdm_common::wire::{
    self, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPPROTO_ROUTING,
    IPPROTO_TCP, IPPROTO_UDP, PdmFields,
};

use super::{Proto, TCP_DEFAULT_PORT, TraceError, UDP_BASE_PORT};

/// Probes in flight at once, as traceroute's default: a silent hop costs one wait for
/// the whole window, not one per probe.
const WINDOW: usize = 16;

/// `ICMP6_FILTER` (netinet/icmp6.h; not in the libc crate), at level IPPROTO_ICMPV6.
const ICMP6_FILTER: c_int = 1;
/// `SO_TIMESTAMPNS` (asm-generic/socket.h; not in the libc crate for Linux): receive
/// times as a `struct timespec` in a `SCM_TIMESTAMPNS` control message.
const SO_TIMESTAMPNS: c_int = 35;

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// What is in a UDP probe and an echo request after its header: recognisable in a capture.
const PAYLOAD: &[u8; 8] = b"pdmtrace";

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
    fn only_from_destination(self) -> bool {
        matches!(
            self,
            ReplyKind::EchoReply | ReplyKind::SynAck | ReplyKind::Rst | ReplyKind::UdpReply
        )
    }
}

/// The answer to one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub from: Ipv6Addr,
    pub rtt: Duration,
    pub kind: ReplyKind,
    /// From the destination.
    pub reached: bool,
    /// For ICMPv6 errors: whether the quoted probe still carried a PDM option.
    pub quoted_pdm: Option<bool>,
    /// The answer itself carried a PDM option.
    pub reply_pdm: bool,
}

/// One probe: the hop limit it went with and its answer, if any came in time.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub hop: u8,
    pub answer: Option<Answer>,
}

pub struct Config {
    pub target: Ipv6Addr,
    pub proto: Proto,
    pub port: Option<u16>,
    pub probes: u8,
    pub wait: Duration,
}

/// What names a probe in the packet an ICMPv6 error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Udp { sport: u16, dport: u16 },
    Tcp { sport: u16, dport: u16 },
    Echo { id: u16, seq: u16 },
}

/// One trace in progress.
struct Run {
    results: Vec<ProbeResult>,
    in_flight: Vec<InFlight>,
    /// No probes beyond this hop: the path ends here.
    stop_hop: u8,
}

/// When a probe left, on both clocks: the kernel stamps received packets with the
/// wall clock; the monotonic one serves the rest.
#[derive(Clone, Copy)]
struct Sent {
    at: Instant,
    wall: SystemTime,
}

impl Sent {
    fn now() -> Sent {
        Sent {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// From sending to the kernel's receive stamp if there is one (not delayed by
    /// this program being busy), else to `noticed`.
    fn rtt(&self, noticed: Instant, kernel: Option<SystemTime>) -> Duration {
        kernel
            .and_then(|k| k.duration_since(self.wall).ok())
            .unwrap_or_else(|| noticed.saturating_duration_since(self.at))
    }
}

/// A probe still waiting for its answer.
struct InFlight {
    index: usize,
    key: Key,
    sent: Sent,
    /// The probe's own UDP/TCP socket, polled for the destination's answer.
    socket: Option<OwnedFd>,
}

pub struct Prober {
    cfg: Config,
    /// Raw ICMPv6 socket receiving the answers of every probe.
    icmp: OwnedFd,
    source: Ipv6Addr,
}

impl Prober {
    /// Opens the receiving socket (needs CAP_NET_RAW) and finds the source address the
    /// kernel would use towards the target (fails when there is no route).
    pub fn open(cfg: Config) -> Result<Self, TraceError> {
        let icmp = raw_icmp_socket()?;
        let mut filter = Icmp6Filter::block_all();
        for t in [
            ICMPV6_DEST_UNREACH,
            ICMPV6_PKT_TOOBIG,
            ICMPV6_TIME_EXCEED,
            ICMPV6_PARAMPROB,
            ICMPV6_ECHO_REPLY,
        ] {
            filter.pass(t);
        }
        setsockopt(&icmp, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)
            .map_err(io_err("setting the ICMPv6 filter"))?;
        // To tell whether an answer itself carries PDM.
        setsockopt(
            &icmp,
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVDSTOPTS,
            &1 as &c_int,
        )
        .map_err(io_err("asking for received destination options"))?;
        setsockopt(&icmp, libc::SOL_SOCKET, SO_TIMESTAMPNS, &1 as &c_int)
            .map_err(io_err("asking for receive times"))?;
        let source = route_source(cfg.target)?;
        Ok(Prober { cfg, icmp, source })
    }

    pub fn source(&self) -> Ipv6Addr {
        self.source
    }

    /// One trace: `probes` probes per hop limit from 1 to `max_hop`, at most [`WINDOW`]
    /// in flight, none beyond the first hop that ends the path. Results are hop-major.
    pub fn trace(&self, pdm: bool, max_hop: u8) -> Result<Vec<ProbeResult>, TraceError> {
        let probes = usize::from(self.cfg.probes);
        let total = usize::from(max_hop) * probes;
        let hop_of = |i: usize| (i / probes + 1) as u8;
        let mut run = Run {
            results: (0..total)
                .map(|i| ProbeResult {
                    hop: hop_of(i),
                    answer: None,
                })
                .collect(),
            in_flight: Vec::new(),
            stop_hop: max_hop,
        };
        let sender = Sender::new(&self.cfg, pdm)?;
        let mut next = 0;
        self.drain_stale();
        loop {
            while run.in_flight.len() < WINDOW && next < total && hop_of(next) <= run.stop_hop {
                run.in_flight.push(sender.send(next, hop_of(next))?);
                next += 1;
                // Answers that came while sending are read at once: the time a TCP or
                // UDP answer is noticed is its receive time.
                self.collect(&mut run, Duration::ZERO)?;
            }
            if run.in_flight.is_empty() {
                break;
            }
            let oldest = run
                .in_flight
                .iter()
                .map(|f| f.sent.at)
                .min()
                .unwrap_or_else(Instant::now);
            let timeout = (oldest + self.cfg.wait).saturating_duration_since(Instant::now());
            self.collect(&mut run, timeout)?;
            let now = Instant::now();
            let (wait, stop_hop) = (self.cfg.wait, run.stop_hop);
            run.in_flight
                .retain(|f| now.duration_since(f.sent.at) < wait && hop_of(f.index) <= stop_hop);
        }
        run.results.truncate(usize::from(run.stop_hop) * probes);
        Ok(run.results)
    }

    /// Waits up to `timeout` for answers and files those that came.
    fn collect(&self, run: &mut Run, timeout: Duration) -> Result<(), TraceError> {
        let ready = poll(&self.icmp, &run.in_flight, timeout)?;
        let mut answers: Vec<(usize, Answer)> = Vec::new();
        if ready.icmp {
            self.receive_icmp(&run.in_flight, &mut answers);
        }
        for i in ready.sockets {
            if let Some(a) = self.socket_answer(&mut run.in_flight[i]) {
                answers.push((i, a));
            }
        }
        // Highest position first, so that removing one does not move the others; an
        // ICMPv6 answer (it names its sender) wins over its socket's error.
        answers.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        answers.dedup_by_key(|(i, _)| *i);
        for (i, a) in answers {
            let probe = run.in_flight.swap_remove(i);
            let result = &mut run.results[probe.index];
            if a.reached || matches!(a.kind, ReplyKind::Unreachable(_)) {
                run.stop_hop = run.stop_hop.min(result.hop);
            }
            result.answer = Some(a);
        }
        Ok(())
    }

    /// Answers to an earlier trace's probes that came after it ended must not be read
    /// as this one's.
    fn drain_stale(&self) {
        let mut buf = [0u8; 2048];
        while recv_icmp(&self.icmp, &mut buf).is_ok() {}
    }

    /// Reads every queued ICMPv6 message; those answering a probe in flight go to
    /// `answers` as (position in `in_flight`, answer).
    fn receive_icmp(&self, in_flight: &[InFlight], answers: &mut Vec<(usize, Answer)>) {
        let mut buf = [0u8; 2048];
        while let Ok(msg) = recv_icmp(&self.icmp, &mut buf) {
            let Some(parsed) = parse_icmp(&buf[..msg.len], self.cfg.target) else {
                continue;
            };
            let Some(i) = in_flight.iter().position(|f| f.key == parsed.key) else {
                continue;
            };
            answers.push((
                i,
                Answer {
                    from: msg.from,
                    rtt: in_flight[i].sent.rtt(msg.at, msg.kernel_at),
                    kind: parsed.kind,
                    reached: msg.from == self.cfg.target || parsed.kind.only_from_destination(),
                    quoted_pdm: parsed.quoted_pdm,
                    reply_pdm: msg.pdm,
                },
            ));
        }
    }

    /// What a probe's own socket says: the destination answered it directly, or an
    /// error that the ICMPv6 socket has already seen (then the socket is done with).
    fn socket_answer(&self, probe: &mut InFlight) -> Option<Answer> {
        let now = Instant::now();
        let socket = probe.socket.as_ref()?;
        let reached = |kind| Answer {
            from: self.cfg.target,
            rtt: probe.sent.rtt(now, None),
            kind,
            reached: true,
            quoted_pdm: None,
            reply_pdm: false,
        };
        match probe.key {
            Key::Tcp { .. } => {
                let kind = match so_error(socket) {
                    0 => Some(ReplyKind::SynAck),
                    libc::ECONNREFUSED => Some(ReplyKind::Rst),
                    // From an ICMPv6 error, which the raw socket reports with its sender.
                    _ => None,
                };
                probe.socket = None;
                kind.map(reached)
            }
            Key::Udp { .. } => {
                let mut buf = [0u8; 512];
                let mut from_target = false;
                while let Ok(from) = recv_from(socket, &mut buf) {
                    from_target |= from == self.cfg.target;
                }
                let _ = so_error(socket);
                from_target.then(|| reached(ReplyKind::UdpReply))
            }
            Key::Echo { .. } => None,
        }
    }
}

/// Sends the probes of one trace.
struct Sender<'a> {
    cfg: &'a Config,
    pdm: bool,
    /// PSN This Packet of the first PDM probe; +1 per probe.
    psn_base: u16,
    /// Raw ICMPv6 socket for echo requests (icmp only).
    echo: Option<OwnedFd>,
    echo_id: u16,
}

impl<'a> Sender<'a> {
    fn new(cfg: &'a Config, pdm: bool) -> Result<Self, TraceError> {
        let echo = match cfg.proto {
            Proto::Icmp => {
                let s = raw_icmp_socket()?;
                // Sends only: answers are read from the receiving socket.
                setsockopt(
                    &s,
                    libc::IPPROTO_ICMPV6,
                    ICMP6_FILTER,
                    &Icmp6Filter::block_all(),
                )
                .map_err(io_err("setting the ICMPv6 filter"))?;
                Some(s)
            }
            _ => None,
        };
        Ok(Sender {
            cfg,
            pdm,
            psn_base: random_u16(),
            echo,
            echo_id: random_u16(),
        })
    }

    fn send(&self, index: usize, hop: u8) -> Result<InFlight, TraceError> {
        let seq = index as u16;
        let target = self.cfg.target;
        match self.cfg.proto {
            Proto::Udp => {
                let s = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
                self.prepare(&s, index, hop, IPPROTO_UDP)?;
                let dport = self
                    .cfg
                    .port
                    .unwrap_or_else(|| UDP_BASE_PORT.wrapping_add(seq));
                let sent = Sent::now();
                send_to(&s, PAYLOAD, target, dport).map_err(send_err(target))?;
                let sport = local_port(&s).map_err(io_err("reading the probe's port"))?;
                Ok(InFlight {
                    index,
                    key: Key::Udp { sport, dport },
                    sent,
                    socket: Some(s),
                })
            }
            Proto::Tcp => {
                let s = socket(libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
                self.prepare(&s, index, hop, IPPROTO_TCP)?;
                // An answered SYN is closed with a RST, not a FIN handshake.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                setsockopt(&s, libc::SOL_SOCKET, libc::SO_LINGER, &linger)
                    .map_err(io_err("setting SO_LINGER"))?;
                let dport = self.cfg.port.unwrap_or(TCP_DEFAULT_PORT);
                let sent = Sent::now();
                connect(&s, target, dport).map_err(send_err(target))?;
                let sport = local_port(&s).map_err(io_err("reading the probe's port"))?;
                Ok(InFlight {
                    index,
                    key: Key::Tcp { sport, dport },
                    sent,
                    socket: Some(s),
                })
            }
            Proto::Icmp => {
                let s = self.echo.as_ref().expect("icmp sender has its socket");
                self.prepare(s, index, hop, IPPROTO_ICMPV6)?;
                let mut pkt = [0u8; 8 + PAYLOAD.len()];
                pkt[0] = ICMPV6_ECHO_REQUEST;
                // Checksum (octets 2-3) left 0: the kernel fills it in on ICMPv6 raw sockets.
                pkt[4..6].copy_from_slice(&self.echo_id.to_be_bytes());
                pkt[6..8].copy_from_slice(&seq.to_be_bytes());
                pkt[8..].copy_from_slice(PAYLOAD);
                let sent = Sent::now();
                send_to(s, &pkt, target, 0).map_err(send_err(target))?;
                Ok(InFlight {
                    index,
                    key: Key::Echo {
                        id: self.echo_id,
                        seq,
                    },
                    sent,
                    socket: None,
                })
            }
        }
    }

    /// Hop limit, and for the PDM trace the header with this probe's own PSN.
    fn prepare(&self, s: &OwnedFd, index: usize, hop: u8, upper: u8) -> Result<(), TraceError> {
        setsockopt(
            s,
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            &c_int::from(hop),
        )
        .map_err(io_err("setting the hop limit"))?;
        if self.pdm {
            let fields = PdmFields {
                psn_this: self.psn_base.wrapping_add(index as u16),
                ..PdmFields::default()
            };
            // The kernel links Next Header itself; `upper` is only what it will be.
            let header = fields.encode_header(upper);
            setsockopt(s, libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS, &header).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    TraceError::NotPermitted
                } else {
                    TraceError::Io {
                        what: "setting IPV6_DSTOPTS",
                        err: e,
                    }
                }
            })?;
        }
        Ok(())
    }
}

/// The probe an ICMPv6 message answers, as far as the message tells.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    key: Key,
    kind: ReplyKind,
    quoted_pdm: Option<bool>,
}

/// An ICMPv6 message as a raw socket delivers it (no IPv6 header). Errors count only
/// when the packet they quote went to `target`.
fn parse_icmp(msg: &[u8], target: Ipv6Addr) -> Option<Parsed> {
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
/// start of the upper layer.
fn parse_quoted(p: &[u8]) -> Option<Quoted> {
    if p.first()? >> 4 != 6 {
        return None;
    }
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(24..40)?).ok()?);
    let mut next = *p.get(6)?;
    let mut off = 40;
    let mut pdm = false;
    loop {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING => {
                next = *p.get(off)?;
                off += (usize::from(*p.get(off + 1)?) + 1) * 8;
            }
            IPPROTO_DSTOPTS => {
                let h = wire::decode_dstopts(p.get(off..)?).ok()?;
                pdm |= h.pdm.is_some();
                next = h.next_header;
                off += h.len;
            }
            IPPROTO_FRAGMENT => {
                next = *p.get(off)?;
                off += 8;
            }
            _ => break,
        }
    }
    let u = p.get(off..)?;
    let word = |i: usize| Some(u16::from_be_bytes([*u.get(i)?, *u.get(i + 1)?]));
    let key = match next {
        IPPROTO_UDP => Key::Udp {
            sport: word(0)?,
            dport: word(2)?,
        },
        IPPROTO_TCP => Key::Tcp {
            sport: word(0)?,
            dport: word(2)?,
        },
        IPPROTO_ICMPV6 if *u.first()? == ICMPV6_ECHO_REQUEST => Key::Echo {
            id: word(4)?,
            seq: word(6)?,
        },
        _ => return None,
    };
    Some(Quoted { dst, pdm, key })
}

/// The ICMP6_FILTER bitmap: a set bit blocks that message type.
#[repr(C)]
struct Icmp6Filter([u32; 8]);

impl Icmp6Filter {
    fn block_all() -> Self {
        Icmp6Filter([u32::MAX; 8])
    }

    fn pass(&mut self, ty: u8) {
        self.0[usize::from(ty >> 5)] &= !(1 << (ty & 31));
    }
}

struct Ready {
    icmp: bool,
    /// Positions in `in_flight` whose socket has something.
    sockets: Vec<usize>,
}

fn poll(icmp: &OwnedFd, in_flight: &[InFlight], timeout: Duration) -> Result<Ready, TraceError> {
    let mut fds = vec![libc::pollfd {
        fd: icmp.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let mut owners = Vec::new();
    for (i, f) in in_flight.iter().enumerate() {
        if let Some(s) = &f.socket {
            // A TCP SYN is answered when the connect completes (writable).
            let events = match f.key {
                Key::Tcp { .. } => libc::POLLOUT,
                _ => libc::POLLIN,
            };
            fds.push(libc::pollfd {
                fd: s.as_raw_fd(),
                events,
                revents: 0,
            });
            owners.push(i);
        }
    }
    // Round up so that a wait of a few microseconds does not spin.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int;
    // SAFETY: `fds` is a valid array of that many pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Ready {
                icmp: false,
                sockets: Vec::new(),
            });
        }
        return Err(io_err("waiting for answers")(e));
    }
    Ok(Ready {
        icmp: fds[0].revents != 0,
        sockets: fds[1..]
            .iter()
            .zip(owners)
            .filter(|(p, _)| p.revents != 0)
            .map(|(_, i)| i)
            .collect(),
    })
}

struct Received {
    len: usize,
    from: Ipv6Addr,
    at: Instant,
    /// The kernel's receive time.
    kernel_at: Option<SystemTime>,
    /// It carried a Destination Options header with a PDM option.
    pdm: bool,
}

/// One message from the raw ICMPv6 socket, with its sender and destination options.
fn recv_icmp(s: &OwnedFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut from = sockaddr_zeroed();
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid, the pointers are set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: every buffer msg points to is live and writable for the lengths given.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let at = Instant::now();
    let mut pdm = false;
    let mut kernel_at = None;
    // SAFETY: the kernel filled msg's control buffer; the CMSG macros stay within
    // msg_controllen, and each cmsg's data is read within its cmsg_len.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_DSTOPTS {
                let data_len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = std::slice::from_raw_parts(libc::CMSG_DATA(c), data_len);
                pdm |= wire::decode_dstopts(data).is_ok_and(|h| h.pdm.is_some());
            }
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SO_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                kernel_at = SystemTime::UNIX_EPOCH
                    .checked_add(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok(Received {
        len: n as usize,
        from: Ipv6Addr::from(from.sin6_addr.s6_addr),
        at,
        kernel_at,
        pdm,
    })
}

fn raw_icmp_socket() -> Result<OwnedFd, TraceError> {
    socket(libc::SOCK_RAW, libc::IPPROTO_ICMPV6)
}

/// A non-blocking IPv6 socket; EPERM is the missing capability.
fn socket(ty: c_int, proto: c_int) -> Result<OwnedFd, TraceError> {
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => TraceError::NotPermitted,
            _ => TraceError::Io {
                what: "opening a socket",
                err: e,
            },
        });
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The source address for `target`, from a connected (never used) UDP socket.
fn route_source(target: Ipv6Addr) -> Result<Ipv6Addr, TraceError> {
    let s = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
    connect(&s, target, UDP_BASE_PORT).map_err(send_err(target))?;
    let mut sa = sockaddr_zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `sa` is writable for `len` octets.
    if unsafe { libc::getsockname(s.as_raw_fd(), (&raw mut sa).cast(), &raw mut len) } != 0 {
        return Err(io_err("reading the source address")(
            io::Error::last_os_error(),
        ));
    }
    Ok(Ipv6Addr::from(sa.sin6_addr.s6_addr))
}

fn setsockopt<T: ?Sized>(s: &OwnedFd, level: c_int, name: c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is readable for its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of_val(value) as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_ERROR: the pending error, cleared by reading it.
fn so_error(s: &OwnedFd) -> c_int {
    let mut err: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `err` is writable for `len` octets.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    };
    if r == 0 { err } else { -1 }
}

fn sockaddr_zeroed() -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

fn sockaddr(addr: Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    let mut sa = sockaddr_zeroed();
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = addr.octets();
    sa
}

fn send_to(s: &OwnedFd, buf: &[u8], addr: Ipv6Addr, port: u16) -> io::Result<()> {
    let sa = sockaddr(addr, port);
    // SAFETY: `buf` and `sa` are readable for the lengths given.
    let n = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Non-blocking connect: in progress counts as sent.
fn connect(s: &OwnedFd, addr: Ipv6Addr, port: u16) -> io::Result<()> {
    let sa = sockaddr(addr, port);
    // SAFETY: `sa` is readable for the length given.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    let e = io::Error::last_os_error();
    if r == 0 || e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(())
    } else {
        Err(e)
    }
}

fn recv_from(s: &OwnedFd, buf: &mut [u8]) -> io::Result<Ipv6Addr> {
    let mut sa = sockaddr_zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `buf` and `sa` are writable for the lengths given.
    let n = unsafe {
        libc::recvfrom(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&raw mut sa).cast(),
            &raw mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Ipv6Addr::from(sa.sin6_addr.s6_addr))
}

fn local_port(s: &OwnedFd) -> io::Result<u16> {
    let mut sa = sockaddr_zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    let fd: RawFd = s.as_raw_fd();
    // SAFETY: `sa` is writable for `len` octets.
    if unsafe { libc::getsockname(fd, (&raw mut sa).cast(), &raw mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::from_be(sa.sin6_port))
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: `b` is writable for its length. On failure the value is only less random.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u16::from_ne_bytes(b)
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> TraceError {
    move |err| TraceError::Io { what, err }
}

/// Sending or connecting: no route is the user's problem to hear about in one line.
fn send_err(target: Ipv6Addr) -> impl Fn(io::Error) -> TraceError {
    move |e| match e.raw_os_error() {
        // No source address for it (EADDRNOTAVAIL) amounts to the same.
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL) => {
            TraceError::NoRoute(target)
        }
        Some(libc::EPERM | libc::EACCES) => TraceError::Io {
            what: "sending a probe (a local firewall?)",
            err: e,
        },
        _ => TraceError::Io {
            what: "sending a probe",
            err: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn time_exceeded_quoting_a_pdm_udp_probe() {
        let msg = error(3, 0, true, IPPROTO_UDP, &udp(40000, 33435));
        assert_eq!(
            parse_icmp(&msg, a(DST)),
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
        let p = parse_icmp(&msg, a(DST)).expect("matches");
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
            parse_icmp(&msg, a(DST)).map(|p| p.key),
            Some(Key::Tcp {
                sport: 51000,
                dport: 80
            })
        );
        let echo = [ICMPV6_ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 7];
        let msg = error(3, 0, false, IPPROTO_ICMPV6, &echo);
        assert_eq!(
            parse_icmp(&msg, a(DST)).map(|p| p.key),
            Some(Key::Echo { id: 0x1234, seq: 7 })
        );
    }

    #[test]
    fn echo_reply() {
        let msg = [ICMPV6_ECHO_REPLY, 0, 0, 0, 0xab, 0xcd, 0, 3, b'x'];
        let p = parse_icmp(&msg, a(DST)).expect("echo reply");
        assert_eq!(p.key, Key::Echo { id: 0xabcd, seq: 3 });
        assert_eq!(p.kind, ReplyKind::EchoReply);
        assert!(p.kind.only_from_destination());
    }

    #[test]
    fn ignores_other_targets_truncation_and_noise() {
        let msg = error(3, 0, true, IPPROTO_UDP, &udp(1, 2));
        assert_eq!(parse_icmp(&msg, a("fd99::1")), None);
        for cut in 0..msg.len() - PAYLOAD.len() - 4 {
            // Whatever is cut off, no panic; a quote without the ports never matches.
            let p = parse_icmp(&msg[..cut], a(DST));
            assert!(p.is_none(), "cut at {cut}: {p:?}");
        }
        assert_eq!(parse_icmp(&[135, 0, 0, 0], a(DST)), None);
        assert_eq!(parse_icmp(&[], a(DST)), None);
        // An echo request quoted in an error is matched, but a quoted reply is not ours.
        let msg = error(
            3,
            0,
            false,
            IPPROTO_ICMPV6,
            &[ICMPV6_ECHO_REPLY, 0, 0, 0, 0, 1, 0, 1],
        );
        assert_eq!(parse_icmp(&msg, a(DST)), None);
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
