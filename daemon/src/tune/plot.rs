//! `--plot`: the false-positive rate against bits per key, around the chosen size.
//!
//! The sweep keeps the report's layout and, at each size, the number of hashes with the
//! lowest expected rate: the curve is what sizing would pick for each memory budget.
//! Theory is computed for the requested capacity; measurements use filters of at most
//! [`SWEEP_CAPACITY`] IDs so that the sweep takes seconds whatever the capacity. That
//! is faithful because both layouts' rates depend on the load per bit (for the blocked
//! layout, IDs per block), not on the filter's absolute size, and the x axis is each
//! filter's actual bits per key after rounding to whole blocks.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oncely::sizing::{BLOCK_BITS, FilterSizing, Layout, MAX_HASHES};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Measurement, Progress, TuneReport, group, measure, rate};
use crate::Error;

/// Measured sizes in a sweep.
pub const SWEEP_SIZES: usize = 10;
/// The smallest size of the sweep, as a multiple of the requested bits per key.
pub const SWEEP_FROM: f64 = 0.6;
/// The largest size of the sweep, as a multiple of the requested bits per key.
pub const SWEEP_TO: f64 = 1.5;
/// The most IDs per measured filter in a sweep.
pub const SWEEP_CAPACITY: u64 = 100_000;
/// The fewest probes per measured size.
pub const MIN_PROBES: u64 = 100_000;
/// The most probes per measured size, so that a sweep at a tiny rate stays quick (its
/// large sizes may then see no false positive at all; the plot says so).
pub const MAX_PROBES: u64 = 1_000_000;

/// Expected false positives each measured size aims at, within the probe limits: about
/// +-4% of statistical noise (one standard deviation), invisible on a log scale.
const TARGET_HITS: f64 = 600.0;

/// Sizes on the theoretical curve.
const CURVE_POINTS: usize = 81;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 720;
const NOTES_HEIGHT: u32 = 96;
const FONT: &str = "sans-serif";
const THEORY: RGBColor = RGBColor(31, 90, 180);
const MEASURED: RGBColor = RGBColor(200, 40, 40);
const REQUESTED: RGBColor = RGBColor(0, 130, 60);

/// A sweep of filter sizes around a report's, with theory and (after
/// [`measure`](Self::measure)) measurements.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// The layout of every filter in the sweep: the report's.
    pub layout: Layout,
    /// Capacity the theoretical curve is computed for: the report's.
    pub capacity: u64,
    /// Capacity of each measured filter.
    pub measured_capacity: u64,
    /// `(bits per key, theoretical rate)` with the best number of hashes at each size.
    pub curve: Vec<(f64, f64)>,
    /// The measured sizes.
    pub points: Vec<SweepPoint>,
}

/// One measured size of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    /// The filter's size and its best number of hashes.
    pub sizing: FilterSizing,
    /// Probes to measure it with.
    pub probes: u64,
    /// The measurement, once taken.
    pub measurement: Option<Measurement>,
}

impl Sweep {
    /// Plans the sweep for a report: sizes from [`SWEEP_FROM`] to [`SWEEP_TO`] times
    /// its bits per key. Pure arithmetic; nothing is measured yet.
    #[must_use]
    pub fn plan(report: &TuneReport) -> Self {
        let bpk = report.bits_per_key;
        let at = |i: usize, n: usize| {
            bpk * (SWEEP_FROM + (SWEEP_TO - SWEEP_FROM) * i as f64 / (n - 1) as f64)
        };
        let mut curve: Vec<(f64, f64)> = Vec::with_capacity(CURVE_POINTS);
        for i in 0..CURVE_POINTS {
            let s = best_sizing(report.layout, report.capacity, at(i, CURVE_POINTS));
            // Small capacities round several sizes to the same number of blocks.
            if curve.last().is_none_or(|&(x, _)| x < s.bits_per_key()) {
                curve.push((s.bits_per_key(), s.theoretical_fp()));
            }
        }
        let measured_capacity = report.capacity.min(SWEEP_CAPACITY);
        let mut points: Vec<SweepPoint> = Vec::with_capacity(SWEEP_SIZES);
        for i in 0..SWEEP_SIZES {
            let sizing = best_sizing(report.layout, measured_capacity, at(i, SWEEP_SIZES));
            if points.last().is_some_and(|p| p.sizing.bits >= sizing.bits) {
                continue;
            }
            let probes = (TARGET_HITS / sizing.theoretical_fp())
                .ceil()
                .clamp(MIN_PROBES as f64, MAX_PROBES as f64) as u64;
            points.push(SweepPoint {
                sizing,
                probes,
                measurement: None,
            });
        }
        Self {
            layout: report.layout,
            capacity: report.capacity,
            measured_capacity,
            curve,
            points,
        }
    }

