//! Anomaly episodes: which users get them, on which days, and the events each one adds.
//!
//! [`plan`] picks `round(users * anomaly_users_fraction)` users by a seeded permutation and
//! gives each one to three episodes on days of the last `anomaly_days` (the first episode's
//! kind goes round-robin over the picked users, so every kind shows up once five users are
//! picked). [`inject`] draws an episode's events from its own random stream, so turning
//! anomalies off leaves the ordinary events unchanged. Every event an episode adds is marked
//! with its kind, and ends up in `labels.jsonl`.
//!
//! Kinds (each a burst of 3 to 15 distinct events):
//! - `new_country_device`: sign-ins from a country and city the user has never been in, on a
//!   device, system and browser they have never used (Duo: approved on a phone they never had).
//! - `failure_burst`: a run of failures seconds apart (Azure: wrong password then lock-out;
//!   Duo: push requests timed out or denied, then lock-out or a fraud report).
//! - `new_apps`: sign-ins to several apps the user never used, within the hour, some refused.
//! - `impossible_travel`: a sign-in at home, then within the hour sign-ins from a country more
//!   than 5,000 km away. The home sign-in is an ordinary event of that day when the user has
//!   one early enough; otherwise the episode adds one (labelled like the rest).
//! - `off_hours`: activity at 2 to 4 am local time, sometimes to an app the user never used.

use std::fmt;

use rand_chacha::ChaCha8Rng;

use crate::cities::{CITIES, city_at, city_ip, distance_km};
use crate::config::{GenSource, GenerateConfig};
use crate::devices::Device;
use crate::normal::{base_event, local_to_utc};
use crate::random::{Stream, between, index, shuffle, stream_rng, unit};
use crate::users::User;
use crate::world::{DAY_MICROS, DevRef, Event, Factor, FailKind, MINUTE_MICROS, PhoneRef, World};

/// The kinds of injected anomaly, as written in `labels.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    /// Sign-ins from an unseen country and city, on an unseen device, system and browser.
    NewCountryDevice,
    /// Many failures within minutes.
    FailureBurst,
    /// Sudden access to several apps never used before.
    NewApps,
    /// A sign-in at home, then within the hour from a far-away country.
    ImpossibleTravel,
    /// Activity at 2 to 4 am local time.
    OffHours,
}

impl AnomalyKind {
    /// Every kind.
    pub const ALL: [AnomalyKind; 5] = [
        AnomalyKind::NewCountryDevice,
        AnomalyKind::FailureBurst,
        AnomalyKind::NewApps,
        AnomalyKind::ImpossibleTravel,
        AnomalyKind::OffHours,
    ];

    /// The label: `new_country_device`, `failure_burst`, `new_apps`, `impossible_travel`,
    /// `off_hours`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::NewCountryDevice => "new_country_device",
            AnomalyKind::FailureBurst => "failure_burst",
            AnomalyKind::NewApps => "new_apps",
            AnomalyKind::ImpossibleTravel => "impossible_travel",
            AnomalyKind::OffHours => "off_hours",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One planned episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Episode {
    /// Day index from the first day.
    pub day: u32,
    pub kind: AnomalyKind,
    /// The episode's number for its user (seeds its random stream).
    pub seq: u32,
}

/// Every user's episodes (empty for most users).
pub(super) fn plan(cfg: &GenerateConfig, world: &World) -> Vec<Vec<Episode>> {
    let n = world.users.len();
    let mut plan: Vec<Vec<Episode>> = (0..n).map(|_| Vec::new()).collect();
    if cfg.anomaly_days == 0 {
        return plan;
    }
    let count = ((n as f64 * cfg.anomaly_users_fraction).round() as usize).min(n);
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut stream_rng(cfg.seed, Stream::Plan, &[]), &mut order);
    let first_day = cfg.first_anomaly_day();
    for (rank, &u) in order.iter().take(count).enumerate() {
        let mut rng = stream_rng(cfg.seed, Stream::Plan, &[u as u64 + 1]);
        let episodes = 1 + u32::from(unit(&mut rng) < 0.4) + u32::from(unit(&mut rng) < 0.15);
        for seq in 0..episodes {
            let kind = if seq == 0 {
                AnomalyKind::ALL[rank % AnomalyKind::ALL.len()]
            } else {
                AnomalyKind::ALL[index(&mut rng, AnomalyKind::ALL.len())]
            };
            let day = first_day + between(&mut rng, 0, u64::from(cfg.anomaly_days - 1)) as u32;
            if let Some(p) = plan.get_mut(u) {
                p.push(Episode { day, kind, seq });
            }
        }
    }
    plan
}

