//! Serializers for values kept compact in memory and written without allocation: UUIDs, ISO
//! times, IPv4 addresses, empty lists and objects.

use std::fmt::{self, Write as _};

use chrono::{Datelike, Timelike};
use serde::{Serialize, Serializer};

/// A short string built on the stack.
pub(crate) struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    pub(crate) fn new() -> Self {
        StackStr {
            buf: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A UUID, written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Uuid(pub(crate) u128);

impl Uuid {
    pub(crate) fn text(self) -> [u8; 36] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 36];
        let mut nibble = 0;
        for (i, slot) in out.iter_mut().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            *slot = HEX[((self.0 >> (124 - 4 * nibble)) & 0xf) as usize];
            nibble += 1;
        }
        out
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.text()).unwrap_or(""))
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.text()).unwrap_or(""))
    }
}

/// An empty UUID field (`""`) or a UUID.
pub(crate) struct MaybeUuid(pub(crate) Option<u128>);

impl Serialize for MaybeUuid {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => Uuid(v).serialize(s),
            None => s.serialize_str(""),
        }
    }
}

/// An ISO-8601 UTC time with microseconds: `2022-08-01T00:03:56.207532Z` (Azure) or
/// `2022-08-01T00:03:56.207532+00:00` (Duo).
pub(crate) struct Iso {
    micros: i64,
    zulu: bool,
}

impl Iso {
    pub(crate) fn zulu(micros: i64) -> Self {
        Iso { micros, zulu: true }
    }

    pub(crate) fn offset(micros: i64) -> Self {
        Iso {
            micros,
            zulu: false,
        }
    }

    pub(crate) fn text(&self) -> Option<StackStr<40>> {
        let t = chrono::DateTime::from_timestamp_micros(self.micros)?;
        let mut s = StackStr::<40>::new();
        write!(
            s,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_micros(),
            if self.zulu { "Z" } else { "+00:00" }
        )
        .ok()?;
        Some(s)
    }
}

impl Serialize for Iso {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.text() {
            Some(t) => s.serialize_str(t.as_str()),
            None => Err(serde::ser::Error::custom(format!(
                "time {} µs is out of range",
                self.micros
            ))),
        }
    }
}

/// An IPv4 address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ip(pub(crate) u32);

impl Serialize for Ip {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut t = StackStr::<16>::new();
        let [a, b, c, d] = self.0.to_be_bytes();
        write!(t, "{a}.{b}.{c}.{d}").map_err(serde::ser::Error::custom)?;
        s.serialize_str(t.as_str())
    }
}

/// An empty JSON array.
pub(crate) struct EmptyList;

impl Serialize for EmptyList {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        s.serialize_seq(Some(0))?.end()
    }
}

/// An empty JSON object.
pub(crate) struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}
