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
    observe::ObservedSlot,
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

/// A slot of one of the kernel's set-associative tables: a [`FlowKey`], then a value
/// whose flags word says whether the slot holds a flow. The accessors only compute
/// field addresses.
pub trait TableSlot: Copy {
    /// The array map that holds the table.
    const MAP: &'static str;
    fn key(p: *mut Self) -> *mut FlowKey;
    fn flags(p: *mut Self) -> *mut u32;
}

impl TableSlot for FlowSlot {
    const MAP: &'static str = names::FLOWS;
    fn key(p: *mut Self) -> *mut FlowKey {
        p.wrapping_byte_add(std::mem::offset_of!(FlowSlot, key))
            .cast()
    }
    fn flags(p: *mut Self) -> *mut u32 {
        p.wrapping_byte_add(std::mem::offset_of!(FlowSlot, state.flags))
            .cast()
    }
}

impl TableSlot for ObservedSlot {
    const MAP: &'static str = names::OBSERVED;
    fn key(p: *mut Self) -> *mut FlowKey {
        p.wrapping_byte_add(std::mem::offset_of!(ObservedSlot, key))
            .cast()
    }
    fn flags(p: *mut Self) -> *mut u32 {
        p.wrapping_byte_add(std::mem::offset_of!(ObservedSlot, state.flags))
            .cast()
    }
}

/// A kernel table (the flow table, or the observer's), mapped into this process:
/// reading it is a memory scan, with no syscall per entry (at 10 000 flows, syscalls
/// were most of the loader's CPU time).
pub struct MappedTable<S: TableSlot> {
    slots: NonNull<S>,
    len: usize,
}

/// `pdm run`'s flow table.
pub type FlowTable = MappedTable<FlowSlot>;

// SAFETY: the mapping is plain shared memory, valid until drop.
unsafe impl<S: TableSlot> Send for MappedTable<S> {}

#[derive(Debug, thiserror::Error)]
pub enum FlowTableError {
    #[error("the eBPF object has no {0} array map")]
    NoMap(&'static str),
    #[error("reading the flow table's size: {0}")]
    Info(#[source] MapError),
    #[error("mapping the flow table into memory: {0}")]
    Mmap(#[source] std::io::Error),
}

impl<S: TableSlot> MappedTable<S> {
    /// Maps the loaded array.
    pub fn open(ebpf: &Ebpf) -> Result<Self, FlowTableError> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(S::MAP) else {
            return Err(FlowTableError::NoMap(S::MAP));
        };
        let len = data.info().map_err(FlowTableError::Info)?.max_entries() as usize;
        let bytes = len * size_of::<S>();
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
        let slots = NonNull::new(ptr.cast()).ok_or(FlowTableError::NoMap(S::MAP))?;
        Ok(Self { slots, len })
    }

    /// Slots in the table (live or not).
    pub fn slots(&self) -> usize {
        self.len
    }

    fn slot(&self, i: usize) -> *mut S {
        debug_assert!(i < self.len);
        // SAFETY: in bounds of the mapping.
        unsafe { self.slots.as_ptr().add(i) }
    }

    /// Every live slot, as (slot index, copy of the slot). The programs keep writing
    /// while we read, so a flow's fields may come from slightly different moments, as
    /// with any map read.
    pub fn live(&self) -> impl Iterator<Item = (u32, S)> + '_ {
        (0..self.len).filter_map(|i| {
            let p = self.slot(i);
            // SAFETY: in bounds; volatile reads of plain data the kernel may be writing.
            // The flags first: most slots of a roomy table are empty.
            unsafe {
                (S::flags(p).read_volatile() & FLOW_VALID != 0)
                    .then(|| (i as u32, p.read_volatile()))
            }
        })
    }

    /// Frees the slots of expired flows, each given with the slot it was seen in.
    /// Should their packets still come, the programs create them again.
    pub fn remove(&self, flows: &[(u32, FlowKey)]) {
        for (slot, key) in flows {
            if *slot as usize >= self.len {
                continue;
            }
            let p = self.slot(*slot as usize);
            // SAFETY: in bounds. The programs only OR bits into the flags or rewrite the
            // whole slot, so clearing it races at worst with the slot's reuse by a new
            // flow, which its next packet then creates again.
            unsafe {
                if S::key(p).read_volatile().same(key) {
                    S::flags(p).write_volatile(0);
                }
            }
        }
    }
}

impl FlowTable {
    /// One flow's entry (a scan: for tests and one-off reads).
    pub fn get(&self, key: &FlowKey) -> Option<FlowState> {
        self.live()
            .find(|(_, s)| s.key.same(key))
            .map(|(_, s)| s.state)
    }
}

impl<S: TableSlot> Drop for MappedTable<S> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len * size_of::<S>()) };
    }
}

/// Every live flow (for tests and one-off reads; the live loop keeps a [`FlowTable`]).
pub fn flows(ebpf: &Ebpf) -> Result<Vec<(FlowKey, FlowState)>, FlowTableError> {
    Ok(FlowTable::open(ebpf)?
        .live()
        .map(|(_, s)| (s.key, s.state))
        .collect())
}
