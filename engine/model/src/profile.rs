//! Profile features: how rare a row's value is for its user, measured against the rows a model
//! was trained on. A [`Profile`] counts, per user and over every user together, the training
//! rows per value (a column's value, or the UTC hour of the event); a row's feature is
//! `1 / (1 + n)`, `n` the user's training rows with the same value (for the hour: within one
//! hour of it, around midnight too). A value the user never had is 1, one seen once 0.5, a
//! habit near 0, whichever model scores the row: the generic model keeps every user's counts.
//! A user the model never saw is measured against every user together. Counts, not shares:
//! a long history does not make a first-time value look less new.
//!
//! The counts are saved with the model; they are fitted once, on the training rows. A training
//! row is measured against the other training rows (its own count left out), so that training
//! sees first-time values as scoring will: without it every training row has counted at least
//! itself, the network never sees a value that is new to its user, and the first new one at
//! scoring time gets a z-score in the thousands.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use dfp_core::Result;
use dfp_core::batch::{string_column, timestamps};
use dfp_core::schema::{MISSING_STRING as MISSING, ProfileKind, ProfileSpec, USERNAME};

const HOUR_US: i64 = 3_600_000_000;

/// Rows per value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counts {
    values: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, key: &str) {
        *self.values.entry(key.to_string()).or_default() += 1;
    }

    fn get(&self, key: &str) -> u64 {
        self.values.get(key).copied().unwrap_or(0)
    }
}

/// One profile feature fitted on a model's training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// What it measures.
    pub spec: ProfileSpec,
    users: BTreeMap<String, Counts>,
    everyone: Counts,
}

impl Profile {
    /// Counts the values of `batch`'s rows, per user and overall.
    pub fn fit(spec: &ProfileSpec, batch: &RecordBatch) -> Result<Self> {
        let keys = keys(spec, batch)?;
        let users = string_column(batch, USERNAME)?;
        let mut profile = Profile {
            spec: spec.clone(),
            users: BTreeMap::new(),
            everyone: Counts::default(),
        };
        for (key, user) in keys.iter().zip(users) {
            profile.everyone.add(key);
            profile
                .users
                .entry(user.unwrap_or(MISSING).to_string())
                .or_default()
                .add(key);
        }
        Ok(profile)
    }

    /// The feature for every row of `batch`: `1 / (1 + n)`, `n` the row's user's training rows
    /// with the row's value, counted as `rows` says (see [`Rows`]).
    pub fn values(&self, batch: &RecordBatch, rows: &Rows<'_>) -> Result<Vec<f64>> {
        let keys = keys(&self.spec, batch)?;
        let users = string_column(batch, USERNAME)?;
        let fitted = match rows {
            Rows::New => None,
            Rows::Fitted(fitted) => Some(*fitted),
        };
        Ok(keys
            .iter()
            .zip(users)
            .enumerate()
            .map(|(i, (key, user))| {
                let counts = self
                    .users
                    .get(user.unwrap_or(MISSING))
                    .unwrap_or(&self.everyone);
                let mut hits = self.hits(counts, key);
                if let Some(fitted) = fitted {
                    hits = hits.saturating_sub(u64::from(fitted.get(i) == Some(&true)));
                }
                1.0 / (1.0 + hits as f64)
            })
            .collect())
    }

    /// Rows of `counts` with `key` (for the hour: within one hour of it).
    fn hits(&self, counts: &Counts, key: &str) -> u64 {
        match self.spec.kind {
            ProfileKind::Value => counts.get(key),
            ProfileKind::HourOfDay => {
                let h: i64 = key.parse().unwrap_or(0);
                [h + 23, h, h + 1]
                    .iter()
                    .map(|n| counts.get(&(n % 24).to_string()))
                    .sum()
            }
        }
    }
}

/// How the rows being encoded relate to a model's training rows.
#[derive(Debug)]
pub enum Rows<'a> {
    /// New rows, measured against the training rows.
    New,
    /// The window the model was fitted on: the rows marked `true` are training rows, each left
    /// out of its own count (leave-one-out), so a value the window holds once looks as new in
    /// training as it will when scored.
    Fitted(&'a [bool]),
}

/// Each row's value as the profile counts it.
fn keys(spec: &ProfileSpec, batch: &RecordBatch) -> Result<Vec<String>> {
    Ok(match (spec.kind, &spec.column) {
        (ProfileKind::HourOfDay, _) => {
            let ts = timestamps(batch, &spec.name)?;
            (0..ts.len())
                .map(|i| (ts.value(i).div_euclid(HOUR_US).rem_euclid(24)).to_string())
                .collect()
        }
        (ProfileKind::Value, column) => string_column(batch, column.as_deref().unwrap_or(""))?
            .into_iter()
            .map(|v| v.unwrap_or(MISSING).to_string())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;
    use dfp_core::schema::TIMESTAMP;

    fn batch(rows: &[(&str, i64, &str)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new(
                TIMESTAMP,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new(USERNAME, DataType::Utf8, true),
            Field::new("app", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter().map(|r| r.1 * HOUR_US).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| Some(r.0)).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn spec(kind: ProfileKind, column: Option<&str>) -> ProfileSpec {
        ProfileSpec {
            name: "p".into(),
            kind,
            column: column.map(String::from),
        }
    }

    #[test]
    fn value_rarity_is_per_user_and_unknown_users_use_everyone() {
        let train = batch(&[("a", 0, "x"), ("a", 1, "x"), ("a", 2, "y"), ("b", 3, "z")]);
        let p = Profile::fit(&spec(ProfileKind::Value, Some("app")), &train).unwrap();
        let score = batch(&[("a", 0, "x"), ("a", 0, "z"), ("b", 0, "z"), ("new", 0, "x")]);
        let v = p.values(&score, &Rows::New).unwrap();
        assert_eq!(v, [1.0 / 3.0, 1.0, 0.5, 1.0 / 3.0]);
    }

    #[test]
    fn hour_rarity_counts_neighbouring_hours_across_midnight() {
        // Hours 23, 0, 0, 12 (days apart).
        let train = batch(&[
            ("a", 23, "x"),
            ("a", 24, "x"),
            ("a", 48, "x"),
            ("a", 60, "x"),
        ]);
        let p = Profile::fit(&spec(ProfileKind::HourOfDay, None), &train).unwrap();
        let score = batch(&[("a", 1, "x"), ("a", 22, "x"), ("a", 13, "x"), ("a", 6, "x")]);
        let v = p.values(&score, &Rows::New).unwrap();
        assert_eq!(v, [1.0 / 3.0, 0.5, 0.5, 1.0]);
    }

    #[test]
    fn a_fitted_row_is_left_out_of_its_own_count() {
        let train = batch(&[("a", 0, "x"), ("a", 1, "x"), ("a", 2, "y")]);
        let p = Profile::fit(&spec(ProfileKind::Value, Some("app")), &train).unwrap();
        // The y seen once in training is new to its user without itself; each x has one other.
        let v = p
            .values(&train, &Rows::Fitted(&[true, true, true]))
            .unwrap();
        assert_eq!(v, [0.5, 0.5, 1.0]);
        // A row not among the fitted ones (a validation row) counts every training row.
        let v = p
            .values(&train, &Rows::Fitted(&[true, true, false]))
            .unwrap();
        assert_eq!(v, [0.5, 0.5, 0.5]);
        let hours = Profile::fit(&spec(ProfileKind::HourOfDay, None), &train).unwrap();
        let v = hours.values(&train, &Rows::Fitted(&[true; 3])).unwrap();
        assert_eq!(v, [0.5, 1.0 / 3.0, 0.5]);
    }
}
