//! `pdm`: RFC 8250 IPv6 Performance and Diagnostic Metrics, in the kernel, live.

use std::{io::Write as _, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use pdm_common::{counters::Counter, flow::DEFAULT_MAX_FLOWS};
use pdm_user::{
    attach::{self, Ingress, LoadOptions},
    iface, offload, stats,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    version,
    about = "IPv6 Performance and Diagnostic Metrics (RFC 8250) on the wire, measured live"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to an interface: add PDM to outgoing IPv6 packets and record incoming PDM.
    Run(RunArgs),
    /// Load the eBPF programs and have the kernel verify them; attach nothing.
    Check {
        #[arg(long, default_value_t = DEFAULT_MAX_FLOWS)]
        max_flows: u32,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Interface to attach to.
    #[arg(short, long)]
    iface: String,
    /// How to read received packets.
    #[arg(long, value_enum, default_value_t = Ingress::Xdp)]
    ingress: Ingress,
    /// Give every wire packet its own PSN: turns TSO/GSO off on the interface while
    /// attached (restored on exit, or on the next start after a crash).
    #[arg(long)]
    per_packet: bool,
    /// Leave the MSS of received SYN/SYN-ACKs alone (full-size TCP segments then go
    /// without PDM, counted as too big).
    #[arg(long)]
    no_clamp_mss: bool,
    /// Size of the flow table (LRU: least recently used flows are evicted).
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_flows: u32,
    /// One JSON object per interval on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Reporting interval (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Detach and exit after this long (e.g. 30s, 5m); default: until Ctrl-C / SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("`{s}` is not a duration: use a number with ms, s, m or h (e.g. 500ms, 10s)");
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { max_flows } => check(max_flows),
        Cmd::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| rt.block_on(run(args))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pdm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fails early, with what to do, when the process cannot load BPF programs.
fn check_privileges() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    if !(has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))) {
        bail!(
            "needs root (or CAP_BPF and CAP_NET_ADMIN) to load and attach eBPF programs; run it with sudo"
        );
    }
    Ok(())
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall. Only matters on kernels without memcg-based BPF accounting.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

fn check(max_flows: u32) -> Result<ExitCode> {
    check_privileges()?;
    raise_memlock();
    let ebpf = attach::load(&LoadOptions {
        max_flows,
        clamp_mss: true,
    })?;
    let mut progs: Vec<String> = ebpf
        .programs()
        .map(|(name, prog)| {
            let insns = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count())
                .map_or(String::new(), |n| format!(" ({n} insns verified)"));
            format!("{name}{insns}")
        })
        .collect();
    progs.sort();
    println!(
        "pdm: eBPF programs verified and loaded: {} — nothing attached; `pdm run --iface IFACE` attaches",
        progs.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let name = args.iface.as_str();
    let ifindex = iface::index(name)?;
    iface::check_ipv6(name)?;
    check_privileges()?;
    let _lock = iface::IfaceLock::acquire(name)?;
    if let Some(o) = offload::recover(name, ifindex)? {
        let (tso, gso) = o.tso_gso();
        log::info!(
            "restored TSO {} / GSO {} on {name}, left changed by a previous run",
            on(tso),
            on(gso)
        );
    }
    raise_memlock();

    let mut ebpf = attach::load(&LoadOptions {
        max_flows: args.max_flows,
        clamp_mss: !args.no_clamp_mss,
    })?;
    // Offloads go off before attaching so that no GSO packet meets a per-packet run.
    let offloads = if args.per_packet {
        let guard = offload::disable(name, ifindex)?;
        let (tso, gso) = guard.saved().tso_gso();
        log::info!(
            "per-packet PSNs: TSO and GSO off on {name} (were {} / {}; restored on exit)",
            on(tso),
            on(gso)
        );
        Some(guard)
    } else {
        None
    };
    let attached = attach::attach(&mut ebpf, name, args.ingress)?;
    for d in &attached.description {
        log::info!(
            "attached to {name} (ifindex {ifindex}, MTU {}): {d}",
            iface::mtu(name).unwrap_or(0)
        );
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(args.interval);
    tick.tick().await;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let code = loop {
        tokio::select! {
            _ = sigint.recv() => break ExitCode::SUCCESS,
            _ = sigterm.recv() => break ExitCode::SUCCESS,
            _ = tick.tick() => {}
        }
        if iface::index(name).ok() != Some(ifindex) {
            eprintln!("pdm: interface {name} disappeared; detached and exiting");
            break ExitCode::from(3);
        }
        report(&ebpf, name, args.json)?;
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break ExitCode::SUCCESS;
        }
    };
    // A last report, so even a run shorter than one interval says what it saw.
    if code == ExitCode::SUCCESS {
        report(&ebpf, name, args.json)?;
    }
    // Detach first, then give the interface its offloads back.
    drop(attached);
    drop(offloads);
    log::info!("detached from {name}");
    Ok(code)
}

fn on(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn report(ebpf: &aya::Ebpf, iface: &str, json: bool) -> Result<()> {
    let t = stats::totals(ebpf).context("reading counters")?;
    let flows = stats::flows(ebpf).context("reading the flow table")?.len();
    let mut out = std::io::stdout().lock();
    if json {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let line = serde_json::json!({
            "ts": ts,
            "iface": iface,
            "flows": flows,
            "counters": t.to_json(),
        });
        writeln!(out, "{line}")?;
    } else {
        let skipped: Vec<String> = Counter::ALL
            .iter()
            .filter(|c| c.name().contains("_skip_") && t.get(**c) > 0)
            .map(|c| format!("{}={}", c.name(), t.get(*c)))
            .collect();
        writeln!(
            out,
            "egress {} pkts, {} with PDM | ingress {} pkts, {} with PDM | {flows} flows{}{}",
            t.get(Counter::EgressPackets),
            t.get(Counter::EgressInserted),
            t.get(Counter::IngressPackets),
            t.get(Counter::IngressPdm),
            if skipped.is_empty() { "" } else { " | " },
            skipped.join(" ")
        )?;
    }
    out.flush()?;
    Ok(())
}
