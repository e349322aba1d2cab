//! `dfp report`: one self-contained HTML page of a run's outputs (no network needed to open it:
//! styles, a small sorting script and the charts inline, the charts as SVG drawn here).
//!
//! Sections: the run's summary (`dfp_run_{source}.json`, the dead letters by stage), an alert
//! timeline per user (one point per detection), score distributions per model with the
//! detection rule's threshold (the scores file where the run wrote one, else the detections),
//! the features that led the detections, the alerts and the detections with their leading
//! z-losses, and where the run wrote them: champion against challenger (the shadow file), drift
//! per feature over epochs (model `all`), analysts' precision (`dfp feedback`) and alert-rate
//! parity. Large runs stay usable: charts and tables hold at most `max_points` points or rows
//! (the strongest detections first), distributions are drawn for the models with the most
//! detections plus all user models and the generic model together, and the page says what it
//! left out.
//!
//! State: none; it reads the output directory once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use dfp_engine::registry::{is_own_model, split_label};
use dfp_engine::{Error, Result};
use serde_json::Value;

use crate::filter_detections::Rule;
use crate::serialize::OutKind;
use crate::sink::files::output_path;

/// What a report is drawn from and how much it holds.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The run's output directory.
    pub output: std::path::PathBuf,
    /// The source whose outputs are read.
    pub source: String,
    /// The run's detection rule (for the threshold line).
    pub rule: Rule,
    /// Most points per chart and rows per table.
    pub max_points: usize,
}

/// A rendered report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The page.
    pub html: String,
    /// Detections drawn on the timeline.
    pub timeline_points: usize,
    /// Detections in the run.
    pub detections: usize,
}

/// One detection, as the report uses it.
#[derive(Debug, Clone)]
struct Detection {
    user: String,
    ts: String,
    t: f64,
    event_id: String,
    model: String,
    mean_abs_z: f64,
    calibrated_z: f64,
    top: Vec<String>,
    z: Vec<(String, f64)>,
    /// The event's own fields (input and derived columns), `name=value`.
    event: Vec<String>,
}

/// Columns of a detection line that are not the event's own.
const NOT_EVENT: [&str; 11] = [
    "timestamp",
    "username",
    "event_id",
    "event_time",
    "model_version",
    "max_abs_z",
    "mean_abs_z",
    "calibrated_z",
    "top_features",
    "detection_id",
    "z_loss_scaler_type",
];

/// A JSON-lines file's values (none when it is not there), and how many lines were not JSON
/// (the page says so).
fn json_lines(path: &Path) -> Result<(Vec<Value>, usize)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut bad = 0;
            let values = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).map_err(|_| bad += 1).ok())
                .collect();
            Ok((values, bad))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), 0)),
        Err(e) => Err(Error::io(path, "reading", e)),
    }
}

/// A CSV file's rows as maps by column, none when it is not there.
fn csv_rows(path: &Path) -> Result<Vec<BTreeMap<String, String>>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| Error::stage("report", format!("{}: {e}", path.display())))?;
    let head: Vec<String> = r
        .headers()
        .map_err(|e| Error::stage("report", format!("{}: {e}", path.display())))?
        .iter()
        .map(str::to_string)
        .collect();
    Ok(r.records()
        .filter_map(|rec| rec.ok())
        .map(|rec| {
            head.iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect()
        })
        .collect())
}

/// A CSV row's cell by column name; empty when the file has no such column.
fn cell<'a>(r: &'a BTreeMap<String, String>, column: &str) -> &'a str {
    r.get(column).map_or("", String::as_str)
}

/// Appends a section: its title, then `body` (HTML).
fn section(html: &mut String, title: &str, body: &str) {
    let _ = write!(html, "<section><h2>{}</h2>{body}</section>", esc(title));
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn seconds(ts: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(ts).map_or(0.0, |t| t.timestamp_micros() as f64 / 1e6)
}

fn detection(v: &Value) -> Detection {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut z: Vec<(String, f64)> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, x)| Some((k.strip_suffix("_z_loss")?.to_string(), x.as_f64()?)))
        .collect();
    z.sort_by(|a, b| b.1.total_cmp(&a.1));
    z.truncate(3);
    let ts = s("timestamp");
    let event = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| {
            !NOT_EVENT.contains(&k.as_str()) && !["_loss", "_pred"].iter().any(|x| k.ends_with(x))
        })
        .map(|(k, x)| match x.as_str() {
            Some(text) => format!("{k}={text}"),
            None => format!("{k}={x}"),
        })
        .collect();
    Detection {
        user: s("username"),
        t: seconds(&ts),
        ts,
        event_id: s("event_id"),
        model: s("model_version"),
        mean_abs_z: f("mean_abs_z"),
        calibrated_z: f("calibrated_z"),
        top: v["top_features"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        z,
        event,
    }
}

