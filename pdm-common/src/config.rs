//! What the loader tells the programs: one `#[repr(C)]` value, set once before they are
//! loaded into a read-only global (`CONFIG`), so the verifier sees constants and prunes
//! what a setting turns off.

use crate::{
    flow::{DEFAULT_MAX_FLOWS, DEFAULT_SAMPLE_TICK_SHIFT, FLOW_WAYS, HashKey},
    select::{MAX_TERMS, Rules, Term},
};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The flow hash's key, random per load (see [`crate::flow::FlowKey::hash`]).
    pub hash_key: HashKey,
    /// `--only`'s rules (no terms: PDM on every flow).
    pub only: Rules,
    /// Flow-table sets − 1 (the table has a power-of-two size).
    pub set_mask: u32,
    /// Non-zero to lower the MSS of received SYN/SYN-ACKs, so that full segments still
    /// fit the MTU once PDM's 16 octets are added.
    pub clamp_mss: u8,
    /// log2 of the least time between a flow's RTT samples, in ns (`--sample-interval`;
    /// see [`crate::flow::ECHO_TICK_SHIFT`]); 0 samples every echo.
    pub sample_tick_shift: u8,
    pub _pad: [u8; 6],
}

impl Config {
    /// What the object carries until the loader sets it.
    pub const DEFAULT: Config = Config {
        hash_key: HashKey([0; 6]),
        only: Rules {
            count: 0,
            terms: [Term {
                kind: 0,
                _pad: 0,
                value: 0,
            }; MAX_TERMS],
        },
        set_mask: DEFAULT_MAX_FLOWS / FLOW_WAYS - 1,
        clamp_mss: 1,
        sample_tick_shift: DEFAULT_SAMPLE_TICK_SHIFT,
        _pad: [0; 6],
    };
}

// Every octet is a field: no implicit padding (the value is copied into the object
// as bytes).
const _: () = assert!(
    size_of::<Config>() == size_of::<HashKey>() + size_of::<Rules>() + size_of::<u32>() + 2 + 6
);

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] integers, arrays and Pod structs with explicit padding.
unsafe impl aya::Pod for Config {}
