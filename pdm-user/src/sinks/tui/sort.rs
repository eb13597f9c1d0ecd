//! The order of the rows: by the chosen column, ties broken by the 5-tuple.

use super::*;

/// A column's value for sorting. `None`s go last in either direction: a flow without a
/// sample says nothing about being fast or slow.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
pub(super) enum SortKey {
    Number(Option<f64>),
    Text(Option<String>),
    Endpoint(std::net::Ipv6Addr, u16),
}

pub(super) fn sort_key(col: Column, row: &FlowRow, labels: &RowLabels) -> SortKey {
    let ns = |v: Option<u64>| SortKey::Number(v.map(|v| v as f64));
    match col {
        Column::Local => SortKey::Endpoint(row.local_addr, row.local_port),
        Column::Remote => SortKey::Endpoint(row.remote_addr, row.remote_port),
        Column::Proto => SortKey::Text(Some(row.proto_name().to_owned())),
        Column::RttP50 | Column::Trend => ns(row.rtt.p50),
        Column::RttP99 => ns(row.rtt.p99),
        Column::ServerDelayP50 => ns(row.server_delay.p50),
        Column::Loss => SortKey::Number(row.loss_percent()),
        Column::Pps => SortKey::Number(Some(row.tx_pps + row.rx_pps)),
        Column::Bytes => SortKey::Number(Some((row.tx_bytes + row.rx_bytes) as f64)),
        Column::Age => SortKey::Number(Some(row.age.as_secs_f64())),
        Column::Process => SortKey::Text(labels.process.clone()),
    }
}

pub(super) fn compare_keys(a: &SortKey, b: &SortKey, descending: bool) -> Ordering {
    let directed = |o: Ordering| if descending { o.reverse() } else { o };
    match (a, b) {
        (SortKey::Number(Some(x)), SortKey::Number(Some(y))) => directed(x.total_cmp(y)),
        (SortKey::Text(Some(x)), SortKey::Text(Some(y))) => directed(x.cmp(y)),
        (SortKey::Number(None), SortKey::Number(None))
        | (SortKey::Text(None), SortKey::Text(None)) => Ordering::Equal,
        (SortKey::Number(None), _) | (SortKey::Text(None), _) => Ordering::Greater,
        (_, SortKey::Number(None)) | (_, SortKey::Text(None)) => Ordering::Less,
        _ => directed(a.partial_cmp(b).unwrap_or(Ordering::Equal)),
    }
}

/// Indices of `frame.rows` in display order. Ties are broken by the flow's 5-tuple so
/// that rows do not swap places between refreshes.
pub fn sorted_indices(state: &ViewState, frame: &Frame) -> Vec<usize> {
    sorted_prefix(state, frame, usize::MAX)
}

/// The first `k` of [`sorted_indices`] (then the rest, unsorted): the view shows one
/// page, and partitioning around the k-th row is linear where a full sort of 10 000
/// flows every refresh was the largest part of pdm's CPU time.
pub fn sorted_prefix(state: &ViewState, frame: &Frame, k: usize) -> Vec<usize> {
    sorted_rows_prefix(state, &frame.rows, &frame.labels, k)
}

pub(super) fn sorted_rows_prefix(
    state: &ViewState,
    rows: &[FlowRow],
    labels: &[RowLabels],
    k: usize,
) -> Vec<usize> {
    let default_labels = RowLabels::default();
    let label = |i: usize| labels.get(i).unwrap_or(&default_labels);
    let keys: Vec<SortKey> = (0..rows.len())
        .map(|i| sort_key(state.sort, &rows[i], label(i)))
        .collect();
    let identity = |r: &FlowRow| {
        (
            r.local_addr,
            r.local_port,
            r.remote_addr,
            r.remote_port,
            r.proto,
        )
    };
    let cmp = |a: &usize, b: &usize| {
        compare_keys(&keys[*a], &keys[*b], state.descending)
            .then_with(|| identity(&rows[*a]).cmp(&identity(&rows[*b])))
    };
    let mut order: Vec<usize> = (0..rows.len()).collect();
    // A total order (ties broken by the 5-tuple), so an unstable sort is deterministic.
    if k < order.len() {
        order.select_nth_unstable_by(k, cmp);
        order[..k].sort_unstable_by(cmp);
    } else {
        order.sort_unstable_by(cmp);
    }
    order
}

/// An order of a frame's rows computed before drawing it ([`Ui::shown_rows`]), kept
/// so that drawing does not sort 10 000 rows a second time.
pub(super) struct Sorted {
    pub(super) sort: Column,
    pub(super) descending: bool,
    pub(super) rows: usize,
    /// The first `k` of `order` are sorted.
    pub(super) k: usize,
    pub(super) order: Vec<usize>,
}

impl Sorted {
    /// Whether this order is the one `state` asks for, over as many rows, sorted at
    /// least `k` deep.
    pub(super) fn serves(&self, state: &ViewState, rows: usize, k: usize) -> bool {
        self.sort == state.sort
            && self.descending == state.descending
            && self.rows == rows
            && self.k >= k.min(rows)
    }
}
