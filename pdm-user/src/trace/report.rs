//! The trace report as text (both traces side by side, then the verdict) or as one
//! JSON document.

use std::{fmt::Write as _, net::Ipv6Addr};

use serde_json::{Value, json};

use super::{
    Hop, Proto, ReplyKind, Report,
    verdict::{DestinationAnswer, Finding},
};

/// Milliseconds to the microsecond: more digits would only be noise.
fn ms(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn json(r: &Report) -> Value {
    let addr = |a: Option<Ipv6Addr>| a.map(|a| a.to_string());
    let hops = |hs: &[Hop]| -> Vec<Value> {
        hs.iter()
            .map(|h| {
                json!({
                    "hop": h.hop,
                    "responder": addr(h.responder()),
                    "name": h.responder().and_then(|a| r.names.get(&a)),
                    "responders": h.responders.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "rtt_ms": h.rtt_ms().into_iter().map(ms).collect::<Vec<_>>(),
                    "lost": h.rtts.iter().filter(|t| t.is_none()).count(),
                    "reply": h.reply.map(ReplyKind::label),
                    "reached": h.reached,
                    "quoted_pdm": h.quoted_pdm,
                    "reply_pdm": h.reply_pdm,
                })
            })
            .collect()
    };
    let v = &r.verdict;
    json!({
        "host": r.host,
        "target": r.target.to_string(),
        "source": r.source.to_string(),
        "proto": r.proto.name(),
        "port": r.port,
        "max_hops": r.max_hops,
        "probes": r.probes,
        "wait_ms": r.wait.as_secs_f64() * 1000.0,
        "plain": hops(&r.plain),
        "pdm": hops(&r.pdm),
        "verdict": {
            "last_pdm_hop": v.last_pdm_hop,
            "last_pdm_responder": addr(v.last_pdm_responder),
            "last_pdm_reply": v.last_pdm_reply.map(ReplyKind::label),
            "next_hop": v.next_hop,
            "next_hop_responder": addr(v.next_hop_responder),
            "reached_with_pdm": v.reached_with_pdm,
            "reached_plain": v.reached_plain,
            "finding": finding_name(v.finding),
            "summary": v.summary(),
            "destination": v.destination_line(),
            "plain_destination": v.plain_destination.as_ref().map(destination),
            "pdm_destination": v.pdm_destination.as_ref().map(destination),
        },
    })
}

fn destination(d: &DestinationAnswer) -> Value {
    json!({
        "hop": d.hop,
        "reply": d.reply.label(),
        "median_rtt_ms": d.median_rtt_ms.map(ms),
        "quoted_pdm": d.quoted_pdm,
        "reply_pdm": d.reply_pdm,
    })
}

fn finding_name(f: Finding) -> &'static str {
    match f {
        Finding::PdmReaches => "pdm_reaches",
        Finding::DroppedAfter => "dropped_after",
        Finding::DestinationDrops => "destination_drops",
        Finding::RejectedAt => "rejected_at",
        Finding::NoDifference => "no_difference",
        Finding::OnlyPdmReaches => "only_pdm_reaches",
    }
}

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let target = if r.host == r.target.to_string() {
        r.host.clone()
    } else {
        format!("{} ({})", r.host, r.target)
    };
    let port = match (r.proto, r.port) {
        (Proto::Udp, Some(p)) if p == super::UDP_BASE_PORT => format!(" to port {p}+"),
        (_, Some(p)) => format!(" to port {p}"),
        (_, None) => String::new(),
    };
    let _ = writeln!(
        out,
        "pdm trace to {target} from {}: {}{port}, {} hops max, {} probes per hop, wait {:?}",
        r.source,
        r.proto.name(),
        r.max_hops,
        r.probes,
        r.wait
    );
    out.push('\n');

    let rows = r.plain.len().max(r.pdm.len());
    let cell = |trace: &[Hop], i: usize| trace.get(i).map_or(String::new(), |h| hop_cell(h, r));
    let left: Vec<String> = (0..rows).map(|i| cell(&r.plain, i)).collect();
    let width = left
        .iter()
        .map(|c| c.chars().count())
        .chain(["without PDM".len()])
        .max()
        .unwrap_or(0);
    let _ = writeln!(out, "hop  {:<width$}   with PDM", "without PDM");
    for (i, l) in left.iter().enumerate() {
        let _ = writeln!(out, "{:>3}  {l:<width$}   {}", i + 1, cell(&r.pdm, i));
    }
    out.push('\n');
    let _ = writeln!(out, "verdict: {}", r.verdict.summary());
    let _ = writeln!(out, "destination: {}", r.verdict.destination_line());
    if let Some(note) = pdm_removed_note(&r.pdm) {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// `responder (name)  0.123 ms  *  0.098 ms [reply]`, or `*  *  *` for a silent hop.
fn hop_cell(h: &Hop, r: &Report) -> String {
    let rtts: Vec<String> = h
        .rtts
        .iter()
        .map(|t| t.map_or("*".to_owned(), |t| format!("{t:.3} ms")))
        .collect();
    let Some(first) = h.responder() else {
        return rtts.join("  ");
    };
    let mut s = first.to_string();
    if let Some(name) = r.names.get(&first) {
        let _ = write!(s, " ({name})");
    }
    let _ = write!(s, "  {}", rtts.join("  "));
    for other in &h.responders[1..] {
        let _ = write!(s, " (also {other})");
    }
    if let Some(reply) = h.reply.filter(|k| *k != ReplyKind::TimeExceeded) {
        let _ = write!(s, " [{}]", reply.label());
    }
    s
}

/// Hops whose errors quoted a PDM probe without its PDM: someone removed the header
/// but let the packet through.
fn pdm_removed_note(pdm: &[Hop]) -> Option<String> {
    let hops: Vec<String> = pdm
        .iter()
        .filter(|h| h.quoted_pdm == Some(false))
        .map(|h| h.hop.to_string())
        .collect();
    if hops.is_empty() {
        return None;
    }
    Some(format!(
        "answers from hop {} quote the probe without its PDM header: removed on the way",
        hops.join(", ")
    ))
}
