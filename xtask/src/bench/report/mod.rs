//! BENCHMARKS.md from the results: [`narrative`] writes the prose (the machine and its
//! drift, the targets, where the limit is, how it was run), [`tables`] each benchmark's
//! tables; [`figures`] derives the figures both quote, [`format`] writes them.

mod figures;
mod format;
mod narrative;
mod tables;

use super::results::BenchResults;

pub fn render(r: &BenchResults) -> String {
    let mut s = String::new();
    narrative::intro(&mut s, r);
    narrative::targets(&mut s, r);
    tables::progcost(&mut s, r.progcost.as_ref());
    tables::profile(&mut s, r.progcost());
    tables::throughput(&mut s, r.throughput.as_ref());
    tables::rr(&mut s, r.rr.as_ref());
    tables::scaling(&mut s, r.scaling.as_ref());
    tables::loader(&mut s, r.loader_cpu.as_ref());
    tables::analyze(&mut s, r.analyze.as_ref());
    tables::observe(&mut s, r.observe.as_ref());
    narrative::limits(&mut s, r);
    narrative::commands(&mut s, r);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::Outcome;

    /// A run whose benchmarks failed or were not measured still renders, and says so.
    #[test]
    fn renders_without_figures() {
        let path = crate::tasks::workspace_root().join("bench-results.json");
        let text = std::fs::read_to_string(path).expect("bench-results.json");
        let mut r: BenchResults = serde_json::from_str(&text).expect("typed");
        r.progcost = Some(Outcome::Failed("no bpftool".into()));
        r.throughput = Some(Outcome::Failed("iperf3 failed three times".into()));
        (r.testrun, r.rr, r.scaling, r.loader_cpu) = (None, None, None, None);
        r.analyze = None;
        r.observe = None;
        let md = render(&r);
        assert!(md.contains("**This benchmark failed:** `no bpftool`"));
        assert!(md.contains("**This benchmark failed:** `iperf3 failed three times`"));
        assert!(md.contains("No profile (the benchmark failed)."));
        assert!(!md.contains("## UDP request/response\n\n|"));
    }
}
