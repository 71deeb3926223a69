//! Oncely on PostgreSQL: many nodes as one authority, and marks inside the caller's
//! own transaction.
//!
//! # When to choose it
//!
//! The embedded store (RocksDB) is one process on one disk: the fastest, and the
//! simplest to run. Choose PostgreSQL when
//!
//! * **your read model lives in PostgreSQL**: [`InTransaction`] marks events inside
//!   the transaction that updates it, so the update and the mark commit together or
//!   not at all (the exactly-once recipe: process, then mark, in one transaction);
//! * **the authority must outlive a node**: any number of trackers and daemons share
//!   one database; among all of them exactly one caller gets `new` per ID. High
//!   availability comes from PostgreSQL's own replication and failover.
//!
//! ```no_run
//! use oncely::postgres::PgOptions;
//! use oncely::{Tracker, Verdict};
//!
//! let tracker = Tracker::builder()
//!     .postgres(PgOptions::new("postgres://oncely@db1:5432,db2:5432/app?target_session_attrs=read-write"))
//!     .open()?;
//! assert_eq!(tracker.check_and_mark("default", &["order-1"], None)?, [Verdict::New]);
//! # Ok::<(), oncely::Error>(())
//! ```
//!
//! # Marks inside your transaction
//!
//! ```no_run
//! # async fn credit(client: &mut tokio_postgres::Client, marks: &oncely::postgres::InTransaction)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! let tx = client.transaction().await?;
//! let verdicts = marks.check_and_mark(&tx, "payments", &["payment-42"], None).await?;
//! if verdicts[0].is_new() {
//!     tx.execute("UPDATE balances SET amount = amount + 5 WHERE account = 'alice'", &[]).await?;
//! }
//! marks.set_checkpoint(&tx, "payments", "ledger", "offset-1042").await?;
//! tx.commit().await?; // both, or (rollback, a crash) neither
//! # Ok(()) }
//! ```
//!
//! Get the handle with [`Tracker::in_transaction`](crate::Tracker::in_transaction):
//! it shares the tracker's cache of sealed filters. A rollback forgets the marks with
//! everything else; on an error, roll back.
//!
//! **At every isolation level.** A mark is decided inside the database by one
//! function, under the namespace's shared lock. At READ COMMITTED its statements see
//! the ring as it is once the lock is held. At REPEATABLE READ and SERIALIZABLE your
//! transaction's snapshot may predate another node's rotation of the namespace; the
//! function then locks the namespace's row in share mode, which PostgreSQL refuses
//! for a row changed since the snapshot: the call fails with
//! [`Error::RetryTransaction`](crate::Error::RetryTransaction) (SQLSTATE 40001 underneath) rather than mark into a
//! generation that was sealed meanwhile, where another node would mark the same ID
//! `new` again. Roll back and run the whole transaction again, as with any
//! serialisation failure. The same holds for an ID another transaction marked after
//! your snapshot was taken.
//!
//! **Keep these transactions short.** From your first mark until you commit, your
//! transaction holds the namespace's shared lock, which the namespace's rotation
//! waits for. It waits a moment only, then leaves the rotation for later (counted in
//! [`Tracker::rotations_deferred`](crate::Tracker::rotations_deferred)); meanwhile a
//! namespace whose open generation is full takes no more IDs: marks wait about a
//! second for the rotation, then fail with [`Error::Busy`](crate::Error::Busy) (the daemon answers 503
//! `busy`). Other namespaces are never held up: each generation is a table of its
//! own, so nothing your transaction holds is shared with them. Marks made this way
//! never seal a generation themselves (that needs the exclusive lock, which your
//! transaction would hold up): the tracker's [`tick`](crate::Tracker::tick) does, as
//! the daemon does every second. Every lock wait of Oncely's statements ends after
//! 2 s (`lock_timeout`): a mark of an ID that another open transaction marked fails
//! with [`Error::Busy`](crate::Error::Busy) rather than wait for it without end.
//!
//! # From other languages: one SQL call
//!
//! The schema comes with the same decision as SQL functions, so a consumer in any
//! language marks inside its own transaction with one call:
//!
//! <!-- sql-recipe -->
//! ```sql
//! BEGIN;  -- at any isolation level
//! SELECT id, verdict FROM oncely.check_and_mark('payments', ARRAY['payment-42']);
//! -- for the IDs whose verdict is 'new', process the event here, in this transaction:
//! UPDATE balances SET amount = amount + 5 WHERE account = 'alice';
//! COMMIT;  -- the mark and the update, or (rollback, a crash) neither
//! ```
//!
//! * `oncely.check_and_mark(namespace text, ids text[], owner text DEFAULT NULL)`
//!   answers one row per ID, in order: `id`, `verdict` (`new`: process it;
//!   `duplicate`: skip it; `in_progress`: another owner's live claim, until
//!   `until_ms`), `replayed` (a `new` the same owner token got before: its first
//!   answer was lost), `until_ms`. `oncely.check_and_mark_bytes(namespace text, ids
//!   bytea[], owner text DEFAULT NULL)` takes raw bytes (a name of its own: drivers
//!   that send parameters untyped would make an overload ambiguous);
//!   `oncely.check(namespace, ids)` and `oncely.check_bytes` answer without marking;
//!   `oncely.set_checkpoint(namespace, consumer, position)` and
//!   `oncely.checkpoint(namespace, consumer)` keep a consumer's position in the same
//!   transaction. `oncely.forget(namespace text, ids text[])` (and
//!   `oncely.forget_bytes` for `bytea[]`) forgets IDs, as
//!   [`Tracker::forget`](crate::Tracker::forget) does, when the transaction
//!   commits: one row per ID, in order, `id` and `forgotten` (`true` where it
//!   deleted an exact mark; `false` where nothing exact remembered the ID, where a
//!   live claim holds it, and for a repeat). (Claims are the library's and the
//!   daemon's only.)
//! * The function sorts the IDs and takes its row locks in that order, so batches
//!   in any order from any number of transactions wait for one another and never
//!   deadlock; it takes the namespace's lock and, at REPEATABLE READ and
//!   SERIALIZABLE, refuses a stale snapshot with SQLSTATE 40001 (retry the
//!   transaction), as above. Its lock waits end after 2 s (SQLSTATE 55P03). Bad
//!   input is refused with SQLSTATE 22023 and a message naming the ID; an unknown
//!   namespace with 42704; a namespace whose open generation is full until it
//!   rotates with `OC001` (retry shortly: a running tracker or daemon rotates it
//!   within a second). Owner tokens are fingerprinted as the library does (SHA-256
//!   with the namespace's secret seed), so a retry may go through either.
//! * **Where it answers otherwise than the library:** it cannot read Bloom filters.
//!   It looks every ID up in every sealed generation that keeps its exact table,
//!   exactly as the library does; but for a generation past the exact horizon,
//!   where the library answers `probable_duplicate` from the filter, it answers
//!   `new`, and the event would be processed again. **For SQL callers, keep every
//!   generation exact**: `exact_generations` equal to `generations` (as the
//!   benchmarks' namespaces are). Then every answer is exact, the library's and the
//!   SQL's alike, for the whole window.
//!
//! Everything lives in one schema (`oncely` by default; see `schema` for the
//! tables): a table per generation, `marks_<namespace id>_<generation>`, dropped
//! whole once the generation leaves the exact horizon.
//!
//! # The store URL, and failover
//!
//! A libpq-style URL; what each parameter does here (tokio-postgres reads the URL,
//! and Oncely bounds what it does not):
//!
//! * **Several hosts** (`host1:port1,host2:port2`): a new connection tries them in
//!   turn, starting from the one that answered last, so that after a failover new
//!   connections do not wait on the old primary first.
//! * **`target_session_attrs=read-write`**: each host is asked `SHOW
//!   transaction_read_only` and passed over when it is a standby.
//! * **`connect_timeout`** (seconds; 2 when absent) bounds each host's whole
//!   handshake: TCP connect, start-up, authentication and the check above, as in
//!   libpq. (tokio-postgres's own bounds the TCP connect only: a frozen server, whose
//!   kernel still accepts the connection, would hold the handshake forever.)
//! * **`keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_retries`**
//!   (TCP keepalives; defaults here: on, 5 s, 2 s, 3) and **`tcp_user_timeout`**
//!   (milliseconds of unacknowledged data before the kernel gives up; default here
//!   10 s): they find a connection to a machine that vanished. A frozen server's
//!   kernel still answers both, so they cannot find that one: the call deadline does.
//! * **`options`** is sent as given, followed by Oncely's session settings:
//!   `lock_timeout` (2 s), `statement_timeout` (the call timeout) and
//!   `default_transaction_isolation = read committed`.
//! * `load_balance_hosts`, `hostaddr`, `sslmode` and the rest: as tokio-postgres
//!   reads them (no TLS is compiled in: `sslmode=require` cannot connect).
//!
//! Beyond the URL, [`PgOptions::call_timeout`] (4 s) bounds each call as a whole:
//! getting a connection, its statements and its commit. A call past it fails, its
//! connection leaves the pool, the pool's idle connections opened before it are
//! closed too (they may lead to the same frozen server), and its statement is
//! cancelled on the server (a commit waiting for a lost synchronous standby then
//! returns, committed locally). The outcome of a call that was committing is
//! unknown: retry with the same owner token.
//!
//! # Time and durability
//!
//! Generation ages and leases use the database's clock, so nodes with skewed clocks
//! agree; a step of the database server's own clock moves them (the embedded store
//! counts running time instead). A mark is acknowledged once its statement (or
//! transaction) commits, as durable as the server's `synchronous_commit` makes it
//! (with a synchronous standby, it survives the primary's loss). A connection lost
//! during the commit leaves the outcome unknown: the call fails, and a retry by the
//! same owner gets `new`, replayed, if the commit had landed.

pub use crate::tracker::postgres::{InTransaction, PgOptions};
