//! A capture's flows, fed to the metrics engine as the kernel feeds it in `pdm run`:
//! per-flow counters and the server's PSN sequence as flow-table entries, the
//! client's sequence beside them, and the delay samples.
//!
//! A flow is seen from its client: the end that sent its first packet in the capture
//! (for TCP, the SYN's sender). Its figures:
//! - RTT from the PDM fields alone, valid at any capture point: when the client's
//!   packet p3 first echoes the server's p2 (p3.PSNLR = p2.PSNTP) and p2 echoed the
//!   last packet the client sent before p3 (p2.PSNLR = p3.PSNTP − 1, the client
//!   numbering its packets one by one), RTT = DTLS(p3) − DTLR(p2). In a bulk or
//!   pipelined flow, p2 echoes an older client packet and gives no sample: its DTLR
//!   is then not the time the server held the client's last packet.
//! - Server delay: DTLR of the first data-carrying server packet that echoes a given
//!   client PSN, as `pdm run` takes it; client delay the same way on the client's.
//! - The capture's own round trips: the server side, t(server packet) − t(client
//!   packet it echoes) − its DTLR, for the first server packet echoing each client
//!   PSN; the client side the same way from the client's packets.
//! - Loss, reordering and duplicates from each end's PSN sequence
//!   ([`pdm_common::seq`], the kernel's rule). A duplicate gives no sample.
//!
//! Fragments: every fragment counts in its datagram's flow ([`super::fragments`]).
//! A later fragment carrying the same PSN as its datagram's first (FreeBSD gives
//! every fragment of a datagram the first's PSN) is the same PDM packet again: it
//! counts as a packet with PDM, not in the sequence and not as a duplicate. A sender
//! numbering every wire packet needs nothing special.

use pdm_common::{
    chain::{Chain, Upper},
    flow::{FLOW_CLOSED, FLOW_VALID, FlowKey, FlowSlot, FlowState, NO_SAMPLE, RttSample},
    seq::{SeqEvent, seq_step},
    time::{DeltaTime, TimeFault, decode_received, echo_rtt, observed_rtt},
};

use super::{
    fragments::{Datagram, Fragments},
    reader::Packet,
};
use crate::engine::{Distributions, FastMap, Figure, FlowRow, SeqCounts, Table};

/// A flow whichever way a packet goes: (the lower end's address and port, the higher
/// end's, protocol).
type Ends = ([u8; 16], u16, [u8; 16], u16, u8);

/// Packets of each end remembered per flow for pairing with the other end's echoes.
const RECENT: usize = 64;

/// One flow of a capture.
struct CaptureFlow {
    slot: FlowSlot,
    ends: Ends,
    /// The client's PSN sequence (the server's is `slot.state.rx_seq`).
    tx: SeqCounts,
    /// The server's recent packets with PDM: (PSN, its DTLR, the client PSN it echoed,
    /// capture time).
    server: Ring<(u16, DeltaTime, u16, u64)>,
    /// The client's recent packets with PDM: (PSN, capture time).
    client: Ring<(u16, u64)>,
    /// Per figure, the last PSN whose echo gave it (or was refused): one sample per
    /// echoed PSN.
    rtt_echo: Option<u16>,
    delay_echo: Option<u16>,
    client_delay_echo: Option<u16>,
    server_side_rtt_echo: Option<u16>,
    client_side_rtt_echo: Option<u16>,
    first_ts: u64,
    last_ts: u64,
}

impl CaptureFlow {
    /// The flow's row once it has ended, as of its last packet: its age from its first
    /// packet to its last in the capture, and its packet rates averaged over that (the
    /// rate of "the last interval" means nothing once a flow is over).
    fn final_row(&self, table: &Table) -> Option<FlowRow> {
        let mut r = table.row_of(&self.slot.key, self.last_ts, true)?;
        r.age = std::time::Duration::from_nanos(self.last_ts - self.first_ts);
        r.idle = std::time::Duration::ZERO;
        let secs = r.age.as_secs_f64();
        (r.tx_pps, r.rx_pps) = if secs > 0.0 {
            (r.tx_packets as f64 / secs, r.rx_packets as f64 / secs)
        } else {
            (0.0, 0.0)
        };
        Some(r)
    }
}

/// The last [`RECENT`] of something, newest last.
struct Ring<T> {
    items: [T; RECENT],
    next: usize,
    len: usize,
}

