//! `pdm observe`: a read-only observer of PDM traffic between two other hosts (on a
//! router) or of its own host's (with `--egress`). What it reports is held against what
//! does not come from it: the ends' own `pdm run`, the records of PDM peers that set
//! their fields themselves, nftables drop counters on either side of it, and captures
//! of the links it sits between, octet for octet.

mod common;

use std::{
    collections::HashMap,
    net::{Ipv6Addr, UdpSocket},
    time::{Duration, Instant},
};

use common::{
    Pdm,
    drops::{self, drop_percent, dropped, stop_dropping},
    last_flow, nothing_attached_to,
    observe::{
        LOSSY_CLIENT, LOSSY_SERVER, Lossy, attachments, check_start, client_flow, n,
        observe_counters, refused, us,
    },
    pdm_peer::{self, Behaviour, Truth, median},
    router::{CLIENT_ADDR, CLIENT_IF, Line, SERVER_ADDR, SERVER_IF},
    traffic::{Capture, held_requests, ping_from, sock},
};
use pdm_common::time::encode_delta_ns;
use serde_json::Value;

/// Timing-sensitive and heavy: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The observer's options in every test: one sample per echoed PSN, a window longer
/// than the test (its figures are then exact, not log buckets), frequent reports.
const OBSERVE: [&str; 6] = [
    "--sample-interval",
    "0",
    "--window",
    "60s",
    "--interval",
    "200ms",
];

/// `a` within `rel` of `b`, or within `abs` µs.
fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= (b.abs() * rel).max(abs)
}

