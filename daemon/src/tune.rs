//! `oncelyd tune`: how large a namespace's Bloom filters are, and how well they work.
//!
//! A namespace keeps `generations` live filters and a check consults all of them, so
//! its target rate `fp` is split: each generation's filter aims at
//! [`per_generation_fp`](sizing::per_generation_fp)`(fp, generations)`. Everything
//! unqualified in a [`TuneReport`] (`bits`, `hashes`, `memory_bytes`, `theoretical_fp`,
//! `measured_fp`) is about **one generation's filter** holding `capacity` IDs, the unit
//! that is built, measured and compared with theory; the `*_all_generations` fields
//! are the namespace with every generation full.
//!
//! * [`report`]: the sizing, pure arithmetic, instant; it also validates every
//!   parameter, so bad input fails before any long work.
//! * [`measure`]: builds one generation's filter, fills it to capacity with random IDs
//!   and counts false positives among IDs it never saw.
//! * [`render_text`] and the report's `Serialize`: the two outputs.
//! * [`plot`]: the `--plot` sweep of sizes around the chosen one, theory against
//!   measurement, drawn as SVG.
//! * [`run`]: the whole command as the binary runs it.

pub mod plot;

use std::fmt::Write as _;
use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oncely::config::MAX_GENERATIONS;
use oncely::sizing::{self, BLOCK_BITS, FilterSizing, Layout};
use oncely::{BloomFilter, HashSeed, IdHash};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::Error;
use crate::cli::TuneArgs;

/// Bytes in every measured ID: the size of a UUID, a common event ID.
pub const ID_LEN: usize = 16;

/// First byte of every inserted ID. Probes carry [`PROBE_TAG`] instead, so no probe can
/// equal an inserted ID and every hit is a false positive, with no bookkeeping.
pub const INSERTED_TAG: u8 = 0x00;

/// First byte of every probe ID.
pub const PROBE_TAG: u8 = 0xff;

/// Operations (inserts plus probes) above which a run shows a progress bar: below it a
/// run is over in well under a second even in a debug build.
pub const PROGRESS_THRESHOLD: u64 = 2_000_000;

/// IDs generated, hashed and handed to the filter's batch API at a time: large enough
/// to amortise the calls, small enough (1 MiB of IDs) to stay in cache and to report
/// progress often.
const CHUNK: usize = 1 << 16;

/// Two-sided 95% normal quantile, for the interval around a measured rate.
const Z95: f64 = 1.959_963_984_540_054;

/// The sizing of one namespace, and optionally a measurement of its filter.
///
/// See the [module docs](self) for which fields describe one generation and which the
/// whole namespace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TuneReport {
    /// IDs one generation holds before it seals.
    pub capacity: u64,
    /// The namespace's target rate: a check across all live generations.
    pub fp: f64,
    /// Live generations the target is split over.
    pub generations: u32,
    /// The rate each generation's filter aims at, so that all of them together meet `fp`.
    pub per_generation_fp: f64,
    /// How the filter lays out an ID's bits.
    pub layout: Layout,
    /// Bits in one generation's filter.
    pub bits: u64,
    /// Bits set per ID.
    pub hashes: u32,
    /// `bits / capacity`.
    pub bits_per_key: f64,
    /// The budget for `per_generation_fp`: 1.1 x 1.44 x log2(1 / per_generation_fp).
    pub budget_bits_per_key: f64,
    /// Whether `bits_per_key` is at or under the budget.
    pub within_budget: bool,
    /// Bytes of one generation's filter.
    pub memory_bytes: u64,
    /// Bytes of all `generations` filters.
    pub memory_bytes_all_generations: u64,
    /// Expected false-positive rate of one generation's filter holding `capacity` IDs.
    pub theoretical_fp: f64,
    /// Expected false-positive rate of a check across `generations` full filters.
    pub theoretical_fp_all_generations: f64,
    /// The measurement, when one was asked for (`--measure`).
    #[serde(flatten)]
    pub measurement: Option<Measurement>,
}

impl TuneReport {
    /// The sizing of one generation's filter.
    #[must_use]
    pub const fn sizing(&self) -> FilterSizing {
        FilterSizing {
            capacity: self.capacity,
            fp_rate: self.per_generation_fp,
            layout: self.layout,
            bits: self.bits,
            hashes: self.hashes,
        }
    }
}

/// A measured false-positive rate of one filter holding its full capacity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Measurement {
    /// Random IDs inserted: the filter's capacity.
    pub inserted: u64,
    /// IDs probed, none of them inserted.
    pub probes: u64,
    /// Probes the filter reported present.
    pub false_positives: u64,
    /// `false_positives / probes`.
    pub measured_fp: f64,
    /// The 95% Wilson score interval around `measured_fp`: how far a different seed
    /// could plausibly move it.
    pub measured_fp_ci95: [f64; 2],
    /// The seed of the IDs and of the filter's hash.
    pub seed: u64,
}

