//! What a namespace reports about itself.

use crate::config::NamespaceConfig;
use crate::filter::FilterStats;

/// Configuration and live statistics of a namespace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NamespaceInfo {
    /// The namespace's name.
    pub name: String,
    /// Its configuration.
    pub config: NamespaceConfig,
    /// Live generations, newest first.
    pub generations: Vec<GenerationInfo>,
    /// The chance that an unseen ID is answered `probable_duplicate` now: the
    /// combined estimated rate of the Bloom-only generations. (Generations with
    /// exact tables never produce false positives.)
    pub estimated_fp: f64,
    /// Bytes of filter memory across generations.
    pub memory_bytes: u64,
    /// Claims held, live or expired but not yet forgotten.
    pub claims: u64,
    /// What the namespace is charged against the filter budget: the most filter
    /// memory it can hold over its life under its configuration (see
    /// [`FilterBudget`](crate::FilterBudget)).
    pub charged_bytes: u64,
}

/// Statistics of one generation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationInfo {
    /// Sequence number.
    pub id: u64,
    /// When it opened (ms since the epoch, on the tracker's clock). Ages count the
    /// time a tracker had the store open: after a restart, downtime and clock steps
    /// between runs are cut out, so `now - opened_at` of the open generation is its
    /// age in running time.
    pub opened_at: u64,
    /// When it sealed (on the same footing as `opened_at`); `None` while open.
    pub sealed_at: Option<u64>,
    /// New IDs marked into it.
    pub ids: u64,
    /// The IDs its filter was sized for (a generation never holds more).
    pub capacity: u64,
    /// Whether it still has its exact table.
    pub exact: bool,
    /// Its filter's statistics.
    pub filter: FilterStats,
    /// Its filter's memory in bytes.
    pub memory_bytes: u64,
}
