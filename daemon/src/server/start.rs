//! Start-up: the runtime, the tracker, the declared namespaces, the listeners, and
//! serving until a stop request.

use oncely::{DropPolicy, Durability, Tracker};
use tokio::net::TcpListener;

use super::{AppState, RespFace, ShutdownTiming, Stops, Tls, descriptors, run_faces};
use crate::Error;
use crate::config::{Settings, human_bytes};

/// Opens the tracker the settings describe, on the blocking pool (recovery reads
/// snapshots and may scan an exact table; PostgreSQL is connected to and its schema
/// created or migrated).
///
/// # Errors
///
/// [`Error::Open`] naming the data directory; [`Error::OpenStore`] naming the
/// PostgreSQL store (password masked).
pub async fn open_tracker(settings: &Settings) -> Result<Tracker, Error> {
    let mut builder = Tracker::builder()
        .durability(settings.durability)
        .max_filter_bytes(settings.max_filter_bytes)
        .max_namespaces(settings.max_namespaces);
    if let Some(declared) = settings.namespaces.get(oncely::NamespaceName::DEFAULT) {
        builder = builder.default_config(declared.config.clone());
    }
    if let Some(store) = &settings.store {
        builder = builder.postgres(
            oncely::postgres::PgOptions::new(store.expose()).pool_size(settings.store_pool_size),
        );
        let opened = tokio::task::spawn_blocking(move || builder.open())
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))?;
        return opened.map_err(|source| Error::OpenStore {
            store: store.redacted(),
            source,
        });
    }
    builder = builder.rocks_options(settings.rocks);
    let path = if settings.durability == Durability::Memory {
        std::path::PathBuf::new()
    } else {
        builder = builder.path(&settings.data_dir);
        settings.data_dir.clone()
    };
    let opened = tokio::task::spawn_blocking(move || builder.open())
        .await
        .map_err(|e| Error::Serve(std::io::Error::other(e)))?;
    opened.map_err(|source| match source {
        // Only the `default` namespace is created at open: the budget cannot hold it.
        oncely::Error::OverBudget { .. } => Error::Config {
            setting: "max_filter_bytes",
            reason: format!("cannot hold the default namespace: {source}"),
        },
        source => Error::Open { path, source },
    })
}

