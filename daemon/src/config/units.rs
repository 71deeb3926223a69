//! Values written for humans: sizes (`4MiB`) and durations (`10s`).

use std::fmt;
use std::str::FromStr;

use oncely::HumanDuration;
use serde::Deserialize;

/// A number of bytes written for humans: `4194304`, `4MiB`, `512KiB`, `1GiB`, or
/// decimal `64MB`, `1kB`. Binary units are powers of 1024, decimal ones of 1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size like 4194304, 512KiB, 4MiB or 1GiB"))?;
        let per: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, kB, MB or GB)"
                ));
            }
        };
        n.checked_mul(per)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, per) in [("GiB", 1_u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= per && self.0.is_multiple_of(per) {
                return write!(f, "{}{unit}", self.0 / per);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size like \"4MiB\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Bytes for a message: `530.1 MiB`, `11.8 GiB`, `512 B`; the nearest binary unit,
/// one decimal.
#[must_use]
pub fn human_bytes(n: u64) -> String {
    for (unit, per) in [("GiB", 1_u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= per {
            // Display only: a u64 of bytes fits an f64 to well within a tenth.
            #[allow(clippy::cast_precision_loss)]
            let value = n as f64 / per as f64;
            return format!("{value:.1} {unit}");
        }
    }
    format!("{n} B")
}

/// Parses a duration setting (`"10s"`, `"500ms"`, a number of seconds).
///
/// # Errors
///
/// A message saying what was expected.
pub fn parse_duration(s: &str) -> Result<HumanDuration, String> {
    HumanDuration::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        for (s, n) in [
            ("4194304", 4 << 20),
            ("4MiB", 4 << 20),
            ("4M", 4 << 20),
            ("512KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("64MB", 64_000_000),
            ("1kB", 1_000),
            ("7B", 7),
            (" 2 MiB ", 2 << 20),
        ] {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(n)), "{s}");
        }
        for bad in ["", "MiB", "4XB", "-1", "99999999999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(555_745_280), "530.0 MiB");
    }
}
