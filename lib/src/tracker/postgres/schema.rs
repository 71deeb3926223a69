//! The PostgreSQL schema: created and migrated by Oncely, versioned.
//!
//! Every table lives in one schema (`oncely` by default), so that several independent
//! authorities can share a database and the caller's own tables never collide with
//! them:
//!
//! | table | what |
//! |---|---|
//! | `meta` | `schema_version` |
//! | `namespaces` | name, configuration, hash seed, and the ring: open generation (with when it opened), exact floor, oldest live generation, the open generation's capacity and span, a version bumped at every change |
//! | `generations` | per generation: opened and sealed (ms since the epoch, database time), IDs at sealing, its Bloom filter once sealed (a versioned, checksummed snapshot), and the IDs forgotten from its table (`forgets`: a forget takes the filter away, to be built again without them; see `forget`) |
//! | `counts` | new IDs per generation, in up to 64 shards (the session's process ID modulo 64) so that concurrent marks rarely queue on one row |
//! | `marks_<ns>_<gen>` | the exact tables: one table per generation, keyed on `id`, dropped whole once the generation leaves the exact horizon; a row is a done mark (with its owner's fingerprint) or a claim's placeholder |
//! | `claims` | live claims: owner, lease end, lease |
//! | `checkpoints` | consumers' positions |
//! | `user_kv` | the transactional API's user keys |
//! | `retired` | deleted namespaces whose tables are still to be dropped |
//!
//! and the functions of `functions.sql`: `mark_ids`, where every check and mark is
//! decided, `forget_ids`, and the public `check_and_mark`, `check_and_mark_bytes`,
//! `check`, `check_bytes`, `set_checkpoint`, `set_checkpoint_if`, `checkpoint`,
//! `forget` and `forget_bytes` for callers in other languages.
//!
//! **Why a table per generation, not partitions of one parent.** Versions 1 and 2
//! kept the exact tables as partitions of one `marks`. Creating or dropping a
//! partition takes an `ACCESS EXCLUSIVE` lock on the parent, which waits for every
//! transaction holding any lock on it (a consumer's transaction that marked, a
//! report, `pg_dump`), and while it waits every statement on `marks`, from every
//! namespace and every node, queues behind it: one long transaction stalled every
//! namespace (a mark in an unrelated namespace answered 504 after 5 s). Tables of
//! their own share no lock: a rotation creates one and drops another, and a
//! transaction holds up at most its own namespace's rotation. (`ATTACH PARTITION`
//! takes a weaker lock, but detaching without an exclusive one, `DETACH
//! CONCURRENTLY`, cannot run inside a transaction and waits for every older
//! transaction that touched the parent; and generic plans on the parent lock every
//! partition.)
//!
//! A database whose schema is newer than this build knows is refused with a clear
//! error; an older one is migrated, one version at a time:
//!
//! | version | what changed |
//! |---|---|
//! | 1 | the first |
//! | 2 | the key of `marks` is `(id, ns, gen)`, not `(ns, gen, id)`: a partition holds one namespace's generation, so leading with `ns` and `gen` made every index comparison three; led by `id`, comparisons stop at the first column unless the IDs are equal (PostgreSQL's CPU per ID of the batched `INSERT` fell from 861 to 727 clock ticks per million IDs, from `/proc`, against 644 for a table keyed on the ID alone). The key stays the parent's, so every partition inherits it, whoever creates it: a node still on version 1 during a rolling upgrade included |
//! | 3 | a table per generation (`marks_<ns>_<gen>`), not partitions of one `marks` (above); the ring rows carry the open generation's capacity, span and opening time, which `mark_ids` reads |
//! | 4 | `set_checkpoint_if`: a checkpoint write with a precondition; only functions change, so a version 3 database migrates at once |
//! | 5 | forgets: `generations.forgets` (a column with a default: added at once, whatever the marks stored), and the functions `forget`, `forget_bytes` and `forget_ids`. Nodes still on version 4 keep marking, but neither honour the count when they build a filter nor load a filter again when it moves: upgrade every node before anyone forgets |

use tokio_postgres::GenericClient;

use crate::config::NamespaceConfig;
use crate::error::Error;

/// The schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: i32 = 5;

