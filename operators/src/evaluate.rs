//! Scoring a run against known anomalies: reads the generator's `labels.jsonl` and a run's
//! detections (and, when written, every score and the alerts) and reports, per anomaly kind,
//! how many anomalous events were scored and detected, the precision of the detections, the
//! share of normal scored events flagged, the ROC-AUC of `mean_abs_z` and of `calibrated_z`;
//! the same per bucket of users (those scored by a model of their own, and the low-volume ones
//! scored by the generic model); and detections and alerts per day (before and after
//! suppression). Used by `dfp demo`, the quality benchmark and the end-to-end tests. State:
//! none.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use dfp_engine::registry::is_own_model;
use dfp_engine::{Error, Result};
use serde::Serialize;

/// One anomaly kind's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindFigures {
    /// The kind.
    pub kind: String,
    /// Labelled events of this kind that were scored (all labelled ones without a score file).
    pub count: u64,
    /// Of those, detected.
    pub detected: u64,
}

impl KindFigures {
    /// detected / count.
    pub fn recall(&self) -> f64 {
        self.detected as f64 / (self.count as f64).max(1.0)
    }
}

/// The figures of one bucket of users.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bucket {
    /// Which users: `own model` or `generic model` (the model that scored their rows).
    pub name: String,
    /// Users in it.
    pub users: u64,
    /// Normal scored events.
    pub normal: u64,
    /// Of those, flagged.
    pub flagged: u64,
    /// Labelled events scored.
    pub attacks: u64,
    /// Of those, detected.
    pub detected: u64,
}

impl Bucket {
    /// flagged / normal.
    pub fn false_positive_rate(&self) -> f64 {
        self.flagged as f64 / (self.normal as f64).max(1.0)
    }

    /// detected / attacks.
    pub fn recall(&self) -> f64 {
        self.detected as f64 / (self.attacks as f64).max(1.0)
    }
}

/// Detections and alerts of one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// The date, `YYYY-MM-DD`.
    pub date: String,
    /// Detections.
    pub detections: u64,
    /// Alerts (distinct `alert_id`s first seen that day), when they were written.
    pub alerts: Option<u64>,
}

/// How a run's detections compare with the labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Per anomaly kind, in name order.
    pub kinds: Vec<KindFigures>,
    /// All kinds together.
    pub total: KindFigures,
    /// Rows detected.
    pub detections: u64,
    /// Detections that are labelled anomalies / detections.
    pub precision: f64,
    /// Rows scored, if the scores were written.
    pub scored: Option<u64>,
    /// Normal scored rows that were detected / normal scored rows.
    pub false_positive_rate: Option<f64>,
    /// ROC-AUC of `mean_abs_z` against the labels, if the scores were written.
    pub roc_auc: Option<f64>,
    /// ROC-AUC of `calibrated_z`, if the scores were written with it.
    pub roc_auc_calibrated: Option<f64>,
    /// Per bucket of users, if the scores were written.
    pub buckets: Vec<Bucket>,
    /// Per day of event time.
    pub days: Vec<Day>,
}

/// The named columns of an output CSV, one `Vec` per record; `optional` ones may be missing
/// (empty cells then).
fn read_columns(path: &Path, required: &[&str], optional: &[&str]) -> Result<Vec<Vec<String>>> {
    let bad =
        |e: &dyn std::fmt::Display| Error::model("evaluate", format!("{}: {e}", path.display()));
    let mut r = csv::Reader::from_path(path).map_err(|e| bad(&e))?;
    let headers = r.headers().map_err(|e| bad(&e))?.clone();
    let mut at: Vec<Option<usize>> = Vec::new();
    for name in required {
        let i = headers.iter().position(|h| h == *name).ok_or_else(|| {
            Error::model(
                "evaluate",
                format!("{} has no {name} column", path.display()),
            )
        })?;
        at.push(Some(i));
    }
    at.extend(
        optional
            .iter()
            .map(|n| headers.iter().position(|h| h == *n)),
    );
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec
            .map_err(|e| Error::model("evaluate", format!("{} record {i}: {e}", path.display())))?;
        out.push(
            at.iter()
                .map(|k| k.and_then(|k| rec.get(k)).unwrap_or("").to_string())
                .collect(),
        );
    }
    Ok(out)
}

