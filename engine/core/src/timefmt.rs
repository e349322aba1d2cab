//! Event times written the ways pandas' `to_datetime(utc=True)` reads them for Morpheus: RFC
//! 3339 and ISO-8601 (extended or basic, `T` or a space, any fraction, `Z`, `+00:00`, `+0000`
//! or `+00`, or none: UTC), a bare date, US dates month first (`8/1/2022 12:03:56 AM`),
//! `2022/08/01 00:03` and `Aug 1 2022`. Anything else is not a time; the caller rejects it
//! with the value in the reason.
//!
//! The common forms are tried first (RFC 3339 is one `chrono` call), so logs in them cost
//! nothing more. State: none.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};

/// Microseconds since the epoch of `text`, if it is a time in a form above.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    with_offset(text)
        .or_else(|| naive(text))
        .or_else(|| basic(text))
}

/// Forms with an offset that RFC 3339 refuses: `+0000`, `+00`, a space before the time.
fn with_offset(text: &str) -> Option<i64> {
    const FORMATS: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%z",
        "%Y-%m-%d %H:%M%z",
    ];
    let fixed;
    let text = match text.as_bytes() {
        // `+00` alone: chrono's %z wants minutes too.
        [.., b'+' | b'-', h1, h2] if h1.is_ascii_digit() && h2.is_ascii_digit() => {
            fixed = format!("{text}00");
            fixed.as_str()
        }
        _ => text,
    };
    let text = text
        .strip_suffix('Z')
        .map_or_else(|| text.to_string(), |t| format!("{t}+0000"));
    FORMATS
        .iter()
        .find_map(|f| DateTime::parse_from_str(&text, f).ok())
        .map(|t| t.timestamp_micros())
}

/// Forms without an offset (UTC): ISO with `T` or a space, with or without seconds and a
/// fraction; a bare date; month-first US dates; `YYYY/MM/DD`; `Aug 1 2022`.
fn naive(text: &str) -> Option<i64> {
    const TIMES: [&str; 10] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %I:%M %p",
        "%m/%d/%Y %H:%M:%S%.f",
        "%m/%d/%Y %H:%M",
        "%Y/%m/%d %H:%M:%S%.f",
        "%Y/%m/%d %H:%M",
    ];
    const DATES: [&str; 6] = [
        "%Y-%m-%d",
        "%m/%d/%Y",
        "%Y/%m/%d",
        "%b %d %Y",
        "%b %d, %Y",
        "%B %d %Y",
    ];
    if let Some(t) = TIMES
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    {
        return Some(t.and_utc().timestamp_micros());
    }
    DATES
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(text, f).ok())
        .map(|d| d.and_time(NaiveTime::MIN).and_utc().timestamp_micros())
}

/// ISO-8601 basic form: `20220801T000356Z`, `20220801T000356.5+0200`, `20220801`.
fn basic(text: &str) -> Option<i64> {
    if !text.starts_with(|c: char| c.is_ascii_digit())
        || text.contains(['-', ':', '/']) && !text.contains('T')
    {
        return None;
    }
    if let Some(t) = text.strip_suffix('Z')
        && let Ok(t) = NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%S%.f")
    {
        return Some(t.and_utc().timestamp_micros());
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y%m%dT%H%M%S%.f%z") {
        return Some(t.timestamp_micros());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%S%.f") {
        return Some(t.and_utc().timestamp_micros());
    }
    (text.len() == 8)
        .then(|| NaiveDate::parse_from_str(text, "%Y%m%d").ok())
        .flatten()
        .map(|d| d.and_time(NaiveTime::MIN).and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn reads_what_pandas_reads_for_morpheus() {
        for (text, want) in [
            ("2022-08-01T00:03:56.207Z", "2022-08-01T00:03:56.207Z"),
            ("2022-08-01T00:03:56+0000", "2022-08-01T00:03:56Z"),
            ("2022-08-01T00:03:56+00:00", "2022-08-01T00:03:56Z"),
            ("2022-08-01T00:03:56+00", "2022-08-01T00:03:56Z"),
            ("2022-08-01 00:03:56", "2022-08-01T00:03:56Z"),
            ("2022-08-01 00:03:56Z", "2022-08-01T00:03:56Z"),
            ("8/1/2022 12:03:56 AM", "2022-08-01T00:03:56Z"),
            ("8/1/2022 1:03:56 PM", "2022-08-01T13:03:56Z"),
            ("2022-08-01", "2022-08-01T00:00:00Z"),
            ("20220801T000356Z", "2022-08-01T00:03:56Z"),
            ("20220801T020356+0200", "2022-08-01T00:03:56Z"),
            ("20220801", "2022-08-01T00:00:00Z"),
            (
                "2022-08-01T00:03:56.123456789Z",
                "2022-08-01T00:03:56.123456Z",
            ),
            ("Aug 1 2022", "2022-08-01T00:00:00Z"),
            ("2022/08/01 00:03", "2022-08-01T00:03:00Z"),
            ("2022-08-01T00:03:56-05:00", "2022-08-01T05:03:56Z"),
            ("01/08/2022", "2022-01-08T00:00:00Z"),
            ("2022-08-01T00:03", "2022-08-01T00:03:00Z"),
        ] {
            assert_eq!(parse_time(text), Some(us(want)), "{text}");
        }
        for bad in [
            "",
            "soon",
            "2022-13-01",
            "1659312236",
            "32/01/2022",
            "2022-08-01T25:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
