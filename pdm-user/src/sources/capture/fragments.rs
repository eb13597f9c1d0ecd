//! Which flow a fragment belongs to. The ports are in a datagram's first fragment
//! only: its (source, destination, identification) is remembered as it passes, and
//! the later fragments are attributed through it. Bounded: past [`MAX_DATAGRAMS`]
//! the oldest are forgotten, and a later fragment whose first was forgotten (or never
//! captured, or came after it) is counted as unattributed, not made into a flow of
//! port 0.

use std::collections::VecDeque;

use crate::engine::FastMap;

/// Datagrams remembered at once: a reassembly queue's worth (Linux keeps at most
/// 4 MiB of fragments; 4096 datagrams of 1 KiB), far more than are in flight on any
/// one capture point at a time.
pub const MAX_DATAGRAMS: usize = 4096;

type Key = ([u8; 16], [u8; 16], u32);

/// What a datagram's first fragment said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// The first fragment's PSN, when it carried PDM.
    pub psn: Option<u16>,
}

#[derive(Default)]
pub struct Fragments {
    datagrams: FastMap<Key, Datagram>,
    order: VecDeque<Key>,
    /// Later fragments with no first fragment to attribute them to.
    pub unattributed: u64,
}

impl Fragments {
    /// A first fragment passed.
    pub fn first(&mut self, src: [u8; 16], dst: [u8; 16], id: u32, d: Datagram) {
        let key = (src, dst, id);
        if self.datagrams.insert(key, d).is_none() {
            if self.order.len() == MAX_DATAGRAMS
                && let Some(old) = self.order.pop_front()
            {
                self.datagrams.remove(&old);
            }
            self.order.push_back(key);
        }
    }

    /// The datagram a later fragment belongs to, or None (counted).
    pub fn later(&mut self, src: [u8; 16], dst: [u8; 16], id: u32) -> Option<Datagram> {
        let d = self.datagrams.get(&(src, dst, id)).copied();
        self.unattributed += u64::from(d.is_none());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_fragments_find_their_datagram_until_it_is_forgotten() {
        let mut f = Fragments::default();
        let d = Datagram {
            proto: 17,
            sport: 1,
            dport: 2,
            psn: Some(7),
        };
        f.first([1; 16], [2; 16], 0, d);
        assert_eq!(f.later([1; 16], [2; 16], 0), Some(d));
        assert_eq!(
            f.later([2; 16], [1; 16], 0),
            None,
            "the other way is another datagram"
        );
        for id in 1..=MAX_DATAGRAMS as u32 {
            f.first([1; 16], [2; 16], id, d);
        }
        assert_eq!(f.later([1; 16], [2; 16], 0), None, "the oldest went first");
        assert_eq!(f.later([1; 16], [2; 16], 1), Some(d));
        assert_eq!(f.unattributed, 2);
        assert!(f.datagrams.len() <= MAX_DATAGRAMS);
    }
}
