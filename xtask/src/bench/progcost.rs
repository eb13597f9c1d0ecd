//! Run time per packet of each program (`kernel.bpf_stats_enabled`: run_time_ns /
//! run_cnt over a window), for small UDP datagrams at the highest rate the sender
//! manages and for TCP bulk; pdm on both hosts, with XDP and with TC ingress; and the
//! same for programs that return at once (the floor of each hook), one that only opens
//! the 16 octets and one that only reads the clock (the two kernel costs pdm cannot
//! avoid).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};

use super::{
    Cfg,
    bpf::{self, StatsOn, Target, Window},
    hosts::{self, ADDR_A, ADDR_B, Hosts, KillOnDrop, NS_A, NS_B, Pdm},
    profile,
    results::{
        BaselineSetup, ClientServer, CountersLine, Flood, Host, HostProgs, Ingress, IperfWindow,
        MergedProg, NullHook, NullSetups, PdmCounters, PdmSetup, ProfilePair, ProgRun, ProgWindow,
        Progcost, TcpTraffic, TcpWindows, UdpOnly, UdpTraffic, UdpWindows, Windows,
    },
    stats, throughput,
};

/// What one window measures.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    /// pdm on both hosts, with this ingress.
    Pdm(Ingress),
    /// Programs that return at once (client TC egress, server ingress on this hook).
    Null(NullHook),
    /// Client TC egress that only opens 16 octets (see bpf::ADJUST_ROOM_ONLY).
    AdjustRoomOnly,
    /// Server XDP that only reads the clock (see bpf::CLOCK_ONLY).
    ClockOnly,
    /// pdm built from `--baseline REV` on both hosts, TC ingress (the default on veth).
    Baseline,
}

/// The setups of a run: the baseline's only with `--baseline`.
fn setups(cfg: &Cfg) -> Vec<Setup> {
    let mut s = vec![
        Setup::Pdm(Ingress::Xdp),
        Setup::Pdm(Ingress::Tc),
        Setup::Null(NullHook::Xdp),
        Setup::Null(NullHook::TcIngress),
        Setup::AdjustRoomOnly,
        Setup::ClockOnly,
    ];
    if cfg.baseline.is_some() {
        s.push(Setup::Baseline);
    }
    s
}

/// What the rounds gathered for one setup.
#[derive(Default)]
struct Gathered {
    udp: Vec<ProgWindow<Flood>>,
    tcp: Vec<ProgWindow<IperfWindow>>,
    /// pdm setups: the first round's profile, the last round's counters.
    profile: Option<ProfilePair>,
    counters: Option<ClientServer<PdmCounters>>,
}

