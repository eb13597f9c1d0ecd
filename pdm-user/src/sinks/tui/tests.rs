use ratatui::{backend::TestBackend, buffer::Buffer};

use super::*;
use crate::{engine::Summary, filter::test_row};

fn summary(p50_ns: u64, p99_ns: u64) -> Summary {
    Summary {
        samples: 10,
        min: Some(p50_ns / 2),
        mean: Some(p50_ns),
        p50: Some(p50_ns),
        p90: Some(p99_ns),
        p99: Some(p99_ns),
        max: Some(p99_ns),
    }
}

/// Three flows: a fast bulk TCP flow, a slow lossy UDP one, a ping.
fn frame() -> Frame {
    let mut bulk = test_row(6, "fd00::1", 40000, "fd00::2", 443);
    bulk.rtt = summary(812_000, 1_500_000);
    bulk.server_delay = summary(25_000, 40_000);
    (bulk.tx_bytes, bulk.rx_bytes) = (200 << 20, 1 << 20);
    (bulk.tx_pps, bulk.rx_pps) = (8000.0, 4000.0);
    (bulk.rx_pdm, bulk.rx_lost) = (1000, 0);
    bulk.age = Duration::from_secs(75);

    let mut udp = test_row(17, "fd00::1", 5000, "2001:db8::53", 53);
    udp.rtt = summary(12_300_000, 1_200_000_000);
    (udp.tx_bytes, udp.rx_bytes) = (3000, 2000);
    (udp.tx_pps, udp.rx_pps) = (10.0, 9.0);
    (udp.rx_pdm, udp.rx_lost) = (95, 5);
    udp.age = Duration::from_secs(5);

    let mut ping = test_row(58, "fd00::1", 7, "fd00::3", 7);
    (ping.tx_bytes, ping.rx_bytes) = (100, 100);
    ping.age = Duration::from_secs(3700);

    let mut totals = Totals::default();
    totals.0[Counter::EgressPackets as usize] = 123_456;
    totals.0[Counter::EgressInserted as usize] = 120_000;
    totals.0[Counter::EgressNotIpv6 as usize] = 17;
    totals.0[Counter::IngressPackets as usize] = 99_999;
    totals.0[Counter::IngressPdm as usize] = 98_000;
    totals.0[Counter::IngressNoPdm as usize] = 42;
    totals.0[Counter::IngressMssClamped as usize] = 2;
    Frame {
        observing: false,
        client_server: false,
        hint: None,
        detail: None,
        iface: "veth-test".into(),
        attach: vec![
            "pdm_egress: tc egress (tcx link)".into(),
            "pdm_ingress: xdp native (bpf_link)".into(),
        ],
        totals,
        rows: vec![udp, bulk, ping],
        labels: vec![
            RowLabels {
                remote_name: Some("dns.example".into()),
                process: Some("dig/4242".into()),
                trend: None,
            },
            RowLabels {
                remote_name: None,
                process: Some("iperf3/77".into()),
                trend: None,
            },
            RowLabels::default(),
        ],
        flows_evicted: 3,
        flows_expired: 5,
        interval: Duration::from_secs(1),
    }
}

fn screen(state: &ViewState, frame: &Frame, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal
        .draw(|f| _ = render(f, state, frame))
        .expect("draw");
    lines(terminal.backend().buffer())
}

fn lines(buf: &Buffer) -> Vec<String> {
    let width = usize::from(buf.area.width);
    buf.content
        .chunks(width)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .collect()
}

/// The screen line holding `text`.
fn line_of(screen: &[String], text: &str) -> usize {
    screen
        .iter()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("`{text}` not on screen:\n{}", screen.join("\n")))
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

