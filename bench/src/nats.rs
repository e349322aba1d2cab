//! A real NATS server for the `dfp serve` tests and benchmarks: Debian's `nats-server` with
//! JetStream (its key-value store keeps users' state), on a free port of 127.0.0.1 with its
//! storage in a temporary directory, stopped when dropped. `bash .ci/run` installs it;
//! `DFP_NATS_SERVER` names another binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // set-up helpers: a failure is the caller's

use std::process::{Child, Command, Stdio};

/// A nats-server with JetStream on a free port of 127.0.0.1, stopped when dropped.
pub struct NatsServer {
    child: Child,
    _store: tempfile::TempDir,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

impl NatsServer {
    /// Starts one; panics (saying how to install nats-server) when it cannot.
    pub fn start() -> NatsServer {
        let binary = std::env::var("DFP_NATS_SERVER").unwrap_or_else(|_| executable());
        let port = crate::net::free_port();
        let store = tempfile::tempdir().expect("a temporary directory");
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {binary:?} ({e}): bash .ci/run installs it (apt-get install nats-server)"
                )
            });
        let address = format!("127.0.0.1:{port}");
        crate::net::wait_listening(&address, "nats-server");
        NatsServer {
            child,
            _store: store,
            url: format!("nats://{address}"),
        }
    }
}

/// `nats-server` on the PATH, else Debian's (in /usr/sbin, which a user's PATH may lack).
fn executable() -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
    let debian = "/usr/sbin/nats-server";
    if !on_path && std::path::Path::new(debian).is_file() {
        debian.to_string()
    } else {
        "nats-server".to_string()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
