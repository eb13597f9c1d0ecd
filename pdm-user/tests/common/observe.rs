//! `pdm observe` from a test: its output checked against its contract (the run line,
//! the counters adding up, a flow seen from the client's side), what is attached to an
//! interface, the one-line refusal of a second pdm, and a line of hosts with a lossy
//! router on each side of the observing one.

use serde_json::Value;

use super::{Netns, Pdm, run_pdm, warm_up};

/// The skip counters: with `observe_pdm` and `observe_no_pdm`, every packet the
/// observer's programs ran on is in exactly one of them.
pub const SKIPS: [&str; 5] = [
    "observe_skip_not_ipv6",
    "observe_skip_nd_mld",
    "observe_skip_not_eligible",
    "observe_skip_unparsable",
    "observe_skip_flow_map_full",
];

/// A count of `v`, which must be there.
pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} has no count in {v}"))
}

/// A time of `v` (µs), which must be there.
pub fn us(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} has no value in {v}"))
}

/// How a running observer started: on stderr a line per program attached, naming its
/// interface, then one saying it observes them all; on stdout first a run line of mode
/// observe, on `ifaces` in that order, with the same attachments.
pub fn check_start(obs: &Pdm, ifaces: &[&str], egress: bool) {
    let want = ifaces.len() * if egress { 2 } else { 1 };
    let err = obs.stderr_lines();
    let observing = err
        .iter()
        .position(|l| l.contains("observing on"))
        .unwrap_or_else(|| panic!("no `observing on` line: {err:#?}"));
    let attached: Vec<&String> = err[..observing]
        .iter()
        .filter(|l| l.contains("pdm_observe"))
        .collect();
    assert_eq!(attached.len(), want, "a line per program: {err:#?}");
    for i in ifaces {
        // "rc (ifindex 3, MTU 1500): pdm_observe_tc: tc ingress ..."
        let prefix = format!("{i} (");
        let per_iface = attached.iter().filter(|l| l.contains(&prefix)).count();
        assert_eq!(per_iface, want / ifaces.len(), "{i}: {err:#?}");
        assert!(err[observing].contains(i), "{i}: {}", err[observing]);
    }
    let lines = obs.lines();
    let run = lines.first().expect("pdm observe printed nothing");
    assert_eq!(run["type"], "run", "first line: {run}");
    assert_eq!(run["mode"], "observe", "{run}");
    assert_eq!(run["iface"], ifaces.join(","), "{run}");
    assert!(run["version"].is_string(), "{run}");
    let attach = run["attach"].as_array().expect("attach is a list");
    assert_eq!(attach.len(), want, "one entry per program attached: {run}");
}

/// The observer's last counters object, checked: every packet its programs ran on is
/// counted once, as PDM, as eligible without PDM, or under one skip reason.
pub fn observe_counters(lines: &[Value]) -> Value {
    let c = &lines
        .iter()
        .rev()
        .find(|l| l["type"] == "counters")
        .expect("a counters line")["counters"];
    let parts =
        n(c, "observe_pdm") + n(c, "observe_no_pdm") + SKIPS.iter().map(|k| n(c, k)).sum::<u64>();
    assert_eq!(
        n(c, "observe_packets"),
        parts,
        "observe_packets = observe_pdm + observe_no_pdm + the skips: {c}"
    );
    for k in [
        "observe_bad_pdm",
        "observe_samples",
        "observe_samples_dropped",
        "observe_samples_thinned",
    ] {
        n(c, k);
    }
    c.clone()
}

/// The observer's last report of the flow of `proto` to the server's `port`, which
/// must be seen from the client's side: local = `client`, remote = `server`:`port`.
pub fn client_flow<'a>(
    lines: &'a [Value],
    proto: &str,
    (client, server): (&str, &str),
    port: u16,
) -> &'a Value {
    let f = super::last_flow(lines, proto, Some(port));
    assert_eq!(f["local_addr"], client, "local is the client: {f}");
    assert_eq!(f["remote_addr"], server, "remote is the server: {f}");
    assert_eq!(f["remote_port"], port, "remote is the server: {f}");
    f
}

