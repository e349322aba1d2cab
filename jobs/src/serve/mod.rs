//! `dfp serve`: online scoring over NATS request/reply. Each instance answers the subject
//! `dfp.score.{source}` in the queue group `dfp-serve-{source}` (several instances share the
//! load) through NATS' service API (so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer too).
//! A request's body is a JSON array of raw log records (as Morpheus' files hold them) or JSON
//! lines; its header `Dfp-Request-Id` makes a retry idempotent. The reply says per record the
//! model version, `mean_abs_z`, `max_abs_z`, the per-feature z-losses, `top_features` and
//! whether it would alert, or what is wrong with it (see `dfp_operators::online`).
//!
//! State: each user's inference window and the answers of its last requests live in the
//! JetStream stream `dfp-serve-{source}`, as a chain of snapshots and per-request changes
//! appended with a compare-and-set (`state`): whichever instance answers, and after an
//! instance dies, a user's next request starts from the state the last applied request left,
//! and a retried request id is answered from that state without being applied twice. An
//! instance applies one request per user at a time (lock stripes) and keeps the states it
//! wrote last (`--cache-users`): when another instance extended a state since, the append
//! fails, the state is read again (its snapshot and the changes after it) and that user's
//! rows are scored again. Cost per request: one append per user in it (a few hundred bytes a
//! record). All users of a request are scored in one backend call.
//!
//! Events: every detection is published on `dfp.events.detection.{source}` (the record's
//! answer object, at least once: again when a retried request is answered again), and every
//! change of a model's champion or challenger found in the registry (read again every
//! `--reload-every`; with MLflow, pulled from it: `models`) on `dfp.events.model.{source}` (`model`, `role`, `version`, `previous`;
//! every instance announces it); each event's `Nats-Msg-Id` header is the same for its copies,
//! so a JetStream stream on the subjects keeps one. With `--http`, the admin API (`admin`)
//! serves health, readiness, metrics, models, promotions, feedback, recent detections and
//! scoring, by role. SIGTERM or Ctrl-C drains: no new request is taken, those already
//! received are answered, then the process exits 0.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::service::{Request, ServiceExt};
use dfp_engine::registry::Registry;
use dfp_engine::rows::Row;
use dfp_engine::schema::SourceSchema;
use dfp_operators::online::{Answer, Online, reply};
use futures_util::StreamExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use dfp_operators::config::RunConfig;

use crate::run::{RegistryArgs, run_config};

mod admin;
mod metrics;
mod models;
mod state;

use metrics::Metrics;
use state::{Appended, States};

/// The request header that makes a retry idempotent.
pub const REQUEST_ID: &str = "Dfp-Request-Id";

/// How often a user's request is scored again when another instance extended the state first.
const WRITE_ATTEMPTS: usize = 50;

/// `dfp serve`'s flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The NATS server, nats://HOST:PORT, with JetStream on (`nats-server -js`): users' state
    /// is kept in one of its streams.
    #[arg(long, value_name = "URL")]
    nats: String,
    /// The log source: azure, duo, or a source schema file (.toml).
    #[arg(long, default_value = "azure")]
    source: String,
    /// Run config (TOML): the windows, familiarity and detection rule requests are scored
    /// with (default: configs/dfp.toml, as `dfp run`).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The JetStream stream of users' state (default: dfp-serve-{source}).
    #[arg(long, value_name = "NAME")]
    state_stream: Option<String>,
    /// Days a user's state is kept after their last request.
    #[arg(long, default_value_t = 30)]
    state_days: u64,
    /// A user's whole state is stored after this many requests' changes (the stream keeps
    /// twice as many entries per user; every instance on a stream must use the same).
    #[arg(long, default_value_t = 16)]
    snapshot_every: usize,
    /// Where the stream keeps users' state, when this instance creates it: `file` (survives a
    /// restart of the NATS server) or `memory` (lost with the server unless it is replicated
    /// in a NATS cluster).
    #[arg(long, value_enum, default_value_t = StateStorage::File)]
    state_storage: StateStorage,
    /// Requests this instance works on at once; the ones beyond are answered "busy".
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// The most records one request may carry.
    #[arg(long, default_value_t = 10_000)]
    max_records: usize,
    /// Seconds between two reads of the registry (with MLflow: of MLflow) for new champions
    /// and challengers.
    #[arg(long, default_value_t = 2.0)]
    reload_every: f64,
    /// Seconds the registry is not read after 3 failed reads in a row (the circuit breaker's
    /// open state), before one read tries it again.
    #[arg(long, default_value_t = 30.0)]
    breaker_open_for: f64,
    /// Where models score: cpu, cuda, wgpu, or auto.
    #[arg(long, default_value = "cpu")]
    device: dfp_engine::model::Device,
    /// Model threads (0: one per core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Serve the admin HTTP API on HOST:PORT (needs --tokens).
    #[arg(long, value_name = "HOST:PORT", requires = "tokens")]
    http: Option<String>,
    /// The admin API's bearer tokens: a TOML file of [[token]] entries with name, role (owner,
    /// user or consumer) and token (at least 16 characters).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Users whose state this instance keeps in memory between their requests (each write
    /// still checks that no other instance extended the state meanwhile).
    #[arg(long, default_value_t = 100_000)]
    cache_users: usize,
    /// Detections the admin API lists (GET /detections: the newest since it started; POST
    /// /feedback also finds older ones in the state stream).
    #[arg(long, default_value_t = 1000)]
    recent: usize,
}

