//! `pdm observe` on a router: client — router — server, pdm on both ends (so every
//! packet carries PDM, with the other end's echo), small UDP datagrams both ways on the
//! same 1 000 flows at the senders' top rate. Each window, in rounds: no observer, the
//! observer with XDP and with TC ingress on the router's two links. Figures: the
//! packets delivered (ratio to no observer), the packets lost between sending and
//! delivery, the observer's ns per packet (bpf_stats) next to the server's pdm ingress
//! program on the same hook in the same window, and the observer's samples (none may be
//! dropped).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    Cfg,
    bpf::{self, StatsOn, Window},
    hosts::{self, IFACE, Pdm},
    results::{Host, HostProgs, Ingress, Observe, ObserveWindow, ProgRun},
    stats,
};

const NS_A: &str = "pdm-bench-oc";
const NS_R: &str = "pdm-bench-or";
const NS_B: &str = "pdm-bench-os";
const ADDR_A: &str = "fd0b:1::1";
const ADDR_B: &str = "fd0b:2::2";
/// Flows each way: the same 5-tuples both ways.
const FLOWS: usize = 1_000;

/// Three namespaces in a line, removed on drop (and before creation, if a crashed run
/// left them). Each end drops the other's datagrams at input, so nothing is answered.
struct Line {
    _ns: [testbed::Netns; 3],
}

impl Line {
    fn create() -> Result<Self> {
        let a = testbed::Netns::create(NS_A)?;
        let r = testbed::Netns::create(NS_R)?;
        let b = testbed::Netns::create(NS_B)?;
        a.veth(IFACE, &r, "ra")?;
        b.veth(IFACE, &r, "rb")?;
        a.add_addr(IFACE, ADDR_A.parse()?, 64)?;
        b.add_addr(IFACE, ADDR_B.parse()?, 64)?;
        r.add_addr("ra", "fd0b:1::fe".parse()?, 64)?;
        r.add_addr("rb", "fd0b:2::fe".parse()?, 64)?;
        a.ip(&["-6", "route", "add", "default", "via", "fd0b:1::fe"])?;
        b.ip(&["-6", "route", "add", "default", "via", "fd0b:2::fe"])?;
        r.run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        for (ns, ports) in [(&a, "20000-20999"), (&b, "30000-31999")] {
            ns.run(
                "nft",
                &[
                    "add table inet pdmbench; add chain inet pdmbench input { type filter hook input priority 0 ; }; add rule inet pdmbench input udp dport",
                    ports,
                    "counter drop",
                ],
            )?;
        }
        hosts::wait_for(
            "the routed path",
            std::time::Duration::from_secs(10),
            || a.run("ping", &["-6", "-c", "1", "-W", "1", ADDR_B]).is_ok(),
        )?;
        Ok(Self { _ns: [a, r, b] })
    }
}

/// What one window runs on the router.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    None,
    Observer(Ingress),
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::Observer(Ingress::Xdp) => "xdp",
            Setup::Observer(Ingress::Tc) => "tc",
        }
    }

    /// The ends' ingress hook: the observer's, so the two programs compare on one hook.
    fn ends_ingress(self) -> Ingress {
        match self {
            Setup::Observer(i) => i,
            Setup::None => Ingress::Tc,
        }
    }
}

pub fn run(cfg: &Cfg) -> Result<Observe> {
    let setups = [
        Setup::None,
        Setup::Observer(Ingress::Xdp),
        Setup::Observer(Ingress::Tc),
    ];
    let mut windows: BTreeMap<Setup, Vec<ObserveWindow>> = BTreeMap::new();
    for round in 0..cfg.reps {
        for i in stats::round_order(setups.len(), round) {
            let setup = setups[i];
            let w = window(cfg, setup)?;
            eprintln!(
                "bench: observe {}: {:.0} packets/s delivered, {} lost, {} samples ({} dropped)",
                setup.name(),
                w.delivered_per_sec,
                w.lost,
                w.samples,
                w.samples_dropped
            );
            windows.entry(setup).or_default().push(w);
        }
    }
    let mut take = |s| windows.remove(&s).unwrap_or_default();
    Ok(Observe {
        flows: FLOWS,
        none: take(Setup::None),
        xdp: take(Setup::Observer(Ingress::Xdp)),
        tc: take(Setup::Observer(Ingress::Tc)),
    })
}

