//! Analyst feedback by detection id: every detection carries a stable `detection_id` (the
//! same event gives the same id in every run and on any number of workers); an analyst's
//! verdict (`true_positive`, `false_positive`, `benign`) is joined with the detection it
//! names and appended to `dfp_feedback_{source}.jsonl` beside the run's outputs, possibly days
//! later; [`report`] turns the verdicts into precision per model kind, per model, per feature
//! pattern and per day, and, where the run scored challengers in the shadow, the precision of
//! the champion beside the challenger's on the same judged events.
//!
//! A benign or false-positive verdict can silence its pattern for the user a while
//! ([`Suppression`], kept in the registry's `suppressions.jsonl`, so later runs see it): the
//! user's detections with the same two leading features and event times in the rule's span are
//! not written as detections (they stay in the scores), counted in the run's summary.
//!
//! Nothing is lost: a verdict naming an id the run never detected goes to
//! `dfp_feedback_unmatched_{source}.jsonl` with the reason (the detection may be in another
//! output directory); a repeated verdict is reported and not written twice; a changed verdict
//! is appended, and the latest one counts.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Filter;

use dfp_engine::registry::{is_own_model, split_label};
use dfp_engine::{Error, Result};

use crate::metrics::SharedStats;
use crate::post_proc::Detection;
use crate::serialize::OutKind;
use crate::sink::files::output_path;

/// The id of the detection of a `user`'s event at `ts_us` (µs) with event id `event_id`
/// (empty when the source has none) from `source`: 16 hex digits of a 64-bit FNV-1a hash of
/// the four, so it does not depend on the run, the model or the worker layout.
pub fn detection_id(source: &str, user: &str, ts_us: i64, event_id: &str) -> String {
    let mut h = dfp_engine::hash::fnv1a64(source.as_bytes());
    for part in [user.as_bytes(), &ts_us.to_le_bytes(), event_id.as_bytes()] {
        h = dfp_engine::hash::fnv1a64_from(h, &[0]);
        h = dfp_engine::hash::fnv1a64_from(h, part);
    }
    format!("{h:016x}")
}

/// An analyst's verdict on a detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// An attack or misuse: the detection was right.
    TruePositive,
    /// Nothing unusual: the detection was wrong.
    FalsePositive,
    /// Unusual but legitimate (a trip, a new device): not an attack.
    Benign,
}

impl Label {
    /// The name as written: `true_positive`, `false_positive`, `benign`.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::TruePositive => "true_positive",
            Label::FalsePositive => "false_positive",
            Label::Benign => "benign",
        }
    }
}

impl std::str::FromStr for Label {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Label, String> {
        match s {
            "true_positive" => Ok(Label::TruePositive),
            "false_positive" => Ok(Label::FalsePositive),
            "benign" => Ok(Label::Benign),
            other => Err(format!(
                "{other:?} is not a verdict: true_positive, false_positive or benign"
            )),
        }
    }
}

/// One verdict, as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The detection it judges.
    pub detection_id: String,
    /// The verdict.
    pub label: Label,
    /// Who gave it.
    pub by: String,
    /// Free text.
    #[serde(default)]
    pub note: String,
    /// When it was given (RFC 3339, UTC).
    pub at: String,
}

/// What the verdict judged: the detection's fields that the reports group by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// The user.
    pub username: String,
    /// The event's time (as the detections file has it).
    pub timestamp: String,
    /// The event id (empty when the source has none).
    #[serde(default)]
    pub event_id: String,
    /// `name:version` of the model that scored it.
    pub model_version: String,
    /// Its `mean_abs_z`.
    pub mean_abs_z: Option<f64>,
    /// The features that drove it, most first.
    pub top_features: Vec<String>,
}

/// A verdict joined with its detection: one line of `dfp_feedback_{source}.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The detection.
    pub detection: Judged,
}

