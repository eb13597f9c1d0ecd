//! `pdm run` against a PDM peer whose fields the test computes itself (see
//! `common::pdm_peer`): a peer that lies about how long it held each request, one that
//! adds a little, and one whose time encoder is not RFC 8250's. pdm must keep what is
//! possible, refuse what is not (no sample, never a clamped one), count it, and mark
//! the flow.

mod common;

use std::{
    net::UdpSocket,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    Netns, Pdm, TwoHosts,
    pdm_peer::{self, Answer, Behaviour},
    router::{self, Line},
    traffic::sock,
};
use pdm_common::time::{decode_received, encode_delta_ns};
use serde_json::Value;

/// Timing-sensitive: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PORT: u16 = 7700;
const EXCHANGES: usize = 30;

/// `EXCHANGES` requests from `client` (at `from`) to the peer at `to`, one at a time,
/// `gap` apart; each answer awaited. Returns the application's round trips (µs).
fn requests(client: &Netns, from: &str, to: &str, gap: Duration) -> Vec<f64> {
    client.in_ns(|| {
        let u = UdpSocket::bind(sock(from, 0)).expect("bind");
        u.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        let mut rtts = Vec::new();
        for i in 0..EXCHANGES {
            let msg = format!("request {i}");
            let t = Instant::now();
            u.send_to(msg.as_bytes(), sock(to, PORT)).expect("send");
            let (len, _) = u.recv_from(&mut buf).expect("answer");
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(&buf[..len], msg.as_bytes());
            std::thread::sleep(gap);
        }
        rtts
    })
}

/// Runs the peer on `server` and the requests from `client` (pdm already running there);
/// returns what the peer did and the application's round trips.
fn exchange(
    client: &Netns,
    server: &Netns,
    client_addr: &str,
    server_addr: &str,
    b: Behaviour,
) -> (Vec<Answer>, Vec<f64>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let peer = s.spawn(|| pdm_peer::serve(server, server_addr, PORT, EXCHANGES, b, ready_tx));
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("peer ready");
        let rtts = requests(client, client_addr, server_addr, Duration::from_millis(20));
        let answers = peer.join().expect("peer");
        assert_eq!(answers.len(), EXCHANGES, "every request answered");
        (answers, rtts)
    })
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} has no count in {v}"))
}

fn us(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} has no value in {v}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The flow's last record and the last counters of pdm's output.
fn results(lines: &[Value]) -> (&Value, &Value) {
    let flow = common::last_flow(lines, "udp", Some(PORT));
    let counters = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "counters")
        .expect("a counters line");
    (flow, &counters["counters"])
}

/// A peer that adds 10 s to every DTLR: not one sample, every echo counted, the flow
/// marked. (Before: RTT 0.0 µs, a negative result clamped, and server delay 10 s.)
#[test]
fn a_peer_claiming_impossible_times_gives_no_samples() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = TwoHosts::new("lie");
    let pdm = Pdm::start(&h.a, &["--interval", "200ms"]);
    let behaviour = Behaviour {
        hold: Box::new(|_| Duration::from_millis(2)),
        dtlr: Box::new(|_, held| encode_delta_ns(held + 10_000_000_000)),
    };
    exchange(&h.a, &h.b, common::ADDR_A, common::ADDR_B, behaviour);
    std::thread::sleep(Duration::from_millis(500));
    let lines = pdm.stop();
    let (f, c) = results(&lines);
    eprintln!("flow: {f}\ncounters: {c}");
    assert_eq!(n(f, "rx_pdm"), EXCHANGES as u64, "{f}");
    assert_eq!(
        n(f, "implausible"),
        EXCHANGES as u64,
        "every echo refused: {f}"
    );
    assert_eq!(n(f, "rtt_all_samples"), 0, "no RTT sample: {f}");
    assert_eq!(n(f, "server_delay_all_samples"), 0, "no server delay: {f}");
    assert_eq!(f["rtt_us_min"], Value::Null, "{f}");
    assert_eq!(n(c, "ingress_implausible_dtlr"), EXCHANGES as u64, "{c}");
    assert_eq!(n(c, "ingress_rtt_samples"), 0, "{c}");
}

