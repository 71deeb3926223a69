//! Where and how to reach PostgreSQL: [`PgOptions`], re-exported as
//! [`crate::postgres::PgOptions`].

use std::time::Duration;

use super::{DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT};

/// Where and how to reach PostgreSQL. A consuming builder.
#[derive(Clone, Debug)]
#[must_use]
pub struct PgOptions {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
}

impl PgOptions {
    /// A libpq-style URL: `postgres://user:password@host:port/db`, with several hosts
    /// and `target_session_attrs=read-write` for failover (see the module docs for
    /// what each URL parameter does). Defaults: schema `oncely`, 16 pooled
    /// connections, 4 s to get one, 4 s for a whole call.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "oncely".to_owned(),
            pool_size: 16,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// The schema Oncely's tables live in (1 to 48 of `a-z 0-9 _`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections this tracker holds.
    pub const fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// How long a call waits to get (or open) a connection before it fails (at
    /// most its whole [`call_timeout`](Self::call_timeout)). Opening one tries the
    /// URL's hosts in turn, each for at most the URL's `connect_timeout` (2 s when
    /// it gives none).
    pub const fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long one call may take, all told: getting a connection, its statements,
    /// its commit, and its retries. Past it the call fails, its connection leaves
    /// the pool and its statement is cancelled on the server; a call that was
    /// committing may or may not have committed (a retry with the same owner
    /// token tells). Also the pooled connections' `statement_timeout`.
    pub const fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }
}
