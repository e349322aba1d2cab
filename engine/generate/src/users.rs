//! Users and their habits, drawn from the seed.
//!
//! Every user gets: a unique username (first initial + last name, some with a dot,
//! `@domain.com`), a home city and a nearby second city, one to three devices (OS, browser and
//! its version, which is upgraded once on a random day), a phone for Duo, a small set of usual
//! apps with Zipf-like preferences, working hours in the home time zone, a failure rate, a
//! preferred second factor, and a mean number of events per day drawn from one of three volume
//! classes (light, regular, heavy; see [`volume`]).

use rand_chacha::ChaCha8Rng;

use crate::cities::{CITIES, city_at, city_ip};
use crate::config::{GenSource, GenerateConfig};
use crate::devices::{Device, Kind, Phone, device, phone};
use crate::novelty::Plan;
use crate::random::{
    Stream, between, duo_key, index, normal, random_uuid, shuffle, stream_rng, unit, weighted,
};
use crate::world::{DevRef, Factor, MINUTE_MICROS, PhoneRef, World};

#[rustfmt::skip]
pub(crate) const FIRST_NAMES: &[&str] = &[
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William",
    "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas",
    "Sarah", "Charles", "Karen", "Christopher", "Lisa", "Daniel", "Nancy", "Matthew", "Betty",
    "Anthony", "Margaret", "Mark", "Sandra", "Donald", "Ashley", "Steven", "Kimberly", "Paul",
    "Emily", "Andrew", "Donna", "Joshua", "Michelle", "Kenneth", "Carol", "Kevin", "Amanda",
    "Brian", "Melissa", "George", "Deborah", "Timothy", "Stephanie", "Ravi", "Priya", "Wei",
    "Mei", "Ahmed", "Fatima", "Lukas", "Anna", "Olivia", "Noah", "Sofia", "Mateo", "Hiroshi",
    "Yuki", "Arjun", "Ananya", "Omar", "Leila", "Ethan", "Chloe", "Diego", "Ingrid", "Kwame",
    "Amara",
];

#[rustfmt::skip]
pub(crate) const LAST_NAMES: &[&str] = &[
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Price", "Patel", "Shah", "Kumar",
    "Singh", "Chen", "Wang", "Li", "Zhang", "Kim", "Park", "Muller", "Schmidt", "Schneider",
    "Fischer", "Weber", "Cohen", "Levi", "Okafor", "Mensah", "Novak", "Kowalski", "Rossi",
    "Bianchi", "Dubois", "Laurent", "Murphy", "Kelly", "Sullivan", "Walsh", "Evans", "Hughes",
    "Edwards", "Collins", "Stewart", "Morris", "Rogers", "Reed", "Cook", "Morgan", "Bell",
    "Bailey", "Cooper", "Richardson", "Cox", "Howard", "Ward", "Peterson", "Gray", "Ramos",
    "Watson", "Brooks", "Sanders", "Bennett", "Wood", "Barnes", "Ross", "Henderson", "Coleman",
    "Jenkins", "Perry", "Powell", "Long", "Patterson", "Washington", "Narroway", "Okonkwo",
];

pub(crate) const GROUPS: &[&str] = &[
    "CorpHQ Users",
    "Engineering",
    "Sales",
    "Finance",
    "IT Admins",
    "Support",
    "Contractors",
    "Remote Workers",
];

pub(crate) const DOMAIN: &str = "domain.com";

/// A user and their habits.
pub(crate) struct User {
    /// The username: Azure `userPrincipalName`, Duo `user.name` and `email`.
    pub name: String,
    /// "First Last".
    pub display: String,
    /// Azure `userId`.
    pub id: u128,
    /// Duo `user.key`.
    pub duo_key: String,
    /// Duo `user.groups`.
    pub groups: Vec<&'static str>,
    /// The user's team (index into [`GROUPS`], also one of the groups).
    pub team: u8,
    /// Home city and the nearby one (indices into [`CITIES`]).
    pub home: u16,
    pub near: u16,
    pub devices: Vec<Device>,
    pub device_weights: Vec<u32>,
    pub phone: Phone,
    /// Usual apps (indices into the source's catalog) and how much each is used.
    pub apps: Vec<u16>,
    pub app_weights: Vec<u32>,
    /// Working hours, minutes after local midnight.
    pub work_start: i64,
    pub work_end: i64,
    /// Share of sign-ins that fail.
    pub fail_rate: f64,
    /// Mean events per day, over a whole week.
    pub mean_per_day: f64,
    /// Share of Azure sign-ins that are interactive.
    pub interactive_share: f64,
    pub office_ip: u32,
    pub home_ip: u32,
    /// Preferred Duo second factor.
    pub factor: Factor,
    /// What the user does that is new but normal.
    pub novelty: Plan,
}

