//! Batching periods as Morpheus' control messages name them (pandas offset aliases, with
//! multiples: `D`, `1D`, `1d`, `12H`, `5min`, `W-MON`, `S`, `M`, `Y`), human durations
//! (`"60d"`, `"10s"`), and the times a control message bounds them with, all in UTC.
//!
//! Bins follow what Morpheus' file batcher gets from pandas' `resample(period)`:
//! - fixed-length periods (milliseconds, seconds, minutes, hours, days and their multiples) cut
//!   time into bins from midnight UTC of the first file's day (pandas' `origin='start_day'`), so
//!   `12H` bins start at 00:00 and 12:00 and `D` bins are UTC days;
//! - `W` weeks end on Sunday (`W-SUN`), `W-MON` on Monday, and so on; a week's bin runs from
//!   the day after the previous end day to the end day;
//! - `M` (`ME`, `MS`) are calendar months, `Y` (`A`, `YE`, `YS`, `AS`) calendar years.
//!
//! Not accepted (an error says so): business days (`B`), quarters (`Q`), multiples of weeks,
//! months or years, fractions (`1.5D`), micro- and nanoseconds, zero and negative counts.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};

/// The unit of a [`Period`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// A millisecond (`ms`, `L`).
    Millisecond,
    /// A second (`S`, `s`).
    Second,
    /// A minute (`T`, `min`).
    Minute,
    /// An hour (`H`, `h`).
    Hour,
    /// A UTC day (`D`, `d`).
    Day,
    /// A week ending on this day (`W` = `W-SUN`, `W-MON`, ...).
    Week(Weekday),
    /// A calendar month (`M`, `ME`, `MS`).
    Month,
    /// A calendar year (`Y`, `A`, `YE`, `YS`, `AS`).
    Year,
}

/// A batching period: a count of a unit (`12H` is 12 hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    /// How many units (1 for weeks, months and years).
    pub count: u32,
    /// The unit.
    pub unit: Unit,
}

impl Period {
    /// One UTC day (`D`): Morpheus' default period.
    pub const DAY: Period = Period {
        count: 1,
        unit: Unit::Day,
    };

    /// A period of one `unit`.
    pub const fn one(unit: Unit) -> Self {
        Period { count: 1, unit }
    }

    /// The length of a fixed-length period, µs (`None` for weeks, months and years).
    fn fixed_us(self) -> Option<i64> {
        let unit: i64 = match self.unit {
            Unit::Millisecond => 1_000,
            Unit::Second => 1_000_000,
            Unit::Minute => 60_000_000,
            Unit::Hour => 3_600_000_000,
            Unit::Day => 86_400_000_000,
            Unit::Week(_) | Unit::Month | Unit::Year => return None,
        };
        Some(unit * i64::from(self.count))
    }

    /// The bin of `t`, with fixed-length bins counted from `origin` (midnight UTC of the
    /// first file's day): equal bins are one batch, and consecutive bins differ by one.
    pub fn bin(self, t: DateTime<Utc>, origin: DateTime<Utc>) -> i64 {
        match (self.fixed_us(), self.unit) {
            (Some(len), _) => (t - origin)
                .num_microseconds()
                .unwrap_or(i64::MAX)
                .div_euclid(len),
            (None, Unit::Week(end)) => {
                // Days since a day that ended such a week, in whole weeks.
                let days = t.date_naive().num_days_from_ce() as i64;
                let end_from_monday = i64::from(end.num_days_from_monday());
                // num_days_from_ce(0001-01-01) = 1, a Monday.
                (days - 1 - end_from_monday + 6).div_euclid(7)
            }
            (None, Unit::Month) => i64::from(t.year()) * 12 + i64::from(t.month0()),
            (None, _) => i64::from(t.year()),
        }
    }

