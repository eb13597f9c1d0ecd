//! `--filter` (which flows the view and the JSON output show) and `--only` (which
//! flows get PDM at all).
//!
//! A deliberately small language, a subset of what tcpdump users type: terms joined by
//! `and`, each of which must match. Host names are resolved once, when the filter is
//! parsed, so matching a row every refresh costs no lookup. A parsed filter is the
//! kernel's form ([`pdm_common::select`]), so both options mean exactly the same.

use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs as _};

use pdm_common::select::{
    HostKey, MAX_HOST_ADDRS, MAX_TERMS, Rules, TERM_HOST, TERM_PORT, TERM_PROTO,
};

use crate::engine::FlowRow;

/// What the error messages list as accepted.
const ACCEPTED: &str =
    "`host NAME|ADDR`, `port N`, `tcp`, `udp`, `icmp`, `proto N|NAME`, joined by `and`";

/// A parsed `--filter`; the default matches every flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    rules: Rules,
    /// The host terms' addresses.
    hosts: Vec<HostKey>,
}

/// One condition on a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    /// Either end is one of these addresses (every IPv6 address the name resolved to).
    Host(Vec<Ipv6Addr>),
    /// Either port is this one (only for protocols that have ports).
    Port(u16),
    Proto(u8),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("empty filter: expected {ACCEPTED}")]
    Empty,
    #[error("bad filter: unknown word `{0}`; accepted: {ACCEPTED}")]
    UnknownWord(String),
    #[error("bad filter: `{0}` needs {1} after it")]
    MissingArgument(&'static str, &'static str),
    #[error("bad filter: expected `and` before `{0}` (terms are joined by `and`)")]
    ExpectedAnd(String),
    #[error("bad filter: `and` must stand between two terms; accepted: {ACCEPTED}")]
    DanglingAnd,
    #[error("bad filter `port {0}`: `{0}` is not a port number (0-65535)")]
    BadPort(String),
    #[error(
        "bad filter `proto {0}`: `{0}` is not a protocol number (0-255) or one of tcp, udp, icmp"
    )]
    BadProto(String),
    #[error("bad filter `host {0}`: cannot resolve `{0}` ({1})")]
    Unresolvable(String, String),
    #[error("bad filter `host {0}`: `{0}` has no IPv6 address (pdm only sees IPv6 flows)")]
    NoIpv6(String),
    #[error("bad filter: more than {MAX_TERMS} terms; use fewer")]
    TooManyTerms,
    #[error(
        "bad filter: the host terms name more than {MAX_HOST_ADDRS} addresses together; \
         name fewer hosts"
    )]
    TooManyAddresses,
}

impl Filter {
    /// Parses e.g. `host example.org and port 443 and tcp`. Keywords are
    /// case-insensitive. Host names are resolved here (getaddrinfo), keeping only their
    /// IPv6 addresses: pdm measures IPv6 alone, so a name without one could never match.
    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        let mut words = s.split_whitespace();
        let mut terms = Vec::new();
        loop {
            let Some(word) = words.next() else {
                return Err(if terms.is_empty() {
                    FilterError::Empty
                } else {
                    FilterError::DanglingAnd
                });
            };
            terms.push(parse_term(word, &mut words)?);
            match words.next() {
                None => return Filter::compile(&terms),
                Some(w) if w.eq_ignore_ascii_case("and") || w == "&&" => {}
                Some(w) => return Err(FilterError::ExpectedAnd(w.to_owned())),
            }
        }
    }

    fn compile(terms: &[Term]) -> Result<Filter, FilterError> {
        if terms.len() > MAX_TERMS {
            return Err(FilterError::TooManyTerms);
        }
        let mut f = Filter::default();
        for (i, term) in terms.iter().enumerate() {
            let (kind, value) = match term {
                Term::Host(addrs) => {
                    f.hosts.extend(addrs.iter().map(|a| HostKey {
                        term: i as u32,
                        addr: a.octets(),
                    }));
                    (TERM_HOST, 0)
                }
                Term::Port(p) => (TERM_PORT, *p),
                Term::Proto(p) => (TERM_PROTO, u16::from(*p)),
            };
            f.rules.terms[i] = pdm_common::select::Term {
                kind,
                _pad: 0,
                value,
            };
        }
        if f.hosts.len() > MAX_HOST_ADDRS as usize {
            return Err(FilterError::TooManyAddresses);
        }
        f.rules.count = terms.len() as u32;
        Ok(f)
    }

    /// True when every term matches this flow (always, for the empty filter).
    pub fn matches(&self, row: &FlowRow) -> bool {
        if self.rules.count == 0 {
            return true; // no terms: everything (and no key to build per row)
        }
        let key = row.key();
        self.rules.selects(&key, |term, addr| {
            self.hosts.iter().any(|h| h.term == term && h.addr == *addr)
        })
    }

    /// The kernel's form: the rules and the host terms' addresses.
    pub fn kernel_form(&self) -> (Rules, &[HostKey]) {
        (self.rules, &self.hosts)
    }
}

