//! The tables of BENCHMARKS.md, one function per benchmark, each with the paragraph that
//! says how it was measured.

use std::fmt::Write as _;

use pdm_common::counters::Counter;

use super::{
    figures::{Floors, map_errors, tcp_core_percent, udp_core_percent},
    format::{count, done, mark, num, spread},
};
use crate::bench::{
    results::{
        Analyze, Host, HostProgs, Ingress, LoaderCpu, LoaderOutput, MergedProg, NullHook, Observe,
        ObserveWindow, Outcome, Profile, Prog, ProgRun, Progcost, Rr, Scaling, TcpTest, Throughput,
        ThroughputMode, Windows,
    },
    rr, stats, throughput,
};

/// How the tables name pdm's setups.
fn setup_label(ingress: Ingress) -> &'static str {
    match ingress {
        Ingress::Xdp => "pdm --ingress xdp",
        Ingress::Tc => "pdm default (TC ingress)",
    }
}

/// The rows of a pdm setup: host, program, and what it handles there.
fn pdm_rows(ingress: Ingress) -> [(Host, Prog, &'static str); 4] {
    match ingress {
        Ingress::Xdp => [
            (Host::Client, Prog::PdmEgress, "egress (client, data)"),
            (
                Host::Server,
                Prog::PdmIngressXdp,
                "XDP ingress (server, data)",
            ),
            (
                Host::Server,
                Prog::PdmEgress,
                "egress (server, ACKs/errors)",
            ),
            (
                Host::Client,
                Prog::PdmIngressXdp,
                "XDP ingress (client, ACKs/errors)",
            ),
        ],
        Ingress::Tc => [
            (Host::Client, Prog::PdmEgress, "egress (client, data)"),
            (
                Host::Server,
                Prog::PdmIngressTc,
                "TC ingress (server, data)",
            ),
            (
                Host::Server,
                Prog::PdmEgress,
                "egress (server, ACKs/errors)",
            ),
            (
                Host::Client,
                Prog::PdmIngressTc,
                "TC ingress (client, ACKs/errors)",
            ),
        ],
    }
}

/// "median (min–max)" ns per run over the windows, and the runs in all of them.
fn ns_run(progs: &HostProgs<MergedProg>, host: Host, prog: Prog) -> (String, String) {
    let Some(p) = progs.get(host, prog) else {
        return ("–".into(), "0".into());
    };
    let v = if p.values.len() > 1 {
        format!(
            "{} ({}–{})",
            num(p.ns_per_run, 1),
            num(p.ns_min, 1),
            num(p.ns_max, 1)
        )
    } else {
        num(p.ns_per_run, 1)
    };
    (v, p.runs.to_string())
}

/// A program's small-UDP ns per run, NaN if it did not run.
fn udp_ns(w: &Windows, host: Host, prog: Prog) -> f64 {
    w.udp
        .progs
        .get(host, prog)
        .map_or(f64::NAN, |p| p.ns_per_run)
}

pub fn progcost(s: &mut String, part: Option<&Outcome<Progcost>>) {
    let _ = writeln!(s, "## Run time per packet of each program\n");
    let Some(p) = done(s, part) else {
        return;
    };
    let _ = writeln!(
        s,
        "`kernel.bpf_stats_enabled=1` only during each window (restored after; a BPF_ENABLE_STATS descriptor is held too, so nothing else turning the sysctl off can cut a window short); run_time_ns / run_cnt of each program as deltas over the window, median (min–max) over the repetitions' windows, programs identified by the ids the pdm process holds. The windows are taken in rounds: each round measures every setup below once (pdm with XDP, pdm with TC, the null programs, the adjust-room and clock references), each on fresh hosts, backwards every other round, so that this VM's drift reaches all setups alike. Small UDP: one flow, 18-byte payload, sendmmsg as fast as the sender goes (rates in the table below). TCP bulk: iperf3, 1 stream. Egress runs on TCP see GSO super-packets (one run for up to 64 KB). bpf_stats itself adds roughly 2 × 20 ns to every run; the null programs (return at once, attached the same way) show that floor, and “− floor” is a program's small-UDP run time less its hook's null program. Without pdm there is no program: n/a.\n"
    );
    let _ = writeln!(
        s,
        "| setup | program (host) | small UDP: ns/run | − floor | runs | TCP bulk: ns/run | runs |\n|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(s, "| no PDM (baseline) | – | n/a | | | n/a | |");
    // The same hook's null program on small UDP: the hook's and bpf_stats' own cost.
    let floors = Floors::of(Some(p));
    let floor = |prog| floors.of_prog(prog).unwrap_or(f64::NAN);
    // With `--baseline REV`: pdm as built from REV, TC ingress, in the same rounds.
    let baseline = p.baseline.as_ref().map(|b| {
        let label = format!("baseline: pdm at {} (TC ingress)", b.rev);
        (label, &b.tc)
    });
    let mut all: Vec<(String, &Windows, _)> = [Ingress::Xdp, Ingress::Tc]
        .map(|i| (setup_label(i).to_owned(), &p.pdm(i).windows, pdm_rows(i)))
        .into();
    if let Some((label, windows)) = &baseline {
        all.push((label.clone(), windows, pdm_rows(Ingress::Tc)));
    }
    for (setup, v, rows) in &all {
        for (host, prog, label) in rows {
            let (u, un) = ns_run(&v.udp.progs, *host, *prog);
            let (t, tn) = ns_run(&v.tcp.progs, *host, *prog);
            let net = num(udp_ns(v, *host, *prog) - floor(*prog), 1);
            let _ = writeln!(s, "| {setup} | {label} | {u} | {net} | {un} | {t} | {tn} |");
        }
    }
    for (hook, host, prog, label) in [
        (
            NullHook::Xdp,
            Host::Client,
            Prog::NullTcEgress,
            "null TC egress (client)",
        ),
        (
            NullHook::Xdp,
            Host::Server,
            Prog::NullXdp,
            "null XDP (server)",
        ),
        (
            NullHook::TcIngress,
            Host::Server,
            Prog::NullTcIngress,
            "null TC ingress (server)",
        ),
    ] {
        let w = p.null.get(hook);
        let (u, un) = ns_run(&w.udp.progs, host, prog);
        let (t, tn) = ns_run(&w.tcp.progs, host, prog);
        let _ = writeln!(
            s,
            "| reference: return at once | {label} | {u} | | {un} | {t} | {tn} |"
        );
    }
    for (reference, host, prog, setup, hook) in [
        (
            &p.adjust_room_only,
            Host::Client,
            Prog::RefAdjustRoom,
            "reference: only `bpf_skb_adjust_room`",
            Prog::PdmEgress,
        ),
        (
            &p.clock_only,
            Host::Server,
            Prog::RefClockXdp,
            "reference: only `bpf_ktime_get_ns`",
            Prog::PdmIngressXdp,
        ),
    ] {
        let Some(progs) = reference.as_ref().map(|r| &r.udp.progs) else {
            continue;
        };
        let Some(run) = progs.get(host, prog) else {
            continue;
        };
        let (u, un) = ns_run(progs, host, prog);
        let net = num(run.ns_per_run - floor(hook), 1);
        let _ = writeln!(
            s,
            "| {setup} | {} ({}) | {u} | {net} | {un} | | |",
            prog.name(),
            host.name()
        );
    }
    if let Some(b) = &p.baseline {
        // Small UDP less the hook's floor: this tree's and the baseline's.
        let cost = |host, prog| {
            let of = |v: &Windows| udp_ns(v, host, prog) - floor(prog);
            (of(&p.tc.windows), of(&b.tc))
        };
        let (this_in, base_in) = cost(Host::Server, Prog::PdmIngressTc);
        let (this_eg, base_eg) = cost(Host::Client, Prog::PdmEgress);
        let _ = writeln!(
            s,
            "\nThis tree against {}, measured in the same rounds (small UDP, less the hook's floor): TC ingress {} ns against {} ns ({}×), egress {} ns against {} ns ({}×).",
            b.rev,
            num(this_in, 1),
            num(base_in, 1),
            num(this_in / base_in, 2),
            num(this_eg, 1),
            num(base_eg, 1),
            num(this_eg / base_eg, 2),
        );
    }
    let _ = writeln!(s, "\nTraffic in each window:\n");
    let _ = writeln!(
        s,
        "| setup | small UDP: packets/s sent | programs' CPU (% of one core) | TCP bulk: Gb/s | programs' CPU (% of one core) |\n|---|---|---|---|---|"
    );
    let mut traffic: Vec<(&str, &Windows)> = vec![
        (setup_label(Ingress::Xdp), &p.xdp.windows),
        (setup_label(Ingress::Tc), &p.tc.windows),
        ("null programs, XDP", &p.null.xdp),
        ("null programs, TC ingress", &p.null.tc_ingress),
    ];
    if let Some((label, windows)) = &baseline {
        traffic.push((label, windows));
    }
    for (label, v) in traffic {
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} |",
            num(v.udp.traffic.pps, 0),
            num(udp_core_percent(&v.udp), 1),
            num(v.tcp.traffic.gbps, 2),
            num(tcp_core_percent(&v.tcp), 1)
        );
    }
    let _ = writeln!(s);
}

