//! End to end between two test hosts, both running `pdm run`: real ping6, UDP and TCP
//! traffic, checked by the applications themselves and by tshark decoding a capture.

mod common;

use std::{collections::HashMap, time::Instant};

use common::{
    ADDR_A, ADDR_B, IFACE, Pdm, TwoHosts, offload_settings,
    traffic::{Capture, ping, tcp_transfer, tcp_transfer_paced, udp_exchange},
};
use pdm_common::time::{DeltaTime, decode_delta_ns};

const PDM_FIELDS: &[&str] = &[
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "icmpv6.echo.identifier",
    "ipv6.opt.pdm.psn_this_pkt",
    "ipv6.opt.pdm.psn_last_recv",
    "ipv6.opt.pdm.scale_dtlr",
    "ipv6.opt.pdm.delta_last_recv",
    "ipv6.opt.pdm.scale_dtls",
    "ipv6.opt.pdm.delta_last_sent",
];

/// Eligible traffic: TCP, UDP, ICMPv6 echo (ND/MLD are never given PDM).
const ELIGIBLE: &str = "tcp || udp || icmpv6.type == 128 || icmpv6.type == 129";

/// One decoded packet.
#[derive(Debug)]
struct Row {
    src: String,
    dst: String,
    /// Ports, or the echo identifier for ICMPv6.
    ports: (String, String),
    pdm: Option<[u64; 6]>,
}

fn rows(cap: &Capture, filter: &str) -> Vec<Row> {
    cap.fields(PDM_FIELDS, filter)
        .into_iter()
        .map(|f| {
            let ports = if !f[2].is_empty() {
                (f[2].clone(), f[3].clone())
            } else if !f[4].is_empty() {
                (f[4].clone(), f[5].clone())
            } else {
                (f[6].clone(), f[6].clone())
            };
            let num = |s: &str| -> Option<u64> {
                let s = s.trim();
                s.strip_prefix("0x")
                    .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
            };
            let pdm = (7..13).map(|i| num(&f[i])).collect::<Option<Vec<_>>>();
            Row {
                src: f[0].clone(),
                dst: f[1].clone(),
                ports,
                pdm: pdm.map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]),
            }
        })
        .collect()
}

fn delta_ns(scale: u64, delta: u64) -> u64 {
    decode_delta_ns(DeltaTime {
        delta: delta as u16,
        scale: scale as u8,
    })
}

/// Every eligible packet carries PDM; every PSN Last Received echoes a PSN the peer
/// sent on that flow; DTLR/DTLS decode to times within the test's duration.
fn check_pdm_semantics(rows: &[Row], max_ns: u64) {
    assert!(!rows.is_empty(), "the capture holds no eligible packets");
    // PSNs sent so far, per direction of each flow.
    let mut sent: HashMap<(String, String, String, String), Vec<u64>> = HashMap::new();
    let mut echoes = 0;
    for (i, r) in rows.iter().enumerate() {
        let [psn, psnlr, s_dtlr, dtlr, s_dtls, dtls] = r
            .pdm
            .unwrap_or_else(|| panic!("packet {i} has no PDM: {r:?}"));
        let reverse = (
            r.dst.clone(),
            r.src.clone(),
            r.ports.1.clone(),
            r.ports.0.clone(),
        );
        let nothing_received = psnlr == 0 && dtlr == 0 && s_dtlr == 0;
        if !nothing_received {
            let peer = sent.get(&reverse).map(Vec::as_slice).unwrap_or_default();
            assert!(
                peer.contains(&psnlr),
                "packet {i} echoes PSN {psnlr}, which the peer never sent on this flow: {r:?}"
            );
            echoes += 1;
        }
        for (what, v) in [
            ("DTLR", delta_ns(s_dtlr, dtlr)),
            ("DTLS", delta_ns(s_dtls, dtls)),
        ] {
            assert!(
                v <= max_ns,
                "packet {i}: {what} {v} ns exceeds the test's duration"
            );
        }
        sent.entry((
            r.src.clone(),
            r.dst.clone(),
            r.ports.0.clone(),
            r.ports.1.clone(),
        ))
        .or_default()
        .push(psn);
    }
    assert!(
        echoes > rows.len() / 2,
        "too few packets echo a PSN: {echoes} of {}",
        rows.len()
    );
}

