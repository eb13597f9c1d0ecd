//! The loader's CPU and memory at 10 000 active flows, with the live view and with
//! NDJSON.

use std::{
    io::{Read as _, Write as _},
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    Cfg,
    hosts::{
        ADDR_A, ADDR_B, Hosts, IFACE, KillOnDrop, NS_A, NS_B, cpu_ticks, enter, rss_kib, sock,
    },
    results::{LoaderCpu, LoaderOutput, LoaderUse, MetricsLoad},
};
use crate::cmd;

const ECHO_PORT: u16 = 7000;

pub fn run(cfg: &Cfg) -> Result<LoaderCpu> {
    loader_cpu(&cfg.pdm, 10_000, cfg.loader_settle, cfg.loader_secs)
}

/// `flows` UDP flows from host A (one socket each), each sending one request a second
/// to an echo server on host B at one of `servers` (in turn), until `stop`.
fn udp_flows(
    flows: usize,
    servers: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let ready = Arc::new(AtomicBool::new(false));
    let echo = {
        let (stop, ready, servers) = (stop.clone(), ready.clone(), servers.clone());
        std::thread::spawn(move || {
            if enter(NS_B).is_err() {
                return;
            }
            // One socket per address: the answer leaves from the address asked.
            let sockets: Vec<UdpSocket> = servers
                .iter()
                .filter_map(|a| UdpSocket::bind(sock(a, ECHO_PORT)).ok())
                .collect();
            if sockets.len() != servers.len() {
                return;
            }
            let one = sockets.len() == 1;
            for u in &sockets {
                let _ = if one {
                    u.set_read_timeout(Some(Duration::from_millis(200)))
                } else {
                    u.set_nonblocking(true)
                };
            }
            ready.store(true, Ordering::Relaxed);
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for u in &sockets {
                    while let Ok((n, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], from);
                        idle = false;
                        if one {
                            break;
                        }
                    }
                }
                if idle && !one {
                    std::thread::sleep(Duration::from_millis(1));
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
        let to: Vec<_> = servers.iter().map(|a| sock(a, ECHO_PORT)).collect();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            for (i, s) in sockets.iter().enumerate() {
                let _ = s.send_to(b"ping", to[i % to.len()]);
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

/// The loader's CPU and memory with `flows` active flows and a 1 s refresh, with the
/// live view (under tmux, so it has a terminal) and with NDJSON to /dev/null.
fn loader_cpu(pdm: &Path, flows: usize, settle: Duration, secs: u64) -> Result<LoaderCpu> {
    let _hosts = Hosts::create()?;
    // RLIMIT_NOFILE for one socket per flow.
    let lim = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: plain setrlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let _server = KillOnDrop::spawn(
        Command::new("ip")
            .args(["netns", "exec", NS_B])
            .arg(pdm)
            .args(["run", "--iface", IFACE, "--ingress", "tc", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads = udp_flows(flows, vec![ADDR_B.to_owned()], stop.clone())?;
    let mut used = Vec::new();
    let mut json_child = None;
    for &output in LoaderOutput::ALL {
        let mode = output.name();
        let mut view = None;
        let pid = if output == LoaderOutput::View {
            let (session, pid) = live_view(pdm, "view", "")?;
            view = Some(session);
            pid
        } else {
            let child = KillOnDrop::spawn(
                Command::new("ip")
                    .args(["netns", "exec", NS_A])
                    .arg(pdm)
                    .args(["run", "--iface", IFACE, "--ingress", "tc", "--json"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            let pid = child.pid();
            json_child = Some(child);
            pid
        };
        // Let every flow show up and the tables settle.
        std::thread::sleep(settle);
        let t0 = cpu_ticks(pid)?;
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let ticks = cpu_ticks(pid)? - t0;
        let percent = ticks as f64 / started.elapsed().as_secs_f64(); // 100 ticks = 1 core-second
        used.push(LoaderUse {
            cpu_percent_of_one_core: percent,
            rss_kib: rss_kib(pid),
        });
        eprintln!(
            "bench: loader with {flows} flows ({mode}): {percent:.2} % of one core, {} KiB RSS",
            rss_kib(pid)
        );
        // The view's session goes with `view`; the NDJSON pdm is stopped.
        if view.take().is_none() {
            // SAFETY: signalling the child we started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            if let Some(mut c) = json_child.take() {
                let _ = c.0.wait();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let metrics = metrics_load(pdm, flows, settle, secs)?;
    let [view, json] = <[LoaderUse; 2]>::try_from(used).expect("both outputs measured");
    Ok(LoaderCpu {
        flows: flows as u64,
        seconds: secs,
        view,
        json,
        metrics: Some(metrics),
    })
}

/// Peers the flows of the metrics pass go to, and the series bound set: more peers
/// than series, so that the bound is what limits them.
const PEERS: usize = 150;
const MAX_SERIES: usize = 100;

/// The same flows spread over `PEERS` server addresses, pdm with the live view and
/// `--metrics-addr --metrics-peer host --metrics-max-series 100`, scraped every second
/// from inside the client host: the loader's CPU, the scrapes' latency, and the series.
fn metrics_load(pdm: &Path, flows: usize, settle: Duration, secs: u64) -> Result<MetricsLoad> {
    let servers: Vec<String> = (0..PEERS).map(|i| format!("fd0b::1:{i:x}")).collect();
    for a in &servers {
        cmd::run(Command::new("ip").args([
            "-n",
            NS_B,
            "addr",
            "add",
            &format!("{a}/64"),
            "dev",
            IFACE,
            "nodad",
        ]))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let threads = udp_flows(flows, servers, stop.clone())?;
    // With the live view, as the loader's own row: what the export adds to it.
    let (session, pid) = live_view(
        pdm,
        "metrics",
        &format!("--metrics-addr [::1]:9464 --metrics-peer host --metrics-max-series {MAX_SERIES}"),
    )?;
    std::thread::sleep(settle);
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = {
        let scraping = scraping.clone();
        std::thread::spawn(move || -> Result<(Vec<f64>, String)> {
            enter(NS_A)?;
            let mut took = Vec::new();
            let mut last = String::new();
            while scraping.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut s =
                    std::net::TcpStream::connect("[::1]:9464").context("connecting to /metrics")?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")?;
                last.clear();
                s.read_to_string(&mut last)?;
                took.push(started.elapsed().as_secs_f64() * 1e3);
                if let Some(rest) = Duration::from_secs(1).checked_sub(started.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            Ok((took, last))
        })
    };
    let t0 = cpu_ticks(pid)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let ticks = cpu_ticks(pid)? - t0;
    let percent = ticks as f64 / started.elapsed().as_secs_f64();
    let rss = rss_kib(pid);
    scraping.store(false, Ordering::Relaxed);
    let (mut took, last) = scraper.join().expect("scraper")?;
    drop(session);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    took.sort_by(f64::total_cmp);
    let pct = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize];
    let body = last.split_once("\r\n\r\n").map_or("", |b| b.1);
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count() as u64;
    let peer_labels = body
        .lines()
        .filter_map(|l| l.split("peer=\"").nth(1)?.split('"').next())
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    anyhow::ensure!(!took.is_empty(), "no scrape answered");
    let m = MetricsLoad {
        cpu_percent_of_one_core: percent,
        rss_kib: rss,
        peers: PEERS as u64,
        max_series: MAX_SERIES as u64,
        scrapes: took.len() as u64,
        scrape_ms_p50: pct(0.5),
        scrape_ms_p99: pct(0.99),
        scrape_ms_max: took[took.len() - 1],
        series,
        peer_labels,
    };
    eprintln!(
        "bench: loader with {flows} flows and a scrape a second: {percent:.2} % of one core; scrape p50 {:.1} ms, p99 {:.1} ms; {series} series, {peer_labels} peer labels for {PEERS} peers (bound {MAX_SERIES})",
        m.scrape_ms_p50, m.scrape_ms_p99
    );
    Ok(m)
}

/// A tmux session, killed on drop.
struct TmuxSession(String);

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// `pdm run` with the live view (and `extra` arguments) in a tmux session of its own on
/// host A, so that it has a terminal: the session (killed on drop) and pdm's pid.
fn live_view(pdm: &Path, tag: &str, extra: &str) -> Result<(TmuxSession, u32)> {
    let session = TmuxSession(format!("pdm-bench-{tag}-{}", std::process::id()));
    let line = format!(
        "ip netns exec {NS_A} {} run --iface {IFACE} --ingress tc {extra}",
        pdm.display()
    );
    cmd::output(Command::new("tmux").args([
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-x",
        "160",
        "-y",
        "50",
        &line,
    ]))?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = cmd::output(Command::new("tmux").args([
        "list-panes",
        "-t",
        &session.0,
        "-F",
        "#{pane_pid}",
    ]))?
    .trim()
    .parse::<u32>()
    .context("tmux pane pid")?;
    Ok((session, pid))
}