impl<T: Copy> Ring<T> {
    fn new(fill: T) -> Self {
        Self {
            items: [fill; RECENT],
            next: 0,
            len: 0,
        }
    }

    fn push(&mut self, v: T) {
        self.items[self.next] = v;
        self.next = (self.next + 1) % RECENT;
        self.len = (self.len + 1).min(RECENT);
    }

    /// The newest item that `f` accepts.
    fn find(&self, f: impl Fn(&T) -> bool) -> Option<T> {
        (1..=self.len)
            .map(|back| self.items[(self.next + RECENT - back) % RECENT])
            .find(|v| f(v))
    }
}

/// What a capture held that belongs to no flow, and how many flows it held.
#[derive(Clone, Copy, Debug, Default)]
pub struct Leftovers {
    pub flows: u64,
    /// Later fragments whose first fragment was not seen (or forgotten).
    pub unattributed_fragments: u64,
}

/// The flows of a capture, see the module's documentation.
#[derive(Default)]
pub struct CaptureFlows {
    /// By slot (the engine's kernel-slot stand-in); freed slots are reused.
    flows: Vec<Option<CaptureFlow>>,
    free: Vec<u32>,
    index: FastMap<Ends, u32>,
    fragments: Fragments,
    /// Flows seen in all, ended ones included.
    seen: u64,
}

/// How long a flow may go without a packet before it is reported and forgotten, and
/// a closed TCP flow (FIN or RST seen), as in `pdm run`.
#[derive(Clone, Copy, Debug)]
pub struct Expiry {
    pub idle_ns: u64,
    pub closed_ns: u64,
}

impl CaptureFlows {
    pub fn leftovers(&self) -> Leftovers {
        Leftovers {
            flows: self.seen,
            unattributed_fragments: self.fragments.unattributed,
        }
    }

