//! A real Kafka broker for the streaming tests and benchmarks: tansu (Kafka protocol, in-memory
//! storage) started on a free port of 127.0.0.1 and stopped when dropped. `bash .ci/run`
//! installs it; `DFP_TANSU` names another binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // set-up helpers: a failure is the caller's

use std::process::{Child, Command, Stdio};

/// A tansu broker (Kafka protocol, in-memory storage) on a free port of 127.0.0.1, stopped
/// when dropped. `bash .ci/run` installs tansu; without it the test fails saying so.
pub struct Broker {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl Broker {
    /// Starts one; panics (saying how to install tansu) when it cannot.
    pub fn start() -> Broker {
        let tansu = std::env::var("DFP_TANSU").unwrap_or_else(|_| "tansu".to_string());
        let port = crate::net::free_port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the Kafka broker {tansu:?} ({e}): bash .ci/run installs it \
                     (cargo install tansu@0.6.0 --locked --features dynostore)"
                )
            });
        crate::net::wait_listening(&address, "tansu");
        Broker { child, address }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn topic(&self, topic: &str, partitions: u32) {
        let tansu = std::env::var("DFP_TANSU").unwrap_or_else(|_| "tansu".to_string());
        let status = Command::new(tansu)
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &format!("tcp://{}", self.address),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "creating topic {topic}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
