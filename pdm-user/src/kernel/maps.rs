//! Reading the kernel's counters and flow table.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::{
    Ebpf,
    maps::{MapError, PerCpuArray},
};
use pdm_common::{
    counters::{COUNTER_SLOTS, Counter, Counters},
    flow::{FLOW_VALID, FlowKey, FlowSlot, FlowState},
    names,
};

/// Global counters summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals(pub [u64; COUNTER_SLOTS]);

impl Default for Totals {
    fn default() -> Self {
        Self([0; COUNTER_SLOTS])
    }
}

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

/// The kernel's flow table, mapped into this process: reading it is a memory scan, with
/// no syscall per entry (at 10 000 flows, syscalls were most of the loader's CPU time).
pub struct FlowTable {
    slots: NonNull<FlowSlot>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, valid until drop.
unsafe impl Send for FlowTable {}

#[derive(Debug, thiserror::Error)]
pub enum FlowTableError {
    #[error("the eBPF object has no {} array map", names::FLOWS)]
    NoMap,
    #[error("reading the flow table's size: {0}")]
    Info(#[source] MapError),
    #[error("mapping the flow table into memory: {0}")]
    Mmap(#[source] std::io::Error),
}

impl FlowTable {
    /// Maps the loaded FLOWS array.
    pub fn open(ebpf: &Ebpf) -> Result<Self, FlowTableError> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(names::FLOWS) else {
            return Err(FlowTableError::NoMap);
        };
        let len = data.info().map_err(FlowTableError::Info)?.max_entries() as usize;
        let bytes = len * size_of::<FlowSlot>();
        // SAFETY: mapping a BPF_F_MMAPABLE array map of exactly this size, shared so
        // that we see the programs' writes.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FlowTableError::Mmap(std::io::Error::last_os_error()));
        }
        let slots = NonNull::new(ptr.cast()).ok_or(FlowTableError::NoMap)?;
        Ok(Self { slots, len })
    }

    /// Slots in the table (live or not).
    pub fn slots(&self) -> usize {
        self.len
    }

    fn slot(&self, i: usize) -> *mut FlowSlot {
        debug_assert!(i < self.len);
        // SAFETY: in bounds of the mapping.
        unsafe { self.slots.as_ptr().add(i) }
    }

    /// Every live slot, as (slot index, copy of the slot). The programs keep writing
    /// while we read, so a flow's fields may come from slightly different moments, as
    /// with any map read.
    pub fn live(&self) -> impl Iterator<Item = (u32, FlowSlot)> + '_ {
        (0..self.len).filter_map(|i| {
            let p = self.slot(i);
            // SAFETY: in bounds; volatile reads of plain data the kernel may be writing.
            // The flags first: most slots of a roomy table are empty.
            unsafe {
                ((&raw const (*p).state.flags).read_volatile() & FLOW_VALID != 0)
                    .then(|| (i as u32, p.read_volatile()))
            }
        })
    }

    /// One flow's entry (a scan: for tests and one-off reads).
    pub fn get(&self, key: &FlowKey) -> Option<FlowState> {
        self.live()
            .find(|(_, s)| s.key.same(key))
            .map(|(_, s)| s.state)
    }

    /// Frees the slots of expired flows, each given with the slot it was seen in.
    /// Should their packets still come, the programs create them again.
    pub fn remove(&self, flows: &[(u32, FlowKey)]) {
        for (slot, key) in flows {
            if *slot as usize >= self.len {
                continue;
            }
            let p = self.slot(*slot as usize);
            // SAFETY: in bounds. The programs only OR bits into `flags` or rewrite the
            // whole slot, so clearing it races at worst with the slot's reuse by a new
            // flow, which its next packet then creates again.
            unsafe {
                if (&raw const (*p).key).read_volatile().same(key) {
                    (&raw mut (*p).state.flags).write_volatile(0);
                }
            }
        }
    }
}

impl Drop for FlowTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len * size_of::<FlowSlot>()) };
    }
}

/// Every live flow (for tests and one-off reads; the live loop keeps a [`FlowTable`]).
pub fn flows(ebpf: &Ebpf) -> Result<Vec<(FlowKey, FlowState)>, FlowTableError> {
    Ok(FlowTable::open(ebpf)?
        .live()
        .map(|(_, s)| (s.key, s.state))
        .collect())
}
