//! Serialize (Morpheus' `serialize` module / `SerializeStage`): turns detections and scored
//! rows into output lines, CSV and JSON. dfp's columns: the input columns (the source schema's,
//! `event_id` included, then the derived features), `event_time`, `model_version`,
//! `max_abs_z`, `mean_abs_z`, per feature `<f>_loss`, `<f>_z_loss`, `<f>_pred`,
//! `top_features`, `detection_id` (the id analysts give feedback by) and `familiar` (the values
//! familiar to the user that explained features away, `[familiarity]`). Morpheus' ([`Columns::morpheus`], `[morpheus] columns = true`): its columns
//! first, named and ordered as its detections file has them (`timestamp`, `username`, the
//! schema's `[morpheus] columns`, per feature `<f>_pred`, `<f>_loss`, `<f>_z_loss`, then
//! `max_abs_z`, `mean_abs_z`, `z_loss_scaler_type`, `model_version`, `event_time` to the
//! second), then dfp's other columns in dfp's order.
//!
//! Input: [`Detection`]s (and [`DeadLetter`]s). Output: [`Line`]s, each with the key the sink
//! sorts by (event time, then origin), so files do not depend on the worker layout. State: none.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use dfp_engine::rows::{Origin, Row};
use dfp_engine::schema::{EVENT_ID, SourceSchema, TIMESTAMP, USERNAME};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Map;

use crate::dead_letter::{DeadLetter, Originals};
use crate::post_proc::Detection;

/// Morpheus' column naming how its z-scores were scaled: always `z`.
const SCALER: &str = "z_loss_scaler_type";

/// Which output file a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OutKind {
    /// `dfp_detections_{source}.csv`.
    DetectionsCsv,
    /// `dfp_detections_{source}.jsonl`.
    DetectionsJson,
    /// `dfp_scores_{source}.csv`.
    ScoresCsv,
    /// `dfp_dead_letter_{source}.jsonl`.
    DeadLetters,
    /// `dfp_alerts_{source}.jsonl`.
    Alerts,
    /// `dfp_shadow_{source}.csv`.
    Shadow,
    /// `dfp_parity_{source}.csv`.
    Parity,
    /// `dfp_drift_{source}.csv`.
    Drift,
}

/// One output line (without its newline).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Line {
    /// The file.
    pub kind: OutKind,
    /// Event time of the row (0 where there is none).
    pub ts: i64,
    /// Origin of the row, where there is one.
    pub origin: Option<Origin>,
    /// The text.
    pub text: String,
}

impl Line {
    /// A line of `kind` that belongs to no row (a summary line: parity, a test's line).
    pub fn unkeyed(kind: OutKind, text: impl Into<String>) -> Line {
        Line {
            kind,
            ts: 0,
            origin: None,
            text: text.into(),
        }
    }
}

/// The output columns of a source schema.
#[derive(Debug, Clone)]
pub struct Columns {
    source: String,
    input: Vec<String>,
    derived: Vec<String>,
    features: Vec<String>,
    /// The schema's familiar entries, as the `familiar` column names them.
    familiar: Vec<String>,
    /// Morpheus' order: indices into dfp's cells (with `z_loss_scaler_type` after them).
    morpheus: Option<Vec<usize>>,
}

impl Columns {
    /// The columns of `schema`.
    pub fn new(schema: &SourceSchema) -> Self {
        let f = &schema.features;
        Self {
            source: schema.name.clone(),
            input: schema
                .arrow_schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            derived: schema.derived.iter().map(|d| d.name.clone()).collect(),
            features: f
                .numeric
                .iter()
                .chain(&f.binary)
                .chain(&f.categorical)
                .cloned()
                .collect(),
            familiar: schema
                .familiar
                .iter()
                .map(|f| f.column.clone().unwrap_or_else(|| "hour_of_day".into()))
                .collect(),
            morpheus: None,
        }
    }