/// Creates or updates the namespaces the settings declare; one whose configuration
/// is already the declared one is left alone.
///
/// A change that would drop live generations or exact tables (and so forget
/// remembered IDs) needs `drop_now` in its table. Every change that drops nothing
/// is applied first; then, unless a table without `drop_now` would drop something
/// (which stops start-up with nothing dropped), the changes that drop.
///
/// # Errors
///
/// [`Error::NamespaceWouldDrop`] naming the namespace and what would be dropped;
/// [`Error::Namespace`] naming the namespace for anything else.
pub async fn declare_namespaces(tracker: &Tracker, settings: &Settings) -> Result<(), Error> {
    let tracker = tracker.clone();
    let namespaces = settings.namespaces.clone();
    tokio::task::spawn_blocking(move || {
        let mut dropping = Vec::new();
        for (name, declared) in &namespaces {
            if tracker
                .namespace_info(name)
                .is_ok_and(|info| info.config == declared.config)
            {
                tracing::info!(namespace = %name, "namespace unchanged from the configuration");
                continue;
            }
            match tracker.configure_namespace_with(name, declared.config.clone(), DropPolicy::Refuse)
            {
                Ok(configured) => {
                    tracing::info!(namespace = %name, ?configured, "namespace declared by the configuration");
                }
                Err(oncely::Error::WouldDrop {
                    generations,
                    exact_tables,
                }) => {
                    if !declared.drop_now {
                        return Err(Error::NamespaceWouldDrop {
                            namespace: name.clone(),
                            generations,
                            exact_tables,
                        });
                    }
                    dropping.push((name, declared, generations, exact_tables));
                }
                Err(source) => {
                    return Err(Error::Namespace {
                        namespace: name.clone(),
                        source,
                    });
                }
            }
        }
        for (name, declared, generations, exact_tables) in dropping {
            let _updated = tracker
                .configure_namespace_with(name, declared.config.clone(), DropPolicy::DropNow)
                .map_err(|source| Error::Namespace {
                    namespace: name.clone(),
                    source,
                })?;
            tracing::warn!(
                namespace = %name,
                generations,
                exact_tables,
                "namespace reconfigured with drop_now: generations and exact tables dropped"
            );
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Serve(std::io::Error::other(e)))?
}

/// The async runtime `serve` runs on: `settings.worker_threads` workers, or one per
/// CPU the process may use. The count is always given to tokio, so that its own
/// `TOKIO_WORKER_THREADS` is never read: unchecked, it panics on a typo and
/// bypasses the cap (the settings warn when it is set).
///
/// # Errors
///
/// [`Error::Runtime`] if the runtime cannot start.
pub fn runtime(settings: &Settings) -> Result<tokio::runtime::Runtime, Error> {
    let workers = settings.worker_threads.unwrap_or_else(|| {
        // Counts the process's CPU affinity and its cgroup's quota.
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("oncelyd")
        .build()
        .map_err(Error::Runtime)
}

/// Runs the daemon the settings describe until SIGINT or SIGTERM (on the runtime
/// [`runtime`] builds, for `worker_threads` to apply): logs the
/// settings' warnings, opens the tracker, declares the configured namespaces,
/// binds, serves, then drains and shuts down (see [`run_with`]).
///
/// # Errors
///
/// Start-up failures ([`Error::Open`], [`Error::NamespaceWouldDrop`],
/// [`Error::Namespace`], [`Error::Bind`]), [`Error::Serve`], [`Error::Close`] and
/// [`Error::Interrupted`].
pub async fn serve(settings: Settings) -> Result<(), Error> {
    // Installed first: a signal during start-up then stops the daemon cleanly once
    // it is up, rather than killing it mid-way.
    let stops = Stops::os_signals();
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    // Before anything is opened: a certificate or key that cannot be used stops
    // start-up with nothing created, as any other bad setting does.
    let tls = settings.tls.as_ref().map(Tls::load).transpose()?;
    let files = descriptors::raise_limit();
    if let Some(from) = files.raised_from {
        tracing::info!(from, to = ?files.soft, "raised the limit on open files to the hard limit");
    }
    let tracker = open_tracker(&settings).await?;
    let started = async {
        declare_namespaces(&tracker, &settings).await?;
        if settings.resp_listen.is_some() {
            resp_namespace_exists(&tracker, &settings.resp_namespace).await?;
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: settings.listen,
                source,
            })?;
        let resp = match settings.resp_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind { addr, source })?,
            ),
            None => None,
        };
        // Counted once the store and the listeners are open.
        let in_use = descriptors::open_now().unwrap_or(0);
        let cap = descriptors::connection_cap(settings.max_connections, files, in_use)?;
        Ok((listener, resp, cap))
    }
    .await;
    let (listener, resp, (max_connections, cap_warning)) = match started {
        Ok(started) => started,
        Err(e) => {
            let t = tracker.clone();
            // Best effort: the error to report is the start-up failure.
            let _ = tokio::task::spawn_blocking(move || t.close()).await;
            return Err(e);
        }
    };
    let addr = listener.local_addr().map_err(Error::Serve)?;
    let settings = Settings {
        max_connections: Some(max_connections),
        ..settings
    };
    // On the blocking pool: on PostgreSQL it reads the namespaces from the database.
    let budget = {
        let tracker = tracker.clone();
        tokio::task::spawn_blocking(move || tracker.filter_budget())
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))?
    };
    let state = AppState::from_settings(tracker, &settings);
    // The first probe logs the server a PostgreSQL store is on; later ones a change.
    let probing = state.clone();
    let _ = tokio::task::spawn_blocking(move || {
        probing.store_watch().probe(probing.tracker());
    })
    .await;
    let auth = if settings.tokens.is_empty() {
        "off"
    } else {
        "bearer"
    };
    let (tls_on, scheme) = if tls.is_some() {
        ("on", "https")
    } else {
        ("off", "http")
    };
    if let Some(warning) = cap_warning {
        tracing::warn!("{warning}");
    }
    if budget.charged > settings.max_filter_bytes {
        tracing::warn!(
            "the namespaces are charged {} of filter memory, over max_filter_bytes {}: \
             creating namespaces and growing them are refused until namespaces are deleted \
             or shrunk, or the budget is raised",
            human_bytes(budget.charged),
            human_bytes(settings.max_filter_bytes)
        );
    }
    // One line says where it listens, what it keeps and where: the process tests
    // read the bound address from `listen=`.
    let worker_threads = tokio::runtime::Handle::current().metrics().num_workers();
    if let Some(store) = &settings.store {
        let host = state.store_watch().seen().host;
        tracing::info!(
            listen = %addr,
            store = %store,
            store_host = %host.as_deref().unwrap_or("(not reached)"),
            store_pool_size = settings.store_pool_size,
            auth,
            tls = tls_on,
            max_concurrency = settings.max_concurrency,
            max_body_bytes_in_flight = settings.max_body_bytes_in_flight,
            max_connections,
            worker_threads,
            max_filter_bytes = settings.max_filter_bytes,
            filter_bytes_charged = budget.charged,
            "oncelyd listening on {scheme}://{addr}"
        );
    } else {
        let data_dir = if settings.durability == Durability::Memory {
            "(none: memory durability)".to_owned()
        } else {
            settings.data_dir.display().to_string()
        };
        tracing::info!(
            listen = %addr,
            data_dir = %data_dir,
            durability = %settings.durability,
            auth,
            tls = tls_on,
            max_concurrency = settings.max_concurrency,
            max_body_bytes_in_flight = settings.max_body_bytes_in_flight,
            max_connections,
            worker_threads,
            max_filter_bytes = settings.max_filter_bytes,
            filter_bytes_charged = budget.charged,
            "oncelyd listening on {scheme}://{addr}"
        );
    }
    let timing = ShutdownTiming {
        drain_delay: settings.drain_delay,
        grace: settings.shutdown_grace,
    };
    if let (Some(tls), Some(files)) = (&tls, &settings.tls) {
        tracing::info!(
            tls_cert = %files.cert.display(),
            tls_key = %files.key.display(),
            "TLS on for every face; SIGHUP reloads the certificate and key"
        );
        tls.reload_on_sighup();
    }
    let resp = match resp {
        Some(listener) => {
            let resp_addr = listener.local_addr().map_err(Error::Serve)?;
            tracing::info!(
                resp_listen = %resp_addr,
                resp_namespace = %settings.resp_namespace,
                tls = tls_on,
                "oncelyd serving RESP (the Redis protocol) on {resp_addr}"
            );
            Some(RespFace {
                listener,
                namespace: settings.resp_namespace.clone(),
            })
        }
        None => None,
    };
    // Both listeners are bound (connections queue until the accept loops take
    // them) and the tracker has opened: systemd may consider the service started.
    super::notify::notify("READY=1\nSTATUS=serving");
    run_faces(listener, resp, tls, state, stops, timing).await
}

/// `SET key value NX` marks in `resp_namespace`: a name no namespace has would make
/// every such command an error, so it stops start-up instead, naming the setting.
async fn resp_namespace_exists(tracker: &Tracker, name: &str) -> Result<(), Error> {
    let t = tracker.clone();
    let owned = name.to_owned();
    match tokio::task::spawn_blocking(move || t.namespace_info(&owned)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(oncely::Error::UnknownNamespace(_))) => Err(Error::Config {
            setting: "resp_namespace",
            reason: format!(
                "no namespace {name:?}: declare it under [namespaces.{name}] in the \
                 configuration file, or create it over HTTP and restart"
            ),
        }),
        Ok(Err(source)) => Err(Error::Namespace {
            namespace: name.to_owned(),
            source,
        }),
        Err(join) => Err(Error::Config {
            setting: "resp_namespace",
            reason: format!("the check failed: {join}"),
        }),
    }
}