/// Where the users' state stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateStorage {
    /// On the NATS server's disk.
    File,
    /// In the NATS server's memory.
    Memory,
}

/// What every request's task shares.
struct Ctx {
    online: Online,
    client: async_nats::Client,
    states: States,
    source: String,
    max_records: usize,
    registry: Registry,
    config: RunConfig,
    metrics: Metrics,
    /// Set once SIGTERM or Ctrl-C came: readiness turns 503.
    draining: AtomicBool,
    /// Why the registry cannot be read, while the circuit breaker is open.
    registry_down: std::sync::Mutex<Option<String>>,
    /// The MLflow server followed, with `--registry mlflow+http://...`.
    upstream: Option<models::Shared>,
    /// Held while the versions that score are read and set (`models`).
    models_lock: tokio::sync::Mutex<()>,
    /// Lock stripes by user ([`stripe`]).
    locks: Vec<tokio::sync::Mutex<()>>,
}

/// Runs `dfp serve` until SIGTERM or Ctrl-C.
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let schema = SourceSchema::resolve(&args.source)?;
    let config = run_config(args.config.as_deref())?;
    for (flag, secs) in [
        ("--reload-every", args.reload_every),
        ("--breaker-open-for", args.breaker_open_for),
    ] {
        if !(secs > 0.0 && secs.is_finite()) {
            bail!("{flag} must be a positive number of seconds, not {secs}");
        }
    }
    let spec = args.registry.spec()?;
    let registry = Registry::open(&spec.local)?;
    let upstream = match &spec.mlflow {
        Some(uri) => {
            let mut u = models::Upstream::new(registry.clone(), uri, &schema.name)?;
            if let Err(why) = u.refresh() {
                tracing::error!(error = %why, local = %spec.local.display(), "MLflow cannot be read: serving the models of the local copy until it can");
            }
            Some(Arc::new(std::sync::Mutex::new(u)))
        }
        None => None,
    };
    let versions = registry.serving_all()?;
    let backend = dfp_engine::device::backend(args.device, args.threads)?;
    let online = Online::new(schema, &config, registry.clone(), versions, backend)?;
    let tokens = args
        .tokens
        .as_deref()
        .map(admin::Tokens::load)
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args, online, registry, upstream, config, tokens))?;
    Ok(ExitCode::SUCCESS)
}