/// A confirmed benign pattern of one user, silenced for a span of event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    /// The user.
    pub user: String,
    /// The pattern ([`pattern`]): the two leading features, `+`-joined.
    pub pattern: String,
    /// From this event time on (the judged detection's), µs since the epoch.
    pub from_us: i64,
    /// Until this event time (excluded).
    pub until_us: i64,
    /// The detection whose verdict made the rule.
    pub detection_id: String,
    /// Who made it.
    pub by: String,
    /// Why (the verdict's note).
    pub why: String,
    /// When it was made (RFC 3339, UTC).
    pub at: String,
}

/// The file of suppression rules in a registry directory.
pub fn suppressions_path(registry: &Path) -> PathBuf {
    registry.join("suppressions.jsonl")
}

/// The rules of a registry: every user's silenced patterns.
#[derive(Debug, Clone, Default)]
pub struct Suppressions {
    rules: HashMap<String, Vec<Suppression>>,
}

impl Suppressions {
    /// The rules in `registry` (none when it has no rule file); a line that is not a rule is
    /// an error naming the file and line.
    pub fn load(registry: &Path) -> Result<Suppressions> {
        let path = suppressions_path(registry);
        let mut rules: HashMap<String, Vec<Suppression>> = HashMap::new();
        for (line, v) in json_lines(&path)? {
            let rule: Suppression = serde_json::from_value(v).map_err(|e| Error::Json {
                context: format!("{} line {line}: a suppression rule", path.display()),
                source: e,
            })?;
            rules.entry(rule.user.clone()).or_default().push(rule);
        }
        Ok(Suppressions { rules })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule silences the detection of `user`'s event at `ts_us` led by
    /// `top_features`.
    pub fn silences(&self, user: &str, ts_us: i64, top_features: &[String]) -> bool {
        self.rules.get(user).is_some_and(|rules| {
            let p = pattern(top_features);
            rules
                .iter()
                .any(|r| r.pattern == p && (r.from_us..r.until_us).contains(&ts_us))
        })
    }
}

/// Silences the pattern of the judged detection `judged` (verdict `verdict`) for `days` days
/// of event time from it: appended to `registry`'s rules.
pub fn suppress(
    registry: &Path,
    verdict: &Verdict,
    judged: &Judged,
    days: u32,
) -> Result<Suppression> {
    if verdict.label == Label::TruePositive {
        return Err(Error::stage(
            "feedback",
            "a true positive is not silenced: --suppress-for goes with benign or false_positive",
        ));
    }
    let from_us = chrono::DateTime::parse_from_rfc3339(&judged.timestamp)
        .map_err(|e| {
            Error::stage(
                "feedback",
                format!(
                    "detection {}: its timestamp {:?} is not RFC 3339 ({e})",
                    verdict.detection_id, judged.timestamp
                ),
            )
        })?
        .timestamp_micros();
    let rule = Suppression {
        user: judged.username.clone(),
        pattern: pattern(&judged.top_features),
        from_us,
        until_us: from_us.saturating_add(i64::from(days) * 86_400_000_000),
        detection_id: verdict.detection_id.clone(),
        by: verdict.by.clone(),
        why: verdict.note.clone(),
        at: verdict.at.clone(),
    };
    std::fs::create_dir_all(registry)
        .map_err(|e| Error::io(registry, "creating the registry", e))?;
    append(&suppressions_path(registry), &rule)?;
    Ok(rule)
}

/// The silencing stage as a timely operator: drops the detections a rule silences.
pub trait Silence<'s> {
    /// The detections no rule silences; the others are counted in `stats.suppressed`.
    fn silence(self, rules: Arc<Suppressions>, stats: SharedStats)
    -> StreamVec<'s, u64, Detection>;
}

impl<'s> Silence<'s> for StreamVec<'s, u64, Detection> {
    fn silence(
        self,
        rules: Arc<Suppressions>,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, Detection> {
        self.filter(move |d| {
            let user = d.scored.row.user.as_deref().unwrap_or("");
            let silenced = rules.silences(user, d.scored.row.ts, &d.top_features);
            if silenced {
                stats.borrow_mut().suppressed += 1;
            }
            !silenced
        })
    }
}

