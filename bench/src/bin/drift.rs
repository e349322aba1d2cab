//! Drift statistics against Evidently: dfp's PSI, Jensen-Shannon distance and KS statistic
//! (`dfp_engine::model::drift`, as `[drift]` computes them per feature) and Evidently 0.7's
//! stat tests (bench/peers/evidently_drift.py; KS from scipy) on the same synthetic reference
//! and current columns: numeric ones unchanged, shifted a little and a lot, rescaled, and a
//! discrete hour of day moved by three hours; categorical ones unchanged, with a new value,
//! and reweighted.
//!
//! Evidently bins a numeric column with more than 20 distinct reference values in Sturges'
//! equal-width bins over reference and current together; dfp bins the reference's CDF
//! positions in deciles (so that many users' models add up). The comparison is therefore made
//! twice: Evidently's own PSI/JS (same data, its binning: the drifted/not-drifted verdicts at
//! PSI 0.2 should agree), and Evidently's PSI/JS on the deciles of dfp's positions (same
//! binning: the values should agree to rounding). Categorical columns are binned alike by both.
//!
//!   cargo run --release -p dfp-bench --bin drift -- [--reference 5000] [--current 2000]
//!       [--seed 7]
//!
//! The peer's venv is created on first use by bench/peers/setup_evidently.sh under target/.
//! Output: stdout and target/bench/drift.json.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, bail};
use dfp_bench::{arg, bench_dir, python_peer, repo_root, write_report};
use dfp_engine::model::drift::{FeatureRef, Reference, Values};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// PSI from which a feature counts as drifted (dfp's `[drift] psi` default).
const PSI: f64 = 0.2;

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn pick<'a>(rng: &mut ChaCha8Rng, weights: &[(&'a str, f64)]) -> &'a str {
    let total: f64 = weights.iter().map(|w| w.1).sum();
    let mut x = rng.random::<f64>() * total;
    for (v, w) in weights {
        if x < *w {
            return v;
        }
        x -= w;
    }
    weights[weights.len() - 1].0
}

/// The cases: name, reference values, current values.
fn cases(n_ref: usize, n_cur: usize, seed: u64) -> Vec<(&'static str, Values, Values)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut num = |n: usize, mean: f64, sd: f64| -> Values {
        Values::Numeric((0..n).map(|_| mean + sd * normal(&mut rng)).collect())
    };
    // Reference N(0, 1); current N(mean, sd).
    let numeric = [
        ("numeric_unchanged", 0.0, 1.0),
        ("numeric_shift_0.1sd", 0.1, 1.0),
        ("numeric_shift_0.5sd", 0.5, 1.0),
        ("numeric_scale_2x", 0.0, 2.0),
    ];
    let mut out: Vec<(&str, Values, Values)> = numeric
        .into_iter()
        .map(|(name, mean, sd)| (name, num(n_ref, 0.0, 1.0), num(n_cur, mean, sd)))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 1);
    let mut hours = |n: usize, shift: f64| -> Values {
        Values::Numeric(
            (0..n)
                .map(|_| ((9.0 + shift + 2.5 * normal(&mut rng)).round()).rem_euclid(24.0))
                .collect(),
        )
    };
    out.push(("hour_unchanged", hours(n_ref, 0.0), hours(n_cur, 0.0)));
    out.push(("hour_plus_3h", hours(n_ref, 0.0), hours(n_cur, 3.0)));
    let browsers = [
        ("Chrome", 0.5),
        ("Edge", 0.25),
        ("Safari", 0.15),
        ("Firefox", 0.1),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 2);
    let mut cat = |n: usize, w: &[(&str, f64)]| -> Values {
        Values::Text((0..n).map(|_| pick(&mut rng, w).to_string()).collect())
    };
    let with_new = [
        ("Chrome", 0.4),
        ("Edge", 0.2),
        ("Safari", 0.12),
        ("Firefox", 0.08),
        ("Brave", 0.2),
    ];
    let reweighted = [
        ("Chrome", 0.35),
        ("Edge", 0.35),
        ("Safari", 0.15),
        ("Firefox", 0.15),
    ];
    out.push((
        "browser_unchanged",
        cat(n_ref, &browsers),
        cat(n_cur, &browsers),
    ));
    out.push((
        "browser_new_value",
        cat(n_ref, &browsers),
        cat(n_cur, &with_new),
    ));
    out.push((
        "browser_reweighted",
        cat(n_ref, &browsers),
        cat(n_cur, &reweighted),
    ));
    out
}

/// The cells of one column.
fn cells(v: &Values) -> Vec<String> {
    match v {
        Values::Numeric(x) => x.iter().map(|x| format!("{x}")).collect(),
        Values::Text(t) => t.clone(),
    }
}

