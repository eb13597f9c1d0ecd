//! BENCHMARKS.md from the results object.

use std::fmt::Write as _;

use serde_json::Value;

use super::{rr, throughput};

/// A number with `p` decimals, or "–".
fn num(v: &Value, p: usize) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.p$}"),
        _ => "–".into(),
    }
}

/// "median (min–max)" of a summary; just the median when there is one value.
fn spread(s: &Value, p: usize) -> String {
    let n = s["values"].as_array().map_or(0, Vec::len);
    if s["median"].is_null() {
        return "–".into();
    }
    if n <= 1 {
        return num(&s["median"], p);
    }
    format!(
        "{} ({}–{})",
        num(&s["median"], p),
        num(&s["min"], p),
        num(&s["max"], p)
    )
}

fn mark(met: &Value) -> &'static str {
    match met.as_bool() {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "",
    }
}

/// "median (min–max)" ns per run over the windows, and the runs in all of them.
fn ns_run(progs: &Value, host: &str, prog: &str) -> (String, String) {
    let p = &progs[host][prog];
    if p.is_null() {
        return ("–".into(), "0".into());
    }
    let n = p["values"].as_array().map_or(0, Vec::len);
    let v = if n > 1 {
        format!(
            "{} ({}–{})",
            num(&p["ns_per_run"], 1),
            num(&p["ns_min"], 1),
            num(&p["ns_max"], 1)
        )
    } else {
        num(&p["ns_per_run"], 1)
    };
    (v, p["runs"].to_string())
}

pub fn render(r: &Value) -> String {
    let mut s = String::new();
    let quick = r["quick"].as_bool().unwrap_or(false);
    let m = &r["machine"];
    let cmdline = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let _ = writeln!(s, "# pdm benchmarks\n");
    if quick {
        let _ = writeln!(
            s,
            "> **Quick run** (`--quick`: one repetition, 1 s transfers): checks the harness; the figures are indicative only. The full run (`cargo xtask bench`: 3 repetitions, 10 s transfers) replaces this file.\n"
        );
    }
    if let Some(only) = r["only"].as_array() {
        let parts: Vec<&str> = only.iter().filter_map(Value::as_str).collect();
        let _ = writeln!(
            s,
            "> **Partial run** (`--only {}`): only these parts were measured in this run (machine line below); the other tables are kept from the previous run's bench-results.json.\n",
            parts.join(",")
        );
    }
    let _ = writeln!(
        s,
        "Written by `{cmdline}` on test hosts it creates: two network namespaces (`pdm-bench-client`, `pdm-bench-server`) joined by a veth pair, addresses fd0b::1 and fd0b::2, MTU 1500. Figures are measured, never asserted by tests. Raw data: `bench-results.json`.\n"
    );
    let _ = writeln!(
        s,
        "Machine: {} ({} cores), kernel {}; load average at start {}; {}; {}; {}. Wall time {} s.\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        m["loadavg_at_start"].as_str().unwrap_or("?"),
        m["iperf3"].as_str().unwrap_or("?"),
        m["bpftool"].as_str().unwrap_or("?"),
        m["date"].as_str().unwrap_or("?"),
        num(&r["wall_secs"]["total"], 0),
    );
    let _ = writeln!(s, "`pdm check`: {}\n", r["check"].as_str().unwrap_or("?"));
    let floors = Floors::of(r);
    let _ = writeln!(
        s,
        "This machine is a VM whose speed drifts by up to about 1.5× over a quarter of an hour (while this suite was developed, a TC egress program that returns at once measured anywhere from 31 to 48 ns per run under bpf_stats, and pdm's programs moved with it). Compare figures within one run: ratios and the \"less its own\" figures hold across such drifts better than absolute nanoseconds. In this run that program took {} ns per run.\n",
        floors.egress.map_or("?".into(), |f| format!("{f:.1}")),
    );

    targets(&mut s, r);
    progcost(&mut s, &r["progcost"]);
    profile(&mut s, &r["progcost"]);
    throughput(&mut s, &r["throughput"]);
    rr_section(&mut s, &r["rr"]);
    scaling(&mut s, &r["scaling"]);
    loader(&mut s, &r["loader_cpu"]);
    limits(&mut s, r);
    commands(&mut s, r);
    s
}

fn error(s: &mut String, v: &Value) -> bool {
    if let Some(e) = v["error"].as_str() {
        let _ = writeln!(s, "**This benchmark failed:** `{e}`\n");
        return true;
    }
    v.is_null()
}

/// Median of the egress / ingress ns per run over the small-UDP windows.
fn udp_cost(r: &Value, host: &str, prog: &str, modes: &[&str]) -> Value {
    let mut v: Vec<f64> = modes
        .iter()
        .filter_map(|m| r["progcost"][*m]["udp"]["progs"][host][prog]["ns_per_run"].as_f64())
        .collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        Value::Null
    } else {
        super::stats::quantile_sorted(&v, 0.5).into()
    }
}

/// Share of one core the programs of a (merged) window took: Σ runs × ns per run over
/// the windows' time.
fn progs_core_percent(w: &Value) -> Value {
    let mut ns = 0.0;
    for (_, ps) in w["progs"].as_object().into_iter().flatten() {
        for (_, p) in ps.as_object().into_iter().flatten() {
            ns += p["runs"].as_f64().unwrap_or(0.0) * p["ns_per_run"].as_f64().unwrap_or(0.0);
        }
    }
    let secs: f64 = match w["traffic"]["windows"].as_array() {
        Some(ws) => ws.iter().filter_map(|t| t["secs"].as_f64()).sum(),
        None => w["traffic"]["secs"].as_f64().unwrap_or(f64::NAN),
    };
    (100.0 * ns / 1e9 / secs).into()
}

