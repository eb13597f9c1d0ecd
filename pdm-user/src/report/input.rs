//! What a report is drawn from: the NDJSON a run wrote (`pdm run/observe --log` or
//! `--json`), or a capture read through the analyze engine into the same NDJSON. Each
//! flow becomes a series of points, one per reported interval.

use std::{
    collections::BTreeMap,
    io::BufRead as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// One interval of a flow, as its NDJSON object gave it (µs; None without samples).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    pub ts: f64,
    pub rtt_p50: Option<f64>,
    pub rtt_max: Option<f64>,
    pub server_delay_p50: Option<f64>,
    pub server_delay_max: Option<f64>,
    /// Since the flow started (the object's cumulative count).
    pub rx_lost: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
}

/// One flow: its points in time order, and its last object (the figures since start).
#[derive(Clone, Debug)]
pub struct Flow {
    pub name: String,
    pub points: Vec<Point>,
    pub last: Value,
}

/// Everything a report shows.
#[derive(Debug, Default)]
pub struct Recording {
    /// Flows by the order they first appear.
    pub flows: Vec<Flow>,
    /// `run` objects: what was attached where.
    pub runs: Vec<Value>,
    /// The last `counters` object.
    pub counters: Option<Value>,
    /// Capture files read (for a capture input).
    pub captures: Vec<PathBuf>,
    pub first_ts: Option<f64>,
    pub last_ts: Option<f64>,
}

fn us(v: &Value, key: &str) -> Option<f64> {
    v[key].as_f64()
}

impl Recording {
    /// Takes in one NDJSON line; lines that are not JSON objects are an error.
    fn line(&mut self, index: &mut BTreeMap<String, usize>, v: Value) {
        let ts = v["ts"].as_f64();
        if let Some(ts) = ts {
            self.first_ts = Some(self.first_ts.map_or(ts, |f| f.min(ts)));
            self.last_ts = Some(self.last_ts.map_or(ts, |l| l.max(ts)));
        }
        match v["type"].as_str() {
            Some("run") => self.runs.push(v),
            Some("counters") => self.counters = Some(v),
            Some("flow") => {
                let name = flow_name(&v);
                let at = *index.entry(name.clone()).or_insert_with(|| {
                    self.flows.push(Flow {
                        name,
                        points: Vec::new(),
                        last: Value::Null,
                    });
                    self.flows.len() - 1
                });
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                let f = &mut self.flows[at];
                f.points.push(Point {
                    ts: ts.unwrap_or(0.0),
                    rtt_p50: us(&v, "rtt_us_p50"),
                    rtt_max: us(&v, "rtt_us_max"),
                    server_delay_p50: us(&v, "server_delay_us_p50"),
                    server_delay_max: us(&v, "server_delay_us_max"),
                    rx_lost: n("rx_lost"),
                    tx_packets: n("tx_packets"),
                    rx_packets: n("rx_packets"),
                });
                f.last = v;
            }
            _ => {}
        }
    }
}

/// `proto [local]:port → [remote]:port` (an ICMPv6 flow's identifier once).
pub fn flow_name(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
    let p = |k: &str| v[k].as_u64().unwrap_or(0);
    let proto = s("proto");
    if proto == "icmpv6" {
        format!(
            "icmpv6 {} id={} → {}",
            s("local_addr"),
            p("local_port"),
            s("remote_addr")
        )
    } else {
        format!(
            "{proto} [{}]:{} → [{}]:{}",
            s("local_addr"),
            p("local_port"),
            s("remote_addr"),
            p("remote_port")
        )
    }
}

/// Reads every input: a capture (pcap/pcapng, by its first octets) through the analyze
/// engine at `interval`, anything else as NDJSON.
pub fn read(inputs: &[PathBuf], interval: Duration) -> Result<Recording> {
    let mut rec = Recording::default();
    let mut index = BTreeMap::new();
    let (captures, logs): (Vec<&PathBuf>, Vec<&PathBuf>) =
        inputs.iter().partition(|p| is_capture(p));
    if !captures.is_empty() {
        let files: Vec<PathBuf> = captures.iter().map(|p| (*p).clone()).collect();
        let mut ndjson = Vec::new();
        crate::analyze::flow_ndjson(&files, interval, &mut ndjson)?;
        for line in ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            rec.line(
                &mut index,
                serde_json::from_slice(line).context("analyze's NDJSON")?,
            );
        }
        rec.captures = files;
    }
    for path in logs {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut lines = 0;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line).with_context(|| {
                format!(
                    "{} line {}: not NDJSON (give pdm's --log/--json output or a capture)",
                    path.display(),
                    n + 1
                )
            })?;
            rec.line(&mut index, v);
            lines += 1;
        }
        if lines == 0 {
            bail!("{} is empty: nothing to report", path.display());
        }
    }
    if rec.flows.is_empty() {
        bail!("no flow in {}: nothing to report", names(inputs));
    }
    Ok(rec)
}

fn names(inputs: &[PathBuf]) -> String {
    inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// pcap (either byte order and time unit) or pcapng, by the file's magic.
fn is_capture(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    let ok = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok();
    ok && matches!(
        u32::from_le_bytes(magic),
        0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 | 0x0a0d_0d0a
    )
}
