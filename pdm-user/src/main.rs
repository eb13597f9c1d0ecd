//! `pdm`: RFC 8250 IPv6 Performance and Diagnostic Metrics, in the kernel, live.

use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use pdm_common::flow::DEFAULT_MAX_FLOWS;
use pdm_user::{
    analyze, demo,
    duration::parse as parse_duration,
    engine::TableConfig,
    filter::Filter,
    kernel::{
        attach::{self, Ingress, LoadOptions, Role, TcMode},
        mtu_room, offload,
    },
    live,
    sinks::metrics::{MetricsConfig, PeerLabel, default_buckets},
    sys::iface::{Iface, IfaceLock},
    trace,
};

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
    /// Measure PDM that others send, without changing a packet: read-only programs on
    /// a router's, mirror port's or server's interfaces.
    Observe(ObserveArgs),
    /// Create two test hosts with a server, a client and traffic between them, and run
    /// pdm on the client host (what `cargo xtask run` does). Removed again on exit.
    Demo(DemoArgs),
    /// Load the eBPF programs and have the kernel verify them; attach nothing.
    Check {
        #[arg(long, default_value_t = DEFAULT_MAX_FLOWS)]
        max_flows: u32,
    },
    /// Traceroute twice, without and with a PDM header: where do packets carrying PDM stop?
    Trace(trace::TraceArgs),
    /// PDM in capture files (pcap, pcapng), pdm's own or anyone else's.
    Analyze(analyze::AnalyzeArgs),
    /// One self-contained HTML page of charts from a recorded run (NDJSON) or a capture.
    Report(pdm_user::report::ReportArgs),
    /// Print the man page or a shell's completions (what `cargo xtask dist` packages).
    Generate {
        #[arg(value_enum)]
        what: Generated,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Generated {
    /// The man page, pdm(1), in roff.
    Man,
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

/// Writes what `pdm generate` was asked for to stdout.
fn generate(what: Generated) -> Result<ExitCode> {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generated::Man => {
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("writing the man page")?;
            return Ok(ExitCode::SUCCESS);
        }
        Generated::Bash => Shell::Bash,
        Generated::Zsh => Shell::Zsh,
        Generated::Fish => Shell::Fish,
        Generated::Elvish => Shell::Elvish,
        Generated::Powershell => Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut cmd, "pdm", &mut out);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
struct RunArgs {
    /// Interface to attach to.
    #[arg(short, long)]
    iface: String,
    /// How to read received packets: `auto` takes native XDP where the driver has it,
    /// TC ingress on a veth (XDP there costs the peer its GSO) or without native XDP.
    #[arg(long, value_enum, default_value_t = Ingress::Auto)]
    ingress: Ingress,
    /// Give every wire packet its own PSN: turns TSO/GSO off on the interface while
    /// attached (restored on exit, or on the next start after a crash).
    #[arg(long)]
    per_packet: bool,
    /// Make room for PDM in every packet: lowers the MTU of the IPv6 routes through the
    /// interface by 16 while attached (restored on exit, or on the next start after a
    /// crash), so full-size UDP (QUIC), fragments and large pings carry PDM too.
    #[arg(long)]
    mtu_room: bool,
    /// Leave the MSS of received SYN/SYN-ACKs alone (full-size TCP segments then go
    /// without PDM, counted as too big).
    #[arg(long)]
    no_clamp_mss: bool,
    /// Add PDM only to matching flows (same syntax as --filter); everything else passes
    /// untouched. Decided when a flow is first seen; nothing a peer sends changes it.
    #[arg(long, value_parser = parse_filter, value_name = "FILTER")]
    only: Option<Filter>,
    #[command(flatten)]
    live: LiveArgs,
    /// Test switch: attach the TC programs as legacy netlink filters on a clsact qdisc
    /// instead of TCX links.
    #[arg(long, value_enum, default_value_t = TcMode::Tcx, hide = true)]
    attach: TcMode,
}

/// Options of every live view (`pdm run`, `pdm observe`): what is measured, and where
/// it goes.
#[derive(clap::Args)]
struct LiveArgs {
    /// Flows the table holds (rounded up to a power of two; 128 octets each, 160 for `observe`). A new flow
    /// takes the place of the least recently active one of the four it competes with.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_flows: u32,
    /// At most one RTT sample per flow this often (rounded to a power of two
    /// nanoseconds; 0: one per echoed PSN). Bulk flows echo a PSN with every ACK; this
    /// bounds the samples each such flow hands to userspace. Thinned echoes are counted.
    #[arg(long, default_value = "1ms", value_parser = pdm_user::duration::parse_tick_shift, value_name = "DURATION")]
    sample_interval: u8,
    /// NDJSON on stdout (one object per flow per interval) instead of the live view;
    /// the default when stdout is not a terminal.
    #[arg(long)]
    json: bool,
    /// Show only matching flows, e.g. "host example.org and port 443", "udp".
    #[arg(long, value_parser = parse_filter)]
    filter: Option<Filter>,
    /// Show reverse DNS names of remote addresses.
    #[arg(long)]
    resolve: bool,
    /// Also append the NDJSON lines to FILE (e.g. while watching the live view).
    #[arg(long, value_name = "FILE")]
    log: Option<std::path::PathBuf>,
    /// Span of the sliding window for RTT and server-delay distributions.
    #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    window: Duration,
    /// Forget flows without a packet for this long (TCP FIN/RST end them sooner).
    #[arg(long, default_value = "60s", value_parser = parse_duration, allow_hyphen_values = true)]
    idle_timeout: Duration,
    /// Reporting interval (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration, allow_hyphen_values = true)]
    interval: Duration,
    /// Detach and exit after this long (e.g. 30s, 5m); default: until Ctrl-C / SIGTERM.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    duration: Option<Duration>,
    /// Serve metrics for Prometheus at http://ADDR:PORT/metrics (e.g. [::1]:9464).
    /// Off by default: they are timing data about this host's traffic (RFC 8250 §6), so
    /// bind beyond loopback only where they may be read.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The peer label of the metrics: none, the remote /64 (prefix), or the remote
    /// address (host).
    #[arg(long, value_enum, default_value_t = PeerLabel::Prefix, value_name = "WHAT")]
    metrics_peer: PeerLabel,
    /// At most this many distinct peers get series of their own; the rest are "other".
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    metrics_max_series: u32,
    /// Upper bounds of the RTT and server-delay histogram buckets, e.g.
    /// "100us,1ms,10ms,100ms" (default: 1, 2 and 5 of every power of ten, 1 µs to 10 s).
    #[arg(long, value_delimiter = ',', value_parser = parse_duration, value_name = "D,D,...")]
    metrics_buckets: Option<Vec<Duration>>,
}

#[derive(clap::Args)]
struct ObserveArgs {
    /// Interface to observe (repeat for each: a router's two sides, e.g. `-i r0 -i r1`).
    #[arg(short, long, required = true)]
    iface: Vec<String>,
    /// Also observe packets this host sends (TC egress): for a host that is itself an
    /// end of the flows. On a router it would see every forwarded packet twice.
    #[arg(long)]
    egress: bool,
    /// How to read arriving packets: `auto` takes native XDP where the driver has it,
    /// TC ingress on a veth or without native XDP.
    #[arg(long, value_enum, default_value_t = Ingress::Auto)]
    ingress: Ingress,
    #[command(flatten)]
    live: LiveArgs,
}

/// `pdm run`'s arguments on their own, so the demo takes their defaults from one place.
#[derive(Parser)]
struct RunOnly {
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// The demo server's processing time per request (what server delay should show).
    #[arg(long, default_value = "5ms", value_parser = parse_duration, allow_hyphen_values = true)]
    processing_time: Duration,
    /// NDJSON instead of the live view.
    #[arg(long)]
    json: bool,
    /// Stop after this long.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    duration: Option<Duration>,
    /// Also append the NDJSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    log: Option<std::path::PathBuf>,
}

fn parse_filter(s: &str) -> Result<Filter, String> {
    Filter::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.cmd {
        Cmd::Check { max_flows } => check(max_flows),
        Cmd::Run(args) => block_on(run(args)),
        Cmd::Observe(args) => block_on(observe(args)),
        Cmd::Demo(args) => demo(args),
        Cmd::Trace(args) => trace::run(&args).map_err(Into::into),
        Cmd::Analyze(args) => analyze::run(&args).map(|()| ExitCode::SUCCESS),
        Cmd::Generate { what } => generate(what),
        Cmd::Report(args) => pdm_user::report::run(&args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pdm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Bad command-line input: one line saying what is wrong and where to look, exit
/// code 2. (clap's own rendering spreads it over a usage block and a hint.)
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let what: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let what = what.join(" ");
    let what = what.strip_prefix("error: ").unwrap_or(&what);
    let help = match std::env::args().nth(1).as_deref() {
        Some(sub @ ("run" | "observe" | "demo" | "check" | "trace" | "analyze" | "report")) => {
            format!("pdm {sub} --help")
        }
        _ => "pdm --help".into(),
    };
    eprintln!("pdm: {what} (see `{help}`)");
    ExitCode::from(2)
}

fn block_on(f: impl Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

/// The embedded demo: test hosts, traffic, and `pdm run` on the client host.
fn demo(a: DemoArgs) -> Result<ExitCode> {
    check_privileges()?;
    let hosts = demo::DemoHosts::create().context("creating the demo hosts")?;
    let server_pdm = demo::ServerPdm::attach().context("attaching pdm on the demo server")?;
    let traffic = demo::start_traffic(a.processing_time).context("starting the demo traffic")?;
    // This thread (which runs pdm) joins the client host; the traffic threads are
    // already in theirs.
    hosts.client.enter()?;
    // `pdm run`'s own defaults (clap's), but for the demo's interface and TC ingress
    // (veth: TC keeps the peer's GSO, see README).
    let mut args = RunOnly::try_parse_from(["pdm", "--iface", demo::IFACE, "--ingress", "tc"])
        .context("the demo's pdm run arguments")?
        .run;
    args.live.json = a.json;
    args.live.log = a.log;
    args.live.duration = a.duration;
    let result = block_on(run(args));
    drop(traffic);
    drop(server_pdm);
    drop(hosts);
    result
}

/// Fails early, with what to do, when the process cannot load BPF programs: before
/// anything is read from or changed on the interface.
fn check_privileges() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (kernels before 5.8 had only it).
    let missing: Vec<&str> = [
        ("CAP_BPF", has(CAP_BPF) || has(CAP_SYS_ADMIN)),
        ("CAP_NET_ADMIN", has(CAP_NET_ADMIN)),
        ("CAP_PERFMON", has(CAP_PERFMON) || has(CAP_SYS_ADMIN)),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| name)
    .collect();
    if !missing.is_empty() {
        bail!(
            "not allowed to load eBPF programs (missing {}): run as root or grant CAP_BPF,CAP_NET_ADMIN,CAP_PERFMON",
            missing.join(", ")
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
        role: Role::Check,
        max_flows,
        ..LoadOptions::default()
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
    check_privileges()?;
    // Looked up once; everything below takes this value.
    let iface = Iface::resolve(&args.iface)?;
    let _lock = IfaceLock::acquire(&iface)?;
    let stale = attach::recover_tc(&iface);
    if !stale.is_empty() {
        log::info!(
            "removed {} from {iface}, left attached by a previous run",
            stale.join(" and ")
        );
    }
    if let Some(o) = offload::recover(&iface)? {
        let (tso, gso) = o.tso_gso();
        log::info!(
            "restored TSO {} / GSO {} on {iface}, left changed by a previous run",
            on(tso),
            on(gso)
        );
    }
    let recovered = mtu_room::recover(&iface)?;
    if recovered > 0 {
        log::info!(
            "restored the MTU of {recovered} route(s) through {iface}, left lowered by a previous run"
        );
    }
    raise_memlock();

    let mut ebpf = attach::load(&LoadOptions {
        role: Role::Run,
        max_flows: args.live.max_flows,
        clamp_mss: !args.no_clamp_mss,
        only: args.only.clone().unwrap_or_default(),
        sample_tick_shift: args.live.sample_interval,
    })?;
    // Offloads go off before attaching so that no GSO packet meets a per-packet run.
    let offloads = if args.per_packet {
        let guard = offload::disable(&iface)?;
        let (tso, gso) = guard.saved().tso_gso();
        log::info!(
            "per-packet PSNs: TSO and GSO off on {iface} (were {} / {}; restored on exit)",
            on(tso),
            on(gso)
        );
        Some(guard)
    } else {
        None
    };
    // The metrics port is taken before anything is attached: one that cannot be had
    // ends the run with nothing changed.
    let metrics = metrics_listener(&args.live, iface.name())?;
    // Room before attaching, so that no full-size packet meets the program first.
    let room = if args.mtu_room {
        let guard = mtu_room::make_room(&iface)?;
        let mtus: std::collections::BTreeSet<u32> = guard.lowered.iter().map(|l| l.1).collect();
        log::info!(
            "room for PDM: the MTU of {} IPv6 route(s) through {iface} lowered by 16 (now {}; restored on exit){}",
            guard.lowered.len(),
            mtus.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if guard.multipath > 0 {
                format!("; {} multipath route(s) left alone", guard.multipath)
            } else {
                String::new()
            }
        );
        Some(guard)
    } else {
        None
    };
    let attached = attach::attach_with(&mut ebpf, &iface, args.ingress, args.attach)?;
    for d in &attached.description {
        log::info!(
            "attached to {iface} (ifindex {}, MTU {}): {d}",
            iface.index(),
            iface.mtu().unwrap_or(0)
        );
    }
    if args.ingress == Ingress::Xdp && iface.driver().as_deref() == Some("veth") {
        log::warn!(
            "{iface} is a veth: with an XDP program attached its peer sends every segment \
             separately (no GSO), which costs TCP most of its throughput; \
             `--ingress tc` keeps GSO"
        );
    }

    let end = live::run(
        &mut ebpf,
        live_options(
            args.live,
            live::Mode::Run,
            vec![iface.clone()],
            attached.description.clone(),
            args.mtu_room,
            metrics,
        ),
    )
    .await;
    // Detach first, then give the interface its offloads back, whatever happened.
    drop(attached);
    drop(offloads);
    drop(room);
    match end? {
        live::End::Stopped => {
            log::info!("detached from {iface}");
            Ok(ExitCode::SUCCESS)
        }
        live::End::InterfaceGone => {
            eprintln!("pdm: interface {iface} disappeared; detached and exiting");
            Ok(ExitCode::from(3))
        }
    }
}

/// The live loop's options from the command line's.
fn live_options(
    a: LiveArgs,
    mode: live::Mode,
    ifaces: Vec<Iface>,
    attach: Vec<String>,
    mtu_room: bool,
    metrics: Option<(std::net::TcpListener, MetricsConfig)>,
) -> live::Options {
    live::Options {
        mode,
        ifaces,
        attach,
        interval: a.interval,
        duration: a.duration,
        table: TableConfig {
            window: a.window,
            idle_timeout: a.idle_timeout,
            ..TableConfig::default()
        },
        filter: a.filter.unwrap_or_default(),
        json: a.json || !std::io::stdout().is_terminal(),
        resolve: a.resolve,
        log: a.log,
        mtu_room,
        metrics,
    }
}

/// `--metrics-addr`'s listener, bound (so that a port that cannot be had ends the run
/// before anything is attached), and what to export; None without the option.
fn metrics_listener(
    a: &LiveArgs,
    label: &str,
) -> Result<Option<(std::net::TcpListener, MetricsConfig)>> {
    let Some(addr) = a.metrics_addr else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot listen on {addr} for --metrics-addr (in use, or not an address of this host?)"
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("the metrics listener")?;
    let mut buckets: Vec<f64> = match &a.metrics_buckets {
        Some(b) => b.iter().map(Duration::as_secs_f64).collect(),
        None => default_buckets(),
    };
    buckets.sort_by(f64::total_cmp);
    buckets.dedup();
    log::info!("metrics for Prometheus at http://{addr}/metrics");
    Ok(Some((
        listener,
        MetricsConfig {
            iface: label.to_owned(),
            peer: a.metrics_peer,
            max_series: a.metrics_max_series as usize,
            buckets,
        },
    )))
}

/// `pdm observe`: the read-only programs on every interface given, and the live loop
/// over what they pair.
async fn observe(args: ObserveArgs) -> Result<ExitCode> {
    check_privileges()?;
    // Looked up once; everything below takes these values.
    let mut ifaces: Vec<Iface> = Vec::new();
    for name in &args.iface {
        let iface = Iface::resolve_link(name)?;
        if ifaces.iter().any(|i| i.index() == iface.index()) {
            bail!("--iface {name} is given twice: name each interface once");
        }
        ifaces.push(iface);
    }
    // The same lock as `pdm run`: one pdm per interface, whichever command.
    let _locks = ifaces
        .iter()
        .map(IfaceLock::acquire)
        .collect::<Result<Vec<_>, _>>()?;
    raise_memlock();
    let mut ebpf = attach::load(&LoadOptions {
        role: Role::Observe,
        max_flows: args.live.max_flows,
        clamp_mss: false,
        sample_tick_shift: args.live.sample_interval,
        ..LoadOptions::default()
    })?;
    let label = ifaces.iter().map(Iface::name).collect::<Vec<_>>().join(",");
    let metrics = metrics_listener(&args.live, &label)?;
    // Dropped (detached) on every way out, errors included.
    let mut attached = Vec::new();
    let mut description = Vec::new();
    for iface in &ifaces {
        let a = attach::observe(&mut ebpf, iface, args.ingress, args.egress)?;
        for d in &a.description {
            log::info!(
                "{iface} (ifindex {}, MTU {}): {d}",
                iface.index(),
                iface.mtu().unwrap_or(0)
            );
            description.push(format!("{iface}: {d}"));
        }
        attached.push(a);
    }
    log::info!(
        "observing on {}: read-only, every packet passes unchanged",
        label.replace(',', ", ")
    );
    let end = live::run(
        &mut ebpf,
        live_options(
            args.live,
            live::Mode::Observe,
            ifaces,
            description,
            true,
            metrics,
        ),
    )
    .await;
    drop(attached);
    match end? {
        live::End::Stopped => {
            log::info!("detached from {label}");
            Ok(ExitCode::SUCCESS)
        }
        live::End::InterfaceGone => {
            eprintln!("pdm: an interface of {label} disappeared; detached and exiting");
            Ok(ExitCode::from(3))
        }
    }
}

fn on(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}
