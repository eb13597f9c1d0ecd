//! What feeds the engine ([`crate::engine`]): the kernel ([`kernel`]: `pdm run`'s RTT
//! samples and snapshots of its flow table), the passive observer ([`observer`]: the
//! figures its programs pair from both ends' PDM, and its table), and capture files
//! ([`capture`]: pcap and pcapng, several merged by time).

pub mod capture;
pub mod kernel;
pub mod observer;

use pdm_common::flow::{FlowKey, RttSample};

use crate::engine::{FlowRow, Table};

/// A source the live loop reads ([`crate::live`]): kernel programs, their sample ring
/// and their table.
pub trait LiveSource {
    /// Slots in the kernel's table: the most flows it holds at once.
    fn slots(&self) -> usize;

    /// Hands every sample waiting in the ring to `table`, and each batch of RTT and
    /// server-delay samples to `also` (an exporter); returns how many there were.
    fn drain_with(&mut self, table: &mut Table, also: impl FnMut(&[RttSample])) -> usize;

    /// Hands `table` the kernel's table now (see [`Table::refresh_rows`]); returns the
    /// flows to delete from it.
    fn refresh(
        &self,
        table: &mut Table,
        now_ns: u64,
        rows: Option<&mut Vec<FlowRow>>,
        keep: impl Fn(&FlowRow) -> bool,
    ) -> Vec<(u32, FlowKey)>;

    /// Frees the kernel's slots of the flows the engine expired.
    fn remove(&self, expired: &[(u32, FlowKey)]);
}