fn parse_term<'a>(
    word: &'a str,
    rest: &mut impl Iterator<Item = &'a str>,
) -> Result<Term, FilterError> {
    let keyword = word.to_ascii_lowercase();
    if let Some(p) = proto_by_name(&keyword) {
        return Ok(Term::Proto(p));
    }
    match keyword.as_str() {
        "host" => {
            let arg = rest.next().ok_or(FilterError::MissingArgument(
                "host",
                "a name or IPv6 address",
            ))?;
            resolve(arg).map(Term::Host)
        }
        "port" => {
            let arg = rest
                .next()
                .ok_or(FilterError::MissingArgument("port", "a port number"))?;
            arg.parse()
                .map(Term::Port)
                .map_err(|_| FilterError::BadPort(arg.to_owned()))
        }
        "proto" => {
            let arg = rest.next().ok_or(FilterError::MissingArgument(
                "proto",
                "a protocol number or name",
            ))?;
            proto_by_name(&arg.to_ascii_lowercase())
                .or_else(|| arg.parse().ok())
                .map(Term::Proto)
                .ok_or_else(|| FilterError::BadProto(arg.to_owned()))
        }
        "and" | "&&" => Err(FilterError::DanglingAnd),
        _ => Err(FilterError::UnknownWord(word.to_owned())),
    }
}

/// The protocol names accepted alone and after `proto`; `icmp` means ICMPv6, the only
/// ICMP an IPv6 flow can carry.
fn proto_by_name(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" | "icmp6" | "icmpv6" => Some(58),
        _ => None,
    }
}

/// Every IPv6 address of `host`: a literal (brackets allowed) or a name looked up with
/// getaddrinfo, which returns them in the system's preference order.
fn resolve(host: &str) -> Result<Vec<Ipv6Addr>, FilterError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(addr) = bare.parse::<Ipv6Addr>() {
        return Ok(vec![addr]);
    }
    let found = (bare, 0)
        .to_socket_addrs()
        .map_err(|e| FilterError::Unresolvable(host.to_owned(), e.to_string()))?;
    let mut v6 = Vec::new();
    for a in found {
        if let IpAddr::V6(ip) = a.ip()
            && !v6.contains(&ip)
        {
            v6.push(ip);
        }
    }
    if v6.is_empty() {
        return Err(FilterError::NoIpv6(host.to_owned()));
    }
    Ok(v6)
}

