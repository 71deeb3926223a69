//! Persisted metadata records: namespaces and their generation rings.
//!
//! Records are small JSON documents in the store's meta keyspace, each with a format
//! version `v`. RocksDB checksums every block, so damage surfaces as a storage error;
//! a record that decodes badly or carries an unknown version is [`Error::Corrupt`],
//! naming the key.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::clock::Timestamp;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::generation::{Generation, GenerationId, GenerationRing};
use crate::store::NamespaceId;

/// The version of every record this build writes and reads.
pub(crate) const RECORD_VERSION: u32 = 1;

/// Marks a data directory as an Oncely store, with its layout version.
pub(crate) const FORMAT_KEY: &[u8] = b"format";
pub(crate) const FORMAT_VALUE: &[u8] = b"oncely-store/2";
/// Format 1 kept claims inside the exact tables; start-up moves them to their own
/// table and rewrites the format record (see `tracker::recovery`).
pub(crate) const FORMAT_V1: &[u8] = b"oncely-store/1";
pub(crate) const NEXT_NS_KEY: &[u8] = b"next-ns";
pub(crate) const NS_PREFIX: &[u8] = b"ns:";
/// The tracker clock's last persisted reading: see [`ClockRecord`].
pub(crate) const CLOCK_KEY: &[u8] = b"clock";

pub(crate) fn ns_key(name: &str) -> Vec<u8> {
    [NS_PREFIX, name.as_bytes()].concat()
}

pub(crate) fn ring_key(ns: NamespaceId) -> Vec<u8> {
    [b"ring:".as_slice(), &ns.0.to_be_bytes()].concat()
}

pub(crate) fn clean_key(ns: NamespaceId) -> Vec<u8> {
    [b"clean:".as_slice(), &ns.0.to_be_bytes()].concat()
}

/// The keys of a namespace's claims: this prefix, then the event ID.
pub(crate) fn claim_prefix(ns: NamespaceId) -> Vec<u8> {
    [b"claim:".as_slice(), &ns.0.to_be_bytes(), b":"].concat()
}

pub(crate) fn claim_key(ns: NamespaceId, id: &[u8]) -> Vec<u8> {
    [claim_prefix(ns).as_slice(), id].concat()
}

/// Marks a generation that IDs were forgotten from: its filter, snapshot
/// included, may still hold their bits, so it is rebuilt from the exact table
/// before that goes (see `tracker::local::namespace`). The value is a
/// [`ForgetsRecord`].
pub(crate) fn forgets_key(ns: NamespaceId, generation: GenerationId) -> Vec<u8> {
    [forgets_prefix(ns).as_slice(), &generation.0.to_be_bytes()].concat()
}

pub(crate) fn forgets_prefix(ns: NamespaceId) -> Vec<u8> {
    [b"forgot:".as_slice(), &ns.0.to_be_bytes(), b":"].concat()
}

pub(crate) fn checkpoint_prefix(ns: NamespaceId) -> Vec<u8> {
    [b"ckpt:".as_slice(), &ns.0.to_be_bytes(), b":"].concat()
}

/// A namespace: its identity, configuration and secret seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NamespaceRecord {
    pub(crate) v: u32,
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) config: NamespaceConfig,
    pub(crate) seed: u64,
}

/// The generation ring of a namespace, as of its last rotation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RingRecord {
    pub(crate) v: u32,
    /// Generations numbered from here up keep their exact tables.
    pub(crate) exact_floor: u64,
    /// Oldest first; the last is open.
    pub(crate) generations: Vec<GenerationRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GenerationRecord {
    pub(crate) id: u64,
    /// Store time (see `tracker::time`).
    pub(crate) opened_at: u64,
    pub(crate) sealed_at: Option<u64>,
    /// New IDs at sealing; for the open generation, recounted on start-up.
    pub(crate) ids: u64,
    /// The IDs and rate its filter was sized for, so that a filter rebuilt from the
    /// exact table after a crash is the one it replaces, whatever the namespace's
    /// configuration has become. Absent in records written before they were kept:
    /// the namespace's configuration then stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) capacity: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fp_rate: Option<f64>,
}

