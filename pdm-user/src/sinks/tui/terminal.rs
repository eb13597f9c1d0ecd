//! The part that owns the terminal, and gives it back on exit and on panic.

use super::*;

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

    pub(super) fn redraw(&mut self) -> io::Result<()> {
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