/// Creates or migrates the schema, serialised across nodes by an advisory lock.
pub(crate) async fn migrate(client: &mut super::Object, schema: &str) -> Result<(), Error> {
    let tx = client.transaction().await?;
    // A migration rebuilds keys in proportion to the marks stored, and waits for
    // the other nodes' migrations: not bounded like a call.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await?;
    // One node at a time: the others wait, then find the schema in place.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('oncely-schema:' || $1::text))",
        &[&schema],
    )
    .await?;
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'meta')",
            &[&schema],
        )
        .await?
        .get(0);
    let version = if exists {
        current_version(&*tx, schema).await?
    } else {
        0
    };
    if version > SCHEMA_VERSION {
        return Err(Error::Corrupt(format!(
            "the PostgreSQL schema {schema:?} is at version {version}, newer than this build \
             knows ({SCHEMA_VERSION}): upgrade Oncely, or point it at another schema"
        )));
    }
    if version < 1 {
        tx.batch_execute(&v1(schema)).await?;
        tracing::info!(schema, version = 1, "PostgreSQL schema created");
    }
    if version < 2 {
        // Version 3 rebuilds every key again: a version 1 database goes straight
        // there (only the version number moves here).
        if version == 0 {
            tx.batch_execute(&v2(schema)).await?;
        } else {
            tx.execute(
                &format!("UPDATE {schema}.meta SET value = '2' WHERE key = 'schema_version'"),
                &[],
            )
            .await?;
        }
    }
    if version < 3 {
        // Rebuilding the keys takes time in proportion to the marks stored, and
        // every mark waits meanwhile: say so before, with the planner's estimate.
        if version >= 1 {
            let marks: i64 = tx
                .query_one(
                    "SELECT coalesce(sum(c.reltuples), 0)::bigint FROM pg_inherits i
                       JOIN pg_class c ON c.oid = i.inhrelid
                      WHERE i.inhparent = ($1 || '.marks')::regclass",
                    &[&schema],
                )
                .await?
                .get(0);
            tracing::warn!(
                schema,
                marks = marks.max(0),
                "migrating the PostgreSQL schema to version 3: a table per generation, \
                 rebuilding the key of every stored mark; marks on every node wait until it \
                 ends, and nodes still on version 2 fail their marks from then on"
            );
        }
        let started = std::time::Instant::now();
        v3(&tx, schema).await?;
        tracing::info!(
            schema,
            version = 3,
            seconds = started.elapsed().as_secs_f64(),
            "PostgreSQL schema migrated"
        );
    }
    if version < 4 {
        // Only functions changed in version 4: version 5 (below) installs them.
        tx.execute(
            &format!("UPDATE {schema}.meta SET value = '4' WHERE key = 'schema_version'"),
            &[],
        )
        .await?;
    }
    if version < 5 {
        // `IF NOT EXISTS`: a database put back to version 4 by hand may have it.
        tx.batch_execute(&format!(
            "ALTER TABLE {schema}.generations
                 ADD COLUMN IF NOT EXISTS forgets bigint NOT NULL DEFAULT 0;
             {functions}
             UPDATE {schema}.meta SET value = '5' WHERE key = 'schema_version';",
            functions = functions(schema)
        ))
        .await?;
        if version >= 1 {
            tracing::info!(schema, version = 5, "PostgreSQL schema migrated");
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn current_version<C: GenericClient + Sync>(client: &C, schema: &str) -> Result<i32, Error> {
    let row = client
        .query_opt(
            &format!("SELECT value FROM {schema}.meta WHERE key = 'schema_version'"),
            &[],
        )
        .await?;
    let Some(row) = row else {
        return Err(Error::Corrupt(format!(
            "the PostgreSQL schema {schema:?} has a meta table without a schema_version"
        )));
    };
    let value: String = row.get(0);
    value.parse().map_err(|_| {
        Error::Corrupt(format!(
            "the PostgreSQL schema {schema:?} has schema_version {value:?}, not a number"
        ))
    })
}

/// Version 1 of the schema.
fn v1(s: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
        CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL);
        INSERT INTO {s}.meta VALUES ('schema_version', '1');
        CREATE TABLE {s}.namespaces (
            id          serial PRIMARY KEY,
            name        text NOT NULL UNIQUE,
            config      text NOT NULL,
            seed        bigint NOT NULL,
            version     bigint NOT NULL DEFAULT 1,
            open_gen    bigint NOT NULL,
            exact_floor bigint NOT NULL,
            oldest_gen  bigint NOT NULL
        );
        CREATE TABLE {s}.generations (
            ns        integer NOT NULL REFERENCES {s}.namespaces (id) ON DELETE CASCADE,
            gen       bigint NOT NULL,
            opened_at bigint NOT NULL,
            sealed_at bigint,
            ids       bigint NOT NULL DEFAULT 0,
            filter    bytea,
            PRIMARY KEY (ns, gen)
        );
        CREATE TABLE {s}.counts (
            ns    integer NOT NULL,
            gen   bigint NOT NULL,
            shard integer NOT NULL,
            n     bigint NOT NULL,
            PRIMARY KEY (ns, gen, shard)
        );
        CREATE TABLE {s}.marks (
            ns    integer NOT NULL,
            gen   bigint NOT NULL,
            id    bytea NOT NULL,
            owner bigint,
            claim boolean NOT NULL DEFAULT false,
            PRIMARY KEY (ns, gen, id)
        ) PARTITION BY RANGE (ns, gen);
        CREATE TABLE {s}.claims (
            ns       integer NOT NULL,
            id       bytea NOT NULL,
            owner    bigint NOT NULL,
            until_ms bigint NOT NULL,
            lease_ms bigint NOT NULL,
            PRIMARY KEY (ns, id)
        );
        CREATE TABLE {s}.checkpoints (
            ns       integer NOT NULL,
            consumer text NOT NULL,
            position text NOT NULL,
            PRIMARY KEY (ns, consumer)
        );
        CREATE TABLE {s}.user_kv (key bytea PRIMARY KEY, value bytea NOT NULL);"
    )
}

