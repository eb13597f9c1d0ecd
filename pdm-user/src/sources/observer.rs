//! The passive observer as a source (`pdm observe`): the samples its kernel programs
//! pair from both ends' PDM, and its table of flows, each seen from its client as a
//! capture source sees it (`local` = client, `tx` = the client's packets).

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use pdm_common::{
    flow::{FLOW_CLOSED, FLOW_VALID, FlowKey, FlowSlot, FlowState, NO_SAMPLE, RttSample},
    observe::{
        ObservedSample, ObservedSlot, SAMPLE_CLIENT_HIGHER, SAMPLE_FROM_HIGHER, ends_ordered,
    },
    time::TimeFault,
};

use super::{
    LiveSource,
    kernel::{SourceError, take_ring},
};
use crate::{
    engine::{Figure, SeqCounts, Table},
    kernel::maps::MappedTable,
};

pub struct ObserverSource {
    ring: RingBuf<MapData>,
    table: MappedTable<ObservedSlot>,
    /// The RTT and server-delay samples of a drain, for an exporter.
    batch: Vec<RttSample>,
}

impl ObserverSource {
    /// Takes the sample ring out of `ebpf` and maps the observer's table.
    pub fn open(ebpf: &mut Ebpf) -> Result<Self, SourceError> {
        Ok(Self {
            ring: take_ring(ebpf)?,
            table: MappedTable::open(ebpf)?,
            batch: Vec::new(),
        })
    }
}

/// `key` with its ends swapped when `swap` (the table's order ↔ the client's view).
fn client_view(key: &FlowKey, swap: bool) -> FlowKey {
    if swap {
        FlowKey::new(
            key.remote_addr,
            key.local_addr,
            key.remote_port,
            key.local_port,
            key.proto,
        )
    } else {
        *key
    }
}

/// A slot of the observer's table as a flow-table entry seen from the client, and the
/// client's sequence beside it.
pub fn as_flow(s: &ObservedSlot) -> (FlowSlot, SeqCounts) {
    let client = s.state.client_dir();
    let (c, sv) = (&s.state.dir[client], &s.state.dir[client ^ 1]);
    let state = FlowState {
        tx_packets: c.packets,
        tx_pdm: c.pdm,
        tx_bytes: c.bytes,
        rx_packets: sv.packets,
        rx_pdm: sv.pdm,
        rx_bytes: sv.bytes,
        rx_seq: sv.seq,
        rx_duplicate: sv.duplicate,
        rx_reordered: sv.reordered,
        flags: s.state.flags & (FLOW_VALID | FLOW_CLOSED),
        ..FlowState::default()
    };
    let key = client_view(&s.key, client == 1);
    // The kernel counts (duplicate, reordered) as one u32: a wrapped duplicate count
    // carried one into the reordered count (the engine takes it back out for the rx
    // side; SeqCounts are plain counts).
    let tx = SeqCounts {
        seq: c.seq,
        duplicate: u64::from(c.duplicate),
        reordered: u64::from(c.reordered),
    };
    (FlowSlot { key, state }, tx)
}

impl LiveSource for ObserverSource {
    fn slots(&self) -> usize {
        self.table.slots()
    }

    fn drain_with(&mut self, table: &mut Table, mut also: impl FnMut(&[RttSample])) -> usize {
        let mut n = 0;
        self.batch.clear();
        while let Some(item) = self.ring.next() {
            n += 1;
            if item.len() < size_of::<ObservedSample>() {
                continue;
            }
            // SAFETY: the kernel wrote an ObservedSample (plain data) here.
            let s = unsafe { item.as_ptr().cast::<ObservedSample>().read_unaligned() };
            drop(item);
            let client_higher = s.flags & SAMPLE_CLIENT_HIGHER != 0;
            let from_client = (s.flags & SAMPLE_FROM_HIGHER != 0) == client_higher;
            let key = client_view(&s.key, client_higher);
            if let Some(fault) = TimeFault::from_u8(s.fault) {
                table.add_fault(s.slot, &key, fault);
            }
            let sample = |rtt_ns, server_delay_ns| RttSample {
                key,
                ts_ns: s.ts_ns,
                rtt_ns,
                server_delay_ns,
                psn: s.psn,
                fault: 0,
                _pad: 0,
                slot: s.slot,
            };
            let present = |v: u64| v != NO_SAMPLE;
            if from_client {
                if present(s.rtt_ns) {
                    let r = sample(s.rtt_ns, NO_SAMPLE);
                    table.add_sample(&r);
                    self.batch.push(r);
                }
                if present(s.held_ns) {
                    table.add_figure(s.slot, &key, Figure::ClientDelay, s.ts_ns, s.held_ns);
                }
                if present(s.side_rtt_ns) {
                    table.add_figure(s.slot, &key, Figure::ClientSideRtt, s.ts_ns, s.side_rtt_ns);
                }
            } else {
                if present(s.held_ns) {
                    let r = sample(NO_SAMPLE, s.held_ns);
                    table.add_sample(&r);
                    self.batch.push(r);
                }
                if present(s.side_rtt_ns) {
                    table.add_figure(s.slot, &key, Figure::ServerSideRtt, s.ts_ns, s.side_rtt_ns);
                }
            }
        }
        also(&self.batch);
        n
    }

    fn refresh(
        &self,
        table: &mut Table,
        now_ns: u64,
        rows: Option<&mut Vec<crate::engine::FlowRow>>,
        keep: impl Fn(&crate::engine::FlowRow) -> bool,
    ) -> Vec<(u32, FlowKey)> {
        // The clients' sequences first, so the rows built in the refresh's pass carry
        // them.
        for (_, s) in self.table.live() {
            let (flow, tx) = as_flow(&s);
            table.client_sequence(&flow.key, tx);
        }
        let flows = self.table.live().map(|(i, s)| (i, as_flow(&s).0));
        table.refresh_rows(flows, now_ns, rows, keep)
    }

    fn remove(&self, expired: &[(u32, FlowKey)]) {
        // The table holds each key with its ends in its own order.
        let keys: Vec<(u32, FlowKey)> = expired
            .iter()
            .map(|(slot, k)| {
                let ordered =
                    ends_ordered(&k.local_addr, k.local_port, &k.remote_addr, k.remote_port);
                (*slot, client_view(k, !ordered))
            })
            .collect();
        self.table.remove(&keys);
    }
}
