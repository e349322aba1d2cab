//! Source schemas: how one log source's records become dfp's columns.
//!
//! A schema is a TOML file (`configs/azure.toml`, `configs/duo.toml`, both also built into the
//! binary) that maps dotted JSON paths to typed columns, derives string columns by joining
//! several paths, maps strings to booleans, names the timestamp, username and event-id fields,
//! declares derived features (per UTC day, or over a trailing span of time, computed by the
//! rolling windows) and profile features (computed by each model from its training rows), and
//! lists the autoencoder's features. A new source needs
//! only a new TOML file: nothing in the code names a source's fields.
//!
//! Every ingested batch has the columns `timestamp` (UTC, microseconds), `username`,
//! `event_id`, then the schema's `columns` in order. Missing strings follow Morpheus' rule:
//! a missing field becomes the category `"nan"`, an explicit null `"None"`, never a null.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::config::{Problem, Problems, join};
use crate::{Error, Result};

/// The built-in schemas, by name, as shipped in `configs/`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("azure", include_str!("../../../configs/azure.toml")),
    ("duo", include_str!("../../../configs/duo.toml")),
];

/// The category a missing string field becomes (pandas' `astype(str)` of NaN).
pub const MISSING_STRING: &str = "nan";
/// The category an explicit JSON null becomes in a string field (Python's `str(None)`).
pub const NULL_STRING: &str = "None";

/// Names of the three columns every batch starts with.
pub const TIMESTAMP: &str = "timestamp";
/// See [`TIMESTAMP`].
pub const USERNAME: &str = "username";
/// See [`TIMESTAMP`].
pub const EVENT_ID: &str = "event_id";

/// A source schema, as written in TOML.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSchema {
    /// The source's name: `DFP-{name}-{user}` model names, `dfp_detections_{name}.csv`.
    pub name: String,
    /// Prefix of this source's file names (`AZUREAD` in `AZUREAD_2022-08-01T00_03_56.207Z.json`).
    #[serde(default)]
    pub file_prefix: Option<String>,
    /// Where the event time is and how it is written.
    pub timestamp: TimestampSpec,
    /// Where the user name is.
    pub username: FieldSpec,
    /// Where the source's record id is.
    pub event_id: FieldSpec,
    /// The typed columns after the three fixed ones, in output order.
    #[serde(default)]
    pub columns: Vec<ColumnSpec>,
    /// Features the rolling windows compute per user: per UTC day or over a trailing span.
    #[serde(default)]
    pub derived: Vec<DerivedSpec>,
    /// Features each model computes from its training rows (how rare a value is for the user).
    #[serde(default)]
    pub profiles: Vec<ProfileSpec>,
    /// Values a user has made familiar since a model was trained, and the features whose
    /// surprise such a value explains (used when a run turns `[familiarity]` on).
    #[serde(default)]
    pub familiar: Vec<FamiliarSpec>,
    /// The autoencoder's inputs.
    pub features: FeatureSpec,
    /// Morpheus' own feature lists and output columns for this source, for runs that ask for
    /// them (`[morpheus]` in a run config).
    #[serde(default)]
    pub morpheus: Option<MorpheusSpec>,
}

/// Morpheus' feature lists and output columns for a source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MorpheusSpec {
    /// The columns of Morpheus' preprocessed frame after `timestamp` and `username`, in its
    /// order: the first columns of its detections file.
    pub columns: Vec<String>,
    /// Morpheus' autoencoder inputs (its `columns_ae_*.txt`), each list in the order its
    /// training frame has them.
    pub features: FeatureSpec,
}

/// How the event time is read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimestampSpec {
    /// Dotted path of the time field.
    pub path: String,
    /// How it is written.
    #[serde(default)]
    pub format: TimestampFormat,
}

/// How a timestamp is written in the source.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// ISO-8601 strings or epoch seconds (numbers or digit strings).
    #[default]
    Auto,
    /// ISO-8601 / RFC 3339 strings only; naive times are UTC.
    Iso8601,
    /// Epoch seconds only (integer or fractional).
    EpochSeconds,
}

/// A single-path field (username, event id).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Dotted path of the field.
    pub path: String,
    /// Whether a record without it is rejected (dead-lettered). Default: false: a record
    /// without a username is Morpheus' user `nan` (missing) or `None` (null), and one without
    /// an event id gets a derived one (`dfp-` and a hash of the values read).
    #[serde(default)]
    pub required: Option<bool>,
}

