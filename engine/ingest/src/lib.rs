//! Readers: log files (JSON arrays as Morpheus writes them, newline-delimited JSON, CSV) to
//! Arrow [`RecordBatch`]es shaped by a [`SourceSchema`].
//!
//! Input: file paths (or in-memory bytes). Output: one [`FileRead`] per file with the batch of
//! good records, the rejected records with their index and reason, and, for a broken file, the
//! reason it broke. No state is kept between files.
//!
//! JSON is read with sonic-rs: each record is scanned once for exactly the schema's paths
//! (`get_many` over a pointer tree), every other value is skipped without being built. A
//! record is converted whole before anything is appended, so a bad record leaves no trace in
//! the batch: it goes to the dead-letter output with the reason instead. A file that breaks
//! part way (truncated, invalid UTF-8) keeps the records before the break.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use dfp_core::json_scan;
use dfp_core::schema::{
    ColumnSpec, ColumnType, MISSING_STRING, NULL_STRING, SourceSchema, TimestampFormat,
};
use dfp_core::timefmt::parse_time;
use dfp_core::{Error, Result};

pub use dfp_core::format::InputFormat;

pub mod derive;
pub mod frame;
pub mod rows;

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

/// A value found at one path of one record, before conversion.
#[derive(Debug, Clone, PartialEq)]
enum Raw<'a> {
    Missing,
    Null,
    Str(Cow<'a, str>),
    /// A JSON number, as text.
    Num(Cow<'a, str>),
    Bool(bool),
    /// An object or array, named for error messages.
    Composite(&'static str),
}

/// One converted value, ready to append.
#[derive(Debug)]
enum Cell<'a> {
    Str(Cow<'a, str>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
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

    /// Converts one JSON record (an object's text) and appends it, or returns why not.
    fn push_json(&self, record: &str, sink: &mut BatchSink) -> std::result::Result<(), String> {
        let mut raws = vec![Raw::Missing; self.paths.len() + 1];
        let mut de = sonic_rs::Deserializer::from_str(record);
        NodeSeed {
            node: &self.trie,
            out: &mut raws,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| format!("invalid JSON: {e}"))?;
        self.push_extracted(&raws, sink)
    }

    /// Appends a record whose values were extracted; the last slot holds the record itself.
    fn push_extracted(
        &self,
        raws: &[Raw<'_>],
        sink: &mut BatchSink,
    ) -> std::result::Result<(), String> {
        match raws.last() {
            Some(Raw::Composite("an object")) => sink.push(self, raws),
            Some(other) => Err(format!(
                "record is not a JSON object (it is {})",
                describe(other)
            )),
            None => Err("record is empty".to_string()),
        }
    }

    /// Reads a JSON array. The fast way, in one pass: each element is walked for the schema's
    /// paths as it is parsed, and the text of a rejected record is looked up again only when
    /// one is rejected. It is taken when the array's records are within the nesting and size
    /// limits; otherwise, or when the parse fails part way (a number out of range, a lone
    /// surrogate, a truncated file), the array is cut into its elements and each is read on
    /// its own, so that a bad record costs only itself.
    fn read_json_array(&self, bytes: &[u8], sink: &mut BatchSink) -> Option<String> {
        let (text, utf8_error) = match std::str::from_utf8(bytes) {
            Ok(t) => (t, None),
            Err(e) => {
                let valid = e.valid_up_to();
                // The prefix is valid UTF-8 by construction; records before the bad byte stay.
                let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
                (prefix, Some(format!("invalid UTF-8 at byte {valid}")))
            }
        };
        let shape = json_scan::measure(text.as_bytes());
        if shape.depth <= json_scan::MAX_DEPTH + 1
            && shape.longest_element <= json_scan::MAX_RECORD_BYTES
        {
            match self.read_json_array_fast(text, sink) {
                Ok(()) => return utf8_error,
                Err(e) if sink.records == 0 && !text.trim_start().starts_with('[') => {
                    return Some(utf8_error.unwrap_or_else(|| format!("not a JSON array: {e}")));
                }
                Err(_) => *sink = BatchSink::new(self, text.len()),
            }
        }
        let (elements, closed) = json_scan::elements(text.as_bytes());
        for (index, e) in elements.iter().enumerate() {
            sink.records += 1;
            let record = &text[e.span.clone()];
            if let Err(reason) = self.push_record(record, e.depth, sink) {
                sink.reject(index, reason, kept_raw(record));
            }
        }
        if closed {
            utf8_error
        } else {
            Some(utf8_error.unwrap_or_else(|| {
                format!(
                    "the JSON array is not closed: the file ends after record {}",
                    elements.len().saturating_sub(1)
                )
            }))
        }
    }

    /// The fast read of a JSON array; an error means the parse broke off.
    fn read_json_array_fast(
        &self,
        text: &str,
        sink: &mut BatchSink,
    ) -> std::result::Result<(), sonic_rs::Error> {
        let mut failures = Vec::new();
        let mut de = sonic_rs::Deserializer::from_str(text);
        serde::Deserializer::deserialize_seq(
            &mut de,
            ArrayVisitor {
                reader: self,
                sink: &mut *sink,
                failures: &mut failures,
            },
        )
        .and_then(|()| de.end())?;
        if !failures.is_empty() {
            let (elements, _) = json_scan::elements(text.as_bytes());
            for (index, reason) in failures {
                let raw = elements
                    .get(index)
                    .map_or_else(String::new, |e| text[e.span.clone()].to_string());
                sink.reject(index, reason, raw);
            }
        }
        Ok(())
    }

    /// Reads one record's text of nesting `depth`, within the limits, or says why not.
    fn push_record(
        &self,
        record: &str,
        depth: usize,
        sink: &mut BatchSink,
    ) -> std::result::Result<(), String> {
        if record.len() > json_scan::MAX_RECORD_BYTES {
            return Err(format!(
                "record is {} bytes, over the limit of {} (its first {} bytes are kept)",
                record.len(),
                json_scan::MAX_RECORD_BYTES,
                KEPT_RAW_BYTES
            ));
        }
        if depth > json_scan::MAX_DEPTH {
            return Err(format!(
                "record nests {depth} levels deep, over the limit of {} (its first {} bytes are kept)",
                json_scan::MAX_DEPTH,
                KEPT_RAW_BYTES
            ));
        }
        self.push_json(record, sink)
    }

    fn read_json_lines(&self, bytes: &[u8], sink: &mut BatchSink) {
        for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            sink.records += 1;
            match std::str::from_utf8(line) {
                Ok(text) => {
                    let depth = json_scan::measure(line).depth;
                    if let Err(reason) = self.push_record(text, depth, sink) {
                        sink.reject(index, reason, kept_raw(text));
                    }
                }
                Err(e) => sink.reject(
                    index,
                    format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                    String::from_utf8_lossy(line).into_owned(),
                ),
            }
        }
    }

    fn read_csv(&self, bytes: &[u8], sink: &mut BatchSink) -> Option<String> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes);
        let headers = match reader.byte_headers() {
            Ok(h) => h.clone(),
            Err(e) => return Some(format!("unreadable CSV header: {e}")),
        };
        let header_names: Vec<Cow<'_, str>> = headers.iter().map(String::from_utf8_lossy).collect();
        let find = |path: &str, name: &str| {
            header_names
                .iter()
                .position(|h| h == path)
                .or_else(|| header_names.iter().position(|h| h == name))
        };
        // For each looked-up path, the CSV field that holds it.
        let mut fields: Vec<Option<usize>> = Vec::with_capacity(self.paths.len());
        fields.push(find(&self.paths[0], dfp_core::schema::TIMESTAMP));
        if fields[0].is_none() {
            let json = matches!(bytes.trim_ascii_start().first(), Some(b'[' | b'{'));
            return Some(format!(
                "the CSV header names no timestamp column (`{}` or `{}`){}",
                self.paths[0],
                dfp_core::schema::TIMESTAMP,
                if json {
                    "; the file looks like JSON: read it as json or jsonl (or auto)"
                } else {
                    ""
                }
            ));
        }
        fields.push(find(&self.paths[1], dfp_core::schema::USERNAME));
        fields.push(find(&self.paths[2], dfp_core::schema::EVENT_ID));
        for (c, range) in self.schema.columns.iter().zip(&self.column_paths) {
            let single = range.len() == 1;
            for p in &self.paths[range.clone()] {
                fields.push(find(p, if single { &c.name } else { p }));
            }
        }
        let mut record = csv::ByteRecord::new();
        let mut index = 0;
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(false) => return None,
                Ok(true) => {
                    sink.records += 1;
                    let raw = || {
                        record
                            .iter()
                            .map(String::from_utf8_lossy)
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let mut raws = Vec::with_capacity(fields.len());
                    let mut bad_utf8 = None;
                    for (k, f) in fields.iter().enumerate() {
                        let value = match f.and_then(|i| record.get(i)) {
                            None | Some(b"") => Raw::Missing,
                            Some(v) => match std::str::from_utf8(v) {
                                Ok(s) => Raw::Str(Cow::Borrowed(s)),
                                Err(_) => {
                                    bad_utf8 = Some(k);
                                    Raw::Missing
                                }
                            },
                        };
                        raws.push(value);
                    }
                    let outcome = match bad_utf8 {
                        Some(k) => Err(format!("field `{}`: invalid UTF-8", self.paths[k])),
                        None => sink.push(self, &raws),
                    };
                    if let Err(reason) = outcome {
                        sink.reject(index, reason, raw());
                    }
                }
                Err(e) => {
                    if matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                        sink.records += 1;
                        sink.reject(index, format!("malformed CSV row: {e}"), String::new());
                    } else {
                        return Some(format!("unreadable CSV after row {index}: {e}"));
                    }
                }
            }
            index += 1;
        }
    }
}

