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
    net::Ipv6Addr,
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant, SystemTime},
};

use libc::c_int;
use pdm_common::wire::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, PdmFields};

use super::{
    Proto, TCP_DEFAULT_PORT, TraceError, UDP_BASE_PORT,
    icmp::{self, ICMP6_FILTER, Icmp6Filter, Key, ReplyKind},
    sock::{self, io_err, send_err, setsockopt},
};

/// Probes in flight at once, as traceroute's default: a silent hop costs one wait for
/// the whole window, not one per probe.
const WINDOW: usize = 16;

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
        while sock::recv_icmp(&self.icmp, &mut buf).is_ok() {}
    }

    /// Reads every queued ICMPv6 message; those answering a probe in flight go to
    /// `answers` as (position in `in_flight`, answer).
    fn receive_icmp(&self, in_flight: &[InFlight], answers: &mut Vec<(usize, Answer)>) {
        let mut buf = [0u8; 2048];
        while let Ok(msg) = sock::recv_icmp(&self.icmp, &mut buf) {
            let Some(parsed) = icmp::parse(&buf[..msg.len], self.cfg.target) else {
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
            cfg,
            pdm,
            psn_base: sock::random_u16(),
            echo,
            echo_id: sock::random_u16(),
        })
    }

    fn send(&self, index: usize, hop: u8) -> Result<InFlight, TraceError> {
        let seq = index as u16;
        let target = self.cfg.target;
        match self.cfg.proto {
            Proto::Udp => {
                let s = sock::socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
                self.prepare(&s, index, hop, IPPROTO_UDP)?;
                let dport = self
                    .cfg
                    .port
                    .unwrap_or_else(|| UDP_BASE_PORT.wrapping_add(seq));
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
                let dport = self.cfg.port.unwrap_or(TCP_DEFAULT_PORT);
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
