//! NDJSON output: one object per flow per interval, and one with the global counters.
//! The schema is documented in README.md ("JSON output").

use serde_json::{Map, Value, json};

use crate::{
    metrics::{FlowRow, Summary},
    stats::Totals,
};

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn us(ns: Option<u64>) -> Value {
    // Microseconds with nanosecond resolution; null when there is no sample.
    ns.map_or(Value::Null, |ns| json!((ns as f64) / 1000.0))
}

fn put_summary(o: &mut Map<String, Value>, prefix: &str, s: &Summary) {
    for (name, v) in [
        ("min", s.min),
        ("mean", s.mean),
        ("p50", s.p50),
        ("p90", s.p90),
        ("p99", s.p99),
        ("max", s.max),
    ] {
        o.insert(format!("{prefix}_us_{name}"), us(v));
    }
    o.insert(format!("{prefix}_samples"), json!(s.samples));
}

/// One flow's line.
pub fn flow_json(
    ts: f64,
    iface: &str,
    r: &FlowRow,
    remote_name: Option<&str>,
    process: Option<&str>,
) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), json!("flow"));
    o.insert("ts".into(), json!(ts));
    o.insert("iface".into(), json!(iface));
    o.insert("proto".into(), json!(r.proto_name()));
    o.insert("local_addr".into(), json!(r.local_addr.to_string()));
    o.insert("local_port".into(), json!(r.local_port));
    o.insert("remote_addr".into(), json!(r.remote_addr.to_string()));
    o.insert("remote_port".into(), json!(r.remote_port));
    o.insert("remote_name".into(), json!(remote_name));
    o.insert("process".into(), json!(process));
    for (k, v) in [
        ("tx_packets", r.tx_packets),
        ("rx_packets", r.rx_packets),
        ("tx_bytes", r.tx_bytes),
        ("rx_bytes", r.rx_bytes),
        ("tx_pdm", r.tx_pdm),
        ("rx_pdm", r.rx_pdm),
        ("rx_lost", r.rx_lost),
        ("rx_reordered", r.rx_reordered),
        ("rx_duplicate", r.rx_duplicate),
    ] {
        o.insert(k.into(), json!(v));
    }
    o.insert("tx_pps".into(), json!(r.tx_pps));
    o.insert("rx_pps".into(), json!(r.rx_pps));
    o.insert("loss_percent".into(), json!(r.loss_percent()));
    put_summary(&mut o, "rtt", &r.rtt);
    put_summary(&mut o, "server_delay", &r.server_delay);
    put_summary(&mut o, "rtt_all", &r.rtt_all);
    put_summary(&mut o, "server_delay_all", &r.server_delay_all);
    o.insert("age_s".into(), json!(r.age.as_secs_f64()));
    o.insert("idle_s".into(), json!(r.idle.as_secs_f64()));
    o.insert("closed".into(), json!(r.closed));
    Value::Object(o)
}

/// The interval's global line.
pub fn counters_json(
    ts: f64,
    iface: &str,
    totals: &Totals,
    flows: usize,
    evicted: u64,
    expired: u64,
) -> Value {
    json!({
        "type": "counters",
        "ts": ts,
        "iface": iface,
        "flows": flows,
        "flows_evicted": evicted,
        "flows_expired": expired,
        "counters": totals.to_json(),
    })
}
