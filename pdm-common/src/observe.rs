//! The passive observer's flow table and samples (`pdm observe`).
//!
//! An observer is neither end of the flows it sees, and may see a flow's two
//! directions on two interfaces and two CPUs. So a flow has one entry whichever way a
//! packet goes: its key is the flow's two ends in a fixed order (the lower (address,
//! port) first, [`ends_ordered`]), and the entry holds one [`ObservedDir`] per end,
//! for the packets that end sent. Which end is the client (the one whose packet the
//! observer saw first; for TCP, the SYN's sender) is a flag, not a key order, so that
//! both directions find the entry without knowing it.
//!
//! Pairing runs in the kernel: a packet that echoes the other end's PSN is matched
//! against that end's last packet and its outstanding probe (as `pdm run` matches its
//! own), and the figures go to userspace as [`ObservedSample`]s.

use crate::flow::{FlowKey, PROBE_TIME_MASK};

/// [`ObservedState::flags`]: the flow's client is the higher end of its key (the
/// remote half). Beside [`FLOW_VALID`](crate::flow::FLOW_VALID) and
/// [`FLOW_CLOSED`](crate::flow::FLOW_CLOSED).
pub const OBS_CLIENT_HIGHER: u32 = 1 << 3;

/// Octets of sample ring the observer's loader asks for: it sees both ends' echoes of
/// every flow crossing it, so more than `pdm run`.
pub const OBSERVE_RING_BYTES: u32 = 1 << 23;

/// What one end of a flow sent, as it passed the observer. 56 octets.
///
/// Words read by the other direction's packets (`last`, `probe`, `fields`) are each
/// written with one store, so a reader on another CPU sees one packet's values or the
/// next one's, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObservedDir {
    /// This end's PSN sequence ([`crate::seq`]), replaced by compare-and-swap.
    pub seq: u64,
    /// Wire packets, and of them with PDM: one u64 added to atomically (see
    /// [`COUNT_PAIR_PDM_SHIFT`](crate::flow::COUNT_PAIR_PDM_SHIFT)). Wrap.
    pub packets: u32,
    pub pdm: u32,
    pub bytes: u64,
    /// The last PDM packet: PSN << 48 | monotonic ns modulo 2^48.
    pub last: u64,
    /// An outstanding probe, as `last` (0: none): the first packet after the previous
    /// probe was echoed or passed. Bulk flows echo older PSNs than the last.
    pub probe: u64,
    /// The last PDM packet's fields: PSN This Packet << 48 | PSN Last Received << 32 |
    /// DTLR in wire form (scale << 16 | delta).
    pub fields: u64,
    /// PSNs seen twice and late; one u32 added to atomically (see
    /// [`REORDERED_SHIFT`](crate::flow::REORDERED_SHIFT)). Wrap.
    pub duplicate: u16,
    pub reordered: u16,
    /// The other end's PSN this end last echoed with a sample, and the sample tick:
    /// [`ECHO_VALID`](crate::flow::ECHO_VALID) etc., as `FlowState::echo`.
    pub echo: u32,
}

/// A flow as the observer keeps it: what each end sent (`dir[0]` the lower end of the
/// key, `dir[1]` the higher), and flags.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObservedState {
    pub dir: [ObservedDir; 2],
    pub flags: u32,
    pub _pad: u32,
}

impl ObservedState {
    /// When the flow last carried PDM (either way), modulo 2^48: the eviction order
    /// within a set (0: never, evicted first).
    #[inline(always)]
    pub const fn last_pdm_ns(&self) -> u64 {
        let (a, b) = (
            self.dir[0].last & PROBE_TIME_MASK,
            self.dir[1].last & PROBE_TIME_MASK,
        );
        if a > b { a } else { b }
    }

    /// Which of `dir` the client sent.
    pub const fn client_dir(&self) -> usize {
        (self.flags & OBS_CLIENT_HIGHER != 0) as usize
    }
}

/// One slot of the observer's table (same set-associative layout as the flow table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObservedSlot {
    pub key: FlowKey,
    pub state: ObservedState,
}

pub const OBSERVED_SLOT_BYTES: usize = 160;
const _: () = assert!(size_of::<ObservedDir>() == 56);
const _: () = assert!(size_of::<ObservedSlot>() == OBSERVED_SLOT_BYTES);
const _: () = assert!(core::mem::offset_of!(ObservedDir, packets) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ObservedDir, duplicate) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(ObservedState, dir) == 0);

/// [`ObservedSample::flags`]: the packet came from the higher end of the key.
pub const SAMPLE_FROM_HIGHER: u8 = 1;
/// [`ObservedSample::flags`]: the flow's client is the higher end.
pub const SAMPLE_CLIENT_HIGHER: u8 = 2;

/// What one packet echoing the other end's PSN gave: up to three figures about the end
/// that sent it ([`crate::flow::NO_SAMPLE`] where there is none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObservedSample {
    /// The flow's key, ends in the table's order.
    pub key: FlowKey,
    /// Monotonic ns at the observer.
    pub ts_ns: u64,
    /// The sender's round trip from the PDM fields alone: its DTLS − the DTLR of the
    /// other end's packet it echoes, when that packet echoed the sender's previous one.
    pub rtt_ns: u64,
    /// The sender's DTLR, on the first data-carrying packet echoing a PSN: its turnaround
    /// (a server's server delay, a client's think time).
    pub held_ns: u64,
    /// Observer → sender → observer: now − when the echoed packet passed − DTLR.
    pub side_rtt_ns: u64,
    pub slot: u32,
    /// [`SAMPLE_FROM_HIGHER`], [`SAMPLE_CLIENT_HIGHER`].
    pub flags: u8,
    /// 0, or the [`TimeFault`](crate::time::TimeFault) of a time the sender gave.
    pub fault: u8,
    /// The echoed PSN.
    pub psn: u16,
}

const _: () = assert!(size_of::<ObservedSample>() == 80);

/// Whether (a, a_port) sorts before (b, b_port): the order of a flow's ends in its key.
/// Word compares (a derived `<` on arrays may become a memcmp call, which BPF lacks).
#[inline(always)]
pub fn ends_ordered(a: &[u8; 16], a_port: u16, b: &[u8; 16], b_port: u16) -> bool {
    let w = |x: &[u8; 16], i: usize| {
        u64::from_be_bytes([
            x[i],
            x[i + 1],
            x[i + 2],
            x[i + 3],
            x[i + 4],
            x[i + 5],
            x[i + 6],
            x[i + 7],
        ])
    };
    let (a0, b0) = (w(a, 0), w(b, 0));
    if a0 != b0 {
        return a0 < b0;
    }
    let (a1, b1) = (w(a, 8), w(b, 8));
    if a1 != b1 {
        return a1 < b1;
    }
    a_port <= b_port
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and Pod structs with explicit padding fields.
    unsafe impl aya::Pod for super::ObservedSlot {}
    unsafe impl aya::Pod for super::ObservedSample {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_order_is_address_then_port() {
        let a = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut b = a;
        b[15] = 2;
        let mut c = a;
        c[3] = 1;
        assert!(ends_ordered(&a, 9, &b, 1));
        assert!(!ends_ordered(&b, 1, &a, 9));
        assert!(ends_ordered(&b, 9, &c, 1));
        assert!(ends_ordered(&a, 1, &a, 2) && !ends_ordered(&a, 2, &a, 1));
        assert!(ends_ordered(&a, 1, &a, 1));
    }
}
