//! The run configuration (`dfp run --config FILE`): one TOML table per stage, and a stream's
//! input, checkpoints and sinks (`streams`), every key optional with Morpheus' default beside
//! it, unknown keys rejected, and every bad value reported with its dotted path. Documented
//! key by key in configs/README.md.

mod streams;

use std::path::Path;

use dfp_engine::config::Problems;
use dfp_engine::lifecycle::Promotion;
use dfp_engine::model::ModelConfig;
use dfp_engine::period::Span;
use dfp_engine::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::alerts::AlertConfig;
use crate::filter_detections::DetectionConfig;
use crate::inference::InferenceConfig;
use crate::notify::NotifyConfig;
use crate::rolling_window::{FamiliarityConfig, WindowConfig};
use crate::split_users::SplitConfig;

pub use streams::{CheckpointConfig, SinkConfig, SourceConfig, SourceKind};

/// Every stage's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Split users.
    pub split: SplitConfig,
    /// The training window (Morpheus: 300 rows, 300 new, 60 days, aggregate); keys left out
    /// keep these.
    #[serde(deserialize_with = "training_window")]
    pub training_window: WindowConfig,
    /// The inference window (Morpheus: 1 row, 0 new, 1 day, batch); keys left out keep these.
    #[serde(deserialize_with = "inference_window")]
    pub inference_window: WindowConfig,
    /// Familiar values explaining features away (dfp's; off under Morpheus' defaults).
    pub familiarity: FamiliarityConfig,
    /// The autoencoder's hyperparameters.
    pub model: ModelConfig,
    /// Inference.
    pub inference: InferenceConfig,
    /// Detections.
    pub detection: DetectionConfig,
    /// Alert suppression.
    pub alerts: AlertConfig,
    /// What becomes of newly trained models.
    pub lifecycle: LifecycleConfig,
    /// Alert-rate parity across the groups of one column.
    pub parity: ParityConfig,
    /// Drift of the scored features from the models' training windows.
    pub drift: DriftConfig,
    /// Notifications to a webhook, a Kafka topic or NATS subjects.
    pub notifications: NotifyConfig,
    /// Analysts' verdicts from a Kafka topic.
    pub feedback: FeedbackConfig,
    /// The event-time guard.
    pub events: EventsConfig,
    /// Morpheus' features and output columns instead of dfp's.
    pub morpheus: MorpheusConfig,
    /// A stream's input.
    pub source: SourceConfig,
    /// A stream's checkpoints.
    pub checkpoint: CheckpointConfig,
    /// Sinks beside the output files.
    pub sinks: Vec<SinkConfig>,
}

/// What of Morpheus' own choices a run takes (`[morpheus]`): its feature lists (the source
/// schema's `[morpheus.features]`) and its output columns (names and order as its detections
/// file has them, then dfp's extra columns; `event_time` to the second).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MorpheusConfig {
    /// Train and score on the schema's Morpheus feature lists.
    pub features: bool,
    /// Write Morpheus' output columns first, in its order.
    pub columns: bool,
}

/// Analysts' verdicts read from a Kafka topic while a run goes on (`[feedback]`, see
/// [`crate::feedback::FeedbackTopic`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// `kafka://HOST:PORT/TOPIC`; none: no topic.
    pub topic: Option<String>,
    /// The consumer group whose committed offsets say what was read.
    pub group: String,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            topic: None,
            group: "dfp-feedback".to_string(),
        }
    }
}

/// Alert-rate parity (`[parity]`, see [`crate::parity`]): each epoch, the alert rate of every
/// group of rows sharing a value of `group`, against the epoch's overall rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParityConfig {
    /// The column whose values make the groups (any input column of the source schema, e.g.
    /// a country, a department, an app); none: no parity file.
    pub group: Option<String>,
    /// The band: a group whose rate is below `band` times the overall rate, or above it
    /// divided by `band`, is flagged (0.8: the four-fifths rule).
    pub band: f64,
    /// Groups with fewer scored rows in the epoch are reported, never flagged.
    pub min_rows: u64,
}

impl Default for ParityConfig {
    fn default() -> Self {
        Self {
            group: None,
            band: 0.8,
            min_rows: 30,
        }
    }
}

impl ParityConfig {
    /// Records out-of-range values under `path`.
    pub fn check(&self, path: &str, p: &mut Problems) {
        let key = |k: &str| dfp_engine::config::join(path, k);
        if !(self.band > 0.0 && self.band < 1.0) {
            p.push(key("band"), "a ratio in (0, 1), e.g. 0.8");
        }
        if self.group.as_deref() == Some("") {
            p.push(key("group"), "a column name");
        }
    }
}

