//! Per-flow measurements: RTT and server-delay distributions from the kernel's samples,
//! counters and rates from its flow table, and flow expiry.
//!
//! Distributions are kept twice: the samples of a sliding window (default 10 s, exact
//! percentiles) and a log-bucketed histogram since the flow started (bounded memory,
//! percentiles within 1/64 relative).

use std::{
    collections::{HashMap, VecDeque},
    hash::Hasher,
    net::Ipv6Addr,
    time::Duration,
};

/// FxHash-style hasher with a per-process random seed and a final avalanche. The keys
/// can come from spoofed packets, so a plain Fx hash (whose low bits, which pick the
/// bucket, depend only on the low bits of the last word) would let a flood of crafted
/// ports pile into one bucket; SipHash, on the other hand, was the largest userspace
/// cost at 10 000 flows.
pub struct FlowHasher(u64);

/// Builds [`FlowHasher`]s that start from this process's random seed.
#[derive(Clone, Copy)]
pub struct FlowHasherBuilder(u64);

impl Default for FlowHasherBuilder {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        Self(*SEED.get_or_init(|| {
            let mut b = [0u8; 8];
            // SAFETY: writes at most 8 octets into `b`. Should it fail, the seed is
            // merely predictable.
            unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
            u64::from_ne_bytes(b)
        }))
    }
}

impl std::hash::BuildHasher for FlowHasherBuilder {
    type Hasher = FlowHasher;
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher(self.0)
    }
}

/// A HashMap with [`FlowHasher`].
pub type FastMap<K, V> = HashMap<K, V, FlowHasherBuilder>;

impl Hasher for FlowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    /// MurmurHash3's 64-bit finaliser: every output bit depends on every input bit.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type FlowMap<V> = FastMap<FlowKey, V>;

use pdm_common::flow::{FLOW_CLOSED, FlowKey, FlowState, NO_SAMPLE, RttSample};

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
}

impl FlowRow {
    /// Lost share of the PSNs the peer sent us, in percent (None before any PDM).
    pub fn loss_percent(&self) -> Option<f64> {
        let expected = self.rx_pdm + self.rx_lost;
        (expected > 0).then(|| 100.0 * self.rx_lost as f64 / expected as f64)
    }

