//! The report page: one self-contained file (inline SVG, inline style, a few lines of
//! inline script to sort the table; nothing fetched), written as well-formed XHTML so
//! that any XML reader can check it. The values behind each chart are on its figure as
//! `data-` attributes (JSON arrays), the same numbers as the NDJSON they came from.

use std::fmt::Write as _;

use super::{
    charts,
    input::{Flow, Recording},
};

/// `&`, `<`, `>` and quotes escaped, for text and attribute values alike.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A JSON array of the values, `null` where there is none.
fn array<T: serde::Serialize>(v: impl Iterator<Item = T>) -> String {
    escape(&serde_json::to_string(&v.collect::<Vec<T>>()).expect("numbers serialise"))
}

/// An SVG from plotters, without its XML declaration (one per document only).
fn inline(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(at) => &svg[at..],
        None => svg,
    }
}

/// Every chart of every flow: (flow index, chart name, SVG).
pub fn charts(rec: &Recording) -> Vec<(usize, &'static str, String)> {
    rec.flows
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            [
                (i, "delays", charts::delays(f)),
                (i, "distribution", charts::distribution(f)),
                (i, "loss", charts::loss(f)),
            ]
        })
        .collect()
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The page.
pub fn page(rec: &Recording, charts: &[(usize, &'static str, String)]) -> String {
    let mut s = String::with_capacity(1 << 20);
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"utf-8\"/><title>pdm report</title><style>{STYLE}</style></head><body>"
    );
    let _ = writeln!(s, "<h1>pdm report</h1>");
    let (first, last) = (rec.first_ts.unwrap_or(0.0), rec.last_ts.unwrap_or(0.0));
    let _ = writeln!(
        s,
        "<p class=\"covered\" data-first-ts=\"{first}\" data-last-ts=\"{last}\">Covers {} to {} ({:.1} s), {} flows.</p>",
        escape(&utc(first)),
        escape(&utc(last)),
        last - first,
        rec.flows.len()
    );
    run_section(&mut s, rec);
    flow_table(&mut s, rec);
    for (i, f) in rec.flows.iter().enumerate() {
        let _ = writeln!(
            s,
            "<section class=\"flow\" id=\"flow-{i}\"><h2>{}</h2>",
            escape(&f.name)
        );
        for (_, name, svg) in charts.iter().filter(|c| c.0 == i) {
            let _ = writeln!(
                s,
                "<figure class=\"chart\" data-flow=\"{i}\" data-chart=\"{name}\" {}>{}</figure>",
                data(f, name),
                inline(svg)
            );
        }
        let _ = writeln!(s, "</section>");
    }
    let _ = writeln!(s, "<script>{SCRIPT}</script></body></html>");
    s
}

/// The values behind a chart.
fn data(f: &Flow, chart: &str) -> String {
    let p = &f.points;
    match chart {
        "delays" => format!(
            "data-ts=\"{}\" data-rtt-us-p50=\"{}\" data-rtt-us-max=\"{}\" data-server-delay-us-p50=\"{}\" data-server-delay-us-max=\"{}\"",
            array(p.iter().map(|p| p.ts)),
            array(p.iter().map(|p| p.rtt_p50)),
            array(p.iter().map(|p| p.rtt_max)),
            array(p.iter().map(|p| p.server_delay_p50)),
            array(p.iter().map(|p| p.server_delay_max)),
        ),
        "distribution" => {
            let k = |k: &str| f.last[k].as_f64();
            format!(
                "data-rtt-all-us-p50=\"{}\" data-rtt-all-us-p90=\"{}\" data-rtt-all-us-p99=\"{}\" data-rtt-all-samples=\"{}\"",
                array(k("rtt_all_us_p50").into_iter()),
                array(k("rtt_all_us_p90").into_iter()),
                array(k("rtt_all_us_p99").into_iter()),
                f.last["rtt_all_samples"].as_u64().unwrap_or(0)
            )
        }
        _ => format!(
            "data-ts=\"{}\" data-rx-lost=\"{}\" data-lost-per-interval=\"{}\"",
            array(p.iter().map(|p| p.ts)),
            array(p.iter().map(|p| p.rx_lost)),
            array(charts::per_interval_loss(f).into_iter()),
        ),
    }
}

fn run_section(s: &mut String, rec: &Recording) {
    let _ = writeln!(s, "<h2>Run</h2><ul class=\"run\">");
    for r in &rec.runs {
        let attach: Vec<String> = r["attach"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(escape)).collect())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "<li>pdm {} on <b>{}</b>, from {}: {}</li>",
            escape(r["version"].as_str().unwrap_or("?")),
            escape(r["iface"].as_str().unwrap_or("?")),
            escape(&utc(r["ts"].as_f64().unwrap_or(0.0))),
            attach.join("; ")
        );
    }
    for c in &rec.captures {
        let _ = writeln!(
            s,
            "<li>capture <b>{}</b>, read by pdm analyze</li>",
            escape(&c.display().to_string())
        );
    }
    let _ = writeln!(s, "</ul>");
    if let Some(c) = &rec.counters
        && let Some(map) = c["counters"].as_object()
    {
        let _ = writeln!(
            s,
            "<table class=\"counters\"><thead><tr><th>counter</th><th>value</th></tr></thead><tbody>"
        );
        for (k, v) in map.iter().filter(|(_, v)| v.as_u64() != Some(0)) {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
                escape(k),
                v
            );
        }
        let _ = writeln!(s, "</tbody></table>");
    }
}