    /// The columns of `schema` in Morpheus' layout (its columns from the schema's
    /// `[morpheus] columns`, then dfp's); an error when the schema has no `[morpheus]`.
    pub fn morpheus(schema: &SourceSchema) -> Result<Self, dfp_engine::Error> {
        let mut c = Self::new(schema);
        let Some(m) = &schema.morpheus else {
            return Err(dfp_engine::Error::stage(
                "output",
                format!(
                    "[morpheus] columns = true, but the source schema {:?} has no [morpheus] section naming its columns",
                    schema.name
                ),
            ));
        };
        let dfp = c.dfp_names();
        let at = |name: &str| dfp.iter().position(|n| n == name);
        let mut wanted: Vec<String> = vec![TIMESTAMP.into(), USERNAME.into()];
        wanted.extend(m.columns.iter().cloned());
        for f in &c.features {
            wanted.extend([
                format!("{f}_pred"),
                format!("{f}_loss"),
                format!("{f}_z_loss"),
            ]);
        }
        wanted.extend(["max_abs_z", "mean_abs_z"].map(String::from));
        let mut order: Vec<usize> = wanted.iter().filter_map(|n| at(n)).collect();
        // z_loss_scaler_type: the cell after dfp's.
        order.push(dfp.len());
        order.extend(["model_version", "event_time"].iter().filter_map(|n| at(n)));
        for i in 0..dfp.len() {
            if !order.contains(&i) {
                order.push(i);
            }
        }
        c.morpheus = Some(order);
        Ok(c)
    }

    /// The output columns a run config asks for: dfp's, or Morpheus' layout
    /// (`[morpheus] columns`).
    pub fn for_config(
        schema: &SourceSchema,
        config: &crate::config::RunConfig,
    ) -> Result<Self, dfp_engine::Error> {
        if config.morpheus.columns {
            Self::morpheus(schema)
        } else {
            Ok(Self::new(schema))
        }
    }

    /// The stable id of the detection of `row` ([`crate::feedback::detection_id`]).
    pub fn detection_id(&self, row: &Row) -> String {
        crate::feedback::detection_id(
            &self.source,
            row.user.as_deref().unwrap_or(""),
            row.ts,
            &self.event_id(row).unwrap_or_default(),
        )
    }

    /// The event id of `row` (the schema's `event_id` column), if it has one.
    pub fn event_id(&self, row: &Row) -> Option<String> {
        self.value_of(row, EVENT_ID)
    }

    /// The text of `row`'s value of input column `column` (not the timestamp or the user), if
    /// the schema has that column.
    pub fn value_of(&self, row: &Row, column: &str) -> Option<String> {
        let at = self
            .input
            .iter()
            .position(|n| n == column)?
            .checked_sub(2)?;
        row.values.get(at).map(|v| v.to_text())
    }

    /// Whether the schema has input column `column` (besides the timestamp and the user).
    pub fn has_value(&self, column: &str) -> bool {
        self.value_names().contains(&column)
    }

    /// The input columns besides the timestamp and the user.
    pub fn value_names(&self) -> Vec<&str> {
        self.input.iter().skip(2).map(String::as_str).collect()
    }

    /// The feature names in per-feature column order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Every column name, in order.
    pub fn names(&self) -> Vec<String> {
        let mut dfp = self.dfp_names();
        match &self.morpheus {
            None => dfp,
            Some(order) => {
                dfp.push(SCALER.into());
                order.iter().map(|&i| dfp[i].clone()).collect()
            }
        }
    }

