//! The `oncelyd` binary: parses the command line, sets up logging and hands over to
//! the `oncelyd` library, where every command lives.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use oncelyd::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line; returning the error from `main`
            // would print its Debug form, with a backtrace whenever RUST_BACKTRACE is set.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Tune(args) => {
            let mut out = std::io::stdout().lock();
            oncelyd::tune::run(&args, &mut out)?;
            out.flush().context("cannot write the report")?;
        }
    }
    Ok(())
}

/// Logs go to standard error so that standard output carries only a command's result
/// (`tune --json` must print exactly one JSON object). `RUST_LOG` overrides the level.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
