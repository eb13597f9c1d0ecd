//! The live view's table as plain text, for output that does not take the terminal
//! over (`pdm analyze` on a terminal): the same columns and cells, aligned.

use std::io::{self, Write};

use super::{Column, RowLabels, cells};
use crate::engine::FlowRow;

/// Writes `rows` as a table under a header line, without the process column (a
/// capture does not say which process sent a packet).
pub fn write_table(out: &mut impl Write, rows: &[FlowRow]) -> io::Result<()> {
    let columns: Vec<(usize, Column)> = Column::ALL
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, c)| c != Column::Process)
        .collect();
    let texts: Vec<[String; 11]> = rows
        .iter()
        .map(|r| cells(r, &RowLabels::default()))
        .collect();
    let width = |i: usize, c: Column| {
        texts
            .iter()
            .map(|t| t[i].chars().count())
            .chain([c.title().len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = columns.iter().map(|&(i, c)| width(i, c)).collect();
    let line = |out: &mut dyn Write, text: &dyn Fn(usize, Column) -> String| {
        let mut s = String::new();
        for (&(i, c), &w) in columns.iter().zip(&widths) {
            let t = text(i, c);
            // Endpoints and the protocol read left to right; figures line up right.
            if matches!(c, Column::Local | Column::Remote | Column::Proto) {
                s.push_str(&format!("{t:<w$}  "));
            } else {
                s.push_str(&format!("{t:>w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &|_, c| c.title().to_owned())?;
    for t in &texts {
        line(out, &|i, _| t[i].clone())?;
    }
    Ok(())
}
