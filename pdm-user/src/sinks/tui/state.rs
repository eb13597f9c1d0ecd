//! What the user chose (sort column, order, scroll, help) and what keys do to it.

use super::*;

/// The table's columns, in screen order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Local,
    Remote,
    Proto,
    RttP50,
    /// RTT p50 over the last minute, drawn.
    Trend,
    RttP99,
    ServerDelayP50,
    Loss,
    Pps,
    Bytes,
    Age,
    Process,
}

impl Column {
    pub const ALL: [Column; 12] = [
        Column::Local,
        Column::Remote,
        Column::Proto,
        Column::RttP50,
        Column::Trend,
        Column::RttP99,
        Column::ServerDelayP50,
        Column::Loss,
        Column::Pps,
        Column::Bytes,
        Column::Age,
        Column::Process,
    ];

    /// The key that sorts by this column: the number row, left to right.
    pub const KEYS: [char; 12] = ['1', '2', '3', '4', '=', '5', '6', '7', '8', '9', '0', '-'];

    /// The title where the rows are seen from outside their ends (a capture, an
    /// observer): `local` is then the client, `remote` the server.
    pub fn title_in(self, client_server: bool) -> &'static str {
        match (self, client_server) {
            (Column::Local, true) => "CLIENT",
            (Column::Remote, true) => "SERVER",
            _ => self.title(),
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Column::Local => "LOCAL",
            Column::Remote => "REMOTE",
            Column::Proto => "PROTO",
            Column::RttP50 => "RTT p50",
            Column::Trend => "RTT 1m",
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
    pub(super) fn description(self) -> &'static str {
        match self {
            Column::Local => "local address:port",
            Column::Remote => "remote address:port (or name)",
            Column::Proto => "protocol",
            Column::RttP50 => "round-trip time, median",
            Column::Trend => "RTT median over the last minute",
            Column::RttP99 => "round-trip time, 99th percentile",
            Column::ServerDelayP50 => "server delay, median",
            Column::Loss => "loss of the peer's packets, %",
            Column::Pps => "packets per second, both ways",
            Column::Bytes => "bytes, both ways",
            Column::Age => "time since first seen",
            Column::Process => "local process (comm/pid)",
        }
    }

    pub(super) fn index(self) -> usize {
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
    pub(super) fn numeric(self) -> bool {
        !matches!(
            self,
            Column::Local | Column::Remote | Column::Proto | Column::Process
        )
    }

    pub(super) fn next(self) -> Column {
        Column::ALL[(self.index() + 1) % Column::ALL.len()]
    }

    pub(super) fn prev(self) -> Column {
        Column::ALL[(self.index() + Column::ALL.len() - 1) % Column::ALL.len()]
    }
}

/// What the user chose: sort order, scroll position, the selected flow, help shown,
/// and the flow whose detail is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewState {
    pub sort: Column,
    pub descending: bool,
    /// First flow shown (in sorted order).
    pub offset: usize,
    /// The selected flow (in sorted order); kept on screen when drawn.
    pub selected: usize,
    pub help: bool,
    /// The flow whose detail view is open.
    pub detail: Option<pdm_common::flow::FlowKey>,
}

impl Default for ViewState {
    /// Biggest flows first: what someone opening the view usually looks for.
    fn default() -> Self {
        Self {
            sort: Column::Bytes,
            descending: true,
            offset: 0,
            selected: 0,
            help: false,
            detail: None,
        }
    }
}

/// What a key press asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    Quit,
    Redraw,
    /// Enter on the table: open the selected flow's detail.
    Open,
    Ignored,
}

impl ViewState {
    /// Applies one key. `page` is the number of flow rows on screen, for PgUp/PgDn.
    pub fn handle_key(&mut self, key: KeyEvent, page: usize) -> KeyOutcome {
        if key.kind != KeyEventKind::Press {
            return KeyOutcome::Ignored;
        }
        let page = page.max(1);
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return KeyOutcome::Quit;
        }
        if self.detail.is_some() {
            // The detail view: back to the table, or quit.
            return match key.code {
                KeyCode::Char('q' | 'Q') => KeyOutcome::Quit,
                KeyCode::Esc | KeyCode::Backspace | KeyCode::Enter | KeyCode::Left => {
                    self.detail = None;
                    KeyOutcome::Redraw
                }
                KeyCode::Char('?' | 'h' | 'H') => {
                    self.help = !self.help;
                    KeyOutcome::Redraw
                }
                _ => KeyOutcome::Ignored,
            };
        }
        match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => return KeyOutcome::Quit,
            KeyCode::Enter => return KeyOutcome::Open,
            KeyCode::Char('r' | 'R') => self.descending = !self.descending,
            KeyCode::Char('?' | 'h' | 'H') => self.help = !self.help,
            KeyCode::Char('>' | '.') | KeyCode::Right => self.sort_by(self.sort.next()),
            KeyCode::Char('<' | ',') | KeyCode::Left => self.sort_by(self.sort.prev()),
            // The selection moves; the table scrolls to keep it on screen.
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = self.selected.saturating_add(1);
                if self.selected >= self.offset.saturating_add(page) {
                    self.offset = self.selected + 1 - page;
                }
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                self.offset = self.offset.min(self.selected);
            }
            KeyCode::PageDown | KeyCode::Char(' ') => {
                self.offset = self.offset.saturating_add(page);
                self.selected = self.selected.saturating_add(page);
            }
            KeyCode::PageUp => {
                self.offset = self.offset.saturating_sub(page);
                self.selected = self.selected.saturating_sub(page);
            }
            KeyCode::Home | KeyCode::Char('g') => (self.offset, self.selected) = (0, 0),
            // Clamped to the last page when drawn.
            KeyCode::End | KeyCode::Char('G') => {
                (self.offset, self.selected) = (usize::MAX, usize::MAX)
            }
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
    pub(super) fn sort_by(&mut self, col: Column) {
        self.sort = col;
        self.descending = col.numeric();
        self.offset = 0;
        self.selected = 0;
    }

    /// Keeps the selection among `rows` and on a page of `page` rows from the offset.
    pub(super) fn clamp(&mut self, rows: usize, page: usize) {
        let page = page.max(1);
        self.offset = self.offset.min(rows.saturating_sub(page));
        self.selected = self.selected.min(rows.saturating_sub(1));
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + page {
            self.offset = self.selected + 1 - page;
        }
    }
}
