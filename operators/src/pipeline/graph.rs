//! The DFP dataflow, built in one place from a worker's [`Stages`]:
//!
//! ```text
//! files ─ file to batch ─┐
//! rows ──────────────────┴─ split users ─ rolling window ─┬─ data prep ─ training ─ registry writer ─┐ (model notes, broadcast)
//!                                                          └─ data prep ─ inference ◄────────────────┘
//!                                                                         ├─ filter detections ─ alert budget ─ post-processing ─┬─ serialize ────────┐
//!                                                                         │                                                     └─ alert suppression ┤
//!                                                                         ├─ (scores) post-processing ─ serialize ───────────────────────────────────┤
//!                                                                         ├─ parity, shadow lines ───────────────────────────────────────────────────┤
//!                                                                         └─ (feature tallies) drift ────────────────────────────────────────────────┤
//! dead letters of every stage ─ serialize ─────────────────────────────────────────────────────────────────────────────────────┴─ sinks
//! ```
//!
//! Input: a worker's three inputs (files to read, rows read by the source, the source's dead
//! letters). Output: the probe of the sinks, whose frontier tells what has been written. State:
//! the stages' (windows, scorer, budget, alerts, sinks), handed in with their checkpoint
//! writers.

use std::rc::Rc;
use std::sync::Arc;

use dfp_engine::ingest::Reader;
use dfp_engine::model::Backend;
use dfp_engine::registry::Registry;
use dfp_engine::schema::SourceSchema;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concatenate, ConnectLoop, Feedback, OkErr, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, Scope};

use crate::alerts::{EpochEnds, SuppressAlerts, Suppressor};
use crate::budget::{AlertBudget, Budget};
use crate::config::RunConfig;
use crate::dead_letter::{DeadLetter, Originals};
use crate::drift::{DriftLines, InFlight, Retrain, Retrainer};
use crate::feedback::{Silence, Suppressions};
use crate::file_to_batch::{FileRows, FileTask, FileToBatch};
use crate::filter_detections::{FilterDetections, Rule};
use crate::inference::{Inference, Scorer};
use crate::metrics::SharedStats;
use crate::parity::Parity;
use crate::post_proc::{Clock, PostProc};
use crate::promotion::{Promote, Promoter};
use crate::registry_writer::{ModelNote, RegistryWriter};
use crate::rolling_window::{RollingWindowExt, RollingWindows};
use crate::serialize::{Columns, OutKind, SerializeDeadLetters, SerializeDetections};
use crate::shadow::ShadowLines;
use crate::sink::{SinkSet, WriteSinks};
use crate::split_users::SplitUsers;
use crate::state::StageState;
use crate::training::{GenericSample, Training};

/// Everything one worker's graph is built from: the settings, and each stateful stage with
/// its checkpoint writer.
pub(crate) struct Stages {
    pub schema: Arc<SourceSchema>,
    pub columns: Arc<Columns>,
    pub reader: Arc<Reader>,
    pub config: RunConfig,
    pub backend: Rc<dyn Backend>,
    pub registry: Registry,
    /// Register each model unless the same model is there (a restarted stream).
    pub once: bool,
    pub clock: Clock,
    pub write_scores: bool,
    pub stats: SharedStats,
    pub windows: (RollingWindows, StageState),
    /// Drift's retraining: its state and checkpoint writer, and the requests in flight at the
    /// cut the run resumes from (epoch, requests).
    pub retrainer: (Retrainer, StageState, InFlight),
    pub scorer: (Scorer, StageState),
    /// The sinks (worker 0 only) and their checkpoint writer.
    pub sinks: (Option<SinkSet>, StageState),
    /// The alert budget, when the run has one.
    pub budget: Option<(Budget, StageState)>,
    /// Alert suppression, when the run writes alerts.
    pub alerts: Option<(Suppressor, StageState)>,
    /// Automatic promotion, when the run's policy is `auto`.
    pub promoter: Option<(Promoter, StageState)>,
    /// Analysts' suppression rules (benign patterns silenced a while).
    pub silenced: Arc<Suppressions>,
    /// Each epoch's end in event time, for suppression.
    pub epoch_ends: EpochEnds,
    pub originals: Originals,
}

/// A worker's inputs and the probe of what has been written.
pub(crate) struct Graph {
    pub files: InputHandleVec<u64, FileTask>,
    pub rows: InputHandleVec<u64, FileRows>,
    pub dead: InputHandleVec<u64, DeadLetter>,
    pub probe: ProbeHandle<u64>,
}