    /// Operations (inserts plus probes) that [`measure`](Self::measure) will run.
    #[must_use]
    pub fn ops(&self) -> u64 {
        self.points
            .iter()
            .map(|p| p.sizing.capacity + p.probes)
            .sum()
    }

    /// Measures every size, each with its own seed derived from `seed`. `progress`,
    /// when given, receives the operations done so far out of [`ops`](Self::ops).
    ///
    /// # Errors
    ///
    /// As the one-filter [`measure`].
    pub fn measure(
        &mut self,
        seed: u64,
        mut progress: Option<&mut dyn FnMut(u64)>,
    ) -> Result<(), oncely::Error> {
        let mut offset = 0;
        for (i, point) in self.points.iter_mut().enumerate() {
            let mut tick = |p: Progress| {
                if let Some(report) = progress.as_mut() {
                    report(offset + p.done);
                }
            };
            // Independent draws per size, so that one unlucky seed cannot bend the
            // whole measured curve the same way.
            let point_seed = seed.wrapping_add(i as u64 + 1);
            point.measurement = Some(measure(
                &point.sizing,
                point.probes,
                point_seed,
                Some(&mut tick),
            )?);
            if let Some(m) = &point.measurement {
                tracing::debug!(
                    bits_per_key = point.sizing.bits_per_key(),
                    hashes = point.sizing.hashes,
                    theoretical_fp = point.sizing.theoretical_fp(),
                    measured_fp = m.measured_fp,
                    probes = m.probes,
                    "sweep point"
                );
            }
            offset += point.sizing.capacity + point.probes;
        }
        Ok(())
    }
}

/// The filter of `layout` for `capacity` IDs closest to `bits_per_key` in whole blocks,
/// with the number of hashes that minimises its expected rate.
fn best_sizing(layout: Layout, capacity: u64, bits_per_key: f64) -> FilterSizing {
    let blocks = (bits_per_key * capacity as f64 / BLOCK_BITS as f64)
        .round()
        .max(1.0) as u64;
    let mut best = FilterSizing {
        capacity,
        fp_rate: 0.5,
        layout,
        bits: blocks * BLOCK_BITS,
        hashes: 1,
    };
    let mut best_fp = best.theoretical_fp();
    for hashes in 2..=MAX_HASHES {
        let candidate = FilterSizing { hashes, ..best };
        let fp = candidate.theoretical_fp();
        if fp < best_fp {
            (best, best_fp) = (candidate, fp);
        }
    }
    // A sizing's `fp_rate` is the rate it was made for, and filters insist that it lies
    // strictly inside (0, 1).
    best.fp_rate = best_fp.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
    best
}

/// Where the plot goes: a temporary file beside the target, created before any long
/// work (so that an unwritable place is found at once) and renamed over the target
/// once the plot is drawn. The target is untouched until then, so a measurement
/// that fails or is interrupted never leaves an earlier plot empty or half-written.
#[derive(Debug)]
pub struct PlotFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl PlotFile {
    /// Creates the temporary file beside `target`.
    ///
    /// # Errors
    ///
    /// [`Error::PlotWrite`] naming `target` when its directory cannot be written.
    pub fn create(target: &Path) -> Result<Self, Error> {
        let name = target
            .file_name()
            .map_or_else(|| "plot".into(), |n| n.to_string_lossy().into_owned());
        let temp = target.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|source| Error::PlotWrite {
                path: target.to_owned(),
                source,
            })?;
        Ok(Self {
            target: target.to_owned(),
            temp,
            file: Some(file),
        })
    }

    /// The temporary file's path.
    #[must_use]
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Writes the SVG document and puts it in the target's place.
    ///
    /// # Errors
    ///
    /// [`Error::PlotWrite`] naming the target.
    pub fn write(mut self, svg: &str) -> Result<(), Error> {
        let failed = |source| Error::PlotWrite {
            path: self.target.clone(),
            source,
        };
        let mut file = self
            .file
            .take()
            .ok_or_else(|| failed(io::ErrorKind::Other.into()))?;
        file.write_all(svg.as_bytes()).map_err(failed)?;
        drop(file);
        std::fs::rename(&self.temp, &self.target).map_err(failed)
    }
}