impl User {
    /// The offset of the user's local time from UTC, microseconds.
    pub fn tz_micros(&self) -> i64 {
        i64::from(city_at(self.home).tz) * MINUTE_MICROS
    }

    /// The device an event refers to.
    pub fn device<'a>(&'a self, world: &'a World, d: DevRef) -> Option<&'a Device> {
        match d {
            DevRef::Own(i) => self.devices.get(usize::from(i)),
            DevRef::Foreign(i) => world.foreign_devices.get(usize::from(i)),
        }
    }

    /// The phone an event refers to.
    pub fn phone<'a>(&'a self, world: &'a World, p: PhoneRef) -> Option<&'a Phone> {
        match p {
            PhoneRef::Own => Some(&self.phone),
            PhoneRef::Foreign(i) => world.foreign_phones.get(usize::from(i)),
        }
    }
}

/// Volume classes: the shares of light and heavy users (the rest are regular).
pub(crate) const LIGHT_SHARE: f64 = 0.17;
pub(crate) const HEAVY_SHARE: f64 = 0.04;

/// Mean events per day for a user of class 0 (light), 1 (regular) or 2 (heavy).
///
/// Light users (17%): log-normal, median 4, capped at 8.5, so they stay under 300 events in
/// 30 days and fall back to the generic model. Regular users: 10.5 plus a log-normal of median
/// 1 (a right-skewed spread from 10.5 to about 20). Heavy users (4%): log-normal, median 60,
/// 40 to 200. Overall mean: about 12.5 per user-day.
pub(crate) fn volume(class: u8, rng: &mut ChaCha8Rng) -> f64 {
    let z = normal(rng);
    match class {
        0 => (4.0f64.ln() + 0.55 * z).exp().clamp(0.3, 8.5),
        2 => (60f64.ln() + 0.3 * z).exp().clamp(40.0, 200.0),
        _ => 10.5 + (0.8 * z).exp().min(30.0),
    }
}

