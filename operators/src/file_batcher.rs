//! File batcher (Morpheus' `file_batcher` module / `DFPFileBatcherStage`): dates each input
//! file, drops files outside `[start, end)`, samples, and groups the rest into batches by
//! calendar period.
//!
//! Input: file paths. Output: [`FileBatch`]es in time order, each with its files in time order.
//! State: none; every call is independent.
//!
//! A file's time comes from its name (Morpheus' ISO-date pattern, configurable), else from its
//! modification time; a time without an offset is UTC. Where we differ from Morpheus, on
//! purpose: the end bound is exclusive (Morpheus keeps files stamped exactly at `end_time`),
//! `sampling_rate_s` compares whole durations (Morpheus compares `timedelta.seconds`, which
//! forgets the days), a fractional `.207` in a name means 207 ms, and random sampling is
//! seeded so runs repeat.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use dfp_engine::control::{BatchingOptions, Sampling};
use dfp_engine::period::Period;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use regex::Regex;

/// Morpheus' pattern for a time in a file name (`AZUREAD_2022-08-01T00_03_56.207Z.json`).
pub const ISO_DATE_REGEX: &str = r"(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})(?:T(?P<hour>\d{1,2})(?::|_|\.)(?P<minute>\d{1,2})(?::|_|\.)(?P<second>\d{1,2})(?:\.(?P<microsecond>\d{0,6}))?)?(?P<zulu>Z)?";

/// The period of an input whose control message names none: a day, for every source
/// (Morpheus' `period='D'`).
pub const DEFAULT_PERIOD: Period = Period::Day;

/// Errors of the file batcher.
#[derive(Debug, thiserror::Error)]
pub enum BatcherError {
    /// The file-date regex does not compile or lacks the year/month/day groups.
    #[error("iso_date_regex_pattern {pattern:?} {reason}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The file batcher's settings.
#[derive(Debug, Clone)]
pub struct FileBatcherConfig {
    /// Group files by this period; `None` makes one batch of all files (Morpheus' Duo default).
    pub period: Option<Period>,
    /// Drop files before this time.
    pub start: Option<DateTime<Utc>>,
    /// Drop files at or after this time.
    pub end: Option<DateTime<Utc>>,
    /// Keep a file only if it is at least this many seconds after the last kept; 0 keeps all.
    pub sampling_rate_s: u64,
    /// Morpheus' `sampling`: a frequency, a fraction or a count.
    pub sampling: Option<Sampling>,
    /// Finds a file's time in its name.
    pub date_regex: Regex,
    /// Seed of random sampling.
    pub seed: u64,
}

impl FileBatcherConfig {
    /// Settings with a default period and Morpheus' date pattern, no bounds, no sampling.
    pub fn new(period: Option<Period>) -> Self {
        Self {
            period,
            start: None,
            end: None,
            sampling_rate_s: 0,
            sampling: None,
            date_regex: default_regex(),
            seed: 0,
        }
    }