/// How far a measurement has got, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What is being done.
    pub phase: Phase,
    /// Operations done so far, inserts and probes together.
    pub done: u64,
    /// Operations in the whole measurement.
    pub total: u64,
}

/// The phases of a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Filling the filter to capacity.
    Insert,
    /// Probing it with unseen IDs.
    Probe,
}

/// Sizes one generation's filter for `args` and validates every parameter.
///
/// # Errors
///
/// [`oncely::Error::InvalidConfig`] naming the command-line field (`capacity`, `fp`,
/// `generations`, `measure`) when a parameter is out of range or the filter would not
/// fit the library's memory limit.
pub fn report(args: &TuneArgs) -> Result<TuneReport, oncely::Error> {
    if !(1..=MAX_GENERATIONS).contains(&args.generations) {
        return Err(invalid(
            "generations",
            format!("{} is outside 1..={MAX_GENERATIONS}", args.generations),
        ));
    }
    if args.capacity == 0 {
        return Err(invalid("capacity", "must be at least 1".into()));
    }
    // Checked here, not left to the library, because the split below would turn an
    // out-of-range `fp` into a NaN that the library would then report instead.
    if !(args.fp > 0.0 && args.fp < 1.0) {
        return Err(invalid(
            "fp",
            format!("{:?} is not strictly between 0 and 1", args.fp),
        ));
    }
    if args.measure == Some(0) {
        return Err(invalid("measure", "must probe at least 1 ID".into()));
    }
    let per_generation_fp = sizing::per_generation_fp(args.fp, args.generations);
    let s = sizing::size_filter(args.capacity, per_generation_fp)
        .map_err(|e| name_cli_fields(e, args))?;
    let g = f64::from(args.generations);
    Ok(TuneReport {
        capacity: s.capacity,
        fp: args.fp,
        generations: args.generations,
        per_generation_fp,
        layout: s.layout,
        bits: s.bits,
        hashes: s.hashes,
        bits_per_key: s.bits_per_key(),
        budget_bits_per_key: sizing::bits_per_key_budget(per_generation_fp),
        within_budget: s.bits_per_key() <= sizing::bits_per_key_budget(per_generation_fp),
        memory_bytes: s.memory_bytes(),
        memory_bytes_all_generations: s.memory_bytes().saturating_mul(u64::from(args.generations)),
        theoretical_fp: s.theoretical_fp(),
        // 1 - (1 - p)^g without the cancellation that loses tiny rates.
        theoretical_fp_all_generations: -(g * (-s.theoretical_fp()).ln_1p()).exp_m1(),
        measurement: None,
    })
}

fn invalid(field: &'static str, reason: String) -> oncely::Error {
    oncely::Error::InvalidConfig { field, reason }
}

/// The library names fields as configuration files do (`fp_rate`); a CLI user typed
/// `--fp`, and with several generations the rate it complains about is the split one.
fn name_cli_fields(e: oncely::Error, args: &TuneArgs) -> oncely::Error {
    match e {
        oncely::Error::InvalidConfig {
            field: "fp_rate",
            reason,
        } => {
            let reason = if args.generations > 1 {
                format!(
                    "{reason} (the per-generation rate for fp {:?} over {} generations)",
                    args.fp, args.generations
                )
            } else {
                reason
            };
            invalid("fp", reason)
        }
        other => other,
    }
}

/// Builds a filter of `sizing`, inserts `sizing.capacity` random IDs and probes it with
/// `probes` IDs it never saw.
///
/// IDs are [`ID_LEN`] bytes from a random generator seeded with `seed`, which also
/// draws the filter's hash seed, so equal arguments give equal results. `progress`, when
/// given, is called after every batch.
///
/// # Errors
///
/// [`oncely::Error::InvalidConfig`] when `probes` is 0 (field `measure`), the sizing
/// is inconsistent, or the filter's memory cannot be reserved (field `capacity`).
pub fn measure(
    sizing: &FilterSizing,
    probes: u64,
    seed: u64,
    mut progress: Option<&mut dyn FnMut(Progress)>,
) -> Result<Measurement, oncely::Error> {
    if probes == 0 {
        return Err(invalid("measure", "must probe at least 1 ID".into()));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut filter = BloomFilter::new(*sizing, HashSeed::from_u64(rng.next_u64()))?;
    let total = sizing.capacity.saturating_add(probes);
    let mut ids = vec![0_u8; CHUNK * ID_LEN];
    let mut hashes = Vec::with_capacity(CHUNK);
    let mut done = 0_u64;
    let mut false_positives = 0_u64;
    for (phase, count) in [(Phase::Insert, sizing.capacity), (Phase::Probe, probes)] {
        let mut left = count;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let tag = match phase {
                Phase::Insert => INSERTED_TAG,
                Phase::Probe => PROBE_TAG,
            };
            random_ids(&mut rng, &filter, tag, &mut ids[..n * ID_LEN], &mut hashes);
            match phase {
                // What inserts answer is not the measured rate: it is taken while the
                // filter is still filling, and the measurement is of a full one.
                Phase::Insert => {
                    filter.insert_batch(&hashes);
                }
                Phase::Probe => {
                    let hits = filter.contains_batch(&hashes);
                    false_positives += hits.iter().filter(|&&hit| hit).count() as u64;
                }
            }
            left -= n as u64;
            done += n as u64;
            if let Some(report) = progress.as_mut() {
                report(Progress { phase, done, total });
            }
        }
    }
    tracing::debug!(
        inserted = sizing.capacity,
        probes,
        false_positives,
        "measured one filter"
    );
    Ok(Measurement {
        inserted: sizing.capacity,
        probes,
        false_positives,
        measured_fp: false_positives as f64 / probes as f64,
        measured_fp_ci95: wilson_interval(false_positives, probes),
        seed,
    })
}

