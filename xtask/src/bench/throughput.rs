//! TCP throughput and CPU per transferred GB: iperf3 (1 and 8 streams) and our own bulk
//! sender/sink pair, which can also carry the kernel's own insertion (sticky
//! IPV6_DSTOPTS with a 16-octet PDM-shaped header, MSS accounted) — the floor for adding
//! these 16 octets. Every mode runs on fresh hosts; repetitions go round all modes in
//! turn, so drift on a shared machine spreads over all of them alike.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::{
    Cfg,
    hosts::{self, ADDR_B, Hosts, KillOnDrop, NS_A, NS_B, OffloadsOff, Pdm},
    progcost,
    results::{
        ClientServer, CpuDuring, Iperf, Measure, ModeInfo, Pair, PdmCounters, Ratio, SenderRun,
        TcpRun, TcpSummary, TcpTest, TcpTest as T, Throughput, ThroughputMode, ThroughputMode as M,
    },
    stats,
};

const IPERF_PORT: &str = "5201";
const SINK_PORT: u16 = 5300;

/// One configuration of both hosts.
pub struct Mode {
    pub mode: ThroughputMode,
    pub what: &'static str,
    /// `pdm run` arguments on both hosts, or no pdm.
    pub pdm: Option<&'static [&'static str]>,
    /// TSO/GSO off and gso_max_segs 1 on both hosts (what --per-packet does).
    pub offloads_off: bool,
    /// A program that returns at once on XDP of both hosts.
    pub null_xdp: bool,
    /// Also run our sender/sink pair, and with IPV6_DSTOPTS.
    pub pair: bool,
    pub dstopts: bool,
}