/// The traffic of each profile, as the tables name it.
const UDP_TRAFFIC: &str = "small UDP";
const TCP_TRAFFIC: &str = "TCP bulk";

pub fn profile(s: &mut String, p: Option<&Progcost>) {
    let _ = writeln!(s, "## Where the time goes (perf)\n");
    let Some(p) = p else {
        let _ = writeln!(s, "No profile (the benchmark failed).\n");
        return;
    };
    let _ = writeln!(
        s,
        "`perf record -a -g` over one more window of the same traffic (bpf_stats off), pdm on both hosts. Per program: its share of all CPU samples on the machine (inclusive of the helpers it calls), and how its own samples split between its own code and the kernel helpers / BPF subprograms it called. Programs are matched by name (perf labels them with their main function's tag, not bpftool's), so on a shared machine another pdm's samples count too. `bpftool prog profile` is not available (Debian's bpftool is built without it).\n"
    );
    let _ = writeln!(
        s,
        "| setup | traffic | program | % of all samples | split of the program's samples |\n|---|---|---|---|---|"
    );
    for ingress in [Ingress::Xdp, Ingress::Tc] {
        let (setup, prof) = (setup_label(ingress), &p.pdm(ingress).profile);
        profile_rows(s, setup, UDP_TRAFFIC, &prof.udp);
        profile_rows(s, setup, TCP_TRAFFIC, &prof.tcp);
    }
    let _ = writeln!(
        s,
        "\nHottest functions of the whole machine (self time, % of all samples; on a shared machine this includes whatever else runs):\n"
    );
    for ingress in [Ingress::Xdp, Ingress::Tc] {
        let (setup, prof) = (setup_label(ingress), &p.pdm(ingress).profile);
        hottest(s, setup, UDP_TRAFFIC, &prof.udp);
        hottest(s, setup, TCP_TRAFFIC, &prof.tcp);
    }
    let _ = writeln!(s);
}

