//! Prometheus/OpenMetrics export (`--metrics-addr`): what the engine measures, folded
//! into a bounded set of series and encoded at scrape time from the data held here
//! (a `prometheus_client` [`Collector`]), served over HTTP ([`http`]).
//!
//! Series are per interface, protocol and peer. The peer label is bounded: `none`
//! (empty), `prefix` (the remote /64, the default) or `host` (the remote address); at
//! most `max_series` distinct peers get their own, the rest are `other`. Per-flow
//! detail stays in NDJSON.
//!
//! - Histograms `pdm_rtt_seconds` and `pdm_server_delay_seconds` take every sample the
//!   kernel hands over (never re-derived from percentiles).
//! - Counters from the flows' own counters (deltas between refreshes, so an expired
//!   flow's packets stay counted): packets by direction and PDM, bytes and lost by
//!   direction, reordered, duplicates; the kernel's skip counters by hook and reason;
//!   flow-table evictions; samples the ring dropped. Gauges: flows, build info.

pub mod http;

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv6Addr,
    sync::{Arc, Mutex},
};

use pdm_common::{
    counters::Counter,
    flow::{FlowKey, NO_SAMPLE, RttSample},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use crate::{
    engine::{FastMap, FlowRow, proto_name},
    kernel::maps::Totals,
};

/// What the peer label holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerLabel {
    /// No peer label: one series per interface and protocol.
    None,
    /// The remote address's /64.
    Prefix,
    /// The remote address.
    Host,
}

/// Default histogram buckets: 1, 2 and 5 of every power of ten from 1 µs to 10 s.
pub fn default_buckets() -> Vec<f64> {
    // Parsed from decimal, so that each bound is the double nearest it and prints as
    // written (`le="0.000005"`, not the product's 0.0000049999999999999999).
    let mut b: Vec<f64> = (-6..=0)
        .flat_map(|e| [1, 2, 5].map(|m| format!("{m}e{e}").parse().expect("a number")))
        .collect();
    b.push(10.0);
    b
}

/// The settings of the export.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    pub iface: String,
    pub peer: PeerLabel,
    pub max_series: usize,
    /// Upper bounds of the histogram buckets, in seconds, ascending.
    pub buckets: Vec<f64>,
}

/// One bucketed distribution.
#[derive(Clone, Debug)]
struct Hist {
    /// Per bucket (the last: above every bound), not cumulative.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn new(buckets: usize) -> Self {
        Self {
            counts: vec![0; buckets + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], secs: f64) {
        let i = bounds.partition_point(|&b| b < secs);
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

/// A histogram as encoded at scrape time.
#[derive(Debug)]
struct HistView<'a> {
    hist: &'a Hist,
    bounds: &'a [f64],
}

impl EncodeMetric for HistView<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.hist.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.hist.sum, self.hist.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A value read at scrape time.
#[derive(Debug)]
struct Value {
    v: u64,
    counter: bool,
}

impl EncodeMetric for Value {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        if self.counter {
            encoder.encode_counter::<NoLabelSet, _, u64>(&self.v, None)
        } else {
            encoder.encode_gauge(&(self.v as i64))
        }
    }

    fn metric_type(&self) -> MetricType {
        if self.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        }
    }
}

/// Direction indices.
const TX: usize = 0;
const RX: usize = 1;
const DIRECTIONS: [&str; 2] = ["tx", "rx"];

/// One (protocol, peer) series set.
#[derive(Clone, Debug)]
struct Series {
    rtt: Hist,
    server_delay: Hist,
    /// [direction][with PDM]
    packets: [[u64; 2]; 2],
    bytes: [u64; 2],
    lost: [u64; 2],
    /// The tx direction is known only where both ends are seen (a capture, an observer).
    lost_tx_known: bool,
    reordered: u64,
    duplicate: u64,
}

/// A flow's counters at the previous refresh, and its series.
#[derive(Clone, Copy, Debug)]
struct Seen {
    series: u32,
    counts: [u64; 10],
    /// The refresh that last saw it.
    generation: u64,
}

fn counts(r: &FlowRow) -> [u64; 10] {
    let b = r.both.as_deref();
    [
        r.tx_packets,
        r.rx_packets,
        r.tx_pdm,
        r.rx_pdm,
        r.tx_bytes,
        r.rx_bytes,
        r.rx_lost,
        b.map_or(0, |b| b.tx_lost),
        r.rx_reordered + b.map_or(0, |b| b.tx_reordered),
        r.rx_duplicate + b.map_or(0, |b| b.tx_duplicate),
    ]
}

