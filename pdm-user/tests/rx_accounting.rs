//! Receive accounting against ground truth that does not come from pdm: a capture of the
//! receiving interface (every packet that arrived) and the counters of the nftables rule
//! that dropped packets on a router in between (every packet that did not). A flow's
//! packets reach the receiver on several CPUs at once — veth delivers in the sending
//! CPU's context, and the sender's application and its softirq run on different CPUs —
//! which is where per-flow state that assumes one CPU at a time drifts.

mod common;

use std::{
    net::UdpSocket,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use common::{
    Netns, Pdm,
    router::{self, Line},
    traffic::{Capture, sock},
};
use serde_json::Value;

/// Heavy on both cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SERVER_PORT: u16 = 5201;
const CLIENT_PORT: u16 = 40000;

fn nft(ns: &Netns, cmd: &str) {
    ns.run("nft", &cmd.split(' ').collect::<Vec<_>>());
}

/// A forward-chain rule on the router per direction that drops `percent` of the
/// packets matching `client_side` (and its mirror image), counting each drop; SYN, FIN
/// and RST excluded for TCP (a lost first packet has no PSN before it to show a gap).
fn add_drops(router: &Netns, percent: u32, tcp: bool) {
    nft(router, "add table inet pdmrx");
    nft(
        router,
        "add chain inet pdmrx forward_drop { type filter hook forward priority 0 ; }",
    );
    let (proto, flags) = if tcp {
        ("tcp", " tcp flags & (syn | fin | rst) == 0")
    } else {
        ("udp", "")
    };
    for (name, m) in [
        (
            "to_server",
            format!(
                "ip6 saddr {} {proto} sport {CLIENT_PORT}",
                router::CLIENT_ADDR
            ),
        ),
        (
            "to_client",
            format!(
                "ip6 daddr {} {proto} dport {CLIENT_PORT}",
                router::CLIENT_ADDR
            ),
        ),
    ] {
        nft(
            router,
            &format!(
                "add rule inet pdmrx forward_drop {m}{flags} numgen random mod 100 lt {percent} counter drop comment {name}"
            ),
        );
    }
}

/// Packets the rule named `name` dropped.
fn dropped(router: &Netns, name: &str) -> u64 {
    common::drops::dropped(router, "pdmrx", name)
}

/// Packets of the flow (`proto`, client port `CLIENT_PORT`) the capture holds that went
/// to `dst`.
fn captured(c: &Capture, proto: &str, dst: &str) -> u64 {
    c.fields(
        &["frame.number"],
        &format!("ipv6.dst == {dst} && {proto}.port == {CLIENT_PORT} && !icmpv6"),
    )
    .len() as u64
}

/// The flow's last record in one pdm's output: the flow whose port at this end is `local`.
fn flow<'a>(lines: &'a [Value], proto: &str, local: u16) -> &'a Value {
    lines
        .iter()
        .rev()
        .find(|l| l["type"] == "flow" && l["proto"] == proto && l["local_port"] == local)
        .unwrap_or_else(|| panic!("no {proto} flow with local port {local} in pdm's output"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} has no count in {v}"))
}

/// `pdm analyze FILE`'s flow of protocol `proto` between the test's ports.
fn analyze_flow(file: &std::path::Path, proto: &str) -> Value {
    let out = std::process::Command::new(common::pdm_bin())
        .arg("analyze")
        .arg(file)
        .output()
        .expect("run pdm analyze");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .find(|f| f["proto"] == proto && f["local_port"] == CLIENT_PORT)
        .unwrap_or_else(|| panic!("pdm analyze found no {proto} flow from port {CLIENT_PORT}"))
}

