//! The world of a run (users and catalogs, fixed from the seed) and the source-neutral event
//! that azure.rs and duo.rs render.

use crate::config::{GenSource, GenerateConfig, day_start_micros};
use crate::devices::{self, Device, Phone};
use crate::json::Uuid;
use crate::random::{mix, uuid_from};
use crate::users::{self, User};
use crate::{AnomalyKind, azure, duo, novelty};

pub(crate) const MINUTE_MICROS: i64 = 60_000_000;
pub(crate) const DAY_MICROS: i64 = 86_400_000_000;

/// Everything fixed for a run: the users with their habits, and the catalogs.
pub(crate) struct World {
    pub(crate) source: GenSource,
    /// Microseconds since the epoch at the start of the first day.
    pub(crate) start_micros: i64,
    /// The Azure tenant.
    pub(crate) tenant: u128,
    /// Azure's top-level `resourceId` (`/tenants/{tenant}/providers/Microsoft.aadiam`).
    pub(crate) tenant_path: String,
    pub(crate) users: Vec<User>,
    /// Devices no user owns, for the unseen-device anomalies.
    pub(crate) foreign_devices: Vec<Device>,
    /// Phones no user owns (Duo authentication devices), for the unseen-device anomalies.
    pub(crate) foreign_phones: Vec<Phone>,
    /// Popularity of each app of this source's catalog (index = app id).
    pub(crate) app_popularity: Vec<u32>,
    pub(crate) azure_apps: Vec<azure::AppIds>,
    pub(crate) duo_app_keys: Vec<String>,
    /// The company-wide novelty: egress changes, the VPN, the teams' new apps.
    pub(crate) company: novelty::Company,
}

impl World {
    /// The user and device of an event; an error (never a panic) if the event names neither.
    pub(crate) fn user_and_device(&self, e: &Event) -> serde_json::Result<(&User, &Device)> {
        use serde::ser::Error as _;
        let user = self
            .users
            .get(e.user as usize)
            .ok_or_else(|| serde_json::Error::custom("event of an unknown user"))?;
        let device = user
            .device(self, e.device)
            .ok_or_else(|| serde_json::Error::custom("event of an unknown device"))?;
        Ok((user, device))
    }

    pub(crate) fn new(cfg: &GenerateConfig) -> Self {
        let tenant = uuid_from(mix(&[cfg.seed, 0x7e4a_0047]), mix(&[cfg.seed, 0x7e4a_0048]));
        let app_popularity: Vec<u32> = match cfg.source {
            GenSource::Azure => azure::APPS.iter().map(|a| a.popularity).collect(),
            GenSource::Duo => duo::APPS.iter().map(|a| a.popularity).collect(),
        };
        let company = novelty::company(cfg, &app_popularity);
        let mut world = World {
            source: cfg.source,
            start_micros: day_start_micros(cfg.start, 0).unwrap_or(0),
            tenant,
            tenant_path: format!("/tenants/{}/providers/Microsoft.aadiam", Uuid(tenant)),
            users: Vec::new(),
            foreign_devices: devices::foreign_devices(),
            foreign_phones: devices::foreign_phones(cfg.seed),
            app_popularity,
            azure_apps: azure::app_ids(),
            duo_app_keys: duo::app_keys(),
            company,
        };
        world.users = users::users(cfg, &world.app_popularity);
        novelty::plan_users(cfg, &world.company, &mut world.users);
        world
    }
}

// ---------------------------------------------------------------------------------------------
// Events, source-neutral; azure.rs and duo.rs render them.

/// Which device an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DevRef {
    /// One of the user's own devices (index into `User::devices`).
    Own(u8),
    /// A device no user owns (index into `World::foreign_devices`).
    Foreign(u8),
}

/// Which phone approves a Duo authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PhoneRef {
    /// The user's own phone.
    Own,
    /// A phone no user owns (index into `World::foreign_phones`).
    Foreign(u8),
}

/// Why a sign-in failed, source-neutral; each source maps it to its own codes and reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// Wrong password or passcode.
    BadSecret,
    /// A second factor is required (Azure's interrupt asking for MFA).
    MfaRequired,
    /// The second-factor request timed out.
    MfaTimeout,
    /// The user declined or cancelled the second-factor request.
    MfaDenied,
    /// Azure's "keep me signed in" interrupt.
    Interrupt,
    /// The session or request expired.
    SessionExpired,
    /// The account is locked after too many failures.
    Locked,
    /// Blocked by a conditional-access or Duo policy.
    Blocked,
    /// The user is not allowed to use this application.
    NotPermitted,
    /// The user reported the request as fraud.
    Fraud,
}

/// The second factor of a Duo authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Factor {
    DuoPush,
    PhoneCall,
    Passcode,
    SmsPasscode,
}

impl Factor {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Factor::DuoPush => "duo_push",
            Factor::PhoneCall => "phone_call",
            Factor::Passcode => "passcode",
            Factor::SmsPasscode => "sms_passcode",
        }
    }
}

/// One sign-in or authentication, before it is rendered in a source's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    /// Event time, microseconds since the epoch (UTC).
    pub(crate) micros: i64,
    /// The event id (Azure `properties.id`, Duo `txid`); the other ids derive from it.
    pub(crate) id: u128,
    /// Index of the user.
    pub(crate) user: u32,
    pub(crate) device: DevRef,
    /// The device's era (see [`Device::era`]): which versions it runs.
    pub(crate) era: u8,
    /// Index into [`crate::cities::CITIES`] of where the access came from.
    pub(crate) city: u16,
    pub(crate) ip: u32,
    /// Index into the source's app catalog.
    pub(crate) app: u16,
    pub(crate) fail: Option<FailKind>,
    /// Azure: an interactive sign-in (`SignInLogs`) or not.
    pub(crate) interactive: bool,
    /// Azure: signed in through a browser (`clientAppUsed` "Browser").
    pub(crate) browser_client: bool,
    /// Duo: the second factor.
    pub(crate) factor: Factor,
    /// Duo: the phone that approved it, where it was and its address.
    pub(crate) phone: PhoneRef,
    pub(crate) phone_city: u16,
    pub(crate) phone_ip: u32,
    /// Set on injected anomalous events.
    pub(crate) anomaly: Option<AnomalyKind>,
}