/// Everything exported, updated by the run's loop and read at each scrape.
#[derive(Debug)]
pub struct State {
    config: MetricsConfig,
    /// Series by (protocol, peer), in creation order.
    series: Vec<Series>,
    index: BTreeMap<(u8, String), u32>,
    peers: HashSet<String>,
    flows: FastMap<FlowKey, Seen>,
    generation: u64,
    totals: Totals,
    flow_count: u64,
}

impl State {
    pub fn new(config: MetricsConfig) -> Self {
        Self {
            config,
            series: Vec::new(),
            index: BTreeMap::new(),
            peers: HashSet::new(),
            flows: FastMap::default(),
            generation: 0,
            totals: Totals::default(),
            flow_count: 0,
        }
    }

    /// The peer label of a remote address, bounded.
    fn peer(&mut self, remote: [u8; 16]) -> String {
        let label = match self.config.peer {
            PeerLabel::None => return String::new(),
            PeerLabel::Host => Ipv6Addr::from(remote).to_string(),
            PeerLabel::Prefix => {
                let mut p = remote;
                p[8..].fill(0);
                format!("{}/64", Ipv6Addr::from(p))
            }
        };
        if self.peers.contains(&label) {
            return label;
        }
        if self.peers.len() < self.config.max_series {
            self.peers.insert(label.clone());
            return label;
        }
        "other".to_owned()
    }

    fn series_of(&mut self, key: &FlowKey) -> u32 {
        if let Some(s) = self.flows.get(key) {
            return s.series;
        }
        let peer = self.peer(key.remote_addr);
        let n = self.config.buckets.len();
        let next = self.series.len() as u32;
        let id = *self.index.entry((key.proto, peer)).or_insert(next);
        if id == next {
            self.series.push(Series {
                rtt: Hist::new(n),
                server_delay: Hist::new(n),
                packets: [[0; 2]; 2],
                bytes: [0; 2],
                lost: [0; 2],
                lost_tx_known: false,
                reordered: 0,
                duplicate: 0,
            });
        }
        self.flows.insert(
            *key,
            Seen {
                series: id,
                counts: [0; 10],
                generation: self.generation,
            },
        );
        id
    }

    /// Every sample the kernel handed over.
    pub fn samples(&mut self, samples: &[RttSample]) {
        for s in samples {
            if s.fault != 0 {
                continue;
            }
            let id = self.series_of(&s.key) as usize;
            let bounds = &self.config.buckets;
            let series = &mut self.series[id];
            if s.rtt_ns != NO_SAMPLE {
                series.rtt.observe(bounds, s.rtt_ns as f64 / 1e9);
            }
            if s.server_delay_ns != NO_SAMPLE {
                series
                    .server_delay
                    .observe(bounds, s.server_delay_ns as f64 / 1e9);
            }
        }
    }

