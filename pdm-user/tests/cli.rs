//! The loader's behaviour at its edges: bad input, a second instance, the interface
//! going away. Each bad input gets one clear line, a non-zero exit, and nothing attached.

mod common;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use common::{
    IFACE, Netns, Pdm, TwoHosts, nothing_attached_to, offload_settings, pdm_bin, run_pdm as pdm,
    run_state,
};

fn nothing_attached(ns: &Netns) {
    nothing_attached_to(ns, IFACE);
}

/// Removes /run/pdm files named after this (new) namespace's inode: a namespace that
/// had the same inode before is gone, so they are stale and would confuse [`run_state`].
fn clear_stale_state(ns: &Netns) {
    for f in run_state(ns) {
        let _ = std::fs::remove_file(std::path::Path::new(pdm_user::RUN_DIR).join(f));
    }
}

/// One line on stderr, saying `want`; no Rust debug output, no usage block.
fn one_clear_line(args: &[&str], code: i32, err: &str, want: &str) {
    assert_ne!(code, 0, "pdm {args:?} succeeded");
    assert!(code != 101, "pdm {args:?} panicked: {err}");
    assert!(
        err.contains(want),
        "pdm {args:?}: stderr lacks `{want}`:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "pdm {args:?}: not one line:\n{err}");
    assert!(lines[0].starts_with("pdm: "), "pdm {args:?}: {err}");
    for debug in ["Os {", "Error {", "kind:", "panicked", "Usage:"] {
        assert!(!err.contains(debug), "pdm {args:?}: `{debug}` in {err}");
    }
}

#[test]
fn bad_input_gets_one_clear_line_and_attaches_nothing() {
    let h = TwoHosts::new("cli");
    clear_stale_state(&h.a);
    let before = offload_settings(&h.a);
    // --per-packet on every case: a check that came after the offloads were changed
    // would show in `ethtool -k`.
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--iface", "nosuchif0", "--per-packet"],
            "no interface named `nosuchif0`",
        ),
        (
            &["run", "--iface", "bad/name", "--per-packet"],
            "not a valid interface name",
        ),
        (
            &[
                "run",
                "--iface",
                IFACE,
                "--per-packet",
                "--interval",
                "soon",
            ],
            "is not a duration",
        ),
        (
            &["run", "--iface", IFACE, "--per-packet", "--interval", "0"],
            "must be more than zero",
        ),
        (
            &["run", "--iface", IFACE, "--per-packet", "--interval", "-1s"],
            "`-1s` is not a duration: it must be positive",
        ),
        (
            &["run", "--iface", IFACE, "--per-packet", "--duration", "0s"],
            "is not a duration",
        ),
        (
            &[
                "run",
                "--iface",
                IFACE,
                "--per-packet",
                "--duration",
                "banana",
            ],
            "`banana` is not a duration",
        ),
        (
            &["run", "--iface", IFACE, "--per-packet", "--window", "0"],
            "--window",
        ),
        (
            &[
                "run",
                "--iface",
                IFACE,
                "--per-packet",
                "--sample-interval",
                "2s",
            ],
            "`2s` is too long: at most 1s",
        ),
        (
            &[
                "run",
                "--iface",
                IFACE,
                "--per-packet",
                "--filter",
                "port x",
            ],
            "not a port number",
        ),
        (
            &["run", "--iface", IFACE, "--per-packet", "--filter", "sctp"],
            "unknown word `sctp`",
        ),
        (
            &[
                "run",
                "--iface",
                IFACE,
                "--per-packet",
                "--filter",
                "host nosuch.invalid",
            ],
            "cannot resolve `nosuch.invalid`",
        ),
        (
            &["run", "--iface", IFACE, "--per-packet", "--max-flows", "0"],
            "max-flows",
        ),
        (&["run", "--per-packet"], "--iface"),
        (
            &["run", "--iface", IFACE, "--per-packet", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (&["observe", "--json"], "--iface"),
        // Every interface is looked up before anything is attached to the first.
        (
            &["observe", "-i", IFACE, "-i", "nosuchif0"],
            "no interface named `nosuchif0`",
        ),
        (
            &["observe", "-i", IFACE, "-i", IFACE],
            "--iface pdm0 is given twice",
        ),
        (
            &["observe", "-i", IFACE, "--interval", "0"],
            "must be more than zero",
        ),
        (
            &["observe", "-i", IFACE, "--filter", "sctp"],
            "unknown word `sctp`",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = pdm(&h.a, args);
        one_clear_line(args, code, &err, want);
        nothing_attached(&h.a);
        assert_eq!(
            offload_settings(&h.a),
            before,
            "pdm {args:?} changed offloads"
        );
    }

    // IPv6 disabled on the interface.
    h.a.run(
        "sysctl",
        &["-qw", &format!("net.ipv6.conf.{IFACE}.disable_ipv6=1")],
    );
    let args = ["run", "--iface", IFACE, "--per-packet"];
    let (code, err) = pdm(&h.a, &args);
    one_clear_line(&args, code, &err, "IPv6 disabled");
    nothing_attached(&h.a);
    assert_eq!(offload_settings(&h.a), before);
    // An observer only reads frames: a mirror port with IPv6 off is a place for it.
    let args = ["observe", "--iface", IFACE, "--json", "--duration", "1s"];
    let (code, err) = pdm(&h.a, &args);
    assert_eq!(code, 0, "pdm {args:?}: {err}");
    assert!(err.contains("observing on pdm0"), "{err}");
    nothing_attached(&h.a);
}

/// Runs `pdm run --iface IFACE --per-packet` in `ns` under `wrapper` (a command that
/// drops privileges and then runs what follows).
fn pdm_under(ns: &Netns, wrapper: &[&str]) -> (i32, String) {
    let out = ns
        .cmd(wrapper[0])
        .args(&wrapper[1..])
        .arg(pdm_bin())
        .args(["run", "--iface", IFACE, "--per-packet"])
        .stdin(Stdio::null())
        .output()
        .expect("run the wrapper");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--ingress auto` (the default) takes TC ingress where the driver has no native XDP,
/// and says why; `--ingress xdp` there falls back to generic XDP. Loopback has no
/// native XDP (this kernel has no dummy driver to stand in).
#[test]
fn auto_ingress_takes_tc_where_the_driver_has_no_native_xdp() {
    let ns = Netns::new("auto");
    ns.ip(&["link", "set", "lo", "up"]);
    clear_stale_state(&ns);
    for (extra, want) in [
        (
            &[][..],
            "pdm_ingress_tc: tc ingress (auto: native XDP not available here) (tcx link)",
        ),
        (
            &["--ingress", "xdp"],
            "pdm_ingress_xdp: xdp generic (bpf_link)",
        ),
    ] {
        let mut args = vec!["run", "--iface", "lo", "--json", "--duration", "1s"];
        args.extend_from_slice(extra);
        let (code, err) = pdm(&ns, &args);
        assert_eq!(code, 0, "pdm {args:?}: {err}");
        assert!(
            err.contains(want),
            "pdm {args:?}: stderr lacks `{want}`:\n{err}"
        );
        nothing_attached_to(&ns, "lo");
    }
}

#[test]
fn without_privileges_it_says_so() {
    let h = TwoHosts::new("priv");
    clear_stale_state(&h.a);
    let before = offload_settings(&h.a);
    let what_to_do = "run as root or grant CAP_BPF,CAP_NET_ADMIN,CAP_PERFMON";
    let cases: &[(&str, &[&str], &str)] = &[
        (
            // A non-root user: no capabilities at all.
            "not root",
            &[
                "setpriv",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
            "missing CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON",
        ),
        (
            // root, without the capabilities that matter.
            "root without CAP_BPF/CAP_NET_ADMIN",
            &[
                "capsh",
                "--drop=cap_bpf,cap_net_admin,cap_sys_admin",
                "--",
                "-c",
                "exec \"$0\" \"$@\"",
            ],
            "missing CAP_BPF, CAP_NET_ADMIN)",
        ),
        (
            "root without CAP_PERFMON",
            &[
                "capsh",
                "--drop=cap_perfmon,cap_sys_admin",
                "--",
                "-c",
                "exec \"$0\" \"$@\"",
            ],
            "missing CAP_PERFMON)",
        ),
    ];
    for (what, wrapper, want) in cases {
        let (code, err) = pdm_under(&h.a, wrapper);
        one_clear_line(wrapper, code, &err, want);
        assert!(err.contains(what_to_do), "{what}: {err}");
        assert_eq!(code, 1, "{what}: {err}");
        nothing_attached(&h.a);
        assert_eq!(offload_settings(&h.a), before, "{what}: offloads changed");
    }
}

#[test]
fn a_second_instance_refuses_and_the_first_keeps_working() {
    let h = TwoHosts::new("two");
    let first = Pdm::start(&h.a, &["--interval", "300ms"]);
    let before = offload_settings(&h.a);
    for extra in [
        &[][..],
        &["--per-packet"],
        &["--attach", "netlink", "--ingress", "tc"],
    ] {
        let mut args = vec!["run", "--iface", IFACE, "--json"];
        args.extend_from_slice(extra);
        let (code, err) = pdm(&h.a, &args);
        one_clear_line(&args, code, &err, "another pdm");
        assert!(err.contains(&first.pid().to_string()), "{err}");
        assert_eq!(
            offload_settings(&h.a),
            before,
            "pdm {args:?} changed offloads"
        );
        for dir in ["ingress", "egress"] {
            let f = h.a.run("tc", &["filter", "show", "dev", IFACE, dir]);
            assert!(f.trim().is_empty(), "pdm {args:?} added a tc filter: {f}");
        }
    }
    let refused_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    common::traffic::ping(&h, 3);
    std::thread::sleep(Duration::from_millis(700));
    let lines = first.stop();
    let last = lines.last().expect("a report");
    assert!(
        last["counters"]["egress_pdm_inserted"].as_u64() >= Some(3),
        "{last}"
    );
    // The first still reports flows after the refused attempts: the ping's, with PDM
    // on each request (ping may use more than one identifier: any flow will do).
    let icmp: Vec<String> = lines
        .iter()
        .filter(|l| l["type"] == "flow" && l["proto"] == "icmpv6")
        .map(|l| {
            format!(
                "ts {} port {} tx {} rx {} age {}",
                l["ts"], l["local_port"], l["tx_pdm"], l["rx_packets"], l["age_s"]
            )
        })
        .collect();
    let ping_flows: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["type"] == "flow" && l["proto"] == "icmpv6" && l["ts"].as_f64() > Some(refused_at)
        })
        .collect();
    let sent: u64 = {
        let last_ts = ping_flows.last().map(|l| l["ts"].clone());
        ping_flows
            .iter()
            .filter(|l| Some(&l["ts"]) == last_ts.as_ref())
            .map(|l| l["tx_pdm"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        sent >= 3,
        "refused at {refused_at}; ping flows reported: {icmp:#?}"
    );
}

#[test]
fn interface_removed_while_attached_exits_non_zero() {
    // TCX links and XDP, the default (TC ingress on a veth), and the legacy netlink
    // filters.
    for mode in [
        &["--ingress", "xdp"][..],
        &[],
        &["--attach", "netlink", "--ingress", "tc"],
    ] {
        let h = TwoHosts::new("gone");
        clear_stale_state(&h.a);
        let mut child =
            h.a.cmd(pdm_bin())
                .args(["run", "--iface", IFACE, "--json", "--interval", "200ms"])
                .args(mode)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
        // Its stderr, line by line, so the interface goes only once both programs are
        // attached (loading and verifying them can take seconds on a busy machine).
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let attach_deadline = Instant::now() + Duration::from_secs(60);
        while !common::both_attached(&lines) {
            let left = attach_deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(e) => panic!("{mode:?}: pdm did not attach both programs ({e}): {lines:?}"),
            }
        }
        h.a.ip(&["link", "del", IFACE]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("{mode:?}: pdm did not notice the interface went away");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        reader.join().expect("stderr reader");
        lines.extend(rx.try_iter());
        let err = lines.join("\n");
        assert_eq!(status.code(), Some(3), "{mode:?}: {err}");
        assert!(
            err.contains("pdm: interface pdm0 disappeared; detached and exiting"),
            "{mode:?}: {err}"
        );
        // The default on a veth: TC ingress, saying why.
        assert_eq!(
            err.contains("pdm_ingress_tc: tc ingress (auto: a veth, where XDP would cost the peer its GSO) (tcx link)"),
            mode.is_empty(),
            "{mode:?}: {err}"
        );
        // XDP on a veth: one warning that TC ingress keeps the peer's GSO.
        let xdp = mode.contains(&"xdp");
        assert_eq!(
            err.contains("pdm0 is a veth") && err.contains("`--ingress tc` keeps GSO"),
            xdp,
            "{mode:?}: {err}"
        );
        // Nothing but the start-up lines and that one.
        for l in err.lines() {
            assert!(
                l.contains("attached to") || l.contains("disappeared") || l.contains("is a veth"),
                "{mode:?}: unexpected line `{l}` in:\n{err}"
            );
        }
        assert_eq!(
            run_state(&h.a),
            Vec::<String>::new(),
            "{mode:?}: state left"
        );
    }
}
