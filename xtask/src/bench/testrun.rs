//! The ingress programs' own run time per packet through BPF_PROG_TEST_RUN (pdm-user's
//! `progbench` example): the same frame a million times in one call, so no hook, no
//! bpf_stats clock reads and no other traffic, against bpf_stats' view on real traffic
//! in `progcost`.

use std::process::Command;

use anyhow::{Context as _, Result};

use super::{Cfg, results::Testrun};
use crate::cmd;

pub fn run(cfg: &Cfg) -> Result<Testrun> {
    let out = cmd::output(Command::new(&cfg.progbench).arg(cfg.testrun_repeat.to_string()))?;
    let out = out.trim();
    eprintln!("bench: testrun: {out}");
    serde_json::from_str(out).context("progbench's JSON")
}