/// What recording a verdict did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A first verdict on the detection, written.
    New(Judged),
    /// The same verdict again: not written twice.
    Duplicate,
    /// A different verdict than before (the old one): written; the latest counts.
    Changed(Label),
    /// No detection with that id in the output directory: written to the unmatched file.
    Unknown(PathBuf),
}

/// The feedback file of `source` in `output`.
pub fn feedback_path(output: &Path, source: &str) -> PathBuf {
    output.join(format!("dfp_feedback_{source}.jsonl"))
}

fn unmatched_path(output: &Path, source: &str) -> PathBuf {
    output.join(format!("dfp_feedback_unmatched_{source}.jsonl"))
}

fn append(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_string(value).map_err(|e| Error::Json {
        context: format!("writing {}", path.display()),
        source: e,
    })?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, "opening", e))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| Error::io(path, "appending a verdict", e))
}

/// The JSON lines of `path` with their line numbers (nothing when it does not exist); a line
/// that is not JSON is an error naming the file and line.
fn json_lines(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, "opening", e)),
    };
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, "reading", e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| Error::Json {
            context: format!("{} line {}", path.display(), i + 1),
            source: e,
        })?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// What a detections line says about the detection, for the verdict's record.
fn judged(d: &serde_json::Value) -> Judged {
    let text = |k: &str| match &d[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    Judged {
        username: text("username"),
        timestamp: text("timestamp"),
        event_id: text("event_id"),
        model_version: text("model_version"),
        mean_abs_z: d["mean_abs_z"].as_f64(),
        top_features: d["top_features"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Every verdict recorded in `output` for `source`, oldest first.
pub fn read(output: &Path, source: &str) -> Result<Vec<Feedback>> {
    let path = feedback_path(output, source);
    json_lines(&path)?
        .into_iter()
        .map(|(line, v)| {
            serde_json::from_value(v).map_err(|e| Error::Json {
                context: format!("{} line {line}", path.display()),
                source: e,
            })
        })
        .collect()
}

/// The verdicts of one run output and the detections they may name: the detections file is
/// read once and then only what the run appends to it (whole lines), the verdicts once, so
/// recording many verdicts (a feedback topic) does not read both files again for each.
pub struct Journal {
    output: PathBuf,
    source: String,
    detections: HashMap<String, Judged>,
    read_to: u64,
    latest: HashMap<String, Label>,
}

impl Journal {
    /// Detections judged so far (their latest verdict) and how many of them were true
    /// positives.
    pub fn precision(&self) -> (u64, u64) {
        let tp = self
            .latest
            .values()
            .filter(|l| **l == Label::TruePositive)
            .count();
        (self.latest.len() as u64, tp as u64)
    }

    /// The verdicts recorded so far in `output` for `source`.
    pub fn open(output: &Path, source: &str) -> Result<Journal> {
        let latest = read(output, source)?
            .into_iter()
            .map(|f| (f.verdict.detection_id, f.verdict.label))
            .collect();
        Ok(Journal {
            output: output.to_path_buf(),
            source: source.to_string(),
            detections: HashMap::new(),
            read_to: 0,
            latest,
        })
    }

    /// Reads the whole lines the detections file has gained since the last read.
    fn refresh(&mut self) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let path = output_path(&self.output, &self.source, OutKind::DetectionsJson);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&path, "opening", e)),
        };
        let mut text = Vec::new();
        f.seek(SeekFrom::Start(self.read_to))
            .and_then(|_| f.read_to_end(&mut text))
            .map_err(|e| Error::io(&path, "reading", e))?;
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in text[..whole].split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let d: serde_json::Value = serde_json::from_slice(line).map_err(|e| Error::Json {
                context: format!("{}: a detection", path.display()),
                source: e,
            })?;
            if let Some(id) = d["detection_id"].as_str() {
                self.detections.insert(id.to_string(), judged(&d));
            }
        }
        self.read_to += whole as u64;
        Ok(())
    }

    /// The detection `id`, if the run has written it.
    pub fn detection(&mut self, id: &str) -> Result<Option<Judged>> {
        if !self.detections.contains_key(id) {
            self.refresh()?;
        }
        Ok(self.detections.get(id).cloned())
    }

    /// Records `verdict` on a detection of the run.
    pub fn record(&mut self, verdict: &Verdict) -> Result<Recorded> {
        match self.try_record(verdict)? {
            Some(done) => Ok(done),
            None => unmatched(&self.output, &self.source, verdict),
        }
    }

    /// [`Self::record`], but None (nothing written) when no detection has the id yet.
    fn try_record(&mut self, verdict: &Verdict) -> Result<Option<Recorded>> {
        let id = verdict.detection_id.trim();
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::stage(
                "feedback",
                format!(
                    "{:?} is not a detection id (the `detection_id` column of the detections: 16 hex digits)",
                    verdict.detection_id
                ),
            ));
        }
        let Some(judged) = self.detection(id)? else {
            return Ok(None);
        };
        let before = self.latest.get(id).copied();
        if before == Some(verdict.label) {
            return Ok(Some(Recorded::Duplicate));
        }
        append(
            &feedback_path(&self.output, &self.source),
            &Feedback {
                verdict: verdict.clone(),
                detection: judged.clone(),
            },
        )?;
        self.latest.insert(id.to_string(), verdict.label);
        Ok(Some(match before {
            Some(old) => Recorded::Changed(old),
            None => Recorded::New(judged),
        }))
    }
}

