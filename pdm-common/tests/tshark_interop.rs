//! Interop with Wireshark's PDM dissector: frames built with `PdmFields::encode_header`
//! must decode in tshark to the same field values, with no malformed/invalid-length
//! expert items and valid UDP checksums.
//!
//! tshark is a required test dependency (`cargo xtask setup` installs it): this test
//! fails, rather than skips, when it is missing, so CI cannot silently lose the check.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pdm_common::time::encode_delta_ns;
use pdm_common::wire::{IPPROTO_DSTOPTS, IPPROTO_UDP, PDM_HEADER_LEN, PdmFields};

const SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const ETHERTYPE_IPV6: u16 = 0x86DD;
const LINKTYPE_ETHERNET: u32 = 1;

/// PDM field names in tshark's order of output (`docs/pdm.md` §10).
const TSHARK_FIELDS: [&str; 6] = pdm_common::wire::TSHARK_PDM_FIELDS;

/// The PDM fields of every test frame: zero and maximum values, scale 0 and >= 50,
/// PSNs 0 and 65535, a wrapped PSN pair, and encoder output for real delays.
fn cases() -> Vec<PdmFields> {
    let d1 = encode_delta_ns(1);
    let d65s = encode_delta_ns(65_535_000_000);
    let d2_40 = encode_delta_ns(1 << 40);
    let dmax = encode_delta_ns(u64::MAX);
    let d2ms = encode_delta_ns(2_000_000);
    let d62ms = encode_delta_ns(62_000_000);
    vec![
        PdmFields::default(),
        PdmFields {
            scale_dtlr: 0,
            scale_dtls: 0,
            psn_this: 65535,
            psn_last_recv: 0,
            dtlr: 1,
            dtls: 65535,
        },
        // PSN wrapped: this = 0 after 65535, echoing 65535.
        PdmFields {
            scale_dtlr: d1.scale,
            scale_dtls: d2_40.scale,
            psn_this: 0,
            psn_last_recv: 65535,
            dtlr: d1.delta,
            dtls: d2_40.delta,
        },
        PdmFields {
            scale_dtlr: d65s.scale,
            scale_dtls: dmax.scale,
            psn_this: 1,
            psn_last_recv: 65534,
            dtlr: d65s.delta,
            dtls: dmax.delta,
        },
        PdmFields {
            scale_dtlr: d2ms.scale,
            scale_dtls: d62ms.scale,
            psn_this: 0x8000,
            psn_last_recv: 0x7FFF,
            dtlr: d2ms.delta,
            dtls: d62ms.delta,
        },
        PdmFields {
            scale_dtlr: 255,
            scale_dtls: 50,
            psn_this: 0x1234,
            psn_last_recv: 0xABCD,
            dtlr: 0xFFFF,
            dtls: 0x8001,
        },
    ]
}

/// RFC 1071 one's-complement sum of `data` (odd length padded with a zero octet).
fn ones_complement_sum(mut sum: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    sum
}

/// UDP checksum over the IPv6 pseudo-header (RFC 8200 section 8.1): it uses the UDP
/// length, so the inserted Destination Options header does not enter it.
fn udp_checksum(udp: &[u8]) -> u16 {
    let len = u32::try_from(udp.len()).unwrap();
    let mut sum = ones_complement_sum(0, &SRC);
    sum = ones_complement_sum(sum, &DST);
    sum = ones_complement_sum(sum, &len.to_be_bytes());
    sum = ones_complement_sum(sum, &[0, 0, 0, IPPROTO_UDP]);
    sum = ones_complement_sum(sum, udp);
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xFFFF, // 0 means "no checksum", which IPv6 forbids for UDP
        c => c,
    }
}

/// Ethernet / IPv6 / Destination Options (PDM) / UDP with `payload_len` octets.
fn frame(pdm: &PdmFields, index: usize, payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + index) as u8).collect();
    let mut udp = Vec::new();
    udp.extend_from_slice(&(40_000 + index as u16).to_be_bytes());
    udp.extend_from_slice(&9_u16.to_be_bytes());
    udp.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    let csum = udp_checksum(&udp);
    udp[6..8].copy_from_slice(&csum.to_be_bytes());

    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // destination MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // source MAC
    f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    let payload_length = u16::try_from(PDM_HEADER_LEN + udp.len()).unwrap();
    f.extend_from_slice(&payload_length.to_be_bytes());
    f.push(IPPROTO_DSTOPTS);
    f.push(64); // hop limit
    f.extend_from_slice(&SRC);
    f.extend_from_slice(&DST);
    f.extend_from_slice(&pdm.encode_header(IPPROTO_UDP));
    f.extend_from_slice(&udp);
    f
}

