//! The measuring loop of `pdm run` and `pdm observe`: drain the kernel source's
//! samples into the engine (on a short timer), and every interval snapshot the
//! kernel's table (flows expire there too) and emit the rows to the sinks (NDJSON, the
//! live view, `--log`, metrics).

use std::{io::Write as _, time::Duration};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    engine::{self, FlowRow, Table, TableConfig},
    filter::Filter,
    kernel::maps::{self, Totals},
    sinks::metrics::{self, Exporter, MetricsConfig},
    sinks::{
        labels::Labels,
        ndjson,
        tui::{self, RowLabels},
    },
    sources::{LiveSource, kernel::KernelSource, observer::ObserverSource},
    sys::{iface::Iface, lookup::Lookups},
};

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Ctrl-C, SIGTERM, `q` in the view, or `--duration` elapsed.
    Stopped,
    /// The interface went away.
    InterfaceGone,
}

/// What the programs do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `pdm run`: one end of its flows, adding PDM.
    Run,
    /// `pdm observe`: between the ends, changing nothing.
    Observe,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Observe => "observe",
        }
    }
}

pub struct Options {
    pub mode: Mode,
    /// Where the programs are attached (one for `pdm run`).
    pub ifaces: Vec<Iface>,
    pub attach: Vec<String>,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub table: TableConfig,
    pub filter: Filter,
    pub json: bool,
    pub resolve: bool,
    /// Also append the NDJSON lines to this file (with the live view, a record of it).
    pub log: Option<std::path::PathBuf>,
    /// `--mtu-room` is on: packets too big for PDM are not expected.
    pub mtu_room: bool,
    /// `--metrics-addr`: the bound listener and what to export.
    pub metrics: Option<(std::net::TcpListener, MetricsConfig)>,
}

/// What to tell the user when packets went without PDM for want of room, or None.
pub fn too_big_hint(totals: &Totals, mtu_room: bool) -> Option<String> {
    let n = totals.get(pdm_common::counters::Counter::EgressTooBig);
    (n > 0 && !mtu_room).then(|| {
        format!(
            "{n} packets left without PDM: too big for its 16 octets (full-size UDP, fragments, large pings); --mtu-room makes room"
        )
    })
}

/// Where each interval's results go.
enum Sink {
    /// NDJSON on stdout. The rows' buffer is kept from one report to the next: with a
    /// table full of flows it is tens of MiB, which allocated afresh every interval made
    /// the process's resident size jump at each report.
    Json(Vec<FlowRow>),
    Tui(tui::Ui),
}

impl Options {
    /// The interfaces' names, as the output labels a run: "eth0", or "r0,r1".
    pub fn label(&self) -> String {
        let names: Vec<&str> = self.ifaces.iter().map(Iface::name).collect();
        names.join(",")
    }
}

pub async fn run(ebpf: &mut Ebpf, opts: Options) -> Result<End> {
    match opts.mode {
        Mode::Run => run_with(KernelSource::open(ebpf)?, ebpf, opts).await,
        Mode::Observe => run_with(ObserverSource::open(ebpf)?, ebpf, opts).await,
    }
}

