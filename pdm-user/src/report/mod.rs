//! `pdm report`: one self-contained HTML page from a recorded run (its NDJSON) or a
//! capture (through the analyze engine): a sortable table of the flows, and per flow
//! its RTT and server delay over time, their distribution, and loss over time.
//! Charts are SVG drawn by plotters ([`charts`]), the page is written by [`html`].

mod charts;
mod html;
mod input;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// NDJSON written by `pdm run --log` or `--json`, or capture files (pcap, pcapng).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Also write every chart as its own SVG file into DIR.
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
    /// For a capture: the interval of its points, in capture time.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse)]
    pub interval: Duration,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let rec = input::read(&args.inputs, args.interval)?;
    let charts = html::charts(&rec);
    let page = html::page(&rec, &charts);
    std::fs::write(&args.output, page)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (i, name, svg) in &charts {
            let path = dir.join(format!("flow-{i}-{name}.svg"));
            std::fs::write(&path, svg)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    eprintln!(
        "pdm report: {} flows, {} charts → {}",
        rec.flows.len(),
        charts.len(),
        args.output.display()
    );
    Ok(())
}
