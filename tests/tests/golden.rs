//! Golden outputs of the whole job, recorded before the architecture redesign and kept so
//! that a change of structure never changes what dfp writes: `dfp demo`'s workload (100 users
//! x 30 days) and the end-to-end month of the benchmarks (200 users x 30 days x 8 files a
//! day), each with dfp's settings and a fixed clock. Numbers are compared within 1e-3 relative
//! (SIMD kernels round differently on other CPUs), everything else exactly;
//! `UPDATE_GOLDEN=1` rewrites the goldens. (The stream's golden is in `jobs/tests/crash.rs`.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::path::Path;
use std::sync::Arc;

use chrono::{NaiveDate, TimeZone, Utc};
use dfp_engine::generate::{GenSource, GenerateConfig, Novelty, generate};
use dfp_engine::model::Device;
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::RunConfig;
use dfp_operators::demo::{DemoOptions, control_message, demo};
use dfp_operators::pipeline::{Input, RunOptions, run};

const DFP_CONFIG: &str = include_str!("../../configs/dfp.toml");

fn golden(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

fn clock() -> dfp_operators::post_proc::Clock {
    Arc::new(|| Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap())
}

#[test]
fn the_demo_writes_its_golden_detections() {
    let dir = tempfile::tempdir().unwrap();
    let report = demo(&DemoOptions {
        source: GenSource::Azure,
        users: 100,
        days: 30,
        train_days: 25,
        seed: 42,
        novelty: Novelty::default(),
        dir: dir.path().join("demo"),
        config: RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml").unwrap(),
        workers: 1,
        clock: clock(),
        progress: false,
    })
    .unwrap();
    assert_eq!(report.run.stats.detections, 329, "{}", report.run.line());
    let out = dir.path().join("demo/output");
    for file in ["dfp_detections_azure.csv", "dfp_dead_letter_azure.jsonl"] {
        dfp_bench::assert_golden(&out.join(file), &golden(&format!("demo/{file}")));
    }
}

#[test]
fn the_end_to_end_month_writes_its_golden_detections() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let start = NaiveDate::from_ymd_opt(2022, 8, 1).unwrap();
    let mut cfg = GenerateConfig::new(GenSource::Azure, 200, 30, start, 42);
    cfg.files_per_day = 8;
    cfg.anomaly_days = 5;
    generate(&cfg, &logs).unwrap();
    let day = |n| NaiveDate::from_ymd_opt(2022, 8, n).unwrap();
    let control = dir.path().join("control.json");
    std::fs::write(
        &control,
        control_message(
            &format!("{}/*.json", logs.display()),
            start,
            day(26),
            day(31),
        ),
    )
    .unwrap();
    let summary = run(RunOptions {
        schema: SourceSchema::builtin("azure").unwrap(),
        input: Input::control(&control),
        config: RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml").unwrap(),
        workers: 2,
        threads: 0,
        device: Device::Cpu,
        registry: dir.path().join("models"),
        output: dir.path().join("output"),
        mlflow: None,
        metrics: None,
        write_scores: false,
        clock: clock(),
        progress: false,
        cluster: None,
        stop: Default::default(),
    })
    .unwrap();
    assert_eq!(summary.stats.rows, 84_999, "{}", summary.line());
    for file in ["dfp_detections_azure.csv", "dfp_dead_letter_azure.jsonl"] {
        dfp_bench::assert_golden(
            &dir.path().join("output").join(file),
            &golden(&format!("e2e/{file}")),
        );
    }
}
