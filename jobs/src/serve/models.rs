//! The models `dfp serve` scores with, kept current without a restart: every `--reload-every`
//! the registry is read again for new champions and challengers, behind a circuit breaker
//! ([`Breaker`]), and each change is announced on `dfp.events.model.{source}`.
//!
//! With `--registry mlflow+http://HOST:PORT`, MLflow is the registry the instances share and
//! `--registry-cache` this instance's copy of it ([`Upstream`]): each read first pushes the
//! promotions and rollbacks made through this instance's admin API that MLflow has not taken
//! yet, then pulls MLflow's champions and challengers (downloading the versions the copy
//! lacks). MLflow not answering counts as the registry failing: after repeated failures the
//! circuit opens, the last good models keep serving and every reply says why. A promotion
//! MLflow has not taken yet serves on this instance and is never pulled over; the others get
//! it once it is pushed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use dfp_engine::lifecycle::Serving;
use dfp_engine::registry::Registry;
use dfp_operators::mlflow::{Client, Pulls, Syncer};

use super::{Ctx, publish_event};

/// How long one MLflow request may take before it counts as a failure.
const MLFLOW_TIMEOUT: Duration = Duration::from_secs(10);

/// The MLflow server an instance follows and pushes its admin changes to.
pub(super) struct Upstream {
    syncer: Syncer,
    source: String,
    /// Models changed through the admin API that MLflow has not taken yet.
    pending: BTreeSet<String>,
}

/// An [`Upstream`] shared by the reload task and the admin API.
pub(super) type Shared = Arc<Mutex<Upstream>>;

/// The upstream, even after a call panicked holding it (it keeps no half-made change: the
/// sync record is written after each step).
pub(super) fn lock(upstream: &Shared) -> std::sync::MutexGuard<'_, Upstream> {
    upstream.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream {
    /// Follows the MLflow server at `uri` (`mlflow+http://...`) into `local`, for `source`.
    pub(super) fn new(local: Registry, uri: &str, source: &str) -> Result<Upstream> {
        let client = Client::new(uri, MLFLOW_TIMEOUT)?;
        Ok(Upstream {
            syncer: Syncer::new(local, client),
            source: source.to_string(),
            pending: BTreeSet::new(),
        })
    }

    /// Pushes the changes MLflow has not taken yet, then pulls its champions and challengers;
    /// fails (saying why) when MLflow cannot be asked.
    pub(super) fn refresh(&mut self) -> std::result::Result<Pulls, String> {
        let pending: Vec<String> = self.pending.iter().cloned().collect();
        for name in pending {
            // Pending again when MLflow still does not answer: the rest wait with it.
            self.pending.remove(&name);
            if let Err(why) = self.push(&name)
                && self.pending.contains(&name)
            {
                return Err(why);
            }
        }
        let pulls = self
            .syncer
            .pull(&self.source, &self.pending)
            .map_err(|e| e.to_string())?;
        if pulls.models + pulls.versions > 0 {
            tracing::info!(
                models = pulls.models,
                downloaded = pulls.versions,
                server = %self.syncer.client().base(),
                "followed MLflow's champions and challengers"
            );
        }
        Ok(pulls)
    }

    /// Pushes `name`'s local aliases (a promotion or rollback just made) to MLflow. When
    /// MLflow does not answer, the change stays pending: pushed by a later [`Self::refresh`]
    /// and never pulled over meanwhile. Returns why it was not pushed.
    pub(super) fn push(&mut self, name: &str) -> std::result::Result<(), String> {
        match self.syncer.sync(name) {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.retryable() {
                    self.pending.insert(name.to_string());
                    tracing::warn!(model = %name, error = %e, "MLflow has not taken the change yet; it is pushed again at the next reload");
                } else {
                    tracing::error!(model = %name, error = %e, "MLflow refused the change: it serves on this instance only, until MLflow's aliases move");
                }
                Err(e.to_string())
            }
        }
    }
}