/// pdm's programs in one profile: their share of all samples and how theirs split.
fn profile_rows<T>(s: &mut String, setup: &str, traffic: &str, prof: &Profile<T>) {
    let rec = match prof {
        Profile::Skipped { skipped } => {
            let _ = writeln!(s, "| {setup} | {traffic} | – | {skipped} | |");
            return;
        }
        Profile::Recorded(rec) => rec,
    };
    for prog in Prog::PDM {
        let Some(e) = rec.program(prog) else {
            continue;
        };
        let split = e
            .split
            .iter()
            .map(|(callee, pct)| format!("{callee} {} %", num(*pct, 0)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "| {setup} | {traffic} | {} | {} | {split} |",
            prog.name(),
            num(e.percent_of_all, 1)
        );
    }
}

/// The machine's hottest functions in one profile.
fn hottest<T>(s: &mut String, setup: &str, traffic: &str, prof: &Profile<T>) {
    let Some(rec) = prof.recorded() else {
        return;
    };
    let hot = rec
        .hottest
        .iter()
        .take(8)
        .map(|(f, pct)| format!("{f} {}", num(*pct, 1)))
        .collect::<Vec<_>>()
        .join(", ");
    if !hot.is_empty() {
        let _ = writeln!(s, "- {setup}, {traffic}: {hot}");
    }
}

/// The throughput modes that run pdm.
const PDM_MODES: [ThroughputMode; 5] = [
    ThroughputMode::PdmXdp,
    ThroughputMode::PdmTc,
    ThroughputMode::PdmMtuRoom,
    ThroughputMode::PdmPerPacket,
    ThroughputMode::PdmPerPacketTc,
];

pub fn throughput(s: &mut String, part: Option<&Outcome<Throughput>>) {
    let _ = writeln!(s, "## TCP throughput and CPU per GB\n");
    let Some(t) = done(s, part) else {
        return;
    };
    let _ = writeln!(
        s,
        "Client → server, fresh hosts for every mode; repetitions go round all modes in turn, in the order listed below and backwards every other repetition (each mode sits next to what it is compared with, so a drift over a round reaches both sides alike). iperf3: `iperf3 -c fd0b::2 -t T -P 1|8 -J`, CPU = iperf3's own sender + receiver process CPU (user + system, which includes the softirq work done in their context) per GB received. Pair: our bulk sender (`cargo xtask bench-helper tcp-send`, 128 KiB writes) and sink, CPU = sender + sink process CPU; `dstopts` = the same sender with the sticky `IPV6_DSTOPTS` option carrying a 16-octet PDM-shaped header, which the kernel inserts itself with the MSS accounted (the floor for adding these 16 octets). Machine busy and steal: from /proc/stat over each test, all CPUs; steal is time the hypervisor gave our vCPUs to something else, the part of this VM's noise that can be seen from inside. Median (min–max over repetitions).\n"
    );
    let _ = writeln!(s, "Modes:\n");
    for m in throughput::MODES {
        let _ = writeln!(s, "- `{}`: {}", m.mode.name(), m.what);
    }
    let _ = writeln!(
        s,
        "\n| mode | test | Gb/s | CPU s per GB | retransmits | pdm loaders' CPU s per GB | machine busy % | steal % |\n|---|---|---|---|---|---|---|---|"
    );
    for m in throughput::MODES {
        for &test in TcpTest::ALL {
            let Some(v) = t.summary(m.mode, test) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                m.mode.name(),
                test.name().replace('_', " × "),
                spread(&v.gbps, 2),
                spread(&v.cpu_s_per_gb, 3),
                spread(&v.retransmits, 0),
                spread(&v.pdm_cpu_s_per_gb, 3),
                spread(&v.machine_busy_percent, 0),
                spread(&v.steal_percent, 1)
            );
        }
    }
    let _ = writeln!(
        s,
        "\nRatios of medians measured in this run (per-repetition ratios min–max):\n"
    );
    let _ = writeln!(
        s,
        "| comparison | ratio | per repetition | target | met |\n|---|---|---|---|---|"
    );
    for q in &t.ratios {
        let pct = |v: Option<f64>| num(v.map(|v| v * 100.0), 1);
        let per = &q.per_rep;
        let per_rep = if per.values.len() > 1 {
            format!("{}–{} %", pct(per.min), pct(per.max))
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} % | {per_rep} | {} | {} |",
            q.label,
            pct(Some(q.ratio)),
            q.target
                .map_or(String::new(), |x| format!("≥ {:.0} %", x * 100.0)),
            mark(q.met)
        );
    }
    // "mode client/server" of one counter, for each mode with pdm.
    let per_mode = |c: Counter| {
        PDM_MODES
            .iter()
            .map(|m| {
                let counters = t.pdm_counters_last_rep.get(m);
                let on = |h| count(counters.and_then(|cs| cs.get(h).get(c)));
                format!("{} {}/{}", m.name(), on(Host::Client), on(Host::Server))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "\npdm's counters in the last repetition (client / server): packets sent without PDM because too big: {}; adjust failures: {}; SYNs with MSS clamped: {}.\n",
        per_mode(Counter::EgressTooBig),
        per_mode(Counter::EgressAdjustFailed),
        per_mode(Counter::IngressMssClamped),
    );
}

pub fn rr(s: &mut String, part: Option<&Outcome<Rr>>) {
    let _ = writeln!(s, "## UDP request/response\n");
    let Some(r) = done(s, part) else {
        return;
    };
    let _ = writeln!(
        s,
        "One 32-byte datagram from the client, echoed by the server, the next sent when the echo arrives (`bench-helper udp-rr`, first 50 exchanges not counted); pdm on both hosts or on neither, alternating within each repetition. Median (min–max over repetitions) of each repetition's p50 and p99; added = pdm − no PDM, per repetition.\n"
    );
    let _ = writeln!(
        s,
        "| mode | p50 µs | p99 µs | added p50 µs | added p99 µs |\n|---|---|---|---|---|"
    );
    for (mode, _) in rr::MODES {
        let v = r.summary.get(mode);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            mode.name(),
            spread(v.map(|v| &v.p50_us), 2),
            spread(v.map(|v| &v.p99_us), 2),
            spread(v.and_then(|v| v.added_p50_us.as_ref()), 2),
            spread(v.and_then(|v| v.added_p99_us.as_ref()), 2)
        );
    }
    let _ = writeln!(s);
}

