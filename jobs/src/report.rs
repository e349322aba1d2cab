//! `dfp report`: writes the HTML report of a run's output directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use dfp_operators::filter_detections::Rule;
use dfp_operators::report::{ReportOptions, render};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run's output directory.
    #[arg(long, default_value = "output")]
    output: PathBuf,
    /// The source (default: the one whose detections the output directory holds).
    #[arg(long)]
    source: Option<String>,
    /// Where to write the page (default: OUTPUT/dfp_report_{source}.html).
    #[arg(long)]
    to: Option<PathBuf>,
    /// The run's stage settings, for the detection rule's threshold (default: dfp's).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Most points per chart and rows per table.
    #[arg(long, default_value_t = 2000)]
    max_points: usize,
}

/// Writes the report of `output` for `source` to `to` (default: beside the outputs) with the
/// run's detection `rule`; returns the path.
pub fn write(
    output: &Path,
    source: &str,
    to: Option<&Path>,
    rule: Rule,
    max_points: usize,
) -> Result<PathBuf> {
    let report = render(&ReportOptions {
        output: output.to_path_buf(),
        source: source.to_string(),
        rule,
        max_points,
    })?;
    let path = to.map_or_else(
        || output.join(format!("dfp_report_{source}.html")),
        Path::to_path_buf,
    );
    std::fs::write(&path, report.html).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `dfp report`.
pub fn report(args: ReportArgs) -> Result<ExitCode> {
    let source = match &args.source {
        Some(s) => s.clone(),
        None => crate::feedback::source_of(&args.output)?,
    };
    let cfg = crate::run::run_config(args.config.as_deref())?;
    let rule = Rule::of(&cfg.detection);
    let path = write(
        &args.output,
        &source,
        args.to.as_deref(),
        rule,
        args.max_points,
    )?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
