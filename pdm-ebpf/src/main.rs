//! pdm's kernel side: a TC-egress classifier that inserts the RFC 8250 PDM Destination
//! Options header, and an ingress recorder (XDP, or a TC classifier) that reads PDM from
//! received packets. Both share one flow entry per conversation and one per-CPU counter
//! block. Read-only observer programs (`observe`, for `pdm observe`) keep a table of
//! their own. Entry points are thin; the work is in `egress`, `ingress` and `observe`.
#![no_std]
#![no_main]
#![feature(core_intrinsics, asm_experimental_arch)]
#![allow(internal_features)]

mod egress;
mod flow;
mod fragments;
mod ingress;
mod observe;
mod parse;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use pdm_common::{
    config::Config,
    counters::Counters,
    flow::{
        DEFAULT_MAX_FLOWS, FlowSlot, FragKey, FragPorts, MAX_FRAGMENTED_DATAGRAMS,
        SAMPLES_RING_BYTES,
    },
    observe::ObservedSlot,
    select::{HostKey, MAX_HOST_ADDRS},
};

/// The flow table: one slot per conversation in a set-associative array (see
/// pdm_common::flow); the loader sizes it from `--max-flows` and maps it to read it.
#[map(name = "FLOWS")]
static FLOWS: Array<FlowSlot> = Array::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_MMAPABLE);

/// The observer's table: one slot per flow, both ends' state in it (see
/// pdm_common::observe). Sized by the loader: a few slots when `pdm run` loads the object,
/// and the flow table a few when `pdm observe` does.
#[map(name = "OBSERVED")]
static OBSERVED: Array<ObservedSlot> = Array::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_MMAPABLE);

/// Per-CPU scratch for the extension-header walk (see parse.rs).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<parse::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The ports of fragmented datagrams, from their first fragment (see fragments.rs).
#[map(name = "FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragKey, FragPorts> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// RTT samples for userspace (`pdm observe`: its samples, sized by its loader).
#[map(name = "SAMPLES")]
static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Set by the loader before load: its settings (see pdm_common::config). Read-only here,
/// so the verifier knows every field as a constant.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::DEFAULT;

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

/// The observer: reads, never writes, and passes every packet on.
#[xdp(frags)]
pub fn pdm_observe_xdp(ctx: XdpContext) -> u32 {
    observe::run(ctx.data(), ctx.data_end(), ingress::Hook::Xdp(&ctx));
    xdp_action::XDP_PASS
}

/// The observer on TC, ingress or egress alike (a flow's entry does not depend on the
/// direction a packet crosses the interface).
#[classifier]
pub fn pdm_observe_tc(ctx: TcContext) -> i32 {
    observe::run(ctx.data(), ctx.data_end(), ingress::Hook::Tc(&ctx));
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
