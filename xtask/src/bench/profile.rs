//! Where the time goes: `perf record -a -g` over a traffic window, then per pdm
//! program the share of all samples it accounts for (inclusive) and what it spends
//! them in (its own code, or the helper / BPF subprogram it called), plus the
//! hottest functions of the whole machine. Skipped when `perf` is not installed.
//! (`bpftool prog profile` would give cycles per run, but Debian's bpftool is built
//! without it.)

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::hosts::KillOnDrop;
use crate::cmd;

pub fn available() -> bool {
    cmd::on_path("perf")
}

/// The programs attributed, by name. perf names a program "bpf_prog_<tag>_<name>" with
/// the tag of its main function, not the program's tag that bpftool shows, so programs
/// are matched by name: on a shared machine another pdm's samples would count too.
pub const PROGRAMS: &[&str] = &["pdm_egress", "pdm_ingress_xdp", "pdm_ingress_tc"];

/// Records the whole machine for `secs` while `traffic` runs (it should last about as
/// long), and summarises for [`PROGRAMS`].
pub fn during(secs: f64, traffic: impl FnOnce() -> Result<Value>) -> Result<Value> {
    if !available() {
        return Ok(json!({ "skipped": "perf not installed" }));
    }
    let data = std::env::temp_dir().join(format!("pdm-bench-{}.perf", std::process::id()));
    let mut perf = KillOnDrop::spawn(
        Command::new("perf")
            .args(["record", "-a", "-g", "-q", "-o"])
            .arg(&data)
            .args(["--", "sleep", &format!("{secs}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let t = traffic();
    let started = Instant::now();
    while perf.0.try_wait()?.is_none() {
        if started.elapsed() > Duration::from_secs_f64(secs + 30.0) {
            bail!("perf record did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = t?;
    let script = cmd::output(
        Command::new("perf")
            .args(["script", "-F", "comm,ip,sym", "-i"])
            .arg(&data),
    )
    .context("perf script");
    let _ = std::fs::remove_file(&data);
    let mut out = summarise(&script?);
    out["traffic"] = t;
    Ok(out)
}

/// "bpf_prog_<tag>_<name>" → "<name> (BPF)"; other symbols as they are.
fn short(sym: &str) -> String {
    match sym.strip_prefix("bpf_prog_") {
        Some(rest) => format!(
            "{} (BPF)",
            rest.split_once('_').map_or(rest, |(_, name)| name)
        ),
        None => sym.to_owned(),
    }
}

fn summarise(script: &str) -> Value {
    let mut total = 0u64;
    let mut leaf: HashMap<String, u64> = HashMap::new();
    let mut progs: HashMap<&str, (u64, HashMap<String, u64>)> = HashMap::new();
    for sample in script.split("\n\n") {
        let frames: Vec<&str> = sample
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        let Some(first) = frames.first() else {
            continue;
        };
        total += 1;
        *leaf.entry(short(first)).or_default() += 1;
        // The innermost pdm program on the stack, and what it was running.
        for (i, f) in frames.iter().enumerate() {
            let Some(p) = PROGRAMS
                .iter()
                .find(|p| f.starts_with("bpf_prog_") && f.ends_with(&format!("_{p}")))
            else {
                continue;
            };
            let callee = if i == 0 {
                "its own code".to_owned()
            } else {
                short(frames[i - 1])
            };
            let e = progs.entry(p).or_default();
            e.0 += 1;
            *e.1.entry(callee).or_default() += 1;
            // Reallocating the packet's head, wherever below the program.
            if frames[..i].contains(&"pskb_expand_head") {
                *e.1.entry("pskb_expand_head (within adjust_room)".into())
                    .or_default() += 1;
            }
            break;
        }
    }
    let pct = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
    let top = |m: &HashMap<String, u64>, of: u64, n: usize| -> Vec<Value> {
        let mut v: Vec<(&String, &u64)> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(k, c)| json!([k, pct(*c, of)]))
            .collect()
    };
    let mut programs = json!({});
    for (p, (n, callees)) in &progs {
        programs[*p] = json!({
            "samples": n,
            "percent_of_all": pct(*n, total),
            "in": top(callees, *n, 9),
        });
    }
    json!({
        "samples": total,
        "programs": programs,
        "hottest": top(&leaf, total, 12),
    })
}
