//! One capture file: pcap or pcapng, streamed through a bounded buffer, each record's
//! link layer taken off to leave its IPv6 packet and capture time (link types:
//! Ethernet with 802.1Q/QinQ tags, Linux cooked SLL and SLL2, raw IP).

use std::{fs::File, path::Path};

use pcap_parser::{
    Block, Linktype, PcapBlockOwned, PcapError, create_reader, traits::PcapReaderIterator,
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

/// A capture file being read, one IPv6 packet at a time.
pub struct Reader {
    name: String,
    inner: Box<dyn PcapReaderIterator + Send>,
    /// pcap: one link type and time unit (ns per tick) for the file.
    legacy: (Linktype, u64),
    /// pcapng: (link type, ticks per second, offset in seconds) per interface.
    interfaces: Vec<(Linktype, u64, i64)>,
    summary: ReadSummary,
    size: u64,
    done: bool,
}

/// A block of a capture file, as far as we care.
enum Record<'a> {
    /// A header or description: no packet.
    Header,
    /// A packet record, and its IPv6 packet if it is one.
    Packet(Option<Packet<'a>>),
}

impl Reader {
    /// Opens `path` and checks it is a capture.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| CaptureError::Open {
            path: name.clone(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            return Err(CaptureError::Empty { path: name });
        }
        let inner = create_reader(1 << 20, file)
            .map_err(|_| CaptureError::NotACapture { path: name.clone() })?;
        let mut reader = Self {
            name,
            inner,
            legacy: (Linktype::ETHERNET, 1_000),
            interfaces: Vec::new(),
            summary: ReadSummary::default(),
            size,
            done: false,
        };
        // The header is read now, so that a file of an unsupported kind is refused
        // before anything of any file is read.
        reader.peek_ts()?;
        Ok(reader)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What was read so far.
    pub fn summary(&self) -> ReadSummary {
        self.summary
    }

    /// (octets read, file size), for progress.
    pub fn progress(&self) -> (u64, u64) {
        let at = if self.done {
            self.size
        } else {
            self.inner.consumed() as u64
        };
        (at.min(self.size), self.size)
    }

    /// The capture time of the next IPv6 packet, without taking it; None at the end.
    pub fn peek_ts(&mut self) -> Result<Option<u64>, CaptureError> {
        self.visit(false, |p| p.ts_ns)
    }

    /// Hands the next IPv6 packet to `f`; None at the end of the file.
    pub fn next_packet<R>(
        &mut self,
        f: impl FnOnce(&Packet) -> R,
    ) -> Result<Option<R>, CaptureError> {
        self.visit(true, f)
    }

    /// Finds the next IPv6 packet and shows it to `f`; taken (counted, and the reader
    /// moved past it) only with `take`, so that a merge can look at each file's next
    /// packet before choosing one.
    fn visit<R>(
        &mut self,
        take: bool,
        f: impl FnOnce(&Packet) -> R,
    ) -> Result<Option<R>, CaptureError> {
        while !self.done {
            match self.inner.next() {
                Ok((offset, block)) => {
                    let record = match block {
                        PcapBlockOwned::LegacyHeader(h) => {
                            if !supported(h.network) {
                                return Err(CaptureError::LinkType {
                                    path: self.name.clone(),
                                    linktype: h.network.0,
                                });
                            }
                            let unit = if h.is_nanosecond_precision() {
                                1
                            } else {
                                1_000
                            };
                            self.legacy = (h.network, unit);
                            Record::Header
                        }
                        PcapBlockOwned::Legacy(b) => {
                            let ts_ns = u64::from(b.ts_sec) * 1_000_000_000
                                + u64::from(b.ts_usec) * self.legacy.1;
                            Record::Packet(ipv6_at(self.legacy.0, b.data).map(|at| Packet {
                                ts_ns,
                                ipv6: &b.data[at..],
                                wire_len: b.origlen,
                            }))
                        }
                        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                            if !supported(idb.linktype) {
                                return Err(CaptureError::LinkType {
                                    path: self.name.clone(),
                                    linktype: idb.linktype.0,
                                });
                            }
                            // Ticks per second; the usual microseconds when unstated.
                            let per_sec = idb.ts_resolution().unwrap_or(1_000_000).max(1);
                            self.interfaces
                                .push((idb.linktype, per_sec, idb.ts_offset()));
                            Record::Header
                        }
                        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                            Record::Packet(self.interfaces.get(epb.if_id as usize).and_then(
                                |&(linktype, per_sec, secs)| {
                                    let ticks =
                                        (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                    let ns = (u128::from(ticks) * 1_000_000_000
                                        / u128::from(per_sec))
                                        as u64;
                                    let at = ipv6_at(linktype, epb.data)?;
                                    Some(Packet {
                                        ts_ns: ns.saturating_add_signed(
                                            secs.saturating_mul(1_000_000_000),
                                        ),
                                        ipv6: &epb.data[at..],
                                        wire_len: epb.origlen,
                                    })
                                },
                            ))
                        }
                        PcapBlockOwned::NG(_) => Record::Header,
                    };
                    match record {
                        Record::Packet(Some(p)) => {
                            let r = f(&p);
                            if take {
                                self.summary.records += 1;
                                self.summary.ipv6 += 1;
                                self.inner.consume(offset);
                            }
                            return Ok(Some(r));
                        }
                        Record::Packet(None) => {
                            self.summary.records += 1;
                            self.inner.consume(offset);
                        }
                        Record::Header => self.inner.consume(offset),
                    }
                }
                Err(PcapError::Eof) => self.done = true,
                Err(PcapError::Incomplete(_)) => {
                    if self.inner.reader_exhausted() {
                        self.summary.truncated_at = Some(self.inner.consumed());
                        self.done = true;
                    } else {
                        let at = self.inner.consumed();
                        if let Err(e) = self.inner.refill() {
                            return Err(CaptureError::Corrupt {
                                path: self.name.clone(),
                                offset: at,
                                what: format!("{e:?}"),
                            });
                        }
                    }
                }
                Err(PcapError::UnexpectedEof) => {
                    self.summary.truncated_at = Some(self.inner.consumed());
                    self.done = true;
                }
                Err(e) => {
                    let what = format!("{e:?}");
                    return Err(CaptureError::Corrupt {
                        path: self.name.clone(),
                        offset: self.inner.consumed(),
                        what,
                    });
                }
            }
        }
        if self.summary.records == 0
            && self.interfaces.is_empty()
            && self.summary.truncated_at.is_some()
        {
            return Err(CaptureError::NotACapture {
                path: self.name.clone(),
            });
        }
        Ok(None)
    }
}

/// Reads `path` to the end, handing every IPv6 packet to `each` in file order.
pub fn read(path: &Path, mut each: impl FnMut(&Packet)) -> Result<ReadSummary, CaptureError> {
    let mut reader = Reader::open(path)?;
    while reader.next_packet(&mut each)?.is_some() {}
    Ok(reader.summary())
}
