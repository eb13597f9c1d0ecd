//! Hostile conditions: a flood of spoofed 5-tuples through the link while a real TCP
//! flow runs, and the legacy netlink TC attach path (`--attach netlink`) with its
//! clean-up after a clean exit and after SIGKILL.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use common::{
    ADDR_A, ADDR_B, IFACE, Netns, Pdm, TwoHosts, run_state,
    traffic::{checking_sink, pattern, sock},
};
use serde_json::Value;

fn mac(ns: &Netns) -> [u8; 6] {
    let v: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", IFACE])).expect("ip -j");
    let s = v[0]["address"].as_str().expect("MAC address");
    let mut m = [0u8; 6];
    for (o, p) in m.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(p, 16).expect("hex");
    }
    m
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const FLOOD_PAYLOAD: usize = 18;
const FRAME_LEN: usize = 14 + 40 + 8 + FLOOD_PAYLOAD;

/// Writes flood frame number `i` (an Ethernet + IPv6 + UDP frame with a valid UDP
/// checksum) into `f`: each `i` is its own 5-tuple (source address from `i`, ports
/// from `i`), from a documentation prefix this host has no route back to, so the flood
/// causes no Neighbor Discovery and no answers.
fn flood_frame(f: &mut [u8; FRAME_LEN], i: u64, dst_mac: [u8; 6], src_mac: [u8; 6], dst: [u8; 16]) {
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
    let ulen = (8 + FLOOD_PAYLOAD) as u16;
    ip[4..6].copy_from_slice(&ulen.to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    let mut src = [0u8; 16];
    src[0..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    src[8..16].copy_from_slice(&i.to_be_bytes());
    ip[8..24].copy_from_slice(&src);
    ip[24..40].copy_from_slice(&dst);
    let sport = 1024 + (i % 60_000) as u16;
    let dport = 10_000 + ((i / 60_000) % 50_000) as u16;
    let udp = &mut f[54..];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&ulen.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    udp[8..8 + 8].copy_from_slice(&i.to_be_bytes());
    udp[16..].fill(0x5a);
    let mut sum = csum_add(0, &src);
    sum = csum_add(sum, &dst);
    sum = csum_add(sum, &u32::from(ulen).to_be_bytes());
    sum = csum_add(sum, &[0, 0, 0, 17]);
    sum = csum_add(sum, udp);
    let c = match csum_fold(sum) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
}

/// The UDP checksum sum (unfolded) of frame `i`'s pseudo-header and UDP part, less
/// the parts that depend on `i`: built once, so that each frame costs a few stores.
fn flood_base_sum(dst_mac: [u8; 6], src_mac: [u8; 6], dst: [u8; 16]) -> u32 {
    let mut f = [0u8; FRAME_LEN];
    flood_frame(&mut f, 0, dst_mac, src_mac, dst);
    let ulen = (8 + FLOOD_PAYLOAD) as u32;
    let mut sum = csum_add(0, &f[22..54]); // source and destination address
    sum += ulen + 17;
    f[60..62].copy_from_slice(&[0, 0]); // checksum field
    sum = csum_add(sum, &f[54..]);
    // Frame 0's ports are 1024 and 10 000; its address and payload words of `i` are 0.
    sum - 1024 - 10_000
}

/// Frame `i`, written over a frame of the same flood (only what depends on `i`).
fn flood_frame_fast(f: &mut [u8; FRAME_LEN], i: u64, base: u32) {
    let sport = 1024 + (i % 60_000) as u16;
    let dport = 10_000 + ((i / 60_000) % 50_000) as u16;
    let b = i.to_be_bytes();
    f[30..38].copy_from_slice(&b); // low half of the source address
    f[54..56].copy_from_slice(&sport.to_be_bytes());
    f[56..58].copy_from_slice(&dport.to_be_bytes());
    f[62..70].copy_from_slice(&b); // payload: the frame number
    let words = (i >> 48) + ((i >> 32) & 0xffff) + ((i >> 16) & 0xffff) + (i & 0xffff);
    let sum = u64::from(base) + 2 * words + u64::from(sport) + u64::from(dport);
    let sum = (sum & 0xffff_ffff) as u32 + (sum >> 32) as u32;
    let c = match csum_fold(sum) {
        0 => 0xffff,
        c => c,
    };
    f[60..62].copy_from_slice(&c.to_be_bytes());
}

/// What the flood sender did.
#[derive(Debug)]
struct FloodReport {
    /// Frames the kernel accepted (each a distinct 5-tuple).
    sent: u64,
    elapsed: Duration,
}

/// Sends distinct spoofed UDP 5-tuples from `ns`'s veth to `dst_mac` through an
/// AF_PACKET socket (sendmmsg, bypassing the qdisc and so the sender's own TC egress),
/// as fast as the kernel takes them, until `stop`, `max_frames` or `max_time`.
fn flood(
    ns: &Netns,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    dst: [u8; 16],
    stop: &AtomicBool,
    max_frames: u64,
    max_time: Duration,
) -> FloodReport {
    ns.enter();
    let ifindex = pdm_user::sys::iface::index(IFACE).expect("flood interface");
    // SAFETY: plain socket calls with buffers we own; the OwnedFd closes the socket.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        OwnedFd::from_raw_fd(fd)
    };
    let one: libc::c_int = 1;
    // SAFETY: valid socket and option.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(
        r,
        0,
        "PACKET_QDISC_BYPASS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: an all-zero sockaddr_ll is valid; filled in below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0; // send only: receive nothing
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: binding to a valid sockaddr_ll.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());

    const BATCH: usize = 256;
    let mut frames = vec![[0u8; FRAME_LEN]; BATCH];
    let mut iov: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: FRAME_LEN,
        })
        .collect();
    // SAFETY: all-zero mmsghdr is valid; each gets its own iovec below.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let base = flood_base_sum(dst_mac, src_mac, dst);
    for (k, f) in frames.iter_mut().enumerate() {
        flood_frame(f, k as u64, dst_mac, src_mac, dst);
        // The fast path writes the same frames as the reference.
        let mut fast = *f;
        for i in [k as u64, 123_456_789 + k as u64, u64::MAX - k as u64] {
            flood_frame_fast(&mut fast, i, base);
            let mut full = [0u8; FRAME_LEN];
            flood_frame(&mut full, i, dst_mac, src_mac, dst);
            assert_eq!(fast, full, "fast flood frame {i} differs");
        }
    }
    let started = Instant::now();
    let mut next = 0u64; // first frame not yet accepted
    let mut errors = 0u64;
    while next < max_frames && !stop.load(Ordering::Relaxed) && started.elapsed() < max_time {
        // The batch from `next` (frames a previous call did not take go again).
        let want = (max_frames - next).min(BATCH as u64) as usize;
        for (k, f) in frames[..want].iter_mut().enumerate() {
            flood_frame_fast(f, next + k as u64, base);
        }
        // SAFETY: msgs point at live iovecs over live frames.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), want as u32, 0) };
        if n <= 0 {
            // ENOBUFS and the like: the device is full; try the same frames again.
            errors += 1;
            std::thread::yield_now();
            continue;
        }
        next += n as u64;
    }
    if errors > 0 {
        eprintln!("flood: sendmmsg refused a batch {errors} times (device busy)");
    }
    FloodReport {
        sent: next,
        elapsed: started.elapsed(),
    }
}