async fn run(
    args: ServeArgs,
    online: Online,
    registry: Registry,
    upstream: Option<models::Shared>,
    config: RunConfig,
    tokens: Option<admin::Tokens>,
) -> Result<()> {
    let source = online.source().to_string();
    let client = async_nats::ConnectOptions::new()
        .name(format!("dfp-serve-{source}"))
        .connection_timeout(Duration::from_secs(5))
        .connect(&args.nats)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats))?;
    let stream = args
        .state_stream
        .clone()
        .unwrap_or_else(|| format!("dfp-serve-{source}"));
    let states = States::open(
        &client,
        &stream,
        args.state_days,
        args.state_storage,
        args.snapshot_every,
        args.cache_users,
    )
    .await?;
    let service = client
        .service_builder()
        .description(format!("dfp online scoring of {source} logs"))
        .queue_group(format!("dfp-serve-{source}"))
        .start("dfp", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("starting the NATS service: {e}"))?;
    let subject = format!("dfp.score.{source}");
    let mut endpoint = service
        .endpoint_builder()
        .name(format!("score-{source}"))
        .add(subject.clone())
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to {subject}: {e}"))?;
    let ctx = Arc::new(Ctx {
        online,
        client: client.clone(),
        states,
        source: source.clone(),
        max_records: args.max_records,
        registry,
        config,
        metrics: Metrics::new(),
        draining: AtomicBool::new(false),
        registry_down: Default::default(),
        upstream,
        models_lock: Default::default(),
        locks: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
    });
    if let (Some(addr), Some(tokens)) = (&args.http, tokens) {
        start_admin(&ctx, addr, tokens, args.recent).await?;
    }
    let in_flight = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut terminate = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    let reloads = tokio::spawn(models::follow(
        ctx.clone(),
        Duration::from_secs_f64(args.reload_every),
        Duration::from_secs_f64(args.breaker_open_for),
    ));
    tracing::info!(%subject, nats = %args.nats, state = %stream, "serving");
    let dispatch = |tasks: &mut JoinSet<()>, request: Request| {
        let ctx = ctx.clone();
        match in_flight.clone().try_acquire_owned() {
            Ok(permit) => tasks.spawn(async move {
                answer(&ctx, request).await;
                drop(permit);
            }),
            Err(_) => tasks.spawn(async move {
                ctx.metrics.busy.inc();
                ctx.metrics.requests.inc();
                let text = serde_json::json!({
                    "request_id": request_id(&request),
                    "error": "busy: this instance has as many requests in flight as --max-in-flight allows; retry later",
                    "busy": true,
                });
                respond(&request, text.to_string()).await;
            }),
        };
    };
    loop {
        tokio::select! {
            request = endpoint.next() => match request {
                Some(r) => dispatch(&mut tasks, r),
                None => {
                    tracing::error!("the NATS subscription ended");
                    break;
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a request's task failed");
                }
            }
        }
    }
    reloads.abort();
    ctx.draining.store(true, Ordering::SeqCst);
    tracing::info!(
        in_flight = tasks.len(),
        "draining: no new requests; answering those received"
    );
    if let Err(e) = endpoint.stop().await {
        tracing::warn!(error = %e, "unsubscribing");
    }
    // What the subscription had already received is answered too. The deadline only stops a
    // wait for a subscription that never reports its end.
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(2), endpoint.next()).await {
        dispatch(&mut tasks, r);
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a request's task failed");
        }
    }
    client.flush().await.context("flushing the replies")?;
    tracing::info!("drained");
    Ok(())
}

fn request_id(request: &Request) -> Option<String> {
    request
        .message
        .headers
        .as_ref()
        .and_then(|h| h.get(REQUEST_ID))
        .map(|v| v.as_str().to_string())
}

async fn respond(request: &Request, text: String) {
    if let Err(e) = request.respond(Ok(text.into())).await {
        tracing::warn!(error = %e, "the reply could not be sent");
    }
}

/// Scores one request and replies.
async fn answer(ctx: &Ctx, request: Request) {
    let id = request_id(&request);
    tracing::debug!(request_id = ?id, bytes = request.message.payload.len(), "request received");
    let text = scored_reply(ctx, id.as_deref(), &request.message.payload).await;
    respond(&request, text).await;
}

/// The reply to a request (`id`: its request id): its records' answers, or what is wrong
/// with the request as a whole; counted in the metrics.
async fn scored_reply(ctx: &Ctx, id: Option<&str>, body: &[u8]) -> String {
    let started = Instant::now();
    let mut text = match score(ctx, id, body).await {
        Ok(text) => text,
        Err(e) => serde_json::json!({"request_id": id, "error": format!("{e:#}")}).to_string(),
    };
    // While the registry cannot be read, every reply says so.
    let down = ctx.registry_down.lock().ok().and_then(|d| d.clone());
    if let Some(why) = down
        && text.ends_with('}')
    {
        text.pop();
        text.push_str(&format!(
            ",\"registry_error\":{}}}",
            serde_json::Value::from(why)
        ));
    }
    ctx.metrics.requests.inc();
    ctx.metrics.seconds.observe(started.elapsed().as_secs_f64());
    text
}

