//! The log generator behind `dfp generate`: realistic Azure AD sign-in or Duo authentication
//! logs for a population of users with stable habits, with labelled anomaly episodes injected
//! into the last days.
//!
//! Inputs: a [`GenerateConfig`] (source, users, days, first day, seed, files per day, anomaly
//! window and share of anomalous users). Outputs, in `out_dir`: JSON-array files named like
//! Morpheus' (`AZUREAD_2022-08-01T00_03_56.207Z.json`, `DUO_...json`: the time of the file's
//! first record, milliseconds, `:` as `_`), each UTC day split into `files_per_day` consecutive
//! time-of-day slots (empty slots write no file), records sorted by time; and `labels.jsonl`,
//! one line per injected anomalous record (`event_id`, `user`, `timestamp`, `kind`), sorted by
//! timestamp then event id.
//!
//! How: `habits` draws every user's habits (name, home city, devices, apps, working hours,
//! failure rate, volume) from the seed; for each UTC day and user, a ChaCha8 stream seeded from
//! (seed, user, day) draws that user-day's ordinary events, and a second stream seeded the same
//! way draws the anomaly episodes `anomaly` planned for that day. Nothing depends on hash-map
//! order or on the order users are visited, so the same config gives the same bytes. State: one
//! day of events at a time (written, then dropped) and the labels (small), so memory stays
//! bounded by the busiest day.

mod anomaly;
mod azure;
mod duo;
mod habits;

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{Datelike, NaiveDate, Timelike};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Serialize, Serializer};

use dfp_core::config::Problems;
use dfp_core::{Error, Result};

pub use anomaly::AnomalyKind;

/// Which source's log shape to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenSource {
    /// Azure AD sign-in logs (`AZUREAD_*.json`), the shape of Azure's diagnostic export.
    Azure,
    /// Duo Admin API v2 authentication logs (`DUO_*.json`).
    Duo,
}

impl GenSource {
    /// The name used on the command line: `azure` or `duo`.
    pub fn as_str(self) -> &'static str {
        match self {
            GenSource::Azure => "azure",
            GenSource::Duo => "duo",
        }
    }

    /// The prefix of this source's file names, as Morpheus names them.
    pub fn file_prefix(self) -> &'static str {
        match self {
            GenSource::Azure => "AZUREAD",
            GenSource::Duo => "DUO",
        }
    }
}

impl fmt::Display for GenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source name that is neither `azure` nor `duo`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log source {0:?}: expected \"azure\" or \"duo\"")]
pub struct UnknownGenSource(pub String);

impl FromStr for GenSource {
    type Err = UnknownGenSource;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "azure" => Ok(GenSource::Azure),
            "duo" => Ok(GenSource::Duo),
            _ => Err(UnknownGenSource(s.to_string())),
        }
    }
}

/// What to generate. Build it with [`GenerateConfig::new`] (which sets the defaults), change
/// fields as needed, and [`generate`] validates it.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Which log shape to write.
    pub source: GenSource,
    /// Number of users (1 to 10,000,000).
    pub users: usize,
    /// Number of days (1 to 36,600).
    pub days: u32,
    /// The first day (UTC).
    pub start: NaiveDate,
    /// Random seed: the same config and seed give the same bytes.
    pub seed: u64,
    /// Files per UTC day (1 to 1440): the day is split into this many equal time-of-day slots,
    /// one file per non-empty slot. Default 8 (3-hour slots).
    pub files_per_day: u32,
    /// Anomalies are injected only into the last `anomaly_days` days (0: none). Default
    /// `days.div_ceil(6)` (30 days: 5).
    pub anomaly_days: u32,
    /// Share of users who get anomaly episodes, in [0, 1]. Default 0.3.
    pub anomaly_users_fraction: f64,
}

/// The most users [`generate`] accepts.
const MAX_USERS: usize = 10_000_000;
/// The most days [`generate`] accepts.
const MAX_DAYS: u32 = 36_600;
/// The most files per day [`generate`] accepts (one a minute).
const MAX_FILES_PER_DAY: u32 = 1440;

impl GenerateConfig {
    /// A config with the default files per day (8), anomaly window (`days.div_ceil(6)`) and
    /// share of anomalous users (0.3).
    pub fn new(source: GenSource, users: usize, days: u32, start: NaiveDate, seed: u64) -> Self {
        GenerateConfig {
            source,
            users,
            days,
            start,
            seed,
            files_per_day: 8,
            anomaly_days: days.div_ceil(6),
            anomaly_users_fraction: 0.3,
        }
    }

