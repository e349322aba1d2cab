//! The autoencoder's hyperparameters, with Morpheus' DFP values as defaults
//! (`dfp_training.py`'s `model_kwargs`: encoder [512, 500], decoder [512], ReLU, swap noise 0.2,
//! SGD lr 0.001 decaying by 0.99 per epoch, batch 512, eval batch 1024, 30 epochs, validation =
//! the chronologically last 10%, early stopping with patience -1, min_cats 1).

use serde::{Deserialize, Serialize};

use dfp_core::config::Problems;

/// Hyperparameters of one autoencoder (a `[model]` table in a job config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Widths of the encoder's hidden layers, each followed by ReLU.
    pub encoder_layers: Vec<usize>,
    /// Widths of the decoder's hidden layers, each followed by ReLU.
    pub decoder_layers: Vec<usize>,
    /// Probability that an input value is swapped with the same column's value in a random row
    /// of the batch during training (dfencoder's swap noise).
    pub swap_p: f64,
    /// SGD learning rate of the first epoch.
    pub lr: f64,
    /// Factor applied to the learning rate after each epoch.
    pub lr_decay: f64,
    /// Rows per training step.
    pub batch_size: usize,
    /// Rows per batch when computing validation and scoring losses.
    pub eval_batch_size: usize,
    /// Most epochs trained.
    pub epochs: usize,
    /// Fraction of the training rows, the chronologically last ones, held out to validate.
    pub validation_fraction: f64,
    /// Stop training once the validation loss has risen in more than `max(patience, 0)`
    /// consecutive epochs (Morpheus: -1, the first rise stops training).
    pub patience: i64,
    /// Early stopping on or off (off: always `epochs` epochs).
    pub early_stopping: bool,
    /// A category needs this many training rows to get its own embedding slot.
    pub min_cats: usize,
    /// Seed of weight initialisation, shuffling and swap noise (per model, mixed with its name).
    pub seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            encoder_layers: vec![512, 500],
            decoder_layers: vec![512],
            swap_p: 0.2,
            lr: 0.001,
            lr_decay: 0.99,
            batch_size: 512,
            eval_batch_size: 1024,
            epochs: 30,
            validation_fraction: 0.1,
            patience: -1,
            early_stopping: true,
            min_cats: 1,
            seed: 42,
        }
    }
}

impl ModelConfig {
    /// Every problem with these values, each named by its key under `at` (e.g. `model`).
    pub fn check(&self, at: &str, problems: &mut Problems) {
        let key = |k: &str| dfp_core::config::join(at, k);
        if self.encoder_layers.is_empty() {
            problems.push(key("encoder_layers"), "needs at least one layer");
        }
        for (name, layers) in [
            ("encoder_layers", &self.encoder_layers),
            ("decoder_layers", &self.decoder_layers),
        ] {
            if let Some(i) = layers.iter().position(|&w| w == 0 || w > 65_536) {
                problems.push(
                    format!("{}[{i}]", key(name)),
                    "a layer width must be between 1 and 65536",
                );
            }
        }
        if !(0.0..1.0).contains(&self.swap_p) {
            problems.push(key("swap_p"), "must be in [0, 1)");
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            problems.push(
                key("lr"),
                "must be in (0, 1): SGD steps of 1 or more diverge on these networks",
            );
        }
        if !(self.lr_decay.is_finite() && self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            problems.push(key("lr_decay"), "must be in (0, 1]");
        }
        if self.batch_size == 0 {
            problems.push(key("batch_size"), "must be at least 1");
        }
        if self.eval_batch_size == 0 {
            problems.push(key("eval_batch_size"), "must be at least 1");
        }
        if self.epochs == 0 {
            problems.push(key("epochs"), "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            problems.push(key("validation_fraction"), "must be in [0, 1)");
        }
        if self.min_cats == 0 {
            problems.push(key("min_cats"), "must be at least 1");
        }
    }

    /// Checks the values, naming `origin` in the error.
    pub fn validate(&self, origin: &str) -> dfp_core::Result<()> {
        let mut problems = Problems::new();
        self.check("model", &mut problems);
        problems.finish(origin, ())
    }

    /// The learning rate of epoch `epoch` (from 0).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * self.lr_decay.powi(i32::try_from(epoch).unwrap_or(i32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_morpheus_values_and_valid() {
        let c = ModelConfig::default();
        assert_eq!(c.encoder_layers, [512, 500]);
        assert_eq!(c.decoder_layers, [512]);
        assert_eq!((c.swap_p, c.lr, c.lr_decay), (0.2, 0.001, 0.99));
        assert_eq!((c.batch_size, c.eval_batch_size, c.epochs), (512, 1024, 30));
        assert_eq!(c.patience, -1);
        c.validate("defaults").unwrap();
    }

    #[test]
    fn every_bad_value_is_named() {
        let text = "encoder_layers = []\ndecoder_layers = [0]\nswap_p = 1.5\nlr = -1\n\
                    lr_decay = 0\nbatch_size = 0\nepochs = 0\nvalidation_fraction = 1\n";
        let c: ModelConfig = toml::from_str(text).unwrap();
        let err = c.validate("job.toml").unwrap_err().to_string();
        for key in [
            "model.encoder_layers",
            "model.decoder_layers[0]",
            "model.swap_p",
            "model.lr",
            "model.lr_decay",
            "model.batch_size",
            "model.epochs",
            "model.validation_fraction",
        ] {
            assert!(err.contains(key), "{key} missing in {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<ModelConfig>("learning_rate = 0.1").unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
    }

    #[test]
    fn learning_rate_decays_per_epoch() {
        let c = ModelConfig::default();
        assert!((c.lr_at(0) - 0.001).abs() < 1e-15);
        assert!((c.lr_at(2) - 0.001 * 0.99 * 0.99).abs() < 1e-15);
    }
}
