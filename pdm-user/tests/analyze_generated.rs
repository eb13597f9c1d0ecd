//! `pdm analyze` on captures this test writes itself, from a model of two PDM hosts
//! whose every send and receive time it knows: each figure pdm reports is checked
//! against the time it stands for. PDM in every place a sender may put it (right after
//! the IPv6 header, after Hop-by-Hop, before a Fragment header on every fragment,
//! before ESP), PSNs that wrap, a flow that starts before the capture, capture at the
//! client and at a router, loss and duplicates each way, an ICMPv6 error quoting a PDM
//! packet, a malformed PDM, and a later fragment whose first was never captured. Also:
//! `--packets` against tshark for every packet, the capture split into two files
//! (merged by time), `--idle-timeout` and `--interval`.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use common::analyze::{analyze, check_against_tshark};
use pdm_common::{
    time::encode_delta_ns,
    wire::{PDM_OPTION_LEN, PdmFields},
};
use serde_json::Value;
use testbed::pcap::{self, PcapWriter};

const T0: u64 = 1_700_000_000_000_000_000;
const US: u64 = 1_000;
const MS: u64 = 1_000_000;

fn addr(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&[0xfd, 0x00]);
    a[15] = last;
    a
}

/// One PDM host of the model, numbering and timing its packets as RFC 8250 says.
struct Host {
    psn: u16,
    last_sent: Option<u64>,
    last_recv: Option<(u64, u16)>,
}

impl Host {
    fn new(psn: u16) -> Self {
        Self {
            psn,
            last_sent: None,
            last_recv: None,
        }
    }

    /// The PDM of a packet sent at `t`: DTLR = t − the last reception, DTLS = the last
    /// reception − the send before it (RFC 8250 §3.2).
    fn send(&mut self, t: u64) -> PdmFields {
        let (psn_last_recv, dtlr) = self.last_recv.map_or((0, 0), |(at, psn)| (psn, t - at));
        let dtls = match (self.last_recv, self.last_sent) {
            (Some((r, _)), Some(s)) if r >= s => r - s,
            _ => 0,
        };
        let (dtlr, dtls) = (encode_delta_ns(dtlr), encode_delta_ns(dtls));
        let f = PdmFields {
            psn_this: self.psn,
            psn_last_recv,
            scale_dtlr: dtlr.scale,
            dtlr: dtlr.delta,
            scale_dtls: dtls.scale,
            dtls: dtls.delta,
        };
        self.psn = self.psn.wrapping_add(1);
        self.last_sent = Some(t);
        f
    }

    fn recv(&mut self, t: u64, psn: u16) {
        self.last_recv = Some((t, psn));
    }
}

/// Where PDM goes in a packet.
#[derive(Clone, Copy)]
enum Placement {
    First,
    AfterHopByHop,
    BeforeEsp,
}

/// A flow of the model: its two ends, and the packets captured, (time, packet, sent by
/// the client).
struct Flow {
    client: ([u8; 16], u16),
    server: ([u8; 16], u16),
    proto: u8,
    placement: Placement,
}

impl Flow {
    fn packet(&self, from_client: bool, pdm: &PdmFields, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = if from_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        let mut headers = Vec::new();
        if matches!(self.placement, Placement::AfterHopByHop) {
            headers.push((pcap::HOP_BY_HOP, pcap::padding_options()));
        }
        headers.push((pcap::DSTOPTS, pdm.encode_header(0).to_vec()));
        let upper = match self.proto {
            pcap::UDP => pcap::udp(src.1, dst.1, payload),
            pcap::TCP => pcap::tcp(src.1, dst.1, 1, 0x18, payload),
            _ => {
                // ESP: SPI, sequence number, then what looks encrypted.
                let mut esp = vec![0, 0, 0x10, 0x01, 0, 0, 0, 1];
                esp.extend_from_slice(payload);
                esp
            }
        };
        pcap::ipv6_packet(src.0, dst.0, &headers, self.proto, &upper)
    }
}

