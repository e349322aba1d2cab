//! Users and their habits, and the ordinary (non-anomalous) events they produce.
//!
//! Every user gets, from the seed: a unique username (first initial + last name, some with a
//! dot, `@domain.com`), a home city and a nearby second city, one to three devices (OS,
//! browser and its version, which is upgraded once on a random day), a phone for Duo, a small
//! set of usual apps with Zipf-like preferences, working hours in the home time zone, a failure
//! rate, a preferred second factor, and a mean number of events per day drawn from one of three
//! volume classes (light, regular, heavy; see [`volume`]). A user-day's events come in short
//! sessions (one device, one place, a few minutes apart), mostly in working hours, far fewer at
//! weekends; about 3% of sessions come from the nearby city.

use rand_chacha::ChaCha8Rng;

use super::{
    DAY_MICROS, DevRef, Event, Factor, FailKind, GenSource, GenerateConfig, MINUTE_MICROS,
    PhoneRef, Stream, World, between, duo_key, index, mix, normal, poisson, random_uuid, shuffle,
    stream_rng, unit, weighted,
};

/// A place sign-ins come from.
pub(super) struct City {
    pub name: &'static str,
    pub state: &'static str,
    /// Full country name (Duo).
    pub country: &'static str,
    /// ISO 3166 alpha-2 code (Azure).
    pub code: &'static str,
    pub lat: f64,
    pub lon: f64,
    /// Offset of local time from UTC, minutes (no daylight saving).
    pub tz: i32,
    /// Home cities come in pairs sharing a metro number (home and nearby); 0: only ever seen
    /// in anomalies.
    pub metro: u8,
    /// Weight as a home city.
    pub weight: u32,
    /// Telephone prefix (country and area code).
    pub phone: &'static str,
}

#[allow(clippy::too_many_arguments)] // a table row
const fn city(
    name: &'static str,
    state: &'static str,
    country: &'static str,
    code: &'static str,
    lat: f64,
    lon: f64,
    tz: i32,
    metro: u8,
    weight: u32,
    phone: &'static str,
) -> City {
    City {
        name,
        state,
        country,
        code,
        lat,
        lon,
        tz,
        metro,
        weight,
        phone,
    }
}

const US: &str = "United States";

