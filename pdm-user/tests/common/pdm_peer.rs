//! A PDM peer whose fields the test sets itself: a UDP server that reads the PDM of each
//! request through the socket API (`IPV6_RECVDSTOPTS`) and answers with a Destination
//! Options header of its own (`IPV6_DSTOPTS` ancillary data on `sendmsg`), echoing the
//! request's PSN with a DTLR the test chooses how to compute: honest, lying, or encoded
//! by a broken encoder. No eBPF and no pdm on this side: what pdm reports about it can
//! be checked against what the peer really did.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::mpsc,
    time::Duration,
};

use pdm_common::{
    time::DeltaTime,
    wire::{PdmFields, decode_dstopts},
};

use super::Netns;

/// Linux's IPv6 socket options for Destination Options headers (uapi in6.h).
const IPV6_RECVDSTOPTS: libc::c_int = 58;
const IPV6_DSTOPTS: libc::c_int = 59;

/// What the peer did for one request.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    /// The request's PDM, as received.
    pub request: PdmFields,
    /// The answer's PDM, as sent.
    pub sent: PdmFields,
    /// How long the peer really held the request: from the kernel's receive timestamp
    /// to just before its `sendmsg` (ns).
    pub held_ns: u64,
}

/// How the peer behaves.
pub struct Behaviour {
    /// Processing time per request (slept).
    pub hold: Box<dyn Fn(usize) -> Duration + Send>,
    /// The DTLR to send for the i-th request really held `held_ns`.
    pub dtlr: Box<dyn Fn(usize, u64) -> DeltaTime + Send>,
}

fn set_option(fd: libc::c_int, level: libc::c_int, name: libc::c_int, what: &str) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and an int option.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "{what}: {}", std::io::Error::last_os_error());
}

/// One datagram as received.
pub struct Received {
    pub from: SocketAddr,
    /// The kernel's receive time (SO_TIMESTAMPNS, realtime ns).
    pub rx_ns: u64,
    /// The PDM of its Destination Options header (with IPV6_RECVDSTOPTS on).
    pub pdm: Option<PdmFields>,
    pub data: Vec<u8>,
}

/// recvmsg with its control messages: the receive timestamp (SO_TIMESTAMPNS must be
/// on) and any Destination Options header.
pub fn receive(fd: libc::c_int) -> Option<Received> {
    let mut buf = vec![0u8; 2048];
    // SAFETY: plain data, written by recvmsg.
    let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 32];
    // SAFETY: msghdr of live buffers, read back only after a successful recvmsg.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return None;
        }
        let (mut rx, mut pdm) = (None, None);
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let len = (*c).cmsg_len as usize - (data as usize - c as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                    let ts = (data as *const libc::timespec).read_unaligned();
                    rx = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                (libc::IPPROTO_IPV6, IPV6_DSTOPTS) => {
                    let header = std::slice::from_raw_parts(data, len);
                    pdm = decode_dstopts(header).ok().and_then(|h| h.pdm);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let addr = SocketAddr::V6(std::net::SocketAddrV6::new(
            std::net::Ipv6Addr::from(from.sin6_addr.s6_addr),
            u16::from_be(from.sin6_port),
            0,
            from.sin6_scope_id,
        ));
        buf.truncate(n as usize);
        Some(Received {
            from: addr,
            rx_ns: rx.expect("SO_TIMESTAMPNS"),
            pdm,
            data: buf,
        })
    }
}

/// Sends `data` to `to` with `pdm` in a Destination Options header of our own.
fn send_with_pdm(fd: libc::c_int, to: SocketAddr, data: &[u8], pdm: &PdmFields) {
    let SocketAddr::V6(to) = to else {
        panic!("IPv6 only")
    };
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_port = to.port().to_be();
    addr.sin6_addr.s6_addr = to.ip().octets();
    // The kernel fills in the Next Header octet.
    let header = pdm.encode_header(0);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr of live buffers; the control buffer holds one cmsg of 16 octets.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(header.len() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::IPPROTO_IPV6;
        (*c).cmsg_type = IPV6_DSTOPTS;
        (*c).cmsg_len = libc::CMSG_LEN(header.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(header.as_ptr(), libc::CMSG_DATA(c), header.len());
        libc::sendmsg(fd, &msg, 0)
    };
    assert_eq!(
        n,
        data.len() as isize,
        "sendmsg with IPV6_DSTOPTS: {}",
        std::io::Error::last_os_error()
    );
}

/// Serves `n` requests on `addr`:`port` in `ns` as `b` says, then returns what it did.
/// `ready` is signalled once it listens. Stops early if no request comes for 5 s.
pub fn serve(
    ns: &Netns,
    addr: &str,
    port: u16,
    n: usize,
    b: Behaviour,
    ready: mpsc::Sender<()>,
) -> Vec<Answer> {
    ns.in_ns(move || {
        let u = UdpSocket::bind(super::traffic::sock(addr, port)).expect("bind");
        let fd = u.as_raw_fd();
        set_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS");
        set_option(fd, libc::IPPROTO_IPV6, IPV6_RECVDSTOPTS, "IPV6_RECVDSTOPTS");
        u.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        ready.send(()).expect("ready");
        let mut psn = 0x4000u16;
        let mut answers = Vec::new();
        for i in 0..n {
            let Some(Received {
                from,
                rx_ns,
                pdm,
                data,
            }) = receive(fd)
            else {
                break;
            };
            let request = pdm.expect("the request carries PDM (pdm runs on the client)");
            std::thread::sleep((b.hold)(i));
            let held_ns = super::clock_ns(libc::CLOCK_REALTIME).saturating_sub(rx_ns);
            let dtlr = (b.dtlr)(i, held_ns);
            let sent = PdmFields {
                psn_this: psn,
                psn_last_recv: request.psn_this,
                scale_dtlr: dtlr.scale,
                dtlr: dtlr.delta,
                scale_dtls: 0,
                dtls: 0,
            };
            psn = psn.wrapping_add(1);
            send_with_pdm(fd, from, &data, &sent);
            answers.push(Answer {
                request,
                sent,
                held_ns,
            });
        }
        answers
    })
}

/// RFC 8250's encoding with the scale one shift short and the value wrapping at 16 bits,
/// as public PDM code does (1 µs becomes 119208 at scale 23, wrapped).
pub fn one_shift_short(ns: u64) -> DeltaTime {
    let attos = u128::from(ns) * 1_000_000_000;
    let bits = 128 - attos.leading_zeros();
    let scale = bits.saturating_sub(17);
    DeltaTime {
        delta: (attos >> scale) as u16,
        scale: scale as u8,
    }
}

/// One request of [`ask`], as its client did it.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// The request's PDM, as sent.
    pub sent: PdmFields,
    /// Realtime just before its `sendmsg`, and the kernel's receive time of its answer.
    pub sent_ns: u64,
    pub answered_ns: u64,
    /// The answer's PDM, as received.
    pub answer: PdmFields,
}