/// What the model says `pdm analyze` must report for a flow.
#[derive(Default)]
struct Expected {
    /// DTLR of each server answer captured (the server delay samples), ns.
    server_delay: Vec<u64>,
    client_delay: Vec<u64>,
    /// RTT from the PDM fields, ns, per sample.
    rtt: Vec<u64>,
    server_side_rtt: Vec<u64>,
    /// t(request) − t(answer it echoes) − the client's DTLR, ns, per sample.
    client_side_rtt: Vec<u64>,
    tx_packets: u64,
    rx_packets: u64,
    tx_lost: u64,
    rx_lost: u64,
    tx_duplicate: u64,
}

/// Packets captured: (time, packet, sent by the client).
type Packets = Vec<(u64, Vec<u8>, bool)>;

/// The capture being made.
#[derive(Default)]
struct Capture {
    packets: Packets,
}

/// Request/response rounds between a client and a server, `d_client` from the client
/// to the capture point and `d_server` from there to the server: the server answers
/// request i after `hold(i)`, the client asks again `think(i)` after an answer.
/// `lost_answer`: the answer of that round never arrives (lost before the capture
/// point; the client asks again after 5 ms). `lost_request`: that request is lost
/// before the capture point. `duplicated_request`: that request arrives again, late
/// (after the next answer). Rounds before `captured_from` happen before the capture starts.
struct Rounds {
    rounds: u16,
    d_client: u64,
    d_server: u64,
    lost_answer: Option<u16>,
    lost_request: Option<u16>,
    duplicated_request: Option<u16>,
    captured_from: u16,
}

fn hold(i: u16) -> u64 {
    1_000 * US + 37 * US * u64::from(i)
}

fn think(i: u16) -> u64 {
    500 * US + 11 * US * u64::from(i)
}

fn run_rounds(
    cap: &mut Capture,
    flow: &Flow,
    r: &Rounds,
    start: u64,
    psns: (u16, u16),
) -> Expected {
    /// The answer to the previous request, as the client got it.
    struct Answer {
        round: u16,
        captured: bool,
        request_sent: u64,
        received: u64,
        dtlr: u64,
    }
    let (mut client, mut server) = (Host::new(psns.0), Host::new(psns.1));
    let mut e = Expected::default();
    let mut t = start;
    let mut previous: Option<Answer> = None;
    // The server PSN the last captured request echoed: client delay is sampled once
    // per server packet echoed.
    let mut echoed: Option<u16> = None;
    let mut late_copy: Option<PdmFields> = None;
    // When each captured answer was seen, by its PSN.
    let mut answers_seen = BTreeMap::new();
    for i in 0..r.rounds {
        let captured = i >= r.captured_from;
        let held = client.last_recv;
        let q = client.send(t);
        let q_seen = t + r.d_client;
        let request_lost = r.lost_request == Some(i);
        if captured && !request_lost {
            cap.packets
                .push((q_seen, flow.packet(true, &q, &[0x11; 40]), true));
            e.tx_packets += 1;
            if let Some((at, psn)) = held
                && echoed != Some(psn)
            {
                e.client_delay.push(t - at);
                if let Some(&seen) = answers_seen.get(&psn) {
                    e.client_side_rtt.push(q_seen - seen - (t - at));
                }
                echoed = Some(psn);
            }
            // p3 = this request, p2 = the answer to the request just before it.
            if let Some(a) = &previous
                && a.captured
                && a.round + 1 == i
            {
                e.rtt.push(a.received - a.request_sent - a.dtlr);
            }
        }
        if request_lost {
            e.tx_lost += u64::from(captured);
            previous = None;
            t += 5 * MS;
            continue;
        }
        let arrives = q_seen + r.d_server;
        server.recv(arrives, q.psn_this);
        let sent = arrives + hold(i);
        let dtlr = sent - server.last_recv.expect("received").0;
        let a = server.send(sent);
        let a_seen = sent + r.d_server;
        if r.lost_answer == Some(i) {
            e.rx_lost += u64::from(captured);
            previous = None;
            t += 5 * MS;
            continue;
        }
        if captured {
            cap.packets
                .push((a_seen, flow.packet(false, &a, &[0x22; 200]), false));
            e.rx_packets += 1;
            e.server_delay.push(dtlr);
            e.server_side_rtt.push(a_seen - q_seen - dtlr);
            answers_seen.insert(a.psn_this, a_seen);
        }
        // The duplicate comes late, after the next answer (a copy sent back to back
        // is what segmentation offload makes of a burst: not a duplicate).
        if let Some(dup) = late_copy.take()
            && captured
        {
            let at = a_seen + US;
            cap.packets
                .push((at, flow.packet(true, &dup, &[0x11; 40]), true));
            e.tx_packets += 1;
            e.tx_duplicate += 1;
            server.recv(at + r.d_server, dup.psn_this);
        }
        if r.duplicated_request == Some(i) {
            late_copy = Some(q);
        }
        let back = a_seen + r.d_client;
        client.recv(back, a.psn_this);
        previous = Some(Answer {
            round: i,
            captured,
            request_sent: t,
            received: back,
            dtlr,
        });
        t = back + think(i);
    }
    e
}