#[test]
fn shows_header_flows_and_keys() {
    let s = screen(&ViewState::default(), &frame(), 160, 20);
    let all = s.join("\n");
    for text in [
        "iface veth-test",
        "flows: 3 shown, 3 evicted, 5 expired",
        "pdm_egress: tc egress (tcx link) · pdm_ingress: xdp native (bpf_link)",
        "egress: 123456 pkts, 120000 PDM inserted · skipped: not_ipv6 17",
        "ingress: 99999 pkts, 98000 PDM received, 0 RTT samples, mss_clamped 2 · skipped: no_pdm 42",
        "[fd00::1]:40000",
        "[fd00::2]:443",
        "dns.example:53",
        "fd00::1 id=7",
        "812µs",
        "1.50ms",
        "25.0µs",
        "12.3ms",
        "1.20s",
        "5.00%",
        "12.0k",
        "201MiB",
        "1m15s",
        "1h01m",
        "iperf3/77",
        "dig/4242",
        "BYTES▼",
        "1-9 0 - sort",
        "r",
        "reverse",
        "quit",
    ] {
        assert!(all.contains(text), "`{text}` not on screen:\n{all}");
    }
    // Resolved names replace the address.
    assert!(!all.contains("2001:db8::53"), "{all}");
    // The ping has no samples and no loss figure.
    let ping = &s[line_of(&s, "fd00::1 id=7")];
    assert!(ping.contains(" - "), "{ping}");
}

#[test]
fn default_order_is_bytes_descending() {
    let s = screen(&ViewState::default(), &frame(), 160, 20);
    let (bulk, udp, ping) = (
        line_of(&s, ":40000"),
        line_of(&s, ":5000"),
        line_of(&s, "id=7"),
    );
    assert!(bulk < udp && udp < ping, "{}", s.join("\n"));
}

#[test]
fn sort_keys_reorder_rows() {
    let frame = frame();
    let mut state = ViewState::default();
    assert_eq!(state.handle_key(key('4'), 10), KeyOutcome::Redraw);
    assert_eq!((state.sort, state.descending), (Column::RttP50, true));
    let s = screen(&state, &frame, 160, 20);
    // Slowest first; the flow without RTT last.
    let (udp, bulk, ping) = (
        line_of(&s, ":5000"),
        line_of(&s, ":40000"),
        line_of(&s, "id=7"),
    );
    assert!(udp < bulk && bulk < ping, "{}", s.join("\n"));
    assert!(s.iter().any(|l| l.contains("RTT p50▼")));

    // `r` reverses, but flows without a sample stay last.
    state.handle_key(key('r'), 10);
    let s = screen(&state, &frame, 160, 20);
    let (udp, bulk, ping) = (
        line_of(&s, ":5000"),
        line_of(&s, ":40000"),
        line_of(&s, "id=7"),
    );
    assert!(bulk < udp && udp < ping, "{}", s.join("\n"));
    assert!(s.iter().any(|l| l.contains("RTT p50▲")));

    // The same key again reverses too.
    state.handle_key(key('4'), 10);
    assert!(state.descending);

    // Text columns start ascending.
    state.handle_key(key('-'), 10);
    assert_eq!((state.sort, state.descending), (Column::Process, false));
    let order = sorted_indices(&state, &frame);
    assert_eq!(order, vec![0, 1, 2], "dig, iperf3, none");

    state.handle_key(key('0'), 10);
    assert_eq!(
        sorted_indices(&state, &frame),
        vec![2, 1, 0],
        "oldest first"
    );
    state.handle_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE), 10);
    assert_eq!(state.sort, Column::Process);
    state.handle_key(key('>'), 10);
    assert_eq!(state.sort, Column::Local);
    state.handle_key(key('<'), 10);
    assert_eq!(state.sort, Column::Process);
}

#[test]
fn an_order_kept_from_before_drawing_draws_the_same_screen() {
    let mut frame = frame();
    let base = frame.rows[1].clone();
    frame.rows = (0..50u16)
        .map(|i| FlowRow {
            local_port: 10_000 + i,
            tx_bytes: 1000 * u64::from(i % 7),
            ..base.clone()
        })
        .collect();
    frame.labels = vec![RowLabels::default(); 50];
    let state = ViewState::default();
    let k = 14;
    let kept = Sorted {
        sort: state.sort,
        descending: state.descending,
        rows: 50,
        k,
        order: sorted_rows_prefix(&state, &frame.rows, &[], k),
    };
    let draw = |sorted: Option<&Sorted>| {
        let mut t = Terminal::new(TestBackend::new(160, 20)).expect("terminal");
        t.draw(|f| {
            render_sorted(f, &mut state.clone(), &frame, sorted);
        })
        .expect("draw");
        lines(t.backend().buffer())
    };
    assert_eq!(draw(Some(&kept)), draw(None));
    // Another sort, more rows or a deeper page: not served by the kept order.
    assert!(kept.serves(&state, 50, 14));
    assert!(!kept.serves(&state, 51, 14));
    assert!(!kept.serves(&state, 50, 15));
    let other = ViewState {
        sort: Column::Pps,
        ..state.clone()
    };
    assert!(!kept.serves(&other, 50, 14));
}

