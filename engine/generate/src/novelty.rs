//! Benign novelty: what real users do that is new but normal, never labelled.
//!
//! Stable habits alone make a detector's thresholds far too tight for real logs, so on top of
//! them (rates in [`Novelty`], per month of 30 days):
//! - business travel: a trip to another home-metro city of the table (another metro, often
//!   another country) for 2 to 6 days. The flight leaves in the home city's daytime and takes
//!   1 h plus the distance at 800 km/h; nothing is signed in while in the air, so consecutive
//!   sign-ins at home and abroad are always a plausible flight apart. Whole days abroad follow
//!   the working hours in the destination's time zone, from a hotel address (mobile devices
//!   from the city's addresses);
//! - device changes: from some day a device runs a newer system and browser (era 2 of
//!   [`Device`]), or a new device of the same kind replaces one for good;
//! - teams adopting apps: on some day a team (the user's group) starts using an app, and most
//!   members who never used it do from then on, a quarter of their sign-ins;
//! - shift changes (2.5 h earlier to 10 h later, for 5 to 21 days) and weekend workers (on a
//!   weekend day, a third of the time, a weekday's volume and hours);
//! - VPN and egress: periods of 1 to 10 days when a user's computers sign in through the
//!   corporate VPN (one city and address shared by all users), and company-wide days from
//!   which every office address changes;
//! - volume: sparse users (a handful of sign-ins a week, many days none) and burst days (4 to
//!   10 times the usual volume);
//! - service accounts (`svc-...`): one app, one computer and one fixed address, a sign-in every
//!   15 to 60 minutes around the clock, every day.
//!
//! State: [`company`] draws what the whole company shares (egress change days, the VPN, each
//! team's new apps) from streams of its own; [`plan_users`] draws each user's [`Plan`] from a
//! stream seeded by (seed, user), so a day's events never depend on other days being
//! generated. [`user_day`] draws a user-day's ordinary events and applies the plan to them
//! with a (seed, user, day) stream of its own; with every rate 0 it consumes nothing from the
//! ordinary stream, so the output is the stable habits, byte for byte.

use rand_chacha::ChaCha8Rng;

use crate::cities::{CITIES, city_at, city_ip, distance_km};
use crate::config::{GenerateConfig, Novelty};
use crate::devices::{Device, Kind, device};
use crate::normal::normal_day;
use crate::random::{
    Stream, between, index, mix, poisson, random_uuid, stream_rng, unit, weighted,
};
use crate::users::{GROUPS, User};
use crate::world::{DAY_MICROS, DevRef, Event, Factor, FailKind, MINUTE_MICROS, PhoneRef, World};

const HOUR_MICROS: i64 = 60 * MINUTE_MICROS;

/// Days `first..end` (from the first day).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub first: u32,
    pub end: u32,
}

impl Span {
    fn contains(self, day: u32) -> bool {
        (self.first..self.end).contains(&day)
    }
}

/// A business trip; times are microseconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trip {
    /// The destination (index into [`CITIES`]) and the hotel's address.
    pub dest: u16,
    pub ip: u32,
    /// Leaves home, lands there, leaves there, lands at home.
    pub depart: i64,
    pub arrive: i64,
    pub leave: i64,
    pub back: i64,
}

/// A device replaced for good from `day` by the user's device `new`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replacement {
    pub day: u32,
    pub old: u8,
    pub new: u8,
}

/// A service account's schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Service {
    /// Microseconds between sign-ins, and the first one's time of day.
    pub period: i64,
    pub phase: i64,
    pub app: u16,
    pub ip: u32,
}

/// What a user does that is new but normal.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Set on service accounts, who do nothing else new.
    pub service: Option<Service>,
    /// Multiplies the user's volume every day (below 1 for sparse users).
    pub volume: f64,
    pub weekend_worker: bool,
    /// In time order, never overlapping.
    pub trips: Vec<Trip>,
    /// Working-hours shifts: the days, and how far local times move (microseconds).
    pub shifts: Vec<(Span, i64)>,
    /// Periods behind the corporate VPN.
    pub vpn: Vec<Span>,
    /// Burst days and their volume factor.
    pub bursts: Vec<(u32, f64)>,
    pub replacements: Vec<Replacement>,
    /// Apps the user's team adopted: from which day the user uses each.
    pub new_apps: Vec<(u32, u16)>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            service: None,
            volume: 1.0,
            weekend_worker: false,
            trips: Vec::new(),
            shifts: Vec::new(),
            vpn: Vec::new(),
            bursts: Vec::new(),
            replacements: Vec::new(),
            new_apps: Vec::new(),
        }
    }
}