fn counter(lines: &[serde_json::Value], name: &str) -> u64 {
    let last = lines.last().expect("pdm printed at least one JSON line");
    last["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {last}"))
}

#[test]
fn traffic_carries_pdm_end_to_end() {
    let h = TwoHosts::new("e2e");
    // One host reads received packets with XDP, the other with TC: both paths run.
    let pdm_a = Pdm::start(&h.a, &["--ingress", "xdp"]);
    let pdm_b = Pdm::start(&h.b, &["--ingress", "tc"]);
    let mut cap = Capture::start(&h.b);
    let started = Instant::now();

    ping(&h, 5);
    udp_exchange(&h, 7001, 20);
    let took = tcp_transfer(&h, 7002, 200 << 20);
    eprintln!("200 MB TCP transfer with PDM took {took:?}");

    let dropped = cap.stop();
    let elapsed = started.elapsed();
    let a = pdm_a.stop();
    let b = pdm_b.stop();
    assert_eq!(
        dropped, 0,
        "the capture dropped packets; its checks would be meaningless"
    );

    let all = rows(&cap, ELIGIBLE);
    eprintln!("tshark decoded {} eligible packets", all.len());
    check_pdm_semantics(&all, elapsed.as_nanos() as u64);
    assert!(
        rows(&cap, "icmpv6.type == 128").len() >= 5,
        "ping requests missing"
    );
    assert!(rows(&cap, "udp").len() >= 40, "UDP exchange missing");

    for (host, lines) in [("a", &a), ("b", &b)] {
        assert!(
            counter(lines, "egress_pdm_inserted") > 0,
            "host {host} inserted nothing"
        );
        assert!(
            counter(lines, "ingress_pdm") > 0,
            "host {host} recorded nothing"
        );
        assert_eq!(
            counter(lines, "ingress_mss_clamped"),
            1,
            "host {host}: one SYN or SYN-ACK per TCP connection"
        );
    }
}

/// `--only port 7001` on host a: its packets on that flow carry PDM, its other packets
/// leave exactly as sent, although host b (pdm without --only) sends PDM on every flow.
#[test]
fn only_gives_pdm_to_selected_flows_alone() {
    let h = TwoHosts::new("only");
    let pdm_a = Pdm::start(&h.a, &["--only", "udp and port 7001"]);
    let pdm_b = Pdm::start(&h.b, &["--ingress", "tc"]);
    let mut cap = Capture::start(&h.b);
    udp_exchange(&h, 7001, 10);
    udp_exchange(&h, 7002, 10);
    ping(&h, 3);
    assert_eq!(cap.stop(), 0, "the capture dropped packets");
    let a = pdm_a.stop();
    pdm_b.stop();

    let from = |src: &str, filter: &str| {
        rows(&cap, &format!("ipv6.src == {src} && ({filter})"))
            .into_iter()
            .map(|r| r.pdm.is_some())
            .collect::<Vec<_>>()
    };
    // (`udp.port` would also match a UDP header quoted in an ICMPv6 error.)
    let selected = from(ADDR_A, "udp.dstport == 7001 && !icmpv6");
    let others = from(
        ADDR_A,
        "(udp.dstport == 7002 && !icmpv6) || icmpv6.type == 128",
    );
    let peer = from(ADDR_B, ELIGIBLE);
    assert_eq!(selected.len(), 10, "requests on the selected flow");
    assert!(selected.iter().all(|&p| p), "selected flow: all with PDM");
    assert_eq!(others.len(), 13, "requests on the other flows");
    assert!(
        others.iter().all(|&p| !p),
        "other flows: none with PDM, although the peer's PDM arrived on them"
    );
    assert!(
        peer.len() >= 23 && peer.iter().all(|&p| p),
        "host b: PDM on every flow"
    );
    assert!(counter(&a, "egress_skip_filtered") >= 13);
}

