//! `pdm trace`: where do packets carrying PDM stop?
//!
//! Studies claim IPv6 extension headers "don't work" on the Internet. This traces the
//! path twice with hop-limited probes, once plain and once with a PDM Destination
//! Options header (added by the kernel per socket, `IPV6_DSTOPTS`), and compares: when
//! the last answer to a PDM probe came from hop n, hop n+1 of the plain trace is the
//! likely dropper.
//!
//! One destination gets the two traces side by side; many (a survey, as in the seed
//! slides' study) are traced concurrently and get one row of facts each, as a table,
//! CSV or NDJSON, and a summary.

mod icmp;
mod names;
mod pace;
mod probe;
mod report;
mod row;
mod sock;
mod survey;
mod verdict;

use std::{
    net::{IpAddr, Ipv6Addr, ToSocketAddrs as _},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
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
    /// Host names or IPv6 addresses to trace to. One gets the two traces side by side;
    /// several (or --targets, or --csv) a survey: one row per destination and a summary.
    #[arg(value_name = "HOST", required_unless_present = "targets")]
    pub hosts: Vec<String>,
    /// Also trace to every host in FILE: one name or address per line, `#` comments.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// Destinations traced at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Times a hop that answered no probe of a trace is probed again (PDM first, after
    /// a pause) before it counts as silent.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=10))]
    pub retries: u8,
    /// Probes with the same hop limit leave at least this far apart, over all
    /// destinations, so that routers' ICMPv6 rate limits do not pass for drops (0: no
    /// pacing).
    #[arg(long, default_value = "250ms", value_parser = parse_pace)]
    pub pace: Duration,
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
    /// JSON instead of the text report: one object per destination, one per line.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// One CSV row per destination (with a header line) instead of the text report.
    #[arg(long)]
    pub csv: bool,
}

fn parse_pace(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    crate::duration::parse(s)
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot resolve `{host}`: {reason}")]
    Unresolvable { host: String, reason: String },
    #[error("`{0}` has no IPv6 address (only IPv4)")]
    NoIpv6(String),
    #[error("pdm trace needs root or CAP_NET_RAW (run with sudo)")]
    NotPermitted,
    #[error("no IPv6 route to {0}")]
    NoRoute(Ipv6Addr),
    #[error("--port does not apply to --proto icmp")]
    PortWithIcmp,
    #[error("cannot read the targets file `{path}`: {err}")]
    Targets { path: String, err: std::io::Error },
    #[error("{path}, line {line}: `{text}` is not one host name or address")]
    TargetLine {
        path: String,
        line: usize,
        text: String,
    },
    #[error("the targets file `{0}` names no host (one name or address per line)")]
    NoTargets(String),
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
    /// Probes sent in retry rounds (the hop was silent after the first pass).
    pub retried: usize,
    /// Plain trace: answered a probe sent right after a PDM probe to the same hop that
    /// got no answer, which a rate limit cannot explain (the router would have answered
    /// the PDM probe first).
    pub after_silent_pdm: bool,
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
    pub retries: u8,
    pub pace: Duration,
    pub wait: Duration,
    pub plain: Vec<Hop>,
    pub pdm: Vec<Hop>,
    pub verdict: Verdict,
}

