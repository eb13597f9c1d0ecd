//! Per-flow state shared by the TC-egress injector and the ingress recorder.
//!
//! One table entry per conversation, keyed from this host's point of view (local,
//! remote), so egress (local = source) and ingress (local = destination) land on the
//! same entry without any normalisation step on the per-packet path.
//!
//! The table is an array of 128-octet slots in sets of [`FLOW_WAYS`] rather than a
//! kernel LRU hash: the LRU hash adds 64 octets of bookkeeping per entry (element
//! header and bucket), half of a 128-octet budget per flow. A flow lives in one of the
//! slots of the two sets its keyed hash picks; a new flow takes an empty slot there or
//! evicts the least recently active of the eight, so a flood of new 5-tuples pushes
//! out its own entries and idle flows first. The array is mmapable, so the loader
//! reads the whole table without a syscall per entry.

/// Default number of flow-table slots (`--max-flows`).
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;

/// Slots per set: a new flow competes only with the slots of its two sets for a place.
pub const FLOW_WAYS: u32 = 4;

/// Slots in a table asked to hold `max_flows` flows: a power of two (the set index is a
/// mask of the hash), at least one set.
pub const fn table_slots(max_flows: u32) -> u32 {
    let n = if max_flows < FLOW_WAYS {
        FLOW_WAYS
    } else {
        max_flows
    };
    n.next_power_of_two()
}

/// Set in [`FlowState::rx_psn`] once a PDM packet has been received on the flow:
/// 0 is also a legal PSN, so "nothing received yet" needs its own bit.
pub const RX_PSN_VALID: u32 = 1 << 16;

/// [`FlowState::probe`]: the PSN in the top 16 bits, its send time (monotonic ns modulo
/// 2^48, about 78 hours) below; 0 when no probe is outstanding.
pub const PROBE_TIME_MASK: u64 = (1 << 48) - 1;

/// [`FlowState::echo`]: set once an RTT sample was taken for the echoed PSN in the low
/// 16 bits, and once a server-delay sample was.
pub const ECHO_VALID: u32 = 1 << 16;
pub const ECHO_DATA_TAKEN: u32 = 1 << 17;
/// [`FlowState::echo`]: the sample tick (monotonic ns >> the loader's
/// [`Config::sample_tick_shift`](crate::config::Config::sample_tick_shift), modulo 2^14) of the last
/// echoed PSN that was sampled. A bulk flow echoes a new PSN every ACK; one sample per
/// tick per flow keeps the ring and the loader at a bounded rate, as pping does.
pub const ECHO_TICK_SHIFT: u32 = 18;
pub const ECHO_TICK_MASK: u32 = (1 << 14) - 1;
/// Default sample tick: 2^20 ns, about 1 ms (at most ~1000 RTT samples a second per flow).
pub const DEFAULT_SAMPLE_TICK_SHIFT: u8 = 20;

/// [`FlowState::flags`]: the slot holds a flow.
pub const FLOW_VALID: u32 = 1;
/// [`FlowState::flags`]: a TCP FIN or RST was seen; the flow may be expired early.
pub const FLOW_CLOSED: u32 = 1 << 1;
/// [`FlowState::flags`]: PDM is on for this flow (all flows, or those `--only` selects).
pub const FLOW_SELECTED: u32 = 1 << 2;

/// [`RttSample::server_delay_ns`] when the packet carried no data (a pure ACK).
pub const NO_SAMPLE: u64 = u64::MAX;