/// The verdict kept in the unmatched file: no detection has its id.
fn unmatched(output: &Path, source: &str, verdict: &Verdict) -> Result<Recorded> {
    let path = unmatched_path(output, source);
    let reason = format!(
        "no detection {} in {}",
        verdict.detection_id.trim(),
        output_path(output, source, OutKind::DetectionsJson).display()
    );
    append(
        &path,
        &serde_json::json!({ "verdict": verdict, "reason": reason }),
    )?;
    Ok(Recorded::Unknown(path))
}

/// Verdict counts of one group, and its precision.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Precision {
    /// Detections judged.
    pub judged: u64,
    /// Judged true positives.
    pub true_positive: u64,
    /// Judged false positives.
    pub false_positive: u64,
    /// Judged benign.
    pub benign: u64,
    /// true positives / judged (None when nothing was judged).
    pub precision: Option<f64>,
}

impl Precision {
    fn add(&mut self, label: Label) {
        self.judged += 1;
        match label {
            Label::TruePositive => self.true_positive += 1,
            Label::FalsePositive => self.false_positive += 1,
            Label::Benign => self.benign += 1,
        }
        self.precision = Some(self.true_positive as f64 / self.judged as f64);
    }
}

/// The champion's and the challenger's precision on the same judged events of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Challenge {
    /// The model name.
    pub model: String,
    /// The champion's version.
    pub champion: String,
    /// The challenger's version.
    pub challenger: String,
    /// The champion's detections judged (all of them scored by the challenger too).
    pub champion_precision: Precision,
    /// Those the challenger would also have alerted on.
    pub challenger_precision: Precision,
}

/// Precision by what it groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Every judged detection (the latest verdict of each).
    pub overall: Precision,
    /// By model kind: `user` (the user's own model) or `generic` (any other).
    pub by_kind: BTreeMap<String, Precision>,
    /// By model name.
    pub by_model: BTreeMap<String, Precision>,
    /// By feature pattern: the two leading features, `+`-joined.
    pub by_pattern: BTreeMap<String, Precision>,
    /// By the event's UTC day.
    pub by_day: BTreeMap<String, Precision>,
    /// Champion against challenger, where the shadow file has the judged events.
    pub challenges: Vec<Challenge>,
}

