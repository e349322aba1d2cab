//! A watched directory (`dfp run --watch DIR`) against the batch run of the same files: the
//! same detections, scores and models whether the files are all there at the start, arrive
//! while the run is going, or are split over two runs resumed from the state directory.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{DAY_US, batch_run, lines, logs, options};
use dfp_engine::generate::GenSource;
use dfp_operators::pipeline::{Input, RunSummary, StreamInput, StreamSource, run};

/// The outputs compared with the batch run's.
const OUTPUTS: [&str; 3] = [
    "dfp_detections_azure.csv",
    "dfp_detections_azure.jsonl",
    "dfp_scores_azure.csv",
];

/// The log files of `dir` (not the generator's labels), in name (and so time) order.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Moves `file` into `dir` as a writer that renames finished files into place does.
fn deliver(file: &Path, dir: &Path) {
    let name = file.file_name().unwrap();
    let tmp = dir.join(format!(".{}.part", name.to_string_lossy()));
    std::fs::copy(file, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A watch of `dir`, one epoch a day, polled fast; `bounded`: it reads what is there and
/// ends; checkpointed to `state` when given.
fn watch(dir: &Path, bounded: bool, stop: Arc<AtomicBool>, state: Option<&Path>) -> Input {
    let mut s = StreamInput::watch(dir, DAY_US);
    if let StreamSource::Watch(w) = &mut s.source {
        w.poll = Duration::from_millis(20);
        w.idle_after = Duration::from_millis(100);
        w.stop_at_end = bounded;
    }
    s.stop = stop;
    Input::Stream(match state {
        Some(dir) => s.checkpoint_to(dir, 1),
        None => s,
    })
}

/// The outputs of the run into `root/{name}` are the batch run's.
fn same_as_batch(root: &Path, name: &str, summary: &RunSummary, batch: &RunSummary) {
    assert_eq!(summary.stats.rows, batch.stats.rows, "{}", summary.line());
    assert_eq!(summary.stats.dead_letters, 0, "{}", summary.line());
    assert!(summary.stats.detections > 0, "{}", summary.line());
    for file in OUTPUTS {
        let b = lines(&root.join("batch/output").join(file));
        let w = lines(&root.join(name).join("output").join(file));
        assert_eq!(b.len(), w.len(), "{name}: {file}");
        assert!(b == w, "{name}: {file} differs from the batch run's");
    }
    let models = |dir: &str| {
        let mut names: Vec<_> = std::fs::read_dir(root.join(dir).join("models"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    assert_eq!(models("batch"), models(name));
}

#[test]
fn a_watched_directory_detects_what_the_batch_run_of_its_files_detects() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let data = logs(GenSource::Azure, 8, 8, &root.join("logs"));
    let batch = batch_run(root);

    // Every file there at the start, read to the end.
    let files = files(&data);
    let there = root.join("there");
    std::fs::create_dir(&there).unwrap();
    for file in &files {
        deliver(file, &there);
    }
    let all = run(options(
        "azure",
        watch(&there, true, Arc::default(), None),
        &root.join("all"),
        2,
    ))
    .unwrap();
    assert_eq!(all.epochs, batch.epochs, "one epoch a day in both");
    same_as_batch(root, "all", &all, &batch);

    // Files arriving while the run goes on; stopped once the last day's file is read.
    let incoming = root.join("incoming");
    std::fs::create_dir(&incoming).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let live = std::thread::spawn({
        let opts = options(
            "azure",
            watch(&incoming, false, stop.clone(), None),
            &root.join("live"),
            2,
        );
        move || run(opts)
    });
    for file in &files {
        deliver(file, &incoming);
        std::thread::sleep(Duration::from_millis(30));
    }
    // The last day closes only at the stop: wait until every earlier day is scored.
    let scores = root.join("live/output/dfp_scores_azure.csv");
    let batch_scores = lines(&root.join("batch/output/dfp_scores_azure.csv")).len();
    let last_day = "2022-08-08";
    let before_last = std::fs::read_to_string(root.join("batch/output/dfp_scores_azure.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.contains(last_day))
        .count();
    // The deadline only stops a broken run from hanging the test.
    let started = Instant::now();
    while std::fs::read_to_string(&scores).map_or(0, |t| t.lines().count()) < before_last + 1 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the first days were not scored"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let live = live.join().unwrap().unwrap();
    assert_eq!(lines(&scores).len(), batch_scores);
    same_as_batch(root, "live", &live, &batch);

    // The first four days, a bounded run that ends (closing its epochs: a record for them
    // that came later would be late); the rest, a second run resumed from its state.
    let split = root.join("split-in");
    std::fs::create_dir(&split).unwrap();
    let state = root.join("split-state");
    let (first, second): (Vec<&PathBuf>, Vec<&PathBuf>) = files
        .iter()
        .partition(|f| f.file_name().unwrap().to_str().unwrap() < "AZUREAD_2022-08-05");
    assert!(!first.is_empty() && !second.is_empty());
    for file in first {
        deliver(file, &split);
    }
    let one = run(options(
        "azure",
        watch(&split, true, Arc::default(), Some(&state)),
        &root.join("split"),
        2,
    ))
    .unwrap();
    for file in second {
        deliver(file, &split);
    }
    let two = run(options(
        "azure",
        watch(&split, true, Arc::default(), Some(&state)),
        &root.join("split"),
        2,
    ))
    .unwrap();
    assert_eq!(
        one.stats.rows + two.stats.rows,
        batch.stats.rows,
        "every row once: {} then {}",
        one.line(),
        two.line()
    );
    let mut both = two.clone();
    both.stats.rows += one.stats.rows;
    both.stats.detections += one.stats.detections;
    same_as_batch(root, "split", &both, &batch);
}

/// `GET /metrics` from `addr`: the body, or None when nothing answers yet.
fn scrape(addr: &str) -> Option<String> {
    dfp_bench::net::http_get(addr, "/metrics").map(|(_, body)| body)
}

/// The value of metric `name` in a scrape.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_are_served_while_the_stream_runs_and_add_up_to_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let logs_dir = logs(GenSource::Azure, 6, 6, &root.join("logs"));
    let inbox = root.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let addr = format!("127.0.0.1:{}", dfp_bench::net::free_port());
    let stop = Arc::new(AtomicBool::new(false));
    let mut opts = options(
        "azure",
        watch(&inbox, false, stop.clone(), None),
        &root.join("w"),
        2,
    );
    opts.metrics = Some(dfp_operators::pipeline::MetricsOptions::new(&addr));
    let running = std::thread::spawn(move || run(opts));
    let files = files(&logs_dir);
    let (first, rest) = files.split_at(files.len() / 2);
    for f in first {
        deliver(f, &inbox);
    }
    // Scraped while the run goes on: rows read, and more as files arrive. The deadline only
    // stops a run that never publishes from hanging the test.
    let deadline = Instant::now() + Duration::from_secs(120);
    let read_so_far = loop {
        assert!(Instant::now() < deadline, "no rows in /metrics");
        if let Some(n) = scrape(&addr).and_then(|t| metric(&t, "dfp_events_read_total"))
            && n > 0.0
        {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for f in rest {
        deliver(f, &inbox);
    }
    let text = loop {
        assert!(
            Instant::now() < deadline,
            "the later files never showed in /metrics"
        );
        let text = scrape(&addr).unwrap();
        if metric(&text, "dfp_events_read_total").unwrap() > read_so_far
            && metric(&text, "dfp_events_scored_total").unwrap() > 0.0
            && metric(&text, "dfp_epochs_written_total").unwrap() > 0.0
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("# TYPE dfp_input_bytes counter"), "{text}");
    // Epoch latency (each written epoch's time from its input closing to its output) is
    // served; what it measures is a benchmark's business, not a test's.
    for name in [
        "dfp_epoch_latency_seconds_total",
        "dfp_last_epoch_latency_seconds",
        "dfp_checkpoint_writes_total",
        "dfp_consumer_lag_records",
    ] {
        assert!(metric(&text, name).is_some(), "no {name}:\n{text}");
    }
    assert!(
        !text.contains("@domain.com"),
        "a user in the metrics:\n{text}"
    );
    stop.store(true, Ordering::Relaxed);
    let summary = running.join().unwrap().unwrap();
    // The run is over and its server gone; no scrape saw more than the run counted.
    assert!(
        scrape(&addr).is_none(),
        "/metrics still served after the run"
    );
    assert!(summary.stats.rows as f64 >= metric(&text, "dfp_events_read_total").unwrap());
    assert!(summary.stats.scored as f64 >= metric(&text, "dfp_events_scored_total").unwrap());
    assert!(summary.stats.epochs_done as f64 >= metric(&text, "dfp_epochs_written_total").unwrap());
}