/// pdm on the client and the server, the observer on the router between them, which
/// delays 1 ms each way; request/response over UDP and TCP held 3 ms by the server.
/// From the PDM fields alone the observer finds the server delay and the RTT the
/// client's pdm measured; on its own clock the two halves of the path add up to it.
#[test]
fn a_router_between_two_pdm_ends_finds_what_the_client_measured() {
    const N: usize = 40;
    let _serial = serial();
    let mut line = Line::new("obr");
    line.add_delay(Duration::from_millis(1));
    let ends = [
        "--per-packet",
        "--sample-interval",
        "0",
        "--window",
        "60s",
        "--interval",
        "200ms",
    ];
    let pdm_c = Pdm::start(&line.client, &ends);
    let pdm_s = Pdm::start(&line.server, &ends);
    let obs = Pdm::observe(&line.router, &["rc", "rs"], &OBSERVE);
    let flows = [("udp", 7601), ("tcp", 7602)];
    for (proto, port) in flows {
        held_requests(
            proto,
            (&line.client, CLIENT_ADDR),
            (&line.server, SERVER_ADDR),
            port,
            N,
            Duration::from_millis(3),
            Duration::from_millis(5),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    check_start(&obs, &["rc", "rs"], false);
    let seen = obs.stop();
    let (at_client, _) = (pdm_c.stop(), pdm_s.stop());
    observe_counters(&seen);
    for (proto, port) in flows {
        let f = client_flow(&seen, proto, (CLIENT_ADDR, SERVER_ADDR), port);
        let c = last_flow(&at_client, proto, Some(port));
        eprintln!("{proto}: observer {f}\n{proto}: client's pdm {c}");
        assert_eq!(c["local_addr"], CLIENT_ADDR);
        let (sd, sd_c) = (us(f, "server_delay_us_p50"), us(c, "server_delay_us_p50"));
        assert!(
            close(sd, sd_c, 0.01, 0.0),
            "{proto}: server delay p50: observer {sd} µs, client's pdm {sd_c} µs"
        );
        assert!(sd > 3000.0, "{proto}: the server's 3 ms hold: {sd} µs");
        let (rtt, rtt_c) = (us(f, "rtt_us_p50"), us(c, "rtt_us_p50"));
        assert!(
            close(rtt, rtt_c, 0.10, 30.0),
            "{proto}: RTT p50: observer {rtt} µs, client's pdm {rtt_c} µs"
        );
        assert!(rtt_c > 2000.0, "{proto}: the relay's 2 × 1 ms: {rtt_c} µs");
        let halves = us(f, "server_side_rtt_us_p50") + us(f, "client_side_rtt_us_p50");
        assert!(
            close(halves, rtt_c, 0.10, 0.0),
            "{proto}: server side + client side {halves} µs, the client's RTT {rtt_c} µs"
        );
        assert!(
            n(f, "rtt_samples") >= N as u64 - 2,
            "{proto}: an RTT sample per exchange: {f}"
        );
        assert!(
            n(f, "server_delay_samples") >= N as u64 - 1,
            "{proto}: a server delay per request: {f}"
        );
        for k in ["rx_lost", "tx_lost", "rx_duplicate", "tx_duplicate"] {
            assert_eq!(n(f, k), 0, "{proto} {k}: {f}");
        }
        if proto == "udp" {
            // Every datagram crossed the router once, and the ends saw them all.
            for k in ["tx_packets", "rx_packets", "tx_pdm", "rx_pdm"] {
                assert_eq!(n(f, k), n(c, k), "udp {k}: observer vs client's pdm");
            }
            assert_eq!(n(f, "tx_packets"), N as u64, "{f}");
        }
    }
}

/// The observer and `pdm analyze` of a capture taken at the same point (the router's
/// client-side link, which carries both directions) report the same flow alike: the
/// same packets, the same samples from the same fields, and on their two clocks the
/// same two halves of the path.
#[test]
fn the_observer_reports_what_analyze_finds_in_a_capture_at_the_same_point() {
    const N: usize = 30;
    const PORT: u16 = 7650;
    let _serial = serial();
    // No delaying relay: the observer reads the client's packets as they arrive on rc
    // and the server's as they arrive on rs, so time spent inside the router falls into
    // its two halves differently from a capture on rc alone.
    let line = Line::new("oba");
    let ends = ["--per-packet", "--sample-interval", "0"];
    let _pdm_c = Pdm::start(&line.client, &ends);
    let _pdm_s = Pdm::start(&line.server, &ends);
    let mut cap = Capture::start_on(&line.router, "rc");
    let obs = Pdm::observe(&line.router, &["rc", "rs"], &OBSERVE);
    held_requests(
        "udp",
        (&line.client, CLIENT_ADDR),
        (&line.server, SERVER_ADDR),
        PORT,
        N,
        Duration::from_millis(2),
        Duration::from_millis(3),
    );
    std::thread::sleep(Duration::from_millis(300));
    let seen = obs.stop();
    assert_eq!(cap.stop(), 0, "the capture dropped packets");
    let (code, analyzed, err) =
        common::analyze::analyze(&["--json", "--window", "60s"], &[&cap.path]);
    assert_eq!(code, 0, "{err}");
    let f = client_flow(&seen, "udp", (CLIENT_ADDR, SERVER_ADDR), PORT);
    let a = client_flow(&analyzed, "udp", (CLIENT_ADDR, SERVER_ADDR), PORT);
    eprintln!("observer {f}\nanalyze {a}");
    for k in [
        "tx_packets",
        "rx_packets",
        "tx_pdm",
        "rx_pdm",
        "tx_lost",
        "rx_lost",
        "rtt_samples",
        "server_delay_samples",
        "client_delay_samples",
        "server_side_rtt_samples",
        "client_side_rtt_samples",
    ] {
        assert_eq!(n(f, k), n(a, k), "{k}: observer vs analyze");
    }
    assert!(n(f, "rtt_samples") >= N as u64 - 2, "{f}");
    // The same fields: the same figures, to the nanosecond.
    for k in ["rtt_us_p50", "server_delay_us_p50", "client_delay_us_p50"] {
        assert_eq!(us(f, k), us(a, k), "{k}: observer vs analyze");
    }
    // Two clocks a few microseconds apart: the kernel's at the programs (the client's
    // packets on rc, the server's on rs), the capture's at rc's tap.
    for k in ["server_side_rtt_us_p50", "client_side_rtt_us_p50"] {
        let (o, c) = (us(f, k), us(a, k));
        assert!(
            close(o, c, 0.05, 50.0),
            "{k}: observer {o} µs, analyze {c} µs"
        );
    }
    // Whichever half the router's own time falls into, the halves add up alike.
    let halves = |v: &Value| us(v, "server_side_rtt_us_p50") + us(v, "client_side_rtt_us_p50");
    let (o, c) = (halves(f), halves(a));
    assert!(
        close(o, c, 0.10, 5.0),
        "halves: observer {o} µs, analyze {c} µs"
    );
}

/// Datagrams bigger than the path, fragmented, with PDM on every fragment (both ends
/// `--mtu-room --per-packet`): the observer counts each fragment in its datagram's flow
/// (the later ones carry no ports), as the ends count them, with no loss, duplicate or
/// unattributed fragment, and pairs the datagrams' echoes.
#[test]
fn fragments_through_the_observer_count_in_their_datagrams_flow() {
    const ROUNDS: usize = 10;
    const PORT: u16 = 7640;
    let _serial = serial();
    let line = Line::new("obf");
    let ends = ["--per-packet", "--mtu-room", "--sample-interval", "0"];
    let pdm_c = Pdm::start(&line.client, &ends);
    let pdm_s = Pdm::start(&line.server, &ends);
    let obs = Pdm::observe(&line.router, &["rc", "rs"], &OBSERVE);
    let server = line.server.in_ns(|| {
        let u = UdpSocket::bind(sock(SERVER_ADDR, PORT)).expect("bind");
        u.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        u
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = vec![0u8; 65536];
            for _ in 0..ROUNDS {
                let Ok((_, from)) = server.recv_from(&mut buf) else {
                    return;
                };
                server.send_to(&[0x5a; 5000], from).expect("answer");
            }
        });
        line.client.in_ns(|| {
            let u = UdpSocket::bind(sock(CLIENT_ADDR, 0)).expect("bind");
            u.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            u.connect(sock(SERVER_ADDR, PORT)).expect("connect");
            let mut buf = vec![0u8; 65536];
            for _ in 0..ROUNDS {
                u.send(&[0xa5; 3000]).expect("ask");
                assert_eq!(u.recv(&mut buf).expect("an answer"), 5000);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    });
    let ping = line.client.run(
        "ping",
        &["-6", "-c", "3", "-i", "0.1", "-s", "3000", SERVER_ADDR],
    );
    assert!(ping.contains("3 received"), "{ping}");
    std::thread::sleep(Duration::from_millis(500));
    let seen = obs.stop();
    let (at_client, _) = (pdm_c.stop(), pdm_s.stop());
    let counters = observe_counters(&seen);
    assert_eq!(n(&counters, "fragments_unattributed"), 0, "{counters}");
    let f = client_flow(&seen, "udp", (CLIENT_ADDR, SERVER_ADDR), PORT);
    let c = last_flow(&at_client, "udp", Some(PORT));
    eprintln!("observer {f}\nclient's pdm {c}");
    // 3000 octets take three fragments at the lowered MTU, 5000 four.
    assert_eq!(n(f, "tx_packets"), 3 * ROUNDS as u64, "{f}");
    assert_eq!(n(f, "rx_packets"), 4 * ROUNDS as u64, "{f}");
    for k in ["tx_packets", "rx_packets", "tx_pdm", "rx_pdm"] {
        assert_eq!(n(f, k), n(c, k), "{k}: observer vs the client's pdm");
    }
    assert_eq!(n(f, "tx_pdm"), n(f, "tx_packets"), "PDM on every fragment");
    for k in ["rx_lost", "tx_lost", "rx_duplicate", "tx_duplicate"] {
        assert_eq!(n(f, k), 0, "{k}: {f}");
    }
    assert!(
        n(f, "server_delay_samples") >= ROUNDS as u64 - 1,
        "a server delay per request: {f}"
    );
    // Three echo requests and replies of three fragments each, all in the echo's flow.
    let ping = last_flow(&seen, "icmpv6", None);
    assert_ne!(
        ping["local_port"], 0,
        "the echo identifier, not port 0: {ping}"
    );
    assert_eq!(
        (n(ping, "tx_packets"), n(ping, "rx_packets")),
        (9, 9),
        "{ping}"
    );
    assert_eq!(n(ping, "tx_pdm"), 9, "{ping}");
}

/// Drops on both sides of the observer: before it (a router on each side dropping
/// 2 % of one direction) and after it (its own forward chain dropping 1 % each way,
/// which its ingress programs run before). Its loss figures are exactly what was
/// dropped before it in each direction; each end's pdm counts both.
#[test]
fn loss_before_the_observer_is_counted_and_loss_after_it_is_not() {
    const N: usize = 3000;
    const PORT: u16 = 7620;
    const CLIENT_PORT: u16 = 40620;
    let _serial = serial();
    let l = Lossy::new("obl");
    let ends = ["--per-packet", "--interval", "200ms"];
    let pdm_c = Pdm::start(&l.client, &ends);
    let pdm_s = Pdm::start(&l.server, &ends);
    let obs = Pdm::observe(&l.router, &["rc", "rs"], &OBSERVE);
    let server = l.server.in_ns(|| {
        let u = UdpSocket::bind(sock(LOSSY_SERVER, PORT)).expect("bind");
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        u
    });
    let client = l.client.in_ns(|| {
        let u = UdpSocket::bind(sock(LOSSY_CLIENT, CLIENT_PORT)).expect("bind");
        u.connect(sock(LOSSY_SERVER, PORT)).expect("connect");
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        u
    });
    // One datagram each way before any drop: a receiver's sequence starts at the first
    // PSN it sees, and a loss before it cannot show. The client's is the flow's first.
    let mut buf = [0u8; 2048];
    client.send(b"first").expect("send");
    let (_, to_client) = server.recv_from(&mut buf).expect("the first request");
    server.send_to(b"first", to_client).expect("send");
    client.recv(&mut buf).expect("the first answer");
    let towards_server = format!("ip6 saddr {LOSSY_CLIENT} udp sport {CLIENT_PORT}");
    let towards_client = format!("ip6 daddr {LOSSY_CLIENT} udp dport {CLIENT_PORT}");
    drop_percent(&l.loss_a, "before", &towards_server, 2);
    drop_percent(&l.loss_b, "before", &towards_client, 2);
    drop_percent(&l.router, "after_to_server", &towards_server, 1);
    drop_percent(&l.router, "after_to_client", &towards_client, 1);
    let send_all = |send: &(dyn Fn() -> std::io::Result<usize> + Sync)| {
        let deadline = Instant::now() + Duration::from_secs(20);
        for _ in 0..N {
            // A full socket buffer refuses a send: wait and retry, bounded.
            while send().is_err() {
                assert!(Instant::now() < deadline, "sending took over 20 s");
                std::thread::sleep(Duration::from_micros(100));
            }
            // Paced, so that nothing is lost but what nftables drops.
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    std::thread::scope(|s| {
        // Drained, so that neither socket's buffer is what refuses the traffic.
        s.spawn(|| while client.recv(&mut [0u8; 2048]).is_ok() {});
        s.spawn(|| while server.recv(&mut [0u8; 2048]).is_ok() {});
        s.spawn(|| send_all(&|| client.send(&[1u8; 200])));
        s.spawn(|| send_all(&|| server.send_to(&[2u8; 200], to_client)));
    });
    // The last datagrams' loss shows only once a later one arrives: read the counters
    // (the rules take them along), stop dropping, and send three more each way.
    std::thread::sleep(Duration::from_millis(100));
    let before_to_server = dropped(&l.loss_a, drops::TABLE, "before");
    let before_to_client = dropped(&l.loss_b, drops::TABLE, "before");
    let after_to_server = dropped(&l.router, drops::TABLE, "after_to_server");
    let after_to_client = dropped(&l.router, drops::TABLE, "after_to_client");
    for ns in [&l.loss_a, &l.loss_b, &l.router] {
        stop_dropping(ns);
    }
    for _ in 0..3 {
        client.send(b"last").expect("send");
        server.send_to(b"last", to_client).expect("send");
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen = obs.stop();
    let (at_client, at_server) = (pdm_c.stop(), pdm_s.stop());
    eprintln!(
        "dropped before the observer: {before_to_server} to the server, {before_to_client} to the client; after it: {after_to_server}, {after_to_client}"
    );
    for d in [before_to_server, before_to_client] {
        assert!(d > 20, "the drops before the observer worked: {d}");
    }
    for d in [after_to_server, after_to_client] {
        assert!(d > 5, "the drops after the observer worked: {d}");
    }
    observe_counters(&seen);
    let f = client_flow(&seen, "udp", (LOSSY_CLIENT, LOSSY_SERVER), PORT);
    eprintln!("observer: {f}");
    let sent = N as u64 + 4;
    for (dir, lost) in [("tx", before_to_server), ("rx", before_to_client)] {
        assert_eq!(n(f, &format!("{dir}_lost")), lost, "{dir}_lost: {f}");
        assert_eq!(n(f, &format!("{dir}_packets")), sent - lost, "{f}");
        assert_eq!(n(f, &format!("{dir}_pdm")), sent - lost, "{f}");
        assert_eq!(n(f, &format!("{dir}_duplicate")), 0, "{f}");
    }
    let at_server = last_flow(&at_server, "udp", Some(PORT));
    let at_client = last_flow(&at_client, "udp", Some(PORT));
    eprintln!("server's pdm: {at_server}\nclient's pdm: {at_client}");
    assert_eq!(
        n(at_server, "rx_lost"),
        before_to_server + after_to_server,
        "server's pdm: {at_server}"
    );
    assert_eq!(
        n(at_client, "rx_lost"),
        before_to_client + after_to_client,
        "client's pdm: {at_client}"
    );
}

/// No pdm at either end: PDM peers that put their own Destination Options on each
/// datagram (`common::pdm_peer`), through the observing router, which delays 2 ms each
/// way. The observer finds what the peers did: the holds the server's DTLRs encode,
/// the client's think time, the client's own round trips less the hold, each
/// direction's PDM packets, and on its own clock the two halves of the path. It ends
/// by `--duration`, reporting as it does on SIGTERM.
#[test]
fn independent_pdm_peers_through_an_observing_router() {
    const N: usize = 30;
    const PORT: u16 = 7630;
    let _serial = serial();
    let mut line = Line::new("obp");
    line.add_delay(Duration::from_millis(2));
    // Ended by --duration rather than SIGTERM: the final report comes all the same.
    let mut opts = vec!["--duration", "3s"];
    opts.extend(OBSERVE);
    let mut obs = Pdm::observe(&line.router, &["rc", "rs"], &opts);
    let (answers, asked) = pdm_peer::exchange(
        (&line.client, CLIENT_ADDR),
        (&line.server, SERVER_ADDR),
        PORT,
        N,
        varying_hold(),
        Duration::from_millis(3),
    );
    assert!(
        obs.exits_within(Duration::from_secs(10)),
        "pdm observe --duration 3s still runs"
    );
    let seen = obs.stop();
    observe_counters(&seen);
    let f = client_flow(&seen, "udp", (CLIENT_ADDR, SERVER_ADDR), PORT);
    eprintln!("observer: {f}");
    let rtt = check_against_peers(f, &Truth::of(&answers, &asked), N);
    // On the observer's clock: each side of it holds one of the relay's 2 ms.
    let (ss, cs) = (
        us(f, "server_side_rtt_us_p50"),
        us(f, "client_side_rtt_us_p50"),
    );
    assert!(
        ss > 1900.0 && cs > 1900.0,
        "2 ms on each side: server side {ss} µs, client side {cs} µs"
    );
    assert!(
        close(ss + cs, rtt, 0.10, 0.0),
        "server side {ss} + client side {cs} µs, the RTT {rtt} µs"
    );
}

/// A server that holds each request 1.5 to 1.9 ms and says so honestly.
fn varying_hold() -> Behaviour {
    Behaviour {
        hold: Box::new(|i| Duration::from_micros(1500 + 100 * (i as u64 % 5))),
        dtlr: Box::new(|_, held| encode_delta_ns(held)),
    }
}

/// The observer's flow `f` of `n` exchanges of PDM peers against what the peers did:
/// every packet with PDM each way, nothing lost, the server delay, the client's think
/// time and the RTT from the fields. Returns that RTT's p50 (µs).
fn check_against_peers(f: &Value, truth: &Truth, exchanges: usize) -> f64 {
    let n_ = exchanges as u64;
    for k in ["tx_packets", "rx_packets", "tx_pdm", "rx_pdm"] {
        assert_eq!(n(f, k), n_, "{k}: {f}");
    }
    for k in ["tx_lost", "rx_lost", "tx_duplicate", "rx_duplicate"] {
        assert_eq!(n(f, k), 0, "{k}: {f}");
    }
    assert_eq!(n(f, "server_delay_samples"), n_, "{f}");
    let (sd, want) = (us(f, "server_delay_us_p50"), median(&truth.server_delay));
    assert!(
        close(sd, want, 0.0, 0.01),
        "server delay p50 {sd} µs, the server's DTLRs say {want} µs"
    );
    assert_eq!(n(f, "client_delay_samples"), n_ - 1, "{f}");
    let (cd, want) = (us(f, "client_delay_us_p50"), median(&truth.client_delay));
    assert!(
        close(cd, want, 0.01, 0.0),
        "client delay p50 {cd} µs, the client thought {want} µs"
    );
    assert_eq!(
        n(f, "rtt_samples"),
        n_ - 1,
        "every answer but the last is echoed: {f}"
    );
    let (rtt, want) = (us(f, "rtt_us_p50"), median(&truth.rtt));
    assert!(
        close(rtt, want, 0.05, 20.0),
        "RTT p50 {rtt} µs, the peers' own {want} µs"
    );
    // Honest peers: no echo may be refused. (The server leaves DTLS 0, as a peer may;
    // the server's own round trip is not a figure of the flow, so it cannot make one
    // implausible. `pdm analyze` of the same exchange says 0.)
    for k in ["implausible", "dtlr_not_rfc_exact", "dtlr_malformed"] {
        assert_eq!(n(f, k), 0, "{k}: {f}");
    }
    rtt
}

/// An IPv6 packet as captured.
struct Ip6<'a>(&'a [u8]);

impl Ip6<'_> {
    fn next_header(&self) -> u8 {
        self.0[6]
    }
    fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.0[8..24]).expect("16 octets"))
    }
    fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.0[24..40]).expect("16 octets"))
    }
    /// Whether the first header after IPv6 is Destination Options starting with PDM.
    fn has_pdm(&self) -> bool {
        self.next_header() == 60 && self.0.get(42..44) == Some(&[0x0f, 10][..])
    }
}

