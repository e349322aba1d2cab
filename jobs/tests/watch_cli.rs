//! `dfp run` on a watched directory from the command line, with detections piped to standard
//! output, and the run config's `[source]`, `[checkpoint]` and `[[sinks]]` tables overridden
//! by flags.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::path::Path;

use common::{FAST_CONFIG, dfp};

/// A day of Duo logs for 6 users in `dir`, 3 days, the labels file left out.
fn logs(dir: &Path) {
    let out = dfp(&[
        "generate",
        "--source",
        "duo",
        "--users",
        "6",
        "--days",
        "3",
        "--out",
        dir.to_str().unwrap(),
    ]);
    common::succeeded(&out);
    std::fs::remove_file(dir.join("labels.jsonl")).unwrap();
}

#[test]
fn a_watched_directory_pipes_its_detections_to_stdout() {
    let root = tempfile::tempdir().unwrap();
    let (logs_dir, out_dir) = (root.path().join("in"), root.path().join("out"));
    logs(&logs_dir);
    let config = root.path().join("fast.toml");
    std::fs::write(
        &config,
        format!("{FAST_CONFIG}\n[detection]\nthreshold = 0.5\n"),
    )
    .unwrap();
    let out = dfp(&[
        "run",
        "--source",
        "duo",
        "--watch",
        logs_dir.to_str().unwrap(),
        "--until-end",
        "--detections-to",
        "stdout",
        "--config",
        config.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
        "--registry",
        root.path().join("models").to_str().unwrap(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    // Standard output holds the detections and nothing else; the summary went to stderr.
    let file = std::fs::read_to_string(out_dir.join("dfp_detections_duo.jsonl")).unwrap();
    assert!(!file.is_empty(), "{stderr}");
    assert_eq!(stdout, file);
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["mean_abs_z"].as_f64().unwrap() > 0.5, "{line}");
    }
    assert!(stderr.contains("rows from"), "{stderr}");
    // Checkpointed by default under the output directory.
    assert!(out_dir.join(".dfp-state/meta.json").is_file());
}

#[test]
fn the_config_describes_the_stream_and_flags_override_it() {
    let root = tempfile::tempdir().unwrap();
    let logs_dir = root.path().join("in");
    logs(&logs_dir);
    let state = root.path().join("state");
    let config = root.path().join("stream.toml");
    std::fs::write(
        &config,
        format!(
            "{FAST_CONFIG}\n[source]\nkind = \"watch\"\ndir = {:?}\nepoch = \"1d\"\nuntil_end = true\n\
             [checkpoint]\ndir = {:?}\n",
            logs_dir.to_str().unwrap(),
            root.path().join("unused").to_str().unwrap()
        ),
    )
    .unwrap();
    let out = dfp(&[
        "run",
        "--source",
        "duo",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--output",
        root.path().join("out").to_str().unwrap(),
        "--registry",
        root.path().join("models").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("in 3 epochs"));
    assert!(
        state.join("meta.json").is_file(),
        "--state-dir overrides [checkpoint] dir"
    );
    assert!(!root.path().join("unused").exists());

    // A stream's flag without a stream, and a bad value, are errors that say so.
    let control = root.path().join("control.json");
    std::fs::write(&control, "{\"inputs\": []}").unwrap();
    let out = dfp(&[
        "run",
        "--source",
        "duo",
        "--control-messages",
        control.to_str().unwrap(),
        "--epoch",
        "1h",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--epoch is for a stream"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dfp(&[
        "run",
        "--source",
        "duo",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint-every",
        "90m",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("checkpoint.every"), "{stderr}");
    let out = dfp(&["run", "--source", "duo", "--detections-to", "syslog"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give stdout or kafka://"));
}