/// A table: header cells, then rows of cells (already escaped HTML); sortable by clicking a
/// header.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table class=\"sortable\"><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out += "</tr></thead><tbody>";
    for r in rows {
        out += "<tr>";
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out += "</tr>";
    }
    out + "</tbody></table>"
}

const W: f64 = 900.0;

/// The alert timeline: one row per user (those with the most detections first), one point per
/// detection.
fn timeline(ds: &[&Detection]) -> String {
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for d in ds {
        *users.entry(&d.user).or_default() += 1;
    }
    let mut order: Vec<(&str, usize)> = users.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let row: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (u, _))| (*u, i))
        .collect();
    let (t0, t1) = ds
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), d| {
            (a.min(d.t), b.max(d.t))
        });
    let span = (t1 - t0).max(1.0);
    let (left, step) = (220.0, 14.0);
    let h = 44.0 + step * order.len() as f64;
    let mut svg = format!(
        "<svg class=\"chart\" id=\"timeline\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\">"
    );
    for (i, (u, n)) in order.iter().enumerate() {
        let y = 20.0 + step * i as f64;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{:.1}\" class=\"lab\">{} ({n})</text>",
            y + 4.0,
            esc(u)
        );
    }
    for d in ds {
        let x = left + (d.t - t0) / span * (W - left - 10.0);
        let y = 20.0 + step * row[d.user.as_str()] as f64;
        let r = (2.0 + d.mean_abs_z.max(1.0).log10() * 2.0).min(7.0);
        let _ = write!(
            svg,
            "<circle class=\"pt\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\"><title>{} {} mean_abs_z {:.2}</title></circle>",
            esc(&d.user),
            esc(&d.ts),
            d.mean_abs_z
        );
    }
    let day = |t: f64| {
        chrono::DateTime::from_timestamp(t as i64, 0)
            .map_or_else(String::new, |d| d.format("%Y-%m-%d %H:%M").to_string())
    };
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{:.1}\" class=\"lab\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" class=\"lab\" text-anchor=\"end\">{} UTC</text>",
        h - 4.0,
        day(t0),
        W - 10.0,
        h - 4.0,
        day(t1)
    );
    svg + "</svg>"
}

