//! The part that owns the terminal, and gives it back on exit and on panic.

use super::*;

/// Points of the table's trend column (a minute at the default refresh), drawn in so
/// many characters.
const TREND_POINTS: usize = 60;
const TREND_WIDTH: usize = 20;

/// Set while a [`Ui`] has the terminal, so the panic hook restores it only then.
pub(super) static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);
pub(super) static PANIC_HOOK: Once = Once::new();

/// Gives the terminal back: main screen, cooked mode, cursor. Errors are ignored: this
/// runs on the way out (drop, panic) where nothing better can be done.
pub(super) fn restore_terminal() {
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
    /// The flows on screen and the detail's, over time.
    history: Box<history::History>,
    /// The keys of the rows on screen, in order, from the last draw.
    visible: Vec<pdm_common::flow::FlowKey>,
    /// The frame does not change ([`Ui::show`]): drawing adds nothing to the history.
    frozen: bool,
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
        let mut shown = order[offset.min(order.len())..k.min(order.len())].to_vec();
        // The detail's flow needs its figures too, wherever it is in the table.
        if let Some(key) = &self.state.detail
            && let Some(i) = rows.iter().position(|r| r.key() == *key)
            && !shown.contains(&i)
        {
            shown.push(i);
        }
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
                history: Box::default(),
                visible: Vec::new(),
                frozen: false,
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

    /// The flow whose detail view is open: its distributions go into the next frame.
    pub fn detail_key(&self) -> Option<pdm_common::flow::FlowKey> {
        self.state.detail
    }

    /// Shows `frame`, and keeps it to redraw after keys and resizes. The rows on screen
    /// (and the detail's) go into the history first.
    pub fn draw(&mut self, mut frame: Frame) -> io::Result<()> {
        let page = self.page.max(1);
        self.state.clamp(frame.rows.len(), page);
        let k = self.state.offset + page;
        let order = match &self.sorted {
            Some(s) if s.serves(&self.state, frame.rows.len(), k) => s.order.clone(),
            _ => sorted_prefix(&self.state, &frame, k),
        };
        let on_screen = &order[self.state.offset.min(order.len())..k.min(order.len())];
        let detail = self
            .state
            .detail
            .and_then(|key| frame.rows.iter().position(|r| r.key() == key));
        if !self.frozen {
            self.history.update(
                on_screen
                    .iter()
                    .chain(detail.as_ref())
                    .map(|&i| &frame.rows[i]),
            );
        }
        frame.labels.resize(frame.rows.len(), RowLabels::default());
        for &i in on_screen {
            frame.labels[i].trend =
                self.history
                    .trend(&frame.rows[i].key(), TREND_POINTS, TREND_WIDTH);
        }
        self.last = Some(Box::new(frame));
        self.redraw()
    }

    pub(super) fn redraw(&mut self) -> io::Result<()> {
        let Some(frame) = &self.last else {
            return Ok(());
        };
        let mut page = self.page;
        let mut visible = Vec::new();
        let sorted = self.sorted.as_ref();
        let (state, history) = (&mut self.state, &self.history);
        if let Some(key) = state.detail {
            self.terminal
                .draw(|f| detail::render(f, state, frame, &key, history))?;
            return Ok(());
        }
        self.terminal.draw(|f| {
            (page, visible) = render_sorted(f, state, frame, sorted);
        })?;
        self.page = page;
        self.visible = visible.iter().map(|&i| frame.rows[i].key()).collect();
        Ok(())
    }

    /// Shows `frame`, which does not change (a capture read to its end), until the user
    /// quits. `history` is what is known of the flows over time; `detail` gives a flow's
    /// distributions when its detail opens.
    pub fn show(
        mut self,
        frame: Frame,
        history: history::History,
        detail: impl Fn(&pdm_common::flow::FlowKey) -> Option<crate::engine::Distributions>,
    ) -> io::Result<()> {
        *self.history = history;
        self.frozen = true;
        self.draw(frame)?;
        loop {
            let before = self.state.detail;
            if self.poll_quit(Duration::from_millis(250))? {
                return Ok(());
            }
            if self.state.detail != before {
                if let Some(f) = self.last.as_mut() {
                    f.detail = self.state.detail.and_then(|k| detail(&k));
                }
                self.redraw()?;
            }
        }
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
                    KeyOutcome::Open => {
                        let at = self.state.selected.saturating_sub(self.state.offset);
                        if let Some(key) = self.visible.get(at) {
                            self.state.detail = Some(*key);
                            redraw = true;
                        }
                    }
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
