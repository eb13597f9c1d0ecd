//! TCP throughput and CPU per transferred GB: iperf3 (1 and 8 streams) and our own bulk
//! sender/sink pair, which can also carry the kernel's own insertion (sticky
//! IPV6_DSTOPTS with a 16-octet PDM-shaped header, MSS accounted) — the floor for adding
//! these 16 octets. Every mode runs on fresh hosts; repetitions go round all modes in
//! turn, so drift on a shared machine spreads over all of them alike.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Cfg,
    hosts::{self, ADDR_B, Hosts, KillOnDrop, NS_A, NS_B, OffloadsOff, Pdm},
    progcost, stats,
};

const IPERF_PORT: &str = "5201";
const SINK_PORT: u16 = 5300;

/// One configuration of both hosts.
pub struct Mode {
    pub name: &'static str,
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
        name: "baseline",
        what: "no PDM (offloads on)",
        pdm: None,
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: true,
    },
    Mode {
        name: "pdm_tc",
        what: "`pdm` default on both hosts (`--ingress auto`: TC ingress on a veth)",
        pdm: Some(&[]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        name: "pdm_xdp",
        what: "`pdm --ingress xdp` (XDP native ingress) on both hosts",
        pdm: Some(&["--ingress", "xdp"]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        name: "xdp_pass",
        what: "no PDM, an XDP program that only returns XDP_PASS on both hosts",
        pdm: None,
        offloads_off: false,
        null_xdp: true,
        pair: false,
        dstopts: false,
    },
    Mode {
        name: "baseline_offloads_off",
        what: "no PDM, TSO/GSO off and gso_max_segs 1 on both hosts",
        pdm: None,
        offloads_off: true,
        null_xdp: false,
        pair: true,
        dstopts: true,
    },
    Mode {
        name: "pdm_per_packet_tc",
        what: "`pdm --per-packet` on both hosts (TC ingress on a veth)",
        pdm: Some(&["--per-packet"]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        name: "pdm_per_packet",
        what: "`pdm --per-packet --ingress xdp` on both hosts (it turns TSO/GSO off)",
        pdm: Some(&["--per-packet", "--ingress", "xdp"]),
        offloads_off: false,
        null_xdp: false,
        pair: true,
        dstopts: false,
    },
    Mode {
        name: "xdp_pass_offloads_off",
        what: "no PDM, TSO/GSO off as above, and an XDP program that only returns XDP_PASS on both hosts",
        pdm: None,
        offloads_off: true,
        null_xdp: true,
        pair: false,
        dstopts: false,
    },
];

/// The measurements of one mode: iperf3 and the pair, 1 and 8 streams.
pub const TESTS: &[&str] = &[
    "iperf_1",
    "iperf_8",
    "pair_1",
    "pair_8",
    "dstopts_1",
    "dstopts_8",
];

/// Ratios reported: (label, numerator mode/test, denominator mode/test, target).
pub const RATIOS: &[(&str, &str, &str, Option<f64>)] = &[
    (
        "pdm --ingress xdp vs no PDM, iperf3 1 stream",
        "pdm_xdp/iperf_1",
        "baseline/iperf_1",
        Some(0.95),
    ),
    (
        "pdm --ingress xdp vs no PDM, iperf3 8 streams",
        "pdm_xdp/iperf_8",
        "baseline/iperf_8",
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs no PDM, iperf3 1 stream",
        "pdm_tc/iperf_1",
        "baseline/iperf_1",
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs no PDM, iperf3 8 streams",
        "pdm_tc/iperf_8",
        "baseline/iperf_8",
        Some(0.95),
    ),
    (
        "XDP_PASS-only program vs no PDM, iperf3 1 stream",
        "xdp_pass/iperf_1",
        "baseline/iperf_1",
        None,
    ),
    (
        "XDP_PASS-only program vs no PDM, iperf3 8 streams",
        "xdp_pass/iperf_8",
        "baseline/iperf_8",
        None,
    ),
    (
        "pdm --per-packet --ingress xdp vs no PDM (offloads off), iperf3 1 stream",
        "pdm_per_packet/iperf_1",
        "baseline_offloads_off/iperf_1",
        Some(0.95),
    ),
    (
        "pdm --per-packet --ingress xdp vs no PDM (offloads off), iperf3 8 streams",
        "pdm_per_packet/iperf_8",
        "baseline_offloads_off/iperf_8",
        Some(0.95),
    ),
    (
        "pdm --per-packet (TC ingress) vs no PDM (offloads off), iperf3 1 stream",
        "pdm_per_packet_tc/iperf_1",
        "baseline_offloads_off/iperf_1",
        Some(0.95),
    ),
    (
        "pdm --per-packet (TC ingress) vs no PDM (offloads off), iperf3 8 streams",
        "pdm_per_packet_tc/iperf_8",
        "baseline_offloads_off/iperf_8",
        Some(0.95),
    ),
    (
        "XDP_PASS-only program vs no PDM (offloads off), iperf3 1 stream",
        "xdp_pass_offloads_off/iperf_1",
        "baseline_offloads_off/iperf_1",
        None,
    ),
    (
        "XDP_PASS-only program vs no PDM (offloads off), iperf3 8 streams",
        "xdp_pass_offloads_off/iperf_8",
        "baseline_offloads_off/iperf_8",
        None,
    ),
    (
        "kernel IPV6_DSTOPTS vs plain, pair 1 stream",
        "baseline/dstopts_1",
        "baseline/pair_1",
        None,
    ),
    (
        "kernel IPV6_DSTOPTS vs plain, pair 8 streams",
        "baseline/dstopts_8",
        "baseline/pair_8",
        None,
    ),
    (
        "pdm --ingress xdp vs kernel IPV6_DSTOPTS, pair 1 stream",
        "pdm_xdp/pair_1",
        "baseline/dstopts_1",
        Some(0.95),
    ),
    (
        "pdm --ingress xdp vs kernel IPV6_DSTOPTS, pair 8 streams",
        "pdm_xdp/pair_8",
        "baseline/dstopts_8",
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs kernel IPV6_DSTOPTS, pair 1 stream",
        "pdm_tc/pair_1",
        "baseline/dstopts_1",
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs kernel IPV6_DSTOPTS, pair 8 streams",
        "pdm_tc/pair_8",
        "baseline/dstopts_8",
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs plain, pair 1 stream",
        "pdm_tc/pair_1",
        "baseline/pair_1",
        Some(0.95),
    ),
    (
        "pdm default (TC ingress) vs plain, pair 8 streams",
        "pdm_tc/pair_8",
        "baseline/pair_8",
        Some(0.95),
    ),
    (
        "kernel IPV6_DSTOPTS vs plain (offloads off), pair 1 stream",
        "baseline_offloads_off/dstopts_1",
        "baseline_offloads_off/pair_1",
        None,
    ),
    (
        "pdm --per-packet --ingress xdp vs kernel IPV6_DSTOPTS (offloads off), pair 1 stream",
        "pdm_per_packet/pair_1",
        "baseline_offloads_off/dstopts_1",
        Some(0.95),
    ),
    (
        "pdm --per-packet --ingress xdp vs kernel IPV6_DSTOPTS (offloads off), pair 8 streams",
        "pdm_per_packet/pair_8",
        "baseline_offloads_off/dstopts_8",
        Some(0.95),
    ),
    (
        "pdm --per-packet (TC ingress) vs kernel IPV6_DSTOPTS (offloads off), pair 1 stream",
        "pdm_per_packet_tc/pair_1",
        "baseline_offloads_off/dstopts_1",
        Some(0.95),
    ),
    (
        "pdm --per-packet (TC ingress) vs kernel IPV6_DSTOPTS (offloads off), pair 8 streams",
        "pdm_per_packet_tc/pair_8",
        "baseline_offloads_off/dstopts_8",
        Some(0.95),
    ),
];

pub fn run(cfg: &Cfg) -> Result<Value> {
    // runs[mode][test] = one result per repetition.
    let mut runs = json!({});
    let mut counters = json!({});
    for rep in 0..cfg.reps {
        for m in stats::round_order(MODES.len(), rep).map(|i| &MODES[i]) {
            let r = run_mode(cfg, m).with_context(|| format!("mode {}", m.name))?;
            for (test, v) in r.0.as_object().into_iter().flatten() {
                if runs[m.name][test].is_null() {
                    runs[m.name][test] = json!([]);
                }
                runs[m.name][test]
                    .as_array_mut()
                    .expect("array")
                    .push(v.clone());
            }
            if !r.1.is_null() {
                counters[m.name] = r.1;
            }
            eprintln!("bench: throughput rep {} {}: {}", rep + 1, m.name, r.0);
        }
    }
    let mut summary = json!({});
    for m in MODES {
        for test in TESTS {
            let Some(reps) = runs[m.name][*test].as_array() else {
                continue;
            };
            let field = |k: &str| -> Vec<f64> {
                reps.iter()
                    .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                    .collect()
            };
            summary[m.name][*test] = json!({
                "gbps": stats::summary(&field("gbps")),
                "cpu_s_per_gb": stats::summary(&field("cpu_s_per_gb")),
                "retransmits": stats::summary(&field("retransmits")),
                "pdm_cpu_s_per_gb": stats::summary(&field("pdm_cpu_s_per_gb")),
                "machine_busy_percent": stats::summary(&field("machine_busy_percent")),
                "steal_percent": stats::summary(&field("steal_percent")),
            });
        }
    }
    let mut ratios = Vec::new();
    for (label, num, den, target) in RATIOS {
        let get = |path: &str| -> Vec<f64> {
            let (m, t) = path.split_once('/').expect("mode/test");
            runs[m][t]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| r["gbps"].as_f64().unwrap_or(f64::NAN))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (n, d) = (get(num), get(den));
        let per_rep: Vec<f64> = n.iter().zip(&d).map(|(a, b)| a / b).collect();
        let (mn, md) = (
            stats::med(&stats::summary(&n)),
            stats::med(&stats::summary(&d)),
        );
        let ratio = mn / md;
        ratios.push(json!({
            "label": label, "num": num, "den": den,
            "ratio": ratio,
            "per_rep": stats::summary(&per_rep),
            "target": target,
            "met": target.map(|t| ratio >= t),
        }));
    }
    Ok(json!({
        "modes": MODES.iter().map(|m| json!({ "name": m.name, "what": m.what })).collect::<Vec<_>>(),
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "pdm_counters_last_rep": counters,
    }))
}

/// One mode on fresh hosts: its tests, and the client's and server's pdm counters.
fn run_mode(cfg: &Cfg, m: &Mode) -> Result<(Value, Value)> {
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
    let with_cpu = |f: &mut dyn FnMut() -> Result<Value>| -> Result<Value> {
        let l0: f64 = pids.iter().map(|&p| hosts::cpu_seconds(p)).sum();
        let m0 = machine_jiffies();
        let mut v = f()?;
        let l1: f64 = pids.iter().map(|&p| hosts::cpu_seconds(p)).sum();
        let m1 = machine_jiffies();
        let gb = v["bytes"].as_f64().unwrap_or(0.0) / 1e9;
        if !pids.is_empty() {
            v["pdm_cpu_s"] = json!(l1 - l0);
            v["pdm_cpu_s_per_gb"] = json!((l1 - l0) / gb);
        }
        let total = (m1.1 - m0.1).max(1) as f64;
        v["machine_busy_percent"] = json!(100.0 * (m1.0 - m0.0) as f64 / total);
        v["steal_percent"] = json!(100.0 * (m1.2 - m0.2) as f64 / total);
        Ok(v)
    };
    let mut out = json!({});
    for streams in [1, 8] {
        out[format!("iperf_{streams}")] = with_cpu(&mut || iperf_client(cfg.tcp_secs, streams))?;
    }
    if let Some(sink) = &_sink {
        for streams in [1, 8] {
            out[format!("pair_{streams}")] = with_cpu(&mut || pair(cfg, sink, streams, false))?;
            if m.dstopts {
                out[format!("dstopts_{streams}")] =
                    with_cpu(&mut || pair(cfg, sink, streams, true))?;
            }
        }
    }
    let counters = match pdms {
        Some((a, b)) => json!({ "client": a.stop()?["counters"], "server": b.stop()?["counters"] }),
        None => Value::Null,
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

/// One iperf3 run from the client host: Gb/s, bytes, retransmits, CPU (iperf3's own
/// sender and receiver process CPU, which includes the softirq work done in their
/// context) per GB.
pub fn iperf_client(secs: f64, streams: usize) -> Result<Value> {
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
                let j: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
                if let Some(e) = j["error"].as_str() {
                    last = Some(anyhow::anyhow!("iperf3: {e}"));
                } else {
                    let end = &j["end"];
                    let bytes = end["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
                    let secs = end["sum_received"]["seconds"].as_f64().unwrap_or(f64::NAN);
                    let cpu = &end["cpu_utilization_percent"];
                    let cpu_s = (cpu["host_total"].as_f64().unwrap_or(f64::NAN)
                        + cpu["remote_total"].as_f64().unwrap_or(f64::NAN))
                        / 100.0
                        * secs;
                    return Ok(json!({
                        "gbps": end["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
                        "bytes": bytes,
                        "secs": secs,
                        "retransmits": end["sum_sent"]["retransmits"],
                        "cpu_host_percent": cpu["host_total"],
                        "cpu_remote_percent": cpu["remote_total"],
                        "cpu_s_per_gb": cpu_s / (bytes / 1e9),
                    }));
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

/// One run of our sender against the sink: Gb/s and CPU (sender + sink) per GB.
fn pair(cfg: &Cfg, sink: &KillOnDrop, streams: usize, dstopts: bool) -> Result<Value> {
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
    let mut r = hosts::helper_json(NS_A, &args)?;
    // Let the sink read what is still queued.
    std::thread::sleep(Duration::from_millis(100));
    let sink_cpu = hosts::cpu_seconds(sink.pid()) - sink0;
    let cpu = r["cpu_s"].as_f64().unwrap_or(f64::NAN) + sink_cpu;
    let gb = r["bytes"].as_f64().unwrap_or(0.0) / 1e9;
    r["sink_cpu_s"] = json!(sink_cpu);
    r["cpu_s_per_gb"] = json!(cpu / gb);
    r["retransmits"] = Value::Null;
    Ok(r)
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
