//! The autoencoder (dfencoder semantics, as Morpheus' DFP uses it): train one model per user
//! on that user's rows, score rows against their user's model, and save and load models.
//!
//! - [`preprocess`], [`profile`] and [`encode`]: scalers, vocabularies and profiles fitted on
//!   the training rows, and Arrow batches encoded as network inputs.
//! - [`network`]: the weights and the CPU math (forward, losses, backward + SGD), on GEMMs from
//!   the `gemm` crate through [`linalg`].
//! - [`train`]: the training loop written once for every backend ([`train::train_models`]
//!   over a backend's [`train::TrainSteps`]: lr decay, validation, early stopping per model,
//!   loss statistics), swap noise, and the CPU's steps.
//! - [`backend`]: the [`Backend`] trait that trains and scores many models per call, and the
//!   CPU backend.
//! - [`calibration`]: what the model's scores of ordinary rows look like (its validation rows,
//!   and each user's rows), fitted after training, for calibrated detection rules.
//! - [`drift`]: what the model's features looked like in its training window (its reference,
//!   fitted after training) and how far scored rows have moved from it.
//! - [`file`]: the model file (header, bincode body, checksum).
//!
//! [`train_models`] and [`score`] are the entry points: they take Arrow batches and a backend.

pub mod backend;
pub mod calibration;
pub mod config;
pub mod device;
pub mod drift;
pub mod encode;
pub mod file;
pub mod lifecycle;
pub mod linalg;
pub mod network;
pub mod preprocess;
pub mod profile;
pub mod registry;
pub mod train;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use serde::{Deserialize, Serialize};

pub use backend::{Backend, CpuBackend, EvalJob};
pub use calibration::Calibration;
pub use config::ModelConfig;
pub use device::Device;
pub use drift::Reference;
pub use encode::{Encoded, Preprocessor};
pub use network::{Network, Shape};

use dfp_core::schema::{FamiliarSpec, FeatureSpec, ProfileKind, SourceSchema};
use dfp_core::{Error, Result};

/// What training measured, saved with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    /// Epochs run.
    pub epochs_run: usize,
    /// Mean net loss of the last epoch's training batches (noisy input).
    pub train_loss: f64,
    /// Net validation loss after the last epoch.
    pub val_loss: Option<f64>,
    /// Rows trained on.
    pub train_rows: usize,
    /// Rows held out for validation.
    pub validation_rows: usize,
}

/// A model's description: everything about it but the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    /// The model's name (e.g. `DFP-azure-alice@example.com`).
    pub name: String,
    /// The source schema's name.
    pub source: String,
    /// The source schema's fingerprint: a model only scores rows of the same schema.
    pub schema_fingerprint: u64,
    /// The feature columns, by kind.
    pub features: FeatureSpec,
    /// Event time of the first training row, µs since the epoch (UTC).
    pub first_timestamp_us: Option<i64>,
    /// Event time of the last training row.
    pub last_timestamp_us: Option<i64>,
    /// Rows in the training window (training + validation).
    pub rows: usize,
    /// The hyperparameters it was trained with.
    pub config: ModelConfig,
    /// What training measured.
    pub metrics: TrainMetrics,
}

/// A trained autoencoder with its preprocessing and loss statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The description.
    pub header: ModelHeader,
    /// Scalers and vocabularies.
    pub preprocessor: Preprocessor,
    /// The weights.
    pub network: Network,
    /// Per feature, mean loss over the clean training split.
    pub loss_mean: Vec<f64>,
    /// Per feature, population std of the loss over the clean training split.
    pub loss_std: Vec<f64>,
    /// How its scores of ordinary rows are distributed (see [`calibration`]).
    pub calibration: Calibration,
    /// What its features looked like in its training window (see [`drift`]).
    pub reference: Reference,
}

/// One model to train: a name and its rows (any order; they are sorted by event time).
#[derive(Debug, Clone, Copy)]
pub struct TrainingSet<'a> {
    /// The model's name.
    pub name: &'a str,
    /// The rows, with the schema's feature columns and `timestamp`.
    pub rows: &'a RecordBatch,
}

/// Scores of one batch of rows against one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Feature names, in the order of the per-feature columns.
    pub features: Vec<String>,
    /// Number of rows.
    pub rows: usize,
    /// Per row, per feature loss, `rows x features`.
    pub loss: Vec<f32>,
    /// Per row, per feature |(loss - training mean) / training std|.
    pub z_loss: Vec<f32>,
    /// Per row, the largest `z_loss`.
    pub max_abs_z: Vec<f32>,
    /// Per row, the mean `z_loss`.
    pub mean_abs_z: Vec<f32>,
    /// Per row, per feature prediction as text (numerics unscaled, binaries true/false,
    /// categoricals the predicted category), `rows x features`.
    pub pred: Vec<String>,
}