/// A TCP stream from a to b, paced to `rate` octets/s, until `stop`; b checks every
/// byte. Returns (bytes sent, bytes b received and checked).
fn tcp_stream_until(h: &TwoHosts, port: u16, rate: u64, stop: &AtomicBool) -> (u64, u64) {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let server = s.spawn(|| checking_sink(h, port, ready_tx));
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        let client = s.spawn(|| {
            h.a.enter();
            let mut c = TcpStream::connect_timeout(&sock(ADDR_B, port), Duration::from_secs(10))
                .expect("connect");
            // SAFETY: valid socket, option value of the size the kernel expects.
            let r = unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_MAX_PACING_RATE,
                    (&rate as *const u64).cast(),
                    8,
                )
            };
            assert_eq!(r, 0, "SO_MAX_PACING_RATE");
            c.set_write_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            c.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            let mut buf = vec![0u8; 16 << 10];
            let mut pos = 0u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) {
                assert!(Instant::now() < deadline, "the stream was never stopped");
                for (k, b) in buf.iter_mut().enumerate() {
                    *b = pattern(pos + k as u64);
                }
                c.write_all(&buf).expect("write");
                pos += buf.len() as u64;
            }
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut answer = [0u8; 8];
            c.read_exact(&mut answer).expect("answer");
            (pos, u64::from_be_bytes(answer))
        });
        let received = server.join().expect("server");
        let (sent, answered) = client.join().expect("client");
        assert_eq!(answered, received);
        (sent, received)
    })
}