/// The text of every record of a file's bytes, numbered as the reader numbers records (the
/// elements of a JSON array, the lines of JSON lines with blank ones empty, the rows of a CSV
/// after its header, fields joined by commas): what a dead letter shows as the original
/// record of a row that a later stage could not use. Records over the limits are cut as the
/// reader cuts them.
pub fn record_texts(path: &Path, bytes: &[u8], format: InputFormat) -> Vec<String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let format = match format {
        InputFormat::Auto => detect_format(path, bytes).unwrap_or(InputFormat::JsonLines),
        f => f,
    };
    match format {
        InputFormat::JsonArray => {
            let text = String::from_utf8_lossy(bytes);
            json_scan::elements(text.as_bytes())
                .0
                .into_iter()
                .map(|e| kept_raw(&text[e.span]))
                .collect()
        }
        InputFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(bytes);
            reader
                .byte_records()
                .map_while(|r| r.ok())
                .map(|r| {
                    r.iter()
                        .map(String::from_utf8_lossy)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect()
        }
        InputFormat::JsonLines | InputFormat::Auto => bytes
            .split(|b| *b == b'\n')
            .map(|l| kept_raw(&String::from_utf8_lossy(l.trim_ascii())))
            .collect(),
    }
}

/// How much of an oversized or too deeply nested record the dead-letter output keeps.
const KEPT_RAW_BYTES: usize = 64 * 1024;

