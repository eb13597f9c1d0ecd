//! PDM on every packet: fragments, full-size UDP datagrams (QUIC's) and large pings,
//! with `--mtu-room` (the routes through the interface 16 octets lower while attached)
//! and without it (the packets that do not fit are counted and the user told). Every
//! fragment in its datagram's flow; a sender that gives every fragment of a datagram
//! the same PSN (FreeBSD) and one that numbers each fragment (pdm) both without phantom
//! loss or duplicates; the routes back as they were after exit and after SIGKILL.

mod common;

use std::{
    net::UdpSocket,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use common::{
    ADDR_A, ADDR_B, IFACE, Netns, Pdm, TwoHosts, last_flow,
    traffic::{Capture, sock},
};
use pdm_common::{time::encode_delta_ns, wire::PdmFields};
use serde_json::Value;

const PORT: u16 = 7800;

fn routes(ns: &Netns) -> String {
    ns.ip(&["-6", "route", "show", "dev", IFACE])
}

fn counter(c: &Value, name: &str) -> u64 {
    c["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {c}"))
}

/// The last counters object pdm printed.
fn last_counters(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|l| l["type"] == "counters")
        .expect("counters")
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// `rounds` UDP requests of `ask` octets from a to b, each answered with `answer`
/// octets; the client's port.
fn udp_rounds(h: &TwoHosts, rounds: usize, ask: usize, answer: usize) -> u16 {
    let server = h.b.in_ns(|| {
        let u = UdpSocket::bind(sock(ADDR_B, PORT)).expect("bind");
        u.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        u
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = vec![0u8; 65536];
            for _ in 0..rounds {
                let Ok((_, from)) = server.recv_from(&mut buf) else {
                    return;
                };
                server.send_to(&vec![0x5a; answer], from).expect("answer");
            }
        });
        h.a.in_ns(|| {
            let u = UdpSocket::bind(sock(ADDR_A, 0)).expect("bind");
            u.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            u.connect(sock(ADDR_B, PORT)).expect("connect");
            let mut buf = vec![0u8; 65536];
            for _ in 0..rounds {
                u.send(&vec![0xa5; ask]).expect("ask");
                let got = u.recv(&mut buf).expect("an answer");
                assert_eq!(got, answer);
                std::thread::sleep(Duration::from_millis(5));
            }
            u.local_addr().expect("addr").port()
        })
    })
}

/// Frames of the capture that are fragments: (with PDM, all).
fn fragments(cap: &Capture) -> (usize, usize) {
    let all = cap.fields(&["frame.number"], "ipv6.fraghdr").len();
    let pdm = cap
        .fields(
            &["frame.number"],
            "ipv6.fraghdr && ipv6.opt.pdm.psn_this_pkt",
        )
        .len();
    (pdm, all)
}

/// With `--mtu-room` on both ends: 3000-octet requests answered with 5000 octets, and
/// `ping -s 3000`. Every packet leaves with PDM (tshark finds one on every fragment),
/// the flows carry their real ports, nothing is lost or duplicated, and the routes are
/// back as they were once pdm is gone.
#[test]
fn with_room_every_fragment_carries_pdm_in_its_flow() {
    let h = TwoHosts::new("mtr");
    let before = (routes(&h.a), routes(&h.b));
    let pdm_a = Pdm::start(&h.a, &["--mtu-room", "--interval", "200ms"]);
    let pdm_b = Pdm::start(&h.b, &["--mtu-room", "--interval", "200ms"]);
    let lowered = routes(&h.a);
    assert!(
        lowered.contains("mtu 1484"),
        "routes while attached: {lowered}"
    );
    assert!(
        pdm_a
            .stderr_lines()
            .iter()
            .any(|l| l.contains("lowered by 16")),
        "pdm says what it changed: {:?}",
        pdm_a.stderr_lines()
    );
    let mut cap = Capture::start(&h.a);
    let port = udp_rounds(&h, 20, 3000, 5000);
    let ping = h.a.run(
        "ping",
        &["-6", "-c", "5", "-i", "0.05", "-s", "3000", ADDR_B],
    );
    assert!(ping.contains("5 received"), "{ping}");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(cap.stop(), 0, "the capture dropped packets");
    let (lines_a, lines_b) = (pdm_a.stop(), pdm_b.stop());

    let (with_pdm, all) = fragments(&cap);
    // 20 × (3 + 4) fragments of the UDP exchange, 5 × 2 × 3 of the pings.
    eprintln!("fragments on the wire: {all}, with PDM: {with_pdm}");
    assert!(all >= 20 * 7 + 30, "the datagrams were fragmented: {all}");
    assert_eq!(with_pdm, all, "a PDM on every fragment");
    for (who, lines, local) in [("client", &lines_a, port), ("server", &lines_b, PORT)] {
        let c = last_counters(lines);
        assert_eq!(counter(c, "egress_skip_too_big"), 0, "{who}: {c}");
        assert_eq!(counter(c, "fragments_unattributed"), 0, "{who}: {c}");
        let f = last_flow(lines, "udp", Some(local));
        assert_eq!(
            f["local_port"], local,
            "{who}: the flow has its real ports: {f}"
        );
        assert_eq!(
            n(f, "tx_pdm"),
            n(f, "tx_packets"),
            "{who}: every packet sent with PDM: {f}"
        );
        assert_eq!(
            n(f, "rx_pdm"),
            n(f, "rx_packets"),
            "{who}: every packet received with PDM: {f}"
        );
        assert!(n(f, "tx_packets") >= 60, "{who}: {f}");
        assert_eq!(n(f, "rx_lost"), 0, "{who}: {f}");
        assert_eq!(n(f, "rx_duplicate"), 0, "{who}: {f}");
        assert!(
            !lines
                .iter()
                .any(|l| l["type"] == "flow" && l["proto"] == "udp" && l["local_port"] == 0),
            "{who}: no flow of port 0"
        );
        let ping = last_flow(lines, "icmpv6", None);
        assert_ne!(
            ping["local_port"], 0,
            "{who}: the pings' flow has its identifier: {ping}"
        );
        assert_eq!(n(ping, "tx_pdm"), n(ping, "tx_packets"), "{who}: {ping}");
    }
    assert_eq!(
        (routes(&h.a), routes(&h.b)),
        before,
        "routes back as they were"
    );
    assert!(common::run_state(&h.a).is_empty(), "no state left behind");
}

