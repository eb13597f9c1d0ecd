//! pdm's kernel side: a TC-egress classifier that inserts the RFC 8250 PDM Destination
//! Options header, and an ingress recorder (XDP, or a TC classifier) that reads PDM from
//! received packets. Both share one flow entry per conversation and one per-CPU counter
//! block. Entry points are thin; the work is in `egress` and `ingress`.
#![no_std]
#![no_main]
#![feature(core_intrinsics, asm_experimental_arch)]
#![allow(internal_features)]

mod egress;
mod flow;
mod ingress;
mod parse;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use pdm_common::{
    counters::Counters,
    flow::{DEFAULT_MAX_FLOWS, FlowSlot, HashKey, SAMPLES_RING_BYTES},
    select::{HostKey, MAX_HOST_ADDRS, Rules},
};

/// The flow table: one slot per conversation in a set-associative array (see
/// pdm_common::flow); the loader sizes it from `--max-flows` and maps it to read it.
#[map(name = "FLOWS")]
static FLOWS: Array<FlowSlot> = Array::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_MMAPABLE);

/// Per-CPU scratch for the extension-header walk (see parse.rs).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<parse::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// RTT samples for userspace.
#[map(name = "SAMPLES")]
static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Set by the loader: non-zero to lower the MSS of received SYN/SYN-ACKs so that full
/// segments still fit the MTU once we add our 16 octets.
#[unsafe(no_mangle)]
static CLAMP_MSS: u8 = 1;

/// Set by the loader: flow-table sets − 1.
#[unsafe(no_mangle)]
static FLOW_SET_MASK: u32 = DEFAULT_MAX_FLOWS / pdm_common::flow::FLOW_WAYS - 1;

/// Set by the loader: a random key per load for the flow hash.
#[unsafe(no_mangle)]
static FLOW_HASH_KEY: HashKey = HashKey([0; 6]);

/// Set by the loader: log2 of the sample tick in ns (`--sample-interval`).
#[unsafe(no_mangle)]
static SAMPLE_TICK_SHIFT: u8 = pdm_common::flow::DEFAULT_SAMPLE_TICK_SHIFT;

/// Set by the loader: `--only`'s rules (no terms: PDM on every flow).
#[unsafe(no_mangle)]
static ONLY: Rules = Rules {
    count: 0,
    terms: [pdm_common::select::Term {
        kind: 0,
        _pad: 0,
        value: 0,
    }; pdm_common::select::MAX_TERMS],
};

/// `--only`'s host-term addresses, filled by the loader before it attaches.
#[map(name = "ONLY_HOSTS")]
static ONLY_HOSTS: HashMap<HostKey, u8> = HashMap::with_max_entries(MAX_HOST_ADDRS, 0);

/// Returning TC_ACT_UNSPEC (TCX "next") lets programs after ours still run.
#[classifier]
pub fn pdm_egress(ctx: TcContext) -> i32 {
    egress::run(&ctx);
    TC_ACT_UNSPEC
}

#[xdp(frags)]
pub fn pdm_ingress_xdp(ctx: XdpContext) -> u32 {
    ingress::run(ctx.data(), ctx.data_end(), ingress::Hook::Xdp(&ctx));
    xdp_action::XDP_PASS
}

#[classifier]
pub fn pdm_ingress_tc(ctx: TcContext) -> i32 {
    ingress::run(ctx.data(), ctx.data_end(), ingress::Hook::Tc(&ctx));
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
