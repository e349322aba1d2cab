//! From Arrow batches to the network's inputs: the [`Preprocessor`] is fitted on a model's
//! training rows (one scaler per numeric feature, one vocabulary per categorical, the counts of
//! each profile feature) and encodes
//! any batch with the same feature columns into [`Encoded`] rows: scaled numerics (NaN -> the
//! training mean), binaries as 0/1, and category indices (unseen values -> `_other`).
//!
//! Feature columns are read by name. Numerics may be any Arrow integer or float type (a null is
//! NaN), binaries booleans (a null is false), categoricals strings (a null is the category
//! `"nan"`, as the readers write a missing value). A missing column or another type is an error
//! naming the column.

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use dfp_core::Result;
use dfp_core::batch::{bool_column, numeric_column, string_column};
use dfp_core::schema::{FeatureSpec, MISSING_STRING as MISSING, ProfileSpec};

use crate::drift::Values;
use crate::preprocess::{StandardScaler, Vocabulary};
use crate::profile::{Profile, Rows};

/// Preprocessing fitted on training rows; saved with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    /// The feature columns, by kind, in input order (numeric, binary, categorical).
    pub features: FeatureSpec,
    /// One scaler per numeric feature.
    pub scalers: Vec<StandardScaler>,
    /// One vocabulary per categorical feature.
    pub vocabularies: Vec<Vocabulary>,
    /// The profile features among the numeric ones.
    pub profiles: Vec<Profile>,
}

/// Encoded rows, row-major: `numeric[r * n_numeric + j]` and so on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    /// Number of rows.
    pub rows: usize,
    /// Scaled numerics, `rows x n_numeric`.
    pub numeric: Vec<f32>,
    /// Binaries as 0.0 / 1.0, `rows x n_binary`.
    pub binary: Vec<f32>,
    /// Category indices, `rows x n_categorical`.
    pub categorical: Vec<u32>,
}

impl Preprocessor {
    /// Fits scalers, vocabularies and the profiles among `profiles` that are numeric features
    /// on `batch`'s rows.
    pub fn fit(
        batch: &RecordBatch,
        features: &FeatureSpec,
        profiles: &[ProfileSpec],
        min_cats: usize,
    ) -> Result<Self> {
        let mut pre = Preprocessor {
            features: features.clone(),
            scalers: Vec::new(),
            vocabularies: Vec::new(),
            profiles: profiles
                .iter()
                .filter(|p| features.numeric.contains(&p.name))
                .map(|p| Profile::fit(p, batch))
                .collect::<Result<_>>()?,
        };
        pre.scalers = features
            .numeric
            .iter()
            .map(|name| {
                let fitted = vec![true; batch.num_rows()];
                let log = pre.is_log(name);
                let values: Vec<f64> = pre
                    .numeric_values(batch, name, &Rows::Fitted(&fitted))?
                    .into_iter()
                    .map(|v| log_input(log, v))
                    .collect();
                Ok(StandardScaler::fit(&values))
            })
            .collect::<Result<_>>()?;
        let vocabularies = features
            .categorical
            .iter()
            .map(|name| {
                let values = string_column(batch, name)?;
                Ok(Vocabulary::fit(
                    values.iter().map(|v| v.unwrap_or(MISSING)),
                    min_cats,
                ))
            })
            .collect::<Result<_>>()?;
        features
            .binary
            .iter()
            .try_for_each(|name| bool_column(batch, name).map(drop))?;
        pre.vocabularies = vocabularies;
        Ok(pre)
    }

    /// Whether the numeric feature `name` is taken as `ln(1 + x)` before scaling.
    pub fn is_log(&self, name: &str) -> bool {
        self.features.log.iter().any(|l| l == name)
    }

    /// A numeric feature's values: a profile's (counted as `rows` says), else the column's.
    fn numeric_values(&self, batch: &RecordBatch, name: &str, rows: &Rows<'_>) -> Result<Vec<f64>> {
        match self.profiles.iter().find(|p| p.spec.name == name) {
            Some(p) => p.values(batch, rows),
            None => numeric_column(batch, name),
        }
    }