/// Drift per feature (`[drift]`, see [`crate::drift`]): each epoch's scored features against
/// the reference profiles of the models that scored them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Write `dfp_drift_{source}.csv` (Morpheus has no drift: off unless set; dfp's defaults
    /// set it).
    pub enabled: bool,
    /// Equal bins of the reference's CDF for PSI and JS on numeric features (a divisor of
    /// 100: 10 makes the reference's deciles).
    pub bins: usize,
    /// PSI at or above which a feature has drifted (0.1 to 0.2 by common practice).
    pub psi: f64,
    /// Rows a line needs in the epoch to be judged (and a user's model to get lines of its own).
    pub min_rows: u64,
    /// Retrain when drift lasts this many epochs in a row (none: never).
    pub retrain_after: Option<u32>,
    /// What is retrained: `models` (each model whose own lines drifted) or `all` (every model,
    /// when a feature drifted over all models).
    pub retrain: RetrainScope,
}

/// What drift retrains (`[drift] retrain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrainScope {
    /// Each model whose own lines drifted `retrain_after` epochs in a row.
    #[default]
    Models,
    /// Every model, when any feature drifted over all models `retrain_after` epochs in a row.
    All,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            bins: 10,
            psi: 0.2,
            min_rows: 100,
            retrain_after: None,
            retrain: RetrainScope::Models,
        }
    }
}

impl DriftConfig {
    /// Records out-of-range values under `path`.
    pub fn check(&self, path: &str, p: &mut Problems) {
        let key = |k: &str| dfp_engine::config::join(path, k);
        let fine = dfp_engine::model::drift::FINE_BINS;
        if self.bins < 2 || !fine.is_multiple_of(self.bins) {
            p.push(key("bins"), "a divisor of 100 from 2 to 100, e.g. 10");
        }
        if !(self.psi.is_finite() && self.psi > 0.0) {
            p.push(key("psi"), "a positive number, e.g. 0.2");
        }
        if self.min_rows == 0 {
            p.push(key("min_rows"), "at least 1");
        }
        if self.retrain_after == Some(0) {
            p.push(key("retrain_after"), "at least 1 epoch");
        }
        if self.retrain_after.is_some() && !self.enabled {
            p.push(key("retrain_after"), "needs [drift] enabled = true");
        }
    }
}

/// What becomes of a newly trained model version (`[lifecycle]`): see
/// [`dfp_engine::lifecycle`] and, for `auto`, [`crate::promotion`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// `replace` (the default: it becomes the champion and scores at once; the one it replaces
    /// can be rolled back to), `manual` (it becomes the challenger until promoted) or `auto`
    /// (the challenger is promoted once it passes the bounds below).
    pub promotion: Promotion,
    /// `auto`: the fewest epochs in which the challenger scored rows in the shadow.
    pub min_epochs: u32,
    /// `auto`: the fewest rows it scored.
    pub min_rows: u64,
    /// `auto`: the least share of rows on which it and the champion agree whether to alert.
    pub min_agreement: f64,
    /// `auto`: how much higher its alert rate (share of rows it would alert on) may be than the
    /// champion's.
    pub max_alert_rate_increase: f64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            promotion: Promotion::Replace,
            min_epochs: 3,
            min_rows: 200,
            min_agreement: 0.95,
            max_alert_rate_increase: 0.01,
        }
    }
}

impl LifecycleConfig {
    /// Records out-of-range values under `path`.
    pub fn check(&self, path: &str, p: &mut Problems) {
        let key = |k: &str| dfp_engine::config::join(path, k);
        if !(0.0..=1.0).contains(&self.min_agreement) {
            p.push(key("min_agreement"), "a share in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.max_alert_rate_increase) {
            p.push(key("max_alert_rate_increase"), "a share in [0, 1]");
        }
        if self.min_epochs == 0 {
            p.push(key("min_epochs"), "at least 1");
        }
    }
}

/// How far an event's time may run ahead (`[events]`): of its file batch's period in a batch
/// run, of the wall clock in a stream. Later events are outliers (a forged record, a skewed
/// clock): dead-lettered with the reason and counted, so that one of them cannot make every
/// other row late.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// A duration ("1d", "6h").
    pub max_ahead: Span,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_ahead: "1d"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid duration")),
        }
    }
}

/// A window table as written: every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowKeys {
    min_history: Option<usize>,
    min_increment: Option<usize>,
    max_history: Option<String>,
    cache_mode: Option<crate::rolling_window::CacheMode>,
}

impl WindowKeys {
    fn over(self, base: WindowConfig) -> WindowConfig {
        WindowConfig {
            min_history: self.min_history.unwrap_or(base.min_history),
            min_increment: self.min_increment.unwrap_or(base.min_increment),
            max_history: self.max_history.unwrap_or(base.max_history),
            cache_mode: self.cache_mode.unwrap_or(base.cache_mode),
        }
    }
}