/// In the order they are measured (reversed every other repetition): each mode next to
/// what it is compared with, so that this VM's drift over a round lands on both sides.
pub const MODES: &[Mode] = &[
    Mode {
        mode: ThroughputMode::Baseline,
        what: "no PDM (offloads on)",
        pdm: None,
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: true,
    },
    Mode {
        mode: ThroughputMode::PdmTc,
        what: "`pdm` default on both hosts (`--ingress auto`: TC ingress on a veth)",
        pdm: Some(&[]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        mode: ThroughputMode::PdmMtuRoom,
        what: "`pdm --mtu-room` on both hosts (routes 16 octets lower, TC ingress on a veth)",
        pdm: Some(&["--mtu-room"]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        mode: ThroughputMode::PdmXdp,
        what: "`pdm --ingress xdp` (XDP native ingress) on both hosts",
        pdm: Some(&["--ingress", "xdp"]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        mode: ThroughputMode::XdpPass,
        what: "no PDM, an XDP program that only returns XDP_PASS on both hosts",
        pdm: None,
        offloads_off: false,
        null_xdp: true,
        pair: false,
        dstopts: false,
    },
    Mode {
        mode: ThroughputMode::BaselineOffloadsOff,
        what: "no PDM, TSO/GSO off and gso_max_segs 1 on both hosts",
        pdm: None,
        offloads_off: true,
        null_xdp: false,
        pair: true,
        dstopts: true,
    },
    Mode {
        mode: ThroughputMode::PdmPerPacketTc,
        what: "`pdm --per-packet` on both hosts (TC ingress on a veth)",
        pdm: Some(&["--per-packet"]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        mode: ThroughputMode::PdmPerPacket,
        what: "`pdm --per-packet --ingress xdp` on both hosts (it turns TSO/GSO off)",
        pdm: Some(&["--per-packet", "--ingress", "xdp"]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        mode: ThroughputMode::XdpPassOffloadsOff,
        what: "no PDM, TSO/GSO off as above, and an XDP program that only returns XDP_PASS on both hosts",
        pdm: None,
        offloads_off: true,
        null_xdp: true,
        pair: false,
        dstopts: false,
    },
];

const fn at(mode: ThroughputMode, test: TcpTest) -> Measure {
    Measure { mode, test }
}

/// Ratios reported: (label, numerator, denominator, target).
pub const RATIOS: &[(&str, Measure, Measure, Option<f64>)] = &[
    (
        "pdm --ingress xdp vs no PDM, iperf3 1 stream",
        at(M::PdmXdp, T::Iperf1),
        at(M::Baseline, T::Iperf1),
        Some(0.95),
    ),
    (
        "pdm --ingress xdp vs no PDM, iperf3 8 streams",
        at(M::PdmXdp, T::Iperf8),
        at(M::Baseline, T::Iperf8),
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs no PDM, iperf3 1 stream",
        at(M::PdmTc, T::Iperf1),
        at(M::Baseline, T::Iperf1),
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs no PDM, iperf3 8 streams",
        at(M::PdmTc, T::Iperf8),
        at(M::Baseline, T::Iperf8),
        Some(0.95),
    ),
    (
        "pdm --mtu-room (TC ingress) vs no PDM, iperf3 1 stream",
        at(M::PdmMtuRoom, T::Iperf1),
        at(M::Baseline, T::Iperf1),
        Some(0.95),
    ),
    (
        "pdm --mtu-room (TC ingress) vs no PDM, iperf3 8 streams",
        at(M::PdmMtuRoom, T::Iperf8),
        at(M::Baseline, T::Iperf8),
        Some(0.95),
    ),
    (
        "pdm --mtu-room vs pdm default (TC ingress), iperf3 1 stream",
        at(M::PdmMtuRoom, T::Iperf1),
        at(M::PdmTc, T::Iperf1),
        None,
    ),
    (
        "XDP_PASS-only program vs no PDM, iperf3 1 stream",
        at(M::XdpPass, T::Iperf1),
        at(M::Baseline, T::Iperf1),
        None,
    ),
    (
        "XDP_PASS-only program vs no PDM, iperf3 8 streams",
        at(M::XdpPass, T::Iperf8),
        at(M::Baseline, T::Iperf8),
        None,
    ),
    (
        "pdm --per-packet --ingress xdp vs no PDM (offloads off), iperf3 1 stream",
        at(M::PdmPerPacket, T::Iperf1),
        at(M::BaselineOffloadsOff, T::Iperf1),
        Some(0.95),
    ),
    (
        "pdm --per-packet --ingress xdp vs no PDM (offloads off), iperf3 8 streams",
        at(M::PdmPerPacket, T::Iperf8),
        at(M::BaselineOffloadsOff, T::Iperf8),
        Some(0.95),
    ),
    (
        "pdm --per-packet (TC ingress) vs no PDM (offloads off), iperf3 1 stream",
        at(M::PdmPerPacketTc, T::Iperf1),
        at(M::BaselineOffloadsOff, T::Iperf1),
        Some(0.95),
    ),
    (
        "pdm --per-packet (TC ingress) vs no PDM (offloads off), iperf3 8 streams",
        at(M::PdmPerPacketTc, T::Iperf8),
        at(M::BaselineOffloadsOff, T::Iperf8),
        Some(0.95),
    ),
    (
        "XDP_PASS-only program vs no PDM (offloads off), iperf3 1 stream",
        at(M::XdpPassOffloadsOff, T::Iperf1),
        at(M::BaselineOffloadsOff, T::Iperf1),
        None,
    ),
    (
        "XDP_PASS-only program vs no PDM (offloads off), iperf3 8 streams",
        at(M::XdpPassOffloadsOff, T::Iperf8),
        at(M::BaselineOffloadsOff, T::Iperf8),
        None,
    ),
    (
        "kernel IPV6_DSTOPTS vs plain, pair 1 stream",
        at(M::Baseline, T::Dstopts1),
        at(M::Baseline, T::Pair1),
        None,
    ),
    (
        "kernel IPV6_DSTOPTS vs plain, pair 8 streams",
        at(M::Baseline, T::Dstopts8),
        at(M::Baseline, T::Pair8),
        None,
    ),
    (
        "pdm --ingress xdp vs kernel IPV6_DSTOPTS, pair 1 stream",
        at(M::PdmXdp, T::Pair1),
        at(M::Baseline, T::Dstopts1),
        Some(0.95),
    ),
    (
        "pdm --ingress xdp vs kernel IPV6_DSTOPTS, pair 8 streams",
        at(M::PdmXdp, T::Pair8),
        at(M::Baseline, T::Dstopts8),
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs kernel IPV6_DSTOPTS, pair 1 stream",
        at(M::PdmTc, T::Pair1),
        at(M::Baseline, T::Dstopts1),
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs kernel IPV6_DSTOPTS, pair 8 streams",
        at(M::PdmTc, T::Pair8),
        at(M::Baseline, T::Dstopts8),
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs plain, pair 1 stream",
        at(M::PdmTc, T::Pair1),
        at(M::Baseline, T::Pair1),
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs plain, pair 8 streams",
        at(M::PdmTc, T::Pair8),
        at(M::Baseline, T::Pair8),
        Some(0.95),
    ),
    (
        "kernel IPV6_DSTOPTS vs plain (offloads off), pair 1 stream",
        at(M::BaselineOffloadsOff, T::Dstopts1),
        at(M::BaselineOffloadsOff, T::Pair1),
        None,
    ),
    (
        "pdm --per-packet --ingress xdp vs kernel IPV6_DSTOPTS (offloads off), pair 1 stream",
        at(M::PdmPerPacket, T::Pair1),
        at(M::BaselineOffloadsOff, T::Dstopts1),
        Some(0.95),
    ),
    (
        "pdm --per-packet --ingress xdp vs kernel IPV6_DSTOPTS (offloads off), pair 8 streams",
        at(M::PdmPerPacket, T::Pair8),
        at(M::BaselineOffloadsOff, T::Dstopts8),
        Some(0.95),
    ),
    (
        "pdm --per-packet (TC ingress) vs kernel IPV6_DSTOPTS (offloads off), pair 1 stream",
        at(M::PdmPerPacketTc, T::Pair1),
        at(M::BaselineOffloadsOff, T::Dstopts1),
        Some(0.95),
    ),
    (
        "pdm --per-packet (TC ingress) vs kernel IPV6_DSTOPTS (offloads off), pair 8 streams",
        at(M::PdmPerPacketTc, T::Pair8),
        at(M::BaselineOffloadsOff, T::Dstopts8),
        Some(0.95),
    ),
];

pub fn run(cfg: &Cfg) -> Result<Throughput> {
    // One run per repetition, per mode and test.
    let mut runs: BTreeMap<ThroughputMode, BTreeMap<TcpTest, Vec<TcpRun>>> = BTreeMap::new();
    let mut counters = BTreeMap::new();
    for rep in 0..cfg.reps {
        for m in stats::round_order(MODES.len(), rep).map(|i| &MODES[i]) {
            let name = m.mode.name();
            let (tests, c) = run_mode(cfg, m).with_context(|| format!("mode {name}"))?;
            eprintln!(
                "bench: throughput rep {} {name}: {}",
                rep + 1,
                serde_json::to_string(&tests)?
            );
            for (test, run) in tests {
                runs.entry(m.mode)
                    .or_default()
                    .entry(test)
                    .or_default()
                    .push(run);
            }
            if let Some(c) = c {
                counters.insert(m.mode, c);
            }
        }
    }
    let mut summary: BTreeMap<ThroughputMode, BTreeMap<TcpTest, TcpSummary>> = BTreeMap::new();
    for m in MODES {
        for &test in TcpTest::ALL {
            let Some(reps) = runs.get(&m.mode).and_then(|t| t.get(&test)) else {
                continue;
            };
            let field =
                |f: fn(&TcpRun) -> f64| stats::summary(&reps.iter().map(f).collect::<Vec<_>>());
            let s = TcpSummary {
                gbps: field(|r| r.sender.gbps()),
                cpu_s_per_gb: field(|r| r.sender.cpu_s_per_gb()),
                retransmits: field(|r| r.sender.retransmits().map_or(f64::NAN, |n| n as f64)),
                pdm_cpu_s_per_gb: field(|r| r.cpu.pdm_cpu_s_per_gb.unwrap_or(f64::NAN)),
                machine_busy_percent: field(|r| r.cpu.machine_busy_percent),
                steal_percent: field(|r| r.cpu.steal_percent),
            };
            summary.entry(m.mode).or_default().insert(test, s);
        }
    }
    let gbps = |at: Measure| -> Vec<f64> {
        runs.get(&at.mode)
            .and_then(|t| t.get(&at.test))
            .map(|reps| reps.iter().map(|r| r.sender.gbps()).collect())
            .unwrap_or_default()
    };
    let ratios = RATIOS
        .iter()
        .map(|&(label, num, den, target)| {
            let (n, d) = (gbps(num), gbps(den));
            let per_rep: Vec<f64> = n.iter().zip(&d).map(|(a, b)| a / b).collect();
            let ratio = stats::median(&n) / stats::median(&d);
            Ratio {
                label: label.to_owned(),
                num,
                den,
                ratio,
                per_rep: stats::summary(&per_rep),
                target,
                met: target.map(|t| ratio >= t),
            }
        })
        .collect();
    Ok(Throughput {
        modes: MODES
            .iter()
            .map(|m| ModeInfo {
                name: m.mode,
                what: m.what.to_owned(),
            })
            .collect(),
        runs,
        summary,
        ratios,
        pdm_counters_last_rep: counters,
    })
}

/// The tests of one mode, in the order they run.
type ModeRuns = BTreeMap<TcpTest, TcpRun>;

/// One mode on fresh hosts: its tests, and the client's and server's pdm counters.
fn run_mode(cfg: &Cfg, m: &Mode) -> Result<(ModeRuns, Option<ClientServer<PdmCounters>>)> {
    let _hosts = Hosts::create()?;
    let _iperf = iperf_server()?;
    let _sink = if m.pair { Some(sink()?) } else { None };
    let _off = if m.offloads_off {
        Some(OffloadsOff::both()?)
    } else {
        None
    };
    let _nulls = if m.null_xdp {
        Some((
            progcost::null_prog(NS_A, "xdp")?,
            progcost::null_prog(NS_B, "xdp")?,
        ))
    } else {
        None
    };
    let pdms = match m.pdm {
        Some(args) => Some((
            Pdm::start(&cfg.pdm, NS_A, args)?,
            Pdm::start(&cfg.pdm, NS_B, args)?,
        )),
        None => None,
    };
    let pids: Vec<u32> = pdms.iter().flat_map(|(a, b)| [a.pid(), b.pid()]).collect();
    // Each test with what the pdm loaders and the whole machine used meanwhile.
    let with_cpu = |f: &mut dyn FnMut() -> Result<SenderRun>| -> Result<TcpRun> {
        let l0: f64 = pids.iter().map(|&p| hosts::cpu_seconds(p)).sum();
        let m0 = machine_jiffies();
        let sender = f()?;
        let l1: f64 = pids.iter().map(|&p| hosts::cpu_seconds(p)).sum();
        let m1 = machine_jiffies();
        let gb = sender.bytes() / 1e9;
        let pdm_cpu_s = (!pids.is_empty()).then_some(l1 - l0);
        let total = (m1.1 - m0.1).max(1) as f64;
        Ok(TcpRun {
            sender,
            cpu: CpuDuring {
                pdm_cpu_s,
                pdm_cpu_s_per_gb: pdm_cpu_s.map(|s| s / gb),
                machine_busy_percent: 100.0 * (m1.0 - m0.0) as f64 / total,
                steal_percent: 100.0 * (m1.2 - m0.2) as f64 / total,
            },
        })
    };
    let mut out = BTreeMap::new();
    for (streams, test) in [(1, TcpTest::Iperf1), (8, TcpTest::Iperf8)] {
        let run = with_cpu(&mut || iperf_client(cfg.tcp_secs, streams).map(SenderRun::Iperf))?;
        out.insert(test, run);
    }
    if let Some(sink) = &_sink {
        for (streams, plain, dstopts) in [
            (1, TcpTest::Pair1, TcpTest::Dstopts1),
            (8, TcpTest::Pair8, TcpTest::Dstopts8),
        ] {
            let run = with_cpu(&mut || pair(cfg, sink, streams, false).map(SenderRun::Pair))?;
            out.insert(plain, run);
            if m.dstopts {
                let run = with_cpu(&mut || pair(cfg, sink, streams, true).map(SenderRun::Pair))?;
                out.insert(dstopts, run);
            }
        }
    }
    let counters = match pdms {
        Some((a, b)) => Some(ClientServer {
            client: progcost::stop_pdm(a)?.counters,
            server: progcost::stop_pdm(b)?.counters,
        }),
        None => None,
    };
    Ok((out, counters))
}

fn listening(ns: &str, port: &str) -> bool {
    hosts::in_ns(ns, &["ss", "-Hltn", &format!("sport = :{port}")])
        .is_ok_and(|o| !o.trim().is_empty())
}

/// `iperf3 -s` on the server host, listening.
pub fn iperf_server() -> Result<KillOnDrop> {
    let mut c = hosts::command_in(NS_B, "iperf3");
    c.args(["-s", "-B", ADDR_B, "-p", IPERF_PORT])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let p = KillOnDrop::spawn(&mut c)?;
    hosts::wait_for("iperf3 -s", Duration::from_secs(10), || {
        listening(NS_B, IPERF_PORT)
    })?;
    Ok(p)
}

/// What this reads of `iperf3 -J`.
#[derive(Deserialize)]
struct IperfJson {
    error: Option<String>,
    #[serde(default)]
    end: IperfEnd,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IperfEnd {
    sum_sent: IperfSum,
    sum_received: IperfSum,
    cpu_utilization_percent: IperfCpu,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IperfSum {
    bytes: Option<f64>,
    seconds: Option<f64>,
    bits_per_second: Option<f64>,
    retransmits: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IperfCpu {
    host_total: Option<f64>,
    remote_total: Option<f64>,
}

/// One iperf3 run from the client host: Gb/s, bytes, retransmits, CPU (iperf3's own
/// sender and receiver process CPU, which includes the softirq work done in their
/// context) per GB.
pub fn iperf_client(secs: f64, streams: usize) -> Result<Iperf> {
    let t = (secs.round() as u64).max(1).to_string();
    let p = streams.to_string();
    let mut last = None;
    for _ in 0..3 {
        match hosts::in_ns(
            NS_A,
            &[
                "iperf3", "-6", "-c", ADDR_B, "-p", IPERF_PORT, "-t", &t, "-P", &p, "-J",
            ],
        ) {
            Ok(out) => {
                let j: IperfJson = serde_json::from_str(&out).context("iperf3 -J output")?;
                if let Some(e) = j.error {
                    last = Some(anyhow::anyhow!("iperf3: {e}"));
                } else {
                    let (received, cpu) = (&j.end.sum_received, &j.end.cpu_utilization_percent);
                    let bytes = received.bytes.unwrap_or(0.0);
                    let secs = received.seconds.unwrap_or(f64::NAN);
                    let host = cpu.host_total.unwrap_or(f64::NAN);
                    let remote = cpu.remote_total.unwrap_or(f64::NAN);
                    let cpu_s = (host + remote) / 100.0 * secs;
                    return Ok(Iperf {
                        gbps: received.bits_per_second.unwrap_or(0.0) / 1e9,
                        bytes,
                        secs,
                        retransmits: j.end.sum_sent.retransmits,
                        cpu_host_percent: host,
                        cpu_remote_percent: remote,
                        cpu_s_per_gb: cpu_s / (bytes / 1e9),
                    });
                }
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("iperf3 failed three times: {:#}", last.expect("an error"))
}

/// Our sink on the server host, listening.
fn sink() -> Result<KillOnDrop> {
    let listen = format!("[{ADDR_B}]:{SINK_PORT}");
    let mut c = hosts::helper(NS_B, &["tcp-sink", "--listen", &listen])?;
    let p = KillOnDrop::spawn(&mut c)?;
    hosts::wait_for("tcp-sink", Duration::from_secs(10), || {
        listening(NS_B, &SINK_PORT.to_string())
    })?;
    Ok(p)
}

/// `bench-helper tcp-send`'s output.
#[derive(Deserialize)]
struct TcpSend {
    bytes: u64,
    secs: f64,
    gbps: f64,
    cpu_s: f64,
    mss: i64,
    dstopts: bool,
}

/// One run of our sender against the sink: Gb/s and CPU (sender + sink) per GB.
fn pair(cfg: &Cfg, sink: &KillOnDrop, streams: usize, dstopts: bool) -> Result<Pair> {
    let dst = format!("[{ADDR_B}]:{SINK_PORT}");
    let (secs, streams) = (cfg.tcp_secs.to_string(), streams.to_string());
    let mut args = vec![
        "tcp-send",
        "--dst",
        &dst,
        "--secs",
        &secs,
        "--streams",
        &streams,
    ];
    if dstopts {
        args.push("--dstopts");
    }
    let sink0 = hosts::cpu_seconds(sink.pid());
    let out = hosts::helper_json(NS_A, &args)?;
    let sent: TcpSend = serde_json::from_value(out).context("tcp-send's output")?;
    // Let the sink read what is still queued.
    std::thread::sleep(Duration::from_millis(100));
    let sink_cpu = hosts::cpu_seconds(sink.pid()) - sink0;
    let gb = sent.bytes as f64 / 1e9;
    Ok(Pair {
        bytes: sent.bytes,
        secs: sent.secs,
        gbps: sent.gbps,
        cpu_s: sent.cpu_s,
        sink_cpu_s: sink_cpu,
        cpu_s_per_gb: (sent.cpu_s + sink_cpu) / gb,
        mss: sent.mss,
        dstopts: sent.dstopts,
        retransmits: None,
    })
}

/// (busy, total, steal) jiffies of all CPUs, from /proc/stat. Steal is the time the
/// hypervisor ran something else while our CPUs wanted to run: the VM noise, measured.
fn machine_jiffies() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total, v.get(7).copied().unwrap_or(0))
}
