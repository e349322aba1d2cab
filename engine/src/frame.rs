//! Small operations on Arrow batches that several stages share: concatenating batches of one
//! schema, taking rows by index, and splitting a batch into one batch per user.

use std::collections::BTreeMap;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;

use crate::model::encode::string_column;
use crate::schema::USERNAME;
use crate::{Error, Result};

fn arrow_err(context: &str) -> impl FnOnce(arrow::error::ArrowError) -> Error + '_ {
    move |source| Error::Arrow {
        context: context.to_string(),
        source,
    }
}

/// One batch of all the rows of `batches`, in order.
pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    arrow::compute::concat_batches(schema, batches).map_err(arrow_err("concatenating batches"))
}

/// The rows of `batch` at `indices`, in that order.
pub fn take(batch: &RecordBatch, indices: &[usize]) -> Result<RecordBatch> {
    let idx = UInt32Array::from_iter_values(indices.iter().map(|&i| i as u32));
    arrow::compute::take_record_batch(batch, &idx).map_err(arrow_err("selecting rows"))
}

/// One batch per user (by the `username` column; a null username is ""), users in name order,
/// rows in batch order.
pub fn split_by_user(batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
    let users = string_column(batch, USERNAME)?;
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, u) in users.iter().enumerate() {
        groups.entry(u.unwrap_or("")).or_default().push(i);
    }
    groups
        .into_iter()
        .map(|(u, rows)| Ok((u.to_string(), take(batch, &rows)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn splits_by_user_keeping_row_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(USERNAME, DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("b"),
                    Some("a"),
                    None,
                    Some("b"),
                ])),
                Arc::new(Int64Array::from(vec![0, 1, 2, 3])),
            ],
        )
        .unwrap();
        let both = concat(&schema, &[batch.clone(), batch]).unwrap();
        let parts = split_by_user(&both).unwrap();
        let names: Vec<&str> = parts.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["", "a", "b"]);
        let v = |b: &RecordBatch| {
            b.column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        };
        assert_eq!(v(&parts[2].1), [0, 3, 0, 3]);
        assert_eq!(v(&parts[0].1), [2, 2]);
    }
}