fn counter(line: &Value, name: &str) -> u64 {
    line["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {line}"))
}

/// Every packet a program saw is accounted for exactly once.
fn counters_add_up(line: &Value) {
    let c = |n| counter(line, n);
    let egress_parts: u64 = line["counters"]
        .as_object()
        .expect("counters")
        .iter()
        .filter(|(k, _)| k.starts_with("egress_skip_") || *k == "egress_pdm_inserted")
        .map(|(_, v)| v.as_u64().expect("number"))
        .sum();
    assert_eq!(c("egress_packets"), egress_parts, "egress counters: {line}");
    let ingress_parts: u64 = line["counters"]
        .as_object()
        .expect("counters")
        .iter()
        .filter(|(k, _)| {
            k.starts_with("ingress_skip_") || *k == "ingress_pdm" || *k == "ingress_no_pdm"
        })
        .map(|(_, v)| v.as_u64().expect("number"))
        .sum();
    assert_eq!(
        c("ingress_packets"),
        ingress_parts,
        "ingress counters: {line}"
    );
}

/// Sets the flag when dropped: stops a helper thread when the test body ends, also
/// by a panic (a scope would otherwise wait for the thread).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const REAL_PORT: u16 = 7200;
const MAX_FLOWS: u32 = 65_536;
const FLOOD_FLOWS: u64 = 1_000_000;