fn offloads(h: &common::Netns) -> (bool, bool) {
    let out = h.run("ethtool", &["-k", IFACE]);
    let on = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("ethtool -k has no {key}"))
            .contains(": on")
    };
    (
        on("tcp-segmentation-offload:"),
        on("generic-segmentation-offload:"),
    )
}

/// (retransmitted segments, tail-loss probes) so far.
fn retransmissions(ns: &common::Netns) -> (u64, u64) {
    (ns.nstat("TcpRetransSegs"), ns.nstat("TcpExtTCPLossProbes"))
}

/// Retransmissions since `before`, less tail-loss probes (sent on a timer, not because
/// anything was lost): what an MTU problem would drive up by thousands.
fn retransmitted_since(ns: &common::Netns, before: (u64, u64)) -> u64 {
    let now = retransmissions(ns);
    (now.0 - before.0).saturating_sub(now.1 - before.1)
}

fn tx_dropped(ns: &common::Netns) -> u64 {
    let out = ns.ip(&["-s", "-j", "link", "show", IFACE]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
        + v[0]["stats64"]["rx"]["dropped"].as_u64().unwrap_or(0)
}

/// 400 Mbit/s: fast enough for thousands of packets, slow enough that the receiving
/// veth never drops one (a lost packet would be a PSN gap that is not PDM's doing).
const PACE: Option<u64> = Some(50_000_000);

#[test]
fn per_packet_mode_numbers_every_wire_packet() {
    let h = TwoHosts::new("pp");
    assert_eq!(
        offloads(&h.a),
        (true, true),
        "veth starts with TSO and GSO on"
    );
    let len = 20 << 20;

    // Baseline with the settings pdm --per-packet uses: TSO/GSO off, one segment per skb.
    for ns in [&h.a, &h.b] {
        ns.run("ethtool", &["-K", IFACE, "tso", "off", "gso", "off"]);
        ns.ip(&["link", "set", "dev", IFACE, "gso_max_segs", "1"]);
    }
    let before = retransmissions(&h.a);
    tcp_transfer_paced(&h, 7010, len, PACE);
    let retrans_plain = retransmitted_since(&h.a, before);
    for ns in [&h.a, &h.b] {
        ns.run("ethtool", &["-K", IFACE, "tso", "on", "gso", "on"]);
        ns.ip(&["link", "set", "dev", IFACE, "gso_max_segs", "65535"]);
    }

    let pdm_a = Pdm::start(&h.a, &["--per-packet", "--ingress", "xdp"]);
    let pdm_b = Pdm::start(&h.b, &["--per-packet", "--ingress", "tc"]);
    assert_eq!(
        offloads(&h.a),
        (false, false),
        "--per-packet turns TSO/GSO off"
    );
    let mut cap = Capture::start(&h.b);
    // The sender's own capture sees each packet right after our egress program, before
    // anything on the path (even this host's backlog) could lose it.
    let mut cap_a = Capture::start(&h.a);
    let drops_before = tx_dropped(&h.a) + tx_dropped(&h.b);
    let before = retransmissions(&h.a);
    tcp_transfer_paced(&h, 7011, len, PACE);
    let retrans_pdm = retransmitted_since(&h.a, before);
    let drops = tx_dropped(&h.a) + tx_dropped(&h.b) - drops_before;
    let dropped = cap.stop() + cap_a.stop();
    let a = pdm_a.stop();
    let b = pdm_b.stop();
    assert_eq!(offloads(&h.a), (true, true), "offloads restored on exit");
    assert_eq!(
        dropped, 0,
        "a capture dropped packets; its checks would be meaningless"
    );

    eprintln!(
        "retransmissions: {retrans_plain} without pdm, {retrans_pdm} with; device drops with pdm: {drops}"
    );
    assert_eq!(drops, 0, "packets were dropped by the devices");
    for (host, lines) in [("a", &a), ("b", &b)] {
        assert_eq!(
            counter(lines, "egress_skip_too_big"),
            0,
            "host {host} skipped oversize packets"
        );
    }
    assert!(
        retrans_pdm <= retrans_plain + 2,
        "PDM caused retransmissions: {retrans_pdm} with pdm vs {retrans_plain} without"
    );

    let tcp = rows(&cap, "tcp.port == 7011");
    check_pdm_semantics(&tcp, 60_000_000_000);
    // Each direction, captured where it is sent: PSN This Packet goes up by exactly one
    // per wire packet.
    let sent_by = |capture: &Capture, src: &str| -> Vec<u64> {
        rows(capture, &format!("tcp.port == 7011 && ipv6.src == {src}"))
            .iter()
            .map(|r| r.pdm.expect("pdm")[0])
            .collect()
    };
    for (src, psns) in [
        (ADDR_A, sent_by(&cap_a, ADDR_A)),
        (ADDR_B, sent_by(&cap, ADDR_B)),
    ] {
        assert!(psns.len() > 200, "{src}: only {} packets", psns.len());
        for w in psns.windows(2) {
            assert_eq!(
                (w[0] + 1) % 65536,
                w[1],
                "{src}: PSN {} followed by {}",
                w[0],
                w[1]
            );
        }
    }
}

/// What is attached to the test interface: TCX programs (asked of the kernel, since
/// bpftool 7.1 does not list TCX), XDP (`ip -d link`) and netlink tc filters.
fn attached_programs(ns: &common::Netns) -> String {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut s = ns.in_ns(|| {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|at| SchedClassifier::query_tcx(IFACE, at).expect("query tcx").1)
            .map(|p| format!("tcx {}\n", p.name_as_str().unwrap_or("?")))
            .collect::<String>()
    });
    s += &ns.ip(&["-d", "link", "show", IFACE]);
    s += &ns.run("tc", &["filter", "show", "dev", IFACE, "ingress"]);
    s += &ns.run("tc", &["filter", "show", "dev", IFACE, "egress"]);
    s
}

