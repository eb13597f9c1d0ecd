//! A capture file as a source: pcap or pcapng, streamed through a bounded buffer, each
//! record's link layer taken off to leave its IPv6 packet and capture time (link
//! types: Ethernet with 802.1Q/QinQ tags, Linux cooked SLL and SLL2, raw IP); and its
//! flows ([`CaptureFlows`]) fed to the metrics engine as the kernel's are.

use std::{fs::File, path::Path};

use crate::engine::Table;

use pcap_parser::{Block, Linktype, PcapBlockOwned, PcapError, create_reader};
use pdm_common::{
    chain::{Chain, Upper},
    flow::{FLOW_CLOSED, FLOW_VALID, FlowKey, FlowSlot, FlowState, NO_SAMPLE, RttSample},
    seq::{SeqEvent, seq_step},
    time::{DeltaTime, decode_received, observed_rtt},
};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error("{path} is not a pcap or pcapng capture")]
    NotACapture { path: String },
    #[error(
        "{path}: link type {linktype} is not supported (Ethernet, Linux cooked SLL/SLL2 and raw IP are)"
    )]
    LinkType { path: String, linktype: i32 },
    #[error("{path}: unreadable at octet {offset}: {what}")]
    Corrupt {
        path: String,
        offset: usize,
        what: String,
    },
}

/// One captured IPv6 packet.
pub struct Packet<'a> {
    /// Capture time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// The IPv6 packet (from its fixed header on), as far as it was captured.
    pub ipv6: &'a [u8],
    /// Its length on the wire, link layer included.
    pub wire_len: u32,
}

/// What a read went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadSummary {
    /// Packet records read.
    pub records: u64,
    /// Of those, IPv6 packets handed on.
    pub ipv6: u64,
    /// Where the file was cut short, when its last record was incomplete.
    pub truncated_at: Option<usize>,
}

/// Link layer → where the IPv6 packet starts, or None (not IPv6, or too short).
fn ipv6_at(linktype: Linktype, d: &[u8]) -> Option<usize> {
    const ETH_P_IPV6: u16 = 0x86dd;
    let be16 = |at: usize| Some(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]));
    let at = match linktype {
        Linktype::ETHERNET => {
            let mut at = 12;
            // 802.1Q, 802.1ad (QinQ) and the old 0x9100 tag: 4 octets each.
            while matches!(be16(at)?, 0x8100 | 0x88a8 | 0x9100) {
                at += 4;
            }
            (be16(at)? == ETH_P_IPV6).then_some(at + 2)?
        }
        // struct sll_header: the protocol in its last two octets.
        Linktype::LINUX_SLL => (be16(14)? == ETH_P_IPV6).then_some(16)?,
        // struct sll2_header: the protocol first.
        Linktype::LINUX_SLL2 => (be16(0)? == ETH_P_IPV6).then_some(20)?,
        Linktype::RAW | Linktype::IPV6 => 0,
        _ => return None,
    };
    (d.get(at)? >> 4 == 6).then_some(at)
}

fn supported(linktype: Linktype) -> bool {
    matches!(
        linktype,
        Linktype::ETHERNET
            | Linktype::LINUX_SLL
            | Linktype::LINUX_SLL2
            | Linktype::RAW
            | Linktype::IPV6
    )
}

