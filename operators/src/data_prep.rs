//! Data prep (Morpheus' `dfp_data_prep` module / `DFPPreprocessingStage`): turns a window's
//! rows back into an Arrow batch of the source schema with the derived per-day features
//! (`logcount`, `locincrement`, `appincrement`) as columns, ready to train on or to score.
//!
//! Not an operator of its own: training and inference prepare each window when they come to
//! train or score it, so a window waiting for its epoch holds its rows (shared with the rolling
//! windows), not a batch. Input: [`Window`]s. Output: [`Prepared`] windows and [`DeadLetter`]s
//! for windows whose rows do not fit the schema. State: none.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use dfp_engine::Result;
use dfp_engine::derive::with_derived_columns;
use dfp_engine::rows::rows_to_batch;
use dfp_engine::schema::SourceSchema;

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

/// Prepares `windows` (schema `arrow`: `schema.arrow_schema()`): the prepared ones, and a
/// dead letter (`stage`) for each window whose rows do not fit the schema.
pub fn prepare_all(
    windows: impl IntoIterator<Item = Window>,
    schema: &SourceSchema,
    arrow: &SchemaRef,
    stage: &str,
) -> (Vec<Prepared>, Vec<DeadLetter>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for w in windows {
        let user = w.user.clone();
        match prepare(w, schema, arrow) {
            Ok(p) => ok.push(p),
            Err(e) => bad.push(DeadLetter::model(stage, &user, e.to_string())),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, fast_config};
    use dfp_engine::rows::Value;
    use std::sync::Arc;

    #[test]
    fn each_window_becomes_a_batch_of_its_rows_with_the_derived_features() {
        let f = Fixture::duo(3, 2);
        let windows: Vec<Window> = f
            .prepared(&fast_config())
            .into_iter()
            .flat_map(|(_, ps)| ps.into_iter().map(|p| p.window))
            .collect();
        assert!(!windows.is_empty());
        // One window more, whose first row has a number where the event id goes.
        let mut broken = windows[0].clone();
        let mut row = (*broken.rows[0]).clone();
        row.values[0] = Value::Int(1);
        broken.rows[0] = Arc::new(row);
        broken.user = "broken".into();
        let all = windows.iter().cloned().chain([broken]);
        let (ok, bad) = prepare_all(all, &f.schema, &f.schema.arrow_schema(), "training");
        let rows: Vec<usize> = ok.iter().map(|p| p.batch.num_rows()).collect();
        let want: Vec<usize> = windows.iter().map(|w| w.rows.len()).collect();
        assert_eq!(rows, want);
        for d in &f.schema.derived {
            assert!(
                ok[0].batch.column_by_name(&d.name).is_some(),
                "{} missing",
                d.name
            );
        }
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].user.as_deref(), Some("broken"));
        assert!(bad[0].reason.contains("event_id"), "{}", bad[0].reason);
    }
}
