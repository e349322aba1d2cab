//! What to generate: the source, the population, the days, the seed and the anomaly window,
//! checked as a whole by [`GenerateConfig::validate`].

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDate;

use dfp_core::Result;
use dfp_core::config::Problems;

use crate::world::DAY_MICROS;

/// Which source's log shape to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenSource {
    /// Azure AD sign-in logs (`AZUREAD_*.json`), the shape of Azure's diagnostic export.
    Azure,
    /// Duo Admin API v2 authentication logs (`DUO_*.json`).
    Duo,
}

impl GenSource {
    /// The name used on the command line: `azure` or `duo`.
    pub fn as_str(self) -> &'static str {
        match self {
            GenSource::Azure => "azure",
            GenSource::Duo => "duo",
        }
    }

    /// The prefix of this source's file names, as Morpheus names them.
    pub fn file_prefix(self) -> &'static str {
        match self {
            GenSource::Azure => "AZUREAD",
            GenSource::Duo => "DUO",
        }
    }
}

impl fmt::Display for GenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source name that is neither `azure` nor `duo`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log source {0:?}: expected \"azure\" or \"duo\"")]
pub struct UnknownGenSource(pub String);

impl FromStr for GenSource {
    type Err = UnknownGenSource;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "azure" => Ok(GenSource::Azure),
            "duo" => Ok(GenSource::Duo),
            _ => Err(UnknownGenSource(s.to_string())),
        }
    }
}

/// What to generate. Build it with [`GenerateConfig::new`] (which sets the defaults), change
/// fields as needed, and [`crate::generate`] validates it.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Which log shape to write.
    pub source: GenSource,
    /// Number of users (1 to 10,000,000).
    pub users: usize,
    /// Number of days (1 to 36,600).
    pub days: u32,
    /// The first day (UTC).
    pub start: NaiveDate,
    /// Random seed: the same config and seed give the same bytes.
    pub seed: u64,
    /// Files per UTC day (1 to 1440): the day is split into this many equal time-of-day slots,
    /// one file per non-empty slot. Default 8 (3-hour slots).
    pub files_per_day: u32,
    /// Anomalies are injected only into the last `anomaly_days` days (0: none). Default
    /// `days.div_ceil(6)` (30 days: 5).
    pub anomaly_days: u32,
    /// Share of users who get anomaly episodes, in [0, 1]. Default 0.3.
    pub anomaly_users_fraction: f64,
    /// Normal behaviour beyond stable habits (unlabelled). Default [`Novelty::default`].
    pub novelty: Novelty,
    /// A browser a share of users are moved to on one day (unlabelled): a deliberate shift of
    /// one feature, for drift checks. Default none.
    pub rollout: Option<Rollout>,
}

/// From day `day` (from the first, 0-based), a `share` of users use a browser nobody used
/// before (Brave) on every device; their systems and everything else stay as they were.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollout {
    /// The day of the release.
    pub day: u32,
    /// Share of users who take it, in [0, 1].
    pub share: f64,
}

/// How often users do something new but normal (see the `novelty` module). Rates are per month
/// (30 days): each is the mean of a Poisson count over the run, scaled by `days / 30`; all
/// between 0 and 30. Shares are in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Novelty {
    /// Business trips per user per month. Default 0.25.
    pub travel_rate: f64,
    /// Device changes (a system and browser update, or a new device replacing one) per user
    /// per month. Default 0.2.
    pub upgrade_rate: f64,
    /// Apps a team starts using, per team per month. Default 0.5.
    pub team_app_rate: f64,
    /// Moves to another working-hours shift for a while, per user per month. Default 0.05.
    pub shift_rate: f64,
    /// Share of users who sometimes work weekends. Default 0.1.
    pub weekend_worker_fraction: f64,
    /// Periods behind the corporate VPN, per user per month. Default 0.15.
    pub vpn_rate: f64,
    /// Changes of the company's office egress addresses, per month. Default 0.3.
    pub egress_change_rate: f64,
    /// Share of users with only a handful of sign-ins a week. Default 0.05.
    pub sparse_user_fraction: f64,
    /// Burst days (many times the usual volume), per user per month. Default 0.3.
    pub burst_rate: f64,
    /// Share of accounts that are service accounts (machine-like). Default 0.02.
    pub service_account_fraction: f64,
}

impl Default for Novelty {
    fn default() -> Self {
        Novelty {
            travel_rate: 0.25,
            upgrade_rate: 0.2,
            team_app_rate: 0.5,
            shift_rate: 0.05,
            weekend_worker_fraction: 0.1,
            vpn_rate: 0.15,
            egress_change_rate: 0.3,
            sparse_user_fraction: 0.05,
            burst_rate: 0.3,
            service_account_fraction: 0.02,
        }
    }
}

/// The most a novelty rate may be, per month.
const MAX_RATE: f64 = 30.0;

