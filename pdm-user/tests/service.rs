//! What pdm ships for running as a service: the systemd unit (verified by
//! `systemd-analyze verify`), the three capabilities it grants being enough for
//! everything a run changes, the log reopened on SIGHUP (logrotate), and the man page
//! and completions (`pdm generate`, packaged by `cargo xtask dist`) covering every
//! subcommand.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{ADDR_B, IFACE, Netns, TwoHosts, pdm_bin};
use serde_json::Value;

fn unit_source() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/pdm@.service");
    std::fs::read_to_string(path).expect("dist/pdm@.service")
}

/// The subcommands `pdm help` lists.
fn subcommands() -> Vec<String> {
    let out = Command::new(pdm_bin())
        .arg("help")
        .output()
        .expect("pdm help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let list: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    assert!(list.len() >= 6, "pdm help lists the subcommands: {text}");
    list
}

#[test]
fn man_page_and_completions_cover_every_subcommand() {
    let subs = subcommands();
    for what in ["man", "bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(pdm_bin())
            .args(["generate", what])
            .output()
            .expect("pdm generate");
        assert!(out.status.success(), "pdm generate {what}");
        let text = String::from_utf8_lossy(&out.stdout);
        for s in &subs {
            assert!(text.contains(s.as_str()), "pdm generate {what} lacks `{s}`");
        }
    }
    let man = Command::new(pdm_bin())
        .args(["generate", "man"])
        .output()
        .expect("man");
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH pdm 1"),
        "a roff man page: {}",
        &man[..man.len().min(200)]
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    // The unit as shipped, with ExecStart pointing at this build.
    let dir = std::env::temp_dir().join(format!("pdm-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let unit = unit_source().replace("/usr/bin/pdm", pdm_bin());
    assert!(unit.contains("CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON"));
    assert!(unit.contains("Restart=on-failure"));
    std::fs::write(dir.join("pdm@.service"), unit).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("pdm@eth0.service"))
        .current_dir(&dir)
        .output()
        .expect("systemd-analyze (setup installs systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.lines().any(|l| l.contains("pdm@")),
        "no complaint about the unit: {err}"
    );
}

/// Runs `pdm run ARGS` in `ns` with exactly the unit's three capabilities (root's
/// others dropped from the bounding set).
fn with_unit_caps(ns: &Netns, args: &[&str]) -> std::process::Child {
    let caps = "-all,+bpf,+net_admin,+perfmon";
    ns.cmd("setpriv")
        .arg(format!("--bounding-set={caps}"))
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(pdm_bin())
        .arg("run")
        .args(["--iface", IFACE])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv")
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The unit's capabilities are enough for a run that changes what `--per-packet` and
/// `--mtu-room` change and serves metrics; the NDJSON log is reopened by name on
/// SIGHUP, so logrotate can move it away.
#[test]
fn with_the_units_capabilities_it_runs_and_reopens_its_log_on_sighup() {
    let h = TwoHosts::new("svc");
    let dir = std::env::temp_dir().join(format!("pdm-svc-{}", h.a.name));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("pdm.ndjson");
    let log_s = log.display().to_string();
    let routes = || h.a.ip(&["-6", "route", "show", "dev", IFACE]);
    let before = routes();
    let child = with_unit_caps(
        &h.a,
        &[
            "--json",
            "--log",
            &log_s,
            "--interval",
            "200ms",
            "--per-packet",
            "--mtu-room",
            "--metrics-addr",
            "[::1]:9464",
        ],
    );
    let pid = child.id() as i32;
    wait_for("the first report", || !lines(&log).is_empty());
    assert!(
        routes().contains("mtu 1484"),
        "routes lowered: {}",
        routes()
    );
    h.a.run("ping", &["-6", "-c", "3", "-i", "0.1", ADDR_B]);
    wait_for("the pings in the log", || {
        lines(&log)
            .iter()
            .any(|l| l["proto"] == "icmpv6" && l["tx_pdm"].as_u64() >= Some(3))
    });
    // logrotate: move the file away, then SIGHUP.
    let rotated = dir.join("pdm.ndjson.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("a new log file", || !lines(&log).is_empty());
    let old_count = lines(&rotated).len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        lines(&rotated).len(),
        old_count,
        "nothing more written to the rotated file"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pdm with the unit's capabilities: {err}"
    );
    assert!(err.contains("per-packet PSNs"), "{err}");
    let (old, new) = (lines(&rotated), lines(&log));
    let last_old = old
        .iter()
        .filter_map(|l| l["ts"].as_f64())
        .fold(0.0, f64::max);
    let first_new = new
        .iter()
        .filter_map(|l| l["ts"].as_f64())
        .fold(f64::MAX, f64::min);
    assert!(
        last_old <= first_new,
        "the new file goes on where the old one stopped"
    );
    assert_eq!(routes(), before, "routes back");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a log to reopen, SIGHUP is the terminal going away: pdm stops, detaching,
/// as it does on SIGTERM (a live view in a closed tmux must not linger holding the
/// interface).
#[test]
fn sighup_without_a_log_stops_it_cleanly() {
    let h = TwoHosts::new("hup");
    let pdm = common::Pdm::start(&h.a, &[]);
    let pid = pdm.pid();
    // SAFETY: signalling the pdm this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("pdm gone after SIGHUP", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    });
    assert!(
        pdm.stderr_lines()
            .iter()
            .any(|l| l.contains("detached from")),
        "a clean stop: {:?}",
        pdm.stderr_lines()
    );
    // A second pdm can have the interface: nothing held, nothing left attached.
    common::Pdm::start(&h.a, &[]).stop();
}
