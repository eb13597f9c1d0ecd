//! `cargo xtask bench`: measurements on test hosts this task creates, written to
//! BENCHMARKS.md and bench-results.json. Figures are reported, never asserted.

use std::{
    fmt::Write as _,
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{cmd, setup, tasks};

const NS_A: &str = "pdm-bench-a";
const NS_B: &str = "pdm-bench-b";
const IFACE: &str = "bench0";
const ADDR_A: &str = "fd0b::1";
const ADDR_B: &str = "fd0b::2";
const ECHO_PORT: u16 = 7000;

/// Two namespaces joined by veth; removed on drop (and before creation, if a crashed
/// run left them).
struct Hosts;

impl Hosts {
    fn create() -> Result<Self> {
        remove_hosts();
        let ip = |args: &[&str]| cmd::output(Command::new("ip").args(args)).map(drop);
        ip(&["netns", "add", NS_A])?;
        ip(&["netns", "add", NS_B])?;
        let hosts = Self;
        ip(&[
            "link",
            "add",
            "pdmbench0",
            "netns",
            NS_A,
            "type",
            "veth",
            "peer",
            "name",
            "pdmbench1",
            "netns",
            NS_B,
        ])?;
        for (ns, dev, addr) in [(NS_A, "pdmbench0", ADDR_A), (NS_B, "pdmbench1", ADDR_B)] {
            cmd::output(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
            ]))?;
            ip(&["-n", ns, "link", "set", dev, "name", IFACE])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                IFACE,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", IFACE, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        remove_hosts();
    }
}

fn remove_hosts() {
    for ns in [NS_A, NS_B] {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

fn enter(ns: &str) -> Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: valid fd; affects the calling thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    format!("[{addr}]:{port}").parse().expect("socket address")
}

/// `flows` UDP flows from host A (one socket each), each sending one request a second
/// to an echo server on host B, until `stop`.
fn udp_flows(flows: usize, stop: Arc<AtomicBool>) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let ready = Arc::new(AtomicBool::new(false));
    let echo = {
        let (stop, ready) = (stop.clone(), ready.clone());
        std::thread::spawn(move || {
            if enter(NS_B).is_err() {
                return;
            }
            let Ok(u) = UdpSocket::bind(sock(ADDR_B, ECHO_PORT)) else {
                return;
            };
            let _ = u.set_read_timeout(Some(Duration::from_millis(200)));
            ready.store(true, Ordering::Relaxed);
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        })
    };
    while !ready.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let client = std::thread::spawn(move || {
        if enter(NS_A).is_err() {
            return;
        }
        let sockets: Vec<UdpSocket> = (0..flows)
            .filter_map(|_| UdpSocket::bind(sock(ADDR_A, 0)).ok())
            .collect();
        let to = sock(ADDR_B, ECHO_PORT);
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            for s in &sockets {
                let _ = s.send_to(b"ping", to);
            }
            // Drain answers so socket buffers do not fill.
            for s in &sockets {
                let _ = s.set_nonblocking(true);
                while s.recv_from(&mut buf).is_ok() {}
            }
            if let Some(rest) = Duration::from_secs(1).checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    });
    Ok(vec![echo, client])
}

/// CPU time (user + system) of `pid`, in clock ticks (100 per second here).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" closing the command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
}

