//! Opening a tracker: durability modes and the consuming builder.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::budget::Limits;
use super::local::Local;
use super::{Backend, Tracker};
use crate::clock::{Clock, SystemClock};
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::store::{MemoryStore, RocksOptions, RocksStore, Store};

/// When a mark counts as acknowledged.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// In RocksDB's write-ahead log, written to the OS: survives kill -9 of the
    /// process.
    #[default]
    Flush,
    /// The write-ahead log is fsynced (concurrent callers share one fsync): survives
    /// power loss.
    Sync,
    /// In memory only: survives nothing. For tests and ephemeral use.
    Memory,
}

impl Durability {
    /// The mode's name: `flush`, `sync` or `memory`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Flush => "flush",
            Self::Sync => "sync",
            Self::Memory => "memory",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Durability {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "flush" => Ok(Self::Flush),
            "sync" => Ok(Self::Sync),
            "memory" => Ok(Self::Memory),
            other => Err(Error::InvalidConfig {
                field: "durability",
                reason: format!("{other:?} is not one of flush, sync, memory"),
            }),
        }
    }
}

/// Opens a [`Tracker`]. A consuming builder: [`open`](Self::open) validates.
#[must_use]
pub struct TrackerBuilder {
    path: Option<PathBuf>,
    durability: Durability,
    clock: Arc<dyn Clock>,
    default_config: NamespaceConfig,
    rocks: RocksOptions,
    store: Option<Box<dyn Store>>,
    limits: Limits,
    /// Whether `clock` was given: on PostgreSQL, decisions then read it instead of
    /// the database's clock (tests drive time by hand).
    clock_given: bool,
    #[cfg(feature = "postgres")]
    postgres: Option<super::postgres::PgOptions>,
}

impl fmt::Debug for TrackerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerBuilder")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl TrackerBuilder {
    /// The data directory (required for `flush` and `sync`).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The durability mode (default `flush`).
    pub const fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The clock (default: the system clock). Tests pass a [`crate::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.clock_given = true;
        self
    }

    /// Keeps the tracker's state in PostgreSQL instead of RocksDB (see
    /// [`crate::postgres`]): any number of trackers sharing the database are one
    /// authority. Exclusive with [`path`](Self::path) and [`store`](Self::store).
    /// Time is the database's clock unless a [`clock`](Self::clock) is given.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, options: super::postgres::PgOptions) -> Self {
        self.postgres = Some(options);
        self
    }

    /// The configuration of the `default` namespace when it is first created.
    pub fn default_config(mut self, config: NamespaceConfig) -> Self {
        self.default_config = config;
        self
    }

    /// RocksDB's memory budgets.
    pub const fn rocks_options(mut self, options: RocksOptions) -> Self {
        self.rocks = options;
        self
    }

    /// The most filter memory all namespaces together may be charged, in bytes
    /// (default: unbounded). A namespace is charged the most its filters can take
    /// over its life under its configuration (see [`crate::FilterBudget`]); a creation or
    /// reconfiguration that would exceed the budget is refused with
    /// [`Error::OverBudget`], changing nothing.
    pub const fn max_filter_bytes(mut self, bytes: u64) -> Self {
        self.limits.max_filter_bytes = Some(bytes);
        self
    }

    /// The most namespaces, `default` included (default: unbounded); one more is
    /// refused with [`Error::TooManyNamespaces`].
    pub const fn max_namespaces(mut self, n: u32) -> Self {
        self.limits.max_namespaces = Some(n);
        self
    }

    /// A custom storage backend instead of RocksDB or memory (a distributed backend,
    /// or a fault-injecting wrapper in tests). `durability` still decides whether
    /// writes are synced.
    pub fn store(mut self, store: Box<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens the tracker, recovering whatever the store holds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a missing or superfluous path, storage errors,
    /// and [`Error::Corrupt`] or [`Error::Snapshot`] naming what is damaged. A damaged
    /// store is never opened as empty.
    pub fn open(self) -> Result<Tracker, Error> {
        #[cfg(feature = "postgres")]
        if let Some(options) = &self.postgres {
            if self.path.is_some() || self.store.is_some() {
                return Err(Error::InvalidConfig {
                    field: "store",
                    reason: "give PostgreSQL, a path or a custom store: only one".into(),
                });
            }
            let clock = self.clock_given.then(|| Arc::clone(&self.clock));
            let pg = super::postgres::Pg::open(
                options,
                self.durability,
                clock,
                self.clock,
                self.default_config,
                self.limits,
            )?;
            return Ok(Tracker {
                backend: Backend::Postgres(pg),
            });
        }
        let store: Box<dyn Store> = match (self.store, self.durability, self.path) {
            (Some(store), _, None) => store,
            (Some(_), _, Some(_)) => {
                return Err(Error::InvalidConfig {
                    field: "path",
                    reason: "give either a path or a custom store, not both".into(),
                });
            }
            (None, Durability::Memory, None) => Box::new(MemoryStore::new()),
            (None, Durability::Memory, Some(path)) => {
                return Err(Error::InvalidConfig {
                    field: "path",
                    reason: format!(
                        "durability memory keeps nothing on disk, but a path was given ({})",
                        path.display()
                    ),
                });
            }
            (None, _, Some(path)) => Box::new(RocksStore::open(path, self.rocks)?),
            (None, d, None) => {
                return Err(Error::InvalidConfig {
                    field: "path",
                    reason: format!("durability {d} needs a data directory"),
                });
            }
        };
        let local = Local::recover(
            store,
            self.durability,
            self.clock,
            self.default_config,
            self.limits,
        )?;
        Ok(Tracker {
            backend: Backend::Local(local),
        })
    }
}

impl Tracker {
    /// A builder with the defaults: durability `flush`, the system clock, the default
    /// namespace configuration.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder {
            path: None,
            durability: Durability::default(),
            clock: Arc::new(SystemClock::new()),
            default_config: NamespaceConfig::default(),
            rocks: RocksOptions::default(),
            store: None,
            limits: Limits::default(),
            clock_given: false,
            #[cfg(feature = "postgres")]
            postgres: None,
        }
    }
}
