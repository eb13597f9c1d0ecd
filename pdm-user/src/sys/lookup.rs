//! Labels for a flow: the reverse DNS name of its remote address, and the local process
//! that owns its socket.
//!
//! Both are asked for every flow at every refresh, so both are cached: DNS answers for
//! the whole run (looked up on background threads, never on the refresh path), the
//! socket tables of /proc for at most a second.

use std::{
    collections::{HashMap, HashSet},
    ffi::CStr,
    net::{Ipv6Addr, SocketAddrV6},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::engine::FlowRow;

/// How stale the /proc snapshot may get: a process owning a new flow shows up within it.
const PROC_RESCAN: Duration = Duration::from_secs(5);

/// Threads doing reverse lookups: one slow (timing-out) name must not hold up the rest.
const DNS_WORKERS: usize = 4;

/// Beyond this many cached answers (a scan, a busy server) the cache starts over, so a
/// long run's memory stays bounded.
const DNS_CACHE_MAX: usize = 100_000;

pub struct Lookups {
    dns: Option<Dns>,
    procs: Mutex<Procs>,
}

impl Lookups {
    /// `resolve_dns` false: no reverse lookups at all (no thread, no DNS traffic).
    pub fn new(resolve_dns: bool) -> Lookups {
        Lookups {
            dns: resolve_dns.then(Dns::start),
            procs: Mutex::new(Procs::default()),
        }
    }

    /// Cached reverse DNS name of `addr`. The first call queues a lookup and returns
    /// None; later calls return the name once a worker found it. None also when the
    /// address has no name or lookups are off.
    pub fn remote_name(&self, addr: Ipv6Addr) -> Option<String> {
        self.dns.as_ref()?.name(addr)
    }

    /// `comm/pid` of the local process owning this flow's socket, found the way `ss -p`
    /// does: the flow's addresses and ports give a socket inode in /proc/net/{tcp6,udp6,
    /// icmp6}, and some process has a `socket:[inode]` among its /proc/<pid>/fd. None
    /// for flows without a local socket (raw ICMP, forwarded, another namespace).
    pub fn process(&self, row: &FlowRow) -> Option<String> {
        let table = SocketTable::for_proto(row.proto)?;
        let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        procs.owner(table, row, Instant::now())
    }
}

/// Reverse lookups on worker threads, answers in a shared cache.
struct Dns {
    state: Arc<Mutex<DnsState>>,
    queue: mpsc::Sender<Ipv6Addr>,
}

#[derive(Default)]
struct DnsState {
    answers: HashMap<Ipv6Addr, Option<String>>,
    /// Queued or being looked up, so that each address is asked for once.
    pending: HashSet<Ipv6Addr>,
}

impl Dns {
    fn start() -> Dns {
        let (queue, rx) = mpsc::channel::<Ipv6Addr>();
        let rx = Arc::new(Mutex::new(rx));
        let state = Arc::new(Mutex::new(DnsState::default()));
        for i in 0..DNS_WORKERS {
            let rx = Arc::clone(&rx);
            let state = Arc::clone(&state);
            // A worker that cannot start only makes lookups slower.
            let _ = thread::Builder::new()
                .name(format!("pdm-dns-{i}"))
                .spawn(move || dns_worker(&rx, &state));
        }
        Dns { state, queue }
    }

    fn name(&self, addr: Ipv6Addr) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(answer) = state.answers.get(&addr) {
            return answer.clone();
        }
        if state.pending.insert(addr) {
            // Workers gone (they only stop with us) just means no names.
            let _ = self.queue.send(addr);
        }
        None
    }
}

/// Looks up queued addresses until the sending `Dns` is dropped.
fn dns_worker(rx: &Mutex<mpsc::Receiver<Ipv6Addr>>, state: &Mutex<DnsState>) {
    loop {
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(addr) = next else { return };
        let name = reverse_lookup(addr);
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.answers.len() >= DNS_CACHE_MAX {
            state.answers.clear();
        }
        state.answers.insert(addr, name);
        state.pending.remove(&addr);
    }
}

