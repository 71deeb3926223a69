//! The command line: `oncelyd <command> [options]`.
//!
//! Each tool is one variant of [`Command`] with its own argument struct, so adding a
//! command is one variant, one struct and one arm in `main`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Size a namespace's Bloom filters and, optionally, measure their false-positive rate.
    Tune(TuneArgs),
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
    /// aims at 1 - (1 - fp)^(1/generations).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
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