/// A rejected record's text for the dead-letter output: all of it, but for records over the
/// limits, whose first [`KEPT_RAW_BYTES`] are kept (their reason says so).
fn kept_raw(record: &str) -> String {
    if record.len() <= json_scan::MAX_RECORD_BYTES
        && json_scan::measure(record.as_bytes()).depth <= json_scan::MAX_DEPTH
    {
        return record.to_string();
    }
    let mut end = KEPT_RAW_BYTES.min(record.len());
    while !record.is_char_boundary(end) {
        end -= 1;
    }
    record[..end].to_string()
}

fn detect_format(path: &Path, bytes: &[u8]) -> std::result::Result<InputFormat, String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => return Ok(InputFormat::Csv),
        Some("jsonl" | "ndjson") => return Ok(InputFormat::JsonLines),
        _ => {}
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Ok(InputFormat::JsonArray),
        Some(b'{') => Ok(InputFormat::JsonLines),
        Some(other) => Err(format!(
            "not JSON: starts with byte {:?}",
            char::from(*other)
        )),
        None => Err("empty file".to_string()),
    }
}

/// Walks the elements of a JSON array, extracting and appending each record.
struct ArrayVisitor<'r, 's, 'f> {
    reader: &'r Reader,
    sink: &'s mut BatchSink,
    /// Records rejected: index and reason (their text is found afterwards).
    failures: &'f mut Vec<(usize, String)>,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let slots = self.reader.paths.len() + 1;
        let mut raws: Vec<Raw<'de>> = Vec::with_capacity(slots);
        loop {
            raws.clear();
            raws.resize(slots, Raw::Missing);
            let seed = NodeSeed {
                node: &self.reader.trie,
                out: &mut raws,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            let index = self.sink.records;
            self.sink.records += 1;
            if let Err(reason) = self.reader.push_extracted(&raws, self.sink) {
                self.failures.push((index, reason));
            }
        }
    }
}

/// The schema's paths as a trie: a record is walked once, descending only into keys some path
/// needs and skipping every other value without building it.
#[derive(Debug, Default)]
struct PathNode {
    children: Vec<(String, PathNode)>,
    /// Indices into the lookup list of the paths that end here.
    slots: Vec<usize>,
}

impl PathNode {
    fn insert<'p>(&mut self, mut segments: impl Iterator<Item = &'p str>, slot: usize) {
        match segments.next() {
            None => self.slots.push(slot),
            Some(key) => {
                let i = match self.children.iter().position(|(k, _)| k == key) {
                    Some(i) => i,
                    None => {
                        self.children.push((key.to_string(), PathNode::default()));
                        self.children.len() - 1
                    }
                };
                self.children[i].1.insert(segments, slot);
            }
        }
    }
}

