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
    engine::{FlowRow, proto_name},
    kernel::maps::Totals,
};

mod detail;
mod format;
pub mod history;
mod plain;
mod render;
mod sort;
mod state;
mod terminal;
#[cfg(test)]
mod tests;

pub use format::{format_bytes, format_count, format_duration, format_ns, format_percent};
pub use plain::write_table;
pub use render::render;
pub use sort::{sorted_indices, sorted_prefix};
pub use state::{Column, KeyOutcome, ViewState};
pub use terminal::Ui;
// The submodules reach each other through `use super::*`.
use {render::*, sort::*};

/// Everything one refresh shows.
pub struct Frame {
    /// Where: the interface(s), or a capture.
    pub iface: String,
    /// `pdm observe`: the header says so, and shows the observer's counters.
    pub observing: bool,
    /// The rows are seen from outside their ends (`pdm observe`, `pdm analyze`): the
    /// endpoint columns are the client and the server.
    pub client_server: bool,
    /// Something the user should act on (packets going without PDM, and the option
    /// that helps), shown under the counters.
    pub hint: Option<String>,
    /// How each program is attached, e.g. `pdm_egress: tc egress (tcx link)`.
    pub attach: Vec<String>,
    pub totals: Totals,
    pub rows: Vec<FlowRow>,
    /// Parallel to `rows`.
    pub labels: Vec<RowLabels>,
    pub flows_evicted: u64,
    pub flows_expired: u64,
    pub interval: Duration,
    /// The distributions of the flow whose detail is open ([`Ui::detail_key`]).
    pub detail: Option<crate::engine::Distributions>,
}

/// What the view knows about a flow besides its measurements.
#[derive(Clone, Debug, Default)]
pub struct RowLabels {
    pub remote_name: Option<String>,
    pub process: Option<String>,
    /// RTT p50 over the last minute, as block characters (from the view's history).
    pub trend: Option<String>,
}