/// Starts the admin API on `addr`, and keeps the detections every instance publishes for it.
async fn start_admin(ctx: &Arc<Ctx>, addr: &str, tokens: admin::Tokens, keep: usize) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin API to {addr}"))?;
    let api = admin::Admin::new(ctx.clone(), tokens, keep);
    let mut detections = ctx
        .client
        .subscribe(format!("dfp.events.detection.{}", ctx.source))
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to the detection events: {e}"))?;
    let keeper = api.clone();
    tokio::spawn(async move {
        while let Some(m) = detections.next().await {
            if let Ok(v) = serde_json::from_slice(&m.payload) {
                keeper.detection(v);
            }
        }
    });
    let router = admin::router(api);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the admin API stopped");
        }
    });
    tracing::info!(%addr, "admin API");
    Ok(())
}

async fn score(ctx: &Ctx, id: Option<&str>, body: &[u8]) -> Result<String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        bail!("the request has no records: send a JSON array of log records, or JSON lines");
    }
    let parsed = tokio::task::block_in_place(|| ctx.online.read(body));
    let records = parsed.errors.len() + parsed.users.iter().map(|(_, r)| r.len()).sum::<usize>();
    if records > ctx.max_records {
        bail!(
            "the request has {records} records; at most {} (--max-records)",
            ctx.max_records
        );
    }
    let mut answers = parsed.errors;
    ctx.metrics.failed.inc_by(answers.len() as u64);
    // This instance applies one request at a time per user (the users' lock stripes): the
    // users whose stripes are free are scored together, then the others as theirs free up,
    // so that requests with users in common overlap instead of queueing whole.
    let mut waiting = parsed.users;
    while !waiting.is_empty() {
        let (guards, ready) = free_users(ctx, &mut waiting).await;
        answers.extend(score_users(ctx, ready, id).await?);
        drop(guards);
    }
    Ok(reply(id, answers))
}

/// Takes the lock stripes of the `waiting` users that are free, or waits for the first
/// user's when none is (holding no other): those users, taken out of `waiting`, and their
/// stripes' guards.
async fn free_users<'a>(
    ctx: &'a Ctx,
    waiting: &mut Vec<(String, Vec<Row>)>,
) -> (
    Vec<tokio::sync::MutexGuard<'a, ()>>,
    Vec<(String, Vec<Row>)>,
) {
    let mut guards = HashMap::new();
    let (mut ready, mut rest) = (Vec::new(), Vec::new());
    for (user, rows) in waiting.drain(..) {
        if let std::collections::hash_map::Entry::Vacant(free) = guards.entry(stripe(&user)) {
            match ctx.locks[*free.key()].try_lock() {
                Ok(g) => {
                    free.insert(g);
                }
                Err(_) => {
                    rest.push((user, rows));
                    continue;
                }
            }
        }
        ready.push((user, rows));
    }
    if ready.is_empty() {
        let s = stripe(&rest[0].0);
        guards.insert(s, ctx.locks[s].lock().await);
        let (mine, others) = rest.into_iter().partition(|(u, _)| stripe(u) == s);
        (ready, rest) = (mine, others);
    }
    *waiting = rest;
    (guards.into_values().collect(), ready)
}

/// Scores users' rows of one request (their stripes held), all in one backend call, and
/// appends each user's change to their state.
async fn score_users(
    ctx: &Ctx,
    users: Vec<(String, Vec<Row>)>,
    id: Option<&str>,
) -> Result<Vec<Answer>> {
    let mut answers = Vec::new();
    let loaded =
        futures_util::future::join_all(users.iter().map(|(u, _)| ctx.states.take(&ctx.online, u)))
            .await;
    let mut taken = Vec::new();
    for ((user, rows), stored) in users.into_iter().zip(loaded) {
        match stored {
            Ok(stored) => taken.push((user, rows, stored)),
            Err(e) => answers.extend(failed(ctx, &user, &rows, &e)),
        }
    }
    let all = tokio::task::block_in_place(|| {
        ctx.online.apply_all(
            taken
                .iter_mut()
                .map(|(user, rows, stored)| (&mut stored.state, user.as_str(), rows.clone()))
                .collect(),
            id,
        )
    })?;
    let written = futures_util::future::join_all(taken.iter_mut().zip(all).map(
        |((user, _, stored), applied)| async move {
            let appended = match applied.change {
                Some(change) => ctx.states.append(user, stored, change).await,
                None => Ok(Appended::Done),
            };
            appended.map(|a| (a, applied.answers))
        },
    ))
    .await;
    for ((user, rows, stored), written) in taken.into_iter().zip(written) {
        let scored = match written {
            Ok((Appended::Done, scored)) => {
                ctx.states.keep(&user, stored);
                Ok(scored)
            }
            // Another instance extended the user's state first: scored again from it.
            Ok((Appended::Stale, _)) => {
                ctx.metrics.conflicts.inc();
                score_user(ctx, &user, rows.clone(), id).await
            }
            Err(e) => Err(e),
        };
        let scored = match scored {
            Ok(scored) => scored,
            Err(e) => {
                answers.extend(failed(ctx, &user, &rows, &e));
                continue;
            }
        };
        let ok = scored.iter().filter(|a| a.scored).count() as u64;
        ctx.metrics.scored.inc_by(ok);
        ctx.metrics.failed.inc_by(scored.len() as u64 - ok);
        ctx.metrics
            .detections
            .inc_by(scored.iter().filter(|a| a.alert).count() as u64);
        publish_detections(ctx, &scored).await;
        answers.extend(scored);
    }
    Ok(answers)
}

