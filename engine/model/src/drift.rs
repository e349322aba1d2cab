//! Drift: what a model's features looked like in its training window (its [`Reference`],
//! fitted with the model and saved with it), and how far the rows it scores have moved from
//! that.
//!
//! - **Numeric features** (profiles included, before scaling): the reference is the window's
//!   empirical CDF, exactly (every distinct value with the share of rows below and at it) when
//!   it has at most [`MAX_KNOTS`] distinct values, else at [`MAX_KNOTS`] quantiles with the CDF
//!   linear between them. A scored value is placed by its position in that CDF (the probability
//!   integral transform): its mass is spread evenly over `[F(x-), F(x)]`, so a value tied with
//!   many reference rows covers their share and the reference's own rows land exactly uniform
//!   on `[0, 1]`. Rows of the model's own distribution are then uniform whatever the model, so
//!   positions from many models (one per user) add up into one histogram per feature: drift
//!   across users needs no common binning. Positions are kept in [`FINE_BINS`] bins; PSI and
//!   Jensen-Shannon use `bins` equal bins of them (deciles of the reference by default), the
//!   Kolmogorov-Smirnov statistic the largest gap between the positions' CDF and the uniform
//!   one on the fine grid. Missing values (NaN) are left out of both sides.
//! - **Binary and categorical features**: the reference holds each value's rows (the most
//!   frequent [`MAX_CATEGORIES`], the rest together as [`OTHER`]). A batch's observed counts
//!   are set against the counts expected from the references of the models that scored it
//!   (each model's shares times its rows), so a mix of users with different habits is
//!   compared with that same mix. KS does not apply.
//! - **The generic model** is trained on every user's rows but scores mostly sparse users, whose
//!   habits are not everybody's: its reference also keeps each user's own (users with at most
//!   [`USER_ROWS`] rows in its window), and their rows are placed against those; users it never
//!   saw against the whole window's.
//!
//! PSI and JS follow Evidently's definitions (shares over the same bins; PSI with empty bins
//! set to 0.0001; JS the distance, natural logarithm), so its thresholds (0.1 to 0.2) read the
//! same: `bench/src/bin/drift.rs` checks the values against Evidently on the same data.
//!
//! State: none; a [`Tally`] is a sum, merged across batches, workers and models.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::encode::Preprocessor;
use crate::profile::Rows;
use dfp_core::Result;

/// Fine bins of the CDF positions of numeric values.
pub const FINE_BINS: usize = 100;
/// Most knots of a numeric reference.
pub const MAX_KNOTS: usize = 100;
/// Most values a categorical reference names; the rest are [`OTHER`].
pub const MAX_CATEGORIES: usize = 256;
/// The reference's rows of values beyond its [`MAX_CATEGORIES`].
pub const OTHER: &str = "(other)";
/// What PSI puts in a bin that one side has no rows in (Evidently's).
const EMPTY_SHARE: f64 = 1e-4;

/// One feature's values, before scaling or encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// A numeric feature's (NaN where missing).
    Numeric(Vec<f64>),
    /// A binary (`true`/`false`) or categorical feature's.
    Text(Vec<String>),
}

/// A numeric feature's reference CDF at its knots (see the module's doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cdf {
    /// Increasing values.
    knots: Vec<f64>,
    /// Share of reference rows below each knot.
    below: Vec<f32>,
    /// Share of reference rows at or below each knot.
    at: Vec<f32>,
}

impl Cdf {
    /// The CDF of `values` (NaN left out).
    pub fn fit(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let mut distinct = v.clone();
        distinct.dedup();
        let knots = if distinct.len() <= MAX_KNOTS {
            distinct
        } else {
            let mut k: Vec<f64> = (0..MAX_KNOTS)
                .map(|i| v[(i * (v.len() - 1) + (MAX_KNOTS - 1) / 2) / (MAX_KNOTS - 1)])
                .collect();
            k.dedup();
            k
        };
        let n = v.len().max(1) as f64;
        let share = |i: usize| (i as f64 / n) as f32;
        Cdf {
            below: knots
                .iter()
                .map(|k| share(v.partition_point(|x| x < k)))
                .collect(),
            at: knots
                .iter()
                .map(|k| share(v.partition_point(|x| x <= k)))
                .collect(),
            knots,
        }
    }

