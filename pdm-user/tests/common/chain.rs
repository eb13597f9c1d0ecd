//! Five test hosts in a line, client — r1 — r2 — r3 — server, each in its own
//! namespace, for traces: the routers forward and, like the server, answer with ICMPv6
//! errors without rate limit (otherwise a trace's probes go unanswered).

use super::{Netns, warm_up};

/// Each link is its own /64: fd10:1:: client—r1, fd10:2:: r1—r2, fd10:3:: r2—r3,
/// fd10:4:: r3—server. The router addresses are the ones their Time Exceeded comes
/// from: the address on the link back towards the client.
pub const CLIENT: &str = "fd10:1::1";
pub const R1: &str = "fd10:1::fe";
pub const R2: &str = "fd10:2::2";
pub const R3: &str = "fd10:3::3";
pub const SERVER: &str = "fd10:4::2";

/// Interface names: towards the client, towards the server.
const LEFT: &str = "left";
const RIGHT: &str = "right";

pub struct Chain {
    pub client: Netns,
    pub r1: Netns,
    pub r2: Netns,
    pub r3: Netns,
    pub server: Netns,
}

impl Chain {
    pub fn new(tag: &str) -> Self {
        let c = Chain {
            client: Netns::new(&format!("{tag}c")),
            r1: Netns::new(&format!("{tag}1")),
            r2: Netns::new(&format!("{tag}2")),
            r3: Netns::new(&format!("{tag}3")),
            server: Netns::new(&format!("{tag}s")),
        };
        // (left host, its address, right host, its address) per link.
        let links = [
            (&c.client, CLIENT, &c.r1, R1),
            (&c.r1, "fd10:2::1", &c.r2, R2),
            (&c.r2, "fd10:3::2", &c.r3, R3),
            (&c.r3, "fd10:4::fe", &c.server, SERVER),
        ];
        for (l, laddr, r, raddr) in links {
            l.veth(RIGHT, r, LEFT);
            l.add_addr(RIGHT, laddr, 64);
            r.add_addr(LEFT, raddr, 64);
        }
        c.client.ip(&["route", "add", "default", "via", R1]);
        c.r1.ip(&["route", "add", "default", "via", R2]);
        c.r2.ip(&["route", "add", "fd10:1::/64", "via", "fd10:2::1"]);
        c.r2.ip(&["route", "add", "fd10:4::/64", "via", R3]);
        c.r3.ip(&["route", "add", "default", "via", "fd10:3::2"]);
        c.server
            .ip(&["route", "add", "default", "via", "fd10:4::fe"]);
        for r in [&c.r1, &c.r2, &c.r3] {
            r.run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        }
        for ns in [&c.r1, &c.r2, &c.r3, &c.server] {
            ns.run("sysctl", &["-qw", "net.ipv6.icmp.ratelimit=0"]);
        }
        warm_up(&c.client, SERVER);
        c
    }

    /// r2 drops every IPv6 packet carrying a Destination Options header as it arrives,
    /// before it could answer an expiring hop limit.
    pub fn drop_dstopts_at_r2(&self) {
        nft(
            &self.r2,
            "table inet t { chain pre { type filter hook prerouting priority -300; exthdr dst exists drop; }; }",
        );
    }

    /// r2 drops packets carrying a Destination Options header only when forwarding
    /// them: a probe whose hop limit expires at r2 still gets its Time Exceeded.
    pub fn drop_dstopts_forwarded_by_r2(&self) {
        nft(
            &self.r2,
            "table inet t { chain forward { type filter hook forward priority 0; exthdr dst exists drop; }; }",
        );
    }

    /// The server silently drops everything the client sends it.
    pub fn silence_server(&self) {
        nft(
            &self.server,
            &format!(
                "table inet t {{ chain in {{ type filter hook input priority 0; ip6 saddr {CLIENT} drop; }}; }}"
            ),
        );
    }

    /// Counts, on `ns`, arriving IPv6 packets whose first header after the IPv6 header
    /// is Destination Options starting with a PDM option (type 0x0F, length 10, at
    /// octet 42): a count of what was on the wire that owes nothing to pdm's own
    /// parsing. Read with [`pdm_seen`].
    pub fn count_pdm(ns: &Netns) {
        nft(
            ns,
            "table inet count { chain pre { type filter hook prerouting priority -400; ip6 nexthdr 60 @nh,336,16 0x0f0a counter; }; }",
        );
    }
}

pub fn pdm_seen(ns: &Netns) -> u64 {
    let out = ns.run("nft", &["-j", "list", "chain", "inet", "count", "pre"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft json");
    v["nftables"]
        .as_array()
        .expect("nftables list")
        .iter()
        .flat_map(|o| o["rule"]["expr"].as_array().into_iter().flatten())
        .find_map(|e| e["counter"]["packets"].as_u64())
        .expect("a counter")
}

fn nft(ns: &Netns, ruleset: &str) {
    ns.run("nft", &[ruleset]);
}
