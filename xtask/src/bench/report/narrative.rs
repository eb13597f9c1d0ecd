//! The prose of BENCHMARKS.md: the run and its machine, the targets, where the limit is,
//! and how it was run, quoting this run's figures.

use std::fmt::Write as _;

use pdm_common::counters::Counter;

use super::{
    figures::{
        EGRESS_TARGET_NS, Floors, INGRESS_TARGET_NS, adjust_room_only, clock_cost, finite,
        map_errors, share_in, tcp_core_percent, udp_cost,
    },
    format::{count, mark, num},
};
use crate::bench::{
    profile::{EXPAND_HEAD, OWN_CODE},
    results::{BenchResults, Host, Ingress, Measure, Prog, TcpTest as T, ThroughputMode as M},
};

fn cmdline(r: &BenchResults) -> &'static str {
    if r.quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    }
}

/// The title, what kind of run this was, the machine, and its drift.
pub fn intro(s: &mut String, r: &BenchResults) {
    let _ = writeln!(s, "# pdm benchmarks\n");
    if r.quick {
        let _ = writeln!(
            s,
            "> **Quick run** (`--quick`: one repetition, 1 s transfers): checks the harness; the figures are indicative only. The full run (`cargo xtask bench`: 3 repetitions, 10 s transfers) replaces this file.\n"
        );
    }
    if let Some(only) = &r.only {
        let parts: Vec<&str> = only.iter().map(|b| b.name()).collect();
        let _ = writeln!(
            s,
            "> **Partial run** (`--only {}`): only these parts were measured in this run (machine line below); the other tables are kept from the previous run's bench-results.json.\n",
            parts.join(",")
        );
    }
    let _ = writeln!(
        s,
        "Written by `{}` on test hosts it creates: two network namespaces (`pdm-bench-client`, `pdm-bench-server`) joined by a veth pair, addresses fd0b::1 and fd0b::2, MTU 1500. Figures are measured, never asserted by tests. Raw data: `bench-results.json`.\n",
        cmdline(r)
    );
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} ({} cores), kernel {}; load average at start {}; {}; {}; {}. Wall time {} s.\n",
        m.cpu,
        m.cores,
        m.kernel,
        m.loadavg_at_start,
        m.iperf3,
        m.bpftool,
        m.date,
        num(r.wall_secs.total, 0),
    );
    let _ = writeln!(s, "`pdm check`: {}\n", r.check);
    let floors = Floors::of(r.progcost());
    let _ = writeln!(
        s,
        "This machine is a VM whose speed drifts by up to about 1.5× over a quarter of an hour (while this suite was developed, a TC egress program that returns at once measured anywhere from 31 to 48 ns per run under bpf_stats, and pdm's programs moved with it). Compare figures within one run: ratios and the \"less its own\" figures hold across such drifts better than absolute nanoseconds. In this run that program took {} ns per run.\n",
        floors.egress.map_or("?".into(), |f| format!("{f:.1}")),
    );
}

/// One small-UDP target row: a program's run time against its target.
struct UdpTarget {
    side: &'static str,
    hook: &'static str,
    host: Host,
    prog: Prog,
    /// pdm's setups whose figures count.
    setups: &'static [Ingress],
    floor: Option<f64>,
    target: f64,
    /// The ingress whose BPF_PROG_TEST_RUN figure is quoted.
    testrun: Option<Ingress>,
}

