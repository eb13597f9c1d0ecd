//! NDJSON output: one object per flow per interval, and one with the global counters.
//! The schema is documented in README.md ("JSON output").

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use serde_json::{Value, json};

use crate::{
    engine::{FlowRow, Summary},
    kernel::maps::Totals,
};

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One JSON object written field by field: at 10 000 flows a second, building a
/// `serde_json::Value` map per line (a heap key per field, a tree insert each) and
/// formatting it through `Display` took a quarter of a core.
struct Object<'a, W: Write> {
    out: &'a mut W,
    first: bool,
}

impl<'a, W: Write> Object<'a, W> {
    fn start(out: &'a mut W) -> io::Result<Self> {
        out.write_all(b"{")?;
        Ok(Self { out, first: true })
    }

    fn key(&mut self, key: &str) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",")?;
        }
        self.first = false;
        // Keys are our own identifiers: no escaping needed.
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.out.write_all(b"\"")?;
        self.out.write_all(key.as_bytes())?;
        self.out.write_all(b"\":")
    }

    fn u64(&mut self, key: &str, v: u64) -> io::Result<()> {
        self.key(key)?;
        write!(self.out, "{v}")
    }

    /// A number, or null when it is not finite (as serde_json does).
    fn f64(&mut self, key: &str, v: Option<f64>) -> io::Result<()> {
        self.key(key)?;
        match v {
            Some(v) if v.is_finite() => serde_json::to_writer(&mut *self.out, &v)?,
            _ => self.out.write_all(b"null")?,
        }
        Ok(())
    }

    /// A string (escaped), or null.
    fn str(&mut self, key: &str, v: Option<&str>) -> io::Result<()> {
        self.key(key)?;
        match v {
            Some(v) => serde_json::to_writer(&mut *self.out, v)?,
            None => self.out.write_all(b"null")?,
        }
        Ok(())
    }

    /// Nanoseconds as microseconds with three decimals (exact, and integer formatting
    /// where a float's shortest form was the largest part of writing a line), or null
    /// when there is no sample.
    fn us(&mut self, key: &str, ns: Option<u64>) -> io::Result<()> {
        self.key(key)?;
        match ns {
            Some(ns) => write!(self.out, "{}.{:03}", ns / 1000, ns % 1000),
            None => self.out.write_all(b"null"),
        }
    }

    fn bool(&mut self, key: &str, v: bool) -> io::Result<()> {
        self.key(key)?;
        self.out.write_all(if v { b"true" } else { b"false" })
    }

    fn end(self) -> io::Result<()> {
        self.out.write_all(b"}\n")
    }
}

fn put_summary<W: Write>(o: &mut Object<W>, prefix: &str, s: &Summary) -> io::Result<()> {
    let mut key = String::with_capacity(prefix.len() + 8);
    for (name, v) in [
        ("min", s.min),
        ("mean", s.mean),
        ("p50", s.p50),
        ("p90", s.p90),
        ("p99", s.p99),
        ("max", s.max),
    ] {
        key.clear();
        key.push_str(prefix);
        key.push_str("_us_");
        key.push_str(name);
        o.us(&key, v)?;
    }
    key.clear();
    key.push_str(prefix);
    key.push_str("_samples");
    o.u64(&key, s.samples)
}