/// The type of a column.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 string; numbers and booleans are written as text, missing/null per Morpheus' rule.
    #[default]
    String,
    /// 64-bit integer; numeric strings are parsed; missing or null is null.
    Int,
    /// 64-bit float; numeric strings are parsed; missing or null is null.
    Float,
    /// Boolean; with `true_values`/`false_values` strings are mapped, others take `otherwise`.
    Bool,
}

/// One output column.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The column's name in batches and outputs.
    pub name: String,
    /// Dotted path of the source field (exactly one of `path` and `concat`).
    #[serde(default)]
    pub path: Option<String>,
    /// Paths whose string values are joined with `separator` (a derived string column).
    #[serde(default)]
    pub concat: Option<Vec<String>>,
    /// Separator for `concat`.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// The column's type.
    #[serde(default, rename = "type")]
    pub ty: ColumnType,
    /// Whether a record without this field is rejected.
    #[serde(default)]
    pub required: bool,
    /// For single-path string columns: drop the trailing words that start with a digit, so
    /// "Chrome 117.0.5938" reads "Chrome" (browsers update every few weeks; a version is not a
    /// new device).
    #[serde(default)]
    pub strip_version: bool,
    /// For `bool` columns: strings (or numbers, as written) that mean true.
    #[serde(default)]
    pub true_values: Vec<String>,
    /// For `bool` columns: strings that mean false.
    #[serde(default)]
    pub false_values: Vec<String>,
    /// For `bool` columns with a mapping: the value of anything else, missing included
    /// (Morpheus: true). Without it, unmapped strings are rejected and missing is null.
    #[serde(default)]
    pub otherwise: Option<bool>,
    /// For `bool` columns: the value of a missing or null field, in place of `otherwise`.
    #[serde(default)]
    pub missing: Option<bool>,
}

fn default_separator() -> String {
    ", ".to_string()
}

/// The kind of a derived feature.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DerivedKind {
    /// Index of the row within its (user, UTC day), from 0 (`logcount`).
    CountPerDay,
    /// Distinct values of `column` seen so far that (user, UTC day), from 1
    /// (`locincrement`, `appincrement`).
    DistinctPerDay,
    /// The user's rows in the span `within` ending at this row, this row included; with
    /// `column` (a bool column) only the rows whose value is `when` (bursts of failures).
    CountWithin,
    /// Distinct values of `column` among the user's rows in the span `within` ending at this
    /// row, this row included (several countries within the hour).
    DistinctWithin,
}

impl DerivedKind {
    /// Whether the kind looks back over a span of time rather than over the UTC day.
    pub fn is_trailing(self) -> bool {
        matches!(self, DerivedKind::CountWithin | DerivedKind::DistinctWithin)
    }
}

/// A derived feature computed by the rolling windows (and by `dfp_ingest::derive` over a batch).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DerivedSpec {
    /// The feature's name.
    pub name: String,
    /// What it counts.
    pub kind: DerivedKind,
    /// The column whose distinct values are counted, or (for `count_within`) a bool column
    /// that selects the rows counted.
    #[serde(default)]
    pub column: Option<String>,
    /// For the trailing kinds: the span looked back over ("1h", "10m").
    #[serde(default)]
    pub within: Option<String>,
    /// For `count_within` with a column: the value counted (default true).
    #[serde(default)]
    pub when: Option<bool>,
}

impl DerivedSpec {
    /// The trailing span in microseconds (0 for the per-day kinds or an invalid span, which
    /// validation reports).
    pub fn within_us(&self) -> i64 {
        self.within
            .as_deref()
            .and_then(|w| crate::period::parse_duration(w).ok())
            .and_then(|d| d.num_microseconds())
            .unwrap_or(0)
    }
}

/// What a profile feature measures.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProfileKind {
    /// How rare this row's UTC hour (within one hour) is among the user's training rows.
    HourOfDay,
    /// How rare this row's value of `column` is among the user's training rows.
    Value,
}

/// A profile feature: computed by each model from its training rows, per user (the generic
/// model keeps every user's profile): `1 / (1 + n)`, `n` the user's training rows with this
/// row's value, so a value the user never had is 1 even when the generic model scores the
/// user. Unknown users are measured against all users together.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// The feature's name.
    pub name: String,
    /// What it measures.
    pub kind: ProfileKind,
    /// For `value`: the column.
    #[serde(default)]
    pub column: Option<String>,
}

