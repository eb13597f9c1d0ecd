//! `cargo xtask bench-helper ...` (hidden): the traffic programs the benchmarks run
//! inside the test hosts. Every loop is bounded in time; results go to stdout as one
//! JSON object.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::json;

use super::stats;

#[derive(Subcommand)]
pub enum Helper {
    /// Accepts TCP connections and discards what they send.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 900)]
        max_secs: u64,
    },
    /// TCP bulk sender: STREAMS connections writing for SECS seconds, optionally with a
    /// sticky 16-octet PDM-shaped IPV6_DSTOPTS header that the kernel adds itself.
    TcpSend {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long)]
        dstopts: bool,
    },
    /// Echoes UDP datagrams.
    UdpEcho {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 900)]
        max_secs: u64,
    },
    /// UDP request/response: one small datagram, wait for the echo, COUNT times at most
    /// or SECS seconds.
    UdpRr {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        secs: f64,
    },
    /// Small UDP datagrams as fast as sendmmsg goes, cycling through FLOWS distinct
    /// 5-tuples (source ports 20000.. × destination ports 30000..).
    UdpFlood {
        #[arg(long)]
        src: std::net::Ipv6Addr,
        #[arg(long)]
        dst: std::net::Ipv6Addr,
        #[arg(long)]
        flows: usize,
        #[arg(long)]
        secs: f64,
        /// Go on past SECS until every flow was sent this many times (at most 120 s more).
        #[arg(long, default_value_t = 0)]
        min_passes: u64,
        #[arg(long, default_value_t = 18)]
        payload: usize,
        /// First source port (one socket per port) and first destination port.
        #[arg(long, default_value_t = 20000)]
        sport_base: u16,
        #[arg(long, default_value_t = 30000)]
        dport_base: u16,
        /// Destination ports per socket (default: FLOWS, at most 1000). `--ports 1`
        /// sends each flow from its own source port to one destination port: the
        /// reverse of a flood, on the same 5-tuples.
        #[arg(long)]
        ports: Option<usize>,
    },
    /// Attaches a program that returns at once (the floor of a hook) to bench0 in
    /// this namespace, for SECS seconds or until killed.
    NullProg {
        #[arg(long)]
        hook: String,
        #[arg(long, default_value_t = 900)]
        max_secs: u64,
    },
}

pub fn run(h: Helper) -> Result<()> {
    let out = match h {
        Helper::TcpSink { listen, max_secs } => {
            let l = TcpListener::bind(listen)?;
            let deadline = Instant::now() + Duration::from_secs(max_secs);
            l.set_nonblocking(true)?;
            while Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 256 * 1024];
                            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            return Ok(());
        }
        Helper::TcpSend {
            dst,
            secs,
            streams,
            dstopts,
        } => tcp_send(dst, secs, streams, dstopts)?,
        Helper::UdpEcho { listen, max_secs } => {
            let u = UdpSocket::bind(listen)?;
            u.set_read_timeout(Some(Duration::from_millis(200)))?;
            let deadline = Instant::now() + Duration::from_secs(max_secs);
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
            return Ok(());
        }
        Helper::UdpRr { dst, count, secs } => udp_rr(dst, count, secs)?,
        Helper::UdpFlood {
            src,
            dst,
            flows,
            secs,
            min_passes,
            payload,
            sport_base,
            dport_base,
            ports,
        } => udp_flood(
            (src, sport_base),
            (dst, dport_base),
            flows,
            ports,
            secs,
            min_passes,
            payload,
        )?,
        Helper::NullProg { hook, max_secs } => {
            let name = std::ffi::CString::new(super::hosts::IFACE)?;
            // SAFETY: NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {}", super::hosts::IFACE);
            }
            let _link = super::bpf::attach_null(&hook, ifindex)?;
            println!("{}", json!({ "attached": hook }));
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs(max_secs));
            return Ok(());
        }
    };
    println!("{out}");
    Ok(())
}

fn own_cpu_seconds() -> f64 {
    // SAFETY: plain getrusage into a zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Sticky Destination Options header: 16 octets, one PDM option (type 0x0F, length 10)
/// and a PadN of length 0. The kernel sets the Next Header octet.
const PDM_DSTOPTS: [u8; 16] = [0, 1, 0x0f, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 1, 0];
const IPV6_DSTOPTS: libc::c_int = 59;

fn tcp_send(
    dst: SocketAddr,
    secs: f64,
    streams: usize,
    dstopts: bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut conns = Vec::new();
    for _ in 0..streams {
        let s = connect_with(dst, dstopts)?;
        conns.push(s);
    }
    let started = Instant::now();
    let cpu0 = own_cpu_seconds();
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let buf = vec![0x5au8; 128 * 1024];
                let mut sent = 0u64;
                s.set_write_timeout(Some(Duration::from_millis(200))).ok();
                while Instant::now() < deadline {
                    match s.write(&buf) {
                        Ok(n) => sent += n as u64,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
                let mss = tcp_maxseg(&s);
                (sent, mss)
            })
        })
        .collect();
    let mut bytes = 0;
    let mut mss = 0;
    for t in threads {
        let (b, m) = t
            .join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
        bytes += b;
        mss = m;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - cpu0;
    Ok(json!({
        "bytes": bytes,
        "secs": wall,
        "gbps": bytes as f64 * 8.0 / wall / 1e9,
        "cpu_s": cpu,
        "mss": mss,
        "dstopts": dstopts,
    }))
}

