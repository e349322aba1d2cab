//! Property tests of every parser and loader against mutated and truncated input: log records
//! (JSON arrays, JSON lines, CSV, as files and as Kafka payloads are read), control messages,
//! run configs and source schemas, model files and checkpoint files. What must hold, whatever
//! the input: nothing aborts or panics; every good record is kept; every bad one is rejected
//! with a reason; a loader either loads or says what is wrong.
//!
//! `DFP_PROPTEST_CASES` sets the cases per property (64 by default; the README's long run
//! sets it high).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, AsArray};
use dfp_engine::control::ControlMessage;
use dfp_engine::generate::GenSource;
use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::model::Model;
use dfp_engine::schema::SourceSchema;
use dfp_operators::checkpoint::{decode, encode, frame, read_state};
use dfp_operators::config::RunConfig;
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases() -> Config {
    let cases = std::env::var("DFP_PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn reader() -> &'static Reader {
    static READER: OnceLock<Reader> = OnceLock::new();
    READER.get_or_init(|| Reader::new(Arc::new(SourceSchema::builtin("azure").unwrap())))
}

/// A good Azure sign-in record: event id `id-{i}`.
fn good(i: usize, secs: u32, user: &str, app: &str) -> String {
    let t = chrono::DateTime::from_timestamp(1_659_312_000 + i64::from(secs), 0).unwrap();
    serde_json::json!({
        "time": t.to_rfc3339(),
        "category": "SignInLogs",
        "properties": {
            "id": format!("id-{i}"),
            "userPrincipalName": user,
            "appDisplayName": app,
            "clientAppUsed": "Browser",
            "deviceDetail": {"browser": "Edge 118.0", "displayName": "PC", "operatingSystem": "Windows 10"},
            "status": {"errorCode": 0, "failureReason": "Other."},
            "location": {"city": "Austin", "countryOrRegion": "US"}
        }
    })
    .to_string()
}

/// Ways a record is bad, each a whole JSON-ish element that the reader must reject alone.
#[derive(Debug, Clone)]
enum Bad {
    TimeObject,
    TimeMissing,
    TimeGarbage(String),
    DeepJunk(usize),
    NumberOutOfRange,
    LoneSurrogate,
    NotAnObject(&'static str),
}

fn bad_text(i: usize, b: &Bad) -> String {
    let ok = good(i, 60, "u@x.com", "App");
    match b {
        Bad::TimeObject => ok.replacen("\"time\":", "\"time\":{\"a\":1},\"was\":", 1),
        Bad::TimeMissing => ok.replacen("\"time\":", "\"was\":", 1),
        Bad::TimeGarbage(g) => {
            let v = serde_json::Value::String(format!("x{g}"));
            ok.replacen("\"time\":", &format!("\"time\":{v},\"was\":"), 1)
        }
        Bad::DeepJunk(n) => {
            let deep = "[".repeat(*n) + &"]".repeat(*n);
            ok.replacen(
                "\"category\":",
                &format!("\"junk\":{deep},\"category\":"),
                1,
            )
        }
        Bad::NumberOutOfRange => ok.replacen(
            "\"userPrincipalName\":",
            "\"userPrincipalName\":1e400,\"was\":",
            1,
        ),
        Bad::LoneSurrogate => ok.replacen(
            "\"userPrincipalName\":",
            "\"userPrincipalName\":\"\\ud800\",\"was\":",
            1,
        ),
        Bad::NotAnObject(t) => (*t).to_string(),
    }
}

fn bad_strategy() -> impl Strategy<Value = Bad> {
    prop_oneof![
        Just(Bad::TimeObject),
        Just(Bad::TimeMissing),
        "[a-z ]{0,12}".prop_map(Bad::TimeGarbage),
        (130usize..3000).prop_map(Bad::DeepJunk),
        Just(Bad::NumberOutOfRange),
        Just(Bad::LoneSurrogate),
        prop_oneof![
            Just("42"),
            Just("\"text\""),
            Just("[1,2]"),
            Just("null"),
            Just("true")
        ]
        .prop_map(Bad::NotAnObject),
    ]
}

/// Records: `None` is a good one, `Some(bad)` a bad one; users and apps any text.
fn records() -> impl Strategy<Value = Vec<(Option<Bad>, u32, String, String)>> {
    proptest::collection::vec(
        (
            proptest::option::weighted(0.3, bad_strategy()),
            0u32..86_400 * 20,
            "\\PC{1,12}",
            "\\PC{0,16}",
        ),
        1..30,
    )
}

fn texts(recs: &[(Option<Bad>, u32, String, String)]) -> Vec<String> {
    recs.iter()
        .enumerate()
        .map(|(i, (bad, secs, user, app))| match bad {
            None => good(i, *secs, user, app),
            Some(b) => bad_text(i, b),
        })
        .collect()
}

/// Reads `bytes` as `format` and checks: the good records and only they, in order; every
/// bad one rejected with a reason, at its index.
fn check_kept_and_rejected(
    bytes: &[u8],
    format: InputFormat,
    recs: &[(Option<Bad>, u32, String, String)],
) {
    let read = reader().read_bytes(Path::new("p.json"), bytes, format);
    assert!(read.broken.is_none(), "{:?}", read.broken);
    let ids = read.batch.column(2).as_string::<i32>();
    let kept: Vec<String> = (0..ids.len()).map(|i| ids.value(i).to_string()).collect();
    let want: Vec<String> = recs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.0.is_none())
        .map(|(i, _)| format!("id-{i}"))
        .collect();
    assert_eq!(kept, want);
    let rejected: Vec<usize> = read.rejected.iter().map(|r| r.record).collect();
    let bad: Vec<usize> = recs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.0.is_some())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(rejected, bad, "{:?}", read.rejected);
    assert!(read.rejected.iter().all(|r| !r.reason.is_empty()));
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn json_arrays_keep_every_good_record_and_reject_every_bad_one(recs in records(), bom in any::<bool>()) {
        let mut bytes = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
        bytes.extend(format!("[{}]", texts(&recs).join(",")).into_bytes());
        check_kept_and_rejected(&bytes, InputFormat::Auto, &recs);
    }

    #[test]
    fn json_lines_and_kafka_payloads_keep_every_good_record(recs in records()) {
        let text = texts(&recs).join("\n");
        check_kept_and_rejected(text.as_bytes(), InputFormat::JsonLines, &recs);
    }

    #[test]
    fn a_truncated_file_keeps_every_record_before_the_cut(
        recs in proptest::collection::vec((0u32..86_400, "[a-z]{1,6}"), 1..20),
        lines in any::<bool>(),
        cut in 0.0f64..1.0,
    ) {
        let texts: Vec<String> = recs.iter().enumerate().map(|(i, (s, u))| good(i, *s, u, "A")).collect();
        let text = if lines { texts.join("\n") + "\n" } else { format!("[{}]", texts.join(",")) };
        let k = (text.len() as f64 * cut) as usize;
        let read = reader().read_bytes(Path::new("cut"), &text.as_bytes()[..k], InputFormat::Auto);
        // A record is whole when the separator after it lies before the cut.
        let mut end = usize::from(!lines);
        let whole = texts.iter().filter(|t| { end += t.len() + 1; end <= k }).count();
        prop_assert!(read.batch.num_rows() >= whole, "{} < {whole}", read.batch.num_rows());
        prop_assert!(read.batch.num_rows() <= texts.len());
        prop_assert!(read.rejected.iter().all(|r| !r.reason.is_empty()));
    }

    #[test]
    fn flipped_bytes_never_panic_and_every_rejection_has_a_reason(
        recs in records(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        format in prop_oneof![Just(InputFormat::Auto), Just(InputFormat::JsonLines), Just(InputFormat::Csv)],
    ) {
        let mut bytes = format!("[{}]", texts(&recs).join(",")).into_bytes();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let read = reader().read_bytes(Path::new("flipped"), &bytes, format);
        prop_assert!(read.rejected.iter().all(|r| !r.reason.is_empty()));
    }

    #[test]
    fn csv_rows_are_kept_or_rejected_one_by_one(
        rows in proptest::collection::vec((any::<bool>(), 0u32..86_400, "[a-zA-Z ,\"]{0,10}"), 1..30),
    ) {
        let mut text = String::from("time,properties.userPrincipalName,properties.id,properties.appDisplayName\n");
        for (i, (ok, secs, app)) in rows.iter().enumerate() {
            let t = chrono::DateTime::from_timestamp(1_659_312_000 + i64::from(*secs), 0).unwrap();
            let time = if *ok { t.to_rfc3339() } else { format!("not-{secs}") };
            let app = format!("\"{}\"", app.replace('"', "\"\""));
            text.push_str(&format!("{time},u@x.com,id-{i},{app}\n"));
        }
        let read = reader().read_bytes(Path::new("r.csv"), text.as_bytes(), InputFormat::Csv);
        prop_assert!(read.broken.is_none(), "{:?}", read.broken);
        prop_assert_eq!(read.batch.num_rows(), rows.iter().filter(|r| r.0).count());
        let bad: Vec<usize> = rows.iter().enumerate().filter(|(_, r)| !r.0).map(|(i, _)| i).collect();
        let rejected: Vec<usize> = read.rejected.iter().map(|r| r.record).collect();
        prop_assert_eq!(rejected, bad);
    }
}

/// A JSON value with one place replaced by `with` (or removed, where `with` is `None`), the
/// place picked by `pick` among every value in the tree.
fn mutate(v: &mut serde_json::Value, pick: usize, with: Option<serde_json::Value>) {
    fn count(v: &serde_json::Value) -> usize {
        1 + match v {
            serde_json::Value::Array(a) => a.iter().map(count).sum(),
            serde_json::Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut serde_json::Value, mut pick: usize, with: &Option<serde_json::Value>) -> bool {
        let children: Vec<&mut serde_json::Value> = match v {
            serde_json::Value::Array(a) => a.iter_mut().collect(),
            serde_json::Value::Object(o) => o.values_mut().collect(),
            _ => return false,
        };
        for c in children {
            if pick == 0 {
                *c = with.clone().unwrap_or(serde_json::Value::Null);
                return true;
            }
            pick -= 1;
            let n = count(c) - 1;
            if pick < n {
                return walk(c, pick, with);
            }
            pick -= n;
        }
        false
    }
    let n = count(v);
    walk(v, pick % n.max(1), &with);
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|n| serde_json::json!(n)),
        "\\PC{0,20}".prop_map(serde_json::Value::String),
        prop_oneof![
            Just("D"),
            Just("12H"),
            Just("W-MON"),
            Just("2022-08-01T10:00:00Z"),
            Just("../../etc/*"),
            Just("s3://b/*.json"),
            Just("file:///tmp/*.json"),
            Just("1e400"),
            Just("")
        ]
        .prop_map(|s| serde_json::Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn control_fixtures() -> &'static Vec<serde_json::Value> {
    static FIXTURES: OnceLock<Vec<serde_json::Value>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/morpheus/control_messages");
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                v.push(value);
            }
        }
        assert!(!v.is_empty());
        v
    })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn mutated_control_messages_parse_or_name_their_problems(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<usize>(), proptest::option::of(json_value())), 1..4),
        cut in proptest::option::weighted(0.2, 0.0f64..1.0),
    ) {
        let fixtures = control_fixtures();
        let mut v = fixtures[which.index(fixtures.len())].clone();
        for (pick, with) in edits {
            mutate(&mut v, pick, with);
        }
        let mut text = v.to_string();
        if let Some(c) = cut {
            let mut k = (text.len() as f64 * c) as usize;
            while !text.is_char_boundary(k) { k -= 1; }
            text.truncate(k);
        }
        match ControlMessage::parse(&text, "m.json") {
            Ok(m) => prop_assert!(!m.inputs.is_empty()),
            Err(dfp_engine::Error::Invalid { problems, .. }) => {
                prop_assert!(!problems.is_empty());
                prop_assert!(problems.iter().all(|p| !p.message.is_empty()));
            }
            Err(e) => prop_assert!(false, "not a list of problems: {e}"),
        }
    }

    #[test]
    fn mutated_configs_and_schemas_load_or_say_why(
        which in 0usize..4,
        line in prop_oneof![
            "[a-z_]{1,16} = [0-9]{1,25}",
            "[a-z_]{1,16} = \"\\PC{0,10}\"",
            Just("lr = -1.0".to_string()),
            Just("[model]\nepochs = 99999999999999999999999".to_string()),
            Just(format!("deep = {}1{}", "[".repeat(5000), "]".repeat(5000))),
            Just(format!("x = {}1{}", "{a = ".repeat(2000), "}".repeat(2000))),
            "\\PC{0,30}",
        ],
        at in 0.0f64..1.0,
    ) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let name = ["dfp.toml", "morpheus.toml", "azure.toml", "duo.toml"][which];
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let mut k = (text.len() as f64 * at) as usize;
        while !text.is_char_boundary(k) { k -= 1; }
        let edited = format!("{}\n{line}\n{}", &text[..k], &text[k..]);
        if which < 2 {
            let _ = RunConfig::from_toml(&edited, name);
        } else {
            let _ = SourceSchema::from_toml(&edited, name);
        }
    }
}

