//! One row of facts per destination, as the seed slides' study collects them: where
//! the trace started, where it went (and the name its address resolves back to, which
//! may be a CDN's), the last hop answering probes with PDM (n) and without, hop n+1 of
//! the plain trace, whether each trace got there, and the verdict. The same row is a
//! table line, a CSV record and (split into top-level keys and `verdict`) JSON.

use std::{fmt::Write as _, io, net::Ipv6Addr};

use serde::Serialize;

use super::{Report, TraceError, names::NameMap};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The destination as given.
    pub host: String,
    pub target: Option<String>,
    pub target_name: Option<String>,
    pub source: Option<String>,
    pub source_name: Option<String>,
    pub last_pdm_hop: Option<u8>,
    pub last_pdm_responder: Option<String>,
    pub last_pdm_name: Option<String>,
    pub last_plain_hop: Option<u8>,
    pub last_plain_responder: Option<String>,
    pub last_plain_name: Option<String>,
    pub next_hop: Option<u8>,
    pub next_hop_responder: Option<String>,
    pub next_hop_name: Option<String>,
    pub reached_plain: bool,
    pub reached_with_pdm: bool,
    /// A [`Finding`]'s name, or for a destination not traced why: `unresolvable`,
    /// `no_ipv6`, `no_route`, `error`.
    pub finding: &'static str,
    pub summary: String,
    pub why: Option<String>,
    /// Hops whose answers look rate-limited, space-separated (a CSV field holds one
    /// value; JSON has them as a list).
    pub rate_limited_hops: String,
}

/// The columns that are top-level keys of a destination's JSON object; every other
/// column is a key of its `verdict`.
pub const TOP_LEVEL: [&str; 5] = ["host", "target", "target_name", "source", "source_name"];

impl Row {
    pub fn traced(r: &Report, names: &NameMap) -> Row {
        let v = &r.verdict;
        let addr = |a: Option<Ipv6Addr>| a.map(|a| a.to_string());
        let name = |a: Option<Ipv6Addr>| a.and_then(|a| names.get(&a).cloned());
        Row {
            host: r.host.clone(),
            target: addr(Some(r.target)),
            target_name: name(Some(r.target)),
            source: addr(Some(r.source)),
            source_name: name(Some(r.source)),
            last_pdm_hop: v.last_pdm_hop,
            last_pdm_responder: addr(v.last_pdm_responder),
            last_pdm_name: name(v.last_pdm_responder),
            last_plain_hop: v.last_plain_hop,
            last_plain_responder: addr(v.last_plain_responder),
            last_plain_name: name(v.last_plain_responder),
            next_hop: v.next_hop,
            next_hop_responder: addr(v.next_hop_responder),
            next_hop_name: name(v.next_hop_responder),
            reached_plain: v.reached_plain,
            reached_with_pdm: v.reached_with_pdm,
            finding: v.finding.name(),
            summary: v.summary(),
            why: v.why.clone(),
            rate_limited_hops: v
                .rate_limited_hops
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// A destination that could not be traced: the row says why.
    pub fn failed(host: &str, target: Option<Ipv6Addr>, err: &TraceError, names: &NameMap) -> Row {
        Row {
            host: host.to_owned(),
            target: target.map(|a| a.to_string()),
            target_name: target.and_then(|a| names.get(&a).cloned()),
            source: None,
            source_name: None,
            last_pdm_hop: None,
            last_pdm_responder: None,
            last_pdm_name: None,
            last_plain_hop: None,
            last_plain_responder: None,
            last_plain_name: None,
            next_hop: None,
            next_hop_responder: None,
            next_hop_name: None,
            reached_plain: false,
            reached_with_pdm: false,
            finding: failure_name(err),
            summary: err.to_string(),
            why: None,
            rate_limited_hops: String::new(),
        }
    }

    pub fn rate_limited(&self) -> Vec<u8> {
        self.rate_limited_hops
            .split_whitespace()
            .filter_map(|h| h.parse().ok())
            .collect()
    }

    /// The verdict in a few words, for the table.
    fn verdict_cell(&self) -> String {
        let n = self.last_pdm_hop.unwrap_or(0);
        let short = match self.finding {
            "pdm_reaches" => "reached with PDM".to_owned(),
            "dropped_after" => format!("dropped after hop {n}"),
            "destination_drops" => format!("dropped after hop {n} (the destination)"),
            "rejected_at" => format!("rejected at hop {n}"),
            "no_difference" => "no difference".to_owned(),
            "only_pdm_reaches" => "only PDM reached".to_owned(),
            "unreachable" => "unreachable".to_owned(),
            "inconclusive" => "inconclusive".to_owned(),
            // Not traced: the reason is the whole story.
            _ => self.summary.clone(),
        };
        if self.rate_limited_hops.is_empty() {
            short
        } else {
            format!("{short} (rate-limited?)")
        }
    }
}

fn failure_name(err: &TraceError) -> &'static str {
    match err {
        TraceError::Unresolvable { .. } => "unresolvable",
        TraceError::NoIpv6(_) => "no_ipv6",
        TraceError::NoRoute(_) => "no_route",
        _ => "error",
    }
}

/// The findings a survey's summary counts, in its order, with their words there.
pub const CATEGORIES: [(&str, &str); 12] = [
    ("pdm_reaches", "reached with PDM"),
    ("dropped_after", "dropped at hop n+1"),
    ("destination_drops", "dropped by the destination"),
    ("rejected_at", "rejected"),
    ("only_pdm_reaches", "reached only with PDM"),
    ("no_difference", "not reached, no difference"),
    ("unreachable", "unreachable"),
    ("inconclusive", "inconclusive"),
    ("unresolvable", "not resolved"),
    ("no_ipv6", "no IPv6 address"),
    ("no_route", "no route"),
    ("error", "failed"),
];

/// "N destinations: reached with PDM a, dropped at hop n+1 b, …" (only counts above
/// zero), and how many looked rate-limited.
pub fn summary(rows: &[Row]) -> String {
    let counts: Vec<String> = CATEGORIES
        .iter()
        .filter_map(|(finding, words)| {
            let c = rows.iter().filter(|r| r.finding == *finding).count();
            (c > 0).then(|| format!("{words} {c}"))
        })
        .collect();
    let mut s = format!(
        "{} destination{}: {}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        counts.join(", ")
    );
    let limited = rows
        .iter()
        .filter(|r| !r.rate_limited_hops.is_empty())
        .count();
    if limited > 0 {
        let _ = write!(
            s,
            "; answers looked rate-limited on the way to {limited} (a longer --pace may help)"
        );
    }
    s
}

pub fn csv(rows: &[Row], out: impl io::Write) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}

