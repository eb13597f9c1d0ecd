//! What the sinks show beside a flow's figures: the remote end's name and the local
//! process, looked up ([`crate::sys::lookup`]) and cached per flow.

use crate::{
    engine::{self, FlowRow},
    sinks::tui::RowLabels,
    sys::lookup::Lookups,
};

/// Names and owning processes per flow, asked of [`Lookups`] again only every
/// [`LABEL_REFRESH`] reports: they rarely change, and asking for 10 000 flows every
/// second was a large part of a refresh.
#[derive(Default)]
pub struct Labels {
    cache: engine::FastMap<LabelKey, (RowLabels, u64)>,
    report: u64,
}

const LABEL_REFRESH: u64 = 5;

/// (protocol, local address, local port, remote address, remote port).
type LabelKey = (u8, [u8; 16], u16, [u8; 16], u16);

impl Labels {
    /// The labels of `rows`, in order.
    pub fn for_rows(&mut self, rows: &[FlowRow], lookups: &Lookups) -> Vec<RowLabels> {
        self.report += 1;
        let now = self.report;
        let out = rows
            .iter()
            .map(|r| {
                let key = (
                    r.proto,
                    r.local_addr.octets(),
                    r.local_port,
                    r.remote_addr.octets(),
                    r.remote_port,
                );
                let entry = self
                    .cache
                    .entry(key)
                    .or_insert_with(|| (RowLabels::default(), 0));
                if entry.1 == 0
                    || now - entry.1 >= LABEL_REFRESH
                    || entry.0.remote_name.is_none() && lookups.remote_name(r.remote_addr).is_some()
                {
                    entry.0 = RowLabels {
                        remote_name: lookups.remote_name(r.remote_addr),
                        process: lookups.process(r),
                        trend: None,
                    };
                    entry.1 = now;
                }
                entry.0.clone()
            })
            .collect();
        // Forget flows that are gone.
        self.cache.retain(|_, (_, at)| now - *at <= LABEL_REFRESH);
        out
    }
}
