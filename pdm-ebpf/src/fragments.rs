//! A fragment's flow. Only a datagram's first fragment carries its ports, so the first
//! leaves them in a small LRU map under (source, destination, identification), and the
//! later fragments take them from there: every fragment of a datagram counts, and
//! carries PDM numbered, in the datagram's flow. Fragments leave in order and mostly
//! arrive so; a later fragment whose first was not seen is counted and keeps ports 0.

use pdm_common::{
    counters::{Counter, Counters},
    flow::{FragKey, FragPorts},
};

use crate::{
    FRAGMENTS,
    flow::bump,
    parse::{FRAG_FIRST, FRAG_LATER, Packet},
};

#[inline(always)]
pub fn attribute(p: &mut Packet, c: Option<*mut Counters>) {
    if p.frag != FRAG_FIRST && p.frag != FRAG_LATER {
        return;
    }
    let key = FragKey {
        src: p.src,
        dst: p.dst,
        id: p.frag_id,
    };
    if p.frag == FRAG_FIRST {
        let ports = FragPorts {
            sport: p.sport,
            dport: p.dport,
        };
        // A full map evicts its least recently used datagram: nothing to handle.
        let _ = FRAGMENTS.insert(key, ports, 0);
        return;
    }
    // SAFETY: the value is copied out at once; a concurrent update is harmless.
    match unsafe { FRAGMENTS.get(key) } {
        Some(ports) => {
            p.sport = ports.sport;
            p.dport = ports.dport;
        }
        None => bump(c, Counter::FragmentsUnattributed),
    }
}
