//! Drawing a frame: the header, the table fitted to the screen width, the keys.

use super::*;

/// Lines above the table.
pub(super) const HEADER_LINES: u16 = 4;

/// Draws the whole view into `f`. Returns how many flow rows fit on screen (the page
/// size for PgUp/PgDn).
pub fn render(f: &mut ratatui::Frame, state: &ViewState, frame: &Frame) -> usize {
    let mut state = state.clone();
    render_sorted(f, &mut state, frame, None).0
}

/// [`render`], given the rows' order when it is already known (see [`Sorted`]).
/// Draws the table view; returns the rows a page holds and the rows on screen.
pub(super) fn render_sorted(
    f: &mut ratatui::Frame,
    state: &mut ViewState,
    frame: &Frame,
    sorted: Option<&Sorted>,
) -> (usize, Vec<usize>) {
    let header_height = HEADER_LINES + u16::from(frame.hint.is_some());
    let [header, body, keys] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Min(2),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let page = usize::from(body.height.saturating_sub(1));
    // The selection within the rows and on screen; the offset within the rows, so Up
    // works at once after End.
    state.clamp(frame.rows.len(), page);
    let offset = state.offset;
    let computed;
    let order = match sorted.filter(|s| s.serves(state, frame.rows.len(), offset + page)) {
        Some(s) => &s.order,
        None => {
            computed = sorted_prefix(state, frame, offset + page);
            &computed
        }
    };
    f.render_widget(
        Paragraph::new(header_lines(state, frame, offset, page)),
        header,
    );
    let order = &order[offset.min(order.len())..];
    render_table(f, body, state, frame, order);
    f.render_widget(Paragraph::new(help_line()), keys);
    if state.help {
        render_help(f, body);
    }
    (page, order.iter().take(page).copied().collect())
}

pub(super) fn header_lines(
    state: &ViewState,
    frame: &Frame,
    offset: usize,
    page: usize,
) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let n = frame.rows.len();
    let shown = if n > page {
        format!(" (rows {}-{})", offset + 1, (offset + page).min(n))
    } else {
        String::new()
    };
    let arrow = if state.descending { "▼" } else { "▲" };
    let first = Line::from(vec![
        Span::raw(if frame.observing {
            "observing "
        } else {
            "iface "
        }),
        Span::styled(frame.iface.clone(), bold),
        Span::raw(format!(
            " · every {} · flows: {n} shown{shown}, {} evicted, {} expired · sort: {}{arrow}",
            format_duration(frame.interval),
            frame.flows_evicted,
            frame.flows_expired,
            state.sort.title(),
        )),
    ]);
    let attach = if frame.attach.is_empty() {
        "attached: -".to_owned()
    } else {
        format!("attached: {}", frame.attach.join(" · "))
    };
    let t = &frame.totals;
    let mut lines = vec![first, Line::raw(attach)];
    if frame.observing {
        lines.push(direction_line(
            t,
            "observe",
            &[
                (Counter::ObservePackets, "pkts"),
                (Counter::ObservePdm, "with PDM"),
                (Counter::ObserveSamples, "samples"),
            ],
        ));
    } else {
        lines.extend([
            direction_line(
                t,
                "egress",
                &[
                    (Counter::EgressPackets, "pkts"),
                    (Counter::EgressInserted, "PDM inserted"),
                ],
            ),
            direction_line(
                t,
                "ingress",
                &[
                    (Counter::IngressPackets, "pkts"),
                    (Counter::IngressPdm, "PDM received"),
                    (Counter::IngressRttSamples, "RTT samples"),
                ],
            ),
        ]);
    }
    if let Some(hint) = &frame.hint {
        lines.push(Line::styled(hint.clone(), Style::new().fg(Color::Yellow)));
    }
    lines
}

/// Counters of packets measured without PDM: shown after `skipped:` with the skips.
pub(super) const WITHOUT_PDM: [Counter; 4] = [
    Counter::IngressNoPdm,
    Counter::IngressBadPdm,
    Counter::ObserveNoPdm,
    Counter::ObserveBadPdm,
];

