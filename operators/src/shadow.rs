//! Shadow output: every row a challenger scored beside its champion becomes a line of
//! `dfp_shadow_{source}.csv`: the event, the model, both versions, both scores, and whether
//! each would alert under the run's detection rule. Shadow scores never raise a detection.
//!
//! Input: scored rows (those without a challenger's scores give no line). Output: [`Line`]s,
//! keyed like the detections, so the file does not depend on the worker layout. State: none.
//! [`compare`] reads a shadow file back and compares each challenger with its champion
//! (`dfp models shadow`).

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use dfp_engine::registry::split_label;
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Map;

use crate::filter_detections::Rule;
use crate::inference::Scored;
use crate::promotion::Tally;
use crate::serialize::{Columns, Line, OutKind, csv_line};

/// The shadow file's CSV header.
pub const HEADER: &str = "event_id,username,timestamp,model,champion_version,challenger_version,\
champion_mean_abs_z,challenger_mean_abs_z,champion_calibrated_z,challenger_calibrated_z,\
champion_alert,challenger_alert";

/// The shadow line of `s`, if a challenger scored it.
pub fn shadow_line(columns: &Columns, rule: &Rule, s: &Scored) -> Option<Line> {
    let shadow = s.shadow.as_ref()?;
    let (model, champion) = split_label(&s.model_version);
    let time = DateTime::from_timestamp_micros(s.row.ts)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_else(|| s.row.ts.to_string());
    let cells = [
        columns.event_id(&s.row).unwrap_or_default(),
        s.user.clone(),
        time,
        model.to_string(),
        champion.unwrap_or_default().to_string(),
        split_label(&shadow.model_version)
            .1
            .unwrap_or_default()
            .to_string(),
        s.mean_abs_z.to_string(),
        shadow.mean_abs_z.to_string(),
        s.calibrated_z.to_string(),
        shadow.calibrated_z.to_string(),
        rule.flags(s.mean_abs_z, s.max_abs_z, s.calibrated_z)
            .to_string(),
        rule.flags(shadow.mean_abs_z, shadow.max_abs_z, shadow.calibrated_z)
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

/// How a challenger compared with its champion on the rows both scored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// The model name.
    pub model: String,
    /// The champion's version.
    pub champion: String,
    /// The challenger's version.
    pub challenger: String,
    /// Rows both scored.
    pub rows: u64,
    /// Share of rows on which both would do the same (alert or not).
    pub agreement: f64,
    /// Share of rows the champion would alert on.
    pub champion_alert_rate: f64,
    /// Share of rows the challenger would alert on.
    pub challenger_alert_rate: f64,
    /// Median `mean_abs_z` of the champion.
    pub champion_median: f64,
    /// Median `mean_abs_z` of the challenger.
    pub challenger_median: f64,
    /// Two-sample Kolmogorov-Smirnov statistic between the two `mean_abs_z` distributions
    /// (0: the same, 1: apart).
    pub ks: f64,
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The largest gap between the empirical distribution functions of `a` and `b` (sorted).
fn ks(a: &[f64], b: &[f64]) -> f64 {
    let (mut i, mut j, mut gap) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        gap = gap.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    gap
}

/// Reads a shadow file and compares each (model, champion, challenger), by model.
pub fn compare(path: &std::path::Path) -> dfp_engine::Result<Vec<Comparison>> {
    use dfp_engine::Error;
    let bad = |line: u64, why: String| {
        Error::stage("shadow", format!("{} line {line}: {why}", path.display()))
    };
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| Error::stage("shadow", format!("{}: {e}", path.display())))?;
    // Per (model, champion, challenger): both versions' scores and their alert counts.
    type Scores = (Vec<f64>, Vec<f64>, Tally);
    let mut groups: std::collections::BTreeMap<(String, String, String), Scores> =
        std::collections::BTreeMap::new();
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let r = record.map_err(|e| bad(line, e.to_string()))?;
        let field = |k: usize| {
            r.get(k)
                .ok_or_else(|| bad(line, format!("no column {}", k + 1)))
        };
        let number = |k: usize| -> dfp_engine::Result<f64> {
            let text = field(k)?;
            text.parse()
                .map_err(|_| bad(line, format!("{text:?} is not a number")))
        };
        let flag = |k: usize| -> dfp_engine::Result<bool> {
            let text = field(k)?;
            text.parse()
                .map_err(|_| bad(line, format!("{text:?} is not true or false")))
        };
        let key = (
            field(3)?.to_string(),
            field(4)?.to_string(),
            field(5)?.to_string(),
        );
        let (champion_alert, challenger_alert) = (flag(10)?, flag(11)?);
        let g = groups.entry(key).or_default();
        g.0.push(number(6)?);
        g.1.push(number(7)?);
        g.2.count(champion_alert, challenger_alert);
    }
    Ok(groups
        .into_iter()
        .map(|((model, champion, challenger), (mut a, mut b, tally))| {
            a.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            let (champion_alert_rate, challenger_alert_rate) = tally.alert_rates();
            Comparison {
                model,
                champion,
                challenger,
                rows: tally.rows,
                agreement: tally.agreement(),
                champion_alert_rate,
                challenger_alert_rate,
                champion_median: median(&a),
                challenger_median: median(&b),
                ks: ks(&a, &b),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comparison_counts_agreement_alert_rates_and_the_score_shift() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfp_shadow_azure.csv");
        let mut text = format!("{HEADER}\n");
        // Model m: 4 rows, champion scores 1..4, challenger 3..6; they disagree on one row.
        for (i, (a, b)) in [(1.0, 3.0), (2.0, 4.0), (3.0, 5.0), (4.0, 6.0)]
            .iter()
            .enumerate()
        {
            let (ca, cb) = (i == 3, i >= 2);
            text += &format!("e{i},u,2022-08-01T00:00:00Z,m,1,2,{a},{b},0,0,{ca},{cb}\n");
        }
        text += "e9,v,2022-08-01T00:00:00Z,n,3,4,1.5,1.5,0,0,false,false\n";
        std::fs::write(&path, text).unwrap();
        let got = compare(&path).unwrap();
        assert_eq!(got.len(), 2);
        let m = &got[0];
        assert_eq!(
            (m.model.as_str(), m.champion.as_str(), m.challenger.as_str()),
            ("m", "1", "2")
        );
        assert_eq!(m.rows, 4);
        assert!((m.agreement - 0.75).abs() < 1e-12);
        assert!((m.champion_alert_rate - 0.25).abs() < 1e-12);
        assert!((m.challenger_alert_rate - 0.5).abs() < 1e-12);
        assert_eq!((m.champion_median, m.challenger_median), (2.5, 4.5));
        assert!((m.ks - 0.5).abs() < 1e-12, "{}", m.ks);
        assert_eq!((got[1].ks, got[1].agreement), (0.0, 1.0));
        // A broken line is an error naming the file and line.
        std::fs::write(&path, format!("{HEADER}\ne,u,t,m,1,2,x,1,0,0,true,true\n")).unwrap();
        let e = compare(&path).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("\"x\" is not a number"),
            "{e}"
        );
    }
}
