//! A file's layout and its records' raw text: the layout guessed from the extension or the
//! first byte, the text of every record as the reader numbers them (for dead letters of rows a
//! later stage could not use), and how much of an oversized record a dead letter keeps.

use std::path::Path;

use dfp_core::json_scan;

use crate::InputFormat;

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
pub(crate) const KEPT_RAW_BYTES: usize = 64 * 1024;

/// A rejected record's text for the dead-letter output: all of it, but for records over the
/// limits, whose first [`KEPT_RAW_BYTES`] are kept (their reason says so).
pub(crate) fn kept_raw(record: &str) -> String {
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

pub(crate) fn detect_format(path: &Path, bytes: &[u8]) -> std::result::Result<InputFormat, String> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::InputFormat;
    use crate::tests::reader;

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
}
