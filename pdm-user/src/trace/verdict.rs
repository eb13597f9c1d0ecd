//! What the two traces say together: the last hop that answered probes carrying PDM
//! (n), the plain trace's hop n+1 (the likely dropper), and how the destination's
//! answers differed. Pure: hops in, verdict out.
//!
//! A drop is only claimed on evidence that a rate limit or a moment's loss cannot
//! give: hop n+1 answered a plain probe sent right after a PDM probe to the same hop
//! that got no answer (a router with budget left answers the first probe to reach it),
//! and PDM probes to n+1 stayed silent through every retry. Anything less is
//! `inconclusive`, with the reason.

use std::net::Ipv6Addr;

use super::{Hop, ReplyKind};

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// n: the highest hop that answered a probe carrying PDM.
    pub last_pdm_hop: Option<u8>,
    pub last_pdm_responder: Option<Ipv6Addr>,
    /// What hop n answered PDM probes with.
    pub last_pdm_reply: Option<ReplyKind>,
    /// n+1 (1 when no hop answered PDM probes); None when PDM reached the destination.
    pub next_hop: Option<u8>,
    /// Who answered the plain trace at n+1.
    pub next_hop_responder: Option<Ipv6Addr>,
    /// The last hop that answered a plain probe, and who.
    pub last_plain_hop: Option<u8>,
    pub last_plain_responder: Option<Ipv6Addr>,
    pub last_plain_reply: Option<ReplyKind>,
    pub reached_plain: bool,
    pub reached_with_pdm: bool,
    /// The destination's answer to each trace.
    pub plain_destination: Option<DestinationAnswer>,
    pub pdm_destination: Option<DestinationAnswer>,
    pub finding: Finding,
    /// Why the verdict is inconclusive.
    pub why: Option<String>,
    /// Hops that answered some probes of a trace and not others: a rate limit (or loss).
    pub rate_limited_hops: Vec<u8>,
}

/// How the destination answered one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationAnswer {
    pub hop: u8,
    pub reply: ReplyKind,
    pub median_rtt_ms: Option<f64>,
    /// Its error quoted the probe with (Some(true)) or without PDM.
    pub quoted_pdm: Option<bool>,
    /// Its answer carried PDM itself.
    pub reply_pdm: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Probes carrying PDM reach the destination.
    PdmReaches,
    /// PDM probes stop answering after hop n while plain ones go on: hop n+1 (or what
    /// lies right behind it) drops them.
    DroppedAfter,
    /// Plain probes reach the destination at n+1, PDM probes get no answer from it: the
    /// destination (or a filter right in front of it) drops them.
    DestinationDrops,
    /// Hop n answered PDM probes with Destination Unreachable where plain ones went on.
    RejectedAt,
    /// PDM probes went as far as plain ones and the destination answered neither.
    NoDifference,
    /// Only PDM probes reached the destination.
    OnlyPdmReaches,
    /// Neither trace got through: a router said so (Destination Unreachable) to both.
    Unreachable,
    /// PDM probes went less far than plain ones, but the evidence does not name a hop.
    Inconclusive,
}

impl Finding {
    /// The name in JSON and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Finding::PdmReaches => "pdm_reaches",
            Finding::DroppedAfter => "dropped_after",
            Finding::DestinationDrops => "destination_drops",
            Finding::RejectedAt => "rejected_at",
            Finding::NoDifference => "no_difference",
            Finding::OnlyPdmReaches => "only_pdm_reaches",
            Finding::Unreachable => "unreachable",
            Finding::Inconclusive => "inconclusive",
        }
    }
}

