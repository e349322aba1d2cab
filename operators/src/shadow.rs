//! Shadow output: every row a challenger scored beside its champion becomes a line of
//! `dfp_shadow_{source}.csv`: the event, the model, both versions, both scores, and whether
//! each would alert under the run's detection rule. Shadow scores never raise a detection.
//!
//! Input: scored rows (those without a challenger's scores give no line). Output: [`Line`]s,
//! keyed like the detections, so the file does not depend on the worker layout. State: none.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Map;

use crate::filter_detections::Rule;
use crate::inference::Scored;
use crate::serialize::{Columns, Line, OutKind, csv_line};

/// The shadow file's CSV header.
pub const HEADER: &str = "event_id,username,timestamp,model,champion_version,challenger_version,\
champion_mean_abs_z,challenger_mean_abs_z,champion_calibrated_z,challenger_calibrated_z,\
champion_alert,challenger_alert";

/// The version part of `name:version`.
fn version_of(label: &str) -> &str {
    label.rsplit_once(':').map_or(label, |(_, v)| v)
}

/// The shadow line of `s`, if a challenger scored it.
pub fn shadow_line(columns: &Columns, rule: &Rule, s: &Scored) -> Option<Line> {
    let shadow = s.shadow.as_ref()?;
    let model = s
        .model_version
        .rsplit_once(':')
        .map_or(s.model_version.as_str(), |(n, _)| n);
    let time = DateTime::from_timestamp_micros(s.row.ts)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_else(|| s.row.ts.to_string());
    let cells = [
        columns.event_id(&s.row).unwrap_or_default(),
        s.user.clone(),
        time,
        model.to_string(),
        version_of(&s.model_version).to_string(),
        version_of(&shadow.model_version).to_string(),
        s.mean_abs_z.to_string(),
        shadow.mean_abs_z.to_string(),
        s.calibrated_z.to_string(),
        shadow.calibrated_z.to_string(),
        rule.flags(s.mean_abs_z, s.calibrated_z).to_string(),
        rule.flags(shadow.mean_abs_z, shadow.calibrated_z)
            .to_string(),
    ];
    Some(Line {
        kind: OutKind::Shadow,
        ts: s.row.ts,
        origin: Some(s.row.origin),
        text: csv_line(&cells),
    })
}

/// The shadow stage as a timely operator.
pub trait ShadowLines<'s> {
    /// The shadow line of each row a challenger scored.
    fn shadow_lines(self, columns: Arc<Columns>, rule: Rule) -> StreamVec<'s, u64, Line>;
}

impl<'s> ShadowLines<'s> for StreamVec<'s, u64, Scored> {
    fn shadow_lines(self, columns: Arc<Columns>, rule: Rule) -> StreamVec<'s, u64, Line> {
        self.flat_map(move |s| shadow_line(&columns, &rule, &s))
    }
}