/// Start time (microseconds from the UTC day's start) of a burst lasting up to `span`, placed
/// at `tod` but moved earlier if it would run past the end of the day.
fn fit(tod: i64, span: i64) -> i64 {
    tod.min(DAY_MICROS - span - 1).max(0)
}

/// Gaps between a burst's events, uniform in [lo, hi] seconds.
fn gap(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> i64 {
    between(rng, lo * 1_000_000, hi * 1_000_000) as i64
}

/// Indices of the apps the user never uses, shuffled.
fn unused_apps(world: &World, user: &User, rng: &mut ChaCha8Rng) -> Vec<u16> {
    let mut apps: Vec<u16> = (0..world.app_popularity.len() as u16)
        .filter(|a| !user.apps.contains(a))
        .collect();
    shuffle(rng, &mut apps);
    apps
}

/// A local working-hours time of day, as UTC time of day.
fn working_time(user: &User, rng: &mut ChaCha8Rng) -> i64 {
    let lo = user.work_start.max(0) as u64 * MINUTE_MICROS as u64;
    let hi = (user.work_end.max(user.work_start + 1) as u64) * MINUTE_MICROS as u64 - 1;
    local_to_utc(user, between(rng, lo, hi) as i64)
}

/// A device the user has never used: its system and browser unseen where possible.
fn unseen_device(world: &World, user: &User, rng: &mut ChaCha8Rng) -> u8 {
    let seen = |f: &dyn Fn(&Device) -> bool| user.devices.iter().any(f);
    let fresh: Vec<usize> = world
        .foreign_devices
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            !seen(&|o| {
                o.azure_os[0] == d.azure_os[0]
                    || o.duo_os == d.duo_os
                    || o.browser[0] == d.browser[0]
            })
        })
        .map(|(i, _)| i)
        .collect();
    let fallback: Vec<usize> = world
        .foreign_devices
        .iter()
        .enumerate()
        .filter(|(_, d)| !seen(&|o| o.duo_os == d.duo_os && o.browser[0] == d.browser[0]))
        .map(|(i, _)| i)
        .collect();
    let pool = if fresh.is_empty() { &fallback } else { &fresh };
    pool.get(index(rng, pool.len())).copied().unwrap_or(0) as u8
}

/// A far-away city (over 5,000 km from home), else the farthest one.
fn far_city(user: &User, rng: &mut ChaCha8Rng) -> u16 {
    let home = city_at(user.home);
    let foreign = || CITIES.iter().enumerate().filter(|(_, c)| c.metro == 0);
    let far: Vec<usize> = foreign()
        .filter(|(_, c)| distance_km(home, c) > 5000.0)
        .map(|(i, _)| i)
        .collect();
    match far.get(index(rng, far.len())) {
        Some(&i) => i as u16,
        None => foreign()
            .max_by(|a, b| distance_km(home, a.1).total_cmp(&distance_km(home, b.1)))
            .map_or(0, |(i, _)| i as u16),
    }
}

/// A city in a country the user has never been in.
fn foreign_city(rng: &mut ChaCha8Rng) -> u16 {
    let foreign: Vec<usize> = CITIES
        .iter()
        .enumerate()
        .filter(|(_, c)| c.metro == 0)
        .map(|(i, _)| i)
        .collect();
    foreign.get(index(rng, foreign.len())).copied().unwrap_or(0) as u16
}