    /// dfp's column names, in dfp's order.
    fn dfp_names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.input.iter().chain(&self.derived).cloned().collect();
        n.extend(
            [
                "event_time",
                "model_version",
                "max_abs_z",
                "mean_abs_z",
                "calibrated_z",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        for f in &self.features {
            n.extend([
                format!("{f}_loss"),
                format!("{f}_z_loss"),
                format!("{f}_pred"),
            ]);
        }
        n.push("top_features".into());
        n.push("detection_id".into());
        n.push("familiar".into());
        n
    }

    /// The familiar entries of `bits`, `;`-separated (`location;hour_of_day`).
    pub fn familiar_names(&self, bits: u64) -> String {
        let names: Vec<&str> = self
            .familiar
            .iter()
            .enumerate()
            .filter(|(k, _)| bits & (1 << k) != 0)
            .map(|(_, n)| n.as_str())
            .collect();
        names.join(";")
    }

    /// The CSV header line.
    pub fn csv_header(&self) -> String {
        csv_line(&self.names())
    }

    fn cells(&self, d: &Detection) -> Vec<(String, serde_json::Value)> {
        let s = &d.scored;
        let r = &s.row;
        let time = DateTime::from_timestamp_micros(r.ts)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
            .unwrap_or_else(|| r.ts.to_string());
        let mut cells: Vec<serde_json::Value> = vec![
            time.into(),
            r.user.clone().map_or(serde_json::Value::Null, Into::into),
        ];
        cells.extend(r.values.iter().map(|v| v.to_json()));
        cells.extend(s.derived.iter().map(|&v| serde_json::Value::from(v)));
        let event_time = DateTime::from_timestamp_micros(d.event_time_us).map_or_else(
            || d.event_time_us.to_string(),
            |t| {
                if self.morpheus.is_some() {
                    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                } else {
                    t.to_rfc3339_opts(SecondsFormat::Micros, true)
                }
            },
        );
        cells.push(event_time.into());
        cells.push(s.model_version.clone().into());
        cells.push(f32_json(s.max_abs_z));
        cells.push(f32_json(s.mean_abs_z));
        cells.push(f32_json(s.calibrated_z));
        for i in 0..self.features.len() {
            cells.push(
                s.loss
                    .get(i)
                    .copied()
                    .map_or(serde_json::Value::Null, f32_json),
            );
            cells.push(
                s.z_loss
                    .get(i)
                    .copied()
                    .map_or(serde_json::Value::Null, f32_json),
            );
            cells.push(
                s.pred
                    .get(i)
                    .cloned()
                    .map_or(serde_json::Value::Null, Into::into),
            );
        }
        cells.push(d.top_features.clone().into());
        cells.push(self.detection_id(&s.row).into());
        cells.push(self.familiar_names(s.familiar).into());
        match &self.morpheus {
            None => self.names().into_iter().zip(cells).collect(),
            Some(order) => {
                cells.push("z".into());
                let mut cells: Vec<Option<serde_json::Value>> =
                    cells.into_iter().map(Some).collect();
                self.names()
                    .into_iter()
                    .zip(order)
                    .map(|(name, &i)| (name, cells[i].take().unwrap_or(serde_json::Value::Null)))
                    .collect()
            }
        }
    }

    /// `d` as a CSV line.
    pub fn csv(&self, d: &Detection) -> String {
        let texts: Vec<String> = self
            .cells(d)
            .into_iter()
            .map(|(_, v)| match v {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s,
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(";"),
                other => other.to_string(),
            })
            .collect();
        csv_line(&texts)
    }

    /// `d` as a JSON object on one line, keys in column order.
    pub fn json(&self, d: &Detection) -> String {
        let fields: Vec<String> = self
            .cells(d)
            .into_iter()
            .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k), v))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// The lines of `d` for the given files.
    pub fn lines(&self, d: &Detection, kinds: &[OutKind]) -> Vec<Line> {
        kinds
            .iter()
            .map(|&kind| Line {
                kind,
                ts: d.scored.row.ts,
                origin: Some(d.scored.row.origin),
                text: match kind {
                    OutKind::DetectionsJson => self.json(d),
                    _ => self.csv(d),
                },
            })
            .collect()
    }
}

pub(crate) fn f32_json(v: f32) -> serde_json::Value {
    // Through the shortest f32 text, so JSON shows what CSV shows.
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, Into::into)
}

/// One CSV record (RFC 4180 quoting), without the line end.
pub fn csv_line(cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The cells of a line [`csv_line`] wrote for a file with `header` (a cell holding a comma or
/// a quote was quoted there); None when the text is not one, or has another number of cells.
pub fn csv_cells(text: &str, header: &str) -> Option<Vec<String>> {
    let record = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .next()?
        .ok()?;
    let cells: Vec<String> = record.iter().map(str::to_string).collect();
    (cells.len() == header.split(',').count()).then_some(cells)
}

/// A dead letter as its output line.
pub fn dead_letter_line(d: &DeadLetter) -> Line {
    Line {
        kind: OutKind::DeadLetters,
        ts: 0,
        origin: d.origin,
        text: serde_json::to_string(d)
            .unwrap_or_else(|e| format!("{{\"reason\":\"unserializable dead letter: {e}\"}}")),
    }
}

/// The serialize stage as timely operators.
pub trait SerializeDetections<'s> {
    /// Detections (or scored rows) as lines of the given files.
    fn serialize(self, columns: Arc<Columns>, kinds: Vec<OutKind>) -> StreamVec<'s, u64, Line>;
}

impl<'s> SerializeDetections<'s> for StreamVec<'s, u64, Detection> {
    fn serialize(self, columns: Arc<Columns>, kinds: Vec<OutKind>) -> StreamVec<'s, u64, Line> {
        self.flat_map(move |d| columns.lines(&d, &kinds))
    }
}

