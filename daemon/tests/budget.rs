//! The filter memory budget and the namespace cap of a real `oncelyd serve`:
//! namespaces up to the budget are created, the next is refused with the numbers and
//! changes nothing, and the daemon's resident memory stays within the budget plus a
//! stated slack while every namespace's filters are allocated and written.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Daemon, client, command, run_to_exit};
use serde_json::{Value, json};

const BUDGET: u64 = 256 << 20;
const CACHE_BYTES: u64 = 16 << 20;
const MEMTABLE_BYTES: u64 = 8 << 20;
/// Memory no setting bounds: RocksDB's memory outside its cache, buffers, thread
/// stacks, the allocator's fragmentation (the soak test's allowance, measured there
/// over 10 minutes).
const SLACK: u64 = 48 << 20;
const GENERATIONS: usize = 4;
/// IDs marked into every namespace in each round: enough that every page of an
/// open generation's filter is written (a blocked filter writes one 64-byte block
/// per ID, and a 2M-ID filter at this rate has about 1,200 pages of 4 KiB).
const IDS_PER_ROUND: usize = 5_000;

const MIB: f64 = 1_048_576.0;

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// The number written as `({n} bytes)` or `({n}-byte` right after `label` in `text`.
fn number_after(text: &str, label: &str) -> u64 {
    let rest = &text[text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))..];
    let open = rest.find('(').unwrap() + 1;
    rest[open..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {text}"))
}

fn namespace_config() -> Value {
    json!({
        "generations": GENERATIONS,
        "generation_capacity": 2_000_000,
        "generation_span": "2s",
        "fp_rate": 0.001,
        "exact_generations": 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_up_to_the_budget_then_refused_with_the_numbers_and_rss_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &[
            "--max-filter-bytes",
            "256MiB",
            "--cache-bytes",
            "16MiB",
            "--memtable-bytes",
            "8MiB",
        ],
        &[],
    );
    let pid = daemon.child.id();
    let c = client();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (baseline, _) = memory(pid);

    let mut created = Vec::new();
    let refusal = loop {
        let name = format!("big-{}", created.len());
        let r = c
            .put(daemon.url(&format!("/v1/namespaces/{name}")))
            .json(&namespace_config())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 => created.push(name),
            409 => break (name, r.json::<Value>().await.unwrap()),
            other => panic!("PUT {name}: {other}: {}", r.text().await.unwrap()),
        }
        assert!(created.len() < 100, "the budget never refused");
    };
    let (refused, error) = refusal;
    assert!(created.len() >= 2, "{created:?}");
    assert_eq!(error["error"]["code"], "over_budget", "{error}");
    let message = error["error"]["message"].as_str().unwrap();

    let view: Value = c
        .get(daemon.url("/v1/namespaces/big-0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let each = view["charged_bytes"].as_u64().unwrap();
    let budget = &view["filter_budget"];
    assert_eq!(budget["budget_bytes"], BUDGET, "{view}");
    let charged = budget["charged_bytes"].as_u64().unwrap();
    assert_eq!(number_after(message, "would need up to"), each, "{message}");
    assert_eq!(number_after(message, "of the"), BUDGET, "{message}");
    assert_eq!(number_after(message, "free:"), charged, "{message}");
    assert!(charged + each > BUDGET && charged <= BUDGET, "{view}");
    // Nothing changed: the refused namespace does not exist.
    let r = c
        .get(daemon.url(&format!("/v1/namespaces/{refused}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    println!(
        "{} namespaces of {} each fit the {} budget beside default; the next was refused: \
         {message}",
        created.len(),
        mib(each),
        mib(BUDGET)
    );

    // Fill every generation's filter, as traffic would: marks into every namespace
    // while generations seal every 2 s, until every ring is full.
    let started = Instant::now();
    let mut round = 0_usize;
    loop {
        for name in &created {
            let ids: Vec<String> = (0..IDS_PER_ROUND)
                .map(|i| format!("{name}-{round}-{i}"))
                .collect();
            let r = c
                .post(daemon.url(&format!("/v1/namespaces/{name}/check-and-mark")))
                .json(&json!({ "ids": ids }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
        round += 1;
        let mut full = true;
        for name in &created {
            let v: Value = c
                .get(daemon.url(&format!("/v1/namespaces/{name}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            full &= v["generations"].as_array().unwrap().len() == GENERATIONS;
        }
        // Two more rounds once full, so the newest generations are written too.
        if full && round >= 8 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the rings never filled"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (rss, hwm) = memory(pid);
    let v: Value = c
        .get(daemon.url("/v1/namespaces/default"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let allocated = v["filter_budget"]["allocated_bytes"].as_u64().unwrap();
    let bound = baseline + BUDGET + CACHE_BYTES + MEMTABLE_BYTES + SLACK;
    println!(
        "after {round} rounds in {:.1} s: RSS {} (peak {}), filters allocated {}; bound {} = \
         baseline {} + budget {} + block cache {} + memtables {} + slack {}",
        started.elapsed().as_secs_f64(),
        mib(rss),
        mib(hwm),
        mib(allocated),
        mib(bound),
        mib(baseline),
        mib(BUDGET),
        mib(CACHE_BYTES),
        mib(MEMTABLE_BYTES),
        mib(SLACK),
    );
    assert!(allocated <= BUDGET, "{v}");
    assert!(
        rss > baseline + allocated / 2,
        "the filters are not resident: the measurement would prove nothing"
    );
    assert!(hwm <= bound, "peak RSS {} over {}", mib(hwm), mib(bound));

    let metrics = c
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("oncelyd_filter_budget_bytes {BUDGET}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("oncelyd_filter_charged_bytes "),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("oncelyd_filter_allocated_bytes {allocated}"))
            || metrics.contains("oncelyd_filter_allocated_bytes "),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "oncelyd_namespace_charged_bytes{{namespace=\"big-0\"}} {each}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_cap_refuses_one_more_and_a_budget_too_small_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), &["--max-namespaces", "3"], &[]);
    let c = client();
    let put = |name: &str| {
        c.put(daemon.url(&format!("/v1/namespaces/{name}")))
            .json(&namespace_config())
            .send()
    };
    assert_eq!(put("a").await.unwrap().status().as_u16(), 201);
    assert_eq!(put("b").await.unwrap().status().as_u16(), 201);
    let r = put("c").await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_namespaces", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("already 3 namespaces") && message.contains("max_namespaces"),
        "{message}"
    );
    // Changing an existing one is no new namespace.
    assert_eq!(put("a").await.unwrap().status().as_u16(), 200);
    drop(daemon);

    let other = tempfile::tempdir().unwrap();
    let data = other.path().to_str().unwrap().to_owned();
    let (status, stderr) = run_to_exit(
        command(
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &data,
                "--max-filter-bytes",
                "1MiB",
            ],
            &[],
        ),
        Duration::from_secs(60),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("invalid setting max_filter_bytes: cannot hold the default namespace"),
        "{stderr}"
    );
}
