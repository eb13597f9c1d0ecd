//! The kernel side as userspace handles it: loading the eBPF object and attaching its
//! programs ([`attach`]), the offload settings `--per-packet` changes ([`offload`]) and
//! the route MTUs `--mtu-room` lowers ([`mtu_room`]), the
//! maps read back ([`maps`]: counters and the flow table), and test runs of the
//! programs on hand-built frames ([`testrun`]).

pub mod attach;
pub mod maps;
pub mod mtu_room;
pub mod offload;
pub mod testrun;
