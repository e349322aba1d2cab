//! Devices and phones: how Azure and Duo describe them (system, browser and version, user
//! agent, registration and trust), each user's own, and the foreign ones only anomalies use.

use rand_chacha::ChaCha8Rng;

use crate::random::{Stream, between, duo_key, index, random_uuid, stream_rng, unit, weighted};

/// A browser and the versions a device may run, oldest first.
pub(crate) struct BrowserSpec {
    family: &'static str,
    versions: &'static [&'static str],
    /// How many dot-separated parts of the version Azure shows after the family.
    azure_parts: usize,
}

pub(crate) const CHROME_VERSIONS: &[&str] = &[
    "114.0.5735.199",
    "115.0.5790.171",
    "116.0.5845.188",
    "117.0.5938.150",
    "118.0.5993.118",
    "119.0.6045.160",
    "120.0.6099.130",
];
pub(crate) const CHROME: BrowserSpec = BrowserSpec {
    family: "Chrome",
    versions: CHROME_VERSIONS,
    azure_parts: 3,
};
pub(crate) const CHROME_MOBILE: BrowserSpec = BrowserSpec {
    family: "Chrome Mobile",
    versions: CHROME_VERSIONS,
    azure_parts: 3,
};
pub(crate) const EDGE: BrowserSpec = BrowserSpec {
    family: "Edge",
    versions: &[
        "114.0.1823.86",
        "115.0.1901.203",
        "116.0.1938.81",
        "117.0.2045.60",
        "118.0.2088.76",
        "119.0.2151.97",
        "120.0.2210.91",
    ],
    azure_parts: 3,
};
pub(crate) const FIREFOX: BrowserSpec = BrowserSpec {
    family: "Firefox",
    versions: &["115.0", "116.0", "117.0", "118.0", "119.0", "120.0"],
    azure_parts: 2,
};
pub(crate) const SAFARI: BrowserSpec = BrowserSpec {
    family: "Safari",
    versions: &["16.5", "16.6", "17.0", "17.1", "17.2"],
    azure_parts: 2,
};
/// The browser a [`crate::Rollout`] moves users to (no device has it otherwise).
pub(crate) const ROLLOUT: BrowserSpec = BrowserSpec {
    family: "Brave",
    versions: &["1.61.101"],
    azure_parts: 2,
};
pub(crate) const MOBILE_SAFARI: BrowserSpec = BrowserSpec {
    family: "Mobile Safari",
    versions: &["16.5", "16.6", "17.0", "17.1", "17.2"],
    azure_parts: 2,
};

/// What kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    WinLaptop,
    WinDesktop,
    Mac,
    Linux,
    IPhone,
    IPad,
    Android,
}

