//! A client behind one router, r1, that fans out to three branches of two routers and
//! a server each, for surveys: client — r1 — x1 — x2 — server x, for x in a, b, c.
//! Every namespace is new, with empty neighbour caches and no traffic sent: the paths
//! are cold. r1 has no default route, so a prefix outside the branches is unreachable.

use super::Netns;

pub const CLIENT: &str = "fd20:1::1";
/// r1's address towards the client, where its ICMPv6 errors come from.
pub const R1: &str = "fd20:1::fe";

/// A prefix r1 has no route to: it answers Destination Unreachable (no route).
pub const UNROUTED: &str = "fd99::1";

/// One branch: its first and second router (the addresses their errors come from) and
/// its server.
pub struct Branch {
    pub x1: Netns,
    pub x2: Netns,
    pub server: Netns,
    pub x1_addr: String,
    pub x2_addr: String,
    pub server_addr: String,
}

pub struct Fan {
    pub client: Netns,
    pub r1: Netns,
    pub a: Branch,
    pub b: Branch,
    pub c: Branch,
}

impl Fan {
    /// Every router and server but r1 answers without ICMPv6 rate limit; r1's
    /// `net.ipv6.icmp.ratelimit` is `r1_ratelimit_ms`, or the kernel's default if None.
    pub fn new(tag: &str, r1_ratelimit_ms: Option<u32>) -> Self {
        let client = Netns::new(&format!("{tag}c"));
        let r1 = Netns::new(&format!("{tag}r"));
        client.veth("right", &r1, "left");
        client.add_addr("right", CLIENT, 64);
        r1.add_addr("left", R1, 64);
        client.ip(&["route", "add", "default", "via", R1]);
        r1.run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        if let Some(ms) = r1_ratelimit_ms {
            r1.run("sysctl", &["-qw", &format!("net.ipv6.icmp.ratelimit={ms}")]);
        }
        let mut branches = ["a", "b", "c"]
            .into_iter()
            .enumerate()
            .map(|(i, x)| Branch::new(tag, x, i + 1, &r1));
        let (a, b, c) = (
            branches.next().expect("a"),
            branches.next().expect("b"),
            branches.next().expect("c"),
        );
        Fan {
            client,
            r1,
            a,
            b,
            c,
        }
    }
}

impl Branch {
    /// Branch `x`, number `i`: fd2i:1::/64 r1—x1, fd2i:2::/64 x1—x2, fd2i:3::/64
    /// x2—server; r1 routes fd2i::/16 to it.
    fn new(tag: &str, x: &str, i: usize, r1: &Netns) -> Self {
        let x1 = Netns::new(&format!("{tag}{x}1"));
        let x2 = Netns::new(&format!("{tag}{x}2"));
        let server = Netns::new(&format!("{tag}{x}s"));
        let net = |link: u8, host: u8| format!("fd2{i}:{link}::{host}");
        let links = [
            (r1, 1, &x1, "left"),
            (&x1, 2, &x2, "left"),
            (&x2, 3, &server, "left"),
        ];
        for (n, (l, link, r, riface)) in links.into_iter().enumerate() {
            let liface = if n == 0 {
                format!("to{x}")
            } else {
                "right".into()
            };
            l.veth(&liface, r, riface);
            l.add_addr(&liface, &net(link, 1), 64);
            r.add_addr(riface, &net(link, 2), 64);
        }
        r1.ip(&["route", "add", &format!("fd2{i}::/16"), "via", &net(1, 2)]);
        x1.ip(&["route", "add", "default", "via", &net(1, 1)]);
        x1.ip(&["route", "add", &format!("fd2{i}:3::/64"), "via", &net(2, 2)]);
        x2.ip(&["route", "add", "default", "via", &net(2, 1)]);
        server.ip(&["route", "add", "default", "via", &net(3, 1)]);
        for r in [&x1, &x2] {
            r.run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        }
        for ns in [&x1, &x2, &server] {
            ns.run("sysctl", &["-qw", "net.ipv6.icmp.ratelimit=0"]);
        }
        Branch {
            x1,
            x2,
            server,
            x1_addr: net(1, 2),
            x2_addr: net(2, 2),
            server_addr: net(3, 2),
        }
    }

    /// x1 drops every packet carrying a Destination Options header as it arrives.
    pub fn drop_dstopts_at_x1(&self) {
        self.x1.run(
            "nft",
            &["table inet t { chain pre { type filter hook prerouting priority -300; exthdr dst exists drop; }; }"],
        );
    }

    /// x1 drops them only when forwarding: it still answers an expiring hop limit.
    pub fn drop_dstopts_forwarded_by_x1(&self) {
        self.x1.run(
            "nft",
            &["table inet t { chain forward { type filter hook forward priority 0; exthdr dst exists drop; }; }"],
        );
    }
}