    /// The start of bin `bin` (see [`Period::bin`]).
    pub fn bin_start(self, bin: i64, origin: DateTime<Utc>) -> DateTime<Utc> {
        match (self.fixed_us(), self.unit) {
            (Some(len), _) => origin + Duration::microseconds(bin.saturating_mul(len)),
            (None, Unit::Week(end)) => {
                let end_from_monday = i64::from(end.num_days_from_monday());
                // Its end day is 7 * bin + 1 + end (in days from the common era).
                let first = bin * 7 + 1 + end_from_monday - 6;
                NaiveDate::from_num_days_from_ce_opt(i32::try_from(first).unwrap_or(1))
                    .map_or(origin, midnight)
            }
            (None, Unit::Month) => {
                let (y, m) = (bin.div_euclid(12), bin.rem_euclid(12) as u32 + 1);
                NaiveDate::from_ymd_opt(i32::try_from(y).unwrap_or(1970), m, 1)
                    .map_or(origin, midnight)
            }
            (None, _) => NaiveDate::from_ymd_opt(i32::try_from(bin).unwrap_or(1970), 1, 1)
                .map_or(origin, midnight),
        }
    }

    /// The end (exclusive) of bin `bin`.
    pub fn bin_end(self, bin: i64, origin: DateTime<Utc>) -> DateTime<Utc> {
        self.bin_start(bin.saturating_add(1), origin)
    }
}

/// Midnight UTC of `date`.
pub fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
}

fn weekday(text: &str) -> Option<Weekday> {
    Some(match text.to_ascii_uppercase().as_str() {
        "MON" => Weekday::Mon,
        "TUE" => Weekday::Tue,
        "WED" => Weekday::Wed,
        "THU" => Weekday::Thu,
        "FRI" => Weekday::Fri,
        "SAT" => Weekday::Sat,
        "SUN" => Weekday::Sun,
        _ => return None,
    })
}

impl FromStr for Period {
    type Err = String;

    /// A pandas offset alias with an optional count (`D`, `1D`, `12H`, `5min`, `W-MON`).
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if text.contains('.') {
            return Err(format!(
                "period {s:?} has a fraction (pandas offset aliases with a whole count: D, 12H, 5min, 30S, 500ms, W, W-MON, M, Y)"
            ));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (num, alias) = text.split_at(split);
        let alias = alias.trim();
        let bad = |why: &str| {
            format!(
                "period {s:?} {why} (pandas offset aliases with a count: D, 12H, 5min, 30S, \
                 500ms, W, W-MON, M, Y)"
            )
        };
        let count: u32 = if num.is_empty() {
            1
        } else {
            num.parse()
                .map_err(|_| bad("has a count that is not a whole number"))?
        };
        if count == 0 {
            return Err(bad("has a count of 0"));
        }
        let upper = alias.to_ascii_uppercase();
        let unit = match alias {
            "ms" | "L" => Unit::Millisecond,
            "M" | "ME" | "MS" => Unit::Month,
            _ => match upper.as_str() {
                "S" => Unit::Second,
                "T" | "MIN" => Unit::Minute,
                "H" => Unit::Hour,
                "D" => Unit::Day,
                "W" => Unit::Week(Weekday::Sun),
                "Y" | "A" | "YE" | "YS" | "AS" => Unit::Year,
                w if w.starts_with("W-") => {
                    Unit::Week(weekday(&w[2..]).ok_or_else(|| bad("names no weekday"))?)
                }
                "B" | "C" | "Q" | "QS" | "BQ" | "BM" | "BMS" | "SM" | "SMS" | "BH" => {
                    return Err(bad(
                        "is a business or quarter period, which dfp does not batch by",
                    ));
                }
                "US" | "U" | "N" | "NS" => {
                    return Err(bad("is shorter than a millisecond"));
                }
                _ => return Err(bad("is not a period dfp knows")),
            },
        };
        if count > 1 && matches!(unit, Unit::Week(_) | Unit::Month | Unit::Year) {
            return Err(bad(
                "is a multiple of weeks, months or years, which dfp does not batch by",
            ));
        }
        Ok(Period { count, unit })
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count != 1 {
            write!(f, "{}", self.count)?;
        }
        match self.unit {
            Unit::Millisecond => f.write_str("ms"),
            Unit::Second => f.write_str("S"),
            Unit::Minute => f.write_str("min"),
            Unit::Hour => f.write_str("H"),
            Unit::Day => f.write_str("D"),
            Unit::Week(Weekday::Sun) => f.write_str("W"),
            Unit::Week(d) => write!(f, "W-{}", format!("{d:?}").to_ascii_uppercase()),
            Unit::Month => f.write_str("M"),
            Unit::Year => f.write_str("Y"),
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

/// A duration >= 0 as a config writes it (`"1d"`, `"100ms"`; see [`parse_duration`]), parsed
/// when the config is read: a bad one is refused with the key's path then, not when used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Span {
    text: String,
    us: i64,
}

impl Span {
    /// The duration in µs.
    pub fn us(&self) -> i64 {
        self.us
    }

    /// The duration as a std one.
    pub fn std(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.us.unsigned_abs())
    }

    /// As written.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for Span {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let us = parse_duration(&text)?
            .num_microseconds()
            .ok_or_else(|| format!("{text:?} is too long"))?;
        if us < 0 {
            return Err(format!("{text:?} must not be negative"));
        }
        Ok(Span { text, us })
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Span::try_from(text.to_string())
    }
}

