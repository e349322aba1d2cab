//! Scoring a run against known anomalies: reads the generator's `labels.jsonl` and a run's
//! detections (and, when written, every score) and reports, per anomaly kind, how many
//! anomalous events were scored and detected, the precision of the detections, the share of
//! normal scored events flagged, and the ROC-AUC of `mean_abs_z`. Used by `dfp demo` and the
//! end-to-end tests. State: none.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

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
}

/// Reads the `event_id` column (and `mean_abs_z`, when `with_score`) of an output CSV.
fn read_csv(path: &Path, with_score: bool) -> Result<Vec<(String, f64)>> {
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| Error::model("evaluate", format!("{}: {e}", path.display())))?;
    let headers = r
        .headers()
        .map_err(|e| Error::model("evaluate", format!("{}: {e}", path.display())))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            Error::model(
                "evaluate",
                format!("{} has no {name} column", path.display()),
            )
        })
    };
    let id = col("event_id")?;
    let z = if with_score {
        Some(col("mean_abs_z")?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec
            .map_err(|e| Error::model("evaluate", format!("{} record {i}: {e}", path.display())))?;
        let score = match z {
            Some(k) => rec.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            None => 0.0,
        };
        out.push((rec.get(id).unwrap_or("").to_string(), score));
    }
    Ok(out)
}

/// Reads `labels.jsonl`: event id -> anomaly kind.
pub fn read_labels(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading labels", e))?;
    let mut labels = HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Json {
            context: format!("{} line {}", path.display(), i + 1),
            source: e,
        })?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        match (field("event_id"), field("kind")) {
            (Some(id), Some(kind)) => {
                labels.insert(id, kind);
            }
            _ => {
                return Err(Error::model(
                    "evaluate",
                    format!(
                        "{} line {}: needs string event_id and kind",
                        path.display(),
                        i + 1
                    ),
                ));
            }
        }
    }
    Ok(labels)
}

/// Compares the detections (and scores, if given) with the labels.
pub fn evaluate(labels: &Path, detections: &Path, scores: Option<&Path>) -> Result<Evaluation> {
    let labels = read_labels(labels)?;
    let detected: HashSet<String> = read_csv(detections, false)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let scores = scores.map(|p| read_csv(p, true)).transpose()?;
    let in_scope: Box<dyn Fn(&str) -> bool> = match &scores {
        Some(s) => {
            let ids: HashSet<String> = s.iter().map(|(id, _)| id.clone()).collect();
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
    let (scored, false_positive_rate, auc) = match &scores {
        Some(s) => {
            let normal: Vec<&(String, f64)> = s
                .iter()
                .filter(|(id, _)| !labels.contains_key(id))
                .collect();
            let flagged = normal
                .iter()
                .filter(|(id, _)| detected.contains(id))
                .count();
            let z: Vec<f64> = s.iter().map(|(_, z)| *z).collect();
            let l: Vec<bool> = s.iter().map(|(id, _)| labels.contains_key(id)).collect();
            (
                Some(s.len() as u64),
                Some(flagged as f64 / (normal.len() as f64).max(1.0)),
                roc_auc(&z, &l),
            )
        }
        None => (None, None, None),
    };
    Ok(Evaluation {
        kinds,
        total,
        detections: detected.len() as u64,
        precision: true_detections as f64 / (detected.len() as f64).max(1.0),
        scored,
        false_positive_rate,
        roc_auc: auc,
    })
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
        let e = evaluate(&p("labels.jsonl"), &p("det.csv"), Some(&p("scores.csv"))).unwrap();
        // c was never scored, so it is out of scope.
        assert_eq!(e.total.count, 2);
        assert_eq!(e.total.detected, 1);
        assert_eq!(e.kinds.len(), 1);
        assert_eq!(e.precision, 0.5);
        assert_eq!(e.false_positive_rate, Some(1.0 / 3.0));
        assert_eq!(e.roc_auc, Some(5.0 / 6.0));
    }
}
