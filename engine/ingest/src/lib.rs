//! Readers: log files (JSON arrays as Morpheus writes them, newline-delimited JSON, CSV) to
//! Arrow [`RecordBatch`]es shaped by a [`SourceSchema`].
//!
//! Input: file paths (or in-memory bytes). Output: one [`FileRead`] per file with the batch of
//! good records, the rejected records with their index and reason, and, for a broken file, the
//! reason it broke. No state is kept between files.
//!
//! JSON is read with sonic-rs: each record is scanned once for exactly the schema's paths (a
//! serde visitor over a trie of the paths), every other value is skipped without being built.
//! A record is converted whole before anything is appended, so a bad record leaves no trace
//! in the batch: it goes to the dead-letter output with the reason instead. A file that breaks
//! part way (truncated, invalid UTF-8) keeps the records before the break.
//!
//! The public API is here ([`Reader`], [`FileRead`], [`Rejected`]); `format` detects a file's
//! layout, `json` and `csv_file` read each layout, `extract` walks a JSON record for the
//! schema's paths, `convert` turns the values found into typed cells, `sink` appends whole
//! records to the batch, and `dead_letter` reports and writes the rejected ones.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use dfp_core::Error;
use dfp_core::schema::SourceSchema;

pub use dfp_core::format::InputFormat;

pub mod derive;
pub mod frame;
pub mod rows;

mod convert;
mod csv_file;
mod dead_letter;
mod extract;
mod format;
mod json;
mod sink;

pub use dead_letter::DeadLetterWriter;
pub use format::record_texts;

use dead_letter::log_rejections;
use extract::PathNode;
use format::detect_format;
use sink::BatchSink;

/// A record that could not be ingested.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Index of the record in its file (array element, line or CSV row, from 0).
    pub record: usize,
    /// Why it was rejected, naming the field.
    pub reason: String,
    /// The record as it was in the file.
    pub raw: String,
}

/// What reading one file gave.
#[derive(Debug)]
pub struct FileRead {
    /// The file.
    pub path: PathBuf,
    /// Its good records, in file order.
    pub batch: RecordBatch,
    /// Records that were rejected.
    pub rejected: Vec<Rejected>,
    /// Why the file broke part way or could not be read at all ([`Error::BrokenFile`] or
    /// [`Error::Io`]); records read before the break are in `batch`.
    pub broken: Option<Error>,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// A schema compiled for reading: the paths to look up and how each column is built.
pub struct Reader {
    schema: Arc<SourceSchema>,
    arrow: SchemaRef,
    /// Every dotted path, in lookup order: timestamp, username, event id, then each column's.
    paths: Vec<String>,
    trie: PathNode,
    /// For each column, the range of `paths` it reads.
    column_paths: Vec<Range<usize>>,
}

impl Reader {
    /// Compiles a schema.
    pub fn new(schema: Arc<SourceSchema>) -> Self {
        let mut paths = vec![
            schema.timestamp.path.clone(),
            schema.username.path.clone(),
            schema.event_id.path.clone(),
        ];
        let mut column_paths = Vec::with_capacity(schema.columns.len());
        for c in &schema.columns {
            let start = paths.len();
            match (&c.path, &c.concat) {
                (Some(p), _) => paths.push(p.clone()),
                (None, Some(parts)) => paths.extend(parts.iter().cloned()),
                (None, None) => {}
            }
            column_paths.push(start..paths.len());
        }
        let mut trie = PathNode::default();
        for (slot, p) in paths.iter().enumerate() {
            trie.insert(p.split('.'), slot);
        }
        // One more slot, after the paths: the record itself, to tell objects from the rest.
        trie.slots.push(paths.len());
        Self {
            arrow: schema.arrow_schema(),
            schema,
            paths,
            trie,
            column_paths,
        }
    }

    /// The schema this reader follows.
    pub fn schema(&self) -> &SourceSchema {
        &self.schema
    }