pub fn judge(plain: &[Hop], pdm: &[Hop]) -> Verdict {
    let last_pdm = pdm.iter().rev().find(|h| h.answered());
    let last_plain = plain.iter().rev().find(|h| h.answered());
    let n = last_pdm.map_or(0, |h| h.hop);
    let m = last_plain.map_or(0, |h| h.hop);
    let plain_destination = destination(plain);
    let pdm_destination = destination(pdm);
    let reached_plain = plain_destination.is_some();
    let reached_with_pdm = pdm_destination.is_some();
    let next_hop = (!reached_with_pdm).then_some(n.checked_add(1)).flatten();
    let plain_next = next_hop.and_then(|k| plain.iter().find(|h| h.hop == k));

    let mut why = None;
    let finding = if reached_with_pdm {
        if reached_plain {
            Finding::PdmReaches
        } else {
            Finding::OnlyPdmReaches
        }
    } else if !reached_plain && same_unreachable(last_plain, last_pdm) {
        // One router said both cannot be delivered; the hops may differ when answers
        // to the lower hop limits were lost (its ICMPv6 budget).
        Finding::Unreachable
    } else if m == 0 && n == 0 {
        why = Some(
            "no hop answered either trace (a silent first hop, or its ICMPv6 rate limit): nothing to compare"
                .to_owned(),
        );
        Finding::Inconclusive
    } else if !reached_plain && m <= n {
        Finding::NoDifference
    } else if last_pdm.is_some_and(|h| matches!(h.reply, Some(ReplyKind::Unreachable(_)))) {
        Finding::RejectedAt
    } else {
        let k = n + 1;
        match plain_next {
            Some(h) if h.after_silent_pdm => {
                if plain_destination.as_ref().is_some_and(|d| d.hop == k) {
                    Finding::DestinationDrops
                } else {
                    Finding::DroppedAfter
                }
            }
            Some(h) if h.answered() => {
                why = Some(format!(
                    "hop {k} answered plain probes, but never one sent right after an unanswered PDM probe: that looks like a rate limit, not a drop (a longer --pace or more --retries may tell)"
                ));
                Finding::Inconclusive
            }
            _ => {
                why = Some(format!(
                    "hop {k} answered neither trace: packets carrying PDM stop after hop {n} while plain ones get to hop {m}, but the silent hop {k} hides where"
                ));
                Finding::Inconclusive
            }
        }
    };
    let mut rate_limited_hops: Vec<u8> = plain
        .iter()
        .chain(pdm)
        .filter(|h| h.answered() && h.rtts.iter().any(Option::is_none))
        .map(|h| h.hop)
        .collect();
    rate_limited_hops.sort_unstable();
    rate_limited_hops.dedup();
    Verdict {
        last_pdm_hop: last_pdm.map(|h| h.hop),
        last_pdm_responder: last_pdm.and_then(Hop::responder),
        last_pdm_reply: last_pdm.and_then(|h| h.reply),
        next_hop,
        next_hop_responder: plain_next.and_then(Hop::responder),
        last_plain_hop: last_plain.map(|h| h.hop),
        last_plain_responder: last_plain.and_then(Hop::responder),
        last_plain_reply: last_plain.and_then(|h| h.reply),
        reached_plain,
        reached_with_pdm,
        plain_destination,
        pdm_destination,
        finding,
        why,
        rate_limited_hops,
    }
}

/// Both traces ended with the same Destination Unreachable from the same router.
fn same_unreachable(plain: Option<&Hop>, pdm: Option<&Hop>) -> bool {
    match (plain, pdm) {
        (Some(p), Some(q)) => {
            matches!(p.reply, Some(ReplyKind::Unreachable(_)))
                && p.reply == q.reply
                && p.responder() == q.responder()
        }
        _ => false,
    }
}

fn destination(trace: &[Hop]) -> Option<DestinationAnswer> {
    let h = trace.iter().find(|h| h.reached)?;
    Some(DestinationAnswer {
        hop: h.hop,
        reply: h.reply?,
        median_rtt_ms: h.median_rtt_ms(),
        quoted_pdm: h.quoted_pdm,
        reply_pdm: h.reply_pdm,
    })
}