/// The familiar values of a batch's rows (`[familiarity]`): bit `k` of `bits[i]` set when row
/// `i`'s value of the schema's familiar entry `entries[k]` was familiar to its user. No bits
/// (an empty slice) changes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Familiar<'a> {
    /// Per row, the entries whose values were familiar.
    pub bits: &'a [u64],
    /// The schema's familiar entries.
    pub entries: &'a [FamiliarSpec],
}

impl Familiar<'_> {
    /// Per entry, the indices among `features` of the features it explains (names that are
    /// not among them are skipped), and whether the entry tracks a value (not the hour);
    /// `None` when no row has a bit set.
    fn index<'f>(&self, features: impl Iterator<Item = &'f str> + Clone) -> Option<Explained> {
        if self.bits.iter().all(|&b| b == 0) {
            return None;
        }
        let index: Explained = self
            .entries
            .iter()
            .take(64)
            .map(|e| {
                let explained = e
                    .explains
                    .iter()
                    .filter_map(|n| features.clone().position(|x| x == n))
                    .collect();
                (explained, e.kind == ProfileKind::Value)
            })
            .collect();
        index.iter().any(|(f, _)| !f.is_empty()).then_some(index)
    }

    /// The features row `i`'s familiar values explain, as indices from `index`, each with
    /// whether a value (not the hour) explains it.
    fn of<'i>(
        &self,
        i: usize,
        index: &'i [(Vec<usize>, bool)],
    ) -> impl Iterator<Item = (usize, bool)> + 'i {
        let bits = self.bits.get(i).copied().unwrap_or(0);
        index
            .iter()
            .enumerate()
            .filter(move |(k, _)| bits & (1 << k) != 0)
            .flat_map(|(_, (features, value))| features.iter().map(|&j| (j, *value)))
    }
}

/// Per familiar entry, the indices of the features it explains among a model's features, and
/// whether the entry tracks a value (not the hour) ([`Familiar::index`]).
type Explained = Vec<(Vec<usize>, bool)>;

impl Scores {
    /// Takes the features that familiar values explain as unsurprising: for row `i`, every
    /// feature an entry whose bit is set explains (`index`: this model's, from
    /// [`Familiar::index`]) gets a z-loss of 0, and the row's `max_abs_z` and `mean_abs_z` are
    /// taken again. Rows without bits are left as they are.
    fn explain(&mut self, familiar: &Familiar<'_>, index: &Explained) {
        let f = self.features.len();
        for i in 0..self.rows {
            let z = &mut self.z_loss[i * f..(i + 1) * f];
            let mut any = false;
            for (j, _) in familiar.of(i, index) {
                z[j] = 0.0;
                any = true;
            }
            if any {
                (self.max_abs_z[i], self.mean_abs_z[i]) = network::max_and_mean(z);
            }
        }
    }
}

/// Row indices of `batch` sorted by its `timestamp` column (stable; batch order without one).
fn time_order(batch: &RecordBatch) -> (Vec<usize>, Option<i64>, Option<i64>) {
    let mut order: Vec<usize> = (0..batch.num_rows()).collect();
    let Some(ts) = batch
        .column_by_name("timestamp")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
    else {
        return (order, None, None);
    };
    order.sort_by_key(|&i| ts.is_valid(i).then(|| ts.value(i)));
    let at = |i: Option<&usize>| i.and_then(|&i| ts.is_valid(i).then(|| ts.value(i)));
    (order.clone(), at(order.first()), at(order.last()))
}

/// What calibrating a trained model needs: its window's rows encoded, each row's user, and
/// whether each row was held out for validation.
struct Window {
    all: Encoded,
    reference: Reference,
    users: Vec<Option<String>>,
    validation: Vec<bool>,
}