/// One HOST and nothing else: both traces side by side (or one JSON object), and bad
/// input or an unusable host is an error. Otherwise a survey.
pub fn run(args: &TraceArgs) -> Result<ExitCode, TraceError> {
    if args.proto == Proto::Icmp && args.port.is_some() {
        return Err(TraceError::PortWithIcmp);
    }
    // Without the capability nothing can be traced: say so once, not once per row.
    sock::raw_icmp_socket()?;
    if args.hosts.len() > 1 || args.targets.is_some() || args.csv {
        return survey::run(args);
    }
    let host = &args.hosts[0];
    let pacer = pace::Pacer::new(args.pace);
    let report = trace_target(host, resolve(host)?, args, &pacer, 1)?;
    let mut names = names::Names::start(!args.numeric);
    for a in report::addresses(&report) {
        names.ask(a);
    }
    let names = names.finish();
    if args.json {
        let row = row::Row::traced(&report, &names);
        println!("{}", report::json(&report, &row, &names));
    } else {
        print!("{}", report::text(&report, &names));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs both traces to `target` (`host` as given). `parallel` traces share `pacer`:
/// the safety-net deadline allows for waiting on them.
fn trace_target(
    host: &str,
    target: Ipv6Addr,
    args: &TraceArgs,
    pacer: &pace::Pacer,
    parallel: u32,
) -> Result<Report, TraceError> {
    if target.is_unicast_link_local() {
        return Err(TraceError::LinkLocal);
    }
    let pairs = u32::from(args.max_hops) * u32::from(args.probes + args.retries);
    let deadline = Instant::now()
        + (args.wait + pacer.interval() * 2 * parallel) * pairs
        + probe::RETRY_PAUSE * u32::from(args.retries)
        + Duration::from_secs(10);
    let prober = probe::Prober::open(probe::Config {
        target,
        proto: args.proto,
        port: args.port,
        max_hops: args.max_hops,
        probes: args.probes,
        retries: args.retries,
        wait: args.wait,
        deadline,
    })?;
    let probed = prober.run(pacer)?;
    let plain = hops(&probed.results, false, args.probes, probed.stop[0]);
    let pdm = hops(&probed.results, true, args.probes, probed.stop[1]);
    let verdict = verdict::judge(&plain, &pdm);
    Ok(Report {
        host: host.to_owned(),
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
        retries: args.retries,
        pace: args.pace,
        wait: args.wait,
        plain,
        pdm,
        verdict,
    })
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

/// One trace's probes (plain or `pdm`) grouped into hops 1..=`stop`, in sending
/// order, up to the first terminal hop. `probes` is the number of first-pass rounds.
fn hops(results: &[probe::ProbeResult], pdm: bool, probes: u8, stop: u8) -> Vec<Hop> {
    let mut out: Vec<Hop> = Vec::new();
    for n in 1..=stop {
        let mut hop = Hop {
            hop: n,
            ..Hop::default()
        };
        for r in results.iter().filter(|r| r.hop == n && r.pdm == pdm) {
            if r.round >= probes {
                hop.retried += 1;
            }
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
            hop.after_silent_pdm |= !pdm
                && results.iter().any(|q| {
                    q.pdm && q.hop == n && q.round == r.round && q.first && q.answer.is_none()
                });
        }
        let terminal = hop.terminal();
        out.push(hop);
        if terminal {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe::ProbeResult;

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().expect("literal")
    }

    fn answered(hop: u8, pdm: bool, round: u8, from: &str, kind: ReplyKind) -> ProbeResult {
        ProbeResult {
            hop,
            pdm,
            round,
            first: pdm == round.is_multiple_of(2),
            answer: Some(Answer {
                from: addr(from),
                rtt: Duration::from_micros(1500),
                kind,
                reached: from == "fd::9",
                quoted_pdm: matches!(kind, ReplyKind::TimeExceeded).then_some(pdm),
                reply_pdm: false,
            }),
        }
    }

    fn lost(hop: u8, pdm: bool, round: u8) -> ProbeResult {
        ProbeResult {
            hop,
            pdm,
            round,
            first: pdm == round.is_multiple_of(2),
            answer: None,
        }
    }

    #[test]
    fn groups_probes_by_trace_and_stops_at_the_destination() {
        let te = ReplyKind::TimeExceeded;
        let pu = ReplyKind::Unreachable(4);
        let results = [
            // Round 0: PDM first.
            answered(1, true, 0, "fd::1", te),
            answered(1, false, 0, "fd::1", te),
            lost(2, true, 0),
            answered(2, false, 0, "fd::2", te),
            lost(3, true, 0),
            answered(3, false, 0, "fd::9", pu),
            // Round 1: plain first.
            lost(1, false, 1),
            answered(1, true, 1, "fd::1", te),
            answered(2, false, 1, "fd::22", te),
            lost(2, true, 1),
            // Sent before the destination was known to be at hop 3.
            answered(4, false, 0, "fd::9", pu),
            // A retry (round 2), PDM first.
            lost(2, true, 2),
            answered(2, false, 2, "fd::2", te),
        ];
        let plain = hops(&results, false, 2, 3);
        assert_eq!(plain.len(), 3);
        assert_eq!(plain[0].rtts, vec![Some(1.5), None]);
        assert_eq!(plain[0].quoted_pdm, Some(false));
        assert_eq!(plain[1].responders, vec![addr("fd::2"), addr("fd::22")]);
        assert_eq!(plain[1].retried, 1);
        // Answered right after a PDM probe that was not (rounds 0 and 2).
        assert!(plain[1].after_silent_pdm);
        // Hop 1's PDM probes were answered: nothing to compare with.
        assert!(!plain[0].after_silent_pdm);
        assert!(plain[2].reached && plain[2].terminal());
        assert_eq!(plain[2].median_rtt_ms(), Some(1.5));
        let pdm = hops(&results, true, 2, 3);
        assert_eq!(pdm.len(), 3);
        assert_eq!(pdm[0].quoted_pdm, Some(true));
        assert_eq!(pdm[1].rtts, vec![None, None, None]);
        assert!(!pdm[1].answered() && !pdm[1].after_silent_pdm);
    }

    #[test]
    fn a_router_saying_unreachable_ends_the_trace() {
        let results = [
            answered(1, false, 0, "fd::1", ReplyKind::Unreachable(1)),
            lost(2, false, 0),
        ];
        let h = hops(&results, false, 1, 2);
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
