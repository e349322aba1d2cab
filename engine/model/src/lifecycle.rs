//! The model lifecycle in the local registry: which version of each model is the `champion`
//! (it scores and raises detections) and which the `challenger` (trained later, waiting for
//! promotion), the champions it replaced (for rollback), the versions rolled back, and the
//! record of every change (what, when, by whom, why).
//!
//! ```text
//! <root>/<model folder>/aliases.json   {"aliases": {"champion": 2, "challenger": 3},
//!                                       "previous": [1], "rolled_back": [], "history": [...]}
//! ```
//!
//! The file is rewritten whole through a temporary file and a rename, so a reader sees the
//! state before a change or after it, never half of it. A newly registered version is adopted
//! by [`Registry::adopt`] under a [`Promotion`] policy; [`Registry::promote`] and
//! [`Registry::rollback`] are the operator's commands. Adopting a version twice (a restarted
//! stream registering the same model again) changes nothing. Inference scores with
//! [`Registry::serving`]: the champion, else (a registry written before aliases) the latest
//! version not rolled back.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use dfp_core::{Error, Result, files};

use crate::registry::Registry;

/// The versions a run scores with, by model name: the champion (or the serving version of a
/// model without aliases) raises detections; the challenger, where there is one, scores the
/// same rows in the shadow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serving {
    /// The version that scores, by model name.
    pub champions: BTreeMap<String, u32>,
    /// The challenger, by model name.
    pub challengers: BTreeMap<String, u32>,
}

/// The alias of the version that scores.
pub const CHAMPION: &str = "champion";
/// The alias of a newer version waiting for promotion.
pub const CHALLENGER: &str = "challenger";

/// What happens to a newly trained version (`[lifecycle] promotion`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promotion {
    /// It becomes the champion at once; the champion it replaces can be rolled back to.
    #[default]
    Replace,
    /// It becomes the challenger; `dfp models promote` makes it the champion.
    Manual,
    /// It becomes the challenger, scores in the shadow, and is promoted once it has shown
    /// what the run config's `[lifecycle]` bounds ask.
    Auto,
}

impl Promotion {
    /// The name as configured: `replace`, `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            Promotion::Replace => "replace",
            Promotion::Manual => "manual",
            Promotion::Auto => "auto",
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new version became the champion.
    Champion,
    /// A new version became the challenger.
    Challenger,
    /// A version was promoted to champion.
    Promote,
    /// The champion was rolled back to the one before it.
    Rollback,
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// What.
    pub action: Action,
    /// The version that took the alias.
    pub version: u32,
    /// The version that held it before, if any.
    pub replaced: Option<u32>,
    /// Who or what: `policy:replace`, `cli`, a user name.
    pub by: String,
    /// Why.
    pub why: String,
}

/// A model's aliases and their history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifecycle {
    /// Alias to version.
    pub aliases: BTreeMap<String, u32>,
    /// The champions replaced by promotions, oldest first: a rollback takes the last.
    pub previous: Vec<u32>,
    /// Versions rolled back from; they are kept, never served again unless promoted.
    pub rolled_back: BTreeSet<u32>,
    /// Every change, oldest first.
    pub history: Vec<Change>,
}

impl Lifecycle {
    /// The champion, if any.
    pub fn champion(&self) -> Option<u32> {
        self.aliases.get(CHAMPION).copied()
    }

    /// The challenger, if any.
    pub fn challenger(&self) -> Option<u32> {
        self.aliases.get(CHALLENGER).copied()
    }

    /// The alias `version` was given when it was adopted: Some(true) for champion, Some(false)
    /// for challenger, None if it never was.
    fn adopted(&self, version: u32) -> Option<bool> {
        self.history
            .iter()
            .find(|c| c.version == version)
            .map(|c| c.action == Action::Champion)
    }

