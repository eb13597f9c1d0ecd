//! `pdm trace` as a survey, the seed slides' study in small: many destinations traced
//! at once over cold paths (new namespaces, no warm-up traffic) — one behind a router
//! dropping Destination Options as they arrive, one behind a router dropping them only
//! when forwarding, one clean behind a "CDN" name, a prefix nobody routes, a name that
//! does not resolve and a name with only IPv4 — one row each, as NDJSON, CSV and a
//! table, and verdicts that hold against a router's ICMPv6 rate limit.

mod common;

use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Instant};

use common::{
    Netns,
    fan::{self, Fan},
    hosts::Hosts,
    pdm_bin,
};
use serde_json::Value;

/// Names as the seed's study would see them: every router, the servers, and a server
/// whose address resolves back to another name than the one traced (a CDN's).
fn hosts_file(f: &Fan) -> String {
    format!(
        "{} client.test\n{} r1.test\n{} a1.test\n{} a.test\n{} b1.test\n{} b2.test\n{} b.test\n{} cdn-c.test www.c.test\n192.0.2.7 v4only.test\n",
        fan::CLIENT,
        fan::R1,
        f.a.x1_addr,
        f.a.server_addr,
        f.b.x1_addr,
        f.b.x2_addr,
        f.b.server_addr,
        f.c.server_addr,
    )
}

/// The targets file (a.test is given on the command line).
const TARGETS: &str = "# the survey of the test\nb.test\nwww.c.test   # a CDN's name\n\nv4only.test\nnonexistent.invalid\nfd99::1\n";

/// Every destination in the order of the rows.
const DESTINATIONS: [&str; 6] = [
    "a.test",
    "b.test",
    "www.c.test",
    "v4only.test",
    "nonexistent.invalid",
    fan::UNROUTED,
];

/// The row's columns, CSV's header.
const COLUMNS: [&str; 20] = [
    "host",
    "target",
    "target_name",
    "source",
    "source_name",
    "last_pdm_hop",
    "last_pdm_responder",
    "last_pdm_name",
    "last_plain_hop",
    "last_plain_responder",
    "last_plain_name",
    "next_hop",
    "next_hop_responder",
    "next_hop_name",
    "reached_plain",
    "reached_with_pdm",
    "finding",
    "summary",
    "why",
    "rate_limited_hops",
];

fn columns() -> Vec<String> {
    COLUMNS.iter().map(|c| (*c).to_owned()).collect()
}

/// Short waits and few hops: the paths are four hops long.
const ARGS: &[&str] = &["--wait", "300ms", "--max-hops", "8"];

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> Self {
        let p = std::env::temp_dir().join(format!("pdm-{tag}-{}.txt", std::process::id()));
        std::fs::write(&p, text).expect("write a temporary file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fan with its droppers set up, names for the client, and a targets file.
struct Survey {
    fan: Fan,
    _hosts: Hosts,
    targets: TempFile,
}

impl Survey {
    fn new(tag: &str, r1_ratelimit_ms: Option<u32>) -> Self {
        let fan = Fan::new(tag, r1_ratelimit_ms);
        fan.a.drop_dstopts_at_x1();
        fan.b.drop_dstopts_forwarded_by_x1();
        let hosts = Hosts::new(&fan.client, &hosts_file(&fan));
        let targets = TempFile::new(tag, TARGETS);
        Survey {
            fan,
            _hosts: hosts,
            targets,
        }
    }

    /// `pdm trace a.test --targets FILE ARGS... extra...` on the client: stdout, and
    /// the summary line from stderr (JSON and CSV) or stdout (the table).
    fn run(&self, extra: &[&str]) -> (String, String) {
        let started = Instant::now();
        let out = self
            .fan
            .client
            .cmd(pdm_bin())
            .args(["trace", "a.test", "--targets"])
            .arg(&self.targets.0)
            .args(ARGS)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run pdm trace");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "pdm trace {extra:?} failed: {stderr}");
        eprintln!("survey {extra:?}: {:.1} s", started.elapsed().as_secs_f64());
        let summary = stderr
            .lines()
            .chain(stdout.lines())
            .find(|l| l.contains(" destinations: "))
            .unwrap_or_else(|| panic!("no summary line:\n{stdout}\n{stderr}"))
            .to_owned();
        (stdout, summary)
    }
}

/// A row as column → text ("" for none), the way CSV has it.
type Row = HashMap<String, String>;

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

/// NDJSON rows: every column of `columns` read from the object's top level or its
/// `verdict` (it must be in one of them).
fn json_rows(stdout: &str, columns: &[String]) -> Vec<Row> {
    stdout
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            for key in ["target", "plain", "pdm", "verdict"] {
                assert!(v.get(key).is_some(), "no `{key}` in {v}");
            }
            columns
                .iter()
                .map(|c| {
                    let field = v
                        .get(c)
                        .or_else(|| v["verdict"].get(c))
                        .unwrap_or_else(|| panic!("column `{c}` is not in the JSON: {v}"));
                    (c.clone(), text(field))
                })
                .collect()
        })
        .collect()
}