/// bpf_stats' ns per run of the reference program that only opens 16 octets (small
/// UDP), if this run measured it.
fn adjust_room_only(r: &Value) -> Option<f64> {
    r["progcost"]["adjust_room_only"]["udp"]["progs"]["client"]["ref_adjust_room"]["ns_per_run"]
        .as_f64()
}

/// What one `bpf_ktime_get_ns` costs here: the reference XDP program that only reads the
/// clock (small UDP) less the XDP floor, if this run measured it.
fn clock_cost(r: &Value, floors: &Floors) -> Option<f64> {
    r["progcost"]["clock_only"]["udp"]["progs"]["server"]["ref_clock_xdp"]["ns_per_run"]
        .as_f64()
        .zip(floors.xdp)
        .map(|(c, f)| c - f)
}

/// The per-packet targets of the issue, in ns.
const EGRESS_TARGET_NS: f64 = 150.0;
const INGRESS_TARGET_NS: f64 = 80.0;

/// bpf_stats' own cost per run, per hook: the null programs' run time.
struct Floors {
    egress: Option<f64>,
    xdp: Option<f64>,
    tc: Option<f64>,
}

impl Floors {
    fn of(r: &Value) -> Self {
        let p = &r["progcost"]["null"];
        Floors {
            egress: p["xdp"]["udp"]["progs"]["client"]["null_tc_egress"]["ns_per_run"].as_f64(),
            xdp: p["xdp"]["udp"]["progs"]["server"]["null_xdp"]["ns_per_run"].as_f64(),
            tc: p["tc-ingress"]["udp"]["progs"]["server"]["null_tc_ingress"]["ns_per_run"].as_f64(),
        }
    }
}

fn targets(s: &mut String, r: &Value) {
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "For context, published figures: an eBPF PDM (draft-elkins-ebpf-pdm-ebpf, 2024) added 1.28 µs per packet on egress and cost 4.1 % of TCP throughput; an out-of-tree kernel PDM took 0.707 µs per insert and 1.5 % of throughput.\n"
    );
    let _ = writeln!(s, "| target | measured | met |\n|---|---|---|");
    // bpf_stats times each run with two clock reads of its own; a program that returns
    // at once, attached the same way, measures that. A program's own run time is what
    // bpf_stats gives less that floor.
    let floors = Floors::of(r);
    let rows = [
        (
            "egress",
            "",
            "client",
            "pdm_egress",
            &["xdp", "tc"][..],
            floors.egress,
            EGRESS_TARGET_NS,
            None,
        ),
        (
            "ingress",
            ", XDP",
            "server",
            "pdm_ingress_xdp",
            &["xdp"],
            floors.xdp,
            INGRESS_TARGET_NS,
            Some("xdp_udp_pdm"),
        ),
        (
            "ingress",
            ", TC",
            "server",
            "pdm_ingress_tc",
            &["tc"],
            floors.tc,
            INGRESS_TARGET_NS,
            Some("tc_udp_pdm"),
        ),
    ];
    let adjust_only = adjust_room_only(r);
    let clock = clock_cost(r, &floors);
    let clock_note = |own: f64| {
        clock.map_or(String::new(), |c| {
            format!(
                "; the clock read alone takes {c:.1} ns (an XDP program that only reads it, less the XDP floor), so {:.1} ns is pdm's own besides the clock",
                own - c
            )
        })
    };
    for (side, hook, host, prog, modes, floor, target, testrun) in rows {
        let stats = udp_cost(r, host, prog, modes);
        let own: Value = stats.as_f64().zip(floor).map(|(v, f)| v - f).into();
        let mut testrun = testrun
            .and_then(|case| r["testrun"][case]["median_ns"].as_f64())
            .map_or(String::new(), |v| {
                format!("; BPF_PROG_TEST_RUN, no bpf_stats: {v:.0} ns")
            });
        if side == "egress"
            && let (Some(e), Some(a)) = (stats.as_f64(), adjust_only)
        {
            testrun = format!(
                "; a program that only calls `bpf_skb_adjust_room` takes {a:.1} ns here, so pdm's own part is {:.1} ns{}",
                e - a,
                clock_note(e - a)
            );
        } else if let Some(own) = own.as_f64() {
            testrun += &clock_note(own);
        }
        let _ = writeln!(
            s,
            "| {side} program ≤ {target:.0} ns per packet (small UDP){hook} | **{} ns**: bpf_stats {} ns less its own {} ns (null program){testrun} | {} |",
            num(&own, 1),
            num(&stats, 1),
            floor.map_or("–".into(), |f| format!("{f:.1}")),
            mark(&own.as_f64().map(|x| x <= target).into())
        );
    }
    // TCP bulk: one run per GSO packet on egress and per GRO packet on TC ingress, so
    // the cost per packet on the wire is the window's run time over its segments.
    for (side, host, prog) in [
        ("egress", "client", "pdm_egress"),
        ("ingress", "server", "pdm_ingress_tc"),
    ] {
        let w = &r["progcost"]["tc"]["tcp"];
        let p = &w["progs"][host][prog];
        let (Some(ns), Some(runs), Some(segs)) = (
            p["run_time_ns"].as_u64(),
            p["runs"].as_u64(),
            w["traffic"]["segments_sent"].as_u64(),
        ) else {
            continue;
        };
        let target = if side == "egress" {
            EGRESS_TARGET_NS
        } else {
            INGRESS_TARGET_NS
        };
        let per_seg = ns as f64 / segs.max(1) as f64;
        let _ = writeln!(
            s,
            "| {side} program ≤ {target:.0} ns per packet (TCP bulk, default: TC ingress; per wire segment) | **{per_seg:.1} ns**: {runs} runs ({:.1} ns each, bpf_stats) for {segs} TCP segments sent (`Tcp: OutSegs`), {:.1} segments per run | {} |",
            ns as f64 / runs.max(1) as f64,
            segs as f64 / runs.max(1) as f64,
            mark(&(per_seg <= target).into())
        );
    }
    for q in r["throughput"]["ratios"].as_array().into_iter().flatten() {
        if q["target"].is_null() {
            continue;
        }
        let _ = writeln!(
            s,
            "| TCP throughput ≥ 95 %: {} | {} % | {} |",
            q["label"].as_str().unwrap_or("?"),
            num(&(q["ratio"].as_f64().unwrap_or(f64::NAN) * 100.0).into(), 1),
            mark(&q["met"])
        );
    }
    if let Some(p) = r["scaling"]["points"]
        .as_array()
        .and_then(|a| a.iter().max_by_key(|p| p["flows"].as_u64().unwrap_or(0)))
    {
        let errs = map_errors(p);
        // Errors are failed map operations; a flow evicted to make room for another is
        // not one (it is counted, and comes back with its next packet), so residency is
        // shown beside, not judged.
        let client = &p["maps"]["client"];
        let resident = client["entries"].as_f64().zip(p["flows"].as_f64());
        let load = p["flows"]
            .as_f64()
            .zip(client["map"]["max_entries"].as_f64());
        let _ = writeln!(
            s,
            "| {} flows with no map errors | {} errors; {} flows resident in the client's table ({}) at {} load, the rest evicting each other, each eviction counted | {} |",
            p["flows"],
            errs,
            client["entries"],
            resident.map_or("?".into(), |(e, f)| format!("{:.1} %", 100.0 * e / f)),
            load.map_or("?".into(), |(f, n)| format!("{:.1} %", 100.0 * f / n)),
            mark(&Value::from(errs == 0))
        );
        for host in ["client", "server"] {
            let m = &p["maps"][host];
            let live = m["bytes_per_live_flow"].as_f64();
            // The table's fixed part (a page) is not per flow: judge the slot size.
            let fixed = m["map"]["bytes_memlock"]
                .as_f64()
                .zip(m["map"]["max_entries"].as_f64());
            let per_slot_marginal = fixed.map(|(mem, n)| ((mem - 4096.0) / n).floor());
            let _ = writeln!(
                s,
                "| ≤ 128 bytes of map memory per flow ({host}, {} flows) | {} B per slot (+ 4 KiB per table); {} B per live flow, {} of the flows resident | per slot {}, per live flow {} |",
                p["flows"],
                per_slot_marginal.map_or("?".into(), |v| format!("{v:.0}")),
                live.map_or("?".into(), |v| format!("{v:.1}")),
                m["entries"],
                mark(&Value::from(per_slot_marginal.map(|x| x <= 128.0))),
                mark(&Value::from(live.map(|x| x <= 128.0))),
            );
        }
    }
    let _ = writeln!(s);
}

