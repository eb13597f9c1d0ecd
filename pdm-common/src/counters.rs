//! Global per-CPU counters: every packet either gets PDM / is recorded, or is passed
//! through for a reason that has its own counter. Both programs bump one slot of a
//! single per-CPU array element, so the accounting costs one (inlined) lookup.

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Index into [`Counters`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($(#[doc = $doc])* $variant,)* }

        impl Counter {
            pub const ALL: &[Counter] = &[$(Counter::$variant,)*];
            /// Stable snake_case name, used as the JSON key.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
        }
    };
}

counters! {
    /// Packets the egress program ran on.
    EgressPackets => "egress_packets",
    /// Packets that left with our PDM header (a GSO packet counts once).
    EgressInserted => "egress_pdm_inserted",
    /// Not IPv6 (IPv4, ARP, ...).
    EgressNotIpv6 => "egress_skip_not_ipv6",
    /// Neighbor Discovery, MLD or router renumbering.
    EgressNdMld => "egress_skip_nd_mld",
    /// Already carries PDM (e.g. an IPV6_DSTOPTS socket).
    EgressAlreadyPdm => "egress_skip_already_pdm",
    /// Carries another Destination Options header where PDM would go.
    EgressOtherDstOpts => "egress_skip_other_dstopts",
    /// An Authentication Header covers the headers PDM would go between: inserting
    /// would make the receiver reject the packet.
    EgressAh => "egress_skip_ah",
    /// Upper layer is not TCP, UDP, ICMPv6 or ESP-protected.
    EgressNotEligible => "egress_skip_not_eligible",
    /// PDM would make the packet exceed the device MTU.
    EgressTooBig => "egress_skip_too_big",
    /// Truncated, malformed or too-long header chain.
    EgressUnparsable => "egress_skip_unparsable",
    /// Hop-by-Hop/Routing headers longer than the program moves.
    EgressPrefixTooLong => "egress_skip_prefix_too_long",
    /// Not selected by `--only`.
    EgressFiltered => "egress_skip_filtered",
    /// The flow map could not take a new entry.
    EgressFlowMapFull => "egress_skip_flow_map_full",
    /// The kernel refused to open room for the header.
    EgressAdjustFailed => "egress_skip_adjust_failed",
    /// Packets the ingress program ran on.
    IngressPackets => "ingress_packets",
    /// Packets received with a valid PDM option, recorded.
    IngressPdm => "ingress_pdm",
    /// Eligible packets received without PDM.
    IngressNoPdm => "ingress_no_pdm",
    IngressNotIpv6 => "ingress_skip_not_ipv6",
    IngressNdMld => "ingress_skip_nd_mld",
    IngressNotEligible => "ingress_skip_not_eligible",
    IngressUnparsable => "ingress_skip_unparsable",
    /// PDM option with a wrong length, or PDM twice in one header: ignored.
    IngressBadPdm => "ingress_bad_pdm",
    IngressFlowMapFull => "ingress_skip_flow_map_full",
    /// SYN/SYN-ACK whose MSS was lowered to leave room for our PDM.
    IngressMssClamped => "ingress_mss_clamped",
    /// SYN/SYN-ACK left with its MSS because an Authentication Header covers it (the
    /// receiver's integrity check would reject the changed segment).
    IngressMssSkipAh => "ingress_mss_skip_ah",
    /// RTT samples sent to userspace.
    IngressRttSamples => "ingress_rtt_samples",
    /// RTT samples lost because the sample ring was full (userspace too slow).
    IngressSamplesDropped => "ingress_samples_dropped",
    /// Echoed PSNs not sampled: the flow had a sample in the same tick
    /// (`--sample-interval`).
    IngressSamplesThinned => "ingress_samples_thinned",
    /// PDM packets whose PSN could not be classified (loss, reordering, duplicates)
    /// because other CPUs kept changing the flow's sequence state: never expected with
    /// a few CPUs per flow; counted so that it would show.
    IngressSeqContended => "ingress_seq_contended",
    /// Echoes whose DTLR claims the peer held our packet longer than the time between
    /// our sending it and receiving the echo: no RTT, no server-delay sample.
    IngressImplausibleDtlr => "ingress_implausible_dtlr",
    /// Echoes whose DTLR RFC 8250's encoder cannot produce (non-zero scale, value below
    /// 2^15): the peer's encoder is not the RFC's; no sample.
    IngressDtlrNotExact => "ingress_dtlr_not_rfc_exact",
    /// Echoes whose DTLR is malformed (zero value with a non-zero scale, or beyond
    /// 64-bit nanoseconds): no sample.
    IngressDtlrMalformed => "ingress_dtlr_malformed",
    /// Packets the observer programs (`pdm observe`) ran on: each is passed on as it
    /// came, and counted once below as PDM, no PDM, or a skip reason.
    ObservePackets => "observe_packets",
    /// Packets with a valid PDM option, recorded in their flow.
    ObservePdm => "observe_pdm",
    /// Eligible packets without PDM, counted in their flow.
    ObserveNoPdm => "observe_no_pdm",
    ObserveNotIpv6 => "observe_skip_not_ipv6",
    ObserveNdMld => "observe_skip_nd_mld",
    ObserveNotEligible => "observe_skip_not_eligible",
    ObserveUnparsable => "observe_skip_unparsable",
    ObserveFlowMapFull => "observe_skip_flow_map_full",
    /// PDM option with a wrong length, or twice (also counted as no PDM).
    ObserveBadPdm => "observe_bad_pdm",
    /// Samples handed to userspace.
    ObserveSamples => "observe_samples",
    /// Samples lost because the sample ring was full.
    ObserveSamplesDropped => "observe_samples_dropped",
    /// Echoed PSNs not sampled: the same end's flow had a sample in the same tick.
    ObserveSamplesThinned => "observe_samples_thinned",
    /// PSNs not classified because other CPUs kept changing the sequence state.
    ObserveSeqContended => "observe_seq_contended",
    /// Echoes whose times gave no figure: DTLR longer than the time it stands in, or
    /// encoded as RFC 8250's encoder never does (see the ingress_*_dtlr counters).
    ObserveDtlrFaults => "observe_dtlr_faults",
    /// A new flow took the slot of the least recently active flow of its set (either
    /// program; not a packet outcome).
    FlowEvictions => "flow_table_evictions",
    /// Later fragments (either program) whose first fragment was not seen or was
    /// forgotten: counted in a flow of their addresses with ports 0, not their
    /// datagram's (not a packet outcome).
    FragmentsUnattributed => "fragments_unattributed",
}

/// Number of counter slots.
pub const COUNTER_SLOTS: usize = Counter::ALL.len();

/// The per-CPU array element.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTER_SLOTS]);

impl Default for Counters {
    fn default() -> Self {
        Self([0; COUNTER_SLOTS])
    }
}

impl Counters {
    #[inline(always)]
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
}

#[cfg(feature = "user")]
// SAFETY: an array of u64.
unsafe impl aya::Pod for Counters {}