#[test]
fn flood_of_spoofed_flows_keeps_the_real_flow_measured() {
    let h = TwoHosts::new("flood");
    let dst_mac = mac(&h.a);
    let src_mac = mac(&h.b);
    let dst: [u8; 16] = ADDR_A.parse::<std::net::Ipv6Addr>().expect("addr").octets();

    // b runs pdm too, so that its answers echo a's PSNs (a's RTT samples).
    let _pdm_b = Pdm::start(&h.b, &["--ingress", "tc"]);
    let filter = format!("port {REAL_PORT}");
    let max_flows = MAX_FLOWS.to_string();
    let pdm = Pdm::start(
        &h.a,
        &[
            "--max-flows",
            &max_flows,
            "--interval",
            "1s",
            "--filter",
            &filter,
        ],
    );

    let real = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["type"] == "flow" && l["proto"] == "tcp" && l["remote_port"] == REAL_PORT)
            .cloned()
            .collect()
    };

    let stream_stop = AtomicBool::new(false);
    let flood_stop = AtomicBool::new(false);
    let mut rss = Vec::new(); // (phase, KiB)
    let (bytes, flood_report, flood_window, base_no_pdm) = std::thread::scope(|s| {
        // Whatever happens here (a failed assertion included), the helper threads stop.
        let _stop_stream = StopOnDrop(&stream_stop);
        let _stop_flood = StopOnDrop(&flood_stop);
        let stream = s.spawn(|| tcp_stream_until(&h, REAL_PORT, 4 << 20, &stream_stop));

        // Before: the real flow is measured (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = real(&pdm.lines());
            if r.last()
                .is_some_and(|l| l["rtt_all_samples"].as_u64() > Some(0))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the real flow was never measured"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        rss.push(("before", pdm.rss_kib()));
        let base_no_pdm = counter(&pdm.last_counters().expect("counters"), "ingress_no_pdm");

        // The flood, stopped once pdm has seen FLOOD_FLOWS of its frames (or at the
        // sender's own bounds: 4 × that many frames, or 25 s).
        let flood_ts0 = common_now();
        let flooder = s.spawn(|| {
            flood(
                &h.b,
                dst_mac,
                src_mac,
                dst,
                &flood_stop,
                4 * FLOOD_FLOWS,
                Duration::from_secs(25),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !flooder.is_finished() {
            assert!(Instant::now() < deadline, "the flood did not end");
            std::thread::sleep(Duration::from_millis(250));
            rss.push(("during", pdm.rss_kib()));
            let seen = pdm
                .last_counters()
                .map_or(0, |l| counter(&l, "ingress_no_pdm"))
                - base_no_pdm;
            if seen >= FLOOD_FLOWS {
                flood_stop.store(true, Ordering::Relaxed);
            }
        }
        let report = flooder.join().expect("flood thread");
        let flood_ts1 = common_now();
        eprintln!(
            "flood: {} frames in {:?} ({:.0} frames/s), pdm saw {} so far",
            report.sent,
            report.elapsed,
            report.sent as f64 / report.elapsed.as_secs_f64(),
            pdm.last_counters()
                .map_or(0, |l| counter(&l, "ingress_no_pdm"))
                - base_no_pdm
        );

        // After: the real flow goes on for a few more reports.
        let after = Instant::now();
        while after.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(500));
            rss.push(("after", pdm.rss_kib()));
        }
        stream_stop.store(true, Ordering::Relaxed);
        let bytes = stream.join().expect("stream");
        // One more report with the stream's end.
        std::thread::sleep(Duration::from_millis(1500));
        (bytes, report, (flood_ts0, flood_ts1), base_no_pdm)
    });
    let lines = pdm.stop();

    // The real flow: byte-exact, and measured all along.
    let (sent, received) = bytes;
    assert_eq!(sent, received, "the real TCP flow lost bytes");
    assert!(sent > 4 << 20, "the real flow barely ran: {sent} bytes");
    let records = real(&lines);
    let ts = |l: &Value| l["ts"].as_f64().expect("ts");
    let (t0, t1) = flood_window;
    let during: Vec<&Value> = records
        .iter()
        .filter(|l| ts(l) > t0 && ts(l) <= t1)
        .collect();
    let after: Vec<&Value> = records.iter().filter(|l| ts(l) > t1).collect();
    eprintln!(
        "real flow records: {} in all, {} during the flood, {} after",
        records.len(),
        during.len(),
        after.len()
    );
    assert!(
        !during.is_empty() || t1 - t0 < 1.0,
        "the real flow vanished from pdm's output during the flood"
    );
    assert!(after.len() >= 3, "the real flow is missing after the flood");
    for w in records.windows(2) {
        for k in ["tx_bytes", "rx_bytes", "tx_packets", "rtt_all_samples"] {
            assert!(
                w[1][k].as_u64() >= w[0][k].as_u64(),
                "real flow's {k} went down (evicted and recreated?): {} then {}",
                w[0][k],
                w[1][k]
            );
        }
    }
    let at_start = records
        .iter()
        .rev()
        .find(|l| ts(l) <= t0)
        .expect("a record before the flood");
    let last = records.last().expect("records");
    for k in ["tx_bytes", "rtt_all_samples", "rx_pdm"] {
        assert!(
            last[k].as_u64() > at_start[k].as_u64(),
            "real flow's {k} did not grow across the flood: {} then {}",
            at_start[k],
            last[k]
        );
    }
    // Progress during the flood is reported, not asserted: at the sender's top rate
    // the flood fills the receiving veth's queue, and the real flow's ACKs are dropped
    // there with the flood (TCP then waits for a retransmission timer): the link's
    // doing, not pdm's. The record must stay, and carry on afterwards.
    if let [first, .., end] = during.as_slice() {
        eprintln!(
            "real flow during the flood: tx_bytes {} -> {}, rtt_all_samples {} -> {}",
            first["tx_bytes"], end["tx_bytes"], first["rtt_all_samples"], end["rtt_all_samples"]
        );
    }
    let before_after = during.last().copied().unwrap_or(at_start);
    let end_after = after.last().expect("after");
    assert!(
        end_after["rtt_all_samples"].as_u64() > before_after["rtt_all_samples"].as_u64(),
        "no new RTT samples after the flood"
    );

    // The flood really went through pdm: FLOOD_FLOWS distinct 5-tuples at least.
    let counters: Vec<&Value> = lines.iter().filter(|l| l["type"] == "counters").collect();
    let end = *counters.last().expect("a counters line");
    let flood_seen = counter(end, "ingress_no_pdm") - base_no_pdm;
    eprintln!(
        "pdm saw {flood_seen} flood packets; flows_evicted {}, flows now {}; final counters {}",
        end["flows_evicted"], end["flows"], end["counters"]
    );
    assert!(
        flood_seen >= FLOOD_FLOWS,
        "only {flood_seen} flood packets reached pdm (sent {})",
        flood_report.sent
    );
    assert!(flood_report.sent >= flood_seen);
    // Evictions counted: every new flow beyond the table's size (MAX_FLOWS) took the
    // place of another, and the kernel counts each one.
    let evicted = counter(end, "flow_table_evictions");
    assert!(
        evicted >= flood_seen - u64::from(MAX_FLOWS),
        "only {evicted} evictions counted for {flood_seen} new flows in a table of {MAX_FLOWS}"
    );
    assert!(end["flows"].as_u64() <= Some(2 * u64::from(MAX_FLOWS)));
    // The flow table never refused a flow, and every packet is accounted for.
    assert_eq!(counter(end, "ingress_skip_flow_map_full"), 0);
    assert_eq!(counter(end, "egress_skip_flow_map_full"), 0);
    assert_eq!(counter(end, "egress_skip_adjust_failed"), 0);
    counters_add_up(end);

    // No stall: a report at least every few seconds, flood or not.
    for w in counters.windows(2) {
        let gap = ts(w[1]) - ts(w[0]);
        assert!(gap < 4.0, "pdm stalled: {gap:.1} s between two reports");
    }

    // Bounded memory.
    let kib = |phase: &'static str| -> Vec<u64> {
        rss.iter()
            .filter(|(p, _)| *p == phase)
            .map(|(_, k)| *k)
            .collect()
    };
    let before = kib("before").into_iter().max().expect("rss before");
    let during_max = kib("during").into_iter().max().unwrap_or(before);
    let after_max = kib("after").into_iter().max().expect("rss after");
    // The resting size, without the transient peak of a report being written (each
    // report builds rows for every flow): the median of a phase's samples.
    let median = |mut v: Vec<u64>| -> u64 {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let during = kib("during");
    let second_half = median(during[during.len() / 2..].to_vec());
    let after_median = median(kib("after"));
    eprintln!(
        "pdm RSS samples (MiB): {:?}",
        rss.iter()
            .map(|(p, k)| format!("{p} {}", k / 1024))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "pdm RSS: before {} MiB; during the flood max {} MiB, median of its second half {} MiB; after max {} MiB, median {} MiB",
        before / 1024,
        during_max / 1024,
        second_half / 1024,
        after_max / 1024,
        after_median / 1024
    );
    for (phase, k) in &rss {
        assert!(
            *k < 200 * 1024,
            "pdm RSS {k} KiB {phase} the flood exceeds 200 MiB"
        );
    }
    // A leak per flow would grow with the 1M flows the flood created (16 turnovers of
    // the table); the resting size must stay where the first table's worth put it.
    assert!(
        after_median <= second_half + 8 * 1024,
        "pdm RSS kept growing: {second_half} KiB late in the flood, {after_median} KiB after"
    );
}

