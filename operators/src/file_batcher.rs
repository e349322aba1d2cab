//! File batcher (Morpheus' `file_batcher` module / `DFPFileBatcherStage`): dates each input
//! file, drops files outside `[start, end)`, samples, and groups the rest into batches by
//! period, as Morpheus' `resample(period)` does (bins of fixed-length periods counted from
//! midnight UTC of the first file's day; weeks, months and years by the calendar).
//!
//! Input: file paths. Output: [`FileBatch`]es in time order, each with its files in time order
//! and Morpheus' `n_groups` (every bin from the first file's to the last file's, empty ones
//! included). State: none; every call is independent.
//!
//! A file's time comes from its name (Morpheus' ISO-date pattern, configurable), else from its
//! modification time; a time without an offset is UTC. Sampling by frequency (`sampling: "30S"`,
//! `sampling_rate_s: 30`) keeps the first file of each bin. Where we differ from Morpheus, on
//! purpose: the end bound is exclusive (Morpheus keeps files stamped exactly at `end_time`), a
//! fraction in a name (`.207`, with or without the dot in the regex's microsecond group) means
//! 207 ms (Morpheus' shipped pattern makes every fraction .999999), and random sampling is
//! seeded so runs repeat.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use dfp_engine::control::{BatchingOptions, Sampling};
use dfp_engine::period::{Period, midnight};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use regex::Regex;

/// Morpheus' pattern for a time in a file name (`AZUREAD_2022-08-01T00_03_56.207Z.json`).
pub const ISO_DATE_REGEX: &str = r"(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})(?:T(?P<hour>\d{1,2})(?::|_|\.)(?P<minute>\d{1,2})(?::|_|\.)(?P<second>\d{1,2})(?:\.(?P<microsecond>\d{0,6}))?)?(?P<zulu>Z)?";

/// The period of an input whose control message names none: a day, for every source
/// (Morpheus' `period='D'`).
pub const DEFAULT_PERIOD: Period = Period::DAY;

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
    /// Group files by this period.
    pub period: Period,
    /// Drop files before this time.
    pub start: Option<DateTime<Utc>>,
    /// Drop files at or after this time.
    pub end: Option<DateTime<Utc>>,
    /// Morpheus' `sampling`: a frequency, a fraction or a count.
    pub sampling: Option<Sampling>,
    /// Finds a file's time in its name.
    pub date_regex: Regex,
    /// Seed of random sampling.
    pub seed: u64,
}

impl FileBatcherConfig {
    /// Settings with a default period and Morpheus' date pattern, no bounds, no sampling.
    pub fn new(period: Period) -> Self {
        Self {
            period,
            start: None,
            end: None,
            sampling: None,
            date_regex: default_regex(),
            seed: 0,
        }
    }