/// What the whole company shares.
pub(crate) struct Company {
    /// Days from which every office address changes, in order.
    pub egress_changes: Vec<u32>,
    /// Where the corporate VPN egresses, and its address.
    pub vpn_city: u16,
    pub vpn_ip: u32,
    /// Per team (index into [`GROUPS`]): the day it starts using an app, and the app.
    pub team_apps: Vec<Vec<(u32, u16)>>,
}

/// A Poisson count of something that happens `rate` times a month, over the run.
fn count(rng: &mut ChaCha8Rng, rate: f64, days: u32) -> u32 {
    poisson(rng, rate * f64::from(days) / 30.0)
}

/// A day after the first (the first day stays as habits are).
fn some_day(rng: &mut ChaCha8Rng, days: u32) -> u32 {
    between(rng, 1, u64::from(days.saturating_sub(1)).max(1)) as u32
}

/// Draws what the company shares.
pub(crate) fn company(cfg: &GenerateConfig, app_popularity: &[u32]) -> Company {
    let n = &cfg.novelty;
    let mut rng = stream_rng(cfg.seed, Stream::Company, &[]);
    let changes = count(&mut rng, n.egress_change_rate, cfg.days);
    let mut egress_changes: Vec<u32> = (0..changes).map(|_| some_day(&mut rng, cfg.days)).collect();
    egress_changes.sort_unstable();
    let home_weights: Vec<u32> = CITIES.iter().map(|c| c.weight).collect();
    let vpn_city = weighted(&mut rng, &home_weights) as u16;
    let vpn_ip = city_ip(vpn_city, &mut rng);
    let team_apps = (0..GROUPS.len())
        .map(|t| {
            let mut rng = stream_rng(cfg.seed, Stream::Teams, &[t as u64]);
            let k = count(&mut rng, n.team_app_rate, cfg.days);
            (0..k)
                .map(|_| {
                    let day = some_day(&mut rng, cfg.days);
                    (day, weighted(&mut rng, app_popularity) as u16)
                })
                .collect()
        })
        .collect();
    Company {
        egress_changes,
        vpn_city,
        vpn_ip,
        team_apps,
    }
}

/// Draws every user's plan (and the devices it adds), each from its own stream.
pub(crate) fn plan_users(cfg: &GenerateConfig, company: &Company, users: &mut [User]) {
    for (u, user) in users.iter_mut().enumerate() {
        let mut rng = stream_rng(cfg.seed, Stream::Novelty, &[u as u64]);
        plan_user(cfg, company, user, &mut rng);
        if let Some(r) = &cfg.rollout {
            let mut rng = stream_rng(cfg.seed, Stream::Rollout, &[u as u64]);
            if unit(&mut rng) < r.share {
                user.devices.iter_mut().for_each(|d| d.switch_on(r.day));
            }
        }
    }
}

fn plan_user(cfg: &GenerateConfig, company: &Company, user: &mut User, rng: &mut ChaCha8Rng) {
    let n: &Novelty = &cfg.novelty;
    let days = cfg.days;
    if unit(rng) < n.service_account_fraction {
        make_service(user, rng);
        return;
    }
    let mut plan = Plan::default();
    if unit(rng) < n.sparse_user_fraction {
        plan.volume = (0.15 + 0.75 * unit(rng)) / user.mean_per_day.max(0.1);
    }
    plan.weekend_worker = unit(rng) < n.weekend_worker_fraction;
    plan.trips = trips(cfg, user, rng);
    for _ in 0..count(rng, n.upgrade_rate, days) {
        change_device(user, &mut plan, some_day(rng, days), days, rng);
    }
    for &(day, app) in company
        .team_apps
        .get(usize::from(user.team))
        .into_iter()
        .flatten()
    {
        if !user.apps.contains(&app) && unit(rng) < 0.85 {
            plan.new_apps.push((day + between(rng, 0, 3) as u32, app));
        }
    }
    for _ in 0..count(rng, n.shift_rate, days) {
        let first = some_day(rng, days);
        let end = first + between(rng, 5, 21) as u32;
        let hours = [-2.5, 4.0, 7.0, 10.0][index(rng, 4)];
        plan.shifts
            .push((Span { first, end }, (hours * HOUR_MICROS as f64) as i64));
    }
    for _ in 0..count(rng, n.vpn_rate, days) {
        let first = some_day(rng, days);
        let end = first + between(rng, 1, 10) as u32;
        plan.vpn.push(Span { first, end });
    }
    for _ in 0..count(rng, n.burst_rate, days) {
        plan.bursts
            .push((some_day(rng, days), 4.0 + 6.0 * unit(rng)));
    }
    user.novelty = plan;
}

