//! Converting the values found in a record into typed cells: timestamps (ISO-8601 or epoch
//! seconds), strings under Morpheus' missing-string rule ("nan" for missing, "None" for null),
//! integers, floats, mapped booleans, concatenated and version-stripped columns, and the
//! derived event id of a record that has none. Each failure is a reason naming what was found.

use std::borrow::Cow;

use dfp_core::schema::{ColumnSpec, ColumnType, MISSING_STRING, NULL_STRING, TimestampFormat};
use dfp_core::timefmt::parse_time;

/// A value found at one path of one record, before conversion.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw<'a> {
    Missing,
    Null,
    Str(Cow<'a, str>),
    /// A JSON number, as text.
    Num(Cow<'a, str>),
    Bool(bool),
    /// An object or array, named for error messages.
    Composite(&'static str),
}

/// One converted value, ready to append.
#[derive(Debug)]
pub(crate) enum Cell<'a> {
    Str(Cow<'a, str>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
}

pub(crate) fn describe(raw: &Raw<'_>) -> String {
    match raw {
        Raw::Missing => "missing".to_string(),
        Raw::Null => "null".to_string(),
        Raw::Str(s) => format!("the string {s:?}"),
        Raw::Num(n) => format!("the number {n}"),
        Raw::Bool(b) => format!("the boolean {b}"),
        Raw::Composite(what) => (*what).to_string(),
    }
}

/// Microseconds since the epoch from epoch seconds written as a number.
fn parse_epoch_seconds(text: &str) -> Option<i64> {
    const LIMIT: f64 = 1.0e11; // about year 5138: beyond that it is not epoch seconds
    if let Ok(s) = text.trim().parse::<i64>() {
        return (s.unsigned_abs() < LIMIT as u64).then_some(s * 1_000_000);
    }
    let s = text.trim().parse::<f64>().ok()?;
    (s.is_finite() && s.abs() < LIMIT).then(|| (s * 1.0e6).round() as i64)
}

pub(crate) fn convert_timestamp(
    raw: &Raw<'_>,
    format: TimestampFormat,
) -> std::result::Result<i64, String> {
    let parsed = match (raw, format) {
        (Raw::Str(s), TimestampFormat::Iso8601) => parse_time(s),
        (Raw::Num(n) | Raw::Str(n), TimestampFormat::EpochSeconds) => parse_epoch_seconds(n),
        (Raw::Num(n), TimestampFormat::Auto) => parse_epoch_seconds(n),
        (Raw::Str(s), TimestampFormat::Auto) => parse_time(s).or_else(|| parse_epoch_seconds(s)),
        _ => None,
    };
    parsed.ok_or_else(|| {
        let want = match format {
            TimestampFormat::Auto => "an ISO-8601 time or epoch seconds",
            TimestampFormat::Iso8601 => "an ISO-8601 time",
            TimestampFormat::EpochSeconds => "epoch seconds",
        };
        format!("is {}, expected {want}", describe(raw))
    })
}

/// A string column's value: Morpheus' missing-string rule, numbers and booleans as text.
pub(crate) fn convert_string<'a>(raw: &Raw<'a>) -> std::result::Result<Cow<'a, str>, String> {
    match raw {
        Raw::Missing => Ok(Cow::Borrowed(MISSING_STRING)),
        Raw::Null => Ok(Cow::Borrowed(NULL_STRING)),
        Raw::Str(s) => Ok(s.clone()),
        Raw::Num(n) => Ok(n.clone()),
        Raw::Bool(true) => Ok(Cow::Borrowed("True")),
        Raw::Bool(false) => Ok(Cow::Borrowed("False")),
        Raw::Composite(_) => Err(format!("is {}, expected a string", describe(raw))),
    }
}

/// The event id of a record that has none: `dfp-` and a 64-bit hash of every value dfp read
/// from it (time, user and every column's fields, each with its JSON type), so the same record
/// always gets the same id, in any file or message. The prefix says the id was derived.
pub(crate) fn derived_event_id(raws: &[Raw<'_>]) -> String {
    let mut bytes = Vec::with_capacity(256);
    for raw in raws {
        let (tag, text): (u8, &str) = match raw {
            Raw::Missing => (0, ""),
            Raw::Null => (1, ""),
            Raw::Str(s) => (2, s),
            Raw::Num(n) => (3, n),
            Raw::Bool(true) => (4, ""),
            Raw::Bool(false) => (5, ""),
            Raw::Composite(what) => (6, what),
        };
        bytes.push(tag);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(0xff);
    }
    format!("dfp-{:016x}", dfp_core::hash::fnv1a64(&bytes))
}

/// The event id: none when missing or null, text otherwise.
pub(crate) fn convert_key<'a>(raw: &Raw<'a>) -> std::result::Result<Option<Cow<'a, str>>, String> {
    match raw {
        Raw::Missing | Raw::Null => Ok(None),
        other => convert_string(other).map(Some),
    }
}

