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
//! * [`tune`]: `oncelyd tune`: sizing report, measurement, text and JSON output, plot.

use std::io;
use std::path::PathBuf;

pub mod cli;
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
}
