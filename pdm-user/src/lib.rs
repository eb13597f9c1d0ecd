//! The userspace side of pdm, laid out by stage:
//!
//! ```text
//!  kernel ──► sources ──► engine ──► sinks
//!  load, attach,   samples and     flows, their      NDJSON, --log,
//!  offload, maps   flow table      distributions,    live view
//!                  snapshots       loss, expiry
//! ```
//!
//! - [`kernel`]: the eBPF object — load, attach (bpf_links, or legacy TC filters),
//!   `--per-packet` offload changes (restored after a crash too), the maps read back
//!   (counters, the mmapped flow table) and test runs on hand-built frames.
//! - [`sys`]: system facts — interfaces and their lock, reverse DNS and socket owners.
//! - [`sources`]: what feeds the engine — the kernel (its RTT sample ring and
//!   flow-table snapshots) and capture files (pcap/pcapng, merged by time, their flows
//!   seen from both ends); the passive observer next.
//! - [`engine`]: one flow-metrics engine — per-flow records, delay distributions,
//!   widened counters, loss, expiry — producing [`engine::FlowRow`]s.
//! - [`sinks`]: where the rows go — [`sinks::ndjson`] and the terminal view
//!   [`sinks::tui`].
//! - [`live`]: `pdm run`'s loop, drain → snapshot → emit.
//! - [`analyze`]: `pdm analyze`, PDM in capture files (a capture source, no eBPF).
//! - [`report`]: `pdm report`, an HTML page of charts from a run's NDJSON or a capture.
//! - [`trace`]: `pdm trace`, traceroutes with and without PDM (no eBPF).
//! - [`demo`]: the embedded demo's hosts and traffic.
//! - [`filter`], [`duration`]: values from the command line (`--filter`/`--only`,
//!   durations), parsed once.

pub mod analyze;
pub mod demo;
pub mod duration;
pub mod engine;
pub mod filter;
pub mod kernel;
pub mod live;
pub mod report;
pub mod sinks;
pub mod sources;
pub mod sys;
pub mod trace;

/// The eBPF object built from `pdm-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pdm"));

/// Where pdm keeps its per-interface lock and crash-recovery state.
pub const RUN_DIR: &str = "/run/pdm";