/// A device: how Azure and Duo describe it. Versions come in three eras: before and after the
/// device's routine browser (and, on iOS, system) upgrade, and after a system and browser
/// update the novelty plan may give it (era 2; its strings stay empty until then).
pub(crate) struct Device {
    pub kind: Kind,
    spec: &'static BrowserSpec,
    pub mobile: bool,
    /// Azure `deviceDetail.operatingSystem`, per era.
    pub azure_os: [&'static str; 3],
    /// Duo `access_device.os`.
    pub duo_os: &'static str,
    /// Duo `access_device.os_version`, per era.
    pub os_version: [String; 3],
    /// Duo `access_device.browser`, per era.
    pub browser: [&'static str; 3],
    /// Duo `access_device.browser_version`, per era.
    pub browser_version: [String; 3],
    /// Azure `deviceDetail.browser`, per era.
    pub azure_browser: [String; 3],
    /// Azure `userAgent`, per era.
    pub user_agent: [String; 3],
    /// The day (from the first) the routine upgrade happens.
    pub upgrade_day: u32,
    /// The day the novelty update happens (`u32::MAX`: never).
    pub update_day: u32,
    /// Azure `deviceDetail.displayName`.
    pub display_name: String,
    /// Azure `deviceDetail.deviceId` (none: unregistered).
    pub device_id: Option<u128>,
    /// Azure `deviceDetail.trustType`.
    pub trust_type: &'static str,
    /// Duo `trusted_endpoint_status`.
    pub trusted: &'static str,
    /// Duo `is_encryption_enabled`, `is_firewall_enabled`, `is_password_set`.
    pub posture: [&'static str; 3],
}

impl Device {
    /// The era the device is in on `day`: 0 before its routine upgrade, 1 after, 2 after its
    /// novelty update.
    pub fn era(&self, day: u32) -> u8 {
        if day >= self.update_day {
            2
        } else {
            u8::from(day >= self.upgrade_day)
        }
    }

    /// Plans a system and browser update on `day`: the newest browser version of its family,
    /// and the next system release (Windows 10 to 11, macOS 14, Android one up, iOS with its
    /// Safari); Linux keeps its system. Fills era 2's strings.
    pub fn update_on(&mut self, day: u32) {
        let browser = self.spec.versions.last().copied().unwrap_or("");
        let (azure_os, os_version) = match self.kind {
            Kind::WinLaptop | Kind::WinDesktop => ("Windows 11", "11".to_string()),
            Kind::Mac => (self.azure_os[1], "14.2".to_string()),
            Kind::IPhone | Kind::IPad => (self.azure_os[1], browser.to_string()),
            Kind::Android => {
                let next = self.os_version[1].parse::<u32>().map_or(14, |v| v + 1);
                (self.azure_os[1], next.to_string())
            }
            Kind::Linux => (self.azure_os[1], self.os_version[1].clone()),
        };
        self.azure_os[2] = azure_os;
        self.browser_version[2] = browser.to_string();
        self.azure_browser[2] = azure_browser(self.spec, browser);
        self.user_agent[2] = user_agent(self.kind, self.spec.family, browser, &os_version);
        self.os_version[2] = os_version;
        self.update_day = self.update_day.min(day);
    }
}

impl Device {
    /// Plans a switch to the browser [`ROLLOUT`] on `day` (the company rolls it out): from then
    /// on the device's browser is one no log had before; its system stays as it was (a system
    /// update already planned keeps its system, with this browser).
    pub fn switch_on(&mut self, day: u32) {
        let version = ROLLOUT.versions.last().copied().unwrap_or("1.0");
        if self.update_day == u32::MAX {
            self.azure_os[2] = self.azure_os[1];
            self.os_version[2] = self.os_version[1].clone();
        }
        self.browser[2] = ROLLOUT.family;
        self.browser_version[2] = version.to_string();
        self.azure_browser[2] = azure_browser(&ROLLOUT, version);
        self.user_agent[2] = user_agent(self.kind, ROLLOUT.family, version, &self.os_version[2]);
        self.update_day = self.update_day.min(day);
    }
}

/// The Azure browser string: family and the first `parts` parts of the version.
pub(crate) fn azure_browser(spec: &BrowserSpec, version: &str) -> String {
    let short: Vec<&str> = version.split('.').take(spec.azure_parts).collect();
    format!("{} {}", spec.family, short.join("."))
}

pub(crate) fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

/// A user agent for the kind, browser and versions.
pub(crate) fn user_agent(kind: Kind, family: &str, version: &str, os_version: &str) -> String {
    let m = major(version);
    let ios = os_version.replace('.', "_");
    match (kind, family) {
        (Kind::WinLaptop | Kind::WinDesktop, "Edge") => format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/{m}.0.0.0 Safari/537.36 Edg/{version}"
        ),
        (Kind::WinLaptop | Kind::WinDesktop, "Firefox") => format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{m}.0) Gecko/20100101 Firefox/{version}"
        ),
        (Kind::WinLaptop | Kind::WinDesktop, _) => format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/{m}.0.0.0 Safari/537.36"
        ),
        (Kind::Mac, "Safari") => format!(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like \
             Gecko) Version/{version} Safari/605.1.15"
        ),
        (Kind::Mac, "Firefox") => format!(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{m}.0) Gecko/20100101 Firefox/{version}"
        ),
        (Kind::Mac, _) => format!(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like \
             Gecko) Chrome/{m}.0.0.0 Safari/537.36"
        ),
        (Kind::Linux, "Firefox") => {
            format!("Mozilla/5.0 (X11; Linux x86_64; rv:{m}.0) Gecko/20100101 Firefox/{version}")
        }
        (Kind::Linux, _) => format!(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/{m}.0.0.0 Safari/537.36"
        ),
        (Kind::IPhone, _) => format!(
            "Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/{version} Mobile/15E148 Safari/604.1"
        ),
        (Kind::IPad, _) => format!(
            "Mozilla/5.0 (iPad; CPU OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like \
             Gecko) Version/{version} Mobile/15E148 Safari/604.1"
        ),
        (Kind::Android, _) => format!(
            "Mozilla/5.0 (Linux; Android {os_version}; K) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/{m}.0.0.0 Mobile Safari/537.36"
        ),
    }
}

