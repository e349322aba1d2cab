//! The log generator behind `dfp generate`: realistic Azure AD sign-in or Duo authentication logs
//! for a population of users with stable habits and the benign novelty real users show (business
//! trips, device changes, teams adopting apps, shift changes and weekend work, VPN and egress
//! changes, sparse and bursty users, service accounts; see `novelty`), with labelled anomaly
//! episodes injected into the last days. Only the anomalies are labelled.
//!
//! Inputs: a [`GenerateConfig`] (source, users, days, first day, seed, files per day, anomaly
//! window, share of anomalous users, and the novelty rates of [`Novelty`]). Outputs, in `out_dir`:
//! JSON-array files named like Morpheus' (`AZUREAD_2022-08-01T00_03_56.207Z.json`, `DUO_...json`:
//! the time of the file's first record, milliseconds, `:` as `_`), each UTC day split into
//! `files_per_day` consecutive time-of-day slots (empty slots write no file), records sorted by
//! time; and `labels.jsonl`, one line per injected anomalous record (`event_id`, `user`,
//! `timestamp`, `kind`), sorted by timestamp then event id.
//!
//! How: `users` draws every user's habits (name, home city, `devices`, apps, working hours, failure
//! rate, volume) from the seed, places from the `cities` table; for each UTC day and user, a
//! ChaCha8 stream seeded from (seed, user, day) draws that user-day's ordinary events (`normal`), a
//! second one the novelty `novelty` planned for that user (each user's plan is drawn once from a
//! (seed, user) stream, so no day depends on another), and a third the anomaly episodes `anomaly`
//! planned for that day (`random` holds the streams). With [`Novelty::none`] the output is the
//! stable habits alone, byte for byte as before novelty. `world` holds what is fixed for a run and
//! the source-neutral event, which `azure` and `duo` render (with `json`'s compact serializers);
//! `config` checks what to generate. Nothing depends on hash-map order or on the order users are
//! visited, so the same config gives the same bytes. State: one day of events at a time (written,
//! then dropped) and the labels (small), so memory stays bounded by the busiest day.

mod anomaly;
mod azure;
mod cities;
mod config;
mod devices;
mod duo;
mod json;
mod normal;
mod novelty;
mod random;
mod users;
mod world;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{Datelike, Timelike};
use serde::Serialize;

use dfp_core::{Error, Result};

pub use anomaly::AnomalyKind;
pub use config::{GenSource, GenerateConfig, Novelty, Rollout, UnknownGenSource};

use config::day_start_micros;
use json::{Iso, Uuid};
use random::{Stream, stream_rng};
use world::{Event, World};

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateSummary {
    /// The log files, in time order.
    pub files: Vec<PathBuf>,
    /// Records written, anomalous ones included.
    pub records: u64,
    /// Injected anomalous records (each one a line of the labels file).
    pub anomalous_records: u64,
    /// Number of users.
    pub users: usize,
    /// The labels file (`labels.jsonl`).
    pub labels: PathBuf,
    /// Bytes written to the log files (the labels file not included).
    pub bytes: u64,
}

