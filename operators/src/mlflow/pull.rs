//! The other direction: the local registry follows the champions and challengers of an MLflow
//! server (`dfp serve --registry mlflow+http://...`, whose instances do not share the disk of
//! the run that trained).
//!
//! One search lists the registered models of a source (tag `dfp.source`) with their aliases;
//! a model whose aliases are those followed last time costs nothing more. For the others, each
//! aliased version the local registry lacks is downloaded through the artifact proxy (the file
//! the push uploaded), checked against its `dfp.checksum` tag and its header, and imported
//! under its own dfp version number with the lineage its tags carry; then the local aliases
//! are set to MLflow's (`Registry::follow`: a new champion is recorded as a promotion by
//! `mlflow`). The sync record learns the versions and aliases, so pushing this registry later
//! creates nothing twice and pushes back no alias MLflow already has. Models with local
//! changes not pushed yet are skipped, so a pull never undoes them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use dfp_engine::lifecycle::{CHALLENGER, CHAMPION};

use super::client::{quoted, tag};
use super::{CHECKSUM, MlflowError, Record, SyncError, Syncer, checksum, lineage_from_tags};

/// What one pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pulls {
    /// Models whose local champion or challenger changed.
    pub models: usize,
    /// Versions downloaded.
    pub versions: usize,
}

/// A model's MLflow aliases: (champion, challenger) MLflow versions.
pub(super) type Aliases = (Option<String>, Option<String>);

fn aliases(model: &Value) -> Aliases {
    let mut out: Aliases = (None, None);
    for a in model["aliases"].as_array().into_iter().flatten() {
        let version = a["version"].as_str().map(str::to_string);
        match a["alias"].as_str() {
            Some(CHAMPION) => out.0 = version,
            Some(CHALLENGER) => out.1 = version,
            _ => {}
        }
    }
    out
}

impl Syncer {
    /// Makes the local registry follow MLflow's champions and challengers of `source`'s
    /// models, except those named in `skip`. Fails when MLflow cannot be asked; a model it
    /// holds that the local registry cannot take (a file that does not match its checksum, a
    /// version without dfp's tags) is logged and keeps its local versions, and the others go
    /// on.
    pub fn pull(&mut self, source: &str, skip: &BTreeSet<String>) -> Result<Pulls, MlflowError> {
        let plain = source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let filter = if plain {
            format!("tags.`dfp.source` = {}", quoted(source))
        } else {
            String::new()
        };
        let mut out = Pulls::default();
        for model in self.client.search_models(&filter)? {
            let (Some(name), Some(target)) = (tag(&model, "dfp.name"), model["name"].as_str())
            else {
                continue;
            };
            let wanted = aliases(&model);
            if tag(&model, "dfp.source").as_deref() != Some(source)
                || skip.contains(&name)
                || self.followed.get(&name) == Some(&wanted)
            {
                continue;
            }
            match self.follow(&name, target, &wanted) {
                Ok((changed, downloaded)) => {
                    out.models += usize::from(changed);
                    out.versions += downloaded;
                }
                Err(SyncError::Mlflow(e)) if e.retryable() => return Err(e),
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "a model in MLflow cannot be taken: its local versions keep serving");
                }
            }
            // A refused model is not tried again until its aliases move.
            self.followed.insert(name, wanted);
        }
        Ok(out)
    }

    /// Follows one model's `wanted` aliases (of MLflow model `target`); returns whether the
    /// local aliases changed and how many versions were downloaded.
    fn follow(
        &mut self,
        name: &str,
        target: &str,
        wanted: &Aliases,
    ) -> Result<(bool, usize), SyncError> {
        let mut record = Record::read(&self.registry, self.client.base(), name)?;
        let known: BTreeMap<String, u32> = record
            .pushed
            .versions
            .iter()
            .map(|(dfp, mlflow)| (mlflow.clone(), *dfp))
            .collect();
        let local = self.registry.version_numbers(name)?;
        let mut downloaded = 0;
        let mut resolve = |mlflow: &Option<String>| -> Result<Option<u32>, SyncError> {
            let Some(mlflow) = mlflow else {
                return Ok(None);
            };
            if let Some(&v) = known.get(mlflow).filter(|v| local.contains(v)) {
                return Ok(Some(v));
            }
            let v = self.fetch(name, target, mlflow, &local)?;
            downloaded += usize::from(!local.contains(&v));
            record.pushed.versions.insert(v, mlflow.clone());
            Ok(Some(v))
        };
        let champion = resolve(&wanted.0)?;
        let challenger = resolve(&wanted.1)?;
        let why = format!("the aliases in MLflow {}", self.client.base());
        let changed = self
            .registry
            .follow(name, champion, challenger, "mlflow", &why)?;
        let lifecycle = self.registry.lifecycle(name)?;
        record.aliases_are(&lifecycle);
        record.save()?;
        Ok((changed, downloaded))
    }

    /// The dfp version of MLflow version `mlflow` of `target`, its file downloaded into the
    /// local registry unless `local` (the versions there) has it.
    fn fetch(
        &self,
        name: &str,
        target: &str,
        mlflow: &str,
        local: &[u32],
    ) -> Result<u32, SyncError> {
        let item = self.client.version(target, mlflow)?;
        let refuse = |problem: String| {
            SyncError::Local(dfp_engine::Error::model(
                name,
                format!("MLflow version {mlflow} of {target:?} {problem}"),
            ))
        };
        if tag(&item, "dfp.name").as_deref() != Some(name) {
            return Err(refuse("was not pushed by dfp for this model".into()));
        }
        let Some(version) = tag(&item, "dfp.version").and_then(|v| v.parse::<u32>().ok()) else {
            return Err(refuse("has no dfp.version tag".into()));
        };
        let expected = tag(&item, CHECKSUM);
        let check = |bytes: &[u8], what: &str| match &expected {
            Some(sum) if *sum != checksum(bytes) => Err(refuse(format!(
                "is dfp version {version}, whose {what} has checksum {} where the tag says {sum}",
                checksum(bytes)
            ))),
            _ => Ok(()),
        };
        if local.contains(&version) {
            check(
                &self.registry.model_bytes(name, version)?,
                "local copy (point --registry-cache at a folder of its own)",
            )?;
            return Ok(version);
        }
        let Some(source) = item["source"].as_str() else {
            return Err(refuse("has no source".into()));
        };
        let bytes = self
            .client
            .download(source, &format!("v{version:06}.dfpmodel"))?;
        check(&bytes, "downloaded file")?;
        self.registry
            .import(name, version, &bytes, lineage_from_tags(&item))?;
        Ok(version)
    }
}