    /// Checks every field and reports all problems at once as [`Error::Invalid`].
    pub fn validate(&self) -> Result<()> {
        let mut p = Problems::new();
        if self.users == 0 || self.users > MAX_USERS {
            p.push(
                "users",
                format!("must be 1 to {MAX_USERS}, got {}", self.users),
            );
        }
        if self.days == 0 || self.days > MAX_DAYS {
            p.push(
                "days",
                format!("must be 1 to {MAX_DAYS}, got {}", self.days),
            );
        } else if day_start_micros(self.start, self.days).is_none() {
            p.push(
                "start",
                format!(
                    "{} plus {} days is outside the supported dates",
                    self.start, self.days
                ),
            );
        }
        if self.files_per_day == 0 || self.files_per_day > MAX_FILES_PER_DAY {
            p.push(
                "files_per_day",
                format!(
                    "must be 1 to {MAX_FILES_PER_DAY}, got {}",
                    self.files_per_day
                ),
            );
        }
        if self.anomaly_days > self.days {
            p.push(
                "anomaly_days",
                format!(
                    "must be at most days ({}), got {}",
                    self.days, self.anomaly_days
                ),
            );
        }
        let f = self.anomaly_users_fraction;
        if !f.is_finite() || !(0.0..=1.0).contains(&f) {
            p.push(
                "anomaly_users_fraction",
                format!("must be between 0 and 1, got {f}"),
            );
        }
        p.finish("generate config", ())
    }

    /// The first day that may hold anomalies (index from 0).
    fn first_anomaly_day(&self) -> u32 {
        self.days.saturating_sub(self.anomaly_days)
    }
}

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
        let (date, day_start) = match (
            cfg.start
                .checked_add_days(chrono::Days::new(u64::from(day))),
            day_start_micros(cfg.start, day),
        ) {
            (Some(d), Some(s)) => (d, s),
            // validate() checked the last day, so every earlier day exists too.
            _ => break,
        };
        let weekend = date.weekday().number_from_monday() >= 6;
        events.clear();
        for (u, user) in world.users.iter().enumerate() {
            let uid = u as u32;
            let first = events.len();
            let mut rng = stream_rng(cfg.seed, Stream::Normal, &[u64::from(uid), u64::from(day)]);
            habits::normal_day(
                &world,
                user,
                uid,
                day,
                day_start,
                weekend,
                &mut rng,
                &mut events,
            );
            for ep in plan[u].iter().filter(|e| e.day == day) {
                let mut rng = stream_rng(
                    cfg.seed,
                    Stream::Anomaly,
                    &[u64::from(uid), u64::from(day), u64::from(ep.seq)],
                );
                anomaly::inject(
                    &world,
                    user,
                    uid,
                    ep,
                    day_start,
                    first,
                    &mut rng,
                    &mut events,
                );
            }
        }
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

/// Microseconds since the epoch at the start of day `day` after `start` (UTC), if representable.
fn day_start_micros(start: NaiveDate, day: u32) -> Option<i64> {
    let date = start.checked_add_days(chrono::Days::new(u64::from(day)))?;
    let t = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
    // Leave room for a whole day of events after it.
    t.checked_add(DAY_MICROS)?;
    Some(t)
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

// ---------------------------------------------------------------------------------------------
// The world: users and catalogs, shared by the normal and anomalous event draws.

/// Everything fixed for a run: the users with their habits, and the catalogs.
pub(crate) struct World {
    source: GenSource,
    /// Microseconds since the epoch at the start of the first day.
    start_micros: i64,
    /// The Azure tenant.
    tenant: u128,
    /// Azure's top-level `resourceId` (`/tenants/{tenant}/providers/Microsoft.aadiam`).
    tenant_path: String,
    users: Vec<habits::User>,
    /// Devices no user owns, for the unseen-device anomalies.
    foreign_devices: Vec<habits::Device>,
    /// Phones no user owns (Duo authentication devices), for the unseen-device anomalies.
    foreign_phones: Vec<habits::Phone>,
    /// Popularity of each app of this source's catalog (index = app id).
    app_popularity: Vec<u32>,
    azure_apps: Vec<azure::AppIds>,
    duo_app_keys: Vec<String>,
}

impl World {
    /// The user and device of an event; an error (never a panic) if the event names neither.
    fn user_and_device(&self, e: &Event) -> serde_json::Result<(&habits::User, &habits::Device)> {
        use serde::ser::Error as _;
        let user = self
            .users
            .get(e.user as usize)
            .ok_or_else(|| serde_json::Error::custom("event of an unknown user"))?;
        let device = user
            .device(self, e.device)
            .ok_or_else(|| serde_json::Error::custom("event of an unknown device"))?;
        Ok((user, device))
    }

    fn new(cfg: &GenerateConfig) -> Self {
        let tenant = uuid_from(mix(&[cfg.seed, 0x7e4a_0047]), mix(&[cfg.seed, 0x7e4a_0048]));
        let app_popularity = match cfg.source {
            GenSource::Azure => azure::APPS.iter().map(|a| a.popularity).collect(),
            GenSource::Duo => duo::APPS.iter().map(|a| a.popularity).collect(),
        };
        let mut world = World {
            source: cfg.source,
            start_micros: day_start_micros(cfg.start, 0).unwrap_or(0),
            tenant,
            tenant_path: format!("/tenants/{}/providers/Microsoft.aadiam", Uuid(tenant)),
            users: Vec::new(),
            foreign_devices: habits::foreign_devices(),
            foreign_phones: habits::foreign_phones(cfg.seed),
            app_popularity,
            azure_apps: azure::app_ids(),
            duo_app_keys: duo::app_keys(),
        };
        world.users = habits::users(cfg, &world.app_popularity);
        world
    }
}

// ---------------------------------------------------------------------------------------------
// Events, source-neutral; azure.rs and duo.rs render them.

/// Which device an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DevRef {
    /// One of the user's own devices (index into `User::devices`).
    Own(u8),
    /// A device no user owns (index into `World::foreign_devices`).
    Foreign(u8),
}

