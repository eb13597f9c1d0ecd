//! Three test hosts in a line, client — router — server, each in its own namespace,
//! with the router forwarding. Optionally the router delays every packet in a
//! userspace relay (this kernel has no netem): packets arriving on its links are
//! routed into a TUN device, held for the delay, and written back through a second
//! TUN, whose traffic is routed by the main table to the other link.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::Netns;

pub const CLIENT_ADDR: &str = "fd0e:1::1";
pub const SERVER_ADDR: &str = "fd0e:2::2";
pub const CLIENT_IF: &str = "pdm0";
pub const SERVER_IF: &str = "pdm0";

pub struct Line {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    relay: Option<Relay>,
}

/// Runs the calling thread under SCHED_FIFO, as netem's qdisc runs in the kernel: a
/// busy machine then delays the relay's packets by scheduling latency, not by whole
/// time slices of other tasks.
fn realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscall on the calling thread; failure leaves it as it was.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

impl Line {
    pub fn new(tag: &str) -> Self {
        let client = Netns::new(&format!("{tag}c"));
        let router = Netns::new(&format!("{tag}r"));
        let server = Netns::new(&format!("{tag}s"));
        client.veth(CLIENT_IF, &router, "rc");
        server.veth(SERVER_IF, &router, "rs");
        client.add_addr(CLIENT_IF, CLIENT_ADDR, 64);
        server.add_addr(SERVER_IF, SERVER_ADDR, 64);
        router.add_addr("rc", "fd0e:1::fe", 64);
        router.add_addr("rs", "fd0e:2::fe", 64);
        client.ip(&["route", "add", "default", "via", "fd0e:1::fe"]);
        server.ip(&["route", "add", "default", "via", "fd0e:2::fe"]);
        router.run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        super::warm_up(&client, SERVER_ADDR);
        Self {
            client,
            router,
            server,
            relay: None,
        }
    }

    /// Delays every forwarded packet by `one_way` in each direction.
    pub fn add_delay(&mut self, one_way: Duration) {
        let r = &self.router;
        let (tun_in, tun_out) = r.in_ns(|| (open_tun("relayin"), open_tun("relayout")));
        for dev in ["relayin", "relayout"] {
            r.ip(&["link", "set", dev, "up"]);
        }
        // Whatever arrives on the two links goes into the relay; what the relay writes
        // back (arriving from relayout) uses the main table and leaves on the right link.
        r.ip(&[
            "-6", "route", "add", "default", "dev", "relayin", "table", "100",
        ]);
        r.ip(&["-6", "rule", "add", "iif", "rc", "table", "100"]);
        r.ip(&["-6", "rule", "add", "iif", "rs", "table", "100"]);
        r.run("sysctl", &["-qw", "net.ipv6.conf.relayout.accept_ra=0"]);
        self.relay = Some(Relay::start(tun_in, tun_out, one_way));
    }
}

impl Line {
    /// The most the relay has written any packet after its due time so far.
    pub fn relay_lateness(&self) -> Duration {
        self.relay
            .as_ref()
            .map_or(Duration::ZERO, |r| *r.late.lock().expect("late"))
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.relay.take();
    }
}

/// A TUN device (raw IPv6 packets, no packet-info header) in the calling thread's namespace.
fn open_tun(name: &str) -> File {
    const TUNSETIFF: libc::c_ulong = 0x400454ca;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: valid fd and ifreq.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(
        r,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    f
}

/// Reads packets from one TUN and writes each to the other `delay` later, in order.
struct Relay {
    stop: Arc<AtomicBool>,
    /// The most any packet left after its due time.
    late: Arc<std::sync::Mutex<Duration>>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(mut tun_in: File, mut tun_out: File, delay: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let queue = Arc::new(std::sync::Mutex::new(VecDeque::<(Instant, Vec<u8>)>::new()));
        let reader = {
            let (stop, queue) = (stop.clone(), queue.clone());
            // SAFETY: valid fd; non-blocking so the thread can see `stop`.
            unsafe { libc::fcntl(tun_in.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            std::thread::spawn(move || {
                realtime();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    match tun_in.read(&mut buf) {
                        Ok(n) => queue
                            .lock()
                            .expect("queue")
                            .push_back((Instant::now() + delay, buf[..n].to_vec())),
                        Err(_) => std::thread::sleep(Duration::from_micros(100)),
                    }
                }
            })
        };
        let late = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let writer = {
            let (stop, queue, late) = (stop.clone(), queue, late.clone());
            std::thread::spawn(move || {
                realtime();
                while !stop.load(Ordering::Relaxed) {
                    let due = {
                        let mut q = queue.lock().expect("queue");
                        match q.front() {
                            Some((t, _)) if *t <= Instant::now() => q.pop_front(),
                            _ => None,
                        }
                    };
                    match due {
                        Some((due, pkt)) => {
                            let _ = tun_out.write(&pkt);
                            let mut l = late.lock().expect("late");
                            *l = (*l).max(due.elapsed());
                        }
                        None => std::thread::sleep(Duration::from_micros(50)),
                    }
                }
            })
        };
        Self {
            stop,
            late,
            threads: vec![reader, writer],
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
