//! A namespace's claims table, in memory, and its records in the store: one
//! record per claim under its own key (see `records::claim_key`), apart from the
//! generations. What a claim means for a caller is decided in `decide`; how claims
//! are taken, completed and released is in `claims`.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use super::flight::IdentityHasher;
use crate::clock::{Timestamp, duration_millis};
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::records;
use crate::store::{Batch, NamespaceId};
use crate::tracker::decide::ClaimState;

/// A claim held in the table.
#[derive(Clone, Debug)]
pub(super) struct Claim {
    /// The event ID, to find its record.
    pub(super) id: Box<[u8]>,
    pub(super) state: ClaimState,
    /// The lease it was taken or last renewed with: how long it is kept once
    /// expired.
    pub(super) lease: Duration,
}

/// A namespace's claims, by ID hash.
#[derive(Debug, Default)]
pub(super) struct ClaimTable {
    map: HashMap<u128, Claim, BuildHasherDefault<IdentityHasher>>,
}

impl ClaimTable {
    /// An ID's claim, live or expired.
    #[inline]
    pub(super) fn get(&self, key: u128) -> Option<ClaimState> {
        // Most namespaces hold no claims: one branch, no hashing.
        if self.map.is_empty() {
            return None;
        }
        self.map.get(&key).map(|c| c.state)
    }

    pub(super) fn put(&mut self, key: u128, claim: Claim) {
        self.map.insert(key, claim);
    }

    pub(super) fn remove(&mut self, key: u128) {
        self.map.remove(&key);
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Claims expired for at least as long as their lease: forgotten at the next
    /// tick.
    pub(super) fn forgettable(&self, now: Timestamp) -> Vec<(u128, Box<[u8]>)> {
        self.map
            .iter()
            .filter(|(_, c)| now >= c.state.until.saturating_add(c.lease))
            .map(|(k, c)| (*k, c.id.clone()))
            .collect()
    }
}

/// A claim's stored value: version, owner, lease end (store time), lease.
const CLAIM_RECORD_V1: u8 = 1;
const CLAIM_RECORD_LEN: usize = 25;

pub(super) fn encode(claim: &Claim) -> [u8; CLAIM_RECORD_LEN] {
    let mut out = [0_u8; CLAIM_RECORD_LEN];
    out[0] = CLAIM_RECORD_V1;
    out[1..9].copy_from_slice(&claim.state.owner.to_u64().to_le_bytes());
    out[9..17].copy_from_slice(&claim.state.until.as_millis().to_le_bytes());
    out[17..25].copy_from_slice(&duration_millis(claim.lease).to_le_bytes());
    out
}

/// Decodes a stored claim; `key` names it in errors.
pub(super) fn decode(key: &[u8], id: &[u8], bytes: &[u8]) -> Result<Claim, Error> {
    if bytes.len() != CLAIM_RECORD_LEN || bytes[0] != CLAIM_RECORD_V1 {
        return Err(Error::Corrupt(format!(
            "claim record {:?} is not a version {CLAIM_RECORD_V1} record of {CLAIM_RECORD_LEN} bytes",
            String::from_utf8_lossy(key)
        )));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("length"));
    Ok(Claim {
        id: id.into(),
        state: ClaimState {
            owner: OwnerFp::from_u64(u64_at(1)),
            until: Timestamp::from_millis(u64_at(9)),
        },
        lease: Duration::from_millis(u64_at(17)),
    })
}

pub(super) fn put_record(batch: &mut Batch, ns: NamespaceId, claim: &Claim) {
    batch.put_meta(&records::claim_key(ns, &claim.id), &encode(claim));
}

pub(super) fn delete_record(batch: &mut Batch, ns: NamespaceId, id: &[u8]) {
    batch.delete_meta(&records::claim_key(ns, id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashSeed;

    #[test]
    fn claim_records_round_trip_and_refuse_garbage() {
        let claim = Claim {
            id: b"job-1".as_slice().into(),
            state: ClaimState {
                owner: OwnerFp::new("w1", HashSeed::from_u64(3)).unwrap(),
                until: Timestamp::from_millis(1_700_000_000_123),
            },
            lease: Duration::from_secs(30),
        };
        let bytes = encode(&claim);
        let back = decode(b"claim:k", b"job-1", &bytes).unwrap();
        assert_eq!(back.state, claim.state);
        assert_eq!(back.lease, claim.lease);
        assert_eq!(&*back.id, b"job-1");
        assert!(decode(b"claim:k", b"job-1", &bytes[..24]).is_err());
        let mut v2 = bytes;
        v2[0] = 2;
        let err = decode(b"claim:k", b"job-1", &v2).unwrap_err();
        assert!(err.to_string().contains("claim:k"), "{err}");
    }

    #[test]
    fn expired_claims_are_kept_as_long_as_their_lease() {
        let mut table = ClaimTable::default();
        let owner = OwnerFp::new("w", HashSeed::from_u64(1)).unwrap();
        table.put(
            7,
            Claim {
                id: b"a".as_slice().into(),
                state: ClaimState {
                    owner,
                    until: Timestamp::from_millis(1_000),
                },
                lease: Duration::from_millis(500),
            },
        );
        assert!(table.forgettable(Timestamp::from_millis(1_499)).is_empty());
        assert_eq!(table.forgettable(Timestamp::from_millis(1_500)).len(), 1);
        assert_eq!(table.get(7).map(|c| c.until.as_millis()), Some(1_000));
        table.remove(7);
        assert_eq!(table.len(), 0);
    }
}
