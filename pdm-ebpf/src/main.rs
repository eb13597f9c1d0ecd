//! pdm's kernel side: a TC-egress classifier that inserts the RFC 8250 PDM Destination
//! Options header, and an ingress recorder (XDP, or a TC classifier) that reads PDM from
//! received packets. Both share one flow entry per conversation and one per-CPU counter
//! block. Entry points are thin; the work is in `egress` and `ingress`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod egress;
mod flow;
mod ingress;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use pdm_common::{
    counters::Counters,
    flow::{DEFAULT_MAX_FLOWS, FlowKey, FlowState, SAMPLES_RING_BYTES},
};

/// One entry per conversation; the loader resizes it to `--max-flows`. LRU, so a flood
/// of new 5-tuples evicts idle flows instead of failing inserts.
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Per-CPU scratch for the extension-header walk (see parse.rs).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<parse::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for a new flow entry (see flow.rs).
#[map(name = "NEW_FLOW")]
static NEW_FLOW: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

/// RTT samples for userspace.
#[map(name = "SAMPLES")]
static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Set by the loader: non-zero to lower the MSS of received SYN/SYN-ACKs so that full
/// segments still fit the MTU once we add our 16 octets.
#[unsafe(no_mangle)]
static CLAMP_MSS: u8 = 1;

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
