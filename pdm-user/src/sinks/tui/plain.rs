//! The live view's table as plain text, for output that does not take the terminal
//! over (`pdm analyze` on a terminal): the same columns and cells, aligned.

use std::io::{self, Write};

use super::{Column, RowLabels, cells};
use crate::engine::FlowRow;

/// Writes `rows` as a table under a header line, without the process column (a
/// capture does not say which process sent a packet).
pub fn write_table(out: &mut impl Write, rows: &[FlowRow]) -> io::Result<()> {
    // Rows of a source seeing both ends are seen from their client.
    let client_server = rows.iter().any(|r| r.both.is_some());
    let columns: Vec<(usize, Column)> = Column::ALL
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, c)| !matches!(c, Column::Process | Column::Trend))
        .collect();
    let texts: Vec<[String; 12]> = rows
        .iter()
        .map(|r| cells(r, &RowLabels::default()))
        .collect();
    let width = |i: usize, c: Column| {
        texts
            .iter()
            .map(|t| t[i].chars().count())
            .chain([c.title_in(client_server).len()])
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
    line(out, &|_, c| c.title_in(client_server).to_owned())?;
    for t in &texts {
        line(out, &|i, _| t[i].clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::test_row;

    #[test]
    fn the_table_has_the_live_views_columns_aligned() {
        let mut a = test_row(17, "fd00::1", 40000, "fd00::2", 53);
        a.rtt.p50 = Some(1_500);
        let b = test_row(6, "fd00::1:2:3", 40001, "fd00::2", 443);
        let mut out = Vec::new();
        write_table(&mut out, &[a, b]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("LOCAL"), "{text}");
        assert!(
            lines[0].contains("RTT p50") && !lines[0].contains("PROCESS"),
            "{text}"
        );
        assert!(
            lines[1].contains("[fd00::1]:40000") && lines[1].contains("1.50µs"),
            "{text}"
        );
        // Every column starts where its title does.
        let at = lines[0].find("PROTO").unwrap();
        assert_eq!(&lines[1][at..at + 3], "udp", "{text}");
        assert_eq!(&lines[2][at..at + 3], "tcp", "{text}");
    }
}
