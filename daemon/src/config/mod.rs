//! `oncelyd serve`'s settings: flags, environment and a TOML file, merged.
//!
//! This module owns the settings: their names ([`SETTINGS`]), types, defaults,
//! precedence and validation. The command line (`crate::cli`) only parses flags into
//! a [`Layer`]; the environment ([`env`]) and the file ([`file`]) are read here.
//!
//! Every setting has one name in all three places: `--max-ids` on the command line,
//! `ONCELY_MAX_IDS` in the environment, `max_ids` in the file. A flag wins over the
//! environment, either wins over the file, and what none of them gives takes its
//! default; a setting given in two places with different values is reported at
//! start-up ([`Settings::warnings`]). Namespaces can only be declared in the file
//! (`[namespaces.NAME]` tables). `docs/configuration.md` is the reference.
//!
//! The state lives in the embedded RocksDB under `data_dir` unless `store` names a
//! PostgreSQL database ([`StoreUrl`]); the settings that only one store uses are
//! refused or warned about with the other.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use oncely::{Durability, HumanDuration, NamespaceConfig, NamespaceName, RocksOptions};
use serde::Deserialize;

use crate::Error;

pub mod env;
pub mod file;
pub mod machine;
mod origin;
mod store;
mod units;

pub use file::NamespaceTable;
pub use origin::AllowedOrigin;
pub use store::StoreUrl;
pub use units::{ByteSize, human_bytes, parse_duration};

/// One setting's three names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key in the file, which error messages use too: `max_ids`.
    pub key: &'static str,
    /// The command-line flag: `--max-ids`.
    pub flag: &'static str,
    /// The environment variable: `ONCELY_MAX_IDS`.
    pub env: &'static str,
    /// Whether the file may give it (all but `config`, the file's own path).
    pub in_file: bool,
}

const fn setting(key: &'static str, flag: &'static str, env: &'static str) -> Setting {
    Setting {
        key,
        flag,
        env,
        in_file: true,
    }
}

/// Every setting of `oncelyd serve`, in the order the reference lists them.
pub const SETTINGS: [Setting; 29] = [
    setting("listen", "--listen", "ONCELY_LISTEN"),
    setting("resp_listen", "--resp-listen", "ONCELY_RESP_LISTEN"),
    setting(
        "resp_namespace",
        "--resp-namespace",
        "ONCELY_RESP_NAMESPACE",
    ),
    setting("tls_cert", "--tls-cert", "ONCELY_TLS_CERT"),
    setting("tls_key", "--tls-key", "ONCELY_TLS_KEY"),
    setting("data_dir", "--data-dir", "ONCELY_DATA_DIR"),
    setting("store", "--store", "ONCELY_STORE"),
    setting(
        "store_pool_size",
        "--store-pool-size",
        "ONCELY_STORE_POOL_SIZE",
    ),
    Setting {
        key: "config",
        flag: "--config",
        env: "ONCELY_CONFIG",
        in_file: false,
    },
    setting("tokens", "--token", "ONCELY_TOKENS"),
    setting(
        "allowed_origins",
        "--allowed-origin",
        "ONCELY_ALLOWED_ORIGINS",
    ),
    setting("durability", "--durability", "ONCELY_DURABILITY"),
    setting(
        "max_body_bytes",
        "--max-body-bytes",
        "ONCELY_MAX_BODY_BYTES",
    ),
    setting(
        "max_body_bytes_in_flight",
        "--max-body-bytes-in-flight",
        "ONCELY_MAX_BODY_BYTES_IN_FLIGHT",
    ),
    setting("max_ids", "--max-ids", "ONCELY_MAX_IDS"),
    setting(
        "max_concurrency",
        "--max-concurrency",
        "ONCELY_MAX_CONCURRENCY",
    ),
    setting(
        "tracker_timeout",
        "--tracker-timeout",
        "ONCELY_TRACKER_TIMEOUT",
    ),
    setting(
        "body_read_timeout",
        "--body-read-timeout",
        "ONCELY_BODY_READ_TIMEOUT",
    ),
    setting(
        "header_read_timeout",
        "--header-read-timeout",
        "ONCELY_HEADER_READ_TIMEOUT",
    ),
    setting("idle_timeout", "--idle-timeout", "ONCELY_IDLE_TIMEOUT"),
    setting(
        "max_connections",
        "--max-connections",
        "ONCELY_MAX_CONNECTIONS",
    ),
    setting(
        "max_filter_bytes",
        "--max-filter-bytes",
        "ONCELY_MAX_FILTER_BYTES",
    ),
    setting(
        "max_namespaces",
        "--max-namespaces",
        "ONCELY_MAX_NAMESPACES",
    ),
    setting("cache_bytes", "--cache-bytes", "ONCELY_CACHE_BYTES"),
    setting(
        "memtable_bytes",
        "--memtable-bytes",
        "ONCELY_MEMTABLE_BYTES",
    ),
    setting(
        "shutdown_grace",
        "--shutdown-grace",
        "ONCELY_SHUTDOWN_GRACE",
    ),
    setting("drain_delay", "--drain-delay", "ONCELY_DRAIN_DELAY"),
    setting(
        "worker_threads",
        "--worker-threads",
        "ONCELY_WORKER_THREADS",
    ),
    setting("log_format", "--log-format", "ONCELY_LOG_FORMAT"),
];

/// How log lines are written (`log_format`): `text` for people, `json` (one object
/// a line) for log collectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2025-01-01T00:00:00.000000Z  WARN request{request_id=...}: oncelyd::...: ...`
    #[default]
    Text,
    /// One JSON object a line, the request's ID under `span.request_id`.
    Json,
}

impl LogFormat {
    /// The value as written.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("{s:?} is no log format: text or json")),
        }
    }
}