/// Version 2: `marks` keyed on `(id, ns, gen)`. One `ALTER TABLE` drops the old key
/// and adds the new one on the parent and every partition, holding the parent
/// exclusively meanwhile (marks wait, as does any partition being created), so there
/// is no moment without a key and no partition left out. It rebuilds every
/// partition's index: the longer the more marks are stored.
fn v2(s: &str) -> String {
    format!(
        "ALTER TABLE {s}.marks DROP CONSTRAINT marks_pkey, ADD PRIMARY KEY (id, ns, gen);
         UPDATE {s}.meta SET value = '2' WHERE key = 'schema_version';"
    )
}

/// Version 3: a table per generation, and the functions (see the module docs).
/// Every partition of `marks` is detached, loses the columns its parent needed and
/// is keyed on `id` alone; the namespaces' rows gain what `mark_ids` reads of their
/// configuration.
async fn v3(tx: &deadpool_postgres::Transaction<'_>, s: &str) -> Result<(), Error> {
    let parts = tx
        .query(
            "SELECT c.relname::text, k.conname::text FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p'
              WHERE i.inhparent = ($1 || '.marks')::regclass
              ORDER BY 1",
            &[&s],
        )
        .await?;
    for part in &parts {
        let name: String = part.get(0);
        let key: Option<String> = part.get(1);
        let drop_key = key
            .map(|k| format!("DROP CONSTRAINT {k}, "))
            .unwrap_or_default();
        tx.batch_execute(&format!(
            "ALTER TABLE {s}.marks DETACH PARTITION {s}.{name};
             ALTER TABLE {s}.{name} {drop_key}DROP COLUMN ns, DROP COLUMN gen, ADD PRIMARY KEY (id);"
        ))
        .await?;
    }
    tx.batch_execute(&format!(
        "DROP TABLE {s}.marks;
         ALTER TABLE {s}.namespaces ADD COLUMN capacity bigint, ADD COLUMN span_ms bigint,
                                    ADD COLUMN opened_at bigint;
         CREATE TABLE {s}.retired (ns integer PRIMARY KEY);"
    ))
    .await?;
    let rows = tx
        .query(
            &format!(
                "SELECT n.id, n.config, g.opened_at FROM {s}.namespaces n
                   JOIN {s}.generations g ON g.ns = n.id AND g.gen = n.open_gen"
            ),
            &[],
        )
        .await?;
    for row in &rows {
        let id: i32 = row.get(0);
        let config: NamespaceConfig = decode_config(row.get(1), &id.to_string())?;
        let opened_at: i64 = row.get(2);
        let (capacity, span) = limits(&config);
        tx.execute(
            &format!(
                "UPDATE {s}.namespaces SET capacity = $2, span_ms = $3, opened_at = $4 WHERE id = $1"
            ),
            &[&id, &capacity, &span, &opened_at],
        )
        .await?;
    }
    tx.batch_execute(&format!(
        "ALTER TABLE {s}.namespaces ALTER capacity SET NOT NULL, ALTER span_ms SET NOT NULL,
                                    ALTER opened_at SET NOT NULL;
         {functions}
         UPDATE {s}.meta SET value = '3' WHERE key = 'schema_version';",
        functions = functions(s)
    ))
    .await?;
    Ok(())
}

