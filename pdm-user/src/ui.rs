//! The live terminal view of `pdm run`: a header with the interface, the attachments
//! and the global counters, a sortable table of flows, and a line of keys.
//!
//! Drawing ([`render`]) only reads a [`ViewState`] and a [`Frame`], and keys only change
//! the [`ViewState`] ([`ViewState::handle_key`]), so both are tested against ratatui's
//! `TestBackend` without a terminal; [`Ui`] is the thin part that owns the terminal.

use std::{
    cmp::Ordering,
    io::{self, IsTerminal as _, Stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering as AtomicOrdering},
    },
    time::Duration,
};

use crossterm::{
    cursor::{Hide, Show},
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use pdm_common::counters::Counter;
use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, Paragraph, Row, Table},
};

use crate::{
    metrics::{FlowRow, proto_name},
    stats::Totals,
};

/// Everything one refresh shows.
pub struct Frame {
    pub iface: String,
    /// How each program is attached, e.g. `pdm_egress: tc egress (tcx link)`.
    pub attach: Vec<String>,
    pub totals: Totals,
    pub rows: Vec<FlowRow>,
    /// Parallel to `rows`.
    pub labels: Vec<RowLabels>,
    pub flows_evicted: u64,
    pub flows_expired: u64,
    pub interval: Duration,
}

/// What the view knows about a flow besides its measurements.
#[derive(Clone, Debug, Default)]
pub struct RowLabels {
    pub remote_name: Option<String>,
    pub process: Option<String>,
}

/// The table's columns, in screen order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Local,
    Remote,
    Proto,
    RttP50,
    RttP99,
    ServerDelayP50,
    Loss,
    Pps,
    Bytes,
    Age,
    Process,
}

impl Column {
    pub const ALL: [Column; 11] = [
        Column::Local,
        Column::Remote,
        Column::Proto,
        Column::RttP50,
        Column::RttP99,
        Column::ServerDelayP50,
        Column::Loss,
        Column::Pps,
        Column::Bytes,
        Column::Age,
        Column::Process,
    ];

    /// The key that sorts by this column: the number row, left to right.
    pub const KEYS: [char; 11] = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '-'];

    pub fn title(self) -> &'static str {
        match self {
            Column::Local => "LOCAL",
            Column::Remote => "REMOTE",
            Column::Proto => "PROTO",
            Column::RttP50 => "RTT p50",
            Column::RttP99 => "RTT p99",
            Column::ServerDelayP50 => "SRV p50",
            Column::Loss => "LOSS",
            Column::Pps => "PKT/s",
            Column::Bytes => "BYTES",
            Column::Age => "AGE",
            Column::Process => "PROCESS",
        }
    }

    /// What the help lists for this column.
    fn description(self) -> &'static str {
        match self {
            Column::Local => "local address:port",
            Column::Remote => "remote address:port (or name)",
            Column::Proto => "protocol",
            Column::RttP50 => "round-trip time, median",
            Column::RttP99 => "round-trip time, 99th percentile",
            Column::ServerDelayP50 => "server delay, median",
            Column::Loss => "loss of the peer's packets, %",
            Column::Pps => "packets per second, both ways",
            Column::Bytes => "bytes, both ways",
            Column::Age => "time since first seen",
            Column::Process => "local process (comm/pid)",
        }
    }

    fn index(self) -> usize {
        Column::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    pub fn key(self) -> char {
        Column::KEYS[self.index()]
    }

    pub fn from_key(key: char) -> Option<Column> {
        Column::KEYS
            .iter()
            .position(|&k| k == key)
            .map(|i| Column::ALL[i])
    }

    /// Measurements: sorted largest first by default and right-aligned.
    fn numeric(self) -> bool {
        !matches!(
            self,
            Column::Local | Column::Remote | Column::Proto | Column::Process
        )
    }

    fn next(self) -> Column {
        Column::ALL[(self.index() + 1) % Column::ALL.len()]
    }

    fn prev(self) -> Column {
        Column::ALL[(self.index() + Column::ALL.len() - 1) % Column::ALL.len()]
    }
}

/// What the user chose: sort order, scroll position, help shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewState {
    pub sort: Column,
    pub descending: bool,
    /// First flow shown (in sorted order).
    pub offset: usize,
    pub help: bool,
}

impl Default for ViewState {
    /// Biggest flows first: what someone opening the view usually looks for.
    fn default() -> Self {
        Self {
            sort: Column::Bytes,
            descending: true,
            offset: 0,
            help: false,
        }
    }
}

/// What a key press asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    Quit,
    Redraw,
    Ignored,
}