pub(crate) const ANDROID_MODELS: &[&str] = &[
    "Pixel 7",
    "Pixel 8 Pro",
    "SM-S911U",
    "SM-G991U",
    "moto g 5G",
];

/// Draws a device of `kind` for the user `first last`.
pub(crate) fn device(
    kind: Kind,
    first: &str,
    last: &str,
    days: u32,
    rng: &mut ChaCha8Rng,
) -> Device {
    let spec = match kind {
        Kind::WinLaptop | Kind::WinDesktop => match weighted(rng, &[60, 35, 5]) {
            0 => &EDGE,
            1 => &CHROME,
            _ => &FIREFOX,
        },
        Kind::Mac => match weighted(rng, &[45, 45, 10]) {
            0 => &SAFARI,
            1 => &CHROME,
            _ => &FIREFOX,
        },
        Kind::Linux => match weighted(rng, &[60, 40]) {
            0 => &FIREFOX,
            _ => &CHROME,
        },
        Kind::IPhone | Kind::IPad => &MOBILE_SAFARI,
        Kind::Android => &CHROME_MOBILE,
    };
    let n = spec.versions.len();
    let i = index(rng, n.saturating_sub(1));
    let versions = [spec.versions[i], spec.versions[(i + 1).min(n - 1)]];
    let upgrade_day = between(rng, 1, u64::from(days.max(1)) * 3) as u32;
    let (azure_os, duo_os, os_version): (&str, &str, [String; 2]) = match kind {
        Kind::WinLaptop | Kind::WinDesktop => {
            if unit(rng) < 0.6 {
                ("Windows 10", "Windows", ["10".into(), "10".into()])
            } else {
                ("Windows 11", "Windows", ["11".into(), "11".into()])
            }
        }
        Kind::Mac => {
            let v = ["13.5", "13.6", "14.0", "14.1"][index(rng, 4)];
            ("MacOs", "Mac OS X", [v.into(), v.into()])
        }
        Kind::Linux => ("Linux", "Linux", [String::new(), String::new()]),
        Kind::IPhone | Kind::IPad => ("Ios", "iOS", versions.map(String::from)),
        Kind::Android => {
            let v = ["13", "14"][index(rng, 2)];
            ("Android", "Android", [v.into(), v.into()])
        }
    };
    let upper: String = format!("{first}{last}")
        .to_uppercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let registered = Some(random_uuid(rng));
    let (display_name, device_id, trust_type, trusted, posture) = match kind {
        Kind::WinLaptop | Kind::WinDesktop => (
            format!(
                "{upper}-{}",
                if kind == Kind::WinLaptop { "LT" } else { "DT" }
            ),
            registered,
            if unit(rng) < 0.7 {
                "Hybrid Azure AD joined"
            } else {
                "Azure AD joined"
            },
            "trusted",
            ["true", "true", "true"],
        ),
        Kind::Mac => (
            format!(
                "{first}'s MacBook {}",
                if unit(rng) < 0.6 { "Pro" } else { "Air" }
            ),
            registered,
            "Azure AD registered",
            "trusted",
            ["true", "true", "true"],
        ),
        Kind::Linux => (
            String::new(),
            None,
            "",
            "not trusted",
            ["unknown", "unknown", "true"],
        ),
        Kind::IPhone => (
            "iPhone".into(),
            registered,
            "Azure AD registered",
            "not trusted",
            ["true", "unknown", "true"],
        ),
        Kind::IPad => (
            "iPad".into(),
            registered,
            "Azure AD registered",
            "not trusted",
            ["true", "unknown", "true"],
        ),
        Kind::Android => (
            ANDROID_MODELS[index(rng, ANDROID_MODELS.len())].into(),
            registered,
            "Azure AD registered",
            "not trusted",
            ["true", "unknown", "true"],
        ),
    };
    let [os0, os1] = os_version;
    Device {
        kind,
        spec,
        mobile: matches!(kind, Kind::IPhone | Kind::IPad | Kind::Android),
        azure_os: [azure_os; 3],
        duo_os,
        browser: [spec.family; 3],
        browser_version: [versions[0].into(), versions[1].into(), String::new()],
        azure_browser: [
            azure_browser(spec, versions[0]),
            azure_browser(spec, versions[1]),
            String::new(),
        ],
        user_agent: [
            user_agent(kind, spec.family, versions[0], &os0),
            user_agent(kind, spec.family, versions[1], &os1),
            String::new(),
        ],
        os_version: [os0, os1, String::new()],
        upgrade_day,
        update_day: u32::MAX,
        display_name,
        device_id,
        trust_type,
        trusted,
        posture,
    }
}