fn tcp_maxseg(s: &TcpStream) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers.
    unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    v
}

/// Connects to `dst`, with the sticky PDM-shaped Destination Options set before the SYN
/// (so the MSS accounts for it) when `dstopts`.
fn connect_with(dst: SocketAddr, dstopts: bool) -> Result<TcpStream> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: we own fd; TcpStream closes it.
    let s: TcpStream = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    if dstopts {
        // SAFETY: valid fd and a 16-byte buffer.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                IPV6_DSTOPTS,
                PDM_DSTOPTS.as_ptr().cast(),
                PDM_DSTOPTS.len() as libc::socklen_t,
            )
        };
        if r != 0 {
            bail!(
                "setsockopt IPV6_DSTOPTS: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let SocketAddr::V6(v6) = dst else {
        bail!("IPv6 only")
    };
    let sa = sockaddr6(*v6.ip(), v6.port());
    // SAFETY: valid fd and sockaddr_in6.
    let r = unsafe {
        libc::connect(
            fd,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("connect {dst}: {}", std::io::Error::last_os_error());
    }
    Ok(s)
}

fn sockaddr6(ip: std::net::Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = ip.octets();
    sa
}

fn udp_rr(dst: SocketAddr, count: u64, secs: f64) -> Result<serde_json::Value> {
    let u = UdpSocket::bind("[::]:0")?;
    u.connect(dst)?;
    u.set_read_timeout(Some(Duration::from_secs(1)))?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut rtts = Vec::new();
    let mut timeouts = 0u64;
    let mut buf = [0u8; 64];
    let msg = [0x42u8; 32];
    let mut i = 0u64;
    // The first exchanges warm caches and neighbour entries: not counted.
    const WARMUP: u64 = 50;
    while i < count + WARMUP && Instant::now() < deadline {
        let t = Instant::now();
        u.send(&msg)?;
        match u.recv(&mut buf) {
            Ok(_) => {
                if i >= WARMUP {
                    rtts.push(t.elapsed().as_nanos() as f64 / 1000.0);
                }
            }
            Err(_) => timeouts += 1,
        }
        i += 1;
    }
    if rtts.is_empty() {
        bail!("no answers from {dst}");
    }
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    rtts.sort_by(f64::total_cmp);
    Ok(json!({
        "n": rtts.len(),
        "timeouts": timeouts,
        "p50_us": stats::quantile_sorted(&rtts, 0.5),
        "p99_us": stats::quantile_sorted(&rtts, 0.99),
        "mean_us": mean,
        "min_us": rtts[0],
    }))
}

fn udp_flood(
    (src, sport_base): (std::net::Ipv6Addr, u16),
    (dst, dport_base): (std::net::Ipv6Addr, u16),
    flows: usize,
    ports: Option<usize>,
    secs: f64,
    min_passes: u64,
    payload: usize,
) -> Result<serde_json::Value> {
    const BATCH: usize = 64;
    let flows = flows.max(1);
    let ports = ports.unwrap_or(1000).clamp(1, flows.min(1000));
    let sockets = flows.div_ceil(ports);
    let lim = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: plain setrlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let socks: Vec<UdpSocket> = (0..sockets)
        .map(|s| UdpSocket::bind(SocketAddr::new(src.into(), sport_base + s as u16)))
        .collect::<std::io::Result<_>>()
        .context("binding the flood's sockets")?;
    let dsts: Vec<libc::sockaddr_in6> = (0..ports)
        .map(|p| sockaddr6(dst, dport_base + p as u16))
        .collect();
    let data = vec![0x33u8; payload];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: all-zero mmsghdr is valid; pointers are filled in below.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let hard = deadline + Duration::from_secs(120);
    let (mut packets, mut passes, mut errors) = (0u64, 0u64, 0u64);
    'outer: loop {
        for (s, sock) in socks.iter().enumerate() {
            // This socket's flows: ports[0 .. k).
            let k = (flows - s * ports).min(ports);
            let mut off = 0;
            while off < k.max(1) {
                let n = BATCH.min(k.max(BATCH) - off).max(1);
                for (i, m) in msgs.iter_mut().take(n).enumerate() {
                    m.msg_hdr.msg_name = (&raw const dsts[(off + i) % k]) as *mut _;
                    m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
                    m.msg_hdr.msg_iov = &raw mut iov;
                    m.msg_hdr.msg_iovlen = 1;
                }
                // SAFETY: msgs[..n] point at live buffers and addresses.
                let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
                if r > 0 {
                    packets += r as u64;
                } else {
                    errors += 1;
                }
                off += n;
                let now = Instant::now();
                if now >= hard || (now >= deadline && passes >= min_passes) {
                    break 'outer;
                }
            }
        }
        passes += 1;
        let now = Instant::now();
        if now >= hard || (now >= deadline && passes >= min_passes) {
            break;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(json!({
        "flows": flows,
        "sockets": sockets,
        "ports": ports,
        "packets": packets,
        "passes": passes,
        "send_errors": errors,
        "secs": wall,
        "pps": packets as f64 / wall,
    }))
}