    /// `[F(x-), F(x)]`: the shares of reference rows below `x` and at or below it (between two
    /// knots of a sketched CDF, the linear interpolation, a point).
    pub fn range(&self, x: f64) -> (f64, f64) {
        let i = self.knots.partition_point(|k| *k < x);
        if i < self.knots.len() && self.knots[i] == x {
            return (f64::from(self.below[i]), f64::from(self.at[i]));
        }
        if i == 0 {
            return (0.0, 0.0);
        }
        if i == self.knots.len() {
            return (1.0, 1.0);
        }
        let (k0, k1) = (self.knots[i - 1], self.knots[i]);
        let (f0, f1) = (f64::from(self.at[i - 1]), f64::from(self.below[i]));
        let f = f0 + (f1 - f0) * (x - k0) / (k1 - k0);
        (f, f)
    }
}

/// A binary or categorical feature's reference: rows per value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frequencies {
    /// Rows per value (the most frequent; the others are in [`OTHER`]).
    counts: BTreeMap<String, u64>,
    /// All rows.
    total: u64,
}

impl Frequencies {
    /// The frequencies of `values`.
    pub fn fit<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut all: BTreeMap<&str, u64> = BTreeMap::new();
        let mut total = 0;
        for v in values {
            *all.entry(v).or_default() += 1;
            total += 1;
        }
        let mut ranked: Vec<(&str, u64)> = all.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut counts = BTreeMap::new();
        for (i, (v, n)) in ranked.into_iter().enumerate() {
            let key = if i < MAX_CATEGORIES - 1 { v } else { OTHER };
            *counts.entry(key.to_string()).or_default() += n;
        }
        Frequencies { counts, total }
    }

    /// The name `value` is counted under: itself, or [`OTHER`] when the reference lumps values
    /// it does not name there.
    fn key<'a>(&self, value: &'a str) -> &'a str {
        if !self.counts.contains_key(value) && self.counts.contains_key(OTHER) {
            OTHER
        } else {
            value
        }
    }
}

/// One feature's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeatureRef {
    /// A numeric feature's CDF.
    Numeric(Cdf),
    /// A binary or categorical feature's frequencies.
    Categorical(Frequencies),
}

/// What a model's features looked like in its training window, one [`FeatureRef`] per feature
/// in the network's order; for a model trained on several users' rows (the generic model),
/// also each sparse user's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// The features' references over the whole window.
    pub features: Vec<FeatureRef>,
    /// The features' references over each user's rows, for the users of a several-user window
    /// with at most [`USER_ROWS`] rows in it: those the generic model scores, whose habits are
    /// not everybody's (a row of theirs is compared with their own rows).
    pub users: BTreeMap<String, Vec<FeatureRef>>,
}

/// The most rows a user may have in a several-user window to get a reference of their own
/// (Morpheus' fewest training rows for a user's own model: users above it have one).
pub const USER_ROWS: usize = 300;

fn references(values: &[Values], rows: Option<&[usize]>) -> Vec<FeatureRef> {
    values
        .iter()
        .map(|v| match (v, rows) {
            (Values::Numeric(x), None) => FeatureRef::Numeric(Cdf::fit(x)),
            (Values::Numeric(x), Some(r)) => {
                FeatureRef::Numeric(Cdf::fit(&r.iter().map(|&i| x[i]).collect::<Vec<_>>()))
            }
            (Values::Text(t), None) => {
                FeatureRef::Categorical(Frequencies::fit(t.iter().map(String::as_str)))
            }
            (Values::Text(t), Some(r)) => {
                FeatureRef::Categorical(Frequencies::fit(r.iter().map(|&i| t[i].as_str())))
            }
        })
        .collect()
}

impl Reference {
    /// The reference of one set of feature values (one per feature, as
    /// [`Preprocessor::raw_values`] gives them), with no user's own.
    pub fn of(values: &[Values]) -> Self {
        Reference {
            features: references(values, None),
            users: BTreeMap::new(),
        }
    }

    /// The reference of `batch`'s rows (the training window, its profile features counted as
    /// `rows` says); `users`: each row's user, where the window holds several.
    pub fn fit(
        pre: &Preprocessor,
        batch: &RecordBatch,
        rows: &Rows<'_>,
        users: &[Option<String>],
    ) -> Result<Self> {
        let values = pre.raw_values(batch, rows)?;
        let mut by_user: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, u) in users.iter().enumerate() {
            if let Some(u) = u {
                by_user.entry(u).or_default().push(i);
            }
        }
        let users = if by_user.len() > 1 {
            by_user
                .into_iter()
                .filter(|(_, r)| r.len() <= USER_ROWS)
                .map(|(u, r)| (u.to_string(), references(&values, Some(&r))))
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(Reference {
            users,
            ..Reference::of(&values)
        })
    }

