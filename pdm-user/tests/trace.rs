//! `pdm trace` on five test hosts in a line, client — r1 — r2 — r3 — server: where
//! packets carrying PDM stop, checked against paths whose behaviour the test sets up
//! with nftables, and against nftables counters of the PDM options really on the wire.

mod common;

use std::{net::TcpListener, process::Stdio};

use common::{
    Netns,
    chain::{self, CLIENT, Chain, R1, R2, R3, SERVER},
    hosts::Hosts,
    pdm_bin,
};
use serde_json::Value;

/// Short waits and few hops keep every trace under a second or so.
const FAST: &[&str] = &["-n", "--wait", "200ms", "--max-hops", "6"];

/// Runs `pdm trace args...` in `ns`: (exit code, stdout, stderr).
fn pdm_trace(ns: &Netns, args: &[&str]) -> (i32, String, String) {
    let out = ns
        .cmd(pdm_bin())
        .arg("trace")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pdm trace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pdm trace --json FAST... SERVER extra...` from the client; must succeed.
fn trace_json(c: &Chain, extra: &[&str]) -> Value {
    let mut args = vec![SERVER, "--json"];
    args.extend(FAST);
    args.extend(extra);
    let (code, out, err) = pdm_trace(&c.client, &args);
    assert_eq!(code, 0, "pdm trace {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn responders(trace: &Value) -> Vec<Option<&str>> {
    trace
        .as_array()
        .expect("a list of hops")
        .iter()
        .map(|h| h["responder"].as_str())
        .collect()
}

#[test]
fn a_router_dropping_dstopts_is_named_as_hop_n_plus_1() {
    let c = Chain::new("trd");
    c.drop_dstopts_at_r2();
    Chain::count_pdm(&c.r1);

    let v = trace_json(&c, &[]);
    assert_eq!(v["target"], SERVER);
    assert_eq!(v["source"], CLIENT);
    assert_eq!(
        responders(&v["plain"]),
        [Some(R1), Some(R2), Some(R3), Some(SERVER)],
        "{v}"
    );
    assert_eq!(responders(&v["pdm"]), [Some(R1), None, None, None], "{v}");
    let verdict = &v["verdict"];
    assert_eq!(verdict["last_pdm_hop"], 1, "{v}");
    assert_eq!(verdict["last_pdm_responder"], R1, "{v}");
    assert_eq!(verdict["next_hop"], 2, "{v}");
    assert_eq!(verdict["next_hop_responder"], R2, "{v}");
    assert_eq!(verdict["reached_plain"], true, "{v}");
    assert_eq!(verdict["reached_with_pdm"], false, "{v}");
    // r1 quoted the probe it answered with the PDM header still on it.
    assert_eq!(v["pdm"][0]["quoted_pdm"], true, "{v}");
    assert_eq!(v["plain"][3]["reply"], "port-unreachable", "{v}");
    // Every PDM probe reached r1 with its PDM option, no plain one did: 4 hops × 3,
    // and 2 retries of each of the 3 hops that stayed silent.
    assert_eq!(chain::pdm_seen(&c.r1), 4 * 3 + 2 * 3);
    assert_eq!(v["pdm"][1]["retried"], 2, "{v}");
    assert_eq!(v["plain"][1]["retried"], 2, "{v}");

    // The other probe kinds come to the same verdict.
    for (proto, reply) in [("icmp", "echo-reply"), ("tcp", "rst")] {
        let v = trace_json(&c, &["--proto", proto]);
        let verdict = &v["verdict"];
        assert_eq!(verdict["last_pdm_responder"], R1, "{proto}: {v}");
        assert_eq!(verdict["next_hop_responder"], R2, "{proto}: {v}");
        assert_eq!(verdict["reached_plain"], true, "{proto}: {v}");
        assert_eq!(verdict["reached_with_pdm"], false, "{proto}: {v}");
        assert_eq!(v["plain"][3]["reply"], reply, "{proto}: {v}");
    }

    // The same as text: both traces side by side, then the verdict.
    let mut args = vec![SERVER];
    args.extend(FAST);
    let (code, out, err) = pdm_trace(&c.client, &args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("without PDM") && out.contains("with PDM"),
        "{out}"
    );
    let hop2 = out
        .lines()
        .find(|l| l.trim_start().starts_with("2 "))
        .expect("a hop 2 line");
    assert!(
        hop2.contains(R2) && hop2.trim_end().ends_with("*  *  *"),
        "{out}"
    );
    let verdict_line = out
        .lines()
        .find(|l| l.starts_with("verdict: "))
        .expect("a verdict line");
    assert!(
        verdict_line.contains(&format!("hop 1 ({R1})"))
            && verdict_line.contains(&format!("hop 2 on the plain trace is {R2}")),
        "{out}"
    );
    assert!(out.contains("destination: reached without PDM"), "{out}");
}

#[test]
fn on_a_clean_path_every_protocol_reaches_the_server_with_pdm() {
    let c = Chain::new("trc");
    Chain::count_pdm(&c.r1);
    Chain::count_pdm(&c.server);
    let listener = c
        .server
        .in_ns(|| TcpListener::bind("[::]:8080").expect("listen on the server"));
    let cases: &[(&[&str], &str)] = &[
        (&["--proto", "udp"], "port-unreachable"),
        (&["--proto", "icmp"], "echo-reply"),
        (&["--proto", "tcp"], "rst"),
        (&["--proto", "tcp", "--port", "8080"], "syn-ack"),
        (&["--proto", "udp", "--port", "5000"], "port-unreachable"),
    ];
    for (args, reply) in cases {
        let (r1_before, server_before) = (chain::pdm_seen(&c.r1), chain::pdm_seen(&c.server));
        let v = trace_json(&c, args);
        let verdict = &v["verdict"];
        assert_eq!(verdict["reached_plain"], true, "{args:?}: {v}");
        assert_eq!(verdict["reached_with_pdm"], true, "{args:?}: {v}");
        assert_eq!(verdict["last_pdm_hop"], 4, "{args:?}: {v}");
        assert_eq!(verdict["last_pdm_responder"], SERVER, "{args:?}: {v}");
        assert_eq!(verdict["next_hop"], Value::Null, "{args:?}: {v}");
        assert_eq!(verdict["finding"], "pdm_reaches", "{args:?}: {v}");
        for trace in ["plain", "pdm"] {
            assert_eq!(
                responders(&v[trace]),
                [Some(R1), Some(R2), Some(R3), Some(SERVER)],
                "{args:?} {trace}: {v}"
            );
            assert_eq!(v[trace][3]["reply"], *reply, "{args:?} {trace}: {v}");
            assert_eq!(
                v[trace][0]["rtt_ms"].as_array().map(Vec::len),
                Some(3),
                "{args:?} {trace}: {v}"
            );
        }
        // The counters are the wire's word: PDM probes passed r1 and reached the
        // server. Hop 4's three probes arrive at the server; a TCP probe that was
        // answered with a SYN-ACK adds the handshake's closing RST.
        let at_r1 = chain::pdm_seen(&c.r1) - r1_before;
        let at_server = chain::pdm_seen(&c.server) - server_before;
        assert!(at_r1 >= 12, "{args:?}: {at_r1} PDM packets at r1");
        assert!(
            at_server >= 3,
            "{args:?}: {at_server} PDM packets at the server"
        );
    }
    drop(listener);
}

#[test]
fn a_silent_server_is_not_reached_and_the_verdict_blames_nobody() {
    let c = Chain::new("trs");
    c.silence_server();
    let v = trace_json(&c, &[]);
    let verdict = &v["verdict"];
    assert_eq!(verdict["reached_plain"], false, "{v}");
    assert_eq!(verdict["reached_with_pdm"], false, "{v}");
    assert_eq!(verdict["last_pdm_hop"], 3, "{v}");
    assert_eq!(verdict["last_pdm_responder"], R3, "{v}");
    assert_eq!(verdict["next_hop"], 4, "{v}");
    assert_eq!(verdict["next_hop_responder"], Value::Null, "{v}");
    assert_eq!(verdict["finding"], "no_difference", "{v}");
    for trace in ["plain", "pdm"] {
        assert_eq!(
            responders(&v[trace]),
            [Some(R1), Some(R2), Some(R3), None, None, None],
            "{trace}: {v}"
        );
    }
}

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    let c = Chain::new("trb");
    let cases: &[(&[&str], &str)] = &[
        (
            &["nonexistent.invalid"],
            "cannot resolve `nonexistent.invalid`",
        ),
        (&[SERVER, "--max-hops", "0"], "1..=255"),
        (&[SERVER, "--max-hops", "256"], "1..=255"),
        (&[SERVER, "--wait", "soon"], "is not a duration"),
        (&[SERVER, "--proto", "icmp", "--port", "80"], "--port"),
    ];
    for (args, want) in cases {
        let (code, _, err) = pdm_trace(&c.client, args);
        assert_ne!(code, 0, "pdm trace {args:?} succeeded");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.contains(want),
            "pdm trace {args:?}: `{want}` not in:\n{err}"
        );
    }

    // No route: a host with only loopback.
    let lonely = Netns::new("trn");
    let (code, _, err) = pdm_trace(&lonely, &["fd99::1", "-n"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim(), "pdm: no IPv6 route to fd99::1");

    // Not root: no capabilities at all, then root without CAP_NET_RAW.
    let out = c
        .client
        .cmd("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args([pdm_bin(), "trace", SERVER, "-n"])
        .stdin(Stdio::null())
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        err.trim(),
        "pdm: pdm trace needs root or CAP_NET_RAW (run with sudo)"
    );
    let out = c
        .client
        .cmd("capsh")
        .args(["--drop=cap_net_raw", "--", "-c"])
        .arg(format!("{} trace {SERVER} -n", pdm_bin()))
        .stdin(Stdio::null())
        .output()
        .expect("capsh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        err.trim(),
        "pdm: pdm trace needs root or CAP_NET_RAW (run with sudo)"
    );
}

#[test]
fn a_router_dropping_in_its_forward_chain_answers_and_is_hop_n_and_names_resolve() {
    let c = Chain::new("trf");
    c.drop_dstopts_forwarded_by_r2();
    let _hosts = Hosts::new(
        &c.client,
        &format!("{R2} r2.test\n{R3} r3.test\n{SERVER} server.test\n"),
    );
    // By name, and with reverse lookups (no -n).
    let (code, out, err) = pdm_trace(
        &c.client,
        &[
            "server.test",
            "--json",
            "--wait",
            "200ms",
            "--max-hops",
            "6",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["host"], "server.test");
    assert_eq!(v["target"], SERVER);
    let verdict = &v["verdict"];
    assert_eq!(verdict["last_pdm_hop"], 2, "{v}");
    assert_eq!(verdict["last_pdm_responder"], R2, "{v}");
    assert_eq!(verdict["next_hop"], 3, "{v}");
    assert_eq!(verdict["next_hop_responder"], R3, "{v}");
    assert_eq!(verdict["reached_with_pdm"], false, "{v}");
    let names: Vec<&str> = v["plain"]
        .as_array()
        .expect("hops")
        .iter()
        .map(|h| h["name"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(names, ["-", "r2.test", "r3.test", "server.test"], "{v}");
}

/// A server running `pdm run` answers with PDM of its own; the trace notices.
#[test]
fn a_pdm_speaking_server_is_recognised() {
    use std::io::{BufRead as _, BufReader};

    let c = Chain::new("trp");
    let mut pdm = c
        .server
        .cmd(pdm_bin())
        .args(["run", "--iface", "left", "--json", "--ingress", "tc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pdm run");
    let mut stderr = BufReader::new(pdm.stderr.take().expect("stderr"));
    let mut attached = 0;
    let mut seen = Vec::new();
    while attached < 2 {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read pdm's stderr") == 0 {
            panic!("pdm run ended before attaching: {seen:?}");
        }
        attached += usize::from(line.contains("attached to"));
        seen.push(line);
    }
    let v = trace_json(&c, &["--proto", "icmp"]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pdm.id() as i32, libc::SIGTERM) };
    let _ = pdm.wait();
    assert_eq!(v["verdict"]["reached_with_pdm"], true, "{v}");
    for trace in ["plain", "pdm"] {
        assert_eq!(v[trace][3]["reply"], "echo-reply", "{v}");
        assert_eq!(v[trace][3]["reply_pdm"], true, "{trace}: {v}");
        // Routers do not speak PDM.
        assert_eq!(v[trace][0]["reply_pdm"], false, "{trace}: {v}");
    }
    assert_eq!(v["verdict"]["pdm_destination"]["reply_pdm"], true, "{v}");
}
