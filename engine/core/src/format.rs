//! How an input file is laid out: a JSON array of records (Morpheus' `lines=false,
//! orient=records`), JSON lines, or CSV; `auto` decides by extension and first byte. State:
//! none.

/// How an input file is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InputFormat {
    /// By extension (`.csv`, `.jsonl`/`.ndjson`), else by the first byte (`[` or `{`).
    #[default]
    Auto,
    /// One JSON array of record objects (Morpheus' `lines=false, orient=records`).
    JsonArray,
    /// One JSON object per line.
    JsonLines,
    /// CSV with a header row naming the dotted paths or the column names.
    Csv,
}

impl std::str::FromStr for InputFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "json" | "json_array" => Ok(Self::JsonArray),
            "jsonl" | "ndjson" | "json_lines" => Ok(Self::JsonLines),
            "csv" => Ok(Self::Csv),
            other => Err(format!(
                "unknown input format {other:?} (expected auto, json, jsonl or csv)"
            )),
        }
    }
}