pub fn targets(s: &mut String, r: &BenchResults) {
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "For context, published figures: an eBPF PDM (draft-elkins-ebpf-pdm-ebpf, 2024) added 1.28 µs per packet on egress and cost 4.1 % of TCP throughput; an out-of-tree kernel PDM took 0.707 µs per insert and 1.5 % of throughput.\n"
    );
    let _ = writeln!(s, "| target | measured | met |\n|---|---|---|");
    let p = r.progcost();
    let floors = Floors::of(p);
    let rows = [
        UdpTarget {
            side: "egress",
            hook: "",
            host: Host::Client,
            prog: Prog::PdmEgress,
            setups: &[Ingress::Xdp, Ingress::Tc],
            floor: floors.egress,
            target: EGRESS_TARGET_NS,
            testrun: None,
        },
        UdpTarget {
            side: "ingress",
            hook: ", XDP",
            host: Host::Server,
            prog: Prog::PdmIngressXdp,
            setups: &[Ingress::Xdp],
            floor: floors.xdp,
            target: INGRESS_TARGET_NS,
            testrun: Some(Ingress::Xdp),
        },
        UdpTarget {
            side: "ingress",
            hook: ", TC",
            host: Host::Server,
            prog: Prog::PdmIngressTc,
            setups: &[Ingress::Tc],
            floor: floors.tc,
            target: INGRESS_TARGET_NS,
            testrun: Some(Ingress::Tc),
        },
    ];
    let adjust_only = adjust_room_only(p);
    let clock = clock_cost(p, &floors);
    let clock_note = |own: f64| {
        clock.map_or(String::new(), |c| {
            format!(
                "; the clock read alone takes {c:.1} ns (an XDP program that only reads it, less the XDP floor), so {:.1} ns is pdm's own besides the clock",
                own - c
            )
        })
    };
    for row in rows {
        let UdpTarget {
            side,
            hook,
            target,
            floor,
            ..
        } = row;
        let stats = udp_cost(p, row.host, row.prog, row.setups);
        let own = stats.zip(floor).map(|(v, f)| v - f);
        let mut testrun = row
            .testrun
            .and_then(|hook| Some(r.testrun()?.ingress(hook, true).median_ns))
            .map_or(String::new(), |v| {
                format!("; BPF_PROG_TEST_RUN, no bpf_stats: {v:.0} ns")
            });
        if row.prog == Prog::PdmEgress
            && let (Some(e), Some(a)) = (stats, adjust_only)
        {
            testrun = format!(
                "; a program that only calls `bpf_skb_adjust_room` takes {a:.1} ns here, so pdm's own part is {:.1} ns{}",
                e - a,
                clock_note(e - a)
            );
        } else if let Some(own) = own {
            testrun += &clock_note(own);
        }
        let _ = writeln!(
            s,
            "| {side} program ≤ {target:.0} ns per packet (small UDP){hook} | **{} ns**: bpf_stats {} ns less its own {} ns (null program){testrun} | {} |",
            num(own, 1),
            num(stats, 1),
            floor.map_or("–".into(), |f| format!("{f:.1}")),
            mark(own.map(|x| x <= target))
        );
    }
    // TCP bulk: one run per GSO packet on egress and per GRO packet on TC ingress, so
    // the cost per packet on the wire is the window's run time over its segments.
    for (side, host, prog, target) in [
        ("egress", Host::Client, Prog::PdmEgress, EGRESS_TARGET_NS),
        (
            "ingress",
            Host::Server,
            Prog::PdmIngressTc,
            INGRESS_TARGET_NS,
        ),
    ] {
        let Some(w) = p.map(|p| &p.tc.windows.tcp) else {
            continue;
        };
        let (Some(prog), Some(segs)) = (w.progs.get(host, prog), w.traffic.segments_sent) else {
            continue;
        };
        let (ns, runs) = (prog.run_time_ns, prog.runs);
        let per_seg = ns as f64 / segs.max(1) as f64;
        let _ = writeln!(
            s,
            "| {side} program ≤ {target:.0} ns per packet (TCP bulk, default: TC ingress; per wire segment) | **{per_seg:.1} ns**: {runs} runs ({:.1} ns each, bpf_stats) for {segs} TCP segments sent (`Tcp: OutSegs`), {:.1} segments per run | {} |",
            ns as f64 / runs.max(1) as f64,
            segs as f64 / runs.max(1) as f64,
            mark(Some(per_seg <= target))
        );
    }
    let ratios = r
        .throughput()
        .map(|t| t.ratios.as_slice())
        .unwrap_or_default();
    for q in ratios.iter().filter(|q| q.target.is_some()) {
        let _ = writeln!(
            s,
            "| TCP throughput ≥ 95 %: {} | {} % | {} |",
            q.label,
            num(q.ratio * 100.0, 1),
            mark(q.met)
        );
    }
    if let Some(p) = r.scaling().and_then(|sc| sc.largest()) {
        let errs = map_errors(p);
        // Evictions are not errors (see map_errors), so residency is shown beside, not
        // judged.
        let client = &p.maps.client;
        let flows = p.flows as f64;
        let _ = writeln!(
            s,
            "| {} flows with no map errors | {} errors; {} flows resident in the client's table ({:.1} %) at {:.1} % load, the rest evicting each other, each eviction counted | {} |",
            p.flows,
            errs,
            client.entries,
            100.0 * client.entries as f64 / flows,
            100.0 * flows / client.map.max_entries as f64,
            mark(Some(errs == 0))
        );
        for &host in Host::ALL {
            let m = p.maps.get(host);
            let live = finite(m.bytes_per_live_flow);
            // The table's fixed part (a page) is not per flow: judge the slot size.
            let per_slot_marginal =
                ((m.map.bytes_memlock as f64 - 4096.0) / m.map.max_entries as f64).floor();
            let _ = writeln!(
                s,
                "| ≤ 128 bytes of map memory per flow ({}, {} flows) | {per_slot_marginal:.0} B per slot (+ 4 KiB per table); {} B per live flow, {} of the flows resident | per slot {}, per live flow {} |",
                host.name(),
                p.flows,
                live.map_or("?".into(), |v| format!("{v:.1}")),
                m.entries,
                mark(Some(per_slot_marginal <= 128.0)),
                mark(live.map(|x| x <= 128.0)),
            );
        }
    }
    let _ = writeln!(s);
}