/// A classic little-endian libpcap file (microsecond timestamps, Ethernet).
fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xA1B2_C3D4_u32.to_le_bytes());
    out.extend_from_slice(&2_u16.to_le_bytes());
    out.extend_from_slice(&4_u16.to_le_bytes());
    out.extend_from_slice(&0_i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0_u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65_535_u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        let len = u32::try_from(f.len()).unwrap();
        out.extend_from_slice(&1_700_000_000_u32.to_le_bytes());
        out.extend_from_slice(&u32::try_from(i * 1000).unwrap().to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes()); // incl_len
        out.extend_from_slice(&len.to_le_bytes()); // orig_len
        out.extend_from_slice(f);
    }
    out
}

/// Removes the temporary directory even when an assertion fails.
struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/pdm-tshark-<pid>-<name>`: tests in one process run in parallel.
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pdm-tshark-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs tshark on `file`; panics (never skips) if tshark is missing or fails.
fn tshark(file: &Path, args: &[&str]) -> String {
    let tshark = std::env::var_os("TSHARK").unwrap_or_else(|| "tshark".into());
    let result = Command::new(&tshark)
        .arg("-n") // no name resolution
        .arg("-r")
        .arg(file)
        .args(args)
        .output();
    let Output {
        status,
        stdout,
        stderr,
    } = match result {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "tshark not found ({}): it is required for this test; run `cargo xtask setup`",
            tshark.to_string_lossy()
        ),
        Err(e) => panic!("running tshark: {e}"),
    };
    assert!(
        status.success(),
        "tshark {args:?} failed ({status}): {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8(stdout).expect("tshark output is UTF-8")
}

/// A small deterministic generator (SplitMix64) for extra frames; no rand dependency.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// [`cases`] plus pseudo-random fields from the encoder over the whole u64 range.
fn all_cases() -> Vec<PdmFields> {
    let mut v = cases();
    let mut state = 0x5EED;
    for _ in 0..24 {
        let r = splitmix64(&mut state);
        // Random magnitude: shift a random u64 right by 0..=63 bits.
        let dtlr = encode_delta_ns(splitmix64(&mut state) >> (r % 64));
        let dtls = encode_delta_ns(splitmix64(&mut state) >> ((r >> 8) % 64));
        v.push(PdmFields {
            scale_dtlr: dtlr.scale,
            scale_dtls: dtls.scale,
            psn_this: (r >> 16) as u16,
            psn_last_recv: (r >> 32) as u16,
            dtlr: dtlr.delta,
            dtls: dtls.delta,
        });
    }
    v
}

/// Writes the frames for `cases` into a pcap in `dir`.
fn write_pcap(dir: &TempDir, name: &str, frames: &[Vec<u8>]) -> PathBuf {
    let file = dir.0.join(name);
    std::fs::write(&file, pcap(frames)).expect("write pcap");
    file
}

fn good_frames(cases: &[PdmFields]) -> Vec<Vec<u8>> {
    cases
        .iter()
        .enumerate()
        // Payload lengths 1, 4, 7, ...: odd and even, for the checksum's odd-octet padding.
        .map(|(i, f)| frame(f, i, i * 3 + 1))
        .collect()
}

/// Parses one tshark field value; Wireshark 4.0 prints these as decimal, other
/// versions or preferences may print hex.
fn parse_field(value: &str) -> u64 {
    let v = value.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("tshark field value {value:?}: {e}"))
}

/// One line of `tshark -T fields` output split on `sep`, exactly `n` columns.
fn columns(line: &str, sep: char, n: usize, frame: usize) -> Vec<&str> {
    let cols: Vec<&str> = line.split(sep).collect();
    assert_eq!(
        cols.len(),
        n,
        "frame {frame}: expected {n} columns (one PDM option), got {line:?}"
    );
    cols
}

#[test]
fn tshark_decodes_our_pdm_headers() {
    let cases = all_cases();
    let dir = TempDir::new("fields");
    let file = write_pcap(&dir, "pdm.pcap", &good_frames(&cases));

    let mut args = vec!["-T", "fields", "-E", "separator=,"];
    for f in TSHARK_FIELDS {
        args.extend(["-e", f]);
    }
    let out = tshark(&file, &args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), cases.len(), "tshark output:\n{out}");

    for (i, (line, ours)) in lines.iter().zip(&cases).enumerate() {
        let theirs: Vec<u64> = columns(line, ',', TSHARK_FIELDS.len(), i + 1)
            .into_iter()
            .map(parse_field)
            .collect();
        let expected = [
            u64::from(ours.scale_dtlr),
            u64::from(ours.scale_dtls),
            u64::from(ours.psn_this),
            u64::from(ours.psn_last_recv),
            u64::from(ours.dtlr),
            u64::from(ours.dtls),
        ];
        for ((name, t), e) in TSHARK_FIELDS.iter().zip(&theirs).zip(expected) {
            assert_eq!(*t, e, "frame {}: {name}: tshark {t}, ours {e}", i + 1);
        }
    }
    // Straight to stderr, bypassing the test harness's capture, so CI logs show it ran.
    writeln!(
        std::io::stderr(),
        "tshark interop: {} frames decoded, all fields match",
        cases.len()
    )
    .expect("write to stderr");
}

/// Fields for the expert/checksum checks, with `|` between fields and `;` between
/// repeated occurrences (expert messages contain commas).
const EXPERT_ARGS: [&str; 18] = [
    "-o",
    "udp.check_checksum:TRUE",
    "-T",
    "fields",
    "-E",
    "separator=|",
    "-E",
    "aggregator=;",
    "-e",
    "frame.protocols",
    "-e",
    "_ws.expert.message",
    "-e",
    "_ws.malformed",
    "-e",
    "udp.checksum.status",
    "-e",
    "ipv6.opt.length",
];

/// Wireshark's `udp.checksum.status` values (epan/proto.h `PROTO_CHECKSUM_E_*`).
const CHECKSUM_BAD: &str = "0";
const CHECKSUM_GOOD: &str = "1";

#[test]
fn tshark_reports_no_expert_info_and_good_checksums() {
    let cases = all_cases();
    let dir = TempDir::new("expert");
    let file = write_pcap(&dir, "pdm.pcap", &good_frames(&cases));

    let out = tshark(&file, &EXPERT_ARGS);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), cases.len(), "tshark output:\n{out}");
    for (i, line) in lines.iter().enumerate() {
        let c = columns(line, '|', 5, i + 1);
        assert_eq!(
            c[0],
            "eth:ethertype:ipv6:ipv6.dstopts:udp:data",
            "frame {}: protocol chain",
            i + 1
        );
        assert!(
            !c[1].contains("Invalid length") && !c[1].contains("Malformed"),
            "frame {}: tshark flags it: {}",
            i + 1,
            c[1]
        );
        assert_eq!(c[1], "", "frame {}: unexpected expert info", i + 1);
        assert_eq!(c[2], "", "frame {}: malformed", i + 1);
        assert_eq!(c[3], CHECKSUM_GOOD, "frame {}: UDP checksum status", i + 1);
        // PDM length 10, then the PadN of length 0.
        assert_eq!(c[4], "10;0", "frame {}: option lengths", i + 1);
    }
}

/// The checks above would pass vacuously if tshark never reported these problems:
/// show that it does, on frames broken on purpose.
#[test]
fn tshark_flags_broken_control_frames() {
    let frames = good_frames(&cases());
    let pdm_len_at = 14 + 40 + 3;

    let mut bad_len = frames[1].clone();
    bad_len[pdm_len_at] = 12; // swallows the PadN: option still inside the header
    let mut bad_checksum = frames[2].clone();
    *bad_checksum.last_mut().unwrap() ^= 0xFF;
    let mut truncated = frames[3].clone();
    truncated.truncate(14 + 40 + 10);

    let dir = TempDir::new("controls");
    let file = write_pcap(&dir, "controls.pcap", &[bad_len, bad_checksum, truncated]);
    let out = tshark(&file, &EXPERT_ARGS);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "tshark output:\n{out}");

    let c = columns(lines[0], '|', 5, 1);
    assert!(
        c[1].contains("PDM: Invalid length"),
        "bad length: {line}",
        line = lines[0]
    );
    let c2 = columns(lines[1], '|', 5, 2);
    assert_eq!(c2[3], CHECKSUM_BAD, "bad checksum: {}", lines[1]);
    let c3 = columns(lines[2], '|', 5, 3);
    assert!(
        c3[1].contains("Malformed") && !c3[2].is_empty(),
        "truncated: {}",
        lines[2]
    );
}
