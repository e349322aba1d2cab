//! Filter detections (Morpheus' `filter_detections` module / `FilterDetectionsStage`): keeps
//! the scored rows that are detections by the run's rule:
//!
//! - a fixed threshold (Morpheus' rule, the default): `mean_abs_z` strictly above `threshold`
//!   (Morpheus: 2.0), or, with `max_threshold` (dfp's), one feature's z-loss (`max_abs_z`)
//!   strictly above that: a single feature far out of its model's range (a sign-in at an hour
//!   the user never signs in, from their usual place and app) is not averaged away over all
//!   the features;
//! - a target false-alert rate: `calibrated_z` (the score against what the scoring model's
//!   scores of ordinary rows look like, for the generic model this user's own; see
//!   `dfp_engine::model::calibration`) above `Φ⁻¹(1 - false_alert_rate)`, so about that share
//!   of ordinary rows is flagged whichever model scores them; `mean_abs_z` must still exceed
//!   `min_score`.
//!
//! An alert budget (`max_per_user_day`, `max_per_day`) is applied after this stage
//! (`crate::budget`). Input: [`Scored`] rows. Output: the detections among them. State: none.

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Filter;

use dfp_engine::config::Problems;
use dfp_engine::model::calibration::normal_quantile;

use crate::inference::Scored;

/// Detection settings (`[detection]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// A row is a detection when its `mean_abs_z` is above this (without `false_alert_rate`).
    pub threshold: f64,
    /// Instead of `threshold`: the share of ordinary rows to flag, in [1e-9, 0.5) (below it the
    /// threshold is past what an f64 can tell from infinity).
    pub false_alert_rate: Option<f64>,
    /// With `false_alert_rate`: rows whose `mean_abs_z` is not above this are never detections.
    pub min_score: f64,
    /// With `threshold`: a row whose `max_abs_z` is above this is a detection too.
    pub max_threshold: Option<f64>,
    /// At most this many detections per user and UTC day, the strongest first.
    pub max_per_user_day: Option<u32>,
    /// At most this many detections per UTC day over all users, the strongest first.
    pub max_per_day: Option<u32>,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            threshold: 2.0,
            false_alert_rate: None,
            min_score: 0.0,
            max_threshold: None,
            max_per_user_day: None,
            max_per_day: None,
        }
    }
}

impl DetectionConfig {
    /// Every problem, under `path`.
    pub fn check(&self, path: &str, p: &mut Problems) {
        let key = |k: &str| dfp_engine::config::join(path, k);
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            p.push(
                key("threshold"),
                "must be a finite number >= 0 (it bounds mean_abs_z, which is never negative)",
            );
        }
        if let Some(r) = self.false_alert_rate
            && !((1e-9..0.5).contains(&r))
        {
            p.push(
                key("false_alert_rate"),
                "must be a share of ordinary rows in [1e-9, 0.5), such as 0.005",
            );
        }
        if !(self.min_score.is_finite() && self.min_score >= 0.0) {
            p.push(key("min_score"), "must be a finite number >= 0");
        }
        match (self.max_threshold, self.false_alert_rate) {
            (Some(m), _) if !(m.is_finite() && m >= 0.0) => {
                p.push(key("max_threshold"), "must be a finite number >= 0")
            }
            (Some(_), Some(_)) => p.push(
                key("max_threshold"),
                "applies to the fixed threshold rule, not with false_alert_rate",
            ),
            _ => {}
        }
        for (k, v) in [
            ("max_per_user_day", self.max_per_user_day),
            ("max_per_day", self.max_per_day),
        ] {
            if v == Some(0) {
                p.push(key(k), "must be at least 1 (leave it out for no budget)");
            }
        }
    }

    /// Whether an alert budget applies.
    pub fn budgeted(&self) -> bool {
        self.max_per_user_day.is_some() || self.max_per_day.is_some()
    }

    /// How strongly `s` stands out by this rule: what the rule compares, and what a budget
    /// keeps the largest of.
    pub fn strength(&self, s: &Scored) -> f32 {
        if self.false_alert_rate.is_some() {
            s.calibrated_z
        } else {
            s.mean_abs_z
        }
    }
}

/// Decides detections by a [`DetectionConfig`]'s rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    calibrated: Option<f64>,
    floor: f64,
    max: Option<f64>,
}

impl Rule {
    /// The score the rule compares and its threshold: `calibrated_z` against the target rate's
    /// quantile, else `mean_abs_z` against the fixed threshold.
    pub fn cut(&self) -> (&'static str, f64) {
        match self.calibrated {
            Some(q) => ("calibrated_z", q),
            None => ("mean_abs_z", self.floor),
        }
    }

    /// With the fixed threshold: the `max_abs_z` above which a row is a detection too.
    pub fn max_cut(&self) -> Option<f64> {
        self.max
    }