    /// Checks that there is one reference per feature of `pre`, of its kind, and that each is
    /// sound (knots finite and increasing, shares in `[0, 1]`), for the window and each user.
    pub fn check(&self, pre: &Preprocessor) -> std::result::Result<(), String> {
        std::iter::once(("the window", &self.features))
            .chain(self.users.iter().map(|(u, f)| (u.as_str(), f)))
            .try_for_each(|(whose, features)| {
                check_features(features, pre).map_err(|e| format!("{e} (of {whose})"))
            })
    }

    /// Counts `values` (one per feature, as [`Preprocessor::raw_values`] gives them) of rows
    /// of `user` against the reference (the user's own where it has one): one tally per
    /// feature; None where a feature's kind disagrees with its reference (a model of another
    /// schema).
    pub fn tally(&self, user: &str, values: &[Values]) -> Vec<Option<Tally>> {
        self.users
            .get(user)
            .unwrap_or(&self.features)
            .iter()
            .zip(values)
            .map(|(r, v)| match (r, v) {
                (FeatureRef::Numeric(cdf), Values::Numeric(x)) => Some(Tally::numeric(cdf, x)),
                (FeatureRef::Categorical(f), Values::Text(t)) => Some(Tally::categorical(f, t)),
                _ => None,
            })
            .collect()
    }
}

fn check_features(features: &[FeatureRef], pre: &Preprocessor) -> std::result::Result<(), String> {
    let numeric = pre.features.numeric.len();
    if features.len() != pre.n_features() {
        return Err("the drift reference does not match the features".into());
    }
    for (i, f) in features.iter().enumerate() {
        let sound = match f {
            FeatureRef::Numeric(c) => {
                i < numeric
                    && c.knots.len() == c.below.len()
                    && c.knots.len() == c.at.len()
                    && c.knots.iter().all(|k| k.is_finite())
                    && c.knots.windows(2).all(|w| w[0] < w[1])
                    && c.below
                        .iter()
                        .zip(&c.at)
                        .all(|(b, a)| 0.0 <= *b && b <= a && *a <= 1.0)
            }
            FeatureRef::Categorical(f) => i >= numeric && f.counts.values().sum::<u64>() == f.total,
        };
        if !sound {
            return Err(format!("the drift reference of feature {i} is not sound"));
        }
    }
    Ok(())
}

/// Scored rows of one feature counted against the reference(s) of the models that scored
/// them; tallies of the same feature add up. Counts are in millionths of a row ([`UNIT`]),
/// integers, so that sums do not depend on their order (on how many workers counted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Tally {
    /// Rows per fine bin of their CDF position (a value spanning bins shares its row).
    Numeric(Vec<u64>),
    /// Rows per value, observed and expected from the references.
    Categorical {
        /// Observed rows per value.
        observed: BTreeMap<String, u64>,
        /// Expected rows per value.
        expected: BTreeMap<String, u64>,
    },
}

/// A row in a [`Tally`]'s counts.
pub const UNIT: u64 = 1_000_000;

fn units(rows: f64) -> u64 {
    (rows * UNIT as f64).round() as u64
}

fn rows(units: u64) -> f64 {
    units as f64 / UNIT as f64
}

/// A feature's drift statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statistics {
    /// Rows counted.
    pub rows: f64,
    /// Population stability index.
    pub psi: f64,
    /// Jensen-Shannon distance (natural logarithm: 0 to √ln 2).
    pub js: f64,
    /// Kolmogorov-Smirnov statistic (numeric features).
    pub ks: Option<f64>,
}

impl Tally {
    fn numeric(cdf: &Cdf, values: &[f64]) -> Self {
        let mut fine = vec![0; FINE_BINS];
        let scale = FINE_BINS as f64;
        for &x in values.iter().filter(|x| !x.is_nan()) {
            let (a, b) = cdf.range(x);
            let (a, b) = (a * scale, b * scale);
            if b - a < 1e-9 {
                fine[(a as usize).min(FINE_BINS - 1)] += UNIT;
                continue;
            }
            let first = a as usize;
            let last = (b.ceil() as usize).min(FINE_BINS);
            for (i, bin) in fine.iter_mut().enumerate().take(last).skip(first) {
                let overlap = b.min(i as f64 + 1.0) - a.max(i as f64);
                *bin += units(overlap.max(0.0) / (b - a));
            }
        }
        Tally::Numeric(fine)
    }

    fn categorical(reference: &Frequencies, values: &[String]) -> Self {
        let mut observed: BTreeMap<String, u64> = BTreeMap::new();
        for v in values {
            *observed.entry(reference.key(v).to_string()).or_default() += UNIT;
        }
        let scale = values.len() as f64 / reference.total.max(1) as f64;
        let expected = reference
            .counts
            .iter()
            .map(|(k, &n)| (k.clone(), units(n as f64 * scale)))
            .collect();
        Tally::Categorical { observed, expected }
    }