/// Adds the events of episode `ep` of `user` to `events`; the user's ordinary events of the day
/// are `events[first..]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn inject(
    world: &World,
    user: &User,
    uid: u32,
    ep: &Episode,
    day_start: i64,
    first: usize,
    rng: &mut ChaCha8Rng,
    events: &mut Vec<Event>,
) {
    let kind = ep.kind;
    let mark = |mut e: Event| {
        e.anomaly = Some(kind);
        e
    };
    match kind {
        AnomalyKind::NewCountryDevice => {
            let city = foreign_city(rng);
            let device = unseen_device(world, user, rng);
            let phone = PhoneRef::Foreign(index(rng, world.foreign_phones.len()) as u8);
            let ip = city_ip(city, rng);
            let n = between(rng, 3, 8);
            let mut t = fit(
                between(rng, 0, DAY_MICROS as u64 - 1) as i64,
                60 * MINUTE_MICROS,
            );
            for i in 0..n {
                let mut e = base_event(world, user, uid, day_start + t, rng);
                e.device = DevRef::Foreign(device);
                e.era = 0;
                e.city = city;
                e.ip = ip;
                e.phone = phone;
                e.phone_city = city;
                e.phone_ip = ip;
                e.factor = if unit(rng) < 0.7 {
                    Factor::DuoPush
                } else {
                    Factor::SmsPasscode
                };
                e.interactive = i == 0 || unit(rng) < 0.5;
                e.browser_client = e.interactive;
                if unit(rng) < 0.15 {
                    e.fail = Some(if unit(rng) < 0.5 {
                        FailKind::Blocked
                    } else {
                        FailKind::MfaRequired
                    });
                }
                events.push(mark(e));
                t += gap(rng, 30, 360);
            }
        }
        AnomalyKind::FailureBurst => {
            let n = between(rng, 6, 15);
            let ip = city_ip(user.home, rng);
            let mut t = fit(
                between(rng, 0, DAY_MICROS as u64 - 1) as i64,
                15 * MINUTE_MICROS,
            );
            for i in 0..n {
                let mut e = base_event(world, user, uid, day_start + t, rng);
                e.device = DevRef::Own(0);
                e.era = user.devices.first().map_or(0, |d| d.era(ep.day));
                e.ip = ip;
                e.interactive = true;
                e.browser_client = true;
                e.factor = Factor::DuoPush;
                let last = i + 1 == n;
                e.fail = Some(match world.source {
                    GenSource::Azure if i >= 5 && unit(rng) < 0.5 => FailKind::Locked,
                    GenSource::Azure if unit(rng) < 0.75 => FailKind::BadSecret,
                    GenSource::Azure => FailKind::MfaDenied,
                    GenSource::Duo if last && unit(rng) < 0.3 => FailKind::Fraud,
                    GenSource::Duo if last && n >= 8 => FailKind::Locked,
                    GenSource::Duo if unit(rng) < 0.6 => FailKind::MfaTimeout,
                    GenSource::Duo => FailKind::MfaDenied,
                });
                events.push(mark(e));
                t += gap(rng, 5, 40);
            }
        }
        AnomalyKind::NewApps => {
            let apps = unused_apps(world, user, rng);
            let n = (between(rng, 4, 10) as usize).min(apps.len());
            let mut t = fit(working_time(user, rng), 90 * MINUTE_MICROS);
            for &app in apps.iter().take(n) {
                let mut e = base_event(world, user, uid, day_start + t, rng);
                e.app = app;
                e.ip = user.office_ip;
                e.interactive = true;
                e.browser_client = unit(rng) < 0.8;
                if unit(rng) < 0.25 {
                    e.fail = Some(FailKind::NotPermitted);
                }
                events.push(mark(e));
                t += gap(rng, 60, 480);
            }
        }
        AnomalyKind::ImpossibleTravel => {
            let latest = DAY_MICROS - 70 * MINUTE_MICROS;
            let anchor = events
                .get(first..)
                .unwrap_or(&[])
                .iter()
                .filter(|e| {
                    e.anomaly.is_none() && e.city == user.home && e.micros - day_start < latest
                })
                .map(|e| e.micros - day_start)
                .max();
            let anchor = match anchor {
                Some(t) => t,
                None => {
                    let t = fit(working_time(user, rng), 70 * MINUTE_MICROS);
                    let e = base_event(world, user, uid, day_start + t, rng);
                    events.push(mark(e));
                    t
                }
            };
            let city = far_city(user, rng);
            let ip = city_ip(city, rng);
            let n = between(rng, 2, 5);
            let mut t = anchor + gap(rng, 10 * 60, 50 * 60);
            for _ in 0..n {
                let mut e = base_event(world, user, uid, day_start + t.min(DAY_MICROS - 1), rng);
                e.city = city;
                e.ip = ip;
                // The push reaches the real user's phone, at home.
                e.phone_city = user.home;
                events.push(mark(e));
                t += gap(rng, 20, 120);
            }
        }
        AnomalyKind::OffHours => {
            let n = between(rng, 3, 8);
            let local = (2 * 60 + between(rng, 0, 100) as i64) * MINUTE_MICROS
                + between(rng, 0, MINUTE_MICROS as u64 - 1) as i64;
            let mut t = fit(local_to_utc(user, local), 45 * MINUTE_MICROS);
            let odd = if unit(rng) < 0.5 {
                unused_apps(world, user, rng).first().copied()
            } else {
                None
            };
            for _ in 0..n {
                let mut e = base_event(world, user, uid, day_start + t, rng);
                if let Some(app) = odd.filter(|_| unit(rng) < 0.6) {
                    e.app = app;
                }
                e.ip = user.home_ip;
                events.push(mark(e));
                t += gap(rng, 30, 300);
            }
        }
    }
}