pub fn scaling(s: &mut String, part: Option<&Outcome<Scaling>>) {
    let _ = writeln!(s, "## Flow scaling\n");
    let Some(sc) = done(s, part) else {
        return;
    };
    let _ = writeln!(
        s,
        "The client sends small UDP datagrams cycling through N distinct 5-tuples (source ports 20000.. × destination ports 30000..), sendmmsg, `pdm --ingress xdp` on both hosts with `--max-flows` = N rounded up to a power of two (at least 65536). ns/packet from bpf_stats: first pass (every packet creates an entry) and steady (a window of the same cycle once every entry exists). Entries: the flows in the kernel's table (it is mapped and its valid slots counted). Memory: `bytes_memlock` of the FLOWS map (`bpftool map show`, the kernel's own accounting) per slot (÷ max_entries) and per live flow (÷ entries). Map errors: pdm's `*_flow_map_full` counters on both hosts.\n"
    );
    let _ = writeln!(
        s,
        "| flows | max_flows | egress ns/pkt: create | steady | ingress (XDP) ns/pkt: create | steady | entries client / server | map bytes per slot | per live flow | map errors | packets/s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &sc.points {
        let ns =
            |w: &HostProgs<ProgRun>, host, prog| num(w.get(host, prog).map(|r| r.ns_per_run), 1);
        let (egress, ingress) = (
            (Host::Client, Prog::PdmEgress),
            (Host::Server, Prog::PdmIngressXdp),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            p.flows,
            p.max_flows,
            ns(&p.create.progs, egress.0, egress.1),
            ns(&p.steady.progs, egress.0, egress.1),
            ns(&p.create.progs, ingress.0, ingress.1),
            ns(&p.steady.progs, ingress.0, ingress.1),
            p.maps.client.entries,
            p.maps.server.entries,
            num(p.maps.client.bytes_per_slot, 1),
            num(p.maps.client.bytes_per_live_flow, 1),
            map_errors(p),
            num(p.steady.traffic.pps, 0)
        );
    }
    if let Some(p) = sc.points.last() {
        let m = &p.maps.client.map;
        // The type quoted, as it is in bpftool's JSON.
        let _ = writeln!(
            s,
            "\nFLOWS map: type {:?}, key {} B, value {} B, flags {}.\n",
            m.kind, m.bytes_key, m.bytes_value, m.flags
        );
    }
}