/// Writes `columns` (name, cells) to `path` as CSV; columns may differ in length only by
/// being empty (the positions files have numeric columns only).
fn write_csv(path: &std::path::Path, columns: &[(&str, Vec<String>)]) -> Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(columns.iter().map(|c| c.0))?;
    let rows = columns.first().map_or(0, |c| c.1.len());
    for r in 0..rows {
        w.write_record(columns.iter().map(|c| c.1[r].as_str()))?;
    }
    w.flush()?;
    Ok(())
}

fn main() -> Result<()> {
    let n_ref: usize = arg("--reference", 5000)?;
    let n_cur: usize = arg("--current", 2000)?;
    let seed: u64 = arg("--seed", 7)?;
    let cases = cases(n_ref, n_cur, seed);
    let dir = tempfile::tempdir()?;
    // dfp's statistics, and each numeric value's position in the reference's CDF (the middle
    // of [F(x-), F(x)]) for Evidently's decile comparison.
    let mut dfp = BTreeMap::new();
    let (mut reference, mut current, mut ref_pos, mut cur_pos) = (vec![], vec![], vec![], vec![]);
    for (name, r, c) in &cases {
        let model = Reference::of(std::slice::from_ref(r));
        let tally = model.tally("", std::slice::from_ref(c))[0]
            .clone()
            .context("a tally")?;
        dfp.insert(*name, tally.statistics(10));
        reference.push((*name, cells(r)));
        current.push((*name, cells(c)));
        if let (FeatureRef::Numeric(cdf), Values::Numeric(rv), Values::Numeric(cv)) =
            (&model.features[0], r, c)
        {
            let pos = |x: &Vec<f64>| -> Vec<String> {
                x.iter()
                    .map(|&x| {
                        let (a, b) = cdf.range(x);
                        format!("{}", (a + b) / 2.0)
                    })
                    .collect()
            };
            ref_pos.push((*name, pos(rv)));
            cur_pos.push((*name, pos(cv)));
        }
    }
    write_csv(&dir.path().join("reference.csv"), &reference)?;
    write_csv(&dir.path().join("current.csv"), &current)?;
    write_csv(&dir.path().join("reference_positions.csv"), &ref_pos)?;
    write_csv(&dir.path().join("current_positions.csv"), &cur_pos)?;
    let python = python_peer("evidently")?;
    let run = Command::new(python)
        .arg(repo_root().join("bench/peers/evidently_drift.py"))
        .arg(dir.path())
        .output()?;
    if !run.status.success() {
        bail!("evidently: {}", String::from_utf8_lossy(&run.stderr));
    }
    let peer: Value = serde_json::from_slice(&run.stdout)?;
    let mut rows = Vec::new();
    let (mut agree, mut max_gap) = (0, 0.0f64);
    for (name, _, _) in &cases {
        let d = dfp[name];
        let e = &peer["features"][name];
        let f = |k: &str| e[k].as_f64();
        // Same binning: the deciles of dfp's positions for numerics, the values for categoricals.
        let (psi_same, js_same) = match d.ks {
            Some(_) => (f("psi_deciles"), f("js_deciles")),
            None => (f("psi"), f("js")),
        };
        let gap = [(psi_same, d.psi), (js_same, d.js)]
            .iter()
            .filter_map(|(e, d)| e.map(|e| (e - d).abs()))
            .fold(0.0, f64::max);
        max_gap = max_gap.max(gap);
        let verdict = |psi: Option<f64>| psi.map(|p| p >= PSI);
        let same_verdict = verdict(f("psi")) == Some(d.psi >= PSI);
        agree += usize::from(same_verdict);
        rows.push(json!({
            "feature": name,
            "dfp": { "psi": d.psi, "js": d.js, "ks": d.ks, "drifted": d.psi >= PSI },
            "evidently_same_binning": { "psi": psi_same, "js": js_same },
            "evidently_own_binning": { "psi": f("psi"), "js": f("js"),
                                       "drifted": verdict(f("psi")) },
            "scipy_ks": f("ks"),
            "largest_gap_same_binning": gap,
            "verdicts_agree": same_verdict,
        }));
    }
    let report = json!({
        "workload": "drift statistics, dfp vs Evidently",
        "reference_rows": n_ref,
        "current_rows": n_cur,
        "seed": seed,
        "evidently_version": peer["evidently_version"],
        "psi_threshold": PSI,
        "verdicts_agree": format!("{agree} of {}", cases.len()),
        "largest_gap_same_binning": max_gap,
        "features": rows,
        "evidently_notes": peer["notes"],
    });
    write_report("drift", &report)?;
    eprintln!("wrote {}", bench_dir().join("drift.json").display());
    Ok(())
}