    /// How many flows are known now.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Takes one packet in: counters, sequences, and samples handed to `table`.
    pub fn packet(&mut self, p: &Packet, c: &Chain, table: &mut Table) {
        let (mut proto, mut sport, mut dport, tcp_flags, data) = match c.upper {
            Upper::Tcp {
                sport,
                dport,
                flags,
                header_len,
            } => {
                let headers = c.upper_offset - 40 + header_len;
                (6, sport, dport, flags, usize::from(c.payload_len) > headers)
            }
            Upper::Udp { sport, dport } => (17, sport, dport, 0, true),
            // Neighbor Discovery, MLD and router renumbering are never given PDM and are
            // not flows, as in `pdm run`; nor are errors, which speak of another flow
            // (whose packet they quote, PDM included, is never taken as sent).
            Upper::Icmpv6 {
                ty: 0..=127 | 130..=138 | 143,
                ..
            } => return,
            Upper::Icmpv6 { echo, .. } => {
                let id = echo.map_or(0, |e| e.0);
                (58, id, id, 0, true)
            }
            Upper::Opaque => (c.upper_proto, 0, 0, 0, true),
        };
        let psn = c.pdm.map(|pdm| pdm.psn_this);
        // A later fragment carrying its datagram's first PSN again.
        let mut same_pdm_packet = false;
        if let Some(frag) = c.fragment {
            if frag.offset == 0 {
                let d = Datagram {
                    proto,
                    sport,
                    dport,
                    psn,
                };
                self.fragments.first(c.src, c.dst, frag.id, d);
            } else {
                let Some(d) = self.fragments.later(c.src, c.dst, frag.id) else {
                    return;
                };
                (proto, sport, dport) = (d.proto, d.sport, d.dport);
                same_pdm_packet = psn.is_some() && psn == d.psn;
            }
        }
        let (a, b) = ((c.src, sport), (c.dst, dport));
        let ends = if a <= b {
            (a.0, a.1, b.0, b.1, proto)
        } else {
            (b.0, b.1, a.0, a.1, proto)
        };
        let id = match self.index.get(&ends) {
            Some(&id) => id,
            None => {
                // The first packet's sender is the client, but a SYN-ACK's receiver.
                let syn_ack = proto == 6 && tcp_flags & 0x12 == 0x12;
                let (client, server) = if syn_ack { (b, a) } else { (a, b) };
                self.add(ends, client, server, p.ts_ns)
            }
        };
        let f = self.flows[id as usize]
            .as_mut()
            .expect("the index names live flows");
        f.last_ts = f.last_ts.max(p.ts_ns);
        let from_client = f.slot.key.local_addr == c.src && f.slot.key.local_port == sport;
        let s = &mut f.slot.state;
        let with_pdm = u32::from(c.pdm.is_some());
        if from_client {
            s.tx_packets = s.tx_packets.wrapping_add(1);
            s.tx_pdm = s.tx_pdm.wrapping_add(with_pdm);
            s.tx_bytes += u64::from(p.wire_len);
        } else {
            s.rx_packets = s.rx_packets.wrapping_add(1);
            s.rx_pdm = s.rx_pdm.wrapping_add(with_pdm);
            s.rx_bytes += u64::from(p.wire_len);
        }
        if tcp_flags & 0x05 != 0 {
            s.flags |= FLOW_CLOSED;
        }
        let Some(pdm) = c.pdm else {
            return;
        };
        if same_pdm_packet {
            return;
        }
        let key = f.slot.key;
        let dtlr = DeltaTime {
            delta: pdm.dtlr,
            scale: pdm.scale_dtlr,
        };
        let echoes = pdm.psn_last_recv != 0 || pdm.dtlr != 0 || pdm.scale_dtlr != 0;
        let sample = |rtt_ns, server_delay_ns, fault| RttSample {
            key,
            ts_ns: p.ts_ns,
            rtt_ns,
            server_delay_ns,
            psn: pdm.psn_last_recv,
            fault,
            _pad: 0,
            slot: id,
        };
        if from_client {
            let (word, event) = seq_step(f.tx.seq, pdm.psn_this);
            f.tx.seq = word;
            match event {
                // A copy says nothing new, and pairing it would count a round trip
                // twice.
                SeqEvent::Duplicate => {
                    f.tx.duplicate += 1;
                    return;
                }
                SeqEvent::Reordered => f.tx.reordered += 1,
                SeqEvent::None => {}
            }
            f.client.push((pdm.psn_this, p.ts_ns));
            if data && echoes && f.client_delay_echo != Some(pdm.psn_last_recv) {
                f.client_delay_echo = Some(pdm.psn_last_recv);
                match decode_received(dtlr) {
                    Ok(ns) => table.add_figure(id, &key, Figure::ClientDelay, p.ts_ns, ns),
                    Err(fault) => table.add_fault(id, &key, fault),
                }
            }
            let p2 = f.server.find(|r| r.0 == pdm.psn_last_recv);
            if echoes
                && f.client_side_rtt_echo != Some(pdm.psn_last_recv)
                && let Some((.., sent)) = p2
            {
                f.client_side_rtt_echo = Some(pdm.psn_last_recv);
                // Malformed and non-RFC DTLRs are counted once, by the client delay.
                match echo_rtt(p.ts_ns.saturating_sub(sent), dtlr) {
                    Ok((rtt, _)) => table.add_figure(id, &key, Figure::ClientSideRtt, p.ts_ns, rtt),
                    Err(TimeFault::Implausible) => {
                        table.add_fault(id, &key, TimeFault::Implausible)
                    }
                    Err(_) => {}
                }
            }
            if f.rtt_echo == Some(pdm.psn_last_recv) {
                return;
            }
            if let Some((_, p2_dtlr, p2_echoed, _)) = p2
                && p2_echoed == pdm.psn_this.wrapping_sub(1)
            {
                f.rtt_echo = Some(pdm.psn_last_recv);
                let dtls = DeltaTime {
                    delta: pdm.dtls,
                    scale: pdm.scale_dtls,
                };
                table.add_sample(&match observed_rtt(dtls, p2_dtlr) {
                    Ok(rtt) => sample(rtt, NO_SAMPLE, 0),
                    Err(fault) => sample(NO_SAMPLE, NO_SAMPLE, fault as u8),
                });
            }
            return;
        }
        let (word, event) = seq_step(s.rx_seq, pdm.psn_this);
        s.rx_seq = word;
        match event {
            SeqEvent::Duplicate => {
                s.rx_duplicate = s.rx_duplicate.wrapping_add(1);
                // The kernel counts (duplicate, reordered) as one u32, and the engine
                // widens them so: a wrapped duplicate count carries one.
                if s.rx_duplicate == 0 {
                    s.rx_reordered = s.rx_reordered.wrapping_add(1);
                }
                return;
            }
            SeqEvent::Reordered => s.rx_reordered = s.rx_reordered.wrapping_add(1),
            SeqEvent::None => {}
        }
        f.server
            .push((pdm.psn_this, dtlr, pdm.psn_last_recv, p.ts_ns));
        if !echoes {
            return;
        }
        if f.server_side_rtt_echo != Some(pdm.psn_last_recv)
            && let Some((_, sent)) = f.client.find(|c| c.0 == pdm.psn_last_recv)
        {
            f.server_side_rtt_echo = Some(pdm.psn_last_recv);
            // Malformed and non-RFC DTLRs are counted once, by the server delay below.
            match echo_rtt(p.ts_ns.saturating_sub(sent), dtlr) {
                Ok((rtt, _)) => table.add_figure(id, &key, Figure::ServerSideRtt, p.ts_ns, rtt),
                Err(TimeFault::Implausible) => table.add_fault(id, &key, TimeFault::Implausible),
                Err(_) => {}
            }
        }
        if data && f.delay_echo != Some(pdm.psn_last_recv) {
            f.delay_echo = Some(pdm.psn_last_recv);
            table.add_sample(&match decode_received(dtlr) {
                Ok(ns) => sample(NO_SAMPLE, ns, 0),
                Err(fault) => sample(NO_SAMPLE, NO_SAMPLE, fault as u8),
            });
        }
    }