fn at(mode: M, test: T) -> Measure {
    Measure { mode, test }
}

/// The "where the limit is" paragraph, from this run's figures.
pub fn limits(s: &mut String, r: &BenchResults) {
    let _ = writeln!(s, "## Where the limit is\n");
    let p = r.progcost();
    let floors = Floors::of(p);
    let nan = |f: Option<f64>| f.unwrap_or(f64::NAN);
    let egress = nan(udp_cost(
        p,
        Host::Client,
        Prog::PdmEgress,
        &[Ingress::Xdp, Ingress::Tc],
    ));
    let xdp = nan(udp_cost(
        p,
        Host::Server,
        Prog::PdmIngressXdp,
        &[Ingress::Xdp],
    ));
    let tc = nan(udp_cost(
        p,
        Host::Server,
        Prog::PdmIngressTc,
        &[Ingress::Tc],
    ));
    let prof = p.and_then(|p| p.tc.profile.udp.recorded());
    let pct = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
    let egress_share = |callee| share_in(prof, Prog::PdmEgress, callee);
    let adj = egress_share("bpf_skb_adjust_room");
    let expand = egress_share(EXPAND_HEAD);
    let clock_e = egress_share("ktime_get_mono_fast_ns");
    let own_e = egress_share(OWN_CODE);
    let tcp_prof = p.and_then(|p| p.tc.profile.tcp.recorded());
    let adj_tcp = share_in(tcp_prof, Prog::PdmEgress, "bpf_skb_adjust_room");
    let egress_own = egress - nan(floors.egress);
    let _ = writeln!(
        s,
        "- **Egress, per packet**: {egress:.0} ns by bpf_stats, {egress_own:.0} ns without bpf_stats' own {:.0} ns (a TC egress program that returns at once). perf: {} % of pdm_egress's samples are inside `bpf_skb_adjust_room`, and {} % of all its samples in `pskb_expand_head` under it (about {:.0} ns a packet): the stack builds small UDP packets with room for the link header only, so opening 16 octets reallocates and copies every packet's head. The kernel's own IPV6_DSTOPTS insertion reserves the room when it builds the packet and pays none of this; on TCP, whose packets are built with room to spare, `bpf_skb_adjust_room` is {} % of the egress samples. The clock (`bpf_ktime_get_ns`; `read_tsc` is slow in this VM) is {} %, pdm's own code (parse, flow lookup, PSN, header) {} %. {}Avoiding the reallocation needs the room reserved where the packet is built (the socket), which a TC program cannot do.",
        nan(floors.egress),
        pct(adj),
        pct(expand),
        nan(expand) / 100.0 * egress_own,
        pct(adj_tcp),
        pct(clock_e),
        pct(own_e),
        adjust_room_only(p).map_or(String::new(), |a| format!(
            "A TC program that does nothing but call `bpf_skb_adjust_room` on the same packets takes {a:.0} ns ({:.0} ns without bpf_stats' own): that much of egress is the cost of opening the room at this hook, whatever the program; pdm's own part is the remaining {:.0} ns. ",
            a - nan(floors.egress),
            egress - a
        )),
    );
    let xprof = p.and_then(|p| p.xdp.profile.udp.recorded());
    let testrun = |hook, pdm| num(r.testrun().map(|t| t.ingress(hook, pdm).median_ns), 0);
    let _ = writeln!(
        s,
        "- **Ingress, per packet**: XDP {xdp:.0} ns by bpf_stats ({:.0} ns without its own {:.0} ns), TC {tc:.0} ns ({:.0} ns without {:.0} ns). BPF_PROG_TEST_RUN, the same small UDP frame 10^6 times in one call (no hook, no bpf_stats): XDP {} ns with PDM and {} ns without, TC {} and {} ns. perf: the clock is {} % of pdm_ingress_xdp's samples, its own code {} %. Per packet it parses the headers (bounds-checked; the addresses as two 8-octet loads), hashes the flow key once (NH, keyed), finds the flow in one of two 4-way sets, and counts packets with PDM packets as one 64-bit add and octets as another (plain adds: a flow's received packets come in one CPU at a time; the locked adds were a quarter of its time); a packet with PDM adds the clock, the PSN sequence (loss, reordering, duplicates) and the DTLS to echo. {}",
        xdp - nan(floors.xdp),
        nan(floors.xdp),
        tc - nan(floors.tc),
        nan(floors.tc),
        testrun(Ingress::Xdp, true),
        testrun(Ingress::Xdp, false),
        testrun(Ingress::Tc, true),
        testrun(Ingress::Tc, false),
        pct(share_in(xprof, Prog::PdmIngressXdp, "ktime_get_mono_fast_ns")),
        pct(share_in(xprof, Prog::PdmIngressXdp, OWN_CODE)),
        clock_cost(p, &floors).map_or(String::new(), |c| format!(
            "Measured apart, one clock read costs {c:.0} ns here (an XDP program that only calls `bpf_ktime_get_ns`, less the XDP floor; perf gives the clock a larger share because its timer samples land where interrupts come back on). Besides the clock, pdm's own part is {:.0} ns with XDP and {:.0} ns with TC.",
            xdp - nan(floors.xdp) - c,
            tc - nan(floors.tc) - c,
        )),
    );
    let throughput = r.throughput();
    let ratio = |num: Measure, den: Measure| {
        throughput
            .and_then(|t| t.ratio(num, den))
            .and_then(|q| finite(q.ratio))
            .map_or("–".into(), |v| format!("{:.0} %", v * 100.0))
    };
    let _ = writeln!(
        s,
        "- **TCP with XDP ingress on veth**: `pdm --ingress xdp` reaches {} of the no-PDM throughput (1 stream), and a program that only returns XDP_PASS reaches {}: attaching any native XDP program to a veth makes the peer hand over every segment separately instead of one GSO packet (see the shared design notes), so the limit is the XDP attachment on veth, not PDM. On a physical NIC this cost does not exist. pdm's default, `--ingress auto`, therefore takes TC ingress on a veth (and where a driver has no native XDP).",
        ratio(at(M::PdmXdp, T::Iperf1), at(M::Baseline, T::Iperf1)),
        ratio(at(M::XdpPass, T::Iperf1), at(M::Baseline, T::Iperf1)),
    );
    let summary = |mode, test| throughput.and_then(|t| t.summary(mode, test));
    let _ = writeln!(
        s,
        "- **TCP with TC ingress (the default on veth)**: {} of no PDM with iperf3 (1 stream), {} of the kernel's IPV6_DSTOPTS insertion with the same sender ({} with 8 streams). In the TCP bulk window the four pdm programs (egress and ingress on both hosts) took {} % of one core at {} Gb/s; both hosts share the machine's {} cores with the senders, the receivers and both pdm loaders, and the machine was {} % busy (median, iperf3 1 stream with pdm; the throughput table's machine busy column): what CPU is left idle bounds how much pdm's programs and loaders can take without taking it from the transfer. The per-GSO-packet cost is what to reduce (see the perf split above).",
        ratio(at(M::PdmTc, T::Iperf1), at(M::Baseline, T::Iperf1)),
        ratio(at(M::PdmTc, T::Pair1), at(M::Baseline, T::Dstopts1)),
        ratio(at(M::PdmTc, T::Pair8), at(M::Baseline, T::Dstopts8)),
        num(p.map(|p| tcp_core_percent(&p.tc.windows.tcp)), 1),
        num(p.map(|p| p.tc.windows.tcp.traffic.gbps), 1),
        r.machine.cores,
        num(
            summary(M::PdmTc, T::Iperf1).and_then(|v| v.machine_busy_percent.median),
            0
        ),
    );
    let pp = summary(M::PdmPerPacket, T::Iperf1);
    let _ = writeln!(
        s,
        "- **`--per-packet`**: {} of the same-offload baseline with iperf3 (1 stream; {} with 8 streams), with `--ingress xdp`; with TC ingress (the default on veth) {} (8 streams: {}). A program that only returns XDP_PASS, with the same offloads off, gets {} (8 streams: {}): on veth, XDP itself is the limit. Without segmentation offload every wire packet runs both programs on both hosts (about {} ns egress + {} ns ingress per packet, small-UDP figures), and the loaders, handling the RTT samples (at most one per flow per `--sample-interval`, 1 ms), took {} CPU s per GB (median) against {} for the whole transfer.",
        ratio(
            at(M::PdmPerPacket, T::Iperf1),
            at(M::BaselineOffloadsOff, T::Iperf1)
        ),
        ratio(
            at(M::PdmPerPacket, T::Iperf8),
            at(M::BaselineOffloadsOff, T::Iperf8)
        ),
        ratio(
            at(M::PdmPerPacketTc, T::Iperf1),
            at(M::BaselineOffloadsOff, T::Iperf1)
        ),
        ratio(
            at(M::PdmPerPacketTc, T::Iperf8),
            at(M::BaselineOffloadsOff, T::Iperf8)
        ),
        ratio(
            at(M::XdpPassOffloadsOff, T::Iperf1),
            at(M::BaselineOffloadsOff, T::Iperf1)
        ),
        ratio(
            at(M::XdpPassOffloadsOff, T::Iperf8),
            at(M::BaselineOffloadsOff, T::Iperf8)
        ),
        num(egress, 0),
        num(xdp, 0),
        num(pp.and_then(|v| v.pdm_cpu_s_per_gb.median), 3),
        num(pp.and_then(|v| v.cpu_s_per_gb.median), 3),
    );
    if let Some(p) = r.scaling().and_then(|sc| sc.largest()) {
        let c = &p.maps.client;
        let _ = writeln!(
            s,
            "- **Map memory per flow**: the flow table is an mmapable array of 128-octet slots (40 key + 88 state), {} B per slot including the table's fixed page; a kernel LRU hash would add 64 B of its own per element (288 B per flow with this state). At {} flows in {} slots (the next power of two), {} are resident: a new flow finds both of its 4-slot sets full and evicts the least recently active flow of the two ({} evictions counted on the client). Holding every one of 1 000 000 flows at this load needs more ways or cuckoo-style moves (simulated: two 8-way sets plus one move per insertion leave 0.01 % displaced), which costs more slot reads per packet.",
            num(c.bytes_per_slot, 3),
            p.flows,
            c.map.max_entries,
            c.entries,
            count(p.counters(Host::Client).get(Counter::FlowEvictions)),
        );
    }
    let _ = writeln!(s);
}

