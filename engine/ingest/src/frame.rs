//! A directory of logs read into one batch with the schema's derived features (tests,
//! benchmarks and tools that want a whole data set at once). State: none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use dfp_core::batch::concat;
use dfp_core::schema::SourceSchema;
use dfp_core::{Error, Result};

use crate::{InputFormat, Reader};

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
