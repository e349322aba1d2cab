//! Filter detections (Morpheus' `filter_detections` module / `FilterDetectionsStage`): keeps
//! the scored rows whose `mean_abs_z` is strictly above the threshold (Morpheus: 2.0).
//!
//! Input: [`Scored`] rows. Output: the detections among them. State: none.

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Filter;

use crate::inference::Scored;

/// Detection settings (`[detection]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// A row is a detection when its `mean_abs_z` is above this.
    pub threshold: f64,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self { threshold: 2.0 }
    }
}

/// Whether `s` is a detection at `threshold`.
pub fn is_detection(s: &Scored, threshold: f64) -> bool {
    f64::from(s.mean_abs_z) > threshold
}

/// The filter-detections stage as a timely operator.
pub trait FilterDetections<'s> {
    /// Keeps the detections.
    fn filter_detections(self, cfg: &DetectionConfig) -> StreamVec<'s, u64, Scored>;
}

impl<'s> FilterDetections<'s> for StreamVec<'s, u64, Scored> {
    fn filter_detections(self, cfg: &DetectionConfig) -> StreamVec<'s, u64, Scored> {
        let threshold = cfg.threshold;
        self.filter(move |s| is_detection(s, threshold))
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
}
