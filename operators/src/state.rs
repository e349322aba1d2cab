//! The state contract of checkpointed stages: a stage whose state must survive a crash
//! implements [`Stateful`] and registers itself while the graph is built ([`StateRegistry`]),
//! which gives it the [`StageState`] that writes its state at the cuts it belongs to and the
//! state it resumes from. The component list of a run is what its workers registered
//! (`components/{worker}.json` in the state directory), never a list kept by hand, and the
//! offer/applied protocol is one helper, [`StageState::epochs`]: a stage that registers
//! cannot forget a step.
//!
//! State: per stage, its snapshotter (where its state files go, which cuts are written).

use dfp_engine::{Error, Result};
use serde::de::DeserializeOwned;
use timely::dataflow::operators::Capability;

use crate::checkpoint::{CheckpointSettings, Cut, Snapshotter, component, registration_path};
use crate::metrics::SharedStats;

/// A stage's state, written at checkpoints.
///
/// ```
/// use dfp_operators::state::Stateful;
///
/// /// A counter of the rows a stage has seen.
/// struct Seen(u64);
///
/// impl Stateful for Seen {
///     fn snapshot(&mut self) -> dfp_engine::Result<Vec<u8>> {
///         dfp_operators::checkpoint::encode(&self.0)
///     }
/// }
///
/// let mut seen = Seen(41);
/// let bytes = seen.snapshot().unwrap();
/// let back: u64 =
///     dfp_operators::checkpoint::decode(&bytes, std::path::Path::new("seen")).unwrap();
/// assert_eq!(back, 41);
/// ```
pub trait Stateful {
    /// The state as it is now (everything applied so far), encoded.
    fn snapshot(&mut self) -> Result<Vec<u8>>;
}

/// A stage's snapshotter when the run checkpoints (nothing otherwise); a state that cannot be
/// written becomes one of the run's fatal errors, which stops the stream.
#[derive(Debug, Default)]
pub struct StageState(Option<Snapshotter>);

impl StageState {
    /// [`Snapshotter::offer`], with a failure recorded in `stats` and a write counted there
    /// with its time.
    pub fn offer(&mut self, to: u64, state: impl FnOnce() -> Result<Vec<u8>>, stats: &SharedStats) {
        let Some(s) = self.0.as_mut() else { return };
        let started = std::time::Instant::now();
        match s.offer(to, state) {
            Ok(true) => {
                let mut st = stats.borrow_mut();
                st.checkpoint_writes += 1;
                st.checkpoint_seconds += started.elapsed().as_secs_f64();
            }
            Ok(false) => {}
            Err(e) => stats.borrow_mut().fail(e),
        }
    }

    /// [`Snapshotter::applied`].
    pub fn applied(&mut self, t: u64) {
        if let Some(s) = self.0.as_mut() {
            s.applied(t);
        }
    }

    /// The protocol of a stateful operator, in one place: for each ready epoch, in time order,
    /// offers `state` as it is before the epoch (it holds every cut up to the epoch), marks the
    /// epoch applied, then applies it with `apply`; then offers the state for every cut up to
    /// `frontier_cut` (the cut its input frontiers have reached).
    pub fn epochs<S: Stateful + ?Sized, D>(
        &mut self,
        state: &mut S,
        ready: Vec<(u64, D)>,
        frontier_cut: u64,
        stats: &SharedStats,
        mut apply: impl FnMut(&mut S, u64, D),
    ) {
        for (t, data) in ready {
            self.offer(t, || state.snapshot(), stats);
            self.applied(t);
            apply(state, t, data);
        }
        self.offer(frontier_cut, || state.snapshot(), stats);
    }
}

/// Ready epochs from a [`crate::frontier::Pending`], keyed by their time.
pub fn timed<D>(ready: Vec<(Capability<u64>, D)>) -> Vec<(u64, (Capability<u64>, D))> {
    ready
        .into_iter()
        .map(|(c, d)| (*c.time(), (c, d)))
        .collect()
}

/// Where a worker's stateful stages register while its graph is built: each gets its
/// [`StageState`] and the state it resumes from; [`StateRegistry::finish`] records the
/// worker's components, so a cut is complete only once every registered component holds it.
#[derive(Debug)]
pub struct StateRegistry {
    settings: Option<CheckpointSettings>,
    worker: usize,
    /// The cut the run resumes from, if any.
    cut: Option<Cut>,
    /// Every epoch before this is in the resumed state (the cut's time, else 0).
    from: u64,
    registered: Vec<String>,
}

impl StateRegistry {
    /// A registry for `worker`: checkpointing to `settings` (none: nothing is kept) and
    /// resuming from `cut`.
    pub fn new(settings: Option<CheckpointSettings>, worker: usize, cut: Option<Cut>) -> Self {
        let from = cut.as_ref().map_or(0, |c| c.time);
        Self {
            settings,
            worker,
            cut,
            from,
            registered: Vec::new(),
        }
    }

    /// Whether the run checkpoints.
    pub fn checkpoints(&self) -> bool {
        self.settings.is_some()
    }

