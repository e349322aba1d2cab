//! Reading and reshaping Arrow batches, for every stage that holds one: typed access to a
//! column by name (the event time as microseconds; numbers as f64 with nulls NaN; booleans
//! with nulls false; strings with nulls `None`), each a clear error naming the column when it
//! is missing or of another type; and concatenating batches, taking rows by index, splitting a
//! batch per user. State: none.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef,
    TimestampMicrosecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

use crate::schema::{TIMESTAMP, USERNAME};
use crate::{Error, Result};

/// The `timestamp` column of `batch` (µs, UTC); an error names `context` when it is missing.
pub fn timestamps<'a>(
    batch: &'a RecordBatch,
    context: &str,
) -> Result<&'a arrow::array::TimestampMicrosecondArray> {
    batch
        .column_by_name(TIMESTAMP)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| {
            Error::model(
                context,
                format!("the batch has no {TIMESTAMP} column of microseconds"),
            )
        })
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::model("input", format!("feature column {name:?} is missing")))
}

fn wrong_type(name: &str, want: &str, got: &DataType) -> Error {
    Error::model(
        "input",
        format!("feature column {name:?} must be {want}, not {got}"),
    )
}

/// A numeric feature column as f64, nulls as NaN.
pub fn numeric_column(batch: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    let col = column(batch, name)?;
    macro_rules! read {
        ($t:ty) => {
            col.as_primitive::<$t>()
                .iter()
                .map(|v| v.map_or(f64::NAN, |v| v as f64))
                .collect()
        };
    }
    Ok(match col.data_type() {
        DataType::Float64 => read!(Float64Type),
        DataType::Float32 => read!(Float32Type),
        DataType::Int64 => read!(Int64Type),
        DataType::Int32 => read!(Int32Type),
        DataType::Int16 => read!(Int16Type),
        DataType::Int8 => read!(Int8Type),
        DataType::UInt64 => read!(UInt64Type),
        DataType::UInt32 => read!(UInt32Type),
        DataType::UInt16 => read!(UInt16Type),
        DataType::UInt8 => read!(UInt8Type),
        other => return Err(wrong_type(name, "a number", other)),
    })
}

/// A bool feature column, nulls as false.
pub fn bool_column(batch: &RecordBatch, name: &str) -> Result<Vec<bool>> {
    let col = column(batch, name)?;
    match col.as_boolean_opt() {
        Some(b) => Ok(b.iter().map(|v| v.unwrap_or(false)).collect()),
        None => Err(wrong_type(name, "a boolean", col.data_type())),
    }
}

/// A string feature column, nulls as `None`.
pub fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<Vec<Option<&'a str>>> {
    let col = column(batch, name)?;
    if let Some(s) = col.as_string_opt::<i32>() {
        Ok(s.iter().collect())
    } else if let Some(s) = col.as_string_opt::<i64>() {
        Ok(s.iter().collect())
    } else if let Some(s) = col.as_string_view_opt() {
        Ok(s.iter().collect())
    } else {
        Err(wrong_type(name, "a string", col.data_type()))
    }
}

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

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

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