/// Dead letters as lines.
pub trait SerializeDeadLetters<'s> {
    /// Each dead letter as a JSON line, dead rows of files with their file and original
    /// record.
    fn serialize_dead_letters(self, originals: Originals) -> StreamVec<'s, u64, Line>;
}

impl<'s> SerializeDeadLetters<'s> for StreamVec<'s, u64, DeadLetter> {
    fn serialize_dead_letters(self, mut originals: Originals) -> StreamVec<'s, u64, Line> {
        self.map(move |mut d| {
            originals.fill(&mut d);
            dead_letter_line(&d)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_only_when_needed() {
        let cells = [
            "a".to_string(),
            "b,c".into(),
            "say \"hi\"".into(),
            String::new(),
        ];
        assert_eq!(csv_line(&cells), "a,\"b,c\",\"say \"\"hi\"\"\",");
    }

    #[test]
    fn familiar_values_are_named_in_their_column_and_the_features_they_explain_score_zero() {
        use crate::testing::{Fixture, fast_config};

        let f = Fixture::duo(3, 3);
        let mut cfg = fast_config();
        cfg.familiarity.enabled = true;
        let scored = f.scored(&cfg);
        let columns = Columns::new(&f.schema);
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let location = f
            .schema
            .familiar
            .iter()
            .position(|e| e.column.as_deref() == Some("location"))
            .unwrap();
        let explained: Vec<usize> = f.schema.familiar[location]
            .explains
            .iter()
            .filter_map(|n| columns.features().iter().position(|x| x == n))
            .collect();
        assert!(!explained.is_empty());
        let familiar: Vec<_> = scored
            .iter()
            .filter(|s| s.familiar & (1 << location) != 0)
            .collect();
        assert!(
            !familiar.is_empty(),
            "no row of a habitual place was familiar"
        );
        for s in &familiar {
            assert!(explained.iter().all(|&j| s.z_loss[j] == 0.0));
            let d = crate::post_proc::post_process((*s).clone(), columns.features(), now);
            let json: serde_json::Value = serde_json::from_str(&columns.json(&d)).unwrap();
            let names = json["familiar"].as_str().unwrap();
            assert!(names.split(';').any(|n| n == "location"), "{names}");
        }
        // Off: no row is familiar, nothing is named.
        let off = f.scored(&fast_config());
        assert!(off.iter().all(|s| s.familiar == 0));
    }

    #[test]
    fn detections_become_one_line_per_file_and_dead_letters_their_json() {
        use crate::dead_letter::{DeadLetter, Originals};
        use crate::testing::{Fixture, fast_config, run_stage};
        use timely::dataflow::operators::Concat as _;
        use timely::dataflow::operators::core::OkErr as _;

        let f = Fixture::duo(3, 3);
        let scored = f.scored(&fast_config());
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let columns = Arc::new(Columns::new(&f.schema));
        let detections: Vec<Result<Detection, DeadLetter>> = scored
            .into_iter()
            .take(4)
            .map(|s| Ok(crate::post_proc::post_process(s, columns.features(), now)))
            .chain(std::iter::once(Err(DeadLetter::model(
                "test",
                "m",
                "why".into(),
            ))))
            .collect();
        let (out, _) = run_stage(vec![(2, detections)], move |s, _| {
            let (d, dead) = s.ok_err(|x| x);
            d.serialize(
                columns,
                vec![OutKind::DetectionsCsv, OutKind::DetectionsJson],
            )
            .concat(dead.serialize_dead_letters(Originals::none()))
        });
        let kinds = |k: OutKind| out.iter().filter(|(_, l)| l.kind == k).count();
        assert_eq!(kinds(OutKind::DetectionsCsv), 4);
        assert_eq!(kinds(OutKind::DetectionsJson), 4);
        assert_eq!(kinds(OutKind::DeadLetters), 1);
        for (t, l) in &out {
            assert_eq!(*t, 2);
            if l.kind != OutKind::DetectionsCsv {
                let v: serde_json::Value = serde_json::from_str(&l.text).unwrap();
                assert!(v.is_object(), "{}", l.text);
            }
        }
        let dead = out
            .iter()
            .find(|(_, l)| l.kind == OutKind::DeadLetters)
            .unwrap();
        assert!(dead.1.text.contains("why"));
    }
}
