//! Run time of the ingress programs per packet through BPF_PROG_TEST_RUN with a large
//! repeat count: no hook, no bpf_stats and no other traffic, so it isolates the
//! programs' own code. `cargo xtask bench` runs it (`progcost_testrun` in its results);
//! by hand: `cargo run --release -p pdm-user --example progbench [REPEAT]`.
//!
//! Egress cannot be timed with repeats: a repeat runs on the packet the previous run
//! left, which already carries PDM. It is timed one run per call instead
//! (`tc_egress_udp_single`: the median of many calls, each including the kernel's two
//! clock reads around the run), which compares versions but is not a per-packet cost.
//!
//! Prints one JSON object: {"<case>": {"ns": [per batch...], "median_ns": x}, ...}.

use pdm_common::wire::PdmFields;
use pdm_user::kernel::{
    attach::{self, LoadOptions},
    testrun::{self, Prog},
};

const A: [u8; 16] = [0xfd, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B: [u8; 16] = [0xfd, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const BATCHES: usize = 7;

/// Ethernet + IPv6 (B -> A, or A -> B with `outgoing`) + optional PDM + UDP with an
/// 18-octet payload, as the small-UDP benchmark sends.
fn udp_frame(pdm: bool, outgoing: bool) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&40000u16.to_be_bytes());
    l4.extend_from_slice(&9000u16.to_be_bytes());
    l4.extend_from_slice(&(8u16 + 18).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(&[0x55; 18]);
    let mut ext = Vec::new();
    let next = if pdm {
        let f = PdmFields {
            psn_this: 1234,
            ..PdmFields::default()
        };
        ext.extend_from_slice(&f.encode_header(17));
        60
    } else {
        17
    };
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[next, 64]);
    let (src, dst) = if outgoing { (A, B) } else { (B, A) };
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&ext);
    frame.extend_from_slice(&l4);
    frame
}

fn time(ebpf: &aya::Ebpf, which: Prog, frame: &[u8], repeat: u32) -> f64 {
    testrun::run(ebpf, which, frame, None, repeat)
        .expect("BPF_PROG_TEST_RUN (needs root)")
        .duration
        .as_nanos() as f64
}

fn main() {
    let repeat = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("REPEAT is a number"))
        .unwrap_or(1_000_000u32);
    let ebpf = attach::load(&LoadOptions::default()).expect("load the eBPF programs (needs root)");
    let mut out = serde_json::Map::new();
    for (case, which, pdm) in [
        ("xdp_udp_pdm", Prog::IngressXdp, true),
        ("xdp_udp_plain", Prog::IngressXdp, false),
        ("tc_udp_pdm", Prog::IngressTc, true),
        ("tc_udp_plain", Prog::IngressTc, false),
    ] {
        let frame = udp_frame(pdm, false);
        let mut ns: Vec<f64> = (0..BATCHES)
            .map(|_| time(&ebpf, which, &frame, repeat))
            .collect();
        let batches = ns.clone();
        ns.sort_by(f64::total_cmp);
        out.insert(
            case.into(),
            serde_json::json!({ "ns": batches, "median_ns": ns[BATCHES / 2], "repeat": repeat }),
        );
    }
    // Egress: one run per call, on a fresh plain frame each time.
    let frame = udp_frame(false, true);
    let calls = (repeat / 10).max(1000);
    let mut ns: Vec<f64> = (0..calls)
        .map(|_| time(&ebpf, Prog::Egress, &frame, 1))
        .collect();
    ns.sort_by(f64::total_cmp);
    out.insert(
        "tc_egress_udp_single".into(),
        serde_json::json!({ "median_ns": ns[ns.len() / 2], "calls": calls }),
    );
    println!("{}", serde_json::Value::Object(out));
}