/// Writes the logs and labels described by `cfg` into `out_dir` (created if missing; files of
/// the same names are overwritten).
pub fn generate(cfg: &GenerateConfig, out_dir: &Path) -> Result<GenerateSummary> {
    cfg.validate()?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, "creating directory", e))?;
    tracing::info!(
        source = %cfg.source,
        users = cfg.users,
        days = cfg.days,
        start = %cfg.start,
        seed = cfg.seed,
        out = %out_dir.display(),
        "Generating logs."
    );

    let world = World::new(cfg);
    let plan = anomaly::plan(cfg, &world);
    let mut summary = GenerateSummary {
        files: Vec::new(),
        records: 0,
        anomalous_records: 0,
        users: cfg.users,
        labels: out_dir.join("labels.jsonl"),
        bytes: 0,
    };
    let mut labels: Vec<(i64, u128, u32, AnomalyKind)> = Vec::new();
    let mut events: Vec<Event> = Vec::new();

    for day in 0..cfg.days {
        events.clear();
        // validate() checked the last day, so every earlier day exists too.
        let Some(day_start) = day_events(cfg, &world, &plan, day, &mut events) else {
            break;
        };
        events.sort_unstable_by_key(|e| (e.micros, e.id));
        labels.extend(
            events
                .iter()
                .filter_map(|e| e.anomaly.map(|kind| (e.micros, e.id, e.user, kind))),
        );

        let slot_of = |e: &Event| -> u64 {
            let ms = (e.micros - day_start).div_euclid(1000).max(0) as u64;
            ms * u64::from(cfg.files_per_day) / 86_400_000
        };
        let mut rest: &[Event] = &events;
        while let Some(first) = rest.first() {
            let slot = slot_of(first);
            let n = rest.iter().take_while(|e| slot_of(e) == slot).count();
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let path = out_dir.join(file_name(cfg.source, first.micros));
            summary.bytes += write_file(&path, &world, chunk)?;
            summary.records += chunk.len() as u64;
            summary.anomalous_records +=
                chunk.iter().filter(|e| e.anomaly.is_some()).count() as u64;
            summary.files.push(path);
        }
    }

    labels.sort_unstable_by_key(|l| (l.0, l.1));
    write_labels(&summary.labels, &world, &labels)?;
    tracing::info!(
        records = summary.records,
        anomalous = summary.anomalous_records,
        files = summary.files.len(),
        bytes = summary.bytes,
        "Generated logs."
    );
    Ok(summary)
}

/// Appends every user's events of day `day` (ordinary with their novelty, then the anomalous
/// ones), unsorted, to `events`; returns the day's start (none past the supported dates).
fn day_events(
    cfg: &GenerateConfig,
    world: &World,
    plan: &[Vec<anomaly::Episode>],
    day: u32,
    events: &mut Vec<Event>,
) -> Option<i64> {
    let date = cfg
        .start
        .checked_add_days(chrono::Days::new(u64::from(day)))?;
    let day_start = day_start_micros(cfg.start, day)?;
    let weekend = date.weekday().number_from_monday() >= 6;
    for (u, user) in world.users.iter().enumerate() {
        let uid = u as u32;
        let first = events.len();
        let parts = [u64::from(uid), u64::from(day)];
        let mut rng = stream_rng(cfg.seed, Stream::Normal, &parts);
        let mut nov = stream_rng(cfg.seed, Stream::NoveltyDay, &parts);
        let today = novelty::Today {
            uid,
            day,
            day_start,
            weekend,
        };
        novelty::user_day(world, user, &today, &mut rng, &mut nov, events);
        for ep in plan.get(u).into_iter().flatten().filter(|e| e.day == day) {
            let mut rng = stream_rng(
                cfg.seed,
                Stream::Anomaly,
                &[u64::from(uid), u64::from(day), u64::from(ep.seq)],
            );
            anomaly::inject(world, user, uid, ep, day_start, first, &mut rng, events);
        }
    }
    Some(day_start)
}

/// `AZUREAD_2022-08-01T00_03_56.207Z.json`: the prefix and the time in milliseconds.
fn file_name(source: GenSource, micros: i64) -> String {
    let mut s = String::with_capacity(40);
    s.push_str(source.file_prefix());
    s.push('_');
    if let Some(t) = chrono::DateTime::from_timestamp_micros(micros) {
        let _ = write!(
            s,
            "{:04}-{:02}-{:02}T{:02}_{:02}_{:02}.{:03}Z.json",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_millis()
        );
    }
    s
}

/// Writes one JSON-array file; returns its size in bytes.
fn write_file(path: &Path, world: &World, events: &[Event]) -> Result<u64> {
    let file = File::create(path).map_err(|e| Error::io(path, "creating", e))?;
    let mut w = Counting {
        inner: BufWriter::with_capacity(1 << 17, file),
        bytes: 0,
    };
    let io = |e: std::io::Error| Error::io(path, "writing", e);
    w.write_all(b"[").map_err(io)?;
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            w.write_all(b",").map_err(io)?;
        }
        let r = match world.source {
            GenSource::Azure => azure::write_record(&mut w, world, e),
            GenSource::Duo => duo::write_record(&mut w, world, e),
        };
        r.map_err(|e| io(e.into()))?;
    }
    w.write_all(b"]").map_err(io)?;
    w.flush().map_err(io)?;
    Ok(w.bytes)
}

