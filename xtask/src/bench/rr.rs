//! UDP request/response: one small datagram, wait for the echo, repeated; median and
//! p99 round trip without pdm and with pdm on both hosts (XDP and TC ingress). Modes
//! alternate within each repetition.

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Cfg,
    hosts::{self, ADDR_B, Hosts, KillOnDrop, NS_A, NS_B, Pdm},
    stats,
};

const ECHO_PORT: u16 = 7000;

pub const MODES: &[(&str, Option<&[&str]>)] = &[
    ("baseline", None),
    ("pdm_xdp", Some(&["--ingress", "xdp"])),
    ("pdm_tc", Some(&["--ingress", "tc"])),
];

pub fn run(cfg: &Cfg) -> Result<Value> {
    let _hosts = Hosts::create()?;
    let listen = format!("[{ADDR_B}]:{ECHO_PORT}");
    let _echo = KillOnDrop::spawn(&mut hosts::helper(
        NS_B,
        &["udp-echo", "--listen", &listen],
    )?)?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut runs = json!({});
    for _ in 0..cfg.reps {
        for (name, args) in MODES {
            let pdms = match args {
                Some(a) => Some((
                    Pdm::start(&cfg.pdm, NS_A, a)?,
                    Pdm::start(&cfg.pdm, NS_B, a)?,
                )),
                None => None,
            };
            let r = hosts::helper_json(
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
            eprintln!("bench: rr {name}: {r}");
            if runs[name].is_null() {
                runs[*name] = json!([]);
            }
            runs[*name].as_array_mut().expect("array").push(r);
        }
    }
    let field = |m: &str, k: &str| -> Vec<f64> {
        runs[m]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut summary = json!({});
    for (name, _) in MODES {
        summary[*name] = json!({
            "p50_us": stats::summary(&field(name, "p50_us")),
            "p99_us": stats::summary(&field(name, "p99_us")),
        });
        if *name != "baseline" {
            for q in ["p50_us", "p99_us"] {
                let added: Vec<f64> = field(name, q)
                    .iter()
                    .zip(field("baseline", q))
                    .map(|(p, b)| p - b)
                    .collect();
                summary[*name][format!("added_{q}")] = stats::summary(&added);
            }
        }
    }
    Ok(json!({ "runs": runs, "summary": summary }))
}
