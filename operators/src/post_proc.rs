//! Post-processing (Morpheus' `dfp_postprocessing` module / `DFPPostprocessingStage`): stamps
//! each scored row with `event_time`, the time of the detection (UTC, from the clock the run
//! passes in, so tests fix it), and names the three features with the highest z-loss
//! (`top_features`, the per-alert explanation Morpheus users ask for).
//!
//! Input: [`Scored`] rows. Output: [`Detection`]s. State: none.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Map;

use crate::inference::Scored;

/// The clock that stamps detections.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// How many features `top_features` names.
pub const TOP_FEATURES: usize = 3;

/// A scored row ready for output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The scored row.
    pub scored: Scored,
    /// When it was detected, µs since the Unix epoch (UTC).
    pub event_time_us: i64,
    /// The features with the highest z-loss, highest first.
    pub top_features: Vec<String>,
}

/// The indices of the `n` largest values of `z`, largest first (ties: lower index first).
pub fn top_indices(z: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..z.len()).collect();
    idx.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    idx.truncate(n);
    idx
}

/// Post-processes one scored row; `features` names the per-feature columns.
pub fn post_process(scored: Scored, features: &[String], now: DateTime<Utc>) -> Detection {
    let top_features = top_indices(&scored.z_loss, TOP_FEATURES)
        .into_iter()
        .filter_map(|i| features.get(i).cloned())
        .collect();
    Detection {
        scored,
        event_time_us: now.timestamp_micros(),
        top_features,
    }
}

/// The post-processing stage as a timely operator.
pub trait PostProc<'s> {
    /// Post-processes each row.
    fn post_proc(self, features: Arc<Vec<String>>, clock: Clock) -> StreamVec<'s, u64, Detection>;
}

impl<'s> PostProc<'s> for StreamVec<'s, u64, Scored> {
    fn post_proc(self, features: Arc<Vec<String>>, clock: Clock) -> StreamVec<'s, u64, Detection> {
        self.map(move |s| post_process(s, &features, clock()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_indices_are_the_largest_first_ties_by_position() {
        assert_eq!(top_indices(&[0.5, 3.0, 1.0, 3.0, 2.0], 3), [1, 3, 4]);
        assert_eq!(top_indices(&[1.0], 3), [0]);
    }

    #[test]
    fn each_row_is_stamped_by_the_clock_and_names_its_top_features() {
        let f = crate::testing::Fixture::duo(3, 3);
        let mut scored = f.scored(&crate::testing::fast_config());
        let n = scored[0].z_loss.len();
        let features: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
        for z in &mut scored[0].z_loss {
            *z = 0.0;
        }
        scored[0].z_loss[n - 1] = 9.0;
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let clock: Clock = Arc::new(move || now);
        let count = scored.len();
        let (out, _) = crate::testing::run_stage(vec![(3, scored)], move |s, _| {
            s.post_proc(Arc::new(features), clock)
        });
        assert_eq!(out.len(), count);
        assert!(
            out.iter()
                .all(|(t, d)| *t == 3 && d.event_time_us == now.timestamp_micros())
        );
        assert_eq!(out[0].1.top_features[0], format!("f{}", n - 1));
        assert!(
            out.iter()
                .all(|(_, d)| d.top_features.len() == TOP_FEATURES.min(n))
        );
    }
}