#[test]
fn every_column_has_a_distinct_key() {
    for (i, c) in Column::ALL.iter().enumerate() {
        assert_eq!(Column::from_key(c.key()), Some(*c));
        assert!(!Column::ALL[..i].iter().any(|o| o.key() == c.key()));
    }
}

#[test]
fn quit_keys() {
    let mut state = ViewState::default();
    for k in [
        key('q'),
        key('Q'),
        KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE),
        KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
    ] {
        assert_eq!(state.handle_key(k, 10), KeyOutcome::Quit, "{k:?}");
    }
    assert_eq!(state.handle_key(key('c'), 10), KeyOutcome::Ignored);
    assert_eq!(state, ViewState::default());
}

#[test]
fn rows_beyond_the_screen_are_cut_and_scroll() {
    let mut frame = frame();
    let base = frame.rows[1].clone();
    frame.rows = (0..50u16)
        .map(|i| FlowRow {
            local_port: 10_000 + i,
            tx_bytes: 1000 * u64::from(50 - i),
            ..base.clone()
        })
        .collect();
    frame.labels = vec![RowLabels::default(); 50];
    // 20 lines: 4 header, 1 table header, 14 flows, 1 help line.
    let mut state = ViewState::default();
    let s = screen(&state, &frame, 160, 20);
    assert!(
        s[5].contains(":10000") && s[18].contains(":10013"),
        "{}",
        s.join("\n")
    );
    assert!(!s.join("\n").contains(":10014"));
    assert!(s[0].contains("rows 1-14"), "{}", s[0]);
    assert!(s[19].contains("quit"));

    state.handle_key(KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE), 14);
    let s = screen(&state, &frame, 160, 20);
    assert!(s[5].contains(":10014"), "{}", s.join("\n"));
    state.handle_key(KeyEvent::new(KeyCode::End, KeyModifiers::NONE), 14);
    let s = screen(&state, &frame, 160, 20);
    assert!(
        s[18].contains(":10049") && s[0].contains("rows 37-50"),
        "{}",
        s.join("\n")
    );
    state.handle_key(KeyEvent::new(KeyCode::Home, KeyModifiers::NONE), 14);
    assert_eq!(state.offset, 0);
}

#[test]
fn narrow_screen_elides_addresses_not_numbers() {
    let mut frame = frame();
    frame.rows[1].local_addr = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
        .parse()
        .expect("literal");
    let s = screen(&ViewState::default(), &frame, 100, 20);
    let bulk = &s[line_of(&s, ":40000")];
    assert!(
        bulk.contains('…') && bulk.contains("812µs") && bulk.contains("201MiB"),
        "{bulk}"
    );
}

#[test]
fn help_lists_every_column_key() {
    let state = ViewState {
        help: true,
        ..ViewState::default()
    };
    let all = screen(&state, &frame(), 120, 30).join("\n");
    for c in Column::ALL {
        assert!(
            all.contains(&format!("{}  {}", c.key(), c.title())),
            "{c:?}:\n{all}"
        );
    }
}

#[test]
fn fits_80_columns_by_dropping_columns_not_cutting_numbers() {
    let s = screen(&ViewState::default(), &frame(), 80, 14);
    let all = s.join("\n");
    let header = &s[4];
    for title in [
        "LOCAL", "REMOTE", "PROTO", "RTT p50", "SRV p50", "LOSS", "BYTES▼",
    ] {
        assert!(header.contains(title), "{title}: {header}");
    }
    assert!(!header.contains("AGE"), "{header}");
    for text in [
        "812µs",
        "25.0µs",
        "12.3ms",
        "5.00%",
        "201MiB",
        "4.88KiB",
        "fd00::1 id=7",
        "]:40000",
        "q quit",
    ] {
        assert!(all.contains(text), "`{text}` not on screen:\n{all}");
    }
}

#[test]
fn empty_frame_says_so() {
    let mut frame = frame();
    frame.rows.clear();
    frame.labels.clear();
    frame.totals = Totals::default();
    let all = screen(&ViewState::default(), &frame, 120, 12).join("\n");
    assert!(
        all.contains("no flows yet") && !all.contains("skipped"),
        "{all}"
    );
}

