//! `pdm analyze` run from a test, and its `--packets` output against tshark.

use std::{path::Path, process::Command};

use serde_json::Value;

/// `pdm analyze ARGS...`: (exit code, stdout lines as JSON, stderr).
pub fn analyze(args: &[&str], files: &[&Path]) -> (i32, Vec<Value>, String) {
    let out = Command::new(super::pdm_bin())
        .arg("analyze")
        .args(args)
        .args(files)
        .output()
        .expect("run pdm analyze");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("pdm analyze prints JSON lines"))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// tshark's PDM fields of `file`, one row per packet carrying PDM.
fn tshark_pdm(file: &Path, also: &str) -> Vec<Vec<String>> {
    let filter = if also.is_empty() {
        "ipv6.opt.pdm.psn_this_pkt".to_owned()
    } else {
        format!("ipv6.opt.pdm.psn_this_pkt && {also}")
    };
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-Y", &filter, "-T", "fields"])
        .args(["-E", "separator=|"]);
    for f in [
        "frame.time_epoch",
        "ipv6.src",
        "ipv6.dst",
        "ipv6.opt.pdm.psn_this_pkt",
        "ipv6.opt.pdm.psn_last_recv",
        "ipv6.opt.pdm.scale_dtlr",
        "ipv6.opt.pdm.delta_last_recv",
        "ipv6.opt.pdm.scale_dtls",
        "ipv6.opt.pdm.delta_last_sent",
    ] {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

/// Every packet's fields as `pdm analyze --packets` gives them, in tshark's columns.
fn as_row(v: &Value) -> Vec<String> {
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} in {v}"))
            .to_string()
    };
    vec![
        v["src"].as_str().expect("src").to_owned(),
        v["dst"].as_str().expect("dst").to_owned(),
        n("psn_this"),
        n("psn_last_recv"),
        n("scale_dtlr"),
        n("dtlr"),
        n("scale_dtls"),
        n("dtls"),
    ]
}

/// `lines` (from `pdm analyze --packets`) against tshark's decoding of `file`, every
/// field of every packet; `also`: a further tshark display filter, or "".
pub fn check_against_tshark(file: &Path, lines: &[Value], also: &str) {
    let tshark = tshark_pdm(file, also);
    assert!(!tshark.is_empty(), "tshark finds PDM in {}", file.display());
    assert_eq!(lines.len(), tshark.len(), "packets with PDM: pdm vs tshark");
    for (i, (p, t)) in lines.iter().zip(&tshark).enumerate() {
        // tshark prints addresses compressed as Rust does, and time to the ns.
        assert_eq!(as_row(p), t[1..].to_vec(), "packet {i}: {p}");
        let ts: f64 = t[0].parse().expect("frame.time_epoch");
        let ours = p["ts"].as_f64().expect("ts");
        assert!(
            (ours - ts).abs() < 2e-6,
            "packet {i}: time {ours} vs tshark {ts}"
        );
    }
}
