//! The command line: `oncelyd <command> [options]`.
//!
//! Each tool is one variant of [`Command`] with its own argument struct, so adding a
//! command is one variant, one struct and one arm in `main`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use oncely::{Durability, HumanDuration};

use crate::config::{ByteSize, Layer, LogFormat, StoreUrl, parse_duration};

/// `oncelyd`: the Oncely dedup daemon and its tools.
#[derive(Debug, Parser)]
#[command(name = "oncelyd", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: the shared HTTP dedup authority, on an embedded RocksDB or on
    /// PostgreSQL (--store).
    // Boxed: the serve flags are most of the enum's size, and parsed once.
    Serve(Box<ServeArgs>),
    /// Size a namespace's Bloom filters and, optionally, measure their false-positive rate.
    Tune(TuneArgs),
    /// Drive a running daemon with batches of unique IDs; report IDs per second and
    /// latency percentiles.
    Load(LoadArgs),
}

/// Arguments of `oncelyd serve`: the settings' flags.
///
/// Every setting is optional here: one not given on the command line is read from
/// its `ONCELY_*` environment variable, then from the `--config` file, then takes
/// its default ([`crate::config`] owns the settings and merges them).
/// `docs/configuration.md` is the reference.
#[derive(Debug, Clone, Default, Args)]
#[command(
    after_help = "Every option can also be given as an ONCELY_* environment variable \
    (--max-ids: ONCELY_MAX_IDS; --token: ONCELY_TOKENS, comma-separated, or ONCELY_TOKEN for \
    one) or as a key of the --config file (max_ids). A flag wins over the environment, the \
    environment over the file. An unknown ONCELY_* variable stops start-up. See \
    docs/configuration.md."
)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070]. Port 0 picks a free port; the
    /// start-up log line says which.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Data directory: RocksDB and the filter snapshots [default: ./data]. Not with
    /// --store.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Keep the state in PostgreSQL instead of the embedded RocksDB: a URL such as
    /// postgres://oncely@db1:5432,db2:5432/oncely?target_session_attrs=read-write.
    /// Every daemon given the same database is one dedup authority [default: none,
    /// the embedded RocksDB in --data-dir].
    #[arg(long, value_name = "URL")]
    pub store: Option<StoreUrl>,

    /// Also serve the Redis protocol (RESP2 and RESP3) on this address, beside HTTP:
    /// `SET key 1 NX PX ms`, `BF.ADD`, `ONCELY.*`, with the same tracker, tokens,
    /// limits and metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    pub resp_listen: Option<SocketAddr>,

    /// The namespace RESP's `SET key value NX` marks keys in [default: default].
    #[arg(long, value_name = "NAME")]
    pub resp_namespace: Option<String>,

    /// Serve HTTP (and RESP, with --resp-listen) over TLS with this PEM certificate
    /// chain, leaf first; needs --tls-key. Both files are read again at SIGHUP
    /// [default: none, plain HTTP].
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, RSA or EC); needs --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Most connections to the PostgreSQL store [default: 16].
    #[arg(long, value_name = "N")]
    pub store_pool_size: Option<usize>,

    /// TOML file with settings (the same names as these options, in snake_case) and
    /// `[namespaces.NAME]` tables. No file is read unless given.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A bearer token clients must present, taken whole (repeat the option for more;
    /// at least 16 characters). With any token configured, every route but /healthz
    /// and /readyz needs `Authorization: Bearer <token>`.
    #[arg(long = "token", value_name = "TOKEN")]
    pub tokens: Vec<String>,

    /// An origin (https://app.example) whose web pages may send requests (repeatable).
    /// A request with any other Origin header is refused with 403 [default: none].
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// When a mark is acknowledged: flush (survives kill -9), sync (survives power
    /// loss) or memory (survives nothing) [default: flush].
    #[arg(long, value_name = "MODE")]
    pub durability: Option<Durability>,

    /// Largest request body; larger ones are answered 413 (a declared Content-Length
    /// over it at once, before the body is read) [default: 4MiB; at most 1GiB].
    #[arg(long, value_name = "SIZE")]
    pub max_body_bytes: Option<ByteSize>,

    /// Most bytes all request bodies together may hold, charged as they arrive; a
    /// body that would take more waits up to a second, then is answered 503
    /// overloaded [default: an eighth of the memory limit, at most 256MiB, at least
    /// --max-body-bytes].
    #[arg(long, value_name = "SIZE")]
    pub max_body_bytes_in_flight: Option<ByteSize>,

    /// Most IDs in one check or check-and-mark; more are answered 400 [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_ids: Option<usize>,

    /// Most requests in progress at once; more are answered 503 at once rather than
    /// queued [default: 256].
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,

    /// Longest wait of a request on the tracker; past it the answer is 504
    /// deadline_exceeded and the call may still complete (retry with the same owner
    /// token to learn its outcome) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tracker_timeout: Option<HumanDuration>,

    /// Longest time a request body may take to arrive after its head; past it the
    /// answer is 408 request_timeout and nothing is done [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub body_read_timeout: Option<HumanDuration>,

    /// Longest time a request head may take to arrive, from its first byte; past it
    /// the connection is closed [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub header_read_timeout: Option<HumanDuration>,

    /// Longest time a connection may stay open with no request under way [default:
    /// 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<HumanDuration>,

    /// Most connections open at once; at the cap no more are accepted until one
    /// closes [default: 4096, less when the descriptor limit needs it].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most Bloom filter memory all namespaces together may be charged; a namespace
    /// change that would exceed it is refused with 409 over_budget [default: half of
    /// the memory limit: the cgroup's, or the machine's].
    #[arg(long, value_name = "SIZE")]
    pub max_filter_bytes: Option<ByteSize>,

    /// Most namespaces, default included; one more is refused with 409
    /// too_many_namespaces [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_namespaces: Option<u32>,

    /// RocksDB block cache, memtables included [default: 128MiB].
    #[arg(long, value_name = "SIZE")]
    pub cache_bytes: Option<ByteSize>,

    /// RocksDB memtable budget, charged to the cache; at least 1MiB [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    pub memtable_bytes: Option<ByteSize>,

    /// After the drain, how long requests in progress get to finish [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<HumanDuration>,

    /// At SIGTERM or SIGINT, how long /readyz answers 503 while requests are still
    /// served, before the listener closes; a second signal cuts it short [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_delay: Option<HumanDuration>,

    /// Threads that read, parse and answer requests (the async runtime's workers):
    /// fewer than the CPUs when the daemon shares its machine with busy clients
    /// [default: one per CPU the process may use].
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,

    /// How log lines are written to standard error: text (for people) or json (one
    /// object a line, for log collectors) [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The settings the flags give.
    #[must_use]
    pub fn layer(&self) -> Layer {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        Layer {
            listen: self.listen,
            resp_listen: self.resp_listen,
            resp_namespace: self.resp_namespace.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            store_pool_size: self.store_pool_size,
            tokens: list(&self.tokens),
            allowed_origins: list(&self.allowed_origins),
            durability: self.durability,
            max_body_bytes: self.max_body_bytes,
            max_body_bytes_in_flight: self.max_body_bytes_in_flight,
            max_ids: self.max_ids,
            max_concurrency: self.max_concurrency,
            tracker_timeout: self.tracker_timeout,
            body_read_timeout: self.body_read_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_filter_bytes: self.max_filter_bytes,
            max_namespaces: self.max_namespaces,
            cache_bytes: self.cache_bytes,
            memtable_bytes: self.memtable_bytes,
            shutdown_grace: self.shutdown_grace,
            drain_delay: self.drain_delay,
            worker_threads: self.worker_threads,
            log_format: self.log_format,
            namespaces: std::collections::BTreeMap::new(),
        }
    }
}

