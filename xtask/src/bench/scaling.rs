//! Flow scaling: a UDP sender on the client host cycles through N distinct 5-tuples
//! (source ports × destination ports), so pdm's egress (client) and ingress (server)
//! each hold N flow entries. Per N: ns per packet while the entries are created (the
//! first pass) and once they exist (steady), entries really in the kernel's map, its
//! memory (`bytes_memlock`, the kernel's own accounting) per slot and per live flow, and
//! pdm's error counters.

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    Cfg,
    bpf::{self, StatsOn, Window},
    hosts::{self, ADDR_A, ADDR_B, Hosts, NS_A, NS_B, Pdm},
};

pub fn run(cfg: &Cfg) -> Result<Value> {
    let mut points = Vec::new();
    for &n in &cfg.scale_flows {
        let p = point(cfg, n).with_context(|| format!("{n} flows"))?;
        eprintln!("bench: scaling {n}: {p}");
        points.push(p);
    }
    Ok(json!({ "points": points }))
}

fn point(cfg: &Cfg, flows: usize) -> Result<Value> {
    let _hosts = Hosts::create()?;
    let max_flows = flows.next_power_of_two().max(65_536);
    let mf = max_flows.to_string();
    // No periodic reports (each would walk the whole table); no expiry during the run;
    // the output limited to one port so the last report stays small.
    let args = [
        "--ingress",
        "xdp",
        "--max-flows",
        &mf,
        "--interval",
        "3600s",
        "--idle-timeout",
        "3600s",
        "--filter",
        "port 1",
    ];
    let a = Pdm::start(&cfg.pdm, NS_A, &args)?;
    let b = Pdm::start(&cfg.pdm, NS_B, &args)?;
    let targets = [bpf::pdm_target("client", &a), bpf::pdm_target("server", &b)];
    let n = flows.to_string();
    let secs = cfg.scale_secs.to_string();
    let flood = |secs: &str, passes: &str| -> Result<Value> {
        let _on = StatsOn::new()?;
        let w = Window::start(&targets)?;
        let t = hosts::helper_json(
            NS_A,
            &[
                "udp-flood",
                "--src",
                ADDR_A,
                "--dst",
                ADDR_B,
                "--flows",
                &n,
                "--secs",
                secs,
                "--min-passes",
                passes,
            ],
        )?;
        Ok(json!({ "progs": w.end()?, "traffic": t }))
    };
    let create = flood("0", "1")?;
    // Every entry exists now: a window of SECS (a part of a pass is enough).
    let steady = flood(&secs, "0")?;
    let mut maps = json!({});
    for (label, p) in [("client", &a), ("server", &b)] {
        let m = bpf::pdm_map(p, "FLOWS")?;
        let id = m["id"].as_u64().unwrap_or(0) as u32;
        let slots = m["max_entries"].as_f64().unwrap_or(f64::NAN);
        let entries = bpf::count_flows(id, slots as usize)?;
        let mem = m["bytes_memlock"].as_f64().unwrap_or(f64::NAN);
        maps[label] = json!({
            "map": m,
            "entries": entries,
            "bytes_per_slot": mem / slots,
            "bytes_per_live_flow": mem / entries as f64,
        });
    }
    let ca = a.stop()?;
    let cb = b.stop()?;
    Ok(json!({
        "flows": flows,
        "max_flows": max_flows,
        "create": create,
        "steady": steady,
        "maps": maps,
        "client_counters": ca,
        "server_counters": cb,
    }))
}