/// What is attached to `iface` of `ns`: TCX programs with their ids (asked of the
/// kernel: bpftool 7.1 does not list TCX), the XDP lines of `ip -d link`, and netlink
/// tc filters. Equal before and after something means it attached nothing that stayed.
pub fn attachments(ns: &Netns, iface: &str) -> String {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut s = ns.in_ns(|| {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|at| {
                SchedClassifier::query_tcx(iface, at)
                    .expect("query tcx")
                    .1
                    .into_iter()
                    .map(move |p| {
                        format!(
                            "tcx {at:?} id {} {}\n",
                            p.id(),
                            p.name_as_str().unwrap_or("?")
                        )
                    })
            })
            .collect::<String>()
    });
    for l in ns.ip(&["-d", "link", "show", iface]).lines() {
        if l.contains("xdp") {
            s += l.trim();
            s += "\n";
        }
    }
    for dir in ["ingress", "egress"] {
        s += &ns.run("tc", &["filter", "show", "dev", iface, dir]);
    }
    s
}

/// `pdm args...` in `ns` must be refused because the pdm of pid `holder` holds
/// `iface`: exit code 1 and that one line, nothing else.
pub fn refused(ns: &Netns, args: &[&str], holder: i32, iface: &str) {
    let (code, err) = run_pdm(ns, args);
    assert_eq!(
        err.trim_end(),
        format!("pdm: another pdm (pid {holder}) is already attached to `{iface}`; stop it first"),
        "pdm {args:?}: stderr"
    );
    assert_eq!(code, 1, "pdm {args:?}: {err}");
}

/// Five hosts in a line, client — loss_a — router — loss_b — server: a router on each
/// side of the one that observes, to drop packets before they reach it. The client's
/// and the server's interface are `pdm0` (so [`super::Pdm::start`] runs there), the
/// observing router's `rc` (client side) and `rs` (server side).
pub struct Lossy {
    pub client: Netns,
    pub loss_a: Netns,
    pub router: Netns,
    pub loss_b: Netns,
    pub server: Netns,
}

pub const LOSSY_CLIENT: &str = "fd0f:1::1";
pub const LOSSY_SERVER: &str = "fd0f:2::2";

impl Lossy {
    pub fn new(tag: &str) -> Self {
        let l = Self {
            client: Netns::new(&format!("{tag}c")),
            loss_a: Netns::new(&format!("{tag}a")),
            router: Netns::new(&format!("{tag}r")),
            loss_b: Netns::new(&format!("{tag}b")),
            server: Netns::new(&format!("{tag}s")),
        };
        // (host, interface, address, peer, its interface, its address) per link, each
        // its own /64: fd0f:1:: client side, fd0f:3:: and fd0f:4:: around the
        // observing router, fd0f:2:: server side.
        let links = [
            (
                &l.client,
                "pdm0",
                LOSSY_CLIENT,
                &l.loss_a,
                "c",
                "fd0f:1::fe",
            ),
            (&l.loss_a, "r", "fd0f:3::1", &l.router, "rc", "fd0f:3::fe"),
            (&l.router, "rs", "fd0f:4::fe", &l.loss_b, "r", "fd0f:4::2"),
            (
                &l.loss_b,
                "s",
                "fd0f:2::fe",
                &l.server,
                "pdm0",
                LOSSY_SERVER,
            ),
        ];
        for (a, ai, aa, b, bi, ba) in links {
            a.veth(ai, b, bi);
            a.add_addr(ai, aa, 64);
            b.add_addr(bi, ba, 64);
        }
        l.client
            .ip(&["route", "add", "default", "via", "fd0f:1::fe"]);
        l.loss_a
            .ip(&["route", "add", "default", "via", "fd0f:3::fe"]);
        l.router
            .ip(&["route", "add", "fd0f:1::/64", "via", "fd0f:3::1"]);
        l.router
            .ip(&["route", "add", "fd0f:2::/64", "via", "fd0f:4::2"]);
        l.loss_b
            .ip(&["route", "add", "default", "via", "fd0f:4::fe"]);
        l.server
            .ip(&["route", "add", "default", "via", "fd0f:2::fe"]);
        for r in [&l.loss_a, &l.router, &l.loss_b] {
            r.run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        }
        warm_up(&l.client, LOSSY_SERVER);
        l
    }
}