/// A peer that adds 1 ms on a path whose round trip is far longer (2 × 5 ms through a
/// delaying router): its claim is possible, so every echo gives a sample, 1 ms off —
/// the rule removes only the impossible.
#[test]
fn a_peer_adding_a_possible_millisecond_is_measured_as_it_claims() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut line = Line::new("lie1");
    line.add_delay(Duration::from_millis(5));
    let pdm = Pdm::start(&line.client, &["--interval", "200ms"]);
    let behaviour = Behaviour {
        hold: Box::new(|_| Duration::from_millis(2)),
        dtlr: Box::new(|_, held| encode_delta_ns(held + 1_000_000)),
    };
    let (answers, app) = exchange(
        &line.client,
        &line.server,
        router::CLIENT_ADDR,
        router::SERVER_ADDR,
        behaviour,
    );
    std::thread::sleep(Duration::from_millis(500));
    let lines = pdm.stop();
    let (f, c) = results(&lines);
    eprintln!("flow: {f}\ncounters: {c}");
    assert_eq!(n(f, "implausible"), 0, "{f}");
    assert_eq!(n(f, "rtt_all_samples"), EXCHANGES as u64, "{f}");
    assert_eq!(n(f, "server_delay_all_samples"), EXCHANGES as u64, "{f}");
    // The path's own round trip, from the application's view less the peer's real hold.
    let path = median(
        app.iter()
            .zip(&answers)
            .map(|(a, p)| a - p.held_ns as f64 / 1e3)
            .collect(),
    );
    let claimed = median(
        answers
            .iter()
            .map(|p| p.held_ns as f64 / 1e3 + 1000.0)
            .collect(),
    );
    let (rtt, sd) = (us(f, "rtt_all_us_p50"), us(f, "server_delay_all_us_p50"));
    eprintln!(
        "path {path:.0} µs, pdm RTT p50 {rtt:.0} µs; claimed {claimed:.0} µs, pdm server delay p50 {sd:.0} µs"
    );
    assert!(
        (sd - claimed).abs() <= 0.02 * claimed + 50.0,
        "server delay {sd:.0} µs vs the {claimed:.0} µs the peer claimed"
    );
    // Within half the added millisecond: clearly the path less the peer's addition.
    assert!(
        (rtt - (path - 1000.0)).abs() <= 500.0,
        "RTT {rtt:.0} µs: the path's {path:.0} µs less the 1 ms the peer added"
    );
}

/// A peer whose encoder is one shift short and wraps at 16 bits (public PDM code):
/// every DTLR that RFC 8250's encoder could not have produced is refused and counted —
/// exactly those, as the test computes them — and the flow is marked. The others are
/// decoded as sent: smaller than the truth, so no sample is negative or clamped.
#[test]
fn a_peer_with_a_broken_encoder_is_flagged() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = TwoHosts::new("enc");
    let pdm = Pdm::start(&h.a, &["--interval", "200ms"]);
    let behaviour = Behaviour {
        // 1.0 to 15.5 ms: both halves of the wrapped mantissa's range come up.
        hold: Box::new(|i| Duration::from_micros(1000 + 500 * i as u64)),
        dtlr: Box::new(|_, held| pdm_peer::one_shift_short(held)),
    };
    let (answers, _) = exchange(&h.a, &h.b, common::ADDR_A, common::ADDR_B, behaviour);
    std::thread::sleep(Duration::from_millis(500));
    let lines = pdm.stop();
    let (f, c) = results(&lines);
    eprintln!("flow: {f}\ncounters: {c}");
    let refused = answers
        .iter()
        .filter(|a| {
            let dt = pdm_common::time::DeltaTime {
                delta: a.sent.dtlr,
                scale: a.sent.scale_dtlr,
            };
            decode_received(dt).is_err()
        })
        .count() as u64;
    assert!(
        (1..EXCHANGES as u64).contains(&refused),
        "the test's hold times should give both kinds: {refused} refused"
    );
    assert_eq!(n(f, "dtlr_not_rfc_exact"), refused, "{f}");
    assert_eq!(n(c, "ingress_dtlr_not_rfc_exact"), refused, "{c}");
    assert_eq!(n(f, "implausible"), 0, "{f}");
    assert_eq!(
        n(f, "rtt_all_samples"),
        EXCHANGES as u64 - refused,
        "the others are sampled: {f}"
    );
    // Decoded smaller than the truth, so the RTT comes out longer than the path's
    // (~100 µs on veth), never below it, never 0.
    assert!(us(f, "rtt_all_us_min") > 10.0, "{f}");
}