fn map_errors(p: &Value) -> u64 {
    let c = |h: &str, k: &str| p[h]["counters"][k].as_u64().unwrap_or(0);
    c("client_counters", "egress_skip_flow_map_full")
        + c("client_counters", "ingress_skip_flow_map_full")
        + c("server_counters", "egress_skip_flow_map_full")
        + c("server_counters", "ingress_skip_flow_map_full")
}

fn progcost(s: &mut String, p: &Value) {
    let _ = writeln!(s, "## Run time per packet of each program\n");
    if error(s, p) {
        return;
    }
    let _ = writeln!(
        s,
        "`kernel.bpf_stats_enabled=1` only during each window (restored after; a BPF_ENABLE_STATS descriptor is held too, so nothing else turning the sysctl off can cut a window short); run_time_ns / run_cnt of each program as deltas over the window, median (min–max) over the repetitions' windows, programs identified by the ids the pdm process holds. The windows are taken in rounds: each round measures every setup below once (pdm with XDP, pdm with TC, the null programs, the adjust-room and clock references), each on fresh hosts, backwards every other round, so that this VM's drift reaches all setups alike. Small UDP: one flow, 18-byte payload, sendmmsg as fast as the sender goes (rates in the table below). TCP bulk: iperf3, 1 stream. Egress runs on TCP see GSO super-packets (one run for up to 64 KB). bpf_stats itself adds roughly 2 × 20 ns to every run; the null programs (return at once, attached the same way) show that floor, and “− floor” is a program's small-UDP run time less its hook's null program. Without pdm there is no program: n/a.\n"
    );
    let _ = writeln!(
        s,
        "| setup | program (host) | small UDP: ns/run | − floor | runs | TCP bulk: ns/run | runs |\n|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(s, "| no PDM (baseline) | – | n/a | | | n/a | |");
    // The same hook's null program on small UDP: the hook's and bpf_stats' own cost.
    let floor = |prog: &str| -> f64 {
        let (key, host, null) = match prog {
            "pdm_egress" => ("xdp", "client", "null_tc_egress"),
            "pdm_ingress_xdp" => ("xdp", "server", "null_xdp"),
            _ => ("tc-ingress", "server", "null_tc_ingress"),
        };
        p["null"][key]["udp"]["progs"][host][null]["ns_per_run"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    type Rows<'a> = &'a [(&'a str, &'a str, &'a [(&'a str, &'a str, &'a str)])];
    let rows: Rows = &[
        (
            "pdm --ingress xdp",
            "xdp",
            &[
                ("client", "pdm_egress", "egress (client, data)"),
                ("server", "pdm_ingress_xdp", "XDP ingress (server, data)"),
                ("server", "pdm_egress", "egress (server, ACKs/errors)"),
                (
                    "client",
                    "pdm_ingress_xdp",
                    "XDP ingress (client, ACKs/errors)",
                ),
            ],
        ),
        (
            "pdm default (TC ingress)",
            "tc",
            &[
                ("client", "pdm_egress", "egress (client, data)"),
                ("server", "pdm_ingress_tc", "TC ingress (server, data)"),
                ("server", "pdm_egress", "egress (server, ACKs/errors)"),
                (
                    "client",
                    "pdm_ingress_tc",
                    "TC ingress (client, ACKs/errors)",
                ),
            ],
        ),
    ];
    // With `--baseline REV`: pdm as built from REV, TC ingress, in the same rounds.
    let baseline_label = p["baseline"]["rev"]
        .as_str()
        .map(|rev| format!("baseline: pdm at {rev} (TC ingress)"));
    let baseline_rows;
    let mut all: Vec<(&str, &Value, &[(&str, &str, &str)])> = rows
        .iter()
        .map(|(setup, key, progs)| (*setup, &p[*key], *progs))
        .collect();
    if let Some(label) = &baseline_label {
        baseline_rows = rows[1].2;
        all.push((label, &p["baseline"]["tc"], baseline_rows));
    }
    for (setup, v, progs) in all {
        for (host, prog, label) in progs {
            let (u, un) = ns_run(&v["udp"]["progs"], host, prog);
            let (t, tn) = ns_run(&v["tcp"]["progs"], host, prog);
            let net = num(
                &(v["udp"]["progs"][*host][*prog]["ns_per_run"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
                    - floor(prog))
                .into(),
                1,
            );
            let _ = writeln!(s, "| {setup} | {label} | {u} | {net} | {un} | {t} | {tn} |");
        }
    }
    for (key, prog, label) in [
        ("xdp", "null_tc_egress", "null TC egress (client)"),
        ("xdp", "null_xdp", "null XDP (server)"),
        ("tc-ingress", "null_tc_ingress", "null TC ingress (server)"),
    ] {
        let host = if prog == "null_tc_egress" {
            "client"
        } else {
            "server"
        };
        let (u, un) = ns_run(&p["null"][key]["udp"]["progs"], host, prog);
        let (t, tn) = ns_run(&p["null"][key]["tcp"]["progs"], host, prog);
        let _ = writeln!(
            s,
            "| reference: return at once | {label} | {u} | | {un} | {t} | {tn} |"
        );
    }
    for (key, host, prog, setup, hook) in [
        (
            "adjust_room_only",
            "client",
            "ref_adjust_room",
            "reference: only `bpf_skb_adjust_room`",
            "pdm_egress",
        ),
        (
            "clock_only",
            "server",
            "ref_clock_xdp",
            "reference: only `bpf_ktime_get_ns`",
            "pdm_ingress_xdp",
        ),
    ] {
        let progs = &p[key]["udp"]["progs"];
        if progs[host][prog].is_null() {
            continue;
        }
        let (u, un) = ns_run(progs, host, prog);
        let net = num(
            &(progs[host][prog]["ns_per_run"].as_f64().unwrap_or(f64::NAN) - floor(hook)).into(),
            1,
        );
        let _ = writeln!(s, "| {setup} | {prog} ({host}) | {u} | {net} | {un} | | |");
    }
    if let Some(rev) = p["baseline"]["rev"].as_str() {
        let cost = |v: &Value, host: &str, prog: &str| {
            v["udp"]["progs"][host][prog]["ns_per_run"]
                .as_f64()
                .unwrap_or(f64::NAN)
                - floor(prog)
        };
        let _ = writeln!(
            s,
            "\nThis tree against {rev}, measured in the same rounds (small UDP, less the hook's floor): TC ingress {} ns against {} ns ({}×), egress {} ns against {} ns ({}×).",
            num(&cost(&p["tc"], "server", "pdm_ingress_tc").into(), 1),
            num(
                &cost(&p["baseline"]["tc"], "server", "pdm_ingress_tc").into(),
                1
            ),
            num(
                &(cost(&p["tc"], "server", "pdm_ingress_tc")
                    / cost(&p["baseline"]["tc"], "server", "pdm_ingress_tc"))
                .into(),
                2
            ),
            num(&cost(&p["tc"], "client", "pdm_egress").into(), 1),
            num(
                &cost(&p["baseline"]["tc"], "client", "pdm_egress").into(),
                1
            ),
            num(
                &(cost(&p["tc"], "client", "pdm_egress")
                    / cost(&p["baseline"]["tc"], "client", "pdm_egress"))
                .into(),
                2
            ),
        );
    }
    let _ = writeln!(s, "\nTraffic in each window:\n");
    let _ = writeln!(
        s,
        "| setup | small UDP: packets/s sent | programs' CPU (% of one core) | TCP bulk: Gb/s | programs' CPU (% of one core) |\n|---|---|---|---|---|"
    );
    let mut traffic = vec![
        ("pdm --ingress xdp", &p["xdp"]),
        ("pdm default (TC ingress)", &p["tc"]),
        ("null programs, XDP", &p["null"]["xdp"]),
        ("null programs, TC ingress", &p["null"]["tc-ingress"]),
    ];
    if let Some(label) = &baseline_label {
        traffic.push((label, &p["baseline"]["tc"]));
    }
    for (label, v) in traffic {
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} |",
            num(&v["udp"]["traffic"]["pps"], 0),
            num(&progs_core_percent(&v["udp"]), 1),
            num(&v["tcp"]["traffic"]["gbps"], 2),
            num(&progs_core_percent(&v["tcp"]), 1)
        );
    }
    let _ = writeln!(s);
}

