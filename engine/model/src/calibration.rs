//! Calibration: what a model's scores look like on ordinary rows, so that a detection rule can
//! ask "how unusual is this score for this model and this user?" instead of comparing every
//! user with one fixed `mean_abs_z`.
//!
//! Fitted once, after training, from the model's own scores of its training window
//! ([`Calibration::fit`]), in two steps:
//!
//! 1. **A reference per row**: a [`Fit`] of `ln(mean_abs_z)` (count, mean, variance). The
//!    validation rows (the last `validation_fraction` of the window by event time, which the
//!    network did not train on) give the model's reference; for the generic model, each user
//!    it trained on also gets their own, shrunk towards the model's by [`PRIOR_ROWS`]
//!    pseudo-rows, so a low-volume user scored by the generic model is compared with their own
//!    ordinary sign-ins, not with everybody's, and a user with a handful of rows borrows most
//!    of their spread from everybody. A score's z-score against its reference puts a row that
//!    scores as its user usually does near 0.
//! 2. **The tail, from the data**: ordinary behaviour is not log-normal in its tail (a user
//!    travels, upgrades a browser, starts a new app: on generated logs with that novelty, 1% of
//!    ordinary rows lie beyond 4.4 standard deviations instead of 2.3). So the window's rows'
//!    z-scores give empirical tail quantiles ([`TAIL_LEVELS`], those the window's size
//!    supports), and [`Calibration::z`] maps a z-score through them to the normal-equivalent
//!    `Φ⁻¹(1 - p)` of its estimated exceedance `p`: a `calibrated_z` of 2.33 is a score about
//!    1% of this model's ordinary rows exceed. Between knots the map is linear; past the last
//!    knot it keeps slope 1. The map is increasing, so it keeps each model's ranking.
//!
//! A rule "at most a share `r` of ordinary rows flagged" is `calibrated_z > Φ⁻¹(1 - r)`
//! ([`normal_quantile`]). The window's rows include those the network trained on, which score
//! a little lower than new rows: the tail is estimated slightly short, so the measured share is
//! somewhat above `r` (the quality benchmark reports both).
//!
//! State: none beyond the model; the fit is saved with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Pseudo-rows of the model's validation reference mixed into a user's own reference.
pub const PRIOR_ROWS: f64 = 20.0;

/// Exceedance levels of the tail map's knots (see the module's doc); a level is used when the
/// window has at least `1 / level` rows.
pub const TAIL_LEVELS: [f64; 9] = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001];

/// The smallest score taken into a logarithm (`mean_abs_z` can be 0).
const FLOOR: f64 = 1e-3;

/// Count, mean and variance of `ln(score)` over some rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    /// Rows.
    pub n: u64,
    /// Mean of `ln(score)`.
    pub mean: f64,
    /// Population variance of `ln(score)`.
    pub var: f64,
}

impl Fit {
    /// The fit of `scores` (Welford's update, in the given order); scores that are not finite
    /// are left out.
    pub fn of(scores: impl IntoIterator<Item = f64>) -> Self {
        let (mut n, mut mean, mut m2) = (0u64, 0.0, 0.0);
        for s in scores.into_iter().filter(|s| s.is_finite()) {
            let x = s.max(FLOOR).ln();
            n += 1;
            let d = x - mean;
            mean += d / n as f64;
            m2 += d * (x - mean);
        }
        Fit {
            n,
            mean,
            var: if n > 0 { m2 / n as f64 } else { 0.0 },
        }
    }

    /// `self` (a user's rows) shrunk towards `prior` by `weight` pseudo-rows: the mean and the
    /// variance are the weighted mixtures of both.
    pub fn shrunk(&self, prior: &Fit, weight: f64) -> Fit {
        let (a, b) = (self.n as f64, weight);
        if a + b <= 0.0 {
            return *prior;
        }
        let mean = (a * self.mean + b * prior.mean) / (a + b);
        // The mixture's variance: each part's variance and its distance from the mixed mean.
        let var = (a * (self.var + (self.mean - mean).powi(2))
            + b * (prior.var + (prior.mean - mean).powi(2)))
            / (a + b);
        Fit {
            n: self.n,
            mean,
            var,
        }
    }

    /// How many standard deviations `score`'s logarithm lies above the mean (a spread of 0,
    /// from identical scores, counts as a small one).
    pub fn z(&self, score: f64) -> f64 {
        (score.max(FLOOR).ln() - self.mean) / self.var.sqrt().max(0.05)
    }
}

/// A model's references (see the module's doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The validation rows' scores (all rows' when the window had none held out).
    pub validation: Fit,
    /// The validation scores' quantiles at 0, 5, ..., 100%.
    pub quantiles: Vec<f32>,
    /// Each user's rows in the window.
    pub users: BTreeMap<String, Fit>,
    /// The tail map's knots: (z-score against the row's reference, normal-equivalent), both
    /// increasing.
    pub knots: Vec<(f32, f32)>,
}

