//! The soak: a real `oncelyd serve` driven at a steady rate with rotation on, for 10
//! minutes, while its resident memory is sampled. RSS must stay within the bound the
//! configuration implies, must not keep growing once the ring is full, and the run
//! prints the figures that show it.
//!
//! ```sh
//! cargo test -p oncelyd --release --test soak -- --ignored --nocapture
//! ONCELY_SOAK_SECS=60 cargo test -p oncelyd --test soak -- --ignored --nocapture
//! ```
//!
//! The daemon is the `oncelyd` binary cargo builds for the test's profile: run it
//! with `--release` for figures worth quoting (a dev-profile daemon is fine for
//! checking the test itself). `ONCELY_SOAK_SECS` sets the length (default 600) and
//! `ONCELY_SOAK_RATE` the target IDs per second (default 50,000);
//! `ONCELY_SOAK_SLOW_SECS` the slow-client phase's (default 60).
//!
//! # The slow-client phase
//!
//! Then the same steady load runs again for `ONCELY_SOAK_SLOW_SECS` while
//! [`SLOW_BODIES`] connections each send a check-and-mark head and one byte of its
//! body and stall, and [`IDLE`] connections send nothing, each reconnecting as soon
//! as the daemon closes it (408 after `body_read_timeout`, or `idle_timeout`). The
//! honest load must hold: no error, and at least [`SLOW_PHASE_SHARE`] of the rate
//! the first phase achieved.
//!
//! # The set-up
//!
//! The namespace `soak` has 4 generations of at most 1,000,000 IDs or 60 s each, the
//! 2 newest exact, and a 0.1% false-positive target. At 50,000 IDs/s with 10%
//! duplicates, 45,000 new IDs per second fill a generation in about 22 s, so a
//! 10-minute run rotates about 27 times; the ring is full (4 live generations) after
//! about 70 s and drops its oldest generation at every rotation from about 90 s on. The
//! load is `oncelyd load --rate` (the library's [`oncelyd::load::run`], on its own
//! thread): 1,000-ID batches on 4 connections.
//!
//! # The bound
//!
//! `RSS <= baseline + filters + block cache + memtables + slack`, where
//!
//! * baseline: the daemon's RSS after start-up, before any load, measured;
//! * filters: `generations + 1` Bloom filters of the namespace's size, from the
//!   library's sizing (`NamespaceConfig::filter_sizing`): the ring, and the new
//!   generation's filter, which a rotation allocates before it drops the oldest;
//! * block cache and memtables: RocksDB's configured budgets (`cache_bytes`,
//!   `memtable_bytes`, written into the daemon's config file here). The memtables
//!   are charged to the block cache (a write-buffer manager), so counting both
//!   leaves one memtable budget of margin;
//! * slack: [`SLACK`], a stated allowance for what no setting bounds: RocksDB's
//!   memory outside its cache (table readers, flush and compaction buffers, the
//!   write-ahead log writer), request and answer buffers, thread stacks, and the
//!   allocator's fragmentation.
//!
//! The peak is the kernel's high-water mark (`VmHWM`), so a spike between two
//! samples counts too.
//!
//! # The leak check
//!
//! Memory grows while the ring fills and RocksDB's block cache warms, then must
//! level off. How soon depends on the allocator: with glibc's malloc, RSS rose from
//! 105 to 150 MiB between the second and sixth minutes of a 10-minute run, then held
//! between 147 and 156 MiB; with jemalloc (the daemon's allocator) it holds between
//! 106 and 118 MiB from the second minute. So the reference is the third quarter, not
//! an earlier one: a leak grows in every quarter, warming only in the first ones. The
//! last quarter's peak RSS may exceed the third quarter's by at most
//! [`LEAK_TOLERANCE`]. A run whose ring of generations is not full by the third
//! quarter (under about 5 minutes: it fills after about 70 s) says the check does
//! not apply rather than pass it; the default 600 s has room.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, client};
use oncely::{HumanDuration, NamespaceConfig};
use oncelyd::cli::LoadArgs;
use oncelyd::load::{self, LoadReport};
use serde_json::Value;

