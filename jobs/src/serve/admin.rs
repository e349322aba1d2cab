//! `dfp serve --http HOST:PORT`: the admin HTTP API (axum) beside the NATS service, with the
//! roles of model governance. Bearer tokens come from a TOML file (`--tokens`), each with a
//! name and a role:
//! - `owner`: everything, including promote/rollback and the config;
//! - `user`: read detections, models and metrics, submit feedback;
//! - `consumer`: score only (`POST /score`, as the NATS subject does).
//!
//! Routes: `GET /health` and `GET /ready` (no token: liveness, and readiness that turns 503
//! while draining), `GET /metrics`, `GET /models`, `GET /models/{name}`, `POST
//! /models/{name}/promote`, `POST /models/{name}/rollback`, `POST /feedback`, `GET
//! /detections`, `POST /score`, `GET /config`. Every refused call is answered 401 (no or an
//! unknown token) or 403 (a role without the right) with the reason as JSON, and logged with
//! the token's name; a token itself is never logged. Promotions, rollbacks and verdicts are
//! recorded under the token's name.
//!
//! State: the last `--recent` detections published on `dfp.events.detection.{source}` (by
//! any instance) since this one started, which `GET /detections` lists. `POST /feedback`
//! judges those, and any other detection an instance kept in the users' state stream in the
//! last `--state-days` (`dfp.state.{stream}.d.{detection id in hex}`: a restarted instance,
//! or one started after the detection, finds it there). Verdicts are published on
//! `dfp.events.feedback.{source}` and kept in the same stream under
//! `dfp.state.{stream}.f.{detection id in hex}`.

use std::collections::{HashMap, VecDeque};
use std::path::Path as FilePath;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dfp_operators::feedback::{Label, Verdict};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctx;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Owner,
    /// Read detections, models and metrics; submit feedback.
    User,
    /// Score only.
    Consumer,
}

const READERS: &[Role] = &[Role::Owner, Role::User];
const SCORERS: &[Role] = &[Role::Owner, Role::Consumer];
const OWNERS: &[Role] = &[Role::Owner];

/// One entry of the tokens file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    token: Vec<TokenEntry>,
}

/// The bearer tokens, by token: (name, role).
pub struct Tokens(HashMap<String, (String, Role)>);

impl Tokens {
    /// Reads `[[token]]` entries (`name`, `role`, `token`) from `path`.
    pub fn load(path: &FilePath) -> Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the tokens file {}", path.display()))?;
        let file: TokensFile =
            toml::from_str(&text).with_context(|| format!("the tokens file {}", path.display()))?;
        let mut out = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, t) in file.token.into_iter().enumerate() {
            let at = format!("{}: token[{i}]", path.display());
            if t.name.trim().is_empty() {
                bail!("{at}: the name is empty");
            }
            if t.token.len() < 16 {
                bail!("{at} ({}): a token needs at least 16 characters", t.name);
            }
            if !names.insert(t.name.clone()) {
                bail!("{at}: the name {:?} is used twice", t.name);
            }
            if out.insert(t.token, (t.name.clone(), t.role)).is_some() {
                bail!("{at} ({}): the same token is given twice", t.name);
            }
        }
        if out.is_empty() {
            bail!("{}: no [[token]] entry", path.display());
        }
        Ok(Tokens(out))
    }
}

/// The admin API's state.
pub struct Admin {
    ctx: Arc<Ctx>,
    tokens: Tokens,
    recent: Mutex<VecDeque<Value>>,
    keep: usize,
}

impl Admin {
    /// The API over `ctx`, keeping the last `keep` detections.
    pub fn new(ctx: Arc<Ctx>, tokens: Tokens, keep: usize) -> Arc<Admin> {
        Arc::new(Admin {
            ctx,
            tokens,
            recent: Mutex::new(VecDeque::new()),
            keep: keep.max(1),
        })
    }