fn addr(a: &str) -> Ipv6Addr {
    a.parse().expect("an IPv6 address")
}

/// The observer on the client host itself, with `--egress`: a PDM peer client (no pdm
/// there) asking a PDM peer server, a UDP flow and a ping without PDM. The observer
/// reports both flows from the client's side with the peers' figures, and on its own
/// clock the whole path is on the server's side. What left the client (captured where
/// it arrives, at the router) is what the applications sent: the peer's Destination
/// Options octet for octet, and no PDM on anything sent without it.
#[test]
fn egress_on_an_end_host_sees_its_flows_and_changes_none_of_its_packets() {
    const N: usize = 30;
    const PORT: u16 = 7640;
    const PLAIN: u16 = 7641;
    const PLAIN_N: usize = 10;
    const PINGS: u32 = 5;
    let _serial = serial();
    let mut line = Line::new("obe");
    line.add_delay(Duration::from_millis(1));
    let mut opts = vec!["--egress"];
    opts.extend(OBSERVE);
    let obs = Pdm::observe(&line.client, &[CLIENT_IF], &opts);
    let mut cap = Capture::start_whole(&line.router, "rc");
    let (answers, asked) = pdm_peer::exchange(
        (&line.client, CLIENT_ADDR),
        (&line.server, SERVER_ADDR),
        PORT,
        N,
        varying_hold(),
        Duration::from_millis(3),
    );
    held_requests(
        "udp",
        (&line.client, CLIENT_ADDR),
        (&line.server, SERVER_ADDR),
        PLAIN,
        PLAIN_N,
        Duration::ZERO,
        Duration::from_millis(2),
    );
    ping_from(&line.client, SERVER_ADDR, PINGS);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cap.stop(), 0, "the capture dropped packets");
    check_start(&obs, &[CLIENT_IF], true);
    let seen = obs.stop();
    let counters = observe_counters(&seen);
    eprintln!("observer's counters: {counters}");
    assert_eq!(
        n(&counters, "observe_pdm"),
        2 * N as u64,
        "each PDM packet seen once, leaving or arriving"
    );
    let no_pdm = 2 * (PLAIN_N as u64 + u64::from(PINGS));
    assert!(n(&counters, "observe_no_pdm") >= no_pdm, "{counters}");

    let f = client_flow(&seen, "udp", (CLIENT_ADDR, SERVER_ADDR), PORT);
    eprintln!("observer: {f}");
    let truth = Truth::of(&answers, &asked);
    check_against_peers(f, &truth, N);
    // At the client the observer's clock is the client's: its round trip to the server
    // is the client's own (less the claimed hold), and its own turnaround is about 0.
    let (ss, want) = (us(f, "server_side_rtt_us_p50"), median(&truth.rtt));
    assert!(
        close(ss, want, 0.05, 50.0),
        "server side {ss} µs, the client's own round trip less the hold {want} µs"
    );
    let cs = us(f, "client_side_rtt_us_p50");
    assert!(
        (0.0..500.0).contains(&cs),
        "client side at the client itself: {cs} µs"
    );
    let plain = client_flow(&seen, "udp", (CLIENT_ADDR, SERVER_ADDR), PLAIN);
    for (k, want) in [
        ("tx_packets", PLAIN_N as u64),
        ("rx_packets", PLAIN_N as u64),
        ("tx_pdm", 0),
        ("rx_pdm", 0),
    ] {
        assert_eq!(n(plain, k), want, "{k}: {plain}");
    }

    // On the wire: the peer's requests with exactly its header, the rest without any.
    let packets = cap.ipv6_packets();
    let from_client: Vec<Ip6> = packets
        .iter()
        .map(|p| Ip6(p))
        .filter(|p| p.src() == addr(CLIENT_ADDR) && p.dst() == addr(SERVER_ADDR))
        .collect();
    let with_pdm: Vec<&[u8]> = from_client
        .iter()
        .filter(|p| p.next_header() == 60)
        .map(|p| &p.0[40..56])
        .collect();
    let sent: Vec<Vec<u8>> = asked
        .iter()
        .map(|a| a.sent.encode_header(17).to_vec())
        .collect();
    assert_eq!(
        with_pdm,
        sent.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        "the peer's Destination Options, as it sent them"
    );
    let plain_udp = from_client.iter().filter(|p| p.next_header() == 17).count();
    let echo = from_client
        .iter()
        .filter(|p| p.next_header() == 58 && p.0[40] == 128)
        .count();
    assert_eq!(plain_udp, PLAIN_N, "UDP without PDM left without it");
    assert_eq!(echo, PINGS as usize, "echo requests left without PDM");
    assert_eq!(
        from_client.len(),
        N + PLAIN_N + PINGS as usize,
        "nothing else left the client for the server"
    );
}

