//! Real traffic between test hosts: a TCP bulk transfer checked byte for byte, UDP
//! request/response, request/response held by the server a known time (UDP and TCP),
//! ping6, and a packet capture decoded by tshark or read octet by octet.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{ADDR_A, ADDR_B, IFACE, Netns, TwoHosts};

/// Byte `i` of the transfer pattern: position-dependent, so a lost, duplicated or
/// reordered byte shows.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

pub fn sock(addr: &str, port: u16) -> SocketAddr {
    format!("[{addr}]:{port}").parse().expect("socket address")
}

/// Host b's end of a checked transfer: accepts one connection on `port` (saying so on
/// `ready`), checks every byte against [`pattern`] until a's end closes, and answers
/// with the count, which it also returns.
pub fn checking_sink(h: &TwoHosts, port: u16, ready: mpsc::Sender<()>) -> u64 {
    h.b.enter();
    let l = TcpListener::bind(sock(ADDR_B, port)).expect("bind");
    ready.send(()).expect("ready");
    let (mut c, _) = l.accept().expect("accept");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    loop {
        let n = c.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                pattern(pos + k as u64),
                "byte {} differs",
                pos + k as u64
            );
        }
        pos += n as u64;
    }
    c.write_all(&pos.to_be_bytes()).expect("answer");
    pos
}

/// Sends `len` octets from a to b over TCP; b checks every byte and answers with the
/// count. Returns the time the transfer took.
pub fn tcp_transfer(h: &TwoHosts, port: u16, len: u64) -> Duration {
    tcp_transfer_paced(h, port, len, None)
}

/// As [`tcp_transfer`], with the sender paced to `rate` octets per second (TCP's own
/// pacing): keeps a one-segment-per-packet sender below the rate at which the
/// receiving veth's backlog overflows, so packets are not lost on the host itself.
pub fn tcp_transfer_paced(h: &TwoHosts, port: u16, len: u64, rate: Option<u64>) -> Duration {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let server = s.spawn(|| checking_sink(h, port, ready_tx));
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        let client = s.spawn(|| {
            h.a.enter();
            let started = Instant::now();
            let mut c = TcpStream::connect_timeout(&sock(ADDR_B, port), Duration::from_secs(10))
                .expect("connect");
            if let Some(rate) = rate {
                use std::os::fd::AsRawFd as _;
                // SAFETY: valid socket, option value of the size the kernel expects.
                let r = unsafe {
                    libc::setsockopt(
                        c.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_MAX_PACING_RATE,
                        (&rate as *const u64).cast(),
                        8,
                    )
                };
                assert_eq!(
                    r,
                    0,
                    "SO_MAX_PACING_RATE: {}",
                    std::io::Error::last_os_error()
                );
            }
            c.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            let mut buf = vec![0u8; 1 << 16];
            let mut pos = 0u64;
            while pos < len {
                let n = (len - pos).min(buf.len() as u64) as usize;
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern(pos + k as u64);
                }
                c.write_all(&buf[..n]).expect("write");
                pos += n as u64;
            }
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut answer = [0u8; 8];
            c.read_exact(&mut answer).expect("answer");
            assert_eq!(
                u64::from_be_bytes(answer),
                len,
                "server received a different length"
            );
            started.elapsed()
        });
        let received = server.join().expect("server");
        assert_eq!(received, len);
        client.join().expect("client")
    })
}

/// `n` UDP request/response exchanges from a to b; every answer must match.
pub fn udp_exchange(h: &TwoHosts, port: u16, n: usize) {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            h.b.enter();
            let u = UdpSocket::bind(sock(ADDR_B, port)).expect("bind udp");
            u.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 2048];
            for _ in 0..n {
                let (len, from) = u.recv_from(&mut buf).expect("udp request");
                u.send_to(&buf[..len], from).expect("udp answer");
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        s.spawn(|| {
            h.a.enter();
            let u = UdpSocket::bind(sock(ADDR_A, 0)).expect("bind udp");
            u.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 2048];
            for i in 0..n {
                let msg = format!("request {i}");
                u.send_to(msg.as_bytes(), sock(ADDR_B, port)).expect("send");
                let (len, _) = u.recv_from(&mut buf).expect("udp answer");
                assert_eq!(&buf[..len], msg.as_bytes());
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    });
}

