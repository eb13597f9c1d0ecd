//! Flow-map and counter access: one lookup per packet on the hot path.

// The BPF target has no compare-and-swap, so core's Atomic* types lack fetch_add; the
// intrinsic lowers to the BPF atomic add instruction directly.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use pdm_common::{
    counters::{Counter, Counters},
    flow::{FlowKey, FlowState},
};

use crate::{COUNTERS, FLOWS};

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

/// The flow's entry, created (with a random first PSN) if it does not exist yet.
#[inline(always)]
pub fn get_or_create(key: &FlowKey, now: u64) -> Option<*mut FlowState> {
    if let Some(s) = FLOWS.get_ptr_mut(key) {
        return Some(s);
    }
    // SAFETY: helper without preconditions.
    let psn_start = unsafe { bpf_get_prandom_u32() } as u16;
    // Built in per-CPU scratch rather than on the stack, which it would mostly fill.
    let init = crate::NEW_FLOW.get_ptr_mut(0)?;
    // SAFETY: per-CPU map memory; nothing else runs on this CPU meanwhile.
    unsafe {
        *init = FlowState::new(psn_start, now);
        // NOEXIST: if the other direction created it meanwhile, keep theirs.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by reference, the helper reads the scratch map; by value, a stack copy"
        )]
        let _ = FLOWS.insert(key, &*init, BPF_NOEXIST as u64);
    }
    FLOWS.get_ptr_mut(key)
}

/// Atomically `*field += v` (another CPU may update the same entry).
#[inline(always)]
pub fn add(field: *mut u64, v: u64) {
    // SAFETY: `field` points into a live map value, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, v) };
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