/// A value whose familiarity the rolling window tracks per user: a row's value of `column`
/// (`kind = "value"`) or its UTC hour within one hour (`kind = "hour_of_day"`). A row whose
/// value the user first had at least the run's `after` earlier, on a day within its `within`,
/// is familiar, and the features in `explains` count as unsurprising for it (their z-loss 0;
/// for a familiar value, not the hour, the network is also given the model's typical values of
/// those features, so a value it never saw does not disturb the row's other features).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FamiliarSpec {
    /// What is tracked.
    pub kind: ProfileKind,
    /// For `value`: the column.
    #[serde(default)]
    pub column: Option<String>,
    /// The features (columns, derived or profile features) a familiar value explains.
    pub explains: Vec<String>,
}

/// The autoencoder's inputs, by kind.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// String columns embedded as categories.
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Bool columns, 0/1.
    #[serde(default)]
    pub binary: Vec<String>,
    /// Numeric columns or derived features, standard-scaled.
    #[serde(default)]
    pub numeric: Vec<String>,
    /// Numeric features taken as `ln(1 + x)` before scaling: counts whose spread grows with
    /// their size (a day of 168 sign-ins is 2.3 units above a day of 16, not 152).
    #[serde(default)]
    pub log: Vec<String>,
}

impl SourceSchema {
    /// Parses and validates a schema from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let schema: SourceSchema = crate::config::parse_toml(text, origin)?;
        schema.validate(origin)?;
        Ok(schema)
    }

    /// Reads and validates a schema file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading schema", e))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// A built-in schema by name (`azure`, `duo`).
    pub fn builtin(name: &str) -> Result<Self> {
        match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Self::from_toml(text, &format!("built-in schema {n}")),
            None => Err(Error::UnknownSource {
                name: name.to_string(),
                known: builtin_names(),
            }),
        }
    }

    /// A schema by built-in name, or else by path to a TOML file.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        if BUILTIN.iter().any(|(n, _)| *n == name_or_path) {
            return Self::builtin(name_or_path);
        }
        let path = Path::new(name_or_path);
        if path.is_file() {
            return Self::from_file(path);
        }
        Err(Error::UnknownSource {
            name: name_or_path.to_string(),
            known: builtin_names(),
        })
    }

    /// Checks every rule a schema must follow and reports all problems with their paths.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let mut p = Problems::new();
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            p.push("name", "must be non-empty and use only [A-Za-z0-9_-]");
        }
        check_path(&mut p, "timestamp.path", &self.timestamp.path);
        check_path(&mut p, "username.path", &self.username.path);
        check_path(&mut p, "event_id.path", &self.event_id.path);

        let mut names: BTreeSet<&str> = [TIMESTAMP, USERNAME, EVENT_ID].into_iter().collect();
        for (i, c) in self.columns.iter().enumerate() {
            let at = format!("columns[{i}]");
            if c.name.is_empty() {
                p.push(join(&at, "name"), "must not be empty");
            } else if !names.insert(&c.name) {
                p.push(
                    join(&at, "name"),
                    format!("duplicate column name {:?}", c.name),
                );
            }
            match (&c.path, &c.concat) {
                (Some(path), None) => check_path(&mut p, &join(&at, "path"), path),
                (None, Some(parts)) => {
                    if parts.is_empty() {
                        p.push(join(&at, "concat"), "must list at least one path");
                    }
                    for (j, part) in parts.iter().enumerate() {
                        check_path(&mut p, &format!("{at}.concat[{j}]"), part);
                    }
                    if c.ty != ColumnType::String {
                        p.push(join(&at, "type"), "a concat column must be a string");
                    }
                }
                (Some(_), Some(_)) => p.push(&at, "give either `path` or `concat`, not both"),
                (None, None) => p.push(&at, "needs `path` or `concat`"),
            }
            if c.strip_version && (c.ty != ColumnType::String || c.path.is_none()) {
                p.push(
                    join(&at, "strip_version"),
                    "applies only to a string column with a single path",
                );
            }
            let mapped = !c.true_values.is_empty() || !c.false_values.is_empty();
            if c.ty != ColumnType::Bool && (mapped || c.otherwise.is_some() || c.missing.is_some())
            {
                p.push(
                    &at,
                    "`true_values`, `false_values`, `otherwise` and `missing` apply only to type \"bool\"",
                );
            }
            if let Some(dup) = c.true_values.iter().find(|v| c.false_values.contains(v)) {
                p.push(
                    join(&at, "false_values"),
                    format!("{dup:?} is also in true_values"),
                );
            }
        }

        for (i, d) in self.derived.iter().enumerate() {
            let at = format!("derived[{i}]");
            if !names.insert(&d.name) {
                p.push(
                    join(&at, "name"),
                    format!("duplicate column name {:?}", d.name),
                );
            }
            let column_ty = d
                .column
                .as_deref()
                .map(|c| (c, self.column(c).map(|c| c.ty)));
            match (d.kind, column_ty) {
                (DerivedKind::DistinctPerDay | DerivedKind::DistinctWithin, None) => p.push(
                    join(&at, "column"),
                    "this kind counts the values of a column",
                ),
                (DerivedKind::CountPerDay, Some(_)) => {
                    p.push(join(&at, "column"), "count_per_day takes no column")
                }
                (_, Some((col, None))) => {
                    p.push(join(&at, "column"), format!("unknown column {col:?}"))
                }
                (DerivedKind::CountWithin, Some((col, Some(ty)))) if ty != ColumnType::Bool => p
                    .push(
                        join(&at, "column"),
                        format!("count_within selects rows by a bool column; {col:?} is not one"),
                    ),
                _ => {}
            }
            if d.when.is_some() && (d.kind != DerivedKind::CountWithin || d.column.is_none()) {
                p.push(
                    join(&at, "when"),
                    "applies only to count_within with a column",
                );
            }
            match (&d.within, d.kind.is_trailing()) {
                (None, true) => p.push(
                    join(&at, "within"),
                    "a trailing kind needs a span like \"1h\"",
                ),
                (Some(_), false) => p.push(
                    join(&at, "within"),
                    "the per-day kinds count over the UTC day and take no span",
                ),
                (Some(w), true) => match crate::period::parse_duration(w) {
                    Err(e) => p.push(join(&at, "within"), e),
                    Ok(_) if d.within_us() <= 0 => p.push(join(&at, "within"), "must be positive"),
                    Ok(_) => {}
                },
                (None, false) => {}
            }
        }

        for (i, f) in self.profiles.iter().enumerate() {
            let at = format!("profiles[{i}]");
            if !names.insert(&f.name) {
                p.push(
                    join(&at, "name"),
                    format!("duplicate column name {:?}", f.name),
                );
            }
            self.check_kind_column(f.kind, f.column.as_deref(), &at, &mut p);
        }

        for (i, f) in self.familiar.iter().enumerate() {
            let at = format!("familiar[{i}]");
            self.check_kind_column(f.kind, f.column.as_deref(), &at, &mut p);
            if f.explains.is_empty() {
                p.push(join(&at, "explains"), "names no feature");
            }
            for (k, name) in f.explains.iter().enumerate() {
                if self.column(name).is_none() && !self.is_computed(name) {
                    p.push(
                        format!("{at}.explains[{k}]"),
                        format!("{name:?} is neither a column, a derived nor a profile feature"),
                    );
                }
            }
        }

        self.check_features(&self.features, "features", &mut p);
        if let Some(m) = &self.morpheus {
            self.check_features(&m.features, "morpheus.features", &mut p);
            for (i, c) in m.columns.iter().enumerate() {
                let known = self.column(c).is_some() || self.derived.iter().any(|d| &d.name == c);
                if !known {
                    p.push(
                        format!("morpheus.columns[{i}]"),
                        format!("{c:?} is neither a column nor a derived feature"),
                    );
                }
            }
        }
        p.finish(origin, ())
    }

    /// Checks a feature list: each feature once, of the type its kind needs.
    fn check_features(&self, features: &FeatureSpec, at: &str, p: &mut Problems) {
        let mut seen = BTreeSet::new();
        let kinds = [
            ("categorical", &features.categorical),
            ("binary", &features.binary),
            ("numeric", &features.numeric),
        ];
        for (kind, list) in kinds {
            for (i, f) in list.iter().enumerate() {
                let at = format!("{at}.{kind}[{i}]");
                if !seen.insert(f.as_str()) {
                    p.push(&at, format!("feature {f:?} is listed twice"));
                    continue;
                }
                let column_ty = self.column(f).map(|c| c.ty);
                let is_derived = self.is_computed(f);
                let ok = match kind {
                    "categorical" => column_ty == Some(ColumnType::String),
                    "binary" => column_ty == Some(ColumnType::Bool),
                    _ => {
                        is_derived || matches!(column_ty, Some(ColumnType::Int | ColumnType::Float))
                    }
                };
                if !ok {
                    let want = match kind {
                        "categorical" => "a string column",
                        "binary" => "a bool column",
                        _ => "an int or float column, a derived or a profile feature",
                    };
                    p.push(&at, format!("{f:?} is not {want}"));
                }
            }
        }
        if seen.is_empty() {
            p.push(at, "lists no feature");
        }
        for (i, f) in features.log.iter().enumerate() {
            if !features.numeric.contains(f) {
                p.push(
                    format!("{at}.log[{i}]"),
                    format!("{f:?} is not among the numeric features"),
                );
            }
        }
    }

    /// This schema training and scoring on Morpheus' feature lists instead of its own; an
    /// error when the schema has no `[morpheus]` section.
    pub fn with_morpheus_features(&self) -> Result<Self> {
        let Some(m) = &self.morpheus else {
            return Err(Error::Invalid {
                origin: format!("source schema {:?}", self.name),
                problems: vec![Problem {
                    path: "morpheus".into(),
                    message: "is missing: the run asks for Morpheus' features ([morpheus] features = true) and this schema does not list them".into(),
                }],
            });
        };
        Ok(Self {
            features: m.features.clone(),
            ..self.clone()
        })
    }

    /// Whether `name` is a derived or a profile feature (computed, not read from a record).
    fn is_computed(&self, name: &str) -> bool {
        self.derived.iter().any(|d| d.name == name) || self.profiles.iter().any(|d| d.name == name)
    }

    /// A profile's or a familiar entry's `column` against its `kind` (problems under `at`).
    fn check_kind_column(
        &self,
        kind: ProfileKind,
        column: Option<&str>,
        at: &str,
        p: &mut Problems,
    ) {
        match (kind, column) {
            (ProfileKind::Value, None) => p.push(join(at, "column"), "value needs a column"),
            (ProfileKind::Value, Some(col)) if self.column(col).is_none() => {
                p.push(join(at, "column"), format!("unknown column {col:?}"))
            }
            (ProfileKind::HourOfDay, Some(_)) => {
                p.push(join(at, "column"), "hour_of_day takes no column")
            }
            _ => {}
        }
    }

    /// The profile feature named `name`, if the schema has it.
    pub fn profile(&self, name: &str) -> Option<&ProfileSpec> {
        self.profiles.iter().find(|f| f.name == name)
    }

    /// The column named `name`, if the schema has it.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The Arrow schema of ingested batches.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(
                TIMESTAMP,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new(USERNAME, DataType::Utf8, true),
            Field::new(EVENT_ID, DataType::Utf8, true),
        ];
        for c in &self.columns {
            let (ty, nullable) = match c.ty {
                ColumnType::String => (DataType::Utf8, false),
                ColumnType::Int => (DataType::Int64, true),
                ColumnType::Float => (DataType::Float64, true),
                ColumnType::Bool => (DataType::Boolean, c.otherwise.is_none()),
            };
            fields.push(Field::new(&c.name, ty, nullable));
        }
        Arc::new(Schema::new(fields))
    }

    /// Whether a record without an event id is rejected (default: no; it gets a derived id).
    pub fn event_id_required(&self) -> bool {
        self.event_id.required.unwrap_or(false)
    }

    /// Whether a record without a username is rejected (default: no).
    pub fn username_required(&self) -> bool {
        self.username.required.unwrap_or(false)
    }

    /// A stable 64-bit fingerprint of the schema (FNV-1a over its canonical debug form), stored
    /// in model files so a model is never used with a schema it was not trained on.
    pub fn fingerprint(&self) -> u64 {
        crate::hash::fnv1a64(format!("{self:?}").as_bytes())
    }
}