pub fn loader(s: &mut String, part: Option<&Outcome<LoaderCpu>>) {
    let _ = writeln!(s, "## Loader CPU with many active flows\n");
    let Some(l) = done(s, part) else {
        return;
    };
    let _ = writeln!(
        s,
        "{} UDP flows from the client, one request per second each, answered by an echo server on the server host; pdm on both hosts (TC ingress), refreshing every second. CPU of the client-side loader over {} s, from /proc/PID/stat (target: under 2 % of one core).\n",
        l.flows, l.seconds
    );
    let _ = writeln!(s, "| output | CPU (% of one core) | RSS |\n|---|---|---|");
    for (output, name) in [
        (LoaderOutput::View, "live view (tmux)"),
        (LoaderOutput::Json, "NDJSON to /dev/null"),
    ] {
        let u = l.get(output);
        let _ = writeln!(
            s,
            "| {name} | {} | {} KiB |",
            num(u.cpu_percent_of_one_core, 2),
            u.rss_kib
        );
    }
    if let Some(m) = &l.metrics {
        let _ = writeln!(
            s,
            "| live view + `--metrics-addr`, scraped every second | {} | {} KiB |",
            num(m.cpu_percent_of_one_core, 2),
            m.rss_kib
        );
        let _ = writeln!(
            s,
            "\nWith `--metrics-addr` (the same flows spread over {} server addresses, `--metrics-peer host --metrics-max-series {}`), {} scrapes of `/metrics` from inside the client host, one a second: latency p50 {} ms, p99 {} ms, max {} ms (target: p99 under 50 ms; loader under 3 % of one core); the last one held {} series with {} peer labels (the bound, and `other`).",
            m.peers,
            m.max_series,
            m.scrapes,
            num(m.scrape_ms_p50, 1),
            num(m.scrape_ms_p99, 1),
            num(m.scrape_ms_max, 1),
            m.series,
            m.peer_labels
        );
    }
    let _ = writeln!(s);
}

