//! Types shared by the eBPF programs and the userspace loader, and the RFC 8250
//! PDM wire format. `no_std`: everything here must also build for `bpfel-unknown-none`
//! and pass the verifier when called from `pdm-ebpf`.
#![no_std]

pub mod counters;
pub mod flow;
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
    /// Global: non-zero to lower the MSS of received SYN/SYN-ACKs by the PDM length.
    pub const CLAMP_MSS: &str = "CLAMP_MSS";
    /// Global: number of flow-table sets − 1 (the table has a power-of-two size).
    pub const FLOW_SET_MASK: &str = "FLOW_SET_MASK";
    /// Global: the flow hash's random key, chosen at each load.
    pub const FLOW_HASH_KEY: &str = "FLOW_HASH_KEY";
    /// Global: log2 of the minimum time between a flow's RTT samples, in ns (see
    /// [`ECHO_TICK_SHIFT`](crate::flow::ECHO_TICK_SHIFT)); 0 samples every echo.
    pub const SAMPLE_TICK_SHIFT: &str = "SAMPLE_TICK_SHIFT";
    /// Global: the `--only` selection rules (no terms: every flow).
    pub const ONLY: &str = "ONLY";
    /// The `--only` host terms' addresses.
    pub const ONLY_HOSTS: &str = "ONLY_HOSTS";
}
