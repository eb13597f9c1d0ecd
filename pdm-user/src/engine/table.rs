//! The flows pdm knows about: fed by the kernel's RTT samples and by scans of its flow
//! table, expired when idle or closed.

use std::{net::Ipv6Addr, time::Duration};

use pdm_common::{
    flow::{FLOW_CLOSED, FlowKey, FlowSlot, FlowState, NO_SAMPLE, RttSample},
    seq,
    time::TimeFault,
};

use super::{
    BothEnds, FastMap, FlowRow, PeerFaults, Summary,
    distribution::{Histogram, Window},
};

/// What a refresh reads and writes of a flow. The delay distributions live apart, in
/// [`Delays`]: a refresh walks every flow, and with them inline each flow spanned twice
/// the cache lines, most of which the walk did not need.
#[derive(Debug, Default)]
struct Flow {
    key: FlowKey,
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

/// A flow's delay samples: touched by its samples, and by the rows that show them.
#[derive(Debug, Default)]
struct Delays {
    rtt: Window,
    server_delay: Window,
    rtt_all: Histogram,
    server_delay_all: Histogram,
    /// Echoes whose peer times gave no sample (here rather than in [`Flow`], which a
    /// refresh walks for every flow: only samples touch it).
    faults: PeerFaults,
    /// Only from sources that see both ends: boxed, so the kernel's flows do not pay
    /// for it.
    both: Option<Box<Both>>,
}

/// One direction's PSN sequence: the `pdm_common::seq` word, and how many PSNs
/// arrived twice and late so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqCounts {
    pub seq: u64,
    pub duplicate: u64,
    pub reordered: u64,
}

/// What a source that sees both ends adds to a flow (see [`BothEnds`]).
#[derive(Debug, Default)]
struct Both {
    /// The client's sequence at the previous update, and widened from it as the
    /// kernel's rx sequence is in [`Widened`].
    tx_prev: SeqCounts,
    tx_lost: i64,
    tx_recent_holes: u32,
    client_delay: Window,
    client_delay_all: Histogram,
    server_side_rtt: Window,
    server_side_rtt_all: Histogram,
    client_side_rtt: Window,
    client_side_rtt_all: Histogram,
}

impl Both {
    fn row(&self, now_ns: u64, span: u64, windows: bool, since_start: bool) -> BothEnds {
        let mut b = BothEnds {
            tx_lost: (self.tx_lost - i64::from(self.tx_recent_holes)).max(0) as u64,
            tx_reordered: self.tx_prev.reordered,
            tx_duplicate: self.tx_prev.duplicate,
            ..BothEnds::default()
        };
        if windows {
            b.client_delay = self.client_delay.summary(now_ns, span);
            b.server_side_rtt = self.server_side_rtt.summary(now_ns, span);
            b.client_side_rtt = self.client_side_rtt.summary(now_ns, span);
        }
        if since_start {
            b.client_delay_all = self.client_delay_all.summary();
            b.server_side_rtt_all = self.server_side_rtt_all.summary();
            b.client_side_rtt_all = self.client_side_rtt_all.summary();
        }
        b
    }
}

/// The figures only a source that sees both ends hands the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// DTLR on the client's packets.
    ClientDelay,
    /// A round trip on the capture's clock.
    ServerSideRtt,
    /// The same on the client's side of the capture point.
    ClientSideRtt,
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
    /// PSNs the peer's sequence skipped and that have not arrived (see
    /// `pdm_common::seq`). Goes down when a skipped PSN arrives late.
    rx_lost: i64,
    /// Of those, the ones skipped since the previous refresh that are still inside the
    /// reordering window: not reported lost yet, they may still come.
    rx_recent_holes: u32,
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
        // The kernel counts (packets, PDM packets) as one u64, so a packet count that
        // wrapped carried one into the PDM count.
        let carried = |now: u32, prev: u32| u32::from(now < prev);
        self.tx_pdm += u64::from(
            now.tx_pdm
                .wrapping_sub(prev.tx_pdm)
                .wrapping_sub(carried(now.tx_packets, prev.tx_packets)),
        );
        self.rx_pdm += u64::from(
            now.rx_pdm
                .wrapping_sub(prev.rx_pdm)
                .wrapping_sub(carried(now.rx_packets, prev.rx_packets)),
        );
        let skipped = |w| seq::unpack(w).2;
        self.rx_lost += i64::from(skipped(now.rx_seq).wrapping_sub(skipped(prev.rx_seq)) as i16);
        self.rx_recent_holes = seq::recent_holes(prev.rx_seq, now.rx_seq);
        // The kernel counts (duplicate, reordered) as one u32: a duplicate count that
        // wrapped carried one into the reordered count.
        let carried = u16::from(now.rx_duplicate < prev.rx_duplicate);
        self.rx_reordered += u64::from(
            now.rx_reordered
                .wrapping_sub(prev.rx_reordered)
                .wrapping_sub(carried),
        );
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

