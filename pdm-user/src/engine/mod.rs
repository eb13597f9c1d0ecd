//! The flow-metrics engine: RTT and server-delay distributions from the samples a
//! source hands it, counters and rates from its flow-table snapshots, loss, and flow
//! expiry; rows ([`FlowRow`]) for the sinks.
//!
//! Distributions are kept twice: the samples of a sliding window (default 10 s, exact
//! percentiles) and a log-bucketed histogram since the flow started (bounded memory,
//! percentiles within 1/64 relative).

mod distribution;
mod hash;
mod table;

use std::{net::Ipv6Addr, time::Duration};

pub use hash::{FastMap, FlowHasher, FlowHasherBuilder};
pub use table::{Figure, SeqCounts, Table, TableConfig};

/// A distribution's summary, in nanoseconds; `None` fields when there is no sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub samples: u64,
    pub min: Option<u64>,
    pub mean: Option<u64>,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

/// A flow's distributions since it started, as (bucket middle in ns, samples),
/// ascending: what the live view's flow detail draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Distributions {
    pub rtt: Vec<(u64, u64)>,
    pub server_delay: Vec<(u64, u64)>,
    /// Their summaries, as the NDJSON's `*_all_*` figures give them.
    pub rtt_all: Summary,
    pub server_delay_all: Summary,
}

/// One flow as shown: the TUI and the JSON output both read this.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRow {
    pub proto: u8,
    pub local_addr: Ipv6Addr,
    pub local_port: u16,
    pub remote_addr: Ipv6Addr,
    pub remote_port: u16,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Packets sent / received that carried PDM.
    pub tx_pdm: u64,
    pub rx_pdm: u64,
    /// Packets per second each way over the last interval.
    pub tx_pps: f64,
    pub rx_pps: f64,
    /// RTT and server delay over the sliding window, and since the flow started.
    pub rtt: Summary,
    pub rtt_all: Summary,
    pub server_delay: Summary,
    pub server_delay_all: Summary,
    pub rx_lost: u64,
    pub rx_reordered: u64,
    pub rx_duplicate: u64,
    /// Since the flow was first seen, and since its last packet.
    pub age: Duration,
    pub idle: Duration,
    pub closed: bool,
    /// Echoes that gave no sample because of the times the peer sent.
    pub faults: PeerFaults,
    /// What a source that sees both ends' PDM adds (a capture, an observer); `None`
    /// from `pdm run`, itself one of the ends.
    pub both: Option<Box<BothEnds>>,
}

/// Figures of a flow seen from outside its ends, or from a capture holding both
/// directions: `local` is the client, `remote` the server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BothEnds {
    /// The client's PSN sequence as it reached the capture point: skipped and not
    /// arrived, arrived late, arrived twice.
    pub tx_lost: u64,
    pub tx_reordered: u64,
    pub tx_duplicate: u64,
    /// The client's DTLR: its think time before answering the server.
    pub client_delay: Summary,
    pub client_delay_all: Summary,
    /// Round trips on the capture point's own clock (a capture, an observer): the
    /// server side, t(server packet) − t(client packet it echoes) − its DTLR; at the
    /// client this is the RTT `pdm run` measures there, elsewhere the capture point ↔
    /// server part of the path.
    pub server_side_rtt: Summary,
    pub server_side_rtt_all: Summary,
    /// The client side: t(client packet) − t(server packet it echoes) − its DTLR, the
    /// capture point ↔ client part of the path.
    pub client_side_rtt: Summary,
    pub client_side_rtt_all: Summary,
}

/// A flow's echoes that gave no sample, by what was wrong with the peer's DTLR (see
/// `pdm_common::time::TimeFault`). Any of them marks the flow: its peer sends times
/// that are impossible, or not encoded as RFC 8250 says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerFaults {
    /// DTLR longer than the round trip we measured.
    pub implausible: u64,
    /// DTLR that RFC 8250's encoder cannot produce.
    pub not_rfc_exact: u64,
    /// DTLR with a zero value and a non-zero scale, or beyond 64-bit nanoseconds.
    pub malformed: u64,
}

impl PeerFaults {
    pub fn count(&mut self, f: pdm_common::time::TimeFault) {
        use pdm_common::time::TimeFault::*;
        match f {
            Implausible => self.implausible += 1,
            NotRfcExact => self.not_rfc_exact += 1,
            Malformed => self.malformed += 1,
        }
    }

    /// Whether the peer sent anything that gave no sample.
    pub fn any(&self) -> bool {
        self.implausible + self.not_rfc_exact + self.malformed != 0
    }
}

impl FlowRow {
    /// Lost share of the PSNs the peer sent us, in percent (None before any PDM).
    pub fn loss_percent(&self) -> Option<f64> {
        let expected = self.rx_pdm + self.rx_lost;
        (expected > 0).then(|| 100.0 * self.rx_lost as f64 / expected as f64)
    }

    /// Lost share of the PSNs the client sent, as they reached the capture point.
    pub fn tx_loss_percent(&self) -> Option<f64> {
        let b = self.both.as_ref()?;
        let expected = self.tx_pdm + b.tx_lost;
        (expected > 0).then(|| 100.0 * b.tx_lost as f64 / expected as f64)
    }

    /// Share of the packets each way that carried PDM, in percent.
    pub fn pdm_coverage(&self) -> (Option<f64>, Option<f64>) {
        let share = |pdm: u64, all: u64| (all > 0).then(|| 100.0 * pdm as f64 / all as f64);
        (
            share(self.tx_pdm, self.tx_packets),
            share(self.rx_pdm, self.rx_packets),
        )
    }

    /// The flow's key, as the kernel's table has it.
    pub fn key(&self) -> pdm_common::flow::FlowKey {
        pdm_common::flow::FlowKey::new(
            self.local_addr.octets(),
            self.remote_addr.octets(),
            self.local_port,
            self.remote_port,
            self.proto,
        )
    }

    pub fn proto_name(&self) -> &'static str {
        proto_name(self.proto)
    }
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        50 => "esp",
        51 => "ah",
        _ => "other",
    }
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
