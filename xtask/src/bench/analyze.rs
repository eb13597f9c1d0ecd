//! `pdm analyze` reading a capture, against tshark extracting the six PDM fields of the
//! same file (`tshark -T fields`), in the same run: packets per second of each, and
//! their ratio. The capture is made here: request/response UDP flows with PDM each way,
//! written as a pcap file of Ethernet frames.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use pdm_common::{
    time::encode_delta_ns,
    wire::{PdmFields, TSHARK_PDM_FIELDS},
};
use testbed::pcap::{self, PcapWriter};

use super::{Cfg, results::Analyze, stats};

/// Flows in the capture, and their packets in turn (request, answer, ...).
const FLOWS: u32 = 1_000;

/// Writes a pcap of `packets` Ethernet/IPv6/PDM/UDP frames, 1 µs apart.
fn write_capture(path: &Path, packets: u64) -> Result<u64> {
    let mut out = PcapWriter::create(path, false)?;
    let server = [0xfd, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let udp_packet = pcap::udp(0, 0, &[0x55u8; 18]);
    for i in 0..packets {
        let flow = (i % u64::from(FLOWS)) as u32;
        let round = (i / u64::from(FLOWS)) as u16;
        let answer = round % 2 == 1;
        let psn = |side: u16| round / 2 + side * 0x4000 + flow as u16;
        let pdm = PdmFields {
            psn_this: psn(u16::from(answer)),
            psn_last_recv: psn(u16::from(!answer)),
            scale_dtlr: encode_delta_ns(50_000).scale,
            dtlr: encode_delta_ns(50_000).delta,
            scale_dtls: encode_delta_ns(200_000).scale,
            dtls: encode_delta_ns(200_000).delta,
        };
        let mut client = [0xfd, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        client[12..].copy_from_slice(&flow.to_be_bytes());
        let (src, dst, sport, dport) = if answer {
            (server, client, 9000u16, 40_000u16)
        } else {
            (client, server, 40_000, 9000)
        };
        let mut upper = udp_packet.clone();
        upper[..2].copy_from_slice(&sport.to_be_bytes());
        upper[2..4].copy_from_slice(&dport.to_be_bytes());
        let dstopts = (pcap::DSTOPTS, pdm.encode_header(0).to_vec());
        let packet = pcap::ipv6_packet(src, dst, &[dstopts], pcap::UDP, &upper);
        out.ipv6((1_700_000_000_000_000 + i) * 1_000, &packet)?;
    }
    out.finish()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Wall seconds `cmd` takes, its output thrown away.
fn timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(cfg: &Cfg) -> Result<Analyze> {
    let packets = if cfg.reps == 1 { 200_000 } else { 2_000_000 };
    let path = std::env::temp_dir().join(format!("pdm-bench-{}-analyze.pcap", std::process::id()));
    let file_bytes = write_capture(&path, packets)?;
    let (mut pdm, mut tshark) = (Vec::new(), Vec::new());
    // In turn, so that the VM's drift reaches both alike.
    for _ in 0..cfg.reps.max(3) {
        pdm.push(timed(Command::new(&cfg.pdm).arg("analyze").arg(&path))?);
        let mut t = Command::new("tshark");
        t.arg("-r").arg(&path).args(["-T", "fields"]);
        for f in TSHARK_PDM_FIELDS {
            t.args(["-e", f]);
        }
        tshark.push(timed(&mut t)?);
    }
    let _ = std::fs::remove_file(&path);
    let median = |v: &[f64]| stats::summary(v).median_or_nan();
    let (pdm_secs, tshark_secs) = (median(&pdm), median(&tshark));
    eprintln!("bench: analyze: {packets} packets: pdm {pdm_secs:.3} s, tshark {tshark_secs:.3} s");
    Ok(Analyze {
        packets,
        flows: FLOWS,
        file_bytes,
        pdm_secs: pdm,
        tshark_secs: tshark,
        pdm_packets_per_sec: packets as f64 / pdm_secs,
        tshark_packets_per_sec: packets as f64 / tshark_secs,
    })
}