/// Which phone approves a Duo authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhoneRef {
    /// The user's own phone.
    Own,
    /// A phone no user owns (index into `World::foreign_phones`).
    Foreign(u8),
}

/// Why a sign-in failed, source-neutral; each source maps it to its own codes and reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailKind {
    /// Wrong password or passcode.
    BadSecret,
    /// A second factor is required (Azure's interrupt asking for MFA).
    MfaRequired,
    /// The second-factor request timed out.
    MfaTimeout,
    /// The user declined or cancelled the second-factor request.
    MfaDenied,
    /// Azure's "keep me signed in" interrupt.
    Interrupt,
    /// The session or request expired.
    SessionExpired,
    /// The account is locked after too many failures.
    Locked,
    /// Blocked by a conditional-access or Duo policy.
    Blocked,
    /// The user is not allowed to use this application.
    NotPermitted,
    /// The user reported the request as fraud.
    Fraud,
}

/// The second factor of a Duo authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Factor {
    DuoPush,
    PhoneCall,
    Passcode,
    SmsPasscode,
}

impl Factor {
    fn as_str(self) -> &'static str {
        match self {
            Factor::DuoPush => "duo_push",
            Factor::PhoneCall => "phone_call",
            Factor::Passcode => "passcode",
            Factor::SmsPasscode => "sms_passcode",
        }
    }
}

/// One sign-in or authentication, before it is rendered in a source's shape.
#[derive(Debug, Clone, Copy)]
struct Event {
    /// Event time, microseconds since the epoch (UTC).
    micros: i64,
    /// The event id (Azure `properties.id`, Duo `txid`); the other ids derive from it.
    id: u128,
    /// Index of the user.
    user: u32,
    device: DevRef,
    /// The device runs its upgraded browser version.
    upgraded: bool,
    /// Index into [`habits::CITIES`] of where the access came from.
    city: u16,
    ip: u32,
    /// Index into the source's app catalog.
    app: u16,
    fail: Option<FailKind>,
    /// Azure: an interactive sign-in (`SignInLogs`) or not.
    interactive: bool,
    /// Azure: signed in through a browser (`clientAppUsed` "Browser").
    browser_client: bool,
    /// Duo: the second factor.
    factor: Factor,
    /// Duo: the phone that approved it, where it was and its address.
    phone: PhoneRef,
    phone_city: u16,
    phone_ip: u32,
    /// Set on injected anomalous events.
    anomaly: Option<AnomalyKind>,
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness.

/// Independent random streams drawn from one seed.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Users = 1,
    Classes = 2,
    Normal = 3,
    Anomaly = 4,
    Plan = 5,
}

/// SplitMix64's finalizer.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixes several words into one well-spread word.
fn mix(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x243f_6a88_85a3_08d3, |h, &w| splitmix(h ^ splitmix(w)))
}

/// The random stream for (seed, stream, parts): the same inputs always give the same stream.
fn stream_rng(seed: u64, stream: Stream, parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(&[seed, stream as u64, mix(parts)]))
}

