//! `pdm trace`: where do packets carrying PDM stop?
//!
//! Studies claim IPv6 extension headers "don't work" on the Internet. This traces the
//! path twice with hop-limited probes, once plain and once with a PDM Destination
//! Options header (added by the kernel per socket, `IPV6_DSTOPTS`), and compares: when
//! the last answer to a PDM probe came from hop n, hop n+1 of the plain trace is the
//! likely dropper.

mod icmp;
mod probe;
mod report;
mod sock;
mod verdict;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, ToSocketAddrs as _},
    process::ExitCode,
    time::Duration,
};

pub use icmp::ReplyKind;
pub use probe::Answer;
pub use verdict::{Finding, Verdict};

/// What the probes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// UDP datagrams to a (presumably closed) port; the destination answers Port Unreachable.
    Udp,
    /// ICMPv6 Echo Requests; the destination answers Echo Reply.
    Icmp,
    /// TCP SYNs; the destination answers SYN-ACK (open port) or RST (closed).
    Tcp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Tcp => "tcp",
        }
    }
}

/// First UDP destination port, +1 per probe, as traceroute does.
pub const UDP_BASE_PORT: u16 = 33434;
/// TCP destination port unless `--port` says otherwise.
pub const TCP_DEFAULT_PORT: u16 = 80;

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// Host name or IPv6 address to trace to.
    pub host: String,
    /// Probe packets to send.
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    pub proto: Proto,
    /// Destination port: for udp the default is 33434, +1 per probe; for tcp 80. Not
    /// for icmp.
    #[arg(long)]
    pub port: Option<u16>,
    /// Highest hop limit to probe with.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..=255))]
    pub max_hops: u8,
    /// Probes per hop and trace.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub probes: u8,
    /// How long to wait for the answer to each probe (e.g. 1s, 200ms).
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse)]
    pub wait: Duration,
    /// Print addresses only: no reverse DNS lookups.
    #[arg(short = 'n', long)]
    pub numeric: bool,
    /// One JSON document instead of the text report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot resolve `{host}`: {reason}")]
    Unresolvable { host: String, reason: String },
    #[error("`{0}` has no IPv6 address")]
    NoIpv6(String),
    #[error("pdm trace needs root or CAP_NET_RAW (run with sudo)")]
    NotPermitted,
    #[error("no IPv6 route to {0}")]
    NoRoute(Ipv6Addr),
    #[error("--port does not apply to --proto icmp")]
    PortWithIcmp,
    #[error(
        "link-local targets are not supported (no interface to send from): use a global or unique-local address"
    )]
    LinkLocal,
    // Not `#[source]`: the message already ends with the cause, and anyhow's `{:#}`
    // would print it twice.
    #[error("{what}: {err}")]
    Io {
        what: &'static str,
        err: std::io::Error,
    },
}

/// One hop of one trace, all its probes together.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hop {
    /// Hop limit the probes were sent with.
    pub hop: u8,
    /// Every address that answered, in the order the answers came.
    pub responders: Vec<Ipv6Addr>,
    /// Per probe, in sending order: the round-trip time in ms, None if unanswered.
    pub rtts: Vec<Option<f64>>,
    /// The kind of the first answer.
    pub reply: Option<ReplyKind>,
    /// An answer came from the destination (or was one only it can give).
    pub reached: bool,
    /// Error replies: whether the probe they quote still carried PDM (all of them did).
    /// None when no answer quoted a probe.
    pub quoted_pdm: Option<bool>,
    /// An answer itself carried a PDM option (a PDM-speaking responder).
    pub reply_pdm: bool,
}

impl Hop {
    pub fn responder(&self) -> Option<Ipv6Addr> {
        self.responders.first().copied()
    }

    pub fn answered(&self) -> bool {
        !self.responders.is_empty()
    }

    /// RTTs of the answered probes.
    pub fn rtt_ms(&self) -> Vec<f64> {
        self.rtts.iter().flatten().copied().collect()
    }