/// The default listen address: loopback only, so that a daemon started without
/// thought is not reachable from the network.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7070);
/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// The default most connections to a PostgreSQL store: the library's default. Each
/// request holds one for one transaction (a few milliseconds for a 1,000-ID batch),
/// so 16 keep a daemon's two cores busy; PostgreSQL's own default `max_connections`
/// of 100 then serves six daemons.
pub const DEFAULT_STORE_POOL_SIZE: usize = 16;
/// The most `store_pool_size` may be: more connections than PostgreSQL servers
/// usually allow in all (each one is a server process).
pub const MAX_STORE_POOL_SIZE: usize = 1024;
/// The default request body limit: 4 MiB, room for 10,000 IDs of 256 bytes with JSON
/// quoting to spare.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 << 20;
/// The largest `max_body_bytes`: 1 GiB. A body is read whole into one buffer before
/// it is parsed, and 1 GiB of JSON holds some 25 million IDs, far more than
/// [`MAX_IDS`] allows; a larger figure is a unit mistake (`64GiB` meant as `64MiB`).
pub const MAX_BODY_BYTES: u64 = 1 << 30;
/// The default most IDs per request.
pub const DEFAULT_MAX_IDS: usize = 10_000;
/// The most `max_ids` may be: a million IDs. One check-and-mark is one write under
/// its namespace's lock, and a 1,000-ID batch takes about a millisecond, so a
/// million-ID one holds the namespace for a second or more (beyond
/// `tracker_timeout`'s default on a slow disk); more is a digit mistake.
pub const MAX_IDS: usize = 1_000_000;
/// The largest memory budget (`max_filter_bytes`, `max_body_bytes_in_flight`,
/// `cache_bytes`): 1 TiB, more memory than the machines the daemon runs on have; a
/// larger figure is a unit or digit mistake.
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// The default most requests in progress at once; more are shed with 503.
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;
/// The default time in-flight requests get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The default time `/readyz` answers 503 at shutdown before the listener closes:
/// long enough for a load balancer that checks every 2 s to see two failures, short
/// enough not to slow a Ctrl-C much. (Kubernetes' default readiness probe, every
/// 10 s with 3 failures needed, takes 30 s: set more there.)
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// The default longest wait of a request on the tracker: a mark takes microseconds
/// to milliseconds, a write stall or an fsync on a slow disk tens to hundreds; five
/// seconds is a store in trouble, and a third of the typed client's 15 s budget for
/// a whole call, so its retries still fit.
pub const DEFAULT_TRACKER_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time a request's body has to arrive, from its head: a whole
/// `max_body_bytes` (4 MiB) in 10 s is 3.4 Mbit/s, far below any link between
/// services.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a request head has to arrive, from its first byte: a head is a
/// few hundred bytes, sent in one write by every HTTP client.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a connection may stay open with no request under way: longer
/// than the idle timeouts of the usual client pools' keep-alive reuse (the typed
/// client's reqwest pool keeps connections 90 s, but reuses them at once under
/// load), short enough that abandoned connections give their descriptors back.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most connections by default, when the descriptor limit allows it (see
/// `server::descriptors`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The default most namespaces, `default` included.
pub const DEFAULT_MAX_NAMESPACES: u32 = 1024;
/// The most `max_namespaces` may be: 1,048,576. Every namespace is charged its
/// filters against `max_filter_bytes` (at least a few KiB each), so no budget holds
/// that many; a cap above it caps nothing.
pub const MAX_NAMESPACES: u32 = 1 << 20;
/// The most `worker_threads` may be: far more than any machine's cores, so that a
/// typo (an extra zero or three) is caught rather than obeyed.
pub const MAX_WORKER_THREADS: usize = 1024;
/// The smallest `max_filter_bytes`: 1 MiB (the `default` namespace's filters take
/// about 6 MiB with its defaults, so a smaller budget is a unit mistake).
pub const MIN_FILTER_BYTES: u64 = 1 << 20;
/// The longest of the request and connection timeouts: one hour. Longer is a unit
/// mistake, and would let a client hold a connection for that long.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most `max_concurrency` may be: Tokio's semaphores count up to
/// `usize::MAX >> 3` permits, and a million requests in progress is far beyond any
/// machine.
pub const MAX_CONCURRENCY: usize = 1 << 20;
/// The shortest bearer token: 16 characters. A token is a password sent with every
/// request; 16 random hexadecimal characters are 64 bits, which an attacker cannot
/// guess over the network. (`openssl rand -hex 16` makes a 32-character one.)
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest `shutdown_grace` or `drain_delay`: one hour. Longer is a unit mistake
/// (`600` meant as milliseconds is ten minutes); service managers kill a process
/// that takes that long to stop anyway.
pub const MAX_SHUTDOWN_WAIT: Duration = Duration::from_secs(3600);

/// Settings from one source, each optional. The file gives all of them, and the
/// `[namespaces.NAME]` tables; flags and the environment leave `namespaces` empty.
/// (Its `Debug` form shows how many tokens there are, never the tokens.)
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// `listen`.
    pub listen: Option<SocketAddr>,
    /// `resp_listen`.
    pub resp_listen: Option<SocketAddr>,
    /// `resp_namespace`.
    pub resp_namespace: Option<String>,
    /// `tls_cert`.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`.
    pub tls_key: Option<PathBuf>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `store`.
    pub store: Option<StoreUrl>,
    /// `store_pool_size`.
    pub store_pool_size: Option<usize>,
    /// `tokens`.
    pub tokens: Option<Vec<String>>,
    /// `allowed_origins`, as given (validated when merged).
    pub allowed_origins: Option<Vec<String>>,
    /// `durability`.
    pub durability: Option<Durability>,
    /// `max_body_bytes`.
    pub max_body_bytes: Option<ByteSize>,
    /// `max_body_bytes_in_flight`.
    pub max_body_bytes_in_flight: Option<ByteSize>,
    /// `max_ids`.
    pub max_ids: Option<usize>,
    /// `max_concurrency`.
    pub max_concurrency: Option<usize>,
    /// `tracker_timeout`.
    pub tracker_timeout: Option<HumanDuration>,
    /// `body_read_timeout`.
    pub body_read_timeout: Option<HumanDuration>,
    /// `header_read_timeout`.
    pub header_read_timeout: Option<HumanDuration>,
    /// `idle_timeout`.
    pub idle_timeout: Option<HumanDuration>,
    /// `max_connections`.
    pub max_connections: Option<usize>,
    /// `max_filter_bytes`.
    pub max_filter_bytes: Option<ByteSize>,
    /// `max_namespaces`.
    pub max_namespaces: Option<u32>,
    /// `cache_bytes`.
    pub cache_bytes: Option<ByteSize>,
    /// `memtable_bytes`.
    pub memtable_bytes: Option<ByteSize>,
    /// `shutdown_grace`.
    pub shutdown_grace: Option<HumanDuration>,
    /// `drain_delay`.
    pub drain_delay: Option<HumanDuration>,
    /// `worker_threads`.
    pub worker_threads: Option<usize>,
    /// `log_format`.
    pub log_format: Option<LogFormat>,
    /// `[namespaces.NAME]` tables: created or updated at start-up.
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceTable>,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("listen", &self.listen)
            .field("resp_listen", &self.resp_listen)
            .field("resp_namespace", &self.resp_namespace)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store)
            .field("store_pool_size", &self.store_pool_size)
            .field(
                "tokens",
                &self
                    .tokens
                    .as_ref()
                    .map(|t| format!("[{} redacted]", t.len())),
            )
            .field("allowed_origins", &self.allowed_origins)
            .field("durability", &self.durability)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_body_bytes_in_flight", &self.max_body_bytes_in_flight)
            .field("max_ids", &self.max_ids)
            .field("max_concurrency", &self.max_concurrency)
            .field("tracker_timeout", &self.tracker_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_filter_bytes", &self.max_filter_bytes)
            .field("max_namespaces", &self.max_namespaces)
            .field("cache_bytes", &self.cache_bytes)
            .field("memtable_bytes", &self.memtable_bytes)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("drain_delay", &self.drain_delay)
            .field("worker_threads", &self.worker_threads)
            .field("log_format", &self.log_format)
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

/// A namespace the file declares, with its whole configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct DeclaredNamespace {
    /// The configuration the namespace is created with, or changed to.
    pub config: NamespaceConfig,
    /// Whether the change may drop live generations or exact tables at start-up.
    pub drop_now: bool,
}