/// Every city, home metros first (in pairs), then the far-away ones.
#[rustfmt::skip]
pub(super) const CITIES: &[City] = &[
    city("San Jose", "California", US, "US", 37.3382, -121.8863, -480, 1, 10, "+1 408"),
    city("Santa Clara", "California", US, "US", 37.3541, -121.9552, -480, 1, 4, "+1 408"),
    city("San Francisco", "California", US, "US", 37.7749, -122.4194, -480, 2, 8, "+1 415"),
    city("Oakland", "California", US, "US", 37.8044, -122.2712, -480, 2, 3, "+1 510"),
    city("Seattle", "Washington", US, "US", 47.6062, -122.3321, -480, 3, 6, "+1 206"),
    city("Redmond", "Washington", US, "US", 47.6740, -122.1215, -480, 3, 4, "+1 425"),
    city("Austin", "Texas", US, "US", 30.2672, -97.7431, -360, 4, 6, "+1 512"),
    city("Round Rock", "Texas", US, "US", 30.5083, -97.6789, -360, 4, 2, "+1 512"),
    city("Chicago", "Illinois", US, "US", 41.8781, -87.6298, -360, 5, 6, "+1 312"),
    city("Evanston", "Illinois", US, "US", 42.0451, -87.6877, -360, 5, 2, "+1 847"),
    city("New York", "New York", US, "US", 40.7128, -74.0060, -300, 6, 9, "+1 212"),
    city("Jersey City", "New Jersey", US, "US", 40.7178, -74.0431, -300, 6, 3, "+1 201"),
    city("Boston", "Massachusetts", US, "US", 42.3601, -71.0589, -300, 7, 5, "+1 617"),
    city("Cambridge", "Massachusetts", US, "US", 42.3736, -71.1097, -300, 7, 3, "+1 617"),
    city("Ann Arbor", "Michigan", US, "US", 42.2808, -83.7430, -300, 8, 3, "+1 734"),
    city("Detroit", "Michigan", US, "US", 42.3314, -83.0458, -300, 8, 3, "+1 313"),
    city("Atlanta", "Georgia", US, "US", 33.7490, -84.3880, -300, 9, 4, "+1 404"),
    city("Marietta", "Georgia", US, "US", 33.9526, -84.5499, -300, 9, 1, "+1 770"),
    city("Denver", "Colorado", US, "US", 39.7392, -104.9903, -420, 10, 4, "+1 303"),
    city("Boulder", "Colorado", US, "US", 40.0150, -105.2705, -420, 10, 2, "+1 303"),
    city("Toronto", "Ontario", "Canada", "CA", 43.6532, -79.3832, -300, 11, 4, "+1 416"),
    city("Mississauga", "Ontario", "Canada", "CA", 43.5890, -79.6441, -300, 11, 2, "+1 905"),
    city("London", "England", "United Kingdom", "GB", 51.5074, -0.1278, 0, 12, 6, "+44 20"),
    city("Reading", "England", "United Kingdom", "GB", 51.4543, -0.9781, 0, 12, 2, "+44 118"),
    city("Munich", "Bavaria", "Germany", "DE", 48.1351, 11.5820, 60, 13, 4, "+49 89"),
    city("Augsburg", "Bavaria", "Germany", "DE", 48.3705, 10.8978, 60, 13, 1, "+49 821"),
    city("Bengaluru", "Karnataka", "India", "IN", 12.9716, 77.5946, 330, 14, 5, "+91 80"),
    city("Mysuru", "Karnataka", "India", "IN", 12.2958, 76.6394, 330, 14, 1, "+91 821"),
    city("Tel Aviv", "Tel Aviv District", "Israel", "IL", 32.0853, 34.7818, 120, 15, 2, "+972 3"),
    city("Haifa", "Haifa District", "Israel", "IL", 32.7940, 34.9896, 120, 15, 1, "+972 4"),
    // Never home to anyone: the places anomalies come from.
    city("Lagos", "Lagos", "Nigeria", "NG", 6.5244, 3.3792, 60, 0, 0, "+234 803"),
    city("Moscow", "Moscow", "Russia", "RU", 55.7558, 37.6173, 180, 0, 0, "+7 495"),
    city("Sao Paulo", "Sao Paulo", "Brazil", "BR", -23.5505, -46.6333, -180, 0, 0, "+55 11"),
    city("Ho Chi Minh City", "Ho Chi Minh", "Vietnam", "VN", 10.8231, 106.6297, 420, 0, 0, "+84 28"),
    city("Jakarta", "Jakarta", "Indonesia", "ID", -6.2088, 106.8456, 420, 0, 0, "+62 21"),
    city("Bucharest", "Bucharest", "Romania", "RO", 44.4268, 26.1025, 120, 0, 0, "+40 21"),
    city("Kyiv", "Kyiv City", "Ukraine", "UA", 50.4501, 30.5234, 120, 0, 0, "+380 44"),
    city("Beijing", "Beijing", "China", "CN", 39.9042, 116.4074, 480, 0, 0, "+86 10"),
    city("Tehran", "Tehran", "Iran", "IR", 35.6892, 51.3890, 210, 0, 0, "+98 21"),
    city("Caracas", "Distrito Capital", "Venezuela", "VE", 10.4806, -66.9036, -240, 0, 0, "+58 212"),
    city("Manila", "Metro Manila", "Philippines", "PH", 14.5995, 120.9842, 480, 0, 0, "+63 2"),
    city("Johannesburg", "Gauteng", "South Africa", "ZA", -26.2041, 28.0473, 120, 0, 0, "+27 11"),
    city("Sydney", "New South Wales", "Australia", "AU", -33.8688, 151.2093, 600, 0, 0, "+61 2"),
    city("Singapore", "Central Singapore", "Singapore", "SG", 1.3521, 103.8198, 480, 0, 0, "+65 6"),
    city("Istanbul", "Istanbul", "Turkey", "TR", 41.0082, 28.9784, 180, 0, 0, "+90 212"),
    city("Lima", "Lima", "Peru", "PE", -12.0464, -77.0428, -300, 0, 0, "+51 1"),
    city("Cairo", "Cairo Governorate", "Egypt", "EG", 30.0444, 31.2357, 120, 0, 0, "+20 2"),
    city("Minsk", "Minsk", "Belarus", "BY", 53.9006, 27.5590, 180, 0, 0, "+375 17"),
    city("Karachi", "Sindh", "Pakistan", "PK", 24.8607, 67.0011, 300, 0, 0, "+92 21"),
    city("Buenos Aires", "Buenos Aires", "Argentina", "AR", -34.6037, -58.3816, -180, 0, 0, "+54 11"),
];