/// The seed `oncelyd tune` uses unless told otherwise: fixed, so that two runs with the
/// same parameters measure the same filter and print the same numbers.
pub const DEFAULT_TUNE_SEED: u64 = 0x6f6e_6365_6c79; // "oncely" in ASCII

/// Arguments of `oncelyd tune`.
///
/// Numbers accept a leading minus sign so that a negative value reaches validation,
/// which names the field, instead of being mistaken for an option.
#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    /// IDs one generation holds before it seals (the namespace's generation_capacity).
    #[arg(long, allow_negative_numbers = true)]
    pub capacity: u64,

    /// Target false-positive rate of a check across all live generations (fp_rate),
    /// strictly between 0 and 1.
    #[arg(long, allow_negative_numbers = true)]
    pub fp: f64,

    /// Live generations the target rate is split over; each generation's filter then
    /// aims at 1 - (1 - fp)^(1/generations). The default is a namespace's.
    #[arg(
        long,
        default_value_t = oncely::NamespaceConfig::default().generations(),
        allow_negative_numbers = true
    )]
    pub generations: u32,

    /// Measure: fill one generation's filter with --capacity random 16-byte IDs, then
    /// probe it with this many IDs it never saw.
    #[arg(long, value_name = "PROBES", allow_negative_numbers = true)]
    pub measure: Option<u64>,

    /// Print one JSON object on standard output instead of the text report.
    #[arg(long)]
    pub json: bool,

    /// Draw the theoretical and measured false-positive rate against bits per key
    /// around the chosen size into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Seed of the random IDs and of the filter's hash, for reproducible measurements.
    #[arg(long, default_value_t = DEFAULT_TUNE_SEED)]
    pub seed: u64,
}