/// Builds the DFP dataflow in `scope` (see the module's doc).
pub(crate) fn build(scope: Scope<'_, u64>, s: Stages) -> Graph {
    let mut files = InputHandleVec::new();
    let mut rows_in = InputHandleVec::new();
    let mut dead_in = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let cfg = &s.config;
    let (read, bad_files) = files
        .to_stream(scope)
        .file_to_batch(s.reader.clone(), s.stats.clone());
    let rows = scope.concatenate(vec![read, rows_in.to_stream(scope)]);
    let (users, no_user) = rows.split_users(cfg.split.clone(), s.stats.clone());
    // Drift feeds the retraining it asks for back to the rolling window, for the next epoch.
    let (retrain_loop, requests) = if cfg.drift.retrain_after.is_some() {
        let (handle, requests) = scope.feedback::<Vec<Retrain>>(1);
        (Some(handle), requests.broadcast())
    } else {
        (
            None,
            timely::dataflow::operators::generic::operator::empty(scope),
        )
    };
    let (retrainer, retrainer_state, resumed) = s.retrainer;
    let (windows, late) = users.rolling_window(
        s.windows.0,
        (requests, resumed),
        s.windows.1,
        s.stats.clone(),
    );
    let (train_w, infer_w) = windows.ok_err(|w| if w.train { Ok(w) } else { Err(w) });
    let sample = cfg.split.generic_max_rows.map(|max_rows| GenericSample {
        user: cfg.split.generic_user.clone(),
        max_rows,
        sparse_below: cfg.training_window.min_history,
    });
    let (models, failed) = train_w.training(
        s.backend.clone(),
        s.schema.clone(),
        cfg.model.clone(),
        sample,
        s.stats.clone(),
    );
    let (notes, unregistered) = models.registry_writer(
        s.registry.clone(),
        s.once,
        cfg.lifecycle.promotion,
        s.stats.clone(),
    );
    // Automatic promotion feeds the champions it makes back to inference, for the next epoch.
    let (promotions, notes) = if s.promoter.is_some() {
        let (handle, promoted) = scope.feedback::<Vec<ModelNote>>(1);
        (Some(handle), scope.concatenate(vec![notes, promoted]))
    } else {
        (None, notes)
    };
    let (scored, unscored, tallies) = infer_w.inference(
        notes.broadcast(),
        s.scorer.0,
        s.backend.clone(),
        s.scorer.1,
        s.stats.clone(),
    );
    let mut dead = vec![
        dead_in.to_stream(scope),
        bad_files,
        no_user,
        late,
        failed,
        unregistered,
        unscored,
    ];
    let rule = Rule::of(&cfg.detection);
    if let (Some((promoter, state)), Some(handle)) = (s.promoter, promotions) {
        let (promoted, refused) = scored.clone().promote(
            promoter,
            &cfg.lifecycle,
            rule,
            s.registry.clone(),
            state,
            s.stats.clone(),
        );
        promoted.connect_loop(handle);
        dead.push(refused);
    }
    let features = Arc::new(s.columns.features().to_vec());
    let shadow = scored.clone().shadow_lines(s.columns.clone(), rule);
    let parity = cfg.parity.group.is_some().then(|| {
        scored
            .clone()
            .parity(&cfg.parity, s.columns.clone(), rule, s.stats.clone())
    });
    let mut flagged = scored.clone().filter_detections(&cfg.detection);
    if let Some((budget, state)) = s.budget {
        flagged = flagged.budget(budget, &cfg.detection, state, s.stats.clone());
    }
    let mut detections = flagged.post_proc(features.clone(), s.clock.clone());
    if !s.silenced.is_empty() {
        detections = detections.silence(s.silenced, s.stats.clone());
    }
    let mut lines = vec![
        detections.clone().serialize(
            s.columns.clone(),
            vec![OutKind::DetectionsCsv, OutKind::DetectionsJson],
        ),
        shadow,
    ];
    lines.extend(parity);
    if cfg.drift.enabled {
        let (drift, requests) = tallies.drift(
            &cfg.drift,
            &s.schema.name,
            (retrainer, retrainer_state),
            s.stats.clone(),
        );
        lines.push(drift);
        if let Some(handle) = retrain_loop {
            requests.connect_loop(handle);
        }
    }
    if let Some((suppressor, state)) = s.alerts {
        lines.push(detections.alerts(
            suppressor,
            s.columns.clone(),
            s.epoch_ends,
            state,
            s.stats.clone(),
        ));
    }
    if s.write_scores {
        lines.push(
            scored
                .post_proc(features, s.clock.clone())
                .serialize(s.columns.clone(), vec![OutKind::ScoresCsv]),
        );
    }
    lines.push(scope.concatenate(dead).serialize_dead_letters(s.originals));
    scope
        .concatenate(lines)
        .sinks(s.sinks.0, s.sinks.1, s.stats.clone())
        .probe_with(&probe);
    Graph {
        files,
        rows: rows_in,
        dead: dead_in,
        probe,
    }
}