fn csv_rows(stdout: &str) -> (Vec<String>, Vec<Row>) {
    let mut r = csv::Reader::from_reader(stdout.as_bytes());
    let header: Vec<String> = r
        .headers()
        .expect("a CSV header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = r
        .records()
        .map(|rec| {
            let rec = rec.expect("a CSV record");
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_owned))
                .collect()
        })
        .collect();
    (header, rows)
}

/// What each destination's row must say. `strict`: every verdict exactly right;
/// otherwise a traced destination may be `inconclusive`, but never a wrong hop.
fn check_rows(s: &Survey, rows: &[Row], strict: bool) {
    let f = &s.fan;
    let hosts: Vec<&str> = rows.iter().map(|r| r["host"].as_str()).collect();
    assert_eq!(hosts, DESTINATIONS, "one row per destination, in order");
    let by_host = |h: &str| &rows[DESTINATIONS.iter().position(|d| *d == h).expect("a row")];
    let expect = |h: &str, want: &[(&str, &str)]| {
        let row = by_host(h);
        let inconclusive = !strict && row["finding"] == "inconclusive";
        for (col, val) in want {
            // Inconclusive: no hop n to speak of (and for the unrouted prefix, whose
            // only answers come from r1, maybe no answer at all). Unreachable: the
            // no-route may have come for a higher hop limit when r1's budget ran out on
            // the lower ones.
            let loose = (inconclusive
                && (["finding", "summary"].contains(col)
                    || col.starts_with("last_pdm")
                    || col.starts_with("next_hop")
                    || (h == fan::UNROUTED && col.starts_with("last_plain"))))
                || (!strict && h == fan::UNROUTED && col.ends_with("_hop"));
            if !loose {
                assert_eq!(row[*col], *val, "{h}: `{col}` in {row:?}");
            }
        }
    };
    let source = [("source", fan::CLIENT), ("source_name", "client.test")];
    for h in ["a.test", "b.test", "www.c.test"] {
        expect(h, &source);
    }
    expect(
        "a.test",
        &[
            ("target", &f.a.server_addr),
            ("target_name", "a.test"),
            ("finding", "dropped_after"),
            ("last_pdm_hop", "1"),
            ("last_pdm_responder", fan::R1),
            ("last_pdm_name", "r1.test"),
            ("last_plain_hop", "4"),
            ("last_plain_responder", &f.a.server_addr),
            ("last_plain_name", "a.test"),
            ("next_hop", "2"),
            ("next_hop_responder", &f.a.x1_addr),
            ("next_hop_name", "a1.test"),
            ("reached_plain", "true"),
            ("reached_with_pdm", "false"),
        ],
    );
    // x1 answers the hop limit expiring there, and drops what it forwards: hop n is
    // the dropper, n+1 the router behind it.
    expect(
        "b.test",
        &[
            ("target", &f.b.server_addr),
            ("finding", "dropped_after"),
            ("last_pdm_hop", "2"),
            ("last_pdm_responder", &f.b.x1_addr),
            ("last_pdm_name", "b1.test"),
            ("last_plain_hop", "4"),
            ("next_hop", "3"),
            ("next_hop_responder", &f.b.x2_addr),
            ("next_hop_name", "b2.test"),
            ("reached_plain", "true"),
            ("reached_with_pdm", "false"),
        ],
    );
    expect(
        "www.c.test",
        &[
            ("target", &f.c.server_addr),
            ("target_name", "cdn-c.test"),
            ("finding", "pdm_reaches"),
            ("last_pdm_hop", "4"),
            ("last_pdm_responder", &f.c.server_addr),
            ("last_pdm_name", "cdn-c.test"),
            ("last_plain_hop", "4"),
            ("next_hop", ""),
            ("reached_plain", "true"),
            ("reached_with_pdm", "true"),
        ],
    );
    expect(
        "v4only.test",
        &[
            ("target", ""),
            ("finding", "no_ipv6"),
            ("summary", "`v4only.test` has no IPv6 address (only IPv4)"),
            ("reached_plain", "false"),
        ],
    );
    expect(
        "nonexistent.invalid",
        &[("target", ""), ("finding", "unresolvable")],
    );
    assert!(
        by_host("nonexistent.invalid")["summary"]
            .starts_with("cannot resolve `nonexistent.invalid`"),
        "{rows:?}"
    );
    expect(
        fan::UNROUTED,
        &[
            ("target", fan::UNROUTED),
            ("finding", "unreachable"),
            ("last_plain_hop", "1"),
            ("last_plain_responder", fan::R1),
            ("reached_plain", "false"),
            ("reached_with_pdm", "false"),
            ("next_hop_responder", ""),
        ],
    );
    let unrouted = by_host(fan::UNROUTED);
    assert!(
        unrouted["summary"].contains("answered no-route") || unrouted["finding"] == "inconclusive",
        "{rows:?}"
    );
    for r in rows {
        if r["finding"] == "inconclusive" {
            assert!(!r["why"].is_empty(), "an inconclusive row says why: {r:?}");
        }
    }
}