pub fn analyze(s: &mut String, part: Option<&Outcome<Analyze>>) {
    // Absent from runs before the benchmark existed: no section at all.
    let Some(part) = part else {
        return;
    };
    let _ = writeln!(
        s,
        "## Reading captures: `pdm analyze` against tshark
"
    );
    let Some(a) = done(s, Some(part)) else {
        return;
    };
    let _ = writeln!(
        s,
        "A pcap of {} Ethernet/IPv6/PDM/UDP packets ({} MiB, {} request/response flows) written by the benchmark; `pdm analyze FILE` (per-flow figures) against `tshark -r FILE -T fields` with the six PDM fields, in turn, output to /dev/null. Target: at least 1 M packets/s.\n",
        a.packets,
        num(a.file_bytes as f64 / 1_048_576.0, 1),
        a.flows
    );
    let _ = writeln!(s, "| reader | packets/s | wall s per run |\n|---|---|---|");
    let runs = |v: &[f64]| v.iter().map(|x| num(*x, 3)).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        s,
        "| pdm analyze | {} | {} |",
        num(a.pdm_packets_per_sec, 0),
        runs(&a.pdm_secs)
    );
    let _ = writeln!(
        s,
        "| tshark -T fields | {} | {} |",
        num(a.tshark_packets_per_sec, 0),
        runs(&a.tshark_secs)
    );
    let _ = writeln!(
        s,
        "\npdm analyze reads {}× as many packets per second as tshark; target ≥ 1 M packets/s {}.\n",
        num(a.pdm_packets_per_sec / a.tshark_packets_per_sec, 1),
        if a.pdm_packets_per_sec >= 1e6 {
            "met"
        } else {
            "missed"
        }
    );
}