/// Datagrams sent as three fragments, each carrying PDM. `same_psn`: every fragment of
/// a datagram has the first one's PDM (FreeBSD); else each fragment is numbered.
fn fragmented_rounds(
    cap: &mut Capture,
    flow: &Flow,
    rounds: u16,
    start: u64,
    same_psn: bool,
) -> Expected {
    let (mut client, mut server) = (Host::new(0x4000), Host::new(0x5000));
    let d = 100 * US;
    let mut e = Expected::default();
    let mut t = start;
    // The previous round's (answer received, request sent as far as the answer
    // echoes it, the answer's DTLR).
    let mut previous: Option<(u64, u64, u64)> = None;
    for i in 0..rounds {
        let id = 0x1000 + u32::from(i);
        if let Some((received, sent, dtlr)) = previous {
            e.client_delay.push(think(i - 1));
            // Captured at the client: its side of the path is nothing.
            e.client_side_rtt.push(0);
            e.rtt.push(received - sent - dtlr);
        }
        let mut pdm = client.send(t);
        let mut first_sent = t;
        for (n, offset) in [0u16, 1448, 2896].into_iter().enumerate() {
            let at = t + n as u64 * US;
            if n > 0 && !same_psn {
                pdm = client.send(at);
            } else if n == 0 {
                first_sent = at;
            }
            let data = if n == 0 {
                pcap::udp(flow.client.1, flow.server.1, &[0x33; 1440])
            } else {
                vec![0x33; 1448]
            };
            let headers = [
                (pcap::DSTOPTS, pdm.encode_header(0).to_vec()),
                (pcap::FRAGMENT, pcap::fragment_header(offset, n < 2, id)),
            ];
            let p = pcap::ipv6_packet(flow.client.0, flow.server.0, &headers, pcap::UDP, &data);
            cap.packets.push((at, p, true));
            e.tx_packets += 1;
        }
        let last = t + 2 * US;
        server.recv(last + d, pdm.psn_this);
        let sent = last + d + hold(i);
        let a = server.send(sent);
        cap.packets
            .push((sent + d, flow.packet(false, &a, &[0x22; 200]), false));
        e.rx_packets += 1;
        e.server_delay.push(hold(i));
        // The answer echoes the datagram's PSN: sent with its first fragment (one PSN
        // for all), or with its last.
        let echoed_sent = if same_psn { first_sent } else { last };
        e.server_side_rtt.push(sent + d - echoed_sent - hold(i));
        client.recv(sent + d, a.psn_this);
        previous = Some((sent + d, echoed_sent, hold(i)));
        t = sent + d + think(i);
    }
    e
}