/// One window on fresh hosts.
fn window(cfg: &Cfg, setup: Setup) -> Result<ObserveWindow> {
    let _line = Line::create()?;
    let ingress = setup.ends_ingress().name();
    let a = Pdm::start(&cfg.pdm, NS_A, &["--ingress", ingress])?;
    let b = Pdm::start(&cfg.pdm, NS_B, &["--ingress", ingress])?;
    let observer = match setup {
        Setup::None => None,
        Setup::Observer(i) => Some(testbed::Pdm::start(
            &cfg.pdm,
            NS_R,
            &[
                "observe",
                "-i",
                "ra",
                "-i",
                "rb",
                "--ingress",
                i.name(),
                "--json",
            ],
        )?),
    };
    let before = [arrived(NS_A)?, arrived(NS_B)?];
    let drops_before = link_drops()?;
    let _on = StatsOn::new()?;
    // A window per host measured (windows are keyed by test host; the router is its own).
    let server_window = Window::start(&[bpf::pdm_target(Host::Server, &b)])?;
    let router_window = match &observer {
        Some(o) => Some(Window::start(&[(
            Host::Server,
            hosts::fd_ids(o.pid(), "prog_id"),
        )])?),
        None => None,
    };
    let forward = hosts::udp_flood(NS_A, (ADDR_A, ADDR_B), FLOWS, cfg.cost_secs, &[])?
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the forward flood")?;
    // The reverse, on the same 5-tuples: a socket per flow's port, to the one port.
    let back = hosts::udp_flood_json(
        NS_B,
        (ADDR_B, ADDR_A),
        FLOWS,
        cfg.cost_secs,
        &[
            "--sport-base",
            "30000",
            "--dport-base",
            "20000",
            "--ports",
            "1",
        ],
    )?;
    let forward_out = forward
        .wait_with_output()
        .context("waiting for the forward flood")?;
    let forward: Value = serde_json::from_slice(&forward_out.stdout)
        .with_context(|| format!("forward flood output: {forward_out:?}"))?;
    // Whatever is still in flight arrives within the hosts' queues' time.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let server_progs = server_window.end()?;
    let router_progs = router_window.map(Window::end).transpose()?;
    let after = [arrived(NS_A)?, arrived(NS_B)?];
    let link_drops = link_drops()?.saturating_sub(drops_before);
    let sent = forward["packets"].as_u64().unwrap_or(0) + back["packets"].as_u64().unwrap_or(0);
    let secs = forward["secs"]
        .as_f64()
        .unwrap_or(cfg.cost_secs)
        .max(back["secs"].as_f64().unwrap_or(cfg.cost_secs));
    let delivered = (after[0] - before[0]) + (after[1] - before[1]);
    let ns_per = |progs: Option<&HostProgs<ProgRun>>, prefix: &str| {
        progs?.0.get(&Host::Server).and_then(|p| {
            p.iter()
                .find(|(name, _)| name.starts_with(prefix))
                .map(|(_, r)| r.ns_per_run)
        })
    };
    let counters = match observer {
        Some(o) => {
            let lines = o.stop()?;
            lines
                .into_iter()
                .rev()
                .find(|l| l["type"] == "counters")
                .context("the observer printed no counters line")?
        }
        None => Value::Null,
    };
    a.stop()?;
    b.stop()?;
    let c = |k: &str| counters["counters"][k].as_u64().unwrap_or(0);
    if setup != Setup::None && c("observe_packets") == 0 {
        bail!("the observer saw no packet");
    }
    Ok(ObserveWindow {
        secs,
        sent,
        delivered,
        lost: sent.saturating_sub(delivered),
        link_drops,
        delivered_per_sec: delivered as f64 / secs,
        observer_ns_per_packet: ns_per(router_progs.as_ref(), "pdm_observe"),
        ingress_ns_per_packet: ns_per(Some(&server_progs), "pdm_ingress"),
        observed_packets: c("observe_packets"),
        observed_pdm: c("observe_pdm"),
        samples: c("observe_samples"),
        samples_dropped: c("observe_samples_dropped"),
        samples_thinned: c("observe_samples_thinned"),
        flows_seen: counters["flows"].as_u64().unwrap_or(0),
    })
}

/// Packets the four veth ends of the path dropped, either way (a veth whose peer runs
/// XDP hands packets over through a ring of its own, and drops when it is full).
fn link_drops() -> Result<u64> {
    let mut sum = 0;
    for (ns, iface) in [(NS_A, IFACE), (NS_R, "ra"), (NS_R, "rb"), (NS_B, IFACE)] {
        let out = hosts::in_ns(ns, &["ip", "-j", "-s", "link", "show", iface])?;
        let v: Value = serde_json::from_str(&out).context("ip -j -s link")?;
        let s = &v[0]["stats64"];
        sum += s["rx"]["dropped"].as_u64().unwrap_or(0) + s["tx"]["dropped"].as_u64().unwrap_or(0);
    }
    Ok(sum)
}

/// The other end's datagrams that reached `ns` (its input rule's counter).
fn arrived(ns: &str) -> Result<u64> {
    let out = hosts::in_ns(
        ns,
        &["nft", "-j", "list", "chain", "inet", "pdmbench", "input"],
    )?;
    let v: Value = serde_json::from_str(&out).context("nft -j list chain")?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .find_map(|e| e["counter"]["packets"].as_u64())
        .context("no counter in the input chain")
}