/// getnameinfo with NI_NAMEREQD: the name, or None rather than the address spelled out.
pub(crate) fn reverse_lookup(addr: Ipv6Addr) -> Option<String> {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = addr.octets();
    let mut host = [0 as libc::c_char; libc::NI_MAXHOST as usize];
    // SAFETY: `sa` is a valid sockaddr_in6 of the length given; `host` is writable for
    // its length and getnameinfo NUL-terminates what it writes; no service buffer.
    let rc = unsafe {
        libc::getnameinfo(
            (&raw const sa).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: on success `host` holds a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(host.as_ptr()) };
    Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
}

/// The /proc/net file listing one protocol's IPv6 sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SocketTable {
    Tcp6,
    Udp6,
    /// ICMPv6 datagram ("ping") sockets; their local port is the echo identifier, which
    /// pdm's flow key holds as both ports.
    Icmp6,
}

impl SocketTable {
    const ALL: [SocketTable; 3] = [SocketTable::Tcp6, SocketTable::Udp6, SocketTable::Icmp6];

    fn for_proto(proto: u8) -> Option<SocketTable> {
        match proto {
            6 => Some(SocketTable::Tcp6),
            17 => Some(SocketTable::Udp6),
            58 => Some(SocketTable::Icmp6),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            SocketTable::Tcp6 => "/proc/net/tcp6",
            SocketTable::Udp6 => "/proc/net/udp6",
            SocketTable::Icmp6 => "/proc/net/icmp6",
        }
    }
}

/// One line of /proc/net/{tcp6,udp6,icmp6}.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SocketEntry {
    local: SocketAddrV6,
    remote: SocketAddrV6,
    inode: u64,
}

/// Parses a socket line: `sl local remote st queues timers retrnsmt uid timeout inode
/// ...`. None for the header line and anything malformed.
fn parse_socket_line(line: &str) -> Option<SocketEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    Some(SocketEntry {
        local: parse_socket_addr(fields[1])?,
        remote: parse_socket_addr(fields[2])?,
        inode: fields[9].parse().ok()?,
    })
}

/// `ADDR:PORT` as the kernel prints it: the address as four 32-bit words, each the raw
/// network-order word printed as a host-order integer (so byte-swapped on
/// little-endian machines); the port as a plain big-endian hex number.
fn parse_socket_addr(s: &str) -> Option<SocketAddrV6> {
    let (addr, port) = s.split_once(':')?;
    if addr.len() != 32 || port.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 16];
    for (i, chunk) in octets.chunks_exact_mut(4).enumerate() {
        let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, 0))
}

/// A flow's ends as a socket sees them, for lookups.
type Ends = (SocketAddrV6, SocketAddrV6);

/// The /proc snapshot: socket inodes by their ends, and owners by inode.
#[derive(Default)]
struct Procs {
    sockets: HashMap<SocketTable, crate::engine::FastMap<Ends, u64>>,
    sockets_read: Option<Instant>,
    /// Wait before the next read of the socket tables: reading /proc/net/udp6 costs the
    /// kernel time that grows faster than the number of sockets (10 000 sockets took
    /// most of pdm's CPU at a 5 s rescan), so the pause scales with what a read cost.
    sockets_pause: Duration,
    owners: HashMap<u64, String>,
    owners_read: Option<Instant>,
    /// As `sockets_pause`, for the walk over every process's descriptors.
    owners_pause: Duration,
}

/// Reading the socket tables, and walking the processes' descriptors, may each take at
/// most 1/this of the time: on a host with 10 000 sockets a read costs tens of
/// milliseconds, and at 1/200 the two came to half of pdm's CPU time. Owners of new
/// flows then show up within a few seconds on small hosts, and within tens of seconds
/// on busy ones.
const SOCKET_READ_SHARE: u32 = 1000;