/// Windows of each setup, taken in rounds: every round measures every setup once, on
/// fresh hosts, forwards and backwards in turn. This VM's speed drifts over minutes,
/// and a setup measured only early or only late in the run would carry that drift into
/// its comparison with the others.
pub fn run(cfg: &Cfg) -> Result<Progcost> {
    let setups = setups(cfg);
    let mut gathered: BTreeMap<Setup, Gathered> = BTreeMap::new();
    for round in 0..cfg.reps {
        for i in stats::round_order(setups.len(), round) {
            let setup = setups[i];
            let _hosts = Hosts::create()?;
            let _iperf = throughput::iperf_server()?;
            let g = gathered.entry(setup).or_default();
            match setup {
                Setup::Pdm(ingress) => {
                    let args = ["--ingress", ingress.name()];
                    let a = Pdm::start(&cfg.pdm, NS_A, &args)?;
                    let b = Pdm::start(&cfg.pdm, NS_B, &args)?;
                    let targets = pdm_targets(&a, &b);
                    g.udp.push(udp_window(cfg, &targets)?);
                    g.tcp.push(tcp_window(cfg, &targets)?);
                    if round == 0 {
                        g.profile = Some(ProfilePair {
                            udp: profile::during(cfg.cost_secs, || flood(cfg))?,
                            tcp: profile::during(cfg.cost_secs, || {
                                throughput::iperf_client(cfg.cost_secs, 1)
                            })?,
                        });
                    }
                    g.counters = Some(ClientServer {
                        client: stop_pdm(a)?.counters,
                        server: stop_pdm(b)?.counters,
                    });
                }
                Setup::Null(hook) => {
                    let ea = null_prog(NS_A, "tc-egress")?;
                    let ib = null_prog(NS_B, hook.name())?;
                    let targets = helper_targets(&ea, &ib);
                    g.udp.push(udp_window(cfg, &targets)?);
                    g.tcp.push(tcp_window(cfg, &targets)?);
                }
                Setup::AdjustRoomOnly => {
                    let ea = null_prog(NS_A, "tc-egress-adjust")?;
                    let ib = null_prog(NS_B, "xdp")?;
                    g.udp.push(udp_window(cfg, &helper_targets(&ea, &ib))?);
                }
                Setup::ClockOnly => {
                    let ea = null_prog(NS_A, "tc-egress")?;
                    let ib = null_prog(NS_B, "xdp-clock")?;
                    g.udp.push(udp_window(cfg, &helper_targets(&ea, &ib))?);
                }
                Setup::Baseline => {
                    let (pdm, _) = cfg.baseline.as_ref().expect("a baseline setup");
                    let a = Pdm::start(pdm, NS_A, &["--ingress", "tc"])?;
                    let b = Pdm::start(pdm, NS_B, &["--ingress", "tc"])?;
                    let targets = pdm_targets(&a, &b);
                    g.udp.push(udp_window(cfg, &targets)?);
                    g.tcp.push(tcp_window(cfg, &targets)?);
                    a.stop()?;
                    b.stop()?;
                }
            }
        }
        eprintln!("bench: progcost round {} of {} done", round + 1, cfg.reps);
    }
    let mut take = |setup| gathered.remove(&setup).unwrap_or_default();
    Ok(Progcost {
        xdp: pdm_setup(take(Setup::Pdm(Ingress::Xdp)))?,
        tc: pdm_setup(take(Setup::Pdm(Ingress::Tc)))?,
        null: NullSetups {
            xdp: windows(&take(Setup::Null(NullHook::Xdp))),
            tc_ingress: windows(&take(Setup::Null(NullHook::TcIngress))),
        },
        adjust_room_only: Some(UdpOnly {
            udp: merge_udp(&take(Setup::AdjustRoomOnly).udp),
        }),
        clock_only: Some(UdpOnly {
            udp: merge_udp(&take(Setup::ClockOnly).udp),
        }),
        baseline: cfg.baseline.as_ref().map(|(_, rev)| BaselineSetup {
            rev: rev.clone(),
            tc: windows(&take(Setup::Baseline)),
        }),
    })
}

fn pdm_setup(g: Gathered) -> Result<PdmSetup> {
    let windows = windows(&g);
    let counters = g.counters.context("no round ran pdm")?;
    Ok(PdmSetup {
        windows,
        profile: g.profile.context("no round profiled pdm")?,
        client_counters: counters.client,
        server_counters: counters.server,
    })
}

fn windows(g: &Gathered) -> Windows {
    Windows {
        udp: merge_udp(&g.udp),
        tcp: merge_tcp(&g.tcp),
    }
}

/// Stops a pdm: its last counters line.
pub fn stop_pdm(pdm: Pdm) -> Result<CountersLine> {
    serde_json::from_value(pdm.stop()?).context("pdm's counters line")
}

/// One TCP bulk window (iperf3, 1 stream) with bpf_stats on, and the TCP segments the
/// client's stack sent meanwhile: a program runs once per GSO (or GRO) packet, and the
/// segments say how many wire packets those runs stood for.
fn tcp_window(cfg: &Cfg, targets: &[Target]) -> Result<ProgWindow<IperfWindow>> {
    let _on = StatsOn::new()?;
    let sent = tcp_out_segs(NS_A)?;
    let w = Window::start(targets)?;
    let iperf = throughput::iperf_client(cfg.cost_secs, 1)?;
    let progs = w.end()?;
    let segments_sent = tcp_out_segs(NS_A)?.saturating_sub(sent);
    Ok(ProgWindow {
        progs,
        traffic: IperfWindow {
            iperf,
            segments_sent,
        },
    })
}