fn throughput(s: &mut String, t: &Value) {
    let _ = writeln!(s, "## TCP throughput and CPU per GB\n");
    if error(s, t) {
        return;
    }
    let _ = writeln!(
        s,
        "Client → server, fresh hosts for every mode; repetitions go round all modes in turn, in the order listed below and backwards every other repetition (each mode sits next to what it is compared with, so a drift over a round reaches both sides alike). iperf3: `iperf3 -c fd0b::2 -t T -P 1|8 -J`, CPU = iperf3's own sender + receiver process CPU (user + system, which includes the softirq work done in their context) per GB received. Pair: our bulk sender (`cargo xtask bench-helper tcp-send`, 128 KiB writes) and sink, CPU = sender + sink process CPU; `dstopts` = the same sender with the sticky `IPV6_DSTOPTS` option carrying a 16-octet PDM-shaped header, which the kernel inserts itself with the MSS accounted (the floor for adding these 16 octets). Machine busy and steal: from /proc/stat over each test, all CPUs; steal is time the hypervisor gave our vCPUs to something else, the part of this VM's noise that can be seen from inside. Median (min–max over repetitions).\n"
    );
    let _ = writeln!(s, "Modes:\n");
    for m in throughput::MODES {
        let _ = writeln!(s, "- `{}`: {}", m.name, m.what);
    }
    let _ = writeln!(
        s,
        "\n| mode | test | Gb/s | CPU s per GB | retransmits | pdm loaders' CPU s per GB | machine busy % | steal % |\n|---|---|---|---|---|---|---|---|"
    );
    for m in throughput::MODES {
        for test in throughput::TESTS {
            let v = &t["summary"][m.name][*test];
            if v.is_null() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                m.name,
                test.replace('_', " × "),
                spread(&v["gbps"], 2),
                spread(&v["cpu_s_per_gb"], 3),
                spread(&v["retransmits"], 0),
                spread(&v["pdm_cpu_s_per_gb"], 3),
                spread(&v["machine_busy_percent"], 0),
                spread(&v["steal_percent"], 1)
            );
        }
    }
    let _ = writeln!(
        s,
        "\nRatios of medians measured in this run (per-repetition ratios min–max):\n"
    );
    let _ = writeln!(
        s,
        "| comparison | ratio | per repetition | target | met |\n|---|---|---|---|---|"
    );
    for q in t["ratios"].as_array().into_iter().flatten() {
        let pct = |v: &Value| num(&(v.as_f64().unwrap_or(f64::NAN) * 100.0).into(), 1);
        let per = &q["per_rep"];
        let per_s = if per["values"].as_array().map_or(0, Vec::len) > 1 {
            format!("{}–{} %", pct(&per["min"]), pct(&per["max"]))
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} % | {} | {} | {} |",
            q["label"].as_str().unwrap_or("?"),
            pct(&q["ratio"]),
            per_s,
            q["target"]
                .as_f64()
                .map_or(String::new(), |x| format!("≥ {:.0} %", x * 100.0)),
            mark(&q["met"])
        );
    }
    let c = &t["pdm_counters_last_rep"];
    let _ = writeln!(
        s,
        "\npdm's counters in the last repetition (client / server): packets sent without PDM because too big: {}; adjust failures: {}; SYNs with MSS clamped: {}.\n",
        PDM_MODES
            .iter()
            .map(|m| format!(
                "{m} {}/{}",
                c[*m]["client"]["egress_skip_too_big"], c[*m]["server"]["egress_skip_too_big"]
            ))
            .collect::<Vec<_>>()
            .join(", "),
        PDM_MODES
            .iter()
            .map(|m| format!(
                "{m} {}/{}",
                c[*m]["client"]["egress_skip_adjust_failed"],
                c[*m]["server"]["egress_skip_adjust_failed"]
            ))
            .collect::<Vec<_>>()
            .join(", "),
        PDM_MODES
            .iter()
            .map(|m| format!(
                "{m} {}/{}",
                c[*m]["client"]["ingress_mss_clamped"], c[*m]["server"]["ingress_mss_clamped"]
            ))
            .collect::<Vec<_>>()
            .join(", "),
    );
}