/// The pattern of a detection: its two leading features, `+`-joined.
pub fn pattern(top_features: &[String]) -> String {
    let lead: Vec<&str> = top_features.iter().take(2).map(String::as_str).collect();
    if lead.is_empty() {
        "-".to_string()
    } else {
        lead.join("+")
    }
}

/// Precision of the verdicts recorded in `output` for `source` (the latest verdict of each
/// detection counts), with the champion against its challenger where `dfp_shadow_{source}.csv`
/// has the judged events.
pub fn report(output: &Path, source: &str) -> Result<Report> {
    let mut latest: BTreeMap<String, Feedback> = BTreeMap::new();
    for f in read(output, source)? {
        latest.insert(f.verdict.detection_id.clone(), f);
    }
    let mut r = Report::default();
    for f in latest.values() {
        let label = f.verdict.label;
        let d = &f.detection;
        let model = split_label(&d.model_version).0.to_string();
        let kind = if is_own_model(&model, &d.username) {
            "user"
        } else {
            "generic"
        };
        r.overall.add(label);
        r.by_kind.entry(kind.to_string()).or_default().add(label);
        r.by_model.entry(model).or_default().add(label);
        r.by_pattern
            .entry(pattern(&d.top_features))
            .or_default()
            .add(label);
        let day: String = d.timestamp.chars().take(10).collect();
        r.by_day.entry(day).or_default().add(label);
    }
    r.challenges = challenges(output, source, &latest)?;
    Ok(r)
}

/// Champion against challenger on the judged events the shadow file has.
fn challenges(
    output: &Path,
    source: &str,
    latest: &BTreeMap<String, Feedback>,
) -> Result<Vec<Challenge>> {
    let path = output_path(output, source, OutKind::Shadow);
    if latest.is_empty() || !path.exists() {
        return Ok(Vec::new());
    }
    let bad = |why: String| Error::stage("feedback", format!("{}: {why}", path.display()));
    let mut reader = csv::Reader::from_path(&path).map_err(|e| bad(e.to_string()))?;
    let mut out: HashMap<(String, String, String), Challenge> = HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let r = record.map_err(|e| bad(e.to_string()))?;
        let field = |k: usize| r.get(k).unwrap_or("");
        let ts = chrono::DateTime::parse_from_rfc3339(field(2))
            .map_err(|e| bad(format!("line {}: timestamp {:?}: {e}", i + 2, field(2))))?
            .timestamp_micros();
        let id = detection_id(source, field(1), ts, field(0));
        let Some(f) = latest.get(&id) else {
            continue;
        };
        let key = (
            field(3).to_string(),
            field(4).to_string(),
            field(5).to_string(),
        );
        let c = out.entry(key.clone()).or_insert_with(|| Challenge {
            model: key.0,
            champion: key.1,
            challenger: key.2,
            champion_precision: Precision::default(),
            challenger_precision: Precision::default(),
        });
        c.champion_precision.add(f.verdict.label);
        if field(11) == "true" {
            c.challenger_precision.add(f.verdict.label);
        }
    }
    let mut out: Vec<Challenge> = out.into_values().collect();
    out.sort_by(|a, b| (&a.model, &a.champion).cmp(&(&b.model, &b.champion)));
    Ok(out)
}

/// One verdict message of the feedback topic (JSON): the verdict, and optionally how many days
/// to silence its pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicVerdict {
    detection_id: String,
    label: Label,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    note: String,
    #[serde(default)]
    suppress_for_days: Option<u32>,
}

/// What the feedback topic brought in a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopicReport {
    /// Verdicts recorded (new or changed).
    pub recorded: u64,
    /// Verdicts repeated (not written twice).
    pub duplicates: u64,
    /// Verdicts naming no detection of the run: in the unmatched file.
    pub unmatched: u64,
    /// Messages that are not verdicts: in the unmatched file with the reason.
    pub malformed: u64,
}