fn rss_kib(pid: u32) -> u64 {
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

/// The loader's CPU and memory with `flows` active flows and a 1 s refresh, with the
/// live view (under tmux, so it has a terminal) and with NDJSON to /dev/null.
fn loader_cpu(pdm: &Path, flows: usize, secs: u64) -> Result<Value> {
    let _hosts = Hosts::create()?;
    // RLIMIT_NOFILE for one socket per flow.
    let lim = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: plain setrlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let server = Command::new("ip")
        .args(["netns", "exec", NS_B])
        .arg(pdm)
        .args(["run", "--iface", IFACE, "--ingress", "tc", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _server = KillOnDrop(server);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = udp_flows(flows, stop.clone())?;
    let mut out = json!({ "flows": flows, "seconds": secs });
    for mode in ["view", "json"] {
        let session = format!("pdm-bench-{}", std::process::id());
        let pid = if mode == "view" {
            let line = format!(
                "ip netns exec {NS_A} {} run --iface {IFACE} --ingress tc",
                pdm.display()
            );
            cmd::output(Command::new("tmux").args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "160",
                "-y",
                "50",
                &line,
            ]))?;
            std::thread::sleep(Duration::from_millis(500));
            let p = cmd::output(Command::new("tmux").args([
                "list-panes",
                "-t",
                &session,
                "-F",
                "#{pane_pid}",
            ]))?;
            p.trim().parse::<u32>().context("tmux pane pid")?
        } else {
            let child = Command::new("ip")
                .args(["netns", "exec", NS_A])
                .arg(pdm)
                .args(["run", "--iface", IFACE, "--ingress", "tc", "--json"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let pid = child.id();
            std::mem::forget(KillOnDrop(child));
            pid
        };
        // Let every flow show up and the tables settle.
        std::thread::sleep(Duration::from_secs(5));
        let t0 = cpu_ticks(pid)?;
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let ticks = cpu_ticks(pid)? - t0;
        let percent = ticks as f64 / started.elapsed().as_secs_f64(); // 100 ticks = 1 core-second
        out[mode] = json!({ "cpu_percent_of_one_core": percent, "rss_kib": rss_kib(pid) });
        eprintln!(
            "bench: loader with {flows} flows ({mode}): {percent:.2} % of one core, {} KiB RSS",
            rss_kib(pid)
        );
        if mode == "view" {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &session])
                .status();
        } else {
            // SAFETY: signalling the child we started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(out)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn machine() -> Value {
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|m| m.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "kernel": uname, "cpu": cpu, "cores": cores })
}

pub fn run(quick: bool) -> Result<()> {
    let tools = setup::run()?;
    let pdm = tasks::build_pdm(&tools)?;
    let secs = if quick { 10 } else { 30 };
    let results = json!({
        "machine": machine(),
        "quick": quick,
        "loader_cpu": loader_cpu(&pdm, 10_000, secs)?,
    });
    let root = tasks::workspace_root();
    std::fs::write(
        root.join("bench-results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(root.join("BENCHMARKS.md"), report(&results, quick))?;
    eprintln!("bench: wrote BENCHMARKS.md and bench-results.json");
    Ok(())
}

fn report(r: &Value, quick: bool) -> String {
    let m = &r["machine"];
    let l = &r["loader_cpu"];
    let mut s = String::new();
    let _ = writeln!(s, "# pdm benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench{}` on test hosts it creates (two network namespaces joined by veth). Figures are measured, not asserted.\n",
        if quick { " --quick" } else { "" }
    );
    let _ = writeln!(
        s,
        "Machine: {} ({} cores), kernel {}.\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?")
    );
    let _ = writeln!(s, "## Loader CPU with many active flows\n");
    let _ = writeln!(
        s,
        "{} UDP flows from host A, one request per second each, answered by an echo server on host B; pdm on both hosts (TC ingress), refreshing every second. CPU of the client-side loader over {} s, from /proc/PID/stat (target: under 2 % of one core).\n",
        l["flows"], l["seconds"]
    );
    let _ = writeln!(s, "| output | CPU (% of one core) | RSS |\n|---|---|---|");
    for (mode, name) in [
        ("view", "live view (tmux)"),
        ("json", "NDJSON to /dev/null"),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {:.2} | {} KiB |",
            l[mode]["cpu_percent_of_one_core"]
                .as_f64()
                .unwrap_or(f64::NAN),
            l[mode]["rss_kib"]
        );
    }
    let _ = writeln!(
        s,
        "\nCommand: `cargo xtask bench{}`.",
        if quick { " --quick" } else { "" }
    );
    s
}