/// Everything a training job needs, the header it will get, and its window for calibration.
fn prepare(
    set: &TrainingSet<'_>,
    schema: &SourceSchema,
    config: &ModelConfig,
) -> Result<(train::TrainJob, Preprocessor, ModelHeader, Window)> {
    let n = set.rows.num_rows();
    if n == 0 {
        return Err(Error::model(set.name, "no training rows"));
    }
    let (order, first, last) = time_order(set.rows);
    let n_val = if n > 1 {
        ((config.validation_fraction * n as f64).ceil() as usize).min(n - 1)
    } else {
        0
    };
    let (train_idx, val_idx) = order.split_at(n - n_val);
    let train_rows = dfp_core::batch::take(set.rows, train_idx)?;
    let pre = Preprocessor::fit(
        &train_rows,
        &schema.features,
        &schema.profiles,
        config.min_cats,
    )
    .map_err(|e| Error::model(set.name, e.to_string()))?;
    // The training rows are the fitted ones; the validation rows are measured as new rows.
    let mut fitted = vec![false; n];
    for &i in train_idx {
        fitted[i] = true;
    }
    let all = pre
        .encode_rows(set.rows, &profile::Rows::Fitted(&fitted))
        .map_err(|e| Error::model(set.name, e.to_string()))?;
    let shape = Shape {
        n_numeric: pre.features.numeric.len(),
        n_binary: pre.features.binary.len(),
        categories: pre.vocabularies.iter().map(|v| v.len()).collect(),
        hidden: config
            .encoder_layers
            .iter()
            .chain(&config.decoder_layers)
            .copied()
            .collect(),
    };
    let job = train::TrainJob {
        name: set.name.to_string(),
        shape,
        train: all.select(train_idx),
        validation: all.select(val_idx),
        seed: config.seed ^ dfp_core::hash::fnv1a64(set.name.as_bytes()),
    };
    let mut validation = vec![false; n];
    for &i in val_idx {
        validation[i] = true;
    }
    // Profile features as scoring will measure them (each row against every training row):
    // left-one-out counts sit one row below what the same habits score later.
    let users = dfp_core::batch::string_column(set.rows, dfp_core::schema::USERNAME)
        .map(|u| u.into_iter().map(|u| u.map(str::to_string)).collect())
        .unwrap_or_else(|_| vec![None; n]);
    let reference = Reference::fit(&pre, set.rows, &profile::Rows::New, &users)
        .map_err(|e| Error::model(set.name, e.to_string()))?;
    let window = Window {
        all,
        reference,
        users,
        validation,
    };
    let header = ModelHeader {
        name: set.name.to_string(),
        source: schema.name.clone(),
        schema_fingerprint: schema.fingerprint(),
        features: schema.features.clone(),
        first_timestamp_us: first,
        last_timestamp_us: last,
        rows: n,
        config: config.clone(),
        metrics: TrainMetrics {
            epochs_run: 0,
            train_loss: 0.0,
            val_loss: None,
            train_rows: n - n_val,
            validation_rows: n_val,
        },
    };
    Ok((job, pre, header, window))
}

/// Trains one model per set in one backend call; results in set order. A set that cannot be
/// trained (no rows, a missing feature column) gets its error; the others train.
pub fn train_models(
    backend: &dyn Backend,
    schema: &SourceSchema,
    config: &ModelConfig,
    sets: &[TrainingSet<'_>],
) -> Vec<Result<Model>> {
    let prepared: Vec<Result<_>> = sets.iter().map(|s| prepare(s, schema, config)).collect();
    let jobs: Vec<train::TrainJob> = prepared
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|(job, ..)| job.clone()))
        .collect();
    let trained = if jobs.is_empty() {
        Ok(Vec::new())
    } else {
        backend.train(&jobs, config)
    };
    let mut trained = match trained {
        Ok(t) => t.into_iter(),
        Err(e) => {
            let why = e.to_string();
            return prepared
                .into_iter()
                .map(|p| {
                    let (_, _, header, _) = p?;
                    Err(Error::model(&header.name, why.clone()))
                })
                .collect();
        }
    };
    let models: Vec<Result<(Model, Window)>> = prepared
        .into_iter()
        .map(|p| {
            let (_, preprocessor, mut header, mut window) = p?;
            let t = trained
                .next()
                .ok_or_else(|| Error::model(&header.name, "the backend returned no model"))?;
            diverged(&t).map_or(Ok(()), |why| {
                Err(Error::model(
                    &header.name,
                    format!(
                        "training diverged: {why} (is the learning rate {} too high?); the model is not saved",
                        config.lr
                    ),
                ))
            })?;
            header.metrics.epochs_run = t.epochs_run;
            header.metrics.train_loss = t.train_loss;
            header.metrics.val_loss = t.val_loss;
            let model = Model {
                header,
                preprocessor,
                network: t.network,
                loss_mean: t.loss_mean,
                loss_std: t.loss_std,
                calibration: Calibration::default(),
                reference: std::mem::take(&mut window.reference),
            };
            Ok((model, window))
        })
        .collect();
    calibrate(backend, config, models)
}