    /// The flows of one refresh (their counters since they started) and the kernel's
    /// counters: what moved since the last refresh is added to the series. Flows not
    /// in `rows` are forgotten (their counts are in already).
    pub fn refresh(&mut self, rows: &[FlowRow], totals: &Totals, flows: usize) {
        self.generation += 1;
        for r in rows {
            let key = r.key();
            // One lookup for a flow known before (nearly all of them, each refresh).
            let seen = match self.flows.get_mut(&key) {
                Some(seen) => seen,
                None => {
                    self.series_of(&key);
                    self.flows.get_mut(&key).expect("just made")
                }
            };
            let id = seen.series as usize;
            let now = counts(r);
            let mut delta = [0u64; 10];
            for i in 0..10 {
                // A count that went back (a flow recreated) starts over from zero.
                delta[i] = if now[i] >= seen.counts[i] {
                    now[i] - seen.counts[i]
                } else {
                    now[i]
                };
            }
            seen.counts = now;
            seen.generation = self.generation;
            let s = &mut self.series[id];
            let [txp, rxp, txd, rxd, txb, rxb, rxl, txl, reo, dup] = delta;
            s.packets[TX][1] += txd;
            s.packets[TX][0] += txp.saturating_sub(txd);
            s.packets[RX][1] += rxd;
            s.packets[RX][0] += rxp.saturating_sub(rxd);
            s.bytes[TX] += txb;
            s.bytes[RX] += rxb;
            s.lost[RX] += rxl;
            s.lost[TX] += txl;
            s.lost_tx_known |= r.both.is_some();
            s.reordered += reo;
            s.duplicate += dup;
        }
        let generation = self.generation;
        self.flows.retain(|_, s| s.generation == generation);
        self.totals = *totals;
        self.flow_count = flows as u64;
    }

    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let iface = self.config.iface.as_str();
        let by_label: Vec<(&(u8, String), &Series)> = self
            .index
            .iter()
            .map(|(k, &id)| (k, &self.series[id as usize]))
            .collect();
        let labels = |proto: u8, peer: &str| {
            vec![
                ("iface", iface.to_owned()),
                ("proto", proto_name(proto).to_owned()),
                ("peer", peer.to_owned()),
            ]
        };
        for (name, help, pick) in [
            (
                "pdm_rtt",
                "Round-trip time of PDM echoes (RFC 8250), every sample",
                (|s: &Series| &s.rtt) as fn(&Series) -> &Hist,
            ),
            (
                "pdm_server_delay",
                "Server delay: the peer's DTLR on the first data-carrying echo of each PSN",
                |s: &Series| &s.server_delay,
            ),
        ] {
            let mut m = encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((proto, peer), s) in &by_label {
                let l = labels(*proto, peer);
                HistView {
                    hist: pick(s),
                    bounds: &self.config.buckets,
                }
                .encode(m.encode_family(&l)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "pdm_packets",
            "Packets by direction (tx: sent by the local end) and whether they carried PDM",
            None,
            MetricType::Counter,
        )?;
        for ((proto, peer), s) in &by_label {
            for (d, dir) in DIRECTIONS.iter().enumerate() {
                for (p, pdm) in ["false", "true"].iter().enumerate() {
                    let mut l = labels(*proto, peer);
                    l.push(("direction", (*dir).to_owned()));
                    l.push(("pdm", (*pdm).to_owned()));
                    Value {
                        v: s.packets[d][p],
                        counter: true,
                    }
                    .encode(m.encode_family(&l)?)?;
                }
            }
        }
        for (name, help, pick, tx_always) in [
            (
                "pdm_bytes",
                "Octets on the wire by direction",
                (|s: &Series| s.bytes) as fn(&Series) -> [u64; 2],
                true,
            ),
            (
                "pdm_lost_packets",
                "PSNs the peer's sequence skipped that never arrived, by direction of travel",
                |s: &Series| s.lost,
                false,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((proto, peer), s) in &by_label {
                for (d, dir) in DIRECTIONS.iter().enumerate() {
                    if d == TX && !tx_always && !s.lost_tx_known {
                        continue;
                    }
                    let mut l = labels(*proto, peer);
                    l.push(("direction", (*dir).to_owned()));
                    Value {
                        v: pick(s)[d],
                        counter: true,
                    }
                    .encode(m.encode_family(&l)?)?;
                }
            }
        }
        for (name, help, pick) in [
            (
                "pdm_reordered_packets",
                "PDM packets that arrived after a later PSN",
                (|s: &Series| s.reordered) as fn(&Series) -> u64,
            ),
            (
                "pdm_duplicate_packets",
                "PDM packets whose PSN had already arrived",
                |s: &Series| s.duplicate,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((proto, peer), s) in &by_label {
                Value {
                    v: pick(s),
                    counter: true,
                }
                .encode(m.encode_family(&labels(*proto, peer))?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "pdm_skipped_packets",
            "Packets a program passed without PDM, by hook and reason",
            None,
            MetricType::Counter,
        )?;
        for &c in Counter::ALL {
            let name = c.name();
            let Some((hook, reason)) = name
                .strip_prefix("egress_skip_")
                .map(|r| ("egress", r))
                .or_else(|| name.strip_prefix("ingress_skip_").map(|r| ("ingress", r)))
            else {
                continue;
            };
            let l = vec![
                ("iface", iface.to_owned()),
                ("hook", hook.to_owned()),
                ("reason", reason.to_owned()),
            ];
            Value {
                v: self.totals.get(c),
                counter: true,
            }
            .encode(m.encode_family(&l)?)?;
        }
        let iface_only = vec![("iface", iface.to_owned())];
        for (name, help, v, counter) in [
            (
                "pdm_flow_table_evictions",
                "Flows the kernel's table evicted to make room for new ones",
                self.totals.get(Counter::FlowEvictions),
                true,
            ),
            (
                "pdm_samples_dropped",
                "RTT samples lost because the ring to userspace was full",
                self.totals.get(Counter::IngressSamplesDropped),
                true,
            ),
            ("pdm_flows", "Flows known now", self.flow_count, false),
        ] {
            let t = if counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut m = encoder.encode_descriptor(name, help, None, t)?;
            Value { v, counter }.encode(m.encode_family(&iface_only)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "pdm_build_info",
            "pdm's version",
            None,
            MetricType::Gauge,
        )?;
        let version = vec![("version", env!("CARGO_PKG_VERSION").to_owned())];
        Value {
            v: 1,
            counter: false,
        }
        .encode(m.encode_family(&version)?)?;
        Ok(())
    }

    /// Distinct peer labels in use (for the bound).
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

/// The exported state, shared between the run's loop and the HTTP server.
#[derive(Clone, Debug)]
pub struct Exporter(Arc<Mutex<State>>);

impl Collector for Exporter {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .encode(encoder)
    }
}

impl Exporter {
    pub fn new(config: MetricsConfig) -> Self {
        Self(Arc::new(Mutex::new(State::new(config))))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The exposition: OpenMetrics, or the Prometheus text format (0.0.4).
    pub fn render(&self, openmetrics: bool) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String does not fail");
        if openmetrics {
            out
        } else {
            prometheus_text(&out)
        }
    }
}

/// The OpenMetrics exposition as the Prometheus text format 0.0.4: no `# EOF` or
/// `# UNIT` lines, and counter families named as their samples (`_total`).
fn prometheus_text(om: &str) -> String {
    let counters: HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::test_row;

    fn exporter(peer: PeerLabel, max_series: usize) -> Exporter {
        Exporter::new(MetricsConfig {
            iface: "eth0".into(),
            peer,
            max_series,
            buckets: default_buckets(),
        })
    }

    fn sample(key: FlowKey, rtt_ns: u64, server_delay_ns: u64) -> RttSample {
        RttSample {
            key,
            ts_ns: 1,
            rtt_ns,
            server_delay_ns,
            psn: 1,
            fault: 0,
            _pad: 0,
            slot: 0,
        }
    }

    #[test]
    fn buckets_run_from_a_microsecond_to_ten_seconds() {
        let b = default_buckets();
        assert_eq!(b.first(), Some(&1e-6));
        assert_eq!(b.last(), Some(&10.0));
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_sample_lands_in_its_bucket_and_counters_add_deltas() {
        let e = exporter(PeerLabel::Prefix, 10);
        let mut r = test_row(17, "fd00::1", 40000, "fd00:1:2:3:4::9", 53);
        let key = r.key();
        e.with(|s| {
            s.samples(&[
                sample(key, 150_000, 3_000_000),
                sample(key, 150_000, NO_SAMPLE),
            ]);
            (r.tx_packets, r.tx_pdm, r.rx_packets, r.rx_pdm, r.rx_lost) = (10, 8, 9, 9, 1);
            s.refresh(std::slice::from_ref(&r), &Totals::default(), 1);
            (r.tx_packets, r.tx_pdm) = (15, 12);
            s.refresh(std::slice::from_ref(&r), &Totals::default(), 1);
            // Gone: its counts stay in.
            s.refresh(&[], &Totals::default(), 0);
        });
        let text = e.render(false);
        let peer = r#"peer="fd00:1:2:3::/64""#;
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle) && l.contains(peer))
                .unwrap_or_else(|| panic!("{needle} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("pdm_rtt_seconds_count"), "2");
        assert_eq!(line(r#"pdm_rtt_seconds_bucket{le="0.0001""#), "0");
        assert_eq!(
            line(r#"pdm_rtt_seconds_bucket{le="0.0002""#),
            "2",
            "150 µs is in the 200 µs bucket"
        );
        assert_eq!(line("pdm_server_delay_seconds_count"), "1");
        assert_eq!(
            line(
                r#"pdm_packets_total{iface="eth0",proto="udp",peer="fd00:1:2:3::/64",direction="tx",pdm="true"}"#
            ),
            "12"
        );
        assert_eq!(line(r#"direction="tx",pdm="false""#), "3");
        assert_eq!(
            line(
                r#"pdm_lost_packets_total{iface="eth0",proto="udp",peer="fd00:1:2:3::/64",direction="rx""#
            ),
            "1"
        );
        assert!(!text.contains(r#"direction="tx"}"#) || !text.contains("pdm_lost_packets_total{iface=\"eth0\",proto=\"udp\",peer=\"fd00:1:2:3::/64\",direction=\"tx\"}"),
            "no tx loss from pdm run's own view");
        assert!(text.contains("# TYPE pdm_packets_total counter"), "{text}");
        assert!(!text.contains("# EOF"));
        let om = e.render(true);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE pdm_packets counter"));
        assert!(om.contains("pdm_build_info{version="));
    }

    #[test]
    fn peers_beyond_the_bound_fold_into_other() {
        let e = exporter(PeerLabel::Host, 3);
        let rows: Vec<FlowRow> = (1..=10)
            .map(|i| test_row(6, "fd00::1", 40000, &format!("fd00::{i:x}"), 443))
            .collect();
        e.with(|s| {
            s.refresh(&rows, &Totals::default(), rows.len());
            assert_eq!(s.peers(), 3);
        });
        let text = e.render(false);
        let series: HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("pdm_reordered_packets_total{"))
            .collect();
        assert_eq!(series.len(), 4, "three peers and other: {series:?}");
        assert!(text.contains(r#"peer="other""#));
    }
}
