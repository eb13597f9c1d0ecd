//! `pdm analyze`: PDM in capture files, pdm's own or anyone else's (RFC 8250: PDM "may
//! be interpreted in real time or after the fact"). Captures are read as a source
//! ([`crate::sources::capture`]), each packet's chain walked by the shared parser
//! ([`pdm_common::chain`]).
//!
//! By default, per-flow figures: the files, merged by time, feed the capture's flows
//! ([`CaptureFlows`]), which feed the same metrics engine as the kernel does in `pdm
//! run`; each flow's row goes out when it ends (and each `--interval`) as the same
//! NDJSON flow object (`local_*` = the client), or as the live view's table on a
//! terminal. `--packets` prints every packet that carries PDM instead, its fields raw
//! and decoded.

use std::{
    io::{IsTerminal as _, Write as _},
    net::Ipv6Addr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use pdm_common::flow::FlowKey;
use pdm_common::{
    chain::{self, Upper},
    time::{DeltaTime, TimeFault, decode_received},
    wire::PdmFields,
};
use serde_json::{Value, json};

use crate::{
    engine::{Distributions, FastMap, FlowRow, Table, TableConfig},
    filter::Filter,
    sinks::{ndjson, tui},
    sources::capture::{CaptureFlows, Expiry, Merged, Packet},
};

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Capture files (pcap or pcapng; Ethernet, Linux cooked SLL/SLL2 or raw IP), read
    /// as one capture in timestamp order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// NDJSON (one object per flow) instead of a table; the default when stdout is not
    /// a terminal.
    #[arg(long)]
    pub json: bool,
    /// One NDJSON object per packet carrying PDM: capture time, addresses, ports, the
    /// six PDM fields as sent and their delta times decoded.
    #[arg(long, conflicts_with = "interval")]
    pub packets: bool,
    /// Only flows that match, e.g. "udp", "port 443" (the syntax of `pdm run --filter`).
    #[arg(long, value_parser = Filter::parse)]
    pub filter: Option<Filter>,
    /// Span of the sliding window for the `*_us_*` figures (capture time, before the
    /// object's `ts`); the `*_all_*` figures cover the flow since it started.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub window: Duration,
    /// Also report every flow each D of capture time (NDJSON objects, or a table per
    /// interval), not only when it ends.
    #[arg(long, value_name = "D", value_parser = crate::duration::parse)]
    pub interval: Option<Duration>,
    /// On a terminal, print the table instead of showing it in the live view.
    #[arg(long, conflicts_with = "json")]
    pub table: bool,
    /// A flow without a packet for this long in the capture has ended: it is reported
    /// then and forgotten (TCP FIN/RST end a flow 2 s after its last packet), as in
    /// `pdm run`; memory stays bounded however long the capture.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse)]
    pub idle_timeout: Duration,
}

/// What the packets of a read were, for the summary line.
#[derive(Default)]
struct Tally {
    pdm: u64,
    bad_pdm: u64,
    unwalkable: u64,
    /// Flows the capture held (0 for `--packets`).
    flows: u64,
    /// Later fragments attributed to no flow.
    unattributed: u64,
}

impl Tally {
    /// Walks a packet's chain, counting what it holds.
    fn walk(&mut self, p: &Packet) -> Option<chain::Chain> {
        let Ok(c) = chain::parse(p.ipv6) else {
            self.unwalkable += 1;
            return None;
        };
        self.bad_pdm += u64::from(c.bad_pdm);
        self.pdm += u64::from(c.pdm.is_some());
        Some(c)
    }
}

pub fn run(args: &AnalyzeArgs) -> Result<()> {
    let mut capture = Merged::open(&args.files)?;
    let mut progress = Progress::new(&capture);
    let mut tally = Tally::default();
    let result = if args.packets {
        packets(&mut capture, &mut tally, &mut progress)
    } else {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        let json = args.json || !std::io::stdout().is_terminal();
        // On a terminal, the live view's table over the capture's flows, with their
        // detail (`--table` prints the table instead).
        let view = !json && !args.table;
        match flows(
            args,
            &mut capture,
            &mut tally,
            &mut progress,
            &mut out,
            json,
            view,
        ) {
            Ok(Some(v)) => {
                progress.finish();
                drop(out);
                return show(&capture, &tally, args, v);
            }
            other => other.map(drop),
        }
    };
    progress.finish();
    // A reader that stopped reading (`| head`) ends the output, not in an error.
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            return Ok(());
        }
        other => other?,
    }
    summary(&capture, &tally);
    Ok(())
}