/// Three surveys, each on new namespaces (cold paths): NDJSON, CSV, the table. Every
/// verdict right every time; CSV and NDJSON hold the same facts.
#[test]
fn a_survey_names_every_dropper_right_on_cold_paths_three_times() {
    let json_survey = Survey::new("tsj", Some(0));
    let (json_out, summary) = json_survey.run(&["--json"]);
    let csv_survey = Survey::new("tsv", Some(0));
    let (csv_out, csv_summary) = csv_survey.run(&["--csv"]);
    let (columns, csv) = csv_rows(&csv_out);
    assert_eq!(columns, COLUMNS);
    let json = json_rows(&json_out, &columns);
    check_rows(&json_survey, &json, true);
    check_rows(&csv_survey, &csv, true);
    // The same facts: both surveys ran on identical (new) namespaces, so every column
    // but the hops that happened to lose answers must match.
    for (j, c) in json.iter().zip(&csv) {
        for col in &columns {
            if col != "rate_limited_hops" {
                assert_eq!(j[col], c[col], "`{col}` differs between JSON and CSV");
            }
        }
    }
    let want = "6 destinations: reached with PDM 1, dropped at hop n+1 2, unreachable 1, not resolved 1, no IPv6 address 1";
    assert!(summary.starts_with(want), "{summary}");
    assert!(csv_summary.starts_with(want), "{csv_summary}");
    drop((json_survey, csv_survey));

    let table_survey = Survey::new("tst", Some(0));
    let (table, summary) = table_survey.run(&[]);
    eprintln!("{table}");
    assert!(summary.starts_with(want), "{summary}\n{table}");
    let line = |host: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{host} ")))
            .unwrap_or_else(|| panic!("no line for {host}:\n{table}"))
    };
    let f = &table_survey.fan;
    let a = line("a.test");
    assert!(
        a.contains(&format!("2 {} (a1.test)", f.a.x1_addr)) && a.contains("dropped after hop 1"),
        "{table}"
    );
    let b = line("b.test");
    assert!(
        b.contains(&format!("2 {} (b1.test)", f.b.x1_addr))
            && b.contains(&format!("3 {} (b2.test)", f.b.x2_addr))
            && b.contains("dropped after hop 2"),
        "{table}"
    );
    let c = line("www.c.test");
    assert!(
        c.contains(&format!("{} (cdn-c.test)", f.c.server_addr)) && c.contains("reached with PDM"),
        "{table}"
    );
    assert!(
        line("v4only.test").contains("has no IPv6 address"),
        "{table}"
    );
    assert!(
        line("nonexistent.invalid").contains("cannot resolve"),
        "{table}"
    );
    assert!(line(fan::UNROUTED).contains("unreachable"), "{table}");
}