/// The throughput modes that run pdm.
const PDM_MODES: [&str; 4] = ["pdm_xdp", "pdm_tc", "pdm_per_packet", "pdm_per_packet_tc"];

fn rr_section(s: &mut String, r: &Value) {
    let _ = writeln!(s, "## UDP request/response\n");
    if error(s, r) {
        return;
    }
    let _ = writeln!(
        s,
        "One 32-byte datagram from the client, echoed by the server, the next sent when the echo arrives (`bench-helper udp-rr`, first 50 exchanges not counted); pdm on both hosts or on neither, alternating within each repetition. Median (min–max over repetitions) of each repetition's p50 and p99; added = pdm − no PDM, per repetition.\n"
    );
    let _ = writeln!(
        s,
        "| mode | p50 µs | p99 µs | added p50 µs | added p99 µs |\n|---|---|---|---|---|"
    );
    for (name, _) in rr::MODES {
        let v = &r["summary"][*name];
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            spread(&v["p50_us"], 2),
            spread(&v["p99_us"], 2),
            spread(&v["added_p50_us"], 2),
            spread(&v["added_p99_us"], 2)
        );
    }
    let _ = writeln!(s);
}

fn scaling(s: &mut String, sc: &Value) {
    let _ = writeln!(s, "## Flow scaling\n");
    if error(s, sc) {
        return;
    }
    let _ = writeln!(
        s,
        "The client sends small UDP datagrams cycling through N distinct 5-tuples (source ports 20000.. × destination ports 30000..), sendmmsg, `pdm --ingress xdp` on both hosts with `--max-flows` = N rounded up to a power of two (at least 65536). ns/packet from bpf_stats: first pass (every packet creates an entry) and steady (a window of the same cycle once every entry exists). Entries: the flows in the kernel's table (it is mapped and its valid slots counted). Memory: `bytes_memlock` of the FLOWS map (`bpftool map show`, the kernel's own accounting) per slot (÷ max_entries) and per live flow (÷ entries). Map errors: pdm's `*_flow_map_full` counters on both hosts.\n"
    );
    let _ = writeln!(
        s,
        "| flows | max_flows | egress ns/pkt: create | steady | ingress (XDP) ns/pkt: create | steady | entries client / server | map bytes per slot | per live flow | map errors | packets/s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in sc["points"].as_array().into_iter().flatten() {
        let e = |phase: &str, host: &str, prog: &str| {
            num(&p[phase]["progs"][host][prog]["ns_per_run"], 1)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            p["flows"],
            p["max_flows"],
            e("create", "client", "pdm_egress"),
            e("steady", "client", "pdm_egress"),
            e("create", "server", "pdm_ingress_xdp"),
            e("steady", "server", "pdm_ingress_xdp"),
            p["maps"]["client"]["entries"],
            p["maps"]["server"]["entries"],
            num(&p["maps"]["client"]["bytes_per_slot"], 1),
            num(&p["maps"]["client"]["bytes_per_live_flow"], 1),
            map_errors(p),
            num(&p["steady"]["traffic"]["pps"], 0)
        );
    }
    if let Some(p) = sc["points"].as_array().and_then(|a| a.last()) {
        let m = &p["maps"]["client"]["map"];
        let _ = writeln!(
            s,
            "\nFLOWS map: type {}, key {} B, value {} B, flags {}.\n",
            m["type"], m["bytes_key"], m["bytes_value"], m["flags"]
        );
    }
}

