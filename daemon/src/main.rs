//! The `oncelyd` binary: parses the command line, sets up logging and hands over to
//! the `oncelyd` library, where every command lives.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use oncelyd::cli::{Cli, Command};
use oncelyd::config::LogFormat;

/// jemalloc for every allocation in the process, RocksDB's C++ ones included (the
/// allocator is linked unprefixed). With glibc's malloc, the daemon's many threads
/// (async workers, the blocking pool, RocksDB's flush and compaction) spread over
/// many arenas, and memory freed in one is not reused by another. Resident memory
/// after 40M marks into one namespace (4 generations of 10M) was 258 MiB with
/// glibc's default arenas and 204 MiB with jemalloc (README, "Benchmarks"); RocksDB's
/// own guidance recommends jemalloc for the same reason.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Serve(args) => {
            // Nothing is logged before the settings are resolved (a bad one is an
            // error on standard error), so the first line is in `log_format` too.
            let settings = oncelyd::config::Settings::resolve(
                args.layer(),
                args.config.clone(),
                std::env::vars_os(),
            )?;
            oncelyd::logging::init(settings.log_format);
            let runtime = oncelyd::server::runtime(&settings)?;
            let served = runtime.block_on(oncelyd::server::serve(settings));
            // The tracker is closed by now; don't let a stuck blocking task (a
            // request whose client left after the grace period) hold the exit.
            runtime.shutdown_timeout(Duration::from_secs(1));
            served?;
        }
        Command::Tune(args) => {
            oncelyd::logging::init(LogFormat::Text);
            let mut out = std::io::stdout().lock();
            oncelyd::tune::run(&args, &mut out)?;
            out.flush().context("cannot write the report")?;
        }
        Command::Load(args) => {
            oncelyd::logging::init(LogFormat::Text);
            let report = oncelyd::load::run(&args)?;
            let mut out = std::io::stdout().lock();
            oncelyd::load::write_report(&report, args.json, &mut out)?;
            out.flush().context("cannot write the report")?;
            // After the report: failed requests make the exit status non-zero.
            oncelyd::load::check(&report)?;
        }
    }
    Ok(())
}