#[test]
fn human_formats() {
    assert_eq!(format_ns(850), "850ns");
    assert_eq!(format_ns(812_000), "812µs");
    assert_eq!(format_ns(999_700), "1.00ms");
    assert_eq!(format_ns(12_345_678), "12.3ms");
    assert_eq!(format_ns(1_200_000_000), "1.20s");
    assert_eq!(format_ns(1_234_000_000_000), "1234s");
    assert_eq!(format_bytes(512), "512B");
    assert_eq!(format_bytes(1536), "1.50KiB");
    assert_eq!(format_bytes(5 << 30), "5.00GiB");
    assert_eq!(format_count(0.0), "0");
    assert_eq!(format_count(0.5), "0.50");
    assert_eq!(format_count(1234.0), "1.23k");
    assert_eq!(format_percent(0.0), "0%");
    assert_eq!(format_percent(0.05), "0.05%");
    assert_eq!(format_percent(100.0), "100%");
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(format_duration(Duration::from_secs(42)), "42s");
    assert_eq!(format_duration(Duration::from_secs(725)), "12m05s");
    assert_eq!(
        format_duration(Duration::from_secs(3 * 3600 + 7 * 60)),
        "3h07m"
    );
    assert_eq!(
        format_duration(Duration::from_secs(2 * 86400 + 5 * 3600)),
        "2d05h"
    );
}

#[test]
fn endpoints() {
    assert_eq!(endpoint("fd00::1", 6, 80, true), "[fd00::1]:80");
    assert_eq!(endpoint("example.org", 17, 53, false), "example.org:53");
    assert_eq!(endpoint("fd00::1", 58, 9, true), "fd00::1 id=9");
    assert_eq!(endpoint("fd00::1", 58, 9, false), "fd00::1");
    assert_eq!(endpoint("fd00::1", 50, 0, true), "fd00::1");
}

#[test]
fn fit_keeps_both_ends_of_addresses() {
    assert_eq!(fit(Column::Local, "[fd00:1:2:3::1]:443", 11), "[fd…:1]:443");
    assert_eq!(
        fit(Column::Remote, "www.example.org:443", 12),
        "www.…org:443"
    );
    assert_eq!(fit(Column::Local, "fd00:1:2:3::1 id=7", 12), "fd0…::1 id=7");
    assert_eq!(fit(Column::Remote, "fd00:1:2:3:4:5:6:7", 9), "fd00…:6:7");
    assert_eq!(fit(Column::Process, "averylongname/1", 8), "averylo…");
    assert_eq!(fit(Column::Local, "short", 8), "short");
}

/// A flow whose peer sent times that gave no sample is marked in its delay cells, and
/// the header shows the counter in red with the other warnings.
#[test]
fn a_flow_whose_peer_lies_is_marked() {
    let mut frame = frame();
    frame.rows[0].faults.implausible = 3;
    frame.totals.0[Counter::IngressImplausibleDtlr as usize] = 3;
    let s = screen(&ViewState::default(), &frame, 160, 20);
    let all = s.join("\n");
    let udp = s
        .iter()
        .find(|l| l.contains("2001:db8::53") || l.contains("dns.example"));
    let udp = udp.expect("the UDP flow's row");
    assert!(udp.contains("!12.3ms"), "{udp}");
    let bulk = s.iter().find(|l| l.contains(":443")).expect("bulk row");
    assert!(!bulk.contains('!'), "{bulk}");
    assert!(all.contains("implausible_dtlr 3"), "{all}");
}

#[test]
fn packets_too_big_for_pdm_are_said_with_the_option_that_helps() {
    let mut totals = Totals::default();
    totals.0[Counter::EgressTooBig as usize] = 80;
    let hint = crate::live::too_big_hint(&totals, false);
    assert!(
        hint.as_deref()
            .is_some_and(|h| h.contains("80 packets") && h.contains("--mtu-room")),
        "{hint:?}"
    );
    assert_eq!(
        crate::live::too_big_hint(&totals, true),
        None,
        "not with the room made"
    );
    let mut f = frame();
    f.hint = hint;
    let s = screen(&ViewState::default(), &f, 140, 20);
    let at = line_of(&s, "--mtu-room");
    assert!(
        at < line_of(&s, "LOCAL"),
        "in the header, above the table: {s:#?}"
    );
    assert_eq!(
        line_of(&frame_screen_without_hint(), "LOCAL") + 1,
        line_of(&s, "LOCAL"),
        "one line more in the header"
    );
}

