//! Where the time goes: `perf record -a -g` over a traffic window, then per pdm
//! program the share of all samples it accounts for (inclusive) and what it spends
//! them in (its own code, or the helper / BPF subprogram it called), plus the
//! hottest functions of the whole machine. Skipped when `perf` is not installed.
//! (`bpftool prog profile` would give cycles per run, but Debian's bpftool is built
//! without it.)

use std::{
    collections::{BTreeMap, HashMap},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    hosts::KillOnDrop,
    results::{Profile, Prog, ProgProfile, Recorded},
};
use crate::cmd;

pub fn available() -> bool {
    cmd::on_path("perf")
}

/// The programs attributed: pdm's, by name. perf names a program
/// "bpf_prog_<tag>_<name>" with the tag of its main function, not the program's tag that
/// bpftool shows, so programs are matched by name: on a shared machine another pdm's
/// samples would count too.
const PROGRAMS: [Prog; 3] = Prog::PDM;

/// What a program's samples in its own code (no callee below it) are filed under.
pub const OWN_CODE: &str = "its own code";
/// What a program's samples reallocating the packet's head are filed under (as well as
/// under the callee they were in).
pub const EXPAND_HEAD: &str = "pskb_expand_head (within adjust_room)";

/// Records the whole machine for `secs` while `traffic` runs (it should last about as
/// long), and summarises for [`PROGRAMS`].
pub fn during<T>(secs: f64, traffic: impl FnOnce() -> Result<T>) -> Result<Profile<T>> {
    if !available() {
        return Ok(Profile::Skipped {
            skipped: "perf not installed".into(),
        });
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
    Ok(Profile::Recorded(summarise(&script?, t)))
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

fn summarise<T>(script: &str, traffic: T) -> Recorded<T> {
    let mut total = 0u64;
    let mut leaf: HashMap<String, u64> = HashMap::new();
    let mut progs: HashMap<Prog, (u64, HashMap<String, u64>)> = HashMap::new();
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
                .into_iter()
                .find(|p| f.starts_with("bpf_prog_") && f.ends_with(&format!("_{}", p.name())))
            else {
                continue;
            };
            let callee = if i == 0 {
                OWN_CODE.to_owned()
            } else {
                short(frames[i - 1])
            };
            let e = progs.entry(p).or_default();
            e.0 += 1;
            *e.1.entry(callee).or_default() += 1;
            // Reallocating the packet's head, wherever below the program.
            if frames[..i].contains(&"pskb_expand_head") {
                *e.1.entry(EXPAND_HEAD.into()).or_default() += 1;
            }
            break;
        }
    }
    let pct = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
    let top = |m: &HashMap<String, u64>, of: u64, n: usize| -> Vec<(String, f64)> {
        let mut v: Vec<(&String, &u64)> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(k, c)| (k.clone(), pct(*c, of)))
            .collect()
    };
    let programs: BTreeMap<String, ProgProfile> = progs
        .iter()
        .map(|(p, (n, callees))| {
            let profile = ProgProfile {
                samples: *n,
                percent_of_all: pct(*n, total),
                split: top(callees, *n, 9),
            };
            (p.name().to_owned(), profile)
        })
        .collect();
    Recorded {
        samples: total,
        programs,
        hottest: top(&leaf, total, 12),
        traffic,
    }
}