impl Verdict {
    /// One sentence: where packets carrying PDM stop, and who is likely to blame.
    pub fn summary(&self) -> String {
        let at = |hop: Option<u8>, who: Option<Ipv6Addr>| match (hop, who) {
            (Some(h), Some(w)) => format!("hop {h} ({w})"),
            (Some(h), None) => format!("hop {h}"),
            (None, _) => "no hop".to_owned(),
        };
        let last = at(self.last_pdm_hop, self.last_pdm_responder);
        let n = self.last_pdm_hop.unwrap_or(0);
        let k = self.next_hop.unwrap_or(1);
        match self.finding {
            Finding::PdmReaches => format!(
                "packets carrying PDM reach the destination{}: nothing on this path drops them",
                self.pdm_destination
                    .as_ref()
                    .map_or(String::new(), |d| format!(" (hop {})", d.hop))
            ),
            Finding::OnlyPdmReaches => {
                "only probes carrying PDM reached the destination; plain probes did not".to_owned()
            }
            Finding::NoDifference => format!(
                "neither trace reached the destination and both end at {last}: no sign that PDM is dropped"
            ),
            Finding::Unreachable => format!(
                "unreachable: neither trace got through, {} answered {}",
                at(
                    self.last_plain_hop.min(self.last_pdm_hop),
                    self.last_plain_responder
                ),
                self.last_plain_reply
                    .map_or("unreachable".to_owned(), ReplyKind::label)
            ),
            Finding::RejectedAt => format!(
                "{last} rejects packets carrying PDM ({}) while plain probes go on",
                self.last_pdm_reply.map_or(String::new(), ReplyKind::label)
            ),
            Finding::Inconclusive => format!(
                "inconclusive: {}",
                self.why
                    .as_deref()
                    .unwrap_or("the traces do not name a hop")
            ),
            Finding::DestinationDrops => format!(
                "dropped after hop {n}: packets carrying PDM last answered at {last}; hop {k} is the destination itself: it (or a filter right in front of it) drops them"
            ),
            Finding::DroppedAfter => {
                let first = if self.last_pdm_hop.is_none() {
                    "no hop answered probes carrying PDM".to_owned()
                } else {
                    format!("packets carrying PDM last answered at {last}")
                };
                let dropper = self
                    .next_hop_responder
                    .map_or(String::new(), |r| format!(" is {r}"));
                format!(
                    "dropped after hop {n}: {first}; hop {k} on the plain trace{dropper}: the likely dropper (or hop {n} itself, if it drops only what it forwards)"
                )
            }
        }
    }