fn flow_table(s: &mut String, rec: &Recording) {
    let _ = writeln!(
        s,
        "<h2>Flows</h2><p>Click a column to sort.</p><table id=\"flows\"><thead><tr>"
    );
    for h in [
        "flow",
        "RTT p50 µs",
        "RTT p99 µs",
        "SRV p50 µs",
        "LOSS %",
        "PKT/s",
        "BYTES",
        "AGE s",
    ] {
        let _ = write!(s, "<th>{h}</th>");
    }
    let _ = writeln!(s, "</tr></thead><tbody>");
    for (i, f) in rec.flows.iter().enumerate() {
        let v = &f.last;
        let g = |k: &str| v[k].as_f64();
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let cells: [(Option<f64>, String); 7] = [
            (g("rtt_all_us_p50"), num(g("rtt_all_us_p50"), 1)),
            (g("rtt_all_us_p99"), num(g("rtt_all_us_p99"), 1)),
            (
                g("server_delay_all_us_p50"),
                num(g("server_delay_all_us_p50"), 1),
            ),
            (g("loss_percent"), num(g("loss_percent"), 2)),
            (
                Some(g("tx_pps").unwrap_or(0.0) + g("rx_pps").unwrap_or(0.0)),
                num(
                    Some(g("tx_pps").unwrap_or(0.0) + g("rx_pps").unwrap_or(0.0)),
                    1,
                ),
            ),
            (
                Some((n("tx_bytes") + n("rx_bytes")) as f64),
                (n("tx_bytes") + n("rx_bytes")).to_string(),
            ),
            (g("age_s"), num(g("age_s"), 1)),
        ];
        let _ = write!(
            s,
            "<tr><td data-v=\"{i}\"><a href=\"#flow-{i}\">{}</a></td>",
            escape(&f.name)
        );
        for (v, text) in cells {
            let _ = write!(
                s,
                "<td class=\"n\" data-v=\"{}\">{}</td>",
                v.unwrap_or(-1.0),
                escape(&text)
            );
        }
        let _ = writeln!(s, "</tr>");
    }
    let _ = writeln!(s, "</tbody></table>");
}

/// Seconds since the epoch as UTC.
fn utc(ts: f64) -> String {
    crate::analyze::ts_text((ts.max(0.0) * 1e9) as u64)
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}th{background:#eee;cursor:pointer}td.n{text-align:right;font-variant-numeric:tabular-nums}figure{margin:0.5em 0}section.flow{border-top:2px solid #888;margin-top:1.5em}";

/// Sorts the flow table by the clicked column (numbers by their data-v).
const SCRIPT: &str = "document.querySelectorAll('#flows th').forEach(function(th,col){var up=false;th.addEventListener('click',function(){var body=document.querySelector('#flows tbody');var rows=Array.prototype.slice.call(body.rows);up=!up;rows.sort(function(a,b){var x=parseFloat(a.cells[col].dataset.v),y=parseFloat(b.cells[col].dataset.v);return up?x-y:y-x;});rows.forEach(function(r){body.appendChild(r);});});});";
