//! Online scoring, the core of `dfp serve`: the records of one request read by the source
//! schema, grouped by user, and each user's rows scored as the batch pipeline's inference
//! scores them: the inference window's derived features and familiar values, the user's
//! champion else the generic model (a challenger in the shadow), the run config's detection
//! rule. The caller keeps each user's [`UserState`] between requests and hands it in (`dfp
//! serve` keeps it in a NATS JetStream stream as snapshots and the [`Change`] each request made,
//! which [`Online::replay`] makes to another copy), so any instance can answer any request; a
//! request id a user's state has already applied is answered from the state's memo and not
//! applied twice.
//!
//! Input: a request's body (a JSON array of records as Morpheus' files hold them, or JSON
//! lines). Output: per record an [`Answer`]: its scores as a JSON object (the model
//! version, `mean_abs_z`, `max_abs_z`, `calibrated_z`, the z-loss per feature, the top
//! features, the familiar values, whether it would alert, named as in the detections file),
//! or an error naming the problem and the record's index. State: the
//! rolling-window settings and the scorer's model cache; every user's state is the caller's.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use dfp_engine::Result;
use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::lifecycle::Serving;
use dfp_engine::model::Backend;
use dfp_engine::registry::Registry;
use dfp_engine::rows::{Row, rows_from_batch};
use dfp_engine::schema::{MISSING_STRING, NULL_STRING, SourceSchema};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::config::RunConfig;
use crate::data_prep::prepare;
use crate::filter_detections::Rule;
use crate::inference::{Scored, Scorer};
use crate::post_proc::{TOP_FEATURES, top_indices};
use crate::rolling_window::{Emitted, RollingWindows, UserWindow};
use crate::serialize::Columns;
use crate::split_users::{SplitConfig, UserRows, generic_name_taken};

/// How many requests' answers a user's state keeps for retries.
const REMEMBERED: usize = 8;

/// One user's state between requests.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct UserState {
    /// Requests applied so far (the next one's rows arrive at epoch `requests + 1`).
    requests: u64,
    /// The user's inference window (derived features, familiar values).
    window: UserWindow,
    /// What the last requests applied answered, by request id.
    answered: VecDeque<(String, Vec<Kept>)>,
}

impl UserState {
    /// Requests applied to the user so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The state as stored.
    pub fn encode(&self) -> Result<Vec<u8>> {
        checkpoint::encode(self)
    }

    /// A stored state; `key` names it in errors.
    pub fn decode(bytes: &[u8], key: &str) -> Result<Self> {
        checkpoint::decode(bytes, Path::new(key))
    }
}

/// What applying one request did to one user's state, for [`Online::replay`] on another copy
/// of the state: the rows the window took and, for a request with an id, the answers kept for
/// its retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    rows: Vec<Row>,
    answered: Option<(String, Vec<Kept>)>,
}

/// One user's part of a request, applied: the answers, and the change made to the user's
/// state (none when the request had been applied before and was answered from the state).
#[derive(Debug, Default)]
pub struct Applied {
    /// The answers, by record index.
    pub answers: Vec<Answer>,
    /// The change, to be stored for other copies of the state.
    pub change: Option<Change>,
}

/// The answer for one record of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The record's index in the request (from 0).
    pub index: usize,
    /// Whether it was scored (else the answer is an error).
    pub scored: bool,
    /// Whether the run config's rule makes it a detection.
    pub alert: bool,
    /// Its detection id, when it was scored.
    pub detection_id: Option<String>,
    /// The answer as one JSON object: `index` and `error`, or the scores ([`Online::render`]).
    pub json: String,
}

impl Answer {
    /// A record that could not be scored, and why.
    pub fn error(index: usize, reason: &str) -> Self {
        Answer {
            index,
            scored: false,
            alert: false,
            detection_id: None,
            json: serde_json::json!({"index": index, "error": reason}).to_string(),
        }
    }
}

/// An answer as a user's state keeps it for retries: the scores as numbers (the JSON is
/// rendered again from them), a few hundred bytes a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kept {
    /// A scored record.
    Scored(Box<Scores>),
    /// A record that could not be scored: its index and why.
    Error(usize, String),
}