/// The JSON values of a JSON-lines file's non-empty lines, with their line numbers; `what`
/// names the file in an error.
fn json_lines(path: &Path, what: &'static str) -> Result<Vec<(usize, serde_json::Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, what, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map(|v| (i + 1, v))
                .map_err(|e| Error::Json {
                    context: format!("{} line {}", path.display(), i + 1),
                    source: e,
                })
        })
        .collect()
}

/// Reads `labels.jsonl`: event id -> anomaly kind.
pub fn read_labels(path: &Path) -> Result<HashMap<String, String>> {
    let mut labels = HashMap::new();
    for (line, v) in json_lines(path, "reading labels")? {
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        match (field("event_id"), field("kind")) {
            (Some(id), Some(kind)) => {
                labels.insert(id, kind);
            }
            _ => {
                return Err(Error::model(
                    "evaluate",
                    format!(
                        "{} line {line}: needs string event_id and kind",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(labels)
}

/// Distinct alert ids per day of their first detection, from an alerts file.
fn alerts_per_day(path: &Path) -> Result<BTreeMap<String, u64>> {
    let mut seen = BTreeSet::new();
    let mut days: BTreeMap<String, u64> = BTreeMap::new();
    for (_, v) in json_lines(path, "reading alerts")? {
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        if seen.insert(field("alert_id")) {
            *days
                .entry(field("first_time").chars().take(10).collect())
                .or_default() += 1;
        }
    }
    Ok(days)
}

/// Compares the detections (and scores and alerts, if given) with the labels.
pub fn evaluate(
    labels: &Path,
    detections: &Path,
    scores: Option<&Path>,
    alerts: Option<&Path>,
) -> Result<Evaluation> {
    let labels = read_labels(labels)?;
    let rows = read_columns(detections, &["event_id"], &["timestamp"])?;
    let detected: HashSet<String> = rows.iter().map(|r| r[0].clone()).collect();
    let mut per_day: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows {
        *per_day.entry(r[1].chars().take(10).collect()).or_default() += 1;
    }
    let alert_days = alerts.map(alerts_per_day).transpose()?;
    let scores = scores
        .map(|p| {
            read_columns(
                p,
                &["event_id", "mean_abs_z"],
                &["calibrated_z", "model_version", "username"],
            )
        })
        .transpose()?;
    let in_scope: Box<dyn Fn(&str) -> bool> = match &scores {
        Some(s) => {
            let ids: HashSet<String> = s.iter().map(|r| r[0].clone()).collect();
            Box::new(move |id| ids.contains(id))
        }
        None => Box::new(|_| true),
    };
    let mut kinds: BTreeMap<String, KindFigures> = BTreeMap::new();
    for (id, kind) in &labels {
        if !in_scope(id) {
            continue;
        }
        let k = kinds.entry(kind.clone()).or_insert_with(|| KindFigures {
            kind: kind.clone(),
            count: 0,
            detected: 0,
        });
        k.count += 1;
        k.detected += u64::from(detected.contains(id));
    }
    let kinds: Vec<KindFigures> = kinds.into_values().collect();
    let total = KindFigures {
        kind: "all".into(),
        count: kinds.iter().map(|k| k.count).sum(),
        detected: kinds.iter().map(|k| k.detected).sum(),
    };
    let true_detections = detected
        .iter()
        .filter(|id| labels.contains_key(*id))
        .count();
    let mut evaluation = Evaluation {
        kinds,
        total,
        detections: detected.len() as u64,
        precision: true_detections as f64 / (detected.len() as f64).max(1.0),
        scored: None,
        false_positive_rate: None,
        roc_auc: None,
        roc_auc_calibrated: None,
        buckets: Vec::new(),
        days: per_day
            .into_iter()
            .map(|(date, detections)| Day {
                alerts: alert_days
                    .as_ref()
                    .map(|a| a.get(&date).copied().unwrap_or(0)),
                date,
                detections,
            })
            .collect(),
    };
    if let Some(s) = &scores {
        let attack = |r: &Vec<String>| labels.contains_key(&r[0]);
        let normal = s.iter().filter(|r| !attack(r)).count();
        let flagged = s
            .iter()
            .filter(|r| !attack(r) && detected.contains(&r[0]))
            .count();
        let number = |v: &str| v.parse().unwrap_or(f64::NAN);
        let l: Vec<bool> = s.iter().map(attack).collect();
        let z: Vec<f64> = s.iter().map(|r| number(&r[1])).collect();
        let c: Vec<f64> = s.iter().map(|r| number(&r[2])).collect();
        evaluation.scored = Some(s.len() as u64);
        evaluation.false_positive_rate = Some(flagged as f64 / (normal as f64).max(1.0));
        evaluation.roc_auc = roc_auc(&z, &l);
        evaluation.roc_auc_calibrated = roc_auc(&c, &l);
        let mut buckets: BTreeMap<&str, (Bucket, HashSet<&str>)> = BTreeMap::new();
        for r in s {
            // A user's own model is named after them (`DFP-{source}-{user}:{version}`);
            // any other model that scored them is the generic model, whatever it is called.
            let own = is_own_model(&r[3], &r[4]);
            let name = if own { "own model" } else { "generic model" };
            let (b, users) = buckets.entry(name).or_default();
            b.name = name.to_string();
            users.insert(&r[4]);
            let hit = u64::from(detected.contains(&r[0]));
            if attack(r) {
                b.attacks += 1;
                b.detected += hit;
            } else {
                b.normal += 1;
                b.flagged += hit;
            }
        }
        evaluation.buckets = buckets
            .into_values()
            .map(|(mut b, users)| {
                b.users = users.len() as u64;
                b
            })
            .collect();
    }
    Ok(evaluation)
}

impl Evaluation {
    /// The table `dfp demo` prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<22} {:>7} {:>9} {:>7}\n",
            "anomaly kind", "events", "detected", "recall"
        );
        for k in self.kinds.iter().chain(std::iter::once(&self.total)) {
            out.push_str(&format!(
                "{:<22} {:>7} {:>9} {:>6.1}%\n",
                k.kind,
                k.count,
                k.detected,
                100.0 * k.recall()
            ));
        }
        out.push_str(&format!(
            "detections: {}, precision {:.1}%",
            self.detections,
            100.0 * self.precision
        ));
        if let (Some(n), Some(fp)) = (self.scored, self.false_positive_rate) {
            out.push_str(&format!(
                "; {n} events scored, {:.2}% of normal events flagged",
                100.0 * fp
            ));
        }
        if let Some(a) = self.roc_auc {
            out.push_str(&format!("; ROC-AUC of mean_abs_z {a:.3}"));
        }
        if let Some(a) = self.roc_auc_calibrated {
            out.push_str(&format!(", of calibrated_z {a:.3}"));
        }
        if !self.buckets.is_empty() {
            out.push_str(&format!(
                "\n\n{:<15} {:>6} {:>8} {:>8} {:>9} {:>8} {:>7}\n",
                "scored by", "users", "normal", "flagged", "flagged%", "attacks", "recall"
            ));
            for b in &self.buckets {
                out.push_str(&format!(
                    "{:<15} {:>6} {:>8} {:>8} {:>8.2}% {:>8} {:>6.1}%\n",
                    b.name,
                    b.users,
                    b.normal,
                    b.flagged,
                    100.0 * b.false_positive_rate(),
                    b.attacks,
                    100.0 * b.recall()
                ));
            }
            out.pop();
        }
        if self.days.iter().any(|d| d.alerts.is_some()) {
            let per_day = |f: &dyn Fn(&Day) -> u64| {
                self.days.iter().map(f).sum::<u64>() as f64 / (self.days.len() as f64).max(1.0)
            };
            out.push_str(&format!(
                "\nper day: {:.1} detections, {:.1} alerts after suppression",
                per_day(&|d| d.detections),
                per_day(&|d| d.alerts.unwrap_or(0))
            ));
        }
        out
    }
}

/// ROC-AUC of `scores` against `labels` (true = positive), ties counted half (the
/// Mann-Whitney U statistic, as scikit-learn's `roc_auc_score`). None without both classes or
/// with a non-finite score.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' ranks (1-based), ties sharing their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg * idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_hand_computed_values() {
        assert_eq!(
            roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(roc_auc(&[1.0, 1.0], &[false, true]), Some(0.5));
        assert_eq!(roc_auc(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(roc_auc(&[0.0, 1.0, 2.0], &[true, false, false]), Some(0.0));
    }

    #[test]
    fn figures_count_scored_labelled_events_and_false_positives() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(
            p("labels.jsonl"),
            "{\"event_id\":\"a\",\"kind\":\"k1\"}\n{\"event_id\":\"b\",\"kind\":\"k1\"}\n{\"event_id\":\"c\",\"kind\":\"k2\"}\n",
        )
        .unwrap();
        std::fs::write(p("det.csv"), "event_id,mean_abs_z\na,5\nn1,3\n").unwrap();
        std::fs::write(
            p("scores.csv"),
            "event_id,mean_abs_z\na,5\nb,1\nn1,3\nn2,0.5\nn3,0.1\n",
        )
        .unwrap();
        let e = evaluate(
            &p("labels.jsonl"),
            &p("det.csv"),
            Some(&p("scores.csv")),
            None,
        )
        .unwrap();
        // c was never scored, so it is out of scope.
        assert_eq!(e.total.count, 2);
        assert_eq!(e.total.detected, 1);
        assert_eq!(e.kinds.len(), 1);
        assert_eq!(e.precision, 0.5);
        assert_eq!(e.false_positive_rate, Some(1.0 / 3.0));
        assert_eq!(e.roc_auc, Some(5.0 / 6.0));
    }

    #[test]
    fn buckets_split_users_by_the_model_that_scored_them_and_days_count_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("labels.jsonl"), "{\"event_id\":\"a\",\"kind\":\"k\"}\n").unwrap();
        std::fs::write(
            p("det.csv"),
            "timestamp,event_id\n2022-08-01T01:00:00Z,a\n2022-08-01T02:00:00Z,n1\n2022-08-02T02:00:00Z,n2\n",
        )
        .unwrap();
        std::fs::write(
            p("scores.csv"),
            "username,event_id,model_version,mean_abs_z,calibrated_z\n\
             u1,a,DFP-x-u1:1,5,4\nu1,n1,DFP-x-u1:1,3,1\nu2,n2,DFP-x-generic_user:1,4,2\n\
             u2,n3,DFP-x-generic_user:1,1,0\nu3,n4,DFP-x-everyone:1,1,0\n",
        )
        .unwrap();
        std::fs::write(
            p("alerts.jsonl"),
            "{\"alert_id\":\"x\",\"first_time\":\"2022-08-01T01:00:00Z\"}\n\
             {\"alert_id\":\"x\",\"first_time\":\"2022-08-01T01:00:00Z\"}\n\
             {\"alert_id\":\"y\",\"first_time\":\"2022-08-02T02:00:00Z\"}\n",
        )
        .unwrap();
        let e = evaluate(
            &p("labels.jsonl"),
            &p("det.csv"),
            Some(&p("scores.csv")),
            Some(&p("alerts.jsonl")),
        )
        .unwrap();
        let b: Vec<(&str, u64, u64, u64, u64, u64)> = e
            .buckets
            .iter()
            .map(|b| {
                (
                    b.name.as_str(),
                    b.users,
                    b.normal,
                    b.flagged,
                    b.attacks,
                    b.detected,
                )
            })
            .collect();
        assert_eq!(
            b,
            [
                ("generic model", 2, 3, 1, 0, 0),
                ("own model", 1, 1, 1, 1, 1)
            ]
        );
        assert_eq!(e.roc_auc_calibrated, Some(1.0));
        let days: Vec<(&str, u64, Option<u64>)> = e
            .days
            .iter()
            .map(|d| (d.date.as_str(), d.detections, d.alerts))
            .collect();
        assert_eq!(
            days,
            [("2022-08-01", 2, Some(1)), ("2022-08-02", 1, Some(1))]
        );
        assert!(e.table().contains("generic model"));
    }
}