/// A flow with the given 5-tuple and nothing measured yet, for this crate's tests.
#[cfg(test)]
pub(crate) fn test_row(
    proto: u8,
    local: &str,
    local_port: u16,
    remote: &str,
    remote_port: u16,
) -> FlowRow {
    use crate::engine::Summary;
    FlowRow {
        proto,
        local_addr: local.parse().expect("test address"),
        local_port,
        remote_addr: remote.parse().expect("test address"),
        remote_port,
        tx_packets: 0,
        rx_packets: 0,
        tx_bytes: 0,
        rx_bytes: 0,
        tx_pdm: 0,
        rx_pdm: 0,
        tx_pps: 0.0,
        rx_pps: 0.0,
        rtt: Summary::default(),
        rtt_all: Summary::default(),
        server_delay: Summary::default(),
        server_delay_all: Summary::default(),
        rx_lost: 0,
        rx_reordered: 0,
        rx_duplicate: 0,
        age: std::time::Duration::ZERO,
        idle: std::time::Duration::ZERO,
        closed: false,
        faults: Default::default(),
        both: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp() -> FlowRow {
        test_row(6, "fd00::1", 40000, "fd00::2", 443)
    }

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn default_matches_everything() {
        assert!(Filter::default().matches(&tcp()));
    }

    #[test]
    fn host_matches_either_end() {
        assert!(f("host fd00::1").matches(&tcp()));
        assert!(f("host fd00::2").matches(&tcp()));
        assert!(f("host [fd00::2]").matches(&tcp()));
        assert!(f("HOST fd00:0::2").matches(&tcp()));
        assert!(!f("host fd00::3").matches(&tcp()));
    }

    #[test]
    fn port_matches_either_port_of_tcp_and_udp_only() {
        assert!(f("port 443").matches(&tcp()));
        assert!(f("port 40000").matches(&tcp()));
        assert!(!f("port 80").matches(&tcp()));
        assert!(f("port 53").matches(&test_row(17, "fd00::1", 53, "fd00::2", 5353)));
        // The echo identifier of a ping is not a port.
        assert!(!f("port 443").matches(&test_row(58, "fd00::1", 443, "fd00::2", 443)));
    }

    #[test]
    fn the_kernel_form_has_room_for_eight_terms() {
        let eight = ["udp"; 8].join(" and ");
        let all_udp = f(&eight);
        let (rules, hosts) = all_udp.kernel_form();
        assert_eq!((rules.count, hosts.len()), (8, 0));
        assert_eq!(
            Filter::parse(&format!("{eight} and tcp")),
            Err(FilterError::TooManyTerms)
        );
        let host_port = f("host fd00::1 and port 443");
        let (rules, hosts) = host_port.kernel_form();
        assert_eq!(rules.count, 2);
        assert_eq!(hosts.len(), 1);
        assert_eq!((hosts[0].term, rules.terms[1].value), (0, 443));
    }

    #[test]
    fn protocols() {
        let udp = test_row(17, "fd00::1", 1, "fd00::2", 2);
        let icmp = test_row(58, "fd00::1", 7, "fd00::2", 7);
        assert!(f("tcp").matches(&tcp()) && !f("tcp").matches(&udp));
        assert!(f("udp").matches(&udp) && !f("udp").matches(&icmp));
        for s in ["icmp", "icmp6", "icmpv6", "proto 58", "proto icmp"] {
            assert!(f(s).matches(&icmp) && !f(s).matches(&tcp()), "{s}");
        }
        assert!(f("proto 17").matches(&udp));
        assert!(f("proto tcp").matches(&tcp()));
        assert!(f("proto 50").matches(&test_row(50, "fd00::1", 0, "fd00::2", 0)));
    }

    #[test]
    fn terms_joined_by_and_must_all_match() {
        let all = f("host fd00::1 and port 443 and tcp");
        assert!(all.matches(&tcp()));
        assert!(!f("host fd00::1 and port 80 and tcp").matches(&tcp()));
        assert!(!f("host fd00::1 and port 443 and udp").matches(&tcp()));
        assert!(!f("host fd00::9 && port 443").matches(&tcp()));
        assert!(f("  tcp   AND  port 443 ").matches(&tcp()));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(Filter::parse(""), Err(FilterError::Empty));
        assert_eq!(Filter::parse("   "), Err(FilterError::Empty));
        assert_eq!(
            Filter::parse("sctp"),
            Err(FilterError::UnknownWord("sctp".into()))
        );
        assert_eq!(
            Filter::parse("port x"),
            Err(FilterError::BadPort("x".into()))
        );
        assert_eq!(
            Filter::parse("port 65536"),
            Err(FilterError::BadPort("65536".into()))
        );
        assert_eq!(
            Filter::parse("proto 256"),
            Err(FilterError::BadProto("256".into()))
        );
        assert!(matches!(
            Filter::parse("port"),
            Err(FilterError::MissingArgument("port", _))
        ));
        assert!(matches!(
            Filter::parse("tcp and host"),
            Err(FilterError::MissingArgument("host", _))
        ));
        assert!(matches!(
            Filter::parse("proto"),
            Err(FilterError::MissingArgument("proto", _))
        ));
        assert_eq!(Filter::parse("tcp and"), Err(FilterError::DanglingAnd));
        assert_eq!(Filter::parse("and tcp"), Err(FilterError::DanglingAnd));
        assert_eq!(
            Filter::parse("tcp and and udp"),
            Err(FilterError::DanglingAnd)
        );
        assert_eq!(
            Filter::parse("tcp udp"),
            Err(FilterError::ExpectedAnd("udp".into()))
        );
        assert_eq!(
            Filter::parse("tcp or udp"),
            Err(FilterError::ExpectedAnd("or".into()))
        );
        assert_eq!(
            Filter::parse("host 192.0.2.1"),
            Err(FilterError::NoIpv6("192.0.2.1".into()))
        );
        assert_eq!(
            Filter::parse("port x").map_err(|e| e.to_string()),
            Err("bad filter `port x`: `x` is not a port number (0-65535)".into())
        );
        assert!(
            Filter::parse("bogus")
                .unwrap_err()
                .to_string()
                .contains("`host NAME|ADDR`")
        );
    }

    #[test]
    fn unresolvable_host_is_an_error() {
        let e = Filter::parse("host nonexistent.invalid").unwrap_err();
        assert!(
            matches!(e, FilterError::Unresolvable(ref h, _) if h == "nonexistent.invalid"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("bad filter `host nonexistent.invalid`: cannot resolve")
        );
    }

    /// Names in /etc/hosts that map to ::1 here (Debian has `ip6-localhost`; some
    /// containers have neither).
    fn hosts_names_of_loopback() -> Vec<String> {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        hosts
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()?.parse::<Ipv6Addr>().ok()? == Ipv6Addr::LOCALHOST)
                    .then(|| w.map(str::to_owned))
            })
            .flatten()
            .collect()
    }

    #[test]
    fn names_resolve_to_their_ipv6_addresses() {
        let lo = test_row(6, "::1", 1, "::1", 2);
        for name in hosts_names_of_loopback() {
            let filter = f(&format!("host {name}"));
            assert!(filter.matches(&lo), "{name}: {filter:?}");
        }
        // Without an /etc/hosts entry the literal stands in.
        assert!(f("host ::1").matches(&lo));
        assert!(!f("host ::1").matches(&tcp()));
    }

    #[test]
    fn ipv4_only_name_is_refused() {
        // `localhost` is 127.0.0.1 in every /etc/hosts; where it also has ::1 it is fine.
        match Filter::parse("host localhost") {
            Ok(filter) => assert!(filter.matches(&test_row(6, "::1", 1, "::1", 2))),
            Err(e) => assert_eq!(e, FilterError::NoIpv6("localhost".into())),
        }
    }
}
