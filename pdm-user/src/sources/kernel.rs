//! The kernel as a source: the RTT samples its ingress program hands over through a
//! ring buffer, and its flow table (mapped into this process) for snapshots.

use aya::{
    Ebpf,
    maps::{MapData, MapError, RingBuf},
};
use pdm_common::{
    flow::{FlowKey, FlowSlot, RttSample},
    names,
};

use super::LiveSource;
use crate::{
    engine::{FlowRow, Table},
    kernel::maps::{FlowTable, FlowTableError},
};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the eBPF object has no {0} map")]
    NoMap(&'static str),
    #[error("opening the sample ring: {0}")]
    Ring(#[from] MapError),
    #[error("opening the flow table: {0}")]
    Flows(#[from] FlowTableError),
}

/// Samples handed to the engine at once: it looks a few ahead in a batch to overlap
/// their cache misses. Small enough to stay in the cache.
const SAMPLE_BATCH: usize = 1024;

pub struct KernelSource {
    ring: RingBuf<MapData>,
    flows: FlowTable,
    batch: Vec<RttSample>,
}

impl KernelSource {
    /// Takes the sample ring out of `ebpf` (this source is then its only reader) and
    /// maps the flow table.
    pub fn open(ebpf: &mut Ebpf) -> Result<Self, SourceError> {
        Ok(Self {
            ring: take_ring(ebpf)?,
            flows: FlowTable::open(ebpf)?,
            batch: Vec::with_capacity(SAMPLE_BATCH),
        })
    }

    /// Hands every sample waiting in the ring to `table`; returns how many there were.
    pub fn drain(&mut self, table: &mut Table) -> usize {
        self.drain_with(table, |_| {})
    }

    /// The flow table now: (slot, entry) of every live slot.
    pub fn flows(&self) -> impl Iterator<Item = (u32, FlowSlot)> + '_ {
        self.flows.live()
    }
}

/// The sample ring, taken out of `ebpf`: its source is then its only reader.
pub(super) fn take_ring(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, SourceError> {
    let ring = ebpf
        .take_map(names::SAMPLES)
        .ok_or(SourceError::NoMap(names::SAMPLES))?;
    Ok(RingBuf::try_from(ring)?)
}

impl LiveSource for KernelSource {
    fn slots(&self) -> usize {
        self.flows.slots()
    }

    fn drain_with(&mut self, table: &mut Table, mut also: impl FnMut(&[RttSample])) -> usize {
        let mut n = 0;
        self.batch.clear();
        while let Some(item) = self.ring.next() {
            n += 1;
            if item.len() >= size_of::<RttSample>() {
                // SAFETY: the kernel wrote an RttSample (plain data) here; read unaligned.
                self.batch
                    .push(unsafe { item.as_ptr().cast::<RttSample>().read_unaligned() });
            }
            if self.batch.len() == SAMPLE_BATCH {
                table.add_samples(&self.batch);
                also(&self.batch);
                self.batch.clear();
            }
        }
        table.add_samples(&self.batch);
        also(&self.batch);
        n
    }

    fn refresh(
        &self,
        table: &mut Table,
        now_ns: u64,
        rows: Option<&mut Vec<FlowRow>>,
        keep: impl Fn(&FlowRow) -> bool,
    ) -> Vec<(u32, FlowKey)> {
        table.refresh_rows(self.flows.live(), now_ns, rows, keep)
    }

    fn remove(&self, expired: &[(u32, FlowKey)]) {
        self.flows.remove(expired);
    }
}