    fn add(
        &mut self,
        ends: Ends,
        client: ([u8; 16], u16),
        server: ([u8; 16], u16),
        ts: u64,
    ) -> u32 {
        let flow = CaptureFlow {
            slot: FlowSlot {
                key: FlowKey::new(client.0, server.0, client.1, server.1, ends.4),
                state: FlowState {
                    flags: FLOW_VALID,
                    ..FlowState::default()
                },
            },
            ends,
            tx: SeqCounts::default(),
            server: Ring::new((0, DeltaTime::default(), 0, 0)),
            client: Ring::new((0, 0)),
            rtt_echo: None,
            delay_echo: None,
            client_delay_echo: None,
            server_side_rtt_echo: None,
            client_side_rtt_echo: None,
            first_ts: ts,
            last_ts: ts,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id as usize] = Some(flow);
                id
            }
            None => {
                self.flows.push(Some(flow));
                (self.flows.len() - 1) as u32
            }
        };
        self.index.insert(ends, id);
        self.seen += 1;
        id
    }

    /// Hands the engine the flows as flow-table entries and the clients' sequences,
    /// at capture time `now_ns`.
    pub fn refresh(&self, table: &mut Table, now_ns: u64) {
        let live = || {
            self.flows
                .iter()
                .enumerate()
                .filter_map(|(i, f)| Some((i as u32, f.as_ref()?)))
        };
        table.refresh(live().map(|(i, f)| (i, f.slot)), now_ns);
        for (_, f) in live() {
            table.client_sequence(&f.slot.key, f.tx);
        }
    }

    /// Reports (to `out`, as of their last packet, with their distributions since they
    /// started) and forgets the flows that ended
    /// by `now_ns`: idle too long, or closed and quiet. The table must have been
    /// refreshed at `now_ns`.
    pub fn expire(
        &mut self,
        table: &mut Table,
        now_ns: u64,
        e: Expiry,
        mut out: impl FnMut(FlowRow, Option<Distributions>),
    ) {
        for id in 0..self.flows.len() {
            let Some(f) = &self.flows[id] else { continue };
            let idle = now_ns.saturating_sub(f.last_ts);
            let closed = f.slot.state.flags & FLOW_CLOSED != 0;
            if idle > e.idle_ns || (closed && idle > e.closed_ns) {
                if let Some(row) = f.final_row(table) {
                    out(row, table.distributions(&f.slot.key));
                }
                table.remove(&f.slot.key);
                self.index.remove(&f.ends);
                self.flows[id] = None;
                self.free.push(id as u32);
            }
        }
    }

    /// Every flow still known, as of its last packet, oldest first. The table must
    /// have been refreshed (and settled) after the last packet.
    pub fn rows(&self, table: &Table) -> Vec<FlowRow> {
        let mut flows: Vec<_> = self.flows.iter().flatten().collect();
        flows.sort_by_key(|f| f.first_ts);
        flows.iter().filter_map(|f| f.final_row(table)).collect()
    }

    /// Every flow still known, as of `now_ns` (a report per interval), oldest first.
    pub fn rows_at(&self, table: &Table, now_ns: u64) -> Vec<FlowRow> {
        let mut flows: Vec<_> = self.flows.iter().flatten().collect();
        flows.sort_by_key(|f| f.first_ts);
        flows
            .iter()
            .filter_map(|f| table.row_of(&f.slot.key, now_ns, false))
            .collect()
    }
}