/// A scored record's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scores {
    index: usize,
    alert: bool,
    generic: bool,
    user: String,
    ts: i64,
    event_id: Option<String>,
    detection_id: String,
    model_version: String,
    mean_abs_z: f32,
    max_abs_z: f32,
    calibrated_z: f32,
    z_loss: Vec<f32>,
    familiar: u64,
}

impl Kept {
    fn index(&self) -> usize {
        match self {
            Kept::Scored(s) => s.index,
            Kept::Error(i, _) => *i,
        }
    }
}

/// A request's records read: the rows by user (each row's `origin.record` is its index in the
/// request), and the answers of the records that could not be read.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Rows by user, users in first-seen order.
    pub users: Vec<(String, Vec<Row>)>,
    /// Records that could not be read or have no usable user.
    pub errors: Vec<Answer>,
}

/// Scores requests' records as the batch pipeline's inference does.
pub struct Online {
    schema: Arc<SourceSchema>,
    reader: Reader,
    columns: Columns,
    rule: Rule,
    split: SplitConfig,
    windows: Mutex<RollingWindows>,
    scorer: Mutex<Scorer>,
    backend: Box<dyn Backend>,
}

/// `m` locked, also after a call panicked while it held it: the windows keep no user's state
/// between calls (each is handed in and taken out again, and one left behind is replaced when
/// its user comes back), and the scorer's versions and model cache are whole between its
/// calls; so the lock is taken back rather than failing every later request.
fn locked<'a, T>(m: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    m.lock().unwrap_or_else(|poisoned| {
        tracing::warn!("the {what} lock was held by a call that panicked; going on");
        m.clear_poison();
        poisoned.into_inner()
    })
}

impl Online {
    /// Scoring for `schema` under `config`, with the models of `registry` that `versions` name.
    pub fn new(
        schema: SourceSchema,
        config: &RunConfig,
        registry: Registry,
        versions: Serving,
        backend: Box<dyn Backend>,
    ) -> Result<Self> {
        config.validate("run config")?;
        let schema = if config.morpheus.features {
            schema.with_morpheus_features()?
        } else {
            schema
        };
        let windows = RollingWindows::new(
            &schema,
            config.training_window.clone(),
            config.inference_window.clone(),
        )?
        .with_familiarity(&schema, &config.familiarity)?;
        let schema = Arc::new(schema);
        let scorer = Scorer::new(
            schema.clone(),
            registry,
            versions,
            &config.split.generic_user,
            &config.inference,
            config.model.eval_batch_size,
        );
        Ok(Self {
            reader: Reader::new(schema.clone()),
            columns: Columns::for_config(&schema, config)?,
            rule: Rule::of(&config.detection),
            split: config.split.clone(),
            windows: Mutex::new(windows),
            scorer: Mutex::new(scorer),
            backend,
            schema,
        })
    }

    /// The source schema's name.
    pub fn source(&self) -> &str {
        &self.schema.name
    }

    /// The champions and challengers it scores with.
    pub fn versions(&self) -> Serving {
        locked(&self.scorer, "scorer").versions().clone()
    }

    /// Scores with `versions` from now on.
    pub fn set_versions(&self, versions: Serving) {
        locked(&self.scorer, "scorer").set_versions(versions);
    }