/// `Tcp: OutSegs` of /proc/net/snmp inside `ns` (IPv4 and IPv6 share the TCP MIB; it
/// counts every segment of a GSO packet).
fn tcp_out_segs(ns: &str) -> Result<u64> {
    let snmp = hosts::in_ns(ns, &["cat", "/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("no Tcp lines in /proc/net/snmp of {ns}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Tcp OutSegs in /proc/net/snmp of {ns}"))
}

/// One small-UDP window with bpf_stats on: the programs' stats and what the flood did.
fn udp_window(cfg: &Cfg, targets: &[Target]) -> Result<ProgWindow<Flood>> {
    let _on = StatsOn::new()?;
    let w = Window::start(targets)?;
    let traffic = flood(cfg)?;
    Ok(ProgWindow {
        progs: w.end()?,
        traffic,
    })
}

/// The programs of a pdm on each host, as bpf_stats targets.
fn pdm_targets(client: &Pdm, server: &Pdm) -> [Target; 2] {
    [
        bpf::pdm_target(Host::Client, client),
        bpf::pdm_target(Host::Server, server),
    ]
}

/// The programs two `bench-helper null-prog` processes hold, as bpf_stats targets.
fn helper_targets(client: &KillOnDrop, server: &KillOnDrop) -> [Target; 2] {
    [
        (Host::Client, hosts::fd_ids(client.pid(), "prog_id")),
        (Host::Server, hosts::fd_ids(server.pid(), "prog_id")),
    ]
}

/// Several windows' programs as one: per host and program the runs and run time
/// (summed) and the ns per run (median, min, max, values).
fn merge_progs<'a>(windows: impl Iterator<Item = &'a HostProgs<ProgRun>>) -> HostProgs<MergedProg> {
    let mut runs: BTreeMap<Host, BTreeMap<&str, Vec<&ProgRun>>> = BTreeMap::new();
    for w in windows {
        for (host, progs) in &w.0 {
            for (name, p) in progs {
                let e = runs.entry(*host).or_default().entry(name).or_default();
                e.push(p);
            }
        }
    }
    let merged = runs.into_iter().map(|(host, progs)| {
        let progs = progs.into_iter().map(|(name, ps)| {
            let values: Vec<f64> = ps.iter().map(|p| p.ns_per_run).collect();
            let s = stats::summary(&values);
            let nan = f64::NAN;
            let m = MergedProg {
                runs: ps.iter().map(|p| p.runs).sum(),
                run_time_ns: ps.iter().map(|p| p.run_time_ns).sum(),
                ns_per_run: s.median.unwrap_or(nan),
                ns_min: s.min.unwrap_or(nan),
                ns_max: s.max.unwrap_or(nan),
                values,
            };
            (name.to_owned(), m)
        });
        (host, progs.collect())
    });
    HostProgs(merged.collect())
}

/// The small-UDP windows of a setup as one, the rate as the median.
fn merge_udp(windows: &[ProgWindow<Flood>]) -> UdpWindows {
    let pps: Vec<f64> = windows.iter().map(|w| w.traffic.pps).collect();
    UdpWindows {
        progs: merge_progs(windows.iter().map(|w| &w.progs)),
        traffic: UdpTraffic {
            windows: windows.iter().map(|w| w.traffic.clone()).collect(),
            pps: stats::median(&pps),
        },
    }
}

/// The TCP windows of a setup as one, the rate as the median and the segments summed.
fn merge_tcp(windows: &[ProgWindow<IperfWindow>]) -> TcpWindows {
    let gbps: Vec<f64> = windows.iter().map(|w| w.traffic.iperf.gbps).collect();
    let segments: u64 = windows.iter().map(|w| w.traffic.segments_sent).sum();
    TcpWindows {
        progs: merge_progs(windows.iter().map(|w| &w.progs)),
        traffic: TcpTraffic {
            windows: windows.iter().map(|w| w.traffic.clone()).collect(),
            gbps: stats::median(&gbps),
            segments_sent: (segments > 0).then_some(segments),
        },
    }
}

/// One UDP flow, as fast as the sender goes, for one window.
fn flood(cfg: &Cfg) -> Result<Flood> {
    let out = hosts::udp_flood_json(NS_A, (ADDR_A, ADDR_B), 1, cfg.cost_secs, &[])?;
    serde_json::from_value(out).context("udp-flood's output")
}

/// `bench-helper null-prog` in `ns`, attached.
pub fn null_prog(ns: &str, hook: &str) -> Result<KillOnDrop> {
    let mut c = hosts::helper(ns, &["null-prog", "--hook", hook])?;
    let p = KillOnDrop::spawn(c.stdout(std::process::Stdio::null()))?;
    let pid = p.pid();
    hosts::wait_for(
        &format!("null {hook} program in {ns}"),
        std::time::Duration::from_secs(10),
        || hosts::fd_ids(pid, "link_id").len() == 1 || hosts::fd_ids(pid, "prog_id").len() > 1,
    )?;
    Ok(p)
}