/// The city at `idx`, or the first one (indices are built in range; this keeps a bad one
/// from panicking).
pub(super) fn city_at(idx: u16) -> &'static City {
    CITIES.get(usize::from(idx)).unwrap_or(&CITIES[0])
}

/// Great-circle distance in kilometres.
pub(super) fn distance_km(a: &City, b: &City) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.lat.to_radians(),
        a.lon.to_radians(),
        b.lat.to_radians(),
        b.lon.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().clamp(0.0, 1.0).asin()
}

/// First octets that look like ordinary public address space.
#[rustfmt::skip]
const FIRST_OCTETS: &[u8] = &[
    23, 24, 31, 37, 44, 45, 50, 62, 64, 66, 67, 68, 71, 73, 76, 77, 81, 82, 84, 86, 88, 89, 91,
    93, 94, 95, 98, 99, 104, 107, 108, 109, 142, 151, 154, 161, 176, 178, 185, 188, 190, 196,
    200, 201, 203, 212, 213, 217,
];

/// A random address in the city's /16 (each city has its own, fixed across runs).
pub(super) fn city_ip(city: u16, rng: &mut ChaCha8Rng) -> u32 {
    let h = mix(&[0x1b_ad_d1_e5, u64::from(city)]);
    let first = FIRST_OCTETS[(h % FIRST_OCTETS.len() as u64) as usize];
    let second = ((h >> 16) & 0xff) as u8;
    let low = between(rng, 256, 65_279) as u16;
    u32::from_be_bytes([first, second, (low >> 8) as u8, (low & 0xff) as u8])
}

/// The autonomous system an address's /16 belongs to.
pub(super) fn asn(ip: u32) -> u32 {
    (mix(&[0xa5_a5, u64::from(ip >> 16)]) % 390_000) as u32 + 1_000
}

// ---------------------------------------------------------------------------------------------
// Devices.

/// A browser and the versions a device may run, oldest first.
struct BrowserSpec {
    family: &'static str,
    versions: &'static [&'static str],
    /// How many dot-separated parts of the version Azure shows after the family.
    azure_parts: usize,
}

const CHROME_VERSIONS: &[&str] = &[
    "114.0.5735.199",
    "115.0.5790.171",
    "116.0.5845.188",
    "117.0.5938.150",
    "118.0.5993.118",
    "119.0.6045.160",
    "120.0.6099.130",
];
const CHROME: BrowserSpec = BrowserSpec {
    family: "Chrome",
    versions: CHROME_VERSIONS,
    azure_parts: 3,
};
const CHROME_MOBILE: BrowserSpec = BrowserSpec {
    family: "Chrome Mobile",
    versions: CHROME_VERSIONS,
    azure_parts: 3,
};
const EDGE: BrowserSpec = BrowserSpec {
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
const FIREFOX: BrowserSpec = BrowserSpec {
    family: "Firefox",
    versions: &["115.0", "116.0", "117.0", "118.0", "119.0", "120.0"],
    azure_parts: 2,
};
const SAFARI: BrowserSpec = BrowserSpec {
    family: "Safari",
    versions: &["16.5", "16.6", "17.0", "17.1", "17.2"],
    azure_parts: 2,
};
const MOBILE_SAFARI: BrowserSpec = BrowserSpec {
    family: "Mobile Safari",
    versions: &["16.5", "16.6", "17.0", "17.1", "17.2"],
    azure_parts: 2,
};

/// What kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    WinLaptop,
    WinDesktop,
    Mac,
    Linux,
    IPhone,
    IPad,
    Android,
}