impl Drop for PlotFile {
    fn drop(&mut self) {
        // Still there when the plot was never written (or could not be renamed).
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Draws the sweep and the requested point as an SVG document.
///
/// # Errors
///
/// [`Error::PlotDraw`] when drawing fails.
pub fn render_svg(report: &TuneReport, sweep: &Sweep) -> Result<String, Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, report, sweep).map_err(|e| Error::PlotDraw {
            reason: e.to_string(),
        })?;
    }
    Ok(svg)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &TuneReport,
    sweep: &Sweep,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (upper, notes) = root.split_vertically(HEIGHT - NOTES_HEIGHT);
    let target = report.per_generation_fp;
    let measured: Vec<(&SweepPoint, &Measurement)> = sweep
        .points
        .iter()
        .filter_map(|p| p.measurement.as_ref().map(|m| (p, m)))
        .collect();

    let xs = sweep
        .curve
        .iter()
        .map(|&(x, _)| x)
        .chain(sweep.points.iter().map(|p| p.sizing.bits_per_key()))
        .chain([report.bits_per_key]);
    let (x_lo, x_hi) = bounds(xs);
    let ys = sweep
        .curve
        .iter()
        .map(|&(_, y)| y)
        .chain(
            measured
                .iter()
                .flat_map(|(_, m)| [m.measured_fp, m.measured_fp_ci95[0], m.measured_fp_ci95[1]]),
        )
        .chain(report.measurement.iter().map(|m| m.measured_fp))
        .chain([target, report.theoretical_fp])
        .filter(|&y| y > 0.0);
    let (y_lo, y_hi) = bounds(ys);
    let (x_lo, x_hi) = (x_lo * 0.97, x_hi * 1.03);
    let (y_lo, y_hi) = (y_lo / 1.6, (y_hi * 1.6).min(1.0).max(y_lo * 10.0));

    let layout = sweep.layout.as_str();
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            format!("oncelyd tune: false-positive rate against bits per key ({layout} layout)"),
            (FONT, 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(84)
        .build_cartesian_2d(x_lo..x_hi, (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("bits per key")
        .y_desc("false-positive rate of one filter (log scale)")
        .x_label_formatter(&|x| format!("{x:.1}"))
        .y_label_formatter(&|y| axis_rate(*y))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;

    let grey = BLACK.mix(0.45);
    chart
        .draw_series(LineSeries::new([(x_lo, target), (x_hi, target)], grey))?
        .label(format!("target per generation: {}", rate(target)))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], grey));

    chart
        .draw_series(LineSeries::new(
            sweep.curve.iter().copied().filter(|&(_, y)| y > 0.0),
            THEORY.stroke_width(2),
        ))?
        .label(format!(
            "theory: {} IDs per filter, best k per size",
            group(sweep.capacity)
        ))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], THEORY.stroke_width(2)));
    // The number of hashes changes along the curve; label it at each measured size.
    chart.draw_series(sweep.points.iter().map(|p| {
        EmptyElement::at((p.sizing.bits_per_key(), p.sizing.theoretical_fp()))
            + Text::new(format!("k={}", p.sizing.hashes), (6, 6), (FONT, 12))
    }))?;

    let hits = || measured.iter().filter(|(_, m)| m.false_positives > 0);
    chart.draw_series(hits().map(|(p, m)| {
        let x = p.sizing.bits_per_key();
        PathElement::new(
            [(x, m.measured_fp_ci95[0]), (x, m.measured_fp_ci95[1])],
            MEASURED.mix(0.7),
        )
    }))?;
    chart
        .draw_series(hits().map(|(p, m)| {
            Circle::new(
                (p.sizing.bits_per_key(), m.measured_fp),
                4,
                MEASURED.filled(),
            )
        }))?
        .label(format!(
            "measured: {} IDs per filter, 95% interval",
            group(sweep.measured_capacity)
        ))
        .legend(|(x, y)| Circle::new((x + 12, y), 4, MEASURED.filled()));
    if measured.iter().any(|(_, m)| m.false_positives == 0) {
        chart
            .draw_series(
                measured
                    .iter()
                    .filter(|(_, m)| m.false_positives == 0)
                    .map(|(p, m)| {
                        Circle::new(
                            (p.sizing.bits_per_key(), m.measured_fp_ci95[1]),
                            4,
                            MEASURED.stroke_width(2),
                        )
                    }),
            )?
            .label("measured: no false positive (drawn at the 95% upper bound)")
            .legend(|(x, y)| Circle::new((x + 12, y), 4, MEASURED.stroke_width(2)));
    }

    let bpk = report.bits_per_key;
    chart.draw_series(LineSeries::new(
        [(bpk, y_lo), (bpk, y_hi)],
        REQUESTED.mix(0.5),
    ))?;
    chart
        .draw_series([Cross::new(
            (bpk, report.theoretical_fp),
            7,
            REQUESTED.stroke_width(3),
        )])?
        .label(format!(
            "requested: {bpk:.2} bits/key, k={}, theory {}",
            report.hashes,
            rate(report.theoretical_fp)
        ))
        .legend(|(x, y)| Cross::new((x + 12, y), 6, REQUESTED.stroke_width(3)));
    if let Some(m) = &report.measurement {
        if m.false_positives > 0 {
            chart.draw_series([PathElement::new(
                [(bpk, m.measured_fp_ci95[0]), (bpk, m.measured_fp_ci95[1])],
                REQUESTED.stroke_width(2),
            )])?;
        }
        let y = if m.false_positives > 0 {
            m.measured_fp
        } else {
            m.measured_fp_ci95[1]
        };
        // A ring around the theoretical cross: the two usually all but coincide.
        chart
            .draw_series([Circle::new((bpk, y), 10, REQUESTED.stroke_width(2))])?
            .label(format!(
                "requested, measured: {} ({} IDs, {} probes)",
                rate(m.measured_fp),
                group(m.inserted),
                group(m.probes)
            ))
            .legend(|(x, y)| Circle::new((x + 12, y), 6, REQUESTED.stroke_width(2)));
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 14))
        .draw()?;

    let probes = {
        let lo = sweep.points.iter().map(|p| p.probes).min().unwrap_or(0);
        let hi = sweep.points.iter().map(|p| p.probes).max().unwrap_or(0);
        if lo == hi {
            group(lo)
        } else {
            format!("{} to {}", group(lo), group(hi))
        }
    };
    let generations = if report.generations == 1 {
        String::new()
    } else {
        format!(
            ", split over {} generations: {} per generation",
            report.generations,
            rate(target)
        )
    };
    let lines = [
        format!(
            "Requested: capacity {} IDs per generation, fp {}{generations}.",
            group(report.capacity),
            rate(report.fp)
        ),
        format!(
            "Theory: one {layout}-layout filter of {} IDs at each size, with the k that \
             minimises its expected rate.",
            group(sweep.capacity)
        ),
        format!(
            "Measured: at each size, one filter filled with {} random 16-byte IDs, then \
             probed with {probes} IDs it never saw.",
            group(sweep.measured_capacity)
        ),
    ];
    let style = TextStyle::from((FONT, 14).into_font()).color(&BLACK);
    for (i, line) in lines.iter().enumerate() {
        notes.draw_text(line, &style, (24, 8 + 24 * i as i32))?;
    }
    root.present()
}

/// A tick value of the log axis: they arrive with rounding dust (1.0000000000000002e-4),
/// which would defeat [`rate`]'s short form.
fn axis_rate(y: f64) -> String {
    rate(format!("{y:.2e}").parse().unwrap_or(y))
}

/// The smallest and largest of some values (`(1, 1)` when there are none, which a
/// sweep never has).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo <= hi { (lo, hi) } else { (1.0, 1.0) }
}
