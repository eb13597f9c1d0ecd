//! Sending hop-limited probes and matching the answers to them.
//!
//! Every ICMPv6 answer (Time Exceeded, Destination Unreachable, Echo Reply, ...) is read
//! from one raw ICMPv6 socket and matched to its probe through the packet it quotes:
//! the destination address plus the UDP/TCP ports or the echo identifier and sequence.
//! UDP and TCP probes each get a socket of their own, so their local port names them,
//! and the destination's own answers (a UDP reply, SYN-ACK or RST) arrive there.
//! The PDM header is the kernel's: the sticky `IPV6_DSTOPTS` socket option.
//!
//! Both traces run together: each plain probe goes out back to back with a PDM probe
//! of the same hop limit (a pair), so that a transient condition — a neighbour being
//! resolved, a rate limit, a burst of loss — hits both alike. Hops left silent are
//! probed again after a pause, PDM first: a router with any ICMPv6 budget left answers
//! the first probe that reaches it.

use std::{
    io,
    net::Ipv6Addr,
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant, SystemTime},
};

use libc::c_int;
use pdm_common::wire::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, PdmFields};

use super::{
    Proto, TCP_DEFAULT_PORT, TraceError, UDP_BASE_PORT,
    icmp::{self, ICMP6_FILTER, Icmp6Filter, Key, ReplyKind},
    pace::Pacer,
    sock::{self, io_err, send_err, setsockopt},
};

/// Probes in flight at once, as traceroute's default: a silent hop costs one wait for
/// the whole window, not one per probe.
const WINDOW: usize = 16;

/// The pairs of the first round, and of each retry, go at most this many hops beyond
/// the lowest one still to send or waiting for its answer: whatever ends the path (the destination, a router without a route)
/// answers every probe that gets there, whatever its hop limit, and a long window would
/// spend its ICMPv6 budget in one burst (Linux's is 6).
const LOOKAHEAD: u8 = 3;

/// Before a silent hop is probed again: long enough for a router's ICMPv6 bucket to
/// earn a token back (Linux's `net.ipv6.icmp.ratelimit` was 1000 ms by default).
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What is in a UDP probe and an echo request after its header: recognisable in a capture.
const PAYLOAD: &[u8; 8] = b"pdmtrace";

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

/// One probe: its trace, the hop limit it went with, its pair, and its answer if one
/// came in time.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub hop: u8,
    pub pdm: bool,
    /// Which pair of its hop: `0..probes` the first pass, then one per retry.
    pub round: u8,
    /// It left before its partner of the other trace (same hop and round).
    pub first: bool,
    pub answer: Option<Answer>,
}

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub target: Ipv6Addr,
    pub proto: Proto,
    pub port: Option<u16>,
    pub max_hops: u8,
    pub probes: u8,
    pub retries: u8,
    pub wait: Duration,
    /// Nothing is sent after this (a safety net; a trace normally ends long before).
    pub deadline: Instant,
}

/// Both traces to one destination, probe by probe in sending order, and the hop
/// beyond which each had nothing more to find (plain first).
pub struct Probed {
    pub results: Vec<ProbeResult>,
    pub stop: [u8; 2],
}

/// A pair still to send.
#[derive(Clone, Copy)]
struct Pending {
    hop: u8,
    round: u8,
    pdm_first: bool,
    not_before: Instant,
}

/// Both traces in progress.
struct Run {
    results: Vec<ProbeResult>,
    in_flight: Vec<InFlight>,
    /// Per trace (plain, PDM): no probes beyond this hop, the path ends there.
    stop: [u8; 2],
    /// Per hop limit: when its last probe left.
    last_sent: Vec<Option<Instant>>,
}

impl Run {
    /// A trace wants more answers from `hop`.
    fn wants(&self, hop: u8) -> bool {
        hop <= self.stop[0].max(self.stop[1])
    }

    /// The lowest hop whose pair of `round` is still to send or in flight.
    fn frontier(&self, queue: &[Pending], round: u8) -> u8 {
        let queued = queue.iter().filter(|p| p.round == round).map(|p| p.hop);
        let flying = self
            .in_flight
            .iter()
            .map(|f| &self.results[f.index])
            .filter(|r| r.round == round)
            .map(|r| r.hop);
        queued.chain(flying).min().unwrap_or(u8::MAX)
    }

