//! Checkpoints on PostgreSQL: a row per consumer in `checkpoints`, written by the
//! tracker's own transactions and, through the same functions, inside a caller's
//! ([`InTransaction`](crate::postgres::InTransaction)).
//!
//! A write with a precondition locks the row (`FOR UPDATE`), decides
//! ([`precondition`]) and writes in the same transaction. Every other write of the
//! row (`INSERT ... ON CONFLICT DO UPDATE`, here and in `mark_ids`) takes the same
//! row lock, so none lands between the read and the write. When no row exists yet
//! there is nothing to lock: the insert then meets a row another transaction
//! inserted meanwhile (`ON CONFLICT DO NOTHING` inserts nothing), and the row is
//! read, locked, and decided again.

use tokio_postgres::GenericClient;

use super::{Ctx, Pg, client, lock_timed_out};
use crate::error::Error;
use crate::tracker::checkpoint::{Write, precondition};

impl Pg {
    pub(crate) fn set_checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
        position: &str,
    ) -> Result<(), Error> {
        let ns = self.namespace(namespace)?;
        self.block_on(self.session(self.deadline(), async |conn| {
            put(client(conn), &self.ctx(), ns.id, consumer, position).await
        }))
    }

    pub(crate) fn set_checkpoint_if(
        &self,
        namespace: &str,
        consumer: &str,
        expected: Option<&str>,
        position: &str,
    ) -> Result<(), Error> {
        let ns = self.namespace(namespace)?;
        self.block_on(self.session(self.deadline(), async |conn| {
            let tx = conn.transaction().await?;
            put_if(&*tx, &self.ctx(), ns.id, consumer, expected, position)
                .await
                .map_err(|e| {
                    if lock_timed_out(&e) {
                        Error::Busy(format!(
                            "another transaction held consumer {consumer:?}'s checkpoint past \
                             the lock timeout ({e}); nothing changed, retry shortly"
                        ))
                    } else {
                        e
                    }
                })?;
            tx.commit().await?;
            Ok(())
        }))
    }

    pub(crate) fn checkpoint(
        &self,
        namespace: &str,
        consumer: &str,
    ) -> Result<Option<String>, Error> {
        let ns = self.namespace(namespace)?;
        self.block_on_read(self.session(self.deadline(), async |conn| {
            get(client(conn), &self.ctx(), ns.id, consumer).await
        }))
    }
}

/// Stores a consumer's position, whatever was stored.
pub(crate) async fn put<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    consumer: &str,
    position: &str,
) -> Result<(), Error> {
    client
        .execute(
            &format!(
                "INSERT INTO {}.checkpoints (ns, consumer, position) VALUES ($1, $2, $3)
                 ON CONFLICT (ns, consumer) DO UPDATE SET position = excluded.position",
                ctx.schema
            ),
            &[&ns, &consumer, &position],
        )
        .await?;
    Ok(())
}

/// Stores a consumer's position if the stored one is `expected`, inside `client`'s
/// transaction (its row lock is held until that transaction ends).
///
/// At REPEATABLE READ or SERIALIZABLE a row that another transaction wrote after
/// the snapshot cannot be locked or inserted over: PostgreSQL refuses with a
/// serialisation failure, never a decision on a stale position.
pub(crate) async fn put_if<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    consumer: &str,
    expected: Option<&str>,
    position: &str,
) -> Result<(), Error> {
    let schema = ctx.schema;
    // Twice at most: a first round that found no row may lose the insert to
    // another transaction's; the second finds that row, and locks it.
    for _ in 0..2 {
        let stored: Option<String> = client
            .query_opt(
                &format!(
                    "SELECT position FROM {schema}.checkpoints
                      WHERE ns = $1 AND consumer = $2 FOR UPDATE"
                ),
                &[&ns, &consumer],
            )
            .await?
            .map(|r| r.get(0));
        if precondition(consumer, stored.as_deref(), expected, position)? == Write::AlreadyThere {
            return Ok(());
        }
        if stored.is_some() {
            client
                .execute(
                    &format!(
                        "UPDATE {schema}.checkpoints SET position = $3
                          WHERE ns = $1 AND consumer = $2"
                    ),
                    &[&ns, &consumer, &position],
                )
                .await?;
            return Ok(());
        }
        let inserted = client
            .execute(
                &format!(
                    "INSERT INTO {schema}.checkpoints (ns, consumer, position) VALUES ($1, $2, $3)
                     ON CONFLICT (ns, consumer) DO NOTHING"
                ),
                &[&ns, &consumer, &position],
            )
            .await?;
        if inserted == 1 {
            return Ok(());
        }
    }
    Err(Error::Busy(format!(
        "consumer {consumer:?}'s checkpoint was written and removed meanwhile; retry"
    )))
}

/// A consumer's stored position.
pub(crate) async fn get<C: GenericClient + Sync>(
    client: &C,
    ctx: &Ctx<'_>,
    ns: i32,
    consumer: &str,
) -> Result<Option<String>, Error> {
    Ok(client
        .query_opt(
            &format!(
                "SELECT position FROM {}.checkpoints WHERE ns = $1 AND consumer = $2",
                ctx.schema
            ),
            &[&ns, &consumer],
        )
        .await?
        .map(|r| r.get(0)))
}
