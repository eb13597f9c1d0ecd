//! Figures the report derives from the measurements, quoted by tables and prose alike.

use pdm_common::counters::Counter;

use crate::bench::{
    results::{
        Host, HostProgs, Ingress, MergedProg, NullHook, Prog, Progcost, Recorded, ScalePoint,
        TcpWindows, UdpWindows,
    },
    stats,
};

/// `x`, unless it is NaN (how a missing figure reads back) or infinite.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// bpf_stats' ns per run of `prog` over small-UDP windows.
pub fn udp_ns(w: &UdpWindows, host: Host, prog: Prog) -> Option<f64> {
    w.progs.get(host, prog).and_then(|p| finite(p.ns_per_run))
}

/// The per-packet targets of the issue, in ns.
pub const EGRESS_TARGET_NS: f64 = 150.0;
pub const INGRESS_TARGET_NS: f64 = 80.0;

/// bpf_stats' own cost per run, per hook: the null programs' run time. bpf_stats times
/// each run with two clock reads of its own; a program that returns at once, attached
/// the same way, measures that, and a program's own run time is what bpf_stats gives
/// less that floor.
pub struct Floors {
    pub egress: Option<f64>,
    pub xdp: Option<f64>,
    pub tc: Option<f64>,
}

impl Floors {
    pub fn of(p: Option<&Progcost>) -> Self {
        let floor = |hook, host, prog| p.and_then(|p| udp_ns(&p.null.get(hook).udp, host, prog));
        Floors {
            egress: floor(NullHook::Xdp, Host::Client, Prog::NullTcEgress),
            xdp: floor(NullHook::Xdp, Host::Server, Prog::NullXdp),
            tc: floor(NullHook::TcIngress, Host::Server, Prog::NullTcIngress),
        }
    }

    /// The floor of the hook pdm's `prog` runs on.
    pub fn of_prog(&self, prog: Prog) -> Option<f64> {
        match prog {
            Prog::PdmEgress => self.egress,
            Prog::PdmIngressXdp => self.xdp,
            _ => self.tc,
        }
    }
}

/// Median of `prog`'s ns per run on small UDP over pdm's setups with these ingresses.
pub fn udp_cost(p: Option<&Progcost>, host: Host, prog: Prog, setups: &[Ingress]) -> Option<f64> {
    let ns: Vec<f64> = setups
        .iter()
        .filter_map(|&i| udp_ns(&p?.pdm(i).windows.udp, host, prog))
        .collect();
    finite(stats::median(&ns))
}

/// bpf_stats' ns per run of the reference program that only opens 16 octets (small
/// UDP), if this run measured it.
pub fn adjust_room_only(p: Option<&Progcost>) -> Option<f64> {
    let w = &p?.adjust_room_only.as_ref()?.udp;
    udp_ns(w, Host::Client, Prog::RefAdjustRoom)
}

/// What one `bpf_ktime_get_ns` costs here: the reference XDP program that only reads the
/// clock (small UDP) less the XDP floor, if this run measured it.
pub fn clock_cost(p: Option<&Progcost>, floors: &Floors) -> Option<f64> {
    let w = &p?.clock_only.as_ref()?.udp;
    let clock = udp_ns(w, Host::Server, Prog::RefClockXdp)?;
    Some(clock - floors.xdp?)
}

/// Share of one core the programs of a (merged) window took: Σ runs × ns per run over
/// the windows' time.
fn core_percent(progs: &HostProgs<MergedProg>, secs: impl Iterator<Item = f64>) -> f64 {
    let ns: f64 = progs
        .all()
        .map(|p| p.runs as f64 * finite(p.ns_per_run).unwrap_or(0.0))
        .sum();
    let secs: f64 = secs.filter(|s| s.is_finite()).sum();
    100.0 * ns / 1e9 / secs
}

pub fn udp_core_percent(w: &UdpWindows) -> f64 {
    core_percent(&w.progs, w.traffic.windows.iter().map(|t| t.secs))
}

pub fn tcp_core_percent(w: &TcpWindows) -> f64 {
    core_percent(&w.progs, w.traffic.windows.iter().map(|t| t.iperf.secs))
}

/// Failed flow-map operations on both hosts. A flow evicted to make room for another is
/// not one (it is counted, and comes back with its next packet).
pub fn map_errors(p: &ScalePoint) -> u64 {
    let full = [Counter::EgressFlowMapFull, Counter::IngressFlowMapFull];
    Host::ALL
        .iter()
        .flat_map(|&h| full.map(|c| p.counters(h).get(c).unwrap_or(0)))
        .sum()
}

/// Share (percent of the program's samples) of `callee` in a profile.
pub fn share_in<T>(prof: Option<&Recorded<T>>, prog: Prog, callee: &str) -> Option<f64> {
    prof?.program(prog)?.share_of(callee)
}
