//! Helpers for the stages' unit tests (compiled for tests only): a stage run alone on one
//! worker over a small dataflow ([`run_stage`]), and a few days of generated Duo logs to feed
//! it ([`Fixture`]), read as the dataflow reads them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::schema::SourceSchema;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::capture::{Capture, Event};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::{InputHandleVec, StreamVec};

use dfp_engine::lifecycle::Serving;
use dfp_engine::model::{Backend, Device, Model};
use dfp_engine::registry::Registry;

use crate::config::RunConfig;
use crate::data_prep::{Prepared, prepare};
use crate::file_to_batch::{FileRows, FileTask, Tasks, read};
use crate::inference::{Scored, Scorer};
use crate::metrics::{SharedStats, Stats};
use crate::rolling_window::RollingWindows;
use crate::split_users::split;
use crate::training::train_windows;

/// The end-to-end tests' small, fast settings (tiny networks), with training windows of 10
/// rows, so that a few days of a few users train.
pub fn fast_config() -> RunConfig {
    let mut c = RunConfig::from_toml(include_str!("../../tests/fast.toml"), "tests/fast.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    c.training_window.min_history = 10;
    c.training_window.min_increment = 10;
    c
}

/// The CPU backend, one thread.
pub fn cpu() -> Rc<dyn Backend> {
    Rc::from(dfp_engine::device::backend(Device::Cpu, 1).unwrap_or_else(|e| panic!("{e}")))
}

/// Runs the stage `build` makes on one worker: `epochs` go in (each epoch's records at its
/// time, the epochs in order, then the input closes); returns what came out, by time (each
/// epoch's in the order it came), and the stage's counters.
pub fn run_stage<D, O, F>(epochs: Vec<(u64, Vec<D>)>, build: F) -> (Vec<(u64, O)>, Stats)
where
    D: Clone + Send + Sync + 'static,
    O: Clone + Send + 'static,
    F: for<'s> FnOnce(StreamVec<'s, u64, D>, SharedStats) -> StreamVec<'s, u64, O>
        + Send
        + Sync
        + 'static,
{
    timely::execute_directly(move |worker| {
        let stats: SharedStats = Rc::new(RefCell::new(Stats::default()));
        let mut input = InputHandleVec::new();
        let captured = worker
            .dataflow::<u64, _, _>(|scope| build(input.to_stream(scope), stats.clone()).capture());
        for (t, data) in epochs {
            input.advance_to(t);
            for d in data {
                input.send(d);
            }
        }
        drop(input);
        while worker.step() {}
        let mut out = Vec::new();
        for event in captured.try_iter() {
            if let Event::Messages(stamp, data) = event {
                // A stamp here is one time: what the stage's capability was.
                for t in stamp.into_elements() {
                    out.extend(data.iter().cloned().map(|d| (t, d)));
                }
            }
        }
        out.sort_by_key(|(t, _)| *t);
        let stats = stats.borrow().clone();
        (out, stats)
    })
}

/// A stage's two outputs as one stream: `Ok` the first, `Err` the second.
pub fn both<'s, A: Clone + 'static, B: Clone + 'static>(
    (ok, err): (StreamVec<'s, u64, A>, StreamVec<'s, u64, B>),
) -> StreamVec<'s, u64, Result<A, B>> {
    ok.map(Ok).concat(err.map(Err))
}

/// Generated Duo logs: `users` users over `days` days from 2022-08-01, seed 7.
pub struct Fixture {
    pub schema: Arc<SourceSchema>,
    pub reader: Arc<Reader>,
    /// The log files, in name (and so time) order.
    pub files: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn duo(users: usize, days: u32) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let start = chrono::NaiveDate::from_ymd_opt(2022, 8, 1).unwrap_or_default();
        let mut cfg = GenerateConfig::new(GenSource::Duo, users, days, start, 7);
        cfg.files_per_day = 1;
        let summary = generate(&cfg, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut files = summary.files;
        files.sort();
        let schema = Arc::new(SourceSchema::builtin("duo").unwrap_or_else(|e| panic!("{e}")));
        Self {
            reader: Arc::new(Reader::new(schema.clone())),
            schema,
            files,
            _dir: dir,
        }
    }