/// The answers of a user's records that could not be scored, and why.
fn failed(ctx: &Ctx, user: &str, rows: &[Row], e: &anyhow::Error) -> Vec<Answer> {
    tracing::error!(user = %user, error = %format!("{e:#}"), "a user's records could not be scored");
    let reason = format!("{e:#}");
    ctx.metrics.failed.inc_by(rows.len() as u64);
    rows.iter()
        .map(|r| {
            Answer::error(
                usize::try_from(r.origin.record).unwrap_or(usize::MAX),
                &reason,
            )
        })
        .collect()
}

/// Lock stripes: requests of users in one stripe are applied one at a time on an instance.
const STRIPES: usize = 256;

fn stripe(user: &str) -> usize {
    (dfp_engine::hash::fnv1a64(user.as_bytes()) % STRIPES as u64) as usize
}

/// `text` in hex: subjects allow few characters (a user's state is under `u.{hex}`).
fn hex(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 * text.len());
    for b in text.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Scores one user's rows against their state read from the stream, and appends the change;
/// again from a fresh read whenever another instance extended the state first (a request id
/// it had applied already is answered from the state, and nothing is appended).
async fn score_user(
    ctx: &Ctx,
    user: &str,
    rows: Vec<Row>,
    id: Option<&str>,
) -> Result<Vec<Answer>> {
    for _ in 0..WRITE_ATTEMPTS {
        let mut stored = ctx.states.read(&ctx.online, user).await?;
        let applied = tokio::task::block_in_place(|| {
            ctx.online.apply(&mut stored.state, user, rows.clone(), id)
        })?;
        let appended = match applied.change {
            Some(change) => ctx.states.append(user, &mut stored, change).await?,
            None => Appended::Done,
        };
        match appended {
            Appended::Done => {
                ctx.states.keep(user, stored);
                return Ok(applied.answers);
            }
            Appended::Stale => {
                ctx.metrics.conflicts.inc();
            }
        }
    }
    bail!("user {user:?}'s state changed under {WRITE_ATTEMPTS} attempts in a row; retry")
}

/// Publishes the detections among `answers`, each with its `detection_id` as `Nats-Msg-Id`:
/// an answer given again (a retried request) is published again, so that no detection is
/// lost with an instance that died between writing the user's state and publishing; a
/// JetStream stream on the subject drops the copies, other consumers see the same id twice.
async fn publish_detections(ctx: &Ctx, answers: &[Answer]) {
    let subject = format!("dfp.events.detection.{}", ctx.source);
    for a in answers.iter().filter(|a| a.alert) {
        let id = a.detection_id.as_deref();
        if let Some(id) = id {
            ctx.states.keep_detection(id, &a.json).await;
        }
        publish_event(ctx, &subject, id, a.json.clone(), "a detection").await;
    }
}

/// Publishes an event on `subject`, with `id` as its `Nats-Msg-Id` (the same for its copies);
/// a failure is logged (`what` names the event).
async fn publish_event(ctx: &Ctx, subject: &str, id: Option<&str>, body: String, what: &str) {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = id {
        headers.insert("Nats-Msg-Id", id);
    }
    let published = ctx
        .client
        .publish_with_headers(subject.to_string(), headers, body.into())
        .await;
    if let Err(e) = published {
        tracing::warn!(error = %e, "{what} event could not be published");
    }
}
