//! `cargo xtask bench`: measurements on test hosts this task creates (two network
//! namespaces joined by veth), written to BENCHMARKS.md and bench-results.json. Figures
//! are reported, never asserted.
//!
//! One file per benchmark: [`progcost`] (BPF run time per packet), [`throughput`] (TCP
//! with iperf3 and with our own sender, against the kernel's IPV6_DSTOPTS insertion),
//! [`rr`] (UDP request/response), [`scaling`] (flows), [`loader`] (pdm's own CPU),
//! [`analyze`] (reading captures, against tshark), [`observe`] (`pdm observe` on a
//! router).
//! [`profile`] adds a perf profile of each program. [`hosts`] makes the hosts and undoes
//! every change (also on Ctrl-C); [`helper`] is the traffic the hosts run (hidden
//! `cargo xtask bench-helper` subcommands); [`bpf`] reads the kernel's statistics;
//! [`results`] are the figures as bench-results.json holds them; [`report`] writes
//! BENCHMARKS.md from them (`cargo xtask bench --render` rewrites it from
//! bench-results.json).

mod analyze;
mod bpf;
pub mod helper;
mod hosts;
mod loader;
mod observe;
mod profile;
mod progcost;
mod report;
mod results;
mod rr;
mod scaling;
mod stats;
mod testrun;
mod throughput;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use self::results::{Bench, BenchResults, Config, Machine, Outcome, WallSecs};
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
    let only = only
        .iter()
        .map(|o| {
            Bench::from_name(o).with_context(|| {
                let names: Vec<&str> = Bench::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "--only {o}: no such benchmark (one of: {})",
                    names.join(", ")
                )
            })
        })
        .collect::<Result<Vec<Bench>>>()?;
    let root = tasks::workspace_root();
    // With --only, the other parts' figures stay as the last full run left them.
    let mut earlier = if only.is_empty() {
        None
    } else {
        read_results(&root.join("bench-results.json"))?
    };
    hosts::clean_up_on_signal();
    let tools = setup::run()?;
    let pdm = tasks::build_pdm(&tools)?;
    let progbench = tasks::build_example(&tools, "progbench")?;
    let baseline = baseline
        .map(|rev| tasks::build_pdm_at(&tools, rev))
        .transpose()?;
    let cfg = Cfg::new(quick, pdm, progbench, baseline);
    let started = Instant::now();
    let mut results = BenchResults {
        machine: machine(),
        quick,
        config: Config {
            reps: cfg.reps,
            tcp_secs: cfg.tcp_secs,
            cost_secs: cfg.cost_secs,
            rr_count: cfg.rr_count,
            scale_secs: cfg.scale_secs,
            scale_flows: cfg.scale_flows.clone(),
            loader_secs: cfg.loader_secs,
        },
        check: pdm_check(&cfg),
        progcost: None,
        testrun: None,
        throughput: None,
        rr: None,
        scaling: None,
        loader_cpu: None,
        analyze: None,
        observe: None,
        wall_secs: WallSecs::default(),
        only: (!only.is_empty()).then(|| only.clone()),
    };
    for &bench in Bench::ALL {
        if !only.is_empty() && !only.contains(&bench) {
            if let Some(earlier) = &mut earlier {
                results.keep_from(earlier, bench);
            }
            continue;
        }
        let t = Instant::now();
        eprintln!("bench: {} ...", bench.name());
        match bench {
            Bench::Progcost => results.progcost = Some(outcome(bench, progcost::run(&cfg))),
            Bench::Testrun => results.testrun = Some(outcome(bench, testrun::run(&cfg))),
            Bench::Throughput => results.throughput = Some(outcome(bench, throughput::run(&cfg))),
            Bench::Rr => results.rr = Some(outcome(bench, rr::run(&cfg))),
            Bench::Scaling => results.scaling = Some(outcome(bench, scaling::run(&cfg))),
            Bench::LoaderCpu => results.loader_cpu = Some(outcome(bench, loader::run(&cfg))),
            Bench::Analyze => results.analyze = Some(outcome(bench, analyze::run(&cfg))),
            Bench::Observe => results.observe = Some(outcome(bench, observe::run(&cfg))),
        }
        results
            .wall_secs
            .per_bench
            .insert(bench, t.elapsed().as_secs_f64());
    }
    results.wall_secs.total = started.elapsed().as_secs_f64();
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

/// A benchmark's figures, or its failure: reported as such, and the others still run.
fn outcome<T>(bench: Bench, r: Result<T>) -> Outcome<T> {
    match r {
        Ok(figures) => Outcome::Done(figures),
        Err(e) => {
            eprintln!("bench: {} failed: {e:#}", bench.name());
            Outcome::Failed(format!("{e:#}"))
        }
    }
}

/// An earlier bench-results.json, if there is one. One that no longer reads is an error
/// rather than ignored: `--only` would silently drop every part it did not rerun.
fn read_results(path: &Path) -> Result<Option<BenchResults>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let results = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} does not read as bench results (a full `cargo xtask bench` rewrites it)",
            path.display()
        )
    })?;
    Ok(Some(results))
}

/// BENCHMARKS.md again from bench-results.json (after a change to the report only).
pub fn render() -> Result<()> {
    let root = tasks::workspace_root();
    let results = read_results(&root.join("bench-results.json"))?
        .context("no bench-results.json: run `cargo xtask bench` first")?;
    std::fs::write(root.join("BENCHMARKS.md"), report::render(&results))?;
    eprintln!("bench: wrote BENCHMARKS.md from bench-results.json");
    Ok(())
}

/// `pdm check`: verified instruction counts of the programs.
fn pdm_check(cfg: &Cfg) -> String {
    let out = crate::cmd::output(Command::new(&cfg.pdm).arg("check")).unwrap_or_default();
    out.trim().to_owned()
}

fn machine() -> Machine {
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
    Machine {
        kernel: uname,
        cpu,
        cores,
        loadavg_at_start: load.trim().to_owned(),
        iperf3: tool("iperf3", "--version"),
        bpftool: tool("bpftool", "version"),
        date: tool("date", "-u"),
    }
}
