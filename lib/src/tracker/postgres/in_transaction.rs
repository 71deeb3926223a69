//! Oncely's operations inside a transaction the caller opened on its own
//! connection: [`InTransaction`], re-exported as [`crate::postgres::InTransaction`]
//! (whose module docs say how to use it). Each runs the same function over a
//! generic client as the pooled tracker's call of the same name.

use std::time::Duration;

use tokio_postgres::GenericClient;

use super::checkpoint;
use super::forget::{self, Forgot};
use super::mark::{self, Answer, Ask as MarkAsk, Distinct, Owners};
use super::ops::settled;
use super::ring::NsCache;
use super::single::{self, Applied, Caller, One};
use super::{Pg, lock_timed_out, owner_fp, retryable};
use crate::error::Error;
use crate::exact::OwnerFp;
use crate::id::{EventId, NamespaceName};
use crate::tracker::ClaimOutcome;
use crate::tracker::check_lease;
use crate::tracker::checkpoint::{validate_checkpoint, validate_conditional, validate_consumer};
use crate::tracker::decide::{Ask, Decision};
use crate::verdict::Verdict;

/// How many times an in-transaction call reads the ring again before it gives up.
const ATTEMPTS: usize = 4;

/// Oncely's operations inside a transaction you opened on your own connection to the
/// same database (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct InTransaction {
    pub(crate) pg: Pg,
}

