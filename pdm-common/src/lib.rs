//! Types shared by the eBPF programs and the userspace loader, and the RFC 8250
//! PDM wire format. `no_std`: everything here must also build for `bpfel-unknown-none`
//! and pass the verifier when called from `pdm-ebpf`.
#![no_std]

pub mod psn;
pub mod time;
pub mod wire;