    pub fn median_rtt_ms(&self) -> Option<f64> {
        let mut v = self.rtt_ms();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// Nothing lies beyond this hop for these probes: the destination answered, or a
    /// router said it cannot deliver.
    pub fn terminal(&self) -> bool {
        self.reached || matches!(self.reply, Some(ReplyKind::Unreachable(_)))
    }
}

/// Both traces, the verdict, and what is needed to print them.
pub struct Report {
    pub host: String,
    pub target: Ipv6Addr,
    pub source: Ipv6Addr,
    pub proto: Proto,
    /// The first destination port (udp: +1 per probe unless `--port` was given).
    pub port: Option<u16>,
    pub max_hops: u8,
    pub probes: u8,
    pub wait: Duration,
    pub plain: Vec<Hop>,
    pub pdm: Vec<Hop>,
    pub verdict: Verdict,
    /// Reverse DNS names of responders that have one.
    pub names: HashMap<Ipv6Addr, String>,
}

/// Runs both traces and prints the report (text or JSON) on stdout.
pub fn run(args: &TraceArgs) -> Result<ExitCode, TraceError> {
    if args.proto == Proto::Icmp && args.port.is_some() {
        return Err(TraceError::PortWithIcmp);
    }
    let target = resolve(&args.host)?;
    if target.is_unicast_link_local() {
        return Err(TraceError::LinkLocal);
    }
    let prober = probe::Prober::open(probe::Config {
        target,
        proto: args.proto,
        port: args.port,
        probes: args.probes,
        wait: args.wait,
    })?;
    let plain = hops(&prober.trace(false, args.max_hops)?, args.probes);
    // A probe allowed more hops than the destination is away is the same probe again:
    // the PDM trace stops where the plain one reached the destination.
    let pdm_max = plain
        .iter()
        .find(|h| h.reached)
        .map_or(args.max_hops, |h| h.hop);
    let pdm = hops(&prober.trace(true, pdm_max)?, args.probes);
    let verdict = verdict::judge(&plain, &pdm);
    let names = if args.numeric {
        HashMap::new()
    } else {
        reverse_names(plain.iter().chain(&pdm).flat_map(|h| h.responders.clone()))
    };
    let report = Report {
        host: args.host.clone(),
        target,
        source: prober.source(),
        proto: args.proto,
        port: match args.proto {
            Proto::Udp => Some(args.port.unwrap_or(UDP_BASE_PORT)),
            Proto::Tcp => Some(args.port.unwrap_or(TCP_DEFAULT_PORT)),
            Proto::Icmp => None,
        },
        max_hops: args.max_hops,
        probes: args.probes,
        wait: args.wait,
        plain,
        pdm,
        verdict,
        names,
    };
    if args.json {
        println!("{}", report::json(&report));
    } else {
        print!("{}", report::text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The address to probe: a literal (brackets allowed), or the first IPv6 address
/// getaddrinfo gives for the name, in the system's preference order.
fn resolve(host: &str) -> Result<Ipv6Addr, TraceError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(addr) = bare.parse::<Ipv6Addr>() {
        return Ok(addr);
    }
    let found = (bare, 0)
        .to_socket_addrs()
        .map_err(|e| TraceError::Unresolvable {
            host: host.to_owned(),
            reason: e.to_string(),
        })?;
    found
        .into_iter()
        .find_map(|a| match a.ip() {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        })
        .ok_or_else(|| TraceError::NoIpv6(host.to_owned()))
}

/// Groups per-probe results (hop-major, `probes` per hop) into hops, up to the first
/// terminal hop.
fn hops(results: &[probe::ProbeResult], probes: u8) -> Vec<Hop> {
    let mut out: Vec<Hop> = Vec::new();
    for chunk in results.chunks(usize::from(probes)) {
        let mut hop = Hop {
            hop: chunk[0].hop,
            ..Hop::default()
        };
        for r in chunk {
            let Some(a) = &r.answer else {
                hop.rtts.push(None);
                continue;
            };
            hop.rtts.push(Some(a.rtt.as_secs_f64() * 1000.0));
            if !hop.responders.contains(&a.from) {
                hop.responders.push(a.from);
            }
            hop.reply.get_or_insert(a.kind);
            hop.reached |= a.reached;
            hop.reply_pdm |= a.reply_pdm;
            if let Some(q) = a.quoted_pdm {
                hop.quoted_pdm = Some(hop.quoted_pdm.unwrap_or(true) && q);
            }
        }
        let terminal = hop.terminal();
        out.push(hop);
        if terminal {
            break;
        }
    }
    out
}

/// Reverse DNS for every distinct address, all at once: one slow lookup (a timeout)
/// must not add up over thirty hops.
fn reverse_names(addrs: impl Iterator<Item = Ipv6Addr>) -> HashMap<Ipv6Addr, String> {
    let mut unique: Vec<Ipv6Addr> = Vec::new();
    for a in addrs {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = unique
            .iter()
            .map(|&a| s.spawn(move || (a, crate::sys::lookup::reverse_lookup(a))))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter_map(|(a, n)| Some((a, n?)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe::ProbeResult;

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().expect("literal")
    }

    fn answered(hop: u8, from: &str, kind: ReplyKind, reached: bool) -> ProbeResult {
        ProbeResult {
            hop,
            answer: Some(Answer {
                from: addr(from),
                rtt: Duration::from_micros(1500),
                kind,
                reached,
                quoted_pdm: matches!(kind, ReplyKind::TimeExceeded).then_some(true),
                reply_pdm: false,
            }),
        }
    }

    fn lost(hop: u8) -> ProbeResult {
        ProbeResult { hop, answer: None }
    }

    #[test]
    fn groups_probes_and_stops_at_the_destination() {
        let te = ReplyKind::TimeExceeded;
        let pu = ReplyKind::Unreachable(4);
        let results = [
            answered(1, "fd::1", te, false),
            lost(1),
            answered(2, "fd::2", te, false),
            answered(2, "fd::22", te, false),
            answered(3, "fd::9", pu, true),
            lost(3),
            // Sent before the destination was known to be at hop 3.
            answered(4, "fd::9", pu, true),
            answered(4, "fd::9", pu, true),
        ];
        let h = hops(&results, 2);
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].rtts, vec![Some(1.5), None]);
        assert_eq!(h[0].quoted_pdm, Some(true));
        assert_eq!(h[1].responders, vec![addr("fd::2"), addr("fd::22")]);
        assert!(h[2].reached && h[2].terminal());
        assert_eq!(h[2].quoted_pdm, None);
        assert_eq!(h[2].median_rtt_ms(), Some(1.5));
    }

    #[test]
    fn a_router_saying_unreachable_ends_the_trace() {
        let results = [
            answered(1, "fd::1", ReplyKind::Unreachable(1), false),
            lost(2),
        ];
        let h = hops(&results, 1);
        assert_eq!(h.len(), 1);
        assert!(!h[0].reached);
    }

    #[test]
    fn resolves_literals_with_and_without_brackets() {
        assert_eq!(resolve("fd00::1").ok(), Some(addr("fd00::1")));
        assert_eq!(resolve("[fd00::1]").ok(), Some(addr("fd00::1")));
        assert!(matches!(
            resolve("192.0.2.1"),
            Err(TraceError::NoIpv6(_)) | Err(TraceError::Unresolvable { .. })
        ));
    }
}