    /// Every feature's values in `batch` before scaling or encoding, in the network's order:
    /// numerics as numbers (a profile's counted as `rows` says), binaries as `true`/`false`,
    /// categoricals as text (a null as `"nan"`).
    pub fn raw_values(&self, batch: &RecordBatch, rows: &Rows<'_>) -> Result<Vec<Values>> {
        let f = &self.features;
        let mut out = Vec::with_capacity(self.n_features());
        for name in &f.numeric {
            out.push(Values::Numeric(self.numeric_values(batch, name, rows)?));
        }
        for name in &f.binary {
            let v = bool_column(batch, name)?;
            out.push(Values::Text(v.iter().map(bool::to_string).collect()));
        }
        for name in &f.categorical {
            let v = string_column(batch, name)?;
            out.push(Values::Text(
                v.iter().map(|v| v.unwrap_or(MISSING).to_string()).collect(),
            ));
        }
        Ok(out)
    }

    /// Feature names in the network's order: numeric, binary, categorical.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> + Clone {
        let f = &self.features;
        f.numeric
            .iter()
            .chain(&f.binary)
            .chain(&f.categorical)
            .map(String::as_str)
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        let f = &self.features;
        f.numeric.len() + f.binary.len() + f.categorical.len()
    }

    /// Encodes every row of `batch` as new rows.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Encoded> {
        self.encode_rows(batch, &Rows::New)
    }

    /// Encodes every row of `batch`, its profile features counted as `rows` says.
    pub fn encode_rows(&self, batch: &RecordBatch, rows: &Rows<'_>) -> Result<Encoded> {
        let n_rows = batch.num_rows();
        let f = &self.features;
        let mut out = Encoded {
            rows: n_rows,
            numeric: vec![0.0; n_rows * f.numeric.len()],
            binary: vec![0.0; n_rows * f.binary.len()],
            categorical: vec![0; n_rows * f.categorical.len()],
        };
        let n = f.numeric.len();
        for (j, (name, scaler)) in f.numeric.iter().zip(&self.scalers).enumerate() {
            let log = self.is_log(name);
            for (r, v) in self
                .numeric_values(batch, name, rows)?
                .into_iter()
                .enumerate()
            {
                out.numeric[r * n + j] = scaler.transform(log_input(log, v)) as f32;
            }
        }
        let n = f.binary.len();
        for (j, name) in f.binary.iter().enumerate() {
            for (r, v) in bool_column(batch, name)?.into_iter().enumerate() {
                out.binary[r * n + j] = if v { 1.0 } else { 0.0 };
            }
        }
        let n = f.categorical.len();
        for (j, (name, vocab)) in f.categorical.iter().zip(&self.vocabularies).enumerate() {
            for (r, v) in string_column(batch, name)?.into_iter().enumerate() {
                out.categorical[r * n + j] = vocab.encode(v.unwrap_or(MISSING));
            }
        }
        Ok(out)
    }

    /// Sets feature `j` (network order) of encoded row `r` to this model's typical value: a
    /// numeric's training mean (0 once scaled), a categorical's most frequent training value;
    /// a binary is left as it is.
    pub fn typical(&self, e: &mut Encoded, r: usize, j: usize) {
        let f = &self.features;
        let (nn, nb, nc) = (f.numeric.len(), f.binary.len(), f.categorical.len());
        if j < nn {
            e.numeric[r * nn + j] = 0.0;
        } else if let Some(c) = j.checked_sub(nn + nb).filter(|&c| c < nc) {
            // Vocabularies are ordered by training count: index 0 is the most frequent.
            e.categorical[r * nc + c] = 0;
        }
    }
}

/// A numeric value as the network takes it: `ln(1 + x)` (negatives as 0) for a `log` feature;
/// a missing value (NaN) stays missing.
fn log_input(log: bool, v: f64) -> f64 {
    if log && !v.is_nan() {
        v.max(0.0).ln_1p()
    } else {
        v
    }
}

