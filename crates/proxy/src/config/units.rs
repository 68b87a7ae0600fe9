//! Human-friendly units in the config file: durations (`"30s"`, `"10m"`, `"250ms"`) and
//! byte sizes (`"100MiB"`, `"64KB"`, or a bare integer of bytes).
//!
//! Both are newtypes with their own serde impls so a bad value fails *during* deserialisation,
//! which lets the TOML parser attach the exact line and column of the offending value.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a human string (`"30s"`, `"10m"`, `"1h 30m"`, `"250ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `"30s"`-style text; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration {text:?} ({e}): expected a number with a unit, e.g. \"250ms\", \"30s\", \"10m\"")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// A byte size written as an integer (bytes) or a string with a unit
/// (`"100MiB"`, `"64KB"`, `"1GiB"`). A bare `K`/`M`/`G` is binary, as in nginx's
/// `client_max_body_size` (Dify's `NGINX_CLIENT_MAX_BODY_SIZE=100M` is 100 MiB), so a value
/// copied from Dify's nginx means the same here; `KB`/`MB`/`GB` are decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"100MiB"`-style text; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let expected = "expected bytes as an integer or with a unit, e.g. \"64KiB\", \"100MiB\", \"1GB\"";
        let value: u64 = number.parse().map_err(|_| format!("invalid size {text:?}: {expected}"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "k" | "ki" | "kib" => 1 << 10,
            "mb" => 1_000_000,
            "m" | "mi" | "mib" => 1 << 20,
            "gb" => 1_000_000_000,
            "g" | "gi" | "gib" => 1 << 30,
            _ => return Err(format!("invalid size unit in {text:?}: {expected}")),
        };
        value.checked_mul(multiplier).map(ByteSize).ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (size, name) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_round_trip() {
        assert_eq!(HumanDuration::parse("30s").map(|d| d.0), Ok(Duration::from_secs(30)));
        assert_eq!(HumanDuration::parse("10m").map(|d| d.0), Ok(Duration::from_secs(600)));
        assert_eq!(HumanDuration::parse("250ms").map(|d| d.0), Ok(Duration::from_millis(250)));
        let err = HumanDuration::parse("30").unwrap_err();
        assert!(err.contains("expected a number with a unit"), "{err}");
        assert!(HumanDuration::parse("soon").is_err());
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "1m 30s");
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("100MiB"), Ok(ByteSize(100 << 20)));
        assert_eq!(ByteSize::parse("64KB"), Ok(ByteSize(64_000)));
        assert_eq!(ByteSize::parse("1 GiB"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        // nginx's units: Dify's NGINX_CLIENT_MAX_BODY_SIZE=100M is 100 MiB.
        assert_eq!(ByteSize::parse("100M"), Ok(ByteSize(100 << 20)));
        assert_eq!(ByteSize::parse("8k"), Ok(ByteSize(8 << 10)));
        assert_eq!(ByteSize::parse("1G"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("100MB"), Ok(ByteSize(100_000_000)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
        assert_eq!(ByteSize(100 << 20).to_string(), "100MiB");
    }
}

#[cfg(test)]
mod proptests;