impl ViewState {
    /// Applies one key. `page` is the number of flow rows on screen, for PgUp/PgDn.
    pub fn handle_key(&mut self, key: KeyEvent, page: usize) -> KeyOutcome {
        if key.kind != KeyEventKind::Press {
            return KeyOutcome::Ignored;
        }
        let page = page.max(1);
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return KeyOutcome::Quit;
            }
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => return KeyOutcome::Quit,
            KeyCode::Char('r' | 'R') => self.descending = !self.descending,
            KeyCode::Char('?' | 'h' | 'H') => self.help = !self.help,
            KeyCode::Char('>' | '.') | KeyCode::Right => self.sort_by(self.sort.next()),
            KeyCode::Char('<' | ',') | KeyCode::Left => self.sort_by(self.sort.prev()),
            KeyCode::Down | KeyCode::Char('j') => self.offset = self.offset.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.offset = self.offset.saturating_sub(1),
            KeyCode::PageDown | KeyCode::Char(' ') => {
                self.offset = self.offset.saturating_add(page)
            }
            KeyCode::PageUp => self.offset = self.offset.saturating_sub(page),
            KeyCode::Home | KeyCode::Char('g') => self.offset = 0,
            // Clamped to the last page when drawn.
            KeyCode::End | KeyCode::Char('G') => self.offset = usize::MAX,
            KeyCode::Char(c) => match Column::from_key(c) {
                // The sorted column's key again flips the order, as `r` does.
                Some(col) if col == self.sort => self.descending = !self.descending,
                Some(col) => self.sort_by(col),
                None => return KeyOutcome::Ignored,
            },
            _ => return KeyOutcome::Ignored,
        }
        KeyOutcome::Redraw
    }

    /// A new sort column starts in its natural direction, at the top.
    fn sort_by(&mut self, col: Column) {
        self.sort = col;
        self.descending = col.numeric();
        self.offset = 0;
    }
}

/// A column's value for sorting. `None`s go last in either direction: a flow without a
/// sample says nothing about being fast or slow.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
enum SortKey {
    Number(Option<f64>),
    Text(Option<String>),
    Endpoint(std::net::Ipv6Addr, u16),
}

fn sort_key(col: Column, row: &FlowRow, labels: &RowLabels) -> SortKey {
    let ns = |v: Option<u64>| SortKey::Number(v.map(|v| v as f64));
    match col {
        Column::Local => SortKey::Endpoint(row.local_addr, row.local_port),
        Column::Remote => SortKey::Endpoint(row.remote_addr, row.remote_port),
        Column::Proto => SortKey::Text(Some(row.proto_name().to_owned())),
        Column::RttP50 => ns(row.rtt.p50),
        Column::RttP99 => ns(row.rtt.p99),
        Column::ServerDelayP50 => ns(row.server_delay.p50),
        Column::Loss => SortKey::Number(row.loss_percent()),
        Column::Pps => SortKey::Number(Some(row.tx_pps + row.rx_pps)),
        Column::Bytes => SortKey::Number(Some((row.tx_bytes + row.rx_bytes) as f64)),
        Column::Age => SortKey::Number(Some(row.age.as_secs_f64())),
        Column::Process => SortKey::Text(labels.process.clone()),
    }
}

fn compare_keys(a: &SortKey, b: &SortKey, descending: bool) -> Ordering {
    let directed = |o: Ordering| if descending { o.reverse() } else { o };
    match (a, b) {
        (SortKey::Number(Some(x)), SortKey::Number(Some(y))) => directed(x.total_cmp(y)),
        (SortKey::Text(Some(x)), SortKey::Text(Some(y))) => directed(x.cmp(y)),
        (SortKey::Number(None), SortKey::Number(None))
        | (SortKey::Text(None), SortKey::Text(None)) => Ordering::Equal,
        (SortKey::Number(None), _) | (SortKey::Text(None), _) => Ordering::Greater,
        (_, SortKey::Number(None)) | (_, SortKey::Text(None)) => Ordering::Less,
        _ => directed(a.partial_cmp(b).unwrap_or(Ordering::Equal)),
    }
}

/// Indices of `frame.rows` in display order. Ties are broken by the flow's 5-tuple so
/// that rows do not swap places between refreshes.
pub fn sorted_indices(state: &ViewState, frame: &Frame) -> Vec<usize> {
    sorted_prefix(state, frame, usize::MAX)
}