impl Encoded {
    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Encoded {
        fn gather<T: Copy>(v: &[T], rows: usize, indices: &[usize]) -> Vec<T> {
            let w = v.len().checked_div(rows).unwrap_or(0);
            indices
                .iter()
                .flat_map(|&r| v[r * w..(r + 1) * w].iter().copied())
                .collect()
        }
        Encoded {
            rows: indices.len(),
            numeric: gather(&self.numeric, self.rows, indices),
            binary: gather(&self.binary, self.rows, indices),
            categorical: gather(&self.categorical, self.rows, indices),
        }
    }

    /// Rows `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Encoded {
        self.select(&(start..end).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn spec() -> FeatureSpec {
        FeatureSpec {
            numeric: vec!["n".into(), "i".into()],
            binary: vec!["b".into()],
            categorical: vec!["c".into()],
            log: Vec::new(),
        }
    }

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("n", DataType::Float64, true),
            Field::new("i", DataType::Int64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("c", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0)])),
                Arc::new(Int64Array::from(vec![5, 5, 5])),
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
                Arc::new(StringArray::from(vec![Some("x"), Some("y"), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn fits_and_encodes_every_kind() {
        let p = Preprocessor::fit(&batch(), &spec(), &[], 1).unwrap();
        assert_eq!(p.feature_names().collect::<Vec<_>>(), ["n", "i", "b", "c"]);
        let e = p.encode(&batch()).unwrap();
        assert_eq!(e.rows, 3);
        // n: mean 2, population std 1; the null becomes the mean (0 after scaling). i: std 0 -> 1.
        assert_eq!(e.numeric, [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(e.binary, [1.0, 0.0, 0.0]);
        // x, y, nan each once: first-seen order, then _other.
        assert_eq!(p.vocabularies[0].values, ["x", "y", MISSING, "_other"]);
        assert_eq!(e.categorical, [0, 1, 2]);
    }

    #[test]
    fn a_log_feature_is_scaled_as_the_logarithm_of_one_plus_its_value() {
        let mut spec = spec();
        spec.log = vec!["n".into()];
        let p = Preprocessor::fit(&batch(), &spec, &[], 1).unwrap();
        // ln 2 and ln 4 (the null left out): mean ln 2.828..., std (ln 4 - ln 2) / 2.
        let (lo, hi) = (2f64.ln(), 4f64.ln());
        assert!((p.scalers[0].mean - (lo + hi) / 2.0).abs() < 1e-12);
        assert!((p.scalers[0].std - (hi - lo) / 2.0).abs() < 1e-12);
        let e = p.encode(&batch()).unwrap();
        let want = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        assert!(
            e.numeric
                .iter()
                .zip(want)
                .all(|(a, b)| (a - b).abs() < 1e-6),
            "{:?}",
            e.numeric
        );
        assert!(p.is_log("n") && !p.is_log("i"));
    }

    #[test]
    fn select_and_slice_take_whole_rows() {
        let p = Preprocessor::fit(&batch(), &spec(), &[], 1).unwrap();
        let e = p.encode(&batch()).unwrap();
        let s = e.select(&[2, 0]);
        assert_eq!(s.rows, 2);
        assert_eq!(s.numeric, [1.0, 0.0, -1.0, 0.0]);
        assert_eq!(s.categorical, [2, 0]);
        assert_eq!(e.slice(1, 3), e.select(&[1, 2]));
    }

    #[test]
    fn missing_or_mistyped_columns_are_named() {
        let mut s = spec();
        s.numeric.push("absent".into());
        let err = Preprocessor::fit(&batch(), &s, &[], 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"absent\" is missing"), "{err}");
        let mut s = spec();
        s.numeric = vec!["c".into()];
        let err = Preprocessor::fit(&batch(), &s, &[], 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"c\" must be a number, not Utf8"), "{err}");
        let mut s = spec();
        s.binary = vec!["n".into()];
        let err = Preprocessor::fit(&batch(), &s, &[], 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"n\" must be a boolean"), "{err}");
    }
}