impl Procs {
    fn owner(&mut self, table: SocketTable, row: &FlowRow, now: Instant) -> Option<String> {
        if self
            .sockets_read
            .is_none_or(|t| now.duration_since(t) >= self.sockets_pause.max(PROC_RESCAN))
        {
            let started = Instant::now();
            self.read_sockets();
            self.sockets_pause = started.elapsed() * SOCKET_READ_SHARE;
            self.sockets_read = Some(now);
        }
        let inode = self.inode(table, row)?;
        if !self.owners.contains_key(&inode)
            && self
                .owners_read
                .is_none_or(|t| now.duration_since(t) >= self.owners_pause.max(PROC_RESCAN))
        {
            // Walking every process's fds is the expensive part: only when a socket has
            // no known owner, and no more often than its cost allows.
            let started = Instant::now();
            self.owners = scan_owners();
            self.owners_pause = started.elapsed() * SOCKET_READ_SHARE;
            self.owners_read = Some(now);
        }
        self.owners.get(&inode).cloned()
    }

    fn read_sockets(&mut self) {
        self.sockets.clear();
        for table in SocketTable::ALL {
            let text = std::fs::read_to_string(table.path()).unwrap_or_default();
            let sockets = self.sockets.entry(table).or_default();
            for e in text.lines().filter_map(parse_socket_line) {
                // Inode 0: TIME_WAIT and request sockets, which no process owns.
                if e.inode != 0 {
                    sockets.entry((e.local, e.remote)).or_insert(e.inode);
                }
            }
        }
    }

    /// The socket carrying this flow: a connected socket with exactly its ends, else
    /// (UDP and ping sockets) an unconnected one bound to its local address or to `::`.
    fn inode(&self, table: SocketTable, row: &FlowRow) -> Option<u64> {
        let sockets = self.sockets.get(&table)?;
        let v6 = |a, p| SocketAddrV6::new(a, p, 0, 0);
        let local = v6(row.local_addr, row.local_port);
        let exact = sockets.get(&(local, v6(row.remote_addr, row.remote_port)));
        if table == SocketTable::Tcp6 || exact.is_some() {
            return exact.copied();
        }
        let any_remote = v6(Ipv6Addr::UNSPECIFIED, 0);
        sockets
            .get(&(local, any_remote))
            .or_else(|| sockets.get(&(v6(Ipv6Addr::UNSPECIFIED, row.local_port), any_remote)))
            .copied()
    }
}

/// `socket:[inode]` -> `comm/pid` over every process we may look into. The lowest pid
/// wins when several share a socket (a parent that forked it), so the label is stable.
fn scan_owners() -> HashMap<u64, String> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut owners = HashMap::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue; // gone, or not ours to read
        };
        let mut label = None;
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| socket_inode(t.to_str()?))
            else {
                continue;
            };
            let label = label.get_or_insert_with(|| process_label(pid));
            owners.entry(inode).or_insert_with(|| label.clone());
        }
    }
    owners
}