    /// The task of reading file `i` in epoch `epoch`.
    pub fn task(&self, epoch: u64, i: usize, tasks: Tasks) -> FileTask {
        FileTask {
            epoch,
            tasks,
            index: u32::try_from(i).unwrap_or(u32::MAX),
            path: self.files[i].clone(),
            format: InputFormat::Auto,
            until_us: i64::MAX,
        }
    }

    /// Every file's rows, one epoch a file (a day), training and scoring.
    pub fn days(&self) -> Vec<(u64, Vec<FileRows>)> {
        let tasks = Tasks {
            train: true,
            infer: true,
            payload: false,
        };
        let mut days = BTreeMap::new();
        for i in 0..self.files.len() {
            let epoch = i as u64;
            let (rows, _) = read(&self.reader, &self.task(epoch, i, tasks));
            days.insert(epoch, vec![rows]);
        }
        days.into_iter().collect()
    }

    /// The windows each day emits with `cfg`'s settings, prepared (by epoch).
    pub fn prepared(&self, cfg: &RunConfig) -> Vec<(u64, Vec<Prepared>)> {
        let mut windows = RollingWindows::new(
            &self.schema,
            cfg.training_window.clone(),
            cfg.inference_window.clone(),
        )
        .and_then(|w| w.with_familiarity(&self.schema, &cfg.familiarity))
        .unwrap_or_else(|e| panic!("{e}"));
        let arrow = self.schema.arrow_schema();
        self.days()
            .into_iter()
            .map(|(epoch, files)| {
                let mut out = Vec::new();
                for file in files {
                    let t = file.tasks;
                    for users in split(file.rows, &cfg.split, t.train, t.infer, t.payload).users {
                        for w in windows.push(users, epoch).windows {
                            out.push(
                                prepare(w, &self.schema, &arrow).unwrap_or_else(|e| panic!("{e}")),
                            );
                        }
                    }
                }
                (epoch, out)
            })
            .collect()
    }

    /// The models the training windows of `prepared` train (by epoch).
    pub fn models(
        &self,
        cfg: &RunConfig,
        prepared: &[(u64, Vec<Prepared>)],
    ) -> Vec<(u64, Vec<Arc<Model>>)> {
        let backend = cpu();
        prepared
            .iter()
            .map(|(epoch, ws)| {
                let training: Vec<Prepared> =
                    ws.iter().filter(|w| w.window.train).cloned().collect();
                let models =
                    train_windows(backend.as_ref(), &self.schema, &cfg.model, &training, None)
                        .into_iter()
                        .map(|m| m.unwrap_or_else(|d| panic!("{d:?}")))
                        .collect();
                (*epoch, models)
            })
            .collect()
    }

    /// A registry (in the returned directory) of the models every day but the last of
    /// `prepared` trains, and those models as champions.
    pub fn registry_before_last(
        &self,
        cfg: &RunConfig,
        prepared: &[(u64, Vec<Prepared>)],
    ) -> (tempfile::TempDir, Registry, Serving) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let registry = Registry::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut versions = Serving::default();
        let before = prepared.split_last().map_or(&[][..], |(_, b)| b);
        for (_, models) in self.models(cfg, before) {
            for m in models {
                let v = registry.register(&m).unwrap_or_else(|e| panic!("{e}"));
                versions.champions.insert(m.header.name.clone(), v.version);
            }
        }
        (dir, registry, versions)
    }

    /// The last day's rows scored with every model trained before it (a registry made for
    /// the purpose and dropped).
    pub fn scored(&self, cfg: &RunConfig) -> Vec<Scored> {
        let prepared = self.prepared(cfg);
        let Some(((_, last), _)) = prepared.split_last() else {
            return Vec::new();
        };
        let (_dir, registry, versions) = self.registry_before_last(cfg, &prepared);
        let mut scorer = Scorer::new(
            self.schema.clone(),
            registry,
            versions,
            &cfg.split.generic_user,
            &cfg.inference,
            cfg.model.eval_batch_size,
        );
        let windows = last.iter().filter(|p| !p.window.train).cloned().collect();
        scorer.score(cpu().as_ref(), windows).scored
    }
}

/// A row with no user and no values, at time 0 and origin 0.
pub fn blank_row() -> dfp_engine::rows::Row {
    dfp_engine::rows::Row {
        ts: 0,
        user: None,
        origin: dfp_engine::rows::Origin {
            epoch: 0,
            file: 0,
            record: 0,
        },
        values: Vec::new(),
    }
}