impl From<Span> for String {
    fn from(s: Span) -> String {
        s.text
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses a control message's `start_time` / `end_time`: any ISO-8601 form (`2022-08-01`,
/// `2022-01-30T10:26:00`, `2021-01-01T00:00:00Z`, with an offset), or any other form dfp reads
/// event times in ([`crate::timefmt`]); a time without an offset is UTC.
pub fn parse_date(text: &str) -> Result<DateTime<Utc>, String> {
    crate::timefmt::parse_time(text)
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| {
            format!("{text:?} is not a time like \"2022-08-01\" or \"2022-08-01T10:26:00Z\"")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The start of the bin of `s` for `period` with files from `first`.
    fn start(period: &str, s: &str, first: &str) -> DateTime<Utc> {
        let p: Period = period.parse().unwrap();
        let origin = midnight(t(first).date_naive());
        p.bin_start(p.bin(t(s), origin), origin)
    }

    #[test]
    fn bins_are_pandas_resample_bins() {
        let first = "2022-08-01T00:03:56.207Z";
        for (period, at, want) in [
            ("D", "2022-08-01T13:07:10Z", "2022-08-01T00:00:00Z"),
            ("1d", "2022-08-02T06:00:00Z", "2022-08-02T00:00:00Z"),
            ("2D", "2022-08-02T06:00:00Z", "2022-08-01T00:00:00Z"),
            ("2D", "2022-08-08T00:00:00Z", "2022-08-07T00:00:00Z"),
            ("12H", "2022-08-01T11:59:59Z", "2022-08-01T00:00:00Z"),
            ("12h", "2022-08-01T13:07:10Z", "2022-08-01T12:00:00Z"),
            ("H", "2022-08-01T13:07:10Z", "2022-08-01T13:00:00Z"),
            ("5min", "2022-08-01T11:59:59Z", "2022-08-01T11:55:00Z"),
            ("5T", "2022-08-01T13:07:10Z", "2022-08-01T13:05:00Z"),
            ("S", "2022-08-01T13:07:10.5Z", "2022-08-01T13:07:10Z"),
            ("500ms", "2022-08-01T13:07:10.7Z", "2022-08-01T13:07:10.5Z"),
            // W (W-SUN): Monday to Sunday; W-MON: Tuesday to Monday.
            ("W", "2022-08-07T10:00:00Z", "2022-08-01T00:00:00Z"),
            ("W", "2022-08-08T00:00:00Z", "2022-08-08T00:00:00Z"),
            ("W-MON", "2022-08-01T10:00:00Z", "2022-07-26T00:00:00Z"),
            ("W-MON", "2022-08-02T06:00:00Z", "2022-08-02T00:00:00Z"),
            ("W-mon", "2022-08-08T00:00:00Z", "2022-08-02T00:00:00Z"),
            ("M", "2022-08-31T23:00:00Z", "2022-08-01T00:00:00Z"),
            ("MS", "2022-09-15T00:00:00Z", "2022-09-01T00:00:00Z"),
            ("Y", "2022-09-15T00:00:00Z", "2022-01-01T00:00:00Z"),
            ("A", "2022-01-01T00:00:00Z", "2022-01-01T00:00:00Z"),
        ] {
            assert_eq!(start(period, at, first), t(want), "{period} {at}");
        }
        // 2D bins depend on the first file's day, as in pandas.
        assert_eq!(
            start("2D", "2022-08-03T01:00:00Z", "2022-08-02T05:00:00Z"),
            t("2022-08-02T00:00:00Z")
        );
    }

    #[test]
    fn consecutive_bins_are_consecutive_numbers() {
        let origin = t("2022-08-01T00:00:00Z");
        for period in ["D", "W", "W-WED", "M", "Y", "12H"] {
            let p: Period = period.parse().unwrap();
            for day in 0..400 {
                let b = p.bin(origin + Duration::days(day), origin);
                assert!(
                    p.bin_start(b, origin) <= origin + Duration::days(day),
                    "{period}"
                );
                assert!(
                    p.bin_end(b, origin) > origin + Duration::days(day),
                    "{period}"
                );
                assert_eq!(p.bin(p.bin_end(b, origin), origin), b + 1, "{period} {day}");
            }
        }
    }

    #[test]
    fn parses_aliases_and_says_which_it_does_not() {
        for (s, want) in [
            ("D", Period::DAY),
            ("1D", Period::DAY),
            (" 1 d ", Period::DAY),
            (
                "12H",
                Period {
                    count: 12,
                    unit: Unit::Hour,
                },
            ),
            (
                "5min",
                Period {
                    count: 5,
                    unit: Unit::Minute,
                },
            ),
            ("W-MON", Period::one(Unit::Week(Weekday::Mon))),
            ("S", Period::one(Unit::Second)),
            ("T", Period::one(Unit::Minute)),
            ("ME", Period::one(Unit::Month)),
            ("YS", Period::one(Unit::Year)),
            ("ms", Period::one(Unit::Millisecond)),
        ] {
            assert_eq!(s.parse::<Period>().unwrap(), want, "{s}");
            assert_eq!(want.to_string().parse::<Period>().unwrap(), want, "{s}");
        }
        for (bad, why) in [
            ("Q", "quarter"),
            ("B", "business"),
            ("2W", "multiple"),
            ("1.5D", "fraction"),
            ("0D", "count of 0"),
            ("-1D", "not a period"),
            ("day", "not a period"),
            ("", "not a period"),
            ("us", "shorter than a millisecond"),
            ("W-XYZ", "weekday"),
        ] {
            let e = bad.parse::<Period>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_durations_and_times() {
        assert_eq!(parse_duration("60d").unwrap(), Duration::days(60));
        assert_eq!(parse_duration("10s").unwrap(), Duration::seconds(10));
        assert_eq!(
            parse_duration("250ms").unwrap(),
            Duration::milliseconds(250)
        );
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("d").is_err());
        for (text, want) in [
            ("2022-08-01", "2022-08-01T00:00:00Z"),
            ("2022-01-30T10:26:00", "2022-01-30T10:26:00Z"),
            ("2021-01-01T00:00:00Z", "2021-01-01T00:00:00Z"),
            ("2022-08-01T02:00:00+02:00", "2022-08-01T00:00:00Z"),
        ] {
            assert_eq!(parse_date(text).unwrap(), t(want), "{text}");
        }
        assert!(parse_date("2022-13-01").is_err());
        assert!(parse_date("soon").unwrap_err().contains("soon"));
    }
}