/// The first `k` of [`sorted_indices`] (then the rest, unsorted): the view shows one
/// page, and partitioning around the k-th row is linear where a full sort of 10 000
/// flows every refresh was the largest part of pdm's CPU time.
pub fn sorted_prefix(state: &ViewState, frame: &Frame, k: usize) -> Vec<usize> {
    sorted_rows_prefix(state, &frame.rows, &frame.labels, k)
}

fn sorted_rows_prefix(
    state: &ViewState,
    rows: &[FlowRow],
    labels: &[RowLabels],
    k: usize,
) -> Vec<usize> {
    let default_labels = RowLabels::default();
    let label = |i: usize| labels.get(i).unwrap_or(&default_labels);
    let keys: Vec<SortKey> = (0..rows.len())
        .map(|i| sort_key(state.sort, &rows[i], label(i)))
        .collect();
    let identity = |r: &FlowRow| {
        (
            r.local_addr,
            r.local_port,
            r.remote_addr,
            r.remote_port,
            r.proto,
        )
    };
    let cmp = |a: &usize, b: &usize| {
        compare_keys(&keys[*a], &keys[*b], state.descending)
            .then_with(|| identity(&rows[*a]).cmp(&identity(&rows[*b])))
    };
    let mut order: Vec<usize> = (0..rows.len()).collect();
    // A total order (ties broken by the 5-tuple), so an unstable sort is deterministic.
    if k < order.len() {
        order.select_nth_unstable_by(k, cmp);
        order[..k].sort_unstable_by(cmp);
    } else {
        order.sort_unstable_by(cmp);
    }
    order
}

/// An order of a frame's rows computed before drawing it ([`Ui::shown_rows`]), kept
/// so that drawing does not sort 10 000 rows a second time.
struct Sorted {
    sort: Column,
    descending: bool,
    rows: usize,
    /// The first `k` of `order` are sorted.
    k: usize,
    order: Vec<usize>,
}

impl Sorted {
    /// Whether this order is the one `state` asks for, over as many rows, sorted at
    /// least `k` deep.
    fn serves(&self, state: &ViewState, rows: usize, k: usize) -> bool {
        self.sort == state.sort
            && self.descending == state.descending
            && self.rows == rows
            && self.k >= k.min(rows)
    }
}

/// Lines above the table.
const HEADER_LINES: u16 = 4;

/// Draws the whole view into `f`. Returns how many flow rows fit on screen (the page
/// size for PgUp/PgDn).
pub fn render(f: &mut ratatui::Frame, state: &ViewState, frame: &Frame) -> usize {
    render_sorted(f, state, frame, None)
}