    /// The epoch the run resumes at (0 for a new run).
    pub fn from(&self) -> u64 {
        self.from
    }

    /// Registers this worker's stage `kind`: its state's writer, and the state it resumes
    /// from (decoded), if the run resumes.
    pub fn register<T: DeserializeOwned>(&mut self, kind: &str) -> Result<(StageState, Option<T>)> {
        let (state, bytes) = self.register_raw(kind)?;
        let restored = match (bytes, &self.cut) {
            (Some(b), Some(cut)) => Some(crate::checkpoint::decode(
                &b,
                &cut.path(&component(kind, self.worker)),
            )?),
            _ => None,
        };
        Ok((state, restored))
    }

    /// [`Self::register`], the state it resumes from left encoded (a stage that decodes it
    /// itself).
    pub fn register_raw(&mut self, kind: &str) -> Result<(StageState, Option<Vec<u8>>)> {
        let name = component(kind, self.worker);
        if self.registered.contains(&name) {
            return Err(Error::stage(
                "checkpoint",
                format!(
                    "the stage {kind:?} registered twice on worker {}",
                    self.worker
                ),
            ));
        }
        let Some(settings) = &self.settings else {
            return Ok((StageState::default(), None));
        };
        let snapshotter = Snapshotter::new(settings, &name, self.from)?;
        let restored = match &self.cut {
            Some(cut) => Some(cut.read(&name)?),
            None => None,
        };
        self.registered.push(name);
        Ok((StageState(Some(snapshotter)), restored))
    }

    /// Records the worker's components (`components/{worker}.json`); a restart whose stages
    /// differ from what its state was written with is refused.
    pub fn finish(self) -> Result<()> {
        let Some(settings) = &self.settings else {
            return Ok(());
        };
        let path = registration_path(&settings.dir, self.worker);
        let mut names = self.registered;
        names.sort();
        if let Ok(bytes) = std::fs::read(&path) {
            let before: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_default();
            if before != names {
                return Err(Error::stage(
                    "checkpoint",
                    format!(
                        "{}: worker {} had the stateful stages {before:?}, now {names:?}: this \
                         state was written by another graph (remove the state directory to \
                         start over)",
                        path.display(),
                        self.worker
                    ),
                ));
            }
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating components", e))?;
        }
        let text = serde_json::to_vec(&names).map_err(|e| Error::Json {
            context: format!("writing {}", path.display()),
            source: e,
        })?;
        crate::checkpoint::write_atomic(&path, &text)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::Path;
    use std::rc::Rc;

    use super::*;
    use crate::checkpoint::latest_cut;
    use crate::metrics::Stats;

    struct Sum(u64);

    impl Stateful for Sum {
        fn snapshot(&mut self) -> Result<Vec<u8>> {
            crate::checkpoint::encode(&self.0)
        }
    }

    fn settings(dir: &Path) -> Option<CheckpointSettings> {
        Some(CheckpointSettings {
            dir: dir.to_path_buf(),
            every: 1,
        })
    }

    #[test]
    fn registered_stages_make_the_cuts_and_resume_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Rc::new(RefCell::new(Stats::default()));
        let mut reg = StateRegistry::new(settings(dir.path()), 0, None);
        let (mut snaps, restored) = reg.register::<u64>("sum").unwrap();
        assert!(restored.is_none());
        assert!(
            reg.register::<u64>("sum").is_err(),
            "a stage registers once"
        );
        reg.finish().unwrap();
        let mut sum = Sum(0);
        snaps.epochs(&mut sum, vec![(0, 5), (1, 7)], 2, &stats, |s, _, d| {
            s.0 += d
        });
        assert_eq!(sum.0, 12);
        let cut = latest_cut(dir.path(), 1).unwrap().unwrap();
        assert_eq!((cut.time, cut.state::<u64>("sum-0").unwrap()), (2, 12));
        // A restart resumes from the cut; its stages must be the same.
        let mut again = StateRegistry::new(settings(dir.path()), 0, Some(cut.clone()));
        let (_, restored) = again.register::<u64>("sum").unwrap();
        assert_eq!(restored, Some(12));
        again.finish().unwrap();
        let mut other = StateRegistry::new(settings(dir.path()), 0, Some(cut));
        let e = other.register::<u64>("windows").unwrap_err().to_string();
        assert!(
            e.contains("no state for windows-0") && e.contains("remove the state directory"),
            "{e}"
        );
        let e = StateRegistry::new(settings(dir.path()), 0, None)
            .finish()
            .unwrap_err();
        assert!(e.to_string().contains("another graph"), "{e}");
        assert!(stats.borrow().fatal.is_empty());
    }

    #[test]
    fn without_checkpoints_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = StateRegistry::new(None, 0, None);
        let (mut snaps, _) = reg.register::<u64>("sum").unwrap();
        reg.finish().unwrap();
        let stats = Rc::new(RefCell::new(Stats::default()));
        snaps.epochs(
            &mut Sum(1),
            vec![(0, 1)],
            u64::MAX,
            &stats,
            |_, _, _: u64| {},
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
