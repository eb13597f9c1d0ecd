//! Run time per packet of each program (`kernel.bpf_stats_enabled`: run_time_ns /
//! run_cnt over a window), for small UDP datagrams at the highest rate the sender
//! manages and for TCP bulk; pdm on both hosts, with XDP and with TC ingress; and the
//! same for programs that return at once (the floor of each hook), one that only opens
//! the 16 octets and one that only reads the clock (the two kernel costs pdm cannot
//! avoid).

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Cfg,
    bpf::{self, StatsOn, Window},
    hosts::{self, ADDR_A, ADDR_B, Hosts, KillOnDrop, NS_A, NS_B, Pdm},
    profile, stats, throughput,
};

/// What one window measures.
#[derive(Clone, Copy)]
enum Setup {
    /// pdm on both hosts, with this ingress.
    Pdm(&'static str),
    /// Programs that return at once (client TC egress, server ingress on this hook).
    Null(&'static str),
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
        Setup::Pdm("xdp"),
        Setup::Pdm("tc"),
        Setup::Null("xdp"),
        Setup::Null("tc-ingress"),
        Setup::AdjustRoomOnly,
        Setup::ClockOnly,
    ];
    if cfg.baseline.is_some() {
        s.push(Setup::Baseline);
    }
    s
}

/// Windows of each setup, taken in rounds: every round measures every setup once, on
/// fresh hosts, forwards and backwards in turn. This VM's speed drifts over minutes,
/// and a setup measured only early or only late in the run would carry that drift into
/// its comparison with the others.
pub fn run(cfg: &Cfg) -> Result<Value> {
    let setups = setups(cfg);
    let mut windows: Vec<(Vec<Value>, Vec<Value>)> = vec![(Vec::new(), Vec::new()); setups.len()];
    let mut out = json!({});
    for round in 0..cfg.reps {
        for i in stats::round_order(setups.len(), round) {
            let setup = &setups[i];
            let _hosts = Hosts::create()?;
            let _iperf = throughput::iperf_server()?;
            let (udp, tcp) = &mut windows[i];
            match *setup {
                Setup::Pdm(ingress) => {
                    let a = Pdm::start(&cfg.pdm, NS_A, &["--ingress", ingress])?;
                    let b = Pdm::start(&cfg.pdm, NS_B, &["--ingress", ingress])?;
                    let targets = [bpf::pdm_target("client", &a), bpf::pdm_target("server", &b)];
                    udp.push(udp_window(cfg, &targets)?);
                    tcp.push(tcp_window(cfg, &targets)?);
                    if round == 0 {
                        out[ingress]["profile"] = json!({
                            "udp": profile::during(cfg.cost_secs, || flood(cfg))?,
                            "tcp": profile::during(cfg.cost_secs, || {
                                throughput::iperf_client(cfg.cost_secs, 1)
                            })?,
                        });
                    }
                    out[ingress]["client_counters"] = a.stop()?["counters"].take();
                    out[ingress]["server_counters"] = b.stop()?["counters"].take();
                }
                Setup::Null(ingress) => {
                    let (ea, ib) = (null_prog(NS_A, "tc-egress")?, null_prog(NS_B, ingress)?);
                    let targets = helper_targets(&ea, &ib);
                    udp.push(udp_window(cfg, &targets)?);
                    tcp.push(tcp_window(cfg, &targets)?);
                }
                Setup::AdjustRoomOnly => {
                    let ea = null_prog(NS_A, "tc-egress-adjust")?;
                    let ib = null_prog(NS_B, "xdp")?;
                    udp.push(udp_window(cfg, &helper_targets(&ea, &ib))?);
                }
                Setup::ClockOnly => {
                    let ea = null_prog(NS_A, "tc-egress")?;
                    let ib = null_prog(NS_B, "xdp-clock")?;
                    udp.push(udp_window(cfg, &helper_targets(&ea, &ib))?);
                }
                Setup::Baseline => {
                    let (pdm, _) = cfg.baseline.as_ref().expect("a baseline setup");
                    let a = Pdm::start(pdm, NS_A, &["--ingress", "tc"])?;
                    let b = Pdm::start(pdm, NS_B, &["--ingress", "tc"])?;
                    let targets = [bpf::pdm_target("client", &a), bpf::pdm_target("server", &b)];
                    udp.push(udp_window(cfg, &targets)?);
                    tcp.push(tcp_window(cfg, &targets)?);
                    a.stop()?;
                    b.stop()?;
                }
            }
        }
        eprintln!("bench: progcost round {} of {} done", round + 1, cfg.reps);
    }
    for (setup, (udp, tcp)) in setups.iter().zip(&windows) {
        let (udp, tcp) = (merge(udp, "pps"), merge(tcp, "gbps"));
        match *setup {
            Setup::Pdm(ingress) => {
                out[ingress]["udp"] = udp;
                out[ingress]["tcp"] = tcp;
            }
            Setup::Null(ingress) => out["null"][ingress] = json!({ "udp": udp, "tcp": tcp }),
            Setup::AdjustRoomOnly => out["adjust_room_only"] = json!({ "udp": udp }),
            Setup::ClockOnly => out["clock_only"] = json!({ "udp": udp }),
            Setup::Baseline => {
                let rev = cfg.baseline.as_ref().map(|(_, rev)| rev.clone());
                out["baseline"] = json!({ "rev": rev, "tc": { "udp": udp, "tcp": tcp } });
            }
        }
    }
    Ok(out)
}

/// One TCP bulk window (iperf3, 1 stream) with bpf_stats on, and the TCP segments the
/// client's stack sent meanwhile: a program runs once per GSO (or GRO) packet, and the
/// segments say how many wire packets those runs stood for.
fn tcp_window(cfg: &Cfg, targets: &[(String, Vec<u32>)]) -> Result<Value> {
    let _on = StatsOn::new()?;
    let sent = tcp_out_segs(NS_A)?;
    let w = Window::start(targets)?;
    let mut t = throughput::iperf_client(cfg.cost_secs, 1)?;
    let progs = w.end()?;
    t["segments_sent"] = json!(tcp_out_segs(NS_A)?.saturating_sub(sent));
    Ok(json!({ "progs": progs, "traffic": t }))
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
fn udp_window(cfg: &Cfg, targets: &[(String, Vec<u32>)]) -> Result<Value> {
    let _on = StatsOn::new()?;
    let w = Window::start(targets)?;
    let t = flood(cfg)?;
    Ok(json!({ "progs": w.end()?, "traffic": t }))
}

/// The programs two `bench-helper null-prog` processes hold, as bpf_stats targets.
fn helper_targets(client: &KillOnDrop, server: &KillOnDrop) -> [(String, Vec<u32>); 2] {
    [
        ("client".to_owned(), hosts::fd_ids(client.pid(), "prog_id")),
        ("server".to_owned(), hosts::fd_ids(server.pid(), "prog_id")),
    ]
}

/// One object for several windows: per host and program the runs (summed) and the
/// ns per run (median, min, max, values); the traffic's `rate` key as a median too.
fn merge(windows: &[Value], rate: &str) -> Value {
    let mut progs = json!({});
    for w in windows {
        for (host, ps) in w["progs"].as_object().into_iter().flatten() {
            for (name, p) in ps.as_object().into_iter().flatten() {
                let e = &mut progs[host][name];
                if e.is_null() {
                    *e = json!({ "runs": 0, "values": [] });
                }
                e["runs"] =
                    json!(e["runs"].as_u64().unwrap_or(0) + p["runs"].as_u64().unwrap_or(0));
                e["run_time_ns"] = json!(
                    e["run_time_ns"].as_u64().unwrap_or(0) + p["run_time_ns"].as_u64().unwrap_or(0)
                );
                e["values"]
                    .as_array_mut()
                    .expect("array")
                    .push(p["ns_per_run"].clone());
            }
        }
    }
    for (_, ps) in progs.as_object_mut().into_iter().flatten() {
        for (_, e) in ps.as_object_mut().into_iter().flatten() {
            let v: Vec<f64> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect();
            let sm = stats::summary(&v);
            e["ns_per_run"] = sm["median"].clone();
            e["ns_min"] = sm["min"].clone();
            e["ns_max"] = sm["max"].clone();
        }
    }
    let rates: Vec<f64> = windows
        .iter()
        .filter_map(|w| w["traffic"][rate].as_f64())
        .collect();
    let mut traffic =
        json!({ "windows": windows.iter().map(|w| w["traffic"].clone()).collect::<Vec<_>>() });
    traffic[rate] = stats::summary(&rates)["median"].clone();
    let segments: u64 = windows
        .iter()
        .filter_map(|w| w["traffic"]["segments_sent"].as_u64())
        .sum();
    if segments > 0 {
        traffic["segments_sent"] = json!(segments);
    }
    json!({ "progs": progs, "traffic": traffic })
}

/// One UDP flow, as fast as the sender goes, for one window.
fn flood(cfg: &Cfg) -> Result<Value> {
    let secs = cfg.cost_secs.to_string();
    hosts::helper_json(
        NS_A,
        &[
            "udp-flood",
            "--src",
            ADDR_A,
            "--dst",
            ADDR_B,
            "--flows",
            "1",
            "--secs",
            &secs,
        ],
    )
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