    /// How the destination answered each trace, and how the answers differed.
    pub fn destination_line(&self) -> String {
        let describe = |d: &DestinationAnswer| {
            let rtt = d
                .median_rtt_ms
                .map_or(String::new(), |r| format!(", median {r:.3} ms"));
            format!("{} at hop {}{rtt}", d.reply.label(), d.hop)
        };
        match (&self.plain_destination, &self.pdm_destination) {
            (Some(p), Some(q)) => {
                let mut s = format!(
                    "reached by both: plain {}; with PDM {}",
                    describe(p),
                    describe(q)
                );
                if p.reply != q.reply || p.hop != q.hop {
                    s.push_str(" (a different answer)");
                }
                match q.quoted_pdm {
                    Some(true) => s.push_str("; its error quotes our PDM header intact"),
                    Some(false) => {
                        s.push_str("; its error quotes the probe without PDM (removed on the way)")
                    }
                    None => {}
                }
                if q.reply_pdm {
                    s.push_str("; its answer carried PDM of its own");
                }
                s
            }
            (Some(p), None) => format!(
                "reached without PDM ({}), not with PDM: the destination never answered probes carrying PDM",
                describe(p)
            ),
            (None, Some(q)) => format!("reached only with PDM ({})", describe(q)),
            (None, None) => "not reached by either trace".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().expect("literal")
    }

    fn hop(n: u8, who: &str, reply: ReplyKind, reached: bool) -> Hop {
        Hop {
            hop: n,
            responders: vec![a(who)],
            rtts: vec![Some(1.0), Some(2.0), Some(3.0)],
            reply: Some(reply),
            reached,
            quoted_pdm: Some(true),
            // Plain probes sent right after silent PDM ones got answers (for PDM hops it
            // means nothing).
            after_silent_pdm: true,
            ..Hop::default()
        }
    }

    fn silent(n: u8) -> Hop {
        Hop {
            hop: n,
            rtts: vec![None; 3],
            ..Hop::default()
        }
    }

    const TE: ReplyKind = ReplyKind::TimeExceeded;
    const PU: ReplyKind = ReplyKind::Unreachable(4);

    fn path() -> Vec<Hop> {
        vec![
            hop(1, "fd::1", TE, false),
            hop(2, "fd::2", TE, false),
            hop(3, "fd::3", TE, false),
            hop(4, "fd::9", PU, true),
        ]
    }

    #[test]
    fn a_router_dropping_pdm_is_hop_n_plus_1() {
        let pdm = vec![hop(1, "fd::1", TE, false), silent(2), silent(3), silent(4)];
        let v = judge(&path(), &pdm);
        assert_eq!(v.last_pdm_hop, Some(1));
        assert_eq!(v.last_pdm_responder, Some(a("fd::1")));
        assert_eq!(v.next_hop, Some(2));
        assert_eq!(v.next_hop_responder, Some(a("fd::2")));
        assert!(v.reached_plain && !v.reached_with_pdm);
        assert_eq!(v.finding, Finding::DroppedAfter);
        assert!(
            v.summary().contains("hop 2 on the plain trace is fd::2"),
            "{}",
            v.summary()
        );
        assert!(
            v.destination_line()
                .starts_with("reached without PDM (port-unreachable at hop 4")
        );
    }

    #[test]
    fn a_clean_path() {
        let v = judge(&path(), &path());
        assert_eq!(v.finding, Finding::PdmReaches);
        assert_eq!(v.last_pdm_hop, Some(4));
        assert_eq!(v.last_pdm_responder, Some(a("fd::9")));
        assert_eq!(v.next_hop, None);
        assert_eq!(v.next_hop_responder, None);
        assert!(v.reached_plain && v.reached_with_pdm);
        assert!(v.summary().contains("reach the destination (hop 4)"));
        let d = v.destination_line();
        assert!(d.starts_with("reached by both"), "{d}");
        assert!(!d.contains("different"), "{d}");
        assert!(d.contains("quotes our PDM header intact"), "{d}");
    }

    #[test]
    fn nothing_answers_pdm() {
        let pdm = vec![silent(1), silent(2), silent(3), silent(4)];
        let v = judge(&path(), &pdm);
        assert_eq!(v.last_pdm_hop, None);
        assert_eq!(v.last_pdm_responder, None);
        assert_eq!(v.next_hop, Some(1));
        assert_eq!(v.next_hop_responder, Some(a("fd::1")));
        assert!(
            v.summary()
                .starts_with("dropped after hop 0: no hop answered"),
            "{}",
            v.summary()
        );
    }

    #[test]
    fn the_destination_drops_pdm() {
        let mut pdm = path();
        pdm[3] = silent(4);
        let v = judge(&path(), &pdm);
        assert_eq!(v.finding, Finding::DestinationDrops);
        assert_eq!(v.next_hop, Some(4));
        assert_eq!(v.next_hop_responder, Some(a("fd::9")));
    }

    #[test]
    fn a_silent_destination_is_no_difference() {
        let mut plain = path();
        plain[3] = silent(4);
        plain.push(silent(5));
        let v = judge(&plain, &plain.clone());
        assert_eq!(v.finding, Finding::NoDifference);
        assert_eq!(v.last_pdm_hop, Some(3));
        assert_eq!(v.next_hop, Some(4));
        assert_eq!(v.next_hop_responder, None);
        assert!(!v.reached_plain && !v.reached_with_pdm);
        assert_eq!(v.destination_line(), "not reached by either trace");
    }

    #[test]
    fn a_router_rejecting_pdm() {
        let pdm = vec![
            hop(1, "fd::1", TE, false),
            hop(2, "fd::2", ReplyKind::Unreachable(1), false),
        ];
        let v = judge(&path(), &pdm);
        assert_eq!(v.finding, Finding::RejectedAt);
        assert_eq!(v.last_pdm_responder, Some(a("fd::2")));
        assert!(
            v.summary().contains("hop 2 (fd::2) rejects"),
            "{}",
            v.summary()
        );
    }

    #[test]
    fn a_different_answer_from_the_destination() {
        let mut pdm = path();
        pdm[3] = hop(4, "fd::9", ReplyKind::ParamProblem(2), true);
        pdm[3].quoted_pdm = Some(false);
        let v = judge(&path(), &pdm);
        assert_eq!(v.finding, Finding::PdmReaches);
        let d = v.destination_line();
        assert!(d.contains("a different answer"), "{d}");
        assert!(d.contains("without PDM"), "{d}");
    }

    #[test]
    fn a_hop_answering_neither_trace_is_inconclusive() {
        let mut plain = path();
        plain[1] = silent(2);
        let pdm = vec![hop(1, "fd::1", TE, false), silent(2), silent(3), silent(4)];
        let v = judge(&plain, &pdm);
        assert_eq!(v.finding, Finding::Inconclusive);
        assert_eq!(v.next_hop, Some(2));
        assert_eq!(v.next_hop_responder, None);
        let why = v.why.clone().expect("a reason");
        assert!(why.starts_with("hop 2 answered neither trace"), "{why}");
        assert!(
            v.summary().starts_with("inconclusive: hop 2"),
            "{}",
            v.summary()
        );
    }

    #[test]
    fn plain_answers_only_before_pdm_probes_look_rate_limited() {
        let mut plain = path();
        // Hop 2 answered plain probes, but only those sent before their PDM partner.
        plain[1].after_silent_pdm = false;
        plain[1].rtts = vec![Some(1.0), None, None];
        let pdm = vec![hop(1, "fd::1", TE, false), silent(2), silent(3), silent(4)];
        let v = judge(&plain, &pdm);
        assert_eq!(v.finding, Finding::Inconclusive);
        assert!(v.why.as_deref().is_some_and(|w| w.contains("rate limit")));
        assert_eq!(v.rate_limited_hops, [2]);
    }

    #[test]
    fn a_router_without_a_route_makes_both_unreachable() {
        let no_route = ReplyKind::Unreachable(0);
        let plain = vec![hop(1, "fd::1", no_route, false)];
        let v = judge(&plain, &plain.clone());
        assert_eq!(v.finding, Finding::Unreachable);
        assert!(!v.reached_plain && !v.reached_with_pdm);
        assert_eq!(v.last_plain_hop, Some(1));
        assert_eq!(v.last_plain_responder, Some(a("fd::1")));
        assert_eq!(
            v.summary(),
            "unreachable: neither trace got through, hop 1 (fd::1) answered no-route"
        );
    }

    #[test]
    fn the_same_router_saying_no_route_at_different_hops_is_unreachable() {
        let no_route = ReplyKind::Unreachable(0);
        // Plain answers to hop limits 1 and 2 lost to r1's rate limit; its no-route
        // came for hop limit 3.
        let plain = vec![silent(1), silent(2), hop(3, "fd::1", no_route, false)];
        let pdm = vec![hop(1, "fd::1", no_route, false)];
        let v = judge(&plain, &pdm);
        assert_eq!(v.finding, Finding::Unreachable);
        assert!(
            v.summary().contains("hop 1 (fd::1) answered no-route"),
            "{}",
            v.summary()
        );
        // Rejected: only when the plain trace got past the router rejecting PDM.
        let plain = vec![hop(1, "fd::1", TE, false), hop(2, "fd::2", no_route, false)];
        let pdm = vec![hop(1, "fd::1", ReplyKind::Unreachable(1), false)];
        assert_eq!(judge(&plain, &pdm).finding, Finding::RejectedAt);
    }

    #[test]
    fn no_answer_at_all_is_inconclusive() {
        let v = judge(&[silent(1), silent(2)], &[silent(1), silent(2)]);
        assert_eq!(v.finding, Finding::Inconclusive);
        assert!(
            v.why
                .as_deref()
                .is_some_and(|w| w.starts_with("no hop answered either"))
        );
    }

    #[test]
    fn hops_answering_some_probes_and_not_others_are_listed() {
        let mut plain = path();
        plain[0].rtts = vec![Some(1.0), None, Some(1.0)];
        let mut pdm = path();
        pdm[2].rtts = vec![None, None, Some(1.0)];
        let v = judge(&plain, &pdm);
        assert_eq!(v.finding, Finding::PdmReaches);
        assert_eq!(v.rate_limited_hops, [1, 3]);
    }
}