fn loader(s: &mut String, l: &Value) {
    let _ = writeln!(s, "## Loader CPU with many active flows\n");
    if error(s, l) {
        return;
    }
    let _ = writeln!(
        s,
        "{} UDP flows from the client, one request per second each, answered by an echo server on the server host; pdm on both hosts (TC ingress), refreshing every second. CPU of the client-side loader over {} s, from /proc/PID/stat (target: under 2 % of one core).\n",
        l["flows"], l["seconds"]
    );
    let _ = writeln!(s, "| output | CPU (% of one core) | RSS |\n|---|---|---|");
    for (mode, name) in [
        ("view", "live view (tmux)"),
        ("json", "NDJSON to /dev/null"),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} KiB |",
            num(&l[mode]["cpu_percent_of_one_core"], 2),
            l[mode]["rss_kib"]
        );
    }
    let _ = writeln!(s);
}

fn commands(s: &mut String, r: &Value) {
    let _ = writeln!(s, "## How it was run\n");
    let c = &r["config"];
    let _ = writeln!(
        s,
        "```sh\n{}\n```\n",
        if r["quick"].as_bool().unwrap_or(false) {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        }
    );
    let _ = writeln!(
        s,
        "{} repetition(s); TCP transfers {} s; BPF run-time windows {} s; {} round trips per request/response repetition; flow-scaling steady windows {} s; loader measured over {} s. Wall time per benchmark (s): {}.\n",
        c["reps"],
        c["tcp_secs"],
        c["cost_secs"],
        c["rr_count"],
        c["scale_secs"],
        c["loader_secs"],
        r["wall_secs"]
            .as_object()
            .map(|o| o
                .iter()
                .map(|(k, v)| format!("{k} {}", num(v, 0)))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "Inside the hosts (`ip netns exec pdm-bench-client|pdm-bench-server ...`): `target/release/pdm run --iface bench0 --json [--ingress xdp|tc] [--per-packet] [--max-flows N]`; `iperf3 -s -B fd0b::2` / `iperf3 -6 -c fd0b::2 -t T -P 1|8 -J`; `cargo xtask bench-helper tcp-sink|tcp-send [--dstopts]|udp-echo|udp-rr|udp-flood|null-prog` (the xtask binary itself). Offloads for the `offloads_off` baseline: `ethtool -K bench0 tso off gso off` and `ip link set bench0 gso_max_segs 1` on both hosts, as `pdm --per-packet` does. Program statistics: `sysctl kernel.bpf_stats_enabled=1` during each window, `bpftool -j prog show id ID`; map memory `bpftool -j map show id ID`."
    );
}

/// Share (percent of the program's samples) of `callee` in a profile.
fn share_in(prof: &Value, prog: &str, callee: &str) -> Option<f64> {
    prof["programs"][prog]["in"]
        .as_array()?
        .iter()
        .find(|e| e[0].as_str() == Some(callee))
        .and_then(|e| e[1].as_f64())
}

fn profile(s: &mut String, p: &Value) {
    let _ = writeln!(s, "## Where the time goes (perf)\n");
    if p["xdp"]["profile"].is_null() && p["tc"]["profile"].is_null() {
        let _ = writeln!(s, "No profile (the benchmark failed).\n");
        return;
    }
    let _ = writeln!(
        s,
        "`perf record -a -g` over one more window of the same traffic (bpf_stats off), pdm on both hosts. Per program: its share of all CPU samples on the machine (inclusive of the helpers it calls), and how its own samples split between its own code and the kernel helpers / BPF subprograms it called. Programs are matched by name (perf labels them with their main function's tag, not bpftool's), so on a shared machine another pdm's samples count too. `bpftool prog profile` is not available (Debian's bpftool is built without it).\n"
    );
    let _ = writeln!(
        s,
        "| setup | traffic | program | % of all samples | split of the program's samples |\n|---|---|---|---|---|"
    );
    for (key, setup) in [
        ("xdp", "pdm --ingress xdp"),
        ("tc", "pdm default (TC ingress)"),
    ] {
        for (t, traffic) in [("udp", "small UDP"), ("tcp", "TCP bulk")] {
            let prof = &p[key]["profile"][t];
            if let Some(skip) = prof["skipped"].as_str() {
                let _ = writeln!(s, "| {setup} | {traffic} | – | {skip} | |");
                continue;
            }
            for prog in ["pdm_egress", "pdm_ingress_xdp", "pdm_ingress_tc"] {
                let e = &prof["programs"][prog];
                if e.is_null() {
                    continue;
                }
                let split = e["in"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| format!("{} {} %", c[0].as_str().unwrap_or("?"), num(&c[1], 0)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    s,
                    "| {setup} | {traffic} | {prog} | {} | {split} |",
                    num(&e["percent_of_all"], 1)
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nHottest functions of the whole machine (self time, % of all samples; on a shared machine this includes whatever else runs):\n"
    );
    for (key, setup) in [
        ("xdp", "pdm --ingress xdp"),
        ("tc", "pdm default (TC ingress)"),
    ] {
        for (t, traffic) in [("udp", "small UDP"), ("tcp", "TCP bulk")] {
            let hot = p[key]["profile"][t]["hottest"]
                .as_array()
                .into_iter()
                .flatten()
                .take(8)
                .map(|c| format!("{} {}", c[0].as_str().unwrap_or("?"), num(&c[1], 1)))
                .collect::<Vec<_>>()
                .join(", ");
            if !hot.is_empty() {
                let _ = writeln!(s, "- {setup}, {traffic}: {hot}");
            }
        }
    }
    let _ = writeln!(s);
}

/// The "where the limit is" paragraph, from this run's figures.
fn limits(s: &mut String, r: &Value) {
    let _ = writeln!(s, "## Where the limit is\n");
    let p = &r["progcost"];
    let ns = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let floors = Floors::of(r);
    let fl = |f: Option<f64>| f.unwrap_or(f64::NAN);
    let egress = ns(&udp_cost(r, "client", "pdm_egress", &["xdp", "tc"]));
    let xdp = ns(&udp_cost(r, "server", "pdm_ingress_xdp", &["xdp"]));
    let tc = ns(&udp_cost(r, "server", "pdm_ingress_tc", &["tc"]));
    let prof = &p["tc"]["profile"]["udp"];
    let pct = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
    let adj = share_in(prof, "pdm_egress", "bpf_skb_adjust_room");
    let expand = share_in(prof, "pdm_egress", "pskb_expand_head (within adjust_room)");
    let clock_e = share_in(prof, "pdm_egress", "ktime_get_mono_fast_ns");
    let own_e = share_in(prof, "pdm_egress", "its own code");
    let adj_tcp = share_in(
        &p["tc"]["profile"]["tcp"],
        "pdm_egress",
        "bpf_skb_adjust_room",
    );
    let egress_own = egress - fl(floors.egress);
    let _ = writeln!(
        s,
        "- **Egress, per packet**: {egress:.0} ns by bpf_stats, {egress_own:.0} ns without bpf_stats' own {:.0} ns (a TC egress program that returns at once). perf: {} % of pdm_egress's samples are inside `bpf_skb_adjust_room`, and {} % of all its samples in `pskb_expand_head` under it (about {:.0} ns a packet): the stack builds small UDP packets with room for the link header only, so opening 16 octets reallocates and copies every packet's head. The kernel's own IPV6_DSTOPTS insertion reserves the room when it builds the packet and pays none of this; on TCP, whose packets are built with room to spare, `bpf_skb_adjust_room` is {} % of the egress samples. The clock (`bpf_ktime_get_ns`; `read_tsc` is slow in this VM) is {} %, pdm's own code (parse, flow lookup, PSN, header) {} %. {}Avoiding the reallocation needs the room reserved where the packet is built (the socket), which a TC program cannot do.",
        fl(floors.egress),
        pct(adj),
        pct(expand),
        expand.unwrap_or(f64::NAN) / 100.0 * egress_own,
        pct(adj_tcp),
        pct(clock_e),
        pct(own_e),
        adjust_room_only(r).map_or(String::new(), |a| format!(
            "A TC program that does nothing but call `bpf_skb_adjust_room` on the same packets takes {a:.0} ns ({:.0} ns without bpf_stats' own): that much of egress is the cost of opening the room at this hook, whatever the program; pdm's own part is the remaining {:.0} ns. ",
            a - fl(floors.egress),
            egress - a
        )),
    );
    let xprof = &p["xdp"]["profile"]["udp"];
    let testrun = |case: &str| num(&r["testrun"][case]["median_ns"], 0);
    let _ = writeln!(
        s,
        "- **Ingress, per packet**: XDP {xdp:.0} ns by bpf_stats ({:.0} ns without its own {:.0} ns), TC {tc:.0} ns ({:.0} ns without {:.0} ns). BPF_PROG_TEST_RUN, the same small UDP frame 10^6 times in one call (no hook, no bpf_stats): XDP {} ns with PDM and {} ns without, TC {} and {} ns. perf: the clock is {} % of pdm_ingress_xdp's samples, its own code {} %. Per packet it parses the headers (bounds-checked; the addresses as two 8-octet loads), hashes the flow key once (NH, keyed), finds the flow in one of two 4-way sets, and counts packets with PDM packets as one 64-bit add and octets as another (plain adds: a flow's received packets come in one CPU at a time; the locked adds were a quarter of its time); a packet with PDM adds the clock, the PSN sequence (loss, reordering, duplicates) and the DTLS to echo. {}",
        xdp - fl(floors.xdp),
        fl(floors.xdp),
        tc - fl(floors.tc),
        fl(floors.tc),
        testrun("xdp_udp_pdm"),
        testrun("xdp_udp_plain"),
        testrun("tc_udp_pdm"),
        testrun("tc_udp_plain"),
        pct(share_in(xprof, "pdm_ingress_xdp", "ktime_get_mono_fast_ns")),
        pct(share_in(xprof, "pdm_ingress_xdp", "its own code")),
        clock_cost(r, &floors).map_or(String::new(), |c| format!(
            "Measured apart, one clock read costs {c:.0} ns here (an XDP program that only calls `bpf_ktime_get_ns`, less the XDP floor; perf gives the clock a larger share because its timer samples land where interrupts come back on). Besides the clock, pdm's own part is {:.0} ns with XDP and {:.0} ns with TC.",
            xdp - fl(floors.xdp) - c,
            tc - fl(floors.tc) - c,
        )),
    );
    let ratio = |label: &str| {
        r["throughput"]["ratios"]
            .as_array()
            .and_then(|a| a.iter().find(|q| q["label"].as_str() == Some(label)))
            .and_then(|q| q["ratio"].as_f64())
            .map_or("–".into(), |v| format!("{:.0} %", v * 100.0))
    };
    let _ = writeln!(
        s,
        "- **TCP with XDP ingress on veth**: `pdm --ingress xdp` reaches {} of the no-PDM throughput (1 stream), and a program that only returns XDP_PASS reaches {}: attaching any native XDP program to a veth makes the peer hand over every segment separately instead of one GSO packet (see the shared design notes), so the limit is the XDP attachment on veth, not PDM. On a physical NIC this cost does not exist. pdm's default, `--ingress auto`, therefore takes TC ingress on a veth (and where a driver has no native XDP).",
        ratio("pdm --ingress xdp vs no PDM, iperf3 1 stream"),
        ratio("XDP_PASS-only program vs no PDM, iperf3 1 stream"),
    );
    let _ = writeln!(
        s,
        "- **TCP with TC ingress (the default on veth)**: {} of no PDM with iperf3 (1 stream), {} of the kernel's IPV6_DSTOPTS insertion with the same sender ({} with 8 streams). In the TCP bulk window the four pdm programs (egress and ingress on both hosts) took {} % of one core at {} Gb/s; both hosts share the machine's {} cores with the senders, the receivers and both pdm loaders, and the machine was {} % busy (median, iperf3 1 stream with pdm; the throughput table's machine busy column): what CPU is left idle bounds how much pdm's programs and loaders can take without taking it from the transfer. The per-GSO-packet cost is what to reduce (see the perf split above).",
        ratio("pdm default (TC ingress) vs no PDM, iperf3 1 stream"),
        ratio("pdm default (TC ingress) vs kernel IPV6_DSTOPTS, pair 1 stream"),
        ratio("pdm default (TC ingress) vs kernel IPV6_DSTOPTS, pair 8 streams"),
        num(&progs_core_percent(&p["tc"]["tcp"]), 1),
        num(&p["tc"]["tcp"]["traffic"]["gbps"], 1),
        r["machine"]["cores"],
        num(
            &r["throughput"]["summary"]["pdm_tc"]["iperf_1"]["machine_busy_percent"]["median"],
            0
        ),
    );
    let pp = &r["throughput"]["summary"]["pdm_per_packet"]["iperf_1"];
    let _ = writeln!(
        s,
        "- **`--per-packet`**: {} of the same-offload baseline with iperf3 (1 stream; {} with 8 streams), with `--ingress xdp`; with TC ingress (the default on veth) {} (8 streams: {}). A program that only returns XDP_PASS, with the same offloads off, gets {} (8 streams: {}): on veth, XDP itself is the limit. Without segmentation offload every wire packet runs both programs on both hosts (about {} ns egress + {} ns ingress per packet, small-UDP figures), and the loaders, handling the RTT samples (at most one per flow per `--sample-interval`, 1 ms), took {} CPU s per GB (median) against {} for the whole transfer.",
        ratio("pdm --per-packet --ingress xdp vs no PDM (offloads off), iperf3 1 stream"),
        ratio("pdm --per-packet --ingress xdp vs no PDM (offloads off), iperf3 8 streams"),
        ratio("pdm --per-packet (TC ingress) vs no PDM (offloads off), iperf3 1 stream"),
        ratio("pdm --per-packet (TC ingress) vs no PDM (offloads off), iperf3 8 streams"),
        ratio("XDP_PASS-only program vs no PDM (offloads off), iperf3 1 stream"),
        ratio("XDP_PASS-only program vs no PDM (offloads off), iperf3 8 streams"),
        num(&udp_cost(r, "client", "pdm_egress", &["xdp", "tc"]), 0),
        num(&udp_cost(r, "server", "pdm_ingress_xdp", &["xdp"]), 0),
        num(&pp["pdm_cpu_s_per_gb"]["median"], 3),
        num(&pp["cpu_s_per_gb"]["median"], 3),
    );
    if let Some(p) = r["scaling"]["points"]
        .as_array()
        .and_then(|a| a.iter().max_by_key(|p| p["flows"].as_u64().unwrap_or(0)))
    {
        let c = &p["maps"]["client"];
        let _ = writeln!(
            s,
            "- **Map memory per flow**: the flow table is an mmapable array of 128-octet slots (40 key + 88 state), {} B per slot including the table's fixed page; a kernel LRU hash would add 64 B of its own per element (288 B per flow with this state). At {} flows in {} slots (the next power of two), {} are resident: a new flow finds both of its 4-slot sets full and evicts the least recently active flow of the two ({} evictions counted on the client). Holding every one of 1 000 000 flows at this load needs more ways or cuckoo-style moves (simulated: two 8-way sets plus one move per insertion leave 0.01 % displaced), which costs more slot reads per packet.",
            num(&c["bytes_per_slot"], 3),
            p["flows"],
            c["map"]["max_entries"],
            c["entries"],
            p["client_counters"]["counters"]["flow_table_evictions"],
        );
    }
    let _ = writeln!(s);
}