/// How many flows ahead [`Table::prefetch_slot`] runs.
const PREFETCH_AHEAD: usize = 8;

/// Starts loading `*v` into the cache (every line of it); a hint, no effect on results.
#[inline(always)]
fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = std::ptr::from_ref(v).cast::<i8>();
        let mut off = 0;
        while off < size_of::<T>() {
            // SAFETY: prefetching is a hint; the address is within `v`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(off))
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// [`Table::by_slot`] for a kernel slot no flow of ours was seen in.
const NO_FLOW: u32 = u32::MAX;

/// Every flow pdm knows about, fed by samples and kernel snapshots.
///
/// Flows live in a slab indexed by id. A kernel slot keeps its flow until the flow is
/// evicted or expired, so a refresh finds each flow through the slot it was last seen
/// in, with one key compare and no hashing; the key index serves samples and flows
/// that moved. At 10 000 flows, hashing every key each refresh was the largest part
/// of the loader's time.
#[derive(Debug, Default)]
pub struct Table {
    config: TableConfig,
    /// Inline rather than boxed: a refresh walks them all, and contiguous flows read
    /// several times faster than boxes spread over the heap. Freed ids are reused, so
    /// the slab is as long as the most flows known at once (a flood through the kernel
    /// table included: its flows are dropped at the next refresh).
    flows: Vec<Option<Flow>>,
    /// By flow id, as `flows`.
    delays: Vec<Delays>,
    free: Vec<u32>,
    index: FastMap<FlowKey, u32>,
    /// Kernel slot -> id of the flow last seen in it, or [`NO_FLOW`].
    by_slot: Vec<u32>,
    /// Number of refreshes so far.
    generation: u64,
    /// Flows the kernel's table evicted before we expired them.
    pub evicted: u64,
    /// Flows expired (idle or closed) by us.
    pub expired: u64,
    /// Set by [`Table::settle`]: the run is over, nothing more will arrive.
    settled: bool,
}

impl Table {
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// A table with room for `flows` flows known at once (the kernel table's slots):
    /// reserved up front, so that a flood of new flows fills it page by page instead of
    /// growing it by doubling, which copied tens of MiB mid-flood and left the process
    /// that much larger at once. Reserved memory costs nothing until a flow uses it.
    pub fn with_capacity(config: TableConfig, flows: usize) -> Self {
        let mut t = Self::new(config);
        t.flows.reserve_exact(flows);
        t.delays.reserve_exact(flows);
        t.index.reserve(flows);
        t
    }

    /// Ends the run: from the next refresh on, PSNs still missing inside a flow's
    /// reordering window count as lost (nothing more will arrive), for a final report.
    pub fn settle(&mut self) {
        self.settled = true;
    }

    /// The id of `key`'s flow, created if new.
    fn id(&mut self, key: &FlowKey) -> u32 {
        if let Some(&id) = self.index.get(key) {
            return id;
        }
        let flow = Flow {
            key: *key,
            ..Flow::default()
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id as usize] = Some(flow);
                id
            }
            None => {
                self.flows.push(Some(flow));
                self.delays.push(Delays::default());
                (self.flows.len() - 1) as u32
            }
        };
        self.index.insert(*key, id);
        id
    }

    fn flow_mut(&mut self, id: u32) -> &mut Flow {
        self.flows[id as usize]
            .as_mut()
            .expect("ids in the index and slots name live flows")
    }

    fn forget(&mut self, id: u32) {
        if let Some(f) = self.flows[id as usize].take() {
            self.delays[id as usize] = Delays::default();
            self.index.remove(&f.key);
            self.free.push(id);
        }
    }

    /// The id of the flow in kernel slot `slot` holding `key`: through the slot when it
    /// still holds the flow it held, else through the key index.
    fn id_in_slot(&mut self, slot: u32, key: &FlowKey) -> u32 {
        let slot = slot as usize;
        if slot >= self.by_slot.len() {
            self.by_slot.resize(slot + 1, NO_FLOW);
        }
        let known = self.by_slot[slot];
        if let Some(Some(f)) = self.flows.get(known as usize) {
            if f.key.same(key) {
                return known;
            }
            // The kernel gave the slot to another flow: the one we knew there was
            // evicted. One that never carried PDM is forgotten now rather than at the end
            // of the refresh (as it would be unless it moved), so its record makes room
            // for the new flow: under a flood of new 5-tuples the records stay within
            // the kernel table's size instead of reaching twice it.
            // (A flow known only from a sample has not been scanned yet: it keeps its
            // refresh of grace.)
            if f.prev.is_some() && f.wide.tx_pdm + f.wide.rx_pdm == 0 && f.seen != self.generation {
                self.forget(known);
            }
        }
        let id = self.id(key);
        self.by_slot[slot] = id;
        id
    }

    /// Asks the CPU to start loading the records of the flow last seen in kernel slot
    /// `slot`: flows sit in the slab in creation order, the kernel's slots in hash
    /// order, so each one a walk or a sample visits is a cache miss; started a few
    /// flows ahead, the misses overlap instead of queueing.
    /// With `delays`, its delay distributions too (a sample touches them, a refresh not).
    fn prefetch_slot(&self, slot: u32, delays: bool) {
        if let Some(&id) = self.by_slot.get(slot as usize)
            && (id as usize) < self.flows.len()
        {
            prefetch(&self.flows[id as usize]);
            if delays {
                prefetch(&self.delays[id as usize]);
            }
        }
    }

    /// Adds the kernel's RTT samples, in order.
    pub fn add_samples(&mut self, samples: &[RttSample]) {
        for (i, s) in samples.iter().enumerate() {
            if let Some(ahead) = samples.get(i + PREFETCH_AHEAD) {
                self.prefetch_slot(ahead.slot, true);
            }
            self.add_sample(s);
        }
    }

    /// Adds one RTT sample from the kernel.
    pub fn add_sample(&mut self, s: &RttSample) {
        let generation = self.generation;
        let span = self.config.window.as_nanos() as u64;
        let id = self.id_hinted(s.slot, &s.key);
        let f = self.flow_mut(id);
        if f.prev.is_none() {
            f.seen = generation;
        }
        let d = &mut self.delays[id as usize];
        if let Some(fault) = TimeFault::from_u8(s.fault) {
            d.faults.count(fault);
            return;
        }
        // A source may hand a server-delay sample alone (a capture pairs the two apart).
        if s.rtt_ns != NO_SAMPLE {
            d.rtt.push(s.ts_ns, s.rtt_ns, span);
            d.rtt_all.push(s.rtt_ns);
        }
        if s.server_delay_ns != NO_SAMPLE {
            d.server_delay.push(s.ts_ns, s.server_delay_ns, span);
            d.server_delay_all.push(s.server_delay_ns);
        }
    }

    /// The id of `key`'s flow, through the source's `slot` where a scan has already
    /// seen one (the slot number is the source's word, and must not size anything).
    fn id_hinted(&mut self, slot: u32, key: &FlowKey) -> u32 {
        if (slot as usize) < self.by_slot.len() {
            self.id_in_slot(slot, key)
        } else {
            self.id(key)
        }
    }

    /// Adds a figure only a source that sees both ends has, for `key`'s flow (in
    /// `slot`, as the source's refreshes give it).
    pub fn add_figure(&mut self, slot: u32, key: &FlowKey, figure: Figure, ts_ns: u64, ns: u64) {
        let span = self.config.window.as_nanos() as u64;
        let id = self.id_hinted(slot, key);
        let b = self.delays[id as usize].both.get_or_insert_default();
        let (window, all) = match figure {
            Figure::ClientDelay => (&mut b.client_delay, &mut b.client_delay_all),
            Figure::ServerSideRtt => (&mut b.server_side_rtt, &mut b.server_side_rtt_all),
            Figure::ClientSideRtt => (&mut b.client_side_rtt, &mut b.client_side_rtt_all),
        };
        window.push(ts_ns, ns, span);
        all.push(ns);
    }

    /// Counts an echo of `key`'s flow that gave no sample because of the times sent.
    pub fn add_fault(&mut self, slot: u32, key: &FlowKey, fault: TimeFault) {
        let id = self.id_hinted(slot, key);
        self.delays[id as usize].faults.count(fault);
    }

    /// Takes in the client's PSN sequence of `key`'s flow (a source that sees both
    /// ends calls this once per refresh, after [`Table::refresh`]).
    pub fn client_sequence(&mut self, key: &FlowKey, now: SeqCounts) {
        let settled = self.settled;
        let id = self.id(key);
        let b = self.delays[id as usize].both.get_or_insert_default();
        let skipped = |w| seq::unpack(w).2;
        b.tx_lost += i64::from(skipped(now.seq).wrapping_sub(skipped(b.tx_prev.seq)) as i16);
        b.tx_recent_holes = if settled {
            0
        } else {
            seq::recent_holes(b.tx_prev.seq, now.seq)
        };
        b.tx_prev = now;
    }

    /// `key`'s flow as a row with every summary, at `now_ns` (for a flow that ended, its
    /// last packet's time: the window figures are those of its last window). `ended`:
    /// nothing more of the flow will come, so PSNs still missing inside the reordering
    /// window are lost (as [`Table::settle`] makes them for every flow).
    pub fn row_of(&self, key: &FlowKey, now_ns: u64, ended: bool) -> Option<FlowRow> {
        let id = *self.index.get(key)?;
        let f = self.flows[id as usize]
            .as_ref()
            .filter(|f| f.prev.is_some())?;
        let span = self.config.window.as_nanos() as u64;
        let d = &self.delays[id as usize];
        let mut r = full_row(f, d, now_ns, span, true, true);
        if ended {
            r.rx_lost = f.wide.rx_lost.max(0) as u64;
            if let (Some(rb), Some(b)) = (r.both.as_mut(), &d.both) {
                rb.tx_lost = b.tx_lost.max(0) as u64;
            }
        }
        Some(r)
    }

    /// `key`'s distributions since it started (the log buckets of its histograms).
    pub fn distributions(&self, key: &FlowKey) -> Option<super::Distributions> {
        let &id = self.index.get(key)?;
        let d = &self.delays[id as usize];
        Some(super::Distributions {
            rtt: d.rtt_all.buckets(),
            server_delay: d.server_delay_all.buckets(),
            rtt_all: d.rtt_all.summary(),
            server_delay_all: d.server_delay_all.summary(),
        })
    }

    /// Forgets `key`'s flow (a source that decides itself when its flows end).
    pub fn remove(&mut self, key: &FlowKey) {
        if let Some(&id) = self.index.get(key) {
            self.forget(id);
        }
    }

    /// Takes in the kernel's flow table, (slot, entry) for every live slot, at monotonic
    /// time `now_ns`. Returns the flows to delete from the kernel's table (idle or
    /// closed), with their slots.
    pub fn refresh(
        &mut self,
        kernel: impl IntoIterator<Item = (u32, FlowSlot)>,
        now_ns: u64,
    ) -> Vec<(u32, FlowKey)> {
        self.refresh_rows(kernel, now_ns, None, |_| true)
    }

    /// As [`Table::refresh`], and into `rows` (cleared first) every flow that `keep`
    /// accepts as [`Table::rows_into`] would give it without summaries, built while each
    /// flow is at hand: at 10 000 flows, walking them all again for the rows was a large
    /// part of the live view's time, most of it waiting for memory.
    pub fn refresh_rows(
        &mut self,
        kernel: impl IntoIterator<Item = (u32, FlowSlot)>,
        now_ns: u64,
        mut rows: Option<&mut Vec<FlowRow>>,
        keep: impl Fn(&FlowRow) -> bool,
    ) -> Vec<(u32, FlowKey)> {
        if let Some(rows) = rows.as_deref_mut() {
            rows.clear();
        }
        let idle_timeout = self.config.idle_timeout.as_nanos() as u64;
        let closed_linger = self.config.closed_linger.as_nanos() as u64;
        self.generation += 1;
        let generation = self.generation;
        let settled = self.settled;
        let mut evicted = 0;
        let mut remove = Vec::new();
        let mut kernel = kernel.into_iter();
        let mut ahead = std::collections::VecDeque::with_capacity(PREFETCH_AHEAD);
        loop {
            while ahead.len() < PREFETCH_AHEAD
                && let Some(next) = kernel.next()
            {
                self.prefetch_slot(next.0, false);
                ahead.push_back(next);
            }
            let Some((slot, FlowSlot { key, state })) = ahead.pop_front() else {
                break;
            };
            let id = self.id_in_slot(slot, &key);
            let f = self.flow_mut(id);
            if f.seen == generation {
                continue; // the same flow twice in one scan: it moved while we read
            }
            f.seen = generation;
            if f.first_seen_ns == 0 {
                f.first_seen_ns = now_ns;
                f.last_active_ns = now_ns;
            }
            if f.wide.update(f.prev.is_some().then_some(&f.state), &state) {
                evicted += 1;
            }
            if settled {
                f.wide.rx_recent_holes = 0;
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
            f.state = state;

            let idle = now_ns.saturating_sub(f.last_active_ns);
            let closed = state.flags & FLOW_CLOSED != 0;
            if idle > idle_timeout || (closed && idle > closed_linger) {
                remove.push((slot, key));
                self.forget(id);
            } else if let Some(rows) = rows.as_deref_mut() {
                let r = row(f, now_ns);
                if keep(&r) {
                    rows.push(r);
                }
            }
        }
        // Known flows the kernel no longer has, and that we did not remove: the table
        // evicted them to make room. Flows known only from a sample get one refresh to
        // show up. A flow that carried PDM is kept for [`PDM_FLOW_GRACE`] refreshes:
        // should its next packet bring it back, its record carries on rather than
        // restarting. Flood entries never carry PDM, so they are not kept.
        for id in 0..self.flows.len() as u32 {
            let Some(f) = &self.flows[id as usize] else {
                continue;
            };
            let had_pdm = f.wide.tx_pdm + f.wide.rx_pdm != 0;
            let kept = f.seen == generation
                || (f.prev.is_none() && generation - f.seen <= 1)
                || (had_pdm && generation - f.seen <= PDM_FLOW_GRACE);
            if !kept {
                if f.prev.is_some() {
                    evicted += 1;
                }
                self.forget(id);
            } else if f.seen != generation
                && f.prev.is_some()
                && let Some(rows) = rows.as_deref_mut()
            {
                // Kept for its grace period: still shown.
                let r = row(f, now_ns);
                if keep(&r) {
                    rows.push(r);
                }
            }
        }
        self.evicted += evicted;
        self.expired += remove.len() as u64;
        remove
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Fills in the sliding-window summaries of a row made with `windows: false`.
    pub fn fill_windows(&self, row: &mut FlowRow, now_ns: u64) {
        let span = self.config.window.as_nanos() as u64;
        let key = row.key();
        if let Some(&id) = self.index.get(&key) {
            let d = &self.delays[id as usize];
            row.rtt = d.rtt.summary(now_ns, span);
            row.server_delay = d.server_delay.summary(now_ns, span);
            row.faults = d.faults;
        }
    }

    /// Every flow seen in a kernel snapshot, as rows. `windows`: with the sliding-window
    /// summaries (the view asks only for the rows it shows, see [`Table::fill_windows`]).
    /// `since_start`: also summarise the since-start histograms (the NDJSON output has
    /// them; the view does not show them, and at 10 000 flows they are the largest part
    /// of a refresh).
    pub fn rows(&self, now_ns: u64, windows: bool, since_start: bool) -> Vec<FlowRow> {
        let mut rows = Vec::new();
        self.rows_into(&mut rows, now_ns, windows, since_start, |_| true);
        rows
    }

    /// As [`Table::rows`], for the flows `keep` accepts (before their summaries are
    /// computed), into a vector used before: at 10 000 flows the rows are megabytes, and
    /// allocating them afresh each refresh costs page faults and resident memory.
    pub fn rows_into(
        &self,
        rows: &mut Vec<FlowRow>,
        now_ns: u64,
        windows: bool,
        since_start: bool,
        keep: impl Fn(&FlowRow) -> bool,
    ) {
        rows.clear();
        let span = self.config.window.as_nanos() as u64;
        rows.extend(
            self.flows
                .iter()
                .zip(&self.delays)
                .filter_map(|(f, d)| Some((f.as_ref().filter(|f| f.prev.is_some())?, d)))
                .filter_map(|(f, d)| {
                    let r = row(f, now_ns);
                    keep(&r).then_some((r, d))
                })
                .map(|(mut r, d)| {
                    summarise(&mut r, d, now_ns, span, windows, since_start);
                    r
                }),
        );
    }
}

/// A row with the summaries asked for.
fn full_row(
    f: &Flow,
    d: &Delays,
    now_ns: u64,
    span: u64,
    windows: bool,
    since_start: bool,
) -> FlowRow {
    let mut r = row(f, now_ns);
    summarise(&mut r, d, now_ns, span, windows, since_start);
    r
}

fn summarise(r: &mut FlowRow, d: &Delays, now_ns: u64, span: u64, windows: bool, all: bool) {
    r.faults = d.faults;
    if windows {
        r.rtt = d.rtt.summary(now_ns, span);
        r.server_delay = d.server_delay.summary(now_ns, span);
    }
    if all {
        r.rtt_all = d.rtt_all.summary();
        r.server_delay_all = d.server_delay_all.summary();
    }
    r.both = d
        .both
        .as_ref()
        .map(|b| Box::new(b.row(now_ns, span, windows, all)));
}

/// One flow as a row, without summaries (see [`Table::rows`]).
fn row(f: &Flow, now_ns: u64) -> FlowRow {
    let (k, w) = (&f.key, &f.wide);
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
        rtt: Summary::default(),
        rtt_all: Summary::default(),
        server_delay: Summary::default(),
        server_delay_all: Summary::default(),
        rx_lost: (w.rx_lost - i64::from(w.rx_recent_holes)).max(0) as u64,
        rx_reordered: w.rx_reordered,
        rx_duplicate: w.rx_duplicate,
        age: Duration::from_nanos(now_ns.saturating_sub(f.first_seen_ns)),
        idle: Duration::from_nanos(now_ns.saturating_sub(f.last_active_ns)),
        closed: f.state.flags & FLOW_CLOSED != 0,
        faults: PeerFaults::default(),
        both: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: FlowKey, state: FlowState) -> [(u32, FlowSlot); 1] {
        [(7, FlowSlot { key, state })]
    }

    #[test]
    fn a_flow_whose_kernel_entry_was_recreated_keeps_its_totals_and_counts_an_eviction() {
        let key = FlowKey::new([1; 16], [2; 16], 1, 2, 6);
        let state = |tx_bytes, tx_packets| FlowState {
            tx_bytes,
            tx_packets,
            ..FlowState::default()
        };
        let mut t = Table::new(TableConfig::default());
        let s = 1_000_000_000;
        t.refresh(slot(key, state(1000, 10)), s);
        t.refresh(slot(key, state(1500, 15)), 2 * s);
        assert_eq!(t.evicted, 0);
        // Evicted by the kernel's table and created again by the next packet.
        t.refresh(slot(key, state(100, 1)), 3 * s);
        assert_eq!(t.evicted, 1);
        let rows = t.rows(3 * s, false, false);
        assert_eq!((rows[0].tx_bytes, rows[0].tx_packets), (1600, 16));
        t.refresh(slot(key, state(300, 3)), 4 * s);
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
        t.refresh(slot(key, with_pdm(400, 4)), 5 * s);
        t.refresh([], 6 * s);
        assert_eq!(t.rows(6 * s, false, false).len(), 1, "kept for a while");
        t.refresh(slot(key, with_pdm(50, 1)), 7 * s);
        assert_eq!(t.evicted, 2);
        let rows = t.rows(7 * s, false, false);
        assert_eq!((rows[0].tx_bytes, rows[0].tx_packets), (1950, 20));
        // Gone for good: dropped after the grace, counted once.
        for i in 8..8 + PDM_FLOW_GRACE + 1 {
            t.refresh([], i * s);
        }
        assert!(t.is_empty());
        assert_eq!(t.evicted, 3);
        // A flow that never carried PDM (a flood entry) goes at once.
        t.refresh(slot(key, state(10, 1)), 20 * s);
        t.refresh([], 21 * s);
        assert!(t.is_empty());
    }

    /// The kernel adds (packets, PDM packets) as one u64: a packet count wrapping past
    /// 2^32 carries one into the PDM count, which must not be counted as a PDM packet.
    #[test]
    fn a_packet_count_wrapping_into_the_pdm_count_is_taken_back_out() {
        let key = FlowKey::new([1; 16], [2; 16], 1, 2, 17);
        let pair = |packets: u64, pdm: u64| {
            // What one u64 holding packets + pdm << 32 reads as, in its two halves.
            let word = packets.wrapping_add(pdm << 32);
            (word as u32, (word >> 32) as u32)
        };
        let state = |packets, pdm, bytes| {
            let (rx_packets, rx_pdm) = pair(packets, pdm);
            FlowState {
                rx_packets,
                rx_pdm,
                rx_bytes: bytes,
                ..FlowState::default()
            }
        };
        let mut t = Table::new(TableConfig::default());
        let s = 1_000_000_000;
        t.refresh(slot(key, state(u32::MAX as u64 - 10, 5, 100)), s);
        t.refresh(slot(key, state(u32::MAX as u64 + 20, 25, 200)), 2 * s);
        let rows = t.rows(2 * s, false, false);
        assert_eq!(
            (rows[0].rx_packets, rows[0].rx_pdm),
            (u32::MAX as u64 + 20, 25)
        );
    }

    /// The rows built during the refresh are the rows the table gives afterwards,
    /// including a flow kept for its grace period and none for an expired one.
    #[test]
    fn rows_built_during_the_refresh_match_the_rows_after_it() {
        let key = |i: u8| FlowKey::new([1; 16], [i; 16], 1, 2, 17);
        let at = |slot, i: u8, packets: u32| {
            (
                slot,
                FlowSlot {
                    key: key(i),
                    state: FlowState {
                        tx_packets: packets,
                        tx_pdm: packets,
                        tx_bytes: u64::from(packets) * 100,
                        ..FlowState::default()
                    },
                },
            )
        };
        let s = 1_000_000_000;
        let (mut a, mut b) = (
            Table::new(TableConfig::default()),
            Table::new(TableConfig::default()),
        );
        let scans = [
            vec![at(0, 1, 1), at(1, 2, 1), at(2, 3, 1)],
            vec![at(0, 1, 2), at(2, 3, 2)], // flow 2 missing: kept for its grace
            vec![at(0, 1, 3), at(2, 3, 2)], // flow 3 quiet
            vec![at(0, 1, 4), at(2, 3, 2)],
        ];
        for (i, scan) in scans.into_iter().enumerate() {
            let now = (i as u64 + 1) * s;
            let mut during = Vec::new();
            let ea = a.refresh_rows(scan.clone(), now, Some(&mut during), |_| true);
            let eb = b.refresh(scan, now);
            assert_eq!(ea, eb);
            let mut after = b.rows(now, false, false);
            during.sort_by_key(|r| r.remote_addr);
            after.sort_by_key(|r| r.remote_addr);
            assert_eq!(during, after, "scan {i}");
        }
    }

    /// A kernel slot reused by another flow, and a flow that moved to another slot,
    /// are both told apart by key: no flow takes over another's record.
    #[test]
    fn slots_reused_by_other_flows_and_flows_that_moved_keep_their_own_records() {
        let a = FlowKey::new([1; 16], [2; 16], 1, 2, 17);
        let b = FlowKey::new([1; 16], [3; 16], 1, 2, 17);
        let state = |tx_bytes, tx_packets, tx_pdm| FlowState {
            tx_bytes,
            tx_packets,
            tx_pdm,
            ..FlowState::default()
        };
        let at = |slot, key, st| (slot, FlowSlot { key, state: st });
        let mut t = Table::new(TableConfig::default());
        let s = 1_000_000_000;
        t.refresh([at(0, a, state(100, 1, 1)), at(1, b, state(900, 9, 9))], s);
        // b takes a's slot, a moves to slot 5.
        t.refresh(
            [at(0, b, state(1000, 10, 10)), at(5, a, state(200, 2, 2))],
            2 * s,
        );
        let mut rows = t.rows(2 * s, false, false);
        rows.sort_by_key(|r| r.remote_addr);
        assert_eq!(
            rows.iter()
                .map(|r| (r.tx_bytes, r.tx_packets))
                .collect::<Vec<_>>(),
            [(200, 2), (1000, 10)]
        );
        assert_eq!(t.evicted, 0);
        // A sample for a flow the kernel has not shown yet, then its first scan.
        let c = FlowKey::new([1; 16], [4; 16], 1, 2, 17);
        t.add_sample(&RttSample {
            key: c,
            ts_ns: 2 * s,
            rtt_ns: 5000,
            server_delay_ns: NO_SAMPLE,
            slot: 0, // b's slot: the key tells them apart
            ..RttSample::default()
        });
        t.refresh(
            [at(0, b, state(1100, 11, 11)), at(5, c, state(10, 1, 1))],
            3 * s,
        );
        let mut rows = t.rows(3 * s, true, false);
        rows.sort_by_key(|r| r.remote_addr);
        assert_eq!(rows.len(), 3, "a is kept for its grace");
        assert_eq!(rows[2].rtt.p50, Some(5000));
        assert_eq!(rows[2].tx_bytes, 10);
    }

    /// A flood of new 5-tuples through a small kernel table: each refresh sees only
    /// new flows in the same slots. Records of flows that never carried PDM make room
    /// for the ones that took their slots, so the table's memory stays at the kernel
    /// table's size; a flow with PDM keeps its record through its grace.
    #[test]
    fn records_stay_within_the_kernel_tables_size_under_a_flood() {
        let mut t = Table::new(TableConfig::default());
        let s = 1_000_000_000;
        let flow = |i: u32| {
            let mut remote = [0u8; 16];
            remote[12..].copy_from_slice(&i.to_be_bytes());
            FlowKey::new([1; 16], remote, 1, 2, 17)
        };
        let real = FlowKey::new([1; 16], [9; 16], 7, 7, 6);
        let with_pdm = FlowState {
            tx_bytes: 100,
            tx_pdm: 1,
            tx_packets: 1,
            ..FlowState::default()
        };
        t.refresh(
            [(
                0,
                FlowSlot {
                    key: real,
                    state: with_pdm,
                },
            )],
            s,
        );
        for round in 1..=50u32 {
            let scan = (0..4).map(|slot| {
                (
                    slot,
                    FlowSlot {
                        key: flow(round * 4 + slot),
                        state: FlowState {
                            rx_bytes: 60,
                            rx_packets: 1,
                            ..FlowState::default()
                        },
                    },
                )
            });
            t.refresh(scan, (1 + u64::from(round)) * s);
            assert!(
                t.flows.len() <= 4 + 1,
                "round {round}: {} records",
                t.flows.len()
            );
        }
        assert_eq!(
            t.len(),
            4,
            "the flood's last four; the real flow's grace is over"
        );
    }

    /// PSNs skipped since the last refresh and still inside the reordering window are
    /// not reported lost until a refresh later (they may be reordered), nor once they
    /// arrive; at the end of the run (settle) every missing PSN is lost.
    #[test]
    fn recent_holes_are_reported_a_refresh_later_or_at_the_end() {
        let k = FlowKey::new([1; 16], [2; 16], 1, 2, 17);
        let word = |psns: &[u16]| psns.iter().fold(0, |w, &p| seq::seq_step(w, p).0);
        let state = |psns: &[u16]| FlowState {
            rx_seq: word(psns),
            rx_bytes: psns.len() as u64,
            ..FlowState::default()
        };
        let lost = |t: &mut Table, psns: &[u16], at: u64| {
            t.refresh(slot(k, state(psns)), at);
            t.rows(at, false, false)[0].rx_lost
        };
        let s = 1_000_000_000;
        let mut t = Table::new(TableConfig::default());
        assert_eq!(lost(&mut t, &[10, 13], s), 0, "11 and 12 may still come");
        assert_eq!(lost(&mut t, &[10, 13, 12], 2 * s), 1, "12 came; 11 is lost");
        assert_eq!(
            lost(&mut t, &[10, 13, 12, 14, 16], 3 * s),
            1,
            "15 is recent"
        );
        t.settle();
        assert_eq!(lost(&mut t, &[10, 13, 12, 14, 16, 18], 4 * s), 3, "the end");
    }

    /// An echo the kernel refused for the peer's DTLR marks the flow and feeds no
    /// distribution.
    #[test]
    fn samples_refused_for_the_peers_times_are_counted_not_used() {
        let k = FlowKey::new([1; 16], [2; 16], 1, 2, 17);
        let mut t = Table::new(TableConfig::default());
        let s = 1_000_000_000;
        let sample = |rtt_ns, fault: Option<TimeFault>| RttSample {
            key: k,
            ts_ns: s,
            rtt_ns,
            server_delay_ns: if fault.is_some() { NO_SAMPLE } else { 100 },
            fault: fault.map_or(0, |f| f as u8),
            ..RttSample::default()
        };
        t.add_sample(&sample(5000, None));
        t.add_sample(&sample(NO_SAMPLE, Some(TimeFault::Implausible)));
        t.add_sample(&sample(NO_SAMPLE, Some(TimeFault::Implausible)));
        t.add_sample(&sample(NO_SAMPLE, Some(TimeFault::NotRfcExact)));
        t.refresh(slot(k, FlowState::default()), s);
        let rows = t.rows(s, true, true);
        let r = &rows[0];
        assert_eq!(
            r.faults,
            PeerFaults {
                implausible: 2,
                not_rfc_exact: 1,
                malformed: 0
            }
        );
        assert_eq!((r.rtt.samples, r.rtt.max), (1, Some(5000)));
        assert_eq!((r.server_delay.samples, r.rtt_all.samples), (1, 1));
    }

    #[test]
    fn idle_and_closed_flows_are_returned_with_their_slots() {
        let a = FlowKey::new([1; 16], [2; 16], 1, 2, 6);
        let b = FlowKey::new([1; 16], [3; 16], 1, 2, 6);
        let mut t = Table::new(TableConfig::default());
        let s = 1_000_000_000;
        let st = |tx_packets, flags| FlowState {
            tx_bytes: u64::from(tx_packets),
            tx_packets,
            flags,
            ..FlowState::default()
        };
        let scan = |a_packets, b_packets| {
            [
                (
                    3,
                    FlowSlot {
                        key: a,
                        state: st(a_packets, 1),
                    },
                ),
                (
                    9,
                    FlowSlot {
                        key: b,
                        state: st(b_packets, 1 | FLOW_CLOSED),
                    },
                ),
            ]
        };
        assert!(t.refresh(scan(1, 1), s).is_empty());
        assert!(t.refresh(scan(2, 2), 2 * s).is_empty());
        // b closed and quiet for longer than the linger; a idle for less than the timeout.
        assert_eq!(t.refresh(scan(2, 2), 5 * s), [(9, b)]);
        assert_eq!(t.expired, 1);
        assert_eq!(t.len(), 1);
        let a_only = [(
            3,
            FlowSlot {
                key: a,
                state: st(2, 1),
            },
        )];
        assert_eq!(t.refresh(a_only, 70 * s), [(3, a)]);
        assert!(t.is_empty());
    }
}
