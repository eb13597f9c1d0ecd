//! A survey: many destinations traced at once (`--parallel`), each resolved on its
//! own, one row each in the order given, and a summary. A destination that cannot be
//! resolved or routed is a row saying so; the survey goes on.

use std::{
    io::{IsTerminal as _, Write as _},
    net::Ipv6Addr,
    path::Path,
    process::ExitCode,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
};

use super::{
    Report, TraceArgs, TraceError,
    names::Names,
    pace::Pacer,
    report,
    row::{self, Row},
};

/// What came of one destination.
enum Outcome {
    Traced(Box<Report>),
    Failed {
        target: Option<Ipv6Addr>,
        error: TraceError,
    },
}

pub fn run(args: &TraceArgs) -> Result<ExitCode, TraceError> {
    let hosts = hosts(args)?;
    let pacer = Pacer::new(args.pace);
    let parallel = usize::from(args.parallel).min(hosts.len());
    let bar = progress_bar(hosts.len());
    let mut names = Names::start(!args.numeric);
    let mut outcomes: Vec<Option<Outcome>> = hosts.iter().map(|_| None).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..parallel {
            let (tx, next, hosts, pacer) = (tx.clone(), &next, &hosts, &pacer);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(host) = hosts.get(i) else { break };
                    let outcome = trace_one(host, args, pacer, parallel as u32);
                    if tx.send((i, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Names are asked for as each destination is done, so that most are known by
        // the time the last trace ends.
        for (i, outcome) in rx {
            match &outcome {
                Outcome::Traced(r) => report::addresses(r).into_iter().for_each(|a| names.ask(a)),
                Outcome::Failed {
                    target: Some(t), ..
                } => names.ask(*t),
                Outcome::Failed { target: None, .. } => {}
            }
            if let Some(bar) = &bar {
                bar.inc(1);
                bar.set_message(hosts[i].clone());
            }
            outcomes[i] = Some(outcome);
        }
    });
    if let Some(bar) = &bar {
        bar.set_message("looking up names");
    }
    let names = names.finish();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let mut rows = Vec::new();
    let mut objects = Vec::new();
    for (host, outcome) in hosts.iter().zip(outcomes) {
        let (row, object) = match outcome.expect("every destination reported back") {
            Outcome::Traced(r) => {
                let row = Row::traced(&r, &names);
                let object = args.json.then(|| report::json(&r, &row, &names));
                (row, object)
            }
            Outcome::Failed { target, error } => {
                let row = Row::failed(host, target, &error, &names);
                let object = args.json.then(|| report::failed_json(&row));
                (row, object)
            }
        };
        rows.push(row);
        objects.extend(object);
    }

    let out = std::io::stdout();
    let mut out = out.lock();
    let written = if args.json {
        objects.iter().try_for_each(|o| writeln!(out, "{o}"))
    } else if args.csv {
        row::csv(&rows, &mut out).map_err(std::io::Error::from)
    } else {
        let sources: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let s = r.source.as_ref()?;
                Some(
                    r.source_name
                        .as_ref()
                        .map_or(s.clone(), |n| format!("{s} ({n})")),
                )
            })
            .fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            });
        writeln!(
            out,
            "pdm trace from {}: {}, {} hops max, {} probes per hop (+{} retries), pace {:?}, wait {:?}\n",
            if sources.is_empty() {
                "-".to_owned()
            } else {
                sources.join(", ")
            },
            args.proto.name(),
            args.max_hops,
            args.probes,
            args.retries,
            args.pace,
            args.wait
        )
        .and_then(|()| write!(out, "{}", row::table(&rows)))
        .and_then(|()| writeln!(out, "\n{}", row::summary(&rows)))
    };
    written.map_err(|err| TraceError::Io {
        what: "writing the report",
        err,
    })?;
    if args.json || args.csv {
        // stdout is for machines then; the summary is for whoever watches.
        eprintln!("{}", row::summary(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn trace_one(host: &str, args: &TraceArgs, pacer: &Pacer, parallel: u32) -> Outcome {
    let target = match super::resolve(host) {
        Ok(t) => t,
        Err(error) => {
            return Outcome::Failed {
                target: None,
                error,
            };
        }
    };
    match super::trace_target(host, target, args, pacer, parallel) {
        Ok(r) => Outcome::Traced(Box::new(r)),
        Err(error) => Outcome::Failed {
            target: Some(target),
            error,
        },
    }
}

/// The destinations: HOST arguments, then the targets file's, each once.
fn hosts(args: &TraceArgs) -> Result<Vec<String>, TraceError> {
    let mut all = args.hosts.clone();
    if let Some(path) = &args.targets {
        let text = std::fs::read_to_string(path).map_err(|err| TraceError::Targets {
            path: path.display().to_string(),
            err,
        })?;
        all.extend(parse_targets(path, &text)?);
    }
    let mut seen = std::collections::HashSet::new();
    all.retain(|h| seen.insert(h.clone()));
    Ok(all)
}

/// One host name or address per line; `#` starts a comment; blank lines are skipped.
fn parse_targets(path: &Path, text: &str) -> Result<Vec<String>, TraceError> {
    let mut hosts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if line.split_whitespace().count() > 1 {
            return Err(TraceError::TargetLine {
                path: path.display().to_string(),
                line: i + 1,
                text: line.to_owned(),
            });
        }
        hosts.push(line.to_owned());
    }
    if hosts.is_empty() {
        return Err(TraceError::NoTargets(path.display().to_string()));
    }
    Ok(hosts)
}

/// Destinations done, on stderr when it is a terminal.
fn progress_bar(len: usize) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(len as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} destinations, {elapsed} {msg}",
            )
            .expect("a valid template"),
        );
        bar
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_files_have_comments_and_blank_lines() {
        let text =
            "# the seed's sites\nexample.org\n\n  2001:db8::1  # a literal\n#\nexample.net\n";
        assert_eq!(
            parse_targets(Path::new("t"), text).expect("valid"),
            ["example.org", "2001:db8::1", "example.net"]
        );
    }

    #[test]
    fn bad_targets_files_say_where() {
        let e = parse_targets(Path::new("sites.txt"), "a.example\nb.example c.example\n")
            .expect_err("two names on a line");
        assert_eq!(
            e.to_string(),
            "sites.txt, line 2: `b.example c.example` is not one host name or address"
        );
        let e = parse_targets(Path::new("empty.txt"), "# nothing\n\n").expect_err("empty");
        assert!(e.to_string().contains("names no host"), "{e}");
    }
}
