//! The loader's behaviour at its edges: bad input, a second instance, the interface
//! going away. Each bad input gets one clear line, a non-zero exit, and nothing attached.

mod common;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use common::{IFACE, Netns, Pdm, TwoHosts, pdm_bin};

/// Runs `pdm args...` in `ns`; returns (exit code, stderr).
fn pdm(ns: &Netns, args: &[&str]) -> (i32, String) {
    let out = ns
        .cmd(pdm_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pdm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn nothing_attached(ns: &Netns) {
    let link = ns.ip(&["-d", "link", "show", IFACE]);
    assert!(!link.contains("xdp"), "XDP left attached: {link}");
    let tcx = ns.in_ns(|| {
        use aya::programs::{SchedClassifier, TcAttachType};
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|at| {
                SchedClassifier::query_tcx(IFACE, at)
                    .expect("query tcx")
                    .1
                    .len()
            })
            .sum::<usize>()
    });
    assert_eq!(tcx, 0, "TCX programs left attached");
}

#[test]
fn bad_input_gets_one_clear_line_and_attaches_nothing() {
    let h = TwoHosts::new("cli");
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--iface", "nosuchif0"],
            "no interface named `nosuchif0`",
        ),
        (
            &["run", "--iface", IFACE, "--interval", "soon"],
            "is not a duration",
        ),
        (
            &["run", "--iface", IFACE, "--duration", "0s"],
            "is not a duration",
        ),
        (
            &["run", "--iface", IFACE, "--filter", "port x"],
            "not a port number",
        ),
        (
            &[
                "run",
                "--iface",
                IFACE,
                "--filter",
                "host nonexistent.invalid",
            ],
            "nonexistent.invalid",
        ),
        (&["run", "--iface", IFACE, "--max-flows", "0"], "max-flows"),
    ];
    for (args, want) in cases {
        let (code, err) = pdm(&h.a, args);
        assert_ne!(code, 0, "pdm {args:?} succeeded");
        assert!(
            err.contains(want),
            "pdm {args:?}: stderr lacks `{want}`:\n{err}"
        );
        nothing_attached(&h.a);
    }

    // IPv6 disabled on the interface.
    h.a.run(
        "sysctl",
        &["-qw", &format!("net.ipv6.conf.{IFACE}.disable_ipv6=1")],
    );
    let (code, err) = pdm(&h.a, &["run", "--iface", IFACE]);
    assert_ne!(code, 0);
    assert!(err.contains("IPv6 disabled"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    nothing_attached(&h.a);
}

#[test]
fn without_privileges_it_says_so() {
    let h = TwoHosts::new("priv");
    // Drop every capability, as a non-root user would run it.
    let out =
        h.a.cmd("setpriv")
            .args([
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(pdm_bin())
            .args(["run", "--iface", IFACE])
            .stdin(Stdio::null())
            .output()
            .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs root (or CAP_BPF and CAP_NET_ADMIN)"),
        "{err}"
    );
    nothing_attached(&h.a);
}

#[test]
fn a_second_instance_refuses_and_the_first_keeps_working() {
    let h = TwoHosts::new("two");
    let first = Pdm::start(&h.a, &[]);
    let (code, err) = pdm(&h.a, &["run", "--iface", IFACE, "--json"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("another pdm") && err.contains(&first.pid().to_string()),
        "{err}"
    );
    common::traffic::ping(&h, 3);
    let lines = first.stop();
    let last = lines.last().expect("a report");
    assert!(
        last["counters"]["egress_pdm_inserted"].as_u64() >= Some(3),
        "{last}"
    );
}

#[test]
fn interface_removed_while_attached_exits_non_zero() {
    let h = TwoHosts::new("gone");
    let mut child =
        h.a.cmd(pdm_bin())
            .args(["run", "--iface", IFACE, "--json", "--interval", "200ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    h.a.ip(&["link", "del", IFACE]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "pdm did not notice the interface went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("disappeared"), "{err}");
}
