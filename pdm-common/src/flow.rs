//! Per-flow state shared by the TC-egress injector and the ingress recorder.
//!
//! One map entry per conversation, keyed from this host's point of view (local, remote),
//! so egress (local = source) and ingress (local = destination) land on the same entry
//! without any normalisation step on the per-packet path.

/// Default number of flow-map entries (`--max-flows`).
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;

/// Set in [`FlowState::rx_psn`] once a PDM packet has been received on the flow:
/// 0 is also a legal PSN, so "nothing received yet" needs its own bit.
pub const RX_PSN_VALID: u32 = 1 << 16;

/// Send times kept per flow, for an RTT per echoed PSN (a bulk sender's peer echoes
/// PSNs older than the last one sent).
pub const SENT_RING: usize = 8;
/// A [`FlowState::sent`] entry: the PSN in the top 16 bits, the send time (monotonic
/// ns, modulo 2^48, about 78 hours) below.
pub const SENT_TIME_MASK: u64 = (1 << 48) - 1;

/// [`FlowState::echo`]: set once an RTT sample was taken for the echoed PSN in the low
/// 16 bits, and once a server-delay sample was.
pub const ECHO_VALID: u32 = 1 << 16;
pub const ECHO_DATA_TAKEN: u32 = 1 << 17;

/// [`FlowState::flags`]: a TCP FIN or RST was seen; the flow may be expired early.
pub const FLOW_CLOSED: u32 = 1;

/// [`RttSample::server_delay_ns`] when the packet carried no data (a pure ACK).
pub const NO_SAMPLE: u64 = u64::MAX;

/// Flow key: the 5-tuple as seen from this host. Ports in host byte order. For ICMPv6
/// echo, both ports hold the echo identifier (RFC 8250 has no port rule for ICMPv6;
/// PDMv2 uses the identifier too), which keeps the key the same in both directions.
/// Fragments, ESP and other ICMPv6 messages carry no ports: both are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
}

/// Per-conversation state. Written concurrently by egress (one CPU) and ingress
/// (another): `psn_next` is only ever advanced with an atomic add, counters with atomic
/// adds, and every other field has a single writer side.
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
    /// At the last reception: its time minus the last send before it (DTLS to carry).
    pub dtls_ns: u64,
    /// Monotonic ns when the entry was created.
    pub first_seen_ns: u64,
    /// Wire packets sent (a GSO super-packet counts its segments).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Wire packets sent carrying our PDM.
    pub tx_pdm: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets received carrying a valid PDM option.
    pub rx_pdm: u64,
    /// See [`SENT_TIME_MASK`]; index = PSN modulo [`SENT_RING`].
    pub sent: [u64; SENT_RING],
    /// Bit k set: PSN (highest received − k) was received (k < 64).
    pub rx_window: u64,
    /// [`RX_PSN_VALID`] | the highest PSN received (serial-number order).
    pub rx_high: u32,
    /// PSNs skipped by the peer's sequence and not (yet) seen: lost, or still to come.
    pub rx_lost: u32,
    /// PSNs that arrived after a later one.
    pub rx_reordered: u32,
    /// PSNs received twice (GSO segments repeating one PSN do not count).
    pub rx_duplicate: u32,
    /// See [`ECHO_VALID`].
    pub echo: u32,
    /// See [`FLOW_CLOSED`].
    pub flags: u32,
}

impl FlowState {
    /// State of a new flow whose first PSN is `psn_start` (random, per RFC 8250).
    #[inline(always)]
    pub const fn new(psn_start: u16, now_ns: u64) -> Self {
        Self {
            psn_next: psn_start as u32,
            rx_psn: 0,
            last_send_ns: 0,
            last_recv_ns: 0,
            dtls_ns: 0,
            first_seen_ns: now_ns,
            tx_packets: 0,
            tx_bytes: 0,
            tx_pdm: 0,
            rx_packets: 0,
            rx_bytes: 0,
            rx_pdm: 0,
            sent: [0; SENT_RING],
            rx_window: 0,
            rx_high: 0,
            rx_lost: 0,
            rx_reordered: 0,
            rx_duplicate: 0,
            echo: 0,
            flags: 0,
        }
    }

    /// The PSN of the last PDM packet received, if any.
    pub const fn psn_last_received(&self) -> Option<u16> {
        if self.rx_psn & RX_PSN_VALID != 0 {
            Some(self.rx_psn as u16)
        } else {
            None
        }
    }
}

/// One RTT measurement, sent to userspace when a received PDM echoes a PSN we sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttSample {
    pub key: FlowKey,
    /// Monotonic ns of the reception.
    pub ts_ns: u64,
    /// Reception − send time of the echoed PSN − the peer's DTLR.
    pub rtt_ns: u64,
    /// The peer's DTLR, when the packet carried data (its application's turnaround);
    /// [`NO_SAMPLE`] for pure ACKs, whose DTLR is only the stack's.
    pub server_delay_ns: u64,
    pub psn: u16,
    pub _pad: [u8; 6],
}

/// Size of the sample ring buffer (a power of two, in octets).
pub const SAMPLES_RING_BYTES: u32 = 1 << 20;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::RttSample {}
}