/// Makes `user` a service account: `svc-` name, one app, one computer, one address.
fn make_service(user: &mut User, rng: &mut ChaCha8Rng) {
    user.name = format!("svc-{}", user.name);
    user.display = user.name.split('@').next().unwrap_or("svc").to_string();
    user.factor = Factor::Passcode;
    let period = between(rng, 15, 60) as i64 * MINUTE_MICROS;
    user.novelty = Plan {
        service: Some(Service {
            period,
            phase: between(rng, 0, period as u64 - 1) as i64,
            app: user.apps.first().copied().unwrap_or(0),
            ip: city_ip(user.home, rng),
        }),
        ..Plan::default()
    };
}

/// One hour plus the distance at 800 km/h.
fn flight_micros(km: f64) -> i64 {
    HOUR_MICROS + (km / 800.0 * HOUR_MICROS as f64) as i64
}

/// The user's trips, in order, at least a day at home between two.
fn trips(cfg: &GenerateConfig, user: &User, rng: &mut ChaCha8Rng) -> Vec<Trip> {
    let home = city_at(user.home);
    let weights: Vec<u32> = CITIES
        .iter()
        .map(|c| if c.metro == home.metro { 0 } else { c.weight })
        .collect();
    let k = count(rng, cfg.novelty.travel_rate, cfg.days);
    let mut starts: Vec<u32> = (0..k).map(|_| some_day(rng, cfg.days)).collect();
    starts.sort_unstable();
    let start = crate::config::day_start_micros(cfg.start, 0).unwrap_or(0);
    let mut out: Vec<Trip> = Vec::new();
    for d in starts {
        let dest = weighted(rng, &weights) as u16;
        let to = city_at(dest);
        let stay = between(rng, 2, 6) as i64;
        let day = start + i64::from(d) * DAY_MICROS;
        let depart = day + between(rng, 7 * 60, 19 * 60) as i64 * MINUTE_MICROS
            - i64::from(home.tz) * MINUTE_MICROS;
        let flight = flight_micros(distance_km(home, to));
        let arrive = depart + flight;
        let mut leave =
            day + stay * DAY_MICROS + between(rng, 8 * 60, 20 * 60) as i64 * MINUTE_MICROS
                - i64::from(to.tz) * MINUTE_MICROS;
        while leave < arrive + DAY_MICROS {
            leave += DAY_MICROS;
        }
        let ip = city_ip(dest, rng);
        if out.last().is_some_and(|t| depart < t.back + DAY_MICROS) {
            continue;
        }
        out.push(Trip {
            dest,
            ip,
            depart,
            arrive,
            leave,
            back: leave + flight,
        });
    }
    out
}

/// A system and browser update of one of the user's devices, or a new device of the same kind
/// replacing it, from `day`.
fn change_device(user: &mut User, plan: &mut Plan, day: u32, days: u32, rng: &mut ChaCha8Rng) {
    let owned = user.device_weights.len();
    let d = index(rng, owned);
    if unit(rng) < 0.6 || plan.replacements.iter().any(|r| usize::from(r.old) == d) {
        if let Some(dev) = user.devices.get_mut(d) {
            dev.update_on(day);
        }
        return;
    }
    let Some(kind) = user.devices.get(d).map(|o| o.kind) else {
        return;
    };
    let (first, last) = user.display.split_once(' ').unwrap_or((&user.display, ""));
    let mut new: Device = device(kind, first, last, days, rng);
    if matches!(kind, Kind::WinLaptop | Kind::WinDesktop) {
        new.display_name.push('2');
    }
    new.device_id = new.device_id.map(|_| random_uuid(rng));
    plan.replacements.push(Replacement {
        day,
        old: d as u8,
        new: user.devices.len() as u8,
    });
    user.devices.push(new);
}