/// Everything `oncelyd serve` runs with, resolved and validated. (Its `Debug` form
/// shows how many tokens there are, never the tokens.)
#[derive(Clone, PartialEq)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the RESP (Redis protocol) listener; `None`: no RESP face.
    pub resp_listen: Option<SocketAddr>,
    /// The namespace RESP's `SET key value NX` marks in.
    pub resp_namespace: String,
    /// The certificate chain and key both faces serve TLS with; `None`: plain
    /// HTTP and RESP.
    pub tls: Option<TlsFiles>,
    /// Where RocksDB and the filter snapshots live (unused with `memory` durability
    /// and with a `store`).
    pub data_dir: PathBuf,
    /// The PostgreSQL database the state lives in, instead of RocksDB in `data_dir`.
    pub store: Option<StoreUrl>,
    /// The most connections the daemon holds to its PostgreSQL store.
    pub store_pool_size: usize,
    /// When a mark is acknowledged.
    pub durability: Durability,
    /// Bearer tokens; empty: no authentication.
    pub tokens: Vec<String>,
    /// Origins whose pages may send requests (a request with any other `Origin`
    /// header gets 403).
    pub allowed_origins: Vec<AllowedOrigin>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most bytes that request bodies may hold at once, charged as they arrive (see
    /// `server::extract`); a body that would take more waits briefly, then is
    /// answered 503.
    pub max_body_bytes_in_flight: usize,
    /// Most IDs in one check or check-and-mark.
    pub max_ids: usize,
    /// Most requests in progress at once; more are answered 503 at once.
    pub max_concurrency: usize,
    /// Longest wait of a request on the tracker; then 504 `deadline_exceeded`.
    pub tracker_timeout: Duration,
    /// Longest time a request body may take to arrive; then 408 `request_timeout`.
    pub body_read_timeout: Duration,
    /// Longest time a request head may take to arrive, from its first byte; then the
    /// connection is closed.
    pub header_read_timeout: Duration,
    /// Longest time a connection may stay open with no request under way.
    pub idle_timeout: Duration,
    /// Most connections open at once; `None`: derived at start-up from the
    /// descriptor limit (see `server::descriptors`).
    pub max_connections: Option<usize>,
    /// Most filter memory all namespaces may be charged, in bytes.
    pub max_filter_bytes: u64,
    /// Most namespaces, `default` included.
    pub max_namespaces: u32,
    /// RocksDB's block cache and memtable budgets.
    pub rocks: RocksOptions,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// How long `/readyz` answers 503 at shutdown while requests are still served,
    /// before the listener closes.
    pub drain_delay: Duration,
    /// Threads of the async runtime, which read, parse and answer requests (and
    /// decide most small ones); `None`: one per CPU the process may use. Applied by
    /// the runtime [`crate::server::runtime`] builds.
    pub worker_threads: Option<usize>,
    /// How log lines are written (applied by the binary as it sets up logging).
    pub log_format: LogFormat,
    /// Namespaces to create or update at start-up (`default` included, if given).
    pub namespaces: BTreeMap<String, DeclaredNamespace>,
    /// The file the settings were read from, if any.
    pub config_file: Option<PathBuf>,
    /// Things worth an operator's attention that do not stop start-up: a setting
    /// given in two places with different values, a network listener without
    /// tokens. `oncelyd serve` logs each at WARN.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("resp_listen", &self.resp_listen)
            .field("resp_namespace", &self.resp_namespace)
            .field("tls", &self.tls)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store)
            .field("store_pool_size", &self.store_pool_size)
            .field("durability", &self.durability)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("allowed_origins", &self.allowed_origins)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_body_bytes_in_flight", &self.max_body_bytes_in_flight)
            .field("max_ids", &self.max_ids)
            .field("max_concurrency", &self.max_concurrency)
            .field("tracker_timeout", &self.tracker_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_filter_bytes", &self.max_filter_bytes)
            .field("max_namespaces", &self.max_namespaces)
            .field("rocks", &self.rocks)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("drain_delay", &self.drain_delay)
            .field("worker_threads", &self.worker_threads)
            .field("log_format", &self.log_format)
            .field("namespaces", &self.namespaces)
            .field("config_file", &self.config_file)
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        let memory = machine::MemoryLimit::of_this_process();
        Self {
            listen: DEFAULT_LISTEN,
            resp_listen: None,
            resp_namespace: NamespaceName::DEFAULT.to_owned(),
            tls: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            store: None,
            store_pool_size: DEFAULT_STORE_POOL_SIZE,
            durability: Durability::default(),
            tokens: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: usize::try_from(DEFAULT_MAX_BODY_BYTES).unwrap_or(usize::MAX),
            max_body_bytes_in_flight: usize::try_from(
                memory.default_body_budget(DEFAULT_MAX_BODY_BYTES),
            )
            .unwrap_or(usize::MAX),
            max_ids: DEFAULT_MAX_IDS,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            tracker_timeout: DEFAULT_TRACKER_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
            max_filter_bytes: memory.default_filter_budget(),
            max_namespaces: DEFAULT_MAX_NAMESPACES,
            rocks: RocksOptions::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            drain_delay: DEFAULT_DRAIN_DELAY,
            worker_threads: None,
            log_format: LogFormat::Text,
            namespaces: BTreeMap::new(),
            config_file: None,
            warnings: Vec::new(),
        }
    }
}

/// Where a value came from, for the start-up warnings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Flag,
    Env,
    File,
}

/// Picks each setting's value from the sources in order of precedence, noting
/// the values that lose to a different one.
struct Merge<'a> {
    file: Option<&'a std::path::Path>,
    warnings: Vec<String>,
}

impl Merge<'_> {
    fn pick<T: PartialEq>(
        &mut self,
        key: &'static str,
        given: [(Source, Option<T>); 3],
        show: impl Fn(&T) -> String,
    ) -> Option<T> {
        let mut winner: Option<(Source, T)> = None;
        for (source, value) in given {
            let Some(value) = value else { continue };
            match &winner {
                None => winner = Some((source, value)),
                Some((won, kept)) if *kept != value => {
                    let warning = format!(
                        "{key}: {} overrides {}",
                        self.describe(key, *won, &show(kept)),
                        self.describe(key, source, &show(&value)),
                    );
                    self.warnings.push(warning);
                }
                Some(_) => {}
            }
        }
        winner.map(|(_, v)| v)
    }

    fn describe(&self, key: &str, source: Source, value: &str) -> String {
        let s = SETTINGS.iter().find(|s| s.key == key);
        match (source, s) {
            (Source::Flag, Some(s)) => format!("{} {value} (command line)", s.flag),
            (Source::Env, Some(s)) => format!("{}={value} (environment)", s.env),
            (Source::File, _) => match self.file {
                Some(path) => format!("{key} = {value} in {}", path.display()),
                None => format!("{key} = {value} in the file"),
            },
            (_, None) => format!("{key} = {value}"),
        }
    }
}

