//! Durations as the config file and the operator write them: humantime's forms ("30s",
//! "5m", "2h", "90d", "250ms", "1h 30m"), or a bare number of seconds ("15", "0.5"), which
//! the config has always accepted.

use std::time::Duration;

/// Longest accepted (about 31 years): a slip of the finger ("5000000d") is refused, not
/// carried into the timers.
const LONGEST: Duration = Duration::from_secs(1_000_000_000);

/// Parse a duration; the message says what was wrong and what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a duration (use e.g. \"30s\", \"5m\", \"250ms\")"))?;
        Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))?
    } else {
        humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e} (use e.g. \"30s\", \"5m\", \"250ms\")"))?
    };
    if d > LONGEST {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(d)
}
