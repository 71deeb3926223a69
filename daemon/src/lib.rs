//! `oncelyd`: the Oncely daemon and its tools.
//!
//! Many consumers share one `oncelyd` as their dedup authority: it serves the
//! [`oncely`] library's check-and-mark over HTTP, on an embedded RocksDB or on
//! PostgreSQL, where any number of daemons sharing a database are one authority.
//! The same binary carries two tools for operators: `oncelyd tune`, which sizes a
//! namespace's filters and measures their false-positive rate, and `oncelyd load`, a
//! load generator for a running daemon.
//!
//! The binary itself only parses the command line and sets up logging; everything it
//! runs lives here, so it can be tested without a process:
//!
//! * [`cli`]: the command line (clap types), one subcommand per tool.
//! * [`config`]: `oncelyd serve`'s settings (names, defaults, validation) from
//!   flags, environment and a TOML file; [`cli`] parses the flags for it.
//! * [`server`]: `oncelyd serve`: the axum application ([`server::app`]), start-up,
//!   graceful shutdown.
//! * [`tune`]: `oncelyd tune`: sizing report, measurement, text and JSON output, plot.
//! * [`load`]: `oncelyd load`: a load generator for a running daemon, IDs per
//!   second, latency percentiles, verdict counts.
//! * [`logging`]: where log lines go and how they are written (`log_format`).
//!
//! The HTTP API's wire types and the typed client live in their own light crate,
//! [`oncely_client`]: the server parses its requests and writes its answers with
//! those types and derives its OpenAPI document from them, so server and clients
//! cannot drift apart, and a consumer service builds the client without the server.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

pub mod cli;
pub mod config;
pub mod load;
pub mod logging;
pub mod resp;
pub mod server;
pub mod tune;

/// Everything that can go wrong in `oncelyd`'s commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The library refused a parameter or an operation (bad input names its field).
    #[error(transparent)]
    Oncely(#[from] oncely::Error),

    /// A plot could not be drawn.
    #[error("cannot draw the plot: {reason}")]
    PlotDraw {
        /// What the plotting library reported.
        reason: String,
    },

    /// A plot could not be written to its file.
    #[error("cannot write the plot to {}: {source}", path.display())]
    PlotWrite {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The report could not be written to its output (standard output for the CLI).
    #[error("cannot write the report: {0}")]
    Output(#[source] io::Error),

    /// A setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The setting, by its file name (`max_ids`; `--max-ids`, `ONCELY_MAX_IDS`).
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// `ONCELY_*` environment variables that are no setting of `oncelyd serve`, each
    /// with the setting it probably meant.
    #[error(
        "unknown environment variable(s): {}; every ONCELY_* variable must be a setting of \
         oncelyd serve (see docs/configuration.md)",
        .0.join(", ")
    )]
    UnknownVariables(Vec<String>),

    /// The configuration file could not be read or parsed.
    #[error("cannot use the configuration file {}: {reason}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What went wrong (the parser's message names the key and line).
        reason: String,
    },

    /// A namespace declared in the configuration could not be created or updated.
    #[error("cannot configure namespace {namespace:?} from the configuration: {source}")]
    Namespace {
        /// The namespace.
        namespace: String,
        /// What the library said.
        #[source]
        source: oncely::Error,
    },

    /// A namespace table of the configuration file would drop live generations or
    /// exact tables of the existing namespace, and the table does not say
    /// `drop_now = true`. Nothing was dropped.
    #[error(
        "[namespaces.{namespace}] would forget remembered IDs at start-up: {generations} \
         generation(s) would leave the ring and {exact_tables} exact table(s) would be \
         dropped; add `drop_now = true` to the table to allow it, or change the namespace \
         gradually"
    )]
    NamespaceWouldDrop {
        /// The namespace.
        namespace: String,
        /// Live generations that would leave the ring.
        generations: u32,
        /// Generations that would lose their exact table.
        exact_tables: u32,
    },

    /// The tracker could not be opened (damaged store, unusable data directory, ...).
    #[error("cannot open the data directory {}: {source}", path.display())]
    Open {
        /// The data directory (empty with `memory` durability).
        path: PathBuf,
        /// What the library said.
        #[source]
        source: oncely::Error,
    },

    /// The PostgreSQL store could not be opened (unreachable, refused, a schema
    /// newer than this build, ...).
    // The cause is not repeated in the message: `main` prints the chain.
    #[error("cannot open the PostgreSQL store {store}")]
    OpenStore {
        /// The store's URL, password masked.
        store: String,
        /// What the library said.
        #[source]
        source: oncely::Error,
    },

    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The server failed while running (accepting connections, the runtime).
    #[error("server error: {0}")]
    Serve(#[source] io::Error),

    /// A third stop request ended the wait for the final flush at shutdown;
    /// acknowledged marks are in the write-ahead log.
    #[error(
        "stopped before the tracker was closed (third signal); acknowledged marks are in the \
         write-ahead log, and the next start rebuilds the open filters"
    )]
    Interrupted,

    /// Closing the tracker at shutdown failed; acknowledged marks are still in the
    /// write-ahead log.
    #[error("cannot close the tracker cleanly: {0}")]
    Close(#[source] oncely::Error),

    /// A request to a running daemon failed (`oncelyd load`'s first look at it).
    #[error(transparent)]
    Client(#[from] oncely_client::Error),

    /// `oncelyd load` ran, but requests failed: its report's rates and latencies
    /// count only the requests answered 200.
    #[error(
        "{failed} of {sent} requests failed: {causes}; the report's rates and latencies \
         count only the requests answered 200"
    )]
    LoadFailed {
        /// Requests that failed.
        failed: u64,
        /// Requests sent, failed or not.
        sent: u64,
        /// The failures by cause, with the daemon's error codes and messages.
        causes: String,
    },

    /// A tool's async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
}