/// Waits until something in `ns` listens on TCP `port`.
fn listening(ns: &Netns, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns
        .run("ss", &["-Hltn", &format!("sport = :{port}")])
        .contains(&port.to_string())
    {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until no TCP connection of `CLIENT_PORT` in `ns` can still send (TIME-WAIT
/// only answers): a lost final ACK has the peer retransmit its FIN seconds later, and
/// what arrives after the capture stopped would be counted by pdm alone.
fn closed(ns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ns.run(
            "ss",
            &[
                "-Htan",
                &format!("( sport = :{CLIENT_PORT} or dport = :{CLIENT_PORT} )"),
            ],
        );
        if out.lines().all(|l| l.starts_with("TIME-WAIT")) {
            return;
        }
        assert!(Instant::now() < deadline, "connection not closed: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What each end's pdm counted against what arrived and what the router dropped, for
/// both directions of one flow.
fn check_both_directions(
    what: &str,
    line: &Line,
    proto: &str,
    (client_lines, server_lines): (&[Value], &[Value]),
    (client_cap, server_cap): (&Capture, &Capture),
) {
    let at_server = flow(server_lines, proto, SERVER_PORT);
    let at_client = flow(client_lines, proto, CLIENT_PORT);
    for (end, f, cap, dst, rule) in [
        (
            "server",
            at_server,
            server_cap,
            router::SERVER_ADDR,
            "to_server",
        ),
        (
            "client",
            at_client,
            client_cap,
            router::CLIENT_ADDR,
            "to_client",
        ),
    ] {
        let (arrived, lost) = (captured(cap, proto, dst), dropped(&line.router, rule));
        eprintln!(
            "{what}, received by the {end}: captured {arrived}, pdm rx_packets {}; router dropped {lost}, pdm rx_lost {} (reordered {}, duplicate {})",
            f["rx_packets"], f["rx_lost"], f["rx_reordered"], f["rx_duplicate"]
        );
        assert_eq!(
            n(f, "rx_packets"),
            arrived,
            "{what}: {end} rx_packets vs capture: {f}"
        );
        assert_eq!(
            n(f, "rx_lost"),
            lost,
            "{what}: {end} rx_lost vs nftables: {f}"
        );
        assert_eq!(n(f, "rx_duplicate"), 0, "{what}: {end}: {f}");
    }
}

fn spawn_iperf_server(ns: &Netns) -> Child {
    ns.cmd("iperf3")
        .args([
            "-s",
            "-1",
            "-p",
            &SERVER_PORT.to_string(),
            "-B",
            router::SERVER_ADDR,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server")
}

/// The transfer of issue "numbers you can trust": `pdm run --per-packet` on both ends,
/// iperf3 TCP at 200 Mb/s for 3 s through a router; once with no drop, twice with 1 %
/// dropped each way. In every run, per direction: rx_packets is what a capture of the
/// receiving interface holds, rx_lost what the router dropped, no duplicates.
#[test]
fn tcp_through_a_router_is_counted_exactly_in_every_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (run, percent) in [(0, 0), (1, 1), (2, 1)] {
        let what = format!("run {run}, {percent} % dropped");
        let line = Line::new(&format!("rxt{run}"));
        add_drops(&line.router, percent, true);
        let opts = ["--per-packet", "--interval", "200ms"];
        let pdm_c = Pdm::start(&line.client, &opts);
        let pdm_s = Pdm::start(&line.server, &opts);
        let mut cap_c = Capture::start(&line.client);
        let mut cap_s = Capture::start(&line.server);
        let mut server = spawn_iperf_server(&line.server);
        listening(&line.server, SERVER_PORT);
        let out = line.client.run(
            "iperf3",
            &[
                "-c",
                router::SERVER_ADDR,
                "-p",
                &SERVER_PORT.to_string(),
                "--cport",
                &CLIENT_PORT.to_string(),
                "-t",
                "3",
                "-b",
                "200M",
            ],
        );
        assert!(out.contains("sender"), "iperf3: {out}");
        let _ = server.wait();
        closed(&line.client);
        closed(&line.server);
        assert_eq!(cap_c.stop(), 0, "client capture dropped packets");
        assert_eq!(cap_s.stop(), 0, "server capture dropped packets");
        let (lines_c, lines_s) = (pdm_c.stop(), pdm_s.stop());
        check_both_directions(&what, &line, "tcp", (&lines_c, &lines_s), (&cap_c, &cap_s));
        // The same exactness from the client's capture, read back by `pdm analyze`:
        // what reached the client, and what the router dropped on the way to it.
        let analyzed = analyze_flow(&cap_c.path, "tcp");
        let (arrived, lost) = (
            captured(&cap_c, "tcp", router::CLIENT_ADDR),
            dropped(&line.router, "to_client"),
        );
        assert_eq!(
            n(&analyzed, "rx_packets"),
            arrived,
            "{what}: analyze: {analyzed}"
        );
        assert_eq!(n(&analyzed, "rx_lost"), lost, "{what}: analyze: {analyzed}");
        assert_eq!(
            n(&analyzed, "rx_duplicate"),
            0,
            "{what}: analyze: {analyzed}"
        );
        // And from the server's capture, the other direction: the client's PSNs that
        // reached the server, and what the router dropped on the way there.
        let analyzed = analyze_flow(&cap_s.path, "tcp");
        let (arrived, lost) = (
            captured(&cap_s, "tcp", router::SERVER_ADDR),
            dropped(&line.router, "to_server"),
        );
        eprintln!(
            "{what}, the server's capture: the client's packets {arrived}, dropped {lost}; analyze tx_packets {}, tx_lost {}",
            analyzed["tx_packets"], analyzed["tx_lost"]
        );
        assert_eq!(
            n(&analyzed, "tx_packets"),
            arrived,
            "{what}: analyze: {analyzed}"
        );
        assert_eq!(n(&analyzed, "tx_lost"), lost, "{what}: analyze: {analyzed}");
        assert_eq!(
            n(&analyzed, "tx_duplicate"),
            0,
            "{what}: analyze: {analyzed}"
        );
        if percent > 0 {
            assert!(
                dropped(&line.router, "to_server") > 50,
                "{what}: drops happened"
            );
        }
    }
}

/// One UDP flow (one socket, one 5-tuple) sent by two threads pinned to the two CPUs,
/// so that its packets cross the router and reach the receiver on both CPUs at once;
/// the router drops 1 %. Exact all the same. A `pdm observe` on the router (its
/// programs run before the drops, on both CPUs at once for the one flow) sees every
/// datagram the client's pdm sent, none lost or twice.
#[test]
fn one_udp_flow_sent_from_two_cpus_is_counted_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs two CPUs; the machine has {cpus}"
    );
    const PER_THREAD: usize = 20_000;
    let line = Line::new("rxu");
    let opts = ["--per-packet", "--interval", "200ms"];
    let pdm_c = Pdm::start(&line.client, &opts);
    let pdm_s = Pdm::start(&line.server, &opts);
    let observer = Pdm::observe(&line.router, &["rc", "rs"], &["--interval", "200ms"]);
    let mut cap_c = Capture::start(&line.client);
    let mut cap_s = Capture::start(&line.server);
    let sink = line.server.in_ns(|| {
        let u = UdpSocket::bind(sock(router::SERVER_ADDR, SERVER_PORT)).expect("bind");
        u.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        u
    });
    let lost = std::thread::scope(|s| {
        s.spawn(|| {
            // Drain, so that the server's socket does not answer with errors.
            let mut buf = [0u8; 2048];
            while sink.recv(&mut buf).is_ok() {}
        });
        let u = line.client.in_ns(|| {
            let u = UdpSocket::bind(sock(router::CLIENT_ADDR, CLIENT_PORT)).expect("bind");
            u.connect(sock(router::SERVER_ADDR, SERVER_PORT))
                .expect("connect");
            u
        });
        // The first datagram alone, before any drop: the receiver's sequence starts
        // from it (a loss before the first PSN received cannot show).
        u.send(b"first").expect("send");
        std::thread::sleep(Duration::from_millis(50));
        add_drops(&line.router, 1, false);
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|t| {
            for cpu in 0..2 {
                let (u, barrier) = (&u, &barrier);
                t.spawn(move || {
                    common::pin_to_cpu(cpu);
                    barrier.wait();
                    let payload = [cpu as u8; 200];
                    let deadline = Instant::now() + Duration::from_secs(20);
                    for i in 0..PER_THREAD {
                        // A full socket buffer refuses a send: wait and retry, bounded.
                        while u.send(&payload).is_err() {
                            assert!(Instant::now() < deadline, "sending took over 20 s");
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        if i % 64 == 63 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                });
            }
        });
        // The last datagrams' loss shows only once a later one arrives: stop dropping
        // (the counter read first: flushing removes it) and send three more.
        std::thread::sleep(Duration::from_millis(50));
        let lost = dropped(&line.router, "to_server");
        nft(&line.router, "flush chain inet pdmrx forward_drop");
        for _ in 0..3 {
            u.send(b"last").expect("send");
        }
        lost
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cap_c.stop(), 0, "client capture dropped packets");
    assert_eq!(cap_s.stop(), 0, "server capture dropped packets");
    let lines_s = pdm_s.stop();
    let f = flow(&lines_s, "udp", SERVER_PORT);
    let arrived = captured(&cap_s, "udp", router::SERVER_ADDR);
    eprintln!(
        "UDP from two CPUs: captured {arrived}, pdm rx_packets {}; router dropped {lost}, pdm rx_lost {} (reordered {}, duplicate {})",
        f["rx_packets"], f["rx_lost"], f["rx_reordered"], f["rx_duplicate"]
    );
    assert!(lost > 100, "the drop rule did not work: {lost}");
    assert_eq!(n(f, "rx_packets"), arrived, "rx_packets vs capture: {f}");
    assert_eq!(n(f, "rx_lost"), lost, "rx_lost vs nftables: {f}");
    assert_eq!(n(f, "rx_duplicate"), 0, "{f}");
    let seen = observer.stop();
    // Seen from the client, by the observer as by the client's pdm.
    let o = flow(&seen, "udp", CLIENT_PORT);
    let lines_c = pdm_c.stop();
    let sent = flow(&lines_c, "udp", CLIENT_PORT);
    eprintln!(
        "the observer: tx_packets {}, tx_lost {}, tx_reordered {}",
        o["tx_packets"], o["tx_lost"], o["tx_reordered"]
    );
    assert_eq!(o["remote_port"], SERVER_PORT, "the server is remote: {o}");
    assert_eq!(
        n(o, "tx_packets"),
        n(sent, "tx_packets"),
        "observer vs sender: {o}"
    );
    assert_eq!(n(o, "tx_pdm"), n(o, "tx_packets"), "{o}");
    assert_eq!((n(o, "tx_lost"), n(o, "tx_duplicate")), (0, 0), "{o}");
}
