//! `pdm analyze` on captures: `--packets` against tshark's decoding of the same file,
//! field by field, and bad input (one line, non-zero exit; a cut file read as far as it
//! goes, and said so).

mod common;

use std::{process::Command, sync::mpsc, time::Duration};

use common::{
    Pdm, TwoHosts,
    analyze::{analyze, check_against_tshark},
    pdm_peer::{self, Behaviour},
    router::{self, Line},
    traffic::{Capture, ping, tcp_transfer, udp_exchange},
};
use pdm_common::time::encode_delta_ns;
use serde_json::Value;

/// pdm's own traffic (ping, UDP request/response, a TCP transfer) captured by dumpcap
/// on one end: every packet with PDM, and every field, as tshark decodes them.
#[test]
fn packets_of_a_capture_match_tshark_field_by_field() {
    let h = TwoHosts::new("anl");
    let _pdm_a = Pdm::start(&h.a, &["--ingress", "tc"]);
    let _pdm_b = Pdm::start(&h.b, &["--ingress", "tc"]);
    let mut cap = Capture::start(&h.a);
    // The same packets through Linux's "any" device: cooked (SLL2) link headers.
    let mut cooked = Capture::start_on(&h.a, "any");
    ping(&h, 10);
    udp_exchange(&h, 7400, 20);
    tcp_transfer(&h, 7401, 2 << 20);
    assert_eq!(cap.stop(), 0, "the capture dropped packets");
    assert_eq!(cooked.stop(), 0, "the capture on any dropped packets");
    let (code, lines, err) = analyze(&["--packets"], &[&cooked.path]);
    assert_eq!(code, 0, "{err}");
    check_against_tshark(&cooked.path, &lines, "");
    let (code, lines, err) = analyze(&["--packets"], &[&cap.path]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("with PDM"), "a summary line: {err}");
    let protos: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l["proto"].as_str()).collect();
    assert_eq!(
        protos,
        ["icmpv6", "tcp", "udp"].into_iter().collect(),
        "every kind of flow"
    );
    check_against_tshark(&cap.path, &lines, "");

    // The same capture as pcap (microsecond times) and cut in the middle of a record.
    let pcap = cap.path.with_extension("pcap");
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&cap.path)
        .args(["-F", "pcap", "-w"])
        .arg(&pcap)
        .output()
        .expect("tshark -w");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, lines, err) = analyze(&["--packets"], &[&pcap]);
    assert_eq!(code, 0, "{err}");
    check_against_tshark(&pcap, &lines, "");
    let bytes = std::fs::read(&pcap).expect("pcap");
    let cut = pcap.with_extension("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3 + 7]).expect("write");
    let (code, lines, err) = analyze(&["--packets"], &[&cut]);
    assert_eq!(code, 0, "a cut file is read as far as it goes: {err}");
    assert!(err.contains("cut short at octet"), "{err}");
    check_against_tshark(&cut, &lines, "");
    for f in [pcap, cut] {
        let _ = std::fs::remove_file(f);
    }
}

