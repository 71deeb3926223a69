//! The daemon's `/metrics` and the rules shipped for it, checked by Prometheus's own
//! tool: `promtool check metrics` on a real daemon's page, `promtool check rules` and
//! `promtool test rules` on `deploy/prometheus/`.
//!
//! `promtool` comes with Debian's `prometheus` package, which `scripts/ensure-deps.sh`
//! installs; without it these tests fail, saying so (they never skip).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::daemon::{Daemon, client, metrics};
use serde_json::json;

/// `deploy/prometheus/` in the repository.
fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// Runs `promtool args`, with `stdin` on its standard input.
fn promtool(args: &[&str], dir: &Path, stdin: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's prometheus package, which \
                 provides it (scripts/ensure-deps.sh does, as root: apt-get install \
                 prometheus)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_rules_file_is_valid() {
    let out = promtool(&["check", "rules", "oncelyd.rules.yml"], &rules_dir(), "");
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("SUCCESS"), "{}", said(&out));
}

#[test]
fn the_rules_pass_their_unit_tests() {
    let out = promtool(
        &["test", "rules", "oncelyd.rules.test.yml"],
        &rules_dir(),
        "",
    );
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("SUCCESS"), "{}", said(&out));
}

/// Every family the rules and docs/metrics.md name is one the daemon serves, so a
/// renamed metric cannot leave an alert that never fires.
#[test]
fn the_rules_use_only_families_the_daemon_serves() {
    let rules = std::fs::read_to_string(rules_dir().join("oncelyd.rules.yml")).unwrap();
    let doc = include_str!("../../docs/metrics.md");
    let mut named: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| {
            (w.starts_with("oncelyd_") || w.starts_with("process_"))
                && !w.contains(':')
                && !w.ends_with('_')
        })
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() > 10, "{named:?}");
    for family in named {
        let base = family.strip_suffix("_bucket").unwrap_or(family);
        assert!(
            doc.contains(&format!("| `{base}` |")),
            "{family} is used by the rules but is no family of docs/metrics.md"
        );
    }
}

/// The page of a real daemon (RocksDB, so every family is there: disk, budget,
/// store, process), after traffic of every kind, is clean by `promtool check
/// metrics`: names, types, units, `_total` on counters, help on every family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_daemons_metrics_pass_promtool() {
    // promtool lints: a page that breaks its rules is reported (the check can fail).
    let bad = "# HELP oncelyd_marks Marks.\n# TYPE oncelyd_marks counter\noncelyd_marks 1\n";
    let out = promtool(&["check", "metrics"], &rules_dir(), bad);
    assert!(!out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("_total"), "{}", said(&out));

    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--resp-listen", "127.0.0.1:0"], &[]);
    let c = client();
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    for ids in [json!(["p-1", "p-2"]), json!(["p-1"])] {
        let r = c
            .post(&mark)
            .json(&json!({ "ids": ids }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let claim = json!({"id": "c-1", "owner": "w", "lease_ms": 1000});
    let r = c
        .post(daemon.url("/v1/namespaces/default/claims"))
        .json(&claim)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for path in ["/nowhere", "/v1/namespaces/nope"] {
        let r = c.get(daemon.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
    }
    // The ticker's first probe, for oncelyd_store_info.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut page = metrics(&c, &daemon).await;
    while !page.contains("oncelyd_store_info") {
        assert!(
            std::time::Instant::now() < deadline,
            "no store_info:\n{page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        page = metrics(&c, &daemon).await;
    }
    for family in [
        "process_open_fds",
        "process_resident_memory_bytes",
        "oncelyd_build_info",
        "oncelyd_disk_bytes",
        "oncelyd_ids_total",
        "oncelyd_http_request_duration_seconds_bucket",
    ] {
        assert!(page.contains(family), "no {family} in\n{page}");
    }
    let out = promtool(&["check", "metrics"], &rules_dir(), &page);
    assert!(out.status.success(), "{}\n{page}", said(&out));
    assert_eq!(said(&out).trim(), "", "{page}");
}
