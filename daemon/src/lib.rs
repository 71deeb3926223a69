//! `oncelyd`: the Oncely daemon and its tools.
//!
//! Many consumers share one `oncelyd` as their dedup authority: it serves the
//! [`oncely`] library's check-and-mark over HTTP, on an embedded RocksDB. The same
//! binary carries two tools for operators: `oncelyd tune`, which sizes a namespace's
//! filters and measures their false-positive rate, and `oncelyd load`, a load generator
//! for a running daemon.
//!
//! The binary itself only parses the command line and sets up logging; everything it
//! runs lives here, so it can be tested without a process:
//!
//! * [`cli`]: the command line (clap types), one subcommand per tool.
//! * [`config`]: `oncelyd serve`'s settings from flags, environment and a TOML file.
//! * [`server`]: `oncelyd serve`: the axum application ([`server::app`]), start-up,
//!   graceful shutdown.
//! * [`tune`]: `oncelyd tune`: sizing report, measurement, text and JSON output, plot.
//! * [`load`]: `oncelyd load`: a load generator for a running daemon, IDs per
//!   second, latency percentiles, verdict counts.
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

    /// The tracker could not be opened (damaged store, unusable data directory, ...).
    #[error("cannot open the data directory {}: {source}", path.display())]
    Open {
        /// The data directory (empty with `memory` durability).
        path: PathBuf,
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