/// The user-day being drawn.
pub(crate) struct Today {
    pub uid: u32,
    pub day: u32,
    pub day_start: i64,
    pub weekend: bool,
}

/// Appends the user's events of the day to `out`: a service account's schedule, or the
/// ordinary events with the plan applied. `rng` is the user-day's ordinary stream, `nov` its
/// novelty stream.
pub(crate) fn user_day(
    world: &World,
    user: &User,
    today: &Today,
    rng: &mut ChaCha8Rng,
    nov: &mut ChaCha8Rng,
    out: &mut Vec<Event>,
) {
    let plan = &user.novelty;
    if let Some(svc) = &plan.service {
        service_day(user, svc, today, rng, out);
        return;
    }
    let works_weekend = today.weekend && plan.weekend_worker && unit(nov) < 0.35;
    let burst = plan
        .bursts
        .iter()
        .filter(|b| b.0 == today.day)
        .fold(1.0, |f: f64, b| f.max(b.1));
    let first = out.len();
    normal_day(
        world,
        user,
        today.uid,
        today.day,
        today.day_start,
        today.weekend && !works_weekend,
        plan.volume * burst,
        rng,
        out,
    );
    apply(world, user, today, nov, out, first);
}

/// A sign-in every period (give or take 20 s), around the clock.
fn service_day(
    user: &User,
    svc: &Service,
    today: &Today,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Event>,
) {
    let era = user.devices.first().map_or(0, |d| d.era(today.day));
    let mut t = svc.phase;
    while t < DAY_MICROS {
        let jitter = between(rng, 0, 40_000_000) as i64 - 20_000_000;
        out.push(Event {
            micros: today.day_start + (t + jitter).clamp(0, DAY_MICROS - 1),
            id: random_uuid(rng),
            user: today.uid,
            device: DevRef::Own(0),
            era,
            city: user.home,
            ip: svc.ip,
            app: svc.app,
            fail: (unit(rng) < 0.002).then_some(FailKind::SessionExpired),
            interactive: false,
            browser_client: false,
            factor: Factor::Passcode,
            phone: PhoneRef::Own,
            phone_city: user.home,
            phone_ip: svc.ip,
            anomaly: None,
        });
        t += svc.period.max(MINUTE_MICROS);
    }
}

/// The office address after the company's `k`-th egress change: another in the same /16.
fn egress_ip(ip: u32, k: usize) -> u32 {
    (ip & 0xffff_0000) | (256 + (mix(&[u64::from(ip), k as u64]) % 65_024) as u32)
}

