//! UDP request/response: one small datagram, wait for the echo, repeated; median and
//! p99 round trip without pdm and with pdm on both hosts (XDP and TC ingress). Modes
//! alternate within each repetition.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use super::{
    Cfg,
    hosts::{self, ADDR_B, Hosts, KillOnDrop, NS_A, NS_B, Pdm},
    results::{Rr, RrMode, RrRun, RrSummary},
    stats,
};

const ECHO_PORT: u16 = 7000;

/// The modes and pdm's arguments in each (none: no pdm).
pub const MODES: &[(RrMode, Option<&[&str]>)] = &[
    (RrMode::Baseline, None),
    (RrMode::PdmXdp, Some(&["--ingress", "xdp"])),
    (RrMode::PdmTc, Some(&["--ingress", "tc"])),
];

pub fn run(cfg: &Cfg) -> Result<Rr> {
    let _hosts = Hosts::create()?;
    let listen = format!("[{ADDR_B}]:{ECHO_PORT}");
    let _echo = KillOnDrop::spawn(&mut hosts::helper(
        NS_B,
        &["udp-echo", "--listen", &listen],
    )?)?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut runs: BTreeMap<RrMode, Vec<RrRun>> = BTreeMap::new();
    for _ in 0..cfg.reps {
        for &(mode, args) in MODES {
            let pdms = match args {
                Some(a) => Some((
                    Pdm::start(&cfg.pdm, NS_A, a)?,
                    Pdm::start(&cfg.pdm, NS_B, a)?,
                )),
                None => None,
            };
            let out = hosts::helper_json(
                NS_A,
                &[
                    "udp-rr",
                    "--dst",
                    &listen,
                    "--count",
                    &cfg.rr_count.to_string(),
                    "--secs",
                    &cfg.rr_secs.to_string(),
                ],
            )?;
            drop(pdms);
            eprintln!("bench: rr {}: {out}", mode.name());
            let r: RrRun = serde_json::from_value(out).context("udp-rr's output")?;
            runs.entry(mode).or_default().push(r);
        }
    }
    let field = |m: RrMode, f: fn(&RrRun) -> f64| -> Vec<f64> {
        runs.get(&m)
            .map(|a| a.iter().map(f).collect())
            .unwrap_or_default()
    };
    // pdm − no PDM, repetition by repetition.
    let added = |m: RrMode, f: fn(&RrRun) -> f64| {
        let added: Vec<f64> = field(m, f)
            .iter()
            .zip(field(RrMode::Baseline, f))
            .map(|(p, b)| p - b)
            .collect();
        stats::summary(&added)
    };
    let summary = MODES
        .iter()
        .map(|&(mode, _)| {
            let with_pdm = mode != RrMode::Baseline;
            let s = RrSummary {
                p50_us: stats::summary(&field(mode, |r| r.p50_us)),
                p99_us: stats::summary(&field(mode, |r| r.p99_us)),
                added_p50_us: with_pdm.then(|| added(mode, |r| r.p50_us)),
                added_p99_us: with_pdm.then(|| added(mode, |r| r.p99_us)),
            };
            (mode, s)
        })
        .collect();
    Ok(Rr { runs, summary })
}
