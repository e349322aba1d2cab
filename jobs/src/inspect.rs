//! The commands that look without running: `dfp validate` (control messages, schemas, run
//! configs), `dfp plan` (a control message's files and batches), `dfp ingest` (log files read
//! by a schema) and `dfp models` (the registry: list and show its versions, the two commands
//! that change it, promote and rollback, and the push of an MLflow registry's local copy).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::AsArray;
use clap::Subcommand;
use dfp_engine::control::{ControlMessage, FileScope, expand_globs};
use dfp_engine::ingest::{DeadLetterWriter, InputFormat, Reader};
use dfp_engine::registry::Registry;
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::RunConfig;
use dfp_operators::mlflow::{Client, Syncer};
use dfp_operators::plan::Plan;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// One line per model: name, versions, champion and challenger, and the serving version's
    /// training window and rows.
    List,
    /// A model version's tags as JSON: training window, rows, hyperparameters, metrics, lineage,
    /// the aliases it holds and the changes that concerned it.
    Show {
        /// The model name, e.g. DFP-azure-alice@example.com.
        name: String,
        /// The version (default: the latest).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Makes a version the champion (it scores from the next run on); the champion it replaces
    /// can be rolled back to.
    Promote {
        /// The model name.
        name: String,
        /// The version to promote.
        #[arg(long)]
        version: u32,
        /// Why, for the record.
        #[arg(long, default_value = "promoted by hand")]
        why: String,
    },
    /// How each challenger compared with its champion in a run's shadow scores: rows, agreement,
    /// both alert rates, both median scores and the KS statistic between their scores.
    Shadow {
        /// The run's output directory.
        #[arg(long, default_value = "output")]
        output: std::path::PathBuf,
        /// The source whose shadow file to read (dfp_shadow_{source}.csv).
        #[arg(long, default_value = "azure")]
        source: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Puts back the champion the current one replaced; the current one is kept, marked rolled
    /// back.
    Rollback {
        /// The model name.
        name: String,
        /// Why, for the record.
        #[arg(long, default_value = "rolled back by hand")]
        why: String,
    },
    /// Pushes the local copy of an MLflow registry (--registry mlflow+http://HOST:PORT) to the
    /// server: every version, alias and rollback mark it lacks, trying again with backoff for
    /// --mlflow-flush seconds; exits 1 naming what is left.
    Sync,
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Source schema: a built-in name (azure, duo) or a TOML file.
    #[arg(long)]
    source: String,
    /// Input files or glob patterns.
    #[arg(long, required = true, num_args = 1..)]
    files: Vec<String>,
    /// Input layout: auto, json (array), jsonl or csv.
    #[arg(long, default_value = "auto")]
    format: InputFormat,
    /// Reader threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where rejected records and broken files are written, as NDJSON.
    #[arg(long, default_value = "dfp_dead_letter.ndjson")]
    dead_letter: PathBuf,
}

/// `dfp models`.
/// `dfp models shadow`: each challenger against its champion, from a run's shadow file.
fn shadow(output: &Path, source: &str, json: bool) -> Result<ExitCode> {
    let path = output.join(format!("dfp_shadow_{source}.csv"));
    let rows = dfp_operators::shadow::compare(&path)?;
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<48} {:>8} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>6}",
            "model",
            "champion",
            "challenger",
            "rows",
            "agreement",
            "alerts",
            "alerts'",
            "median",
            "ks"
        );
        for r in &rows {
            println!(
                "{:<48} {:>8} {:>10} {:>6} {:>9.4} {:>9.4} {:>9.4} {:>9.3} {:>6.3}",
                r.model.escape_debug().to_string(),
                r.champion.escape_debug().to_string(),
                r.challenger.escape_debug().to_string(),
                r.rows,
                r.agreement,
                r.champion_alert_rate,
                r.challenger_alert_rate,
                r.challenger_median - r.champion_median,
                r.ks
            );
        }
        println!(
            "(alerts: the champion's alert rate, alerts': the challenger's; median: the challenger's median mean_abs_z less the champion's)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn models(args: &crate::run::RegistryArgs, action: ModelsCommand) -> Result<ExitCode> {
    let spec = args.spec()?;
    let root = spec.local.as_path();
    // With MLflow: the models changed here are pushed before the command returns.
    let push = |names: BTreeSet<String>| -> Result<ExitCode> {
        let Some(uri) = &spec.mlflow else {
            return Ok(ExitCode::SUCCESS);
        };
        let client = Client::new(uri, Duration::from_secs(30))?;
        let mut syncer = Syncer::new(Registry::open(root)?, client);
        let deadline = Instant::now() + args.flush();
        let (pushed, left) = if names.is_empty() {
            syncer.sync_all(deadline)?
        } else {
            syncer.sync_until(names, deadline)
        };
        println!(
            "MLflow {}: {} versions and {} alias updates pushed",
            syncer.client().base(),
            pushed.versions,
            pushed.aliases
        );
        for (model, error) in &left {
            eprintln!(
                "error: {} not pushed to MLflow (kept in {}; `dfp models sync` tries again): {error}",
                model.escape_debug(),
                root.display()
            );
        }
        Ok(if left.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    };
    let open = || -> Result<dfp_engine::registry::Registry> {
        if !root.is_dir() {
            anyhow::bail!("no model registry at {}", root.display());
        }
        Ok(dfp_engine::registry::Registry::open(root)?)
    };
    match action {
        ModelsCommand::Shadow {
            output,
            source,
            json,
        } => return shadow(&output, &source, json),
        ModelsCommand::List => {
            let registry = open()?;
            let time = |us: Option<i64>| {
                us.and_then(chrono::DateTime::from_timestamp_micros)
                    .map_or("-".to_string(), |t| {
                        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                    })
            };
            println!(
                "{:<48} {:>8} {:>8} {:>10} {:>6}  training window",
                "model", "versions", "champion", "challenger", "rows"
            );
            let mut unreadable = 0;
            let alias = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
            for (name, versions) in registry.list()? {
                // Names are user ids: shown escaped, so no control character reaches the terminal.
                let shown = name.escape_debug().to_string();
                let aliases = |e: dfp_engine::Error| format!("aliases: {}", e.chain());
                let read = registry.lifecycle(&name).map_err(aliases).and_then(|l| {
                    let serving = registry
                        .serving_in(&name, &l)
                        .map_err(aliases)?
                        .unwrap_or(0);
                    let v = registry
                        .version(&name, serving)
                        .map_err(|e| format!("v{serving:06}: {}", e.chain()))?;
                    Ok((l, v))
                });
                match read {
                    Ok((l, v)) => println!(
                        "{:<48} {:>8} {:>8} {:>10} {:>6}  {} .. {}",
                        shown,
                        versions.len(),
                        alias(l.champion()),
                        alias(l.challenger()),
                        v.header.rows,
                        time(v.header.first_timestamp_us),
                        time(v.header.last_timestamp_us)
                    ),
                    Err(e) => {
                        unreadable += 1;
                        println!(
                            "{:<48} {:>8} {:>8} {:>10} {:>6}  unreadable {}",
                            shown,
                            versions.len(),
                            "-",
                            "-",
                            "-",
                            e.escape_debug()
                        );
                    }
                }
            }
            if unreadable > 0 {
                eprintln!(
                    "error: {unreadable} model(s) have an unreadable serving version or aliases"
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        ModelsCommand::Show { name, version } => {
            let registry = open()?;
            let version = match version {
                Some(v) => v,
                None => *registry
                    .version_numbers(&name)?
                    .last()
                    .with_context(|| format!("no model {name:?} in {}", root.display()))?,
            };
            let v = registry.version(&name, version)?;
            let lifecycle = registry.lifecycle(&name)?;
            let mut shown = serde_json::to_value(&v)?;
            let aliases: Vec<&String> = lifecycle
                .aliases
                .iter()
                .filter(|(_, a)| **a == version)
                .map(|(k, _)| k)
                .collect();
            let changes: Vec<_> = lifecycle
                .history
                .iter()
                .filter(|c| c.version == version || c.replaced == Some(version))
                .collect();
            shown["aliases"] = serde_json::json!(aliases);
            shown["rolled_back"] = serde_json::json!(lifecycle.rolled_back.contains(&version));
            shown["changes"] = serde_json::to_value(changes)?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        ModelsCommand::Promote { name, version, why } => {
            let registry = open()?;
            let replaced = registry.promote(&name, version, "cli", &why)?;
            let was = replaced.map_or("none".to_string(), |v| v.to_string());
            println!(
                "{}: version {version} is the champion (was {was})",
                name.escape_debug()
            );
            return push(BTreeSet::from([name]));
        }
        ModelsCommand::Rollback { name, why } => {
            let registry = open()?;
            let (from, to) = registry.rollback(&name, "cli", &why)?;
            println!(
                "{}: rolled back from version {from} to version {to} (version {from} is kept, marked rolled back)",
                name.escape_debug()
            );
            return push(BTreeSet::from([name]));
        }
        ModelsCommand::Sync => {
            if spec.mlflow.is_none() {
                anyhow::bail!(
                    "dfp models sync pushes to MLflow: give --registry mlflow+http://HOST:PORT \
                     (and --registry-cache DIR, the local copy)"
                );
            }
            open()?;
            return push(BTreeSet::new());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The text of a file to validate: a file that is not UTF-8 is an error saying where.
fn validate_text(path: &Path) -> Result<String, dfp_engine::Error> {
    let bytes = std::fs::read(path).map_err(|e| dfp_engine::Error::io(path, "reading", e))?;
    String::from_utf8(bytes).map_err(|e| dfp_engine::Error::Invalid {
        origin: path.display().to_string(),
        problems: vec![dfp_engine::config::Problem {
            path: String::new(),
            message: format!(
                "not UTF-8 text: invalid byte at offset {}",
                e.utf8_error().valid_up_to()
            ),
        }],
    })
}

/// What a file to validate holds.
fn validate_one(path: &Path, strict: bool) -> Result<String, dfp_engine::Error> {
    let text = validate_text(path)?;
    let origin = path.display().to_string();
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            // A source schema names its source; anything else is a run config. A file that is
            // not TOML at all is reported as such, with the parser's location.
            let table: toml::Table = dfp_engine::config::parse_toml(&text, &origin)?;
            if table.contains_key("name") {
                let s = SourceSchema::from_toml(&text, &origin)?;
                Ok(format!(
                    "valid source schema {:?} ({} columns, {} features)",
                    s.name,
                    s.columns.len(),
                    s.features.categorical.len()
                        + s.features.binary.len()
                        + s.features.numeric.len()
                ))
            } else {
                RunConfig::from_toml(&text, &origin)?;
                Ok("valid run configuration".to_string())
            }
        }
        _ => {
            let m = ControlMessage::parse_with(&text, &origin, strict)?;
            m.warn_ignored(&origin);
            let tasks: Vec<String> = m
                .inputs
                .iter()
                .map(|i| {
                    let what = match (i.trains(), i.infers()) {
                        (true, true) => "training+inference",
                        (true, false) => "training",
                        (false, true) => "inference",
                        (false, false) => "load only",
                    };
                    format!("{what} ({:?})", i.metadata.data_type).to_lowercase()
                })
                .collect();
            Ok(format!(
                "valid control message: {} input(s): {}",
                m.inputs.len(),
                tasks.join(", ")
            ))
        }
    }
}

/// `dfp validate`: every file's problems, exit 1 if any.
pub fn validate(files: &[PathBuf], strict: bool) -> ExitCode {
    let mut ok = true;
    for f in files {
        match validate_one(f, strict) {
            Ok(summary) => println!("{}: {summary}", f.display()),
            Err(dfp_engine::Error::Invalid { origin, problems }) => {
                ok = false;
                for p in problems {
                    println!("{origin}: {p}");
                }
            }
            Err(e) => {
                ok = false;
                println!("{}: {}", f.display(), e.chain());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `dfp ingest`.
pub fn ingest(args: IngestArgs) -> Result<ExitCode> {
    let schema = Arc::new(SourceSchema::resolve(&args.source)?);
    let (files, unmatched) =
        expand_globs(args.files.iter().map(String::as_str), &FileScope::at(""))?;
    for pattern in unmatched {
        tracing::warn!(pattern = %pattern, "pattern matches no file");
    }
    if files.is_empty() {
        bail!("no input file matches {:?}", args.files);
    }
    let dead_letter = args.dead_letter.canonicalize().ok();
    if let Some(input) = files.iter().find(|f| {
        f.canonicalize()
            .ok()
            .is_some_and(|f| Some(f) == dead_letter)
    }) {
        bail!(
            "--dead-letter {} is one of the input files ({}): it would be emptied before it is read",
            args.dead_letter.display(),
            input.display()
        );
    }
    let reader = Reader::new(schema);
    let started = Instant::now();
    let reads = reader.read_files(&files, args.format, args.threads);
    let secs = started.elapsed().as_secs_f64();
    let mut dead = DeadLetterWriter::create(&args.dead_letter)?;
    let (mut rows, mut bytes, mut rejected, mut broken) = (0usize, 0u64, 0usize, 0usize);
    let mut users = std::collections::BTreeSet::new();
    for r in &reads {
        dead.write_read(r)?;
        rows += r.batch.num_rows();
        bytes += r.bytes;
        rejected += r.rejected.len();
        broken += usize::from(r.broken.is_some());
        if let Some(names) = r.batch.column(1).as_string_opt::<i32>() {
            users.extend(names.iter().flatten().map(str::to_string));
        }
    }
    dead.flush()?;
    println!(
        "{}",
        serde_json::json!({
            "source": reader.schema().name,
            "files": reads.len(),
            "broken_files": broken,
            "rows": rows,
            "users": users.len(),
            "rejected": rejected,
            "dead_letter": args.dead_letter.display().to_string(),
            "seconds": secs,
            "records_per_s": rows as f64 / secs.max(1e-9),
            "mb_per_s": bytes as f64 / 1e6 / secs.max(1e-9),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// `dfp plan`.
pub fn plan(path: &Path, args: &crate::run::ScopeArgs) -> Result<ExitCode> {
    let msg = ControlMessage::from_file(path, args.strict)?;
    msg.warn_ignored(&path.display().to_string());
    let scope = FileScope::for_message(&msg, path, args.files_root.as_deref(), &args.allow_roots);
    // The plan `dfp run` makes of the same message.
    let plan = Plan::build(&msg, &scope)?;
    println!("load globs resolve against {}", scope.base.display());
    for u in &plan.unmatched {
        tracing::warn!(pattern = %u, "pattern matches no file");
    }
    for (i, input) in msg.inputs.iter().enumerate() {
        let epochs: Vec<_> = plan.epochs.iter().filter(|e| e.input == i).collect();
        println!(
            "input {i}: train={} infer={} data_type={:?}: {} files, {} batches",
            input.trains(),
            input.infers(),
            input.metadata.data_type,
            epochs.iter().map(|e| e.files.len()).sum::<usize>(),
            epochs.len()
        );
        for e in &epochs {
            println!(
                "  batch {}/{} {} .. {}: {} files (n_groups {})",
                e.batch + 1,
                epochs.len(),
                e.period_start.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.period_end.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.files.len(),
                e.n_groups
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