/// [`render`], given the rows' order when it is already known (see [`Sorted`]).
fn render_sorted(
    f: &mut ratatui::Frame,
    state: &ViewState,
    frame: &Frame,
    sorted: Option<&Sorted>,
) -> usize {
    let [header, body, keys] = Layout::vertical([
        Constraint::Length(HEADER_LINES),
        Constraint::Min(2),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let page = usize::from(body.height.saturating_sub(1));
    let offset = state.offset.min(frame.rows.len().saturating_sub(page));
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
    render_table(f, body, state, frame, &order[offset..]);
    f.render_widget(Paragraph::new(help_line()), keys);
    if state.help {
        render_help(f, body);
    }
    page
}

fn header_lines(
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
        Span::raw("iface "),
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
    vec![
        first,
        Line::raw(attach),
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
    ]
}

/// Counters of packets measured without PDM: shown after `skipped:` with the skips.
const WITHOUT_PDM: [Counter; 2] = [Counter::IngressNoPdm, Counter::IngressBadPdm];

/// One direction's counters: `main` always, then any other non-zero counter of that
/// direction (`mss_clamped 2`), then the non-zero reasons packets went without PDM,
/// e.g. `egress: 1200 pkts, 1100 PDM inserted · skipped: not_ipv6 90, too_big 10`.
fn direction_line(t: &Totals, dir: &str, main: &[(Counter, &str)]) -> Line<'static> {
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
        } else if c == Counter::IngressSamplesDropped {
            // The distributions miss samples: worth noticing.
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

fn help_line() -> Line<'static> {
    let key = Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED);
    let mut spans = Vec::new();
    for (k, what) in [
        ("1-9 0 -", "sort"),
        ("< >", "column"),
        ("r", "reverse"),
        ("↑↓ PgUp/Dn", "scroll"),
        ("?", "help"),
        ("q", "quit"),
    ] {
        spans.push(Span::styled(k, key));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

/// The key of every column, over the table.
fn render_help(f: &mut ratatui::Frame, area: Rect) {
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
    lines.push(Line::raw(" ↑ ↓ PgUp PgDn Home End: scroll"));
    lines.push(Line::raw(" q Esc Ctrl-C: quit    ? h: close this help"));
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
fn cells(row: &FlowRow, labels: &RowLabels) -> [String; 11] {
    let dash = || "-".to_owned();
    let ns = |v: Option<u64>| v.map_or_else(dash, format_ns);
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
        ns(row.rtt.p50),
        ns(row.rtt.p99),
        ns(row.server_delay.p50),
        row.loss_percent().map_or_else(dash, format_percent),
        format_count(row.tx_pps + row.rx_pps),
        format_bytes(row.tx_bytes + row.rx_bytes),
        format_duration(row.age),
        labels.process.clone().unwrap_or_else(dash),
    ]
}

/// `[addr]:port` (`name:port` for a name); an ICMPv6 flow's identifier, which its key
/// holds as both ports, is shown once, on the local side; no port where there is none.
fn endpoint(host: &str, proto: u8, port: u16, local: bool) -> String {
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
const GAP: u16 = 1;

fn render_table(
    f: &mut ratatui::Frame,
    area: Rect,
    state: &ViewState,
    frame: &Frame,
    order: &[usize],
) {
    let page = usize::from(area.height.saturating_sub(1));
    let default_labels = RowLabels::default();
    let visible: Vec<(&FlowRow, [String; 11])> = order
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
    let titles = Column::ALL.map(|c| match (c == state.sort, state.descending) {
        (true, true) => format!("{}▼", c.title()),
        (true, false) => format!("{}▲", c.title()),
        (false, _) => c.title().to_owned(),
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
    let rows: Vec<Row> = visible
        .into_iter()
        .map(|(row, texts)| {
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

fn aligned(col: Column, text: String) -> Cell<'static> {
    let line = Line::raw(text);
    Cell::from(if col.numeric() {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

/// Columns hidden, in this order, when the screen cannot hold them all.
const DROP_ORDER: [Column; 4] = [Column::Age, Column::Pps, Column::RttP99, Column::Process];

/// How narrow a column may get: addresses and process names are elided down to this,
/// measurements never (a cut number would be a wrong number).
fn min_width(col: Column) -> u16 {
    match col {
        Column::Local | Column::Remote => 12,
        Column::Process => 6,
        _ => u16::MAX,
    }
}

/// The columns shown and their widths, given the width each would need (`natural`):
/// elide names first, then drop columns (DROP_ORDER), then share out what is left
/// between the elided columns.
fn column_layout(total: u16, natural: &[u16; 11]) -> Vec<(Column, u16)> {
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
fn text_width(s: &str) -> u16 {
    Line::raw(s).width().min(64) as u16
}

/// Shortens `text` to `width` columns, marking the cut with `…`: endpoints lose the
/// middle of their address or name (the port and both ends stay readable), other text
/// its end.
fn fit(col: Column, text: &str, width: u16) -> String {
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
fn split_port(text: &str) -> (&str, &str) {
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
fn elide_middle(text: &str, width: usize) -> String {
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

/// Three significant digits: `5.00`, `12.3`, `812`.
fn sig3(v: f64) -> String {
    if v < 9.995 {
        format!("{v:.2}")
    } else if v < 99.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// `v` in the largest unit that keeps it below 1000 (the last unit has no limit); the
/// first unit is shown as an integer when `integral` (nanoseconds, bytes).
fn human(v: f64, step: f64, units: &[&str], integral: bool) -> String {
    let mut v = v;
    let mut i = 0;
    while i + 1 < units.len() && v >= 999.5 {
        v /= step;
        i += 1;
    }
    if i == 0 && integral {
        format!("{v:.0}{}", units[0])
    } else {
        format!("{}{}", sig3(v), units[i])
    }
}

/// `850ns`, `812µs`, `12.3ms`, `1.20s`.
pub fn format_ns(ns: u64) -> String {
    human(ns as f64, 1000.0, &["ns", "µs", "ms", "s"], true)
}

/// `512B`, `1.50KiB`, `12.3MiB`.
pub fn format_bytes(bytes: u64) -> String {
    human(
        bytes as f64,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB"],
        true,
    )
}

/// `0`, `0.50`, `12.3`, `1.20k`, `3.40M`.
pub fn format_count(v: f64) -> String {
    if v <= 0.0 {
        return "0".to_owned();
    }
    human(v, 1000.0, &["", "k", "M", "G"], false)
}

/// `0%`, `0.05%`, `5.00%`, `12.5%`, `100%`.
pub fn format_percent(p: f64) -> String {
    if p <= 0.0 {
        return "0%".to_owned();
    }
    format!("{}%", sig3(p))
}

/// Ages and intervals: `850ms`, `42s`, `12m05s`, `3h07m`, `2d05h`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.subsec_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Set while a [`Ui`] has the terminal, so the panic hook restores it only then.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Gives the terminal back: main screen, cooked mode, cursor. Errors are ignored: this
/// runs on the way out (drop, panic) where nothing better can be done.
fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, AtomicOrdering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}

/// The live view on the terminal.
///
/// Small (the terminal and the frame are boxed), so callers can hold it in an enum
/// beside cheap alternatives.
pub struct Ui {
    terminal: Box<Terminal<CrosstermBackend<Stdout>>>,
    state: ViewState,
    last: Option<Box<Frame>>,
    /// The order of `last`'s rows, when known before it was drawn.
    sorted: Option<Sorted>,
    page: usize,
}

impl Ui {
    /// The rows the view will show, when only they need window summaries and labels:
    /// None when the sort column itself needs them for every row.
    /// The order is kept for drawing the frame of these rows.
    pub fn shown_rows(&mut self, rows: &[FlowRow]) -> Option<Vec<usize>> {
        self.sorted = None;
        if matches!(
            self.state.sort,
            Column::RttP50 | Column::RttP99 | Column::ServerDelayP50 | Column::Process
        ) {
            return None;
        }
        let page = self.page.max(1);
        let offset = self.state.offset.min(rows.len().saturating_sub(page));
        let k = offset + page;
        let order = sorted_rows_prefix(&self.state, rows, &[], k);
        let shown = order[offset.min(order.len())..k.min(order.len())].to_vec();
        self.sorted = Some(Sorted {
            sort: self.state.sort,
            descending: self.state.descending,
            rows: rows.len(),
            k,
            order,
        });
        Some(shown)
    }

    /// Takes over the terminal (alternate screen, raw mode, hidden cursor). A panic
    /// afterwards restores it first, so its message is readable on the normal screen.
    pub fn start() -> io::Result<Ui> {
        if !io::stdout().is_terminal() {
            return Err(io::Error::other(
                "stdout is not a terminal: the live view needs one (use --json for a log)",
            ));
        }
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        enable_raw_mode()?;
        TERMINAL_TAKEN.store(true, AtomicOrdering::SeqCst);
        let terminal = execute!(io::stdout(), EnterAlternateScreen, Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match terminal {
            Ok(terminal) => Ok(Ui {
                terminal: Box::new(terminal),
                state: ViewState::default(),
                last: None,
                sorted: None,
                page: 0,
            }),
            Err(e) => {
                restore_terminal();
                Err(e)
            }
        }
    }

    /// The shown frame's rows, to be refilled for the next frame (saves allocating
    /// megabytes each refresh). The view shows no rows until the next [`Ui::draw`].
    pub fn take_rows(&mut self) -> Vec<FlowRow> {
        self.sorted = None;
        self.last
            .as_mut()
            .map(|f| std::mem::take(&mut f.rows))
            .unwrap_or_default()
    }

    /// Shows `frame`, and keeps it to redraw after keys and resizes.
    pub fn draw(&mut self, frame: Frame) -> io::Result<()> {
        self.last = Some(Box::new(frame));
        self.redraw()
    }

    fn redraw(&mut self) -> io::Result<()> {
        let Some(frame) = &self.last else {
            return Ok(());
        };
        let mut page = self.page;
        let sorted = self.sorted.as_ref();
        self.terminal
            .draw(|f| page = render_sorted(f, &self.state, frame, sorted))?;
        self.page = page;
        // Keep the offset within the rows, so Up works at once after End.
        self.state.offset = self.state.offset.min(frame.rows.len().saturating_sub(page));
        Ok(())
    }

    /// Waits up to `timeout` for input and handles every pending event: sort, scroll
    /// and help keys redraw; a resize redraws. True when the user asked to quit.
    pub fn poll_quit(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut wait = timeout;
        let mut redraw = false;
        while event::poll(wait)? {
            wait = Duration::ZERO;
            match event::read()? {
                Event::Key(key) => match self.state.handle_key(key, self.page) {
                    KeyOutcome::Quit => return Ok(true),
                    KeyOutcome::Redraw => redraw = true,
                    KeyOutcome::Ignored => {}
                },
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
        if redraw {
            self.redraw()?;
        }
        Ok(false)
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        restore_terminal();
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, buffer::Buffer};

    use super::*;
    use crate::{filter::test_row, metrics::Summary};

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
                },
                RowLabels {
                    remote_name: None,
                    process: Some("iperf3/77".into()),
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
                render_sorted(f, &state, &frame, sorted);
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
}