/// Fills `ids` with random IDs whose first byte is `tag` and replaces `hashes` with
/// their hashes under the filter's seed.
fn random_ids(
    rng: &mut StdRng,
    filter: &BloomFilter,
    tag: u8,
    ids: &mut [u8],
    hashes: &mut Vec<IdHash>,
) {
    rng.fill_bytes(ids);
    hashes.clear();
    hashes.extend(ids.chunks_exact_mut(ID_LEN).map(|id| {
        id[0] = tag;
        filter.hash(id)
    }));
}

/// The Wilson score interval: unlike the normal approximation it stays inside [0, 1]
/// and is meaningful when no false positive was seen at all, which small rates and
/// short runs make common.
fn wilson_interval(hits: u64, trials: u64) -> [f64; 2] {
    let n = trials as f64;
    let p = hits as f64 / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    // At the edges the bound is exactly 0 (or 1); the subtraction leaves rounding dust.
    let lo = if hits == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let hi = if hits == trials {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    [lo, hi]
}

/// The human-readable report.
#[must_use]
pub fn render_text(r: &TuneReport) -> String {
    let mut s = String::new();
    let gens = plural(u64::from(r.generations), "live generation");
    // Writing into a String cannot fail, hence the discarded results.
    let _ = writeln!(
        s,
        "Sizing for {} IDs per generation, target fp {} over {gens}",
        group(r.capacity),
        rate(r.fp)
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "One generation's filter (target fp {} when full):",
        rate(r.per_generation_fp)
    );
    let layout = match r.layout {
        Layout::Blocked => "blocked: an ID's bits share one 512-bit block (one cache line)",
        Layout::Standard => "standard: an ID's bits spread over the whole filter",
        Layout::StandardV1 => "standard (first version): an ID's bits spread over the whole filter",
    };
    let _ = writeln!(s, "  layout           {layout}");
    let _ = writeln!(
        s,
        "  bits             {} ({})",
        group(r.bits),
        plural(r.bits / BLOCK_BITS, "block")
    );
    let _ = writeln!(s, "  hashes           {}", r.hashes);
    let _ = writeln!(s, "  bits per key     {:.3}", r.bits_per_key);
    let _ = writeln!(
        s,
        "  budget           {:.3} bits per key = 1.1 x 1.44 x log2(1/{}): {}",
        r.budget_bits_per_key,
        rate(r.per_generation_fp),
        if r.within_budget { "within" } else { "OVER" }
    );
    let _ = writeln!(s, "  memory           {}", bytes(r.memory_bytes));
    let _ = writeln!(s, "  theoretical fp   {} when full", rate(r.theoretical_fp));
    let _ = writeln!(s);
    let _ = writeln!(s, "The namespace, {gens}:");
    let _ = writeln!(
        s,
        "  memory           {}",
        bytes(r.memory_bytes_all_generations)
    );
    let _ = writeln!(
        s,
        "  theoretical fp   {} with every generation full",
        rate(r.theoretical_fp_all_generations)
    );
    if let Some(m) = &r.measurement {
        let _ = writeln!(s);
        let _ = writeln!(s, "Measured on one generation's filter (seed {}):", m.seed);
        let _ = writeln!(
            s,
            "  inserted         {} random {ID_LEN}-byte IDs, its capacity",
            group(m.inserted)
        );
        let _ = writeln!(s, "  probed           {} IDs it never saw", group(m.probes));
        let _ = writeln!(s, "  false positives  {}", group(m.false_positives));
        let vs_theory = (m.measured_fp / r.theoretical_fp - 1.0) * 100.0;
        let _ = writeln!(
            s,
            "  measured fp      {} (95% interval {} to {}), {vs_theory:+.1}% vs theory, {} target",
            rate(m.measured_fp),
            rate(m.measured_fp_ci95[0]),
            rate(m.measured_fp_ci95[1]),
            if m.measured_fp <= r.per_generation_fp {
                "within"
            } else {
                "OVER"
            }
        );
    }
    s
}

/// Runs `oncelyd tune` as the binary does: validates, measures and plots as asked,
/// then writes the report (text, or one JSON object with `--json`) to `out`.
///
/// Progress bars go to standard error, only for long runs and never with `--json`.
///
/// # Errors
///
/// [`Error::Oncely`] for bad parameters (before any long work), [`Error::PlotWrite`]
/// when the plot file cannot be written (its directory is checked before any long
/// work; the file itself is replaced only once the plot is drawn),
/// [`Error::Output`] when `out` fails.
pub fn run(args: &TuneArgs, out: &mut dyn Write) -> Result<(), Error> {
    let mut report = report(args)?;
    // A minutes-long measurement must not end in "cannot write the plot", nor empty
    // the previous plot while it runs.
    let plot_file = args
        .plot
        .as_deref()
        .map(plot::PlotFile::create)
        .transpose()?;
    if let Some(probes) = args.measure {
        let sizing = report.sizing();
        let bar = progress_bar(sizing.capacity.saturating_add(probes), args.json);
        let mut tick = |p: Progress| {
            if let Some(bar) = &bar {
                bar.set_message(match p.phase {
                    Phase::Insert => "inserting",
                    Phase::Probe => "probing",
                });
                bar.set_position(p.done);
            }
        };
        report.measurement = Some(measure(&sizing, probes, args.seed, Some(&mut tick))?);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
    if let Some(plot_file) = plot_file {
        let mut sweep = plot::Sweep::plan(&report);
        let bar = progress_bar(sweep.ops(), args.json);
        if let Some(bar) = &bar {
            bar.set_message("plot sweep");
        }
        let mut tick = |done: u64| {
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
        };
        sweep.measure(args.seed, Some(&mut tick))?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        plot_file.write(&plot::render_svg(&report, &sweep)?)?;
        tracing::debug!("wrote the plot");
    }
    if args.json {
        serde_json::to_writer(&mut *out, &report).map_err(|e| Error::Output(e.into()))?;
        writeln!(out).map_err(Error::Output)?;
    } else {
        out.write_all(render_text(&report).as_bytes())
            .map_err(Error::Output)?;
        if let Some(path) = &args.plot {
            writeln!(out, "\nPlot written to {}", path.display()).map_err(Error::Output)?;
        }
    }
    Ok(())
}

/// A progress bar on standard error for runs long enough to need one. indicatif draws
/// nothing when standard error is not a terminal.
fn progress_bar(total: u64, json: bool) -> Option<ProgressBar> {
    if json || total <= PROGRESS_THRESHOLD {
        return None;
    }
    let style = ProgressStyle::with_template(
        "{msg:>10} [{wide_bar}] {human_pos}/{human_len} ops, {elapsed} (eta {eta})",
    )
    .map_or_else(
        |_| ProgressStyle::default_bar(),
        |s| s.progress_chars("=> "),
    );
    Some(ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(style))
}

/// A rate as typed when it is short (`0.01`, `1e-6`), else with three significant
/// digits, in plain decimals down to 0.001.
pub(crate) fn rate(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let short = if x >= 1e-3 {
        format!("{x}")
    } else {
        format!("{x:e}")
    };
    if short.len() <= 7 {
        short
    } else if x >= 1e-3 {
        let decimals = (2 - x.log10().floor() as i32).max(0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.2e}")
    }
}

/// An integer with thousands separators.
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: u64, noun: &str) -> String {
    format!("{} {noun}{}", group(n), if n == 1 { "" } else { "s" })
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if unit == "bytes" {
        plural(n, "byte")
    } else {
        format!("{value:.2} {unit} ({})", plural(n, "byte"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(12_345_678), "12,345,678");
        assert_eq!(rate(0.01), "0.01");
        assert_eq!(rate(0.0025), "0.0025");
        assert_eq!(rate(1e-6), "1e-6");
        assert_eq!(rate(0.009_698_045), "0.00970");
        assert_eq!(rate(0.512_345), "0.512");
        assert_eq!(rate(2.500_938e-4), "2.50e-4");
        assert_eq!(bytes(1), "1 byte");
        assert_eq!(bytes(1_280_000), "1.22 MiB (1,280,000 bytes)");
    }

    #[test]
    fn wilson_interval_brackets_the_rate() {
        let [lo, hi] = wilson_interval(100, 10_000);
        assert!(
            lo < 0.01 && hi > 0.01 && lo > 0.008 && hi < 0.0125,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson_interval(0, 1_000);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.003 && hi < 0.004, "{hi}");
    }
}
