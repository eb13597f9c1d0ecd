//! Test hosts: network namespaces joined by veth, created per test and removed on drop
//! (also when the test panics), and a handle on a running `pdm`.
#![allow(dead_code)]

pub mod analyze;
pub mod chain;
pub mod drops;
pub mod fan;
pub mod hosts;
pub mod observe;
pub mod pdm_peer;
pub mod router;
pub mod traffic;

use std::process::{Command, Output, Stdio};

use serde_json::Value;

#[allow(unused_imports)] // some test files use it
pub use testbed::both_attached;

/// A network namespace of the test's own (a unique name), removed on drop; the test
/// library's, with every step expected to succeed.
pub struct Netns {
    pub name: String,
    inner: testbed::Netns,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let inner = testbed::Netns::unique(tag).expect("create a namespace");
        Self {
            name: inner.name().to_owned(),
            inner,
        }
    }

    /// `ip -n NS args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        self.inner.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        self.inner.command(program)
    }

    /// Runs `program args...` in the namespace; must succeed; returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        self.inner
            .run(program, args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live here).
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.inner.in_ns(f)
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) {
        self.inner.enter().expect("enter the namespace");
    }

    /// A veth pair, `iface` here and `peer_iface` in `peer`, both up.
    pub fn veth(&self, iface: &str, peer: &Netns, peer_iface: &str) {
        self.inner
            .veth(iface, &peer.inner, peer_iface)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `addr/prefix` on `iface`, usable at once.
    pub fn add_addr(&self, iface: &str, addr: &str, prefix: u8) {
        let addr = addr.parse().expect("an IPv6 address");
        self.inner
            .add_addr(iface, addr, prefix)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn ifindex(&self, iface: &str) -> u32 {
        self.in_ns(|| pdm_user::sys::iface::index(iface).expect("interface exists"))
    }

    /// One value of `nstat -az` (e.g. TcpRetransSegs), absolute.
    pub fn nstat(&self, counter: &str) -> u64 {
        let out = self.run("nstat", &["-az", "--json", counter]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("nstat json");
        v["kernel"][counter].as_u64().unwrap_or(0)
    }
}

/// Resolves the neighbours on the path before a test measures anything: the very first
/// packet to a new neighbour can be lost while Neighbor Discovery runs (seen here
/// without pdm too).
pub fn warm_up(from: &Netns, to: &str) {
    let _ = from
        .cmd("ping")
        .args(["-6", "-c", "2", "-i", "0.2", "-W", "1", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Clock `clock` (CLOCK_MONOTONIC is the one `bpf_ktime_get_ns` reads), in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into `ts`.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU {cpu}"
        );
    }
}

/// Runs `pdm args...` in `ns`; returns (exit code, stderr).
pub fn run_pdm(ns: &Netns, args: &[&str]) -> (i32, String) {
    let out = ns
        .cmd(pdm_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pdm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub const IFACE: &str = "pdm0";
pub const ADDR_A: &str = "fd0d::1";
pub const ADDR_B: &str = "fd0d::2";

/// Two test hosts, `a` (client) and `b` (server), joined by a veth pair named
/// [`IFACE`] on both sides, with [`ADDR_A`] and [`ADDR_B`].
pub struct TwoHosts {
    pub a: Netns,
    pub b: Netns,
}

impl TwoHosts {
    pub fn new(tag: &str) -> Self {
        let a = Netns::new(&format!("{tag}a"));
        let b = Netns::new(&format!("{tag}b"));
        a.veth(IFACE, &b, IFACE);
        a.add_addr(IFACE, ADDR_A, 64);
        b.add_addr(IFACE, ADDR_B, 64);
        warm_up(&a, ADDR_B);
        Self { a, b }
    }
}

pub fn pdm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pdm")
}

/// A running `pdm run --iface IFACE --json`: the test library's, with every step
/// expected to succeed; stopped with SIGTERM on drop.
pub struct Pdm(testbed::Pdm);

impl Pdm {
    /// Starts `pdm run --iface IFACE --json <extra>` in `ns` and waits until it has attached.
    pub fn start(ns: &Netns, extra: &[&str]) -> Self {
        Self::start_on(ns, IFACE, extra)
    }

    /// Starts `pdm run --iface iface --json <extra>` in `ns` and waits until it has attached.
    pub fn start_on(ns: &Netns, iface: &str, extra: &[&str]) -> Self {
        let mut args = vec!["run", "--iface", iface, "--json"];
        args.extend_from_slice(extra);
        Self::spawn(ns, &args)
    }

    /// Starts `pdm observe --iface I1 --iface I2... --json <extra>` in `ns` and waits
    /// until it says it is observing.
    pub fn observe(ns: &Netns, ifaces: &[&str], extra: &[&str]) -> Self {
        let mut args = vec!["observe"];
        for i in ifaces {
            args.extend_from_slice(&["--iface", i]);
        }
        args.push("--json");
        args.extend_from_slice(extra);
        Self::spawn(ns, &args)
    }

    fn spawn(ns: &Netns, args: &[&str]) -> Self {
        Self(
            testbed::Pdm::start(pdm_bin().as_ref(), &ns.name, args)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    pub fn pid(&self) -> i32 {
        self.0.pid() as i32
    }

    /// Its log lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.0.stderr()
    }

    /// Its NDJSON lines so far.
    pub fn lines(&self) -> Vec<Value> {
        self.0.lines()
    }

    pub fn last_counters(&self) -> Option<Value> {
        self.0.last_counters()
    }

    pub fn rss_kib(&self) -> u64 {
        self.0.rss_kib().expect("pdm's VmRSS")
    }

    /// Waits up to `limit` for it to exit by itself (`--duration`); whether it did.
    pub fn exits_within(&mut self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self.0.try_wait().is_some() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait, and return the JSON lines it printed.
    pub fn stop(self) -> Vec<Value> {
        self.0.stop().unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGKILL, as a crash would.
    pub fn kill(self) {
        self.0.kill();
    }
}

/// The last report in pdm's NDJSON of the flow with protocol `proto` and, if given,
/// `port` at either end.
pub fn last_flow<'a>(
    lines: &'a [serde_json::Value],
    proto: &str,
    port: Option<u16>,
) -> &'a serde_json::Value {
    lines
        .iter()
        .rev()
        .find(|l| {
            l["type"] == "flow"
                && l["proto"] == proto
                && port.is_none_or(|p| l["remote_port"] == p || l["local_port"] == p)
        })
        .unwrap_or_else(|| panic!("no {proto} flow (port {port:?}) in pdm's output"))
}

/// pdm's files in /run/pdm for this namespace's [`IFACE`] (lock, offload, tc or MTU
/// room state).
pub fn run_state(ns: &Netns) -> Vec<String> {
    run_state_of(ns, IFACE)
}

/// pdm's files in /run/pdm for interface `iface` of this namespace.
pub fn run_state_of(ns: &Netns, iface: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(format!("/run/netns/{}", ns.name))
        .expect("netns file")
        .ino();
    // Of this namespace's test interface: a namespace's inode is reused once it is
    // gone, and files another run left under a recycled inode are not ours.
    let prefix = format!("{ino}-{iface}.");
    std::fs::read_dir(pdm_user::RUN_DIR)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// All of `ethtool -k` and the gso_max_segs of the test interface: what `--per-packet`
/// changes and must put back.
pub fn offload_settings(ns: &Netns) -> String {
    let ethtool = ns.run("ethtool", &["-k", IFACE]);
    let link = ns.ip(&["-d", "link", "show", IFACE]);
    let segs = link
        .split_whitespace()
        .skip_while(|w| *w != "gso_max_segs")
        .nth(1)
        .expect("gso_max_segs in ip -d link")
        .to_owned();
    format!("{ethtool}gso_max_segs {segs}")
}

/// Nothing of pdm's on `iface` of `ns`: no XDP, no TCX program, no clsact qdisc, no tc
/// filter, no state in /run/pdm.
pub fn nothing_attached_to(ns: &Netns, iface: &str) {
    let link = ns.ip(&["-d", "link", "show", iface]);
    assert!(!link.contains("xdp"), "XDP left attached: {link}");
    let tcx = ns.in_ns(|| {
        use aya::programs::{SchedClassifier, TcAttachType};
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|at| {
                SchedClassifier::query_tcx(iface, at)
                    .expect("query tcx")
                    .1
                    .len()
            })
            .sum::<usize>()
    });
    assert_eq!(tcx, 0, "TCX programs left attached");
    let qdiscs = ns.run("tc", &["qdisc", "show", "dev", iface]);
    assert!(!qdiscs.contains("clsact"), "clsact qdisc added: {qdiscs}");
    for dir in ["ingress", "egress"] {
        let f = ns.run("tc", &["filter", "show", "dev", iface, dir]);
        assert!(f.trim().is_empty(), "tc filter left on {dir}: {f}");
    }
    assert_eq!(
        run_state_of(ns, iface),
        Vec::<String>::new(),
        "state left in /run/pdm"
    );
}