/// `n` requests from `client` (bound to `from`) to a server on `server` at `to`:`port`
/// over `proto` ("udp" or "tcp", one connection), one at a time: the server holds each
/// `hold` before answering it with the same octets, the client checks the answer and
/// waits `think` before the next request.
pub fn held_requests(
    proto: &str,
    (client, from): (&Netns, &str),
    (server, to): (&Netns, &str),
    port: u16,
    n: usize,
    hold: Duration,
    think: Duration,
) {
    let tcp = match proto {
        "tcp" => true,
        "udp" => false,
        _ => panic!("held_requests over {proto}"),
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            server.enter();
            if tcp {
                let l = TcpListener::bind(sock(to, port)).expect("bind");
                ready_tx.send(()).expect("ready");
                let (mut c, _) = l.accept().expect("accept");
                c.set_nodelay(true).expect("nodelay");
                c.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut req = [0u8; 64];
                for _ in 0..n {
                    c.read_exact(&mut req).expect("request");
                    std::thread::sleep(hold);
                    c.write_all(&req).expect("answer");
                }
                // Until the client closes, so that the close is the client's.
                let _ = c.read(&mut req);
            } else {
                let u = UdpSocket::bind(sock(to, port)).expect("bind udp");
                u.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                ready_tx.send(()).expect("ready");
                let mut buf = [0u8; 2048];
                for _ in 0..n {
                    let (len, from) = u.recv_from(&mut buf).expect("udp request");
                    std::thread::sleep(hold);
                    u.send_to(&buf[..len], from).expect("udp answer");
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        s.spawn(|| {
            client.enter();
            // A request's octets in, the answer's out.
            type Ask<'a> = Box<dyn FnMut(&[u8]) -> Vec<u8> + 'a>;
            let mut ask: Ask<'_> = if tcp {
                let mut c = TcpStream::connect_timeout(&sock(to, port), Duration::from_secs(10))
                    .expect("connect");
                c.set_nodelay(true).expect("nodelay");
                c.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                Box::new(move |req| {
                    c.write_all(req).expect("request");
                    let mut answer = vec![0u8; req.len()];
                    c.read_exact(&mut answer).expect("answer");
                    answer
                })
            } else {
                let u = UdpSocket::bind(sock(from, 0)).expect("bind udp");
                u.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                Box::new(move |req| {
                    u.send_to(req, sock(to, port)).expect("send");
                    let mut buf = [0u8; 2048];
                    let (len, _) = u.recv_from(&mut buf).expect("udp answer");
                    buf[..len].to_vec()
                })
            };
            for i in 0..n {
                // 64 octets: the TCP server reads requests of that size.
                let req = format!("{proto} request {i:<52}");
                assert_eq!(ask(req.as_bytes()), req.as_bytes(), "answer {i}");
                std::thread::sleep(think);
            }
        });
    });
}

/// ping6 from a to b; all must come back.
pub fn ping(h: &TwoHosts, count: u32) {
    ping_from(&h.a, ADDR_B, count);
}

/// ping6 from `ns` to `to`; all must come back.
pub fn ping_from(ns: &Netns, to: &str, count: u32) {
    let out = ns.run(
        "ping",
        &["-6", "-c", &count.to_string(), "-i", "0.1", "-W", "2", to],
    );
    assert!(
        out.contains(&format!("{count} received")),
        "ping lost packets: {out}"
    );
}

/// A dumpcap capture in a namespace, without a capture filter: libpcap's `tcp`/`udp`
/// filters do not see past IPv6 extension headers.
pub struct Capture {
    child: Option<Child>,
    pub path: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns) -> Self {
        Self::start_on(ns, IFACE)
    }

    /// A capture of interface `iface` of `ns`.
    pub fn start_on(ns: &Netns, iface: &str) -> Self {
        Self::spawn(ns, iface, &["-s", "200"], "pcapng")
    }

    /// A capture of whole packets on `iface` of `ns`, as pcap, for
    /// [`Capture::ipv6_packets`].
    pub fn start_whole(ns: &Netns, iface: &str) -> Self {
        Self::spawn(ns, iface, &["-P"], "pcap")
    }

    fn spawn(ns: &Netns, iface: &str, opts: &[&str], ext: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}-{iface}.{ext}", ns.name));
        let _ = std::fs::remove_file(&path);
        let child = ns
            .cmd("dumpcap")
            .args(["-q", "-i", iface, "-B", "64"])
            .args(opts)
            .arg("-w")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dumpcap");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "dumpcap did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The file appears before the socket is fully set up.
        std::thread::sleep(Duration::from_millis(300));
        Self {
            child: Some(child),
            path,
        }
    }

    /// Stops the capture; returns the number of packets the kernel dropped.
    pub fn stop(&mut self) -> u64 {
        let child = self.child.take().expect("running");
        // The last packets sit in a ring block the kernel hands to dumpcap only when the
        // block fills or its timeout expires; stopping at once would lose them.
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().expect("wait dumpcap");
        let err = String::from_utf8_lossy(&out.stderr);
        // "Packets received/dropped on interface 'pdm0': 123/0 (pcap:0/dumpcap:0/flushed:0/ps_ifdrop:0) (100.0%)"
        err.lines()
            .find_map(|l| l.split("': ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.split('/').nth(1))
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    }

    /// The IPv6 packets of a [`Capture::start_whole`] capture of an Ethernet link,
    /// every octet from the IPv6 header on.
    pub fn ipv6_packets(&self) -> Vec<Vec<u8>> {
        testbed::pcap::read_frames(&self.path)
            .unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
            .into_iter()
            .filter(|(_, f)| f.get(12..14) == Some(&[0x86, 0xdd][..]))
            .map(|(_, f)| f[14..].to_vec())
            .collect()
    }

    /// tshark's decoding of the capture: one row per packet with the given fields.
    pub fn fields(&self, fields: &[&str], filter: &str) -> Vec<Vec<String>> {
        let mut cmd = std::process::Command::new("tshark");
        cmd.arg("-r")
            .arg(&self.path)
            .args(["-Y", filter, "-T", "fields", "-E", "separator=|"]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let out = super::run_ok(&mut cmd);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // PDM_TEST_KEEP=1 keeps captures for a look with tshark after a failure.
        if std::env::var_os("PDM_TEST_KEEP").is_none() {
            let _ = std::fs::remove_file(&self.path);
        } else {
            eprintln!("capture kept: {}", self.path.display());
        }
    }
}