    /// Share of the packets each way that carried PDM, in percent.
    pub fn pdm_coverage(&self) -> (Option<f64>, Option<f64>) {
        let share = |pdm: u64, all: u64| (all > 0).then(|| 100.0 * pdm as f64 / all as f64);
        (
            share(self.tx_pdm, self.tx_packets),
            share(self.rx_pdm, self.rx_packets),
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

/// Exact samples of the last `span`.
#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<(u64, u64)>,
}

/// At most this many samples per window: a bulk flow can echo tens of thousands of
/// PSNs per second; beyond this the window keeps the most recent.
const WINDOW_CAP: usize = 50_000;

impl Window {
    fn push(&mut self, ts: u64, v: u64) {
        if self.samples.len() == WINDOW_CAP {
            self.samples.pop_front();
        }
        self.samples.push_back((ts, v));
    }

    fn prune(&mut self, now: u64, span: u64) {
        while self
            .samples
            .front()
            .is_some_and(|&(ts, _)| now.saturating_sub(ts) > span)
        {
            self.samples.pop_front();
        }
    }

    fn summary(&self) -> Summary {
        if self.samples.is_empty() {
            return Summary::default();
        }
        thread_local! {
            // Reused across flows: one allocation instead of one per flow per refresh.
            static SORTED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SORTED.with_borrow_mut(|v| {
            v.clear();
            v.extend(self.samples.iter().map(|&(_, x)| x));
            v.sort_unstable();
            Self::summarise(v)
        })
    }

    fn summarise(v: &[u64]) -> Summary {
        let pct = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        let sum: u128 = v.iter().map(|&x| x as u128).sum();
        Summary {
            samples: v.len() as u64,
            min: Some(v[0]),
            mean: Some((sum / v.len() as u128) as u64),
            p50: Some(pct(0.50)),
            p90: Some(pct(0.90)),
            p99: Some(pct(0.99)),
            max: Some(v[v.len() - 1]),
        }
    }
}

/// Log-bucketed histogram: exact below 64, then 32 buckets per power of two. Only the
/// range of buckets between the smallest and largest sample is stored: one flow's
/// delays span a few powers of two (a few hundred octets), where a full table would be
/// 8 KB per distribution and per flow.
#[derive(Debug)]
struct Histogram {
    /// Index of `counts[0]`.
    base: usize,
    counts: Vec<u32>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

/// Values below 64 get a bucket each; above, each power of two is split in 32.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const HALF: usize = SUB / 2;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            base: 0,
            counts: Vec::new(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let shift = 64 - v.leading_zeros() - SUB_BITS;
        // The top SUB_BITS bits: in [HALF, SUB).
        let mant = (v >> shift) as usize;
        SUB + (shift as usize - 1) * HALF + (mant - HALF)
    }

    /// The middle of bucket `i`'s value range (relative error at most 1/64).
    fn value(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let j = i - SUB;
        let shift = (j / HALF) as u32 + 1;
        let low = ((j % HALF + HALF) as u64) << shift;
        low.saturating_add((1u64 << shift) / 2)
    }

    fn push(&mut self, v: u64) {
        let i = Self::index(v);
        if self.counts.is_empty() {
            self.base = i;
            self.counts.push(0);
        } else if i < self.base {
            self.counts
                .splice(0..0, std::iter::repeat_n(0, self.base - i));
            self.base = i;
        } else if i >= self.base + self.counts.len() {
            self.counts.resize(i - self.base + 1, 0);
        }
        self.counts[i - self.base] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        // One pass for the three percentiles.
        let ranks = [0.50, 0.90, 0.99].map(|p: f64| ((p * self.count as f64).ceil() as u64).max(1));
        let mut found = [self.max; 3];
        let (mut next, mut seen) = (0, 0u64);
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n as u64;
            while next < 3 && seen >= ranks[next] {
                found[next] = Self::value(self.base + i).clamp(self.min, self.max);
                next += 1;
            }
            if next == 3 {
                break;
            }
        }
        Summary {
            samples: self.count,
            min: Some(self.min),
            mean: Some((self.sum / self.count as u128) as u64),
            p50: Some(found[0]),
            p90: Some(found[1]),
            p99: Some(found[2]),
            max: Some(self.max),
        }
    }
}

#[derive(Debug, Default)]
struct Flow {
    rtt: Window,
    server_delay: Window,
    rtt_all: Histogram,
    server_delay_all: Histogram,
    /// The kernel's entry at the last refresh.
    state: FlowState,
    wide: Widened,
    /// The refresh that last saw this flow in the kernel's table.
    seen: u64,
    /// Counters and time at the previous refresh, for rates.
    prev: Option<(u64, u64, u64)>,
    rate: (f64, f64),
    first_seen_ns: u64,
    last_active_ns: u64,
}

/// The kernel's narrow per-flow counters (16 and 32 bits, to fit a flow in 128 octets),
/// widened: each refresh adds how far they moved, modulo their width. A refresh a
/// second is far more often than the fastest of them can wrap (2^32 packets).
#[derive(Clone, Copy, Debug, Default)]
struct Widened {
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
    tx_pdm: u64,
    rx_pdm: u64,
    /// Goes down when a PSN counted lost arrives late.
    rx_lost: i64,
    rx_reordered: u64,
    rx_duplicate: u64,
}

impl Widened {
    /// Adds the movement from `prev` (the entry at the last refresh, if any) to `now`.
    /// True when `now` is a new kernel entry for the flow: its octet counters (64-bit,
    /// they never wrap) went back, so the table evicted the flow and its next packet
    /// created it again, counting from zero. Its totals carry on.
    fn update(&mut self, prev: Option<&FlowState>, now: &FlowState) -> bool {
        let recreated =
            prev.is_some_and(|p| now.tx_bytes < p.tx_bytes || now.rx_bytes < p.rx_bytes);
        let prev = match prev {
            Some(p) if !recreated => *p,
            _ => FlowState::default(),
        };
        self.tx_bytes += now.tx_bytes - prev.tx_bytes;
        self.rx_bytes += now.rx_bytes - prev.rx_bytes;
        self.tx_packets += u64::from(now.tx_packets.wrapping_sub(prev.tx_packets));
        self.rx_packets += u64::from(now.rx_packets.wrapping_sub(prev.rx_packets));
        self.tx_pdm += u64::from(now.tx_pdm.wrapping_sub(prev.tx_pdm));
        self.rx_pdm += u64::from(now.rx_pdm.wrapping_sub(prev.rx_pdm));
        self.rx_lost += i64::from(now.rx_lost.wrapping_sub(prev.rx_lost) as i16);
        self.rx_reordered += u64::from(now.rx_reordered.wrapping_sub(prev.rx_reordered));
        self.rx_duplicate += u64::from(now.rx_duplicate.wrapping_sub(prev.rx_duplicate));
        recreated
    }
}

/// Settings of the flow table.
#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    /// Span of the sliding window.
    pub window: Duration,
    /// Flows without a packet for this long are removed (kernel entry included).
    pub idle_timeout: Duration,
    /// A closed TCP flow (FIN/RST seen) is removed after this long without packets.
    pub closed_linger: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            closed_linger: Duration::from_secs(2),
        }
    }
}