    fn record(&mut self, action: Action, version: u32, replaced: Option<u32>, by: &str, why: &str) {
        self.history.push(Change {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            action,
            version,
            replaced,
            by: by.to_string(),
            why: why.to_string(),
        });
    }

    /// Makes `version` the champion, keeping the one it replaces for rollback.
    fn crown(&mut self, action: Action, version: u32, by: &str, why: &str) {
        let replaced = self.champion();
        if let Some(old) = replaced {
            self.previous.push(old);
        }
        self.aliases.insert(CHAMPION.to_string(), version);
        if self.challenger() == Some(version) {
            self.aliases.remove(CHALLENGER);
        }
        self.rolled_back.remove(&version);
        self.record(action, version, replaced, by, why);
    }
}

impl Registry {
    /// The lifecycle of `name` (empty when it has none).
    pub fn lifecycle(&self, name: &str) -> Result<Lifecycle> {
        let path = self.dir(name).join("aliases.json");
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| Error::Json {
                context: format!(
                    "{}: reading the aliases of model {name:?} (edited by hand? restore it or remove it to start the model's lifecycle over)",
                    path.display()
                ),
                source: e,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lifecycle::default()),
            Err(e) => Err(Error::io(&path, "reading aliases", e)),
        }
    }

    /// Reads `name`'s lifecycle, lets `change` edit it, and writes it back whole (atomically);
    /// nothing is written when `change` fails.
    fn update_lifecycle<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut Lifecycle) -> Result<T>,
    ) -> Result<T> {
        let mut lifecycle = self.lifecycle(name)?;
        let out = change(&mut lifecycle)?;
        let path = self.model_dir(name)?.join("aliases.json");
        let text = serde_json::to_vec_pretty(&lifecycle).map_err(|e| Error::Json {
            context: format!("writing the aliases of model {name:?}"),
            source: e,
        })?;
        files::replace(&path, &text, "writing aliases")?;
        self.changed(name);
        Ok(out)
    }

    fn require_version(&self, name: &str, version: u32) -> Result<()> {
        let versions = self.version_numbers(name)?;
        if versions.contains(&version) {
            return Ok(());
        }
        let known = if versions.is_empty() {
            "it has no versions".to_string()
        } else {
            let list: Vec<String> = versions.iter().map(u32::to_string).collect();
            format!("its versions are {}", list.join(", "))
        };
        Err(Error::model(
            name,
            format!("has no version {version} ({known})"),
        ))
    }

    /// The version `alias` names for `name`, if set.
    pub fn alias(&self, name: &str, alias: &str) -> Result<Option<u32>> {
        Ok(self.lifecycle(name)?.aliases.get(alias).copied())
    }

    /// Gives a newly registered `version` of `name` its alias under `policy`: the champion
    /// when the model has none or the policy replaces, else the challenger (an older
    /// challenger is dropped; it stays a version). Returns whether it became the champion. A
    /// version adopted before (a restarted stream registering the same model again) changes
    /// nothing and gets the answer it got then, so a replay scores as the first run did.
    pub fn adopt(&self, name: &str, version: u32, policy: Promotion, by: &str) -> Result<bool> {
        self.require_version(name, version)?;
        if let Some(champion) = self.lifecycle(name)?.adopted(version) {
            return Ok(champion);
        }
        self.update_lifecycle(name, |l| match (l.champion(), policy) {
            (None, _) => {
                l.crown(Action::Champion, version, by, "the model's first version");
                Ok(true)
            }
            (Some(_), Promotion::Replace) => {
                l.crown(
                    Action::Champion,
                    version,
                    by,
                    "newly trained (policy: replace)",
                );
                Ok(true)
            }
            (Some(_), Promotion::Manual | Promotion::Auto) => {
                let replaced = l.aliases.insert(CHALLENGER.to_string(), version);
                let why = format!("newly trained (policy: {})", policy.as_str());
                l.record(Action::Challenger, version, replaced, by, &why);
                Ok(false)
            }
        })
    }

    /// Makes `version` of `name` the champion; the champion it replaces can be rolled back to.
    /// Returns the replaced champion.
    pub fn promote(&self, name: &str, version: u32, by: &str, why: &str) -> Result<Option<u32>> {
        self.require_version(name, version)?;
        self.update_lifecycle(name, |l| {
            if l.champion() == Some(version) {
                return Err(Error::model(
                    name,
                    format!("version {version} is already the champion"),
                ));
            }
            let replaced = l.champion();
            l.crown(Action::Promote, version, by, why);
            Ok(replaced)
        })
    }

    /// Gives `name` the champion and challenger another registry names (the MLflow pull, `by`
    /// it, `why`): a new champion as a promotion (the one it replaces can be rolled back to),
    /// the challenger set or removed. No champion there leaves this one's. Returns whether
    /// anything changed (nothing is written when nothing did).
    pub fn follow(
        &self,
        name: &str,
        champion: Option<u32>,
        challenger: Option<u32>,
        by: &str,
        why: &str,
    ) -> Result<bool> {
        for v in champion.iter().chain(&challenger) {
            self.require_version(name, *v)?;
        }
        let now = self.lifecycle(name)?;
        let champion = champion.or(now.champion());
        if now.champion() == champion && now.challenger() == challenger {
            return Ok(false);
        }
        self.update_lifecycle(name, |l| {
            if let Some(v) = champion.filter(|v| l.champion() != Some(*v)) {
                l.crown(Action::Promote, v, by, why);
            }
            match challenger {
                Some(v) if l.challenger() != Some(v) => {
                    let replaced = l.aliases.insert(CHALLENGER.to_string(), v);
                    l.record(Action::Challenger, v, replaced, by, why);
                }
                Some(_) => {}
                None => {
                    l.aliases.remove(CHALLENGER);
                }
            }
            Ok(true)
        })
    }

    /// Puts back the champion the current one replaced; the current one is kept as a version,
    /// marked rolled back. Returns (rolled back, restored).
    pub fn rollback(&self, name: &str, by: &str, why: &str) -> Result<(u32, u32)> {
        self.update_lifecycle(name, |l| {
            let Some(current) = l.champion() else {
                return Err(Error::model(name, "has no champion to roll back"));
            };
            let Some(restored) = l.previous.pop() else {
                return Err(Error::model(
                    name,
                    format!(
                        "has no previous champion to roll back to (version {current} is its first)"
                    ),
                ));
            };
            l.aliases.insert(CHAMPION.to_string(), restored);
            l.rolled_back.insert(current);
            l.record(Action::Rollback, restored, Some(current), by, why);
            Ok((current, restored))
        })
    }

    /// The version of `name` that scores: the champion, else the latest version not rolled
    /// back; None when it has none.
    pub fn serving(&self, name: &str) -> Result<Option<u32>> {
        self.serving_in(name, &self.lifecycle(name)?)
    }

    /// [`Self::serving`] with `name`'s lifecycle already read.
    pub fn serving_in(&self, name: &str, lifecycle: &Lifecycle) -> Result<Option<u32>> {
        if let Some(c) = lifecycle.champion() {
            return Ok(Some(c));
        }
        Ok(self
            .version_numbers(name)?
            .into_iter()
            .rev()
            .find(|v| !lifecycle.rolled_back.contains(v)))
    }

    /// What a run starting now scores with: every model's serving version, and its challenger
    /// where it has one. A model whose aliases cannot be read is left out (its users are
    /// scored by the generic model) and logged with the reason; the others still serve.
    pub fn serving_all(&self) -> Result<Serving> {
        let mut out = Serving::default();
        for (name, _) in self.list()? {
            let lifecycle = match self.lifecycle(&name) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(model = %name, error = %e.chain(), "the model's aliases are unreadable: it does not serve in this run");
                    continue;
                }
            };
            if let Some(v) = self.serving_in(&name, &lifecycle)? {
                out.champions.insert(name.clone(), v);
            }
            if let Some(c) = lifecycle.challenger() {
                out.challengers.insert(name, c);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::models;

    fn registry_with(versions: usize) -> (tempfile::TempDir, Registry, String) {
        let (_, _, models) = models();
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        for _ in 0..versions {
            reg.register(&models[0]).unwrap();
        }
        let name = models[0].header.name.clone();
        (dir, reg, name)
    }

    #[test]
    fn the_first_version_is_champion_and_a_later_one_challenger_under_manual() {
        let (_d, reg, name) = registry_with(3);
        assert!(reg.adopt(&name, 1, Promotion::Manual, "test").unwrap());
        assert!(!reg.adopt(&name, 2, Promotion::Manual, "test").unwrap());
        let l = reg.lifecycle(&name).unwrap();
        assert_eq!((l.champion(), l.challenger()), (Some(1), Some(2)));
        assert_eq!(reg.serving(&name).unwrap(), Some(1));
        // Adopting again (a restarted stream) changes nothing and answers as the first time,
        // even after a promotion.
        assert!(!reg.adopt(&name, 2, Promotion::Manual, "test").unwrap());
        assert!(reg.adopt(&name, 1, Promotion::Manual, "test").unwrap());
        assert_eq!(reg.lifecycle(&name).unwrap(), l);
        // A newer challenger replaces the older one, which stays a version.
        assert!(!reg.adopt(&name, 3, Promotion::Manual, "test").unwrap());
        let l = reg.lifecycle(&name).unwrap();
        assert_eq!((l.champion(), l.challenger()), (Some(1), Some(3)));
        assert_eq!(l.history.last().unwrap().replaced, Some(2));
    }

    #[test]
    fn following_another_registry_promotes_its_champion_and_sets_its_challenger() {
        let (_d, reg, name) = registry_with(3);
        assert!(
            reg.follow(&name, Some(1), None, "mlflow", "pulled")
                .unwrap()
        );
        assert!(
            !reg.follow(&name, Some(1), None, "mlflow", "pulled")
                .unwrap()
        );
        assert!(
            reg.follow(&name, Some(1), Some(2), "mlflow", "pulled")
                .unwrap()
        );
        assert!(
            reg.follow(&name, Some(2), None, "mlflow", "pulled")
                .unwrap()
        );
        let l = reg.lifecycle(&name).unwrap();
        assert_eq!((l.champion(), l.challenger()), (Some(2), None));
        assert_eq!(l.previous, [1]);
        let actions: Vec<(Action, u32, &str)> = l
            .history
            .iter()
            .map(|c| (c.action, c.version, c.by.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                (Action::Promote, 1, "mlflow"),
                (Action::Challenger, 2, "mlflow"),
                (Action::Promote, 2, "mlflow")
            ]
        );
        // No champion there keeps this one's; a version this registry lacks is refused.
        assert!(!reg.follow(&name, None, None, "mlflow", "pulled").unwrap());
        let e = reg
            .follow(&name, Some(9), None, "mlflow", "pulled")
            .unwrap_err();
        assert!(e.to_string().contains("no version 9"), "{e}");
        assert_eq!(reg.lifecycle(&name).unwrap(), l);
        assert_eq!(reg.rollback(&name, "cli", "bad").unwrap(), (2, 1));
    }

    #[test]
    fn replace_makes_each_new_version_champion_and_rollback_walks_back() {
        let (_d, reg, name) = registry_with(3);
        for v in 1..=3 {
            assert!(
                reg.adopt(&name, v, Promotion::Replace, "policy:replace")
                    .unwrap()
            );
        }
        assert_eq!(reg.serving(&name).unwrap(), Some(3));
        assert_eq!(reg.rollback(&name, "cli", "bad").unwrap(), (3, 2));
        assert_eq!(reg.rollback(&name, "cli", "worse").unwrap(), (2, 1));
        let err = reg.rollback(&name, "cli", "again").unwrap_err().to_string();
        assert!(
            err.contains(&name) && err.contains("no previous champion"),
            "{err}"
        );
        let l = reg.lifecycle(&name).unwrap();
        assert_eq!(l.champion(), Some(1));
        assert_eq!(l.rolled_back, BTreeSet::from([2, 3]));
        assert_eq!(l.history.len(), 5);
        assert_eq!(l.history[3].action, Action::Rollback);
        // A rolled-back version can be promoted again.
        assert_eq!(reg.promote(&name, 3, "cli", "fixed").unwrap(), Some(1));
        assert!(reg.lifecycle(&name).unwrap().rolled_back == BTreeSet::from([2]));
    }

    #[test]
    fn promoting_takes_the_challenger_and_bad_requests_change_nothing() {
        let (dir, reg, name) = registry_with(2);
        reg.adopt(&name, 1, Promotion::Manual, "t").unwrap();
        reg.adopt(&name, 2, Promotion::Manual, "t").unwrap();
        let before = reg.lifecycle(&name).unwrap();
        let nobody = "DFP-azure-nobody";
        for (model, err) in [
            (
                name.as_str(),
                reg.promote(&name, 7, "cli", "x").unwrap_err(),
            ),
            (
                name.as_str(),
                reg.promote(&name, 1, "cli", "x").unwrap_err(),
            ),
            (nobody, reg.promote(nobody, 1, "cli", "x").unwrap_err()),
            (nobody, reg.rollback(nobody, "cli", "x").unwrap_err()),
        ] {
            let e = err.to_string();
            assert!(e.contains(model), "{e}");
        }
        let e = reg.promote(&name, 7, "cli", "x").unwrap_err().to_string();
        assert!(e.contains("no version 7") && e.contains("1, 2"), "{e}");
        assert_eq!(reg.lifecycle(&name).unwrap(), before);
        assert_eq!(reg.promote(&name, 2, "cli", "better").unwrap(), Some(1));
        let l = reg.lifecycle(&name).unwrap();
        assert_eq!((l.champion(), l.challenger()), (Some(2), None));
        assert_eq!(reg.rollback(&name, "cli", "no").unwrap(), (2, 1));
        // A file edited by hand into something else is an error naming it, not a panic.
        let path = dir
            .path()
            .join(crate::registry::escape(&name))
            .join("aliases.json");
        std::fs::write(&path, b"{\"aliases\": {\"champion\": \"two\"}}").unwrap();
        let e = reg.serving(&name).unwrap_err().to_string();
        assert!(e.contains("aliases.json") && e.contains("by hand"), "{e}");
        // A run starting on it leaves that model out and serves the others.
        assert!(!reg.serving_all().unwrap().champions.contains_key(&name));
        let e = reg
            .adopt(&name, 2, Promotion::Auto, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("aliases.json"), "{e}");
    }

    #[test]
    fn without_aliases_the_latest_version_not_rolled_back_serves() {
        let (_d, reg, name) = registry_with(2);
        assert_eq!(reg.serving(&name).unwrap(), Some(2));
        assert_eq!(reg.serving("DFP-azure-nobody").unwrap(), None);
        let serving = reg.serving_all().unwrap();
        assert_eq!(serving.champions, BTreeMap::from([(name.clone(), 2)]));
        assert!(serving.challengers.is_empty());
        reg.adopt(&name, 1, Promotion::Manual, "t").unwrap();
        reg.adopt(&name, 2, Promotion::Manual, "t").unwrap();
        let serving = reg.serving_all().unwrap();
        assert_eq!(serving.champions, BTreeMap::from([(name.clone(), 1)]));
        assert_eq!(serving.challengers, BTreeMap::from([(name.clone(), 2)]));
    }
}