/// IPV6_DONTFRAG, as QUIC sends: a datagram of 1452 octets fills a 1500 MTU. With the
/// room made, the stack refuses it (EMSGSIZE) and says the path's MTU is 1484, so a
/// sender sizing to it sends 1436 and every datagram carries PDM. Without the room, the
/// 1452 go out without PDM, and so do the full-size fragments of large pings: counted,
/// and the user told why and what to do.
#[test]
fn quic_sized_datagrams_fit_with_room_and_are_counted_without() {
    let h = TwoHosts::new("mtq");
    let sink = h.b.in_ns(|| {
        let u = UdpSocket::bind(sock(ADDR_B, PORT)).expect("bind");
        u.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        u
    });
    let client = h.a.in_ns(|| {
        let u = UdpSocket::bind(sock(ADDR_A, 0)).expect("bind");
        u.connect(sock(ADDR_B, PORT)).expect("connect");
        let one: libc::c_int = 1;
        // SAFETY: an int option on a socket we own.
        let r = unsafe {
            libc::setsockopt(
                u.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_DONTFRAG,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "IPV6_DONTFRAG");
        u
    });
    let path_mtu = |u: &UdpSocket| {
        let mut mtu: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int option read into `mtu`.
        let r = unsafe {
            libc::getsockopt(
                u.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU,
                (&mut mtu as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "IPV6_MTU");
        mtu as usize
    };
    let drain = || {
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while sink.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    };

    // Without room: 1452 octets leave, without PDM, and that is said.
    let pdm = Pdm::start(&h.a, &["--interval", "200ms"]);
    for _ in 0..20 {
        client.send(&[0x71; 1452]).expect("a full-size datagram");
    }
    assert_eq!(drain(), 20);
    // And large pings: of each one's three fragments, the two full-size ones.
    let ping = h.a.run(
        "ping",
        &["-6", "-c", "3", "-i", "0.05", "-s", "3000", ADDR_B],
    );
    assert!(ping.contains("3 received"), "{ping}");
    std::thread::sleep(Duration::from_millis(400));
    let err = pdm.stderr_lines().join("\n");
    let lines = pdm.stop();
    let c = last_counters(&lines);
    assert_eq!(counter(c, "egress_skip_too_big"), 20 + 3 * 2, "{c}");
    assert!(err.contains("--mtu-room"), "the hint: {err}");

    // With room: the stack says the path is 16 smaller; what fits carries PDM.
    let pdm = Pdm::start(&h.a, &["--mtu-room", "--interval", "200ms"]);
    let refused = client
        .send(&[0x71; 1452])
        .expect_err("too big for the path now");
    assert_eq!(refused.raw_os_error(), Some(libc::EMSGSIZE), "{refused}");
    let mtu = path_mtu(&client);
    assert_eq!(mtu, 1484, "the path MTU a sender sizes its datagrams to");
    let payload = mtu - 40 - 8;
    for _ in 0..20 {
        client
            .send(&vec![0x72; payload])
            .expect("a datagram sized to the path");
    }
    assert_eq!(drain(), 20);
    std::thread::sleep(Duration::from_millis(400));
    let lines = pdm.stop();
    let c = last_counters(&lines);
    assert_eq!(counter(c, "egress_skip_too_big"), 0, "{c}");
    let f = last_flow(&lines, "udp", Some(PORT));
    assert_eq!(n(f, "tx_packets"), 20, "{f}");
    assert_eq!(n(f, "tx_pdm"), 20, "every datagram with PDM: {f}");
}

/// A sender that gives every fragment of a datagram the same PSN, as FreeBSD's PDM does
/// (frames built here and sent through AF_PACKET): pdm on the receiver counts every
/// fragment in the datagram's flow, with PDM, and no loss or duplicate.
#[test]
fn a_sender_repeating_the_psn_on_every_fragment_gives_no_phantom_loss() {
    let h = TwoHosts::new("mtf");
    let pdm = Pdm::start(&h.b, &["--interval", "200ms"]);
    let mac = |ns: &Netns| {
        let out = ns.ip(&["-br", "link", "show", IFACE]);
        let text = out.split_whitespace().nth(2).expect("MAC").to_owned();
        let mut m = [0u8; 6];
        for (i, b) in text.split(':').enumerate() {
            m[i] = u8::from_str_radix(b, 16).expect("hex");
        }
        m
    };
    let (src_mac, dst_mac) = (mac(&h.a), mac(&h.b));
    let addr = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("addr").octets();
    const DATAGRAMS: u16 = 30;
    let sent = h.a.in_ns(|| {
        // SAFETY: a plain socket call; closed below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        let ifindex = testbed_ifindex(IFACE);
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&dst_mac);
        let mut sent = 0;
        let started = Instant::now();
        for d in 0..DATAGRAMS {
            let pdm = PdmFields {
                psn_this: 0x7ff0u16.wrapping_add(d),
                psn_last_recv: 0,
                scale_dtlr: 0,
                dtlr: 0,
                scale_dtls: encode_delta_ns(1_000_000).scale,
                dtls: encode_delta_ns(1_000_000).delta,
            };
            let id = 0x4000 + u32::from(d);
            let udp = testbed::pcap::udp(41000, PORT, &[0x66; 2992]);
            for (i, chunk) in udp.chunks(1232).enumerate() {
                let offset = (i * 1232) as u16;
                let more = (i + 1) * 1232 < udp.len();
                let headers = [
                    (testbed::pcap::DSTOPTS, pdm.encode_header(0).to_vec()),
                    (
                        testbed::pcap::FRAGMENT,
                        testbed::pcap::fragment_header(offset, more, id),
                    ),
                ];
                let packet = testbed::pcap::ipv6_packet(
                    addr(ADDR_A),
                    addr(ADDR_B),
                    &headers,
                    testbed::pcap::UDP,
                    chunk,
                );
                let mut frame = dst_mac.to_vec();
                frame.extend_from_slice(&src_mac);
                frame.extend_from_slice(&[0x86, 0xdd]);
                frame.extend_from_slice(&packet);
                // SAFETY: sending a buffer we own to an address we built.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&to as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(
                    n,
                    frame.len() as isize,
                    "{}",
                    std::io::Error::last_os_error()
                );
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
            assert!(started.elapsed() < Duration::from_secs(10), "bounded");
        }
        // SAFETY: our socket.
        unsafe { libc::close(fd) };
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let lines = pdm.stop();
    let f = last_flow(&lines, "udp", Some(PORT));
    eprintln!("{sent} fragments sent, same PSN per datagram: {f}");
    assert_eq!(f["remote_port"], 41000, "the datagram's flow: {f}");
    assert_eq!(n(f, "rx_packets"), sent, "every fragment in it: {f}");
    assert_eq!(n(f, "rx_pdm"), sent, "{f}");
    assert_eq!(n(f, "rx_lost"), 0, "{f}");
    assert_eq!(n(f, "rx_duplicate"), 0, "{f}");
    assert_eq!(n(f, "rx_reordered"), 0, "{f}");
}

/// The routes after SIGKILL stay lowered (nothing can run at a kill); the next start
/// puts them back before anything else, and its own exit leaves them as found.
#[test]
fn routes_come_back_after_a_crash_and_a_restart() {
    let h = TwoHosts::new("mtk");
    h.a.ip(&[
        "-6",
        "route",
        "add",
        "fd0d:99::/64",
        "via",
        ADDR_B,
        "dev",
        IFACE,
        "mtu",
        "1400",
    ]);
    let before = routes(&h.a);
    let pdm = Pdm::start(&h.a, &["--mtu-room"]);
    let lowered = routes(&h.a);
    assert!(
        lowered.contains("mtu 1384"),
        "a route's own MTU lowered from it: {lowered}"
    );
    pdm.kill();
    assert_eq!(routes(&h.a), lowered, "still lowered after SIGKILL");
    let pdm = Pdm::start(&h.a, &[]);
    assert!(
        pdm.stderr_lines()
            .iter()
            .any(|l| l.contains("restored the MTU")),
        "the restart says what it restored: {:?}",
        pdm.stderr_lines()
    );
    assert_eq!(routes(&h.a), before, "restored at the next start");
    pdm.stop();
    assert_eq!(routes(&h.a), before);
    let left = common::run_state(&h.a);
    assert!(left.is_empty(), "no state left behind: {left:?}");
}

fn testbed_ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "{name} exists");
    i
}