    /// Reads a request's body: every record by the schema, grouped by user.
    pub fn read(&self, body: &[u8]) -> Parsed {
        let mut out = Parsed::default();
        let read = self
            .reader
            .read_bytes(Path::new("request"), body, InputFormat::Auto);
        let mut rejected: Vec<usize> = read.rejected.iter().map(|r| r.record).collect();
        rejected.sort_unstable();
        for r in &read.rejected {
            out.errors.push(Answer::error(r.record, &r.reason));
        }
        let rows = match rows_from_batch(&read.batch, 0, 0) {
            Ok(rows) => rows,
            Err(e) => {
                let records = read.batch.num_rows() + rejected.len();
                out.errors.push(Answer::error(0, &e.chain().to_string()));
                tracing::error!(records, error = %e.chain(), "a request's batch could not become rows");
                return out;
            }
        };
        // The k-th good record is the k-th index no rejection took.
        let mut index = 0usize;
        let mut skip = rejected.iter().peekable();
        for mut row in rows {
            while skip.next_if(|&&r| r <= index).is_some() {
                index += 1;
            }
            row.origin.record = index as u64;
            match self.user_of(&mut row) {
                Ok(user) => match out.users.iter_mut().find(|(u, _)| *u == user) {
                    Some((_, rows)) => rows.push(row),
                    None => out.users.push((user, vec![row])),
                },
                Err(reason) => out.errors.push(Answer::error(index, &reason)),
            }
            index += 1;
        }
        if let Some(e) = read.broken {
            let at = index.max(rejected.last().map_or(0, |r| r + 1));
            out.errors.push(Answer::error(
                at,
                &format!("the request broke off at this record: {}", e.chain()),
            ));
        }
        out
    }

    /// The user a row belongs to, or why it has none that can be scored.
    fn user_of(&self, row: &mut Row) -> std::result::Result<String, String> {
        let unnamed = row
            .user
            .as_deref()
            .is_none_or(|u| u == MISSING_STRING || u == NULL_STRING);
        if unnamed {
            match &self.split.fallback_username {
                Some(f) => row.user = Some(f.clone()),
                None => {
                    return Err(format!(
                        "the record has no user: {:?} is missing or null (or set split.fallback_username)",
                        self.schema.username.path
                    ));
                }
            }
        }
        let user = row.user.clone().unwrap_or_default();
        if generic_name_taken(&user, &self.split) {
            return Err(format!(
                "the user id is the generic model's name {:?}; set split.generic_user to another name",
                self.split.generic_user
            ));
        }
        if self.split.skip_users.contains(&user)
            || !(self.split.only_users.is_empty() || self.split.only_users.contains(&user))
        {
            return Err(format!(
                "user {user:?} is left out by split.skip_users / split.only_users"
            ));
        }
        Ok(user)
    }

    /// Scores one user's rows of one request against the user's `state`, which it updates
    /// (unless `request` was already applied to it: then its answers are given again).
    pub fn apply(
        &self,
        state: &mut UserState,
        user: &str,
        rows: Vec<Row>,
        request: Option<&str>,
    ) -> Result<Applied> {
        Ok(self
            .apply_all(vec![(state, user, rows)], request)?
            .pop()
            .unwrap_or_default())
    }

    /// Scores several users' rows of one request (distinct users) against their states, all
    /// in one backend call, and updates each state; a state that had applied `request`
    /// already gives its answers again. Per user, in the order given: the answers and the
    /// change made to the state.
    pub fn apply_all(
        &self,
        mut users: Vec<(&mut UserState, &str, Vec<Row>)>,
        request: Option<&str>,
    ) -> Result<Vec<Applied>> {
        let mut kept: Vec<Vec<Kept>> = vec![Vec::new(); users.len()];
        let mut taken: Vec<Option<Vec<Row>>> = vec![None; users.len()];
        let mut owner: HashMap<String, usize> = HashMap::new();
        let dead_answer = |d: &crate::dead_letter::DeadLetter| {
            d.record
                .map(|r| Kept::Error(usize::try_from(r).unwrap_or(usize::MAX), d.reason.clone()))
        };
        let arrow = self.reader.arrow_schema();
        let mut prepared = Vec::new();
        for (k, (state, user, rows)) in users.iter_mut().enumerate() {
            if let Some(id) = request
                && let Some((_, memo)) = state.answered.iter().find(|(r, _)| r == id)
            {
                kept[k] = memo.clone();
                continue;
            }
            owner.insert(user.to_string(), k);
            let rows = std::mem::take(rows);
            taken[k] = Some(rows.clone());
            let emitted = self.advance(state, user, rows);
            kept[k].extend(emitted.late.iter().filter_map(dead_answer));
            for w in emitted.windows {
                let indices: Vec<u64> = w.rows.iter().map(|r| r.origin.record).collect();
                match prepare(w, &self.schema, &arrow) {
                    Ok(p) => prepared.push(p),
                    Err(e) => kept[k].extend(indices.into_iter().map(|i| {
                        Kept::Error(usize::try_from(i).unwrap_or(usize::MAX), e.to_string())
                    })),
                }
            }
        }
        if !prepared.is_empty() {
            let outcome = locked(&self.scorer, "scorer").score(self.backend.as_ref(), prepared);
            for d in &outcome.dead {
                let k = d.user.as_ref().and_then(|u| owner.get(u));
                match (k, dead_answer(d)) {
                    (Some(&k), Some(a)) => kept[k].push(a),
                    _ => tracing::warn!(user = ?d.user, reason = %d.reason, "model problem"),
                }
            }
            for s in outcome.scored {
                let Some(&k) = owner.get(&s.user) else {
                    continue;
                };
                kept[k].push(self.kept(s));
            }
        }
        let mut applied = Vec::with_capacity(users.len());
        for (k, (state, _, _)) in users.iter_mut().enumerate() {
            kept[k].sort_by_key(Kept::index);
            let answers = kept[k].iter().map(|x| self.render(x)).collect();
            let change = taken[k].take().map(|rows| Change {
                rows,
                answered: request.map(|id| (id.to_string(), std::mem::take(&mut kept[k]))),
            });
            if let Some((id, kept)) = change.as_ref().and_then(|c| c.answered.clone()) {
                remember(state, id, kept);
            }
            applied.push(Applied { answers, change });
        }
        Ok(applied)
    }

