//! The embedded demo: two test hosts (the `testbed` library's namespaces joined by a
//! veth pair), a server with a per-request processing time, and a client producing a
//! TCP request/response flow, a bulk TCP flow, a UDP request/response flow and ping6.
//! Everything is removed on drop; leftovers of a crashed run are removed on the next.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

pub const CLIENT_NS: &str = "pdm-demo-client";
pub const SERVER_NS: &str = "pdm-demo-server";
/// The veth end in each namespace.
pub const IFACE: &str = "demo0";
pub const CLIENT_ADDR: &str = "fd00:d3:0::1";
pub const SERVER_ADDR: &str = "fd00:d3:0::2";
pub const PORT_RR: u16 = 7100;
pub const PORT_BULK: u16 = 7101;
pub const PORT_UDP: u16 = 7102;

/// Moves the calling thread into namespace `name`.
pub fn enter(name: &str) -> Result<()> {
    testbed::enter(name).map_err(Into::into)
}

/// The two demo hosts, removed on drop (a crashed run's leftovers are removed first).
pub struct DemoHosts {
    pub client: testbed::Netns,
    pub server: testbed::Netns,
}

impl DemoHosts {
    pub fn create() -> Result<Self> {
        let client = testbed::Netns::create(CLIENT_NS)?;
        let server = testbed::Netns::create(SERVER_NS)?;
        client.veth(IFACE, &server, IFACE)?;
        client.add_addr(IFACE, CLIENT_ADDR.parse()?, 64)?;
        server.add_addr(IFACE, SERVER_ADDR.parse()?, 64)?;
        Ok(Self { client, server })
    }
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    format!("[{addr}]:{port}")
        .parse()
        .expect("valid socket address")
}

/// pdm's kernel programs attached to the server host too, so that its answers carry
/// PDM (its measurements are not shown). Detached on drop.
pub struct ServerPdm {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerPdm {
    pub fn attach() -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let attached = enter(SERVER_NS).and_then(|()| {
                let mut ebpf =
                    crate::kernel::attach::load(&crate::kernel::attach::LoadOptions::default())?;
                let iface = crate::sys::iface::Iface::resolve(IFACE)?;
                let links = crate::kernel::attach::attach(
                    &mut ebpf,
                    &iface,
                    crate::kernel::attach::Ingress::Tc,
                )?;
                Ok((ebpf, links))
            });
            match attached {
                Ok(held) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.recv();
                    drop(held);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx
            .recv()
            .context("the server-side pdm thread ended")??;
        Ok(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerPdm {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The demo's traffic; stops (threads end, ping is killed) on drop.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ping: Option<Child>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(mut p) = self.ping.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const TICK: Duration = Duration::from_millis(200);

/// Starts servers in the server namespace and clients in the client namespace.
pub fn start_traffic(processing: Duration) -> Result<Traffic> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();

    // Servers.
    let spawn_server = |f: fn(&AtomicBool, Duration, &mpsc::Sender<Result<()>>) -> Result<()>| {
        let (stop, ready) = (stop.clone(), ready_tx.clone());
        std::thread::spawn(move || {
            if let Err(e) = enter(SERVER_NS).and_then(|()| f(&stop, processing, &ready)) {
                let _ = ready.send(Err(e));
            }
        })
    };
    threads.push(spawn_server(serve_request_response));
    threads.push(spawn_server(serve_bulk));
    threads.push(spawn_server(serve_udp));
    for _ in 0..3 {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("demo servers did not start")??;
    }

    // Clients.
    for f in [client_request_response, client_bulk, client_udp] {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            if enter(CLIENT_NS).is_ok() {
                // A client that loses its server just ends; the view shows it.
                let _ = f(&stop);
            }
        }));
    }
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            CLIENT_NS,
            "ping",
            "-6",
            "-i",
            "0.5",
            "-q",
            SERVER_ADDR,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ping (iputils-ping)")?;
    Ok(Traffic {
        stop,
        threads,
        ping: Some(ping),
    })
}

fn listener(port: u16) -> Result<TcpListener> {
    let l = TcpListener::bind(sock(SERVER_ADDR, port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Accepts connections until `stop`, handing each to `serve` on its own thread.
fn accept_loop(
    l: TcpListener,
    stop: &AtomicBool,
    processing: Duration,
    serve: fn(TcpStream, Duration),
) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                std::thread::spawn(move || serve(c, processing));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn serve_request_response(
    stop: &AtomicBool,
    processing: Duration,
    ready: &mpsc::Sender<Result<()>>,
) -> Result<()> {
    let l = listener(PORT_RR)?;
    let _ = ready.send(Ok(()));
    accept_loop(l, stop, processing, |mut c, processing| {
        let mut req = [0u8; 64];
        while c.read_exact(&mut req).is_ok() {
            // The application's own processing time: what server delay should show.
            std::thread::sleep(processing);
            if c.write_all(&[0x5a; 512]).is_err() {
                break;
            }
        }
    });
    Ok(())
}

fn serve_bulk(
    stop: &AtomicBool,
    processing: Duration,
    ready: &mpsc::Sender<Result<()>>,
) -> Result<()> {
    let l = listener(PORT_BULK)?;
    let _ = ready.send(Ok(()));
    accept_loop(l, stop, processing, |mut c, _| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    });
    Ok(())
}

fn serve_udp(
    stop: &AtomicBool,
    processing: Duration,
    ready: &mpsc::Sender<Result<()>>,
) -> Result<()> {
    let u = UdpSocket::bind(sock(SERVER_ADDR, PORT_UDP))?;
    u.set_read_timeout(Some(TICK))?;
    let _ = ready.send(Ok(()));
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            std::thread::sleep(processing);
            let _ = u.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

fn client_request_response(stop: &AtomicBool) -> Result<()> {
    let mut c = TcpStream::connect_timeout(&sock(SERVER_ADDR, PORT_RR), Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut resp = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        c.write_all(&[0xa5; 64])?;
        c.read_exact(&mut resp)?;
        std::thread::sleep(TICK);
    }
    Ok(())
}

fn client_bulk(stop: &AtomicBool) -> Result<()> {
    let mut c = TcpStream::connect_timeout(&sock(SERVER_ADDR, PORT_BULK), Duration::from_secs(2))?;
    // 20 MB/s: plenty of packets, without taking the demo machine's CPU.
    let rate: u64 = 20_000_000;
    // SAFETY: valid socket, option value of the size the kernel expects.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&rate as *const u64).cast(),
            8,
        )
    };
    c.set_write_timeout(Some(TICK))?;
    let buf = vec![0x42u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        match c.write(&buf) {
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn client_udp(stop: &AtomicBool) -> Result<()> {
    let u = UdpSocket::bind(sock(CLIENT_ADDR, 0))?;
    u.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        u.send_to(&[0x17; 100], sock(SERVER_ADDR, PORT_UDP))?;
        let _ = u.recv_from(&mut buf);
        std::thread::sleep(TICK);
    }
    Ok(())
}