/// Packets going from `from` to `to` in a capture, each with its hop limit raised by
/// `hops` (the routers it crossed after the capture point), counted by content.
fn by_content(
    packets: &[Vec<u8>],
    from: Ipv6Addr,
    to: Ipv6Addr,
    hops: u8,
) -> HashMap<Vec<u8>, usize> {
    let mut m = HashMap::new();
    for p in packets {
        let ip = Ip6(p);
        if ip.src() == from && ip.dst() == to {
            let mut p = p.clone();
            p[7] = p[7].wrapping_add(hops);
            *m.entry(p).or_insert(0) += 1;
        }
    }
    m
}

/// Every packet between the client and the server that the client's capture holds is
/// in the server's, octet for octet but the hop limit the router lowered by one, and
/// the other way round. Returns (packets with PDM, packets without) that crossed.
fn same_on_both_links(client_side: &Capture, server_side: &Capture) -> (usize, usize) {
    let (c, s) = (client_side.ipv6_packets(), server_side.ipv6_packets());
    let (client, server) = (addr(CLIENT_ADDR), addr(SERVER_ADDR));
    let (mut pdm, mut plain) = (0, 0);
    for (what, sent, arrived) in [
        (
            "client to server",
            by_content(&c, client, server, 0),
            by_content(&s, client, server, 1),
        ),
        (
            "server to client",
            by_content(&s, server, client, 0),
            by_content(&c, server, client, 1),
        ),
    ] {
        let missing: Vec<&Vec<u8>> = sent
            .keys()
            .filter(|p| arrived.get(*p) != sent.get(*p))
            .collect();
        let extra: Vec<&Vec<u8>> = arrived.keys().filter(|p| !sent.contains_key(*p)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: {} packets sent, {} arrived; {} sent did not arrive the same (first: {:02x?}), {} arrived that were not sent (first: {:02x?})",
            sent.values().sum::<usize>(),
            arrived.values().sum::<usize>(),
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first()
        );
        for (p, k) in &sent {
            if Ip6(p).has_pdm() {
                pdm += k;
            } else {
                plain += k;
            }
        }
    }
    (pdm, plain)
}

