//! Registry writer (Morpheus' `mlflow_model_writer` module / `DFPMLFlowModelWriterStage`):
//! registers each trained model as a new version in the local model registry (atomic write,
//! tagged with its training window, row count, metrics and lineage), gives it its alias under
//! the run's promotion policy (champion or challenger, [`Registry::adopt`]) and announces it.
//!
//! Input: trained models. Output: [`ModelNote`]s (name, version and whether it is the
//! champion, at the epoch the model was trained in; the pipeline broadcasts them to every
//! worker's inference) and [`DeadLetter`]s for models that could not be written. State: none
//! (the registry is the state). In a checkpointed stream a model already registered (by a
//! process that crashed after writing it) is not written again ([`Registry::register_once`])
//! and keeps the alias it was given.

use std::sync::Arc;

use dfp_engine::lifecycle::Promotion;
use dfp_engine::model::Model;
use dfp_engine::registry::Registry;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::core::OkErr;

use crate::dead_letter::DeadLetter;
use crate::metrics::SharedStats;

/// A model version that became available at the epoch it travels at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModelNote {
    /// The model's name.
    pub name: String,
    /// The version.
    pub version: u32,
    /// Whether it is the champion (it scores from this epoch on) rather than a challenger.
    pub champion: bool,
}

/// The registry-writer stage as a timely operator.
pub trait RegistryWriter<'s> {
    /// Registers each model as it arrives (`once`: unless the same model is there already) and
    /// adopts it under `policy`.
    fn registry_writer(
        self,
        registry: Registry,
        once: bool,
        policy: Promotion,
        stats: SharedStats,
    ) -> (
        StreamVec<'s, u64, ModelNote>,
        StreamVec<'s, u64, DeadLetter>,
    );
}

impl<'s> RegistryWriter<'s> for StreamVec<'s, u64, Arc<Model>> {
    fn registry_writer(
        self,
        registry: Registry,
        once: bool,
        policy: Promotion,
        stats: SharedStats,
    ) -> (
        StreamVec<'s, u64, ModelNote>,
        StreamVec<'s, u64, DeadLetter>,
    ) {
        let by = format!("policy:{}", policy.as_str());
        self.ok_err(move |model| {
            let name = model.header.name.clone();
            let registered = if once {
                registry.register_once(&model)
            } else {
                registry.register(&model)
            };
            let adopted = registered.and_then(|v| {
                let champion = registry.adopt(&name, v.version, policy, &by)?;
                Ok((v, champion))
            });
            match adopted {
                Ok((v, champion)) => {
                    stats.borrow_mut().models_trained += 1;
                    Ok(ModelNote {
                        name,
                        version: v.version,
                        champion,
                    })
                }
                Err(e) => {
                    let why = e.chain();
                    tracing::error!(model = %name, error = %why, "the model could not be registered");
                    stats.borrow_mut().train_failed += 1;
                    Err(DeadLetter::model("registry_writer", &name, why))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, both, fast_config, run_stage};

    #[test]
    fn models_are_registered_once_and_noted_with_their_versions() {
        let f = Fixture::duo(2, 2);
        let cfg = fast_config();
        let models = f.models(&cfg, &f.prepared(&cfg));
        let names: Vec<String> = models
            .iter()
            .flat_map(|(_, ms)| ms.iter().map(|m| m.header.name.clone()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        let run = |once: bool| {
            let (registry, models) = (registry.clone(), models.clone());
            run_stage(models, move |s, stats| {
                both(s.registry_writer(registry, once, Promotion::Replace, stats))
            })
        };
        let (first, stats) = run(true);
        let notes: Vec<(String, u32)> = first
            .iter()
            .map(|(_, n)| n.as_ref().map(|n| (n.name.clone(), n.version)).unwrap())
            .collect();
        // A model trained at both epochs has versions 1 and 2.
        for (i, (name, version)) in notes.iter().enumerate() {
            let before = names[..i].iter().filter(|n| *n == name).count() as u32;
            assert_eq!(*version, before + 1, "{name}");
        }
        assert_eq!(stats.models_trained as usize, names.len());
        // The same models again (a restarted stream): found, not registered twice.
        let (again, _) = run(true);
        assert_eq!(
            again
                .iter()
                .map(|(_, n)| n.as_ref().unwrap().version)
                .collect::<Vec<_>>(),
            notes.iter().map(|n| n.1).collect::<Vec<_>>()
        );
        // Registered without `once`: new versions.
        let (twice, _) = run(false);
        assert!(twice.iter().all(|(_, n)| n.as_ref().unwrap().version > 1));
    }
}