/// Written at a clean shutdown: the open generation's filter was snapshotted with
/// this many IDs, so start-up can load it instead of rescanning the exact table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CleanRecord {
    pub(crate) v: u32,
    pub(crate) generation: u64,
    pub(crate) ids: u64,
}

/// A generation that IDs were forgotten from (see [`forgets_key`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ForgetsRecord {
    pub(crate) v: u32,
    pub(crate) generation: u64,
}

/// The tracker clock's last reading that reached the store (the "heartbeat"),
/// written with marks at most about once a second, with every rotation, at start-up
/// and at shutdown.
///
/// Generation ages are counted in time a tracker was running, not in wall-clock
/// time across downtime: on start-up the open generation has been open for
/// `now - opened_at` as of this reading, and every ring is shifted onto the new
/// run's clock so that it keeps exactly that age (see `tracker::recovery`). A stale
/// reading (a crash loses the last second or so) only undercounts that age, which
/// seals later and so remembers longer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClockRecord {
    pub(crate) v: u32,
    /// Milliseconds, on the clock that wrote the rings' timestamps.
    pub(crate) now: u64,
}

impl ClockRecord {
    pub(crate) const fn at(now: Timestamp) -> Self {
        Self {
            v: RECORD_VERSION,
            now: now.as_millis(),
        }
    }
}

impl RingRecord {
    pub(crate) fn of(ring: &GenerationRing, exact_floor: GenerationId) -> Self {
        Self {
            v: RECORD_VERSION,
            exact_floor: exact_floor.0,
            generations: ring.iter().rev().map(GenerationRecord::of).collect(),
        }
    }
}

impl GenerationRecord {
    fn of(g: &Generation) -> Self {
        let sizing = g.filter().sizing();
        Self {
            id: g.id().0,
            opened_at: g.opened_at().as_millis(),
            sealed_at: g.sealed_at().map(Timestamp::as_millis),
            ids: g.ids(),
            capacity: Some(sizing.capacity),
            fp_rate: Some(sizing.fp_rate),
        }
    }
}

pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialise")
}

/// Decodes a record, checking its version.
pub(crate) fn decode<T: DeserializeOwned + Versioned>(
    key: &[u8],
    bytes: &[u8],
) -> Result<T, Error> {
    let record: T = serde_json::from_slice(bytes).map_err(|e| {
        Error::Corrupt(format!(
            "record {:?} does not decode: {e}",
            String::from_utf8_lossy(key)
        ))
    })?;
    if record.version() != RECORD_VERSION {
        return Err(Error::Corrupt(format!(
            "record {:?} has format version {}; this build reads version {RECORD_VERSION}",
            String::from_utf8_lossy(key),
            record.version()
        )));
    }
    Ok(record)
}

pub(crate) trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for NamespaceRecord {
    fn version(&self) -> u32 {
        self.v
    }
}

impl Versioned for RingRecord {
    fn version(&self) -> u32 {
        self.v
    }
}

impl Versioned for ClockRecord {
    fn version(&self) -> u32 {
        self.v
    }
}

impl Versioned for ForgetsRecord {
    fn version(&self) -> u32 {
        self.v
    }
}

impl Versioned for CleanRecord {
    fn version(&self) -> u32 {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_and_garbage_are_corrupt() {
        let rec = CleanRecord {
            v: 2,
            generation: 1,
            ids: 0,
        };
        let err = decode::<CleanRecord>(b"clean:x", &encode(&rec)).unwrap_err();
        assert!(err.to_string().contains("format version 2"), "{err}");
        let err = decode::<CleanRecord>(b"clean:x", b"{not json").unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)));
        let ok = CleanRecord { v: 1, ..rec };
        assert_eq!(
            decode::<CleanRecord>(b"k", &encode(&ok))
                .unwrap()
                .generation,
            1
        );
    }

    #[test]
    fn clock_records_round_trip() {
        let rec = ClockRecord::at(Timestamp::from_millis(1_700_000_000_123));
        let back = decode::<ClockRecord>(CLOCK_KEY, &encode(&rec)).unwrap();
        assert_eq!(back.now, 1_700_000_000_123);
        let err = decode::<ClockRecord>(CLOCK_KEY, br#"{"v":9,"now":1}"#).unwrap_err();
        assert!(
            err.to_string().contains("\"clock\""),
            "names the key: {err}"
        );
    }
}