/// One direction's counters: `main` always, then any other non-zero counter of that
/// direction (`mss_clamped 2`), then the non-zero reasons packets went without PDM,
/// e.g. `egress: 1200 pkts, 1100 PDM inserted · skipped: not_ipv6 90, too_big 10`.
pub(super) fn direction_line(t: &Totals, dir: &str, main: &[(Counter, &str)]) -> Line<'static> {
    let main_text: Vec<String> = main
        .iter()
        .map(|&(c, what)| format!("{} {what}", t.get(c)))
        .collect();
    let mut spans = vec![
        Span::styled(format!("{dir}:"), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" {}", main_text.join(", "))),
    ];
    let mut skipped = Vec::new();
    for &c in Counter::ALL {
        let v = t.get(c);
        let Some(name) = c.name().strip_prefix(dir).and_then(|n| n.strip_prefix('_')) else {
            continue;
        };
        if v == 0 || main.iter().any(|&(m, _)| m == c) {
            continue;
        }
        if let Some(reason) = name.strip_prefix("skip_") {
            skipped.push(format!("{reason} {v}"));
        } else if WITHOUT_PDM.contains(&c) {
            skipped.push(format!("{name} {v}"));
        } else if matches!(
            c,
            Counter::IngressSamplesDropped
                | Counter::IngressImplausibleDtlr
                | Counter::IngressDtlrNotExact
                | Counter::IngressDtlrMalformed
                | Counter::IngressSeqContended
                | Counter::ObserveSamplesDropped
                | Counter::ObserveDtlrFaults
                | Counter::ObserveSeqContended
        ) {
            // The distributions miss samples, or a peer lies: worth noticing.
            spans.push(Span::styled(
                format!(", {name} {v}"),
                Style::new().fg(Color::Red),
            ));
        } else {
            spans.push(Span::raw(format!(", {name} {v}")));
        }
    }
    if !skipped.is_empty() {
        spans.push(Span::raw(format!(" · skipped: {}", skipped.join(", "))));
    }
    Line::from(spans)
}