/// The capture and what each flow of it must show, by client port.
fn model(dir: &Path) -> (PathBuf, BTreeMap<u16, Expected>, Packets) {
    let mut cap = Capture::default();
    let mut want = BTreeMap::new();
    let udp = |port, placement| Flow {
        client: (addr(1), port),
        server: (addr(2), 7000),
        proto: pcap::UDP,
        placement,
    };
    // Captured at the client; client PSNs wrap through 0; one answer lost.
    let plain = Rounds {
        rounds: 20,
        d_client: 0,
        d_server: 100 * US,
        lost_answer: Some(7),
        lost_request: None,
        duplicated_request: None,
        captured_from: 0,
    };
    want.insert(
        40001,
        run_rounds(
            &mut cap,
            &udp(40001, Placement::First),
            &plain,
            T0,
            (0xfff6, 0x2000),
        ),
    );
    // Captured at a router, 40 µs from the client and 60 µs from the server; PDM
    // after a Hop-by-Hop header; a request lost before the router, one duplicated.
    let router = Rounds {
        rounds: 12,
        d_client: 40 * US,
        d_server: 60 * US,
        lost_answer: None,
        lost_request: Some(3),
        duplicated_request: Some(6),
        captured_from: 0,
    };
    want.insert(
        40002,
        run_rounds(
            &mut cap,
            &udp(40002, Placement::AfterHopByHop),
            &router,
            T0 + 3_000 * MS,
            (1, 0xfffe),
        ),
    );
    // Fragments: the same PSN on every fragment, and one PSN per fragment.
    want.insert(
        40003,
        fragmented_rounds(
            &mut cap,
            &udp(40003, Placement::First),
            8,
            T0 + 6_000 * MS,
            true,
        ),
    );
    want.insert(
        40004,
        fragmented_rounds(
            &mut cap,
            &udp(40004, Placement::First),
            8,
            T0 + 9_000 * MS,
            false,
        ),
    );
    // A TCP flow that started before the capture.
    let tcp = Flow {
        client: (addr(1), 40005),
        server: (addr(2), 443),
        proto: pcap::TCP,
        placement: Placement::First,
    };
    let late = Rounds {
        rounds: 9,
        captured_from: 3,
        lost_answer: None,
        ..plain
    };
    want.insert(
        40005,
        run_rounds(&mut cap, &tcp, &late, T0 + 12_000 * MS, (0x7000, 0x9000)),
    );
    // ESP: PDM before it; no ports (the flow's are 0).
    let esp = Flow {
        client: (addr(3), 0),
        server: (addr(2), 0),
        proto: pcap::ESP,
        placement: Placement::BeforeEsp,
    };
    let five = Rounds {
        rounds: 5,
        lost_answer: None,
        ..plain
    };
    want.insert(
        0,
        run_rounds(&mut cap, &esp, &five, T0 + 15_000 * MS, (10, 20)),
    );

    // What is no PDM of any flow: an ICMPv6 Packet Too Big from a router quoting a
    // client packet with PDM, a malformed PDM (option length 12), and a later fragment
    // whose first fragment was not captured.
    let quoted = udp(40001, Placement::First).packet(true, &Host::new(99).send(T0), &[0; 8]);
    let mut ptb = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    ptb.extend_from_slice(&quoted);
    cap.packets.push((
        T0 + 18_000 * MS,
        pcap::ipv6_packet(addr(9), addr(1), &[], pcap::ICMPV6, &ptb),
        false,
    ));
    let mut bad = Host::new(0xbad0).send(T0).encode_header(0).to_vec();
    bad[3] = 12;
    cap.packets.push((
        T0 + 18_001 * MS,
        pcap::ipv6_packet(
            addr(4),
            addr(2),
            &[(pcap::DSTOPTS, bad)],
            pcap::UDP,
            &pcap::udp(9, 9, &[0; 8]),
        ),
        true,
    ));
    let orphan = [
        (
            pcap::DSTOPTS,
            Host::new(7).send(T0).encode_header(0).to_vec(),
        ),
        (pcap::FRAGMENT, pcap::fragment_header(1448, false, 0xdead)),
    ];
    cap.packets.push((
        T0 + 18_002 * MS,
        pcap::ipv6_packet(addr(5), addr(2), &orphan, pcap::UDP, &[0x44; 100]),
        true,
    ));

    cap.packets.sort_by_key(|p| p.0);
    let path = dir.join("model.pcap");
    write(&path, cap.packets.iter());
    (path, want, cap.packets)
}

fn write<'a>(path: &Path, packets: impl Iterator<Item = &'a (u64, Vec<u8>, bool)>) {
    let mut w = PcapWriter::create(path, true).expect("create pcap");
    for (ts, p, _) in packets {
        w.ipv6(*ts, p).expect("write pcap");
    }
    w.finish().expect("flush pcap");
}

