//! Flow scaling: a UDP sender on the client host cycles through N distinct 5-tuples
//! (source ports × destination ports), so pdm's egress (client) and ingress (server)
//! each hold N flow entries. Per N: ns per packet while the entries are created (the
//! first pass) and once they exist (steady), entries really in the kernel's map, its
//! memory (`bytes_memlock`, the kernel's own accounting) per slot and per live flow, and
//! pdm's error counters.

use anyhow::{Context as _, Result};

use super::{
    Cfg,
    bpf::{self, StatsOn, Window},
    hosts::{self, ADDR_A, ADDR_B, Hosts, NS_A, NS_B, Pdm},
    progcost,
    results::{ClientServer, Flood, FlowMap, Host, ProgWindow, ScalePoint, Scaling},
};

pub fn run(cfg: &Cfg) -> Result<Scaling> {
    let mut points = Vec::new();
    for &n in &cfg.scale_flows {
        let p = point(cfg, n).with_context(|| format!("{n} flows"))?;
        eprintln!("bench: scaling {n}: {}", serde_json::to_string(&p)?);
        points.push(p);
    }
    Ok(Scaling { points })
}

fn point(cfg: &Cfg, flows: usize) -> Result<ScalePoint> {
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
    let targets = [
        bpf::pdm_target(Host::Client, &a),
        bpf::pdm_target(Host::Server, &b),
    ];
    let flood = |secs: f64, passes: &str| -> Result<ProgWindow<Flood>> {
        let _on = StatsOn::new()?;
        let w = Window::start(&targets)?;
        let out = hosts::udp_flood_json(
            NS_A,
            (ADDR_A, ADDR_B),
            flows,
            secs,
            &["--min-passes", passes],
        )?;
        let traffic = serde_json::from_value(out).context("udp-flood's output")?;
        Ok(ProgWindow {
            progs: w.end()?,
            traffic,
        })
    };
    let create = flood(0.0, "1")?;
    // Every entry exists now: a window of SECS (a part of a pass is enough).
    let steady = flood(cfg.scale_secs, "0")?;
    let maps = ClientServer {
        client: flow_map(&a)?,
        server: flow_map(&b)?,
    };
    Ok(ScalePoint {
        flows: flows as u64,
        max_flows: max_flows as u64,
        create,
        steady,
        maps,
        client_counters: progcost::stop_pdm(a)?,
        server_counters: progcost::stop_pdm(b)?,
    })
}

/// pdm's flow table: its live flows, and its memory per slot and per live flow.
fn flow_map(pdm: &Pdm) -> Result<FlowMap> {
    let map = bpf::pdm_map(pdm, "FLOWS")?;
    let slots = map.max_entries as f64;
    let entries = bpf::count_flows(map.id, map.max_entries as usize)?;
    let mem = map.bytes_memlock as f64;
    Ok(FlowMap {
        entries,
        bytes_per_slot: mem / slots,
        bytes_per_live_flow: mem / entries as f64,
        map,
    })
}
