//! Rows: one ingested log record as a self-contained, serializable value, the unit that moves
//! between dataflow workers (split by user, held in rolling windows) and is turned back into
//! an Arrow batch for training and scoring.
//!
//! A [`Row`] keeps its event time, its user, where it came from ([`Origin`]: epoch, file, record,
//! which makes every ordering deterministic whatever the worker layout) and the values of the
//! schema's other columns (`event_id`, then the schema's columns) in Arrow-schema order.
//! State: none.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use dfp_core::schema::{TIMESTAMP, USERNAME};
use dfp_core::{Error, Result};

/// One value of a column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Null.
    Null,
    /// A string.
    Str(String),
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Value {
    /// The value as text for output files: strings as they are, numbers in Rust's shortest
    /// round-trip form, booleans `true`/`false`, null empty.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Str(s) => s.clone(),
            Value::Int(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Str(s) => s.clone().into(),
            Value::Int(v) => (*v).into(),
            Value::Float(v) => {
                serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into)
            }
            Value::Bool(v) => (*v).into(),
        }
    }
}

/// Where a row came from: the dataflow epoch, the file's index within the epoch's batch (for a
/// stream: the partition), and the record's index among the file's good records (for a
/// stream: its offset). Unique per row; orders ties in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The epoch (control-message input and batch) the row arrived in.
    pub epoch: u64,
    /// The file's index within the epoch's batch.
    pub file: u32,
    /// The record's index within the file's good records, or its offset in its partition.
    pub record: u64,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Event time, µs since the Unix epoch (UTC).
    pub ts: i64,
    /// The user, if the record named one.
    pub user: Option<String>,
    /// Where the row came from.
    pub origin: Origin,
    /// The values of the schema's columns after `timestamp` and `username`, in order.
    pub values: Vec<Value>,
}

impl Row {
    /// The sort key that orders rows by event time, ties by origin.
    pub fn key(&self) -> (i64, Origin) {
        (self.ts, self.origin)
    }
}

/// The rows of an ingested batch (schema: [`dfp_core::schema::SourceSchema::arrow_schema`]),
/// tagged with `epoch` and `file`.
pub fn rows_from_batch(batch: &RecordBatch, epoch: u64, file: u32) -> Result<Vec<Row>> {
    let err = |problem: String| Error::model("rows", problem);
    let schema = batch.schema();
    let ts = dfp_core::batch::timestamps(batch, "rows")?;
    let users = batch
        .column_by_name(USERNAME)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| err(format!("the batch has no string {USERNAME} column")))?;
    let others: Vec<&ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| f.name() != TIMESTAMP && f.name() != USERNAME)
        .map(|(_, c)| c)
        .collect();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let values = others
            .iter()
            .map(|c| value_at(c, i))
            .collect::<Result<Vec<Value>>>()?;
        rows.push(Row {
            ts: ts.value(i),
            user: users.is_valid(i).then(|| users.value(i).to_string()),
            origin: Origin {
                epoch,
                file,
                record: i as u64,
            },
            values,
        });
    }
    Ok(rows)
}

fn value_at(col: &ArrayRef, i: usize) -> Result<Value> {
    if col.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match col.data_type() {
        DataType::Utf8 => Value::Str(col.as_string::<i32>().value(i).to_string()),
        DataType::Int64 => Value::Int(col.as_primitive::<Int64Type>().value(i)),
        DataType::Float64 => Value::Float(col.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => Value::Bool(col.as_boolean().value(i)),
        other => {
            return Err(Error::model(
                "rows",
                format!("a column of type {other} cannot be held in a row"),
            ));
        }
    })
}