fn frame_screen_without_hint() -> Vec<String> {
    screen(&ViewState::default(), &frame(), 140, 20)
}

#[test]
fn enter_opens_a_flows_detail_esc_returns_and_it_draws_at_any_size() {
    let f = frame();
    let mut state = ViewState::default();
    // The selection moves with the arrows; Enter asks to open it.
    state.handle_key(key_code(KeyCode::Down), 10);
    assert_eq!(state.selected, 1);
    assert_eq!(
        state.handle_key(key_code(KeyCode::Enter), 10),
        KeyOutcome::Open
    );
    let flow = f.rows[1].key();
    state.detail = Some(flow);
    // A history of 400 refreshes (more than the ring holds).
    let mut history = history::History::default();
    let mut rows = f.rows.clone();
    for i in 0..400u64 {
        rows[1].rtt.p50 = Some(800_000 + (i % 50) * 1_000);
        rows[1].rtt.max = Some(1_500_000);
        rows[1].rx_lost = i / 40;
        history.update(rows.iter());
    }
    let mut f = f;
    f.detail = Some(crate::engine::Distributions {
        rtt: vec![(700_000, 3), (800_000, 10), (1_500_000, 1)],
        server_delay: vec![(25_000, 9)],
        rtt_all: crate::engine::Summary {
            samples: 14,
            p50: Some(800_000),
            p90: Some(800_000),
            p99: Some(1_500_000),
            ..Default::default()
        },
        server_delay_all: Default::default(),
    });
    for (w, h) in [(80, 24), (200, 60), (20, 6)] {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|fr| detail::draw_for_test(fr, &state, &f, &flow, &history))
            .expect("draw");
        let s = lines(t.backend().buffer()).join("\n");
        if w >= 80 {
            assert!(s.contains("RTT and server delay over time"), "{s}");
            assert!(s.contains("p50 800µs"), "the RTT median since start: {s}");
            assert!(s.contains("Esc"), "{s}");
        }
    }
    assert_eq!(
        state.handle_key(key_code(KeyCode::Esc), 10),
        KeyOutcome::Redraw
    );
    assert_eq!(state.detail, None, "back to the table");
    assert_eq!(
        state.handle_key(key_code(KeyCode::Esc), 10),
        KeyOutcome::Quit
    );
}

#[test]
fn the_table_shows_the_selection_and_the_trend() {
    let mut f = frame();
    f.labels[1].trend = Some("▁▂▃▄▅▆▇█".into());
    let state = ViewState {
        selected: 1,
        ..ViewState::default()
    };
    let s = screen(&state, &f, 200, 20);
    assert!(s.join("\n").contains("RTT 1m"), "{s:#?}");
    assert!(s.iter().any(|l| l.contains("▁▂▃▄▅▆▇█")), "{s:#?}");
}

fn key_code(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

/// `pdm observe`: the header says it observes, where, and counts what the observer
/// programs saw instead of pdm run's two directions.
#[test]
fn an_observer_says_so_in_the_header() {
    let mut f = frame();
    f.observing = true;
    f.client_server = true;
    f.iface = "r0,r1".into();
    f.totals = Default::default();
    f.totals.0[Counter::ObservePackets as usize] = 5000;
    f.totals.0[Counter::ObservePdm as usize] = 4000;
    f.totals.0[Counter::ObserveNoPdm as usize] = 990;
    f.totals.0[Counter::ObserveNdMld as usize] = 10;
    f.totals.0[Counter::ObserveSamples as usize] = 700;
    f.totals.0[Counter::ObserveSamplesDropped as usize] = 3;
    let s = screen(&ViewState::default(), &f, 160, 20);
    let all = s.join("\n");
    for text in [
        "observing r0,r1",
        "CLIENT          SERVER",
        "observe: 5000 pkts, 4000 with PDM, 700 samples, samples_dropped 3 · skipped: no_pdm 990, nd_mld 10",
    ] {
        assert!(all.contains(text), "`{text}` not on screen:\n{all}");
    }
    assert!(
        !s.iter()
            .any(|l| l.starts_with("egress:") || l.starts_with("ingress:")),
        "{all}"
    );
}