    /// These settings overridden by a control message's batching options.
    pub fn with_options(mut self, o: &BatchingOptions) -> Result<Self, BatcherError> {
        if let Some(p) = o.period {
            self.period = Some(p);
        }
        self.start = o.start_time.or(self.start);
        self.end = o.end_time.or(self.end);
        if let Some(s) = o.sampling_rate_s {
            self.sampling_rate_s = s;
        }
        if o.sampling.is_some() {
            self.sampling = o.sampling;
        }
        if let Some(pattern) = &o.iso_date_regex_pattern {
            dfp_engine::control::check_date_regex(pattern).map_err(|reason| {
                BatcherError::BadRegex {
                    pattern: pattern.clone(),
                    reason,
                }
            })?;
            self.date_regex = Regex::new(pattern).map_err(|e| BatcherError::BadRegex {
                pattern: pattern.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(self)
    }
}

/// Morpheus' date pattern, compiled.
#[allow(clippy::expect_used)] // a constant pattern, compiled by a test
pub fn default_regex() -> Regex {
    Regex::new(ISO_DATE_REGEX).expect("ISO_DATE_REGEX compiles")
}

/// Where a file's time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// Its name matched the date pattern.
    FileName,
    /// Its modification time.
    Modified,
}

/// A file and its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatedFile {
    /// The file.
    pub path: PathBuf,
    /// Its time (UTC).
    pub time: DateTime<Utc>,
    /// Where the time came from.
    pub source: TimeSource,
}

/// One batch of files: the files of one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBatch {
    /// Start of the period (`None` for the single batch of an unperiodised batcher).
    pub period_start: Option<DateTime<Utc>>,
    /// End of the period, exclusive.
    pub period_end: Option<DateTime<Utc>>,
    /// The files, in time order.
    pub files: Vec<DatedFile>,
    /// Index of this batch among all batches.
    pub index: usize,
    /// Number of batches of this call (Morpheus' `n_groups`).
    pub count: usize,
}

/// The time in a file name, by the pattern's named groups (`hour`, `minute`, `second` and
/// `microsecond` are optional).
pub fn time_from_name(name: &str, re: &Regex) -> Option<DateTime<Utc>> {
    let c = re.captures(name)?;
    let num = |g: &str| c.name(g).and_then(|m| m.as_str().parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(num("year")?).ok()?,
        num("month")?,
        num("day")?,
    )?;
    let micros = c
        .name("microsecond")
        .map(|m| {
            let digits = m.as_str();
            // ".207" is 207 ms: pad the fraction to six digits.
            format!("{digits:0<6}").parse::<u32>().unwrap_or(0)
        })
        .unwrap_or(0);
    let t = date.and_hms_micro_opt(
        num("hour").unwrap_or(0),
        num("minute").unwrap_or(0),
        num("second").unwrap_or(0),
        micros,
    )?;
    Some(Utc.from_utc_datetime(&t))
}

/// Dates a file: by its name (the file name, then the whole path), else its modification time.
/// `None` when neither is available (the file is gone); the caller reports it.
pub fn date_file(path: &Path, re: &Regex) -> Option<DatedFile> {
    let by_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| time_from_name(n, re))
        .or_else(|| path.to_str().and_then(|p| time_from_name(p, re)));
    if let Some(time) = by_name {
        return Some(DatedFile {
            path: path.to_path_buf(),
            time,
            source: TimeSource::FileName,
        });
    }
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    Some(DatedFile {
        path: path.to_path_buf(),
        time: DateTime::<Utc>::from(modified),
        source: TimeSource::Modified,
    })
}

/// Dates, filters, samples and groups files into batches.
pub fn batch_files(files: &[PathBuf], cfg: &FileBatcherConfig) -> Vec<FileBatch> {
    let mut dated: Vec<DatedFile> = files
        .iter()
        .filter_map(|f| {
            let d = date_file(f, &cfg.date_regex);
            if d.is_none() {
                tracing::warn!(file = %f.display(), "file has no date in its name and no modification time; skipped");
            }
            d
        })
        .filter(|d| cfg.start.is_none_or(|s| d.time >= s) && cfg.end.is_none_or(|e| d.time < e))
        .collect();
    dated.sort_by(|a, b| (a.time, &a.path).cmp(&(b.time, &b.path)));
    let dated = sample(dated, cfg);
    group(dated, cfg.period)
}

fn sample(dated: Vec<DatedFile>, cfg: &FileBatcherConfig) -> Vec<DatedFile> {
    let mut dated = dated;
    if cfg.sampling_rate_s > 0 {
        let rate =
            chrono::Duration::seconds(i64::try_from(cfg.sampling_rate_s).unwrap_or(i64::MAX));
        let mut last: Option<DateTime<Utc>> = None;
        dated.retain(|d| match last {
            Some(l) if d.time - l < rate => false,
            _ => {
                last = Some(d.time);
                true
            }
        });
    }
    match cfg.sampling {
        None => dated,
        Some(Sampling::Frequency(every)) => {
            let step = every.num_microseconds().unwrap_or(i64::MAX).max(1);
            let mut last_bucket = None;
            dated.retain(|d| {
                let bucket = d.time.timestamp_micros().div_euclid(step);
                let keep = last_bucket != Some(bucket);
                last_bucket = Some(bucket);
                keep
            });
            dated
        }
        Some(Sampling::Fraction(f)) => {
            let n = ((dated.len() as f64) * f).round() as usize;
            pick(dated, n, cfg.seed)
        }
        Some(Sampling::Count(n)) => pick(dated, n, cfg.seed),
    }
}

