//! The run's status file, `dfp_run_{source}.json` in the output directory, so that outputs
//! are never mistaken for complete ones: `running` from the start of a run (with its process
//! id and start time), then `complete`, `stopped` (a signal stopped it: the outputs hold the
//! epochs finished before the stop) or `failed` (with the error) at its end. A run killed
//! outright leaves `running`. Written atomically; the `dfp` process that writes the outputs
//! (process 0 of a cluster) writes it. State: none.

use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use dfp_engine::Result;
use serde::Serialize;

use crate::metrics::Stats;

/// How a run ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still writing (or killed before it could say otherwise).
    Running,
    /// Every epoch planned (or every record read, for a stream stopped on purpose) was
    /// processed and written.
    Complete,
    /// A signal stopped a batch run before its last epoch.
    Stopped,
    /// The run ended with an error.
    Failed,
}

#[derive(Serialize)]
struct Report<'a> {
    status: Status,
    pid: u32,
    started: &'a str,
    ended: Option<String>,
    epochs: Option<usize>,
    epochs_planned: Option<usize>,
    error: Option<&'a str>,
    shortfalls: Vec<String>,
    stats: Option<&'a Stats>,
}

/// The status file of one run.
#[derive(Debug, Clone)]
pub struct RunStatus {
    path: PathBuf,
    started: String,
}

/// The path of the status file of `source` in `dir`.
pub fn status_path(dir: &Path, source: &str) -> PathBuf {
    dir.join(format!("dfp_run_{source}.json"))
}

impl RunStatus {
    /// Says the run has started (`running`).
    pub fn start(dir: &Path, source: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| dfp_engine::Error::io(dir, "creating output directory", e))?;
        let status = Self {
            path: status_path(dir, source),
            started: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        };
        status.write(Status::Running, None, None, None)?;
        Ok(status)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Says how the run ended: its counters, the epochs run of those planned (a stream plans
    /// none), or the error.
    pub fn finish(
        &self,
        status: Status,
        stats: Option<&Stats>,
        epochs: Option<(usize, Option<usize>)>,
        error: Option<&str>,
    ) -> Result<()> {
        self.write(status, stats, epochs, error)
    }

    fn write(
        &self,
        status: Status,
        stats: Option<&Stats>,
        epochs: Option<(usize, Option<usize>)>,
        error: Option<&str>,
    ) -> Result<()> {
        let report = Report {
            status,
            pid: std::process::id(),
            started: &self.started,
            ended: (status != Status::Running)
                .then(|| Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)),
            epochs: epochs.map(|(run, _)| run),
            epochs_planned: epochs.and_then(|(_, planned)| planned),
            error,
            shortfalls: stats.map(Stats::shortfalls).unwrap_or_default(),
            stats,
        };
        let text = serde_json::to_vec_pretty(&report).map_err(|e| dfp_engine::Error::Json {
            context: format!("writing {}", self.path.display()),
            source: e,
        })?;
        dfp_engine::files::replace(&self.path, &text, "writing the run status")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    #[test]
    fn says_running_then_how_the_run_ended() {
        let dir = tempfile::tempdir().unwrap();
        let s = RunStatus::start(dir.path(), "azure").unwrap();
        assert_eq!(s.path(), status_path(dir.path(), "azure"));
        assert_eq!(read(s.path())["status"], "running");
        let stats = Stats {
            train_epochs: 1,
            ..Stats::default()
        };
        s.finish(Status::Stopped, Some(&stats), Some((2, Some(6))), None)
            .unwrap();
        let v = read(s.path());
        assert_eq!(v["status"], "stopped");
        assert_eq!(v["epochs"], 2);
        assert_eq!(v["epochs_planned"], 6);
        assert!(
            v["shortfalls"][0]
                .as_str()
                .unwrap()
                .contains("trained no model")
        );
        s.finish(Status::Failed, None, None, Some("disk full"))
            .unwrap();
        assert_eq!(read(s.path())["error"], "disk full");
    }
}
