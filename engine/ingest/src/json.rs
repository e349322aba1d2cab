//! Reading JSON: a file as a JSON array (Morpheus' layout) or as JSON lines, each record
//! walked for the schema's paths (see `extract`) and appended whole or rejected with the
//! reason. An array is read in one pass when its records are within the nesting and size
//! limits; otherwise, or when the parse breaks off part way, it is cut into its elements and
//! each is read on its own, so that a bad record costs only itself.

use serde::de::{DeserializeSeed, SeqAccess, Visitor};

use dfp_core::json_scan;

use crate::Reader;
use crate::convert::{Raw, describe};
use crate::extract::NodeSeed;
use crate::format::{KEPT_RAW_BYTES, kept_raw};
use crate::sink::BatchSink;

impl Reader {
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
    pub(crate) fn read_json_array(&self, bytes: &[u8], sink: &mut BatchSink) -> Option<String> {
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

    pub(crate) fn read_json_lines(&self, bytes: &[u8], sink: &mut BatchSink) {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::InputFormat;
    use crate::tests::{AZURE_OK, reader};

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
}
