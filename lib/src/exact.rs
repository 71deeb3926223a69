//! Exact tables: what a mark stores beside its key.
//!
//! A mark's key is its event ID (inside its namespace and generation, see
//! [`crate::store`]); its value says who marked it and whether it is done:
//!
//! | bytes | meaning |
//! |---|---|
//! | empty | done, no owner (the common case: no value bytes on disk) |
//! | `0x01` ‖ owner (8) | done by this owner |
//! | `0x02` ‖ owner (8) ‖ lease end (8) | format 1 only: a claim (claims now have their own table) |
//!
//! Owners are stored as a 64-bit fingerprint: the owner token hashed with the
//! namespace's secret seed, so tokens never reach the disk.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::hash::HashSeed;

/// The longest owner token, in bytes.
pub const MAX_OWNER_LEN: usize = 256;

const TAG_DONE_BY: u8 = 0x01;
const TAG_CLAIMED: u8 = 0x02;

/// Keeps owner fingerprints apart from ID hashes made with the same seed.
const OWNER_DOMAIN: u64 = 0x6f77_6e65_7273_2121;

/// An owner token the front door has validated (1 to [`MAX_OWNER_LEN`] bytes),
/// for an engine to fingerprint its own way with its namespace's seed (the
/// embedded engine with [`OwnerFp::of`], PostgreSQL as its SQL functions do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner<'a>(&'a str);

impl<'a> Owner<'a> {
    /// Validates an owner token.
    pub(crate) fn new(owner: &'a str) -> Result<Self, Error> {
        OwnerFp::check(owner)?;
        Ok(Self(owner))
    }

    /// Validates an optional owner token.
    pub(crate) fn maybe(owner: Option<&'a str>) -> Result<Option<Self>, Error> {
        owner.map(Self::new).transpose()
    }

    // Only PostgreSQL fingerprints from the token itself.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) const fn as_str(self) -> &'a str {
        self.0
    }
}

/// An owner token's fingerprint within one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OwnerFp(u64);

impl OwnerFp {
    /// The fingerprint as stored.
    pub(crate) const fn to_u64(self) -> u64 {
        self.0
    }

    /// A stored fingerprint.
    pub(crate) const fn from_u64(fp: u64) -> Self {
        Self(fp)
    }

    /// Validates an owner token: 1 to [`MAX_OWNER_LEN`] bytes.
    pub(crate) fn check(owner: &str) -> Result<(), Error> {
        if owner.is_empty() {
            return Err(Error::InvalidOwner("empty"));
        }
        if owner.len() > MAX_OWNER_LEN {
            return Err(Error::InvalidOwner("longer than 256 bytes"));
        }
        Ok(())
    }

    /// Validates and fingerprints an owner token (tests; the engines get validated
    /// tokens from the front door).
    #[cfg(test)]
    pub(crate) fn new(owner: &str, seed: HashSeed) -> Result<Self, Error> {
        Ok(Self::of(Owner::new(owner)?, seed))
    }

    /// The embedded engine's fingerprint of a validated owner token.
    pub(crate) fn of(owner: Owner<'_>, seed: HashSeed) -> Self {
        Self(xxh3_64_with_seed(
            owner.0.as_bytes(),
            seed.to_u64() ^ OWNER_DOMAIN,
        ))
    }
}

/// The decoded value of a mark.
///
/// `Claimed` exists only in stores written before claims moved to their own table
/// (format 1); start-up moves such records there (see `tracker::recovery`), and
/// [`MarkValue::done_by`] refuses one met anywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MarkValue {
    Done { owner: Option<OwnerFp> },
    Claimed { owner: OwnerFp, until: Timestamp },
}

/// An encoded mark value, without allocating.
pub(crate) struct Encoded {
    bytes: [u8; 17],
    len: usize,
}

impl Encoded {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl MarkValue {
    pub(crate) fn encode(self) -> Encoded {
        let mut bytes = [0_u8; 17];
        let len = match self {
            Self::Done { owner: None } => 0,
            Self::Done { owner: Some(o) } => {
                bytes[0] = TAG_DONE_BY;
                bytes[1..9].copy_from_slice(&o.0.to_le_bytes());
                9
            }
            Self::Claimed { owner, until } => {
                bytes[0] = TAG_CLAIMED;
                bytes[1..9].copy_from_slice(&owner.0.to_le_bytes());
                bytes[9..17].copy_from_slice(&until.as_millis().to_le_bytes());
                17
            }
        };
        Encoded { bytes, len }
    }

    /// Who marked a done record (`None`: no owner).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a claim record left in an exact table, or bytes of no
    /// known format.
    pub(crate) fn done_by(bytes: &[u8]) -> Result<Option<OwnerFp>, Error> {
        match Self::decode(bytes)? {
            Self::Done { owner } => Ok(owner),
            Self::Claimed { .. } => Err(Error::Corrupt(
                "a claim record inside an exact table: claims live in their own table \
                 since store format 2"
                    .into(),
            )),
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let u64_at =
            |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("length checked"));
        match (bytes.first(), bytes.len()) {
            (None, _) => Ok(Self::Done { owner: None }),
            (Some(&TAG_DONE_BY), 9) => Ok(Self::Done {
                owner: Some(OwnerFp(u64_at(1))),
            }),
            (Some(&TAG_CLAIMED), 17) => Ok(Self::Claimed {
                owner: OwnerFp(u64_at(1)),
                until: Timestamp::from_millis(u64_at(9)),
            }),
            (Some(tag), len) => Err(Error::Corrupt(format!(
                "mark value with tag {tag:#04x} and length {len} is not a known format"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let seed = HashSeed::from_u64(1);
        let o = OwnerFp::new("worker-1", seed).unwrap();
        for v in [
            MarkValue::Done { owner: None },
            MarkValue::Done { owner: Some(o) },
            MarkValue::Claimed {
                owner: o,
                until: Timestamp::from_millis(99),
            },
        ] {
            assert_eq!(MarkValue::decode(v.encode().as_slice()).unwrap(), v);
        }
        assert!(
            MarkValue::encode(MarkValue::Done { owner: None })
                .as_slice()
                .is_empty()
        );
        assert!(MarkValue::decode(&[0x01, 2]).is_err());
        assert!(MarkValue::decode(&[0x07; 9]).is_err());
    }

    #[test]
    fn owners_are_validated_and_seeded() {
        let a = HashSeed::from_u64(1);
        let b = HashSeed::from_u64(2);
        assert!(OwnerFp::new("", a).is_err());
        assert!(OwnerFp::new(&"x".repeat(257), a).is_err());
        assert_ne!(OwnerFp::new("w", a).unwrap(), OwnerFp::new("w", b).unwrap());
        assert_ne!(OwnerFp::new("w", a).unwrap(), OwnerFp::new("v", a).unwrap());
    }
}