async fn run_with(mut kernel: impl LiveSource, ebpf: &mut Ebpf, opts: Options) -> Result<End> {
    // Drained on a short timer rather than on readiness: at 10 000 samples a second,
    // waking for each one was a quarter of pdm's CPU time. Samples carry their kernel
    // timestamps, so reading them a little later changes nothing.
    let label = opts.label();
    let drain_tick = tokio::time::sleep(DRAIN_SLOW);
    tokio::pin!(drain_tick);
    let mut sink = if opts.json {
        Sink::Json(Vec::new())
    } else {
        Sink::Tui(tui::Ui::start().context("starting the terminal view (use --json for a log)")?)
    };
    let mut log = match &opts.log {
        Some(path) => Some(open_log(path)?),
        None => None,
    };
    // What this run is, first: a record (`--log`, or NDJSON kept) says what it measured.
    let run_line = ndjson::run_json(ndjson::unix_now(), opts.mode.name(), &label, &opts.attach);
    if matches!(sink, Sink::Json(_)) {
        writeln!(std::io::stdout().lock(), "{run_line}").context("writing to stdout")?;
    }
    if let Some(log) = log.as_mut() {
        writeln!(log, "{run_line}").context("writing the log")?;
    }
    let lookups = Lookups::new(opts.resolve);
    let mut labels = Labels::default();
    let mut table = Table::with_capacity(opts.table, kernel.slots());
    let exporter = match &opts.metrics {
        Some((listener, config)) => {
            let exporter = Exporter::new(config.clone());
            let listener = tokio::net::TcpListener::from_std(
                listener.try_clone().context("the metrics listener")?,
            )
            .context("the metrics listener")?;
            // Dropped with the runtime when the run ends.
            tokio::spawn(metrics::http::serve(listener, exporter.clone()));
            Some(exporter)
        }
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // logrotate's postrotate (systemctl reload) for a service's log; a closed terminal
    // otherwise.
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(opts.interval);
    let mut keys = tokio::time::interval(Duration::from_millis(50));
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    tick.tick().await;

    let end = loop {
        tokio::select! {
            _ = sigint.recv() => break End::Stopped,
            _ = sigterm.recv() => break End::Stopped,
            _ = sighup.recv() => {
                // As a service writing a log: reopen it. Otherwise the terminal went
                // away: stop (detaching), as the signal's default would, but cleanly.
                match (&opts.log, &sink) {
                    (Some(path), Sink::Json(_)) => match open_log(path) {
                        Ok(file) => log = Some(file),
                        // Keep writing to the old file rather than lose lines.
                        Err(e) => log::warn!("{e:#}"),
                    },
                    _ => break End::Stopped,
                }
            }
            _ = &mut drain_tick => {
                let n = drain(&mut kernel, &mut table, exporter.as_ref());
                let next = if n > DRAIN_BUSY { DRAIN_FAST } else { DRAIN_SLOW };
                drain_tick.as_mut().reset(tokio::time::Instant::now() + next);
            }
            _ = keys.tick(), if matches!(sink, Sink::Tui(_)) => {
                if let Sink::Tui(ui) = &mut sink
                    && ui.poll_quit(Duration::ZERO)?
                {
                    break End::Stopped;
                }
            }
            _ = tick.tick() => {
                drain(&mut kernel, &mut table, exporter.as_ref());
                if !opts.ifaces.iter().all(Iface::still_there) {
                    break End::InterfaceGone;
                }
                report(ebpf, &kernel, &opts, &mut table, &lookups, &mut labels, &mut sink, log.as_mut(), exporter.as_ref())?;
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break End::Stopped;
                }
            }
        }
    };
    drain(&mut kernel, &mut table, exporter.as_ref());
    drop(sink);
    if end == End::Stopped && opts.json {
        // A last report, so even a run shorter than one interval says what it saw; what
        // has not arrived by now is lost.
        table.settle();
        report(
            ebpf,
            &kernel,
            &opts,
            &mut table,
            &lookups,
            &mut labels,
            &mut Sink::Json(Vec::new()),
            log.as_mut(),
            exporter.as_ref(),
        )?;
    }
    Ok(end)
}

/// How often the sample ring is read. It holds about 13 000 samples: at the slow pace
/// that is room for 130 000 a second, and a drain that finds more than [`DRAIN_BUSY`]
/// switches to the fast pace (room for 500 000 a second) until the flow of samples
/// drops again. Each wakeup costs; 40 a second were a noticeable share of the loader's
/// time at 10 000 quiet flows.
const DRAIN_SLOW: Duration = Duration::from_millis(100);
const DRAIN_FAST: Duration = Duration::from_millis(25);
const DRAIN_BUSY: usize = 2_000;

/// One interval's figures: the counters and the rows the sinks are to show.
struct Snapshot {
    totals: Totals,
    rows: Vec<FlowRow>,
    now: u64,
    /// The rows carry every summary (NDJSON wants them); else only what the view
    /// fills in for the rows it shows.
    complete: bool,
}

/// Drain → snapshot → emit, once per interval.
#[allow(clippy::too_many_arguments)]
fn report(
    ebpf: &mut Ebpf,
    kernel: &impl LiveSource,
    opts: &Options,
    table: &mut Table,
    lookups: &Lookups,
    labels: &mut Labels,
    sink: &mut Sink,
    log: Option<&mut std::fs::File>,
    exporter: Option<&Exporter>,
) -> Result<()> {
    let snap = snapshot(ebpf, kernel, opts, table, sink, log.is_some())?;
    if let Some(e) = exporter {
        let flows = table.len();
        e.with(|s| s.refresh(&snap.rows, &snap.totals, flows));
    }
    // Said once on stderr (the live view shows it in its header all along).
    static HINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(hint) = too_big_hint(&snap.totals, opts.mtu_room)
        && matches!(sink, Sink::Json(_))
        && !HINTED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        log::warn!("{hint}");
    }
    emit(snap, opts, table, lookups, labels, sink, log)
}