/// The command, the sizes of the run, and what ran inside the hosts.
pub fn commands(s: &mut String, r: &BenchResults) {
    let _ = writeln!(s, "## How it was run\n");
    let _ = writeln!(s, "```sh\n{}\n```\n", cmdline(r));
    let c = &r.config;
    // By name, as this line has always listed them.
    let mut wall: Vec<(&str, f64)> = r
        .wall_secs
        .per_bench
        .iter()
        .map(|(b, secs)| (b.name(), *secs))
        .chain([("total", r.wall_secs.total)])
        .collect();
    wall.sort_by_key(|(name, _)| *name);
    let wall: Vec<String> = wall
        .iter()
        .map(|(name, secs)| format!("{name} {}", num(*secs, 0)))
        .collect();
    // Seconds with a decimal point ("10.0 s"), as bench-results.json writes them.
    let _ = writeln!(
        s,
        "{} repetition(s); TCP transfers {:?} s; BPF run-time windows {:?} s; {} round trips per request/response repetition; flow-scaling steady windows {:?} s; loader measured over {} s. Wall time per benchmark (s): {}.\n",
        c.reps,
        c.tcp_secs,
        c.cost_secs,
        c.rr_count,
        c.scale_secs,
        c.loader_secs,
        wall.join(", ")
    );
    let _ = writeln!(
        s,
        "Inside the hosts (`ip netns exec pdm-bench-client|pdm-bench-server ...`): `target/release/pdm run --iface bench0 --json [--ingress xdp|tc] [--per-packet] [--max-flows N]`; `iperf3 -s -B fd0b::2` / `iperf3 -6 -c fd0b::2 -t T -P 1|8 -J`; `cargo xtask bench-helper tcp-sink|tcp-send [--dstopts]|udp-echo|udp-rr|udp-flood|null-prog` (the xtask binary itself). Offloads for the `offloads_off` baseline: `ethtool -K bench0 tso off gso off` and `ip link set bench0 gso_max_segs 1` on both hosts, as `pdm --per-packet` does. Program statistics: `sysctl kernel.bpf_stats_enabled=1` during each window, `bpftool -j prog show id ID`; map memory `bpftool -j map show id ID`."
    );
}