impl Calibration {
    /// The calibration of a model from its scores of its window's rows: `scores[i]` of the row
    /// of `users[i]`, `validation[i]` whether that row was held out.
    pub fn fit(scores: &[f32], users: &[Option<&str>], validation: &[bool]) -> Self {
        let held: Vec<f64> = scores
            .iter()
            .zip(validation)
            .filter(|(_, v)| **v)
            .map(|(s, _)| f64::from(*s))
            .collect();
        let reference: Vec<f64> = if held.is_empty() {
            scores.iter().map(|&s| f64::from(s)).collect()
        } else {
            held
        };
        let mut by_user: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (s, u) in scores.iter().zip(users) {
            if let Some(u) = u {
                by_user
                    .entry((*u).to_string())
                    .or_default()
                    .push(f64::from(*s));
            }
        }
        let mut c = Calibration {
            validation: Fit::of(reference.iter().copied()),
            quantiles: quantiles(reference, 20),
            users: by_user.into_iter().map(|(u, s)| (u, Fit::of(s))).collect(),
            knots: Vec::new(),
        };
        let per_user = c.per_user();
        let mut z: Vec<f64> = scores
            .iter()
            .zip(users)
            .map(|(&s, u)| c.reference(u.unwrap_or_default(), per_user).z(f64::from(s)))
            .filter(|z| z.is_finite())
            .collect();
        z.sort_by(|a, b| b.total_cmp(a));
        let mut last = f32::NEG_INFINITY;
        for level in TAIL_LEVELS {
            let rank = (level * z.len() as f64).floor() as usize;
            if rank == 0 {
                break;
            }
            // The value `rank` rows exceed or equal: the (1 - level) quantile, compared as
            // stored (f32), so the knots the model file keeps are strictly increasing.
            let at = z[rank - 1] as f32;
            if at > last && at.is_finite() {
                c.knots.push((at, normal_quantile(1.0 - level) as f32));
                last = at;
            }
        }
        c
    }

    /// The reference `user`'s scores by this model are compared with: their own, shrunk
    /// towards the validation reference, when `per_user` (the generic model) and the model
    /// knows them; else the validation reference.
    pub fn reference(&self, user: &str, per_user: bool) -> Fit {
        match self.users.get(user) {
            Some(own) if per_user => own.shrunk(&self.validation, PRIOR_ROWS),
            _ => self.validation,
        }
    }

    /// Whether users are compared with their own rows: a model trained on several users' rows
    /// (the generic model). Decided by the fit alone, so a model is always scored the way its
    /// tail was fitted.
    pub fn per_user(&self) -> bool {
        self.users.len() > 1
    }

    /// `score` of a row of `user`: its z-score against its reference (see [`Self::reference`],
    /// per user when [`Self::per_user`]) mapped through the tail's knots to a
    /// normal-equivalent (see the module's doc).
    pub fn z(&self, score: f32, user: &str) -> f32 {
        self.map(self.reference(user, self.per_user()).z(f64::from(score))) as f32
    }

    /// A z-score through the tail map: linear between knots, slope 1 outside them.
    fn map(&self, z: f64) -> f64 {
        let k = |i: usize| (f64::from(self.knots[i].0), f64::from(self.knots[i].1));
        let Some(last) = self.knots.len().checked_sub(1) else {
            return z;
        };
        let (z0, n0) = k(0);
        if z <= z0 {
            return n0 + (z - z0);
        }
        let (zl, nl) = k(last);
        if z >= zl {
            return nl + (z - zl);
        }
        let i = self.knots.partition_point(|&(kz, _)| f64::from(kz) <= z);
        let ((za, na), (zb, nb)) = (k(i - 1), k(i));
        na + (z - za) * (nb - na) / (zb - za)
    }
}

/// The `parts + 1` quantiles of `values` at 0, 1/parts, ..., 1 (nearest rank); empty without
/// values.
fn quantiles(mut values: Vec<f64>, parts: usize) -> Vec<f32> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return Vec::new();
    }
    values.sort_by(f64::total_cmp);
    let last = values.len() - 1;
    (0..=parts)
        .map(|i| values[(i * last + parts / 2) / parts] as f32)
        .collect()
}

