//! A capture file as a source: pcap or pcapng, streamed through a bounded buffer, each
//! record's link layer taken off to leave its IPv6 packet and capture time. Link
//! types: Ethernet (with 802.1Q/QinQ tags), Linux cooked (SLL and SLL2) and raw IP.

use std::{fs::File, path::Path};

use pcap_parser::{Block, Linktype, PcapBlockOwned, PcapError, create_reader};

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
