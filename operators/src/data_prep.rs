//! Data prep (Morpheus' `dfp_data_prep` module / `DFPPreprocessingStage`): turns a window's
//! rows back into an Arrow batch of the source schema with the derived per-day features
//! (`logcount`, `locincrement`, `appincrement`) as columns, ready to train on or to score.
//!
//! Input: [`Window`]s. Output: [`Prepared`] windows and [`DeadLetter`]s for windows whose rows
//! do not fit the schema. State: none.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use dfp_engine::Result;
use dfp_engine::derive::with_derived_columns;
use dfp_engine::rows::rows_to_batch;
use dfp_engine::schema::SourceSchema;
use timely::dataflow::StreamVec;
use timely::dataflow::operators::core::OkErr;

use crate::dead_letter::DeadLetter;
use crate::rolling_window::Window;

/// A window with its batch.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The window (rows kept for the outputs).
    pub window: Window,
    /// The rows as a batch with the derived features.
    pub batch: RecordBatch,
}

/// The batch of `window`'s rows with their derived features.
pub fn prepare(window: Window, schema: &SourceSchema, arrow: &SchemaRef) -> Result<Prepared> {
    let batch = rows_to_batch(arrow, window.rows.iter().map(|r| &**r))?;
    let values: Vec<Vec<i64>> = (0..schema.derived.len())
        .map(|k| {
            window
                .derived
                .iter()
                .map(|d| d.get(k).copied().unwrap_or(0))
                .collect()
        })
        .collect();
    let batch = with_derived_columns(&batch, schema, values)?;
    Ok(Prepared { window, batch })
}

/// The data-prep stage as a timely operator.
pub trait DataPrep<'s> {
    /// Prepares each window where it is (no exchange).
    fn data_prep(
        self,
        schema: Arc<SourceSchema>,
    ) -> (StreamVec<'s, u64, Prepared>, StreamVec<'s, u64, DeadLetter>);
}

impl<'s> DataPrep<'s> for StreamVec<'s, u64, Window> {
    fn data_prep(
        self,
        schema: Arc<SourceSchema>,
    ) -> (StreamVec<'s, u64, Prepared>, StreamVec<'s, u64, DeadLetter>) {
        let arrow = schema.arrow_schema();
        self.ok_err(move |w| {
            let user = w.user.clone();
            prepare(w, &schema, &arrow)
                .map_err(|e| DeadLetter::model("data_prep", &user, e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, both, fast_config, run_stage};

    #[test]
    fn each_window_becomes_a_batch_of_its_rows_with_the_derived_features() {
        let f = Fixture::duo(3, 2);
        let prepared = f.prepared(&fast_config());
        let epochs: Vec<(u64, Vec<Window>)> = prepared
            .iter()
            .map(|(t, ps)| (*t, ps.iter().map(|p| p.window.clone()).collect()))
            .collect();
        let want: Vec<(u64, usize)> = prepared
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(|p| (*t, p.batch.num_rows())))
            .collect();
        let schema = f.schema.clone();
        let (out, _) = run_stage(epochs, move |s, _| both(s.data_prep(schema)));
        let got: Vec<(u64, usize)> = out
            .iter()
            .map(|(t, p)| (*t, p.as_ref().map(|p| p.batch.num_rows()).unwrap_or(0)))
            .collect();
        assert_eq!(got, want);
        let p = out[0].1.as_ref().unwrap();
        for d in &f.schema.derived {
            assert!(
                p.batch.column_by_name(&d.name).is_some(),
                "{} missing",
                d.name
            );
        }
        assert_eq!(p.batch.num_rows(), p.window.rows.len());
    }
}