/// One line of `labels.jsonl`.
#[derive(Serialize)]
struct Label<'a> {
    event_id: Uuid,
    user: &'a str,
    timestamp: Iso,
    kind: &'static str,
}

fn write_labels(
    path: &Path,
    world: &World,
    labels: &[(i64, u128, u32, AnomalyKind)],
) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, "creating", e))?;
    let mut w = BufWriter::new(file);
    let io = |e: std::io::Error| Error::io(path, "writing", e);
    for &(micros, id, user, kind) in labels {
        let label = Label {
            event_id: Uuid(id),
            user: world
                .users
                .get(user as usize)
                .map_or("", |u| u.name.as_str()),
            timestamp: Iso::zulu(micros),
            kind: kind.as_str(),
        };
        serde_json::to_writer(&mut w, &label).map_err(|e| io(e.into()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}

/// A writer that counts the bytes through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)?;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Ip;
    use crate::random::duo_key;
    use chrono::NaiveDate;
    use serde_json::Value;
    use std::collections::{BTreeMap, BTreeSet};

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    fn cfg(source: GenSource, users: usize, days: u32) -> GenerateConfig {
        GenerateConfig::new(source, users, days, date(2022, 8, 1), 42)
    }

    /// Every file's bytes, by file name.
    fn dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| {
                let p = e.expect("entry").path();
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                (name, std::fs::read(&p).expect("read"))
            })
            .collect()
    }

    /// All records of the generated files, in file order.
    fn records(summary: &GenerateSummary) -> Vec<Value> {
        summary
            .files
            .iter()
            .flat_map(|p| {
                let v: Value =
                    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json");
                match v {
                    Value::Array(a) => a,
                    other => panic!("{} is not an array: {other}", p.display()),
                }
            })
            .collect()
    }

    fn labels(summary: &GenerateSummary) -> Vec<Value> {
        std::fs::read_to_string(&summary.labels)
            .expect("labels")
            .lines()
            .map(|l| serde_json::from_str(l).expect("label json"))
            .collect()
    }

    fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
        v.pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string at {path} in {v}"))
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        for source in [GenSource::Azure, GenSource::Duo] {
            let (a, b, c) = (
                tempfile::tempdir().expect("tmp"),
                tempfile::tempdir().expect("tmp"),
                tempfile::tempdir().expect("tmp"),
            );
            let c1 = cfg(source, 12, 6);
            generate(&c1, a.path()).expect("gen a");
            generate(&c1, b.path()).expect("gen b");
            let mut c2 = c1.clone();
            c2.seed = 43;
            generate(&c2, c.path()).expect("gen c");
            let (da, db, dc) = (
                dir_bytes(a.path()),
                dir_bytes(b.path()),
                dir_bytes(c.path()),
            );
            assert!(da.len() > 10, "{source}: {} files", da.len());
            assert_eq!(da, db, "{source}: same seed, different output");
            assert_ne!(da, dc, "{source}: different seeds, same output");
        }
    }

    #[test]
    fn file_names_follow_the_morpheus_pattern_and_first_record_time() {
        for source in [GenSource::Azure, GenSource::Duo] {
            let dir = tempfile::tempdir().expect("tmp");
            let s = generate(&cfg(source, 20, 3), dir.path()).expect("gen");
            assert!(!s.files.is_empty());
            let prefix = source.file_prefix();
            let mut per_day: BTreeMap<String, usize> = BTreeMap::new();
            for p in &s.files {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                // PREFIX_YYYY-MM-DDTHH_MM_SS.mmmZ.json
                let rest = name
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .and_then(|r| r.strip_suffix("Z.json"))
                    .unwrap_or_else(|| panic!("bad name {name}"));
                let t = chrono::NaiveDateTime::parse_from_str(rest, "%Y-%m-%dT%H_%M_%S%.3f")
                    .unwrap_or_else(|e| panic!("bad time in {name}: {e}"));
                assert_eq!(rest.len(), 23, "{name}");
                *per_day.entry(rest[..10].to_string()).or_default() += 1;
                // The name's time is the first record's time, to the millisecond.
                let v: Value =
                    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json");
                let first = &v.as_array().expect("array")[0];
                let iso = match source {
                    GenSource::Azure => str_at(first, "/time"),
                    GenSource::Duo => str_at(first, "/isotimestamp"),
                };
                let rt = chrono::DateTime::parse_from_rfc3339(iso).expect("iso time");
                assert_eq!(
                    rt.naive_utc().and_utc().timestamp_millis(),
                    t.and_utc().timestamp_millis(),
                    "{name}"
                );
            }
            assert_eq!(per_day.len(), 3);
            for (day, n) in per_day {
                assert!((2..=8).contains(&n), "{day}: {n} files");
            }
            let mut sorted = s.files.clone();
            sorted.sort();
            assert_eq!(sorted, s.files, "files are listed in time order");
        }
    }

    #[test]
    fn azure_records_have_the_nested_paths_and_sorted_times() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = generate(&cfg(GenSource::Azure, 15, 4), dir.path()).expect("gen");
        let recs = records(&s);
        assert_eq!(recs.len() as u64, s.records);
        let mut ids = BTreeSet::new();
        let mut last = String::new();
        let mut categories = BTreeSet::new();
        let mut fails = 0;
        for r in &recs {
            for path in [
                "/properties/userPrincipalName",
                "/properties/userDisplayName",
                "/properties/appDisplayName",
                "/properties/clientAppUsed",
                "/properties/deviceDetail/browser",
                "/properties/deviceDetail/displayName",
                "/properties/deviceDetail/operatingSystem",
                "/properties/deviceDetail/trustType",
                "/properties/location/city",
                "/properties/location/state",
                "/properties/location/countryOrRegion",
                "/properties/status/failureReason",
                "/properties/userAgent",
                "/properties/createdDateTime",
                "/properties/ipAddress",
                "/callerIpAddress",
                "/category",
                "/identity",
                "/location",
                "/resultType",
                "/tenantId",
                "/time",
            ] {
                str_at(r, path);
            }
            assert!(
                r.pointer("/properties/location/geoCoordinates/latitude")
                    .is_some()
            );
            assert!(
                r.pointer("/properties/isInteractive")
                    .is_some_and(Value::is_boolean)
            );
            let code = r
                .pointer("/properties/status/errorCode")
                .and_then(Value::as_u64)
                .expect("errorCode");
            let reason = str_at(r, "/properties/status/failureReason");
            if code == 0 {
                assert_eq!(reason, "Other.");
                assert_eq!(str_at(r, "/resultType"), "0");
            } else {
                fails += 1;
                assert_ne!(reason, "Other.");
                assert_eq!(str_at(r, "/resultType"), code.to_string());
            }
            let cat = str_at(r, "/category");
            assert!(matches!(cat, "SignInLogs" | "NonInteractiveUserSignInLogs"));
            categories.insert(cat.to_string());
            assert!(str_at(r, "/properties/userPrincipalName").contains('@'));
            let time = str_at(r, "/time");
            assert_eq!(time.len(), 27, "{time}");
            assert!(time.ends_with('Z'));
            assert!(
                ids.insert(str_at(r, "/properties/id").to_string()),
                "duplicate id"
            );
            // Files are in time order and records within a file too, so all of them are.
            assert!(last.as_str() <= time, "{last} > {time}");
            last = time.to_string();
        }
        assert_eq!(categories.len(), 2);
        assert!(fails > 0 && fails * 5 < recs.len(), "{fails} failures");
    }

    #[test]
    fn duo_records_have_the_nested_paths_and_sorted_times() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = generate(&cfg(GenSource::Duo, 15, 4), dir.path()).expect("gen");
        let recs = records(&s);
        assert_eq!(recs.len() as u64, s.records);
        let mut ids = BTreeSet::new();
        let mut last = 0;
        let mut results = BTreeSet::new();
        for r in &recs {
            for path in [
                "/user/name",
                "/user/key",
                "/access_device/browser",
                "/access_device/browser_version",
                "/access_device/os",
                "/access_device/ip",
                "/access_device/location/city",
                "/access_device/location/state",
                "/access_device/location/country",
                "/auth_device/name",
                "/auth_device/key",
                "/application/name",
                "/application/key",
                "/event_type",
                "/factor",
                "/result",
                "/reason",
                "/email",
                "/isotimestamp",
                "/txid",
                "/trusted_endpoint_status",
            ] {
                str_at(r, path);
            }
            assert!(
                r.pointer("/access_device/hostname")
                    .is_some_and(Value::is_null)
            );
            assert!(r.pointer("/user/groups").is_some_and(Value::is_array));
            let ts = r
                .pointer("/timestamp")
                .and_then(Value::as_i64)
                .expect("integer timestamp");
            let iso =
                chrono::DateTime::parse_from_rfc3339(str_at(r, "/isotimestamp")).expect("iso");
            assert_eq!(iso.timestamp(), ts);
            assert!(ts >= last);
            last = ts;
            assert_eq!(str_at(r, "/email"), str_at(r, "/user/name"));
            results.insert(str_at(r, "/result").to_string());
            assert!(ids.insert(str_at(r, "/txid").to_string()), "duplicate txid");
        }
        assert!(
            results.contains("success") && results.contains("denied"),
            "{results:?}"
        );
    }

    #[test]
    fn labels_point_at_records_only_in_the_last_anomaly_days() {
        for source in [GenSource::Azure, GenSource::Duo] {
            let dir = tempfile::tempdir().expect("tmp");
            let c = cfg(source, 40, 12);
            assert_eq!(c.anomaly_days, 2);
            let s = generate(&c, dir.path()).expect("gen");
            let recs = records(&s);
            let (id_path, user_path) = match source {
                GenSource::Azure => ("/properties/id", "/properties/userPrincipalName"),
                GenSource::Duo => ("/txid", "/user/name"),
            };
            let by_id: BTreeMap<&str, &Value> =
                recs.iter().map(|r| (str_at(r, id_path), r)).collect();
            let labels = labels(&s);
            assert!(!labels.is_empty());
            assert_eq!(labels.len() as u64, s.anomalous_records);
            let first_anomaly_day = date(2022, 8, 11);
            let mut kinds = BTreeSet::new();
            let mut users = BTreeSet::new();
            let mut prev = (String::new(), String::new());
            for l in &labels {
                let id = str_at(l, "/event_id");
                let r = by_id
                    .get(id)
                    .unwrap_or_else(|| panic!("label {id} not in the files"));
                assert_eq!(str_at(l, "/user"), str_at(r, user_path));
                let ts = chrono::DateTime::parse_from_rfc3339(str_at(l, "/timestamp"))
                    .expect("label time");
                assert!(ts.date_naive() >= first_anomaly_day, "{l}");
                let key = (str_at(l, "/timestamp").to_string(), id.to_string());
                assert!(prev <= key, "labels out of order");
                prev = key;
                kinds.insert(str_at(l, "/kind").to_string());
                users.insert(str_at(l, "/user").to_string());
            }
            assert_eq!(kinds.len(), AnomalyKind::ALL.len(), "{source}: {kinds:?}");
            assert_eq!(users.len(), 12, "{source}: 30% of 40 users");
        }
    }

    #[test]
    fn no_anomalies_when_the_window_or_fraction_is_zero() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = cfg(GenSource::Duo, 10, 3);
        c.anomaly_days = 0;
        let s = generate(&c, dir.path()).expect("gen");
        assert_eq!(s.anomalous_records, 0);
        assert_eq!(std::fs::read(&s.labels).expect("labels").len(), 0);
        let mut c = cfg(GenSource::Azure, 10, 3);
        c.anomaly_users_fraction = 0.0;
        let s = generate(&c, dir.path()).expect("gen");
        assert_eq!(s.anomalous_records, 0);
    }

    #[test]
    fn anomalies_only_add_records() {
        // The ordinary events do not depend on the anomalies: turning them off removes exactly
        // the labelled records.
        let (a, b) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let with = cfg(GenSource::Azure, 20, 6);
        let mut without = with.clone();
        without.anomaly_users_fraction = 0.0;
        let sa = generate(&with, a.path()).expect("gen");
        let sb = generate(&without, b.path()).expect("gen");
        assert!(sa.anomalous_records > 0);
        assert_eq!(sa.records - sa.anomalous_records, sb.records);
        let labelled: BTreeSet<String> = labels(&sa)
            .iter()
            .map(|l| str_at(l, "/event_id").to_string())
            .collect();
        let ids = |s: &GenerateSummary| -> BTreeSet<String> {
            records(s)
                .iter()
                .map(|r| str_at(r, "/properties/id").to_string())
                .collect()
        };
        let (ia, ib) = (ids(&sa), ids(&sb));
        assert_eq!(
            ia.difference(&ib).cloned().collect::<BTreeSet<_>>(),
            labelled
        );
    }

    #[test]
    fn volumes_spread_like_real_users() {
        for source in [GenSource::Azure, GenSource::Duo] {
            let dir = tempfile::tempdir().expect("tmp");
            let s = generate(&cfg(source, 100, 30), dir.path()).expect("gen");
            let user_path = match source {
                GenSource::Azure => "/properties/userPrincipalName",
                GenSource::Duo => "/user/name",
            };
            let mut per_user: BTreeMap<String, u64> = BTreeMap::new();
            for r in records(&s) {
                *per_user
                    .entry(str_at(&r, user_path).to_string())
                    .or_default() += 1;
            }
            assert_eq!(per_user.len(), 100, "every user has events");
            let below = per_user.values().filter(|&&n| n < 300).count();
            let heavy = per_user.values().filter(|&&n| n >= 50 * 30).count();
            let mean = s.records as f64 / (100.0 * 30.0);
            assert!(
                (15..=25).contains(&below),
                "{source}: {below} users below 300"
            );
            assert!(heavy >= 1, "{source}: no heavy user");
            assert!(
                (10.0..=15.0).contains(&mean),
                "{source}: mean {mean:.1} per user-day"
            );
            assert!(
                per_user
                    .keys()
                    .any(|u| u.contains('.') && u.find('.') < u.find('@'))
            );
        }
    }

    #[test]
    fn invalid_configs_are_refused_with_every_problem() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = cfg(GenSource::Azure, 0, 0);
        c.files_per_day = 0;
        c.anomaly_users_fraction = f64::NAN;
        c.novelty.travel_rate = -1.0;
        c.novelty.service_account_fraction = 2.0;
        let err = generate(&c, dir.path()).expect_err("invalid");
        let text = err.to_string();
        for field in [
            "users",
            "days",
            "files_per_day",
            "anomaly_users_fraction",
            "novelty.travel_rate",
            "novelty.service_account_fraction",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        let mut c = cfg(GenSource::Duo, 5, 3);
        c.anomaly_days = 4;
        assert!(c.validate().is_err());
        c.anomaly_days = 3;
        assert!(c.validate().is_ok());
        let c = GenerateConfig::new(GenSource::Duo, 5, 3, NaiveDate::MAX, 1);
        assert!(c.validate().is_err());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn unwritable_output_names_the_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").expect("write");
        let err = generate(&cfg(GenSource::Azure, 2, 1), &blocker.join("out")).expect_err("io");
        let out = blocker.join("out");
        assert!(err.to_string().contains(&*out.to_string_lossy()), "{err}");
    }

    #[test]
    fn source_parses_and_prints() {
        assert_eq!("azure".parse::<GenSource>(), Ok(GenSource::Azure));
        assert_eq!("Duo".parse::<GenSource>(), Ok(GenSource::Duo));
        assert!("okta".parse::<GenSource>().is_err());
        assert_eq!(GenSource::Duo.to_string(), "duo");
        assert_eq!(cfg(GenSource::Duo, 1, 30).anomaly_days, 5);
    }

    #[test]
    fn helpers_format_like_the_sources() {
        assert_eq!(
            Uuid(0x0123_4567_89ab_cdef_0011_2233_4455_6677).to_string(),
            "01234567-89ab-cdef-0011-223344556677"
        );
        let micros = 1_659_312_236_207_532; // 2022-08-01T00:03:56.207532Z
        assert_eq!(
            Iso::zulu(micros).text().expect("time").as_str(),
            "2022-08-01T00:03:56.207532Z"
        );
        assert_eq!(
            Iso::offset(micros).text().expect("time").as_str(),
            "2022-08-01T00:03:56.207532+00:00"
        );
        assert_eq!(
            file_name(GenSource::Azure, micros),
            "AZUREAD_2022-08-01T00_03_56.207Z.json"
        );
        assert_eq!(
            serde_json::to_string(&Ip(0x2c16_13c9)).expect("ip"),
            "\"44.22.19.201\""
        );
        let key = duo_key("DU", 1, 2);
        assert_eq!(key.len(), 20);
        assert!(key.starts_with("DU"));
    }
}
