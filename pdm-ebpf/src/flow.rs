//! Flow-map and counter access: one lookup per packet on the hot path.

// The BPF target has no compare-and-swap, so core's Atomic* types lack fetch_add; the
// intrinsics lower to the BPF atomic instructions directly.
use core::{
    intrinsics::{AtomicOrdering, atomic_or, atomic_xadd},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use pdm_common::{
    counters::{Counter, Counters},
    flow::{
        COUNT_PAIR_PDM_SHIFT, FLOW_SELECTED, FLOW_VALID, FLOW_WAYS, FlowKey, FlowSlot, FlowState,
    },
    select::HostKey,
};

use crate::{CONFIG, COUNTERS, FLOWS, ONLY_HOSTS};

/// This CPU's counter block (the per-CPU array lookup is inlined by the verifier).
#[inline(always)]
pub fn counters() -> Option<*mut Counters> {
    COUNTERS.get_ptr_mut(0)
}

#[inline(always)]
pub fn bump(c: Option<*mut Counters>, which: Counter) {
    if let Some(c) = c {
        // SAFETY: per-CPU memory; programs do not preempt each other on one CPU.
        // `get_mut`, not indexing: the compiler cannot always see the bound, and a
        // panic path would not pass the verifier.
        if let Some(slot) = unsafe { (*c).0.get_mut(which as usize) } {
            *slot += 1;
        }
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The flow's entry, created (with a random first PSN) if it does not exist yet: in an
/// empty slot of whichever of its two sets has more room, else in place of the least
/// recently active of their eight flows. Returns the entry and its slot index.
///
/// Two CPUs creating flows in one set at the same moment may pick the same slot; the
/// later write wins and the other flow is created again by its next packet. That costs
/// a PSN restart on a rare race, where a lock would cost every packet.
#[inline(always)]
pub fn get_or_create(key: &FlowKey, c: Option<*mut Counters>) -> Option<(*mut FlowState, u32)> {
    // SAFETY: globals the loader sets before load.
    let (hash_key, mask) = unsafe {
        (
            read_volatile(&raw const CONFIG.hash_key),
            read_volatile(&raw const CONFIG.set_mask),
        )
    };
    let (first, second) = key.set_bases(&hash_key, mask);
    let mut victim: *mut FlowSlot = core::ptr::null_mut();
    let mut victim_index = 0;
    let mut victim_age = u64::MAX;
    // Empty slots per set, and the first empty one of each: a new flow goes to the set
    // with more room (at 95 % load that halves how often both sets are full).
    let mut empty = [0u32; 2];
    let mut first_empty: [(*mut FlowSlot, u32); 2] = [(core::ptr::null_mut(), 0); 2];
    for way in 0..2 * FLOW_WAYS {
        let (set, index) = if way < FLOW_WAYS {
            (0, first + way)
        } else {
            (1, second + way - FLOW_WAYS)
        };
        let slot = FLOWS.get_ptr_mut(index)?;
        // SAFETY: `slot` points into the live array map; other CPUs write it
        // concurrently, and a stale read only misplaces one packet's accounting.
        unsafe {
            let flags = read_volatile(&raw const (*slot).state.flags);
            if flags & FLOW_VALID == 0 {
                if empty[set] == 0 {
                    first_empty[set] = (slot, index);
                }
                empty[set] += 1;
                continue;
            }
            if (*slot).key.same(key) {
                return Some((&raw mut (*slot).state, index));
            }
            let age = (*slot).state.last_pdm_ns();
            if age < victim_age {
                victim = slot;
                victim_index = index;
                victim_age = age;
            }
        }
    }
    let evicting = empty == [0, 0];
    if !evicting {
        (victim, victim_index) = first_empty[(empty[1] > empty[0]) as usize];
    }
    if victim.is_null() {
        return None;
    }
    if evicting {
        bump(c, Counter::FlowEvictions);
    }
    let flags = if selected(key) {
        FLOW_VALID | FLOW_SELECTED
    } else {
        FLOW_VALID
    };
    // SAFETY: helper without preconditions.
    let psn_start = unsafe { bpf_get_prandom_u32() } as u16;
    // SAFETY: `victim` points into the live array map. Invalidate first and validate
    // last, so that a reader never takes a half-written slot for this key.
    // Field by field with volatile stores: a FlowState value would be built on the
    // stack first, and the ingress program has little stack to spare.
    unsafe {
        let state = &raw mut (*victim).state;
        write_volatile(&raw mut (*state).flags, 0);
        (*victim).key = *key;
        let words = state.cast::<u64>();
        for i in 0..size_of::<FlowState>() / 8 {
            if i != FLAGS_WORD {
                write_volatile(words.add(i), 0);
            }
        }
        write_volatile(&raw mut (*state).dtls, 0);
        write_volatile(&raw mut (*state).psn_next, psn_start as u32);
        write_volatile(&raw mut (*state).flags, flags);
        Some((state, victim_index))
    }
}

/// Whether `--only` selects the flow: decided once, when its entry is created, so the
/// rules cost nothing per packet. Only the loader's rules decide; nothing a peer sends
/// (a received PDM included) switches PDM on.
#[inline(always)]
fn selected(key: &FlowKey) -> bool {
    // SAFETY: a global the loader sets before load.
    let rules = unsafe { read_volatile(&raw const CONFIG.only) };
    rules.selects(key, |term, addr| {
        let k = HostKey { term, addr: *addr };
        // SAFETY: a plain lookup; the value is not used.
        unsafe { ONLY_HOSTS.get(k) }.is_some()
    })
}

/// The u64 word of FlowState that holds `flags` (and `dtls`), left out of the zeroing
/// so that `flags` stays 0 until the slot is complete.
const FLAGS_WORD: usize = core::mem::offset_of!(FlowState, flags) / 8;

/// Atomically `*field += v` (another CPU may update the same entry).
#[inline(always)]
pub fn add(field: *mut u64, v: u64) {
    // SAFETY: `field` points into a live map value, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, v) };
}

/// Atomically `*field += v` on a u32 (the duplicate/reordered pair).
#[inline(always)]
pub fn add32(field: *mut u32, v: u32) {
    // SAFETY: `field` points into a live map value, 4-byte aligned.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(field, v) };
}

/// Atomically counts `packets` and `pdm` of them carrying PDM into a pair of u32
/// counters that form one aligned u64 (`tx_packets`/`tx_pdm`, `rx_packets`/`rx_pdm`):
/// one atomic instruction where two cost a tenth of the ingress program's time.
#[inline(always)]
pub fn count(pair: *mut u32, packets: u32, pdm: u32) {
    let v = packets as u64 | (pdm as u64) << COUNT_PAIR_PDM_SHIFT;
    // SAFETY: `pair` points into a live map value, at a u64-aligned pair of u32s
    // (asserted in pdm-common).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(pair.cast(), v) };
}

/// Atomically sets flag bits (egress and ingress both set FLOW_CLOSED).
#[inline(always)]
pub fn set_flags(state: *mut FlowState, bits: u32) {
    // SAFETY: points into a live map value, 4-byte aligned.
    unsafe { atomic_or::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*state).flags, bits) };
}

/// Takes the next PSN This Packet: atomic, so no PSN is lost or repeated between CPUs.
#[inline(always)]
pub fn next_psn(state: *mut FlowState) -> u16 {
    // SeqCst, not Relaxed: LLVM 22 lowers a relaxed 32-bit add whose result is used to
    // the non-fetching BPF atomic add (the PSN then read back as the increment, 1).
    // SAFETY: points into a live map value, 4-byte aligned.
    unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(&raw mut (*state).psn_next, 1) as u16
    }
}