fn us(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// `got` (µs) equals `want` (ns) to what RFC 8250's 16-bit values keep: 1/32768 of
/// the largest time the figure was computed from (`span`, or itself).
fn close(got: f64, want: u64, span: u64, what: &str) {
    let tolerance = span.max(want) as f64 / 32768.0 / 1e3 + 0.002;
    assert!(
        (got - want as f64 / 1e3).abs() <= tolerance,
        "{what}: {got} µs, the model says {} µs",
        want as f64 / 1e3
    );
}

/// Min, median and max of a figure, against the model's samples.
fn check_figure(v: &Value, name: &str, want: &[u64], span: u64) {
    let what = |s: &str| format!("{name}_us_{s} of flow {}", v["local_port"]);
    assert_eq!(
        v[format!("{name}_samples")],
        want.len(),
        "{name} samples: {v}"
    );
    if want.is_empty() {
        return;
    }
    let mut sorted = want.to_vec();
    sorted.sort_unstable();
    let median = sorted[((sorted.len() - 1) as f64 * 0.5).round() as usize];
    close(
        us(v, &format!("{name}_us_min")),
        sorted[0],
        span,
        &what("min"),
    );
    close(us(v, &format!("{name}_us_p50")), median, span, &what("p50"));
    close(
        us(v, &format!("{name}_us_max")),
        sorted[sorted.len() - 1],
        span,
        &what("max"),
    );
}

fn flows_by_port(lines: &[Value]) -> BTreeMap<u16, Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "flow")
        .map(|l| (l["local_port"].as_u64().expect("port") as u16, l.clone()))
        .collect()
}