/// The standard normal quantile `Φ⁻¹(p)` for `p` in (0, 1) (Acklam's rational approximation,
/// relative error under 1.2e-9); ±infinity at the ends.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_the_tables() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_964),
            (0.99, 2.326_348),
            (0.999, 3.090_232),
            (0.01, -2.326_348),
        ] {
            assert!((normal_quantile(p) - z).abs() < 1e-5, "{p}");
        }
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
    }

    #[test]
    fn a_fit_is_the_log_scores_mean_and_variance() {
        let f = Fit::of([1.0, std::f64::consts::E.powi(2)]);
        assert_eq!(f.n, 2);
        assert!((f.mean - 1.0).abs() < 1e-12 && (f.var - 1.0).abs() < 1e-12);
        assert!((f.z(std::f64::consts::E.powi(3)) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn a_generic_scored_user_is_compared_with_their_own_rows() {
        // Everybody scores around 1; this user's ordinary rows around 4 (a habit rare overall).
        let mut scores = vec![1.0f32; 200];
        let mut users: Vec<Option<&str>> = vec![Some("many"); 200];
        let mut validation = vec![false; 200];
        for v in validation.iter_mut().skip(180) {
            *v = true;
        }
        for (i, s) in scores.iter_mut().enumerate() {
            *s *= 1.0 + (i % 7) as f32 / 20.0;
        }
        scores.extend([4.0, 4.4, 3.8, 4.1, 3.9, 4.2, 4.0, 4.3]);
        users.extend([Some("sparse"); 8]);
        validation.extend([false; 8]);
        let c = Calibration::fit(&scores, &users, &validation);
        assert_eq!(c.validation.n, 20);
        assert_eq!(c.quantiles.len(), 21);
        assert!(c.per_user(), "several users: the generic model");
        // Against everybody a 4 is far out; against the user's own rows, ordinary.
        let everyone = c.map(c.reference("sparse", false).z(4.0)) as f32;
        let own = c.z(4.0, "sparse");
        assert!(everyone > 5.0 && own < 2.0, "{everyone} {own}");
        // Their own unusual score still stands out; an unknown user gets the reference.
        assert!(c.z(40.0, "sparse") > 3.0);
        assert_eq!(c.z(4.0, "nobody"), everyone);
        // A model of one user's rows compares them with its validation rows.
        let one = Calibration::fit(&scores[200..], &users[200..], &validation[200..]);
        assert!(!one.per_user());
    }

    #[test]
    fn the_tail_map_turns_a_heavy_tail_into_its_measured_exceedance() {
        // 10,000 ordinary rows: 97% log-normal, 3% novel (far out), in a fixed pattern.
        let mut scores = Vec::new();
        for i in 0..10_000u32 {
            let u = (f64::from(i) + 0.5) / 10_000.0;
            let body = normal_quantile(u);
            let x = if i % 33 == 0 {
                3.0 + 2.0 * u
            } else {
                0.3 * body
            };
            scores.push(x.exp() as f32);
        }
        let users = vec![Some("u"); scores.len()];
        let validation = vec![true; scores.len()];
        let c = Calibration::fit(&scores, &users, &validation);
        assert_eq!(c.knots.len(), TAIL_LEVELS.len());
        // Each level's calibrated threshold flags about that share of the rows.
        for r in [0.05, 0.01, 0.002] {
            let t = normal_quantile(1.0 - r) as f32;
            let flagged = scores.iter().filter(|&&s| c.z(s, "u") > t).count();
            let share = flagged as f64 / scores.len() as f64;
            assert!((share - r).abs() <= r * 0.25, "{r}: {share}");
        }
        // The plain z-score would flag far more at 1%: the tail is heavier than normal.
        let plain = scores
            .iter()
            .filter(|&&s| c.validation.z(f64::from(s)) > 2.326)
            .count();
        assert!(plain > 200, "{plain}");
        // Monotone everywhere, slope 1 past the last knot.
        let mut last = f32::NEG_INFINITY;
        for s in [0.01f32, 0.5, 1.0, 2.0, 10.0, 100.0, 1000.0] {
            let z = c.z(s, "u");
            assert!(z > last, "{s}");
            last = z;
        }
        // Scores that are not finite are left out of the fits and the knots.
        let mut odd = scores.clone();
        odd.extend([f32::INFINITY, f32::NAN]);
        let with_odd = Calibration::fit(&odd, &vec![Some("u"); odd.len()], &vec![true; odd.len()]);
        assert_eq!(with_odd.validation, c.validation);
        // Knots that would be equal once stored as f32 are kept once.
        let close: Vec<f32> = (0..1000).map(|i| 1.0 + (i % 2) as f32 * 1e-7).collect();
        let flat = Calibration::fit(&close, &vec![Some("u"); 1000], &vec![true; 1000]);
        assert!(
            flat.knots.windows(2).all(|w| w[1].0 > w[0].0),
            "{:?}",
            flat.knots
        );
        // Without rows, no knots: the z-score itself.
        let empty = Calibration::fit(&[], &[], &[]);
        assert!(empty.knots.is_empty());
    }

    #[test]
    fn shrinking_mixes_a_few_rows_with_the_prior() {
        let prior = Fit {
            n: 1000,
            mean: 0.0,
            var: 1.0,
        };
        let few = Fit {
            n: 2,
            mean: 2.0,
            var: 0.0,
        };
        let s = few.shrunk(&prior, PRIOR_ROWS);
        assert!(s.mean > 0.0 && s.mean < 0.5, "{s:?}");
        let many = Fit { n: 2000, ..few };
        assert!(many.shrunk(&prior, PRIOR_ROWS).mean > 1.9);
    }
}