    /// The rule of `cfg`.
    pub fn of(cfg: &DetectionConfig) -> Self {
        match cfg.false_alert_rate {
            Some(r) => Rule {
                calibrated: Some(normal_quantile(1.0 - r)),
                floor: cfg.min_score,
                max: None,
            },
            None => Rule {
                calibrated: None,
                floor: cfg.threshold,
                max: cfg.max_threshold,
            },
        }
    }

    /// Whether `s` is a detection.
    pub fn is_detection(&self, s: &Scored) -> bool {
        self.flags(s.mean_abs_z, s.max_abs_z, s.calibrated_z)
    }

    /// Whether a row with these scores would be a detection.
    pub fn flags(&self, mean_abs_z: f32, max_abs_z: f32, calibrated_z: f32) -> bool {
        (f64::from(mean_abs_z) > self.floor
            && self.calibrated.is_none_or(|z| f64::from(calibrated_z) > z))
            || self.max.is_some_and(|m| f64::from(max_abs_z) > m)
    }
}

/// The filter-detections stage as a timely operator.
pub trait FilterDetections<'s> {
    /// Keeps the detections.
    fn filter_detections(self, cfg: &DetectionConfig) -> StreamVec<'s, u64, Scored>;
}

impl<'s> FilterDetections<'s> for StreamVec<'s, u64, Scored> {
    fn filter_detections(self, cfg: &DetectionConfig) -> StreamVec<'s, u64, Scored> {
        let rule = Rule::of(cfg);
        self.filter(move |s| rule.is_detection(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, fast_config, run_stage};

    #[test]
    fn only_rows_strictly_above_the_threshold_pass() {
        let f = Fixture::duo(3, 3);
        let mut scored = f.scored(&fast_config());
        assert!(scored.len() >= 3);
        scored[0].mean_abs_z = 2.0;
        scored[1].mean_abs_z = 2.5;
        scored[2].mean_abs_z = 1.0;
        let want: Vec<f32> = scored
            .iter()
            .map(|s| s.mean_abs_z)
            .filter(|&z| f64::from(z) > 2.0)
            .collect();
        let (out, _) = run_stage(vec![(0, scored)], |s, _| {
            s.filter_detections(&DetectionConfig::default())
        });
        let got: Vec<f32> = out.iter().map(|(_, s)| s.mean_abs_z).collect();
        assert_eq!(got, want);
        assert!(got.contains(&2.5) && !got.contains(&2.0));
    }

    #[test]
    fn one_feature_far_out_is_a_detection_with_a_max_threshold() {
        let f = Fixture::duo(3, 3);
        let mut s = f.scored(&fast_config()).remove(0);
        let cfg = DetectionConfig {
            threshold: 3.5,
            max_threshold: Some(30.0),
            ..DetectionConfig::default()
        };
        for (mean, max, with, without) in [
            (3.6, 10.0, true, true),
            (3.0, 30.5, true, false),
            (3.0, 30.0, false, false),
            (1.0, 29.0, false, false),
        ] {
            s.mean_abs_z = mean;
            s.max_abs_z = max;
            assert_eq!(Rule::of(&cfg).is_detection(&s), with, "{mean} {max}");
            let plain = DetectionConfig {
                max_threshold: None,
                ..cfg.clone()
            };
            assert_eq!(Rule::of(&plain).is_detection(&s), without, "{mean} {max}");
        }
        let mut p = Problems::new();
        DetectionConfig {
            false_alert_rate: Some(0.01),
            ..cfg
        }
        .check("detection", &mut p);
        let e = p.finish("cfg", ()).unwrap_err().to_string();
        assert!(e.contains("detection.max_threshold"), "{e}");
    }

    #[test]
    fn a_false_alert_rate_compares_the_calibrated_score_above_a_floor() {
        let f = Fixture::duo(3, 3);
        let mut s = f.scored(&fast_config()).remove(0);
        let cfg = DetectionConfig {
            false_alert_rate: Some(0.01),
            min_score: 1.0,
            ..DetectionConfig::default()
        };
        let rule = Rule::of(&cfg);
        // Φ⁻¹(0.99) = 2.326.
        for (mean, calibrated, flagged) in [
            (5.0, 2.4, true),
            (5.0, 2.3, false),
            (0.9, 9.0, false),
            (1.1, 9.0, true),
        ] {
            s.mean_abs_z = mean;
            s.calibrated_z = calibrated;
            assert_eq!(rule.is_detection(&s), flagged, "{mean} {calibrated}");
        }
        assert_eq!(cfg.strength(&s), 9.0);
        let mut p = Problems::new();
        DetectionConfig {
            false_alert_rate: Some(0.7),
            max_per_day: Some(0),
            ..cfg
        }
        .check("detection", &mut p);
        let e = p.finish("cfg", ()).unwrap_err().to_string();
        assert!(
            e.contains("detection.false_alert_rate") && e.contains("detection.max_per_day"),
            "{e}"
        );
    }
}
