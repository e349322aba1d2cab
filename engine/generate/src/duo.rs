//! Duo authentication records, in the Duo Admin API v2 authentication-log shape (the shape of
//! `duo_auth_example_record.json`): `timestamp` (epoch seconds), `isotimestamp`, `txid`,
//! `user`, `access_device`, `auth_device`, `application`, `factor`, `result`, `reason` ...
//!
//! Records are serde-derived structs borrowing from the users and catalogs, written straight to
//! the file.

use std::io::Write;

use serde::Serialize;

use crate::cities::city_at;
use crate::json::{EmptyList, Ip, Iso, Uuid};
use crate::random::duo_key;
use crate::world::{Event, Factor, FailKind, World};

/// A Duo-protected application.
pub(super) struct App {
    /// `application.name`.
    pub name: &'static str,
    /// How many users have it among their usual applications, relatively.
    pub popularity: u32,
}

const fn app(name: &'static str, popularity: u32) -> App {
    App { name, popularity }
}

/// The application catalog; an event's `app` indexes it.
pub(super) const APPS: &[App] = &[
    app("Microsoft Azure Active Directory", 10),
    app("Cisco ASA SSL VPN", 8),
    app("Windows Logon", 6),
    app("Okta", 5),
    app("Palo Alto GlobalProtect", 3),
    app("Workday", 3),
    app("Salesforce", 2),
    app("AWS Console", 2),
    app("GitHub Enterprise", 2),
    app("Linux SSH", 2),
    app("Citrix Gateway", 2),
    app("ServiceNow", 2),
    app("Jira", 2),
    app("Confluence", 2),
    app("Zoom", 2),
    app("Microsoft RDP", 2),
    app("Box", 1),
    app("Splunk", 1),
    app("Tableau", 1),
    app("Duo Admin Panel", 1),
];

/// The integration key of every application of [`APPS`], stable across runs.
pub(super) fn app_keys() -> Vec<String> {
    (0..APPS.len() as u64)
        .map(|i| duo_key("DI", 0xd1_0a99, i))
        .collect()
}

/// Duo's result and reason for an outcome.
fn outcome(fail: Option<FailKind>, factor: Factor) -> (&'static str, &'static str) {
    match fail {
        None => match factor {
            Factor::Passcode | Factor::SmsPasscode => ("success", "valid_passcode"),
            Factor::DuoPush | Factor::PhoneCall => ("success", "user_approved"),
        },
        Some(FailKind::Fraud) => ("fraud", "user_marked_fraud"),
        Some(kind) => (
            "denied",
            match kind {
                FailKind::BadSecret => "invalid_passcode",
                FailKind::MfaRequired | FailKind::MfaTimeout => "no_response",
                FailKind::MfaDenied | FailKind::Interrupt => "user_cancelled",
                FailKind::SessionExpired => "queued_inflight_auth_expired",
                FailKind::Locked => "locked_out",
                FailKind::Blocked => "denied_by_policy",
                FailKind::NotPermitted => "user_not_in_permitted_group",
                FailKind::Fraud => "user_marked_fraud",
            },
        ),
    }
}

#[derive(Serialize)]
struct Record<'a> {
    access_device: AccessDevice<'a>,
    alias: &'static str,
    application: Application<'a>,
    auth_device: AuthDevice<'a>,
    email: &'a str,
    event_type: &'static str,
    factor: &'static str,
    isotimestamp: Iso,
    ood_software: Option<&'static str>,
    reason: &'static str,
    result: &'static str,
    timestamp: i64,
    trusted_endpoint_status: &'static str,
    txid: Uuid,
    user: User<'a>,
}

#[derive(Serialize)]
struct AccessDevice<'a> {
    browser: &'static str,
    browser_version: &'a str,
    hostname: Option<&'static str>,
    ip: Ip,
    is_encryption_enabled: &'static str,
    is_firewall_enabled: &'static str,
    is_password_set: &'static str,
    location: Location,
    os: &'static str,
    os_version: &'a str,
    security_agents: EmptyList,
}

#[derive(Serialize)]
struct Location {
    city: Option<&'static str>,
    country: Option<&'static str>,
    state: Option<&'static str>,
}

impl Location {
    fn of(city: u16) -> Self {
        let c = city_at(city);
        Location {
            city: Some(c.name),
            country: Some(c.country),
            state: Some(c.state),
        }
    }
}

#[derive(Serialize)]
struct Application<'a> {
    key: &'a str,
    name: &'static str,
}

#[derive(Serialize)]
struct AuthDevice<'a> {
    ip: Option<Ip>,
    key: &'a str,
    location: Location,
    name: &'a str,
}

#[derive(Serialize)]
struct User<'a> {
    groups: &'a [&'static str],
    key: &'a str,
    name: &'a str,
}

/// Writes `e` as one Duo authentication record.
pub(super) fn write_record<W: Write>(
    w: &mut W,
    world: &World,
    e: &Event,
) -> serde_json::Result<()> {
    use serde::ser::Error as _;
    let (user, device) = world.user_and_device(e)?;
    let phone = user
        .phone(world, e.phone)
        .ok_or_else(|| serde_json::Error::custom("event of an unknown phone"))?;
    let app = APPS
        .get(usize::from(e.app))
        .zip(world.duo_app_keys.get(usize::from(e.app)))
        .ok_or_else(|| serde_json::Error::custom("event of an unknown application"))?;
    let era = usize::from(e.era);
    let (result, reason) = outcome(e.fail, e.factor);
    // A phone call reaches a number: Duo knows neither the phone's address nor where it is.
    let call = e.factor == Factor::PhoneCall;
    let record = Record {
        access_device: AccessDevice {
            browser: device.browser[era],
            browser_version: &device.browser_version[era],
            hostname: None,
            ip: Ip(e.ip),
            is_encryption_enabled: device.posture[0],
            is_firewall_enabled: device.posture[1],
            is_password_set: device.posture[2],
            location: Location::of(e.city),
            os: device.duo_os,
            os_version: &device.os_version[era],
            security_agents: EmptyList,
        },
        alias: "",
        application: Application {
            key: app.1,
            name: app.0.name,
        },
        auth_device: AuthDevice {
            ip: if call { None } else { Some(Ip(e.phone_ip)) },
            key: &phone.key,
            location: if call {
                Location {
                    city: None,
                    country: None,
                    state: None,
                }
            } else {
                Location::of(e.phone_city)
            },
            name: if call { &phone.number } else { &phone.name },
        },
        email: &user.name,
        event_type: "authentication",
        factor: e.factor.as_str(),
        isotimestamp: Iso::offset(e.micros),
        ood_software: None,
        reason,
        result,
        timestamp: e.micros.div_euclid(1_000_000),
        trusted_endpoint_status: device.trusted,
        txid: Uuid(e.id),
        user: User {
            groups: &user.groups,
            key: &user.duo_key,
            name: &user.name,
        },
    };
    serde_json::to_writer(w, &record)
}
