//! Flow selection, shared by `--filter` (which flows pdm shows) and `--only` (which
//! flows get PDM, decided in the kernel when a flow's entry is created; RFC 8250 lets
//! PDM be enabled per flow). One definition, so both always mean the same.
//!
//! A selection is up to [`MAX_TERMS`] terms that must all match. Host terms name sets
//! of addresses, which live in a map keyed by (term, address): the rules themselves
//! stay small enough to be a load-time constant of the programs.

use crate::flow::FlowKey;

/// Terms in one selection.
pub const MAX_TERMS: usize = 8;
/// Addresses all host terms together may name (size of the kernel's address map).
pub const MAX_HOST_ADDRS: u32 = 256;

/// [`Term::kind`]: either end is one of the term's addresses.
pub const TERM_HOST: u8 = 1;
/// [`Term::kind`]: either port is [`Term::value`] (protocols with ports only).
pub const TERM_PORT: u8 = 2;
/// [`Term::kind`]: the upper-layer protocol is [`Term::value`].
pub const TERM_PROTO: u8 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Term {
    pub kind: u8,
    pub _pad: u8,
    pub value: u16,
}

/// All terms must match; no terms selects every flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub count: u32,
    pub terms: [Term; MAX_TERMS],
}

/// Key of the host-address map: an address named by term `term`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub term: u32,
    pub addr: [u8; 16],
}

/// Protocols whose flow key holds real ports: TCP, UDP, SCTP, UDP-Lite. (ICMPv6 keys
/// hold the echo identifier: `port 443` must not select a ping with identifier 443.)
#[inline(always)]
pub const fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

impl Rules {
    /// Whether the flow is selected. `host(term, addr)`: is `addr` one of the addresses
    /// of host term `term`.
    #[inline(always)]
    pub fn selects(&self, key: &FlowKey, host: impl Fn(u32, &[u8; 16]) -> bool) -> bool {
        let mut i = 0;
        while i < MAX_TERMS {
            if i as u32 >= self.count {
                break;
            }
            let Some(t) = self.terms.get(i) else {
                break;
            };
            let ok = match t.kind {
                TERM_HOST => host(i as u32, &key.local_addr) || host(i as u32, &key.remote_addr),
                TERM_PORT => {
                    has_ports(key.proto)
                        && (key.local_port == t.value || key.remote_port == t.value)
                }
                TERM_PROTO => key.proto as u16 == t.value,
                _ => false,
            };
            if !ok {
                return false;
            }
            i += 1;
        }
        true
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::Rules {}
    unsafe impl aya::Pod for super::HostKey {}
}