/// Reads `path` to the end, handing every IPv6 packet to `each` in file order.
pub fn read(path: &Path, mut each: impl FnMut(&Packet)) -> Result<ReadSummary, CaptureError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| CaptureError::Open {
        path: name.clone(),
        source,
    })?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(CaptureError::Empty { path: name });
    }
    let mut reader = create_reader(1 << 20, file)
        .map_err(|_| CaptureError::NotACapture { path: name.clone() })?;
    let mut summary = ReadSummary::default();
    // pcap: one link type and time unit for the file; pcapng: per interface.
    let mut legacy = (Linktype::ETHERNET, 1_000u64);
    let mut interfaces: Vec<(Linktype, u64, i64)> = Vec::new();
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        if !supported(h.network) {
                            return Err(CaptureError::LinkType {
                                path: name,
                                linktype: h.network.0,
                            });
                        }
                        let unit = if h.is_nanosecond_precision() {
                            1
                        } else {
                            1_000
                        };
                        legacy = (h.network, unit);
                    }
                    PcapBlockOwned::Legacy(b) => {
                        summary.records += 1;
                        let ts =
                            u64::from(b.ts_sec) * 1_000_000_000 + u64::from(b.ts_usec) * legacy.1;
                        if let Some(at) = ipv6_at(legacy.0, b.data) {
                            summary.ipv6 += 1;
                            each(&Packet {
                                ts_ns: ts,
                                ipv6: &b.data[at..],
                                wire_len: b.origlen,
                            });
                        }
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        // Ticks per second; the usual microseconds when unstated.
                        let per_sec = idb.ts_resolution().unwrap_or(1_000_000).max(1);
                        interfaces.push((idb.linktype, per_sec, idb.ts_offset()));
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        summary.records += 1;
                        let Some(&(linktype, per_sec, offset)) = interfaces.get(epb.if_id as usize)
                        else {
                            reader.consume(offset);
                            continue;
                        };
                        let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                        let ns = (u128::from(ticks) * 1_000_000_000 / u128::from(per_sec)) as u64;
                        let ts = ns.saturating_add_signed(offset.saturating_mul(1_000_000_000));
                        if let Some(at) = ipv6_at(linktype, epb.data) {
                            summary.ipv6 += 1;
                            each(&Packet {
                                ts_ns: ts,
                                ipv6: &epb.data[at..],
                                wire_len: epb.origlen,
                            });
                        }
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if reader.reader_exhausted() {
                    summary.truncated_at = Some(reader.consumed());
                    break;
                }
                let at = reader.consumed();
                if let Err(e) = reader.refill() {
                    return Err(CaptureError::Corrupt {
                        path: name,
                        offset: at,
                        what: format!("{e:?}"),
                    });
                }
            }
            Err(PcapError::UnexpectedEof) => {
                summary.truncated_at = Some(reader.consumed());
                break;
            }
            Err(e) => {
                let what = format!("{e:?}");
                return Err(CaptureError::Corrupt {
                    path: name,
                    offset: reader.consumed(),
                    what,
                });
            }
        }
    }
    if summary.records == 0 && interfaces.is_empty() && summary.truncated_at.is_some() {
        return Err(CaptureError::NotACapture { path: name });
    }
    Ok(summary)
}

/// A flow whichever way a packet goes: (the lower end's address and port, the higher
/// end's, protocol).
type Ends = ([u8; 16], u16, [u8; 16], u16, u8);

/// Server packets remembered per flow for pairing with the client's echoes of them.
const RECENT_SERVER_PACKETS: usize = 64;

/// One flow of a capture, seen from its client (the end that sent its first packet in
/// the capture; for TCP the SYN's sender).
struct CaptureFlow {
    slot: FlowSlot,
    /// The server's recent packets with PDM: (PSN, its DTLR, the client PSN it echoed).
    recent: [(u16, DeltaTime, u16); RECENT_SERVER_PACKETS],
    recent_next: usize,
    recent_len: usize,
    /// The last server PSN the client's echo of gave an RTT sample (or was refused).
    rtt_echo: Option<u16>,
    /// The last client PSN whose server-side echo gave a server-delay sample.
    delay_echo: Option<u16>,
}

/// The flows of a capture, fed to the metrics engine as the kernel feeds it in
/// `pdm run`: per-flow counters and the server's PSN sequence as flow-table entries,
/// and RTT and server-delay samples.
///
/// - RTT from the PDM fields alone (valid at any capture point): when the client's
///   packet p3 first echoes the server's p2 (p3.PSNLR = p2.PSNTP) and p2 echoed the
///   last packet the client sent before p3 (p2.PSNLR = p3.PSNTP − 1, the client
///   numbering its packets one by one), RTT = DTLS(p3) − DTLR(p2).
/// - Server delay: DTLR of the first data-carrying server packet that echoes a client
///   PSN, as `pdm run` takes it.
#[derive(Default)]
pub struct CaptureFlows {
    flows: Vec<CaptureFlow>,
    index: std::collections::HashMap<Ends, usize>,
}