/// A device: how Azure and Duo describe it. Versions come in two eras, before and after the
/// device's browser (and, on iOS, system) upgrade.
pub(super) struct Device {
    pub mobile: bool,
    /// Azure `deviceDetail.operatingSystem`.
    pub azure_os: &'static str,
    /// Duo `access_device.os`.
    pub duo_os: &'static str,
    /// Duo `access_device.os_version`, per era.
    pub os_version: [String; 2],
    /// Duo `access_device.browser`.
    pub browser: &'static str,
    /// Duo `access_device.browser_version`, per era.
    pub browser_version: [String; 2],
    /// Azure `deviceDetail.browser`, per era.
    pub azure_browser: [String; 2],
    /// Azure `userAgent`, per era.
    pub user_agent: [String; 2],
    /// The day (from the first) the upgrade happens.
    pub upgrade_day: u32,
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

/// The Azure browser string: family and the first `parts` parts of the version.
fn azure_browser(spec: &BrowserSpec, version: &str) -> String {
    let short: Vec<&str> = version.split('.').take(spec.azure_parts).collect();
    format!("{} {}", spec.family, short.join("."))
}

fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

/// A user agent for the kind, browser and versions.
fn user_agent(kind: Kind, family: &str, version: &str, os_version: &str) -> String {
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

const ANDROID_MODELS: &[&str] = &[
    "Pixel 7",
    "Pixel 8 Pro",
    "SM-S911U",
    "SM-G991U",
    "moto g 5G",
];

/// Draws a device of `kind` for the user `first last`.
fn device(kind: Kind, first: &str, last: &str, days: u32, rng: &mut ChaCha8Rng) -> Device {
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
    Device {
        mobile: matches!(kind, Kind::IPhone | Kind::IPad | Kind::Android),
        azure_os,
        duo_os,
        browser: spec.family,
        browser_version: versions.map(String::from),
        azure_browser: versions.map(|v| azure_browser(spec, v)),
        user_agent: [0, 1].map(|e| user_agent(kind, spec.family, versions[e], &os_version[e])),
        os_version,
        upgrade_day,
        display_name,
        device_id,
        trust_type,
        trusted,
        posture,
    }
}

/// Devices no user owns, for the unseen-device anomalies: old or unusual systems and browsers,
/// unregistered.
pub(super) fn foreign_devices() -> Vec<Device> {
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
                mobile: duo_os == "Android",
                azure_os,
                duo_os,
                os_version: [os_v.into(), os_v.into()],
                browser: family,
                browser_version: [version.into(), version.into()],
                azure_browser: [az.into(), az.into()],
                user_agent: [ua.into(), ua.into()],
                upgrade_day: u32::MAX,
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
pub(super) struct Phone {
    /// Duo `auth_device.name`: model and number.
    pub name: String,
    /// The number alone (what Duo shows for phone calls).
    pub number: String,
    /// Duo `auth_device.key`.
    pub key: String,
}

fn phone(model: &str, prefix: &str, seed: u64, salt: u64, rng: &mut ChaCha8Rng) -> Phone {
    let number = format!("{prefix} 555-01{:02}", index(rng, 100));
    Phone {
        name: format!("{model} ({number})"),
        key: duo_key("DP", seed, salt),
        number,
    }
}

/// Phones no user owns, for the unseen-device anomalies.
pub(super) fn foreign_phones(seed: u64) -> Vec<Phone> {
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

// ---------------------------------------------------------------------------------------------
// Users.

#[rustfmt::skip]
const FIRST_NAMES: &[&str] = &[
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
const LAST_NAMES: &[&str] = &[
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

const GROUPS: &[&str] = &[
    "CorpHQ Users",
    "Engineering",
    "Sales",
    "Finance",
    "IT Admins",
    "Support",
    "Contractors",
    "Remote Workers",
];

const DOMAIN: &str = "domain.com";

/// A user and their habits.
pub(super) struct User {
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
const LIGHT_SHARE: f64 = 0.17;
const HEAVY_SHARE: f64 = 0.04;

/// Mean events per day for a user of class 0 (light), 1 (regular) or 2 (heavy).
///
/// Light users (17%): log-normal, median 4, capped at 8.5, so they stay under 300 events in
/// 30 days and fall back to the generic model. Regular users: 10.5 plus a log-normal of median
/// 1 (a right-skewed spread from 10.5 to about 20). Heavy users (4%): log-normal, median 60,
/// 40 to 200. Overall mean: about 12.5 per user-day.
fn volume(class: u8, rng: &mut ChaCha8Rng) -> f64 {
    let z = normal(rng);
    match class {
        0 => (4.0f64.ln() + 0.55 * z).exp().clamp(0.3, 8.5),
        2 => (60f64.ln() + 0.3 * z).exp().clamp(40.0, 200.0),
        _ => 10.5 + (0.8 * z).exp().min(30.0),
    }
}

/// Draws every user, in order; usernames are made unique in that order.
pub(super) fn users(cfg: &GenerateConfig, app_popularity: &[u32]) -> Vec<User> {
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
        let groups = vec!["Duo Users", GROUPS[index(&mut rng, GROUPS.len())]];
        out.push(User {
            name,
            display: format!("{first} {last}"),
            id: random_uuid(&mut rng),
            duo_key: duo_key("DU", cfg.seed, u as u64),
            groups,
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
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Ordinary events.

/// Weekday and weekend multipliers of the mean (a weekend day has a quarter of a weekday's
/// volume; over a week they average to 1).
const WEEKDAY: f64 = 7.0 / 5.5;
const WEEKEND: f64 = 0.25 * 7.0 / 5.5;

/// A benign failure, as users make them every day.
pub(super) fn benign_failure(source: GenSource, factor: Factor, rng: &mut ChaCha8Rng) -> FailKind {
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
pub(super) fn pick_factor(user: &User, rng: &mut ChaCha8Rng) -> Factor {
    if unit(rng) < 0.9 {
        user.factor
    } else {
        Factor::DuoPush
    }
}

/// An app from the user's usual ones.
pub(super) fn usual_app(user: &User, rng: &mut ChaCha8Rng) -> u16 {
    user.apps
        .get(weighted(rng, &user.app_weights))
        .copied()
        .unwrap_or(0)
}

/// An ordinary event of `user` at `micros` from their own device and home, to be adjusted.
pub(super) fn base_event(
    world: &World,
    user: &User,
    uid: u32,
    micros: i64,
    rng: &mut ChaCha8Rng,
) -> Event {
    let device = weighted(rng, &user.device_weights) as u8;
    let day = ((micros - world.start_micros).div_euclid(DAY_MICROS)).max(0) as u32;
    let upgraded = user
        .devices
        .get(usize::from(device))
        .is_some_and(|d| day >= d.upgrade_day);
    let factor = pick_factor(user, rng);
    Event {
        micros,
        id: random_uuid(rng),
        user: uid,
        device: DevRef::Own(device),
        upgraded,
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
fn session_start(user: &User, weekend: bool, rng: &mut ChaCha8Rng) -> i64 {
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
pub(super) fn local_to_utc(user: &User, local: i64) -> i64 {
    (local - user.tz_micros()).rem_euclid(DAY_MICROS)
}

/// The user's ordinary events of one UTC day, appended to `out`.
#[allow(clippy::too_many_arguments)]
pub(super) fn normal_day(
    world: &World,
    user: &User,
    uid: u32,
    day: u32,
    day_start: i64,
    weekend: bool,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Event>,
) {
    let factor = if weekend { WEEKEND } else { WEEKDAY };
    let jitter = (0.1 * normal(rng)).exp();
    let n = poisson(rng, user.mean_per_day * factor * jitter);
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
        let upgraded = dev.is_some_and(|d| day >= d.upgrade_day);
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
                upgraded,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_cities_come_in_pairs_and_foreign_cities_are_far_from_some_home() {
        for (i, c) in CITIES.iter().enumerate() {
            if c.metro > 0 {
                let pair = CITIES.iter().filter(|d| d.metro == c.metro).count();
                assert_eq!(pair, 2, "{}", c.name);
                assert!(c.weight > 0);
            } else {
                assert_eq!(c.weight, 0);
                assert!(
                    CITIES.iter().all(|h| h.metro == 0 || h.code != c.code),
                    "{} shares a country with a home city",
                    c.name
                );
            }
            assert!(i < u16::MAX as usize);
        }
        let sj = &CITIES[0];
        let lagos = CITIES.iter().find(|c| c.name == "Lagos").expect("Lagos");
        let d = distance_km(sj, lagos);
        assert!((12_000.0..13_000.0).contains(&d), "{d}");
    }

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
