//! Calendar periods (pandas' `D`, `H`, `T`, `W`, `M`, `Y`, as Morpheus' batching options name
//! them) and human durations (`"60d"`, `"10s"`), all in UTC.
//!
//! A period floors a time to the start of the period containing it; weeks are pandas' `W`
//! (`W-SUN`: weeks end on Sunday, so they start on Monday).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};

/// A calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// A minute (`T`, also `min`).
    Minute,
    /// An hour (`H`, also `h`).
    Hour,
    /// A UTC day (`D`).
    Day,
    /// A week from Monday to Sunday (`W`, also `W-SUN`).
    Week,
    /// A calendar month (`M`, also `ME`, `MS`).
    Month,
    /// A calendar year (`Y`, also `A`, `YE`, `YS`).
    Year,
}

impl FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "T" | "min" => Period::Minute,
            "H" | "h" => Period::Hour,
            "D" | "d" => Period::Day,
            "W" | "W-SUN" => Period::Week,
            "M" | "ME" | "MS" => Period::Month,
            "Y" | "A" | "YE" | "YS" => Period::Year,
            other => {
                return Err(format!(
                    "unknown period {other:?} (expected D, H, T, W, M or Y)"
                ));
            }
        })
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Minute => "T",
            Period::Hour => "H",
            Period::Day => "D",
            Period::Week => "W",
            Period::Month => "M",
            Period::Year => "Y",
        })
    }
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
}

impl Period {
    /// The start of the period that contains `t`.
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let date = t.date_naive();
        match self {
            Period::Minute => t
                .with_second(0)
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(t),
            Period::Hour => midnight(date) + Duration::hours(i64::from(t.hour())),
            Period::Day => midnight(date),
            Period::Week => {
                midnight(date) - Duration::days(i64::from(date.weekday().num_days_from_monday()))
            }
            Period::Month => midnight(date.with_day(1).unwrap_or(date)),
            Period::Year => midnight(NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap_or(date)),
        }
    }

    /// The start of the period after the one that starts at `start` (`start` must be floored).
    pub fn next(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Period::Minute => start + Duration::minutes(1),
            Period::Hour => start + Duration::hours(1),
            Period::Day => start + Duration::days(1),
            Period::Week => start + Duration::weeks(1),
            Period::Month => {
                let d = start.date_naive();
                let (y, m) = if d.month() == 12 {
                    (d.year() + 1, 1)
                } else {
                    (d.year(), d.month() + 1)
                };
                midnight(NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d))
            }
            Period::Year => {
                let d = start.date_naive();
                midnight(NaiveDate::from_ymd_opt(d.year() + 1, 1, 1).unwrap_or(d))
            }
        }
    }
}

/// Parses a duration written as a number and a unit: `500ms`, `10s`, `5m`, `2h`, `60d`, `1w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"60d\" or \"10s\""))?;
    let d = match unit {
        "ms" => Duration::try_milliseconds(n),
        "s" => Duration::try_seconds(n),
        "m" | "min" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        "w" => Duration::try_weeks(n),
        _ => None,
    };
    d.ok_or_else(|| {
        format!("{text:?} is not a duration like \"60d\" or \"10s\" (units ms, s, m, h, d, w)")
    })
}

/// Parses a `YYYY-MM-DD` date as UTC midnight.
pub fn parse_date(text: &str) -> Result<DateTime<Utc>, String> {
    let shape_ok = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !shape_ok {
        return Err(format!("{text:?} is not a date like \"2022-08-01\""));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(midnight)
        .map_err(|_| format!("{text:?} is not a date like \"2022-08-01\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn floors_and_steps_every_period() {
        let x = t("2022-08-17T13:45:31.5Z"); // a Wednesday
        let cases = [
            (
                Period::Minute,
                "2022-08-17T13:45:00Z",
                "2022-08-17T13:46:00Z",
            ),
            (Period::Hour, "2022-08-17T13:00:00Z", "2022-08-17T14:00:00Z"),
            (Period::Day, "2022-08-17T00:00:00Z", "2022-08-18T00:00:00Z"),
            (Period::Week, "2022-08-15T00:00:00Z", "2022-08-22T00:00:00Z"),
            (
                Period::Month,
                "2022-08-01T00:00:00Z",
                "2022-09-01T00:00:00Z",
            ),
            (Period::Year, "2022-01-01T00:00:00Z", "2023-01-01T00:00:00Z"),
        ];
        for (p, floor, next) in cases {
            assert_eq!(p.floor(x), t(floor), "{p}");
            assert_eq!(p.next(p.floor(x)), t(next), "{p}");
        }
        assert_eq!(
            Period::Month.next(t("2022-12-01T00:00:00Z")),
            t("2023-01-01T00:00:00Z")
        );
        // A Sunday belongs to the week that started the Monday before.
        assert_eq!(
            Period::Week.floor(t("2022-08-21T23:00:00Z")),
            t("2022-08-15T00:00:00Z")
        );
    }

    #[test]
    fn parses_period_names() {
        for (s, p) in [
            ("D", Period::Day),
            ("T", Period::Minute),
            ("W", Period::Week),
            ("Y", Period::Year),
        ] {
            assert_eq!(s.parse::<Period>().unwrap(), p);
            assert_eq!(p.to_string().parse::<Period>().unwrap(), p);
        }
        assert!(
            "Q".parse::<Period>()
                .unwrap_err()
                .contains("unknown period")
        );
    }

    #[test]
    fn parses_durations_and_dates() {
        assert_eq!(parse_duration("60d").unwrap(), Duration::days(60));
        assert_eq!(parse_duration("10s").unwrap(), Duration::seconds(10));
        assert_eq!(
            parse_duration("250ms").unwrap(),
            Duration::milliseconds(250)
        );
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("d").is_err());
        assert_eq!(parse_date("2022-08-01").unwrap(), t("2022-08-01T00:00:00Z"));
        assert!(parse_date("2022-13-01").is_err());
        assert!(parse_date("2022-8-1").is_err());
    }
}
