//! Capture files written by tests and benchmarks: pcap (link type Ethernet,
//! microsecond or nanosecond times), and IPv6 packets put together header by header,
//! so that a test knows every octet of what `pdm analyze` and tshark read.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

/// A pcap file of Ethernet frames being written.
pub struct PcapWriter {
    out: BufWriter<File>,
    nanos: bool,
}

impl PcapWriter {
    /// Creates `path`; `nanos`: nanosecond times (else microseconds).
    pub fn create(path: &Path, nanos: bool) -> io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        out.write_all(&magic.to_le_bytes())?;
        // Version 2.4, no zone, sigfigs 0, snaplen, link type 1 (Ethernet).
        out.write_all(&[2, 0, 4, 0])?;
        out.write_all(&[0; 8])?;
        out.write_all(&262_144u32.to_le_bytes())?;
        out.write_all(&1u32.to_le_bytes())?;
        Ok(Self { out, nanos })
    }

    /// Writes an IPv6 packet in an Ethernet frame, captured at `ts_ns` (ns since the
    /// Unix epoch; to the microsecond in a microsecond file).
    pub fn ipv6(&mut self, ts_ns: u64, packet: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(14 + packet.len());
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
        frame.extend_from_slice(packet);
        self.frame(ts_ns, &frame)
    }

    /// Writes one frame as it is.
    pub fn frame(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
        let sub = if self.nanos {
            ts_ns % 1_000_000_000
        } else {
            ts_ns % 1_000_000_000 / 1_000
        };
        self.out
            .write_all(&((ts_ns / 1_000_000_000) as u32).to_le_bytes())?;
        self.out.write_all(&(sub as u32).to_le_bytes())?;
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(frame)
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// IPv6 extension header and upper-layer protocol numbers.
pub const HOP_BY_HOP: u8 = 0;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const FRAGMENT: u8 = 44;
pub const ESP: u8 = 50;
pub const ICMPV6: u8 = 58;
pub const DSTOPTS: u8 = 60;

/// An IPv6 packet: the fixed header, then `headers` in order — each (its protocol
/// number, its octets with the Next Header octet left for this function to set) —
/// then the upper layer `upper` of protocol `upper_proto`.
pub fn ipv6_packet(
    src: [u8; 16],
    dst: [u8; 16],
    headers: &[(u8, Vec<u8>)],
    upper_proto: u8,
    upper: &[u8],
) -> Vec<u8> {
    let len: usize = headers.iter().map(|h| h.1.len()).sum::<usize>() + upper.len();
    let mut p = Vec::with_capacity(40 + len);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.push(headers.first().map_or(upper_proto, |h| h.0));
    p.push(64);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    for (i, (_, h)) in headers.iter().enumerate() {
        let at = p.len();
        p.extend_from_slice(h);
        p[at] = headers.get(i + 1).map_or(upper_proto, |n| n.0);
    }
    p.extend_from_slice(upper);
    p
}

/// A Hop-by-Hop or Destination Options header of 8 octets holding only padding.
pub fn padding_options() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// A Fragment header: data `offset` in octets (a multiple of 8), more fragments or
/// not, identification `id`.
pub fn fragment_header(offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![0, 0];
    h.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// A UDP header and payload (checksum 0: nothing here checks it).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A TCP header of 20 octets with `flags`, and its payload.
pub fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&[0; 4]);
    t.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// The frames of a pcap file (either byte order, microsecond or nanosecond times), as
/// (time in ns since the Unix epoch, the octets captured). Read without pdm's own
/// reader, so a test can hold pdm against it.
pub fn read_frames(path: &Path) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let bytes = std::fs::read(path)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let magic = bytes
        .get(..4)
        .ok_or_else(|| bad("no pcap header"))?
        .try_into()
        .expect("4 octets");
    let (le, nanos) = match u32::from_le_bytes(magic) {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        _ => return Err(bad("not a pcap file (pcapng? dumpcap writes pcap with -P)")),
    };
    let u32_at = |at: usize| -> io::Result<u32> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .ok_or_else(|| bad("cut short"))?
            .try_into()
            .expect("4 octets");
        Ok(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let mut frames = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let (secs, sub, caplen) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)? as usize);
        let data = bytes
            .get(at + 16..at + 16 + caplen)
            .ok_or_else(|| bad("record cut short"))?;
        let sub_ns = if nanos { sub } else { sub * 1000 };
        frames.push((
            u64::from(secs) * 1_000_000_000 + u64::from(sub_ns),
            data.to_vec(),
        ));
        at += 16 + caplen;
    }
    Ok(frames)
}
