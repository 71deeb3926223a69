//! Whole numbers on the wire as JSON Schema counts them: `30000`, and also `30000.0`
//! or `3e4`, which the schema's `"type": "integer"` accepts (an integer there is a
//! number with no fractional part). serde's integers alone refuse the last two.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, Error, Unexpected, Visitor};

/// 2^64 as an `f64`: the first whole `f64` above `u64::MAX`.
const TWO_TO_64: f64 = 18_446_744_073_709_551_616.0;

pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    d.deserialize_u64(Whole(PhantomData))
}

struct Whole<T>(PhantomData<T>);

impl<T: TryFrom<u64>> Visitor<'_> for Whole<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number in range")
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            .and_then(|v| self.visit_u64(v))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        if v.fract() == 0.0 && (0.0..TWO_TO_64).contains(&v) {
            // Whole and in range: the conversion is exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            return self.visit_u64(v as u64);
        }
        Err(E::invalid_value(Unexpected::Float(v), &self))
    }
}

/// The same for optional fields (absent or `null`: `None`).
pub(crate) mod option {
    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        #[derive(Deserialize)]
        #[serde(bound = "T: TryFrom<u64>")]
        struct Wrapped<T>(#[serde(deserialize_with = "super::deserialize")] T);
        Ok(Option::<Wrapped<T>>::deserialize(d)?.map(|Wrapped(v)| v))
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct N(#[serde(deserialize_with = "super::deserialize")] u32);

    #[test]
    fn integral_numbers_in_any_spelling() {
        for (json, n) in [("7", 7), ("7.0", 7), ("7e0", 7), ("4294967295", u32::MAX)] {
            assert_eq!(serde_json::from_str::<N>(json).unwrap().0, n, "{json}");
        }
        for bad in ["7.5", "-1", "-1.0", "4294967296", "1e300", "\"7\"", "null"] {
            assert!(serde_json::from_str::<N>(bad).is_err(), "{bad}");
        }
    }
}
