//! The detail view of one flow (Enter on the table, Esc back): its RTT and server delay
//! over the history the view keeps (p50 and max per refresh), their distributions since
//! the flow started (the engine's log buckets) with p50/p90/p99, loss, reordering and
//! packets per second as sparklines, and its raw counters and names.

use pdm_common::flow::FlowKey;
use ratatui::{
    symbols,
    widgets::{Axis, Bar, BarChart, BarGroup, Chart, Dataset, GraphType, Sparkline},
};

use super::{history::History, *};

/// At most `n` bars: neighbouring buckets merged, labelled with their upper value.
fn bars(buckets: &[(u64, u64)], n: usize) -> Vec<(String, u64)> {
    let group = buckets.len().div_ceil(n.max(1)).max(1);
    buckets
        .chunks(group)
        .map(|c| {
            let top = c.last().map_or(0, |b| b.0);
            (format_ns(top), c.iter().map(|b| b.1).sum())
        })
        .collect()
}

pub(super) fn render(
    f: &mut ratatui::Frame,
    state: &ViewState,
    frame: &Frame,
    key: &FlowKey,
    history: &History,
) {
    let [title, chart, dists, lines, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Percentage(40),
        Constraint::Percentage(30),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let at = frame.rows.iter().position(|r| r.key() == *key);
    let row = at.map(|i| &frame.rows[i]);
    let labels = at.and_then(|i| frame.labels.get(i));
    let name = row.map_or_else(
        || "the flow has left the table".to_owned(),
        |r| {
            let remote = labels
                .and_then(|l| l.remote_name.clone())
                .unwrap_or_else(|| r.remote_addr.to_string());
            format!(
                "{} {} → {}",
                proto_name(r.proto),
                endpoint(&r.local_addr.to_string(), r.proto, r.local_port, true),
                endpoint(&remote, r.proto, r.remote_port, false)
            )
        },
    );
    let process = labels
        .and_then(|l| l.process.clone())
        .map_or(String::new(), |p| format!(" · {p}"));
    f.render_widget(
        Paragraph::new(vec![
            Line::styled(
                format!("{name}{process}"),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Line::raw(format!(
                "history: the last {} refreshes of {} (p50 solid, max dotted)",
                history::POINTS,
                format_duration(frame.interval)
            )),
        ]),
        title,
    );

    // Over time.
    let points: Vec<&history::Point> = history
        .get(key)
        .map(|r| r.points().collect())
        .unwrap_or_default();
    let step = frame.interval.as_secs_f64();
    let n = points.len();
    let series = |pick: fn(&history::Point) -> f32| -> Vec<(f64, f64)> {
        points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let v = pick(p);
                v.is_finite()
                    .then(|| (-((n - 1 - i) as f64) * step, f64::from(v)))
            })
            .collect()
    };
    let data = [
        (
            "RTT p50",
            series(|p| p.rtt_p50),
            Color::Cyan,
            symbols::Marker::Braille,
        ),
        (
            "RTT max",
            series(|p| p.rtt_max),
            Color::Blue,
            symbols::Marker::Dot,
        ),
        (
            "SRV p50",
            series(|p| p.server_delay_p50),
            Color::Red,
            symbols::Marker::Braille,
        ),
        (
            "SRV max",
            series(|p| p.server_delay_max),
            Color::Magenta,
            symbols::Marker::Dot,
        ),
    ];
    let ymax = data
        .iter()
        .flat_map(|d| d.1.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let xmin = -((n.max(2) - 1) as f64) * step;
    let datasets: Vec<Dataset> = data
        .iter()
        .map(|(name, pts, color, marker)| {
            Dataset::default()
                .name(*name)
                .marker(*marker)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(*color))
                .data(pts)
        })
        .collect();
    let us = |v: f64| format_ns((v * 1e3) as u64);
    f.render_widget(
        Chart::new(datasets)
            .block(Block::bordered().title(" RTT and server delay over time "))
            .x_axis(Axis::default().title("s ago").bounds([xmin, 0.0]).labels([
                format!("{:.0}", xmin),
                format!("{:.0}", xmin / 2.0),
                "now".to_owned(),
            ]))
            .y_axis(Axis::default().title("delay").bounds([0.0, ymax]).labels([
                "0".to_owned(),
                us(ymax / 2.0),
                us(ymax),
            ])),
        chart,
    );

    // Since the flow started.
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(dists);
    let empty = crate::engine::Distributions::default();
    let d = frame.detail.as_ref().unwrap_or(&empty);
    for (area, what, buckets, summary, color) in [
        (left, "RTT", &d.rtt, &d.rtt_all, Color::Cyan),
        (
            right,
            "server delay",
            &d.server_delay,
            &d.server_delay_all,
            Color::Red,
        ),
    ] {
        // The engine's own percentiles: the same figures as the NDJSON's `*_all_*`.
        let marks = [summary.p50, summary.p90, summary.p99]
            .map(|p| p.map_or_else(|| "-".to_owned(), format_ns));
        let title = format!(
            " {what} since start: p50 {} p90 {} p99 {} ",
            marks[0], marks[1], marks[2]
        );
        let width = usize::from(area.width.saturating_sub(2)) / 7;
        let grouped = bars(buckets, width.max(1));
        let group = BarGroup::default().bars(
            &grouped
                .iter()
                .map(|(label, v)| Bar::default().value(*v).label(Line::raw(label.clone())))
                .collect::<Vec<_>>(),
        );
        f.render_widget(
            BarChart::default()
                .block(Block::bordered().title(title))
                .bar_width(6)
                .bar_gap(1)
                .bar_style(Style::new().fg(color))
                .data(group),
            area,
        );
    }

    // Loss, reordering, rate; counters.
    let [sparks, counters] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(lines);
    let rows3 = Layout::vertical([Constraint::Ratio(1, 3); 3]).split(sparks);
    for (i, (what, values, color)) in [
        (
            "lost",
            points.iter().map(|p| u64::from(p.lost)).collect::<Vec<_>>(),
            Color::Yellow,
        ),
        (
            "reordered",
            points.iter().map(|p| u64::from(p.reordered)).collect(),
            Color::Green,
        ),
        (
            "pkt/s",
            points.iter().map(|p| p.pps as u64).collect(),
            Color::White,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let width = usize::from(rows3[i].width.saturating_sub(14));
        let shown = &values[values.len().saturating_sub(width)..];
        let [label, line] =
            Layout::horizontal([Constraint::Length(14), Constraint::Min(1)]).areas(rows3[i]);
        f.render_widget(
            Paragraph::new(format!("{what} {}", shown.last().copied().unwrap_or(0))),
            label,
        );
        f.render_widget(
            Sparkline::default()
                .data(shown)
                .style(Style::new().fg(color)),
            line,
        );
    }
    let text = match row {
        Some(r) => {
            let (cov_tx, cov_rx) = r.pdm_coverage();
            let pct = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), format_percent);
            vec![
                Line::raw(format!("packets {} out, {} in", r.tx_packets, r.rx_packets)),
                Line::raw(format!(
                    "PDM {} out ({}), {} in ({})",
                    r.tx_pdm,
                    pct(cov_tx),
                    r.rx_pdm,
                    pct(cov_rx)
                )),
                Line::raw(format!(
                    "bytes {} out, {} in",
                    format_bytes(r.tx_bytes),
                    format_bytes(r.rx_bytes)
                )),
                Line::raw(format!(
                    "lost {} reordered {} dup {}",
                    r.rx_lost, r.rx_reordered, r.rx_duplicate
                )),
                Line::raw(format!(
                    "age {} idle {}",
                    format_duration(r.age),
                    format_duration(r.idle)
                )),
            ]
        }
        None => vec![Line::raw("no counters: the flow has ended")],
    };
    f.render_widget(Paragraph::new(text), counters);
    f.render_widget(Paragraph::new(detail_keys()), keys);
    if state.help {
        render_help(f, chart);
    }
}

fn detail_keys() -> Line<'static> {
    let key = Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED);
    let mut spans = Vec::new();
    for (k, what) in [("Esc", "back to the table"), ("?", "help"), ("q", "quit")] {
        spans.push(Span::styled(k, key));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

/// The detail view of `key` into a test terminal (no live terminal needed).
#[cfg(test)]
pub(super) fn draw_for_test(
    f: &mut ratatui::Frame,
    state: &ViewState,
    frame: &Frame,
    key: &FlowKey,
    history: &History,
) {
    render(f, state, frame, key, history);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_buckets_merge_into_bars() {
        let b = [(10, 5), (20, 4), (40, 1)];
        assert_eq!(
            bars(&b, 2),
            vec![("20ns".to_owned(), 9), ("40ns".to_owned(), 1)]
        );
        assert_eq!(bars(&b, 10).len(), 3);
    }
}