/// Applies the plan to the user's ordinary events of the day, `out[first..]`: shifted hours,
/// trips (dropping what falls in the air), replaced devices, VPN and egress addresses, the
/// team's new apps.
fn apply(
    world: &World,
    user: &User,
    today: &Today,
    nov: &mut ChaCha8Rng,
    out: &mut Vec<Event>,
    first: usize,
) {
    let plan = &user.novelty;
    let (day, day_start) = (today.day, today.day_start);
    let shift = plan
        .shifts
        .iter()
        .find(|s| s.0.contains(day))
        .map_or(0, |s| s.1);
    // A whole day abroad follows the destination's clock.
    let abroad = plan
        .trips
        .iter()
        .find(|t| t.arrive <= day_start && day_start + DAY_MICROS <= t.leave);
    let tz = abroad.map_or(0, |t| {
        user.tz_micros() - i64::from(city_at(t.dest).tz) * MINUTE_MICROS
    });
    let offset = shift + tz;
    let vpn = plan.vpn.iter().any(|s| s.contains(day));
    let egress = world
        .company
        .egress_changes
        .iter()
        .filter(|&&d| d <= day)
        .count();
    let apps = plan.new_apps.iter().filter(|a| a.0 <= day).count();
    let mut keep = first;
    for i in first..out.len() {
        let mut e = out[i];
        if offset != 0 {
            e.micros = day_start + (e.micros - day_start + offset).rem_euclid(DAY_MICROS);
        }
        if let DevRef::Own(d) = e.device
            && let Some(r) = plan
                .replacements
                .iter()
                .find(|r| r.old == d && r.day <= day)
        {
            e.device = DevRef::Own(r.new);
            e.era = user.device(world, e.device).map_or(0, |d| d.era(day));
        }
        let mobile = user.device(world, e.device).is_some_and(|d| d.mobile);
        match plan
            .trips
            .iter()
            .find(|t| t.depart <= e.micros && e.micros < t.back)
        {
            // In the air: no sign-in.
            Some(t) if e.micros < t.arrive || e.micros >= t.leave => continue,
            Some(t) => {
                e.city = t.dest;
                e.phone_city = t.dest;
                e.phone_ip = city_ip(t.dest, nov);
                e.ip = if mobile { e.phone_ip } else { t.ip };
            }
            None if vpn && !mobile => {
                e.city = world.company.vpn_city;
                e.ip = world.company.vpn_ip;
            }
            None if egress > 0 && e.ip == user.office_ip => e.ip = egress_ip(e.ip, egress),
            None => {}
        }
        if apps > 0 && unit(nov) < 0.25 {
            let pick = index(nov, apps);
            if let Some(&(_, app)) = plan.new_apps.iter().filter(|a| a.0 <= day).nth(pick) {
                e.app = app;
            }
        }
        out[keep] = e;
        keep += 1;
    }
    out.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GenSource;
    use crate::{anomaly, day_events};
    use std::collections::{BTreeMap, BTreeSet};

    fn cfg(users: usize, days: u32, novelty: Novelty) -> GenerateConfig {
        let start = chrono::NaiveDate::from_ymd_opt(2022, 8, 1).expect("date");
        let mut c = GenerateConfig::new(GenSource::Azure, users, days, start, 42);
        c.anomaly_users_fraction = 0.0;
        c.novelty = novelty;
        c
    }

    fn only(set: impl FnOnce(&mut Novelty)) -> Novelty {
        let mut n = Novelty::none();
        set(&mut n);
        n
    }

    /// The world and every user's events in time order.
    fn run(c: &GenerateConfig) -> (World, Vec<Vec<Event>>) {
        let world = World::new(c);
        let plan = anomaly::plan(c, &world);
        let mut all = Vec::new();
        for day in 0..c.days {
            day_events(c, &world, &plan, day, &mut all).expect("day");
        }
        let mut per_user: Vec<Vec<Event>> = vec![Vec::new(); c.users];
        for e in all {
            per_user[e.user as usize].push(e);
        }
        for v in &mut per_user {
            v.sort_by_key(|e| (e.micros, e.id));
        }
        (world, per_user)
    }

    fn day_of(world: &World, e: &Event) -> u32 {
        ((e.micros - world.start_micros) / DAY_MICROS) as u32
    }

    #[test]
    fn travel_takes_plausible_flights_and_lasts_days() {
        let (world, users) = run(&cfg(80, 60, only(|n| n.travel_rate = 1.0)));
        let (mut trips, mut seen_abroad) = (0, 0);
        for (user, events) in world.users.iter().zip(&users) {
            let home = city_at(user.home);
            for t in &user.novelty.trips {
                trips += 1;
                assert_ne!(city_at(t.dest).metro, home.metro);
                assert!(
                    city_at(t.dest).metro > 0,
                    "travel goes to a home-metro city"
                );
                let stay = (t.leave - t.arrive) as f64 / DAY_MICROS as f64;
                assert!((1.0..=8.0).contains(&stay), "{stay} days");
                let there: Vec<&Event> = events
                    .iter()
                    .filter(|e| (t.arrive..t.leave).contains(&e.micros))
                    .collect();
                assert!(there.iter().all(|e| e.city == t.dest));
                if there.len() >= 2 {
                    seen_abroad += 1;
                }
            }
            for w in events.windows(2) {
                let (a, b) = (city_at(w[0].city), city_at(w[1].city));
                if a.metro != b.metro {
                    let hours = (w[1].micros - w[0].micros) as f64 / HOUR_MICROS as f64;
                    let km = distance_km(a, b);
                    assert!(
                        hours >= km / 900.0,
                        "{} to {}: {km} km in {hours} h",
                        a.name,
                        b.name
                    );
                }
            }
        }
        // 80 users x 2 months x 1 trip, fewer where trips would overlap.
        assert!((70..=200).contains(&trips), "{trips} trips");
        assert!(seen_abroad * 10 >= trips * 7, "{seen_abroad} of {trips}");

        let (world, users) = run(&cfg(40, 30, Novelty::none()));
        for (user, events) in world.users.iter().zip(&users) {
            assert!(user.novelty.trips.is_empty());
            let metro = city_at(user.home).metro;
            assert!(events.iter().all(|e| city_at(e.city).metro == metro));
        }
    }

    #[test]
    fn a_rollout_moves_a_share_of_users_to_the_new_browser_from_its_day_and_nothing_else() {
        let mut c = cfg(200, 20, Novelty::none());
        c.rollout = Some(crate::Rollout {
            day: 12,
            share: 0.8,
        });
        let (world, users) = run(&c);
        let (without, _) = run(&cfg(200, 20, Novelty::none()));
        let mut moved = 0;
        for ((user, events), before) in world.users.iter().zip(&users).zip(&without.users) {
            let switched = user.devices.iter().all(|d| d.update_day == 12);
            moved += usize::from(switched);
            for (d, b) in user
                .devices
                .iter()
                .zip(&before.devices)
                .filter(|_| switched)
            {
                assert_eq!(d.azure_os[2], b.azure_os[1]);
                assert_eq!(d.os_version[2], b.os_version[1]);
            }
            for e in events {
                let dev = user.device(&world, e.device).expect("device");
                let new = dev.browser[usize::from(e.era)] == "Brave";
                let later = day_of(&world, e) >= 12;
                assert_eq!(new, switched && later && matches!(e.device, DevRef::Own(_)));
            }
        }
        assert!((140..=180).contains(&moved), "{moved} of 200 users moved");
    }

    #[test]
    fn devices_are_updated_or_replaced_for_good() {
        let (world, users) = run(&cfg(80, 60, only(|n| n.upgrade_rate = 1.0)));
        let (mut updates, mut replaced, mut visible) = (0, 0, 0);
        for (user, events) in world.users.iter().zip(&users) {
            for d in &user.devices {
                if d.update_day != u32::MAX {
                    updates += 1;
                    if d.user_agent[2] != d.user_agent[1] || d.azure_os[2] != d.azure_os[1] {
                        visible += 1;
                    }
                }
            }
            for e in events {
                let day = day_of(&world, e);
                let dev = user.device(&world, e.device).expect("device");
                assert_eq!(e.era, dev.era(day));
                for r in &user.novelty.replacements {
                    assert!(!(e.device == DevRef::Own(r.old) && day >= r.day));
                    assert!(!(e.device == DevRef::Own(r.new) && day < r.day));
                }
            }
            for r in &user.novelty.replacements {
                replaced += 1;
                assert_eq!(
                    user.devices[usize::from(r.new)].kind,
                    user.devices[usize::from(r.old)].kind
                );
            }
        }
        // 80 users x 2 months x 1 change (updates of one device on two days count once).
        assert!(
            (70..=200).contains(&(updates + replaced)),
            "{updates} + {replaced}"
        );
        assert!(replaced > 20 && updates > 40, "{updates} + {replaced}");
        assert!(visible * 2 > updates, "{visible} of {updates} visible");

        let (world, _) = run(&cfg(40, 30, Novelty::none()));
        for u in &world.users {
            assert_eq!(u.devices.len(), u.device_weights.len());
            assert!(u.devices.iter().all(|d| d.update_day == u32::MAX));
        }
    }

    #[test]
    fn teams_adopt_apps_their_members_use_from_then_on() {
        let (world, users) = run(&cfg(120, 60, only(|n| n.team_app_rate = 1.0)));
        let adoptions: usize = world.company.team_apps.iter().map(Vec::len).sum();
        // 8 teams x 2 months x 1 app.
        assert!((6..=30).contains(&adoptions), "{adoptions} adoptions");
        let (mut pairs, mut used) = (0, 0);
        for (user, events) in world.users.iter().zip(&users) {
            let team = &world.company.team_apps[usize::from(user.team)];
            for &(day, app) in &user.novelty.new_apps {
                assert!(
                    team.iter()
                        .any(|&(d, a)| a == app && (d..=d + 3).contains(&day))
                );
                pairs += 1;
                if events.iter().any(|e| e.app == app) {
                    used += 1;
                }
            }
            for e in events.iter().filter(|e| !user.apps.contains(&e.app)) {
                let day = day_of(&world, e);
                assert!(
                    user.novelty
                        .new_apps
                        .iter()
                        .any(|&(d, a)| a == e.app && d <= day),
                    "an unplanned new app"
                );
            }
        }
        assert!(
            pairs > 30 && used * 10 >= pairs * 7,
            "{used} of {pairs} used"
        );
    }

    #[test]
    fn shifts_move_hours_and_weekend_workers_work_weekends() {
        let (world, shifted) = run(&cfg(80, 60, only(|n| n.shift_rate = 1.0)));
        let (_, stable) = run(&cfg(80, 60, Novelty::none()));
        let mut shifts = 0;
        for ((user, a), b) in world.users.iter().zip(&shifted).zip(&stable) {
            shifts += user.novelty.shifts.len();
            let before: BTreeMap<u128, i64> = b.iter().map(|e| (e.id, e.micros)).collect();
            assert_eq!(a.len(), b.len(), "a shift moves events, it adds none");
            for e in a {
                let day = day_of(&world, e);
                let was = before[&e.id];
                let moved = user.novelty.shifts.iter().find(|s| s.0.contains(day));
                let expect = moved.map_or(was, |s| {
                    let start = world.start_micros + i64::from(day) * DAY_MICROS;
                    start + (was - start + s.1).rem_euclid(DAY_MICROS)
                });
                assert_eq!(e.micros, expect);
            }
        }
        assert!((70..=220).contains(&shifts), "{shifts} shifts");

        // 2022-08-01 is a Monday: days 5, 6, 12, 13 ... are weekends.
        let weekend = |d: u32| d % 7 >= 5;
        let counts = |n: Novelty| {
            let (world, users) = run(&cfg(80, 28, n));
            let mut c = [0usize; 2];
            for e in users.iter().flatten() {
                c[usize::from(weekend(day_of(&world, e)))] += 1;
            }
            c
        };
        let all = counts(only(|n| n.weekend_worker_fraction = 1.0));
        let none = counts(Novelty::none());
        assert_eq!(all[0], none[0], "weekdays unchanged");
        assert!(all[1] * 2 > none[1] * 3, "{all:?} vs {none:?}");
    }

    #[test]
    fn vpn_periods_and_egress_changes_share_addresses() {
        let n = only(|n| {
            n.vpn_rate = 1.0;
            n.egress_change_rate = 3.0;
        });
        let (world, users) = run(&cfg(80, 60, n));
        let co = &world.company;
        assert!(
            (2..=12).contains(&co.egress_changes.len()),
            "{:?}",
            co.egress_changes
        );
        let first_change = co.egress_changes[0];
        let mut vpn_users = BTreeSet::new();
        let mut new_office = 0;
        for (user, events) in world.users.iter().zip(&users) {
            for e in events {
                let day = day_of(&world, e);
                if e.ip == co.vpn_ip {
                    assert!(user.novelty.vpn.iter().any(|s| s.contains(day)));
                    assert_eq!(e.city, co.vpn_city);
                    vpn_users.insert(e.user);
                }
                if day >= first_change {
                    assert_ne!(
                        e.ip, user.office_ip,
                        "the old office address after a change"
                    );
                    let k = co.egress_changes.iter().filter(|&&d| d <= day).count();
                    new_office += usize::from(e.ip == egress_ip(user.office_ip, k));
                }
            }
        }
        // 80 users x 2 months x 1 period: most users.
        assert!(
            vpn_users.len() >= 40,
            "{} users on the VPN",
            vpn_users.len()
        );
        assert!(
            new_office > 1000,
            "{new_office} sign-ins from new office addresses"
        );
    }

    #[test]
    fn sparse_users_and_bursts_spread_volumes() {
        let n = only(|n| {
            n.sparse_user_fraction = 0.2;
            n.burst_rate = 1.0;
        });
        let (world, users) = run(&cfg(200, 28, n));
        let (mut sparse, mut bursts, mut big) = (0, 0, 0);
        for (user, events) in world.users.iter().zip(&users) {
            let mut per_day = [0usize; 28];
            for e in events {
                per_day[day_of(&world, e) as usize] += 1;
            }
            if user.novelty.volume < 1.0 {
                sparse += 1;
                assert!(events.len() <= 60, "{} events in 4 weeks", events.len());
                assert!(per_day.contains(&0));
                continue;
            }
            let weekdays: Vec<usize> = (0..28).filter(|d| d % 7 < 5).map(|d| per_day[d]).collect();
            let mean = weekdays.iter().sum::<usize>() as f64 / weekdays.len() as f64;
            for &(day, _) in &user.novelty.bursts {
                if day % 7 < 5 && day < 28 {
                    bursts += 1;
                    big += usize::from(per_day[day as usize] as f64 >= 2.5 * mean);
                }
            }
        }
        assert!((20..=65).contains(&sparse), "{sparse} sparse users");
        assert!(
            bursts > 50 && big * 10 >= bursts * 7,
            "{big} of {bursts} bursts"
        );
    }

    #[test]
    fn service_accounts_sign_in_like_machines() {
        let (world, users) = run(&cfg(100, 14, only(|n| n.service_account_fraction = 0.1)));
        let mut accounts = 0;
        for (user, events) in world.users.iter().zip(&users) {
            let Some(svc) = user.novelty.service else {
                assert!(!user.name.starts_with("svc-"));
                continue;
            };
            accounts += 1;
            assert!(user.name.starts_with("svc-"));
            let one =
                |f: &dyn Fn(&Event) -> u128| events.iter().map(f).collect::<BTreeSet<_>>().len();
            assert_eq!(one(&|e| u128::from(e.app)), 1);
            assert_eq!(one(&|e| u128::from(e.ip)), 1);
            assert!(
                events
                    .iter()
                    .all(|e| e.device == DevRef::Own(0) && !e.interactive)
            );
            let mut per_day = [0usize; 14];
            for e in events {
                per_day[day_of(&world, e) as usize] += 1;
            }
            assert!(per_day.iter().all(|&n| n >= 20), "{per_day:?}");
            for w in events.windows(2) {
                if day_of(&world, &w[0]) == day_of(&world, &w[1]) {
                    let gap = w[1].micros - w[0].micros;
                    assert!(
                        (gap - svc.period).abs() <= 41_000_000,
                        "{gap} vs {}",
                        svc.period
                    );
                }
            }
        }
        assert!((3..=20).contains(&accounts), "{accounts} service accounts");
    }

    #[test]
    fn without_novelty_users_keep_their_stable_habits() {
        let (world, users) = run(&cfg(60, 30, Novelty::none()));
        for (user, events) in world.users.iter().zip(&users) {
            assert!(user.novelty.service.is_none() && user.novelty.volume == 1.0);
            let metro = city_at(user.home).metro;
            for e in events {
                assert_eq!(city_at(e.city).metro, metro);
                assert!(
                    matches!(e.device, DevRef::Own(d) if usize::from(d) < user.device_weights.len())
                );
                assert!(e.era <= 1);
                assert!(user.apps.contains(&e.app));
                assert!(e.ip != world.company.vpn_ip);
            }
        }
    }

    #[test]
    fn labels_stay_attacks_only_and_bytes_stay_the_same() {
        let mut c = cfg(30, 8, Novelty::default());
        c.novelty.travel_rate = 4.0;
        c.novelty.upgrade_rate = 4.0;
        c.novelty.vpn_rate = 4.0;
        c.novelty.service_account_fraction = 0.1;
        let (a, b) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let s = crate::generate(&c, a.path()).expect("gen");
        assert!(s.records > 1000);
        assert_eq!(s.anomalous_records, 0);
        assert_eq!(std::fs::read(&s.labels).expect("labels").len(), 0);
        crate::generate(&c, b.path()).expect("gen");
        for f in &s.files {
            let name = f.file_name().expect("name");
            assert_eq!(
                std::fs::read(f).expect("a"),
                std::fs::read(b.path().join(name)).expect("b")
            );
        }
        c.anomaly_users_fraction = 0.3;
        let s2 = crate::generate(&c, b.path()).expect("gen");
        assert!(s2.anomalous_records > 0);
        assert_eq!(s2.records - s2.anomalous_records, s.records);
    }
}