    /// These settings overridden by a control message's batching options.
    pub fn with_options(mut self, o: &BatchingOptions) -> Result<Self, BatcherError> {
        if let Some(p) = o.period {
            self.period = p;
        }
        self.start = o.start_time.or(self.start);
        self.end = o.end_time.or(self.end);
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
    /// Start of the period.
    pub period_start: DateTime<Utc>,
    /// End of the period, exclusive.
    pub period_end: DateTime<Utc>,
    /// The files, in time order.
    pub files: Vec<DatedFile>,
    /// Index of this batch among all batches.
    pub index: usize,
    /// Morpheus' `n_groups`: the bins from the first file's to the last file's, empty ones
    /// included (the batches are the non-empty ones).
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
            // ".207" or "207" is 207 ms (a group with or without the dot): a fraction of a
            // second, to six digits.
            let digits = m.as_str().trim_start_matches('.');
            let six: String = digits
                .chars()
                .chain(std::iter::repeat('0'))
                .take(6)
                .collect();
            six.parse::<u32>().unwrap_or(0)
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
    match cfg.sampling {
        None => dated,
        Some(Sampling::Frequency(every)) => {
            let Some(origin) = dated.first().map(|d| midnight(d.time.date_naive())) else {
                return dated;
            };
            let mut last_bin = None;
            dated.retain(|d| {
                let bin = every.bin(d.time, origin);
                let keep = last_bin != Some(bin);
                last_bin = Some(bin);
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

fn group(dated: Vec<DatedFile>, period: Period) -> Vec<FileBatch> {
    let Some(origin) = dated.first().map(|d| midnight(d.time.date_naive())) else {
        return Vec::new();
    };
    let mut batches: Vec<(i64, FileBatch)> = Vec::new();
    for d in dated {
        let bin = period.bin(d.time, origin);
        match batches.last_mut() {
            Some((b, batch)) if *b == bin => batch.files.push(d),
            _ => batches.push((
                bin,
                FileBatch {
                    period_start: period.bin_start(bin, origin),
                    period_end: period.bin_end(bin, origin),
                    files: vec![d],
                    index: batches.len(),
                    count: 0,
                },
            )),
        }
    }
    // Morpheus' n_groups counts every bin from the first to the last, empty ones too.
    let bins = match (batches.first(), batches.last()) {
        (Some((first, _)), Some((last, _))) => {
            usize::try_from(last - first + 1).unwrap_or(usize::MAX)
        }
        _ => 0,
    };
    batches
        .into_iter()
        .map(|(_, mut b)| {
            b.count = bins;
            b
        })
        .collect()
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
        // A fixed modification time, so the test compares times instead of timing anything.
        let modified = Utc.with_ymd_and_hms(2022, 8, 3, 4, 5, 6).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(modified.into())
            .unwrap();
        let d = date_file(&p, &default_regex()).unwrap();
        assert_eq!(d.source, TimeSource::Modified);
        assert_eq!(d.time, modified);
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
        let mut cfg = FileBatcherConfig::new(Period::DAY);
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
        assert_eq!(batches[1].period_start, t("2022-08-02T00:00:00Z"));
        assert_eq!(batches[1].period_end, t("2022-08-03T00:00:00Z"));
        assert!(batches.iter().all(|b| b.count == 2));
    }

    #[test]
    fn groups_by_every_period_and_counts_empty_bins_as_morpheus() {
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
        let batches = |p: &str| batch_files(&files, &FileBatcherConfig::new(p.parse().unwrap()));
        for (period, batches_wanted, n_groups) in [
            ("min", 7, 220_321),
            ("H", 6, 3_673),
            ("12H", 5, 307),
            ("D", 5, 154),
            ("W", 4, 22),
            // Weeks ending on Monday: Sunday the 7th and Monday the 8th are one batch.
            ("W-MON", 4, 23),
            ("M", 3, 6),
            ("Y", 2, 2),
        ] {
            let b = batches(period);
            assert_eq!(b.len(), batches_wanted, "{period}");
            assert!(
                b.iter().all(|x| x.count == n_groups),
                "{period}: {}",
                b[0].count
            );
        }
    }

    #[test]
    fn samples_by_frequency_fraction_and_count() {
        let files = azure_files(&[
            "2022-08-01T00_00_00.000Z",
            "2022-08-01T00_10_00.000Z",
            "2022-08-01T00_40_00.000Z",
            "2022-08-01T01_05_00.000Z",
            "2022-08-02T01_00_00.000Z",
        ]);
        let mut cfg = FileBatcherConfig::new(Period::DAY);
        // The first file of each 30-minute bin from midnight: 00:00, 00:40, 01:05, next day.
        cfg.sampling = Some(Sampling::Frequency("30min".parse().unwrap()));
        let kept: usize = batch_files(&files, &cfg)
            .iter()
            .map(|b| b.files.len())
            .sum();
        assert_eq!(kept, 4);
        // Hourly: 00:00 and 01:05 on the first day.
        cfg.sampling = Some(Sampling::Frequency("1H".parse().unwrap()));
        assert_eq!(batch_files(&files, &cfg)[0].files.len(), 2);
        cfg.sampling = Some(Sampling::Count(2));
        let a = batch_files(&files, &cfg);
        assert_eq!(a.iter().map(|b| b.files.len()).sum::<usize>(), 2);
        assert_eq!(a, batch_files(&files, &cfg), "seeded sampling repeats");
        cfg.sampling = Some(Sampling::Fraction(0.6));
        assert_eq!(
            batch_files(&files, &cfg)
                .iter()
                .map(|b| b.files.len())
                .sum::<usize>(),
            3
        );
    }

    #[test]
    fn a_fraction_in_a_name_is_a_fraction_of_a_second_with_or_without_the_dot() {
        // Morpheus' own pattern puts the dot inside the microsecond group.
        let with_dot = Regex::new(
            r"(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})T(?P<hour>\d{1,2})_(?P<minute>\d{1,2})_(?P<second>\d{1,2})(?P<microsecond>\.\d{1,6})?Z",
        )
        .unwrap();
        for re in [&with_dot, &default_regex()] {
            assert_eq!(
                time_from_name("AZUREAD_2022-08-01T00_03_56.207Z.json", re),
                Some(t("2022-08-01T00:03:56.207Z"))
            );
        }
        // So sampling at 500 ms keeps both files of one second, as Morpheus does.
        let files = azure_files(&["2022-08-01T00_00_00.100Z", "2022-08-01T00_00_00.700Z"]);
        let mut cfg = FileBatcherConfig::new(Period::DAY);
        cfg.date_regex = with_dot;
        cfg.sampling = Some(Sampling::Frequency("500ms".parse().unwrap()));
        assert_eq!(batch_files(&files, &cfg)[0].files.len(), 2);
    }

    #[test]
    fn control_message_options_override_defaults() {
        let opts = BatchingOptions {
            period: Some("H".parse().unwrap()),
            iso_date_regex_pattern: Some(r"(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})".into()),
            ..Default::default()
        };
        let cfg = FileBatcherConfig::new(Period::DAY)
            .with_options(&opts)
            .unwrap();
        assert_eq!(cfg.period, "H".parse().unwrap());
        let d = date_file(Path::new("/x/log_20220805.json"), &cfg.date_regex).unwrap();
        assert_eq!(d.time, t("2022-08-05T00:00:00Z"));
        let bad = BatchingOptions {
            iso_date_regex_pattern: Some("(?P<year>\\d{4})".into()),
            ..Default::default()
        };
        let err = FileBatcherConfig::new(Period::DAY)
            .with_options(&bad)
            .unwrap_err();
        assert!(err.to_string().contains("month"), "{err}");
    }
}
