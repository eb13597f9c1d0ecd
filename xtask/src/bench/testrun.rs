//! The ingress programs' own run time per packet through BPF_PROG_TEST_RUN (pdm-user's
//! `progbench` example): the same frame a million times in one call, so no hook, no
//! bpf_stats clock reads and no other traffic, against bpf_stats' view on real traffic
//! in `progcost`.

use std::process::Command;

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::Cfg;
use crate::cmd;

pub fn run(cfg: &Cfg) -> Result<Value> {
    let out = cmd::output(Command::new(&cfg.progbench).arg(cfg.testrun_repeat.to_string()))?;
    let v: Value = serde_json::from_str(out.trim()).context("progbench's JSON")?;
    eprintln!("bench: testrun: {v}");
    Ok(v)
}