impl Settings {
    /// Resolves the flags with the environment (`vars`; the process's own for the
    /// daemon) and the configuration file they name, if any: flags over
    /// environment over file over defaults. The file's path is `flag_config`
    /// (`--config`), else `ONCELY_CONFIG`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownVariables`] for `ONCELY_*` variables that are no setting,
    /// [`Error::ConfigFile`] for a file that cannot be read or parsed,
    /// [`Error::Config`] naming the first setting out of range.
    pub fn resolve(
        flags: Layer,
        flag_config: Option<PathBuf>,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Self, Error> {
        let env = env::read(vars)?;
        let config_file = flag_config.or(env.config);
        let file = match &config_file {
            Some(path) => file::load(path)?,
            None => Layer::default(),
        };
        let mut settings = Self::merge(flags, env.layer, file, config_file)?;
        if env.tokio_worker_threads {
            settings.warnings.push(format!(
                "{} is set but not read: the daemon's threads are worker_threads \
                 (--worker-threads, ONCELY_WORKER_THREADS), one per CPU by default",
                env::TOKIO_WORKER_THREADS
            ));
        }
        Ok(settings)
    }

    /// Merges the sources, most important first, then validates.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first setting out of range.
    pub fn merge(
        flags: Layer,
        env: Layer,
        file: Layer,
        config_file: Option<PathBuf>,
    ) -> Result<Self, Error> {
        use Source::{Env, File, Flag};
        let d = Self::default();
        let file_path = config_file.clone();
        let mut m = Merge {
            file: file_path.as_deref(),
            warnings: Vec::new(),
        };
        let size = |setting: &'static str, v: Option<ByteSize>, default: usize| {
            v.map_or(Ok(default), |b| {
                usize::try_from(b.0).map_err(|_| Error::Config {
                    setting,
                    reason: format!("{b} does not fit in memory"),
                })
            })
        };
        let show_size = |b: &ByteSize| b.to_string();
        let show_duration = |d: &HumanDuration| format!("{:?}", d.0);

        // Each setting is a flag, a variable and a key of the same name.
        macro_rules! pick {
            ($key:ident, $show:expr) => {
                m.pick(
                    stringify!($key),
                    [(Flag, flags.$key), (Env, env.$key), (File, file.$key)],
                    $show,
                )
            };
        }
        let listen = pick!(listen, ToString::to_string);
        let resp_listen = pick!(resp_listen, ToString::to_string);
        let resp_namespace = pick!(resp_namespace, Clone::clone);
        let tls_cert = pick!(tls_cert, |p| p.display().to_string());
        let tls_key = pick!(tls_key, |p| p.display().to_string());
        let data_dir = pick!(data_dir, |p| p.display().to_string());
        let store = pick!(store, ToString::to_string);
        let store_pool_size = pick!(store_pool_size, ToString::to_string);
        let tokens = pick!(tokens, |t| format!("({} hidden)", t.len()));
        let origins = pick!(allowed_origins, |o| o.join(","));
        let durability = pick!(durability, ToString::to_string);
        let max_body_bytes = pick!(max_body_bytes, show_size);
        let max_body_bytes_in_flight = pick!(max_body_bytes_in_flight, show_size);
        let max_ids = pick!(max_ids, ToString::to_string);
        let max_concurrency = pick!(max_concurrency, ToString::to_string);
        let tracker_timeout = pick!(tracker_timeout, show_duration);
        let body_read_timeout = pick!(body_read_timeout, show_duration);
        let header_read_timeout = pick!(header_read_timeout, show_duration);
        let idle_timeout = pick!(idle_timeout, show_duration);
        let max_connections = pick!(max_connections, ToString::to_string);
        let max_filter_bytes = pick!(max_filter_bytes, show_size);
        let max_namespaces = pick!(max_namespaces, ToString::to_string);
        let cache_bytes = pick!(cache_bytes, show_size);
        let memtable_bytes = pick!(memtable_bytes, show_size);
        let shutdown_grace = pick!(shutdown_grace, show_duration);
        let drain_delay = pick!(drain_delay, show_duration);
        let worker_threads = pick!(worker_threads, ToString::to_string);
        let log_format = pick!(log_format, ToString::to_string);

        let allowed_origins = origins
            .unwrap_or_default()
            .iter()
            .map(|o| {
                o.parse().map_err(|reason| Error::Config {
                    setting: "allowed_origins",
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        let stores = StoreChoice {
            store: store.as_ref(),
            data_dir: data_dir.is_some(),
            pool_size: store_pool_size.is_some(),
            rocks: [
                ("cache_bytes", cache_bytes.is_some()),
                ("memtable_bytes", memtable_bytes.is_some()),
            ],
        };
        stores.check(&mut m.warnings)?;
        let tls = TlsFiles::pair(tls_cert, tls_key)?;
        let max_body_bytes = size("max_body_bytes", max_body_bytes, d.max_body_bytes)?;
        // Derived from the largest body unless given (see `machine`).
        let max_body_bytes_in_flight = match max_body_bytes_in_flight {
            Some(given) => size("max_body_bytes_in_flight", Some(given), 0)?,
            None if max_body_bytes == d.max_body_bytes => d.max_body_bytes_in_flight,
            None => size(
                "max_body_bytes_in_flight",
                Some(ByteSize(
                    machine::MemoryLimit::of_this_process()
                        .default_body_budget(u64::try_from(max_body_bytes).unwrap_or(u64::MAX)),
                )),
                0,
            )?,
        };
        let mut settings = Self {
            listen: listen.unwrap_or(d.listen),
            resp_listen,
            resp_namespace: resp_namespace.unwrap_or(d.resp_namespace),
            tls,
            data_dir: data_dir.unwrap_or(d.data_dir),
            store,
            store_pool_size: store_pool_size.unwrap_or(d.store_pool_size),
            durability: durability.unwrap_or(d.durability),
            tokens: tokens.unwrap_or_default(),
            allowed_origins,
            max_body_bytes,
            max_body_bytes_in_flight,
            max_ids: max_ids.unwrap_or(d.max_ids),
            max_concurrency: max_concurrency.unwrap_or(d.max_concurrency),
            tracker_timeout: tracker_timeout.map_or(d.tracker_timeout, |t| t.0),
            body_read_timeout: body_read_timeout.map_or(d.body_read_timeout, |t| t.0),
            header_read_timeout: header_read_timeout.map_or(d.header_read_timeout, |t| t.0),
            idle_timeout: idle_timeout.map_or(d.idle_timeout, |t| t.0),
            max_connections,
            max_filter_bytes: max_filter_bytes.map_or(d.max_filter_bytes, |b| b.0),
            max_namespaces: max_namespaces.unwrap_or(d.max_namespaces),
            rocks: RocksOptions {
                cache_bytes: size("cache_bytes", cache_bytes, d.rocks.cache_bytes)?,
                memtable_bytes: size("memtable_bytes", memtable_bytes, d.rocks.memtable_bytes)?,
            },
            shutdown_grace: shutdown_grace.map_or(d.shutdown_grace, |g| g.0),
            drain_delay: drain_delay.map_or(d.drain_delay, |g| g.0),
            worker_threads,
            log_format: log_format.unwrap_or(d.log_format),
            namespaces: declared_namespaces(&file.namespaces)?,
            config_file,
            warnings: m.warnings,
        };
        settings.validate()?;
        if settings.tokens.is_empty() && !settings.listen.ip().is_loopback() {
            settings.warnings.push(format!(
                "listening on {}, which is not a loopback address, with no tokens: anyone \
                 who can reach it can mark, claim, reconfigure and delete; set tokens \
                 (--token, ONCELY_TOKENS, or tokens in the file)",
                settings.listen
            ));
        }
        Ok(settings)
    }

    /// Checks every setting's range.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |setting: &'static str, reason: String| Err(Error::Config { setting, reason });
        let bytes = |n: usize| ByteSize(u64::try_from(n).unwrap_or(u64::MAX));
        if let Err(e) = NamespaceName::new(self.resp_namespace.as_str()) {
            return bad("resp_namespace", e.to_string());
        }
        // Port 0 on both is two ports the system picks, not one shared.
        if self
            .resp_listen
            .is_some_and(|r| r == self.listen && r.port() != 0)
        {
            return bad(
                "resp_listen",
                format!(
                    "{} is also listen's address: the two faces need two ports",
                    self.listen
                ),
            );
        }
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes", "must be at least 1 byte".into());
        }
        if bytes(self.max_body_bytes).0 > MAX_BODY_BYTES {
            return bad(
                "max_body_bytes",
                format!(
                    "{} is over the limit of 1GiB: a body is read whole into memory before \
                     it is parsed (write units: \"4MiB\")",
                    bytes(self.max_body_bytes)
                ),
            );
        }
        if self.max_body_bytes_in_flight < self.max_body_bytes {
            return bad(
                "max_body_bytes_in_flight",
                format!(
                    "{} is under max_body_bytes ({}): no body of the largest size allowed \
                     could ever be read",
                    bytes(self.max_body_bytes_in_flight),
                    bytes(self.max_body_bytes)
                ),
            );
        }
        if self.max_ids == 0 {
            return bad("max_ids", "must be at least 1".into());
        }
        if self.max_ids > MAX_IDS {
            return bad(
                "max_ids",
                format!(
                    "{} is over the limit of {MAX_IDS}: one request's IDs are marked in one \
                     write under the namespace's lock",
                    self.max_ids
                ),
            );
        }
        for (setting, value) in [
            (
                "max_body_bytes_in_flight",
                bytes(self.max_body_bytes_in_flight),
            ),
            ("max_filter_bytes", ByteSize(self.max_filter_bytes)),
            ("cache_bytes", bytes(self.rocks.cache_bytes)),
        ] {
            if value.0 > MAX_MEMORY_BYTES {
                return bad(
                    setting,
                    format!(
                        "{value} is over the limit of 1024GiB, far more memory than a machine \
                         gives a daemon (write units: \"256MiB\", \"8GiB\")"
                    ),
                );
            }
        }
        if self.max_concurrency == 0 {
            return bad("max_concurrency", "must be at least 1".into());
        }
        if !(1..=MAX_STORE_POOL_SIZE).contains(&self.store_pool_size) {
            return bad(
                "store_pool_size",
                format!(
                    "{} is outside 1 ..= {MAX_STORE_POOL_SIZE}",
                    self.store_pool_size
                ),
            );
        }
        if self.store.is_some() && self.durability == Durability::Memory {
            return bad(
                "durability",
                "memory does not apply to a PostgreSQL store: a mark is acknowledged once its \
                 transaction commits, as durable as the server's synchronous_commit makes it \
                 (leave durability unset; flush and sync mean the same there)"
                    .into(),
            );
        }
        if self.max_concurrency > MAX_CONCURRENCY {
            return bad(
                "max_concurrency",
                format!(
                    "{} is over the limit of {MAX_CONCURRENCY}",
                    self.max_concurrency
                ),
            );
        }
        for (setting, value) in [
            ("tracker_timeout", self.tracker_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return bad(setting, "must be above 0s".into());
            }
            if value > MAX_TIMEOUT {
                return bad(
                    setting,
                    format!("{value:?} is over the limit of 1h (write units: \"30s\", \"500ms\")"),
                );
            }
        }
        // Counts that may be left unset (a default derived at start-up), else 1 ..= max.
        for (setting, value, max) in [
            ("max_connections", self.max_connections, MAX_CONCURRENCY),
            ("worker_threads", self.worker_threads, MAX_WORKER_THREADS),
        ] {
            match value {
                Some(0) => return bad(setting, "must be at least 1".into()),
                Some(n) if n > max => {
                    return bad(setting, format!("{n} is over the limit of {max}"));
                }
                _ => {}
            }
        }
        if self.max_filter_bytes < MIN_FILTER_BYTES {
            return bad(
                "max_filter_bytes",
                format!(
                    "{} is under the minimum of 1MiB (write units: \"8GiB\")",
                    ByteSize(self.max_filter_bytes)
                ),
            );
        }
        if self.max_namespaces == 0 {
            return bad(
                "max_namespaces",
                "must be at least 1 (the default namespace always exists)".into(),
            );
        }
        if self.max_namespaces > MAX_NAMESPACES {
            return bad(
                "max_namespaces",
                format!(
                    "{} is over the limit of {MAX_NAMESPACES}: every namespace is charged \
                     its filters against max_filter_bytes, so no budget holds more",
                    self.max_namespaces
                ),
            );
        }
        if let Err(oncely::Error::InvalidConfig { field, reason }) = self.rocks.validate() {
            return bad(field, reason);
        }
        for (setting, value) in [
            ("shutdown_grace", self.shutdown_grace),
            ("drain_delay", self.drain_delay),
        ] {
            if value > MAX_SHUTDOWN_WAIT {
                return bad(
                    setting,
                    format!("{value:?} is over the limit of 1h (write units: \"30s\", \"500ms\")"),
                );
            }
        }
        for (i, token) in self.tokens.iter().enumerate() {
            if let Some(reason) = token_problem(token) {
                return bad("tokens", format!("token {} {reason}", i + 1));
            }
        }
        for name in self.namespaces.keys() {
            if let Err(e) = NamespaceName::new(name.as_str()) {
                return bad("namespaces", e.to_string());
            }
        }
        if self.store.is_none()
            && self.durability != Durability::Memory
            && self.data_dir.as_os_str().is_empty()
        {
            return bad("data_dir", "must not be empty".into());
        }
        Ok(())
    }
}

/// The PEM files TLS is served with (`tls_cert`, `tls_key`): read at start-up, and
/// again at each SIGHUP (see `server::tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`tls_cert`).
    pub cert: PathBuf,
    /// The private key: PKCS#8, RSA (PKCS#1) or EC (SEC1) (`tls_key`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both files or neither: one without the other is a half-done configuration,
    /// and serving plain text then would put tokens on the network in clear.
    fn pair(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<Self>, Error> {
        let empty = |setting: &'static str| Error::Config {
            setting,
            reason: "must not be empty".into(),
        };
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(cert), _) if cert.as_os_str().is_empty() => Err(empty("tls_cert")),
            (_, Some(key)) if key.as_os_str().is_empty() => Err(empty("tls_key")),
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (Some(cert), None) => Err(Error::Config {
                setting: "tls_key",
                reason: format!(
                    "tls_cert ({}) is given without tls_key: TLS needs both the \
                     certificate chain and its private key (--tls-cert and --tls-key, \
                     ONCELY_TLS_CERT and ONCELY_TLS_KEY), or neither for plain HTTP",
                    cert.display()
                ),
            }),
            (None, Some(key)) => Err(Error::Config {
                setting: "tls_cert",
                reason: format!(
                    "tls_key ({}) is given without tls_cert: TLS needs both the \
                     certificate chain and its private key (--tls-cert and --tls-key, \
                     ONCELY_TLS_CERT and ONCELY_TLS_KEY), or neither for plain HTTP",
                    key.display()
                ),
            }),
        }
    }
}

