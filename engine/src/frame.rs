//! Small operations on Arrow batches that several stages share: concatenating batches of one
//! schema, taking rows by index, splitting a batch into one batch per user, and reading a
//! directory of logs into one batch with the derived features.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;

use crate::ingest::{InputFormat, Reader};
use crate::model::encode::string_column;
use crate::schema::{SourceSchema, USERNAME};
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

/// Every `.json` log file of `dir` (in name order, which is time order for Morpheus-named
/// files) as one batch with the schema's derived features. Rejected records and broken files
/// are left out, as the readers report them.
pub fn read_log_dir(dir: &Path, schema: &SourceSchema, threads: usize) -> Result<RecordBatch> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "listing log files", e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let reads =
        Reader::new(Arc::new(schema.clone())).read_files(&paths, InputFormat::Auto, threads);
    let batches: Vec<RecordBatch> = reads.into_iter().map(|r| r.batch).collect();
    crate::derive::add_derived(&concat(&schema.arrow_schema(), &batches)?, schema)
}

#[cfg(test)]
mod tests {
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
