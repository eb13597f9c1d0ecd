//! Types shared by the eBPF programs and the userspace loader, and the RFC 8250
//! PDM wire format. `no_std`: everything here must also build for `bpfel-unknown-none`
//! and pass the verifier when called from `pdm-ebpf`.
#![no_std]

pub mod chain;
pub mod config;
pub mod counters;
pub mod flow;
pub mod observe;
pub mod psn;
pub mod select;
pub mod seq;
pub mod time;
pub mod wire;

/// Names of the maps and programs in the eBPF object, defined once for both sides.
pub mod names {
    pub const FLOWS: &str = "FLOWS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SAMPLES: &str = "SAMPLES";
    pub const PROG_EGRESS: &str = "pdm_egress";
    pub const PROG_INGRESS_XDP: &str = "pdm_ingress_xdp";
    pub const PROG_INGRESS_TC: &str = "pdm_ingress_tc";
    /// The observer's table, and its read-only programs (`pdm observe`).
    pub const OBSERVED: &str = "OBSERVED";
    pub const PROG_OBSERVE_XDP: &str = "pdm_observe_xdp";
    pub const PROG_OBSERVE_TC: &str = "pdm_observe_tc";
    /// Global: the loader's settings ([`crate::config::Config`]).
    pub const CONFIG: &str = "CONFIG";
    /// The `--only` host terms' addresses.
    pub const ONLY_HOSTS: &str = "ONLY_HOSTS";
}