impl Novelty {
    /// No novelty at all: users keep their stable habits.
    pub fn none() -> Self {
        Novelty {
            travel_rate: 0.0,
            upgrade_rate: 0.0,
            team_app_rate: 0.0,
            shift_rate: 0.0,
            weekend_worker_fraction: 0.0,
            vpn_rate: 0.0,
            egress_change_rate: 0.0,
            sparse_user_fraction: 0.0,
            burst_rate: 0.0,
            service_account_fraction: 0.0,
        }
    }

    fn check(&self, p: &mut Problems) {
        let rates = [
            ("travel_rate", self.travel_rate),
            ("upgrade_rate", self.upgrade_rate),
            ("team_app_rate", self.team_app_rate),
            ("shift_rate", self.shift_rate),
            ("vpn_rate", self.vpn_rate),
            ("egress_change_rate", self.egress_change_rate),
            ("burst_rate", self.burst_rate),
        ];
        for (name, r) in rates {
            if !r.is_finite() || !(0.0..=MAX_RATE).contains(&r) {
                p.push(
                    format!("novelty.{name}"),
                    format!("must be between 0 and {MAX_RATE} per month, got {r}"),
                );
            }
        }
        let shares = [
            ("weekend_worker_fraction", self.weekend_worker_fraction),
            ("sparse_user_fraction", self.sparse_user_fraction),
            ("service_account_fraction", self.service_account_fraction),
        ];
        for (name, f) in shares {
            if !f.is_finite() || !(0.0..=1.0).contains(&f) {
                p.push(
                    format!("novelty.{name}"),
                    format!("must be between 0 and 1, got {f}"),
                );
            }
        }
    }
}

/// The most users [`crate::generate`] accepts.
pub(crate) const MAX_USERS: usize = 10_000_000;
/// The most days [`crate::generate`] accepts.
pub(crate) const MAX_DAYS: u32 = 36_600;
/// The most files per day [`crate::generate`] accepts (one a minute).
pub(crate) const MAX_FILES_PER_DAY: u32 = 1440;

impl GenerateConfig {
    /// A config with the default files per day (8), anomaly window (`days.div_ceil(6)`) and
    /// share of anomalous users (0.3).
    pub fn new(source: GenSource, users: usize, days: u32, start: NaiveDate, seed: u64) -> Self {
        GenerateConfig {
            source,
            users,
            days,
            start,
            seed,
            files_per_day: 8,
            anomaly_days: days.div_ceil(6),
            anomaly_users_fraction: 0.3,
            novelty: Novelty::default(),
            rollout: None,
        }
    }

    /// Checks every field and reports all problems at once as [`dfp_core::Error::Invalid`].
    pub fn validate(&self) -> Result<()> {
        let mut p = Problems::new();
        if self.users == 0 || self.users > MAX_USERS {
            p.push(
                "users",
                format!("must be 1 to {MAX_USERS}, got {}", self.users),
            );
        }
        if self.days == 0 || self.days > MAX_DAYS {
            p.push(
                "days",
                format!("must be 1 to {MAX_DAYS}, got {}", self.days),
            );
        } else if day_start_micros(self.start, self.days).is_none() {
            p.push(
                "start",
                format!(
                    "{} plus {} days is outside the supported dates",
                    self.start, self.days
                ),
            );
        }
        if self.files_per_day == 0 || self.files_per_day > MAX_FILES_PER_DAY {
            p.push(
                "files_per_day",
                format!(
                    "must be 1 to {MAX_FILES_PER_DAY}, got {}",
                    self.files_per_day
                ),
            );
        }
        if self.anomaly_days > self.days {
            p.push(
                "anomaly_days",
                format!(
                    "must be at most days ({}), got {}",
                    self.days, self.anomaly_days
                ),
            );
        }
        let f = self.anomaly_users_fraction;
        if !f.is_finite() || !(0.0..=1.0).contains(&f) {
            p.push(
                "anomaly_users_fraction",
                format!("must be between 0 and 1, got {f}"),
            );
        }
        self.novelty.check(&mut p);
        if let Some(r) = &self.rollout {
            if r.day >= self.days {
                p.push(
                    "rollout.day",
                    format!("must be before days ({}), got {}", self.days, r.day),
                );
            }
            if !r.share.is_finite() || !(0.0..=1.0).contains(&r.share) {
                p.push(
                    "rollout.share",
                    format!("must be between 0 and 1, got {}", r.share),
                );
            }
        }
        p.finish("generate config", ())
    }

    /// The first day that may hold anomalies (index from 0).
    pub(crate) fn first_anomaly_day(&self) -> u32 {
        self.days.saturating_sub(self.anomaly_days)
    }
}

/// Microseconds since the epoch at the start of day `day` after `start` (UTC), if representable.
pub(crate) fn day_start_micros(start: NaiveDate, day: u32) -> Option<i64> {
    let date = start.checked_add_days(chrono::Days::new(u64::from(day)))?;
    let t = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
    // Leave room for a whole day of events after it.
    t.checked_add(DAY_MICROS)?;
    Some(t)
}
