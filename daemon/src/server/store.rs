//! The store as the daemon last saw it: which server a PostgreSQL store is on, and
//! the round trip to it.
//!
//! The ticker probes the store once a tick ([`StoreWatch::probe`]); the metrics
//! read the last probe, and a change of server (a failover to another host of the
//! URL) is logged, as is the first one at start-up. A probe that fails is recorded
//! by the tracker as a storage failure, so `/readyz` turns unready with it; a probe
//! that reaches a standby fails too (it takes no writes).

use std::sync::Mutex;
use std::time::Duration;

use oncely::{StoreProbe, Tracker};

/// The last probe's findings.
#[derive(Debug, Default)]
pub(crate) struct StoreWatch {
    last: Mutex<Seen>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// `rocksdb`, `memory` or `postgres`; empty before the first probe.
    pub(crate) kind: &'static str,
    /// The server a remote store was last found on.
    pub(crate) host: Option<String>,
    /// The last successful probe's round trip; `None` after a failed one, and for
    /// the embedded store.
    pub(crate) round_trip: Option<Duration>,
}

impl StoreWatch {
    /// Probes the store (a round trip to a remote one: call it where blocking is
    /// allowed), logs a change of server, and keeps what it saw.
    pub(crate) fn probe(&self, tracker: &Tracker) {
        let probed = tracker.probe_store();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match probed {
            Ok(probe) => {
                log_change(&last, &probe);
                *last = Seen {
                    kind: probe.kind,
                    host: probe.host.or_else(|| last.host.take()),
                    round_trip: probe.round_trip,
                };
            }
            Err(e) => {
                // The tracker records the failure (readiness, the failure log, the
                // metrics); the last known server stays, without a round trip.
                tracing::debug!(error = %e, "the store probe failed");
                last.round_trip = None;
            }
        }
    }

    /// What the last probe saw.
    pub(crate) fn seen(&self) -> Seen {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn log_change(last: &Seen, probe: &StoreProbe) {
    let Some(host) = &probe.host else { return };
    match &last.host {
        None => tracing::info!(store = probe.kind, host = %host, "store reached"),
        Some(before) if before != host => tracing::warn!(
            store = probe.kind,
            host = %host,
            before = %before,
            "the store is now served by another host (a failover?)"
        ),
        Some(_) => {}
    }
}