    /// Adds `other` (a tally of the same feature); false, and nothing added, when it is of
    /// another kind.
    pub fn merge(&mut self, other: &Tally) -> bool {
        match (self, other) {
            (Tally::Numeric(a), Tally::Numeric(b)) => {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                true
            }
            (
                Tally::Categorical { observed, expected },
                Tally::Categorical {
                    observed: o,
                    expected: e,
                },
            ) => {
                o.iter()
                    .for_each(|(k, v)| *observed.entry(k.clone()).or_default() += v);
                e.iter()
                    .for_each(|(k, v)| *expected.entry(k.clone()).or_default() += v);
                true
            }
            _ => false,
        }
    }

    /// The statistics, numeric positions in `bins` equal bins (a divisor of [`FINE_BINS`]).
    pub fn statistics(&self, bins: usize) -> Statistics {
        match self {
            Tally::Numeric(fine) => {
                let total: u64 = fine.iter().sum();
                let share = |n: u64| n as f64 / total.max(1) as f64;
                let width = FINE_BINS / bins.clamp(1, FINE_BINS);
                let current: Vec<f64> = fine.chunks(width).map(|c| share(c.iter().sum())).collect();
                let reference = vec![1.0 / current.len() as f64; current.len()];
                let mut cum = 0;
                let ks = fine
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        cum += n;
                        (share(cum) - (i + 1) as f64 / FINE_BINS as f64).abs()
                    })
                    .fold(0.0, f64::max);
                Statistics {
                    rows: rows(total),
                    psi: psi(&reference, &current),
                    js: js(&reference, &current),
                    ks: Some(ks),
                }
            }
            Tally::Categorical { observed, expected } => {
                let seen: u64 = observed.values().sum();
                let keys: std::collections::BTreeSet<&String> =
                    observed.keys().chain(expected.keys()).collect();
                let total: u64 = expected.values().sum();
                let share = |m: &BTreeMap<String, u64>, t: u64, k: &String| {
                    m.get(k).copied().unwrap_or(0) as f64 / t.max(1) as f64
                };
                let reference: Vec<f64> = keys.iter().map(|k| share(expected, total, k)).collect();
                let current: Vec<f64> = keys.iter().map(|k| share(observed, seen, k)).collect();
                Statistics {
                    rows: rows(seen),
                    psi: psi(&reference, &current),
                    js: js(&reference, &current),
                    ks: None,
                }
            }
        }
    }
}

/// Population stability index of two share vectors (a share of 0 becomes [`EMPTY_SHARE`], or
/// a millionth of the smallest share where that is smaller, as Evidently does).
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    let fill = |v: &[f64]| -> Vec<f64> {
        let smallest = v
            .iter()
            .copied()
            .filter(|x| *x > 0.0)
            .fold(f64::INFINITY, f64::min);
        let empty = if smallest <= EMPTY_SHARE {
            smallest / 1e6
        } else {
            EMPTY_SHARE
        };
        v.iter().map(|&x| if x > 0.0 { x } else { empty }).collect()
    };
    let (r, c) = (fill(reference), fill(current));
    r.iter().zip(&c).map(|(r, c)| (r - c) * (r / c).ln()).sum()
}