/// Flow key: the 5-tuple as seen from this host. Ports in host byte order. For ICMPv6
/// echo, both ports hold the echo identifier (RFC 8250 has no port rule for ICMPv6;
/// PDMv2 uses the identifier too), which keeps the key the same in both directions.
/// Fragments, ESP and other ICMPv6 messages carry no ports: both are 0.
/// 8-aligned so it can be compared and hashed as five words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// Upper-layer protocol (6, 17, 58, 50, ...).
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The key of a conversation between `local` and `remote` (this host's view).
    #[inline(always)]
    pub const fn new(
        local: [u8; 16],
        remote: [u8; 16],
        local_port: u16,
        remote_port: u16,
        proto: u8,
    ) -> Self {
        Self {
            local_addr: local,
            remote_addr: remote,
            local_port,
            remote_port,
            proto,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    pub fn words(&self) -> &[u64; 5] {
        // SAFETY: repr(C), 8-aligned, 40 octets with explicit padding, so every octet
        // is initialised and the layout is five u64s.
        unsafe { &*(self as *const Self).cast::<[u64; 5]>() }
    }

    /// Equality as five word compares (derived `==` may become a memcmp call, which the
    /// BPF target does not have).
    #[inline(always)]
    pub fn same(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
    }

    /// Keyed hash of the key: NH (the inner hash of UMAC, RFC 4418) over its five
    /// words, then a 64-bit finaliser. NH's five multiplications are independent, so
    /// they run side by side; MurmurHash3's forty dependent steps were a third of the
    /// ingress program's run time. The key is random per load, so which flows share a
    /// set cannot be planned from outside (NH: two distinct flow keys collide with
    /// probability 2^-32 over the key); the worst a crafted flood achieves is churning
    /// the sets it happens to hit.
    #[inline(always)]
    pub fn hash(&self, k: &HashKey) -> u64 {
        let w = self.words();
        let mut acc = 0u64;
        let mut i = 0;
        while i < 5 {
            let lo = (w[i] as u32).wrapping_add(k.0[i] as u32);
            let hi = ((w[i] >> 32) as u32).wrapping_add((k.0[i] >> 32) as u32);
            acc = acc.wrapping_add(lo as u64 * hi as u64);
            i += 1;
        }
        // NH's low bits depend only on the inputs' low bits: mix every bit into every
        // other before any of them picks a set.
        fmix64(acc ^ k.0[5])
    }

    /// First slots of this key's two candidate sets in a table of `set_mask + 1` sets.
    /// Two choices rather than one let a table fill up far more evenly: at 95 % load,
    /// a new flow finds both sets full about a third as often.
    #[inline(always)]
    pub fn set_bases(&self, k: &HashKey, set_mask: u32) -> (u32, u32) {
        let h = self.hash(k);
        // The two halves of the finalised hash: independent choices.
        (
            (h as u32 & set_mask) * FLOW_WAYS,
            ((h >> 32) as u32 & set_mask) * FLOW_WAYS,
        )
    }
}

/// The flow hash's key: random, chosen by the loader at each load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashKey(pub [u64; 6]);

impl HashKey {
    /// A key expanded from one seed (SplitMix64), for tests and tools; the loader takes
    /// all its words from the system's random source.
    pub const fn from_seed(mut seed: u64) -> Self {
        let mut k = [0u64; 6];
        let mut i = 0;
        while i < 6 {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            k[i] = fmix64(seed);
            i += 1;
        }
        Self(k)
    }
}

/// MurmurHash3's 64-bit finaliser: every output bit depends on every input bit.
#[inline(always)]
pub const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// As five words: the loader hashes tens of thousands of keys a second, and the derived
/// impl would feed the hasher eleven small pieces.
impl core::hash::Hash for FlowKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        for w in self.words() {
            state.write_u64(*w);
        }
    }
}