    /// Makes `change` (from [`Online::apply_all`] on another copy of the same state) to
    /// `state`, without scoring: the state becomes the one that applying the request left.
    pub fn replay(&self, state: &mut UserState, user: &str, change: Change) {
        self.advance(state, user, change.rows);
        if let Some((id, kept)) = change.answered {
            remember(state, id, kept);
        }
    }

    /// Pushes a request's rows of `user` through the user's inference window, as the next
    /// epoch: what that emits.
    fn advance(&self, state: &mut UserState, user: &str, mut rows: Vec<Row>) -> Emitted {
        state.requests += 1;
        let epoch = state.requests;
        for row in &mut rows {
            row.origin.epoch = epoch;
        }
        let mut windows = locked(&self.windows, "windows");
        windows.insert_user(user, std::mem::take(&mut state.window));
        let emitted = windows.push(
            UserRows {
                user: user.to_string(),
                generic: false,
                train: false,
                infer: true,
                payload: false,
                history_only: false,
                rows: rows.into_iter().map(Arc::new).collect(),
            },
            epoch,
        );
        state.window = windows.remove_user(user);
        emitted
    }
}

/// Keeps a request's answers in the user's state for its retries (the last [`REMEMBERED`]).
fn remember(state: &mut UserState, id: String, kept: Vec<Kept>) {
    state.answered.push_back((id, kept));
    while state.answered.len() > REMEMBERED {
        state.answered.pop_front();
    }
}

impl Online {
    /// A scored record's figures.
    fn kept(&self, s: Scored) -> Kept {
        Kept::Scored(Box::new(Scores {
            index: usize::try_from(s.row.origin.record).unwrap_or(usize::MAX),
            alert: self.rule.is_detection(&s),
            generic: s.generic,
            event_id: self.columns.event_id(&s.row),
            detection_id: self.columns.detection_id(&s.row),
            ts: s.row.ts,
            user: s.user,
            model_version: s.model_version,
            mean_abs_z: s.mean_abs_z,
            max_abs_z: s.max_abs_z,
            calibrated_z: s.calibrated_z,
            z_loss: s.z_loss,
            familiar: s.familiar,
        }))
    }