impl InTransaction {
    /// [`Tracker::check_and_mark`](crate::Tracker::check_and_mark), inside `client`'s
    /// transaction, at any isolation level.
    ///
    /// # Errors
    ///
    /// As `check_and_mark`, and: [`Error::RetryTransaction`] when PostgreSQL could
    /// not serialise the transaction (at REPEATABLE READ or SERIALIZABLE, a
    /// snapshot taken before another node rotated the namespace, or marked one of
    /// the IDs); [`Error::Busy`] when another transaction held one of the IDs past
    /// the lock timeout, or the namespace's open generation is full until it
    /// rotates. After an error, roll the transaction back (and retry it).
    pub async fn check_and_mark<C: GenericClient + Sync, T: AsRef<[u8]>>(
        &self,
        client: &C,
        namespace: &str,
        ids: &[T],
        owner: Option<&str>,
    ) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        if let Some(o) = owner {
            OwnerFp::check(o)?;
        }
        let name = NamespaceName::new(namespace)?;
        let ask = MarkAsk {
            check: false,
            rotate: false,
            checkpoint: None,
        };
        self.marks(client, &name, &ids, owner, &ask).await
    }

    /// [`Tracker::check`](crate::Tracker::check), inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// As `check`.
    pub async fn check<C: GenericClient + Sync, T: AsRef<[u8]>>(
        &self,
        client: &C,
        namespace: &str,
        ids: &[T],
    ) -> Result<Vec<Verdict>, Error> {
        let ids = EventId::batch(ids)?;
        let name = NamespaceName::new(namespace)?;
        let ask = MarkAsk {
            check: true,
            rotate: false,
            checkpoint: None,
        };
        self.marks(client, &name, &ids, None, &ask).await
    }

    async fn marks<C: GenericClient + Sync>(
        &self,
        client: &C,
        name: &NamespaceName,
        ids: &[EventId<'_>],
        owner: Option<&str>,
        ask: &MarkAsk<'_>,
    ) -> Result<Vec<Verdict>, Error> {
        let distinct = Distinct::new(ids);
        let owners = owner.map_or(Owners::None, Owners::One);
        let ctx = self.pg.ctx();
        for _ in 0..ATTEMPTS {
            let mut ns = self.pg.namespace_in(client, name.as_str()).await?;
            if ns.ring().wants_filters() {
                ns = self.pg.load(client, &ctx, name).await?;
            }
            let ring = ns.ring();
            match mark::call(client, &ctx, &ns, &ring, &distinct.ids, owners, ask)
                .await
                .map_err(in_transaction)?
            {
                Answer::Decided(verdicts) => {
                    return Ok(distinct.spread(&verdicts, ask.check, owner.is_some()));
                }
                Answer::Stale => {
                    self.pg.load(client, &ctx, name).await?;
                }
                Answer::Unknown => return Err(Error::UnknownNamespace(name.to_string())),
                Answer::Full => return Err(single::full(&ns)),
                Answer::Due => unreachable!("asked without rotate"),
            }
        }
        Err(Error::RetryTransaction(format!(
            "namespace {name} kept changing under the call"
        )))
    }

    /// [`Tracker::claim`](crate::Tracker::claim), inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// As `claim`; [`Error::Conflict`] when another transaction raced for the same
    /// ID (roll back and retry); as [`check_and_mark`](Self::check_and_mark).
    pub async fn claim<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, Error> {
        check_lease(lease)?;
        OwnerFp::check(owner)?;
        let d = self
            .one(client, namespace, id.as_ref(), move |now, ns: &NsCache| {
                Ok(Ask::Claim {
                    owner: owner_fp(owner, ns.seed)?,
                    until: now.saturating_add(lease),
                    lease,
                })
            })
            .await?;
        match d {
            Decision::Claim(o) | Decision::PutClaim(o) => Ok(o),
            other => unreachable!("a claim decided {other:?}"),
        }
    }

    /// [`Tracker::complete`](crate::Tracker::complete), inside `client`'s
    /// transaction.
    ///
    /// # Errors
    ///
    /// As `complete`, and as [`check_and_mark`](Self::check_and_mark).
    pub async fn complete<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        OwnerFp::check(owner)?;
        settled(
            self.one(client, namespace, id.as_ref(), move |_, ns: &NsCache| {
                Ok(Ask::Complete(owner_fp(owner, ns.seed)?))
            })
            .await?,
        )
    }

    /// [`Tracker::release`](crate::Tracker::release), inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// As `release`, and as [`check_and_mark`](Self::check_and_mark).
    pub async fn release<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: impl AsRef<[u8]>,
        owner: &str,
    ) -> Result<(), Error> {
        OwnerFp::check(owner)?;
        settled(
            self.one(client, namespace, id.as_ref(), move |_, ns: &NsCache| {
                Ok(Ask::Release(owner_fp(owner, ns.seed)?))
            })
            .await?,
        )
    }

    async fn one<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        id: &[u8],
        ask: impl Fn(crate::clock::Timestamp, &NsCache) -> Result<Ask, Error>,
    ) -> Result<Decision, Error> {
        let id = EventId::one(id)?.as_bytes();
        let name = NamespaceName::new(namespace)?;
        let ctx = self.pg.ctx();
        for _ in 0..ATTEMPTS {
            let ns = self.pg.namespace_in(client, name.as_str()).await?;
            let one = single::decide_one(client, &ctx, &self.pg, &ns, id, &ask, Caller::Theirs)
                .await
                .map_err(in_transaction)?;
            match one {
                One::RotateFirst(_) => unreachable!("never asked to rotate"),
                One::Stale => {
                    self.pg.load(client, &ctx, &name).await?;
                }
                One::Decided(d) if !d.writes() => return Ok(d.decision),
                One::Decided(d) => {
                    return match single::apply(client, &ctx, &ns, id, &d)
                        .await
                        .map_err(in_transaction)?
                    {
                        Applied::Written => Ok(d.decision),
                        Applied::Raced => Err(Error::Conflict(
                            "another transaction took this ID meanwhile; roll back and retry"
                                .into(),
                        )),
                    };
                }
            }
        }
        Err(Error::RetryTransaction(format!(
            "namespace {name} kept changing under the call"
        )))
    }

    /// [`Tracker::forget`](crate::Tracker::forget), inside `client`'s transaction,
    /// at any isolation level: the marks are deleted when the transaction commits,
    /// and stay if it rolls back. The rows of the IDs, and of the generations they
    /// were forgotten from, stay locked until it ends. One answer per ID, in order:
    /// `true` where an exact mark was deleted; `false` where nothing exact
    /// remembered it, where a live claim holds it (left alone), and for a repeat.
    ///
    /// # Errors
    ///
    /// Invalid IDs, unknown namespace; [`Error::RetryTransaction`] when PostgreSQL
    /// could not serialise the transaction (at REPEATABLE READ or SERIALIZABLE, a
    /// snapshot taken before another node rotated the namespace, or changed one of
    /// these IDs or a generation they are in); [`Error::Busy`] when a lock wait
    /// timed out; database errors. After an error, roll the transaction back (and
    /// retry it).
    pub async fn forget<C: GenericClient + Sync, T: AsRef<[u8]>>(
        &self,
        client: &C,
        namespace: &str,
        ids: &[T],
    ) -> Result<Vec<bool>, Error> {
        let ids = EventId::batch(ids)?;
        let name = NamespaceName::new(namespace)?;
        let distinct = Distinct::new(&ids);
        let ctx = self.pg.ctx();
        for _ in 0..ATTEMPTS {
            let ns = self.pg.namespace_in(client, name.as_str()).await?;
            if distinct.ids.is_empty() {
                return Ok(Vec::new());
            }
            match forget::forget_ids(client, &ctx, &self.pg, &ns, &distinct.ids, Caller::Theirs)
                .await
                .map_err(in_transaction)?
            {
                Forgot::RotateFirst(_) => unreachable!("never asked to rotate"),
                Forgot::Stale => {
                    self.pg.load(client, &ctx, &name).await?;
                }
                Forgot::Done { forgotten, .. } => {
                    return Ok(distinct.spread_forgotten(&forgotten));
                }
            }
        }
        Err(Error::RetryTransaction(format!(
            "namespace {name} kept changing under the call"
        )))
    }

    /// Stores a consumer's position inside `client`'s transaction.
    ///
    /// # Errors
    ///
    /// Invalid consumer or position, unknown namespace, database errors.
    pub async fn set_checkpoint<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        consumer: &str,
        position: &str,
    ) -> Result<(), Error> {
        validate_checkpoint(consumer, position)?;
        let ns = self.pg.namespace_in(client, namespace).await?;
        checkpoint::put(client, &self.pg.ctx(), ns.id, consumer, position)
            .await
            .map_err(in_transaction)
    }

    /// Stores a consumer's position inside `client`'s transaction if the stored one
    /// is `expected` (`None`: if none is stored yet), as
    /// [`Tracker::set_checkpoint_if`](crate::Tracker::set_checkpoint_if) does. The
    /// row stays locked until the transaction ends, so no other writer moves the
    /// checkpoint before it commits or rolls back.
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointConflict`] with the stored position (roll back: this
    /// instance is behind), invalid consumer or positions, unknown namespace,
    /// [`Error::RetryTransaction`] at REPEATABLE READ or SERIALIZABLE when another
    /// transaction wrote the checkpoint after this one's snapshot, database errors.
    pub async fn set_checkpoint_if<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        consumer: &str,
        expected: Option<&str>,
        position: &str,
    ) -> Result<(), Error> {
        validate_conditional(consumer, expected, position)?;
        let ns = self.pg.namespace_in(client, namespace).await?;
        checkpoint::put_if(client, &self.pg.ctx(), ns.id, consumer, expected, position)
            .await
            .map_err(in_transaction)
    }

    /// A consumer's stored position, as `client`'s transaction sees it.
    ///
    /// # Errors
    ///
    /// Invalid consumer, unknown namespace, database errors.
    pub async fn checkpoint<C: GenericClient + Sync>(
        &self,
        client: &C,
        namespace: &str,
        consumer: &str,
    ) -> Result<Option<String>, Error> {
        validate_consumer(consumer)?;
        let ns = self.pg.namespace_in(client, namespace).await?;
        checkpoint::get(client, &self.pg.ctx(), ns.id, consumer).await
    }
}

/// A database error met inside the caller's transaction, said the way the caller
/// must act on it: their transaction is aborted either way.
fn in_transaction(e: Error) -> Error {
    if retryable(&e) {
        return Error::RetryTransaction(format!(
            "{e} (at REPEATABLE READ or SERIALIZABLE, the transaction's snapshot predates \
             another node's change of the namespace or of one of these IDs)"
        ));
    }
    if lock_timed_out(&e) {
        return Error::Busy(format!(
            "another transaction held one of these IDs, or the namespace, past the lock \
             timeout ({e}); roll back and retry"
        ));
    }
    e
}