/// A version-4 UUID from two random words.
fn uuid_from(hi: u64, lo: u64) -> u128 {
    let v = (u128::from(hi) << 64) | u128::from(lo);
    (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

/// A random version-4 UUID.
fn random_uuid(rng: &mut ChaCha8Rng) -> u128 {
    uuid_from(rng.random(), rng.random())
}

/// A UUID derived from another one and a purpose, for the ids that need no randomness of
/// their own (correlation ids, request ids).
fn derived_uuid(id: u128, purpose: u64) -> u128 {
    let a = mix(&[id as u64, (id >> 64) as u64, purpose]);
    uuid_from(a, splitmix(a ^ purpose))
}

/// A stable UUID from a name (FNV-1a mixed), for catalog ids.
fn name_uuid(name: &str, purpose: u64) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    uuid_from(mix(&[h, purpose]), mix(&[h, purpose, 1]))
}

/// A Duo-style key: `prefix` then upper-case letters and digits, 20 characters in all.
fn duo_key(prefix: &str, a: u64, b: u64) -> String {
    const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut s = String::with_capacity(20);
    s.push_str(prefix);
    let p = prefix.bytes().fold(0u64, |h, c| (h << 8) | u64::from(c));
    let mut x = mix(&[p, a, b]);
    let mut y = mix(&[p, b, a, 7]);
    while s.len() < 20 {
        s.push(char::from(ALPHABET[(x % 36) as usize]));
        x /= 36;
        if x < 36 {
            x = y;
            y = splitmix(y);
        }
    }
    s
}

/// Uniform in [0, 1).
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    rng.random::<f64>()
}

/// Uniform integer in [lo, hi] (lo when the range is empty).
fn between(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        lo + rng.random_range(0..=hi - lo)
    }
}

/// Uniform index below `n` (0 when `n` is 0).
fn index(rng: &mut ChaCha8Rng, n: usize) -> usize {
    if n == 0 { 0 } else { rng.random_range(0..n) }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - unit(rng);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Poisson draw with mean `lambda` (Knuth below 30, a rounded normal above).
fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if !lambda.is_finite() || lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        let limit = (-lambda).exp();
        let mut k = 0u32;
        let mut p = unit(rng);
        while p > limit && k < 1000 {
            k += 1;
            p *= unit(rng);
        }
        k
    } else {
        let x = lambda + lambda.sqrt() * normal(rng);
        x.round().clamp(0.0, 1_000_000.0) as u32
    }
}

/// Picks an index by weights.
fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return index(rng, weights.len());
    }
    let mut r = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if r < u64::from(w) {
            return i;
        }
        r -= u64::from(w);
    }
    weights.len().saturating_sub(1)
}

/// Shuffles in place (Fisher-Yates), deterministically for a given stream.
fn shuffle<T>(rng: &mut ChaCha8Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

const MINUTE_MICROS: i64 = 60_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

// ---------------------------------------------------------------------------------------------
// Serializers for values kept compact in memory and written without allocation.

/// A short string built on the stack.
struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    fn new() -> Self {
        StackStr {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A UUID, written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Uuid(u128);

impl Uuid {
    fn text(self) -> [u8; 36] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 36];
        let mut nibble = 0;
        for (i, slot) in out.iter_mut().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            *slot = HEX[((self.0 >> (124 - 4 * nibble)) & 0xf) as usize];
            nibble += 1;
        }
        out
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.text()).unwrap_or(""))
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.text()).unwrap_or(""))
    }
}

/// An empty UUID field (`""`) or a UUID.
struct MaybeUuid(Option<u128>);

impl Serialize for MaybeUuid {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => Uuid(v).serialize(s),
            None => s.serialize_str(""),
        }
    }
}

/// An ISO-8601 UTC time with microseconds: `2022-08-01T00:03:56.207532Z` (Azure) or
/// `2022-08-01T00:03:56.207532+00:00` (Duo).
struct Iso {
    micros: i64,
    zulu: bool,
}

impl Iso {
    fn zulu(micros: i64) -> Self {
        Iso { micros, zulu: true }
    }

    fn offset(micros: i64) -> Self {
        Iso {
            micros,
            zulu: false,
        }
    }

    fn text(&self) -> Option<StackStr<40>> {
        let t = chrono::DateTime::from_timestamp_micros(self.micros)?;
        let mut s = StackStr::<40>::new();
        write!(
            s,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_micros(),
            if self.zulu { "Z" } else { "+00:00" }
        )
        .ok()?;
        Some(s)
    }
}

impl Serialize for Iso {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.text() {
            Some(t) => s.serialize_str(t.as_str()),
            None => Err(serde::ser::Error::custom(format!(
                "time {} µs is out of range",
                self.micros
            ))),
        }
    }
}

/// An IPv4 address.
#[derive(Debug, Clone, Copy)]
struct Ip(u32);

impl Serialize for Ip {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut t = StackStr::<16>::new();
        let [a, b, c, d] = self.0.to_be_bytes();
        write!(t, "{a}.{b}.{c}.{d}").map_err(serde::ser::Error::custom)?;
        s.serialize_str(t.as_str())
    }
}

/// An empty JSON array.
struct EmptyList;

impl Serialize for EmptyList {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        s.serialize_seq(Some(0))?.end()
    }
}

/// An empty JSON object.
struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let err = generate(&c, dir.path()).expect_err("invalid");
        let text = err.to_string();
        for field in ["users", "days", "files_per_day", "anomaly_users_fraction"] {
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
