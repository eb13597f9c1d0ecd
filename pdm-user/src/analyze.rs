//! `pdm analyze`: PDM in capture files, pdm's own or anyone else's (RFC 8250: PDM "may
//! be interpreted in real time or after the fact"). Captures are read as a source
//! ([`crate::sources::capture`]), each packet's chain walked by the shared parser
//! ([`pdm_common::chain`]).
//!
//! `--packets` prints every packet that carries PDM, its fields raw and decoded. The
//! per-flow figures (RTT from the PDM fields alone, server and client delay, loss each
//! way), which go through the metrics engine, are not built yet.

use std::{
    io::Write as _,
    net::Ipv6Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use pdm_common::{
    chain::{self, Upper},
    time::{DeltaTime, TimeFault, decode_received},
    wire::PdmFields,
};
use serde_json::{Value, json};

use crate::sources::capture::{self, Packet, ReadSummary};

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
        bail!(
            "per-flow figures from captures are not built yet; `pdm analyze --packets FILE` prints every packet carrying PDM"
        );
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
