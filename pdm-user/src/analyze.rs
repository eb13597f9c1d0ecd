//! `pdm analyze`: PDM in capture files, pdm's own or anyone else's (RFC 8250: PDM "may
//! be interpreted in real time or after the fact"). Captures are read as a source
//! ([`crate::sources::capture`]), each packet's chain walked by the shared parser
//! ([`pdm_common::chain`]).
//!
//! By default, per-flow figures: the capture's flows ([`capture::CaptureFlows`]) feed
//! the same metrics engine as the kernel does in `pdm run`, and the rows go out as the
//! same NDJSON flow objects (`local_*` = the client). `--packets` prints every packet
//! that carries PDM instead, its fields raw and decoded.

use std::{
    io::Write as _,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use pdm_common::{
    chain::{self, Upper},
    time::{DeltaTime, TimeFault, decode_received},
    wire::PdmFields,
};
use serde_json::{Value, json};

use crate::{
    engine::{Table, TableConfig},
    filter::Filter,
    sinks::ndjson,
    sources::capture::{self, CaptureFlows, Packet, ReadSummary},
};

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Capture files (pcap or pcapng; Ethernet, Linux cooked SLL/SLL2 or raw IP), read
    /// one after another.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// One NDJSON object per packet carrying PDM: capture time, addresses, ports, the
    /// six PDM fields as sent and their delta times decoded.
    #[arg(long)]
    pub packets: bool,
    /// Only flows that match, e.g. "udp", "port 443" (the syntax of `pdm run --filter`).
    #[arg(long, value_parser = Filter::parse)]
    pub filter: Option<Filter>,
    /// Span of the sliding window for the `rtt_us_*` and `server_delay_us_*` figures
    /// (capture time, before the last packet); the `*_all_*` figures cover the whole
    /// capture.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub window: Duration,
}

/// What the packets of a read were, for the summary line.
#[derive(Default)]
struct Tally {
    read: ReadSummary,
    pdm: u64,
    bad_pdm: u64,
    unwalkable: u64,
}

pub fn run(args: &AnalyzeArgs) -> Result<()> {
    if !args.packets {
        return flows(args);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    for file in &args.files {
        let mut tally = Tally::default();
        let mut failed = None;
        tally.read = capture::read(file, |p| {
            if failed.is_some() {
                return;
            }
            if let Some(line) = packet_line(p, &mut tally)
                && let Err(e) = writeln!(out, "{line}")
            {
                failed = Some(e);
            }
        })?;
        // A reader that stopped reading (`| head`) ends the output, not in an error.
        match failed.map_or_else(|| out.flush(), Err) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing to stdout"),
            Ok(()) => {}
        }
        summary(file, &tally);
    }
    Ok(())
}

/// The engine refreshes its flows from the capture's every this much capture time (the
/// kernel's narrow counters are widened at each refresh, as in `pdm run`).
const REFRESH_NS: u64 = 1_000_000_000;

/// Per-flow figures of all files, one NDJSON flow object per flow at the end.
fn flows(args: &AnalyzeArgs) -> Result<()> {
    let mut table = Table::new(TableConfig {
        window: args.window,
        // A capture's flows are all reported at the end; none expires on the way.
        idle_timeout: Duration::from_secs(u64::from(u32::MAX)),
        closed_linger: Duration::from_secs(u64::from(u32::MAX)),
    });
    let mut source = CaptureFlows::default();
    let mut last_refresh = 0u64;
    let mut last_ts = 0u64;
    for file in &args.files {
        let mut file_tally = Tally::default();
        file_tally.read = capture::read(file, |p| {
            let Ok(c) = chain::parse(p.ipv6) else {
                file_tally.unwalkable += 1;
                return;
            };
            file_tally.bad_pdm += u64::from(c.bad_pdm);
            file_tally.pdm += u64::from(c.pdm.is_some());
            source.packet(p, &c, &mut table);
            last_ts = last_ts.max(p.ts_ns);
            if p.ts_ns >= last_refresh + REFRESH_NS {
                table.refresh(source.slots(), p.ts_ns);
                last_refresh = p.ts_ns;
            }
        })?;
        summary(file, &file_tally);
    }
    // Everything has arrived that ever will.
    table.settle();
    table.refresh(source.slots(), last_ts);
    let keep = |r: &crate::engine::FlowRow| args.filter.as_ref().is_none_or(|f| f.matches(r));
    let mut rows = Vec::new();
    table.rows_into(&mut rows, last_ts, true, true, keep);
    let name = args
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let ts = last_ts as f64 / 1e9;
    for r in &rows {
        match ndjson::write_flow(&mut out, ts, &name, r, None, None) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.context("writing to stdout")?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// The NDJSON line of one packet, if it carries a valid PDM.
fn packet_line(p: &Packet, tally: &mut Tally) -> Option<Value> {
    let Ok(c) = chain::parse(p.ipv6) else {
        tally.unwalkable += 1;
        return None;
    };
    if c.bad_pdm {
        tally.bad_pdm += 1;
    }
    let pdm = c.pdm?;
    tally.pdm += 1;
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

/// One line on stderr per file: what was read, and where a cut file ends.
fn summary(file: &Path, t: &Tally) {
    eprintln!(
        "pdm analyze: {}: {} packets read, {} IPv6, {} with PDM, {} with malformed PDM, {} whose header chain could not be walked",
        file.display(),
        t.read.records,
        t.read.ipv6,
        t.pdm,
        t.bad_pdm,
        t.unwalkable
    );
    if let Some(at) = t.read.truncated_at {
        eprintln!(
            "pdm analyze: {}: the file is cut short at octet {at}; its last record is incomplete (figures are of what was read)",
            file.display()
        );
    }
}
