//! What feeds the engine ([`crate::engine`]): the kernel ([`kernel`]: its RTT samples
//! and snapshots of its flow table) and capture files ([`capture`]: pcap and pcapng, several merged by time);
//! the passive observer is to come beside them.

pub mod capture;
pub mod kernel;
