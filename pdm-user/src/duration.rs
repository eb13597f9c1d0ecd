//! Durations on the command line: `500ms`, `10s`, `5m`, `1h`, or a bare number of
//! seconds. Shared by every subcommand so they all accept and reject the same spellings.

use std::time::Duration;

/// Parses a positive duration; the error is the whole message clap shows.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("`{s}` is not a duration: use a number with ms, s, m or h (e.g. 500ms, 10s)");
    if s.starts_with('-') {
        return Err(format!(
            "`{s}` is not a duration: it must be positive (e.g. 500ms, 10s)"
        ));
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if secs == 0.0 {
        return Err(format!(
            "`{s}` is not a duration pdm can use: it must be more than zero (e.g. 500ms, 10s)"
        ));
    }
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_zero_and_nonsense() {
        for s in ["0s", "0", "", "soon", "10x", "-1s", "1e99s", "ms"] {
            let e = parse(s).expect_err(s);
            assert!(e.contains("is not a duration"), "{s}: {e}");
        }
    }
}