/// Each PDM packet as one NDJSON line.
fn packets(capture: &mut Merged, tally: &mut Tally, progress: &mut Progress) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut failed = None;
    while capture
        .next_packet(|p| {
            if failed.is_none()
                && let Some(line) = packet_line(p, tally)
                && let Err(e) = writeln!(out, "{line}")
            {
                failed = Some(e);
            }
        })?
        .is_some()
    {
        if let Some(e) = failed {
            return Err(e.into());
        }
        progress.tick(capture);
    }
    out.flush()?;
    Ok(())
}

/// The engine refreshes its flows from the capture's every this much capture time (the
/// kernel's narrow counters are widened at each refresh, as in `pdm run`).
const REFRESH_NS: u64 = 1_000_000_000;

/// Where per-flow figures go: NDJSON lines, or a table on a terminal.
struct FlowSink<'w> {
    out: &'w mut dyn std::io::Write,
    json: bool,
    name: String,
    filter: Option<Filter>,
    /// Rows of flows that ended, for the table at the end.
    ended: Vec<FlowRow>,
}

impl FlowSink<'_> {
    fn keep(&self, r: &FlowRow) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(r))
    }

    /// A flow that ended, as of `ts`.
    fn ended(&mut self, r: FlowRow, ts: u64) -> std::io::Result<()> {
        if !self.keep(&r) {
            return Ok(());
        }
        if self.json {
            ndjson::write_flow(&mut self.out, ts as f64 / 1e9, &self.name, &r, None, None)
        } else {
            self.ended.push(r);
            Ok(())
        }
    }

    /// The flows of one interval (`ts`: its end), or of the end of the capture.
    fn report(
        &mut self,
        rows: Vec<FlowRow>,
        ts: u64,
        heading: Option<String>,
    ) -> std::io::Result<()> {
        let rows: Vec<FlowRow> = rows.into_iter().filter(|r| self.keep(r)).collect();
        if self.json {
            for r in &rows {
                ndjson::write_flow(&mut self.out, ts as f64 / 1e9, &self.name, r, None, None)?;
            }
            return Ok(());
        }
        if let Some(h) = heading {
            writeln!(self.out, "{h}")?;
        }
        tui::write_table(&mut self.out, &rows)?;
        writeln!(self.out)
    }
}