/// The rows as a table: one line per destination, then notes for the verdicts that
/// need more words than a cell.
pub fn table(rows: &[Row]) -> String {
    let hop = |h: Option<u8>, a: &Option<String>, n: &Option<String>| match (h, a) {
        (Some(h), Some(a)) => with_name(&format!("{h} {a}"), n),
        (Some(h), None) => format!("{h} *"),
        _ => "-".to_owned(),
    };
    let header = [
        "destination",
        "address (name)",
        "PDM to hop n",
        "plain to hop",
        "hop n+1 (plain)",
        "reached",
        "verdict",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.host.clone(),
                r.target
                    .as_ref()
                    .map_or("-".to_owned(), |t| with_name(t, &r.target_name)),
                hop(r.last_pdm_hop, &r.last_pdm_responder, &r.last_pdm_name),
                hop(
                    r.last_plain_hop,
                    &r.last_plain_responder,
                    &r.last_plain_name,
                ),
                hop(r.next_hop, &r.next_hop_responder, &r.next_hop_name),
                match (r.reached_plain, r.reached_with_pdm) {
                    (true, true) => "both",
                    (true, false) => "plain only",
                    (false, true) => "PDM only",
                    (false, false) => "neither",
                }
                .to_owned(),
                r.verdict_cell(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: &[String]| {
        let mut l = String::new();
        for (i, cell) in c.iter().enumerate() {
            if i + 1 == c.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &header.map(str::to_owned));
    for c in &cells {
        line(&mut out, c);
    }
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let mut why = r.why.clone();
            if !r.rate_limited_hops.is_empty() {
                let hops = r.rate_limited_hops.replace(' ', ", ");
                let note = format!(
                    "hops {hops} answered some probes and not others: rate-limited (or lossy)"
                );
                why = Some(why.map_or(note.clone(), |w| format!("{w}; {note}")));
            }
            why.map(|w| format!("{}: {w}", r.host))
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "note: {n}");
        }
    }
    out
}

fn with_name(addr: &str, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("{addr} ({n})"),
        None => addr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Finding;

    fn row(host: &str, finding: &'static str) -> Row {
        Row::failed(
            host,
            None,
            &TraceError::NoIpv6(host.to_owned()),
            &NameMap::new(),
        )
        .with_finding(finding)
    }

    impl Row {
        fn with_finding(mut self, f: &'static str) -> Row {
            self.finding = f;
            self
        }
    }

    #[test]
    fn the_summary_counts_each_finding() {
        let mut rows = vec![
            row("a", "pdm_reaches"),
            row("b", "dropped_after"),
            row("c", "dropped_after"),
            row("d", "no_ipv6"),
        ];
        assert_eq!(
            summary(&rows),
            "4 destinations: reached with PDM 1, dropped at hop n+1 2, no IPv6 address 1"
        );
        rows[0].rate_limited_hops = "1 3".into();
        assert_eq!(rows[0].rate_limited(), [1, 3]);
        assert!(
            summary(&rows).ends_with("rate-limited on the way to 1 (a longer --pace may help)")
        );
        for (f, _) in CATEGORIES {
            assert!(
                f.starts_with("no_") || ["unresolvable", "error"].contains(&f) || {
                    [
                        Finding::PdmReaches,
                        Finding::DroppedAfter,
                        Finding::DestinationDrops,
                        Finding::RejectedAt,
                        Finding::NoDifference,
                        Finding::OnlyPdmReaches,
                        Finding::Unreachable,
                        Finding::Inconclusive,
                    ]
                    .iter()
                    .any(|x| x.name() == f)
                },
                "{f} is no finding"
            );
        }
    }

    #[test]
    fn csv_has_a_header_and_one_record_per_row() {
        let rows = [row("a.example", "no_ipv6"), row("b,example", "no_ipv6")];
        let mut out = Vec::new();
        csv(&rows, &mut out).expect("csv");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("host,target,target_name,source,source_name,"));
        // A comma in a field is quoted, not a new column.
        assert!(lines[2].starts_with("\"b,example\","), "{text}");
    }

    #[test]
    fn the_table_has_a_line_per_row_and_notes() {
        let mut r = row("a.example", "inconclusive");
        r.why = Some("hop 3 answered neither trace".into());
        let t = table(&[r, row("b.example", "no_ipv6")]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("destination"), "{t}");
        assert!(lines[1].starts_with("a.example") && lines[1].ends_with("inconclusive"));
        assert!(lines[2].ends_with("`b.example` has no IPv6 address (only IPv4)"));
        assert_eq!(lines[4], "note: a.example: hop 3 answered neither trace");
    }
}
