//! The trace report as text (both traces side by side, then the verdict) or as one
//! JSON object per destination: the row of facts (row.rs) split into top-level keys
//! and `verdict`, with both traces hop by hop.

use std::{fmt::Write as _, net::Ipv6Addr};

use serde_json::{Map, Value, json};

use super::{
    Hop, Proto, ReplyKind, Report,
    names::NameMap,
    row::{Row, TOP_LEVEL},
    verdict::DestinationAnswer,
};

/// Milliseconds to the microsecond: more digits would only be noise.
fn ms(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Every address a report names, to look up.
pub fn addresses(r: &Report) -> Vec<Ipv6Addr> {
    let mut v = vec![r.source, r.target];
    v.extend(
        r.plain
            .iter()
            .chain(&r.pdm)
            .flat_map(|h| h.responders.clone()),
    );
    v
}

/// A row as JSON: (top-level keys, `verdict` keys). The hops that look rate-limited
/// are a list here, not CSV's one field.
fn split_row(row: &Row) -> (Map<String, Value>, Map<String, Value>) {
    let Value::Object(all) = serde_json::to_value(row).expect("a row is plain data") else {
        unreachable!("a struct serializes to an object")
    };
    let (mut top, mut verdict) = (Map::new(), Map::new());
    for (k, v) in all {
        if TOP_LEVEL.contains(&k.as_str()) {
            top.insert(k, v);
        } else {
            verdict.insert(k, v);
        }
    }
    verdict.insert("rate_limited_hops".into(), json!(row.rate_limited()));
    (top, verdict)
}

/// A destination that was not traced: its row, no hops, and `error`.
pub fn failed_json(row: &Row) -> Value {
    let (mut top, verdict) = split_row(row);
    top.insert("error".into(), json!(row.summary));
    top.insert("plain".into(), json!([]));
    top.insert("pdm".into(), json!([]));
    top.insert("verdict".into(), Value::Object(verdict));
    Value::Object(top)
}

pub fn json(r: &Report, row: &Row, names: &NameMap) -> Value {
    let addr = |a: Option<Ipv6Addr>| a.map(|a| a.to_string());
    let hops = |hs: &[Hop]| -> Vec<Value> {
        hs.iter()
            .map(|h| {
                json!({
                    "hop": h.hop,
                    "responder": addr(h.responder()),
                    "name": h.responder().and_then(|a| names.get(&a)),
                    "responders": h.responders.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "rtt_ms": h.rtt_ms().into_iter().map(ms).collect::<Vec<_>>(),
                    "lost": h.rtts.iter().filter(|t| t.is_none()).count(),
                    "retried": h.retried,
                    "reply": h.reply.map(ReplyKind::label),
                    "reached": h.reached,
                    "quoted_pdm": h.quoted_pdm,
                    "reply_pdm": h.reply_pdm,
                })
            })
            .collect()
    };
    let v = &r.verdict;
    let (mut top, mut verdict) = split_row(row);
    verdict.insert(
        "last_pdm_reply".into(),
        json!(v.last_pdm_reply.map(ReplyKind::label)),
    );
    verdict.insert("destination".into(), json!(v.destination_line()));
    verdict.insert(
        "plain_destination".into(),
        json!(v.plain_destination.as_ref().map(destination)),
    );
    verdict.insert(
        "pdm_destination".into(),
        json!(v.pdm_destination.as_ref().map(destination)),
    );
    for (k, val) in [
        ("proto", json!(r.proto.name())),
        ("port", json!(r.port)),
        ("max_hops", json!(r.max_hops)),
        ("probes", json!(r.probes)),
        ("retries", json!(r.retries)),
        ("pace_ms", json!(r.pace.as_secs_f64() * 1000.0)),
        ("wait_ms", json!(r.wait.as_secs_f64() * 1000.0)),
        ("error", Value::Null),
        ("plain", json!(hops(&r.plain))),
        ("pdm", json!(hops(&r.pdm))),
        ("verdict", Value::Object(verdict)),
    ] {
        top.insert(k.into(), val);
    }
    Value::Object(top)
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

pub fn text(r: &Report, names: &NameMap) -> String {
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
        "pdm trace to {target} from {}: {}{port}, {} hops max, {} probes per hop (+{} retries), pace {:?}, wait {:?}",
        r.source,
        r.proto.name(),
        r.max_hops,
        r.probes,
        r.retries,
        r.pace,
        r.wait
    );
    out.push('\n');

    let rows = r.plain.len().max(r.pdm.len());
    let cell = |trace: &[Hop], i: usize| trace.get(i).map_or(String::new(), |h| hop_cell(h, names));
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
    if !r.verdict.rate_limited_hops.is_empty() {
        let hops: Vec<String> = r
            .verdict
            .rate_limited_hops
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            out,
            "note: hops {} answered some probes and not others: rate-limited (or lossy); a longer --pace may help",
            hops.join(", ")
        );
    }
    out
}

/// `responder (name)  0.123 ms  *  0.098 ms [reply]`, or `*  *  *` for a silent hop.
fn hop_cell(h: &Hop, names: &NameMap) -> String {
    let rtts: Vec<String> = h
        .rtts
        .iter()
        .map(|t| t.map_or("*".to_owned(), |t| format!("{t:.3} ms")))
        .collect();
    let Some(first) = h.responder() else {
        return rtts.join("  ");
    };
    let mut s = first.to_string();
    if let Some(name) = names.get(&first) {
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
