//! Seeded hashing of event IDs.
//!
//! Each namespace hashes IDs with its own secret seed, so that nobody without the seed
//! can craft IDs that pile onto the same filter bits and raise the false-positive rate
//! for everyone else. One 128-bit xxh3 hash per ID feeds every generation's filter.

use std::fmt;

use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::error::Error;

/// The secret seed of a namespace's hash function.
///
/// Its `Debug` output is redacted: the seed is what keeps filters safe from chosen
/// IDs, so it has no business in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashSeed(u64);

impl HashSeed {
    /// A seed from the operating system's random source.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the random source is unavailable.
    pub fn random() -> Result<Self, Error> {
        let mut bytes = [0_u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| Error::Io {
            path: "<operating system random source>".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Self(u64::from_le_bytes(bytes)))
    }

    /// A fixed seed: for tests, benchmarks and reproducible measurements.
    #[must_use]
    pub const fn from_u64(seed: u64) -> Self {
        Self(seed)
    }

    /// The seed's value, for persisting it.
    #[must_use]
    pub const fn to_u64(self) -> u64 {
        self.0
    }

    /// Hashes an ID.
    #[inline]
    #[must_use]
    pub fn hash(self, id: &[u8]) -> IdHash {
        let h = xxh3_128_with_seed(id, self.0);
        IdHash {
            lo: h as u64,
            hi: (h >> 64) as u64,
        }
    }
}

impl fmt::Debug for HashSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashSeed(<redacted>)")
    }
}

/// The 128-bit hash of one ID, from which every filter derives its bit positions.
///
/// The low half picks the block (or, in the standard layout, seeds the position
/// sequence); the high half supplies the positions inside the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdHash {
    /// Low 64 bits.
    pub lo: u64,
    /// High 64 bits.
    pub hi: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_change_the_hash() {
        let a = HashSeed::from_u64(1).hash(b"event-1");
        let b = HashSeed::from_u64(2).hash(b"event-1");
        assert_ne!(a, b);
        assert_eq!(a, HashSeed::from_u64(1).hash(b"event-1"));
    }

    #[test]
    fn random_seeds_differ_and_debug_is_redacted() {
        let a = HashSeed::random().unwrap();
        let b = HashSeed::random().unwrap();
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(&a.to_u64().to_string()));
    }
}
