//! Crash safety under kill -9: a child process (this test binary, re-executed)
//! marks fresh IDs on a RocksDB tracker in `flush` mode and reports every
//! acknowledged batch on stdout; the parent kills it with SIGKILL at a seeded-random
//! moment, reopens the store in-process and checks that every acknowledged ID still
//! reads `Duplicate`, that IDs never sent read `New`, and that the batch in flight at
//! the kill landed whole or not at all. Then the next cycle starts on the same
//! directory, so each recovery also starts from a previously recovered store.
//!
//! Generations are small (5,000 IDs, 4 of them), so kills often land around
//! rotations (snapshot, ring record, range deletion). All 4 keep exact tables, so a
//! remembered ID must read exactly `Duplicate`, never `ProbableDuplicate`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{clock, open_rocks, ring_config};
use oncely::{NamespaceConfig, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NS: &str = "default";
/// Set for the child process: the data directory. Without it `crash_child` is a
/// no-op, so an ordinary run of this binary skips it.
const CHILD_DIR: &str = "ONCELY_CRASH_CHILD";
const CHILD_CYCLE: &str = "ONCELY_CRASH_CYCLE";
const CHILD_SEED: &str = "ONCELY_CRASH_SEED";

const GENERATIONS: u32 = 4;
const CAPACITY: u64 = 5_000;
/// With capacity seals only (the span is a day on a clock that never moves), an ID's
/// generation leaves the ring only after `GENERATIONS - 1` later generations have
/// filled up: an ID with fewer than this many newer IDs is certainly remembered.
/// Older acknowledged IDs are legitimately forgotten and are not checked.
const WINDOW: u64 = (GENERATIONS as u64 - 1) * CAPACITY;
/// Not a multiple of the capacity, so batches straddle generation boundaries.
const MAX_BATCH: u64 = 700;
/// Bounds the child if the parent never kills it.
const MAX_CHILD_BATCHES: u32 = 20_000;

fn config() -> NamespaceConfig {
    ring_config(
        GENERATIONS,
        GENERATIONS,
        CAPACITY,
        Duration::from_secs(86_400),
        1e-6,
    )
}

/// IDs never repeat across cycles: the cycle is part of the ID.
fn event(cycle: u32, n: u64) -> String {
    format!("c{cycle:03}-{n:09}")
}

fn env<T: std::str::FromStr>(key: &str) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing or malformed"))
}

/// The child: marks fresh batches until killed. Before each call it announces the
/// batch (`@mark start end`), after the call returns it acknowledges it
/// (`@ack start end`). Writing stops the loop when the parent has gone.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let cycle: u32 = env(CHILD_CYCLE);
    let mut rng = StdRng::seed_from_u64(env(CHILD_SEED));
    let t = open_rocks(Path::new(&dir), &clock(), config());
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        // The leading line break keeps our lines apart from the harness's
        // `test crash_child ... ` prefix.
        writeln!(out, "\n{line}").and_then(|()| out.flush()).is_ok()
    };
    if !say("@ready".into()) {
        return;
    }
    let mut next = 0_u64;
    for _ in 0..MAX_CHILD_BATCHES {
        let end = next + rng.random_range(1..=MAX_BATCH);
        if !say(format!("@mark {next} {end}")) {
            return;
        }
        let ids: Vec<String> = (next..end).map(|n| event(cycle, n)).collect();
        let verdicts = t.check_and_mark(NS, &ids, None).unwrap();
        assert!(
            verdicts.iter().all(|v| *v == Verdict::New),
            "fresh IDs must be new"
        );
        if !say(format!("@ack {next} {end}")) {
            return;
        }
        next = end;
    }
}

/// Kills the child on every way out of the parent, panics included.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the child told the parent.
#[derive(Debug, Default)]
struct Heard {
    ready: bool,
    /// IDs `0..acked` were acknowledged (the child goes strictly in order).
    acked: u64,
    acks: u32,
    /// Announced but not acknowledged: may or may not have been stored.
    in_flight: Option<(u64, u64)>,
}

impl Heard {
    /// Takes one complete line; output of the harness is ignored.
    fn absorb(&mut self, line: &str) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let range = || -> (u64, u64) {
            let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{line:?}"));
            assert_eq!(fields.len(), 3, "malformed line {line:?}");
            (parse(fields[1]), parse(fields[2]))
        };
        match fields.first().copied() {
            Some("@ready") => self.ready = true,
            Some("@mark") => {
                let (start, end) = range();
                assert_eq!(start, self.acked, "the child marks in order");
                self.in_flight = Some((start, end));
            }
            Some("@ack") => {
                let (start, end) = range();
                assert_eq!(
                    Some((start, end)),
                    self.in_flight,
                    "ack of the announced batch"
                );
                self.acked = end;
                self.acks += 1;
                self.in_flight = None;
            }
            _ => {}
        }
    }

    /// Reads one line; `false` at the end of the output. A last line cut short by the
    /// kill is dropped: it was never fully said.
    fn hear(&mut self, from: &mut BufReader<ChildStdout>) -> bool {
        let mut line = String::new();
        let n = from
            .read_line(&mut line)
            .expect("reading the child's stdout");
        if line.ends_with('\n') {
            self.absorb(&line);
        }
        n > 0
    }
}