/// A batch of `rows` in the given order, with `schema` (the ingest schema: `timestamp`,
/// `username`, then the columns the rows' values hold).
pub fn rows_to_batch<'a>(
    schema: &SchemaRef,
    rows: impl ExactSizeIterator<Item = &'a Row> + Clone,
) -> Result<RecordBatch> {
    let n = rows.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let mut k = 0;
    for field in schema.fields() {
        let col: ArrayRef = match field.name().as_str() {
            TIMESTAMP => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(n);
                rows.clone().for_each(|r| b.append_value(r.ts));
                Arc::new(b.finish().with_data_type(DataType::Timestamp(
                    TimeUnit::Microsecond,
                    Some("UTC".into()),
                )))
            }
            USERNAME => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                rows.clone()
                    .for_each(|r| b.append_option(r.user.as_deref()));
                Arc::new(b.finish())
            }
            name => {
                let col = build_column(field.data_type(), rows.clone().map(|r| r.values.get(k)))
                    .map_err(|problem| {
                        Error::model("rows", format!("column {name:?}: {problem}"))
                    })?;
                k += 1;
                col
            }
        };
        columns.push(col);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Arrow {
        context: "building a batch from rows".into(),
        source: e,
    })
}

fn build_column<'a>(
    ty: &DataType,
    values: impl ExactSizeIterator<Item = Option<&'a Value>>,
) -> std::result::Result<ArrayRef, String> {
    let n = values.len();
    let mismatch = |v: &Value| format!("value {v:?} does not fit type {ty}");
    Ok(match ty {
        DataType::Utf8 => {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for v in values {
                match v {
                    None | Some(Value::Null) => b.append_null(),
                    Some(Value::Str(s)) => b.append_value(s),
                    Some(v) => return Err(mismatch(v)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Int64 => {
            let mut b = Int64Builder::with_capacity(n);
            for v in values {
                match v {
                    None | Some(Value::Null) => b.append_null(),
                    Some(Value::Int(x)) => b.append_value(*x),
                    Some(v) => return Err(mismatch(v)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::with_capacity(n);
            for v in values {
                match v {
                    None | Some(Value::Null) => b.append_null(),
                    Some(Value::Float(x)) => b.append_value(*x),
                    Some(v) => return Err(mismatch(v)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(n);
            for v in values {
                match v {
                    None | Some(Value::Null) => b.append_null(),
                    Some(Value::Bool(x)) => b.append_value(*x),
                    Some(v) => return Err(mismatch(v)),
                }
            }
            Arc::new(b.finish())
        }
        other => return Err(format!("type {other} is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InputFormat, Reader};
    use dfp_core::schema::SourceSchema;

    #[test]
    fn batch_to_rows_and_back_is_lossless_for_both_sources() {
        for (source, record) in [
            ("azure", "azure_ad_example_record.json"),
            ("duo", "duo_auth_example_record.json"),
        ] {
            let schema = Arc::new(SourceSchema::builtin(source).unwrap());
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/fixtures/morpheus/records")
                .join(record);
            let text = std::fs::read_to_string(&path).unwrap();
            let one = text.trim().trim_start_matches('[').trim_end_matches(']');
            let two = format!("[{one},{one}]");
            let read = Reader::new(schema.clone()).read_bytes(
                &path,
                two.as_bytes(),
                InputFormat::JsonArray,
            );
            assert!(read.rejected.is_empty(), "{:?}", read.rejected);
            let rows = rows_from_batch(&read.batch, 3, 7).unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(
                rows[1].origin,
                Origin {
                    epoch: 3,
                    file: 7,
                    record: 1
                }
            );
            let back = rows_to_batch(&schema.arrow_schema(), rows.iter()).unwrap();
            assert_eq!(back, read.batch, "{source}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_naming_the_column() {
        let schema = Arc::new(SourceSchema::builtin("azure").unwrap());
        let row = Row {
            ts: 0,
            user: Some("u".into()),
            origin: Origin {
                epoch: 0,
                file: 0,
                record: 0,
            },
            values: vec![Value::Int(1)],
        };
        let e = rows_to_batch(&schema.arrow_schema(), [row].iter()).unwrap_err();
        assert!(e.to_string().contains("event_id"), "{e}");
    }
}