const NS: &str = "soak";
const GENERATIONS: u32 = 4;
const EXACT_GENERATIONS: u32 = 2;
const CAPACITY: u64 = 1_000_000;
const SPAN: Duration = Duration::from_secs(60);
const FP_RATE: f64 = 0.001;
const CACHE_BYTES: u64 = 64 << 20;
const MEMTABLE_BYTES: u64 = 16 << 20;
const BATCH: usize = 1_000;
const CONNECTIONS: usize = 4;
const DUPLICATES: f64 = 0.1;
/// Connections of the slow-client phase stalled one byte into a body.
const SLOW_BODIES: usize = 300;
/// Connections of the slow-client phase that send nothing.
const IDLE: usize = 300;
/// The share of the first phase's rate the honest load must keep beside them.
const SLOW_PHASE_SHARE: f64 = 0.95;
/// Memory no setting bounds (see the module docs).
const SLACK: u64 = 48 << 20;
/// How often RSS and the namespace's stats are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The leak check: the last quarter's peak RSS may exceed the third quarter's by at
/// most this fraction.
const LEAK_TOLERANCE: f64 = 0.05;

const MIB: f64 = 1_048_576.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
    })
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status of the daemon");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// One look at the daemon.
struct Sample {
    /// Seconds since the load started.
    t: f64,
    rss: u64,
    live_generations: usize,
    /// Filter bytes across live generations, as the daemon reports them.
    filter_bytes: u64,
}

