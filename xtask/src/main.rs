//! Developer tasks for pdm: `cargo xtask setup | run | test | bench | fuzz`.
//!
//! Every task that needs the eBPF toolchain or the Debian test tools runs `setup` first,
//! so a fresh machine needs nothing but `cargo xtask run` or `cargo xtask test`.

mod bench;
mod cmd;
mod setup;
mod tasks;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for pdm")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; fast when all is present).
    Setup,
    /// Build pdm and run it. Arguments after `--` go to `pdm run`
    /// (e.g. `cargo xtask run -- --iface eth0`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measurements on test hosts it creates; writes BENCHMARKS.md and bench-results.json.
    Bench {
        /// Fewer and shorter repetitions (under 2 minutes).
        #[arg(long)]
        quick: bool,
        /// Only write BENCHMARKS.md again from the existing bench-results.json.
        #[arg(long)]
        render: bool,
        /// Run only these parts (comma-separated: progcost, testrun, throughput, rr,
        /// scaling, loader_cpu, analyze, observe); the others' results are kept from the existing
        /// bench-results.json.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Also measure pdm as built from this git revision (e.g. `main`, a hash) in
        /// `progcost`, in the same rounds as this tree's: what a change costs per packet.
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
    },
    /// Traffic programs the benchmarks run inside their test hosts.
    #[command(hide = true)]
    BenchHelper {
        #[command(subcommand)]
        helper: bench::helper::Helper,
    },
    /// Random and mutated frames through the kernel programs at length (the suite runs
    /// 100 000 from a fixed seed), then the cargo-fuzz targets of the decoders.
    Fuzz {
        /// Frames to generate.
        #[arg(long, default_value_t = 5_000_000)]
        frames: u64,
        /// Seed (hex with 0x, or decimal); random when not given.
        #[arg(long, value_parser = parse_seed)]
        seed: Option<u64>,
        /// Seconds for each cargo-fuzz target.
        #[arg(long, default_value_t = 60)]
        time: u64,
    },
    /// What a Linux package ships, in target/dist: pdm (release), its man page, shell
    /// completions, the systemd unit pdm@.service and the logrotate snippet.
    Dist,
    /// The whole suite: formatting, clippy (host and eBPF), unit, kernel and end-to-end tests.
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_seed(s: &str) -> Result<u64, String> {
    s.strip_prefix("0x")
        .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
        .map_err(|e| format!("`{s}` is not a seed: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Run { args } => tasks::run(&args),
        Task::Test { args } => tasks::test(&args),
        Task::Dist => tasks::dist(),
        Task::Bench {
            quick,
            render,
            only,
            baseline,
        } => {
            if render {
                bench::render()
            } else {
                bench::run(quick, &only, baseline.as_deref())
            }
        }
        Task::BenchHelper { helper } => bench::helper::run(helper),
        Task::Fuzz { frames, seed, time } => tasks::fuzz(frames, seed, time),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
