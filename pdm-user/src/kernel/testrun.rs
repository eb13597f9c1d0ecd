//! The programs run on hand-built frames through BPF_PROG_TEST_RUN, nothing attached:
//! the table tests, the randomized frames and the `progbench` example share this.

use std::time::Duration;

use aya::{
    Ebpf,
    programs::{Program, ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use pdm_common::{names, wire::PDM_HEADER_LEN};

/// A program of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    Egress,
    IngressXdp,
    IngressTc,
    /// The observer (`pdm observe`): loaded by a load for [`Role::Observe`](super::attach::Role).
    ObserveXdp,
    ObserveTc,
}

/// TC_ACT_UNSPEC: what the TC programs return for every packet (pass it on).
pub const TC_ACT_UNSPEC: u32 = -1i32 as u32;
pub const XDP_PASS: u32 = 2;

impl Prog {
    /// `pdm run`'s programs.
    pub const ALL: [Prog; 3] = [Prog::Egress, Prog::IngressXdp, Prog::IngressTc];
    /// `pdm observe`'s.
    pub const OBSERVE: [Prog; 2] = [Prog::ObserveXdp, Prog::ObserveTc];

    pub fn name(self) -> &'static str {
        match self {
            Prog::Egress => names::PROG_EGRESS,
            Prog::IngressXdp => names::PROG_INGRESS_XDP,
            Prog::IngressTc => names::PROG_INGRESS_TC,
            Prog::ObserveXdp => names::PROG_OBSERVE_XDP,
            Prog::ObserveTc => names::PROG_OBSERVE_TC,
        }
    }

    /// What the program returns for every packet: all of them are passed on.
    pub fn pass(self) -> u32 {
        match self {
            Prog::IngressXdp | Prog::ObserveXdp => XDP_PASS,
            Prog::Egress | Prog::IngressTc | Prog::ObserveTc => TC_ACT_UNSPEC,
        }
    }
}

/// One test run's outcome.
#[derive(Debug)]
pub struct Run {
    /// The program's return value.
    pub ret: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The kernel's mean run time over the repeats.
    pub duration: Duration,
}

/// `struct __sk_buff` as test-run context (UAPI linux/bpf.h, 192 octets): everything
/// zero but `ifindex` (offset 40), so the kernel gives the skb that device instead of
/// loopback. The kernel rejects non-zero fields it does not take from userspace.
fn sk_buff_ctx(ifindex: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// `struct xdp_md` as test-run context: data = 0, data_end = frame length (the kernel
/// insists), data_meta = 0, ingress_ifindex, rx_queue_index = 0, egress_ifindex = 0.
fn xdp_md_ctx(ifindex: u32, frame_len: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn program<'a, T>(ebpf: &'a Ebpf, name: &str) -> Result<&'a T, ProgramError>
where
    &'a T: TryFrom<&'a Program, Error = ProgramError>,
{
    ebpf.program(name)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()
}

/// Runs `prog` on `frame` `repeat` times (each run on the same input). With `ifindex`,
/// the context names that device (of the calling thread's namespace), so that MTU
/// look-ups see it.
pub fn run(
    ebpf: &Ebpf,
    prog: Prog,
    frame: &[u8],
    ifindex: Option<u32>,
    repeat: u32,
) -> Result<Run, ProgramError> {
    // Room for our 16 octets and then some: a too-small buffer is ENOSPC.
    let mut out = vec![0u8; frame.len() + PDM_HEADER_LEN + 256];
    let skb_ctx;
    let xdp_ctx;
    let ctx_in: Option<&[u8]> = match (prog, ifindex) {
        (_, None) => None,
        (Prog::IngressXdp | Prog::ObserveXdp, Some(i)) => {
            xdp_ctx = xdp_md_ctx(i, frame.len());
            Some(&xdp_ctx)
        }
        (Prog::Egress | Prog::IngressTc | Prog::ObserveTc, Some(i)) => {
            skb_ctx = sk_buff_ctx(i);
            Some(&skb_ctx)
        }
    };
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in,
        repeat,
        ..Default::default()
    };
    let result = match prog {
        Prog::IngressXdp | Prog::ObserveXdp => program::<Xdp>(ebpf, prog.name())?.test_run(opts),
        Prog::Egress | Prog::IngressTc | Prog::ObserveTc => {
            program::<SchedClassifier>(ebpf, prog.name())?.test_run(opts)
        }
    }?;
    out.truncate(result.data_size_out as usize);
    Ok(Run {
        ret: result.return_value,
        frame: out,
        duration: result.duration,
    })
}
