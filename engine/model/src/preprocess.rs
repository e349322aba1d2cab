//! Preprocessing fitted on a model's training data, as dfencoder does it: standard scaling of
//! numeric features (population std, NaN -> the training mean, std 0 -> 1), categorical
//! vocabularies ordered by frequency with an `_other` slot for unseen values, and the
//! embedding width rule `min(600, round(1.6 * n^0.56))`.
//!
//! State: the fitted parameters only; they are saved with the model and never change after
//! fitting.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The name of the slot for values not seen in training.
pub const OTHER: &str = "_other";

/// Standard scaling of one numeric feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    /// Mean of the training values (NaNs left out).
    pub mean: f64,
    /// Population standard deviation of the training values; 1 when it is 0 or undefined.
    pub std: f64,
}

impl StandardScaler {
    /// Fits on training values; NaNs are left out. With no finite value: mean 0, std 1; with
    /// a constant one (a spread within rounding of the mean) std 1, so a later value that
    /// differs is not divided by rounding noise.
    pub fn fit(values: &[f64]) -> Self {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (n, sum) = finite
            .clone()
            .fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
        if n == 0 {
            return Self {
                mean: 0.0,
                std: 1.0,
            };
        }
        let mean = sum / n as f64;
        let var = finite.map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        let std = var.sqrt();
        Self {
            mean,
            std: if std > 1e-9 * mean.abs().max(1.0) && std.is_finite() {
                std
            } else {
                1.0
            },
        }
    }

    /// The scaled value; a NaN (missing) becomes the mean, so 0.
    pub fn transform(&self, v: f64) -> f64 {
        if v.is_finite() {
            (v - self.mean) / self.std
        } else {
            0.0
        }
    }

    /// Back from the scaled value (for `_pred` outputs).
    pub fn inverse(&self, z: f64) -> f64 {
        z * self.std + self.mean
    }
}

/// The vocabulary of one categorical feature: training values, most frequent first (ties in
/// order of first appearance), then `_other`. Saved as its list of values; the lookup index is
/// rebuilt on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Vec<String>", from = "Vec<String>")]
pub struct Vocabulary {
    /// Values by index; the last one is [`OTHER`].
    pub values: Vec<String>,
    index: HashMap<String, u32>,
}

impl From<Vec<String>> for Vocabulary {
    fn from(values: Vec<String>) -> Self {
        Self::from_values(values)
    }
}

impl From<Vocabulary> for Vec<String> {
    fn from(v: Vocabulary) -> Self {
        v.values
    }
}

impl Vocabulary {
    /// Fits on training values, keeping values seen at least `min_cats` times (dfencoder's
    /// `min_cats`; Morpheus uses 1, so every value seen).
    pub fn fit<'a>(values: impl IntoIterator<Item = &'a str>, min_cats: usize) -> Self {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for v in values {
            match at.get(v) {
                Some(&i) => counts[i].1 += 1,
                None => {
                    at.insert(v, counts.len());
                    counts.push((v, 1));
                }
            }
        }
        // A stable sort keeps first-appearance order among equal counts.
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        let mut values: Vec<String> = counts
            .into_iter()
            .filter(|(v, c)| *c >= min_cats.max(1) && *v != OTHER)
            .map(|(v, _)| v.to_string())
            .collect();
        values.push(OTHER.to_string());
        Self::from_values(values)
    }

    /// A vocabulary from its values (as saved), rebuilding the lookup index.
    pub fn from_values(values: Vec<String>) -> Self {
        let index = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32))
            .collect();
        Self { values, index }
    }

    /// Number of slots, `_other` included.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the vocabulary has only the `_other` slot.
    pub fn is_empty(&self) -> bool {
        self.values.len() <= 1
    }

    /// The index of a value; unseen values map to `_other`.
    pub fn encode(&self, v: &str) -> u32 {
        self.index
            .get(v)
            .copied()
            .unwrap_or((self.values.len().saturating_sub(1)) as u32)
    }

    /// The value at an index (`_other` for out-of-range indices).
    pub fn decode(&self, i: u32) -> &str {
        self.values
            .get(i as usize)
            .map(String::as_str)
            .unwrap_or(OTHER)
    }
}

/// dfencoder's embedding width for a categorical with `n` slots (`_other` included):
/// `min(600, round(1.6 * n^0.56))`.
pub fn embedding_width(n: usize) -> usize {
    let w = (1.6 * (n as f64).powf(0.56)).round() as usize;
    w.clamp(1, 600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_uses_population_std_and_maps_nan_to_the_mean() {
        let s = StandardScaler::fit(&[1.0, 2.0, 3.0, 4.0, f64::NAN]);
        assert_eq!(s.mean, 2.5);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.transform(f64::NAN), 0.0);
        assert!((s.transform(4.0) - 1.5 / 1.25f64.sqrt()).abs() < 1e-12);
        assert!((s.inverse(s.transform(3.3)) - 3.3).abs() < 1e-12);
    }

    #[test]
    fn scaler_with_constant_or_no_values_has_std_one() {
        assert_eq!(
            StandardScaler::fit(&[7.0; 5]),
            StandardScaler {
                mean: 7.0,
                std: 1.0
            }
        );
        // 0.1 ten times: the mean is off by rounding, the spread is rounding noise.
        let s = StandardScaler::fit(&[0.1; 10]);
        assert_eq!(s.std, 1.0);
        assert!(s.transform(0.2).abs() < 0.2);
        assert_eq!(
            StandardScaler::fit(&[]),
            StandardScaler {
                mean: 0.0,
                std: 1.0
            }
        );
        assert_eq!(
            StandardScaler::fit(&[f64::NAN]),
            StandardScaler {
                mean: 0.0,
                std: 1.0
            }
        );
    }

    #[test]
    fn vocabulary_orders_by_frequency_then_first_seen_and_ends_with_other() {
        let v = Vocabulary::fit(["b", "a", "c", "a", "b", "a", "d"], 1);
        assert_eq!(v.values, ["a", "b", "c", "d", OTHER]);
        assert_eq!(v.encode("a"), 0);
        assert_eq!(v.encode("never seen"), 4);
        assert_eq!(v.decode(1), "b");
        assert_eq!(v.decode(99), OTHER);
        let rare_cut = Vocabulary::fit(["b", "a", "a"], 2);
        assert_eq!(rare_cut.values, ["a", OTHER]);
        assert_eq!(rare_cut.encode("b"), 1);
    }

    #[test]
    fn vocabulary_survives_a_serde_round_trip() {
        let v = Vocabulary::fit(["x", "y", "y"], 1);
        let back = Vocabulary::from_values(v.values.clone());
        assert_eq!(back.encode("y"), v.encode("y"));
        assert_eq!(back.encode("z"), 2);
    }

    #[test]
    fn embedding_width_follows_dfencoder() {
        // round(1.6 * n^0.56)
        assert_eq!(embedding_width(2), 2);
        assert_eq!(embedding_width(10), 6);
        assert_eq!(embedding_width(100), 21);
        assert_eq!(embedding_width(10_000_000), 600);
    }
}
