//! Administration on PostgreSQL: namespaces created, reconfigured and deleted under
//! the namespace's exclusive lock, described from the database.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Pg;
use super::ring::{NsCache, Ring, RowRead, ring_row};
use super::schema::{create_table, limits};
use super::single::lock;
use crate::config::NamespaceConfig;
use crate::error::Error;
use crate::filter::FilterStats;
use crate::hash::HashSeed;
use crate::id::NamespaceName;
use crate::tracker::budget::{self, FilterBudget};
use crate::tracker::{Configured, DropPolicy, GenerationInfo, NamespaceInfo, StorageFailure};

impl Pg {
    pub(crate) fn namespaces(&self) -> Vec<String> {
        let listed = self.block_on_read(self.session(self.deadline(), async |conn| {
            let rows = conn
                .query(
                    &format!(
                        "SELECT name FROM {}.namespaces ORDER BY name",
                        self.inner.schema
                    ),
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>())
        }));
        listed.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list namespaces");
            Vec::new()
        })
    }

    pub(crate) fn namespace_info(&self, namespace: &str) -> Result<NamespaceInfo, Error> {
        let ns = self.namespace(namespace)?;
        let (ring, open_ids, claims) =
            self.block_on_read(self.session(self.deadline(), async |conn| {
                let ctx = self.ctx();
                let tx = conn.transaction().await?;
                lock(&*tx, &ctx, ns.id, false).await?;
                let row = ring_row(&*tx, &ctx, &ns, RowRead::Current).await?;
                let ring = self.load(&*tx, &ctx, &ns.name).await?.ring();
                let claims: i64 = tx
                    .query_one(
                        &format!("SELECT count(*) FROM {}.claims WHERE ns = $1", ctx.schema),
                        &[&ns.id],
                    )
                    .await?
                    .get(0);
                tx.commit().await?;
                Ok((ring, row.open_ids, claims))
            }))?;
        let mut generations = vec![GenerationInfo {
            id: ring.open as u64,
            opened_at: ring.open_opened_at as u64,
            sealed_at: None,
            ids: open_ids as u64,
            capacity: ring.config.generation_capacity(),
            exact: true,
            // The open generation has no filter on PostgreSQL: its unique index
            // decides.
            filter: FilterStats::default(),
            memory_bytes: 0,
        }];
        for g in ring.sealed.iter().rev() {
            generations.push(GenerationInfo {
                id: g.generation as u64,
                opened_at: g.opened_at as u64,
                sealed_at: Some(g.sealed_at as u64),
                ids: g.ids as u64,
                capacity: g
                    .filter
                    .as_ref()
                    .map_or(g.ids as u64, |f| f.sizing().capacity),
                exact: g.generation >= ring.floor,
                filter: g.filter.as_ref().map(|f| f.stats()).unwrap_or_default(),
                memory_bytes: g.filter.as_ref().map_or(0, |f| f.sizing().memory_bytes()),
            });
        }
        let miss_all = generations
            .iter()
            .filter(|g| !g.exact)
            .fold(1.0, |acc, g| acc * (1.0 - g.filter.estimated_fp));
        Ok(NamespaceInfo {
            name: ns.name.to_string(),
            config: ring.config.clone(),
            estimated_fp: 1.0 - miss_all,
            memory_bytes: generations.iter().map(|g| g.memory_bytes).sum(),
            claims: claims as u64,
            charged_bytes: budget::footprint(&ring.config, &live_sizes(&ring)),
            generations,
        })
    }

    pub(crate) fn configure_namespace(
        &self,
        namespace: &str,
        config: NamespaceConfig,
    ) -> Result<Configured, Error> {
        self.configure_namespace_with(namespace, config, DropPolicy::Refuse)
    }

    // By value, as the tracker's API takes it (the embedded engine keeps it).
    #[allow(clippy::needless_pass_by_value)]
    pub(crate) fn configure_namespace_with(
        &self,
        namespace: &str,
        config: NamespaceConfig,
        policy: DropPolicy,
    ) -> Result<Configured, Error> {
        let name = NamespaceName::new(namespace)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let others = self.charged_to_others(namespace);
        if let Ok(ns) = self.namespace(namespace) {
            self.block_on(self.reconfigure(&ns, &config, policy, others))?;
            return Ok(Configured::Updated);
        }
        if let Some(max) = self.inner.limits.max_namespaces
            && self.namespaces().len() >= max as usize
        {
            return Err(Error::TooManyNamespaces { max });
        }
        budget::check(self.inner.limits, budget::footprint(&config, &[]), others)?;
        let created = self.block_on(self.create(&name, &config))?;
        if created {
            tracing::info!(namespace = %name, "namespace created");
            Ok(Configured::Created)
        } else {
            // Another node created it meanwhile: this is a reconfiguration.
            let ns = self.namespace(namespace)?;
            self.block_on(self.reconfigure(&ns, &config, policy, others))?;
            Ok(Configured::Updated)
        }
    }

    async fn create(&self, name: &NamespaceName, config: &NamespaceConfig) -> Result<bool, Error> {
        self.session(self.deadline(), async |conn| {
            let ctx = self.ctx();
            let s = ctx.schema;
            let tx = conn.transaction().await?;
            let seed = HashSeed::random()?;
            let (capacity, span) = limits(config);
            let row = tx
                .query_opt(
                    &format!(
                        "INSERT INTO {s}.namespaces (name, config, seed, open_gen, exact_floor, oldest_gen,
                                                     capacity, span_ms, opened_at)
                         VALUES ($1, $2, $3, 1, 1, 1, $4, $5, coalesce($6, (extract(epoch FROM clock_timestamp()) * 1000)::bigint))
                         ON CONFLICT (name) DO NOTHING RETURNING id, opened_at"
                    ),
                    &[
                        &name.as_str(),
                        &config_text(config),
                        &(seed.to_u64() as i64),
                        &capacity,
                        &span,
                        &ctx.injected_now(),
                    ],
                )
                .await?;
            let Some(row) = row else {
                return Ok(false);
            };
            let id: i32 = row.get(0);
            let now: i64 = row.get(1);
            tx.execute(
                &format!("INSERT INTO {s}.generations (ns, gen, opened_at) VALUES ($1, 1, $2)"),
                &[&id, &now],
            )
            .await?;
            create_table(&*tx, s, id, 1).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn reconfigure(
        &self,
        ns: &NsCache,
        config: &NamespaceConfig,
        policy: DropPolicy,
        others: u64,
    ) -> Result<(), Error> {
        self.session(self.deadline(), async |conn| {
            let ctx = self.ctx();
            let s = ctx.schema;
            let tx = conn.transaction().await?;
            lock(&*tx, &ctx, ns.id, true).await?;
            let ring = self.load(&*tx, &ctx, &ns.name).await?.ring();
            budget::check(
                self.inner.limits,
                budget::footprint(config, &live_sizes(&ring)),
                others,
            )?;
            let live = ring.open - ring.oldest + 1;
            let generations = i64::from(config.generations());
            let dropped = (live - generations).max(0);
            let oldest = ring.oldest + dropped;
            let wanted = ring
                .floor
                .max(ring.open - (i64::from(config.exact_generations()) - 1));
            let lost_tables = (wanted - ring.floor.max(oldest)).max(0);
            if policy == DropPolicy::Refuse && (dropped > 0 || lost_tables > 0) {
                return Err(Error::WouldDrop {
                    generations: u32::try_from(dropped).unwrap_or(u32::MAX),
                    exact_tables: u32::try_from(lost_tables).unwrap_or(u32::MAX),
                });
            }
            tx.execute(
                &format!("DELETE FROM {s}.generations WHERE ns = $1 AND gen < $2"),
                &[&ns.id, &oldest],
            )
            .await?;
            tx.execute(
                &format!("DELETE FROM {s}.counts WHERE ns = $1 AND gen < $2"),
                &[&ns.id, &oldest],
            )
            .await?;
            let floor = ring.floor.max(oldest);
            let (capacity, span) = limits(config);
            tx.execute(
                &format!(
                    "UPDATE {s}.namespaces SET config = $2, oldest_gen = $3, exact_floor = $4,
                            capacity = $5, span_ms = $6, version = version + 1
                      WHERE id = $1"
                ),
                &[
                    &ns.id,
                    &config_text(config),
                    &oldest,
                    &floor,
                    &capacity,
                    &span,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
        // Filters to rebuild for the new rate, the floor the new horizon asks, and
        // the tables of generations that left.
        self.catch_up(ns).await?;
        self.cleanup().await
    }

    pub(crate) fn delete_namespace(&self, namespace: &str) -> Result<(), Error> {
        if namespace == NamespaceName::DEFAULT {
            return Err(Error::Refused(
                "the default namespace cannot be deleted".into(),
            ));
        }
        let ns = self.namespace(namespace)?;
        self.block_on(self.session(self.deadline(), async |conn| {
            let ctx = self.ctx();
            let s = ctx.schema;
            let tx = conn.transaction().await?;
            lock(&*tx, &ctx, ns.id, true).await?;
            let gone = tx
                .execute(
                    &format!("DELETE FROM {s}.namespaces WHERE id = $1"),
                    &[&ns.id],
                )
                .await?;
            if gone == 0 {
                return Err(Error::UnknownNamespace(namespace.to_owned()));
            }
            for table in ["generations", "counts", "claims", "checkpoints"] {
                tx.execute(&format!("DELETE FROM {s}.{table} WHERE ns = $1"), &[&ns.id])
                    .await?;
            }
            // Its tables go with the next clean-up (now, below, or at a tick).
            tx.execute(
                &format!("INSERT INTO {s}.retired (ns) VALUES ($1) ON CONFLICT DO NOTHING"),
                &[&ns.id],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        }))?;
        if let Err(e) = self.block_on(self.cleanup()) {
            tracing::debug!(namespace, error = %e, "its tables are left for the next tick");
        }
        self.uncache(namespace);
        tracing::info!(namespace, "namespace deleted");
        Ok(())
    }

    pub(crate) fn filter_budget(&self) -> FilterBudget {
        let mut charged = 0_u64;
        let mut allocated = 0_u64;
        for name in self.namespaces() {
            let Ok(ns) = self.namespace(&name) else {
                continue;
            };
            let ring = ns.ring();
            let live = live_sizes(&ring);
            allocated = allocated.saturating_add(live.iter().sum());
            charged = charged.saturating_add(budget::footprint(&ring.config, &live));
        }
        FilterBudget {
            budget: self.inner.limits.max_filter_bytes,
            charged,
            allocated,
        }
    }

    fn charged_to_others(&self, except: &str) -> u64 {
        self.inner
            .namespaces
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(name, _)| name.as_str() != except)
            .map(|(_, ns)| {
                let ring = ns.ring();
                budget::footprint(&ring.config, &live_sizes(&ring))
            })
            .fold(0_u64, u64::saturating_add)
    }

    pub(crate) fn storage_failure(&self) -> Option<StorageFailure> {
        self.inner.health.failure()
    }

    pub(crate) fn storage_errors(&self) -> u64 {
        self.inner.health.errors()
    }

    pub(crate) fn disk_bytes(&self) -> Option<u64> {
        self.block_on_read(self.session(self.deadline(), async |conn| {
            let row = conn
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = $1 AND c.relkind = 'r'",
                    &[&self.inner.schema],
                )
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        }))
        .ok()
    }

    /// A write, committed: with the synchronous standby gone (every commit waits),
    /// or the primary frozen, it fails within the call's deadline, so readiness
    /// follows whether marks can commit, not only whether the server answers.
    pub(crate) fn probe_store(&self) -> Result<crate::tracker::StoreProbe, Error> {
        let deadline = Instant::now() + PROBE_TIMEOUT.min(self.inner.call_timeout);
        self.block_on(self.session(deadline, async |conn| {
            let started = std::time::Instant::now();
            let row = conn
                .query_one(
                    &format!(
                        "WITH beat AS (
                             INSERT INTO {}.meta (key, value) VALUES ('probe', clock_timestamp()::text)
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value RETURNING 1)
                         SELECT host(inet_server_addr()), inet_server_port(), pg_is_in_recovery(),
                                (SELECT count(*) FROM beat)",
                        self.inner.schema
                    ),
                    &[],
                )
                .await?;
            let round_trip = started.elapsed();
            let host: Option<String> = row.get(0);
            let port: Option<i32> = row.get(1);
            Ok(crate::tracker::StoreProbe {
                kind: "postgres",
                host: match (host, port) {
                    (Some(h), Some(p)) => Some(format!("{h}:{p}")),
                    (None, _) => Some("unix socket".into()),
                    (Some(h), None) => Some(h),
                },
                round_trip: Some(round_trip),
            })
        }))
    }

    pub(crate) fn close(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.pool.close();
        Ok(())
    }
}

/// The filter memory this node holds for a namespace's live sealed generations,
/// oldest first (the open generation has none on PostgreSQL).
fn live_sizes(ring: &Ring) -> Vec<u64> {
    ring.sealed
        .iter()
        .map(|g| g.filter.as_ref().map_or(0, |f| f.sizing().memory_bytes()))
        .collect()
}

/// How long the store's probe may take (a write and its commit).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn config_text(config: &NamespaceConfig) -> String {
    serde_json::to_string(config).expect("configurations serialise")
}
