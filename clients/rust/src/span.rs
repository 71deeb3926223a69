//! Durations on the wire: `"250ms"`, `"30s"`, `"15m"`, `"1h"`, `"1 h"`, `"7d"`,
//! or an integer number of seconds, in the one grammar of [`oncely_duration`]
//! (which settings read too), at least 1 ms; written back in the largest unit that
//! divides them evenly.

use std::fmt;
use std::time::Duration;

use serde::{Deserializer, Serializer};

pub(crate) use oncely_duration::MAX_NUMBER;
use oncely_duration::{Display, POSITIVE_PATTERN};

/// What the string form matches, for the OpenAPI document.
pub(crate) const PATTERN: &str = POSITIVE_PATTERN;

/// Parses the string form: the grammar, at least 1 ms.
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    from_millis(oncely_duration::parse(s)?)
}

fn from_millis(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err("a duration must be at least 1ms".into());
    }
    Ok(d)
}

pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Display(*d))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(Visitor)
}

/// Durations travel in one field, `generation_span`, which the errors name: serde
/// does not say which field a custom error came from.
struct Visitor;

fn named<E: serde::de::Error>(reason: impl fmt::Display) -> E {
    E::custom(format_args!("invalid generation_span: {reason}"))
}

impl serde::de::Visitor<'_> for Visitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration like \"250ms\", \"30s\", \"1h\" or a number of seconds")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(named)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        if v > MAX_NUMBER {
            return Err(named(format!(
                "{v} seconds is over the limit of {MAX_NUMBER}"
            )));
        }
        from_millis(Duration::from_secs(v)).map_err(named)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map_err(|_| named("a duration cannot be negative"))
            .and_then(|v| self.visit_u64(v))
    }

    // `90.0` is an integer to JSON Schema, as `90` is.
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
        if v.fract() == 0.0 && (0.0..=1e9).contains(&v) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            return self.visit_u64(v as u64);
        }
        Err(named(format!("{v} is not a whole number of seconds")))
    }
}

/// The same for an `Option<Duration>` (absent or `null`: `None`).
pub(crate) mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    // serde's `with` hands optional fields over by reference to the `Option`.
    #[allow(clippy::ref_option)]
    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super")] Duration);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(d)| d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_parse_and_print_back() {
        for (s, ms, back) in [
            ("250ms", 250, "250ms"),
            ("1500ms", 1500, "1500ms"),
            ("30s", 30_000, "30s"),
            ("30", 30_000, "30s"),
            ("90s", 90_000, "90s"),
            ("15m", 900_000, "15m"),
            ("60m", 3_600_000, "1h"),
            ("1h", 3_600_000, "1h"),
            ("7d", 604_800_000, "7d"),
            ("1 h", 3_600_000, "1h"),
            ("0001s", 1_000, "1s"),
            ("999999999d", 999_999_999 * 86_400_000, "999999999d"),
        ] {
            let d = parse(s).unwrap();
            assert_eq!(d, Duration::from_millis(ms), "{s}");
            assert_eq!(Display(d).to_string(), back, "{s}");
        }
        for bad in [
            "",
            "h",
            "0",
            "0ms",
            "000s",
            "1w",
            "-1s",
            " 1h",
            "1h ",
            "1.5h",
            "1000000000ms",
            "9999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_are_seconds() {
        #[derive(serde::Deserialize)]
        struct S(#[serde(with = "super")] Duration);
        let s: S = serde_json::from_str("90").unwrap();
        assert_eq!(s.0, Duration::from_secs(90));
        let s: S = serde_json::from_str("90.0").unwrap();
        assert_eq!(s.0, Duration::from_secs(90));
        for bad in ["0", "-1", "1.5", "1000000000", "1e9", "null", "true"] {
            assert!(serde_json::from_str::<S>(bad).is_err(), "{bad}");
        }
    }
}