impl TopicReport {
    /// One line for the run's summary.
    pub fn line(&self) -> String {
        format!(
            "feedback topic: {} verdicts recorded, {} repeated, {} naming no detection, {} not verdicts",
            self.recorded, self.duplicates, self.unmatched, self.malformed
        )
    }
}

/// Where a run's feedback topic writes: the run's outputs and registry.
#[derive(Debug, Clone)]
pub struct FeedbackPlace {
    /// The run's output directory.
    pub output: PathBuf,
    /// The source.
    pub source: String,
    /// The registry (for suppression rules).
    pub registry: PathBuf,
}

/// A thread reading verdicts from a Kafka topic while a run goes on (`[feedback] topic`):
/// each is recorded as `dfp feedback` records it; one naming a detection the run has not
/// written yet is tried again until the run ends, then kept in the unmatched file. Offsets are
/// committed at the end, once every message is recorded: a crash reads them again, and a
/// verdict read twice is recorded once.
pub struct FeedbackTopic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Result<TopicReport>>,
}

impl FeedbackTopic {
    /// Starts reading `topic` through `kafka` in consumer group `group` (publishing the
    /// precision of the verdicts to `telemetry`, when the run serves `/metrics`).
    pub fn start(
        kafka: &crate::kafka::KafkaSettings,
        (topic, group): (&str, &str),
        place: FeedbackPlace,
        telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    ) -> Result<FeedbackTopic> {
        let consumer = kafka.consumer(group)?;
        crate::kafka::assign_all(&consumer, kafka, topic, &BTreeMap::new())?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let topic = topic.to_string();
        let handle = std::thread::Builder::new()
            .name("dfp-feedback".to_string())
            .spawn(move || read_topic(&consumer, &topic, &place, &flag, telemetry.as_deref()))
            .map_err(|e| Error::stage("feedback", format!("starting the topic reader: {e}")))?;
        Ok(FeedbackTopic { stop, handle })
    }

    /// Reads what is left, records the verdicts still waiting (or keeps them as unmatched),
    /// commits, and reports.
    pub fn finish(self) -> Result<TopicReport> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| Error::stage("feedback", "the topic reader panicked"))?
    }
}