fn training_window<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<WindowConfig, D::Error> {
    Ok(WindowKeys::deserialize(d)?.over(WindowConfig::training()))
}

fn inference_window<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<WindowConfig, D::Error> {
    Ok(WindowKeys::deserialize(d)?.over(WindowConfig::inference()))
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            split: SplitConfig::default(),
            training_window: WindowConfig::training(),
            inference_window: WindowConfig::inference(),
            familiarity: FamiliarityConfig::default(),
            model: ModelConfig::default(),
            inference: InferenceConfig::default(),
            detection: DetectionConfig::default(),
            alerts: AlertConfig::default(),
            lifecycle: LifecycleConfig::default(),
            parity: ParityConfig::default(),
            drift: DriftConfig::default(),
            notifications: NotifyConfig::default(),
            feedback: FeedbackConfig::default(),
            events: EventsConfig::default(),
            morpheus: MorpheusConfig::default(),
            source: SourceConfig::default(),
            checkpoint: CheckpointConfig::default(),
            sinks: Vec::new(),
        }
    }
}

impl RunConfig {
    /// Parses and validates TOML; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let cfg: RunConfig = dfp_engine::config::parse_toml(text, origin)?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading config", e))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Every problem, with its dotted path.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let mut p = Problems::new();
        self.training_window.check("training_window", &mut p);
        self.inference_window.check("inference_window", &mut p);
        self.familiarity.check("familiarity", &mut p);
        self.model.check("model", &mut p);
        self.detection.check("detection", &mut p);
        self.alerts.check("alerts", &mut p);
        self.lifecycle.check("lifecycle", &mut p);
        self.parity.check("parity", &mut p);
        self.drift.check("drift", &mut p);
        self.notifications.check("notifications", &mut p);
        if let Some(url) = &self.feedback.topic
            && let Err(e) = crate::kafka::parse_kafka_url(url)
        {
            p.push("feedback.topic", e.to_string());
        }
        self.source.check("source", &mut p);
        self.checkpoint
            .check("checkpoint", &self.source.epoch, &mut p);
        for (i, sink) in self.sinks.iter().enumerate() {
            sink.check(&format!("sinks[{i}]"), &mut p);
        }
        if self.split.generic_max_rows == Some(0) {
            p.push("split.generic_max_rows", "at least 1 row");
        }
        if self.split.generic_user.is_empty() {
            p.push("split.generic_user", "must not be empty");
        }
        if self.inference.cache_models == 0 {
            p.push("inference.cache_models", "must be at least 1");
        }
        p.finish(origin, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_is_morpheus_defaults() {
        let c = RunConfig::from_toml("", "test").unwrap();
        assert_eq!(c, RunConfig::default());
        assert_eq!(c.training_window.min_history, 300);
        assert_eq!(c.inference_window.max_history, "1d");
    }

    #[test]
    fn the_shipped_dfp_config_is_valid() {
        let text = include_str!("../../../configs/dfp.toml");
        RunConfig::from_toml(text, "configs/dfp.toml").unwrap();
    }

    #[test]
    fn the_morpheus_file_spells_out_the_defaults_and_asks_for_morpheus_outputs() {
        let text = include_str!("../../../configs/morpheus.toml");
        let c = RunConfig::from_toml(text, "configs/morpheus.toml").unwrap();
        assert_eq!(
            c,
            RunConfig {
                morpheus: MorpheusConfig {
                    features: true,
                    columns: true,
                },
                ..RunConfig::default()
            }
        );
    }

    #[test]
    fn window_keys_left_out_keep_the_window_defaults() {
        let c = RunConfig::from_toml(
            "[training_window]\nmin_history = 100\n[inference_window]\nmax_history = \"2d\"\n",
            "cfg.toml",
        )
        .unwrap();
        let mut training = WindowConfig::training();
        training.min_history = 100;
        assert_eq!(c.training_window, training);
        let mut inference = WindowConfig::inference();
        inference.max_history = "2d".into();
        assert_eq!(c.inference_window, inference);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let e = RunConfig::from_toml(
            "[training_window]\nmax_history = \"soon\"\n[model]\nlr = -1.0\n[inference]\ncache_models = 0\n[familiarity]\nafter = \"20d\"\n",
            "cfg.toml",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "familiarity.after",
            "training_window.max_history",
            "model.lr",
            "inference.cache_models",
        ] {
            assert!(e.contains(key), "{key} missing from {e}");
        }
        let e = RunConfig::from_toml("[split]\nbogus = 1\n", "cfg.toml").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