/// Scores with `versions` from now on and announces each change (the caller holds
/// `ctx.models_lock`, so an older read never lands after a newer one).
async fn apply(ctx: &Ctx, versions: Serving) {
    let current = ctx.online.versions();
    if current == versions {
        return;
    }
    let events = changes(&current, &versions);
    ctx.online.set_versions(versions);
    let subject = format!("dfp.events.model.{}", ctx.source);
    for (id, event) in events {
        tracing::info!(event = %event, "model change");
        publish_event(ctx, &subject, Some(&id), event, "a model").await;
    }
}

/// Makes a change of the local registry (an admin promotion or rollback, `change`) and scores
/// with it at once, whether or not the registry can be read at the next reload (an open
/// circuit, MLflow away).
pub(super) async fn change<T>(
    ctx: &Ctx,
    change: impl FnOnce() -> dfp_engine::Result<T>,
) -> dfp_engine::Result<T> {
    let _applying = ctx.models_lock.lock().await;
    let (out, versions) = tokio::task::block_in_place(|| {
        let out = change()?;
        Ok::<_, dfp_engine::Error>((out, ctx.registry.serving_all()?))
    })?;
    apply(ctx, versions).await;
    Ok(out)
}

/// Reads the registry every `every` behind a breaker that stays open `open_for`, until the
/// task is aborted.
pub(super) async fn follow(ctx: Arc<Ctx>, every: Duration, open_for: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut breaker = Breaker {
        failures: 0,
        open_until: None,
        open_for,
    };
    loop {
        tick.tick().await;
        breaker.reload(&ctx).await;
    }
}

/// The registry read again for new champions and challengers, behind a circuit breaker:
/// after `OPEN_AFTER` failures in a row it opens: no read for `open_for` (the last good
/// versions and the models already loaded keep serving, and every reply says the registry is
/// unavailable), then one read (half-open) closes it on success or opens it again.
struct Breaker {
    failures: u32,
    open_until: Option<tokio::time::Instant>,
    open_for: Duration,
}

const OPEN_AFTER: u32 = 3;

impl Breaker {
    async fn reload(&mut self, ctx: &Arc<Ctx>) {
        if self
            .open_until
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return;
        }
        let _applying = ctx.models_lock.lock().await;
        let registry = ctx.registry.clone();
        let upstream = ctx.upstream.clone();
        let read = tokio::task::spawn_blocking(move || {
            if let Some(u) = &upstream {
                lock(u).refresh()?;
            }
            registry.serving_all().map_err(|e| e.chain().to_string())
        })
        .await;
        let versions = match read {
            Ok(Ok(v)) => v,
            Ok(Err(why)) => return self.failed(ctx, &why),
            Err(e) => return self.failed(ctx, &e.to_string()),
        };
        if self.failures > 0 {
            tracing::info!("the registry reads again: circuit closed");
        }
        self.failures = 0;
        self.open_until = None;
        if let Ok(mut down) = ctx.registry_down.lock() {
            *down = None;
        }
        apply(ctx, versions).await;
    }

    fn failed(&mut self, ctx: &Ctx, why: &str) {
        self.failures += 1;
        if self.failures >= OPEN_AFTER {
            self.open_until = Some(tokio::time::Instant::now() + self.open_for);
            tracing::error!(failures = self.failures, error = %why, "the registry cannot be read: circuit open, the last good models keep serving");
            if let Ok(mut down) = ctx.registry_down.lock() {
                *down = Some(format!(
                    "the model registry cannot be read ({why}): circuit open since {}; the last good models serve",
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
        } else {
            tracing::warn!(error = %why, "the registry could not be read");
        }
    }
}

/// One JSON event per model whose champion or challenger differs between `old` and `new`,
/// with its id (`{model}:{role}:{version}`).
fn changes(old: &Serving, new: &Serving) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (role, before, after) in [
        ("champion", &old.champions, &new.champions),
        ("challenger", &old.challengers, &new.challengers),
    ] {
        let names: BTreeMap<&String, ()> =
            before.keys().chain(after.keys()).map(|n| (n, ())).collect();
        for name in names.keys() {
            let (was, is) = (before.get(*name), after.get(*name));
            if was != is {
                let id = format!("{name}:{role}:{}", is.map_or("none".into(), u32::to_string));
                out.push((
                    id,
                    serde_json::json!({"model": name, "role": role, "version": is, "previous": was})
                        .to_string(),
                ));
            }
        }
    }
    out
}
