//! `oncelyd tune`: the sizing report, validation, measurement, and the binary's JSON,
//! plot and error behaviour.

use std::process::{Command as Process, Output};

use clap::Parser;
use oncely::Layout;
use oncely::sizing::{bits_per_key_budget, per_generation_fp, size_filter};
use oncelyd::cli::{Cli, Command, DEFAULT_TUNE_SEED, TuneArgs};
use oncelyd::tune::{self, Phase, Progress, TuneReport};

fn args(extra: &[&str]) -> TuneArgs {
    let argv = ["oncelyd", "tune"].iter().chain(extra);
    match Cli::try_parse_from(argv).expect("arguments parse").command {
        Command::Tune(args) => args,
        other => panic!("expected the tune command, got {other:?}"),
    }
}

fn report(extra: &[&str]) -> TuneReport {
    tune::report(&args(extra)).expect("valid parameters")
}

fn bin(extra: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_oncelyd"))
        .arg("tune")
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

#[test]
fn one_filter_at_one_percent() {
    let r = report(&[
        "--capacity",
        "1000000",
        "--fp",
        "0.01",
        "--generations",
        "1",
    ]);
    let s = size_filter(1_000_000, 0.01).unwrap();
    assert_eq!((r.capacity, r.fp, r.generations), (1_000_000, 0.01, 1));
    assert_eq!(r.per_generation_fp, 0.01);
    assert_eq!(
        (r.layout, r.bits, r.hashes),
        (Layout::Blocked, s.bits, s.hashes)
    );
    assert_eq!(r.bits_per_key, s.bits_per_key());
    assert_eq!(r.memory_bytes, s.bits / 8);
    assert_eq!(r.memory_bytes_all_generations, r.memory_bytes);
    assert_eq!(r.budget_bits_per_key, bits_per_key_budget(0.01));
    assert!(r.within_budget && r.bits_per_key <= r.budget_bits_per_key);
    assert!(
        r.theoretical_fp <= 0.01 && r.theoretical_fp > 0.009,
        "{r:?}"
    );
    assert_eq!(r.theoretical_fp_all_generations, r.theoretical_fp);
    assert!(r.measurement.is_none());
}

#[test]
fn the_target_is_split_over_generations() {
    let r = report(&[
        "--capacity",
        "100000",
        "--fp",
        "0.001",
        "--generations",
        "4",
    ]);
    assert_eq!(r.per_generation_fp, per_generation_fp(0.001, 4));
    assert!(r.per_generation_fp >= 0.001 / 4.0);
    let s = size_filter(100_000, r.per_generation_fp).unwrap();
    assert_eq!((r.bits, r.hashes, r.layout), (s.bits, s.hashes, s.layout));
    assert_eq!(r.memory_bytes_all_generations, 4 * r.memory_bytes);
    assert!(r.theoretical_fp <= r.per_generation_fp);
    assert!(r.theoretical_fp_all_generations > r.theoretical_fp);
    assert!(r.theoretical_fp_all_generations <= 0.001, "{r:?}");
    assert_eq!(
        r.budget_bits_per_key,
        bits_per_key_budget(r.per_generation_fp)
    );
}

#[test]
fn tiny_rates_use_the_standard_layout_within_budget() {
    let r = report(&["--capacity", "100000", "--fp", "1e-5"]);
    assert_eq!(r.layout, Layout::Standard);
    assert!(r.within_budget, "{r:?}");
    assert!(r.theoretical_fp <= 1e-5);
}

#[test]
fn bad_parameters_name_their_field() {
    let field = |extra: &[&str]| match tune::report(&args(extra)) {
        Err(oncely::Error::InvalidConfig { field, reason }) => {
            let shown = oncely::Error::InvalidConfig { field, reason }.to_string();
            assert!(shown.contains(field), "{shown}");
            field
        }
        other => panic!("{extra:?}: expected a config error, got {other:?}"),
    };
    assert_eq!(field(&["--capacity", "0", "--fp", "0.01"]), "capacity");
    for fp in ["0", "1", "-0.5", "2", "NaN", "inf"] {
        assert_eq!(field(&["--capacity", "10", "--fp", fp]), "fp", "{fp}");
    }
    for g in ["0", "1025"] {
        let extra = ["--capacity", "10", "--fp", "0.01", "--generations", g];
        assert_eq!(field(&extra), "generations", "{g}");
    }
    let probes = ["--capacity", "10", "--fp", "0.01", "--measure", "0"];
    assert_eq!(field(&probes), "measure");
    // Over the library's per-filter memory limit.
    assert_eq!(
        field(&["--capacity", "1099511627776", "--fp", "0.01"]),
        "capacity"
    );
    assert_eq!(field(&["--capacity", "10", "--fp", "1e-300"]), "fp");
    let split = ["--capacity", "10", "--fp", "1e-300", "--generations", "8"];
    assert_eq!(field(&split), "fp");
}

#[test]
fn a_small_measurement_lands_at_or_under_the_target() {
    let r = report(&["--capacity", "50000", "--fp", "0.01"]);
    let mut calls = Vec::new();
    let mut tick = |p: Progress| calls.push(p);
    let m = tune::measure(&r.sizing(), 400_000, DEFAULT_TUNE_SEED, Some(&mut tick)).unwrap();
    assert_eq!((m.inserted, m.probes), (50_000, 400_000));
    assert_eq!(m.measured_fp, m.false_positives as f64 / 400_000.0);
    assert!(m.measured_fp <= 0.01, "{m:?}");
    let [lo, hi] = m.measured_fp_ci95;
    assert!(lo <= m.measured_fp && m.measured_fp <= hi);
    // Five binomial standard deviations: a filter that misses theory by more is wrong.
    let sigma = (r.theoretical_fp / 400_000.0).sqrt();
    assert!(
        (m.measured_fp - r.theoretical_fp).abs() < 5.0 * sigma,
        "{m:?} {r:?}"
    );

    let last = calls.last().copied().expect("progress was reported");
    assert_eq!(
        (last.phase, last.done, last.total),
        (Phase::Probe, 450_000, 450_000)
    );
    assert!(calls.windows(2).all(|w| w[0].done < w[1].done));
    assert!(calls.iter().any(|p| p.phase == Phase::Insert));

    let again = tune::measure(&r.sizing(), 400_000, DEFAULT_TUNE_SEED, None).unwrap();
    assert_eq!(again, m, "a seed reproduces its measurement");
    let other = tune::measure(&r.sizing(), 400_000, 7, None).unwrap();
    assert_ne!(other.false_positives, m.false_positives);
}

#[test]
fn text_report_shows_sizing_and_measurement() {
    let mut out = Vec::new();
    let a = args(&["--capacity", "20000", "--fp", "0.02", "--measure", "100000"]);
    tune::run(&a, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for needle in [
        "20,000 IDs per generation",
        "layout           blocked",
        "bits per key",
        "budget",
        "memory",
        "theoretical fp",
        "probed           100,000 IDs it never saw",
        "measured fp",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn json_through_the_binary_is_one_object_with_the_required_keys() {
    let out = bin(&[
        "--capacity",
        "100000",
        "--fp",
        "0.01",
        "--measure",
        "300000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut values = serde_json::Deserializer::from_str(&stdout).into_iter::<serde_json::Value>();
    let v = values.next().expect("one value").expect("valid JSON");
    assert!(values.next().is_none(), "exactly one JSON value: {stdout}");
    let obj = v.as_object().expect("an object");
    for key in [
        "capacity",
        "fp",
        "generations",
        "layout",
        "bits",
        "bits_per_key",
        "hashes",
        "memory_bytes",
        "theoretical_fp",
        "budget_bits_per_key",
        "within_budget",
        "per_generation_fp",
        "measured_fp",
        "probes",
        "false_positives",
    ] {
        assert!(obj.contains_key(key), "{key} missing from {stdout}");
    }
    assert_eq!(obj["capacity"], 100_000);
    assert_eq!(obj["probes"], 300_000);
    assert_eq!(obj["layout"], "blocked");
    let measured = obj["measured_fp"].as_f64().unwrap();
    assert!(measured > 0.0 && measured <= 0.01, "{measured}");

    let unmeasured = bin(&["--capacity", "100000", "--fp", "0.01", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&unmeasured.stdout).unwrap();
    assert!(v.get("measured_fp").is_none() && v.get("theoretical_fp").is_some());
}

#[test]
fn plot_writes_an_svg() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune.svg");
    let out = bin(&[
        "--capacity",
        "20000",
        "--fp",
        "0.01",
        "--measure",
        "100000",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Plot written to"));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(r#"xmlns="http://www.w3.org/2000/svg""#));
    assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    for needle in ["bits per key", "theory", "measured", "requested"] {
        assert!(svg.contains(needle), "{needle} missing from the plot");
    }
}

#[test]
fn plot_to_an_unwritable_path_fails_before_measuring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("tune.svg");
    let out = bin(&[
        "--capacity",
        "1000",
        "--fp",
        "0.01",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing-dir"), "{stderr}");
}

#[test]
fn bad_input_exits_non_zero_naming_the_field() {
    for (extra, field) in [
        (&["--capacity", "0", "--fp", "0.01"][..], "capacity"),
        (&["--capacity", "10", "--fp", "1.5"][..], "fp"),
        (&["--capacity", "10", "--fp", "-0.5"][..], "fp"),
        (
            &["--capacity", "10", "--fp", "0.01", "--generations", "0"][..],
            "generations",
        ),
        // Unparsable numbers are clap's to refuse.
        (&["--capacity", "lots", "--fp", "0.01"][..], "--capacity"),
        (&["--capacity", "-1", "--fp", "0.01"][..], "--capacity"),
    ] {
        let out = bin(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(stderr.contains(field), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{extra:?}");
    }
}

#[test]
fn the_default_report_describes_a_default_namespace() {
    let r = report(&["--capacity", "1000000", "--fp", "0.01"]);
    assert_eq!(
        r.generations,
        oncely::NamespaceConfig::default().generations()
    );
    assert_eq!(r.generations, 4);
    assert_eq!(r.per_generation_fp, per_generation_fp(0.01, 4));
    let out = bin(&["--capacity", "1000", "--fp", "0.01", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generations"], 4);
}

#[test]
fn plot_leaves_the_previous_plot_alone_until_the_new_one_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune.svg");
    std::fs::write(&path, "<svg>the previous plot</svg>").unwrap();
    // A measurement long enough to look at the file while it runs.
    let mut child = Process::new(env!("CARGO_BIN_EXE_oncelyd"))
        .args([
            "tune",
            "--capacity",
            "50000000",
            "--fp",
            "0.001",
            "--measure",
        ])
        .args(["500000000", "--plot", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The writability check has run once the temporary file beside the plot exists.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let temp = loop {
        let found = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "tmp"));
        if let Some(temp) = found {
            break temp;
        }
        assert!(std::time::Instant::now() < deadline, "no temporary file");
        assert!(child.try_wait().unwrap().is_none(), "tune ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        temp.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(".tune.svg."),
        "{temp:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "still measuring");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "<svg>the previous plot</svg>",
        "the previous plot is intact while the measurement runs"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
