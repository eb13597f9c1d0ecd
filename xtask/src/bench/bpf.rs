//! BPF run-time statistics, map accounting, and two tiny programs made directly with the
//! bpf(2) system call: a "null" TC/XDP program (return at once) as the floor for a hook,
//! and a map entry count.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::{
    hosts::{Pdm, Sysctl},
    results::{Host, HostProgs, MapInfo, Prog, ProgRun},
};
use crate::cmd;

/// `kernel.bpf_stats_enabled=1` while alive; the old value is put back on drop. Also
/// holds a BPF_ENABLE_STATS file descriptor, so that the statistics stay on for the
/// whole window even if something else on the machine turns the sysctl off meanwhile
/// (the kernel counts both), and go off with the process whatever happens.
pub struct StatsOn {
    _sysctl: Sysctl,
    fd: i32,
}

impl StatsOn {
    pub fn new() -> Result<Self> {
        let sysctl = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
        // attr.enable_stats.type = BPF_STATS_RUN_TIME (0).
        let fd = bpf(BPF_ENABLE_STATS, &mut [0u64; 16]).unwrap_or(-1);
        Ok(Self {
            _sysctl: sysctl,
            fd,
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: our fd.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// run_time_ns and run_cnt of one program.
#[derive(Clone, Copy, Default, Debug)]
pub struct RunStats {
    pub ns: u64,
    pub cnt: u64,
}

/// What this reads of `bpftool prog show`: the run-time fields are missing until
/// statistics were first enabled.
#[derive(Deserialize)]
pub struct ProgInfo {
    pub name: String,
    #[serde(default)]
    pub run_time_ns: u64,
    #[serde(default)]
    pub run_cnt: u64,
}

pub fn prog_info(id: u32) -> Result<ProgInfo> {
    let out =
        cmd::output(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))?;
    serde_json::from_str(&out).with_context(|| format!("bpftool prog show id {id}: {out}"))
}

pub fn map_info(id: u32) -> Result<MapInfo> {
    let out =
        cmd::output(Command::new("bpftool").args(["-j", "map", "show", "id", &id.to_string()]))?;
    serde_json::from_str(&out).with_context(|| format!("bpftool map show id {id}: {out}"))
}

/// Program name → (id, stats).
type Snapshot = BTreeMap<String, (u32, RunStats)>;

/// Program name → (id, stats) for the given ids.
pub fn snapshot(ids: &[u32]) -> Result<Snapshot> {
    let mut m = BTreeMap::new();
    for &id in ids {
        let p = prog_info(id)?;
        let s = RunStats {
            ns: p.run_time_ns,
            cnt: p.run_cnt,
        };
        m.insert(p.name, (id, s));
    }
    Ok(m)
}

/// Measures the programs of several pdm instances (and optional extra program ids)
/// around `f`: per program, runs and ns per run over that window.
pub struct Window {
    before: Vec<(Host, Snapshot)>,
}

/// The programs of one host to measure, by id.
pub type Target = (Host, Vec<u32>);

impl Window {
    pub fn start(targets: &[Target]) -> Result<Self> {
        let mut before = Vec::new();
        for (host, ids) in targets {
            before.push((*host, snapshot(ids)?));
        }
        Ok(Self { before })
    }

    /// Per host and program, the runs and run time over the window; programs that did
    /// not run left out.
    pub fn end(self) -> Result<HostProgs<ProgRun>> {
        let mut out = HostProgs::default();
        for (host, before) in self.before {
            let ids: Vec<u32> = before.values().map(|(id, _)| *id).collect();
            let after = snapshot(&ids)?;
            let progs = out.0.entry(host).or_default();
            for (name, (_, b)) in before {
                let Some((_, a)) = after.get(&name) else {
                    continue;
                };
                let cnt = a.cnt.saturating_sub(b.cnt);
                if cnt == 0 {
                    continue;
                }
                let ns = a.ns.saturating_sub(b.ns);
                let run = ProgRun {
                    runs: cnt,
                    run_time_ns: ns,
                    ns_per_run: ns as f64 / cnt as f64,
                };
                progs.insert(name, run);
            }
        }
        Ok(out)
    }
}

/// The pdm programs of a running pdm, on `host`.
pub fn pdm_target(host: Host, pdm: &Pdm) -> Target {
    (host, pdm.ids("prog_id"))
}

/// The map named `name` held by a running pdm: its `bpftool map show` object.
pub fn pdm_map(pdm: &Pdm, name: &str) -> Result<MapInfo> {
    for id in pdm.ids("map_id") {
        let m = map_info(id)?;
        if m.name == name {
            return Ok(m);
        }
    }
    bail!("pdm in {} holds no map named {name}", pdm.ns)
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i32> {
    // SAFETY: attr is a zero-padded bpf_attr of 128 bytes, as the kernel expects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr().cast::<libc::c_void>(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

fn set_u32(attr: &mut [u64; 16], offset: usize, v: u32) {
    // SAFETY: offset is within the 128 bytes and 4-aligned.
    unsafe {
        attr.as_mut_ptr()
            .cast::<u8>()
            .add(offset)
            .cast::<u32>()
            .write(v)
    };
}

/// A BPF instruction: opcode, registers, offset, immediate.
const fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    op as u64
        | ((dst | src << 4) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// The least a TC egress program can do to put 16 octets behind the IPv6 header: for a
/// plain UDP packet (Next Header 17 at frame offset 20), `bpf_skb_adjust_room(skb, 16,
/// BPF_ADJ_ROOM_NET, 0)`, nothing else (payload length and Next Header are left as they
/// were, so the receiver drops the packet: for a one-way UDP flood only). It shows what
/// opening the room costs on its own, reallocation included.
const ADJUST_ROOM_ONLY: [u64; 15] = [
    insn(0xbf, 6, 1, 0, 0),  // r6 = r1 (ctx)
    insn(0x61, 2, 1, 76, 0), // r2 = skb->data
    insn(0x61, 3, 1, 80, 0), // r3 = skb->data_end
    insn(0xbf, 4, 2, 0, 0),  // r4 = r2
    insn(0x07, 4, 0, 0, 21), // r4 += 21
    insn(0x2d, 4, 3, 7, 0),  // if r4 > r3 goto exit
    insn(0x71, 5, 2, 20, 0), // r5 = Next Header
    insn(0x55, 5, 0, 5, 17), // if r5 != UDP goto exit
    insn(0xbf, 1, 6, 0, 0),  // r1 = ctx
    insn(0xb7, 2, 0, 0, 16), // r2 = 16
    insn(0xb7, 3, 0, 0, 0),  // r3 = BPF_ADJ_ROOM_NET
    insn(0xb7, 4, 0, 0, 0),  // r4 = flags 0
    insn(0x85, 0, 0, 0, 50), // call bpf_skb_adjust_room
    insn(0xb7, 0, 0, 0, -1), // exit: r0 = TC_ACT_UNSPEC
    insn(0x95, 0, 0, 0, 0),
];

/// The least an XDP program can do to time a packet: `bpf_ktime_get_ns()`, the clock
/// pdm reads once per packet, then XDP_PASS. It shows what that read costs here.
const CLOCK_ONLY: [u64; 3] = [
    insn(0x85, 0, 0, 0, 5), // call bpf_ktime_get_ns
    insn(0xb7, 0, 0, 0, 2), // r0 = XDP_PASS
    insn(0x95, 0, 0, 0, 0),
];

/// Loads a program that returns `ret` at once and attaches it with a bpf_link to
/// `ifindex` (in the calling thread's namespace) at `hook` ("tc-egress", "tc-ingress",
/// "xdp"), or [`ADJUST_ROOM_ONLY`] at "tc-egress-adjust", or [`CLOCK_ONLY`] at
/// "xdp-clock". Returns the link's fd: the
/// program stays attached while it is open.
pub fn attach_null(hook: &str, ifindex: u32) -> Result<i32> {
    // The program's name is the one progcost's figures are keyed by.
    let (prog_type, attach_type, ret, prog) = match hook {
        "tc-egress" => (
            BPF_PROG_TYPE_SCHED_CLS,
            BPF_TCX_EGRESS,
            -1,
            Prog::NullTcEgress,
        ),
        "tc-ingress" => (
            BPF_PROG_TYPE_SCHED_CLS,
            BPF_TCX_INGRESS,
            -1,
            Prog::NullTcIngress,
        ),
        "tc-egress-adjust" => (
            BPF_PROG_TYPE_SCHED_CLS,
            BPF_TCX_EGRESS,
            -1,
            Prog::RefAdjustRoom,
        ),
        "xdp" => (BPF_PROG_TYPE_XDP, BPF_XDP, 2, Prog::NullXdp),
        "xdp-clock" => (BPF_PROG_TYPE_XDP, BPF_XDP, 2, Prog::RefClockXdp),
        _ => bail!("unknown hook {hook}"),
    };
    let name = prog.name().as_bytes();
    // r0 = ret (BPF_ALU64 | BPF_MOV | BPF_K = 0xb7); exit (0x95).
    let null: [u64; 2] = [0xb7 | ((ret as u32 as u64) << 32), 0x95];
    let insns: &[u64] = match hook {
        "tc-egress-adjust" => &ADJUST_ROOM_ONLY,
        "xdp-clock" => &CLOCK_ONLY,
        _ => &null,
    };
    let license = b"GPL\0";
    let mut attr = [0u64; 16];
    set_u32(&mut attr, 0, prog_type);
    set_u32(&mut attr, 4, insns.len() as u32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // prog_name at offset 48 (16 bytes, NUL-terminated).
    let mut pname = [0u8; 16];
    pname[..name.len()].copy_from_slice(name);
    attr[6] = u64::from_le_bytes(pname[..8].try_into().expect("8 bytes"));
    attr[7] = u64::from_le_bytes(pname[8..].try_into().expect("8 bytes"));
    if prog_type == BPF_PROG_TYPE_XDP {
        set_u32(&mut attr, 68, BPF_XDP);
    }
    let prog = bpf(BPF_PROG_LOAD, &mut attr).context("loading the null program")?;
    let mut attr = [0u64; 16];
    set_u32(&mut attr, 0, prog as u32);
    set_u32(&mut attr, 4, ifindex);
    set_u32(&mut attr, 8, attach_type);
    let link = bpf(BPF_LINK_CREATE, &mut attr).context("attaching the null program")?;
    Ok(link)
}

/// Live flows in pdm's flow table, map `id` of `slots` slots: the array always has every
/// slot, so this maps it (it is mmapable) and counts the slots marked valid.
pub fn count_flows(id: u32, slots: usize) -> Result<u64> {
    use pdm_common::flow::{FLOW_VALID, FlowSlot, FlowState};
    let mut attr = [0u64; 16];
    set_u32(&mut attr, 0, id);
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).context("opening the map")?;
    let len = slots * size_of::<FlowSlot>();
    // SAFETY: mapping the whole mmapable array read-only; unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    // SAFETY: our fd; the mapping stays valid without it.
    unsafe { libc::close(fd) };
    if ptr == libc::MAP_FAILED {
        bail!("mapping map {id}: {}", std::io::Error::last_os_error());
    }
    let flags_at = std::mem::offset_of!(FlowSlot, state) + std::mem::offset_of!(FlowState, flags);
    let n = (0..slots)
        .filter(|i| {
            // SAFETY: inside the mapping; a 4-aligned u32 in each 128-octet slot.
            let flags = unsafe {
                ptr.cast::<u8>()
                    .add(i * size_of::<FlowSlot>() + flags_at)
                    .cast::<u32>()
                    .read_volatile()
            };
            flags & FLOW_VALID != 0
        })
        .count() as u64;
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(ptr, len) };
    Ok(n)
}
