//! The ordinary (non-anomalous) events of a user-day, from the user's habits.
//!
//! A user-day's events come in short sessions (one device, one place, a few minutes apart),
//! mostly in working hours, far fewer at weekends; about 3% of sessions come from the nearby
//! city.

use rand_chacha::ChaCha8Rng;

use crate::cities::city_ip;
use crate::config::GenSource;
use crate::random::{between, normal, poisson, random_uuid, unit, weighted};
use crate::users::User;
use crate::world::{DAY_MICROS, DevRef, Event, Factor, FailKind, MINUTE_MICROS, PhoneRef, World};

/// Weekday and weekend multipliers of the mean (a weekend day has a quarter of a weekday's
/// volume; over a week they average to 1).
pub(crate) const WEEKDAY: f64 = 7.0 / 5.5;
pub(crate) const WEEKEND: f64 = 0.25 * 7.0 / 5.5;

/// A benign failure, as users make them every day.
pub(crate) fn benign_failure(source: GenSource, factor: Factor, rng: &mut ChaCha8Rng) -> FailKind {
    use FailKind::*;
    match source {
        GenSource::Azure => {
            const KINDS: [FailKind; 6] = [
                Interrupt,
                MfaRequired,
                SessionExpired,
                BadSecret,
                MfaDenied,
                MfaTimeout,
            ];
            KINDS[weighted(rng, &[30, 30, 15, 15, 5, 5])]
        }
        GenSource::Duo => match factor {
            Factor::Passcode | Factor::SmsPasscode => {
                [BadSecret, SessionExpired][weighted(rng, &[70, 30])]
            }
            Factor::PhoneCall => [MfaTimeout, MfaDenied][weighted(rng, &[70, 30])],
            Factor::DuoPush => {
                [MfaTimeout, MfaDenied, SessionExpired][weighted(rng, &[55, 35, 10])]
            }
        },
    }
}

/// A second factor: mostly the user's own, sometimes a push.
pub(crate) fn pick_factor(user: &User, rng: &mut ChaCha8Rng) -> Factor {
    if unit(rng) < 0.9 {
        user.factor
    } else {
        Factor::DuoPush
    }
}

/// An app from the user's usual ones.
pub(crate) fn usual_app(user: &User, rng: &mut ChaCha8Rng) -> u16 {
    user.apps
        .get(weighted(rng, &user.app_weights))
        .copied()
        .unwrap_or(0)
}

/// An ordinary event of `user` at `micros` from their own device and home, to be adjusted.
pub(crate) fn base_event(
    world: &World,
    user: &User,
    uid: u32,
    micros: i64,
    rng: &mut ChaCha8Rng,
) -> Event {
    let device = weighted(rng, &user.device_weights) as u8;
    let day = ((micros - world.start_micros).div_euclid(DAY_MICROS)).max(0) as u32;
    let era = user
        .devices
        .get(usize::from(device))
        .map_or(0, |d| d.era(day));
    let factor = pick_factor(user, rng);
    Event {
        micros,
        id: random_uuid(rng),
        user: uid,
        device: DevRef::Own(device),
        era,
        city: user.home,
        ip: user.home_ip,
        app: usual_app(user, rng),
        fail: None,
        interactive: true,
        browser_client: true,
        factor,
        phone: PhoneRef::Own,
        phone_city: user.home,
        phone_ip: city_ip(user.home, rng),
        anomaly: None,
    }
}

/// Local time of day (microseconds) a session starts.
pub(crate) fn session_start(user: &User, weekend: bool, rng: &mut ChaCha8Rng) -> i64 {
    let minutes = |lo: i64, hi: i64, rng: &mut ChaCha8Rng| -> i64 {
        between(rng, lo.max(0) as u64, (hi - 1).max(lo).max(0) as u64) as i64
    };
    let m = if weekend {
        minutes(9 * 60, 21 * 60, rng)
    } else {
        let r = unit(rng);
        if r < 0.86 {
            minutes(user.work_start, user.work_end, rng)
        } else if r < 0.93 {
            minutes(user.work_start - 90, user.work_start, rng)
        } else if r < 0.98 {
            minutes(user.work_end, user.work_end + 120, rng)
        } else {
            minutes(user.work_end + 120, 23 * 60 + 30, rng)
        }
    };
    m * MINUTE_MICROS + between(rng, 0, MINUTE_MICROS as u64 - 1) as i64
}

/// Local time of day to UTC time of day, wrapped into the same UTC day.
pub(crate) fn local_to_utc(user: &User, local: i64) -> i64 {
    (local - user.tz_micros()).rem_euclid(DAY_MICROS)
}

/// The user's ordinary events of one UTC day, appended to `out`; `volume` scales their mean
/// (1: the user's usual volume).
#[allow(clippy::too_many_arguments)]
pub(crate) fn normal_day(
    world: &World,
    user: &User,
    uid: u32,
    day: u32,
    day_start: i64,
    weekend: bool,
    volume: f64,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Event>,
) {
    let factor = if weekend { WEEKEND } else { WEEKDAY };
    let jitter = (0.1 * normal(rng)).exp();
    let n = poisson(rng, user.mean_per_day * factor * jitter * volume);
    let mut made = 0;
    while made < n {
        let mut size = 1;
        while size < 8 && unit(rng) < 0.55 {
            size += 1;
        }
        let size = size.min(n - made);
        let local = session_start(user, weekend, rng);
        let device = weighted(rng, &user.device_weights) as u8;
        let dev = user.devices.get(usize::from(device));
        let mobile = dev.is_some_and(|d| d.mobile);
        let era = dev.map_or(0, |d| d.era(day));
        let away = unit(rng) < 0.03;
        let city = if away { user.near } else { user.home };
        let at_work = !weekend
            && (user.work_start * MINUTE_MICROS..user.work_end * MINUTE_MICROS).contains(&local);
        let mobile_ip = city_ip(city, rng);
        let ip = if away || mobile {
            mobile_ip
        } else if at_work && unit(rng) < 0.7 {
            user.office_ip
        } else {
            user.home_ip
        };
        let factor = pick_factor(user, rng);
        let interactive_first = unit(rng) < (user.interactive_share * 1.6).min(1.0);
        let mut t = local;
        let mut app = usual_app(user, rng);
        for k in 0..size {
            if k > 0 {
                let gap = -(1.0 - unit(rng)).ln() * 4.0 * MINUTE_MICROS as f64;
                t += 1_000_000 + gap as i64;
                if unit(rng) < 0.5 {
                    app = usual_app(user, rng);
                }
            }
            let interactive = if k == 0 {
                interactive_first
            } else {
                unit(rng) < user.interactive_share * 0.5
            };
            let browser_client = interactive && unit(rng) < if mobile { 0.3 } else { 0.8 };
            let fail = if unit(rng) < user.fail_rate {
                Some(benign_failure(world.source, factor, rng))
            } else {
                None
            };
            out.push(Event {
                micros: day_start + local_to_utc(user, t),
                id: random_uuid(rng),
                user: uid,
                device: DevRef::Own(device),
                era,
                city,
                ip,
                app,
                fail,
                interactive,
                browser_client,
                factor,
                phone: PhoneRef::Own,
                phone_city: city,
                phone_ip: mobile_ip,
                anomaly: None,
            });
        }
        made += size;
    }
}