/// One flow's line, with its newline.
pub fn write_flow(
    out: &mut impl Write,
    ts: f64,
    iface: &str,
    r: &FlowRow,
    remote_name: Option<&str>,
    process: Option<&str>,
) -> io::Result<()> {
    let mut o = Object::start(out)?;
    o.str("type", Some("flow"))?;
    o.f64("ts", Some(ts))?;
    o.str("iface", Some(iface))?;
    o.str("proto", Some(r.proto_name()))?;
    let mut addr = String::with_capacity(40);
    write!(addr, "{}", r.local_addr).ok();
    o.str("local_addr", Some(&addr))?;
    o.u64("local_port", r.local_port.into())?;
    addr.clear();
    write!(addr, "{}", r.remote_addr).ok();
    o.str("remote_addr", Some(&addr))?;
    o.u64("remote_port", r.remote_port.into())?;
    o.str("remote_name", remote_name)?;
    o.str("process", process)?;
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
        ("implausible", r.faults.implausible),
        ("dtlr_not_rfc_exact", r.faults.not_rfc_exact),
        ("dtlr_malformed", r.faults.malformed),
    ] {
        o.u64(k, v)?;
    }
    o.f64("tx_pps", Some(r.tx_pps))?;
    o.f64("rx_pps", Some(r.rx_pps))?;
    o.f64("loss_percent", r.loss_percent())?;
    put_summary(&mut o, "rtt", &r.rtt)?;
    put_summary(&mut o, "server_delay", &r.server_delay)?;
    put_summary(&mut o, "rtt_all", &r.rtt_all)?;
    put_summary(&mut o, "server_delay_all", &r.server_delay_all)?;
    // A source that sees both ends (a capture, an observer): the client's sequence,
    // its think time, and round trips on the capture point's clock.
    if let Some(b) = &r.both {
        o.u64("tx_lost", b.tx_lost)?;
        o.u64("tx_reordered", b.tx_reordered)?;
        o.u64("tx_duplicate", b.tx_duplicate)?;
        o.f64("tx_loss_percent", r.tx_loss_percent())?;
        put_summary(&mut o, "client_delay", &b.client_delay)?;
        put_summary(&mut o, "client_delay_all", &b.client_delay_all)?;
        put_summary(&mut o, "server_side_rtt", &b.server_side_rtt)?;
        put_summary(&mut o, "server_side_rtt_all", &b.server_side_rtt_all)?;
        put_summary(&mut o, "client_side_rtt", &b.client_side_rtt)?;
        put_summary(&mut o, "client_side_rtt_all", &b.client_side_rtt_all)?;
    }
    o.f64("age_s", Some(r.age.as_secs_f64()))?;
    o.f64("idle_s", Some(r.idle.as_secs_f64()))?;
    o.bool("closed", r.closed)?;
    o.end()
}

/// The first line of a run: what ran (`run`, `observe`), attached where, by which
/// version.
pub fn run_json(ts: f64, mode: &str, iface: &str, attach: &[String]) -> Value {
    json!({
        "type": "run",
        "mode": mode,
        "ts": ts,
        "iface": iface,
        "attach": attach,
        "version": env!("CARGO_PKG_VERSION"),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::test_row;

    #[test]
    fn a_flow_line_is_one_json_object_with_every_field() {
        let mut r = test_row(6, "fd00::1", 40000, "fd00::2", 443);
        r.rtt = Summary {
            samples: 2,
            min: Some(1_234),
            mean: Some(1_500),
            p50: Some(1_500),
            p90: Some(1_700),
            p99: Some(1_766),
            max: Some(1_766_000),
        };
        let mut out = Vec::new();
        write_flow(&mut out, 1.5, "eth0", &r, None, Some("we\"ird\n/1")).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["type"], "flow");
        assert_eq!(v["iface"], "eth0");
        assert_eq!(v["process"], "we\"ird\n/1");
        assert_eq!(v["remote_name"], Value::Null);
        assert_eq!(v["rtt_us_min"], 1.234);
        assert_eq!(v["rtt_us_max"], 1766.0);
        assert_eq!(v["rtt_samples"], 2);
        assert_eq!(v["server_delay_us_p50"], Value::Null);
        assert_eq!(v["local_addr"], r.local_addr.to_string());
        assert_eq!(v["tx_bytes"], r.tx_bytes);
        assert_eq!(v["closed"], r.closed);
        // Every key the schema names, once.
        let keys = v.as_object().unwrap().len();
        assert_eq!(keys, 10 + 12 + 3 + 4 * 7 + 3, "{v}");
        assert!(
            v.get("tx_lost").is_none(),
            "only a source seeing both ends has it"
        );

        // From a capture: the client's side too.
        r.both = Some(Box::new(crate::engine::BothEnds {
            tx_lost: 1,
            tx_duplicate: 2,
            ..Default::default()
        }));
        r.tx_pdm = 3;
        let mut out = Vec::new();
        write_flow(&mut out, 1.5, "a.pcap", &r, None, None).unwrap();
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["tx_lost"], 1);
        assert_eq!(v["tx_duplicate"], 2);
        assert_eq!(v["tx_loss_percent"], 25.0);
        assert_eq!(v["client_delay_us_p50"], Value::Null);
        assert_eq!(v["server_side_rtt_all_samples"], 0);
        assert_eq!(v["client_side_rtt_us_p50"], Value::Null);
        assert_eq!(v.as_object().unwrap().len(), keys + 4 + 6 * 7, "{v}");
    }
}
