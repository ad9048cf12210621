//! Text and JSON output of the admin commands.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("--output/TRUSTMESH_OUTPUT: {other:?} is not text or json")),
        }
    }

    /// Prints `value` as JSON, or the text `render` makes of it.
    pub fn print<T: Serialize>(self, value: &T, render: impl FnOnce(&T) -> String) {
        match self {
            Self::Json => match serde_json::to_string_pretty(value) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot encode output: {e}"),
            },
            Self::Text => print!("{}", render(value)),
        }
    }
}

/// RFC 3339 UTC of unix seconds.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Whole days from `now` to `unix` (negative when past).
pub fn days_left(unix: i64) -> i64 {
    (unix - time::OffsetDateTime::now_utc().unix_timestamp()).div_euclid(86_400)
}

/// Parses `90s`, `30m`, `1h`, `7d`, `1w` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len()));
    let n: f64 = num.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return Err(format!("{text:?} has an unknown unit (use s, m, h, d or w)")),
    };
    let secs = n * mult;
    if !(0.0..=3.2e9).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(secs.round() as i64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("0.5h").unwrap(), 1800);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("-5s").is_err());
    }
}