/// Per-conversation state: 88 octets, so that with its key a slot is 128. Written
/// concurrently by egress and ingress, each on several CPUs at once (a flow's packets
/// are not confined to one CPU in either direction): `psn_next`, the counters, `rx_seq`
/// and `flags` only change through atomic operations; the other fields describe the
/// last packet sent or received, where the last writer is as right as any. The narrow
/// counters wrap; the loader reads them often enough to widen them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Low 16 bits: the next PSN This Packet to send (random start per flow).
    pub psn_next: u32,
    /// [`RX_PSN_VALID`] | PSN This Packet of the last PDM packet received (ingress writes).
    pub rx_psn: u32,
    /// Monotonic ns of the last packet we sent with PDM (egress writes).
    pub last_send_ns: u64,
    /// Monotonic ns of the last PDM packet received (ingress writes).
    pub last_recv_ns: u64,
    /// One sent PSN whose echo gives an RTT sample: see [`PROBE_TIME_MASK`]. Egress arms
    /// it when it is 0; ingress takes the sample, or clears it once the peer's echoes
    /// have moved past it.
    pub probe: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Wire packets sent (a GSO super-packet counts its segments). Wraps.
    /// `tx_packets` and `tx_pdm` form one aligned 64-bit word, and so do `rx_packets`
    /// and `rx_pdm`: the programs count both with one atomic add (see
    /// [`COUNT_PAIR_PDM_SHIFT`]), so a packet count wrapping carries one into its PDM
    /// count, which the loader takes back out.
    pub tx_packets: u32,
    /// Wire packets sent carrying our PDM. Wraps (with tx_packets' carries).
    pub tx_pdm: u32,
    /// Wraps.
    pub rx_packets: u32,
    /// Packets received carrying a valid PDM option. Wraps (with rx_packets' carries).
    pub rx_pdm: u32,
    /// DTLS to carry, already in wire form (scale << 16 | delta): at the last reception,
    /// its time minus the last send before it (ingress writes).
    pub dtls: u32,
    /// [`FLOW_VALID`], [`FLOW_CLOSED`], [`FLOW_SELECTED`].
    pub flags: u32,
    /// The peer's PSN sequence: window, highest PSN and PSNs skipped, in one word that
    /// ingress replaces with compare-and-swap (see [`crate::seq`]); 0 until the first
    /// PDM packet.
    pub rx_seq: u64,
    /// See [`ECHO_VALID`] (ingress writes).
    pub echo: u32,
    /// PSNs received twice (GSO segments repeating one PSN do not count). Wraps.
    /// `rx_duplicate` and `rx_reordered` form one aligned u32 that ingress adds to
    /// atomically (see [`REORDERED_SHIFT`]): a duplicate count wrapping carries one into
    /// the reordered count, which the loader takes back out.
    pub rx_duplicate: u16,
    /// PSNs that arrived after a later one (late ones included). Wraps.
    pub rx_reordered: u16,
}

impl FlowState {
    /// The PSN of the last PDM packet received, if any.
    pub const fn psn_last_received(&self) -> Option<u16> {
        if self.rx_psn & RX_PSN_VALID != 0 {
            Some(self.rx_psn as u16)
        } else {
            None
        }
    }

    /// When the flow was last active as far as the kernel keeps track: the eviction
    /// order within a set (0: never sent nor received PDM, evicted first).
    #[inline(always)]
    pub const fn last_pdm_ns(&self) -> u64 {
        if self.last_send_ns > self.last_recv_ns {
            self.last_send_ns
        } else {
            self.last_recv_ns
        }
    }
}

/// Where the PDM count sits in a (packets, PDM packets) pair counted as one u64.
pub const COUNT_PAIR_PDM_SHIFT: u32 = 32;
/// Where `rx_reordered` sits in the (duplicate, reordered) pair counted as one u32.
pub const REORDERED_SHIFT: u32 = 16;
const _: () = assert!(core::mem::offset_of!(FlowState, rx_seq) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FlowState, rx_duplicate) % 4 == 0);
const _: () = assert!(
    core::mem::offset_of!(FlowState, rx_reordered)
        == core::mem::offset_of!(FlowState, rx_duplicate) + 2
);
const _: () = assert!(core::mem::offset_of!(FlowState, tx_packets) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FlowState, rx_packets) % 8 == 0);
const _: () = assert!(
    core::mem::offset_of!(FlowState, tx_pdm) == core::mem::offset_of!(FlowState, tx_packets) + 4
);
const _: () = assert!(
    core::mem::offset_of!(FlowState, rx_pdm) == core::mem::offset_of!(FlowState, rx_packets) + 4
);

/// One slot of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub state: FlowState,
}

/// Octets of flow-table memory per slot: the budget the table is designed around.
pub const FLOW_SLOT_BYTES: usize = 128;
const _: () = assert!(size_of::<FlowSlot>() == FLOW_SLOT_BYTES);
const _: () = assert!(size_of::<FlowKey>() == 40);