/// The namespace's open generation number, live generations and filter bytes.
async fn namespace_stats(
    c: &reqwest::Client,
    daemon: &Daemon,
) -> Result<(u64, usize, u64), String> {
    let r = c
        .get(daemon.url(&format!("/v1/namespaces/{NS}")))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("GET namespace: {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    let gens = v["generations"].as_array().ok_or("no generations")?;
    let open = gens
        .first()
        .and_then(|g| g["id"].as_u64())
        .ok_or("no open generation")?;
    let bytes = v["memory_bytes"].as_u64().ok_or("no memory_bytes")?;
    Ok((open, gens.len(), bytes))
}

fn write_config(path: &Path) {
    let config = format!(
        "cache_bytes = {CACHE_BYTES}\n\
         memtable_bytes = {MEMTABLE_BYTES}\n\
         \n\
         [namespaces.{NS}]\n\
         generations = {GENERATIONS}\n\
         exact_generations = {EXACT_GENERATIONS}\n\
         generation_capacity = {CAPACITY}\n\
         generation_span = \"{}s\"\n\
         fp_rate = {FP_RATE}\n",
        SPAN.as_secs()
    );
    std::fs::write(path, config).unwrap();
}

/// The largest RSS among samples taken in `[from, to)` seconds of the run.
fn peak_between(samples: &[Sample], from: f64, to: f64) -> Option<u64> {
    samples
        .iter()
        .filter(|s| s.t >= from && s.t < to)
        .map(|s| s.rss)
        .max()
}

/// The leak check's figures: the reference quarter's start, its peak RSS, the last
/// quarter's peak and the growth between them; `Err` says why it does not apply.
fn leak_check(samples: &[Sample], secs: f64) -> Result<(f64, u64, u64, f64), String> {
    let quarter = secs / 4.0;
    let full_at = samples
        .iter()
        .find(|s| s.live_generations == GENERATIONS as usize)
        .map(|s| s.t)
        .ok_or_else(|| format!("the ring of {GENERATIONS} generations never filled"))?;
    let from = 2.0 * quarter;
    if full_at > from {
        return Err(format!(
            "the ring filled at {full_at:.0} s, after the third quarter began (a run of \
             at least {:.0} s has it full by then)",
            2.0 * full_at
        ));
    }
    let reference = peak_between(samples, from, from + quarter).ok_or("no reference samples")?;
    let last = peak_between(samples, 3.0 * quarter, f64::INFINITY).ok_or("no last samples")?;
    Ok((from, reference, last, last as f64 / reference as f64 - 1.0))
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "long run: 10 minutes (ONCELY_SOAK_SECS) at a steady rate with rotation"]
async fn rss_stays_within_the_configured_bound_under_a_steady_rate() {
    let secs = env_u64("ONCELY_SOAK_SECS", 600);
    let rate = env_u64("ONCELY_SOAK_RATE", 50_000);
    assert!(
        secs >= 20,
        "ONCELY_SOAK_SECS={secs}: at least 20 s, to have quarters"
    );
    assert!(rate > 0, "ONCELY_SOAK_RATE must be above 0");

    // Dropped last: the daemon (declared after it) is killed before the directory
    // goes, on every path.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("oncely.toml");
    write_config(&config_path);
    let data_dir = dir.path().join("data");
    let mut daemon = Daemon::start(&data_dir, &["--config", config_path.to_str().unwrap()], &[]);
    let pid = daemon.child.id();
    let c = client();

    // The bound's parts.
    let config = NamespaceConfig::builder()
        .generations(GENERATIONS)
        .exact_generations(EXACT_GENERATIONS)
        .generation_capacity(CAPACITY)
        .generation_span(SPAN)
        .fp_rate(FP_RATE)
        .build()
        .unwrap();
    let filter_each = config.filter_sizing().memory_bytes();
    let filters = filter_each * u64::from(GENERATIONS + 1);
    let (first_open, _, live_bytes) = namespace_stats(&c, &daemon).await.unwrap();
    assert_eq!(
        live_bytes, filter_each,
        "one open generation, sized as the library says"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (baseline, _) = memory(pid);
    let bound = baseline + filters + CACHE_BYTES + MEMTABLE_BYTES + SLACK;

    println!(
        "soak: {secs} s at {} IDs/s, batches of {BATCH} on {CONNECTIONS} connections, \
         {:.0}% duplicates; namespace {NS}: {GENERATIONS} generations ({EXACT_GENERATIONS} \
         exact) of {} IDs or {} s, fp {FP_RATE}; daemon pid {pid} at {}",
        grouped(rate),
        DUPLICATES * 100.0,
        grouped(CAPACITY),
        SPAN.as_secs(),
        daemon.addr,
    );
    println!("baseline RSS after start-up: {}", mib(baseline));

    // The load, on its own thread (it runs its own runtime).
    let args = LoadArgs {
        url: daemon.url(""),
        namespace: NS.into(),
        batch: BATCH,
        concurrency: CONNECTIONS,
        duration: HumanDuration(Duration::from_secs(secs)),
        ids: None,
        rate: Some(rate as f64),
        duplicates: DUPLICATES,
        token: None,
        json: true,
        seed: None,
        threads: 1,
    };
    let started = Instant::now();
    let loader = std::thread::spawn(move || load::run(&args));

    let mut samples = Vec::new();
    let mut stats_errors = Vec::new();
    let mut next_print = 0.0;
    while !loader.is_finished() {
        let (rss, hwm) = memory(pid);
        let t = started.elapsed().as_secs_f64();
        match namespace_stats(&c, &daemon).await {
            Ok((open_generation, live_generations, filter_bytes)) => {
                if t >= next_print {
                    println!(
                        "  {t:6.1} s  RSS {:>10}  peak {:>10}  generation {open_generation} \
                         ({live_generations} live, filters {})",
                        mib(rss),
                        mib(hwm),
                        mib(filter_bytes),
                    );
                    next_print += (secs as f64 / 20.0).max(SAMPLE_EVERY.as_secs_f64());
                }
                samples.push(Sample {
                    t,
                    rss,
                    live_generations,
                    filter_bytes,
                });
            }
            Err(e) => stats_errors.push(format!("{t:.1} s: {e}")),
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let report: LoadReport = loader
        .join()
        .expect("the load thread ends")
        .expect("the load runs");
    let (end_rss, hwm) = memory(pid);
    let (last_open, live, end_filters) = namespace_stats(&c, &daemon).await.unwrap();
    let rotations = last_open - first_open;

    let load_secs = report.elapsed_s;
    let peak_sampled = samples.iter().map(|s| s.rss).max().unwrap_or(end_rss);
    let peak_filters = samples.iter().map(|s| s.filter_bytes).max().unwrap_or(0);
    let most_live = samples
        .iter()
        .map(|s| s.live_generations)
        .max()
        .unwrap_or(live);
    let leak = leak_check(&samples, load_secs);
    let by_capacity = report.verdicts.new / (CAPACITY + BATCH as u64);
    let by_time = (load_secs / SPAN.as_secs_f64()).floor() as u64;
    let min_rotations = by_capacity.max(by_time).max(1);
    let fresh_fp = report.unexpected.fresh_not_new as f64 / report.fresh_ids.max(1) as f64;

    // The figures, before any assertion, so that a failing run says why.
    println!("{}", load::render_text(&report));
    println!("soak summary");
    println!(
        "  rate         target {} IDs/s, achieved {} IDs/s ({:.1}%), {} scheduled \
         requests missed",
        grouped(rate),
        grouped(report.ids_per_sec.round() as u64),
        report.ids_per_sec / rate as f64 * 100.0,
        report.missed_requests,
    );
    println!(
        "  IDs          {} sent in {load_secs:.1} s: {} fresh ({} new, {} probable_duplicate: \
         {fresh_fp:.2e} of fresh, target {FP_RATE}), {} repeats ({} duplicate)",
        grouped(report.ids),
        grouped(report.fresh_ids),
        grouped(report.verdicts.new),
        grouped(report.unexpected.fresh_not_new),
        grouped(report.repeated_ids),
        grouped(report.verdicts.duplicate),
    );
    println!(
        "  errors       {} load requests, {} stats requests",
        report.errors.total,
        stats_errors.len()
    );
    println!(
        "  rotations    {rotations} (generation {first_open} -> {last_open}; at least \
         {min_rotations} expected), {live} live, at most {most_live}"
    );
    println!(
        "  RSS          start {}, end {}, peak sampled {}, peak (VmHWM) {}",
        mib(baseline),
        mib(end_rss),
        mib(peak_sampled),
        mib(hwm),
    );
    println!(
        "  bound        {} = baseline {} + filters {} ({} x {}) + block cache {} + \
         memtables {} + slack {}; headroom at peak {}",
        mib(bound),
        mib(baseline),
        mib(filters),
        GENERATIONS + 1,
        mib(filter_each),
        mib(CACHE_BYTES),
        mib(MEMTABLE_BYTES),
        mib(SLACK),
        mib(bound.saturating_sub(hwm)),
    );
    println!(
        "  filters      live now {}, at most {} (the daemon's figures)",
        mib(end_filters),
        mib(peak_filters),
    );
    let growing = match &leak {
        Ok((from, reference, last, growth)) => {
            println!(
                "  leak check   peak RSS {from:.0}-{:.0} s {}, last quarter {} ({:+.1}%, \
                 limit +{:.0}%)",
                from + load_secs / 4.0,
                mib(*reference),
                mib(*last),
                growth * 100.0,
                LEAK_TOLERANCE * 100.0,
            );
            Some(*growth > LEAK_TOLERANCE)
        }
        Err(why) => {
            println!("  leak check   does not apply: {why}");
            None
        }
    };
    let verdict = match (hwm <= bound, growing) {
        (true, Some(false)) => "within the bound and level",
        (true, None) => "within the bound (too short a run to judge growth)",
        (true, Some(true)) => "within the bound but STILL GROWING",
        (false, _) => "OVER THE BOUND",
    };
    println!("  verdict      RSS {verdict}");

    assert!(
        stats_errors.is_empty(),
        "stats requests failed: {stats_errors:?}"
    );
    assert_eq!(report.errors.total, 0, "load requests failed: {report:?}");
    assert_eq!(report.failed_ids, 0, "{report:?}");
    assert_eq!(report.verdicts.in_progress, 0, "{report:?}");
    assert_eq!(
        report.verdicts.duplicate, report.repeated_ids,
        "every repeat answered duplicate"
    );
    assert_eq!(report.unexpected.repeated_not_duplicate, 0, "{report:?}");
    assert!(
        fresh_fp <= FP_RATE,
        "fresh IDs answered probable_duplicate: {fresh_fp:.2e} > {FP_RATE}"
    );
    assert!(
        report.ids_per_sec >= rate as f64 * 0.5,
        "the daemon took under half the target rate: {report:?}"
    );
    assert!(
        rotations >= min_rotations,
        "{rotations} rotations, at least {min_rotations} expected"
    );
    assert!(
        most_live <= GENERATIONS as usize,
        "{most_live} live generations"
    );
    assert!(
        hwm <= bound,
        "peak RSS {} over the bound {}",
        mib(hwm),
        mib(bound)
    );
    if let Ok((from, reference, last, growth)) = leak {
        assert!(
            growth <= LEAK_TOLERANCE,
            "RSS still growing: the last quarter's peak {} is {:+.1}% over the peak from \
             {from:.0} s, {}",
            mib(last),
            growth * 100.0,
            mib(reference),
        );
    }

    slow_client_phase(&daemon, rate, report.ids_per_sec).await;

    // A clean stop, as an operator would: SIGTERM, then exit 0.
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}; log:\n{}", daemon.log_text());
}

/// What the slow clients saw: 408 answers, and closes by the daemon.
#[derive(Default)]
struct Swarm {
    timeouts_408: AtomicU64,
    closed: AtomicU64,
    stop: AtomicBool,
}

/// One slow client: connects, stalls (one byte into a body, or silent), waits for
/// the daemon to close the connection, and again, until told to stop.
async fn slow_client(addr: std::net::SocketAddr, stall_in_body: bool, swarm: Arc<Swarm>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while !swarm.stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if stall_in_body {
            let head = format!(
                "POST /v1/namespaces/{NS}/check-and-mark HTTP/1.1\r\nhost: soak\r\n\
                 content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                continue;
            }
        }
        let mut answer = Vec::new();
        let mut chunk = [0_u8; 1024];
        loop {
            tokio::select! {
                read = stream.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if swarm.stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
        if answer.starts_with(b"HTTP/1.1 408") {
            swarm.timeouts_408.fetch_add(1, Ordering::Relaxed);
        }
        swarm.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The slow-client phase (see the module docs): the honest rate must hold.
async fn slow_client_phase(daemon: &Daemon, rate: u64, first_rate: f64) {
    let secs = env_u64("ONCELY_SOAK_SLOW_SECS", 60);
    let swarm = Arc::new(Swarm::default());
    let mut clients = Vec::new();
    for i in 0..SLOW_BODIES + IDLE {
        clients.push(tokio::spawn(slow_client(
            daemon.addr,
            i < SLOW_BODIES,
            Arc::clone(&swarm),
        )));
    }
    // Every slow client connected before the honest load starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let args = LoadArgs {
        url: daemon.url(""),
        namespace: NS.into(),
        batch: BATCH,
        concurrency: CONNECTIONS,
        duration: HumanDuration(Duration::from_secs(secs)),
        ids: None,
        rate: Some(rate as f64),
        duplicates: DUPLICATES,
        token: None,
        json: true,
        seed: None,
        threads: 1,
    };
    let loader = std::thread::spawn(move || load::run(&args));
    let c = client();
    let mut most_open = 0.0_f64;
    while !loader.is_finished() {
        if let Ok(r) = c.get(daemon.url("/metrics")).send().await
            && let Ok(text) = r.text().await
            && let Some(open) = text
                .lines()
                .find_map(|l| l.strip_prefix("oncelyd_connections_open "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        {
            most_open = most_open.max(open);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report: LoadReport = loader
        .join()
        .expect("the load thread ends")
        .expect("the load runs");
    swarm.stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    println!("slow-client phase");
    println!("{}", load::render_text(&report));
    println!(
        "  beside      {SLOW_BODIES} connections stalled in a body and {IDLE} idle ones \
         (reconnecting when closed): at most {most_open:.0} connections open, {} answered \
         408, {} closes",
        swarm.timeouts_408.load(Ordering::Relaxed),
        swarm.closed.load(Ordering::Relaxed),
    );
    println!(
        "  honest rate {} IDs/s ({:.1}% of the first phase's {}), p99 {:?} us, {} errors",
        grouped(report.ids_per_sec.round() as u64),
        report.ids_per_sec / first_rate * 100.0,
        grouped(first_rate.round() as u64),
        report.latency_us.as_ref().map(|l| l.p99),
        report.errors.total,
    );
    assert!(
        most_open >= (SLOW_BODIES + IDLE) as f64,
        "the slow clients were not all connected: at most {most_open} connections"
    );
    assert_eq!(report.errors.total, 0, "honest requests failed: {report:?}");
    assert!(
        report.ids_per_sec >= first_rate * SLOW_PHASE_SHARE,
        "the honest rate fell to {:.0} IDs/s beside slow clients, under {:.0}% of {first_rate:.0}",
        report.ids_per_sec,
        SLOW_PHASE_SHARE * 100.0
    );
}