/// Fits each trained model's [`Calibration`] from its scores of its own window, all models in
/// one backend call.
fn calibrate(
    backend: &dyn Backend,
    config: &ModelConfig,
    models: Vec<Result<(Model, Window)>>,
) -> Vec<Result<Model>> {
    let ready: Vec<&(Model, Window)> = models.iter().filter_map(|m| m.as_ref().ok()).collect();
    let scored = match calibration_scores(backend, config, &ready, CALIBRATION_ROWS) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("scoring its window to calibrate it: {e}");
            return models
                .into_iter()
                .map(|m| Err(Error::model(&m?.0.header.name, why.clone())))
                .collect();
        }
    };
    let mut scored = scored.into_iter();
    models
        .into_iter()
        .map(|m| {
            let (mut model, window) = m?;
            let scores = scored.next().ok_or_else(|| {
                Error::model(
                    &model.header.name,
                    "the backend returned no calibration scores",
                )
            })?;
            let users: Vec<Option<&str>> = window.users.iter().map(Option::as_deref).collect();
            model.calibration = Calibration::fit(&scores, &users, &window.validation);
            Ok(model)
        })
        .collect()
}

/// The most rows of one model scored in one call to calibrate it: calibration keeps each row's
/// `mean_abs_z` only, so a large window (the generic model's) is scored in slices rather than
/// holding every row's per-feature losses and predictions at once.
const CALIBRATION_ROWS: usize = 65_536;

/// Each model's `mean_abs_z` over its whole window, scored in slices of `slice` rows.
fn calibration_scores(
    backend: &dyn Backend,
    config: &ModelConfig,
    models: &[&(Model, Window)],
    slice: usize,
) -> Result<Vec<Vec<f32>>> {
    let slice = slice.max(1);
    let mut scores = vec![Vec::new(); models.len()];
    let mut start = 0;
    loop {
        let slices: Vec<(usize, std::borrow::Cow<'_, Encoded>)> = models
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| w.all.rows > start)
            .map(|(i, (_, w))| {
                let end = (start + slice).min(w.all.rows);
                let input = if start == 0 && end == w.all.rows {
                    std::borrow::Cow::Borrowed(&w.all)
                } else {
                    std::borrow::Cow::Owned(w.all.slice(start, end))
                };
                (i, input)
            })
            .collect();
        if slices.is_empty() {
            return Ok(scores);
        }
        let jobs: Vec<EvalJob<'_>> = slices
            .iter()
            .map(|(i, input)| {
                let m = &models[*i].0;
                EvalJob {
                    network: &m.network,
                    input: input.as_ref(),
                    stats: Some((&m.loss_mean, &m.loss_std)),
                }
            })
            .collect();
        let evaluated = backend.evaluate(&jobs, config.eval_batch_size)?;
        if evaluated.len() != slices.len() {
            return Err(Error::stage(
                "calibration",
                format!(
                    "the backend returned {} evaluations for {} models",
                    evaluated.len(),
                    slices.len()
                ),
            ));
        }
        for ((i, _), ev) in slices.iter().zip(evaluated) {
            scores[*i].extend(ev.mean_abs_z);
        }
        start += slice;
    }
}

/// Why a trained model cannot be used, if it cannot: a loss or a weight that is not finite
/// (training that diverged). `None` for a sound model.
fn diverged(t: &train::Trained) -> Option<String> {
    if !t.train_loss.is_finite() {
        return Some(format!(
            "the training loss is {} after epoch {}",
            t.train_loss, t.epochs_run
        ));
    }
    if let Some(v) = t.val_loss.filter(|v| !v.is_finite()) {
        return Some(format!(
            "the validation loss is {v} after epoch {}",
            t.epochs_run
        ));
    }
    let weights = t.network.embeddings.iter().flatten().chain(
        t.network
            .layers
            .iter()
            .flat_map(|l| l.weight.iter().chain(&l.bias)),
    );
    if weights.into_iter().any(|w| !w.is_finite()) {
        return Some("some weights are not finite".into());
    }
    if t.loss_mean
        .iter()
        .chain(&t.loss_std)
        .any(|x| !x.is_finite())
    {
        return Some("the loss statistics are not finite".into());
    }
    None
}