    /// A record's answer. Scored: `index`, `alert`, `generic`, `username`, `timestamp`,
    /// `event_id`, `detection_id`, `model_version`, `mean_abs_z`, `max_abs_z`,
    /// `calibrated_z`, `z_loss` (by feature), `top_features` and `familiar` (the familiar
    /// entries that explained features away), named as in the detections file.
    fn render(&self, kept: &Kept) -> Answer {
        let s = match kept {
            Kept::Error(index, reason) => return Answer::error(*index, reason),
            Kept::Scored(s) => s,
        };
        let features = self.columns.features();
        let timestamp = chrono::DateTime::from_timestamp_micros(s.ts).map_or_else(
            || s.ts.to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        // Written out directly: a serde_json::Value tree per record cost a tenth of the
        // service's time on batched requests.
        let mut json = String::with_capacity(320 + 40 * features.len());
        let _ = write!(
            json,
            "{{\"index\":{},\"alert\":{},\"generic\":{},\"username\":{},\"timestamp\":{},\"event_id\":{},\"detection_id\":{},\"model_version\":{},\"mean_abs_z\":{},\"max_abs_z\":{},\"calibrated_z\":{},\"z_loss\":{{",
            s.index,
            s.alert,
            s.generic,
            text(&s.user),
            text(&timestamp),
            s.event_id
                .as_deref()
                .map_or_else(|| "null".to_string(), text),
            text(&s.detection_id),
            text(&s.model_version),
            number(s.mean_abs_z),
            number(s.max_abs_z),
            number(s.calibrated_z),
        );
        for (k, (f, &z)) in features.iter().zip(&s.z_loss).enumerate() {
            let comma = if k == 0 { "" } else { "," };
            let _ = write!(json, "{comma}{}:{}", text(f), number(z));
        }
        json.push_str("},\"top_features\":[");
        let top: Vec<String> = top_indices(&s.z_loss, TOP_FEATURES)
            .into_iter()
            .filter_map(|i| features.get(i))
            .map(|f| text(f))
            .collect();
        json.push_str(&top.join(","));
        let _ = write!(
            json,
            "],\"familiar\":{}}}",
            text(&self.columns.familiar_names(s.familiar))
        );
        Answer {
            index: s.index,
            scored: true,
            alert: s.alert,
            detection_id: Some(s.detection_id.clone()),
            json,
        }
    }
}

/// `value` as a JSON string.
fn text(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// `value` as a JSON number in its shortest f32 text (as the detections files show it, a
/// whole number with ".0"), or null when it is not finite.
fn number(value: f32) -> String {
    if !value.is_finite() {
        return "null".to_string();
    }
    let text = value.to_string();
    if text.contains('.') {
        text
    } else {
        text + ".0"
    }
}

/// A request's reply: `{"request_id": ..., "records": [...], "scored": n, "errors": m}`, the
/// records in index order.
pub fn reply(request: Option<&str>, mut answers: Vec<Answer>) -> String {
    answers.sort_by_key(|a| a.index);
    let errors = answers.iter().filter(|a| !a.scored).count();
    let records: Vec<&str> = answers.iter().map(|a| a.json.as_str()).collect();
    format!(
        "{{\"request_id\":{},\"records\":[{}],\"scored\":{},\"errors\":{errors}}}",
        serde_json::Value::from(request),
        records.join(","),
        answers.len() - errors,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, fast_config};

    fn field(json: &str, key: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        v[key].clone()
    }

    /// Online scoring of `f`'s schema with no model at all.
    fn modelless(f: &Fixture, cfg: &RunConfig) -> Online {
        let registry = Registry::open(tempfile::tempdir().unwrap().path()).unwrap();
        let backend = dfp_engine::device::backend(dfp_engine::model::Device::Cpu, 1).unwrap();
        Online::new(
            (*f.schema).clone(),
            cfg,
            registry,
            Serving::default(),
            backend,
        )
        .unwrap()
    }

    #[test]
    fn a_users_requests_score_as_the_batch_pipelines_inference_and_a_retry_is_not_applied_twice() {
        let f = Fixture::duo(3, 4);
        let mut cfg = fast_config();
        cfg.familiarity.enabled = true;
        let prepared = f.prepared(&cfg);
        let batch = f.scored(&cfg);
        assert!(batch.len() > 10, "{} rows scored", batch.len());
        let (_dir, registry, versions) = f.registry_before_last(&cfg, &prepared);
        let backend = dfp_engine::device::backend(dfp_engine::model::Device::Cpu, 1).unwrap();
        let online = Online::new((*f.schema).clone(), &cfg, registry, versions, backend).unwrap();
        // Every day, one request per user with the user's rows of the day, as a client that
        // streams its users' sign-ins would send them.
        let mut states: HashMap<String, UserState> = HashMap::new();
        let mut last_day: HashMap<String, Answer> = HashMap::new();
        let mut before: std::collections::BTreeMap<String, (UserState, Vec<Row>)> =
            Default::default();
        let days = f.days();
        let n = days.len();
        for (day, (_, files)) in days.into_iter().enumerate() {
            let mut by_user: Vec<(String, Vec<Row>)> = Vec::new();
            for row in files.into_iter().flat_map(|f| f.rows) {
                let user = row.user.clone().unwrap();
                match by_user.iter_mut().find(|(u, _)| *u == user) {
                    Some((_, rows)) => rows.push(row),
                    None => by_user.push((user, vec![row])),
                }
            }
            for (user, mut rows) in by_user {
                for (i, r) in rows.iter_mut().enumerate() {
                    r.origin.record = i as u64;
                }
                let state = states.entry(user.clone()).or_default();
                if day + 1 == n {
                    before.insert(user.clone(), (state.clone(), rows.clone()));
                }
                let id = format!("{user}-{day}");
                let mut copy = state.clone();
                let applied = online.apply(state, &user, rows.clone(), Some(&id)).unwrap();
                let answers = applied.answers;
                assert!(answers.iter().all(|a| a.scored), "{answers:?}");
                // The change replayed on a copy of the state before: the user goes on from
                // the copy, so the last day's comparison with the batch checks the replays.
                online.replay(&mut copy, &user, applied.change.unwrap());
                assert_eq!(copy.requests, state.requests);
                *state = copy;
                // The same request again: the same answers, and the state not moved.
                let requests = state.requests;
                let again = online.apply(state, &user, rows, Some(&id)).unwrap();
                assert_eq!(again.answers, answers);
                assert!(again.change.is_none());
                assert_eq!(state.requests, requests);
                if day + 1 == n {
                    for a in answers {
                        let id = field(&a.json, "event_id").as_str().unwrap().to_string();
                        last_day.insert(id, a);
                    }
                }
            }
        }
        // The last day again from the day before's states, every user in one call: the same
        // answers (up to the float rounding of another batch size).
        let together = online
            .apply_all(
                before
                    .iter_mut()
                    .map(|(u, (st, rows))| (st, u.as_str(), rows.clone()))
                    .collect(),
                Some("together"),
            )
            .unwrap();
        let together: Vec<&Answer> = together.iter().flat_map(|a| &a.answers).collect();
        assert_eq!(together.len(), last_day.len());
        for a in together {
            let id = field(&a.json, "event_id").as_str().unwrap().to_string();
            let one = &last_day[&id];
            for k in ["mean_abs_z", "max_abs_z"] {
                let (x, y) = (
                    field(&a.json, k).as_f64().unwrap(),
                    field(&one.json, k).as_f64().unwrap(),
                );
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{k}: {x} {y}");
            }
            assert_eq!(
                field(&a.json, "model_version"),
                field(&one.json, "model_version")
            );
        }
        let columns = Columns::new(&f.schema);
        let rule = Rule::of(&cfg.detection);
        let mut familiar = 0;
        for s in batch {
            let id = columns.event_id(&s.row).unwrap();
            let a = &last_day[&id];
            assert_eq!(
                field(&a.json, "mean_abs_z"),
                crate::serialize::f32_json(s.mean_abs_z)
            );
            assert_eq!(
                field(&a.json, "max_abs_z"),
                crate::serialize::f32_json(s.max_abs_z)
            );
            assert_eq!(field(&a.json, "model_version"), s.model_version.as_str());
            assert_eq!(field(&a.json, "generic"), s.generic);
            assert_eq!(a.alert, rule.is_detection(&s));
            familiar += usize::from(s.familiar != 0);
        }
        assert!(
            familiar > 0,
            "no familiar value on the last day: the test would not see them"
        );
    }

    #[test]
    fn a_call_that_panicked_holding_a_lock_does_not_fail_the_next_ones() {
        let f = Fixture::duo(2, 2);
        let cfg = fast_config();
        let online = modelless(&f, &cfg);
        let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _scorer = online.scorer.lock().unwrap();
            let _windows = online.windows.lock().unwrap();
            panic!("a call panics holding both locks");
        }));
        assert!(poisoned.is_err());
        assert!(online.scorer.is_poisoned() && online.windows.is_poisoned());
        let body =
            r#"{"timestamp":1659340800,"user":{"name":"alice"},"result":"SUCCESS","txid":"t"}"#;
        let (user, rows) = online.read(body.as_bytes()).users.remove(0);
        let applied = online
            .apply(&mut UserState::default(), &user, rows, Some("r"))
            .unwrap();
        // Answered (no model here: the reason, by index), not "poisoned".
        assert_eq!(applied.answers.len(), 1);
        assert!(
            applied.answers[0].json.contains("no usable model"),
            "{:?}",
            applied.answers
        );
        assert!(!online.scorer.is_poisoned() && !online.windows.is_poisoned());
    }

    #[test]
    fn numbers_are_written_as_the_detections_files_write_them() {
        for v in [0.0f32, 1.0, -2.5, 0.327_493_37, 1e-7, 3e20] {
            let parsed: serde_json::Value = serde_json::from_str(&number(v)).unwrap();
            assert_eq!(parsed, crate::serialize::f32_json(v), "{v}");
        }
        for v in [f32::NAN, f32::INFINITY] {
            assert_eq!(number(v), "null");
        }
        let quoted: serde_json::Value = serde_json::from_str(&text("a\"b\\c\n")).unwrap();
        assert_eq!(quoted, "a\"b\\c\n");
    }

    #[test]
    fn a_requests_bad_records_are_answered_by_index_and_the_others_read() {
        let f = Fixture::duo(2, 2);
        let mut cfg = fast_config();
        cfg.split.skip_users = vec!["skipped".into()];
        let online = modelless(&f, &cfg);
        let good = |user: &str| {
            format!(
                r#"{{"timestamp":1659340800,"user":{{"name":"{user}"}},"access_device":{{"browser":"Chrome"}},"result":"SUCCESS","txid":"t-{user}"}}"#
            )
        };
        let body = [
            good("alice"),
            "{\"timestamp\": 1659340800, \"user\": ".to_string(),
            r#"{"timestamp":1659340800,"access_device":{}}"#.to_string(),
            good("bob"),
            good("skipped"),
            r#"{"timestamp":"yesterday","user":{"name":"carol"}}"#.to_string(),
            good("alice"),
        ]
        .join("\n");
        let parsed = online.read(body.as_bytes());
        let users: Vec<(&str, Vec<u64>)> = parsed
            .users
            .iter()
            .map(|(u, rows)| (u.as_str(), rows.iter().map(|r| r.origin.record).collect()))
            .collect();
        assert_eq!(users, vec![("alice", vec![0, 6]), ("bob", vec![3])]);
        let mut errors: Vec<(usize, String)> = parsed
            .errors
            .iter()
            .map(|a| {
                (
                    a.index,
                    field(&a.json, "error").as_str().unwrap().to_string(),
                )
            })
            .collect();
        errors.sort();
        let indices: Vec<usize> = errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, vec![1, 2, 4, 5], "{errors:?}");
        assert!(errors[1].1.contains("no user"), "{}", errors[1].1);
        assert!(errors[2].1.contains("skip_users"), "{}", errors[2].1);
        assert!(errors[3].1.contains("timestamp"), "{}", errors[3].1);
        // With no model at all, each row is answered with the reason, by index.
        let (user, rows) = parsed.users[0].clone();
        let answers = online
            .apply(&mut UserState::default(), &user, rows, None)
            .unwrap()
            .answers;
        assert_eq!(
            answers.iter().map(|a| a.index).collect::<Vec<_>>(),
            vec![0, 6]
        );
        assert!(
            answers
                .iter()
                .all(|a| !a.scored && a.json.contains("no usable model"))
        );
        let text = reply(Some("r1"), answers);
        assert_eq!(field(&text, "errors"), 2);
        assert_eq!(field(&text, "request_id"), "r1");
    }
}
