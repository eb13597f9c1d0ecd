//! Reading the kernel's counters and flow table.

use aya::{
    Ebpf,
    maps::{HashMap, MapError, PerCpuArray},
};
use pdm_common::{
    counters::{COUNTER_SLOTS, Counter, Counters},
    flow::{FlowKey, FlowState},
    names,
};

/// Global counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals(pub [u64; COUNTER_SLOTS]);

impl Totals {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// `{"egress_packets": n, ...}`, every counter by its stable name.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        Counter::ALL
            .iter()
            .map(|&c| (c.name().to_owned(), self.get(c).into()))
            .collect()
    }
}

pub fn totals(ebpf: &Ebpf) -> Result<Totals, MapError> {
    let map = ebpf.map(names::COUNTERS).ok_or(MapError::InvalidName {
        name: names::COUNTERS.into(),
    })?;
    let array: PerCpuArray<_, Counters> = PerCpuArray::try_from(map)?;
    let mut t = Totals::default();
    for cpu in array.get(&0, 0)?.iter() {
        for (sum, v) in t.0.iter_mut().zip(cpu.0) {
            *sum += v;
        }
    }
    Ok(t)
}

/// A snapshot of the flow table. Entries that vanish mid-walk (LRU eviction) are skipped.
pub fn flows(ebpf: &Ebpf) -> Result<Vec<(FlowKey, FlowState)>, MapError> {
    let map = ebpf.map(names::FLOWS).ok_or(MapError::InvalidName {
        name: names::FLOWS.into(),
    })?;
    let flows: HashMap<_, FlowKey, FlowState> = HashMap::try_from(map)?;
    Ok(flows.iter().filter_map(Result::ok).collect())
}