/// A histogram of `scores` (log10 bins) with the threshold line.
fn histogram(id: &str, scores: &[f64], threshold: f64) -> String {
    let logs: Vec<f64> = scores
        .iter()
        .filter(|s| s.is_finite())
        .map(|s| s.max(1e-3).log10())
        .collect();
    let (lo, hi) = logs
        .iter()
        .chain(std::iter::once(&threshold.max(1e-3).log10()))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        });
    let bins = 40;
    let width = ((hi - lo) / bins as f64).max(1e-9);
    let mut counts = vec![0usize; bins];
    for x in &logs {
        counts[(((x - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (w, h) = (420.0, 140.0);
    let mut svg = format!("<svg class=\"chart\" id=\"{id}\" width=\"{w}\" height=\"{h}\">");
    let bw = w / bins as f64;
    for (i, c) in counts.iter().enumerate() {
        let bh = if *c == 0 {
            0.0
        } else {
            2.0 + (h - 22.0) * (*c as f64).ln_1p() / top.ln_1p()
        };
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{c} rows near {:.2}</title></rect>",
            i as f64 * bw,
            h - 12.0 - bh,
            bw - 1.0,
            10f64.powf(lo + (i as f64 + 0.5) * width)
        );
    }
    let tx = (threshold.max(1e-3).log10() - lo) / (hi - lo).max(1e-9) * w;
    let _ = write!(
        svg,
        "<line class=\"threshold\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"0\" y2=\"{h}\"/><text x=\"{:.1}\" y=\"10\" class=\"lab\">threshold {threshold}</text>",
        (tx + 3.0).min(w - 90.0)
    );
    svg + "</svg>"
}

/// PSI per feature over epochs (model `all`), one line per feature.
fn drift_chart(rows: &[BTreeMap<String, String>]) -> String {
    let mut by: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| cell(r, "model") == "all") {
        let (Ok(e), Ok(p)) = (
            cell(r, "epoch").parse::<f64>(),
            cell(r, "psi").parse::<f64>(),
        ) else {
            continue;
        };
        by.entry(cell(r, "feature")).or_default().push((e, p));
    }
    let pts: Vec<&(f64, f64)> = by.values().flatten().collect();
    let (e0, e1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let pmax = pts.iter().map(|p| p.1).fold(0.25, f64::max).min(5.0);
    let (w, h, left) = (W, 260.0, 200.0);
    let x = |e: f64| left + (e - e0) / (e1 - e0).max(1.0) * (w - left - 10.0);
    let y = |p: f64| h - 10.0 - p.min(pmax) / pmax * (h - 20.0);
    let mut svg = format!("<svg class=\"chart\" id=\"drift\" width=\"{w}\" height=\"{h}\">");
    let _ = write!(
        svg,
        "<line class=\"threshold\" x1=\"{left}\" x2=\"{w}\" y1=\"{0:.1}\" y2=\"{0:.1}\"/>",
        y(0.2)
    );
    for (i, (f, ps)) in by.iter().enumerate() {
        let hue = (i * 47) % 360;
        let line: Vec<String> = ps
            .iter()
            .map(|(e, p)| format!("{:.1},{:.1}", x(*e), y(*p)))
            .collect();
        let _ = write!(
            svg,
            "<polyline class=\"series\" fill=\"none\" stroke=\"hsl({hue},70%,40%)\" points=\"{}\"><title>{}</title></polyline><text x=\"0\" y=\"{:.1}\" class=\"lab\" fill=\"hsl({hue},70%,40%)\">{}</text>",
            line.join(" "),
            esc(f),
            14.0 + 13.0 * i as f64,
            esc(f)
        );
    }
    svg + "</svg>"
}

/// Renders the report of `opts.output`.
pub fn render(opts: &ReportOptions) -> Result<Report> {
    let out = &opts.output;
    let src = &opts.source;
    let run_file = out.join(format!("dfp_run_{src}.json"));
    let run: Value = std::fs::read_to_string(&run_file)
        .map_err(|e| {
            Error::io(
                &run_file,
                "reading the run's summary (is this a run's output directory?)",
                e,
            )
        })
        .and_then(|t| {
            serde_json::from_str(&t).map_err(|e| Error::Json {
                context: format!("reading {}", run_file.display()),
                source: e,
            })
        })?;
    let mut notes: Vec<String> = Vec::new();
    let mut read = |kind: OutKind| -> Result<Vec<Value>> {
        let path = output_path(out, src, kind);
        let (values, bad) = json_lines(&path)?;
        if bad > 0 {
            notes.push(format!(
                "{bad} lines of {} that are not JSON",
                path.display()
            ));
        }
        Ok(values)
    };
    let mut all: Vec<Detection> = read(OutKind::DetectionsJson)?
        .iter()
        .map(detection)
        .collect();
    let alerts = read(OutKind::Alerts)?;
    let dead = read(OutKind::DeadLetters)?;
    all.sort_by(|a, b| b.mean_abs_z.total_cmp(&a.mean_abs_z));
    let shown: Vec<&Detection> = all.iter().take(opts.max_points).collect();

    let mut html = String::new();
    let st = &run["stats"];
    let n = |k: &str| st[k].as_u64().unwrap_or(0).to_string();
    let users = st["users"].as_array().map_or(0, Vec::len);
    let mut by_stage: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        *by_stage
            .entry(d["stage"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let late = by_stage.get("rolling_window").copied().unwrap_or(0);
    let summary = vec![
        vec!["status".into(), esc(run["status"].as_str().unwrap_or("?"))],
        vec!["epochs".into(), run["epochs"].to_string()],
        vec!["events read".into(), n("rows")],
        vec!["users".into(), users.to_string()],
        vec!["models trained".into(), n("models_trained")],
        vec!["rows scored".into(), n("scored")],
        vec!["detections".into(), all.len().to_string()],
        vec![
            "alerts (after suppression)".into(),
            alerts.len().to_string(),
        ],
        vec!["dead letters".into(), dead.len().to_string()],
        vec!["late records".into(), late.to_string()],
        vec!["parity breaches".into(), n("parity_breaches")],
    ];
    let _ = write!(
        html,
        "<section><h2>Summary</h2>{}",
        table(&["", "value"], &summary)
    );
    if !by_stage.is_empty() {
        let rows: Vec<Vec<String>> = by_stage
            .iter()
            .map(|(s, c)| vec![esc(s), c.to_string()])
            .collect();
        let _ = write!(
            html,
            "<h3>Dead letters by stage</h3>{}",
            table(&["stage", "records"], &rows)
        );
    }
    html += "</section>";

    if all.len() > shown.len() {
        notes.push(format!(
            "{} detections in the run; the timeline and the detection table show the {} strongest",
            all.len(),
            shown.len()
        ));
    }
    let _ = write!(
        html,
        "<section><h2>Alert timeline</h2><p>One row per user with detections (most first), one point per detection; larger points score higher.</p>{}</section>",
        if shown.is_empty() {
            "<p>No detections.</p>".to_string()
        } else {
            timeline(&shown)
        }
    );

    // Score distributions.
    let (column, threshold) = opts.rule.cut();
    let scores_path = output_path(out, src, OutKind::ScoresCsv);
    let mut per_model: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let from_scores = scores_path.exists();
    if from_scores {
        // Streamed, three columns kept: a month of 2,000 users is over 100 MB of scores.
        let bad = |e: csv::Error| Error::stage("report", format!("{}: {e}", scores_path.display()));
        let mut r = csv::Reader::from_path(&scores_path).map_err(bad)?;
        let head = r.headers().map_err(bad)?.clone();
        let at = |k: &str| head.iter().position(|h| h == k);
        if let (Some(mi), Some(ui), Some(si)) = (at("model_version"), at("username"), at(column)) {
            let mut rec = csv::StringRecord::new();
            while r.read_record(&mut rec).map_err(bad)? {
                let (Some(m), Some(u), Some(Ok(s))) =
                    (rec.get(mi), rec.get(ui), rec.get(si).map(str::parse::<f64>))
                else {
                    continue;
                };
                let kind = if is_own_model(split_label(m).0, u) {
                    "(all user models)"
                } else {
                    "(generic model)"
                };
                per_model.entry(kind.to_string()).or_default().push(s);
                match per_model.get_mut(m) {
                    Some(v) => v.push(s),
                    None => {
                        per_model.insert(m.to_string(), vec![s]);
                    }
                }
            }
        }
    } else {
        notes.push(
            "the run wrote no scores file (--write-scores): distributions show detections only"
                .into(),
        );
        for d in &all {
            let s = if column == "calibrated_z" {
                d.calibrated_z
            } else {
                d.mean_abs_z
            };
            per_model.entry(d.model.clone()).or_default().push(s);
        }
    }
    let mut by_detections: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &all {
        *by_detections.entry(d.model.as_str()).or_default() += 1;
    }
    let mut models: Vec<&String> = per_model.keys().filter(|m| m.starts_with('(')).collect();
    let mut ranked: Vec<&String> = per_model.keys().filter(|m| !m.starts_with('(')).collect();
    ranked.sort_by_key(|m| std::cmp::Reverse(by_detections.get(m.as_str()).copied().unwrap_or(0)));
    if ranked.len() > 12 {
        notes.push(format!(
            "{} models scored; distributions are drawn for the 12 with the most detections",
            ranked.len()
        ));
    }
    models.extend(ranked.into_iter().take(12));
    let also = opts.rule.max_cut().map_or_else(String::new, |m| {
        format!(" Rows whose max_abs_z is above {m} are detections too, whatever their {column}.")
    });
    html += &format!(
        "<section><h2>Score distributions</h2><p>{column} per model (log scale), with the rule's threshold.{also}</p><div class=\"grid\">"
    );
    for (i, m) in models.iter().enumerate() {
        let _ = write!(
            html,
            "<figure><figcaption>{} ({} rows)</figcaption>{}</figure>",
            esc(m),
            per_model[*m].len(),
            histogram(&format!("dist{i}"), &per_model[*m], threshold)
        );
    }
    html += "</div></section>";

    // Leading features.
    let mut leading: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &all {
        if let Some(f) = d.top.first() {
            *leading.entry(f).or_default() += 1;
        }
    }
    let mut lead: Vec<(&str, usize)> = leading.into_iter().collect();
    lead.sort_by_key(|l| std::cmp::Reverse(l.1));
    let most = lead.first().map_or(1, |l| l.1).max(1) as f64;
    let mut bars = format!(
        "<svg class=\"chart\" id=\"features\" width=\"{W}\" height=\"{}\">",
        10 + 18 * lead.len()
    );
    for (i, (f, c)) in lead.iter().enumerate() {
        let y = 5 + 18 * i;
        let _ = write!(
            bars,
            "<text x=\"0\" y=\"{}\" class=\"lab\">{}</text><rect class=\"bar\" x=\"220\" y=\"{y}\" height=\"14\" width=\"{:.1}\"><title>{c}</title></rect><text x=\"{:.1}\" y=\"{}\" class=\"lab\">{c}</text>",
            y + 11,
            esc(f),
            (*c as f64 / most) * 600.0,
            226.0 + (*c as f64 / most) * 600.0,
            y + 11
        );
    }
    let _ = write!(
        html,
        "<section><h2>Leading features of detections</h2>{bars}</svg></section>"
    );

    // Alerts and detections.
    let alert_rows: Vec<Vec<String>> = alerts
        .iter()
        .take(opts.max_points)
        .map(|a| {
            let feats: Vec<&str> = a["features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            vec![
                esc(a["user"].as_str().unwrap_or("")),
                esc(a["first_time"].as_str().unwrap_or("")),
                esc(a["last_time"].as_str().unwrap_or("")),
                a["count"].to_string(),
                format!("{:.2}", a["max_mean_abs_z"].as_f64().unwrap_or(f64::NAN)),
                esc(&feats.join(", ")),
                esc(a["model_version"].as_str().unwrap_or("")),
            ]
        })
        .collect();
    if !alerts.is_empty() {
        section(
            &mut html,
            "Alerts",
            &table(
                &[
                    "user",
                    "first",
                    "last",
                    "detections",
                    "max mean_abs_z",
                    "features",
                    "model",
                ],
                &alert_rows,
            ),
        );
    }
    let det_rows: Vec<Vec<String>> = shown
        .iter()
        .map(|d| {
            let z: Vec<String> =
                d.z.iter()
                    .map(|(f, z)| format!("{} {z:.1}", esc(f)))
                    .collect();
            vec![
                esc(&d.user),
                esc(&d.ts),
                esc(&d.event_id),
                format!("{:.2}", d.mean_abs_z),
                format!("{:.2}", d.calibrated_z),
                esc(&d.top.join(", ")),
                z.join("<br>"),
                esc(&d.event.join("; ")),
                esc(&d.model),
            ]
        })
        .collect();
    section(
        &mut html,
        "Detections",
        &table(
            &[
                "user",
                "time",
                "event id",
                "mean_abs_z",
                "calibrated_z",
                "top features",
                "largest z-losses",
                "event",
                "model",
            ],
            &det_rows,
        ),
    );

    // Champion against challenger.
    let shadow = csv_rows(&output_path(out, src, OutKind::Shadow))?;
    if !shadow.is_empty() {
        let mut by: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for r in &shadow {
            let key = format!(
                "{}: {} vs {}",
                cell(r, "model"),
                cell(r, "champion_version"),
                cell(r, "challenger_version")
            );
            let e = by.entry(key).or_default();
            e.0 += 1;
            e.1 += usize::from(cell(r, "champion_alert") == "true");
            e.2 += usize::from(cell(r, "challenger_alert") == "true");
        }
        let rows: Vec<Vec<String>> = by
            .iter()
            .map(|(k, (n, a, b))| vec![esc(k), n.to_string(), a.to_string(), b.to_string()])
            .collect();
        section(
            &mut html,
            "Champion and challenger",
            &table(
                &[
                    "models",
                    "rows scored by both",
                    "champion alerts",
                    "challenger alerts",
                ],
                &rows,
            ),
        );
    }

    // Drift.
    let drift = csv_rows(&output_path(out, src, OutKind::Drift))?;
    if !drift.is_empty() {
        let drifted: Vec<Vec<String>> = drift
            .iter()
            .filter(|r| cell(r, "drifted") == "true")
            .take(opts.max_points)
            .map(|r| {
                ["epoch", "model", "feature", "rows", "psi", "js", "ks"]
                    .iter()
                    .map(|k| esc(cell(r, k)))
                    .collect()
            })
            .collect();
        let _ = write!(
            html,
            "<section><h2>Drift per feature</h2><p>PSI over all models per epoch; the line marks 0.2.</p>{}<h3>Drifted</h3>{}</section>",
            drift_chart(&drift),
            table(
                &["epoch", "model", "feature", "rows", "psi", "js", "ks"],
                &drifted
            )
        );
    }

    // Feedback.
    let fb = crate::feedback::report(out, src)?;
    if fb.overall.judged > 0 {
        let rows: Vec<Vec<String>> = std::iter::once(("all".to_string(), &fb.overall))
            .chain(fb.by_kind.iter().map(|(k, p)| (format!("{k} models"), p)))
            .chain(
                fb.by_pattern
                    .iter()
                    .map(|(k, p)| (format!("pattern {k}"), p)),
            )
            .map(|(k, p)| {
                vec![
                    esc(&k),
                    p.judged.to_string(),
                    p.true_positive.to_string(),
                    p.precision.map_or_else(String::new, |x| format!("{x:.3}")),
                ]
            })
            .collect();
        section(
            &mut html,
            "Analysts' precision",
            &table(&["", "judged", "true positives", "precision"], &rows),
        );
    }

    // Parity.
    let parity = csv_rows(&output_path(out, src, OutKind::Parity))?;
    if !parity.is_empty() {
        let rows: Vec<Vec<String>> = parity
            .iter()
            .filter(|r| cell(r, "flagged") == "true" || cell(r, "group") == "(all)")
            .take(opts.max_points)
            .map(|r| {
                [
                    "epoch",
                    "group_field",
                    "group",
                    "rows",
                    "alerts",
                    "alert_rate",
                    "ratio",
                    "flagged",
                ]
                .iter()
                .map(|k| esc(cell(r, k)))
                .collect()
            })
            .collect();
        section(
            &mut html,
            "Alert-rate parity",
            &table(
                &[
                    "epoch", "field", "group", "rows", "alerts", "rate", "ratio", "flagged",
                ],
                &rows,
            ),
        );
    }

    let left_out = if notes.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"note\">Left out: {}.</p>",
            esc(&notes.join("; "))
        )
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>dfp report: {src}</title><style>{STYLE}</style>\
         <script>window.onerror=function(){{document.documentElement.dataset.errors=(+(document.documentElement.dataset.errors||0))+1;}};</script>\
         </head><body><h1>dfp report: {src}</h1><p>{}</p>{left_out}{html}<script>{SCRIPT}</script></body></html>",
        esc(&out.display().to_string()),
        src = esc(src),
    );
    Ok(Report {
        html: page,
        timeline_points: shown.len(),
        detections: all.len(),
    })
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:22px}\
section{margin:28px 0}table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}\
th{background:#eee;cursor:pointer}.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figcaption{font-size:12px}\
.pt{fill:#c0392b;fill-opacity:.6}.bar{fill:#2e86c1}.threshold{stroke:#c0392b;stroke-dasharray:4 3}.lab{font-size:11px}\
.note{color:#a04000}svg.chart{background:#fafafa;border:1px solid #ddd}";

const SCRIPT: &str = "document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){\
var tb=th.closest('table').tBodies[0];var rows=Array.from(tb.rows);var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';\
rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent,nx=parseFloat(x),ny=parseFloat(y);\
var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});rows.forEach(function(r){tb.appendChild(r);});});});\
var drawn=Array.from(document.querySelectorAll('svg.chart')).filter(function(s){return s.childElementCount>0;}).length;\
document.documentElement.dataset.charts=String(drawn);\
document.documentElement.dataset.points=String(document.querySelectorAll('#timeline circle.pt').length);\
document.documentElement.dataset.ready='1';";
