//! `pdm report` on a recorded demo run and on a capture: the page is well-formed
//! (parsed as XML), references nothing outside itself, holds one set of charts per
//! flow, and the values behind each chart equal the NDJSON they came from. Headless
//! Chromium (Debian's, installed by setup) renders it to a PNG of the window's size
//! that is not blank.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use pdm_common::{time::encode_delta_ns, wire::PdmFields};
use serde_json::Value;
use testbed::pcap::{self, PcapWriter};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdm-report-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// `pdm report INPUT -o OUT --svg SVG`: the page.
fn report(input: &Path, out: &Path, svg: &Path) -> String {
    let o = Command::new(common::pdm_bin())
        .arg("report")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--svg")
        .arg(svg)
        .output()
        .expect("pdm report");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).expect("the page")
}

/// The figures of the page: (flow, chart, data- attributes).
fn figures(page: &str) -> Vec<(usize, String, BTreeMap<String, String>)> {
    let doc = roxmltree::Document::parse_with_options(
        page,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("the page is well-formed XML");
    doc.descendants()
        .filter(|n| n.has_tag_name("figure"))
        .map(|n| {
            let data = n
                .attributes()
                .filter_map(|a| {
                    Some((
                        a.name().strip_prefix("data-")?.to_owned(),
                        a.value().to_owned(),
                    ))
                })
                .collect::<BTreeMap<_, _>>();
            (
                data["flow"].parse().expect("flow index"),
                data["chart"].clone(),
                data,
            )
        })
        .collect()
}

fn self_contained(page: &str) {
    for bad in [
        "src=", "<link", "@import", "url(", "<iframe", "<object", "<embed",
    ] {
        assert!(!page.contains(bad), "the page references something ({bad})");
    }
    for (at, _) in page.match_indices("href=\"") {
        assert!(
            page[at + 6..].starts_with('#'),
            "a link out: {}",
            &page[at..at + 60.min(page.len() - at)]
        );
    }
    for (at, _) in page.match_indices("http") {
        let rest = &page[at..];
        assert!(
            rest.starts_with("http://www.w3.org/"),
            "only XML namespaces name a URL: {}",
            &rest[..40.min(rest.len())]
        );
    }
}

/// A JSON array attribute as numbers (None for null).
fn values(attr: &str) -> Vec<Option<f64>> {
    serde_json::from_str::<Vec<Option<f64>>>(attr).expect("a JSON array")
}

/// Per flow (by its name as the report gives it), the given key of each of its flow
/// objects, in order.
fn series(lines: &[Value], key: &str) -> BTreeMap<String, Vec<Option<f64>>> {
    let mut out: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["type"] == "flow") {
        let name = format!(
            "{} {} {} {} {}",
            l["proto"], l["local_addr"], l["local_port"], l["remote_addr"], l["remote_port"]
        );
        out.entry(name).or_default().push(l[key].as_f64());
    }
    out
}

fn check_against(page: &str, lines: &[Value]) {
    self_contained(page);
    let figs = figures(page);
    let flows = series(lines, "rtt_us_p50");
    let delays: Vec<_> = figs.iter().filter(|f| f.1 == "delays").collect();
    assert_eq!(delays.len(), flows.len(), "one chart of delays per flow");
    assert_eq!(figs.len(), 3 * flows.len(), "three charts per flow");
    // Each flow's chart data is one of the flows' NDJSON series, all different.
    let mut matched = std::collections::BTreeSet::new();
    for (_, _, data) in &delays {
        let rtt = values(&data["rtt-us-p50"]);
        let sd = values(&data["server-delay-us-p50"]);
        let found = flows
            .iter()
            .find(|(name, v)| **v == rtt && series(lines, "server_delay_us_p50")[*name] == sd);
        let (name, _) = found.unwrap_or_else(|| panic!("chart data not in the NDJSON: {rtt:?}"));
        assert!(matched.insert(name.clone()), "two charts of {name}");
    }
}

#[test]
fn a_report_of_a_recorded_demo_run() {
    let d = dir();
    let log = d.join("demo.ndjson");
    let o = Command::new(common::pdm_bin())
        .args(["demo", "--json", "--duration", "4s", "--log"])
        .arg(&log)
        .output()
        .expect("pdm demo");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert!(
        lines.iter().any(|l| l["type"] == "run"),
        "the log says what ran"
    );
    let (html, svg) = (d.join("demo.html"), d.join("svg"));
    let page = report(&log, &html, &svg);
    check_against(&page, &lines);
    assert!(page.contains("tc egress"), "what was attached");
    let svgs = std::fs::read_dir(&svg).expect("svg dir").count();
    assert_eq!(svgs, figures(&page).len(), "--svg writes every chart");

    // Rendered by a browser: the size asked for, and not blank.
    let png = d.join("demo.png");
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1000,1400")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium (setup installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png).expect("png"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!((info.width, info.height), (1000, 1400), "the window's size");
    let px = info.color_type.samples();
    let colors: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    assert!(colors.len() > 16, "not blank: {} colours", colors.len());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_report_of_a_capture() {
    let d = dir().join("capture");
    std::fs::create_dir_all(&d).expect("dir");
    // Two UDP flows of request/response over 6 s, PDM on every packet.
    let cap = d.join("two.pcap");
    let mut w = PcapWriter::create(&cap, true).expect("pcap");
    let t0 = 1_700_000_000_000_000_000u64;
    let (a, b) = (
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    );
    for i in 0..120u64 {
        for (flow, hold) in [(0u16, 1_000_000u64), (1, 3_000_000)] {
            let t = t0 + i * 50_000_000 + u64::from(flow) * 10_000_000;
            let psn = i as u16;
            let q = PdmFields {
                psn_this: psn,
                psn_last_recv: psn.wrapping_sub(1),
                scale_dtlr: encode_delta_ns(2_000_000).scale,
                dtlr: encode_delta_ns(2_000_000).delta,
                scale_dtls: encode_delta_ns(hold + 200_000).scale,
                dtls: encode_delta_ns(hold + 200_000).delta,
            };
            let r = PdmFields {
                psn_this: psn,
                psn_last_recv: psn,
                scale_dtlr: encode_delta_ns(hold).scale,
                dtlr: encode_delta_ns(hold).delta,
                ..PdmFields::default()
            };
            let port = 40000 + flow;
            let pq = pcap::ipv6_packet(
                a,
                b,
                &[(pcap::DSTOPTS, q.encode_header(0).to_vec())],
                pcap::UDP,
                &pcap::udp(port, 53, &[1; 20]),
            );
            let pr = pcap::ipv6_packet(
                b,
                a,
                &[(pcap::DSTOPTS, r.encode_header(0).to_vec())],
                pcap::UDP,
                &pcap::udp(53, port, &[2; 80]),
            );
            w.ipv6(t, &pq).expect("write");
            w.ipv6(t + 100_000 + hold, &pr).expect("write");
        }
    }
    w.finish().expect("flush");
    let (html, svg) = (d.join("two.html"), d.join("svg"));
    let page = report(&cap, &html, &svg);
    // The same engine's NDJSON, as `pdm analyze --interval 1s --window 1s` gives it.
    let o = Command::new(common::pdm_bin())
        .args(["analyze", "--json", "--interval", "1s", "--window", "1s"])
        .arg(&cap)
        .output()
        .expect("pdm analyze");
    assert!(o.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    check_against(&page, &lines);
    assert_eq!(figures(&page).len(), 6, "two flows, three charts each");
    assert!(page.contains("two.pcap"), "the capture is named");
    let _ = std::fs::remove_dir_all(&d);
}