/// `text` without its trailing words that start with a digit ("Chrome 117.0.5938" -> "Chrome");
/// a text that is only a version stays whole.
fn without_version(text: &str) -> &str {
    let mut kept = text.trim_end();
    while let Some((head, last)) = kept.rsplit_once(' ') {
        if !last.starts_with(|c: char| c.is_ascii_digit()) || head.trim_end().is_empty() {
            break;
        }
        kept = head.trim_end();
    }
    kept
}

pub(crate) fn convert_column<'a>(
    c: &ColumnSpec,
    raws: &[Raw<'a>],
) -> std::result::Result<Cell<'a>, String> {
    let first = raws.first().unwrap_or(&Raw::Missing);
    match c.ty {
        ColumnType::String if raws.len() == 1 && c.strip_version => {
            let text = convert_string(first)?;
            let kept = without_version(&text);
            Ok(Cell::Str(if kept.len() == text.len() {
                text
            } else {
                Cow::Owned(kept.to_string())
            }))
        }
        ColumnType::String if raws.len() == 1 => convert_string(first).map(Cell::Str),
        ColumnType::String => {
            let mut joined = String::new();
            for (i, part) in raws.iter().enumerate() {
                if i > 0 {
                    joined.push_str(&c.separator);
                }
                joined.push_str(&convert_string(part)?);
            }
            Ok(Cell::Str(Cow::Owned(joined)))
        }
        ColumnType::Int => match first {
            Raw::Missing | Raw::Null => Ok(Cell::Int(None)),
            Raw::Num(t) | Raw::Str(t) => parse_int(t).map(|v| Cell::Int(Some(v))),
            other => Err(format!("is {}, expected an integer", describe(other))),
        },
        ColumnType::Float => match first {
            Raw::Missing | Raw::Null => Ok(Cell::Float(None)),
            Raw::Num(t) | Raw::Str(t) => parse_float(t).map(|v| Cell::Float(Some(v))),
            other => Err(format!("is {}, expected a number", describe(other))),
        },
        ColumnType::Bool => convert_bool(c, first).map(Cell::Bool),
    }
}

fn parse_int(text: &str) -> std::result::Result<i64, String> {
    let t = text.trim();
    t.parse::<i64>().or_else(|_| match t.parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(format!("is {t:?}, expected an integer")),
    })
}

fn parse_float(text: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    t.parse::<f64>()
        .map_err(|_| format!("is {t:?}, expected a number"))
}

