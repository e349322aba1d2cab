//! A real MLflow tracking server for the registry tests: `mlflow server` with a SQLite backend
//! and a proxied artifact store in a temporary directory, on a free port of 127.0.0.1, stopped
//! when dropped. `bash .ci/run` installs MLflow in a venv once per machine
//! (`~/.local/share/dfp/mlflow-venv`); `DFP_MLFLOW` names another `mlflow` executable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // set-up helpers: a failure is the caller's

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An `mlflow server` on a free port of 127.0.0.1, stopped (with its process group) when
/// dropped.
pub struct MlflowServer {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

/// The `mlflow` executable: `DFP_MLFLOW`, else the venv `bash .ci/run` makes, else `mlflow` on
/// the PATH.
pub fn executable() -> PathBuf {
    if let Ok(p) = std::env::var("DFP_MLFLOW") {
        return PathBuf::from(p);
    }
    let venv = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/dfp/mlflow-venv/bin/mlflow"))
        .ok();
    venv.filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mlflow"))
}

fn healthy(address: &str) -> bool {
    crate::net::http_get(address, "/health").is_some_and(|(code, _)| code == 200)
}

impl MlflowServer {
    /// Starts one on a free port.
    pub fn start() -> MlflowServer {
        MlflowServer::on(crate::net::free_port())
    }

    /// Starts one on `port`; panics (saying how to install MLflow) when it cannot.
    pub fn on(port: u16) -> MlflowServer {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{port}");
        let child = spawn(dir.path(), port);
        let mut server = MlflowServer {
            child,
            dir,
            address,
        };
        server.wait_healthy();
        server
    }

    /// Ends the server; its data is kept for [`Self::resume`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts a stopped server again on the same port and data.
    pub fn resume(&mut self) {
        let port = self.address.rsplit(':').next().unwrap().parse().unwrap();
        self.child = spawn(self.dir.path(), port);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        // The deadline only stops a server that never comes up from hanging the test.
        let started = Instant::now();
        while !healthy(&self.address) {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                panic!("mlflow server exited ({status}):\n{log}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "mlflow server did not answer on {}",
                self.address
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        // `mlflow server` runs its app in child processes (uvicorn and its workers), all in
        // the server's process group: end the group.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// MLflow's own answer to `GET /api/2.0/mlflow/{api}` (query included, already escaped),
    /// read without dfp's client: what a team's tools see.
    pub fn get(&self, api: &str) -> serde_json::Value {
        let (code, body) = crate::net::http_get(&self.address, &format!("/api/2.0/mlflow/{api}"))
            .unwrap_or_else(|| panic!("MLflow at {} did not answer GET {api}", self.address));
        assert_eq!(code, 200, "GET {api}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The registry URI dfp takes: `mlflow+http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("mlflow+http://{}", self.address)
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mlflow server` on `port` with its data in `dir`, in a process group of its own.
fn spawn(dir: &Path, port: u16) -> Child {
    let mlflow = executable();
    Command::new(&mlflow)
            .arg("server")
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("server.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the MLflow server {mlflow:?} ({e}): bash .ci/run installs it \
                     (python3 -m venv ~/.local/share/dfp/mlflow-venv; its pip install 'mlflow>=3,<4')"
                )
            })
}
