//! The batch being built from one file: an Arrow builder per column, and the list of rejected
//! records. A record is converted whole before anything is appended, so a bad record leaves
//! no trace in the batch; it is rejected with the field and the reason instead.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;

use dfp_core::schema::ColumnType;

use crate::convert::{
    Cell, Raw, convert_column, convert_key, convert_string, convert_timestamp, derived_event_id,
    describe,
};
use crate::{Reader, Rejected};

enum ColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

/// Accumulates converted records into builders, and rejected ones into a list.
pub(crate) struct BatchSink {
    timestamp: TimestampMicrosecondBuilder,
    username: StringBuilder,
    event_id: StringBuilder,
    columns: Vec<ColumnBuilder>,
    rejected: Vec<Rejected>,
    arrow: SchemaRef,
    /// Records seen, good or bad.
    pub(crate) records: usize,
}

impl BatchSink {
    pub(crate) fn new(reader: &Reader, bytes: usize) -> Self {
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

    pub(crate) fn reject(&mut self, record: usize, reason: String, raw: String) {
        self.rejected.push(Rejected {
            record,
            reason,
            raw,
        });
    }

    /// Converts every field of a record first; appends only when all converted.
    pub(crate) fn push(
        &mut self,
        reader: &Reader,
        raws: &[Raw<'_>],
    ) -> std::result::Result<(), String> {
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

    pub(crate) fn finish(
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::InputFormat;
    use crate::tests::{AZURE_OK, reader, strings};

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
}
