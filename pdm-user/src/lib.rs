//! The userspace side of pdm: loading and attaching the eBPF programs, reading their
//! maps, and restoring the interface to how it was found.

pub mod attach;
pub mod demo;
pub mod duration;
pub mod filter;
pub mod iface;
pub mod live;
pub mod metrics;
pub mod names;
pub mod offload;
pub mod output;
pub mod stats;
pub mod testrun;
pub mod trace;
pub mod ui;

/// The eBPF object built from `pdm-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pdm"));

/// Where pdm keeps its per-interface lock and crash-recovery state.
pub const RUN_DIR: &str = "/run/pdm";
