//! Facts about the system pdm runs on: interfaces and the per-interface lock
//! ([`iface`]), and who is at each end of a flow ([`lookup`]: reverse DNS, the local
//! process owning the socket), and one rtnetlink client ([`netlink`]).

pub mod iface;
pub mod lookup;
pub mod netlink;
