//! Test hosts (two network namespaces joined by veth), processes inside them, and the
//! settings a benchmark changes, each undone on drop.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd;

/// The client host (sender) and the server host (receiver).
pub const NS_A: &str = "pdm-bench-client";
pub const NS_B: &str = "pdm-bench-server";
pub const IFACE: &str = "bench0";
pub const ADDR_A: &str = "fd0b::1";
pub const ADDR_B: &str = "fd0b::2";

/// Two namespaces joined by veth (the testbed library's); removed on drop (and before
/// creation, if a crashed run left them).
pub struct Hosts {
    _a: testbed::Netns,
    _b: testbed::Netns,
}

impl Hosts {
    pub fn create() -> Result<Self> {
        let a = testbed::Netns::create(NS_A)?;
        let b = testbed::Netns::create(NS_B)?;
        a.veth(IFACE, &b, IFACE)?;
        a.add_addr(IFACE, ADDR_A.parse()?, 64)?;
        b.add_addr(IFACE, ADDR_B.parse()?, 64)?;
        // The server drops the flood's datagrams (destination ports 30000-31999) as soon
        // as they are received, instead of answering each with a port-unreachable.
        b.run("nft", &["add", "table", "inet", "pdmbench"])?;
        b.run(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                "pdmbench",
                "input",
                "{ type filter hook input priority 0 ; }",
            ],
        )?;
        b.run(
            "nft",
            &[
                "add",
                "rule",
                "inet",
                "pdmbench",
                "input",
                "udp",
                "dport",
                "30000-31999",
                "counter",
                "drop",
            ],
        )?;
        // Resolve the neighbours once, so the first measured packet does not wait (the
        // link may take a moment to come up).
        wait_for("the veth link", Duration::from_secs(10), || {
            a.run("ping", &["-6", "-c", "1", "-W", "1", ADDR_B]).is_ok()
        })?;
        Ok(Self { _a: a, _b: b })
    }
}

pub fn remove_hosts() {
    for ns in [NS_A, NS_B] {
        testbed::remove(ns);
    }
}

/// Runs `args` inside `ns` and returns its stdout.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    cmd::output(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

pub use testbed::command_in;

/// This binary's hidden `bench-helper` subcommand, inside `ns`.
pub fn helper(ns: &str, args: &[&str]) -> Result<Command> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let mut c = command_in(ns, exe);
    c.arg("bench-helper").args(args);
    Ok(c)
}

/// Runs a helper to completion (bounded by its own time limits) and parses the JSON
/// object it prints.
pub fn helper_json(ns: &str, args: &[&str]) -> Result<Value> {
    let out = cmd::output(&mut helper(ns, args)?)?;
    serde_json::from_str(out.trim()).with_context(|| format!("helper output: {out}"))
}

/// `bench-helper udp-flood` in `ns` from `src` to `dst` over `flows` flows for `secs`
/// seconds, with `extra` options (port bases, `--min-passes`).
pub fn udp_flood(
    ns: &str,
    (src, dst): (&str, &str),
    flows: usize,
    secs: f64,
    extra: &[&str],
) -> Result<Command> {
    let (flows, secs) = (flows.to_string(), secs.to_string());
    let mut args = vec![
        "udp-flood",
        "--src",
        src,
        "--dst",
        dst,
        "--flows",
        &flows,
        "--secs",
        &secs,
    ];
    args.extend_from_slice(extra);
    helper(ns, &args)
}

/// Runs [`udp_flood`] to completion and parses what it printed.
pub fn udp_flood_json(
    ns: &str,
    ends: (&str, &str),
    flows: usize,
    secs: f64,
    extra: &[&str],
) -> Result<Value> {
    let out = cmd::output(&mut udp_flood(ns, ends, flows, secs, extra)?)?;
    serde_json::from_str(out.trim()).with_context(|| format!("udp-flood output: {out}"))
}

/// Moves the calling thread into `ns`.
pub fn enter(ns: &str) -> Result<()> {
    testbed::enter(ns).map_err(Into::into)
}