/// Takes in the kernel's flow table (expiring flows there too) and builds the rows.
fn snapshot(
    ebpf: &mut Ebpf,
    kernel: &impl LiveSource,
    opts: &Options,
    table: &mut Table,
    sink: &mut Sink,
    logging: bool,
) -> Result<Snapshot> {
    let totals = maps::totals(ebpf).context("reading counters")?;
    let now = engine::monotonic_ns();
    // The since-start summaries go to NDJSON only (the view does not show them), and
    // the view needs window summaries and labels only for the rows on screen (unless it
    // sorts by them).
    let complete = logging || matches!(sink, Sink::Json(_));
    let mut rows = match sink {
        Sink::Tui(ui) => ui.take_rows(),
        Sink::Json(buffer) => std::mem::take(buffer),
    };
    let keep = |r: &FlowRow| opts.filter.matches(r);
    let expired = if complete {
        let expired = kernel.refresh(table, now, None, |_| true);
        table.rows_into(&mut rows, now, true, true, keep);
        expired
    } else {
        // The view's rows, built in the same pass over the flows.
        kernel.refresh(table, now, Some(&mut rows), keep)
    };
    kernel.remove(&expired);
    Ok(Snapshot {
        totals,
        rows,
        now,
        complete,
    })
}

/// Hands the rows, with their labels, to the sinks.
fn emit(
    snap: Snapshot,
    opts: &Options,
    table: &Table,
    lookups: &Lookups,
    labels: &mut Labels,
    sink: &mut Sink,
    log: Option<&mut std::fs::File>,
) -> Result<()> {
    let Snapshot {
        totals,
        mut rows,
        now,
        complete,
    } = snap;
    let shown = match sink {
        Sink::Tui(ui) if !complete => ui.shown_rows(&rows),
        _ => None,
    };
    let labels = match &shown {
        None => {
            if !complete {
                for r in &mut rows {
                    table.fill_windows(r, now);
                }
            }
            labels.for_rows(&rows, lookups)
        }
        Some(shown) => {
            let mut out = vec![RowLabels::default(); rows.len()];
            let picked: Vec<FlowRow> = shown.iter().map(|&i| rows[i].clone()).collect();
            for (&i, l) in shown.iter().zip(labels.for_rows(&picked, lookups)) {
                table.fill_windows(&mut rows[i], now);
                out[i] = l;
            }
            out
        }
    };
    if let Some(log) = log {
        json(log, opts, &totals, table, &rows, &labels)?;
    }
    match sink {
        Sink::Json(buffer) => {
            let written = json(
                &mut std::io::stdout().lock(),
                opts,
                &totals,
                table,
                &rows,
                &labels,
            );
            *buffer = rows;
            written
        }
        Sink::Tui(ui) => {
            let detail = ui.detail_key().and_then(|k| table.distributions(&k));
            ui.draw(tui::Frame {
                detail,
                hint: too_big_hint(&totals, opts.mtu_room),
                iface: opts.label(),
                observing: opts.mode == Mode::Observe,
                client_server: opts.mode == Mode::Observe,
                attach: opts.attach.clone(),
                totals,
                rows,
                labels,
                flows_evicted: table.evicted,
                flows_expired: table.expired,
                interval: opts.interval,
            })
            .context("drawing the view")
        }
    }
}

fn json(
    out: &mut impl std::io::Write,
    opts: &Options,
    totals: &Totals,
    table: &Table,
    rows: &[FlowRow],
    labels: &[RowLabels],
) -> Result<()> {
    // One buffer for the whole report: stdout is line-buffered, and a write per flow
    // line was a syscall per flow.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let ts = ndjson::unix_now();
    let label = opts.label();
    for (r, l) in rows.iter().zip(labels) {
        ndjson::write_flow(
            &mut out,
            ts,
            &label,
            r,
            l.remote_name.as_deref(),
            l.process.as_deref(),
        )?;
    }
    let line = ndjson::counters_json(
        ts,
        &label,
        totals,
        table.len(),
        table.evicted,
        table.expired,
    );
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Drains the kernel's samples into the table, and into the exporter if there is one.
fn drain(kernel: &mut impl LiveSource, table: &mut Table, exporter: Option<&Exporter>) -> usize {
    match exporter {
        Some(e) => kernel.drain_with(table, |batch| e.with(|s| s.samples(batch))),
        None => kernel.drain_with(table, |_| {}),
    }
}

/// Opens `--log` for appending (created if missing).
fn open_log(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))
}