    /// The Arrow schema of the batches it makes.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// Reads one file; never fails as a whole: an unreadable file is a `FileRead` with an
    /// empty batch and `broken` set.
    pub fn read_file(&self, path: &Path, format: InputFormat) -> FileRead {
        match std::fs::read(path) {
            Ok(bytes) => self.read_bytes(path, &bytes, format),
            Err(e) => FileRead {
                path: path.to_path_buf(),
                batch: RecordBatch::new_empty(self.arrow.clone()),
                rejected: Vec::new(),
                broken: Some(Error::io(path, "reading log file", e)),
                bytes: 0,
            },
        }
    }

    /// Reads the bytes of one file; `path` names it in reports and picks the format for `Auto`.
    pub fn read_bytes(&self, path: &Path, bytes: &[u8], format: InputFormat) -> FileRead {
        // A UTF-8 byte-order mark (as some Windows tools write) is not part of the data.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut sink = BatchSink::new(self, bytes.len());
        let format = match format {
            InputFormat::Auto => detect_format(path, bytes),
            f => Ok(f),
        };
        let broken = match format {
            Err(reason) => Some(reason),
            Ok(InputFormat::JsonArray) => self.read_json_array(bytes, &mut sink),
            Ok(InputFormat::JsonLines) => {
                self.read_json_lines(bytes, &mut sink);
                None
            }
            Ok(InputFormat::Csv | InputFormat::Auto) => self.read_csv(bytes, &mut sink),
        };
        let records_read = sink.records;
        let (batch, rejected) = sink.finish();
        let report = |reason: String| Error::BrokenFile {
            path: path.to_path_buf(),
            records_read,
            reason,
        };
        let (batch, broken) = match batch {
            Ok(b) => (b, broken.map(report)),
            Err(e) => (
                RecordBatch::new_empty(self.arrow.clone()),
                Some(report(format!("building the Arrow batch failed: {e}"))),
            ),
        };
        log_rejections(path, &rejected, broken.as_ref());
        FileRead {
            path: path.to_path_buf(),
            batch,
            rejected,
            broken,
            bytes: bytes.len() as u64,
        }
    }

    /// Reads many files on `threads` threads; results come back in the order of `paths`.
    pub fn read_files(
        &self,
        paths: &[PathBuf],
        format: InputFormat,
        threads: usize,
    ) -> Vec<FileRead> {
        let threads = threads.clamp(1, paths.len().max(1));
        if threads == 1 {
            return paths.iter().map(|p| self.read_file(p, format)).collect();
        }
        let next = AtomicUsize::new(0);
        let mut results: Vec<(usize, FileRead)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(p) = paths.get(i) else { break };
                            mine.push((i, self.read_file(p, format)));
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;

    use super::*;

    pub(crate) fn reader(name: &str) -> Reader {
        Reader::new(Arc::new(SourceSchema::builtin(name).unwrap()))
    }

    pub(crate) fn strings(batch: &RecordBatch, col: &str) -> Vec<Option<String>> {
        let a = batch.column_by_name(col).unwrap().as_string::<i32>();
        (0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
            .collect()
    }

    pub(crate) fn micros(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    }

    pub(crate) const AZURE_OK: &str = r#"{"time":"2022-08-01T00:03:56.207532Z","category":"SignInLogs","properties":{"id":"e1","userPrincipalName":"tprice@domain.com","appDisplayName":"Teams","clientAppUsed":"Browser","deviceDetail":{"browser":"Edge 118","displayName":null,"operatingSystem":"Windows 10"},"location":{"city":"Littlemouth","countryOrRegion":"XN"},"status":{"failureReason":"Other."}}}"#;

    #[test]
    fn many_files_on_two_threads_keep_order_and_isolate_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..6 {
            let p = dir.path().join(format!("f{i}.json"));
            let body = if i == 3 {
                "[{".to_string()
            } else {
                format!("[{}]", vec![AZURE_OK; i + 1].join(","))
            };
            std::fs::write(&p, body).unwrap();
            paths.push(p);
        }
        let reads = reader("azure").read_files(&paths, InputFormat::Auto, 2);
        let rows: Vec<usize> = reads.iter().map(|r| r.batch.num_rows()).collect();
        assert_eq!(rows, [1, 2, 3, 0, 5, 6]);
        assert!(reads[3].broken.is_some());
        assert!(reads.iter().enumerate().all(|(i, r)| r.path == paths[i]));
    }
}
