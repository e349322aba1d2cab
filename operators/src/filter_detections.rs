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