/// Jensen-Shannon distance of two share vectors (each normalised; natural logarithm).
pub fn js(reference: &[f64], current: &[f64]) -> f64 {
    let norm = |v: &[f64]| {
        let t: f64 = v.iter().sum();
        v.iter()
            .map(|x| x / t.max(f64::MIN_POSITIVE))
            .collect::<Vec<_>>()
    };
    let (p, q) = (norm(reference), norm(current));
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, m)| a * (a / m).ln())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    ((kl(&p, &m) + kl(&q, &m)) / 2.0).max(0.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally_of(reference: &[f64], current: &[f64]) -> Statistics {
        Tally::numeric(&Cdf::fit(reference), current).statistics(10)
    }

    #[test]
    fn a_reference_scored_against_itself_does_not_drift() {
        // Continuous (sketched CDF), and discrete with heavy ties (exact CDF).
        let continuous: Vec<f64> = (0..5000)
            .map(|i| ((i * 7919) % 5000) as f64 * 0.37)
            .collect();
        let s = tally_of(&continuous, &continuous);
        assert!(s.psi < 0.01 && s.js < 0.02 && s.ks.unwrap() < 0.02, "{s:?}");
        let hours: Vec<f64> = (0..1000)
            .map(|i| f64::from([8, 9, 9, 9, 10, 17][i % 6]))
            .collect();
        let s = tally_of(&hours, &hours);
        assert!(s.psi < 1e-9 && s.ks.unwrap() < 1e-5, "{s:?}");
        assert!((s.rows - 1000.0).abs() < 0.01);
    }

    #[test]
    fn a_shifted_numeric_feature_drifts_and_a_resampled_one_does_not() {
        let reference: Vec<f64> = (0..2000).map(|i| f64::from(i % 200)).collect();
        let same: Vec<f64> = (0..700).map(|i| f64::from((i * 37) % 200)).collect();
        let shifted: Vec<f64> = same.iter().map(|x| x + 80.0).collect();
        let s = tally_of(&reference, &same);
        assert!(s.psi < 0.02 && s.ks.unwrap() < 0.03, "{s:?}");
        let s = tally_of(&reference, &shifted);
        // 40% of the rows moved past the reference's largest value.
        assert!(
            s.psi > 1.0 && s.js > 0.3 && (s.ks.unwrap() - 0.4).abs() < 0.01,
            "{s:?}"
        );
    }

    #[test]
    fn missing_values_are_left_out_and_values_outside_the_reference_go_to_its_ends() {
        let cdf = Cdf::fit(&[1.0, 2.0, 2.0, 3.0, f64::NAN]);
        assert_eq!(cdf.range(2.0), (0.25, 0.75));
        assert_eq!(cdf.range(0.0), (0.0, 0.0));
        assert_eq!(cdf.range(9.0), (1.0, 1.0));
        assert_eq!(cdf.range(2.5), (0.75, 0.75));
        let Tally::Numeric(fine) = Tally::numeric(&cdf, &[2.0, f64::NAN, 9.0]) else {
            panic!("numeric")
        };
        assert_eq!(fine.iter().sum::<u64>(), 2 * UNIT);
        assert_eq!(fine[25..75].iter().sum::<u64>(), UNIT);
        assert_eq!(fine[99], UNIT);
    }

    #[test]
    fn a_new_category_drifts_against_the_mix_of_references_that_scored_it() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let alice = Frequencies::fit(["Chrome", "Chrome", "Chrome", "Edge"]);
        let bob = Frequencies::fit(["Firefox", "Firefox"]);
        // Each user as usual: no drift, whatever the mix.
        let mut t = Tally::categorical(&alice, &strings(&["Chrome", "Chrome", "Chrome", "Edge"]));
        assert!(t.merge(&Tally::categorical(&bob, &strings(&["Firefox"; 8]))));
        let s = t.statistics(10);
        assert!(s.psi < 1e-12 && s.js < 1e-6 && s.ks.is_none(), "{s:?}");
        // Alice moves to a browser she never used.
        let mut t = Tally::categorical(&alice, &strings(&["Brave"; 4]));
        t.merge(&Tally::categorical(&bob, &strings(&["Firefox"; 8])));
        let s = t.statistics(10);
        assert!(s.psi > 1.0 && s.js > 0.4, "{s:?}");
        assert!(!t.merge(&Tally::Numeric(vec![0; FINE_BINS])));
    }

    #[test]
    fn psi_and_js_match_their_definitions() {
        let r = [0.5, 0.3, 0.2, 0.0];
        let c = [0.25, 0.25, 0.25, 0.25];
        let e = 1e-4;
        let want = (0.5 - 0.25) * (0.5f64 / 0.25).ln()
            + (0.3 - 0.25) * (0.3f64 / 0.25).ln()
            + (0.2 - 0.25) * (0.2f64 / 0.25).ln()
            + (e - 0.25) * (e / 0.25f64).ln();
        assert!((psi(&r, &c) - want).abs() < 1e-12);
        // scipy.spatial.distance.jensenshannon([.5,.3,.2,0], [.25]*4) = 0.332280...
        assert!((js(&r, &c) - 0.332_280_7).abs() < 1e-6, "{}", js(&r, &c));
        assert!(js(&c, &c).abs() < 1e-9);
    }

    #[test]
    fn rare_values_beyond_the_named_ones_count_as_other() {
        let mut values: Vec<String> = (0..MAX_CATEGORIES + 10).map(|i| format!("v{i}")).collect();
        values.extend(std::iter::repeat_n("v0".to_string(), 5));
        let f = Frequencies::fit(values.iter().map(String::as_str));
        assert_eq!(f.counts.len(), MAX_CATEGORIES);
        assert_eq!(f.counts[OTHER], 11);
        assert_eq!(f.key("never-seen"), OTHER);
        assert_eq!(f.key("v0"), "v0");
    }
}