#[test]
fn every_figure_of_a_modelled_capture_is_the_time_it_stands_for() {
    let dir = std::env::temp_dir().join(format!("pdm-analyze-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (path, want, packets) = model(&dir);

    let (code, lines, err) = analyze(&["--json", "--window", "1h"], &[&path]);
    assert_eq!(code, 0, "{err}");
    let flows = flows_by_port(&lines);
    // Five flows of the model, and the malformed packet's own (no PDM).
    assert_eq!(flows.len(), want.len() + 1, "{lines:#?}");
    for (port, e) in &want {
        let v = &flows[port];
        let ctx = format!("flow {port}: {v}");
        assert_eq!(
            v["local_addr"].as_str().unwrap().split("::").next(),
            Some("fd00"),
            "{ctx}"
        );
        assert_eq!(v["tx_packets"], e.tx_packets, "{ctx}");
        assert_eq!(v["rx_packets"], e.rx_packets, "{ctx}");
        assert_eq!(v["tx_pdm"], e.tx_packets, "every packet has PDM: {ctx}");
        assert_eq!(v["rx_pdm"], e.rx_packets, "{ctx}");
        assert_eq!(v["tx_lost"], e.tx_lost, "{ctx}");
        assert_eq!(v["rx_lost"], e.rx_lost, "{ctx}");
        assert_eq!(v["tx_duplicate"], e.tx_duplicate, "{ctx}");
        assert_eq!(v["rx_duplicate"], 0, "{ctx}");
        assert_eq!(v["tx_reordered"], 0, "{ctx}");
        assert_eq!(v["rx_reordered"], 0, "{ctx}");
        for k in ["implausible", "dtlr_not_rfc_exact", "dtlr_malformed"] {
            assert_eq!(v[k], 0, "{k}: {ctx}");
        }
        let span = 2 * MS;
        check_figure(v, "server_delay", &e.server_delay, span);
        check_figure(v, "server_side_rtt", &e.server_side_rtt, span);
        // Computed from the client's DTLR, its think time: up to a few ms.
        check_figure(v, "client_side_rtt", &e.client_side_rtt, 4 * MS);
        check_figure(v, "rtt", &e.rtt, span);
        check_figure(v, "client_delay", &e.client_delay, span);
    }
    // The figures the model's rules give, spelled out for the two plain flows.
    assert_eq!(
        flows[&40001]["rtt_samples"], 18,
        "19 answers, the lost one breaks a pair"
    );
    assert_eq!(flows[&40002]["rtt_samples"], 9, "rounds 0, 1, 4..=10");
    assert_eq!(
        flows[&40003]["proto"], "udp",
        "fragments carry their datagram's ports"
    );
    assert_eq!(flows[&0]["proto"], "esp");

    // The summary: PDM counted once per packet that carries it as sent (not the quoted
    // one), the malformed one and the orphan fragment said.
    let with_pdm = packets.len() - 2;
    assert!(
        err.contains(&format!("{} packets read", packets.len())),
        "{err}"
    );
    assert!(err.contains(&format!("{with_pdm} with PDM")), "{err}");
    assert!(err.contains("1 with malformed PDM"), "{err}");
    assert!(
        err.contains("1 later fragments whose first fragment was not in the capture"),
        "{err}"
    );

    // Every PDM packet as tshark decodes it, but two: tshark decodes the packet quoted
    // in the error too, and the malformed PDM (flagged "Invalid length"); pdm takes
    // neither.
    let (code, plines, err) = analyze(&["--packets"], &[&path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(plines.len(), with_pdm, "one line per PDM packet");
    check_against_tshark(
        &path,
        &plines,
        "!(icmpv6.type < 128) && ipv6.src != fd00::4",
    );
    assert!(
        plines.iter().all(|l| l["src"] != "fd00::9"),
        "no PDM taken from inside an ICMPv6 error"
    );
    assert!(
        plines.iter().all(|l| l["psn_this"] != 0xbad0),
        "the malformed PDM (option length 12, not {PDM_OPTION_LEN}) is not taken"
    );

    // The same capture as two files, one per direction (a capture on each of two
    // links): read merged by time, every figure is the same.
    let (a, b) = (dir.join("client.pcap"), dir.join("rest.pcap"));
    write(&a, packets.iter().filter(|p| p.2));
    write(&b, packets.iter().filter(|p| !p.2));
    let (code, merged, err) = analyze(&["--json", "--window", "1h"], &[&b, &a]);
    assert_eq!(code, 0, "{err}");
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("iface");
        v
    };
    let merged = flows_by_port(&merged);
    assert_eq!(merged.len(), flows.len());
    for (port, v) in &flows {
        assert_eq!(strip(&merged[port]), strip(v), "flow {port} from two files");
    }

    // Flows that end long before the capture does are reported when they end and
    // forgotten: the same figures.
    let (code, early, err) = analyze(
        &["--json", "--window", "1h", "--idle-timeout", "1s"],
        &[&path],
    );
    assert_eq!(code, 0, "{err}");
    let early_flows = flows_by_port(&early);
    for (port, v) in &flows {
        let mut e = strip(&early_flows[port]);
        let mut v = strip(v);
        // Reported at its end rather than at the capture's end.
        e.as_object_mut().unwrap().remove("ts");
        v.as_object_mut().unwrap().remove("ts");
        let differ: Vec<_> = v
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, x)| e.get(k.as_str()) != Some(x))
            .map(|(k, x)| format!("{k}: {x} vs {}", e[k.as_str()]))
            .collect();
        assert!(
            differ.is_empty(),
            "flow {port} reported when it ended: {differ:?}"
        );
    }
    let first_ts = early_flows[&40001]["ts"].as_f64().unwrap();
    let last_ts = early_flows[&0]["ts"].as_f64().unwrap();
    assert!(
        first_ts < last_ts - 10.0,
        "the first flow was reported on the way: {first_ts} {last_ts}"
    );

    // Per interval: every flow known at each second of capture time, then at the end.
    let (code, per, err) = analyze(
        &["--json", "--interval", "1s", "--idle-timeout", "1h"],
        &[&path],
    );
    assert_eq!(code, 0, "{err}");
    let a_lines: Vec<&Value> = per.iter().filter(|l| l["local_port"] == 40001).collect();
    let span_s = (packets.last().unwrap().0 - T0) / 1_000_000_000;
    assert_eq!(
        a_lines.len() as u64,
        span_s + 1,
        "one per second from its start, and the last"
    );
    for w in a_lines.windows(2) {
        assert!(w[0]["ts"].as_f64() < w[1]["ts"].as_f64());
        assert!(w[0]["tx_packets"].as_u64() <= w[1]["tx_packets"].as_u64());
    }
    assert_eq!(
        a_lines.last().unwrap()["tx_packets"],
        flows[&40001]["tx_packets"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
