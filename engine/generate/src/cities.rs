//! The city table sign-ins come from (home metros in pairs, and far-away places only seen in
//! anomalies), distances between cities, and each city's address space.

use rand_chacha::ChaCha8Rng;

use crate::random::{between, mix};

/// A place sign-ins come from.
pub(crate) struct City {
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
pub(crate) const fn city(
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

pub(crate) const US: &str = "United States";

/// Every city, home metros first (in pairs), then the far-away ones.
#[rustfmt::skip]
pub(crate) const CITIES: &[City] = &[
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
pub(crate) fn city_at(idx: u16) -> &'static City {
    CITIES.get(usize::from(idx)).unwrap_or(&CITIES[0])
}

/// Great-circle distance in kilometres.
pub(crate) fn distance_km(a: &City, b: &City) -> f64 {
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
pub(crate) const FIRST_OCTETS: &[u8] = &[
    23, 24, 31, 37, 44, 45, 50, 62, 64, 66, 67, 68, 71, 73, 76, 77, 81, 82, 84, 86, 88, 89, 91,
    93, 94, 95, 98, 99, 104, 107, 108, 109, 142, 151, 154, 161, 176, 178, 185, 188, 190, 196,
    200, 201, 203, 212, 213, 217,
];

/// A random address in the city's /16 (each city has its own, fixed across runs).
pub(crate) fn city_ip(city: u16, rng: &mut ChaCha8Rng) -> u32 {
    let h = mix(&[0x1b_ad_d1_e5, u64::from(city)]);
    let first = FIRST_OCTETS[(h % FIRST_OCTETS.len() as u64) as usize];
    let second = ((h >> 16) & 0xff) as u8;
    let low = between(rng, 256, 65_279) as u16;
    u32::from_be_bytes([first, second, (low >> 8) as u8, (low & 0xff) as u8])
}

/// The autonomous system an address's /16 belongs to.
pub(crate) fn asn(ip: u32) -> u32 {
    (mix(&[0xa5_a5, u64::from(ip >> 16)]) % 390_000) as u32 + 1_000
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
}