/// Devices no user owns, for the unseen-device anomalies: old or unusual systems and browsers,
/// unregistered.
pub(crate) fn foreign_devices() -> Vec<Device> {
    // (Azure OS, Duo OS, OS version, browser family, version, Azure browser, user agent)
    const SPECS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
        (
            "Linux",
            "Linux",
            "",
            "Firefox",
            "102.0",
            "Firefox 102.0",
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:102.0) Gecko/20100101 Firefox/102.0",
        ),
        (
            "Windows 7",
            "Windows",
            "7",
            "IE",
            "11.0",
            "IE 11.0",
            "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko",
        ),
        (
            "Chrome OS",
            "Chrome OS",
            "14541.0.0",
            "Chrome",
            "109.0.5414.125",
            "Chrome 109.0.5414",
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/109.0.0.0 Safari/537.36",
        ),
        (
            "Android",
            "Android",
            "9",
            "Samsung Internet",
            "14.2",
            "Samsung Internet 14.2",
            "Mozilla/5.0 (Linux; Android 9; SAMSUNG SM-J730F) AppleWebKit/537.36 (KHTML, like \
             Gecko) SamsungBrowser/14.2 Chrome/87.0.4280.141 Mobile Safari/537.36",
        ),
        (
            "Windows 8.1",
            "Windows",
            "8.1",
            "Opera",
            "95.0.4635.46",
            "Opera 95.0.4635",
            "Mozilla/5.0 (Windows NT 6.3; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/109.0.0.0 Safari/537.36 OPR/95.0.4635.46",
        ),
        (
            "MacOs",
            "Mac OS X",
            "10.13.6",
            "Firefox",
            "91.0",
            "Firefox 91.0",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.13; rv:91.0) Gecko/20100101 Firefox/91.0",
        ),
        (
            "Linux",
            "Linux",
            "",
            "Opera",
            "94.0.4606.54",
            "Opera 94.0.4606",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/108.0.0.0 Safari/537.36 OPR/94.0.4606.54",
        ),
    ];
    SPECS
        .iter()
        .map(
            |&(azure_os, duo_os, os_v, family, version, az, ua)| Device {
                kind: Kind::Linux,
                spec: &FIREFOX,
                mobile: duo_os == "Android",
                azure_os: [azure_os; 3],
                duo_os,
                os_version: [os_v.into(), os_v.into(), os_v.into()],
                browser: [family; 3],
                browser_version: [version.into(), version.into(), version.into()],
                azure_browser: [az.into(), az.into(), az.into()],
                user_agent: [ua.into(), ua.into(), ua.into()],
                upgrade_day: u32::MAX,
                update_day: u32::MAX,
                display_name: String::new(),
                device_id: None,
                trust_type: "",
                trusted: "not trusted",
                posture: ["unknown", "unknown", "unknown"],
            },
        )
        .collect()
}

/// A phone that approves Duo requests.
pub(crate) struct Phone {
    /// Duo `auth_device.name`: model and number.
    pub name: String,
    /// The number alone (what Duo shows for phone calls).
    pub number: String,
    /// Duo `auth_device.key`.
    pub key: String,
}

pub(crate) fn phone(
    model: &str,
    prefix: &str,
    seed: u64,
    salt: u64,
    rng: &mut ChaCha8Rng,
) -> Phone {
    let number = format!("{prefix} 555-01{:02}", index(rng, 100));
    Phone {
        name: format!("{model} ({number})"),
        key: duo_key("DP", seed, salt),
        number,
    }
}

/// Phones no user owns, for the unseen-device anomalies.
pub(crate) fn foreign_phones(seed: u64) -> Vec<Phone> {
    let mut rng = stream_rng(seed, Stream::Users, &[u64::MAX]);
    [
        ("Galaxy A12", "+7 912"),
        ("Redmi Note 10", "+234 803"),
        ("iPhone 8", "+63 917"),
        ("Moto G Power", "+1 305"),
        ("Galaxy J7", "+84 90"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (model, prefix))| phone(model, prefix, seed, 0xf0_0000 + i as u64, &mut rng))
    .collect()
}
