//! The live view, driven in tmux as a person would: it shows the same figures as the
//! NDJSON log of the same run, in the table and in a flow's detail (Enter, Esc back),
//! quits on `q`, and gives the terminal back.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{ADDR_A, ADDR_B, IFACE, Pdm, TwoHosts, pdm_bin, traffic::held_requests};

fn tmux(args: &[&str]) -> String {
    let out = common::run_ok(Command::new("tmux").args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Session(String);

impl Session {
    /// Runs `cmd` in this session, on a 200×40 terminal.
    fn run(&self, cmd: &str) {
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &self.0,
            "-x",
            "200",
            "-y",
            "40",
            cmd,
        ]);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// The UDP flow to `port` has the same RTT p50 and p99 and server delay p50 in the view
/// (`screen`) as in the last report of it in the NDJSON `log`; returns that report.
fn view_matches_log(screen: &str, log: &std::path::Path, port: u16) -> serde_json::Value {
    let row = screen
        .lines()
        .find(|l| l.contains(&format!(":{port}")) && l.contains("udp"))
        .unwrap_or_else(|| panic!("no row for the UDP flow:\n{screen}"));
    let logged = std::fs::read_to_string(log).expect("log");
    let last: serde_json::Value = logged
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|v| v["type"] == "flow" && v["remote_port"] == port)
        .expect("the flow in the log");
    for key in ["rtt_us_p50", "rtt_us_p99", "server_delay_us_p50"] {
        let ns = (last[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {last}"))
            * 1000.0)
            .round() as u64;
        let shown = pdm_user::sinks::tui::format_ns(ns);
        assert!(
            row.contains(&shown),
            "{key}: log says {shown}, the view shows:\n{row}"
        );
    }
    last
}

/// Waits (at most 30 s) until the pane of `session` shows `text`; returns the screen.
fn wait_for_screen(session: &Session, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = tmux(&["capture-pane", "-p", "-t", &session.0]);
        if s.contains(text) {
            return s;
        }
        assert!(Instant::now() < deadline, "`{text}` did not come up:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `pdm observe` on a router in the live view: the header says it observes, and where;
/// the flow is shown from its client with the figures its `--log` records.
#[test]
fn the_observer_view_says_where_it_observes_and_shows_what_the_log_records() {
    use common::router::{CLIENT_ADDR, CLIENT_IF, Line, SERVER_ADDR, SERVER_IF};
    let line = Line::new("tuio");
    let _client_pdm = Pdm::start_on(&line.client, CLIENT_IF, &["--ingress", "tc"]);
    let _server_pdm = Pdm::start_on(&line.server, SERVER_IF, &["--ingress", "tc"]);
    let log = std::env::temp_dir().join(format!("{}.ndjson", line.router.name));
    let _ = std::fs::remove_file(&log);
    let session = Session(line.router.name.clone());
    session.run(&format!(
        "ip netns exec {} {} observe -i rc -i rs --interval 500ms --sample-interval 0 --log {}; sleep 30",
        line.router.name,
        pdm_bin(),
        log.display(),
    ));
    let header = wait_for_screen(&session, "observing rc,rs");
    assert!(
        header.contains("CLIENT") && header.contains("SERVER"),
        "{header}"
    );
    let port = 7700;
    held_requests(
        "udp",
        (&line.client, CLIENT_ADDR),
        (&line.server, SERVER_ADDR),
        port,
        20,
        Duration::from_millis(3),
        Duration::from_millis(10),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let screen = wait_for_screen(&session, &format!(":{port}"));
    let last = view_matches_log(&screen, &log, port);
    assert_eq!(last["local_addr"], CLIENT_ADDR, "{last}");
    assert!(
        screen.contains("observe:") && screen.contains("with PDM"),
        "{screen}"
    );
    tmux(&["send-keys", "-t", &session.0, "q"]);
}

#[test]
fn the_view_shows_what_the_log_records_and_quits_on_q() {
    let h = TwoHosts::new("tui");
    let _server_pdm = Pdm::start(&h.b, &["--ingress", "tc"]);
    let log = std::env::temp_dir().join(format!("{}.ndjson", h.a.name));
    let done = std::env::temp_dir().join(format!("{}.exit", h.a.name));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&done);
    let session = Session(h.a.name.clone());
    let cmd = format!(
        "ip netns exec {} {} run --iface {IFACE} --ingress tc --interval 500ms --log {}; echo $? > {}; sleep 30",
        h.a.name,
        pdm_bin(),
        log.display(),
        done.display()
    );
    session.run(&cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tmux(&["capture-pane", "-p", "-t", &session.0]).contains("RTT p50") {
        assert!(Instant::now() < deadline, "the view did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A UDP flow with a 3 ms server, then quiet, so the figures stand still.
    let port = 7500;
    held_requests(
        "udp",
        (&h.a, ADDR_A),
        (&h.b, ADDR_B),
        port,
        20,
        Duration::from_millis(3),
        Duration::from_millis(10),
    );
    std::thread::sleep(Duration::from_millis(1500));

    let screen = tmux(&["capture-pane", "-p", "-t", &session.0]);
    let last = view_matches_log(&screen, &log, port);

    // Its detail: select it (↓ from the top) and Enter. The RTT and server delay since
    // the flow started are those the log has; Esc is back to the table.
    let table: Vec<&str> = screen
        .lines()
        .skip_while(|l| !l.contains("LOCAL"))
        .skip(1)
        .collect();
    let at = table
        .iter()
        .position(|l| l.contains(&format!(":{port}")) && l.contains("udp"))
        .expect("the row");
    tmux(&["send-keys", "-t", &session.0, "Home"]);
    for _ in 0..at {
        tmux(&["send-keys", "-t", &session.0, "Down"]);
    }
    tmux(&["send-keys", "-t", &session.0, "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let detail = loop {
        let s = tmux(&["capture-pane", "-p", "-t", &session.0]);
        // The distributions come with the next refresh after Enter.
        if s.contains("RTT since start: p50 ") && !s.contains("RTT since start: p50 -") {
            break s;
        }
        assert!(Instant::now() < deadline, "no detail view:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        detail.contains(&format!(":{port}")),
        "the flow's detail:\n{detail}"
    );
    assert!(detail.contains("over time"), "{detail}");
    for (what, key) in [
        ("RTT", "rtt_all_us_p50"),
        ("server delay", "server_delay_all_us_p50"),
    ] {
        let ns = (last[key].as_f64().expect("p50") * 1000.0).round() as u64;
        let want = format!(
            "{what} since start: p50 {}",
            pdm_user::sinks::tui::format_ns(ns)
        );
        assert!(detail.contains(&want), "{want} as the log says:\n{detail}");
    }
    tmux(&["send-keys", "-t", &session.0, "Escape"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tmux(&["capture-pane", "-p", "-t", &session.0]);
        if s.contains("RTT p50") && !s.contains("since start") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Esc did not return to the table:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    tmux(&["send-keys", "-t", &session.0, "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done.exists() {
        assert!(Instant::now() < deadline, "q did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(&done).expect("exit code").trim(),
        "0"
    );
    // Back on the normal screen: the table is gone.
    let after = tmux(&["capture-pane", "-p", "-t", &session.0]);
    assert!(
        !after.contains("RTT p50"),
        "the view is still on screen after quitting:\n{after}"
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&done);
}

/// `pdm analyze` on a terminal: the capture's flows in the same view, a flow's detail
/// with the figures `pdm analyze --json` gives, `q` ends it and the summary follows.
#[test]
fn analyze_on_a_terminal_shows_the_capture_in_the_view() {
    use pdm_common::{time::encode_delta_ns, wire::PdmFields};
    use testbed::pcap::{self, PcapWriter};
    let dir = std::env::temp_dir().join(format!("pdm-tui-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cap = dir.join("one.pcap");
    let mut w = PcapWriter::create(&cap, true).expect("pcap");
    let (a, b) = (
        "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
    );
    let t0 = 1_700_000_000_000_000_000u64;
    for i in 0..60u64 {
        let hold = 3_000_000 + (i % 7) * 100_000;
        let psn = i as u16;
        let q = PdmFields {
            psn_this: psn,
            psn_last_recv: psn.wrapping_sub(1),
            ..PdmFields::default()
        };
        let r = PdmFields {
            psn_this: psn,
            psn_last_recv: psn,
            scale_dtlr: encode_delta_ns(hold).scale,
            dtlr: encode_delta_ns(hold).delta,
            ..PdmFields::default()
        };
        let dst = |f: &PdmFields| vec![(pcap::DSTOPTS, f.encode_header(0).to_vec())];
        w.ipv6(
            t0 + i * 100_000_000,
            &pcap::ipv6_packet(a, b, &dst(&q), pcap::UDP, &pcap::udp(41000, 7600, &[1; 30])),
        )
        .expect("write");
        w.ipv6(
            t0 + i * 100_000_000 + hold + 50_000,
            &pcap::ipv6_packet(b, a, &dst(&r), pcap::UDP, &pcap::udp(7600, 41000, &[2; 90])),
        )
        .expect("write");
    }
    w.finish().expect("flush");
    let json = Command::new(pdm_bin())
        .args(["analyze", "--json"])
        .arg(&cap)
        .output()
        .expect("pdm analyze");
    let flow: serde_json::Value = serde_json::from_slice(
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .next()
            .expect("a flow")
            .as_bytes(),
    )
    .expect("json");
    let done = dir.join("exit");
    let out = dir.join("stderr");
    let session = Session(format!("pdm-analyze-{}", std::process::id()));
    let cmd = format!(
        "{} analyze {} 2> {}; echo $? > {}; sleep 30",
        pdm_bin(),
        cap.display(),
        out.display(),
        done.display()
    );
    session.run(&cmd);
    let wait = |what: &str, cond: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = tmux(&["capture-pane", "-p", "-t", &session.0]);
            if cond(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let table = wait("the capture's flow in the view", &|s| {
        s.contains("CLIENT") && s.contains(":7600")
    });
    assert!(table.contains("capture:"), "{table}");
    tmux(&["send-keys", "-t", &session.0, "Enter"]);
    let ns = (flow["server_delay_all_us_p50"].as_f64().expect("p50") * 1000.0).round() as u64;
    let want = format!(
        "server delay since start: p50 {}",
        pdm_user::sinks::tui::format_ns(ns)
    );
    let detail = wait("the flow's detail", &|s| s.contains(&want));
    assert!(detail.contains("over time"), "{detail}");
    tmux(&["send-keys", "-t", &session.0, "Escape"]);
    wait("back to the table", &|s| {
        s.contains("CLIENT") && !s.contains("since start")
    });
    tmux(&["send-keys", "-t", &session.0, "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done.exists() {
        assert!(Instant::now() < deadline, "q did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(&done).expect("code").trim(), "0");
    let err = std::fs::read_to_string(&out).expect("stderr");
    assert!(
        err.contains("120 packets read"),
        "the summary after the view: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