/// `n` of the files at random (seeded), kept in time order.
fn pick(dated: Vec<DatedFile>, n: usize, seed: u64) -> Vec<DatedFile> {
    if n >= dated.len() {
        return dated;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = rand::seq::index::sample(&mut rng, dated.len(), n).into_vec();
    chosen.sort_unstable();
    let mut keep = vec![false; dated.len()];
    for i in chosen {
        keep[i] = true;
    }
    dated
        .into_iter()
        .zip(keep)
        .filter_map(|(d, k)| k.then_some(d))
        .collect()
}

fn group(dated: Vec<DatedFile>, period: Option<Period>) -> Vec<FileBatch> {
    let mut batches: Vec<FileBatch> = Vec::new();
    for d in dated {
        let start = period.map(|p| p.floor(d.time));
        match batches.last_mut() {
            Some(b) if b.period_start == start => b.files.push(d),
            _ => batches.push(FileBatch {
                period_start: start,
                period_end: start.zip(period).map(|(s, p)| p.next(s)),
                files: vec![d],
                index: batches.len(),
                count: 0,
            }),
        }
    }
    let count = batches.len();
    for b in &mut batches {
        b.count = count;
    }
    batches
}

#[cfg(test)]
mod tests {
    use dfp_engine::period::parse_date;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn names(batch: &FileBatch) -> Vec<String> {
        batch
            .files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn azure_files(times: &[&str]) -> Vec<PathBuf> {
        times
            .iter()
            .map(|s| PathBuf::from(format!("/logs/AZUREAD_{s}.json")))
            .collect()
    }

    #[test]
    fn the_default_pattern_compiles() {
        assert!(Regex::new(ISO_DATE_REGEX).is_ok());
        assert!(dfp_engine::control::check_date_regex(ISO_DATE_REGEX).is_ok());
    }

    #[test]
    fn times_come_from_morpheus_file_names() {
        let re = default_regex();
        assert_eq!(
            time_from_name("AZUREAD_2022-08-01T00_03_56.207Z.json", &re),
            Some(t("2022-08-01T00:03:56.207Z"))
        );
        assert_eq!(
            time_from_name("DUO_2022-08-01T14:12:03Z.json", &re),
            Some(t("2022-08-01T14:12:03Z"))
        );
        assert_eq!(
            time_from_name("day_2022-08-05.json", &re),
            Some(t("2022-08-05T00:00:00Z"))
        );
        assert_eq!(
            time_from_name("AZUREAD_2022-13-01T00_00_00Z.json", &re),
            None
        );
        assert_eq!(time_from_name("nothing.json", &re), None);
    }

    #[test]
    fn undated_names_use_the_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plain.json");
        std::fs::write(&p, "[]").unwrap();
        let d = date_file(&p, &default_regex()).unwrap();
        assert_eq!(d.source, TimeSource::Modified);
        assert!((Utc::now() - d.time).num_seconds().abs() < 3600);
        assert!(date_file(&dir.path().join("gone.json"), &default_regex()).is_none());
    }

    #[test]
    fn filters_by_start_and_exclusive_end_and_groups_by_day() {
        let files = azure_files(&[
            "2022-08-02T10_00_00.000Z",
            "2022-07-31T23_59_59.000Z",
            "2022-08-01T00_00_00.000Z",
            "2022-08-01T12_00_00.000Z",
            "2022-08-03T00_00_00.000Z",
        ]);
        let mut cfg = FileBatcherConfig::new(Some(Period::Day));
        cfg.start = Some(parse_date("2022-08-01").unwrap());
        cfg.end = Some(parse_date("2022-08-03").unwrap());
        let batches = batch_files(&files, &cfg);
        assert_eq!(batches.len(), 2);
        assert_eq!(
            names(&batches[0]),
            [
                "AZUREAD_2022-08-01T00_00_00.000Z.json",
                "AZUREAD_2022-08-01T12_00_00.000Z.json"
            ]
        );
        assert_eq!(
            names(&batches[1]),
            ["AZUREAD_2022-08-02T10_00_00.000Z.json"]
        );
        assert_eq!(batches[1].period_start, Some(t("2022-08-02T00:00:00Z")));
        assert_eq!(batches[1].period_end, Some(t("2022-08-03T00:00:00Z")));
        assert!(batches.iter().all(|b| b.count == 2));
    }

    #[test]
    fn groups_by_every_period_and_none_is_one_batch() {
        let files = azure_files(&[
            "2022-08-01T00_00_10.000Z",
            "2022-08-01T00_00_50.000Z",
            "2022-08-01T00_01_10.000Z",
            "2022-08-01T05_00_00.000Z",
            "2022-08-07T05_00_00.000Z", // Sunday: same week as Aug 1 (Monday)
            "2022-08-08T05_00_00.000Z",
            "2022-09-08T05_00_00.000Z",
            "2023-01-01T00_00_00.000Z",
        ]);
        let count = |p| batch_files(&files, &FileBatcherConfig::new(p)).len();
        assert_eq!(count(Some(Period::Minute)), 7);
        assert_eq!(count(Some(Period::Hour)), 6);
        assert_eq!(count(Some(Period::Day)), 5);
        assert_eq!(count(Some(Period::Week)), 4);
        assert_eq!(count(Some(Period::Month)), 3);
        assert_eq!(count(Some(Period::Year)), 2);
        assert_eq!(count(None), 1);
    }

    #[test]
    fn samples_by_rate_frequency_fraction_and_count() {
        let files = azure_files(&[
            "2022-08-01T00_00_00.000Z",
            "2022-08-01T00_10_00.000Z",
            "2022-08-01T00_40_00.000Z",
            "2022-08-01T01_05_00.000Z",
            "2022-08-02T01_00_00.000Z",
        ]);
        let mut cfg = FileBatcherConfig::new(None);
        cfg.sampling_rate_s = 1800;
        let kept = names(&batch_files(&files, &cfg)[0]);
        // 00:10 is within 30 min of 00:00, 01:05 within 30 min of 00:40.
        assert_eq!(kept.len(), 3, "{kept:?}");
        cfg.sampling_rate_s = 0;
        cfg.sampling = Some(Sampling::Frequency(chrono::Duration::hours(1)));
        assert_eq!(batch_files(&files, &cfg)[0].files.len(), 3);
        cfg.sampling = Some(Sampling::Count(2));
        let a = batch_files(&files, &cfg);
        assert_eq!(a[0].files.len(), 2);
        assert_eq!(a, batch_files(&files, &cfg), "seeded sampling repeats");
        assert!(a[0].files[0].time < a[0].files[1].time);
        cfg.sampling = Some(Sampling::Fraction(0.6));
        assert_eq!(batch_files(&files, &cfg)[0].files.len(), 3);
    }

    #[test]
    fn control_message_options_override_defaults() {
        let opts = BatchingOptions {
            period: Some(Period::Hour),
            iso_date_regex_pattern: Some(r"(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})".into()),
            ..Default::default()
        };
        let cfg = FileBatcherConfig::new(Some(Period::Day))
            .with_options(&opts)
            .unwrap();
        assert_eq!(cfg.period, Some(Period::Hour));
        let d = date_file(Path::new("/x/log_20220805.json"), &cfg.date_regex).unwrap();
        assert_eq!(d.time, t("2022-08-05T00:00:00Z"));
        let bad = BatchingOptions {
            iso_date_regex_pattern: Some("(?P<year>\\d{4})".into()),
            ..Default::default()
        };
        let err = FileBatcherConfig::new(None).with_options(&bad).unwrap_err();
        assert!(err.to_string().contains("month"), "{err}");
    }
}