impl CaptureFlows {
    /// Takes one packet in: counters, sequence, and samples handed to `table`.
    pub fn packet(&mut self, p: &Packet, c: &Chain, table: &mut Table) {
        let (proto, sport, dport, tcp_flags, data) = match c.upper {
            Upper::Tcp {
                sport,
                dport,
                flags,
                header_len,
            } => {
                let headers = c.upper_offset - 40 + header_len;
                (6, sport, dport, flags, usize::from(c.payload_len) > headers)
            }
            Upper::Udp { sport, dport } => (17, sport, dport, 0, true),
            // Neighbor Discovery, MLD and router renumbering are never given PDM and are
            // not flows, as in `pdm run`.
            Upper::Icmpv6 {
                ty: 130..=138 | 143,
                ..
            } => return,
            Upper::Icmpv6 { echo, .. } => {
                let id = echo.map_or(0, |e| e.0);
                (58, id, id, 0, true)
            }
            Upper::Opaque => (c.upper_proto, 0, 0, 0, true),
        };
        let (a, b) = ((c.src, sport), (c.dst, dport));
        let canon = if a <= b {
            (a.0, a.1, b.0, b.1, proto)
        } else {
            (b.0, b.1, a.0, a.1, proto)
        };
        let id = *self.index.entry(canon).or_insert_with(|| {
            // The first packet's sender is the client, but a SYN-ACK's receiver.
            let syn_ack = proto == 6 && tcp_flags & 0x12 == 0x12;
            let (client, server) = if syn_ack { (b, a) } else { (a, b) };
            self.flows.push(CaptureFlow {
                slot: FlowSlot {
                    key: FlowKey::new(client.0, server.0, client.1, server.1, proto),
                    state: FlowState {
                        flags: FLOW_VALID,
                        ..FlowState::default()
                    },
                },
                recent: [(0, DeltaTime::default(), 0); RECENT_SERVER_PACKETS],
                recent_next: 0,
                recent_len: 0,
                rtt_echo: None,
                delay_echo: None,
            });
            self.flows.len() - 1
        });
        let f = &mut self.flows[id];
        let from_client = f.slot.key.local_addr == c.src && f.slot.key.local_port == sport;
        let s = &mut f.slot.state;
        let pdm = u32::from(c.pdm.is_some());
        if from_client {
            s.tx_packets = s.tx_packets.wrapping_add(1);
            s.tx_pdm = s.tx_pdm.wrapping_add(pdm);
            s.tx_bytes += u64::from(p.wire_len);
        } else {
            s.rx_packets = s.rx_packets.wrapping_add(1);
            s.rx_pdm = s.rx_pdm.wrapping_add(pdm);
            s.rx_bytes += u64::from(p.wire_len);
        }
        if tcp_flags & 0x05 != 0 {
            s.flags |= FLOW_CLOSED;
        }
        let Some(pdm) = c.pdm else {
            return;
        };
        let sample = |rtt_ns, server_delay_ns, fault| RttSample {
            key: f.slot.key,
            ts_ns: p.ts_ns,
            rtt_ns,
            server_delay_ns,
            psn: pdm.psn_last_recv,
            fault,
            _pad: 0,
            slot: id as u32,
        };
        let dtlr = DeltaTime {
            delta: pdm.dtlr,
            scale: pdm.scale_dtlr,
        };
        if from_client {
            if f.rtt_echo == Some(pdm.psn_last_recv) {
                return;
            }
            let p2 = f.recent[..f.recent_len]
                .iter()
                .find(|r| r.0 == pdm.psn_last_recv)
                .copied();
            if let Some((_, p2_dtlr, p2_echoed)) = p2
                && p2_echoed == pdm.psn_this.wrapping_sub(1)
            {
                f.rtt_echo = Some(pdm.psn_last_recv);
                let dtls = DeltaTime {
                    delta: pdm.dtls,
                    scale: pdm.scale_dtls,
                };
                table.add_sample(&match observed_rtt(dtls, p2_dtlr) {
                    Ok(rtt) => sample(rtt, NO_SAMPLE, 0),
                    Err(fault) => sample(NO_SAMPLE, NO_SAMPLE, fault as u8),
                });
            }
            return;
        }
        let (word, event) = seq_step(s.rx_seq, pdm.psn_this);
        s.rx_seq = word;
        match event {
            SeqEvent::Duplicate => s.rx_duplicate = s.rx_duplicate.wrapping_add(1),
            SeqEvent::Reordered => s.rx_reordered = s.rx_reordered.wrapping_add(1),
            SeqEvent::None => {}
        }
        f.recent[f.recent_next] = (pdm.psn_this, dtlr, pdm.psn_last_recv);
        f.recent_next = (f.recent_next + 1) % RECENT_SERVER_PACKETS;
        f.recent_len = (f.recent_len + 1).min(RECENT_SERVER_PACKETS);
        let echoes = pdm.psn_last_recv != 0 || pdm.dtlr != 0 || pdm.scale_dtlr != 0;
        if data && echoes && f.delay_echo != Some(pdm.psn_last_recv) {
            f.delay_echo = Some(pdm.psn_last_recv);
            table.add_sample(&match decode_received(dtlr) {
                Ok(ns) => sample(NO_SAMPLE, ns, 0),
                Err(fault) => sample(NO_SAMPLE, NO_SAMPLE, fault as u8),
            });
        }
    }

    /// The flows as flow-table entries, (slot, entry), for the engine's refresh.
    pub fn slots(&self) -> impl Iterator<Item = (u32, FlowSlot)> + '_ {
        self.flows
            .iter()
            .enumerate()
            .map(|(i, f)| (i as u32, f.slot))
    }
}
