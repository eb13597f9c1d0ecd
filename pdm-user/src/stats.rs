//! Reading the kernel's counters and flow table.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf,
    maps::{MapError, PerCpuArray},
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

/// A snapshot of the flow table, read with BPF_MAP_LOOKUP_BATCH: a few syscalls for the
/// whole table instead of two per flow (key walk plus lookup), which at 10 000 flows is
/// most of the loader's CPU time. Entries that vanish mid-walk (LRU) are simply absent.
pub fn flows(ebpf: &Ebpf) -> Result<Vec<(FlowKey, FlowState)>, MapError> {
    let mut out = Vec::new();
    flows_into(ebpf, &mut out)?;
    Ok(out)
}

/// As [`flows`], into a vector kept across refreshes: at 10 000 flows the snapshot is
/// megabytes, and allocating it afresh each second costs page faults.
pub fn flows_into(ebpf: &Ebpf, out: &mut Vec<(FlowKey, FlowState)>) -> Result<(), MapError> {
    let map = ebpf.map(names::FLOWS).ok_or(MapError::InvalidName {
        name: names::FLOWS.into(),
    })?;
    let aya::maps::Map::LruHashMap(data) = map else {
        return Err(MapError::InvalidName {
            name: names::FLOWS.into(),
        });
    };
    let fd = data.fd().as_fd().as_raw_fd();
    out.clear();
    lookup_batch(fd, out).map_err(|io_error| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error,
        })
    })
}

/// Entries per BPF_MAP_LOOKUP_BATCH call.
const BATCH: usize = 4096;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
// The `batch` member of union bpf_attr.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn lookup_batch(map_fd: i32, out: &mut Vec<(FlowKey, FlowState)>) -> std::io::Result<()> {
    thread_local! {
        // Kept across calls for the same reason as the caller's vector.
        static BUFFERS: std::cell::RefCell<(Vec<FlowKey>, Vec<FlowState>)> =
            std::cell::RefCell::new((vec![FlowKey::default(); BATCH], vec![FlowState::default(); BATCH]));
    }
    BUFFERS.with_borrow_mut(|(keys, values)| lookup_batch_with(map_fd, keys, values, out))
}

fn lookup_batch_with(
    map_fd: i32,
    keys: &mut [FlowKey],
    values: &mut [FlowState],
    out: &mut Vec<(FlowKey, FlowState)>,
) -> std::io::Result<()> {
    // Opaque position tokens (a bucket index for hash maps); sized generously.
    let (mut token_in, mut token_out) = ([0u8; 64], [0u8; 64]);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map_fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attr points at buffers of BATCH keys and values and two tokens,
        // all live across the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (ret < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(BATCH);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            // ENOENT: the walk reached the end (with the last entries in this batch).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
            None => {}
        }
        token_in = token_out;
        first = false;
    }
}