/// r1, the hop every trace crosses, keeps its ICMPv6 rate limit. Unpaced (`--pace 0`)
/// at the kernel's default the limit bites, and the rows say so; at 1000 ms (Linux's
/// long-standing default) with the default pacing. Either way a verdict is right or
/// inconclusive, never a wrong hop.
#[test]
fn a_rate_limiting_router_never_makes_a_wrong_hop() {
    let s = Survey::new("tsr", None);
    let limit = s.fan.r1.run("sysctl", &["-n", "net.ipv6.icmp.ratelimit"]);
    assert_ne!(limit.trim(), "0", "r1 must keep a rate limit");
    let (out, summary) = s.run(&["--json", "--pace", "0"]);
    let columns = columns();
    let rows = json_rows(&out, &columns);
    eprintln!("r1 at {} ms, unpaced: {summary}", limit.trim());
    check_rows(&s, &rows, false);
    assert!(
        rows.iter()
            .any(|r| r["rate_limited_hops"].split(' ').any(|h| h == "1")),
        "r1's rate limit bit, and no row says so: {rows:?}"
    );
    assert!(summary.contains("rate-limited"), "{summary}");
    drop(s);

    let s = Survey::new("tsl", Some(1000));
    let (out, summary) = s.run(&["--json"]);
    eprintln!("r1 at 1000 ms, paced: {summary}");
    check_rows(&s, &json_rows(&out, &columns), false);
}

/// Bad survey input: one line saying what is wrong, and a non-zero exit.
#[test]
fn bad_survey_input_gets_one_clear_line() {
    let ns = Netns::new("tsb");
    let two = TempFile::new("tsb-two", "a.example b.example\n");
    let empty = TempFile::new("tsb-empty", "# nothing here\n\n");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--targets".into(), "/nonexistent/sites.txt".into()],
            "cannot read the targets file `/nonexistent/sites.txt`".into(),
        ),
        (
            vec!["--targets".into(), two.0.display().to_string()],
            "line 1: `a.example b.example` is not one host name or address".into(),
        ),
        (
            vec!["--targets".into(), empty.0.display().to_string()],
            "names no host".into(),
        ),
        (vec![], "<HOST>".into()),
        (
            vec!["fd00::1".into(), "--parallel".into(), "0".into()],
            "1..=256".into(),
        ),
        (
            vec!["fd00::1".into(), "--retries".into(), "11".into()],
            "0..=10".into(),
        ),
        (
            vec!["fd00::1".into(), "--pace".into(), "soon".into()],
            "is not a duration".into(),
        ),
        (
            vec!["fd00::1".into(), "--csv".into(), "--json".into()],
            "cannot be used with".into(),
        ),
    ];
    for (args, want) in cases {
        let out = ns
            .cmd(pdm_bin())
            .arg("trace")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run pdm trace");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "pdm trace {args:?} succeeded");
        assert_eq!(
            err.lines().count(),
            1,
            "pdm trace {args:?}: not one line:\n{err}"
        );
        assert!(
            err.contains(&want),
            "pdm trace {args:?}: `{want}` not in: {err}"
        );
    }
}
