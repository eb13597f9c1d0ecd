//! Run time per packet of each program (`kernel.bpf_stats_enabled`: run_time_ns /
//! run_cnt over a window), for small UDP datagrams at the highest rate the sender
//! manages and for TCP bulk; pdm on both hosts, with XDP and with TC ingress; and the
//! same for programs that return at once (the floor of each hook).

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Cfg,
    bpf::{self, StatsOn, Window},
    hosts::{self, ADDR_A, ADDR_B, Hosts, KillOnDrop, NS_A, NS_B, Pdm},
    profile, stats, throughput,
};

pub fn run(cfg: &Cfg) -> Result<Value> {
    let mut out = json!({});
    for ingress in ["xdp", "tc"] {
        let _hosts = Hosts::create()?;
        let _iperf = throughput::iperf_server()?;
        let a = Pdm::start(&cfg.pdm, NS_A, &["--ingress", ingress])?;
        let b = Pdm::start(&cfg.pdm, NS_B, &["--ingress", ingress])?;
        let targets = [bpf::pdm_target("client", &a), bpf::pdm_target("server", &b)];
        let r = traffic(cfg, &targets)?;
        let profile = json!({
            "udp": profile::during(cfg.cost_secs, || flood(cfg))?,
            "tcp": profile::during(cfg.cost_secs, || {
                throughput::iperf_client(cfg.cost_secs, 1)
            })?,
        });
        out[ingress] = json!({
            "udp": r.0,
            "tcp": r.1,
            "profile": profile,
            "client_counters": a.stop()?["counters"],
            "server_counters": b.stop()?["counters"],
        });
        eprintln!("bench: progcost {ingress}: {}", out[ingress]);
    }
    // Floors: a program that returns at once on the same hooks.
    let mut nulls = json!({});
    for ingress in ["xdp", "tc-ingress"] {
        let _hosts = Hosts::create()?;
        let _iperf = throughput::iperf_server()?;
        let (ea, ib) = (null_prog(NS_A, "tc-egress")?, null_prog(NS_B, ingress)?);
        let r = traffic(cfg, &helper_targets(&ea, &ib))?;
        nulls[ingress] = json!({ "udp": r.0, "tcp": r.1 });
    }
    out["null"] = nulls;
    // What opening 16 octets costs by itself on small UDP (see bpf::ADJUST_ROOM_ONLY):
    // the part of egress's run time that any TC insertion pays.
    {
        let _hosts = Hosts::create()?;
        let ea = null_prog(NS_A, "tc-egress-adjust")?;
        let ib = null_prog(NS_B, "xdp")?;
        let targets = helper_targets(&ea, &ib);
        let udp = (0..cfg.reps)
            .map(|_| udp_window(cfg, &targets))
            .collect::<Result<Vec<_>>>()?;
        out["adjust_room_only"] = json!({ "udp": merge(&udp, "pps") });
    }
    Ok(out)
}

/// UDP flood windows and TCP bulk windows, `cfg.reps` of each: per kind, the
/// programs' stats merged over the repetitions (median ns per run, min–max) and what
/// the traffic did.
fn traffic(cfg: &Cfg, targets: &[(String, Vec<u32>)]) -> Result<(Value, Value)> {
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    for _ in 0..cfg.reps {
        udp.push(udp_window(cfg, targets)?);
        tcp.push({
            let _on = StatsOn::new()?;
            let w = Window::start(targets)?;
            let t = throughput::iperf_client(cfg.cost_secs, 1)?;
            json!({ "progs": w.end()?, "traffic": t })
        });
    }
    Ok((merge(&udp, "pps"), merge(&tcp, "gbps")))
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