/// Draws every user, in order; usernames are made unique in that order.
pub(crate) fn users(cfg: &GenerateConfig, app_popularity: &[u32]) -> Vec<User> {
    let n = cfg.users;
    // Volume classes by a seeded permutation, so each class has its exact share.
    let mut class = vec![1u8; n];
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut stream_rng(cfg.seed, Stream::Classes, &[]), &mut order);
    let light = (n as f64 * LIGHT_SHARE).round() as usize;
    let heavy = (n as f64 * HEAVY_SHARE).round() as usize;
    for (rank, &u) in order.iter().enumerate() {
        if rank < light {
            class[u] = 0;
        } else if rank < light + heavy {
            class[u] = 2;
        }
    }

    let home_weights: Vec<u32> = CITIES.iter().map(|c| c.weight).collect();
    // Users so far per stem: the n-th user of a stem gets the suffix n (stems have no digits,
    // so suffixed names never meet another stem).
    let mut taken: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(n);
    for (u, &class) in class.iter().enumerate() {
        let mut rng = stream_rng(cfg.seed, Stream::Users, &[u as u64]);
        let first = FIRST_NAMES[index(&mut rng, FIRST_NAMES.len())];
        let last = LAST_NAMES[index(&mut rng, LAST_NAMES.len())];
        let initial = first.chars().next().unwrap_or('x').to_ascii_lowercase();
        let dotted = unit(&mut rng) < 0.2;
        let stem = format!(
            "{initial}{}{}",
            if dotted { "." } else { "" },
            last.to_ascii_lowercase()
        );
        let seen = taken.entry(stem.clone()).or_insert(0);
        *seen += 1;
        let name = if *seen == 1 {
            format!("{stem}@{DOMAIN}")
        } else {
            format!("{stem}{seen}@{DOMAIN}")
        };

        let home = weighted(&mut rng, &home_weights) as u16;
        let near = CITIES
            .iter()
            .enumerate()
            .position(|(i, c)| c.metro == city_at(home).metro && i != usize::from(home))
            .unwrap_or(usize::from(home)) as u16;

        // Devices: a computer, often a phone, sometimes a second computer or a tablet.
        let computer = match weighted(&mut rng, &[60, 6, 27, 7]) {
            0 => Kind::WinLaptop,
            1 => Kind::WinDesktop,
            2 => Kind::Mac,
            _ => Kind::Linux,
        };
        let phone_kind = if unit(&mut rng) < 0.6 {
            Kind::IPhone
        } else {
            Kind::Android
        };
        let n_dev = 1 + weighted(&mut rng, &[35, 45, 20]);
        let mut kinds = vec![computer];
        if n_dev >= 2 {
            kinds.push(phone_kind);
        }
        if n_dev >= 3 {
            kinds.push(match weighted(&mut rng, &[50, 30, 20]) {
                0 => Kind::IPad,
                1 => Kind::WinLaptop,
                _ => Kind::Mac,
            });
        }
        let devices: Vec<Device> = kinds
            .iter()
            .map(|&k| device(k, first, last, cfg.days, &mut rng))
            .collect();
        let main = between(&mut rng, 65, 85) as u32;
        let device_weights = match devices.len() {
            1 => vec![100],
            2 => vec![main, 100 - main],
            _ => vec![main, (100 - main) * 3 / 5, (100 - main) * 2 / 5],
        };
        let model = match (phone_kind, n_dev >= 2) {
            (Kind::Android, true) => devices
                .get(1)
                .map_or("Pixel 7", |d| d.display_name.as_str())
                .to_string(),
            _ => ["iPhone 13", "iPhone 14", "iPhone 15 Pro", "iPhone 12"][index(&mut rng, 4)]
                .to_string(),
        };
        let phone = phone(&model, city_at(home).phone, cfg.seed, u as u64, &mut rng);

        // Usual apps: drawn by popularity without replacement, used with Zipf-like weights.
        let n_apps = match cfg.source {
            GenSource::Azure => between(&mut rng, 2, 6),
            GenSource::Duo => between(&mut rng, 1, 4),
        } as usize;
        let mut left: Vec<u32> = app_popularity.to_vec();
        let mut apps = Vec::with_capacity(n_apps);
        for _ in 0..n_apps.min(left.len()) {
            let a = weighted(&mut rng, &left);
            if let Some(w) = left.get_mut(a) {
                *w = 0;
            }
            apps.push(a as u16);
        }
        let app_weights = (0..apps.len()).map(|r| 120 / (r as u32 + 1)).collect();

        let work_start = 7 * 60 + 15 * between(&mut rng, 0, 12) as i64;
        let work_end = work_start + 8 * 60 + 30 * between(&mut rng, 0, 4) as i64;
        let fail_rate = (0.03f64.ln() + 0.5 * normal(&mut rng))
            .exp()
            .clamp(0.005, 0.15);
        let mean_per_day = volume(class, &mut rng);
        let interactive_share = 0.25 + 0.35 * unit(&mut rng);
        let office_ip = city_ip(home, &mut rng);
        let home_ip = city_ip(home, &mut rng);
        let factor = match weighted(&mut rng, &[75, 8, 12, 5]) {
            0 => Factor::DuoPush,
            1 => Factor::PhoneCall,
            2 => Factor::Passcode,
            _ => Factor::SmsPasscode,
        };
        let team = index(&mut rng, GROUPS.len());
        let groups = vec!["Duo Users", GROUPS[team]];
        out.push(User {
            name,
            display: format!("{first} {last}"),
            id: random_uuid(&mut rng),
            duo_key: duo_key("DU", cfg.seed, u as u64),
            groups,
            team: team as u8,
            home,
            near,
            devices,
            device_weights,
            phone,
            apps,
            app_weights,
            work_start,
            work_end,
            fail_rate,
            mean_per_day,
            interactive_share,
            office_ip,
            home_ip,
            factor,
            novelty: Plan::default(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_unique_and_some_have_dots() {
        let cfg = GenerateConfig::new(
            GenSource::Azure,
            2000,
            30,
            chrono::NaiveDate::from_ymd_opt(2022, 8, 1).expect("date"),
            5,
        );
        let users = users(&cfg, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let names: std::collections::BTreeSet<&str> =
            users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names.len(), 2000);
        let dotted = names
            .iter()
            .filter(|n| n.split('@').next().is_some_and(|local| local.contains('.')))
            .count();
        assert!((200..600).contains(&dotted), "{dotted} dotted names");
        for u in &users {
            assert!(!u.devices.is_empty() && u.devices.len() <= 3);
            assert!(!u.apps.is_empty());
            assert!(u.work_start < u.work_end);
        }
        let mean = users.iter().map(|u| u.mean_per_day).sum::<f64>() / 2000.0;
        assert!((11.0..14.0).contains(&mean), "{mean}");
    }
}
