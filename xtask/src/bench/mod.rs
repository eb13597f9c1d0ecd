//! `cargo xtask bench`: measurements on test hosts this task creates (two network
//! namespaces joined by veth), written to BENCHMARKS.md and bench-results.json. Figures
//! are reported, never asserted.
//!
//! One file per benchmark: [`progcost`] (BPF run time per packet), [`throughput`] (TCP
//! with iperf3 and with our own sender, against the kernel's IPV6_DSTOPTS insertion),
//! [`rr`] (UDP request/response), [`scaling`] (flows), [`loader`] (pdm's own CPU).
//! [`profile`] adds a perf profile of each program. [`hosts`] makes the hosts and undoes
//! every change (also on Ctrl-C); [`helper`] is the traffic the hosts run (hidden
//! `cargo xtask bench-helper` subcommands); [`bpf`] reads the kernel's statistics;
//! [`report`] writes the tables (`cargo xtask bench --render` rewrites BENCHMARKS.md
//! from bench-results.json).

mod bpf;
pub mod helper;
mod hosts;
mod loader;
mod profile;
mod progcost;
mod report;
mod rr;
mod scaling;
mod stats;
mod testrun;
mod throughput;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{setup, tasks};

/// Sizes of one run.
pub struct Cfg {
    pub pdm: PathBuf,
    /// `--baseline REV`: pdm built from that revision (and its short hash), measured in
    /// `progcost` next to this tree's, in the same rounds.
    pub baseline: Option<(PathBuf, String)>,
    /// pdm-user's `progbench` example (BPF_PROG_TEST_RUN timings).
    pub progbench: PathBuf,
    /// Its repeat count per batch.
    pub testrun_repeat: u32,
    /// Repetitions of each throughput and request/response measurement.
    pub reps: usize,
    /// Seconds per TCP transfer.
    pub tcp_secs: f64,
    /// Seconds of traffic per BPF run-time window.
    pub cost_secs: f64,
    /// Round trips per request/response repetition (and a time bound).
    pub rr_count: u64,
    pub rr_secs: f64,
    /// Seconds of steady traffic per flow-scaling point.
    pub scale_secs: f64,
    pub scale_flows: Vec<usize>,
    /// Loader benchmark: settle time and measurement time.
    pub loader_settle: Duration,
    pub loader_secs: u64,
}

impl Cfg {
    fn new(
        quick: bool,
        pdm: PathBuf,
        progbench: PathBuf,
        baseline: Option<(PathBuf, String)>,
    ) -> Self {
        let scale_flows = vec![1, 1_000, 100_000, 1_000_000];
        if quick {
            Self {
                pdm,
                baseline,
                progbench,
                testrun_repeat: 200_000,
                reps: 1,
                tcp_secs: 1.0,
                cost_secs: 1.0,
                rr_count: 2_000,
                rr_secs: 1.0,
                scale_secs: 1.0,
                scale_flows,
                loader_settle: Duration::from_secs(1),
                loader_secs: 2,
            }
        } else {
            Self {
                pdm,
                baseline,
                progbench,
                testrun_repeat: 1_000_000,
                reps: 3,
                tcp_secs: 10.0,
                cost_secs: 5.0,
                rr_count: 20_000,
                rr_secs: 10.0,
                scale_secs: 5.0,
                scale_flows,
                loader_settle: Duration::from_secs(5),
                loader_secs: 30,
            }
        }
    }
}

pub fn run(quick: bool, only: &[String], baseline: Option<&str>) -> Result<()> {
    type Bench = fn(&Cfg) -> Result<Value>;
    let benches: [(&str, Bench); 6] = [
        ("progcost", progcost::run),
        ("testrun", testrun::run),
        ("throughput", throughput::run),
        ("rr", rr::run),
        ("scaling", scaling::run),
        ("loader_cpu", loader::run),
    ];
    if let Some(unknown) = only
        .iter()
        .find(|o| !benches.iter().any(|(name, _)| name == o))
    {
        anyhow::bail!(
            "--only {unknown}: no such benchmark (one of: {})",
            benches.map(|(name, _)| name).join(", ")
        );
    }
    hosts::clean_up_on_signal();
    let tools = setup::run()?;
    let pdm = tasks::build_pdm(&tools)?;
    let progbench = tasks::build_example(&tools, "progbench")?;
    let baseline = baseline
        .map(|rev| tasks::build_pdm_at(&tools, rev))
        .transpose()?;
    let cfg = Cfg::new(quick, pdm, progbench, baseline);
    let started = Instant::now();
    let root = tasks::workspace_root();
    // With --only, the other parts' figures stay as the last full run left them.
    let previous: Option<Value> = (!only.is_empty())
        .then(|| std::fs::read_to_string(root.join("bench-results.json")).ok())
        .flatten()
        .and_then(|s| serde_json::from_str(&s).ok());
    let mut results = json!({
        "machine": machine(),
        "quick": quick,
        "config": {
            "reps": cfg.reps, "tcp_secs": cfg.tcp_secs, "cost_secs": cfg.cost_secs,
            "rr_count": cfg.rr_count, "scale_secs": cfg.scale_secs,
            "scale_flows": cfg.scale_flows, "loader_secs": cfg.loader_secs,
        },
        "check": pdm_check(&cfg),
    });
    for (name, f) in benches {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            if let Some(prev) = &previous {
                results[name] = prev[name].clone();
                results["wall_secs"][name] = prev["wall_secs"][name].clone();
            }
            continue;
        }
        let t = Instant::now();
        eprintln!("bench: {name} ...");
        // A failed benchmark is reported as such; the others still run.
        results[name] = f(&cfg).unwrap_or_else(|e| {
            eprintln!("bench: {name} failed: {e:#}");
            json!({ "error": format!("{e:#}") })
        });
        results["wall_secs"][name] = json!(t.elapsed().as_secs_f64());
    }
    results["wall_secs"]["total"] = json!(started.elapsed().as_secs_f64());
    if !only.is_empty() {
        results["only"] = json!(only);
    }
    std::fs::write(
        root.join("bench-results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(root.join("BENCHMARKS.md"), report::render(&results))?;
    eprintln!(
        "bench: wrote BENCHMARKS.md and bench-results.json ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// BENCHMARKS.md again from bench-results.json (after a change to the report only).
pub fn render() -> Result<()> {
    let root = tasks::workspace_root();
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("bench-results.json"))?)?;
    std::fs::write(root.join("BENCHMARKS.md"), report::render(&results))?;
    eprintln!("bench: wrote BENCHMARKS.md from bench-results.json");
    Ok(())
}

/// `pdm check`: verified instruction counts of the programs.
fn pdm_check(cfg: &Cfg) -> Value {
    let out = crate::cmd::output(Command::new(&cfg.pdm).arg("check")).unwrap_or_default();
    json!(out.trim())
}

fn machine() -> Value {
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|m| m.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let tool = |c: &str, a: &str| {
        Command::new(c)
            .arg(a)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    json!({
        "kernel": uname,
        "cpu": cpu,
        "cores": cores,
        "loadavg_at_start": load.trim(),
        "iperf3": tool("iperf3", "--version"),
        "bpftool": tool("bpftool", "version"),
        "date": tool("date", "-u"),
    })
}
