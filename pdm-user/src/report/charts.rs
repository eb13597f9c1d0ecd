//! The charts of a flow, as SVG (plotters' SVG backend; its text is laid out with a
//! built-in estimate, so no font is looked up or fetched).

use plotters::{coord::Shift, prelude::*};

use super::input::Flow;

const SIZE: (u32, u32) = (760, 280);
const RTT: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const SERVER: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const LOSS: RGBColor = RGBColor(0x94, 0x67, 0xbd);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws `f` on a fresh SVG; `f` gives up (None) at the first thing it cannot draw.
fn draw(f: impl FnOnce(&Area) -> Option<()>) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        // A chart that cannot be drawn leaves its frame: the report still opens.
        let _ = root.fill(&WHITE);
        let _ = f(&root);
        let _ = root.present();
    }
    svg
}

/// Seconds since the flow's first point.
fn xs(flow: &Flow) -> Vec<f64> {
    let t0 = flow.points.first().map_or(0.0, |p| p.ts);
    flow.points.iter().map(|p| p.ts - t0).collect()
}

/// RTT and server delay over time: p50 and max of each interval.
pub fn delays(flow: &Flow) -> String {
    let x = xs(flow);
    let series: [(&str, Vec<Option<f64>>, RGBColor, bool); 4] = [
        (
            "RTT p50",
            flow.points.iter().map(|p| p.rtt_p50).collect(),
            RTT,
            true,
        ),
        (
            "RTT max",
            flow.points.iter().map(|p| p.rtt_max).collect(),
            RTT,
            false,
        ),
        (
            "server delay p50",
            flow.points.iter().map(|p| p.server_delay_p50).collect(),
            SERVER,
            true,
        ),
        (
            "server delay max",
            flow.points.iter().map(|p| p.server_delay_max).collect(),
            SERVER,
            false,
        ),
    ];
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().flatten())
        .fold(0.0f64, |m, &v| m.max(v))
        .max(1.0)
        * 1.1;
    let xmax = x.last().copied().unwrap_or(0.0).max(1.0);
    draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("RTT and server delay over time", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("seconds since the flow's first report")
            .y_desc("µs")
            .draw()
            .ok()?;
        for (name, values, color, solid) in series {
            let points: Vec<(f64, f64)> = x
                .iter()
                .zip(&values)
                .filter_map(|(&x, v)| Some((x, (*v)?)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let style = if solid {
                color.stroke_width(2)
            } else {
                color.mix(0.4).stroke_width(1)
            };
            chart
                .draw_series(LineSeries::new(points, style))
                .ok()?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .ok()?;
        Some(())
    })
}

/// Log-spaced bins (4 per octave) of the per-interval medians, and the flow's p50, p90
/// and p99 since it started marked on them.
pub fn distribution(flow: &Flow) -> String {
    let rtt: Vec<f64> = flow.points.iter().filter_map(|p| p.rtt_p50).collect();
    let sd: Vec<f64> = flow
        .points
        .iter()
        .filter_map(|p| p.server_delay_p50)
        .collect();
    let marks: Vec<(&str, f64)> = [
        ("p50", "rtt_all_us_p50"),
        ("p90", "rtt_all_us_p90"),
        ("p99", "rtt_all_us_p99"),
    ]
    .iter()
    .filter_map(|(n, k)| Some((*n, flow.last[*k].as_f64()?)))
    .collect();
    // The marks inside the range too.
    let all: Vec<f64> = rtt
        .iter()
        .chain(&sd)
        .copied()
        .chain(marks.iter().map(|m| m.1))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::MAX, f64::min).max(0.001);
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 2.0);
    let (l0, l1) = ((lo.log2() * 4.0).floor(), (hi.log2() * 4.0).ceil() + 1.0);
    let bins = ((l1 - l0) as usize).clamp(1, 400);
    let count = |v: &[f64]| {
        let mut c = vec![0u32; bins];
        for x in v.iter().filter(|x| **x > 0.0) {
            let i = ((x.log2() * 4.0).floor() - l0) as usize;
            c[i.min(bins - 1)] += 1;
        }
        c
    };
    let (crtt, csd) = (count(&rtt), count(&sd));
    let ymax = crtt.iter().chain(&csd).copied().max().unwrap_or(1).max(1);
    draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Distribution of the per-interval medians",
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(l0..l1, 0u32..ymax + 1)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("µs (log scale)")
            .y_desc("intervals")
            .x_label_formatter(&|v| format!("{:.0}", 2f64.powf(*v / 4.0)))
            .draw()
            .ok()?;
        for (name, counts, color, shift) in [
            ("RTT", &crtt, RTT, 0.0),
            ("server delay", &csd, SERVER, 0.5),
        ] {
            chart
                .draw_series(
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| **c > 0)
                        .map(|(i, &c)| {
                            let x = l0 + i as f64 + shift;
                            Rectangle::new([(x, 0), (x + 0.5, c)], color.mix(0.7).filled())
                        }),
                )
                .ok()?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        for (name, v) in &marks {
            let x = v.max(0.001).log2() * 4.0;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, 0), (x, ymax + 1)],
                    BLACK.stroke_width(1),
                )))
                .ok()?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("RTT {name}"),
                    (x, ymax),
                    ("sans-serif", 12),
                )))
                .ok()?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .ok()?;
        Some(())
    })
}

/// PSNs lost in each interval.
pub fn loss(flow: &Flow) -> String {
    let x = xs(flow);
    let lost = per_interval_loss(flow);
    let ymax = lost.iter().copied().max().unwrap_or(0).max(1);
    let xmax = x.last().copied().unwrap_or(0.0).max(1.0);
    draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Loss over time (the peer's PSNs)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..xmax * 1.02, 0u64..ymax + 1)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("seconds since the flow's first report")
            .y_desc("lost")
            .draw()
            .ok()?;
        let w = (xmax / x.len().max(1) as f64 * 0.6).max(0.01);
        chart
            .draw_series(
                x.iter()
                    .zip(&lost)
                    .filter(|(_, l)| **l > 0)
                    .map(|(&x, &l)| Rectangle::new([(x, 0), (x + w, l)], LOSS.filled())),
            )
            .ok()?;
        Some(())
    })
}

/// Lost PSNs per interval, from the cumulative counts.
pub fn per_interval_loss(flow: &Flow) -> Vec<u64> {
    let mut prev = 0;
    flow.points
        .iter()
        .map(|p| {
            let d = p.rx_lost.saturating_sub(prev);
            prev = p.rx_lost;
            d
        })
        .collect()
}