/// One RTT measurement, sent to userspace when a received PDM echoes a PSN we sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttSample {
    pub key: FlowKey,
    /// Monotonic ns of the reception.
    pub ts_ns: u64,
    /// Reception − send time of the echoed PSN − the peer's DTLR (never clamped: an
    /// echo where that would be negative gives a `fault` instead).
    pub rtt_ns: u64,
    /// The peer's DTLR, when the packet carried data (its application's turnaround);
    /// [`NO_SAMPLE`] for pure ACKs, whose DTLR is only the stack's.
    pub server_delay_ns: u64,
    pub psn: u16,
    /// 0, or a [`TimeFault`](crate::time::TimeFault) as u8: the echo gave no sample
    /// (`rtt_ns` and `server_delay_ns` are [`NO_SAMPLE`]) because of what the peer's
    /// DTLR said; sent all the same, so the loader can mark the flow.
    pub fault: u8,
    pub _pad: u8,
    /// The flow's slot in the table: the loader finds its record there without
    /// hashing the key.
    pub slot: u32,
}

/// Size of the sample ring buffer (a power of two, in octets).
pub const SAMPLES_RING_BYTES: u32 = 1 << 20;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::FlowSlot {}
    unsafe impl aya::Pod for super::RttSample {}
    unsafe impl aya::Pod for super::HashKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn table_is_a_power_of_two_of_at_least_one_set() {
        assert_eq!(table_slots(1), FLOW_WAYS);
        assert_eq!(table_slots(4), 4);
        assert_eq!(table_slots(5), 8);
        assert_eq!(table_slots(65_536), 65_536);
        assert_eq!(table_slots(1_000_000), 1 << 20);
    }

    fn key(i: u32) -> FlowKey {
        let mut remote = [0u8; 16];
        remote[12..].copy_from_slice(&i.to_be_bytes());
        FlowKey::new([0xfd; 16], remote, 40_000, 443, 6)
    }

    #[test]
    fn same_is_field_equality() {
        let a = key(1);
        assert!(a.same(&a));
        for other in [
            key(2),
            FlowKey { proto: 17, ..a },
            FlowKey { local_port: 1, ..a },
            FlowKey {
                remote_port: 1,
                ..a
            },
        ] {
            assert!(!a.same(&other) && a != other);
        }
    }

    /// Sequential addresses (a typical scan or flood) spread evenly over the sets, the
    /// two choices are independent, and another seed gives another placement.
    #[test]
    fn hash_spreads_flows_over_sets_and_depends_on_the_seed() {
        let sets = 1024u32;
        let mut load = Vec::from([0u32; 1024]);
        let k = HashKey::from_seed(7);
        for i in 0..sets * 4 {
            load[(key(i).hash(&k) % sets as u64) as usize] += 1;
        }
        let max = *load.iter().max().unwrap();
        assert!(max <= 14, "fullest set holds {max} of an average of 4");
        let same = (0..4000)
            .filter(|&i| {
                let (a, b) = key(i).set_bases(&k, 1023);
                a == b
            })
            .count();
        assert!(same < 20, "{same} of 4000 keys got the same set twice");
        let other = HashKey::from_seed(8);
        let moved = (0..1000)
            .filter(|&i| key(i).set_bases(&k, 1023) != key(i).set_bases(&other, 1023))
            .count();
        assert!(moved > 990, "another key moved only {moved} of 1000 flows");
        // Keys that differ only in the ports' high bits (what a spoofer controls, and
        // what NH's low bits alone would not see) still spread.
        let mut sets_hit = std::collections::BTreeSet::new();
        for i in 0..4096u16 {
            let f = FlowKey::new([1; 16], [2; 16], 443, i << 4, 17);
            sets_hit.insert(f.set_bases(&k, 1023).0);
        }
        assert!(sets_hit.len() > 950, "{} of 1024 sets hit", sets_hit.len());
    }
}

/// Fragmented datagrams whose ports the programs remember at once, to give their later
/// fragments (which carry no ports) their datagram's flow: far more than are in flight
/// through one interface (Linux reassembles at most 4 MiB of fragments per namespace).
/// An LRU map: the oldest are forgotten first, and a fragment whose first was forgotten
/// is counted (`fragments_unattributed`).
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 4096;

/// A fragmented datagram: its addresses and Fragment header identification.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
}

/// Its ports (the echo identifier for ICMPv6 echo), from its first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}
