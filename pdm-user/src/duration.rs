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

/// A duration of at most 1 s, or `0`, as the nearest power of two nanoseconds: its
/// log2, which the kernel shifts by. `0` (and anything under 1.5 ns) gives 0.
pub fn parse_tick_shift(s: &str) -> Result<u8, String> {
    if s == "0" {
        return Ok(0);
    }
    let d = parse(s)?;
    if d > Duration::from_secs(1) {
        return Err(format!("`{s}` is too long: at most 1s"));
    }
    let ns = d.as_nanos() as u64;
    let k = 63 - ns.leading_zeros();
    // Round up past the geometric midpoint between 2^k and 2^(k+1).
    let up = ns as f64 > (1u64 << k) as f64 * std::f64::consts::SQRT_2;
    Ok((k + u32::from(up)) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_shifts_round_to_the_nearest_power_of_two() {
        assert_eq!(parse_tick_shift("0"), Ok(0));
        assert_eq!(parse_tick_shift("1ms"), Ok(20)); // 1 048 576 ns
        assert_eq!(parse_tick_shift("0.6ms"), Ok(19)); // 524 288 ns
        assert_eq!(parse_tick_shift("1s"), Ok(30));
        assert!(parse_tick_shift("2s").unwrap_err().contains("at most 1s"));
        assert!(parse_tick_shift("-1ms").is_err());
    }

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