#[test]
fn sigkill_leaves_nothing_attached_and_restart_restores_offloads() {
    let h = TwoHosts::new("kill");
    let original = offload_settings(&h.a);
    let pdm = Pdm::start(&h.a, &["--per-packet", "--ingress", "xdp"]);
    let _peer = Pdm::start(&h.b, &["--ingress", "tc"]);
    assert!(
        attached_programs(&h.a).contains("pdm_egress"),
        "bpftool shows our egress program"
    );

    std::thread::scope(|s| {
        let transfer = s.spawn(|| tcp_transfer(&h, 7020, 100 << 20));
        std::thread::sleep(std::time::Duration::from_millis(200));
        pdm.kill();
        transfer
            .join()
            .expect("the transfer completes after pdm was killed");
    });

    let left = attached_programs(&h.a);
    for needle in ["pdm_", "xdp", "tcx", "bpf"] {
        assert!(
            !left.contains(needle),
            "`{needle}` still attached after SIGKILL:\n{left}"
        );
    }
    assert_eq!(
        offloads(&h.a),
        (false, false),
        "a crash leaves --per-packet's settings behind"
    );

    // The next start puts them back, and so does its exit.
    let again = Pdm::start(&h.a, &[]);
    assert!(
        again
            .stderr_lines()
            .iter()
            .any(|l| l.contains("restored TSO on / GSO on")),
        "restart did not report restoring offloads: {:?}",
        again.stderr_lines()
    );
    assert_eq!(offloads(&h.a), (true, true), "restart restored TSO/GSO");
    assert_eq!(
        offload_settings(&h.a),
        original,
        "restart restored every setting (ethtool -k, gso_max_segs) to what it was"
    );
    again.stop();
    assert_eq!(offload_settings(&h.a), original);
    assert!(
        !attached_programs(&h.a).contains("pdm_"),
        "clean exit detaches"
    );
}