fn read_topic(
    consumer: &crate::kafka::KafkaConsumer,
    topic: &str,
    place: &FeedbackPlace,
    stop: &std::sync::atomic::AtomicBool,
    telemetry: Option<&crate::telemetry::Telemetry>,
) -> Result<TopicReport> {
    use rdkafka::Message;
    use rdkafka::consumer::{CommitMode, Consumer};
    let mut report = TopicReport::default();
    let mut waiting: Vec<(Verdict, Option<u32>)> = Vec::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut retried = std::time::Instant::now();
    let (output, source) = (place.output.as_path(), place.source.as_str());
    let mut journal = Journal::open(output, source)?;
    let settle = |journal: &mut Journal,
                  v: &Verdict,
                  days: Option<u32>,
                  r: Recorded,
                  report: &mut TopicReport|
     -> Result<()> {
        match r {
            Recorded::New(_) | Recorded::Changed(_) => {
                report.recorded += 1;
                if let Some(t) = telemetry {
                    let (judged, tp) = journal.precision();
                    t.feedback(judged, tp);
                }
            }
            Recorded::Duplicate => report.duplicates += 1,
            Recorded::Unknown(_) => {
                report.unmatched += 1;
                return Ok(());
            }
        }
        if let Some(days) = days
            && let Some(judged) = journal.detection(v.detection_id.trim())?
        {
            suppress(&place.registry, v, &judged, days)?;
        }
        Ok(())
    };
    loop {
        let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
        // At the stop, what the topic holds is read before the end.
        match consumer.poll(std::time::Duration::from_millis(if stopping {
            500
        } else {
            200
        })) {
            Some(Ok(m)) => {
                next.insert(m.partition(), m.offset() + 1);
                let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                let label = format!("kafka:{topic}/{}@{}", m.partition(), m.offset());
                match serde_json::from_str::<TopicVerdict>(&text) {
                    Ok(t) => {
                        let v = Verdict {
                            detection_id: t.detection_id,
                            label: t.label,
                            by: t.by.unwrap_or_else(|| label.clone()),
                            note: t.note,
                            at: chrono::Utc::now()
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        };
                        match journal.try_record(&v)? {
                            Some(r) => {
                                settle(&mut journal, &v, t.suppress_for_days, r, &mut report)?
                            }
                            None => waiting.push((v, t.suppress_for_days)),
                        }
                    }
                    Err(e) => {
                        report.malformed += 1;
                        append(
                            &unmatched_path(output, source),
                            &serde_json::json!({ "message": label, "raw": text,
                                                 "reason": format!("not a verdict: {e}") }),
                        )?;
                    }
                }
                continue;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => tracing::warn!(topic, error = %e, "feedback topic"),
            None => {}
        }
        if stopping || retried.elapsed() >= std::time::Duration::from_secs(2) {
            retried = std::time::Instant::now();
            let mut still = Vec::new();
            for (v, days) in waiting.drain(..) {
                match journal.try_record(&v)? {
                    Some(r) => settle(&mut journal, &v, days, r, &mut report)?,
                    None => still.push((v, days)),
                }
            }
            waiting = still;
        }
        if stopping {
            break;
        }
    }
    for (v, days) in waiting {
        let r = unmatched(output, source, &v)?;
        settle(&mut journal, &v, days, r, &mut report)?;
    }
    if !next.is_empty() {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (&p, &o) in &next {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(o))
                .map_err(|e| crate::kafka::kafka_error("committing feedback offsets", e))?;
        }
        consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| crate::kafka::kafka_error("committing feedback offsets", e))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_ids_are_stable_and_tell_events_apart() {
        let id = detection_id("azure", "alice", 1_659_312_000_000_000, "e1");
        assert_eq!(id.len(), 16);
        assert_eq!(
            id,
            detection_id("azure", "alice", 1_659_312_000_000_000, "e1")
        );
        for other in [
            detection_id("duo", "alice", 1_659_312_000_000_000, "e1"),
            detection_id("azure", "alicf", 1_659_312_000_000_000, "e1"),
            detection_id("azure", "alice", 1_659_312_000_000_001, "e1"),
            detection_id("azure", "alice", 1_659_312_000_000_000, "e2"),
            // The parts are separated: moving a character from one to the next is another id.
            detection_id("azure", "alic", 1_659_312_000_000_000, "e1"),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn labels_read_back_and_bad_ones_say_what_is_allowed() {
        for l in [Label::TruePositive, Label::FalsePositive, Label::Benign] {
            assert_eq!(l.as_str().parse::<Label>(), Ok(l));
        }
        let e = "maybe".parse::<Label>().unwrap_err();
        assert!(e.contains("true_positive, false_positive or benign"), "{e}");
    }

    #[test]
    fn precision_counts_the_latest_verdict_only_by_its_groups() {
        let mut p = Precision::default();
        assert_eq!(p.precision, None);
        p.add(Label::TruePositive);
        p.add(Label::Benign);
        p.add(Label::FalsePositive);
        p.add(Label::TruePositive);
        assert_eq!((p.judged, p.true_positive, p.benign), (4, 2, 1));
        assert_eq!(p.precision, Some(0.5));
        assert_eq!(pattern(&["a".into(), "b".into(), "c".into()]), "a+b");
        assert_eq!(pattern(&[]), "-");
    }

    #[test]
    fn the_champion_and_its_challenger_are_judged_on_the_same_events() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let ts = |s: u32| format!("2022-08-01T00:00:{s:02}.000000Z");
        let micros = |s: u32| 1_659_312_000_000_000 + i64::from(s) * 1_000_000;
        // Three detections of user u by champion 1 of model M; the challenger (2) would
        // alert on the first two only.
        let mut detections = String::new();
        let mut shadow = format!("{}\n", crate::shadow::HEADER);
        for s in 0..3 {
            let id = detection_id("azure", "u", micros(s), &format!("e{s}"));
            detections += &serde_json::json!({
                "detection_id": id, "username": "u", "timestamp": ts(s), "event_id": format!("e{s}"),
                "model_version": "DFP-azure-u:1", "mean_abs_z": 4.0, "top_features": ["a", "b"],
            })
            .to_string();
            detections.push('\n');
            shadow += &format!("e{s},u,{},DFP-azure-u,1,2,4,4,0,0,true,{}\n", ts(s), s < 2);
        }
        std::fs::write(out.join("dfp_detections_azure.jsonl"), detections).unwrap();
        std::fs::write(out.join("dfp_shadow_azure.csv"), shadow).unwrap();
        let verdict = |s: u32, label| Verdict {
            detection_id: detection_id("azure", "u", micros(s), &format!("e{s}")),
            label,
            by: "t".into(),
            note: String::new(),
            at: "2022-08-02T00:00:00Z".into(),
        };
        // The challenger drops the false positive (event 2) and keeps the true one.
        let mut journal = Journal::open(out, "azure").unwrap();
        journal.record(&verdict(0, Label::TruePositive)).unwrap();
        journal.record(&verdict(2, Label::FalsePositive)).unwrap();
        assert_eq!(journal.precision(), (2, 1));
        let r = report(out, "azure").unwrap();
        assert_eq!(r.by_kind["user"].judged, 2);
        assert_eq!(r.by_pattern["a+b"].precision, Some(0.5));
        let [c] = r.challenges.as_slice() else {
            panic!("{:?}", r.challenges)
        };
        assert_eq!((c.champion.as_str(), c.challenger.as_str()), ("1", "2"));
        assert_eq!(c.champion_precision.precision, Some(0.5));
        assert_eq!(
            (
                c.challenger_precision.judged,
                c.challenger_precision.precision
            ),
            (1, Some(1.0))
        );
    }

    #[test]
    fn a_rule_silences_its_users_pattern_within_its_span_only() {
        let dir = tempfile::tempdir().unwrap();
        let verdict = Verdict {
            detection_id: "d1".into(),
            label: Label::Benign,
            by: "ana".into(),
            note: "travel".into(),
            at: "2022-08-03T00:00:00Z".into(),
        };
        let judged = Judged {
            username: "u".into(),
            timestamp: "2022-08-01T00:00:00Z".into(),
            event_id: String::new(),
            model_version: "DFP-azure-u:1".into(),
            mean_abs_z: Some(5.0),
            top_features: vec!["location".into(), "app".into(), "hour".into()],
        };
        let positive = Verdict {
            label: Label::TruePositive,
            ..verdict.clone()
        };
        assert!(suppress(dir.path(), &positive, &judged, 2).is_err());
        assert!(Suppressions::load(dir.path()).unwrap().is_empty());
        let rule = suppress(dir.path(), &verdict, &judged, 2).unwrap();
        assert_eq!(rule.pattern, "location+app");
        let rules = Suppressions::load(dir.path()).unwrap();
        let day = 86_400_000_000;
        let lead = |a: &str, b: &str| vec![a.to_string(), b.to_string(), "x".to_string()];
        assert!(rules.silences("u", rule.from_us, &lead("location", "app")));
        assert!(rules.silences("u", rule.from_us + 2 * day - 1, &lead("location", "app")));
        assert!(!rules.silences("u", rule.from_us + 2 * day, &lead("location", "app")));
        assert!(!rules.silences("u", rule.from_us - 1, &lead("location", "app")));
        assert!(!rules.silences("u", rule.from_us, &lead("app", "location")));
        assert!(!rules.silences("v", rule.from_us, &lead("location", "app")));
        std::fs::write(suppressions_path(dir.path()), "{not json\n").unwrap();
        let e = Suppressions::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("suppressions.jsonl line 1"), "{e}");
    }
}