fn common_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// `tc filter show dev IFACE DIR` in `ns`.
fn tc_filters(ns: &Netns, dir: &str) -> String {
    ns.run("tc", &["filter", "show", "dev", IFACE, dir])
}

fn tc_qdiscs(ns: &Netns) -> String {
    ns.run("tc", &["qdisc", "show", "dev", IFACE])
}

fn tcx_programs(ns: &Netns) -> usize {
    use aya::programs::{SchedClassifier, TcAttachType};
    ns.in_ns(|| {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|at| {
                SchedClassifier::query_tcx(IFACE, at)
                    .expect("query tcx")
                    .1
                    .len()
            })
            .sum()
    })
}

/// Nothing of pdm's is left on the interface or in /run/pdm.
fn nothing_left(ns: &Netns, when: &str) {
    for dir in ["egress", "ingress"] {
        let f = tc_filters(ns, dir);
        assert!(!f.contains("pdm_"), "{when}: tc filter left on {dir}:\n{f}");
    }
    let q = tc_qdiscs(ns);
    assert!(!q.contains("clsact"), "{when}: clsact qdisc left:\n{q}");
    assert_eq!(tcx_programs(ns), 0, "{when}: TCX programs left");
    let link = ns.ip(&["-d", "link", "show", IFACE]);
    assert!(!link.contains("prog/xdp"), "{when}: XDP left:\n{link}");
    assert_eq!(
        iface_state(ns),
        Vec::<String>::new(),
        "{when}: state left in /run/pdm"
    );
}