/// One batch of rows to score, the model that scores it, and the rows' familiar values.
pub type Request<'a> = (&'a Model, &'a RecordBatch, Familiar<'a>);

/// Scores each batch against its model in one backend call; results in request order. The
/// features a row's familiar values explain score a z-loss of 0; those a
/// familiar *value* explains (not the hour) are also fed to the network as the model's typical
/// values ([`Preprocessor::typical`]), so a place or app the model never saw does not disturb
/// how the row's other features are reconstructed. A familiar hour stays in the input: it is
/// matched within an hour either way and is the context the row's other features are judged in
/// (README, detection quality, has the figures for both choices).
pub fn score(
    backend: &dyn Backend,
    requests: &[Request<'_>],
    batch_size: usize,
) -> Vec<Result<Scores>> {
    // Per request, the features its rows' familiar values explain (the model's feature order
    // is its scores' order), used for the inputs here and for the z-losses below.
    let explained: Vec<Option<Explained>> = requests
        .iter()
        .map(|(m, _, familiar)| familiar.index(m.preprocessor.feature_names()))
        .collect();
    let encoded: Vec<Result<Encoded>> = requests
        .iter()
        .zip(&explained)
        .map(|((m, b, familiar), index)| {
            let pre = &m.preprocessor;
            let mut e = pre
                .encode(b)
                .map_err(|e| Error::model(&m.header.name, e.to_string()))?;
            if let Some(index) = index {
                for r in 0..e.rows {
                    for (j, _) in familiar.of(r, index).filter(|&(_, value)| value) {
                        pre.typical(&mut e, r, j);
                    }
                }
            }
            Ok(e)
        })
        .collect();

    let jobs: Vec<EvalJob<'_>> = requests
        .iter()
        .zip(&encoded)
        .filter_map(|((m, ..), e)| {
            e.as_ref().ok().map(|input| EvalJob {
                network: &m.network,
                input,
                stats: Some((&m.loss_mean, &m.loss_std)),
            })
        })
        .collect();
    let evals = if jobs.is_empty() {
        Ok(Vec::new())
    } else {
        backend.evaluate(&jobs, batch_size)
    };
    let mut evals = match evals {
        Ok(v) => v.into_iter(),
        Err(e) => {
            let why = e.to_string();
            return requests
                .iter()
                .zip(encoded)
                .map(|((m, ..), enc)| {
                    enc?;
                    Err(Error::model(&m.header.name, why.clone()))
                })
                .collect();
        }
    };
    requests
        .iter()
        .zip(encoded)
        .zip(&explained)
        .map(|(((model, _, familiar), e), index)| {
            e?;
            let ev = evals.next().ok_or_else(|| {
                Error::model(&model.header.name, "the backend returned no scores")
            })?;
            let mut s = model.scores(&ev);
            if let Some(index) = index {
                s.explain(familiar, index);
            }
            Ok(s)
        })
        .collect()
}

impl Model {
    /// Turns an evaluation of this model into scores: z-scores against the training loss
    /// statistics, and predictions as text.
    pub fn scores(&self, ev: &network::Evaluation) -> Scores {
        let pre = &self.preprocessor;
        let features: Vec<String> = pre.feature_names().map(str::to_string).collect();
        let mut s = Scores {
            rows: ev.rows,
            loss: ev.losses.clone(),
            z_loss: Vec::new(),
            max_abs_z: Vec::new(),
            mean_abs_z: Vec::new(),
            pred: Vec::with_capacity(ev.losses.len()),
            features,
        };
        let (nn, nb, nc) = (
            pre.features.numeric.len(),
            pre.features.binary.len(),
            pre.features.categorical.len(),
        );
        if ev.max_abs_z.len() == ev.rows {
            s.z_loss = ev.z_loss.clone();
            s.max_abs_z = ev.max_abs_z.clone();
            s.mean_abs_z = ev.mean_abs_z.clone();
        } else {
            let mut with_z = ev.clone();
            with_z.add_zscores(&self.loss_mean, &self.loss_std);
            s.z_loss = with_z.z_loss;
            s.max_abs_z = with_z.max_abs_z;
            s.mean_abs_z = with_z.mean_abs_z;
        }
        let logs: Vec<bool> = pre.features.numeric.iter().map(|n| pre.is_log(n)).collect();
        for r in 0..ev.rows {
            for (j, (scaler, &log)) in pre.scalers.iter().zip(&logs).enumerate() {
                let v = scaler.inverse(f64::from(ev.numeric_pred[r * nn + j]));
                s.pred.push(if log { v.exp_m1() } else { v }.to_string());
            }
            for j in 0..nb {
                s.pred.push(ev.binary_pred[r * nb + j].to_string());
            }
            for (j, vocab) in pre.vocabularies.iter().enumerate() {
                s.pred
                    .push(vocab.decode(ev.categorical_pred[r * nc + j]).to_string());
            }
        }
        s
    }
}

/// Small trained models for tests.
#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use dfp_generate::{GenSource, GenerateConfig, generate};

    /// Generated Azure rows (4 users x 5 days) with derived features, one batch per user.
    pub fn users() -> (SourceSchema, Vec<(String, RecordBatch)>) {
        let dir = tempfile::tempdir().unwrap();
        let start = chrono::NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        generate(
            &GenerateConfig::new(GenSource::Azure, 4, 5, start, 9),
            dir.path(),
        )
        .unwrap();
        let schema = SourceSchema::builtin("azure").unwrap();
        let all = dfp_ingest::frame::read_log_dir(dir.path(), &schema, 1).unwrap();
        (schema, dfp_core::batch::split_by_user(&all).unwrap())
    }

    /// A small, quick configuration.
    pub fn config() -> ModelConfig {
        ModelConfig {
            encoder_layers: vec![24, 16],
            decoder_layers: vec![24],
            epochs: 4,
            batch_size: 64,
            ..ModelConfig::default()
        }
    }

    /// One trained model per user.
    pub fn models() -> (SourceSchema, Vec<(String, RecordBatch)>, Vec<Model>) {
        let (schema, users) = users();
        let sets: Vec<TrainingSet<'_>> = users
            .iter()
            .map(|(name, rows)| TrainingSet { name, rows })
            .collect();
        let backend = CpuBackend::new(2).unwrap();
        let models = train_models(&backend, &schema, &config(), &sets)
            .into_iter()
            .collect::<Result<Vec<_>>>()
            .unwrap();
        (schema, users, models)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{config, models, users};
    use super::*;

    #[test]
    fn calibration_scores_are_the_same_scored_whole_or_in_slices() {
        let (schema, users) = users();
        let cfg = config();
        let backend = CpuBackend::new(2).unwrap();
        let (_, _, models) = models();
        let pairs: Vec<(Model, Window)> = users
            .iter()
            .zip(models)
            .map(|((name, rows), m)| {
                let (_, _, _, w) = prepare(&TrainingSet { name, rows }, &schema, &cfg).unwrap();
                (m, w)
            })
            .collect();
        let refs: Vec<&(Model, Window)> = pairs.iter().collect();
        let whole = calibration_scores(&backend, &cfg, &refs, usize::MAX).unwrap();
        let sliced = calibration_scores(&backend, &cfg, &refs, 7).unwrap();
        assert_eq!(whole, sliced);
        for (scores, (_, w)) in whole.iter().zip(&pairs) {
            assert_eq!(scores.len(), w.all.rows);
            assert!(w.all.rows > 7);
        }
    }

    #[test]
    fn familiar_values_zero_the_features_they_explain_and_the_row_scores_follow() {
        let mut s = Scores {
            features: vec!["a".into(), "b".into(), "c".into()],
            rows: 3,
            loss: vec![0.0; 9],
            z_loss: vec![6.0, 3.0, 0.0, 6.0, 3.0, 0.0, 6.0, 3.0, 9.0],
            max_abs_z: vec![6.0, 6.0, 9.0],
            mean_abs_z: vec![3.0, 3.0, 6.0],
            pred: vec![String::new(); 9],
        };
        // Entry 0 explains `a` and a feature this model does not have; entry 1 explains `c`.
        let entry = |explains: &[&str]| FamiliarSpec {
            kind: ProfileKind::HourOfDay,
            column: None,
            explains: explains.iter().map(|n| n.to_string()).collect(),
        };
        let familiar = Familiar {
            bits: &[0, 0b01, 0b11],
            entries: &[entry(&["a", "gone"]), entry(&["c"])],
        };
        let index = familiar
            .index(s.features.iter().map(String::as_str))
            .unwrap();
        s.explain(&familiar, &index);
        assert_eq!(s.z_loss, [6.0, 3.0, 0.0, 0.0, 3.0, 0.0, 0.0, 3.0, 0.0]);
        assert_eq!(s.max_abs_z, [6.0, 3.0, 3.0]);
        assert_eq!(s.mean_abs_z, [3.0, 1.0, 1.0]);
    }

    /// `batch` with row `row`'s `column` (a string column) set to `value`.
    fn with_value(batch: &RecordBatch, column: &str, row: usize, value: &str) -> RecordBatch {
        let i = batch.schema().index_of(column).unwrap();
        let old = batch.column(i).as_string::<i32>();
        let new: arrow::array::StringArray = (0..old.len())
            .map(|r| Some(if r == row { value } else { old.value(r) }))
            .collect();
        let mut columns = batch.columns().to_vec();
        columns[i] = std::sync::Arc::new(new);
        RecordBatch::try_new(batch.schema(), columns).unwrap()
    }

    #[test]
    fn a_familiar_value_is_scored_as_the_models_typical_value_and_a_familiar_hour_as_it_is() {
        let (schema, users, models) = models();
        let (m, rows) = (&models[0], &users[0].1);
        let location = schema
            .familiar
            .iter()
            .position(|f| f.column.as_deref() == Some("location"))
            .unwrap();
        let hour = schema
            .familiar
            .iter()
            .position(|f| f.kind == ProfileKind::HourOfDay)
            .unwrap();
        let backend = CpuBackend::new(1).unwrap();
        let run = |batch: &RecordBatch, bits: u64| {
            let bits = vec![bits; batch.num_rows()];
            let familiar = Familiar {
                bits: &bits,
                entries: &schema.familiar,
            };
            let mut out = score(&backend, &[(m, batch, familiar)], 64);
            out.pop().unwrap().unwrap()
        };
        let f = m.preprocessor.n_features();
        let explained: Vec<usize> = schema.familiar[location]
            .explains
            .iter()
            .filter_map(|n| m.preprocessor.feature_names().position(|x| x == n))
            .collect();
        assert!(explained.len() >= 2, "{explained:?}");
        let others = |s: &Scores| -> Vec<f32> {
            (0..f)
                .filter(|j| !explained.contains(j))
                .map(|j| s.loss[j])
                .collect()
        };
        // Row 0 from a place this model never saw, from another, and from its own place.
        let far = with_value(rows, "location", 0, "Nowhere, ZZ");
        let farther = with_value(rows, "location", 0, "Elsewhere, YY");
        let (plain_far, plain_home) = (run(&far, 0), run(rows, 0));
        assert_ne!(
            others(&plain_far),
            others(&plain_home),
            "an unseen place moves the other features' reconstruction"
        );
        // Familiar, the place is the model's typical value whichever it was: the row's other
        // features score the same, and the explained ones score no surprise.
        let bit = 1 << location;
        let (a, b, c) = (run(&far, bit), run(&farther, bit), run(rows, bit));
        assert_eq!(others(&a), others(&b));
        assert_eq!(others(&a), others(&c));
        assert!(explained.iter().all(|&j| a.z_loss[j] == 0.0));
        // A familiar hour is explained but stays in the input: nothing else moves.
        let h = run(rows, 1 << hour);
        assert_eq!(h.loss, plain_home.loss);
        let hour_rarity = m
            .preprocessor
            .feature_names()
            .position(|x| x == "hour_rarity")
            .unwrap();
        assert_eq!(h.z_loss[hour_rarity], 0.0);
    }

    #[test]
    fn trains_many_users_in_one_call_and_scores_them() {
        let (schema, users, models) = models();
        assert_eq!(models.len(), users.len());
        for ((name, rows), m) in users.iter().zip(&models) {
            let h = &m.header;
            assert_eq!(&h.name, name);
            assert_eq!(h.rows, rows.num_rows());
            assert_eq!(h.metrics.train_rows + h.metrics.validation_rows, h.rows);
            assert_eq!(
                h.metrics.validation_rows,
                (0.1 * h.rows as f64).ceil() as usize
            );
            assert!(h.first_timestamp_us < h.last_timestamp_us);
            assert!((1..=4).contains(&h.metrics.epochs_run));
            assert_eq!(h.schema_fingerprint, schema.fingerprint());
        }
        let backend = CpuBackend::new(1).unwrap();
        let requests: Vec<Request<'_>> = models
            .iter()
            .zip(&users)
            .map(|(m, (_, rows))| (m, rows, Familiar::default()))
            .collect();
        let scores = score(&backend, &requests, 100);
        for (s, (_, rows)) in scores.iter().zip(&users) {
            let s = s.as_ref().unwrap();
            let f = s.features.len();
            assert_eq!(
                f,
                schema.features.numeric.len() + schema.features.categorical.len()
            );
            assert_eq!(s.rows, rows.num_rows());
            assert_eq!(s.z_loss.len(), s.rows * f);
            assert_eq!(s.pred.len(), s.rows * f);
            for r in 0..s.rows {
                let z = &s.z_loss[r * f..(r + 1) * f];
                let mean = z.iter().sum::<f32>() / f as f32;
                assert!((s.mean_abs_z[r] - mean).abs() < 1e-4);
                assert_eq!(s.max_abs_z[r], z.iter().copied().fold(0.0, f32::max));
                assert!(z.iter().all(|v| v.is_finite() && *v >= 0.0));
            }
        }
    }

    #[test]
    fn z_scores_are_standardised_on_the_training_split() {
        let (_, users, models) = models();
        let (m, (_, rows)) = (&models[0], &users[0]);
        // Evaluating the model's own training rows as training saw them (each left out of its
        // own profile counts): per feature, the z of the losses has mean ~0 before the absolute
        // value, i.e. mean(loss) equals the saved mean.
        let (order, _, _) = time_order(rows);
        let train = dfp_core::batch::take(rows, &order[..m.header.metrics.train_rows]).unwrap();
        let fitted = vec![true; train.num_rows()];
        let input = m
            .preprocessor
            .encode_rows(&train, &profile::Rows::Fitted(&fitted))
            .unwrap();
        let backend = CpuBackend::new(1).unwrap();
        let job = EvalJob {
            network: &m.network,
            input: &input,
            stats: Some((&m.loss_mean, &m.loss_std)),
        };
        let s = backend.evaluate(&[job], 1024).unwrap().remove(0);
        let f = m.loss_mean.len();
        let rows_n = train.num_rows();
        for j in 0..f {
            let mean = (0..rows_n)
                .map(|r| f64::from(s.losses[r * f + j]))
                .sum::<f64>()
                / rows_n as f64;
            assert!((mean - m.loss_mean[j]).abs() <= 1e-4 * m.loss_mean[j].abs().max(1.0));
        }
    }

    #[test]
    fn training_is_deterministic_whatever_the_threads_and_company() {
        let (schema, users) = users();
        let one = [TrainingSet {
            name: &users[1].0,
            rows: &users[1].1,
        }];
        let all: Vec<TrainingSet<'_>> = users
            .iter()
            .map(|(name, rows)| TrainingSet { name, rows })
            .collect();
        let a = train_models(&CpuBackend::new(1).unwrap(), &schema, &config(), &one);
        let b = train_models(&CpuBackend::new(2).unwrap(), &schema, &config(), &all);
        assert_eq!(a[0].as_ref().unwrap(), b[1].as_ref().unwrap());
    }

    #[test]
    fn a_diverged_training_is_an_error_naming_the_model_not_a_model() {
        let (schema, users) = users();
        let sets = [TrainingSet {
            name: &users[0].0,
            rows: &users[0].1,
        }];
        // A step far too large (validation refuses it; the engine must still not save it).
        let wild = ModelConfig {
            lr: 1.0e6,
            ..config()
        };
        let out = train_models(&CpuBackend::new(1).unwrap(), &schema, &wild, &sets);
        let err = out[0].as_ref().unwrap_err().to_string();
        assert!(
            err.contains(&users[0].0)
                && err.contains("training diverged")
                && err.contains("not saved"),
            "{err}"
        );
    }

    #[test]
    fn bad_sets_fail_alone() {
        let (schema, users) = users();
        let empty = users[0].1.slice(0, 0);
        let sets = [
            TrainingSet {
                name: "nobody",
                rows: &empty,
            },
            TrainingSet {
                name: &users[0].0,
                rows: &users[0].1,
            },
        ];
        let out = train_models(&CpuBackend::new(1).unwrap(), &schema, &config(), &sets);
        let err = out[0].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("nobody") && err.contains("no training rows"),
            "{err}"
        );
        assert!(out[1].is_ok());
        // Rows without the derived columns cannot be scored: the error names the column.
        let m = out[1].as_ref().unwrap();
        let bare = users[0].1.project(&[0, 1, 2, 3]).unwrap();
        let err = score(
            &CpuBackend::new(1).unwrap(),
            &[(m, &bare, Familiar::default())],
            64,
        )
        .remove(0)
        .unwrap_err()
        .to_string();
        assert!(err.contains("is missing"), "{err}");
    }
}