pub(super) fn help_line() -> Line<'static> {
    let key = Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED);
    let mut spans = Vec::new();
    for (k, what) in [
        ("1-9 0 -", "sort"),
        ("< >", "column"),
        ("r", "reverse"),
        ("↑↓", "select"),
        ("Enter", "detail"),
        ("?", "help"),
        ("q", "quit"),
    ] {
        spans.push(Span::styled(k, key));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

/// The key of every column, over the table.
pub(super) fn render_help(f: &mut ratatui::Frame, area: Rect) {
    let mut lines: Vec<Line> = Column::ALL
        .iter()
        .map(|c| {
            Line::raw(format!(
                " {}  {:<8} {}",
                c.key(),
                c.title(),
                c.description()
            ))
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::raw(" same key again or r: reverse the order"));
    lines.push(Line::raw(" < > or ← →: previous/next column"));
    lines.push(Line::raw(
        " ↑ ↓ PgUp PgDn Home End: select a flow (scrolls)",
    ));
    lines.push(Line::raw(" Enter: the selected flow's detail; Esc: back"));
    lines.push(Line::raw(" q Esc Ctrl-C: quit    ? h: close this help"));
    lines.push(Line::raw(""));
    lines.push(Line::raw(
        " !2.1ms: the peer sent times that gave no sample",
    ));
    lines.push(Line::raw("   (impossible, or not RFC 8250's encoding)"));
    let width = 56.min(area.width);
    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        popup,
    );
}

/// The text of each column for one flow.
pub(super) fn cells(row: &FlowRow, labels: &RowLabels) -> [String; 12] {
    let dash = || "-".to_owned();
    let ns = |v: Option<u64>| v.map_or_else(dash, format_ns);
    // `!`: the peer sent times that gave no sample (impossible, or not RFC 8250's
    // encoding): its other delays are suspect too.
    let peer_ns = |v: Option<u64>| {
        let text = ns(v);
        if row.faults.any() {
            format!("!{text}")
        } else {
            text
        }
    };
    let remote = match &labels.remote_name {
        Some(name) => endpoint(name, row.proto, row.remote_port, false),
        None => endpoint(
            &row.remote_addr.to_string(),
            row.proto,
            row.remote_port,
            false,
        ),
    };
    [
        endpoint(&row.local_addr.to_string(), row.proto, row.local_port, true),
        remote,
        proto_name(row.proto).to_owned(),
        peer_ns(row.rtt.p50),
        labels.trend.clone().unwrap_or_default(),
        peer_ns(row.rtt.p99),
        peer_ns(row.server_delay.p50),
        row.loss_percent().map_or_else(dash, format_percent),
        format_count(row.tx_pps + row.rx_pps),
        format_bytes(row.tx_bytes + row.rx_bytes),
        format_duration(row.age),
        labels.process.clone().unwrap_or_else(dash),
    ]
}

/// `[addr]:port` (`name:port` for a name); an ICMPv6 flow's identifier, which its key
/// holds as both ports, is shown once, on the local side; no port where there is none.
pub(super) fn endpoint(host: &str, proto: u8, port: u16, local: bool) -> String {
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match proto {
        58 if local => format!("{host} id={port}"),
        58 => host.to_owned(),
        _ if port == 0 => host.to_owned(),
        _ => format!("{bracketed}:{port}"),
    }
}

/// Spacing between columns.
pub(super) const GAP: u16 = 1;

pub(super) fn render_table(
    f: &mut ratatui::Frame,
    area: Rect,
    state: &ViewState,
    frame: &Frame,
    order: &[usize],
) {
    let page = usize::from(area.height.saturating_sub(1));
    let default_labels = RowLabels::default();
    let visible: Vec<(&FlowRow, [String; 12])> = order
        .iter()
        .take(page)
        .map(|&i| {
            let row = &frame.rows[i];
            (
                row,
                cells(row, frame.labels.get(i).unwrap_or(&default_labels)),
            )
        })
        .collect();
    let title = |c: Column| c.title_in(frame.client_server);
    let titles = Column::ALL.map(|c| match (c == state.sort, state.descending) {
        (true, true) => format!("{}▼", title(c)),
        (true, false) => format!("{}▲", title(c)),
        (false, _) => title(c).to_owned(),
    });
    let mut natural = titles.each_ref().map(|t| text_width(t));
    for (_, texts) in &visible {
        for (w, t) in natural.iter_mut().zip(texts) {
            *w = (*w).max(text_width(t));
        }
    }
    let columns = column_layout(area.width, &natural);
    let header = Row::new(columns.iter().map(|&(c, _)| {
        let style = if c == state.sort {
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        aligned(c, titles[c.index()].clone()).style(style)
    }))
    .style(Style::new().bg(Color::DarkGray).fg(Color::White));
    let selected = state.selected.checked_sub(state.offset);
    let rows: Vec<Row> = visible
        .into_iter()
        .enumerate()
        .map(|(at, (row, texts))| {
            let cells = columns
                .iter()
                .map(|&(c, w)| aligned(c, fit(c, &texts[c.index()], w)));
            let style = if row.closed {
                Style::new().fg(Color::DarkGray)
            } else if row.loss_percent().is_some_and(|l| l > 0.0) {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            // The selected flow (Enter opens its detail).
            let style = if Some(at) == selected {
                style.add_modifier(Modifier::REVERSED)
            } else {
                style
            };
            Row::new(cells).style(style)
        })
        .collect();
    let table = Table::new(rows, columns.iter().map(|&(_, w)| Constraint::Length(w)))
        .header(header)
        .column_spacing(GAP);
    f.render_widget(table, area);
    if frame.rows.is_empty() {
        let below_header = Rect {
            y: area.y + 1,
            height: area.height.saturating_sub(1),
            ..area
        };
        f.render_widget(Paragraph::new("no flows yet"), below_header);
    }
}

pub(super) fn aligned(col: Column, text: String) -> Cell<'static> {
    let line = Line::raw(text);
    Cell::from(if col.numeric() {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

/// Columns hidden, in this order, when the screen cannot hold them all.
pub(super) const DROP_ORDER: [Column; 5] = [
    Column::Trend,
    Column::Age,
    Column::Pps,
    Column::RttP99,
    Column::Process,
];

/// How narrow a column may get: addresses and process names are elided down to this,
/// measurements never (a cut number would be a wrong number).
pub(super) fn min_width(col: Column) -> u16 {
    match col {
        Column::Local | Column::Remote => 12,
        Column::Process => 6,
        _ => u16::MAX,
    }
}

/// The columns shown and their widths, given the width each would need (`natural`):
/// elide names first, then drop columns (DROP_ORDER), then share out what is left
/// between the elided columns.
pub(super) fn column_layout(total: u16, natural: &[u16; 12]) -> Vec<(Column, u16)> {
    let floor = |c: Column| natural[c.index()].min(min_width(c));
    let need = |shown: &[Column]| -> u32 {
        shown.iter().map(|&c| u32::from(floor(c))).sum::<u32>()
            + u32::from(GAP) * (shown.len() as u32 - 1)
    };
    let mut shown = Column::ALL.to_vec();
    for c in DROP_ORDER {
        if need(&shown) <= u32::from(total) {
            break;
        }
        shown.retain(|&s| s != c);
    }
    let mut spare = u32::from(total).saturating_sub(need(&shown));
    let mut widths: Vec<(Column, u16)> = shown.iter().map(|&c| (c, floor(c))).collect();
    // First an even share for each, then whatever the others left, remote first.
    for even in [true, false] {
        let mut flexible: Vec<&mut (Column, u16)> = widths
            .iter_mut()
            .filter(|(c, w)| *w < natural[c.index()])
            .collect();
        flexible.sort_by_key(|(c, _)| {
            [Column::Remote, Column::Local, Column::Process]
                .iter()
                .position(|o| o == c)
        });
        let n = flexible.len() as u32;
        for (i, (c, w)) in flexible.into_iter().enumerate() {
            let share = if even { spare / (n - i as u32) } else { spare };
            let grow = u32::from(natural[c.index()] - *w).min(share);
            *w += grow as u16;
            spare -= grow;
        }
    }
    widths
}

/// Display width, capped: a column never needs more than this.
pub(super) fn text_width(s: &str) -> u16 {
    Line::raw(s).width().min(64) as u16
}

/// Shortens `text` to `width` columns, marking the cut with `…`: endpoints lose the
/// middle of their address or name (the port and both ends stay readable), other text
/// its end.
pub(super) fn fit(col: Column, text: &str, width: u16) -> String {
    let width = usize::from(width);
    if text.chars().count() <= width || width < 2 {
        return text.to_owned();
    }
    if matches!(col, Column::Local | Column::Remote) {
        let (host, port) = split_port(text);
        let room = width.saturating_sub(port.chars().count());
        if room >= 3 {
            return format!("{}{port}", elide_middle(host, room));
        }
        return elide_middle(text, width);
    }
    let mut s: String = text.chars().take(width - 1).collect();
    s.push('…');
    s
}

/// `[fd00::1]:443` -> (`[fd00::1`, `]:443`); `name:53` -> (`name`, `:53`);
/// `fd00::1 id=7` -> (`fd00::1`, ` id=7`); a bare address has no port part.
pub(super) fn split_port(text: &str) -> (&str, &str) {
    let at = if text.starts_with('[') {
        text.rfind("]:")
    } else if let Some(i) = text.rfind(" id=") {
        Some(i)
    } else if text.matches(':').count() == 1 {
        text.rfind(':')
    } else {
        None
    };
    text.split_at(at.unwrap_or(text.len()))
}

/// `text` in `width` columns (at least 2), its middle replaced by `…`.
pub(super) fn elide_middle(text: &str, width: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width {
        return text.to_owned();
    }
    let tail = (width - 1) / 2;
    let head = width - 1 - tail;
    let mut s: String = chars[..head].iter().collect();
    s.push('…');
    s.extend(&chars[chars.len() - tail..]);
    s
}