/// The observer on a router under each way of attaching it (XDP ingress, TC ingress,
/// TC ingress and egress): pdm's own PDM on some flows (UDP, TCP), none on others
/// (UDP, TCP, ping). Every packet leaves the router as it arrived but for the hop
/// limit, captured where it enters the router's link and where it leaves the other;
/// every packet the observer ran on is counted once, PDM or not. A second observer and
/// a `pdm run` on its interfaces are refused in one line and leave nothing attached;
/// the first keeps observing, and leaves nothing attached on exit.
#[test]
fn the_observer_changes_nothing_on_the_wire_and_holds_its_interfaces() {
    let _serial = serial();
    for (round, mode) in [
        &["--ingress", "xdp"][..],
        &["--ingress", "tc"],
        &["--ingress", "tc", "--egress"],
    ]
    .into_iter()
    .enumerate()
    {
        let egress = mode.contains(&"--egress");
        let line = Line::new(&format!("obw{round}"));
        // A third interface, free, to ask for along with a held one (a veth: this
        // kernel has no dummy devices).
        line.router.ip(&[
            "link", "add", "spare", "type", "veth", "peer", "name", "spare1",
        ]);
        line.router.ip(&["link", "set", "spare", "up"]);
        let only = ["--only", "port 7650"];
        let pdm_c = Pdm::start(&line.client, &only);
        let _pdm_s = Pdm::start(&line.server, &only);
        let mut opts = mode.to_vec();
        opts.extend(OBSERVE);
        let obs = Pdm::observe(&line.router, &["rc", "rs"], &opts);
        // At the ends: what the client's link carried and what the server's did. (On
        // the router a capture of an arriving packet comes after XDP.)
        let mut cap_c = Capture::start_whole(&line.client, CLIENT_IF);
        let mut cap_s = Capture::start_whole(&line.server, SERVER_IF);
        for (proto, port) in [("udp", 7650), ("tcp", 7650), ("udp", 7651), ("tcp", 7651)] {
            held_requests(
                proto,
                (&line.client, CLIENT_ADDR),
                (&line.server, SERVER_ADDR),
                port,
                20,
                Duration::from_millis(1),
                Duration::from_millis(2),
            );
        }
        ping_from(&line.client, SERVER_ADDR, 5);

        let held = [
            attachments(&line.router, "rc"),
            attachments(&line.router, "rs"),
        ];
        assert!(
            held.iter().all(|a| !a.is_empty()),
            "{mode:?}: the observer's programs are attached: {held:?}"
        );
        let observer = obs.pid();
        refused(
            &line.router,
            &["observe", "--iface", "rc", "--json"],
            observer,
            "rc",
        );
        refused(
            &line.router,
            &["observe", "--iface", "spare", "--iface", "rs", "--json"],
            observer,
            "rs",
        );
        refused(
            &line.router,
            &["run", "--iface", "rc", "--json"],
            observer,
            "rc",
        );
        refused(
            &line.client,
            &["observe", "--iface", CLIENT_IF, "--json"],
            pdm_c.pid(),
            CLIENT_IF,
        );
        assert_eq!(
            [
                attachments(&line.router, "rc"),
                attachments(&line.router, "rs")
            ],
            held,
            "{mode:?}: the refused ones attached nothing"
        );
        nothing_attached_to(&line.router, "spare");

        // The first one still observes.
        let before = n(
            &obs.last_counters().expect("a counters line")["counters"],
            "observe_no_pdm",
        );
        ping_from(&line.client, SERVER_ADDR, 3);
        std::thread::sleep(Duration::from_millis(600));
        let after = n(
            &obs.last_counters().expect("a counters line")["counters"],
            "observe_no_pdm",
        );
        assert!(
            after >= before + 6,
            "{mode:?}: the observer counted the pings after the refusals: {before} then {after}"
        );

        assert_eq!(cap_c.stop(), 0, "the client's capture dropped packets");
        assert_eq!(cap_s.stop(), 0, "the server's capture dropped packets");
        let (pdm, plain) = same_on_both_links(&cap_c, &cap_s);
        eprintln!("{mode:?}: {pdm} packets with PDM and {plain} without crossed unchanged");
        assert!(pdm >= 4 * 20, "{mode:?}: PDM traffic crossed: {pdm}");
        assert!(
            plain >= 4 * 20 + 16,
            "{mode:?}: plain traffic crossed: {plain}"
        );

        check_start(&obs, &["rc", "rs"], egress);
        let seen = obs.stop();
        let c = observe_counters(&seen);
        eprintln!("{mode:?}: {c}");
        // Each crossing packet ran through one program, or two with egress.
        let runs = if egress { 2 } else { 1 };
        assert_eq!(
            n(&c, "observe_pdm"),
            runs * pdm as u64,
            "{mode:?}: every PDM packet that crossed: {c}"
        );
        assert!(
            n(&c, "observe_no_pdm") >= runs * plain as u64,
            "{mode:?}: every packet without PDM that crossed: {c}"
        );
        assert_eq!(n(&c, "observe_bad_pdm"), 0, "{c}");
        for iface in ["rc", "rs", "spare"] {
            nothing_attached_to(&line.router, iface);
        }
    }
}
