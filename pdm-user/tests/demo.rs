//! The embedded demo (`cargo xtask run` with no interface): it measures its flows, and
//! removes everything it created on exit, after SIGKILL on the next run.

mod common;

use std::process::{Command, Stdio};

use common::pdm_bin;
use pdm_user::demo::{CLIENT_NS, SERVER_NS};

fn demo_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n == CLIENT_NS || *n == SERVER_NS)
        .map(str::to_owned)
        .collect()
}

fn run_demo(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(pdm_bin())
        .args(["demo", "--json", "--processing-time", "5ms"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pdm demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The only test using the demo's fixed namespace names: the steps run in order.
#[test]
fn demo_measures_its_flows_and_cleans_up_even_after_sigkill() {
    let lines = run_demo(&["--duration", "4s"]);
    assert!(
        demo_namespaces().is_empty(),
        "the demo left {:?}",
        demo_namespaces()
    );

    let flow =
        |proto: &str, port: u16| common::last_flow(&lines, proto, (port != 0).then_some(port));
    let us = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    for (proto, port) in [
        ("tcp", pdm_user::demo::PORT_RR),
        ("udp", pdm_user::demo::PORT_UDP),
    ] {
        let f = flow(proto, port);
        let sd = us(f, "server_delay_us_p50");
        assert!(
            (5000.0..6500.0).contains(&sd),
            "{proto} server delay {sd} µs for a 5 ms server"
        );
        assert!(us(f, "rtt_us_p50") < 2000.0, "{f}");
    }
    let bulk = flow("tcp", pdm_user::demo::PORT_BULK);
    assert!(
        bulk["tx_bytes"].as_u64() > Some(10_000_000),
        "bulk flow: {bulk}"
    );
    assert!(us(flow("icmpv6", 0), "rtt_us_p50") > 0.0);

    // A demo killed with SIGKILL leaves its hosts behind; the next run removes them.
    let mut child = Command::new(pdm_bin())
        .args(["demo", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while demo_namespaces().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert_eq!(
        demo_namespaces().len(),
        2,
        "SIGKILL cannot clean up: the hosts stay until the next run"
    );
    let lines = run_demo(&["--duration", "2s"]);
    assert!(
        lines.iter().any(|l| l["type"] == "flow"),
        "the next run works"
    );
    assert!(
        demo_namespaces().is_empty(),
        "the next run removed the leftovers and its own"
    );
}