/// The client side: `n` requests from `from` to `to`:`port` in `ns`, one at a time,
/// each `think` after the previous answer, every one with a PDM this function computes
/// from its own clock as RFC 8250 §3.2 says (PSNLR and DTLR from the last answer, DTLS
/// from the previous request's send to that answer's reception). Returns what it did.
pub fn ask(ns: &Netns, from: &str, to: &str, port: u16, n: usize, think: Duration) -> Vec<Asked> {
    ns.in_ns(move || {
        let u = UdpSocket::bind(super::traffic::sock(from, 0)).expect("bind");
        let fd = u.as_raw_fd();
        set_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS");
        set_option(fd, libc::IPPROTO_IPV6, IPV6_RECVDSTOPTS, "IPV6_RECVDSTOPTS");
        u.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let to = super::traffic::sock(to, port);
        let mut psn = 0xfff0u16;
        let mut last: Option<Asked> = None;
        let mut asked = Vec::new();
        for i in 0..n {
            let now = super::clock_ns(libc::CLOCK_REALTIME);
            let (psn_last_recv, dtlr, dtls) = last.map_or((0, 0, 0), |a| {
                (
                    a.answer.psn_this,
                    now - a.answered_ns,
                    a.answered_ns - a.sent_ns,
                )
            });
            let (dtlr, dtls) = (
                pdm_common::time::encode_delta_ns(dtlr),
                pdm_common::time::encode_delta_ns(dtls),
            );
            let sent = PdmFields {
                psn_this: psn,
                psn_last_recv,
                scale_dtlr: dtlr.scale,
                dtlr: dtlr.delta,
                scale_dtls: dtls.scale,
                dtls: dtls.delta,
            };
            psn = psn.wrapping_add(1);
            let sent_ns = super::clock_ns(libc::CLOCK_REALTIME);
            send_with_pdm(fd, to, format!("request {i}").as_bytes(), &sent);
            let r = receive(fd).expect("an answer within 5 s");
            let a = Asked {
                sent,
                sent_ns,
                answered_ns: r.rx_ns,
                answer: r.pdm.expect("the answer carries PDM"),
            };
            asked.push(a);
            last = Some(a);
            std::thread::sleep(think);
        }
        asked
    })
}

/// What a PDM reader should find in an exchange of [`serve`] and [`ask`], from the
/// peers' own records (µs).
pub struct Truth {
    /// The holds the server's DTLRs encode, one per answer.
    pub server_delay: Vec<f64>,
    /// The client's think times, one per request after the first.
    pub client_delay: Vec<f64>,
    /// The client's own round trips less the hold the server claimed: the path.
    pub rtt: Vec<f64>,
}

impl Truth {
    pub fn of(answers: &[Answer], asked: &[Asked]) -> Self {
        let server_delay: Vec<f64> = answers
            .iter()
            .map(|a| {
                let d = DeltaTime {
                    delta: a.sent.dtlr,
                    scale: a.sent.scale_dtlr,
                };
                pdm_common::time::decode_received(d).expect("RFC encoding") as f64 / 1e3
            })
            .collect();
        let client_delay = asked[1..]
            .iter()
            .zip(asked)
            .map(|(a, prev)| (a.sent_ns - prev.answered_ns) as f64 / 1e3)
            .collect();
        let rtt = asked
            .iter()
            .zip(&server_delay)
            .map(|(a, held)| (a.answered_ns - a.sent_ns) as f64 / 1e3 - held)
            .collect();
        Self {
            server_delay,
            client_delay,
            rtt,
        }
    }
}

/// The median as pdm computes percentiles: the sample at rank round(0.5 × (n − 1)).
pub fn median(v: &[f64]) -> f64 {
    assert!(!v.is_empty(), "no samples");
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.5).round() as usize]
}

/// [`serve`] on `server` and [`ask`] from `client`, `n` requests to `port`: what each
/// peer did. Every request must be answered.
pub fn exchange(
    (client, from): (&Netns, &str),
    (server, to): (&Netns, &str),
    port: u16,
    n: usize,
    b: Behaviour,
    think: Duration,
) -> (Vec<Answer>, Vec<Asked>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let peer = s.spawn(|| serve(server, to, port, n, b, ready_tx));
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("peer ready");
        let asked = ask(client, from, to, port, n, think);
        let answers = peer.join().expect("peer");
        assert_eq!(answers.len(), n, "every request answered");
        (answers, asked)
    })
}
