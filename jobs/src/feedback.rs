//! `dfp feedback`: an analyst's verdict on a detection, by its `detection_id`, recorded beside
//! the run's outputs (`dfp_operators::feedback`), and the precision report of the verdicts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use dfp_operators::feedback::{self, Label, Precision, Recorded, Verdict};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["detection", "report"])))]
pub struct FeedbackArgs {
    /// The run's output directory (its detections, and where verdicts are kept).
    #[arg(long, default_value = "output")]
    output: PathBuf,
    /// The source (default: the one whose detections the output directory holds).
    #[arg(long)]
    source: Option<String>,
    /// The detection judged: its `detection_id`.
    #[arg(long, requires = "label")]
    detection: Option<String>,
    /// The verdict: true_positive, false_positive or benign.
    #[arg(long)]
    label: Option<Label>,
    /// Free text kept with the verdict.
    #[arg(long, default_value = "")]
    note: String,
    /// Who gives the verdict (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// With a benign or false_positive verdict: silence the detection's pattern (its two
    /// leading features) for its user for this many days of event time from it, in this and
    /// later runs that use --registry.
    #[arg(long, value_name = "DAYS", requires = "detection", value_parser = clap::value_parser!(u32).range(1..=3650))]
    suppress_for: Option<u32>,
    /// The model registry whose runs the suppression rule applies to.
    #[arg(long, default_value = "models")]
    registry: PathBuf,
    /// Print the precision of the verdicts recorded so far instead.
    #[arg(long)]
    report: bool,
    /// With --report: the report as one JSON object.
    #[arg(long, requires = "report")]
    json: bool,
}

/// The source whose detections `output` holds, when there is exactly one.
pub(crate) fn source_of(output: &Path) -> Result<String> {
    let entries = std::fs::read_dir(output)
        .with_context(|| format!("no run output at {}", output.display()))?;
    let mut sources: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some(
                name.strip_prefix("dfp_detections_")?
                    .strip_suffix(".jsonl")?
                    .to_string(),
            )
        })
        .collect();
    sources.sort();
    match sources.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{} holds no detections file (dfp_detections_{{source}}.jsonl)",
            output.display()
        ),
        many => bail!(
            "{} holds the detections of {}: say which with --source",
            output.display(),
            many.join(", ")
        ),
    }
}

pub fn feedback(args: FeedbackArgs) -> Result<ExitCode> {
    let source = match &args.source {
        Some(s) => s.clone(),
        None => source_of(&args.output)?,
    };
    if args.report {
        return report(&args.output, &source, args.json);
    }
    let (Some(id), Some(label)) = (args.detection, args.label) else {
        bail!("give --detection ID --label VERDICT, or --report");
    };
    let verdict = Verdict {
        detection_id: id.clone(),
        label,
        by: args
            .by
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "cli".to_string()),
        note: args.note,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    if args.suppress_for.is_some() && label == Label::TruePositive {
        bail!("a true positive is not silenced: --suppress-for goes with benign or false_positive");
    }
    let mut journal = feedback::Journal::open(&args.output, &source)?;
    let recorded = journal.record(&verdict)?;
    if let (Some(days), false) = (args.suppress_for, matches!(recorded, Recorded::Unknown(_))) {
        let judged = journal
            .detection(id.trim())?
            .with_context(|| format!("detection {id} is gone from {}", args.output.display()))?;
        let rule = feedback::suppress(&args.registry, &verdict, &judged, days)?;
        println!(
            "{}: pattern {} silenced for {days} days from {} (rule in {})",
            rule.user.escape_debug(),
            rule.pattern,
            judged.timestamp,
            feedback::suppressions_path(&args.registry).display()
        );
    }
    match recorded {
        Recorded::New(d) => {
            println!(
                "{id}: {} ({} at {}, {}, top features {})",
                label.as_str(),
                d.username.escape_debug(),
                d.timestamp,
                d.model_version.escape_debug(),
                d.top_features.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Recorded::Duplicate => {
            eprintln!(
                "warning: {id} already has the verdict {}: not recorded twice",
                label.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Recorded::Changed(old) => {
            println!(
                "{id}: {} (was {}; the latest verdict counts)",
                label.as_str(),
                old.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Recorded::Unknown(kept) => {
            eprintln!(
                "error: no detection {id} in {}'s {source} detections; the verdict is kept in {}",
                args.output.display(),
                kept.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn report(output: &Path, source: &str, json: bool) -> Result<ExitCode> {
    let r = feedback::report(output, source)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |what: &str, p: &Precision| {
        let precision = p.precision.map_or("-".to_string(), |x| format!("{x:.3}"));
        println!(
            "{:<56} {:>6} {:>6} {:>6} {:>6} {:>9}",
            what.escape_debug().to_string(),
            p.judged,
            p.true_positive,
            p.false_positive,
            p.benign,
            precision
        );
    };
    println!(
        "{:<56} {:>6} {:>6} {:>6} {:>6} {:>9}",
        "", "judged", "tp", "fp", "benign", "precision"
    );
    line("all", &r.overall);
    for (title, groups) in [
        ("model kind", &r.by_kind),
        ("day", &r.by_day),
        ("feature pattern", &r.by_pattern),
        ("model", &r.by_model),
    ] {
        for (k, p) in groups {
            line(&format!("{title} {k}"), p);
        }
    }
    for c in &r.challenges {
        line(
            &format!("{} champion v{}", c.model, c.champion),
            &c.champion_precision,
        );
        line(
            &format!("{} challenger v{}", c.model, c.challenger),
            &c.challenger_precision,
        );
    }
    Ok(ExitCode::SUCCESS)
}
