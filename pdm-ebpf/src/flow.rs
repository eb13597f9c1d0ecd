//! Flow-map and counter access: one lookup per packet on the hot path.

// The BPF target has no compare-and-swap, so core's Atomic* types lack fetch_add; the
// intrinsics lower to the BPF atomic instructions directly.
use core::{
    intrinsics::{AtomicOrdering, atomic_or, atomic_xadd},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::Array,
};
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

/// A slot of a set-associative table (the flow table, the observer's): its key, its
/// flags word ([`FLOW_VALID`] when it holds a flow) and its eviction age.
pub trait Slot {
    /// What the slot holds after its key: whole u64 words.
    type Value;
    /// The word of `Value` that holds the flags (left out when a slot is zeroed, so
    /// that the flags stay 0 until the slot is complete).
    const FLAGS_WORD: usize;
    fn key(s: *mut Self) -> *mut FlowKey;
    fn flags(s: *mut Self) -> *mut u32;
    /// Larger: more recently active (0: evicted first).
    fn age(s: *mut Self) -> u64;
}

/// [`Slot`] for a table slot of a `key` and a `state` value that has `flags` and
/// `last_pdm_ns()` (the flow table's, the observer's).
macro_rules! impl_slot {
    ($slot:ty, $value:ty) => {
        impl $crate::flow::Slot for $slot {
            type Value = $value;
            const FLAGS_WORD: usize = core::mem::offset_of!($value, flags) / 8;
            #[inline(always)]
            fn key(s: *mut Self) -> *mut FlowKey {
                // SAFETY: a field of the slot `s` points to.
                unsafe { &raw mut (*s).key }
            }
            #[inline(always)]
            fn flags(s: *mut Self) -> *mut u32 {
                // SAFETY: as above.
                unsafe { &raw mut (*s).state.flags }
            }
            #[inline(always)]
            fn age(s: *mut Self) -> u64 {
                // SAFETY: as above; a stale read only misorders one eviction.
                unsafe { (*s).state.last_pdm_ns() }
            }
        }
    };
}
pub(crate) use impl_slot;

impl_slot!(FlowSlot, FlowState);

/// Where a key lives in a table: its slot, or the slot it is to take.
pub enum Place<S> {
    Found(*mut S, u32),
    /// Free, or (`evicting`) the least recently active of the key's eight slots.
    Take(*mut S, u32),
}

/// Finds `key` in `table`, or the slot it is to take: an empty slot of whichever of its
/// two sets has more room, else the least recently active of their eight flows (counted
/// as an eviction). None only if the table cannot be read.
#[inline(always)]
pub fn place<S: Slot>(
    table: &Array<S>,
    key: &FlowKey,
    c: Option<*mut Counters>,
) -> Option<Place<S>> {
    // SAFETY: globals the loader sets before load.
    let (hash_key, mask) = unsafe {
        (
            read_volatile(&raw const CONFIG.hash_key),
            read_volatile(&raw const CONFIG.set_mask),
        )
    };
    let (first, second) = key.set_bases(&hash_key, mask);
    let mut victim: *mut S = core::ptr::null_mut();
    let mut victim_index = 0;
    let mut victim_age = u64::MAX;
    // Empty slots per set, and the first empty one of each: a new flow goes to the set
    // with more room (at 95 % load that halves how often both sets are full).
    let mut empty = [0u32; 2];
    let mut first_empty: [(*mut S, u32); 2] = [(core::ptr::null_mut(), 0); 2];
    for way in 0..2 * FLOW_WAYS {
        let (set, index) = if way < FLOW_WAYS {
            (0, first + way)
        } else {
            (1, second + way - FLOW_WAYS)
        };
        let slot = table.get_ptr_mut(index)?;
        // SAFETY: `slot` points into the live array map; other CPUs write it
        // concurrently, and a stale read only misplaces one packet's accounting.
        unsafe {
            let flags = read_volatile(S::flags(slot));
            if flags & FLOW_VALID == 0 {
                if empty[set] == 0 {
                    first_empty[set] = (slot, index);
                }
                empty[set] += 1;
                continue;
            }
            if (*S::key(slot)).same(key) {
                return Some(Place::Found(slot, index));
            }
            let age = S::age(slot);
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
    Some(Place::Take(victim, victim_index))
}

/// Rewrites slot `s` for `key`, every word of its value zero: invalidated first, so
/// that a reader never takes a half-written slot for this key; the caller validates it
/// last by writing its flags. Word by word with volatile stores: a value built on the
/// stack first would cost stack the programs have little of.
#[inline(always)]
pub fn claim<S: Slot>(s: *mut S, key: &FlowKey) -> *mut S::Value {
    // SAFETY: `s` points into a live map value laid out as a FlowKey followed by an
    // `S::Value` of whole u64 words.
    unsafe {
        write_volatile(S::flags(s), 0);
        *S::key(s) = *key;
        let value = S::key(s).add(1).cast::<S::Value>();
        let words = value.cast::<u64>();
        for i in 0..size_of::<S::Value>() / 8 {
            if i != S::FLAGS_WORD {
                write_volatile(words.add(i), 0);
            }
        }
        // The flags word's other half (the flags themselves are already 0).
        let half = words.add(S::FLAGS_WORD).cast::<u32>();
        write_volatile(
            if half == S::flags(s) {
                half.add(1)
            } else {
                half
            },
            0,
        );
        value
    }
}

/// The flow's entry, created (with a random first PSN) if it does not exist yet (see
/// [`place`]). Returns the entry and its slot index.
///
/// Two CPUs creating flows in one set at the same moment may pick the same slot; the
/// later write wins and the other flow is created again by its next packet. That costs
/// a PSN restart on a rare race, where a lock would cost every packet.
#[inline(always)]
pub fn get_or_create(key: &FlowKey, c: Option<*mut Counters>) -> Option<(*mut FlowState, u32)> {
    let (slot, index) = match place(&FLOWS, key, c)? {
        // SAFETY: a live map value.
        Place::Found(s, i) => return Some((unsafe { &raw mut (*s).state }, i)),
        Place::Take(s, i) => (s, i),
    };
    let flags = if selected(key) {
        FLOW_VALID | FLOW_SELECTED
    } else {
        FLOW_VALID
    };
    // SAFETY: helper without preconditions.
    let psn_start = unsafe { bpf_get_prandom_u32() } as u16;
    let state = claim(slot, key);
    // SAFETY: `state` points into the live map value just claimed.
    unsafe {
        write_volatile(&raw mut (*state).psn_next, psn_start as u32);
        write_volatile(&raw mut (*state).flags, flags);
    }
    Some((state, index))
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

/// Atomically sets bits in a flags word (several programs and CPUs set FLOW_CLOSED).
#[inline(always)]
pub fn set_flags(flags: *mut u32, bits: u32) {
    // SAFETY: points into a live map value, 4-byte aligned.
    unsafe { atomic_or::<u32, u32, { AtomicOrdering::Relaxed }>(flags, bits) };
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