pub fn observe(s: &mut String, part: Option<&Outcome<Observe>>) {
    // Absent from runs before the benchmark existed: no section at all.
    let Some(part) = part else {
        return;
    };
    let _ = writeln!(s, "## `pdm observe` on a router\n");
    let Some(o) = done(s, Some(part)) else {
        return;
    };
    let _ = writeln!(
        s,
        "Client — router — server namespaces, `pdm run` on both ends (every packet carries PDM and echoes the other end's), 18-octet UDP datagrams both ways on the same {} flows at the senders' top rate (sendmmsg, one sender per end); on the router nothing, or `pdm observe -i ra -i rb` with XDP or TC ingress (the ends then use the same hook). Windows in rounds, fresh hosts each. Figures are medians over the windows (all values in bench-results.json). Targets: the observer's ns per packet no more than pdm's ingress program on the same hook, no packet lost because of it, no sample dropped.\n",
        o.flows
    );
    let med = |v: Vec<f64>| stats::summary(&v).median_or_nan();
    let base = med(o.none.iter().map(|w| w.delivered_per_sec).collect());
    let _ = writeln!(
        s,
        "| router | delivered packets/s | of no observer | lost (sent − delivered) | of them dropped by the veth devices | observer ns/packet | server's pdm ingress ns/packet | ratio | flows seen | samples/s | samples dropped |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (name, ws) in [
        ("no observer", &o.none),
        ("pdm observe, XDP", &o.xdp),
        ("pdm observe, TC", &o.tc),
    ] {
        let ws: &Vec<ObserveWindow> = ws;
        if ws.is_empty() {
            continue;
        }
        let pps = med(ws.iter().map(|w| w.delivered_per_sec).collect());
        let lost: u64 = ws.iter().map(|w| w.lost).sum();
        let sent: u64 = ws.iter().map(|w| w.sent).sum();
        let link_drops: u64 = ws.iter().map(|w| w.link_drops).sum();
        let opt = |f: fn(&ObserveWindow) -> Option<f64>| {
            let v: Vec<f64> = ws.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| med(v))
        };
        let obs = opt(|w| w.observer_ns_per_packet);
        let ing = opt(|w| w.ingress_ns_per_packet);
        let samples_per_sec = med(ws.iter().map(|w| w.samples as f64 / w.secs).collect());
        let dropped: u64 = ws.iter().map(|w| w.samples_dropped).sum();
        let observed = !std::ptr::eq(ws, &o.none);
        let _ = writeln!(
            s,
            "| {name} | {} | {}% | {} of {} | {} | {} | {} | {} | {} | {} | {} |",
            num(pps, 0),
            num(100.0 * pps / base, 1),
            lost,
            sent,
            link_drops,
            obs.map_or("-".into(), |v| num(v, 1)),
            ing.map_or("-".into(), |v| num(v, 1)),
            match (obs, ing) {
                (Some(a), Some(b)) => format!("{}×", num(a / b, 2)),
                _ => "-".into(),
            },
            if observed {
                ws.iter()
                    .map(|w| w.flows_seen)
                    .max()
                    .unwrap_or(0)
                    .to_string()
            } else {
                "-".into()
            },
            if observed {
                num(samples_per_sec, 0)
            } else {
                "-".into()
            },
            if observed {
                dropped.to_string()
            } else {
                "-".into()
            },
        );
    }
    let _ = writeln!(
        s,
        "\nThe two senders, the router's forwarding and both ends' pdm share this machine's CPUs: every nanosecond the observer adds on the router is taken from the senders, which is what the delivered rate shows. Lost counts the datagrams sent and never received (the ends' input rules' counters), over all windows of the setup; where some are lost, the veth devices' own drop counters say whether they dropped them (with an XDP program on a veth the sending peer hands packets over through a ring of 256 per queue, and drops when it is full).\n"
    );
}