/// Refreshes a flow that carried PDM stays known after the kernel's table lost it.
const PDM_FLOW_GRACE: u64 = 2;

/// Every flow pdm knows about, fed by samples and kernel snapshots.
#[derive(Debug, Default)]
pub struct Table {
    config: TableConfig,
    /// Boxed: a flow is about 450 octets, and the map keeps up to twice its peak in
    /// buckets, most of them empty; with the flows inline, a flood of new 5-tuples
    /// through a 65 536-flow kernel table cost the loader ~200 MB (measured by the
    /// flood test in tests/harden.rs), boxed about half that.
    flows: FlowMap<Box<Flow>>,
    /// Number of refreshes so far.
    generation: u64,
    /// Flows the kernel's table evicted before we expired them.
    pub evicted: u64,
    /// Flows expired (idle or closed) by us.
    pub expired: u64,
}

impl Table {
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Adds one RTT sample from the kernel.
    pub fn add_sample(&mut self, s: &RttSample) {
        let generation = self.generation;
        let f = self.flows.entry(s.key).or_default();
        if f.prev.is_none() {
            f.seen = generation;
        }
        f.rtt.push(s.ts_ns, s.rtt_ns);
        f.rtt_all.push(s.rtt_ns);
        if s.server_delay_ns != NO_SAMPLE {
            f.server_delay.push(s.ts_ns, s.server_delay_ns);
            f.server_delay_all.push(s.server_delay_ns);
        }
    }