/// Which store the settings choose, and which store-specific settings were given.
struct StoreChoice<'a> {
    store: Option<&'a StoreUrl>,
    data_dir: bool,
    pool_size: bool,
    rocks: [(&'static str, bool); 2],
}

impl StoreChoice<'_> {
    /// Refuses `data_dir` with `store`: an operator who names a data directory
    /// believes the marks are kept there, and a daemon that silently kept them
    /// elsewhere would mislead every backup and capacity plan. The other settings
    /// of one store only, harmless with the other, are warned about.
    fn check(&self, warnings: &mut Vec<String>) -> Result<(), Error> {
        match self.store {
            Some(store) => {
                if self.data_dir {
                    return Err(Error::Config {
                        setting: "data_dir",
                        reason: format!(
                            "given together with store ({store}): the state lives in \
                             PostgreSQL then, and nothing is kept in a data directory; \
                             give one or the other"
                        ),
                    });
                }
                for (setting, given) in self.rocks {
                    if given {
                        warnings.push(format!(
                            "{setting} sizes the embedded RocksDB, which is not used with \
                             store ({store}): ignored"
                        ));
                    }
                }
            }
            None if self.pool_size => warnings.push(
                "store_pool_size sizes the connection pool of a PostgreSQL store, but no \
                 store is set (the state is in the embedded RocksDB): ignored"
                    .into(),
            ),
            None => {}
        }
        Ok(())
    }
}