/// Deserializes the value at one trie node into the slots below it.
struct NodeSeed<'n, 'o, 'de> {
    node: &'n PathNode,
    out: &'o mut [Raw<'de>],
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> NodeSeed<'_, '_, 'de> {
    fn set(self, value: Raw<'de>) {
        for &slot in &self.node.slots {
            if let Some(s) = self.out.get_mut(slot) {
                *s = value.clone();
            }
        }
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<(), E> {
        self.set(Raw::Str(Cow::Borrowed(v)));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<(), E> {
        self.set(Raw::Str(Cow::Owned(v.to_string())));
        Ok(())
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<(), E> {
        self.set(Raw::Str(Cow::Owned(v)));
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<(), E> {
        self.set(Raw::Bool(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<(), E> {
        self.set(Raw::Num(Cow::Owned(v.to_string())));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<(), E> {
        self.set(Raw::Num(Cow::Owned(v.to_string())));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<(), E> {
        if v.is_finite() {
            self.set(Raw::Num(Cow::Owned(v.to_string())));
        } else {
            // `1e400`: no value of any column; rejected where a column reads it.
            self.set(Raw::Composite("a number out of range"));
        }
        Ok(())
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        self.set(Raw::Null);
        Ok(())
    }
    fn visit_none<E>(self) -> std::result::Result<(), E> {
        self.set(Raw::Null);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<(), A::Error> {
        IgnoredAny.visit_seq(seq)?;
        self.set(Raw::Composite("an array"));
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(child) = map.next_key_seed(KeySeed(&self.node.children))? {
            match child {
                Some(node) => map.next_value_seed(NodeSeed {
                    node,
                    out: &mut *self.out,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.set(Raw::Composite("an object"));
        Ok(())
    }
}

/// Reads an object key and finds the child node it names, without allocating.
struct KeySeed<'n>(&'n [(String, PathNode)]);

impl<'de, 'n> DeserializeSeed<'de> for KeySeed<'n> {
    type Value = Option<&'n PathNode>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'n> Visitor<'de> for KeySeed<'n> {
    type Value = Option<&'n PathNode>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, key: &str) -> std::result::Result<Self::Value, E> {
        Ok(self.0.iter().find(|(k, _)| k == key).map(|(_, n)| n))
    }
}

fn describe(raw: &Raw<'_>) -> String {
    match raw {
        Raw::Missing => "missing".to_string(),
        Raw::Null => "null".to_string(),
        Raw::Str(s) => format!("the string {s:?}"),
        Raw::Num(n) => format!("the number {n}"),
        Raw::Bool(b) => format!("the boolean {b}"),
        Raw::Composite(what) => (*what).to_string(),
    }
}

/// Microseconds since the epoch from epoch seconds written as a number.
fn parse_epoch_seconds(text: &str) -> Option<i64> {
    const LIMIT: f64 = 1.0e11; // about year 5138: beyond that it is not epoch seconds
    if let Ok(s) = text.trim().parse::<i64>() {
        return (s.unsigned_abs() < LIMIT as u64).then_some(s * 1_000_000);
    }
    let s = text.trim().parse::<f64>().ok()?;
    (s.is_finite() && s.abs() < LIMIT).then(|| (s * 1.0e6).round() as i64)
}

fn convert_timestamp(raw: &Raw<'_>, format: TimestampFormat) -> std::result::Result<i64, String> {
    let parsed = match (raw, format) {
        (Raw::Str(s), TimestampFormat::Iso8601) => parse_time(s),
        (Raw::Num(n) | Raw::Str(n), TimestampFormat::EpochSeconds) => parse_epoch_seconds(n),
        (Raw::Num(n), TimestampFormat::Auto) => parse_epoch_seconds(n),
        (Raw::Str(s), TimestampFormat::Auto) => parse_time(s).or_else(|| parse_epoch_seconds(s)),
        _ => None,
    };
    parsed.ok_or_else(|| {
        let want = match format {
            TimestampFormat::Auto => "an ISO-8601 time or epoch seconds",
            TimestampFormat::Iso8601 => "an ISO-8601 time",
            TimestampFormat::EpochSeconds => "epoch seconds",
        };
        format!("is {}, expected {want}", describe(raw))
    })
}

/// A string column's value: Morpheus' missing-string rule, numbers and booleans as text.
fn convert_string<'a>(raw: &Raw<'a>) -> std::result::Result<Cow<'a, str>, String> {
    match raw {
        Raw::Missing => Ok(Cow::Borrowed(MISSING_STRING)),
        Raw::Null => Ok(Cow::Borrowed(NULL_STRING)),
        Raw::Str(s) => Ok(s.clone()),
        Raw::Num(n) => Ok(n.clone()),
        Raw::Bool(true) => Ok(Cow::Borrowed("True")),
        Raw::Bool(false) => Ok(Cow::Borrowed("False")),
        Raw::Composite(_) => Err(format!("is {}, expected a string", describe(raw))),
    }
}

/// The event id of a record that has none: `dfp-` and a 64-bit hash of every value dfp read
/// from it (time, user and every column's fields, each with its JSON type), so the same record
/// always gets the same id, in any file or message. The prefix says the id was derived.
fn derived_event_id(raws: &[Raw<'_>]) -> String {
    let mut bytes = Vec::with_capacity(256);
    for raw in raws {
        let (tag, text): (u8, &str) = match raw {
            Raw::Missing => (0, ""),
            Raw::Null => (1, ""),
            Raw::Str(s) => (2, s),
            Raw::Num(n) => (3, n),
            Raw::Bool(true) => (4, ""),
            Raw::Bool(false) => (5, ""),
            Raw::Composite(what) => (6, what),
        };
        bytes.push(tag);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(0xff);
    }
    format!("dfp-{:016x}", dfp_core::hash::fnv1a64(&bytes))
}

/// The event id: none when missing or null, text otherwise.
fn convert_key<'a>(raw: &Raw<'a>) -> std::result::Result<Option<Cow<'a, str>>, String> {
    match raw {
        Raw::Missing | Raw::Null => Ok(None),
        other => convert_string(other).map(Some),
    }
}

/// `text` without its trailing words that start with a digit ("Chrome 117.0.5938" -> "Chrome");
/// a text that is only a version stays whole.
fn without_version(text: &str) -> &str {
    let mut kept = text.trim_end();
    while let Some((head, last)) = kept.rsplit_once(' ') {
        if !last.starts_with(|c: char| c.is_ascii_digit()) || head.trim_end().is_empty() {
            break;
        }
        kept = head.trim_end();
    }
    kept
}

fn convert_column<'a>(c: &ColumnSpec, raws: &[Raw<'a>]) -> std::result::Result<Cell<'a>, String> {
    let first = raws.first().unwrap_or(&Raw::Missing);
    match c.ty {
        ColumnType::String if raws.len() == 1 && c.strip_version => {
            let text = convert_string(first)?;
            let kept = without_version(&text);
            Ok(Cell::Str(if kept.len() == text.len() {
                text
            } else {
                Cow::Owned(kept.to_string())
            }))
        }
        ColumnType::String if raws.len() == 1 => convert_string(first).map(Cell::Str),
        ColumnType::String => {
            let mut joined = String::new();
            for (i, part) in raws.iter().enumerate() {
                if i > 0 {
                    joined.push_str(&c.separator);
                }
                joined.push_str(&convert_string(part)?);
            }
            Ok(Cell::Str(Cow::Owned(joined)))
        }
        ColumnType::Int => match first {
            Raw::Missing | Raw::Null => Ok(Cell::Int(None)),
            Raw::Num(t) | Raw::Str(t) => parse_int(t).map(|v| Cell::Int(Some(v))),
            other => Err(format!("is {}, expected an integer", describe(other))),
        },
        ColumnType::Float => match first {
            Raw::Missing | Raw::Null => Ok(Cell::Float(None)),
            Raw::Num(t) | Raw::Str(t) => parse_float(t).map(|v| Cell::Float(Some(v))),
            other => Err(format!("is {}, expected a number", describe(other))),
        },
        ColumnType::Bool => convert_bool(c, first).map(Cell::Bool),
    }
}

fn parse_int(text: &str) -> std::result::Result<i64, String> {
    let t = text.trim();
    t.parse::<i64>().or_else(|_| match t.parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(format!("is {t:?}, expected an integer")),
    })
}

fn parse_float(text: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    t.parse::<f64>()
        .map_err(|_| format!("is {t:?}, expected a number"))
}

fn convert_bool(c: &ColumnSpec, raw: &Raw<'_>) -> std::result::Result<Option<bool>, String> {
    let mapped = !c.true_values.is_empty() || !c.false_values.is_empty();
    match raw {
        Raw::Bool(b) => Ok(Some(*b)),
        Raw::Str(s) | Raw::Num(s) if mapped => {
            if c.true_values.iter().any(|v| v == s) {
                Ok(Some(true))
            } else if c.false_values.iter().any(|v| v == s) {
                Ok(Some(false))
            } else {
                c.otherwise
                    .map(Some)
                    .ok_or_else(|| format!("is {}, which no true/false value maps", describe(raw)))
            }
        }
        Raw::Str(s) => match s.as_ref() {
            "true" | "True" | "TRUE" => Ok(Some(true)),
            "false" | "False" | "FALSE" => Ok(Some(false)),
            _ => Err(format!("is {}, expected a boolean", describe(raw))),
        },
        Raw::Missing | Raw::Null => Ok(c.missing.or(c.otherwise)),
        other => c
            .otherwise
            .map(Some)
            .ok_or_else(|| format!("is {}, expected a boolean", describe(other))),
    }
}

enum ColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

/// Accumulates converted records into builders, and rejected ones into a list.
struct BatchSink {
    timestamp: TimestampMicrosecondBuilder,
    username: StringBuilder,
    event_id: StringBuilder,
    columns: Vec<ColumnBuilder>,
    rejected: Vec<Rejected>,
    arrow: SchemaRef,
    /// Records seen, good or bad.
    records: usize,
}

impl BatchSink {
    fn new(reader: &Reader, bytes: usize) -> Self {
        // A rough row estimate (records are a few hundred bytes to a few KB) to limit regrowth.
        let rows = (bytes / 1024).max(16);
        let columns = reader
            .schema
            .columns
            .iter()
            .map(|c| match c.ty {
                ColumnType::String => {
                    ColumnBuilder::Str(StringBuilder::with_capacity(rows, rows * 16))
                }
                ColumnType::Int => ColumnBuilder::Int(Int64Builder::with_capacity(rows)),
                ColumnType::Float => ColumnBuilder::Float(Float64Builder::with_capacity(rows)),
                ColumnType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            })
            .collect();
        Self {
            timestamp: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            username: StringBuilder::with_capacity(rows, rows * 24),
            event_id: StringBuilder::with_capacity(rows, rows * 36),
            columns,
            rejected: Vec::new(),
            arrow: reader.arrow.clone(),
            records: 0,
        }
    }

    fn reject(&mut self, record: usize, reason: String, raw: String) {
        self.rejected.push(Rejected {
            record,
            reason,
            raw,
        });
    }

    /// Converts every field of a record first; appends only when all converted.
    fn push(&mut self, reader: &Reader, raws: &[Raw<'_>]) -> std::result::Result<(), String> {
        let schema = &reader.schema;
        let field = |k: usize| &reader.paths[k];
        let ts = convert_timestamp(&raws[0], schema.timestamp.format)
            .map_err(|e| format!("field `{}` (timestamp) {e}", field(0)))?;
        // A missing user is Morpheus' user "nan", a null one "None" (as for every string).
        if schema.username_required() && matches!(raws[1], Raw::Missing | Raw::Null) {
            return Err(format!(
                "field `{}` (username) is {}",
                field(1),
                describe(&raws[1])
            ));
        }
        let username =
            convert_string(&raws[1]).map_err(|e| format!("field `{}` (username) {e}", field(1)))?;
        let event_id =
            convert_key(&raws[2]).map_err(|e| format!("field `{}` (event_id) {e}", field(2)))?;
        if event_id.is_none() && schema.event_id_required() {
            return Err(format!(
                "field `{}` (event_id) is {}",
                field(2),
                describe(&raws[2])
            ));
        }
        let event_id = event_id.unwrap_or_else(|| {
            Cow::Owned(derived_event_id(
                &raws[..reader.paths.len().min(raws.len())],
            ))
        });
        let mut cells = Vec::with_capacity(schema.columns.len());
        for (c, range) in schema.columns.iter().zip(&reader.column_paths) {
            let values = &raws[range.clone()];
            if c.required && values.iter().any(|v| matches!(v, Raw::Missing)) {
                return Err(format!(
                    "field `{}` ({}) is missing",
                    field(range.start),
                    c.name
                ));
            }
            let cell = convert_column(c, values)
                .map_err(|e| format!("field `{}` ({}) {e}", field(range.start), c.name))?;
            cells.push(cell);
        }
        self.timestamp.append_value(ts);
        self.username.append_value(username);
        self.event_id.append_value(event_id);
        // convert_column makes each cell of its column's type, so the pairs always match;
        // builders are created from the same column list.
        for (builder, cell) in self.columns.iter_mut().zip(cells) {
            match (builder, cell) {
                (ColumnBuilder::Str(b), Cell::Str(s)) => b.append_value(s),
                (ColumnBuilder::Int(b), Cell::Int(v)) => b.append_option(v),
                (ColumnBuilder::Float(b), Cell::Float(v)) => b.append_option(v),
                (ColumnBuilder::Bool(b), Cell::Bool(v)) => b.append_option(v),
                (ColumnBuilder::Str(b), _) => b.append_null(),
                (ColumnBuilder::Int(b), _) => b.append_null(),
                (ColumnBuilder::Float(b), _) => b.append_null(),
                (ColumnBuilder::Bool(b), _) => b.append_null(),
            }
        }
        Ok(())
    }

    fn finish(
        mut self,
    ) -> (
        std::result::Result<RecordBatch, arrow::error::ArrowError>,
        Vec<Rejected>,
    ) {
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.timestamp.finish()),
            Arc::new(self.username.finish()),
            Arc::new(self.event_id.finish()),
        ];
        for b in &mut self.columns {
            arrays.push(match b {
                ColumnBuilder::Str(b) => Arc::new(b.finish()),
                ColumnBuilder::Int(b) => Arc::new(b.finish()),
                ColumnBuilder::Float(b) => Arc::new(b.finish()),
                ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            });
        }
        (RecordBatch::try_new(self.arrow, arrays), self.rejected)
    }
}

fn log_rejections(path: &Path, rejected: &[Rejected], broken: Option<&Error>) {
    const SHOWN: usize = 3;
    for r in rejected.iter().take(SHOWN) {
        tracing::warn!(file = %path.display(), record = r.record, reason = %r.reason, "record rejected");
    }
    if rejected.len() > SHOWN {
        tracing::warn!(file = %path.display(), more = rejected.len() - SHOWN, "more records rejected (see the dead-letter output)");
    }
    if let Some(e) = broken {
        tracing::error!(file = %path.display(), error = %e, "broken input file");
    }
}

/// Writes rejected records and broken files as newline-delimited JSON, one object per line:
/// `{"file", "record", "reason", "raw"}` (`record` and `raw` are null for a broken file).
pub struct DeadLetterWriter {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
}

impl DeadLetterWriter {
    /// Creates (truncates) the dead-letter file, and its directory if needed.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating directory", e))?;
        }
        let file = dfp_core::files::create(path, "creating dead-letter file")?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            written: 0,
        })
    }

    /// Writes every rejection and the break, if any, of one file read.
    pub fn write_read(&mut self, read: &FileRead) -> Result<()> {
        let file = read.path.display().to_string();
        for r in &read.rejected {
            self.line(&serde_json::json!({
                "file": file, "record": r.record, "reason": r.reason, "raw": r.raw,
            }))?;
        }
        if let Some(e) = &read.broken {
            self.line(&serde_json::json!({
                "file": file, "record": null, "reason": e.to_string(), "raw": null,
            }))?;
        }
        Ok(())
    }

    fn line(&mut self, value: &serde_json::Value) -> Result<()> {
        let io = |e| Error::io(&self.path, "writing dead-letter file", e);
        serde_json::to_writer(&mut self.out, value).map_err(|e| Error::Json {
            context: format!("{}: writing dead-letter record", self.path.display()),
            source: e,
        })?;
        self.out.write_all(b"\n").map_err(io)?;
        self.written += 1;
        Ok(())
    }

    /// How many lines were written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes to disk.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io(&self.path, "flushing dead-letter file", e))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;

    use super::*;

    fn reader(name: &str) -> Reader {
        Reader::new(Arc::new(SourceSchema::builtin(name).unwrap()))
    }

    fn strings(batch: &RecordBatch, col: &str) -> Vec<Option<String>> {
        let a = batch.column_by_name(col).unwrap().as_string::<i32>();
        (0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
            .collect()
    }

    fn micros(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    }

    const AZURE_OK: &str = r#"{"time":"2022-08-01T00:03:56.207532Z","category":"SignInLogs","properties":{"id":"e1","userPrincipalName":"tprice@domain.com","appDisplayName":"Teams","clientAppUsed":"Browser","deviceDetail":{"browser":"Edge 118","displayName":null,"operatingSystem":"Windows 10"},"location":{"city":"Littlemouth","countryOrRegion":"XN"},"status":{"failureReason":"Other."}}}"#;

    #[test]
    fn versions_are_stripped_only_from_trailing_numeric_words() {
        assert_eq!(without_version("Chrome 117.0.5938"), "Chrome");
        assert_eq!(without_version("Chrome Mobile 118.0 12"), "Chrome Mobile");
        assert_eq!(without_version("Rich Client 4.45.0.0"), "Rich Client");
        assert_eq!(without_version("Safari"), "Safari");
        assert_eq!(without_version("117.0"), "117.0");
        assert_eq!(
            without_version("Office 365 SharePoint"),
            "Office 365 SharePoint"
        );
    }

    #[test]
    fn azure_fixture_record_reads_with_derived_columns() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/morpheus/records/azure_ad_example_record.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let r = reader("azure").read_bytes(&path, &bytes, InputFormat::Auto);
        assert!(r.broken.is_none() && r.rejected.is_empty(), "{r:?}");
        let b = &r.batch;
        assert_eq!(b.num_rows(), 1);
        assert_eq!(strings(b, "username"), [Some("tprice@domain.com".into())]);
        assert_eq!(
            strings(b, "event_id"),
            [Some("df70b726-7756-4baa-9a7d-5ac965198e00".into())]
        );
        assert_eq!(strings(b, "location"), [Some("Littlemouth, XN".into())]);
        assert_eq!(
            strings(b, "deviceDetailbrowser"),
            [Some("Edge 118.12158".into())]
        );
        assert_eq!(
            strings(b, "statusfailureReason"),
            [Some(
                "External security challenge was not satisfied.".into()
            )]
        );
        assert_eq!(micros(b), [1_659_312_236_207_532]);
    }

    #[test]
    fn duo_fixture_record_maps_result_and_epoch_time() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/morpheus/records/duo_auth_example_record.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let r = reader("duo").read_bytes(&path, &bytes, InputFormat::Auto);
        assert!(r.broken.is_none() && r.rejected.is_empty(), "{r:?}");
        let b = &r.batch;
        assert_eq!(
            strings(b, "location"),
            [Some("Ann Arbor, Michigan, United States".into())]
        );
        assert_eq!(
            strings(b, "username"),
            [Some("narroway@example.com".into())]
        );
        assert_eq!(micros(b), [1_659_363_123_000_000]);
        assert!(b.column_by_name("result").unwrap().as_boolean().value(0));
    }

    #[test]
    fn missing_strings_follow_morpheus_rule() {
        let r = reader("azure").read_bytes(
            Path::new("a.json"),
            format!("[{AZURE_OK}]").as_bytes(),
            InputFormat::Auto,
        );
        // displayName is an explicit null, state is absent from the concat's parts? no: both parts present.
        assert_eq!(
            strings(&r.batch, "deviceDetaildisplayName"),
            [Some("None".into())]
        );
        let no_city = AZURE_OK.replace(r#""city":"Littlemouth","#, "");
        let r = reader("azure").read_bytes(
            Path::new("a.json"),
            format!("[{no_city}]").as_bytes(),
            InputFormat::Auto,
        );
        assert_eq!(strings(&r.batch, "location"), [Some("nan, XN".into())]);
        let no_app = AZURE_OK.replace(r#""appDisplayName":"Teams","#, "");
        let r = reader("azure").read_bytes(
            Path::new("a.json"),
            format!("[{no_app}]").as_bytes(),
            InputFormat::Auto,
        );
        assert_eq!(strings(&r.batch, "appDisplayName"), [Some("nan".into())]);
    }

    #[test]
    fn duo_result_mapping_is_morpheus() {
        let rec = |result: &str| {
            format!(
                r#"{{"timestamp":1659363123,"txid":"t","user":{{"name":"u"}},"result":{result}}}"#
            )
        };
        let lines: Vec<String> = [
            r#""success""#,
            r#""SUCCESS""#,
            r#""denied""#,
            r#""DENIED""#,
            r#""Denied""#,
            r#""FRAUD""#,
            r#""fraud""#,
            "null",
            r#""weird""#,
        ]
        .iter()
        .map(|r| rec(r))
        .collect();
        let text = format!("[{}]", lines.join(","));
        let r = reader("duo").read_bytes(Path::new("d.json"), text.as_bytes(), InputFormat::Auto);
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        let col = r.batch.column_by_name("result").unwrap().as_boolean();
        let got: Vec<bool> = (0..col.len()).map(|i| col.value(i)).collect();
        assert_eq!(
            got,
            [true, true, false, false, false, false, true, true, true]
        );
    }

    #[test]
    fn azure_success_maps_error_code_numbers_and_a_missing_status_is_no_failure() {
        let rec = |status: &str| {
            format!(
                r#"{{"time":"2022-08-01T00:03:56Z","properties":{{"id":"e","userPrincipalName":"u"{status}}}}}"#
            )
        };
        let lines: Vec<String> = [
            r#","status":{"errorCode":0}"#,
            r#","status":{"errorCode":50126}"#,
            r#","status":{"errorCode":"0"}"#,
            r#","status":{"errorCode":null}"#,
            "",
        ]
        .iter()
        .map(|s| rec(s))
        .collect();
        let text = format!("[{}]", lines.join(","));
        let r = reader("azure").read_bytes(Path::new("a.json"), text.as_bytes(), InputFormat::Auto);
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        let col = r.batch.column_by_name("succeeded").unwrap().as_boolean();
        let got: Vec<bool> = (0..col.len()).map(|i| col.value(i)).collect();
        assert_eq!(got, [true, false, true, true, true]);
    }

    #[test]
    fn timestamps_iso_naive_and_epoch() {
        let base = 1_659_312_236_000_000_i64;
        for (value, want) in [
            (r#""2022-08-01T00:03:56Z""#, base),
            (r#""2022-08-01T02:03:56+02:00""#, base),
            (r#""2022-08-01T00:03:56""#, base),
            (r#""2022-08-01 00:03:56.5""#, base + 500_000),
            ("1659312236", base),
            ("1659312236.25", base + 250_000),
            (r#""1659312236""#, base),
        ] {
            let text = format!(r#"[{{"timestamp":{value},"txid":"t","user":{{"name":"u"}}}}]"#);
            let r =
                reader("duo").read_bytes(Path::new("d.json"), text.as_bytes(), InputFormat::Auto);
            assert!(r.rejected.is_empty(), "{value}: {:?}", r.rejected);
            assert_eq!(micros(&r.batch), [want], "{value}");
        }
    }

    #[test]
    fn bad_records_are_rejected_with_index_and_field_and_good_ones_kept() {
        let bad_time = AZURE_OK.replace("2022-08-01T00:03:56.207532Z", "yesterday");
        let no_time = AZURE_OK.replace(r#""time":"2022-08-01T00:03:56.207532Z","#, "");
        let no_id = AZURE_OK.replace(r#""id":"e1","#, "");
        let object_app = AZURE_OK.replace(r#""Teams""#, r#"{"x":1}"#);
        let text = format!("[{AZURE_OK},{bad_time},{no_time},42,{no_id},{object_app},{AZURE_OK}]");
        let r =
            reader("azure").read_bytes(Path::new("mixed.json"), text.as_bytes(), InputFormat::Auto);
        assert!(r.broken.is_none());
        // A record without an id is kept, with an id derived from its values (marked dfp-).
        assert_eq!(r.batch.num_rows(), 3);
        let ids = strings(&r.batch, "event_id");
        assert!(ids[1].as_deref().unwrap().starts_with("dfp-"), "{ids:?}");
        let got: Vec<(usize, &str)> = r
            .rejected
            .iter()
            .map(|x| (x.record, x.reason.as_str()))
            .collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].0, 1);
        assert!(
            got[0].1.contains("`time`") && got[0].1.contains("yesterday"),
            "{}",
            got[0].1
        );
        assert!(
            got[1].1.contains("`time`") && got[1].1.contains("missing"),
            "{}",
            got[1].1
        );
        assert!(got[2].1.contains("not a JSON object"), "{}", got[2].1);
        assert!(
            got[3].1.contains("appDisplayName") && got[3].1.contains("an object"),
            "{}",
            got[3].1
        );
        assert_eq!(r.rejected[0].raw, bad_time);
    }

    #[test]
    fn truncated_file_keeps_the_records_before_the_break() {
        let text = format!("[{AZURE_OK},{AZURE_OK},{}", &AZURE_OK[..40]);
        let r =
            reader("azure").read_bytes(Path::new("cut.json"), text.as_bytes(), InputFormat::Auto);
        assert_eq!(r.batch.num_rows(), 2);
        // The cut record goes to the dead letters with what there is of it.
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].record, 2);
        assert_eq!(r.rejected[0].raw, &AZURE_OK[..40]);
        let msg = r.broken.unwrap().to_string();
        assert!(
            msg.contains("cut.json")
                && msg.contains("not closed")
                && msg.contains("after record 2"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_utf8_breaks_the_file_at_the_bad_byte() {
        let mut bytes = format!("[{AZURE_OK},").into_bytes();
        let bad_at = bytes.len();
        bytes.extend_from_slice(b"{\"time\":\"\xff\xfe\"}]");
        let r = reader("azure").read_bytes(Path::new("bin.json"), &bytes, InputFormat::Auto);
        assert_eq!(r.batch.num_rows(), 1);
        let msg = r.broken.unwrap().to_string();
        assert!(
            msg.contains(&format!("invalid UTF-8 at byte {}", bad_at + 9)),
            "{msg}"
        );
    }

    #[test]
    fn not_json_and_empty_files_are_broken() {
        let r = reader("azure").read_bytes(Path::new("x.json"), b"hello", InputFormat::Auto);
        assert!(r.broken.unwrap().to_string().contains("not JSON"));
        let r = reader("azure").read_bytes(Path::new("x.json"), b"", InputFormat::Auto);
        assert!(r.broken.unwrap().to_string().contains("empty file"));
        let r =
            reader("azure").read_bytes(Path::new("x.json"), b"{\"a\":1}", InputFormat::JsonArray);
        assert!(r.broken.unwrap().to_string().contains("not a JSON array"));
        let r = reader("azure").read_file(Path::new("/nonexistent/x.json"), InputFormat::Auto);
        assert!(
            r.broken
                .unwrap()
                .to_string()
                .contains("/nonexistent/x.json")
        );
    }

    #[test]
    fn json_lines_reject_malformed_lines_and_go_on() {
        let text = format!("{AZURE_OK}\n{{\"time\": \n\n{AZURE_OK}\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        let r = reader("azure").read_bytes(Path::new("l.jsonl"), &bytes, InputFormat::Auto);
        assert!(r.broken.is_none());
        assert_eq!(r.batch.num_rows(), 2);
        let idx: Vec<usize> = r.rejected.iter().map(|x| x.record).collect();
        assert_eq!(idx, [1, 4]);
        assert!(r.rejected[0].reason.contains("invalid JSON"));
        assert!(r.rejected[1].reason.contains("invalid UTF-8"));
    }

    #[test]
    fn csv_reads_by_dotted_path_or_column_name() {
        let text = "time,properties.userPrincipalName,event_id,appDisplayName,properties.location.city,properties.location.countryOrRegion\n\
                    2022-08-01T00:00:00Z,a@x.com,e1,Teams,Paris,FR\n\
                    2022-08-01T00:01:00Z,,e2,,Paris,\n\
                    not-a-time,b@x.com,e3,Teams,Paris,FR\n\
                    2022-08-01T00:02:00Z,b@x.com\n";
        let r = reader("azure").read_bytes(Path::new("l.csv"), text.as_bytes(), InputFormat::Auto);
        assert!(r.broken.is_none(), "{:?}", r.broken);
        assert_eq!(r.batch.num_rows(), 2);
        // A record without a user is Morpheus' user "nan".
        assert_eq!(
            strings(&r.batch, "username"),
            [Some("a@x.com".into()), Some("nan".into())]
        );
        assert_eq!(
            strings(&r.batch, "appDisplayName"),
            [Some("Teams".into()), Some("nan".into())]
        );
        assert_eq!(
            strings(&r.batch, "location"),
            [Some("Paris, FR".into()), Some("Paris, nan".into())]
        );
        assert_eq!(
            strings(&r.batch, "clientAppUsed"),
            [Some("nan".into()), Some("nan".into())]
        );
        let idx: Vec<usize> = r.rejected.iter().map(|x| x.record).collect();
        assert_eq!(idx, [2, 3]);
        assert!(r.rejected[1].reason.contains("malformed CSV row"));
    }

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

    #[test]
    fn dead_letters_are_ndjson_with_file_record_reason() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[{AZURE_OK},7,{}", &AZURE_OK[..10]);
        let r =
            reader("azure").read_bytes(Path::new("dl.json"), text.as_bytes(), InputFormat::Auto);
        let out = dir.path().join("sub/dead.ndjson");
        let mut w = DeadLetterWriter::create(&out).unwrap();
        w.write_read(&r).unwrap();
        w.flush().unwrap();
        // The record 7, the cut record, and the break.
        assert_eq!(w.written(), 3);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["file"], "dl.json");
        assert_eq!(lines[0]["record"], 1);
        assert_eq!(lines[0]["raw"], "7");
        assert_eq!(lines[1]["record"], 2);
        assert_eq!(lines[1]["raw"], &AZURE_OK[..10]);
        assert!(lines[2]["record"].is_null());
        assert!(lines[2]["reason"].as_str().unwrap().contains("broken file"));
    }
}