/// The bytes of a model trained by a small run (once per test binary).
fn model_bytes() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let logs = common::logs(GenSource::Azure, 4, 3, &root.path().join("logs"));
        let control = root.path().join("control.json");
        std::fs::write(&control, dfp_bench::DAILY_CONTROL).unwrap();
        assert!(logs.is_dir());
        let opts = common::options("azure", common::control(&control), root.path(), 1);
        dfp_operators::pipeline::run(opts).unwrap();
        let dir = root.path().join("models/DFP-azure-generic_user");
        std::fs::read(dir.join("v000001.dfpmodel")).unwrap()
    })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn mutated_model_files_load_or_name_the_file(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in proptest::option::weighted(0.3, 0.0f64..1.0),
    ) {
        let mut bytes = model_bytes().clone();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(c) = cut {
            bytes.truncate((bytes.len() as f64 * c) as usize);
        }
        if let Err(e) = Model::from_bytes(&bytes, Path::new("m.dfpmodel")) {
            prop_assert!(e.to_string().contains("m.dfpmodel"), "{e}");
        }
    }

    #[test]
    fn mutated_checkpoint_files_load_or_say_why(
        versions in proptest::collection::btree_map("\\PC{0,12}", any::<u32>(), 0..20),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        reframe in any::<bool>(),
    ) {
        let payload = encode(&versions).unwrap();
        let mut bytes = frame(0, 3, &payload);
        for (at, b) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        if reframe {
            // A checksum that matches the damage: the decoder itself must cope.
            let mut p = payload.clone();
            for (at, b) in &flips {
                if !p.is_empty() {
                    let i = at.index(p.len());
                    p[i] = *b;
                }
            }
            bytes = frame(0, 3, &p);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scorer-0.state");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(p) = read_state(&path) {
            match decode::<BTreeMap<String, u32>>(&p, &path) {
                Ok(v) if flips.is_empty() => prop_assert_eq!(v, versions),
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().contains("scorer-0.state"), "{e}"),
            }
        }
    }
}
