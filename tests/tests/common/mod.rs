//! Helpers shared by the end-to-end tests: small generated data sets, fast run settings, and a
//! real Kafka broker (tansu) on 127.0.0.1.

#![allow(dead_code)] // each test file uses its own share of the helpers

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeZone, Utc};
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::RunConfig;
use dfp_operators::pipeline::{Input, RunOptions};

/// Small, fast settings: tiny networks, few epochs, short history.
pub const CONFIG: &str = r#"
[training_window]
min_history = 60
min_increment = 60
max_history = "60d"
cache_mode = "aggregate"

[model]
encoder_layers = [24, 12]
decoder_layers = [24]
epochs = 3
lr = 0.01
batch_size = 64
"#;

pub fn date(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2022, 8, d).unwrap()
}

/// Generates `days` days of logs from 2022-08-01 into `dir`.
pub fn logs(source: GenSource, users: usize, days: u32, dir: &Path) -> PathBuf {
    let mut cfg = GenerateConfig::new(source, users, days, date(1), 7);
    cfg.files_per_day = 4;
    cfg.anomaly_days = 2;
    generate(&cfg, dir).unwrap();
    dir.to_path_buf()
}

/// Run options with the fast settings, a fixed clock, outputs and registry under `root`.
pub fn options(source: &str, input: Input, root: &Path, workers: usize) -> RunOptions {
    RunOptions {
        schema: SourceSchema::builtin(source).unwrap(),
        input,
        config: RunConfig::from_toml(CONFIG, "test config").unwrap(),
        workers,
        threads: 2,
        registry: root.join("models"),
        output: root.join("output"),
        write_scores: true,
        clock: Arc::new(|| Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()),
        progress: false,
    }
}

/// A control-message input.
pub fn control(path: &Path) -> Input {
    Input::Control {
        path: path.to_path_buf(),
        files_root: None,
    }
}

/// A tansu broker (Kafka protocol, in-memory storage) on a free port of 127.0.0.1, stopped
/// when dropped. `bash .ci/run` installs tansu; without it the test fails saying so.
pub struct Broker {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl Broker {
    pub fn start() -> Broker {
        let tansu = std::env::var("DFP_TANSU").unwrap_or_else(|_| "tansu".to_string());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
        let started = Instant::now();
        while TcpStream::connect(&address).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