/// Bad input: one line saying what is wrong, a non-zero exit, nothing on stdout.
#[test]
fn bad_input_gets_one_line_and_a_nonzero_exit() {
    let dir = std::env::temp_dir().join(format!("pdm-analyze-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a capture at all, just text\n".repeat(10)).expect("write");
    let empty = dir.join("empty.pcap");
    std::fs::write(&empty, b"").expect("write");
    // A valid pcap header with link type 147 (USER0) and no records.
    let mut user0 = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    user0.extend_from_slice(&[0; 8]);
    user0.extend_from_slice(&65535u32.to_le_bytes());
    user0.extend_from_slice(&147u32.to_le_bytes());
    let linktype = dir.join("user0.pcap");
    std::fs::write(&linktype, &user0).expect("write");
    let missing = dir.join("missing.pcap");
    for (file, says) in [
        (&text, "not a pcap or pcapng capture"),
        (&empty, "is empty"),
        (&linktype, "link type 147 is not supported"),
        (&missing, "cannot open"),
    ] {
        let (code, lines, err) = analyze(&["--packets"], &[file.as_path()]);
        assert_ne!(code, 0, "{}: {err}", file.display());
        assert!(lines.is_empty(), "{}: nothing on stdout", file.display());
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(says), "{}: {err}", file.display());
    }
    // The per-flow mode takes the same files, and refuses the same way.
    let (code, lines, err) = analyze(&[], &[text.as_path()]);
    assert_ne!(code, 0);
    assert!(
        lines.is_empty() && err.contains("not a pcap or pcapng capture"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A UDP server in `ns` holding each request `hold` before answering, `n` requests.
fn holding_server(ns: &common::Netns, port: u16, hold: std::time::Duration, n: usize) {
    ns.in_ns(|| {
        let u =
            std::net::UdpSocket::bind(common::traffic::sock(common::ADDR_B, port)).expect("bind");
        u.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let Ok((len, from)) = u.recv_from(&mut buf) else {
                break;
            };
            std::thread::sleep(hold);
            u.send_to(&buf[..len], from).expect("answer");
        }
    });
}

/// A capture of pdm's own request/response traffic at the client: the figures
/// `pdm analyze` computes from the PDM fields alone are those `pdm run` measured on
/// the same host for the same flow (server delay p50 within 1 %, RTT p50 within 5 % or
/// 20 µs), and the flow's packets are counted as captured.
#[test]
fn flows_of_a_capture_match_what_pdm_run_measured() {
    const N: usize = 40;
    const PORT: u16 = 7402;
    let h = TwoHosts::new("anf");
    let pdm_a = Pdm::start(&h.a, &["--ingress", "tc", "--interval", "200ms"]);
    let _pdm_b = Pdm::start(&h.b, &["--ingress", "tc"]);
    let mut cap = Capture::start(&h.a);
    std::thread::scope(|s| {
        s.spawn(|| holding_server(&h.b, PORT, std::time::Duration::from_millis(3), N));
        std::thread::sleep(std::time::Duration::from_millis(200));
        h.a.in_ns(|| {
            let u =
                std::net::UdpSocket::bind(common::traffic::sock(common::ADDR_A, 0)).expect("bind");
            u.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            for i in 0..N {
                u.send_to(
                    format!("request {i}").as_bytes(),
                    common::traffic::sock(common::ADDR_B, PORT),
                )
                .expect("send");
                u.recv_from(&mut buf).expect("answer");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(cap.stop(), 0, "the capture dropped packets");
    let run = pdm_a.stop();
    let live = common::last_flow(&run, "udp", Some(PORT));
    let f = analyzed_as_run(&cap.path, PORT, live);
    // The client is the host the capture was taken at.
    assert_eq!(f["local_addr"], common::ADDR_A);
    assert!(
        f["rtt_all_samples"].as_u64() >= Some(N as u64 - 2),
        "an RTT sample per exchange but the last: {f}"
    );
    for (k, want) in [
        ("tx_packets", N),
        ("rx_packets", N),
        ("tx_pdm", N),
        ("rx_pdm", N),
    ] {
        assert_eq!(f[k].as_u64(), Some(want as u64), "{k}: {f}");
    }
    assert_eq!(f["rx_lost"].as_u64(), Some(0), "{f}");
}

/// No pdm on the wire at all: a PDM client and a PDM server that put their own
/// Destination Options on each datagram through the socket API (`common::pdm_peer`),
/// through a router that delays each way by 2 ms, captured on the router's link to the
/// server. `pdm analyze` of that capture must give what the two peers did: the server
/// delay it claimed, the client's think time, an RTT from the PDM fields equal to the
/// client's own round trips less the server's hold, and a round trip on the capture's
/// clock that is only the router ↔ server part.
#[test]
fn two_independent_pdm_peers_captured_at_a_router() {
    const N: usize = 30;
    const PORT: u16 = 7710;
    let mut line = Line::new("anp");
    line.add_delay(Duration::from_millis(2));
    let mut cap = Capture::start_on(&line.router, "rs");
    let (ready_tx, ready_rx) = mpsc::channel();
    let behaviour = Behaviour {
        hold: Box::new(|i| Duration::from_micros(1500 + 100 * (i as u64 % 5))),
        dtlr: Box::new(|_, held| encode_delta_ns(held)),
    };
    let think = Duration::from_millis(3);
    let (answers, asked) = std::thread::scope(|s| {
        let server = s.spawn(|| {
            pdm_peer::serve(
                &line.server,
                router::SERVER_ADDR,
                PORT,
                N,
                behaviour,
                ready_tx,
            )
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("peer ready");
        let asked = pdm_peer::ask(
            &line.client,
            router::CLIENT_ADDR,
            router::SERVER_ADDR,
            PORT,
            N,
            think,
        );
        (server.join().expect("server"), asked)
    });
    assert_eq!(cap.stop(), 0, "the capture dropped packets");
    assert_eq!(answers.len(), N);
    let (code, flows, err) = analyze(&["--json", "--window", "1h"], &[&cap.path]);
    assert_eq!(code, 0, "{err}");
    let f = flows
        .iter()
        .find(|l| l["proto"] == "udp" && l["remote_port"] == PORT)
        .unwrap_or_else(|| panic!("no UDP flow to port {PORT}: {flows:?}"));
    eprintln!("pdm analyze: {f}");
    assert_eq!(
        f["local_addr"],
        router::CLIENT_ADDR,
        "the client asked first"
    );
    for k in ["tx_packets", "rx_packets", "tx_pdm", "rx_pdm"] {
        assert_eq!(f[k].as_u64(), Some(N as u64), "{k}: {f}");
    }
    for k in [
        "tx_lost",
        "rx_lost",
        "tx_duplicate",
        "rx_duplicate",
        "implausible",
    ] {
        assert_eq!(f[k].as_u64(), Some(0), "{k}: {f}");
    }
    let us = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k} in {f}"));
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        // As pdm's percentiles: the sample at rank round(0.5 × (n − 1)).
        v[((v.len() - 1) as f64 * 0.5).round() as usize]
    };
    // Server delay: the DTLRs the server sent, as it encoded them.
    let claimed: Vec<f64> = answers
        .iter()
        .map(|a| {
            let d = pdm_common::time::DeltaTime {
                delta: a.sent.dtlr,
                scale: a.sent.scale_dtlr,
            };
            pdm_common::time::decode_received(d).expect("RFC encoding") as f64 / 1e3
        })
        .collect();
    assert_eq!(f["server_delay_samples"], N, "{f}");
    let (sd, want) = (us("server_delay_us_p50"), median(claimed.clone()));
    assert!(
        (sd - want).abs() < 0.01,
        "server delay p50 {sd} µs, the server sent {want} µs"
    );
    // Client delay: the client's think time, each request after the first.
    let thought: Vec<f64> = asked[1..]
        .iter()
        .zip(&asked)
        .map(|(a, prev)| (a.sent_ns - prev.answered_ns) as f64 / 1e3)
        .collect();
    assert_eq!(f["client_delay_samples"], N - 1, "{f}");
    let (cd, want) = (us("client_delay_us_p50"), median(thought));
    assert!(
        (cd - want).abs() <= want * 0.01,
        "client delay p50 {cd} µs, the client took {want} µs"
    );
    // RTT from the fields: the client's own round trips less the server's hold.
    let path: Vec<f64> = asked
        .iter()
        .zip(&claimed)
        .map(|(a, held)| (a.answered_ns - a.sent_ns) as f64 / 1e3 - held)
        .collect();
    assert_eq!(
        f["rtt_samples"],
        N - 1,
        "every answer but the last is echoed: {f}"
    );
    let (rtt, want) = (us("rtt_us_p50"), median(path));
    eprintln!("RTT from the fields p50 {rtt} µs; the client's own, less the hold: {want} µs");
    assert!(
        (rtt - want).abs() <= (want * 0.05).max(20.0),
        "RTT p50 {rtt} µs, the peers' own {want} µs"
    );
    assert!(rtt > 4000.0, "the router's 2 × 2 ms are in it: {rtt}");
    // On the capture's clock: the router ↔ server part only (no delay there).
    let near = us("server_side_rtt_us_p50");
    assert!(
        near > 0.0 && near < 1000.0,
        "the capture point is next to the server: {near} µs of the {rtt} µs"
    );
}

/// pdm's own request/response traffic through a router that delays 2 ms each way,
/// captured on the router's link to the server: from the PDM fields alone, `pdm
/// analyze` there gives the server delay (within 1 %) and the RTT (within 5 % or 20 µs)
/// that `pdm run` measured at the client, whose clock the capture point does not share.
#[test]
fn a_router_capture_of_pdms_own_traffic_gives_what_pdm_run_measured() {
    const N: usize = 30;
    const PORT: u16 = 7403;
    let mut line = Line::new("anr");
    line.add_delay(Duration::from_millis(2));
    let pdm_c = Pdm::start(&line.client, &["--interval", "200ms"]);
    let _pdm_s = Pdm::start(&line.server, &[]);
    let mut cap = Capture::start_on(&line.router, "rs");
    let server = line.server.in_ns(|| {
        let u = std::net::UdpSocket::bind(common::traffic::sock(router::SERVER_ADDR, PORT))
            .expect("bind");
        u.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        u
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 2048];
            for _ in 0..N {
                let Ok((len, from)) = server.recv_from(&mut buf) else {
                    break;
                };
                std::thread::sleep(Duration::from_millis(3));
                server.send_to(&buf[..len], from).expect("answer");
            }
        });
        line.client.in_ns(|| {
            let u = std::net::UdpSocket::bind(common::traffic::sock(router::CLIENT_ADDR, 0))
                .expect("bind");
            u.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            for i in 0..N {
                u.send_to(
                    format!("request {i}").as_bytes(),
                    common::traffic::sock(router::SERVER_ADDR, PORT),
                )
                .expect("send");
                u.recv_from(&mut buf).expect("answer");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    });
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(cap.stop(), 0, "the capture dropped packets");
    let run = pdm_c.stop();
    let live = common::last_flow(&run, "udp", Some(PORT));
    let f = analyzed_as_run(&cap.path, PORT, live);
    assert_eq!(f["local_addr"], router::CLIENT_ADDR);
    let us = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    let rtt_cap = us(&f, "rtt_all_us_p50");
    assert!(
        rtt_cap > 4000.0,
        "the router's 2 × 2 ms are in it: {rtt_cap}"
    );
    // The capture's own clock sees only the router ↔ server part.
    assert!(us(&f, "server_side_rtt_all_us_p50") < 1000.0, "{f}");
}

/// The UDP flow to `port` that `pdm analyze` finds in `capture`, checked against what
/// `pdm run` reported for it (`live`): server delay p50 within 1 %, RTT p50 within 5 %
/// or 20 µs.
fn analyzed_as_run(capture: &std::path::Path, port: u16, live: &Value) -> Value {
    let (code, flows, err) = analyze(&["--json"], &[capture]);
    assert_eq!(code, 0, "{err}");
    let f = flows
        .iter()
        .find(|l| l["proto"] == "udp" && l["remote_port"] == port)
        .unwrap_or_else(|| panic!("no UDP flow to port {port}: {flows:?}"))
        .clone();
    eprintln!("pdm run: {live}\npdm analyze: {f}");
    let us = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    let (sd_run, sd_cap) = (
        us(live, "server_delay_all_us_p50"),
        us(&f, "server_delay_all_us_p50"),
    );
    assert!(
        (sd_cap - sd_run).abs() <= sd_run * 0.01,
        "server delay p50: analyze {sd_cap} µs, pdm run {sd_run} µs"
    );
    let (rtt_run, rtt_cap) = (us(live, "rtt_all_us_p50"), us(&f, "rtt_all_us_p50"));
    assert!(
        (rtt_cap - rtt_run).abs() <= (rtt_run * 0.05).max(20.0),
        "RTT p50: analyze {rtt_cap} µs, pdm run {rtt_run} µs"
    );
    f
}
