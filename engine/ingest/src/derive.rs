//! The derived features of a source schema, computed over a whole batch at once, in
//! event-time order (stable for ties), per user:
//! - `count_per_day`: the row's index within its (user, UTC day) from 0 (`logcount`);
//! - `distinct_per_day`: distinct values of its column seen that (user, UTC day) so far, this
//!   row included (`locincrement`, `appincrement`: Morpheus' data prep);
//! - `count_within`: the user's rows in the span `(t - within, t]` of the row's time `t`, this
//!   row included, only those whose bool column equals `when` when a column is named;
//! - `distinct_within`: distinct values of its column among those rows.
//!
//! This batch computation is the reference: the dataflow's incremental per-user windows must
//! give the same values, and its oracle test compares them with this. State: none beyond the
//! call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

use dfp_core::batch::{bool_column, string_column, timestamps};
use dfp_core::schema::{DerivedKind, MISSING_STRING as MISSING, SourceSchema, USERNAME};
use dfp_core::{Error, Result};

const DAY_US: i64 = 86_400_000_000;

/// What one derived feature reads from each row.
enum Input<'a> {
    /// Nothing: every row counts.
    All,
    /// The values whose distinct count is taken.
    Values(Vec<&'a str>),
    /// Whether each row is counted.
    Selected(Vec<bool>),
}

/// `batch` with one Int64 column appended per derived feature of `schema` (replacing a column
/// of the same name).
pub fn add_derived(batch: &RecordBatch, schema: &SourceSchema) -> Result<RecordBatch> {
    let ts = timestamps(batch, "derived features")?;
    let users = string_column(batch, USERNAME)?;
    let inputs: Vec<Input<'_>> = schema
        .derived
        .iter()
        .map(|d| {
            Ok(match (d.kind, &d.column) {
                (DerivedKind::CountPerDay, _) | (DerivedKind::CountWithin, None) => Input::All,
                (DerivedKind::CountWithin, Some(c)) => {
                    let when = d.when.unwrap_or(true);
                    Input::Selected(
                        bool_column(batch, c)?
                            .into_iter()
                            .map(|b| b == when)
                            .collect(),
                    )
                }
                (_, Some(c)) => Input::Values(
                    string_column(batch, c)?
                        .into_iter()
                        .map(|v| v.unwrap_or(MISSING))
                        .collect(),
                ),
                (_, None) => Input::All,
            })
        })
        .collect::<Result<_>>()?;
    let n = batch.num_rows();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ts.is_valid(i).then(|| ts.value(i)));
    // Per (user, day): rows so far, and per derived feature the values seen.
    type Day<'a> = (i64, Vec<HashSet<&'a str>>);
    let mut days: HashMap<(&str, i64), Day<'_>> = HashMap::new();
    // Per user: their rows so far, in time order.
    let mut history: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut values = vec![vec![0i64; n]; schema.derived.len()];
    for &i in &order {
        let t = ts.value(i);
        let user = users[i].unwrap_or("");
        let (count, seen) = days
            .entry((user, t.div_euclid(DAY_US)))
            .or_insert_with(|| (0, vec![HashSet::new(); schema.derived.len()]));
        let past = history.entry(user).or_default();
        past.push(i);
        for (k, (d, input)) in schema.derived.iter().zip(&inputs).enumerate() {
            let since = t.saturating_sub(d.within_us());
            let recent = || past.iter().rev().take_while(|&&j| ts.value(j) > since);
            values[k][i] = match (d.kind, input) {
                (DerivedKind::CountPerDay, _) => *count,
                (DerivedKind::DistinctPerDay, Input::Values(v)) => {
                    seen[k].insert(v[i]);
                    seen[k].len() as i64
                }
                (DerivedKind::CountWithin, Input::Selected(s)) => {
                    recent().filter(|&&j| s[j]).count() as i64
                }
                (DerivedKind::CountWithin, _) => recent().count() as i64,
                (DerivedKind::DistinctWithin, Input::Values(v)) => {
                    recent().map(|&j| v[j]).collect::<HashSet<_>>().len() as i64
                }
                (DerivedKind::DistinctPerDay | DerivedKind::DistinctWithin, _) => 0,
            };
        }
        *count += 1;
    }
    with_derived_columns(batch, schema, values)
}

/// `batch` with one Int64 column appended per derived feature of `schema` holding `values`
/// (one vector per feature, one value per row), replacing columns of the same names.
pub fn with_derived_columns(
    batch: &RecordBatch,
    schema: &SourceSchema,
    values: Vec<Vec<i64>>,
) -> Result<RecordBatch> {
    let mut fields: Vec<Arc<Field>> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if !schema.derived.iter().any(|d| &d.name == f.name()) {
            fields.push(f.clone());
            columns.push(c.clone());
        }
    }
    for (d, v) in schema.derived.iter().zip(values) {
        fields.push(Arc::new(Field::new(&d.name, DataType::Int64, false)));
        columns.push(Arc::new(Int64Array::from(v)));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| Error::Arrow {
        context: "derived features".into(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;

    use super::*;
    use crate::Reader;

    #[test]
    fn counts_and_distincts_per_user_and_day_in_time_order() {
        let schema = Arc::new(SourceSchema::builtin("azure").unwrap());
        // Out of time order on purpose; two users; a day boundary between rows 3 and 4.
        let rec = |t: &str, user: &str, app: &str, city: &str| {
            format!(
                r#"{{"time":"{t}","properties":{{"id":"{t}{user}","userPrincipalName":"{user}",
                "appDisplayName":"{app}","location":{{"city":"{city}","countryOrRegion":"US"}}}}}}"#
            )
        };
        let text = format!(
            "[{}]",
            [
                rec("2024-01-01T10:00:00Z", "a", "x", "Paris"),
                rec("2024-01-01T09:00:00Z", "a", "x", "Rome"),
                rec("2024-01-01T11:00:00Z", "b", "y", "Paris"),
                rec("2024-01-01T12:00:00Z", "a", "z", "Paris"),
                rec("2024-01-02T01:00:00Z", "a", "x", "Paris"),
            ]
            .join(",")
        );
        let read = Reader::new(schema.clone()).read_bytes(
            std::path::Path::new("t.json"),
            text.as_bytes(),
            crate::InputFormat::JsonArray,
        );
        assert!(read.rejected.is_empty(), "{:?}", read.rejected);
        let out = add_derived(&read.batch, &schema).unwrap();
        let col = |name: &str| -> Vec<i64> {
            out.column_by_name(name)
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        };
        assert_eq!(col("logcount"), [1, 0, 0, 2, 0]);
        assert_eq!(col("locincrement"), [2, 1, 1, 2, 1]);
        assert_eq!(col("appincrement"), [1, 1, 1, 2, 1]);
        // Deriving twice replaces the columns instead of doubling them.
        let again = add_derived(&out, &schema).unwrap();
        assert_eq!(again.num_columns(), out.num_columns());
    }
}