/// Per-flow figures of the capture: each flow once it ends (idle, or closed) and the
/// rest at the end, and with `--interval` every flow each interval.
fn flows(
    args: &AnalyzeArgs,
    capture: &mut Merged,
    tally: &mut Tally,
    progress: &mut Progress,
    out: &mut dyn std::io::Write,
    json: bool,
    view: bool,
) -> Result<Option<View>> {
    let mut table = Table::new(TableConfig {
        window: args.window,
        // The source decides when its flows end ([`CaptureFlows::expire`]), on the
        // capture's clock; the engine's own expiry would compare capture time with
        // its refreshes.
        idle_timeout: Duration::from_secs(u64::from(u32::MAX)),
        closed_linger: Duration::from_secs(u64::from(u32::MAX)),
    });
    let expiry = Expiry {
        idle_ns: args.idle_timeout.as_nanos() as u64,
        closed_ns: TableConfig::default().closed_linger.as_nanos() as u64,
    };
    let mut sink = FlowSink {
        out,
        json,
        name: args
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
        filter: args.filter.clone(),
        ended: Vec::new(),
    };
    // The view keeps a history of every flow at each interval (1 s unless given).
    let interval = match args.interval {
        Some(d) => Some(d),
        None if view => Some(Duration::from_secs(1)),
        None => None,
    }
    .map(|d| (d.as_nanos() as u64).max(1));
    let mut history = tui::history::History::default();
    let mut dists: FastMap<FlowKey, Distributions> = FastMap::default();
    let mut source = CaptureFlows::default();
    let (mut last_refresh, mut next_report, mut last_ts) = (None::<u64>, None::<u64>, 0u64);
    let mut failed = None;
    while let Some(ts) = capture.next_packet(|p| {
        if let Some(c) = tally.walk(p) {
            source.packet(p, &c, &mut table);
        }
        p.ts_ns
    })? {
        progress.tick(capture);
        last_ts = last_ts.max(ts);
        // Reports due before this packet, each at its interval's end.
        if let Some(every) = interval {
            let due = next_report.get_or_insert(ts - ts % every + every);
            while ts >= *due {
                source.refresh(&mut table, *due);
                let rows = source.rows_at(&table, *due);
                if view {
                    // Bounded: past this many flows at once, no history (the detail
                    // still has the distributions).
                    if rows.len() <= VIEW_HISTORY_FLOWS {
                        history.update(rows.iter());
                    }
                } else {
                    let heading = format!("capture time {}", ts_text(*due));
                    sink.report(rows, *due, Some(heading))?;
                }
                *due += every;
            }
        }
        if last_refresh.is_none_or(|t| ts >= t + REFRESH_NS) {
            source.refresh(&mut table, ts);
            source.expire(&mut table, ts, expiry, |r, d| {
                if view && let Some(d) = d {
                    dists.insert(r.key(), d);
                }
                if failed.is_none()
                    && let Err(e) = sink.ended(r.clone(), ts)
                {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed.take() {
                return Err(e.into());
            }
            last_refresh = Some(ts);
        }
    }
    // Everything has arrived that ever will.
    table.settle();
    source.refresh(&mut table, last_ts);
    let mut rows = std::mem::take(&mut sink.ended);
    rows.extend(source.rows(&table));
    let left = source.leftovers();
    (tally.flows, tally.unattributed) = (left.flows, left.unattributed_fragments);
    if view {
        let rows: Vec<FlowRow> = rows.into_iter().filter(|r| sink.keep(r)).collect();
        for r in &rows {
            if let Some(d) = table.distributions(&r.key()) {
                dists.insert(r.key(), d);
            }
        }
        return Ok(Some(View {
            rows,
            history,
            dists,
            interval: Duration::from_nanos(interval.unwrap_or(REFRESH_NS)),
        }));
    }
    if sink.json {
        for r in rows {
            sink.ended(r, last_ts)?;
        }
    } else {
        let heading = interval.map(|_| format!("end of capture, {}", ts_text(last_ts)));
        sink.report(rows, last_ts, heading)?;
    }
    sink.out.flush()?;
    Ok(None)
}

/// Flows known at once beyond which the view keeps no history of them (300 points of
/// 40 octets each per flow).
const VIEW_HISTORY_FLOWS: usize = 2_000;

/// What the view of a capture shows.
struct View {
    rows: Vec<FlowRow>,
    history: tui::history::History,
    dists: FastMap<FlowKey, Distributions>,
    interval: Duration,
}

/// The capture's flows in the live view (sort, select, detail), until `q`; then the
/// summary line.
fn show(capture: &Merged, tally: &Tally, args: &AnalyzeArgs, v: View) -> Result<()> {
    let names = args
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let n = v.rows.len();
    let frame = tui::Frame {
        iface: names.clone(),
        observing: false,
        client_server: true,
        attach: vec![format!("capture: {names}, read by pdm analyze ({n} flows)")],
        hint: None,
        totals: Default::default(),
        rows: v.rows,
        labels: vec![tui::RowLabels::default(); n],
        flows_evicted: 0,
        flows_expired: 0,
        interval: v.interval,
        detail: None,
    };
    let ui = tui::Ui::start().context("starting the terminal view (use --json or --table)")?;
    ui.show(frame, v.history, |k| v.dists.get(k).cloned())
        .context("the terminal view")?;
    summary(capture, tally);
    Ok(())
}

/// The NDJSON line of one packet, if it carries a valid PDM.
fn packet_line(p: &Packet, tally: &mut Tally) -> Option<Value> {
    let c = tally.walk(p)?;
    let pdm = c.pdm?;
    let (proto, sport, dport) = match c.upper {
        Upper::Tcp { sport, dport, .. } => ("tcp", Some(sport), Some(dport)),
        Upper::Udp { sport, dport } => ("udp", Some(sport), Some(dport)),
        Upper::Icmpv6 { echo, .. } => ("icmpv6", echo.map(|e| e.0), echo.map(|e| e.0)),
        Upper::Opaque => (proto_name(c.upper_proto), None, None),
    };
    Some(json!({
        "type": "packet",
        "ts": p.ts_ns as f64 / 1e9,
        "src": Ipv6Addr::from(c.src).to_string(),
        "dst": Ipv6Addr::from(c.dst).to_string(),
        "proto": proto,
        "sport": sport,
        "dport": dport,
        "length": p.wire_len,
        "fragment_offset": c.fragment.map(|f| f.offset),
        "psn_this": pdm.psn_this,
        "psn_last_recv": pdm.psn_last_recv,
        "scale_dtlr": pdm.scale_dtlr,
        "dtlr": pdm.dtlr,
        "scale_dtls": pdm.scale_dtls,
        "dtls": pdm.dtls,
        "dtlr_us": decoded_us(&pdm, true),
        "dtls_us": decoded_us(&pdm, false),
        "dtlr_fault": fault(&pdm, true),
        "dtls_fault": fault(&pdm, false),
    }))
}

fn delta(pdm: &PdmFields, dtlr: bool) -> DeltaTime {
    if dtlr {
        DeltaTime {
            delta: pdm.dtlr,
            scale: pdm.scale_dtlr,
        }
    } else {
        DeltaTime {
            delta: pdm.dtls,
            scale: pdm.scale_dtls,
        }
    }
}

/// The delta time in µs, or null where RFC 8250's encoder cannot have produced it.
fn decoded_us(pdm: &PdmFields, dtlr: bool) -> Option<f64> {
    decode_received(delta(pdm, dtlr))
        .ok()
        .map(|ns| ns as f64 / 1e3)
}

fn fault(pdm: &PdmFields, dtlr: bool) -> Option<&'static str> {
    decode_received(delta(pdm, dtlr)).err().map(|f| match f {
        TimeFault::Malformed => "malformed",
        TimeFault::NotRfcExact => "not_rfc_exact",
        TimeFault::Implausible => "implausible",
    })
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        50 => "esp",
        _ => "other",
    }
}

/// The NDJSON flow objects of `files`, one per flow every `interval` of capture time
/// and at each flow's end, into `out` (what `pdm report` reads a capture as).
pub fn flow_ndjson(
    files: &[PathBuf],
    interval: Duration,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let args = AnalyzeArgs {
        files: files.to_vec(),
        json: true,
        packets: false,
        filter: None,
        window: interval,
        interval: Some(interval),
        idle_timeout: Duration::from_secs(60),
        table: false,
    };
    let mut capture = Merged::open(files)?;
    let mut progress = Progress::new(&capture);
    let mut tally = Tally::default();
    let result = flows(
        &args,
        &mut capture,
        &mut tally,
        &mut progress,
        out,
        true,
        false,
    );
    progress.finish();
    result?;
    summary(&capture, &tally);
    Ok(())
}

/// The summary line on stderr, and a line per file that was cut short.
fn summary(capture: &Merged, t: &Tally) {
    let (mut records, mut ipv6) = (0, 0);
    for r in capture.readers() {
        records += r.summary().records;
        ipv6 += r.summary().ipv6;
    }
    let files = match capture.readers() {
        [one] => one.name().to_owned(),
        all => format!("{} files", all.len()),
    };
    let mut line = format!(
        "pdm analyze: {files}: {records} packets read, {ipv6} IPv6, {} with PDM, {} with malformed PDM, {} whose header chain could not be walked",
        t.pdm, t.bad_pdm, t.unwalkable
    );
    if t.flows > 0 {
        line.push_str(&format!(", {} flows", t.flows));
    }
    if t.unattributed > 0 {
        line.push_str(&format!(
            ", {} later fragments whose first fragment was not in the capture",
            t.unattributed
        ));
    }
    eprintln!("{line}");
    for r in capture.readers() {
        if let Some(at) = r.summary().truncated_at {
            eprintln!(
                "pdm analyze: {}: the file is cut short at octet {at}; its last record is incomplete (figures are of what was read)",
                r.name()
            );
        }
    }
}

/// A capture time (ns since the Unix epoch) as UTC, to the millisecond.
pub fn ts_text(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ns / 1_000_000 % 1000
    )
}

/// A progress bar on stderr while a capture is read, when stderr is a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    packets: u64,
}

impl Progress {
    fn new(capture: &Merged) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(capture.progress().1);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Self { bar, packets: 0 }
    }

    fn tick(&mut self, capture: &Merged) {
        self.packets += 1;
        // The bar redraws itself at most 20 times a second; asking it less often keeps
        // the read loop at its pace.
        if self.packets.is_multiple_of(65_536)
            && let Some(bar) = &self.bar
        {
            bar.set_position(capture.progress().0);
            bar.set_message(format!("{} packets", self.packets));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn capture_times_read_as_utc() {
        assert_eq!(super::ts_text(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(
            super::ts_text(1_733_406_245_123_456_789),
            "2024-12-05 13:44:05.123 UTC"
        );
        assert_eq!(
            super::ts_text(951_782_400_000_000_000),
            "2000-02-29 00:00:00.000 UTC"
        );
    }
}