    /// Takes a snapshot of the kernel's flow table at monotonic time `now_ns`. Returns
    /// the keys to delete from the kernel map (idle or closed flows).
    pub fn refresh(&mut self, kernel: &[(FlowKey, FlowState)], now_ns: u64) -> Vec<FlowKey> {
        let span = self.config.window.as_nanos() as u64;
        self.generation += 1;
        let generation = self.generation;
        let mut evicted = 0;
        let mut remove = Vec::new();
        for (key, state) in kernel {
            let f = self.flows.entry(*key).or_default();
            f.seen = generation;
            if f.first_seen_ns == 0 {
                f.first_seen_ns = now_ns;
                f.last_active_ns = now_ns;
            }
            if f.wide.update(f.prev.is_some().then_some(&f.state), state) {
                evicted += 1;
            }
            let packets = (f.wide.tx_packets, f.wide.rx_packets);
            match f.prev {
                Some((t, tx, rx)) if now_ns > t => {
                    let secs = (now_ns - t) as f64 / 1e9;
                    f.rate = (
                        packets.0.saturating_sub(tx) as f64 / secs,
                        packets.1.saturating_sub(rx) as f64 / secs,
                    );
                    if packets != (tx, rx) {
                        f.last_active_ns = now_ns;
                    }
                }
                _ => {}
            }
            f.prev = Some((now_ns, packets.0, packets.1));
            f.state = *state;
            f.rtt.prune(now_ns, span);
            f.server_delay.prune(now_ns, span);

            let idle = now_ns.saturating_sub(f.last_active_ns);
            let closed = state.flags & FLOW_CLOSED != 0;
            if idle > self.config.idle_timeout.as_nanos() as u64
                || (closed && idle > self.config.closed_linger.as_nanos() as u64)
            {
                remove.push(*key);
            }
        }
        // Known flows the kernel no longer has, and that we did not remove: the table
        // evicted them to make room. Flows known only from a sample get one refresh to
        // show up. A flow that carried PDM is kept for [`PDM_FLOW_GRACE`] refreshes:
        // should its next packet bring it back, its record carries on rather than
        // restarting. Flood entries never carry PDM, so they are not kept.
        self.flows.retain(|_, f| {
            let had_pdm = f.wide.tx_pdm + f.wide.rx_pdm != 0;
            let keep = f.seen == generation
                || (f.prev.is_none() && generation - f.seen <= 1)
                || (had_pdm && generation - f.seen <= PDM_FLOW_GRACE);
            if !keep && f.prev.is_some() {
                evicted += 1;
            }
            keep
        });
        self.evicted += evicted;
        for key in &remove {
            self.flows.remove(key);
        }
        self.expired += remove.len() as u64;
        remove
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Fills in the sliding-window summaries of a row made with `windows: false`.
    pub fn fill_windows(&self, row: &mut FlowRow) {
        let key = FlowKey {
            local_addr: row.local_addr.octets(),
            remote_addr: row.remote_addr.octets(),
            local_port: row.local_port,
            remote_port: row.remote_port,
            proto: row.proto,
            _pad: [0; 3],
        };
        if let Some(f) = self.flows.get(&key) {
            row.rtt = f.rtt.summary();
            row.server_delay = f.server_delay.summary();
        }
    }

    /// Every flow seen in a kernel snapshot, as rows. `windows`: with the sliding-window
    /// summaries (the view asks only for the rows it shows, see [`Table::fill_windows`]). `since_start`: also summarise
    /// the since-start histograms (the NDJSON output has them; the view does not show
    /// them, and at 10 000 flows they are the largest part of a refresh).
    pub fn rows(&self, now_ns: u64, windows: bool, since_start: bool) -> Vec<FlowRow> {
        let mut rows = Vec::new();
        self.rows_into(&mut rows, now_ns, windows, since_start);
        rows
    }

    /// As [`Table::rows`], into a vector used before: at 10 000 flows the rows are
    /// megabytes, and allocating them afresh each refresh costs page faults.
    pub fn rows_into(
        &self,
        rows: &mut Vec<FlowRow>,
        now_ns: u64,
        windows: bool,
        since_start: bool,
    ) {
        rows.clear();
        // Sized up front: growing a vector of 10 000 rows moves megabytes.
        rows.reserve(self.flows.len());
        rows.extend(
            self.flows
                .iter()
                .filter(|(_, f)| f.prev.is_some())
                .map(|(k, f)| {
                    let (s, w) = (&f.state, &f.wide);
                    FlowRow {
                        proto: k.proto,
                        local_addr: Ipv6Addr::from(k.local_addr),
                        local_port: k.local_port,
                        remote_addr: Ipv6Addr::from(k.remote_addr),
                        remote_port: k.remote_port,
                        tx_packets: w.tx_packets,
                        rx_packets: w.rx_packets,
                        tx_bytes: w.tx_bytes,
                        rx_bytes: w.rx_bytes,
                        tx_pdm: w.tx_pdm,
                        rx_pdm: w.rx_pdm,
                        tx_pps: f.rate.0,
                        rx_pps: f.rate.1,
                        rtt: if windows {
                            f.rtt.summary()
                        } else {
                            Summary::default()
                        },
                        rtt_all: if since_start {
                            f.rtt_all.summary()
                        } else {
                            Summary::default()
                        },
                        server_delay: if windows {
                            f.server_delay.summary()
                        } else {
                            Summary::default()
                        },
                        server_delay_all: if since_start {
                            f.server_delay_all.summary()
                        } else {
                            Summary::default()
                        },
                        rx_lost: w.rx_lost.max(0) as u64,
                        rx_reordered: w.rx_reordered,
                        rx_duplicate: w.rx_duplicate,
                        age: Duration::from_nanos(now_ns.saturating_sub(f.first_seen_ns)),
                        idle: Duration::from_nanos(now_ns.saturating_sub(f.last_active_ns)),
                        closed: s.flags & FLOW_CLOSED != 0,
                    }
                }),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that differ only in the remote port's high bits (what a spoofer controls)
    /// must not share the low hash bits that pick a bucket.
    #[test]
    fn crafted_ports_do_not_share_buckets() {
        use std::hash::BuildHasher as _;
        let b = FlowHasherBuilder::default();
        let mut buckets = std::collections::HashSet::new();
        for i in 0..4096u16 {
            let key = FlowKey::new([1; 16], [2; 16], 443, i << 4, 17);
            buckets.insert(b.hash_one(key) & 0xffff);
        }
        assert!(buckets.len() > 3900, "{} distinct buckets", buckets.len());
    }

    #[test]
    fn a_flow_whose_kernel_entry_was_recreated_keeps_its_totals_and_counts_an_eviction() {
        let key = FlowKey {
            local_addr: [1; 16],
            remote_addr: [2; 16],
            local_port: 1,
            remote_port: 2,
            proto: 6,
            _pad: [0; 3],
        };
        let state = |tx_bytes, tx_packets| FlowState {
            tx_bytes,
            tx_packets,
            ..FlowState::default()
        };
        let mut t = Table::new(TableConfig::default());
        let s = 1_000_000_000;
        t.refresh(&[(key, state(1000, 10))], s);
        t.refresh(&[(key, state(1500, 15))], 2 * s);
        assert_eq!(t.evicted, 0);
        // Evicted by the kernel's table and created again by the next packet.
        t.refresh(&[(key, state(100, 1))], 3 * s);
        assert_eq!(t.evicted, 1);
        let rows = t.rows(3 * s, false, false);
        assert_eq!((rows[0].tx_bytes, rows[0].tx_packets), (1600, 16));
        t.refresh(&[(key, state(300, 3))], 4 * s);
        assert_eq!(t.evicted, 1);
        let rows = t.rows(4 * s, false, false);
        assert_eq!((rows[0].tx_bytes, rows[0].tx_packets), (1800, 18));
        assert_eq!(rows[0].tx_pps, 2.0);

        // Missing from a snapshot (evicted, not back yet) and then back: one eviction,
        // totals kept, as long as it carried PDM.
        let with_pdm = |tx_bytes, tx_packets| FlowState {
            tx_pdm: tx_packets,
            ..state(tx_bytes, tx_packets)
        };
        t.refresh(&[(key, with_pdm(400, 4))], 5 * s);
        t.refresh(&[], 6 * s);
        assert_eq!(t.rows(6 * s, false, false).len(), 1, "kept for a while");
        t.refresh(&[(key, with_pdm(50, 1))], 7 * s);
        assert_eq!(t.evicted, 2);
        let rows = t.rows(7 * s, false, false);
        assert_eq!((rows[0].tx_bytes, rows[0].tx_packets), (1950, 20));
        // Gone for good: dropped after the grace, counted once.
        for i in 8..8 + PDM_FLOW_GRACE + 1 {
            t.refresh(&[], i * s);
        }
        assert!(t.is_empty());
        assert_eq!(t.evicted, 3);
        // A flow that never carried PDM (a flood entry) goes at once.
        t.refresh(&[(key, state(10, 1))], 20 * s);
        t.refresh(&[], 21 * s);
        assert!(t.is_empty());
    }

    #[test]
    fn histogram_percentiles_are_within_one_sixty_fourth() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.push(v * 1000);
        }
        let s = h.summary();
        for (got, want) in [
            (s.p50, 50_000_000.0),
            (s.p90, 90_000_000.0),
            (s.p99, 99_000_000.0),
        ] {
            let got = got.expect("sample") as f64;
            assert!((got - want).abs() / want < 1.0 / 64.0, "{got} vs {want}");
        }
        assert_eq!((s.min, s.max), (Some(1000), Some(100_000_000)));
    }

    #[test]
    fn histogram_small_values_are_exact() {
        for v in 0..64u64 {
            assert_eq!(Histogram::value(Histogram::index(v)), v);
        }
        for v in [64u64, 65, 127, 128, 1 << 20, u64::MAX / 2, u64::MAX] {
            let got = Histogram::value(Histogram::index(v));
            assert!(
                (got as f64 - v as f64).abs() <= v as f64 / 64.0,
                "{v}: {got}"
            );
        }
    }

    #[test]
    fn window_percentiles_are_exact_and_age_out() {
        let mut w = Window::default();
        for i in 0..100u64 {
            w.push(i * 1_000_000_000, i);
        }
        let s = w.summary();
        assert_eq!(
            (s.min, s.p50, s.max, s.samples),
            (Some(0), Some(50), Some(99), 100)
        );
        w.prune(99_000_000_000, 10_000_000_000);
        assert_eq!(w.summary().min, Some(89));
    }
}