/// The functions (`functions.sql`) for schema `s`.
pub(crate) fn functions(s: &str) -> String {
    include_str!("functions.sql")
        .replace("@schema@", s)
        .replace("@lock_key@", &super::lock_key(s).to_string())
        .replace("@lock_timeout@", &format!("{}ms", LOCK_TIMEOUT.as_millis()))
}

/// How long any statement of Oncely's waits for a lock before it gives up (`lock_timeout`,
/// also in `mark_ids`): a mark of an ID another transaction holds, a rotation behind a
/// consumer's transaction. Under the daemon's `tracker_timeout` (5 s), so that a
/// wait ends in an error that says why rather than in a 504.
pub(crate) const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What `mark_ids` reads of a configuration: the open generation's capacity, and
/// its span in milliseconds.
pub(crate) fn limits(config: &NamespaceConfig) -> (i64, i64) {
    (
        i64::try_from(config.generation_capacity()).unwrap_or(i64::MAX),
        i64::try_from(config.generation_span().as_millis()).unwrap_or(i64::MAX),
    )
}

/// A configuration as stored (JSON text).
pub(crate) fn decode_config(text: &str, namespace: &str) -> Result<NamespaceConfig, Error> {
    serde_json::from_str(text).map_err(|e| {
        Error::Corrupt(format!(
            "namespace {namespace}: its configuration in PostgreSQL does not decode: {e}"
        ))
    })
}

/// The name of a generation's exact table.
pub(crate) fn table(schema: &str, ns: i32, generation: i64) -> String {
    format!("{schema}.marks_{ns}_{generation}")
}

/// A generation's exact table's name without the schema, as `pg_class` has it.
fn table_name(ns: i32, generation: i64) -> String {
    format!("marks_{ns}_{generation}")
}

/// Creates a generation's exact table. It takes no lock that any other statement
/// holds or waits for: the name is new.
pub(crate) async fn create_table<C: GenericClient + Sync>(
    client: &C,
    schema: &str,
    ns: i32,
    generation: i64,
) -> Result<(), Error> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 id    bytea PRIMARY KEY,
                 owner bigint,
                 claim boolean NOT NULL DEFAULT false
             )",
            table(schema, ns, generation)
        ))
        .await?;
    Ok(())
}

/// The exact tables in the schema: `(namespace, generation)` of each.
pub(crate) async fn tables<C: GenericClient + Sync>(
    client: &C,
    schema: &str,
) -> Result<Vec<(i32, i64)>, Error> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname LIKE 'marks\\_%'",
            &[&schema],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| parse_table_name(r.get(0)))
        .collect())
}

fn parse_table_name(name: &str) -> Option<(i32, i64)> {
    let (ns, generation) = name.strip_prefix("marks_")?.split_once('_')?;
    let parsed = (ns.parse().ok()?, generation.parse().ok()?);
    (table_name(parsed.0, parsed.1) == name).then_some(parsed)
}

/// Drops a generation's exact table (gone at once, never row by row), waiting at
/// most `lock_timeout` for the readers holding it; false when it had to give up
/// (the next tick tries again).
pub(crate) async fn drop_table<C: GenericClient + Sync>(
    client: &C,
    schema: &str,
    ns: i32,
    generation: i64,
) -> Result<bool, Error> {
    match client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {}",
            table(schema, ns, generation)
        ))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Validates a schema name: it is spliced into SQL, so only plain identifiers.
pub(crate) fn check_schema_name(schema: &str) -> Result<(), Error> {
    let ok = !schema.is_empty()
        && schema.len() <= 48
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            field: "schema",
            reason: format!(
                "{schema:?} is not 1 to 48 of a-z, 0-9 and _, starting with a letter or _"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_parse_back_and_nothing_else_does() {
        assert_eq!(parse_table_name("marks_3_17"), Some((3, 17)));
        for other in [
            "marks",
            "marks_3",
            "marks_x_1",
            "marks_3_17_old",
            "marks_03_17",
            "user_kv",
        ] {
            assert_eq!(parse_table_name(other), None, "{other}");
        }
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["oncely", "_x", "tenant_7"] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Oncely", "7x", "a-b", "a;drop", &"x".repeat(49)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