pub fn sock(addr: &str, port: u16) -> SocketAddr {
    format!("[{addr}]:{port}").parse().expect("socket address")
}

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn spawn(c: &mut Command) -> Result<Self> {
        let child = c
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start `{}`", cmd::display(c)))?;
        Ok(Self(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `ready` holds, at most `limit`.
pub fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// CPU time (user + system, all threads) of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_ticks(pid).unwrap_or(0) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: plain sysconf.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU time (user + system) of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" closing the command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// One `pdm run` inside a namespace (the testbed library's handle). `stop` ends it with
/// SIGTERM (so it detaches and restores offloads) and returns its last counters line;
/// drop stops it too.
pub struct Pdm {
    pdm: testbed::Pdm,
    pub ns: &'static str,
}

impl Pdm {
    /// Starts `pdm run -i bench0 --json ARGS` in `ns` and waits until both programs
    /// are attached.
    pub fn start(pdm: &Path, ns: &'static str, args: &[&str]) -> Result<Self> {
        let mut all = vec!["run", "--iface", IFACE, "--json"];
        all.extend_from_slice(args);
        Ok(Self {
            pdm: testbed::Pdm::start(pdm, ns, &all)?,
            ns,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pdm.pid()
    }

    /// Ids of the BPF programs (`prog_id`) or maps (`map_id`) this process holds.
    pub fn ids(&self, key: &str) -> Vec<u32> {
        fd_ids(self.pid(), key)
    }

    /// SIGTERM, wait (bounded), and the last counters object it printed.
    pub fn stop(self) -> Result<Value> {
        let ns = self.ns;
        self.pdm
            .stop()?
            .into_iter()
            .rev()
            .find(|l| l["type"] == "counters")
            .with_context(|| format!("pdm in {ns} printed no counters line"))
    }
}

/// Ids (`prog_id` or `map_id`) of the BPF objects process `pid` holds, from
/// /proc/PID/fdinfo.
pub fn fd_ids(pid: u32, key: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            if let Some(v) = line.strip_prefix(key)
                && let Ok(id) = v.trim_start_matches(':').trim().parse()
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Host-wide sysctls currently changed, with their old values: put back by their
/// guards, or by the signal handler on Ctrl-C.
static CHANGED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// A sysctl set for the life of the value, then put back.
pub struct Sysctl {
    name: String,
    old: String,
}

impl Sysctl {
    pub fn set(name: &str, value: &str) -> Result<Self> {
        let old = cmd::output(Command::new("sysctl").args(["-n", name]))?
            .trim()
            .to_owned();
        let mut changed = CHANGED.lock().unwrap_or_else(|e| e.into_inner());
        cmd::output(Command::new("sysctl").args(["-qw", &format!("{name}={value}")]))?;
        changed.push((name.into(), old.clone()));
        Ok(Self {
            name: name.into(),
            old,
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let mut changed = CHANGED.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("sysctl")
            .args(["-qw", &format!("{}={}", self.name, self.old)])
            .status();
        if let Some(i) = changed.iter().rposition(|(n, _)| *n == self.name) {
            changed.remove(i);
        }
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// On SIGINT/SIGTERM: put changed sysctls back, remove the test hosts (and with them
/// every process and setting inside), and exit. (A handler, not a blocked mask: children
/// would inherit the mask and could not be stopped with SIGTERM.)
pub fn clean_up_on_signal() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    std::thread::spawn(|| {
        while !INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("\nbench: interrupted; cleaning up");
        let changed = CHANGED.lock().unwrap_or_else(|e| e.into_inner());
        for (name, old) in changed.iter().rev() {
            let _ = Command::new("sysctl")
                .args(["-qw", &format!("{name}={old}")])
                .status();
        }
        remove_hosts();
        // pdm's output files and perf's data of this run.
        let prefix = format!("pdm-bench-{}", std::process::id());
        for e in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        std::process::exit(130);
    });
}

/// TSO and GSO off and gso_max_segs 1 on bench0 in both namespaces — what
/// `pdm --per-packet` does — put back on drop.
pub struct OffloadsOff {
    saved: Vec<(&'static str, String, String, String)>,
}

impl OffloadsOff {
    pub fn both() -> Result<Self> {
        let mut me = Self { saved: Vec::new() };
        for ns in [NS_A, NS_B] {
            let k = in_ns(ns, &["ethtool", "-k", IFACE])?;
            let feature = |name: &str| {
                k.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                    .map(|v| v.split_whitespace().next().unwrap_or("on").to_owned())
                    .unwrap_or_else(|| "on".into())
            };
            let tso = feature("tcp-segmentation-offload");
            let gso = feature("generic-segmentation-offload");
            let link: Value =
                serde_json::from_str(&in_ns(ns, &["ip", "-d", "-j", "link", "show", IFACE])?)?;
            let segs = link[0]["gso_max_segs"]
                .as_u64()
                .unwrap_or(65535)
                .to_string();
            me.saved.push((ns, tso, gso, segs));
            in_ns(ns, &["ethtool", "-K", IFACE, "tso", "off", "gso", "off"])?;
            in_ns(ns, &["ip", "link", "set", IFACE, "gso_max_segs", "1"])?;
        }
        Ok(me)
    }
}

impl Drop for OffloadsOff {
    fn drop(&mut self) {
        for (ns, tso, gso, segs) in &self.saved {
            let _ = in_ns(ns, &["ethtool", "-K", IFACE, "tso", tso, "gso", gso]);
            let _ = in_ns(ns, &["ip", "link", "set", IFACE, "gso_max_segs", segs]);
        }
    }
}