fn builtin_names() -> String {
    BUILTIN
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_path(p: &mut Problems, at: &str, path: &str) {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        p.push(
            at,
            format!("{path:?} is not a dotted path (empty segment) like \"a.b.c\""),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schemas_parse_and_validate() {
        for (name, _) in BUILTIN {
            let s = SourceSchema::builtin(name).unwrap();
            assert_eq!(&s.name, name);
            assert!(!s.features.categorical.is_empty());
        }
    }

    #[test]
    fn builtin_features_include_morpheus_lists() {
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/morpheus");
        for (name, file) in [
            ("azure", "columns_ae_azure.txt"),
            ("duo", "columns_ae_duo.txt"),
        ] {
            let Ok(text) = std::fs::read_to_string(fixtures.join(file)) else {
                continue; // shared/ is beside the checkout in CI; skip elsewhere
            };
            // dfp reads the Azure browser without its version, in place of Morpheus' feature.
            let want: BTreeSet<&str> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    if l == "deviceDetailbrowser" {
                        "browser"
                    } else {
                        l
                    }
                })
                .collect();
            let s = SourceSchema::builtin(name).unwrap();
            let f = &s.features;
            let got: BTreeSet<&str> = f
                .categorical
                .iter()
                .chain(&f.binary)
                .chain(&f.numeric)
                .map(String::as_str)
                .collect();
            assert!(
                got.is_superset(&want),
                "{name}: {got:?} lacks some of {want:?}"
            );
        }
    }

    #[test]
    fn unknown_source_names_the_builtins() {
        let err = SourceSchema::resolve("cloudtrail-nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("azure, duo"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            name = "bad source"
            [timestamp]
            path = "a..b"
            [username]
            path = "user"
            [event_id]
            path = "id"
            [[columns]]
            name = "x"
            [[columns]]
            name = "x"
            path = "y"
            type = "int"
            true_values = ["yes"]
            strip_version = true
            [[derived]]
            name = "inc"
            kind = "distinct_per_day"
            column = "nope"
            [[derived]]
            name = "burst"
            kind = "count_within"
            column = "x"
            [[derived]]
            name = "daily"
            kind = "count_per_day"
            within = "1h"
            when = true
            [[derived]]
            name = "places"
            kind = "distinct_within"
            within = "0s"
            [[profiles]]
            name = "hours"
            kind = "hour_of_day"
            column = "x"
            [[profiles]]
            name = "inc"
            kind = "value"
            [[familiar]]
            kind = "value"
            column = "ghost"
            explains = ["x", "nothing"]
            [[familiar]]
            kind = "hour_of_day"
            column = "x"
            explains = []
            [features]
            categorical = ["x", "ghost"]
            numeric = ["inc", "hours"]
            log = ["inc", "x"]
        "#;
        let err = SourceSchema::from_toml(text, "t.toml").unwrap_err();
        let Error::Invalid { problems, origin } = err else {
            panic!("expected Invalid")
        };
        assert_eq!(origin, "t.toml");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "name",
            "timestamp.path",
            "columns[0]",
            "columns[1].name",
            "columns[1]",
            "columns[1].strip_version",
            "derived[0].column",
            "derived[1].column",
            "derived[1].within",
            "derived[2].within",
            "derived[2].when",
            "derived[3].column",
            "derived[3].within",
            "profiles[0].column",
            "profiles[1].name",
            "profiles[1].column",
            "familiar[0].column",
            "familiar[0].explains[1]",
            "familiar[1].column",
            "familiar[1].explains",
            "features.categorical[1]",
            "features.log[1]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        assert!(!paths.contains(&"features.log[0]"), "{paths:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = r#"
            name = "s"
            colums = []
            [timestamp]
            path = "t"
            [username]
            path = "u"
            [event_id]
            path = "id"
            [features]
        "#;
        let err = SourceSchema::from_toml(text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("colums"), "{err}");
    }

    #[test]
    fn arrow_schema_starts_with_fixed_columns() {
        let s = SourceSchema::builtin("duo").unwrap();
        let a = s.arrow_schema();
        let names: Vec<&str> = a.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(&names[..3], &[TIMESTAMP, USERNAME, EVENT_ID]);
        assert_eq!(
            a.field_with_name("result").unwrap().data_type(),
            &DataType::Boolean
        );
        assert!(!a.field_with_name("result").unwrap().is_nullable());
    }

    #[test]
    fn fingerprint_changes_with_the_schema() {
        let a = SourceSchema::builtin("azure").unwrap();
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.columns.pop();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