/// What is wrong with a token, if anything (never the token itself: messages are
/// logged).
fn token_problem(token: &str) -> Option<String> {
    if token.is_empty() {
        // It would let `Authorization: Bearer ` in.
        return Some("is empty".into());
    }
    if token.contains(',') {
        return Some(
            "contains a comma: give each token its own --token (ONCELY_TOKENS is the one \
             comma-separated list), so that a token can never be split into a short one"
                .into(),
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        // It could never be sent in a header.
        return Some(
            "has characters other than visible ASCII, which cannot be sent in an \
             Authorization header"
                .into(),
        );
    }
    if token.len() < MIN_TOKEN_LEN {
        return Some(format!(
            "is {} characters long; tokens must have at least {MIN_TOKEN_LEN} (make one with \
             `openssl rand -hex 16`)",
            token.len()
        ));
    }
    None
}

/// The `[namespaces.NAME]` tables as whole configurations. Every table must give
/// every field: a field left out would silently take its default, and a default
/// replacing a namespace's setting can forget remembered IDs at the next start.
fn declared_namespaces(
    tables: &BTreeMap<String, NamespaceTable>,
) -> Result<BTreeMap<String, DeclaredNamespace>, Error> {
    let mut declared = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, table) in tables {
        if let Err(e) = NamespaceName::new(name.as_str()) {
            problems.push(e.to_string());
            continue;
        }
        match table.fields().complete() {
            Ok(config) => {
                declared.insert(
                    name.clone(),
                    DeclaredNamespace {
                        config,
                        drop_now: table.drop_now,
                    },
                );
            }
            Err(oncely::Error::MissingFields(missing)) => problems.push(format!(
                "[namespaces.{name}] is missing {}: a namespace table gives the whole \
                 configuration, so that no field silently takes its default",
                missing.join(", ")
            )),
            Err(e) => problems.push(format!("[namespaces.{name}]: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(declared)
    } else {
        Err(Error::Config {
            setting: "namespaces",
            reason: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOLE: &str = "generations = 6\ngeneration_capacity = 1000\n\
                         generation_span = \"10m\"\nfp_rate = 0.001\nexact_generations = 2\n";

    fn token(c: char) -> String {
        c.to_string().repeat(MIN_TOKEN_LEN)
    }

    fn from_file(text: &str) -> Result<Settings, Error> {
        Settings::merge(
            Layer::default(),
            Layer::default(),
            file::parse(text).unwrap(),
            None,
        )
    }

    #[test]
    fn tokios_own_thread_variable_is_warned_about_not_read() {
        let resolve = |vars: &[(&str, &str)]| {
            let vars = vars.iter().map(|(k, v)| ((*k).into(), (*v).into()));
            Settings::resolve(Layer::default(), None, vars.collect::<Vec<_>>()).unwrap()
        };
        // A value tokio would panic on is no error here: it is never read.
        let s = resolve(&[
            ("TOKIO_WORKER_THREADS", "abc"),
            ("ONCELY_WORKER_THREADS", "3"),
        ]);
        assert_eq!(s.worker_threads, Some(3));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("TOKIO_WORKER_THREADS is set but not read"));
        assert!(resolve(&[]).warnings.is_empty());
    }

    #[test]
    fn file_settings_and_precedence() {
        let file = file::parse(&format!(
            r#"
            listen = "0.0.0.0:9000"
            max_ids = 5
            max_body_bytes = "1MiB"
            shutdown_grace = "3 s"
            drain_delay = "1s"
            tokens = ["{}"]
            durability = "sync"
            allowed_origins = ["https://App.example:443"]

            [namespaces.orders]
            {WHOLE}
            "#,
            token('f')
        ))
        .unwrap();
        let flags = Layer {
            max_ids: Some(7),
            ..Layer::default()
        };
        let env = Layer {
            max_ids: Some(6),
            durability: Some(Durability::Flush),
            ..Layer::default()
        };
        let s = Settings::merge(flags, env, file, Some("o.toml".into())).unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            s.max_ids, 7,
            "a flag wins over the environment and the file"
        );
        assert_eq!(
            s.durability,
            Durability::Flush,
            "the environment wins over the file"
        );
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.shutdown_grace, Duration::from_secs(3));
        assert_eq!(s.drain_delay, Duration::from_secs(1));
        assert_eq!(s.tokens, [token('f')]);
        assert_eq!(s.allowed_origins[0].as_str(), "https://app.example");
        assert_eq!(s.namespaces["orders"].config.generations(), 6);
        assert!(!s.namespaces["orders"].drop_now);
        assert_eq!(s.max_concurrency, DEFAULT_MAX_CONCURRENCY);
        assert_eq!(
            s.warnings,
            [
                "durability: ONCELY_DURABILITY=flush (environment) overrides durability = sync \
                 in o.toml",
                "max_ids: --max-ids 7 (command line) overrides ONCELY_MAX_IDS=6 (environment)",
                "max_ids: --max-ids 7 (command line) overrides max_ids = 5 in o.toml",
            ]
        );
    }

    #[test]
    fn equal_values_in_two_places_are_no_warning() {
        let env = Layer {
            data_dir: Some("/var/lib/oncely".into()),
            ..Layer::default()
        };
        let file = file::parse("data_dir = \"/var/lib/oncely\"").unwrap();
        let s = Settings::merge(Layer::default(), env, file, None).unwrap();
        assert_eq!(s.warnings, Vec::<String>::new());
    }

    #[test]
    fn defaults_without_a_file() {
        let s =
            Settings::merge(Layer::default(), Layer::default(), Layer::default(), None).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn a_network_listener_without_tokens_is_warned_about() {
        let s = from_file("listen = \"0.0.0.0:7070\"").unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("not a loopback address"), "{s:?}");
        let s = from_file(&format!(
            "listen = \"0.0.0.0:7070\"\ntokens = [\"{}\"]",
            token('t')
        ))
        .unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        for loopback in ["127.0.0.1:7070", "[::1]:7070"] {
            let s = from_file(&format!("listen = \"{loopback}\"")).unwrap();
            assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        }
    }

    #[test]
    fn namespace_tables_must_be_whole() {
        let err = from_file("[namespaces.orders]\ngenerations = 6\n[namespaces.b]\nfp_rate = 0.1")
            .unwrap_err();
        let Error::Config { setting, reason } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*setting, "namespaces");
        assert!(
            reason.contains(
                "[namespaces.orders] is missing generation_capacity, generation_span, fp_rate, \
                 exact_generations"
            ),
            "{reason}"
        );
        assert!(
            reason.contains(
                "[namespaces.b] is missing generations, generation_capacity, generation_span, \
                 exact_generations"
            ),
            "{reason}"
        );
        let err = from_file(&format!(
            "[namespaces.orders]\n{}",
            WHOLE.replace("0.001", "2.0")
        ))
        .unwrap_err();
        assert!(err.to_string().contains("fp_rate"), "{err}");
        let s = from_file(&format!("[namespaces.orders]\n{WHOLE}drop_now = true")).unwrap();
        assert!(s.namespaces["orders"].drop_now);
    }

    #[test]
    fn a_store_takes_the_place_of_the_data_directory() {
        let url = "postgres://oncely:s3cret@db1:5432,db2:5432/app?target_session_attrs=read-write";
        let s = from_file(&format!("store = \"{url}\"\nstore_pool_size = 4")).unwrap();
        assert_eq!(s.store.as_ref().map(StoreUrl::expose), Some(url));
        assert_eq!(s.store_pool_size, 4);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");

        // A data directory beside a store is a mistake about where marks are kept.
        let err = from_file(&format!(
            "store = \"{url}\"\ndata_dir = \"/var/lib/oncely\""
        ))
        .unwrap_err();
        let Error::Config { setting, reason } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*setting, "data_dir");
        assert!(reason.contains("give one or the other"), "{reason}");
        assert!(!reason.contains("s3cret"), "{reason}");
        // Also when they come from different places.
        let flags = Layer {
            data_dir: Some("./data".into()),
            ..Layer::default()
        };
        let env = Layer {
            store: Some(url.parse().unwrap()),
            ..Layer::default()
        };
        assert!(Settings::merge(flags, env, Layer::default(), None).is_err());

        // memory durability means nothing there.
        let err = from_file(&format!("store = \"{url}\"\ndurability = \"memory\"")).unwrap_err();
        let Error::Config { setting, reason } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*setting, "durability");
        assert!(reason.contains("transaction commits"), "{reason}");
        for d in ["flush", "sync"] {
            assert!(from_file(&format!("store = \"{url}\"\ndurability = \"{d}\"")).is_ok());
        }

        // RocksDB's budgets are ignored with a store, the pool without one: said so.
        let s = from_file(&format!("store = \"{url}\"\ncache_bytes = \"256MiB\"")).unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].starts_with("cache_bytes sizes the embedded RocksDB"));
        let s = from_file("store_pool_size = 8").unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(
            s.warnings[0].contains("no store is set"),
            "{:?}",
            s.warnings
        );

        // A store URL that overrides another is shown without its password.
        let env = Layer {
            store: Some("postgres://a:pw1@db1/app".parse().unwrap()),
            ..Layer::default()
        };
        let file = file::parse("store = \"postgres://b:pw2@db2/app\"").unwrap();
        let s = Settings::merge(Layer::default(), env, file, None).unwrap();
        assert_eq!(
            s.warnings,
            [
                "store: ONCELY_STORE=postgres://a:***@db1/app (environment) overrides store = \
              postgres://b:***@db2/app in the file"
            ]
        );
    }

    #[test]
    fn tls_takes_a_certificate_and_a_key_or_neither() {
        let s = from_file("tls_cert = \"/etc/oncely/cert.pem\"\ntls_key = \"/etc/oncely/key.pem\"")
            .unwrap();
        assert_eq!(
            s.tls,
            Some(TlsFiles {
                cert: "/etc/oncely/cert.pem".into(),
                key: "/etc/oncely/key.pem".into(),
            })
        );
        assert_eq!(from_file("").unwrap().tls, None);
        for (file, setting, says) in [
            ("tls_cert = \"c.pem\"", "tls_key", "without tls_key"),
            ("tls_key = \"k.pem\"", "tls_cert", "without tls_cert"),
            ("tls_cert = \"\"\ntls_key = \"k.pem\"", "tls_cert", "empty"),
        ] {
            match from_file(file) {
                Err(Error::Config { setting: s, reason }) => {
                    assert_eq!(s, setting, "{file}");
                    assert!(reason.contains(says), "{file}: {reason}");
                }
                other => panic!("{file}: {other:?}"),
            }
        }
        // From different places, the two make one pair.
        let flags = Layer {
            tls_cert: Some("a.pem".into()),
            ..Layer::default()
        };
        let env = Layer {
            tls_key: Some("b.pem".into()),
            ..Layer::default()
        };
        let s = Settings::merge(flags, env, Layer::default(), None).unwrap();
        assert_eq!(s.tls.map(|t| t.key), Some("b.pem".into()));
    }

    #[test]
    fn tokens_are_whole_long_and_sendable() {
        let reason_of = |tokens: &[&str]| {
            let s = Settings {
                tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
                ..Settings::default()
            };
            match s.validate() {
                Err(Error::Config { setting, reason }) => {
                    assert_eq!(setting, "tokens");
                    reason
                }
                other => panic!("{tokens:?}: {other:?}"),
            }
        };
        assert!(reason_of(&[""]).contains("empty"));
        assert!(reason_of(&["x,correct-horse-battery"]).contains("comma"));
        assert!(reason_of(&["correct horse battery staple"]).contains("visible ASCII"));
        let short = reason_of(&["x"]);
        assert!(short.contains("token 1 is 1 characters long"), "{short}");
        assert!(reason_of(&[&token('a'), "short"]).contains("token 2"));
        let ok = Settings {
            tokens: vec![token('a')],
            ..Settings::default()
        };
        assert_eq!(ok.validate().ok(), Some(()));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let setting_of = |file: &str| match from_file(file) {
            Err(Error::Config { setting, .. }) => setting,
            other => panic!("{file}: expected a config error, got {other:?}"),
        };
        assert_eq!(setting_of("max_ids = 0"), "max_ids");
        assert_eq!(setting_of("max_concurrency = 0"), "max_concurrency");
        assert_eq!(setting_of("max_concurrency = 2000000"), "max_concurrency");
        assert_eq!(setting_of("store_pool_size = 0"), "store_pool_size");
        assert_eq!(setting_of("store_pool_size = 5000"), "store_pool_size");
        assert_eq!(setting_of("max_body_bytes = 0"), "max_body_bytes");
        assert_eq!(setting_of("max_body_bytes = \"64GiB\""), "max_body_bytes");
        assert_eq!(setting_of("max_body_bytes = \"1025MiB\""), "max_body_bytes");
        assert_eq!(setting_of("max_ids = 1000000000000"), "max_ids");
        assert_eq!(setting_of("max_ids = 1000001"), "max_ids");
        assert_eq!(
            setting_of("max_body_bytes_in_flight = \"1MiB\""),
            "max_body_bytes_in_flight"
        );
        assert_eq!(
            setting_of("max_body_bytes = \"8MiB\"\nmax_body_bytes_in_flight = \"4MiB\""),
            "max_body_bytes_in_flight"
        );
        assert_eq!(
            setting_of("max_body_bytes_in_flight = \"1025GiB\""),
            "max_body_bytes_in_flight"
        );
        assert_eq!(
            setting_of("max_filter_bytes = \"1025GiB\""),
            "max_filter_bytes"
        );
        assert_eq!(setting_of("cache_bytes = \"1025GiB\""), "cache_bytes");
        assert_eq!(setting_of("max_namespaces = 2000000"), "max_namespaces");
        assert_eq!(setting_of("memtable_bytes = 64"), "memtable_bytes");
        assert_eq!(setting_of("cache_bytes = \"32MiB\""), "cache_bytes");
        assert_eq!(setting_of("shutdown_grace = \"2h\""), "shutdown_grace");
        assert_eq!(setting_of("drain_delay = 7200"), "drain_delay");
        assert_eq!(setting_of("tracker_timeout = \"0s\""), "tracker_timeout");
        assert_eq!(
            setting_of("body_read_timeout = \"2h\""),
            "body_read_timeout"
        );
        assert_eq!(setting_of("header_read_timeout = 0"), "header_read_timeout");
        assert_eq!(setting_of("idle_timeout = 3601"), "idle_timeout");
        assert_eq!(setting_of("max_connections = 0"), "max_connections");
        assert_eq!(setting_of("max_connections = 2000000"), "max_connections");
        assert_eq!(setting_of("max_filter_bytes = 4096"), "max_filter_bytes");
        assert_eq!(setting_of("max_namespaces = 0"), "max_namespaces");
        assert_eq!(setting_of("worker_threads = 0"), "worker_threads");
        assert_eq!(setting_of("worker_threads = 20000"), "worker_threads");
        assert_eq!(setting_of("tokens = [\"\"]"), "tokens");
        assert_eq!(setting_of("tokens = [\"a b\"]"), "tokens");
        assert_eq!(setting_of("allowed_origins = [\"*\"]"), "allowed_origins");
        assert_eq!(
            setting_of(&format!("[namespaces.\"no/slash\"]\n{WHOLE}")),
            "namespaces"
        );
        assert_eq!(
            setting_of(&format!("[namespaces.\"..\"]\n{WHOLE}")),
            "namespaces"
        );
        assert_eq!(
            setting_of(&format!("[namespaces.\".\"]\n{WHOLE}")),
            "namespaces"
        );
    }

    #[test]
    fn sizes_and_counts_up_to_their_limits_are_accepted() {
        let s = from_file(
            "max_body_bytes = \"1GiB\"\nmax_ids = 1000000\nmax_namespaces = 1048576\n\
             max_body_bytes_in_flight = \"1024GiB\"",
        )
        .unwrap();
        assert_eq!(s.max_body_bytes, 1 << 30);
        assert_eq!(s.max_body_bytes_in_flight, 1 << 40);
        assert_eq!(s.max_ids, MAX_IDS);
        let err = from_file("max_ids = 1000001").unwrap_err().to_string();
        assert!(
            err.contains("max_ids: 1000001 is over the limit of 1000000"),
            "{err}"
        );
        let err = from_file("max_body_bytes = \"64GiB\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_body_bytes: 64GiB is over the limit of 1GiB"),
            "{err}"
        );
    }

    #[test]
    fn the_body_budget_defaults_to_a_share_of_memory_holding_the_largest_body() {
        let memory = machine::MemoryLimit::of_this_process();
        let s = from_file("").unwrap();
        assert_eq!(
            s.max_body_bytes_in_flight as u64,
            memory.default_body_budget(DEFAULT_MAX_BODY_BYTES)
        );
        // A larger body limit raises the default to hold at least one such body.
        let s = from_file("max_body_bytes = \"512MiB\"").unwrap();
        assert_eq!(s.max_body_bytes_in_flight, 512 << 20);
        let s = from_file("max_body_bytes_in_flight = \"32MiB\"").unwrap();
        assert_eq!(s.max_body_bytes_in_flight, 32 << 20);
    }

    #[test]
    fn the_reference_lists_every_setting_under_its_three_names() {
        let doc = include_str!("../../../docs/configuration.md");
        for s in SETTINGS {
            assert!(doc.contains(&format!("`{}", s.flag)), "{} missing", s.flag);
            assert!(doc.contains(&format!("`{}", s.env)), "{} missing", s.env);
            if s.in_file {
                assert!(doc.contains(&format!("`{}", s.key)), "{} missing", s.key);
            }
        }
        assert!(doc.contains(&format!("`{}`", env::TOKEN)));
        for name in env::OTHER_PROGRAMS.iter().chain(&env::HARNESS_PREFIXES) {
            assert!(doc.contains(&format!("`{name}`")), "{name} missing");
        }
    }

    #[test]
    fn every_setting_but_config_is_a_file_key() {
        for s in SETTINGS {
            let text = format!("{} = 1", s.key);
            let accepted = match file::parse(&text) {
                Ok(_) => true,
                // A type error means the key is known.
                Err(e) => !e.contains("unknown field"),
            };
            assert_eq!(accepted, s.in_file, "{}: {text}", s.key);
            // Lists take one item per flag, so their flags are singular.
            let flag = match s.key {
                "tokens" => "--token".to_owned(),
                "allowed_origins" => "--allowed-origin".to_owned(),
                key => format!("--{}", key.replace('_', "-")),
            };
            assert_eq!(s.flag, flag);
            assert_eq!(s.env, format!("ONCELY_{}", s.key.to_ascii_uppercase()));
        }
    }
}