/// The inode of an fd link target `socket:[12345]`.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn process_label(pid: u32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("{}/{pid}", comm.trim_end())
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

    use super::*;
    use crate::filter::test_row;

    #[test]
    fn parses_a_tcp6_line() {
        // fd00::1:8080 <- fd00::2:51234, ESTABLISHED, as printed on x86 (little-endian).
        let line = "   3: 000000FD000000000000000001000000:1F90 000000FD000000000000000002000000:C822 01 \
                    00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        let e = parse_socket_line(line).expect("parses");
        if cfg!(target_endian = "little") {
            assert_eq!(e.local, "[fd00::1]:8080".parse().expect("literal"));
            assert_eq!(e.remote, "[fd00::2]:51234".parse().expect("literal"));
        }
        assert_eq!(e.inode, 4242);
        let header = "  sl  local_address                         remote_address                        st tx_queue \
                      rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(parse_socket_line(header), None);
        assert_eq!(parse_socket_line("   0: 0001:0050 0000:0000 0A"), None);
    }

    #[test]
    fn parses_addresses_in_host_word_order() {
        let word = |w: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(w));
        let a: Ipv6Addr = "2001:db8:1:2:3:4:5:6".parse().expect("literal");
        let text: String = a
            .octets()
            .chunks(4)
            .map(|c| word([c[0], c[1], c[2], c[3]]))
            .collect();
        let parsed = parse_socket_addr(&format!("{text}:01BB")).expect("parses");
        assert_eq!(parsed, SocketAddrV6::new(a, 443, 0, 0));
        assert_eq!(parse_socket_addr("0000:01BB"), None);
        assert_eq!(parse_socket_addr(&format!("{text}:1BB")), None);
        assert_eq!(parse_socket_addr(&format!("{}:0050", "Z".repeat(32))), None);
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    fn me() -> String {
        process_label(std::process::id())
    }

    fn v6(a: SocketAddr) -> (Ipv6Addr, u16) {
        match a {
            SocketAddr::V6(a) => (*a.ip(), a.port()),
            SocketAddr::V4(a) => panic!("{a} is not IPv6"),
        }
    }

    #[test]
    fn finds_the_process_of_a_tcp_connection() {
        let listener = TcpListener::bind("[::1]:0").expect("listen on ::1");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let (la, lp) = v6(client.local_addr().expect("addr"));
        let (ra, rp) = v6(client.peer_addr().expect("addr"));
        let names = Lookups::new(false);
        let mut row = test_row(6, "::", lp, "::", rp);
        (row.local_addr, row.remote_addr) = (la, ra);
        assert_eq!(names.process(&row), Some(me()));
        // The server side of the same connection, as pdm would see it there.
        let server_view = FlowRow {
            local_port: rp,
            remote_port: lp,
            ..row.clone()
        };
        assert_eq!(names.process(&server_view), Some(me()));
        // No such connection: neither a listener nor a wrong port stands in for it.
        row.remote_port = row.remote_port.wrapping_add(1);
        assert_eq!(names.process(&row), None);
    }

    #[test]
    fn finds_the_process_of_an_unconnected_udp_socket() {
        let socket = UdpSocket::bind("[::1]:0").expect("bind ::1");
        let (la, lp) = v6(socket.local_addr().expect("addr"));
        let mut row = test_row(17, "::", lp, "fd00::99", 5353);
        row.local_addr = la;
        assert_eq!(Lookups::new(false).process(&row), Some(me()));
    }

    #[test]
    fn flows_without_a_socket_table_have_no_process() {
        let names = Lookups::new(false);
        assert_eq!(names.process(&test_row(50, "::1", 0, "::1", 0)), None);
    }

    #[test]
    fn names_off_means_no_lookup() {
        assert_eq!(Lookups::new(false).remote_name(Ipv6Addr::LOCALHOST), None);
    }

    #[test]
    fn reverse_lookup_runs_in_the_background() {
        let names = Lookups::new(true);
        // Documentation prefix: no name anywhere; the first call never blocks.
        let doc: Ipv6Addr = "2001:db8::1".parse().expect("literal");
        let started = Instant::now();
        assert_eq!(names.remote_name(doc), None);
        assert_eq!(names.remote_name(Ipv6Addr::LOCALHOST), None);
        assert!(started.elapsed() < Duration::from_millis(100));
        // ::1 has a name only where /etc/hosts gives it one; wait for the answer.
        let want = reverse_lookup(Ipv6Addr::LOCALHOST);
        let deadline = Instant::now() + Duration::from_secs(10);
        while names.remote_name(Ipv6Addr::LOCALHOST) != want && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(names.remote_name(Ipv6Addr::LOCALHOST), want);
    }
}