fn convert_bool(c: &ColumnSpec, raw: &Raw<'_>) -> std::result::Result<Option<bool>, String> {
    let mapped = !c.true_values.is_empty() || !c.false_values.is_empty();
    match raw {
        Raw::Bool(b) => Ok(Some(*b)),
        Raw::Str(s) | Raw::Num(s) if mapped => {
            if c.true_values.iter().any(|v| v == s) {
                Ok(Some(true))
            } else if c.false_values.iter().any(|v| v == s) {
                Ok(Some(false))
            } else {
                c.otherwise
                    .map(Some)
                    .ok_or_else(|| format!("is {}, which no true/false value maps", describe(raw)))
            }
        }
        Raw::Str(s) => match s.as_ref() {
            "true" | "True" | "TRUE" => Ok(Some(true)),
            "false" | "False" | "FALSE" => Ok(Some(false)),
            _ => Err(format!("is {}, expected a boolean", describe(raw))),
        },
        Raw::Missing | Raw::Null => Ok(c.missing.or(c.otherwise)),
        other => c
            .otherwise
            .map(Some)
            .ok_or_else(|| format!("is {}, expected a boolean", describe(other))),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::AsArray;

    use super::*;
    use crate::InputFormat;
    use crate::tests::{AZURE_OK, micros, reader, strings};

    #[test]
    fn versions_are_stripped_only_from_trailing_numeric_words() {
        assert_eq!(without_version("Chrome 117.0.5938"), "Chrome");
        assert_eq!(without_version("Chrome Mobile 118.0 12"), "Chrome Mobile");
        assert_eq!(without_version("Rich Client 4.45.0.0"), "Rich Client");
        assert_eq!(without_version("Safari"), "Safari");
        assert_eq!(without_version("117.0"), "117.0");
        assert_eq!(
            without_version("Office 365 SharePoint"),
            "Office 365 SharePoint"
        );
    }

    #[test]
    fn azure_fixture_record_reads_with_derived_columns() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/morpheus/records/azure_ad_example_record.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let r = reader("azure").read_bytes(&path, &bytes, InputFormat::Auto);
        assert!(r.broken.is_none() && r.rejected.is_empty(), "{r:?}");
        let b = &r.batch;
        assert_eq!(b.num_rows(), 1);
        assert_eq!(strings(b, "username"), [Some("tprice@domain.com".into())]);
        assert_eq!(
            strings(b, "event_id"),
            [Some("df70b726-7756-4baa-9a7d-5ac965198e00".into())]
        );
        assert_eq!(strings(b, "location"), [Some("Littlemouth, XN".into())]);
        assert_eq!(
            strings(b, "deviceDetailbrowser"),
            [Some("Edge 118.12158".into())]
        );
        assert_eq!(
            strings(b, "statusfailureReason"),
            [Some(
                "External security challenge was not satisfied.".into()
            )]
        );
        assert_eq!(micros(b), [1_659_312_236_207_532]);
    }

    #[test]
    fn duo_fixture_record_maps_result_and_epoch_time() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/morpheus/records/duo_auth_example_record.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let r = reader("duo").read_bytes(&path, &bytes, InputFormat::Auto);
        assert!(r.broken.is_none() && r.rejected.is_empty(), "{r:?}");
        let b = &r.batch;
        assert_eq!(
            strings(b, "location"),
            [Some("Ann Arbor, Michigan, United States".into())]
        );
        assert_eq!(
            strings(b, "username"),
            [Some("narroway@example.com".into())]
        );
        assert_eq!(micros(b), [1_659_363_123_000_000]);
        assert!(b.column_by_name("result").unwrap().as_boolean().value(0));
    }

    #[test]
    fn missing_strings_follow_morpheus_rule() {
        let r = reader("azure").read_bytes(
            Path::new("a.json"),
            format!("[{AZURE_OK}]").as_bytes(),
            InputFormat::Auto,
        );
        // displayName is an explicit null, state is absent from the concat's parts? no: both parts present.
        assert_eq!(
            strings(&r.batch, "deviceDetaildisplayName"),
            [Some("None".into())]
        );
        let no_city = AZURE_OK.replace(r#""city":"Littlemouth","#, "");
        let r = reader("azure").read_bytes(
            Path::new("a.json"),
            format!("[{no_city}]").as_bytes(),
            InputFormat::Auto,
        );
        assert_eq!(strings(&r.batch, "location"), [Some("nan, XN".into())]);
        let no_app = AZURE_OK.replace(r#""appDisplayName":"Teams","#, "");
        let r = reader("azure").read_bytes(
            Path::new("a.json"),
            format!("[{no_app}]").as_bytes(),
            InputFormat::Auto,
        );
        assert_eq!(strings(&r.batch, "appDisplayName"), [Some("nan".into())]);
    }

    #[test]
    fn duo_result_mapping_is_morpheus() {
        let rec = |result: &str| {
            format!(
                r#"{{"timestamp":1659363123,"txid":"t","user":{{"name":"u"}},"result":{result}}}"#
            )
        };
        let lines: Vec<String> = [
            r#""success""#,
            r#""SUCCESS""#,
            r#""denied""#,
            r#""DENIED""#,
            r#""Denied""#,
            r#""FRAUD""#,
            r#""fraud""#,
            "null",
            r#""weird""#,
        ]
        .iter()
        .map(|r| rec(r))
        .collect();
        let text = format!("[{}]", lines.join(","));
        let r = reader("duo").read_bytes(Path::new("d.json"), text.as_bytes(), InputFormat::Auto);
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        let col = r.batch.column_by_name("result").unwrap().as_boolean();
        let got: Vec<bool> = (0..col.len()).map(|i| col.value(i)).collect();
        assert_eq!(
            got,
            [true, true, false, false, false, false, true, true, true]
        );
    }

    #[test]
    fn azure_success_maps_error_code_numbers_and_a_missing_status_is_no_failure() {
        let rec = |status: &str| {
            format!(
                r#"{{"time":"2022-08-01T00:03:56Z","properties":{{"id":"e","userPrincipalName":"u"{status}}}}}"#
            )
        };
        let lines: Vec<String> = [
            r#","status":{"errorCode":0}"#,
            r#","status":{"errorCode":50126}"#,
            r#","status":{"errorCode":"0"}"#,
            r#","status":{"errorCode":null}"#,
            "",
        ]
        .iter()
        .map(|s| rec(s))
        .collect();
        let text = format!("[{}]", lines.join(","));
        let r = reader("azure").read_bytes(Path::new("a.json"), text.as_bytes(), InputFormat::Auto);
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        let col = r.batch.column_by_name("succeeded").unwrap().as_boolean();
        let got: Vec<bool> = (0..col.len()).map(|i| col.value(i)).collect();
        assert_eq!(got, [true, false, true, true, true]);
    }

    #[test]
    fn timestamps_iso_naive_and_epoch() {
        let base = 1_659_312_236_000_000_i64;
        for (value, want) in [
            (r#""2022-08-01T00:03:56Z""#, base),
            (r#""2022-08-01T02:03:56+02:00""#, base),
            (r#""2022-08-01T00:03:56""#, base),
            (r#""2022-08-01 00:03:56.5""#, base + 500_000),
            ("1659312236", base),
            ("1659312236.25", base + 250_000),
            (r#""1659312236""#, base),
        ] {
            let text = format!(r#"[{{"timestamp":{value},"txid":"t","user":{{"name":"u"}}}}]"#);
            let r =
                reader("duo").read_bytes(Path::new("d.json"), text.as_bytes(), InputFormat::Auto);
            assert!(r.rejected.is_empty(), "{value}: {:?}", r.rejected);
            assert_eq!(micros(&r.batch), [want], "{value}");
        }
    }
}
