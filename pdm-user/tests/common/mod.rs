//! Test hosts: network namespaces joined by veth, created per test and removed on drop
//! (also when the test panics), and a handle on a running `pdm`.
#![allow(dead_code)]

pub mod chain;
pub mod pdm_peer;
pub mod router;
pub mod traffic;

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::fd::AsRawFd as _,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace of the test's own.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "pdmt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        // No Duplicate Address Detection: a tentative link-local address cannot answer
        // Neighbor Discovery, which delays or loses the first packets of a test by ~1 s.
        for key in ["default", "all"] {
            ns.run(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.accept_dad=0")],
            );
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args...` in the namespace; must succeed; returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = run_ok(self.cmd(program).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live here).
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        // SAFETY: valid fd; affects only the calling thread.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }

    pub fn ifindex(&self, iface: &str) -> u32 {
        self.in_ns(|| pdm_user::iface::index(iface).expect("interface exists"))
    }

    /// One value of `nstat -az` (e.g. TcpRetransSegs), absolute.
    pub fn nstat(&self, counter: &str) -> u64 {
        let out = self.run("nstat", &["-az", "--json", counter]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("nstat json");
        v["kernel"][counter].as_u64().unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill anything still running in it first, so the namespace really goes.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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
        run_ok(Command::new("ip").args([
            "link", "add", "pdmtmp0", "netns", &a.name, "type", "veth", "peer", "name", "pdmtmp1",
            "netns", &b.name,
        ]));
        a.ip(&["link", "set", "pdmtmp0", "name", IFACE]);
        b.ip(&["link", "set", "pdmtmp1", "name", IFACE]);
        for (ns, addr) in [(&a, ADDR_A), (&b, ADDR_B)] {
            ns.ip(&["addr", "add", &format!("{addr}/64"), "dev", IFACE, "nodad"]);
            ns.ip(&["link", "set", IFACE, "up"]);
        }
        warm_up(&a, ADDR_B);
        Self { a, b }
    }
}

/// A running `pdm run`, stopped with SIGTERM on drop.
pub struct Pdm {
    pub child: Option<Child>,
    pub stderr_lines: Vec<String>,
}

pub fn pdm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pdm")
}

impl Pdm {
    /// Starts `pdm run --iface IFACE --json <extra>` in `ns` and waits until it has attached.
    pub fn start(ns: &Netns, extra: &[&str]) -> Self {
        let mut child = ns
            .cmd(pdm_bin())
            .args(["run", "--iface", IFACE, "--json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pdm");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stderr);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !both_attached(&lines) {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read pdm stderr");
            assert!(
                n > 0 && Instant::now() < deadline,
                "pdm did not attach: {lines:?}"
            );
            lines.push(line.trim_end().to_owned());
        }
        // Keep draining stderr so pdm never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Self {
            child: Some(child),
            stderr_lines: lines,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM, wait, and return the JSON lines it printed.
    pub fn stop(mut self) -> Vec<serde_json::Value> {
        let child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().expect("wait pdm");
        assert!(out.status.success(), "pdm exited with {}", out.status);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("pdm --json line is JSON"))
            .collect()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill pdm");
        let _ = child.wait();
    }
}

impl Drop for Pdm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
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

/// pdm's files in /run/pdm for this namespace (lock, offload or tc state).
pub fn run_state(ns: &Netns) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(format!("/run/netns/{}", ns.name))
        .expect("netns file")
        .ino();
    let prefix = format!("{ino}-");
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

/// Whether pdm's start-up lines so far report both programs attached (egress and
/// ingress each log one "attached to" line).
pub fn both_attached(stderr_lines: &[String]) -> bool {
    stderr_lines
        .iter()
        .filter(|l| l.contains("attached to"))
        .count()
        >= 2
}
