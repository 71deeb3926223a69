//! A store fault that clears is recovered from without a restart. The process runs
//! out of file descriptors, so RocksDB cannot create its next file and refuses every
//! write from then on (its background error), even once descriptors are free again;
//! the tracker's tick reopens the store, and marking resumes with nothing
//! acknowledged lost. (Alone in its file: lowering the descriptor limit affects the
//! whole test process.)

mod common;

use std::fs::File;
use std::process::Command;
use std::time::Duration;

use common::{clock, ids, open_rocks, small_config};
use oncely::Verdict;

const NS: &str = "default";

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's soft limit on open files, from `/proc/self/limits`.
fn soft_limit() -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_owned()
}

/// Sets this process's soft limit on open files (the `prlimit` program, from
/// util-linux, works on a running process).
fn set_soft_limit(soft: &str) -> std::io::Result<()> {
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={soft}:"))
        .status()?;
    assert!(status.success(), "prlimit failed: {status}");
    Ok(())
}

#[test]
fn a_store_that_ran_out_of_descriptors_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let t = open_rocks(dir.path(), &c, small_config(10_000_000));
    let before = ids(0..1_000);
    assert!(
        t.check_and_mark(NS, &before, None)
            .unwrap()
            .iter()
            .all(|v| *v == Verdict::New)
    );

    // Spare descriptors, freed later so that restoring the limit can spawn a process.
    let original = soft_limit();
    let spare: Vec<File> = (0..16).map(|_| File::open("/dev/null").unwrap()).collect();
    set_soft_limit(&open_descriptors().to_string()).unwrap();

    // Mark until RocksDB needs a file it cannot open (a new log at a memtable switch,
    // or a flush's table file).
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for batch in 0..400_u32 {
        let batch_ids = ids(1_000_000 + batch * 10_000..1_000_000 + (batch + 1) * 10_000);
        match t.check_and_mark(NS, &batch_ids, None) {
            Ok(_) => acknowledged.extend(batch_ids),
            Err(_) => {
                refused = batch_ids;
                break;
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "the store never ran out of descriptors"
    );
    assert!(t.storage_failure().is_some());

    drop(spare);
    let mut restored = set_soft_limit(&original);
    for _ in 0..20 {
        if restored.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        restored = set_soft_limit(&original);
    }
    restored.unwrap();
    assert!(
        t.check_and_mark(NS, &["after-the-fault"], None).is_err(),
        "RocksDB stays stuck after the cause has cleared"
    );

    c.advance(Duration::from_secs(2));
    t.tick().unwrap();
    assert_eq!(t.storage_failure(), None, "the tick reopened the store");
    assert_eq!(
        t.check_and_mark(NS, &["after-the-fault"], None).unwrap(),
        [Verdict::New]
    );
    for chunk in [before.as_slice(), acknowledged.as_slice()] {
        for part in chunk.chunks(10_000) {
            assert!(
                t.check(NS, part)
                    .unwrap()
                    .iter()
                    .all(|v| *v == Verdict::Duplicate),
                "every acknowledged mark survived"
            );
        }
    }
    assert!(
        t.check_and_mark(NS, &refused[..100], None)
            .unwrap()
            .iter()
            .all(|v| *v == Verdict::New),
        "the refused call marked nothing"
    );
}
