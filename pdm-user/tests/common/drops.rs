//! Random drops by nftables, each rule with a counter named by its comment: what a loss
//! test holds pdm's counts against.

use serde_json::Value;

use super::Netns;

/// The table [`drop_percent`] puts its rules in.
pub const TABLE: &str = "pdmdrop";

fn nft(ns: &Netns, cmd: &str) {
    ns.run("nft", &cmd.split(' ').collect::<Vec<_>>());
}

/// Drops `percent` of the packets `ns` forwards that match `matcher` (nft syntax),
/// counted under `name`.
pub fn drop_percent(ns: &Netns, name: &str, matcher: &str, percent: u32) {
    nft(ns, &format!("add table inet {TABLE}"));
    nft(
        ns,
        &format!("add chain inet {TABLE} forward {{ type filter hook forward priority 0 ; }}"),
    );
    nft(
        ns,
        &format!(
            "add rule inet {TABLE} forward {matcher} numgen random mod 100 lt {percent} counter drop comment {name}"
        ),
    );
}

/// No more drops in `ns` (the counters go with the rules: read them first).
pub fn stop_dropping(ns: &Netns) {
    nft(ns, &format!("flush chain inet {TABLE} forward"));
}

/// Packets the rules named `name` in `table` of `ns` dropped.
pub fn dropped(ns: &Netns, table: &str, name: &str) -> u64 {
    let out = ns.run("nft", &["-j", "list", "table", "inet", table]);
    let v: Value = serde_json::from_str(&out).expect("nft json");
    v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter(|o| o["rule"]["comment"] == name)
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}