    /// Keeps one detection event (a copy of one already kept replaces nothing).
    pub fn detection(&self, event: Value) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let id = &event["detection_id"];
        if recent.iter().any(|e| &e["detection_id"] == id) {
            return;
        }
        recent.push_back(event);
        while recent.len() > self.keep {
            recent.pop_front();
        }
    }

    /// The caller's name when its token's role is among `allowed`, else the refusal.
    fn allow(
        &self,
        headers: &HeaderMap,
        allowed: &[Role],
        route: &str,
    ) -> std::result::Result<String, Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            tracing::warn!(route, "refused: no bearer token");
            return Err(refusal(
                StatusCode::UNAUTHORIZED,
                "an Authorization: Bearer token is required",
            ));
        };
        let Some((name, role)) = self.tokens.0.get(token.trim()) else {
            tracing::warn!(route, "refused: unknown token");
            return Err(refusal(StatusCode::UNAUTHORIZED, "unknown token"));
        };
        if !allowed.contains(role) {
            tracing::warn!(route, who = %name, role = ?role, "refused: role not allowed");
            return Err(refusal(
                StatusCode::FORBIDDEN,
                &format!("role {role:?} may not call {route} (allowed: {allowed:?})"),
            ));
        }
        Ok(name.clone())
    }
}

fn refusal(status: StatusCode, reason: &str) -> Response {
    let mut r = (status, Json(json!({"error": reason}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The routes.
pub fn router(admin: Arc<Admin>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/models", get(models))
        .route("/models/{name}", get(model))
        .route("/models/{name}/promote", post(promote))
        .route("/models/{name}/rollback", post(rollback))
        .route("/feedback", post(feedback))
        .route("/detections", get(detections))
        .route("/score", post(score))
        .route("/config", get(config))
        .with_state(admin)
}

type Shared = State<Arc<Admin>>;

async fn ready(State(a): Shared) -> Response {
    if a.ctx.draining.load(Ordering::SeqCst) {
        refusal(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        Json(json!({"ready": true})).into_response()
    }
}

/// A handler's reply: the answer, or the refusal (401/403/400/404/503 with the reason).
type Reply = std::result::Result<Response, Response>;

async fn metrics(State(a): Shared, headers: HeaderMap) -> Reply {
    a.allow(&headers, READERS, "GET /metrics")?;
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, kind)], a.ctx.metrics.text()).into_response())
}

async fn models(State(a): Shared, headers: HeaderMap) -> Reply {
    a.allow(&headers, READERS, "GET /models")?;
    let registry = &a.ctx.registry;
    let listed = tokio::task::block_in_place(|| -> dfp_engine::Result<Vec<Value>> {
        registry
            .list()?
            .into_iter()
            .map(|(name, versions)| {
                let l = registry.lifecycle(&name)?;
                Ok(json!({"name": name, "versions": versions, "champion": l.champion(), "challenger": l.challenger()}))
            })
            .collect()
    });
    registry_reply(listed.map(Value::from))
}

/// 404 unless the registry has a version of model `name`.
fn known(a: &Admin, name: &str) -> std::result::Result<(), Response> {
    let versions = tokio::task::block_in_place(|| a.ctx.registry.version_numbers(name));
    match versions {
        Ok(v) if v.is_empty() => Err(refusal(
            StatusCode::NOT_FOUND,
            &format!("no model {name:?} in the registry"),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(refusal(StatusCode::BAD_REQUEST, &e.chain().to_string())),
    }
}

async fn model(State(a): Shared, headers: HeaderMap, Path(name): Path<String>) -> Reply {
    a.allow(&headers, READERS, "GET /models/{name}")?;
    known(&a, &name)?;
    let registry = &a.ctx.registry;
    let shown = tokio::task::block_in_place(|| -> dfp_engine::Result<Value> {
        Ok(json!({
            "name": name,
            "versions": registry.versions(&name)?,
            "lifecycle": registry.lifecycle(&name)?,
        }))
    });
    registry_reply(shown)
}

/// A registry call's result as a reply: the value, or 400 with the reason the registry gave.
fn registry_reply(result: dfp_engine::Result<Value>) -> Reply {
    result
        .map(|v| Json(v).into_response())
        .map_err(|e| refusal(StatusCode::BAD_REQUEST, &e.chain().to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    version: u32,
    #[serde(default)]
    why: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    why: String,
}

/// `body` as `T`, or a 400 naming what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> std::result::Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| refusal(StatusCode::BAD_REQUEST, &format!("the request body: {e}")))
}

async fn promote(
    State(a): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let who = a.allow(&headers, OWNERS, "POST /models/{name}/promote")?;
    let b: PromoteBody = parse(&body)?;
    known(&a, &name)?;
    let done = super::models::change(&a.ctx, || {
        let previous = a.ctx.registry.promote(&name, b.version, &who, &b.why)?;
        Ok(
            json!({"model": name, "champion": b.version, "previous": previous, "by": who, "mlflow": pushed(&a, &name)}),
        )
    })
    .await;
    tracing::info!(model = %name, version = b.version, who = %who, "promote");
    registry_reply(done)
}

/// Pushes `name`'s aliases to MLflow when the registry is an MLflow server: `"pushed"`, else
/// why not (the change serves here and is pushed at a later reload); null without MLflow.
fn pushed(a: &Admin, name: &str) -> Value {
    match &a.ctx.upstream {
        Some(u) => match super::models::lock(u).push(name) {
            Ok(()) => json!("pushed"),
            Err(why) => json!(format!("not pushed yet: {why}")),
        },
        None => Value::Null,
    }
}

async fn rollback(
    State(a): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let who = a.allow(&headers, OWNERS, "POST /models/{name}/rollback")?;
    let b: RollbackBody = if body.is_empty() {
        RollbackBody::default()
    } else {
        parse(&body)?
    };
    known(&a, &name)?;
    let done = super::models::change(&a.ctx, || {
        let (from, to) = a.ctx.registry.rollback(&name, &who, &b.why)?;
        Ok(
            json!({"model": name, "from": from, "champion": to, "by": who, "mlflow": pushed(&a, &name)}),
        )
    })
    .await;
    tracing::info!(model = %name, who = %who, "rollback");
    registry_reply(done)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    detection_id: String,
    label: Label,
    #[serde(default)]
    note: String,
}

async fn feedback(State(a): Shared, headers: HeaderMap, body: Bytes) -> Reply {
    let who = a.allow(&headers, READERS, "POST /feedback")?;
    let b: FeedbackBody = parse(&body)?;
    let seen = a.recent.lock().ok().and_then(|recent| {
        recent
            .iter()
            .find(|e| e["detection_id"] == b.detection_id.as_str())
            .cloned()
    });
    let detection = match seen {
        Some(d) => Some(d),
        None => match a.ctx.states.detection(&b.detection_id).await {
            Ok(kept) => kept.and_then(|bytes| serde_json::from_slice(&bytes).ok()),
            Err(e) => {
                return Err(refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the detections kept in NATS cannot be read: {e:#}"),
                ));
            }
        },
    };
    let Some(detection) = detection else {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            &format!(
                "no detection {:?} among those dfp serve kept (the last --state-days; judge a batch run's detections with dfp feedback against its output)",
                b.detection_id
            ),
        ));
    };
    let verdict = Verdict {
        detection_id: b.detection_id,
        label: b.label,
        by: who,
        note: b.note,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let event = json!({"verdict": verdict, "detection": detection});
    let key = format!("f.{}", super::hex(&verdict.detection_id));
    if let Err(e) = a.ctx.states.record(&key, event.to_string().into()).await {
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the verdict could not be stored: {e}"),
        ));
    }
    let subject = format!("dfp.events.feedback.{}", a.ctx.source);
    if let Err(e) = a
        .ctx
        .client
        .publish(subject, event.to_string().into())
        .await
    {
        tracing::warn!(error = %e, "a feedback event could not be published");
    }
    Ok((StatusCode::CREATED, Json(event)).into_response())
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn detections(State(a): Shared, headers: HeaderMap, Query(q): Query<Limit>) -> Reply {
    a.allow(&headers, READERS, "GET /detections")?;
    let limit = q.limit.unwrap_or(100);
    let newest: Vec<Value> = a
        .recent
        .lock()
        .map(|r| r.iter().rev().take(limit).cloned().collect())
        .unwrap_or_default();
    Ok(Json(newest).into_response())
}

async fn score(State(a): Shared, headers: HeaderMap, body: Bytes) -> Reply {
    a.allow(&headers, SCORERS, "POST /score")?;
    let id = headers
        .get(super::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = super::scored_reply(&a.ctx, id.as_deref(), &body).await;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

async fn config(State(a): Shared, headers: HeaderMap) -> Reply {
    a.allow(&headers, OWNERS, "GET /config")?;
    Ok(Json(&a.ctx.config).into_response())
}