#[test]
fn netlink_attach_carries_pdm_and_is_removed_on_exit_and_after_sigkill() {
    use common::traffic::{Capture, ping, tcp_transfer, udp_exchange};
    let h = TwoHosts::new("nl");
    let _peer = Pdm::start(&h.b, &["--ingress", "tc"]);
    let pdm = Pdm::start(&h.a, &["--attach", "netlink", "--ingress", "tc"]);
    // Captured from once a's filters are in place: what a sent before is not pdm's.
    let mut cap = Capture::start(&h.b);
    assert!(
        pdm.stderr_lines()
            .iter()
            .any(|l| l.contains("pdm_egress: tc egress (netlink filter, clsact)")),
        "{:?}",
        pdm.stderr_lines()
    );
    let egress = tc_filters(&h.a, "egress");
    let ingress = tc_filters(&h.a, "ingress");
    assert!(egress.contains("pdm_egress"), "egress filter: {egress}");
    assert!(
        ingress.contains("pdm_ingress_tc"),
        "ingress filter: {ingress}"
    );
    assert!(tc_qdiscs(&h.a).contains("clsact"));
    assert_eq!(tcx_programs(&h.a), 0, "netlink mode attaches no TCX link");

    ping(&h, 5);
    udp_exchange(&h, 7301, 10);
    // dumpcap writes in blocks: give it the last packets before stopping it.
    std::thread::sleep(Duration::from_millis(1000));
    let dropped = cap.stop();
    let lines = pdm.stop();
    assert_eq!(dropped, 0, "the capture dropped packets");
    // On the wire: a's packets carry PDM, as tshark decodes it.
    let with_pdm = cap.fields(
        &["ipv6.opt.pdm.psn_this_pkt"],
        // (`udp` alone would also match a UDP header quoted in an ICMPv6 error, which
        // gets no PDM.)
        &format!("ipv6.src == {ADDR_A} && (icmpv6.type == 128 || (udp && !icmpv6))"),
    );
    assert!(with_pdm.len() >= 15, "too few packets from a: {with_pdm:?}");
    assert!(
        with_pdm.iter().all(|f| !f[0].is_empty()),
        "a packet from a without PDM: {with_pdm:?}"
    );
    let last = lines.last().expect("a report");
    assert!(
        counter(last, "egress_pdm_inserted") >= 15 && counter(last, "ingress_pdm") >= 15,
        "{last}"
    );
    nothing_left(&h.a, "after a clean exit");

    // SIGKILL under traffic: the legacy filters outlive the process (that is what the
    // next start cleans up), traffic keeps flowing.
    let pdm = Pdm::start(&h.a, &["--attach", "netlink", "--ingress", "tc"]);
    std::thread::scope(|s| {
        let transfer = s.spawn(|| tcp_transfer(&h, 7302, 50 << 20));
        std::thread::sleep(Duration::from_millis(200));
        pdm.kill();
        transfer
            .join()
            .expect("the transfer completes after pdm was killed");
    });
    assert!(
        tc_filters(&h.a, "egress").contains("pdm_egress"),
        "a killed netlink run leaves its filter (nothing else could remove it)"
    );
    // The next start (in the default TCX mode) removes them, and its exit removes itself.
    let again = Pdm::start(&h.a, &["--ingress", "tc"]);
    assert!(
        again
            .stderr_lines()
            .iter()
            .any(|l| l.contains("removed tc filter pdm_egress") && l.contains("clsact qdisc")),
        "restart did not report removing the stale filters: {:?}",
        again.stderr_lines()
    );
    for dir in ["egress", "ingress"] {
        let f = tc_filters(&h.a, dir);
        assert!(!f.contains("pdm_"), "stale {dir} filter still there: {f}");
    }
    assert_eq!(tcx_programs(&h.a), 2, "the restart attached through TCX");
    ping(&h, 3);
    let lines = again.stop();
    assert!(counter(lines.last().expect("report"), "egress_pdm_inserted") >= 3);
    nothing_left(&h.a, "after SIGKILL and a restart");

    // A clsact qdisc that was there before pdm is used and left in place.
    h.a.run("tc", &["qdisc", "add", "dev", IFACE, "clsact"]);
    let pdm = Pdm::start(&h.a, &["--attach", "netlink"]);
    assert!(tc_filters(&h.a, "egress").contains("pdm_egress"));
    pdm.stop();
    assert!(
        tc_qdiscs(&h.a).contains("clsact"),
        "pdm removed a clsact qdisc it did not add"
    );
    assert!(!tc_filters(&h.a, "egress").contains("pdm_"));
    assert_eq!(iface_state(&h.a), Vec::<String>::new());
}

/// pdm's files in /run/pdm for the test interface of `ns` (another interface's files may
/// be left from an earlier namespace that had the same inode).
fn iface_state(ns: &Netns) -> Vec<String> {
    run_state(ns)
        .into_iter()
        .filter(|n| n.contains(&format!("-{IFACE}.")))
        .collect()
}