    /// Hops where a trace that goes that far has no answer at all yet.
    fn silent_hops(&self) -> Vec<u8> {
        let top = self.stop[0].max(self.stop[1]);
        (1..=top)
            .filter(|&hop| {
                [false, true].into_iter().any(|pdm| {
                    hop <= self.stop[usize::from(pdm)]
                        && !self
                            .results
                            .iter()
                            .any(|r| r.hop == hop && r.pdm == pdm && r.answer.is_some())
                })
            })
            .collect()
    }
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
    /// Its place in `Run::results`.
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
    plain: Sender,
    pdm: Sender,
}

impl Prober {
    /// Opens the receiving socket (needs CAP_NET_RAW) and finds the source address the
    /// kernel would use towards the target (fails when there is no route).
    pub fn open(cfg: Config) -> Result<Self, TraceError> {
        let icmp = sock::raw_icmp_socket()?;
        let mut filter = Icmp6Filter::block_all();
        for t in [
            icmp::ICMPV6_DEST_UNREACH,
            icmp::ICMPV6_PKT_TOOBIG,
            icmp::ICMPV6_TIME_EXCEED,
            icmp::ICMPV6_PARAMPROB,
            icmp::ICMPV6_ECHO_REPLY,
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
        setsockopt(&icmp, libc::SOL_SOCKET, sock::SO_TIMESTAMPNS, &1 as &c_int)
            .map_err(io_err("asking for receive times"))?;
        let source = sock::route_source(cfg.target)?;
        Ok(Prober {
            plain: Sender::new(&cfg, false)?,
            pdm: Sender::new(&cfg, true)?,
            cfg,
            icmp,
            source,
        })
    }

    pub fn source(&self) -> Ipv6Addr {
        self.source
    }

    /// Both traces: `probes` pairs per hop limit from 1 up (round by round, as mtr
    /// does, so that one hop's pairs are spread out), at most [`WINDOW`] probes in
    /// flight, none beyond the hop that ends a trace; then up to `retries` rounds of
    /// one PDM-first pair to every hop still silent in either trace, each
    /// [`RETRY_PAUSE`] after that hop's last probe. `pacer` is shared by every trace of
    /// a survey.
    pub fn run(&self, pacer: &Pacer) -> Result<Probed, TraceError> {
        let start = Instant::now();
        let mut queue: Vec<Pending> = (0..self.cfg.probes)
            .flat_map(|round| {
                (1..=self.cfg.max_hops).map(move |hop| Pending {
                    hop,
                    round,
                    // Alternately, so that neither trace always has the first go at a
                    // router's last token.
                    pdm_first: round.is_multiple_of(2),
                    not_before: start,
                })
            })
            .collect();
        let mut run = Run {
            results: Vec::new(),
            in_flight: Vec::new(),
            stop: [self.cfg.max_hops; 2],
            last_sent: vec![None; usize::from(self.cfg.max_hops) + 1],
        };
        let mut retries_done = 0;
        // The round whose pairs go out hop by hop, at most LOOKAHEAD hops ahead: the
        // first of the first pass, then each retry.
        let mut phase = 0;
        loop {
            let mut next_chance: Option<Instant> = None;
            while run.in_flight.len() + 2 <= WINDOW && Instant::now() < self.cfg.deadline {
                queue.retain(|p| run.wants(p.hop));
                let now = Instant::now();
                let reach = run.frontier(&queue, phase).saturating_add(LOOKAHEAD - 1);
                let mut sent = false;
                for i in 0..queue.len() {
                    let p = queue[i];
                    if p.hop > reach {
                        // Sent once the hops before it have answered or timed out.
                        continue;
                    }
                    if p.not_before > now {
                        next_chance = earliest(next_chance, p.not_before);
                        continue;
                    }
                    let traces = self.pair(&run, p);
                    match pacer.take(p.hop, traces.len() as u32) {
                        Ok(()) => {
                            queue.remove(i);
                            self.send_pair(&mut run, p, &traces)?;
                            sent = true;
                            break;
                        }
                        Err(free) => next_chance = earliest(next_chance, free),
                    }
                }
                if !sent {
                    break;
                }
                // Answers that came while sending are read at once: the time a TCP or
                // UDP answer is noticed is its receive time.
                self.collect(&mut run, Duration::ZERO)?;
            }
            if Instant::now() >= self.cfg.deadline {
                queue.clear();
            }
            if run.in_flight.is_empty() && queue.is_empty() {
                let silent = run.silent_hops();
                if retries_done >= self.cfg.retries
                    || silent.is_empty()
                    || Instant::now() >= self.cfg.deadline
                {
                    break;
                }
                let round = self.cfg.probes.saturating_add(retries_done);
                retries_done += 1;
                phase = round;
                queue = silent
                    .into_iter()
                    .map(|hop| Pending {
                        hop,
                        round,
                        pdm_first: true,
                        not_before: run.last_sent[usize::from(hop)].unwrap_or(start) + RETRY_PAUSE,
                    })
                    .collect();
                continue;
            }
            let now = Instant::now();
            let mut until = next_chance.unwrap_or(now + self.cfg.wait);
            if let Some(oldest) = run.in_flight.iter().map(|f| f.sent.at).min() {
                until = until.min(oldest + self.cfg.wait);
            }
            self.collect(&mut run, until.saturating_duration_since(now))?;
            let now = Instant::now();
            let (wait, stop) = (self.cfg.wait, run.stop);
            let results = &run.results;
            run.in_flight.retain(|f| {
                let r = &results[f.index];
                let expired = now.duration_since(f.sent.at) >= wait;
                // Unanswered where the same trace got answers from that hop: its router
                // is running out of ICMPv6 budget (a filter drops a trace's every probe).
                if expired
                    && results
                        .iter()
                        .any(|q| q.hop == r.hop && q.pdm == r.pdm && q.answer.is_some())
                {
                    pacer.slow_down(r.hop);
                }
                !expired && r.hop <= stop[usize::from(r.pdm)]
            });
        }
        Ok(Probed {
            results: run.results,
            stop: run.stop,
        })
    }

    /// The traces of pair `p` in sending order: those that still go as far as its hop.
    fn pair(&self, run: &Run, p: Pending) -> Vec<bool> {
        let order = if p.pdm_first {
            [true, false]
        } else {
            [false, true]
        };
        order
            .into_iter()
            .filter(|&pdm| p.hop <= run.stop[usize::from(pdm)])
            .collect()
    }

    fn send_pair(&self, run: &mut Run, p: Pending, traces: &[bool]) -> Result<(), TraceError> {
        for (i, &pdm) in traces.iter().enumerate() {
            let index = run.results.len();
            let sender = if pdm { &self.pdm } else { &self.plain };
            let flight = sender.send(index, p.hop)?;
            run.results.push(ProbeResult {
                hop: p.hop,
                pdm,
                round: p.round,
                first: i == 0,
                answer: None,
            });
            run.in_flight.push(flight);
        }
        run.last_sent[usize::from(p.hop)] = Some(Instant::now());
        Ok(())
    }

    /// Waits up to `timeout` for answers and files those that came.
    fn collect(&self, run: &mut Run, timeout: Duration) -> Result<(), TraceError> {
        let ready = poll(&self.icmp, &run.in_flight, timeout)?;
        let mut answers: Vec<(usize, Answer)> = Vec::new();
        // Read even when poll did not report it: an ICMPv6 error that arrived since
        // must be seen before the error it caused on a probe's own socket.
        self.receive_icmp(&run.in_flight, &mut answers);
        for i in ready {
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
            if a.reached {
                // Probes allowed more hops than the destination is away are the same
                // probes again: neither trace goes further.
                for s in &mut run.stop {
                    *s = (*s).min(result.hop);
                }
            } else if matches!(a.kind, ReplyKind::Unreachable(_)) {
                let s = &mut run.stop[usize::from(result.pdm)];
                *s = (*s).min(result.hop);
            }
            result.answer = Some(a);
        }
        Ok(())
    }

    /// Reads every queued ICMPv6 message; those answering a probe in flight go to
    /// `answers` as (position in `in_flight`, answer).
    fn receive_icmp(&self, in_flight: &[InFlight], answers: &mut Vec<(usize, Answer)>) {
        let mut buf = [0u8; 2048];
        while let Ok(msg) = sock::recv_icmp(&self.icmp, &mut buf) {
            let Some(parsed) = icmp::parse(&buf[..msg.len], self.cfg.target) else {
                continue;
            };
            // Every trace of a survey reads every ICMPv6 message: an echo reply (which
            // quotes nothing) is ours only from our target.
            if parsed.kind == ReplyKind::EchoReply && msg.from != self.cfg.target {
                continue;
            }
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
                let kind = match sock::so_error(socket) {
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
                while let Ok(from) = sock::recv_from(socket, &mut buf) {
                    from_target |= from == self.cfg.target;
                }
                let _ = sock::so_error(socket);
                from_target.then(|| reached(ReplyKind::UdpReply))
            }
            Key::Echo { .. } => None,
        }
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Sends the probes of one trace.
struct Sender {
    target: Ipv6Addr,
    proto: Proto,
    port: Option<u16>,
    pdm: bool,
    /// PSN This Packet of the first PDM probe; +1 per probe.
    psn_base: u16,
    /// Raw ICMPv6 socket for echo requests (icmp only).
    echo: Option<OwnedFd>,
    echo_id: u16,
}

impl Sender {
    fn new(cfg: &Config, pdm: bool) -> Result<Self, TraceError> {
        let echo = match cfg.proto {
            Proto::Icmp => {
                let s = sock::raw_icmp_socket()?;
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
            target: cfg.target,
            proto: cfg.proto,
            port: cfg.port,
            pdm,
            psn_base: sock::random_u16(),
            echo,
            echo_id: sock::random_u16(),
        })
    }

    fn send(&self, index: usize, hop: u8) -> Result<InFlight, TraceError> {
        let seq = index as u16;
        let target = self.target;
        match self.proto {
            Proto::Udp => {
                let s = sock::socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
                self.prepare(&s, index, hop, IPPROTO_UDP)?;
                let dport = self.port.unwrap_or_else(|| UDP_BASE_PORT.wrapping_add(seq));
                let sent = Sent::now();
                sock::send_to(&s, PAYLOAD, target, dport).map_err(send_err(target))?;
                let sport = sock::local_port(&s).map_err(io_err("reading the probe's port"))?;
                Ok(InFlight {
                    index,
                    key: Key::Udp { sport, dport },
                    sent,
                    socket: Some(s),
                })
            }
            Proto::Tcp => {
                let s = sock::socket(libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
                self.prepare(&s, index, hop, IPPROTO_TCP)?;
                // An answered SYN is closed with a RST, not a FIN handshake.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                setsockopt(&s, libc::SOL_SOCKET, libc::SO_LINGER, &linger)
                    .map_err(io_err("setting SO_LINGER"))?;
                let dport = self.port.unwrap_or(TCP_DEFAULT_PORT);
                let sent = Sent::now();
                sock::connect(&s, target, dport).map_err(send_err(target))?;
                let sport = sock::local_port(&s).map_err(io_err("reading the probe's port"))?;
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
                pkt[0] = icmp::ICMPV6_ECHO_REQUEST;
                // Checksum (octets 2-3) left 0: the kernel fills it in on ICMPv6 raw sockets.
                pkt[4..6].copy_from_slice(&self.echo_id.to_be_bytes());
                pkt[6..8].copy_from_slice(&seq.to_be_bytes());
                pkt[8..].copy_from_slice(PAYLOAD);
                let sent = Sent::now();
                sock::send_to(s, &pkt, target, 0).map_err(send_err(target))?;
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

/// Waits until the ICMPv6 socket or a probe's own socket has something, or `timeout`.
/// Returns the positions in `in_flight` whose socket has something.
fn poll(
    icmp: &OwnedFd,
    in_flight: &[InFlight],
    timeout: Duration,
) -> Result<Vec<usize>, TraceError> {
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
            return Ok(Vec::new());
        }
        return Err(io_err("waiting for answers")(e));
    }
    Ok(fds[1..]
        .iter()
        .zip(owners)
        .filter(|(p, _)| p.revents != 0)
        .map(|(_, i)| i)
        .collect())
}
