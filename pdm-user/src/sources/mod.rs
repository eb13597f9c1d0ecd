//! What feeds the engine ([`crate::engine`]): today the kernel ([`kernel`]: its RTT
//! samples and snapshots of its flow table); capture files and the passive observer
//! are to come beside it.

pub mod kernel;