/// Arguments of `oncelyd load`.
///
/// Each of `--concurrency` tasks keeps one keep-alive HTTP/1.1 connection and one
/// request in flight on it, sending check-and-mark batches of `--batch` IDs until
/// `--duration` has passed (or `--ids` IDs were sent), as fast as answers come or,
/// with `--rate`, on a steady schedule. IDs are 16 random-looking bytes written as 32
/// lowercase hex characters; a `--duplicates` fraction of them repeats IDs the same
/// task had marked earlier.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The daemon's base URL, for example http://127.0.0.1:7070.
    #[arg(long, value_name = "URL")]
    pub url: String,

    /// Namespace to mark into. It must exist.
    #[arg(long, default_value = "default", value_name = "NS")]
    pub namespace: String,

    /// IDs per check-and-mark request (1: single-ID requests). At most the daemon's
    /// max_ids.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub batch: usize,

    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 4, value_name = "C")]
    pub concurrency: usize,

    /// How long to send for; requests in flight at the end still count.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: HumanDuration,

    /// Stop after sending this many IDs, if that comes before --duration.
    #[arg(long, value_name = "N")]
    pub ids: Option<u64>,

    /// A steady target rate of IDs per second across all connections [default:
    /// unlimited, as fast as the connections go]. Requests are sent on a fixed
    /// schedule, one batch every batch/rate seconds; a request whose time passed
    /// while every connection was busy is dropped, not made up later, and counted in
    /// the report, which says when the achieved rate fell below the target.
    #[arg(
        long,
        value_name = "IDS_PER_SEC",
        value_parser = parse_rate,
        allow_negative_numbers = true
    )]
    pub rate: Option<f64>,

    /// Fraction of IDs, from 0 to 1 (exclusive), that repeat an ID already marked, so
    /// the daemon answers duplicate for them.
    #[arg(
        long,
        default_value_t = 0.1,
        value_name = "FRACTION",
        allow_negative_numbers = true
    )]
    pub duplicates: f64,

    /// Bearer token, when the daemon has tokens configured.
    #[arg(
        long,
        env = "ONCELY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Print one JSON object on standard output instead of the text report (and no
    /// progress lines on standard error).
    #[arg(long)]
    pub json: bool,

    /// Seed of the IDs and of the choice of repeats [default: random, printed in the
    /// report]. The same seed against a fresh daemon sends the same IDs.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Worker threads of the load generator's runtime (1: everything on the main
    /// thread). It shares the machine with the daemon when both run on one host:
    /// keep this small.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
}

/// Parses `--rate`: a finite number of IDs per second above 0. (Clap's message
/// already quotes the value.)
fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| "not a number of IDs per second, like 2000 or 2.5e4".to_owned())?;
    if !rate.is_finite() {
        return Err("not a finite number of IDs per second".into());
    }
    if rate <= 0.0 {
        return Err(
            "the rate must be above 0 IDs per second (leave --rate out for no limit)".into(),
        );
    }
    Ok(rate)
}
