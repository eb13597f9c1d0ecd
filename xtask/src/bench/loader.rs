//! The loader's CPU and memory at 10 000 active flows, with the live view and with
//! NDJSON.

use std::{
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
    results::{LoaderCpu, LoaderOutput, LoaderUse},
};
use crate::cmd;

const ECHO_PORT: u16 = 7000;

pub fn run(cfg: &Cfg) -> Result<LoaderCpu> {
    loader_cpu(&cfg.pdm, 10_000, cfg.loader_settle, cfg.loader_secs)
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
    let threads = udp_flows(flows, stop.clone())?;
    let mut used = Vec::new();
    let mut json_child = None;
    for &output in LoaderOutput::ALL {
        let mode = output.name();
        let session = format!("pdm-bench-{}", std::process::id());
        let pid = if output == LoaderOutput::View {
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
        if output == LoaderOutput::View {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &session])
                .status();
        } else {
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
    let [view, json] = <[LoaderUse; 2]>::try_from(used).expect("both outputs measured");
    Ok(LoaderCpu {
        flows: flows as u64,
        seconds: secs,
        view,
        json,
    })
}
