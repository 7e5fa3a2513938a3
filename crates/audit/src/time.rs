//! Times as the audit trail, the CLI, certificates and exports print them:
//! RFC 3339 in UTC to the second (`2026-12-02T15:41:16Z`), through chrono.

use chrono::{DateTime, NaiveDateTime};

/// `micros` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`; a time chrono
/// cannot show (beyond ±262,000 years) as its raw microseconds.
pub fn time_text(micros: i64) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => format!("{micros}µs"),
    }
}

/// Parses unix seconds, or `YYYY-MM-DDTHH:MM:SSZ` (UTC), into microseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs.saturating_mul(1_000_000));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%SZ")
        .map(|t| t.and_utc().timestamp_micros())
        .map_err(|_| format!("{text:?}: give unix seconds or YYYY-MM-DDTHH:MM:SSZ"))
}

/// Parses a day `YYYY-MM-DD` (its midnight, UTC), or what [`parse_time`]
/// takes.
pub fn parse_day_or_time(text: &str) -> Result<i64, String> {
    match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(d) => Ok(d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp_micros())),
        Err(_) => parse_time(text)
            .map_err(|_| format!("{text:?}: give a day YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or unix seconds")),
    }
}

/// Now, in microseconds since the Unix epoch (UTC).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_and_parse_back() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_text(1_795_000_000_123_456), "2026-11-18T11:06:40Z");
        assert_eq!(time_text(-1), "1969-12-31T23:59:59Z");
        for micros in [0, 951_782_400_000_000, 1_795_000_000_000_000, -86_400_000_000] {
            assert_eq!(parse_time(&time_text(micros)), Ok(micros));
        }
        assert_eq!(parse_time("1795000000"), Ok(1_795_000_000_000_000));
        assert_eq!(parse_time("2024-02-29T12:00:00Z"), Ok(1_709_208_000_000_000));
        for bad in ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01 00:00:00", "yesterday", ""] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(time_text(i64::MIN), format!("{}µs", i64::MIN));
    }
}
