//! Durations as people write them, in one grammar for every place Oncely reads
//! one: TOML settings, flags, environment variables, and the HTTP API's
//! `generation_span` (whose OpenAPI pattern, [`POSITIVE_PATTERN`], states it).
//!
//! A duration is a whole number of at most 9 significant digits (leading zeros
//! aside), then optionally a unit, `ms`, `s` (the default), `m`, `h` or `d`,
//! with or without one space before it. So `250ms`, `30s`, `30`, `15m`, `1h`, `1 h` and `7d`
//! all read; `1.5h`, `1w`, ` 1h` and `1  h` do not. 999,999,999 days still fits a
//! `u64` of milliseconds, so nothing that matches can overflow. Whether zero is
//! allowed is the setting's business (a drain delay may be `0s`; a generation
//! span may not).
//!
//! Written back ([`Display`]) in the largest unit that divides the duration
//! evenly, without a space: `90s`, `1h`, `1500ms`.

use std::fmt;
use std::time::Duration;

/// The largest number a duration may carry, in its unit.
pub const MAX_NUMBER: u64 = 999_999_999;

/// What [`parse`] reads, as a regular expression.
pub const PATTERN: &str = "^(0*[1-9][0-9]{0,8}|0+)( ?(ms|s|m|h|d))?$";

/// What [`parse`] reads and is at least 1 ms, as a regular expression.
pub const POSITIVE_PATTERN: &str = "^0*[1-9][0-9]{0,8}( ?(ms|s|m|h|d))?$";

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Reads a duration in the grammar above.
///
/// # Errors
///
/// A message naming what was given and what is expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, rest) = s.split_at(split);
    let significant = digits.trim_start_matches('0');
    if digits.is_empty() || significant.len() > 9 {
        return Err(format!(
            "{s:?} is not a duration like \"250ms\", \"30s\", \"15m\", \"1h\", \"1 h\" or \"7d\" \
             (a whole number of at most 9 significant digits, then a unit)"
        ));
    }
    let unit = rest.strip_prefix(' ').unwrap_or(rest);
    let per = match unit {
        "" if !rest.is_empty() => return Err(format!("{s:?} ends with a space and no unit")),
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?} (ms, s, m, h or d)"
            ));
        }
    };
    let n: u64 = significant.parse().unwrap_or(0);
    Ok(Duration::from_millis(n * per))
}

/// A duration in its shortest exact form (sub-millisecond parts are dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Display(pub Duration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        for (unit, per) in UNITS {
            if ms >= per && ms.is_multiple_of(per) {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_read_and_print_back() {
        for (s, ms, back) in [
            ("250ms", 250, "250ms"),
            ("250 ms", 250, "250ms"),
            ("1500ms", 1500, "1500ms"),
            ("30s", 30_000, "30s"),
            ("30", 30_000, "30s"),
            ("90s", 90_000, "90s"),
            ("15m", 900_000, "15m"),
            ("60m", 3_600_000, "1h"),
            ("1h", 3_600_000, "1h"),
            ("1 h", 3_600_000, "1h"),
            ("7d", 604_800_000, "7d"),
            ("0001s", 1_000, "1s"),
            ("999999999d", 999_999_999 * 86_400_000, "999999999d"),
            ("0", 0, "0ms"),
            ("0s", 0, "0ms"),
            ("000 ms", 0, "0ms"),
        ] {
            let d = parse(s).unwrap();
            assert_eq!(d, Duration::from_millis(ms), "{s}");
            assert_eq!(Display(d).to_string(), back, "{s}");
            assert_eq!(parse(&Display(d).to_string()), Ok(d), "{s} reads back");
        }
        for bad in [
            "",
            "h",
            " 1h",
            "1h ",
            "1  h",
            "1 ",
            "1w",
            "-1s",
            "1.5h",
            "1e3",
            "1000000000ms",
            "9999999999d",
            "1 hour",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    /// The patterns say what `parse` reads: a hand-written matcher of each, over
    /// every string of a small alphabet up to a length, agrees with `parse`.
    #[test]
    fn the_patterns_state_the_grammar() {
        // `PATTERN` and `POSITIVE_PATTERN`, written out as code (no regex crate).
        fn matches(s: &str, positive: bool) -> bool {
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (digits, rest) = s.split_at(split);
            let significant = digits.trim_start_matches('0');
            let number = if positive {
                (1..=9).contains(&significant.len())
            } else {
                !digits.is_empty() && significant.len() <= 9
            };
            let unit = ["ms", "s", "m", "h", "d"];
            let after = |r: &str| r.is_empty() || unit.contains(&r);
            number && (after(rest) || rest.strip_prefix(' ').is_some_and(|r| unit.contains(&r)))
        }
        assert_eq!(PATTERN, "^(0*[1-9][0-9]{0,8}|0+)( ?(ms|s|m|h|d))?$");
        assert_eq!(POSITIVE_PATTERN, "^0*[1-9][0-9]{0,8}( ?(ms|s|m|h|d))?$");
        let alphabet = ['0', '1', ' ', 'm', 's', 'h', 'x'];
        let mut strings = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = strings
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(longer);
        }
        for s in &strings {
            let read = parse(s);
            assert_eq!(read.is_ok(), matches(s, false), "{s:?}: {read:?}");
            assert_eq!(read.is_ok_and(|d| !d.is_zero()), matches(s, true), "{s:?}");
        }
    }
}