/// One cycle's outcome, kept to decide which older IDs are still inside the window.
struct Cycle {
    cycle: u32,
    acked: u64,
    in_flight: u64,
}

fn spawn_child(dir: &Path, cycle: u32, seed: u64) -> Reaper {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_CYCLE, cycle.to_string())
        .env(CHILD_SEED, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the child");
    Reaper(child)
}

/// Verdicts for `cycle`'s IDs `range`, as (ID, verdict) pairs that differ from `want`.
fn differing(
    t: &oncely::Tracker,
    cycle: u32,
    range: std::ops::Range<u64>,
    want: Verdict,
) -> Vec<(String, Verdict)> {
    let names: Vec<String> = range.map(|n| event(cycle, n)).collect();
    let mut out = Vec::new();
    for chunk in names.chunks(5_000) {
        let verdicts = t.check(NS, chunk).unwrap();
        out.extend(
            chunk
                .iter()
                .zip(verdicts)
                .filter(|(_, v)| *v != want)
                .map(|(n, v)| (n.clone(), v)),
        );
    }
    out
}

fn run_cycles(cycles: u32, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut history: Vec<Cycle> = Vec::new();
    for cycle in 0..cycles {
        let kill_after = rng.random_range(1..=40_u32);
        let delay = Duration::from_micros(rng.random_range(0..=20_000));
        let mut child = spawn_child(dir.path(), cycle, rng.random());
        let mut out = BufReader::new(child.0.stdout.take().unwrap());
        let mut heard = Heard::default();
        while heard.acks < kill_after {
            assert!(
                heard.hear(&mut out),
                "cycle {cycle}: the child stopped before the kill (after {} acks): {:?}",
                heard.acks,
                child.0.wait()
            );
        }
        std::thread::sleep(delay);
        child.0.kill().unwrap();
        let _ = child.0.wait().unwrap();
        // Whatever the child acknowledged before it died counts too.
        while heard.hear(&mut out) {}
        drop(child);
        assert!(heard.ready);

        let t = open_rocks(dir.path(), &clock(), config());
        let in_flight = heard.in_flight.map_or(0, |(s, e)| e - s);
        history.push(Cycle {
            cycle,
            acked: heard.acked,
            in_flight,
        });

        // Walk back from the newest acknowledged ID, counting every ID that may have
        // been stored after it (unacknowledged batches included), and check those
        // still certainly inside the window.
        let mut newer = 0_u64;
        let mut checked = 0_u64;
        let mut lost = Vec::new();
        for past in history.iter().rev() {
            newer += past.in_flight;
            if newer >= WINDOW {
                break;
            }
            let from = past.acked.saturating_sub(WINDOW - newer);
            lost.extend(differing(
                &t,
                past.cycle,
                from..past.acked,
                Verdict::Duplicate,
            ));
            checked += past.acked - from;
            newer += past.acked;
        }

        // The unacknowledged batch is one write: all of it or none of it.
        let landed = heard.in_flight.map(|(s, e)| {
            let names: Vec<String> = (s..e).map(|n| event(cycle, n)).collect();
            let verdicts = t.check(NS, &names).unwrap();
            let stored = verdicts
                .iter()
                .filter(|v| **v == Verdict::Duplicate)
                .count();
            assert!(
                stored == 0 || stored == names.len(),
                "cycle {cycle}: the batch in flight {s}..{e} landed in part: {stored} of {}",
                names.len()
            );
            stored > 0
        });

        let next_free = heard.in_flight.map_or(heard.acked, |(_, e)| e);
        let mut phantoms = differing(&t, cycle, next_free..next_free + 500, Verdict::New);
        phantoms.extend(differing(&t, cycle + 1, 0..500, Verdict::New));

        let newest = t.namespace_info(NS).unwrap().generations[0].id;
        println!(
            "cycle {cycle}: killed after {kill_after} acks + {delay:?}; acknowledged {} \
             (generation {newest}), in flight {}, checked {checked}, lost {}, \
             never-sent not new {}",
            heard.acked,
            match landed {
                None => "none".to_owned(),
                Some(true) => format!("{in_flight} IDs, landed"),
                Some(false) => format!("{in_flight} IDs, not landed"),
            },
            lost.len(),
            phantoms.len(),
        );
        assert!(
            lost.is_empty(),
            "cycle {cycle}: {} acknowledged IDs lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        assert!(
            phantoms.is_empty(),
            "cycle {cycle}: IDs never sent are not new: {:?}",
            &phantoms[..phantoms.len().min(5)]
        );
        assert!(checked > 0, "cycle {cycle}: nothing to check");
    }
}

#[test]
fn acknowledged_marks_survive_kill_9() {
    run_cycles(5, 0xC4A5);
}

/// The long run: `cargo test -p oncely --test crash -- --ignored --nocapture`.
#[test]
#[ignore = "long: 50 kill cycles"]
fn acknowledged_marks_survive_kill_9_many_times() {
    run_cycles(50, 0x50_C4A5);
}
