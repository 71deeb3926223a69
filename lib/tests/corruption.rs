//! Damaged files: flipped bytes and truncation in every file of a store. Start-up
//! either recovers without losing an acknowledged mark, or refuses (at open, or at the
//! first read that meets the damage) with an error naming what is damaged. It never
//! answers `new` for an acknowledged ID.
//!
//! One exception is inherent: a write-ahead log cut short looks exactly like a write
//! interrupted by a crash, and its torn last record is dropped. Marks in that record
//! were never acknowledged when the cut is a real crash; when the cut is damage, the
//! marks before it still all survive, which is what the test checks.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{clock, ids, open_rocks, small_config};
use oncely::{ManualClock, Tracker, Verdict};

/// A store with sealed and open generations, SST files, a snapshot per sealed
/// generation, and recent marks only in the write-ahead log.
fn pristine(c: &ManualClock) -> (tempfile::TempDir, Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let settled = ids(0..2_000);
    let recent = ids(2_000..2_300);
    {
        let t = open_rocks(dir.path(), c, small_config(800));
        assert!(
            t.check_and_mark("default", &settled, None)
                .unwrap()
                .iter()
                .all(|v| v.is_new())
        );
        t.close().unwrap(); // flushes memtables into SST files
    }
    {
        let t = open_rocks(dir.path(), c, small_config(800));
        assert!(
            t.check_and_mark("default", &recent, None)
                .unwrap()
                .iter()
                .all(|v| v.is_new())
        );
        // Dropped without close: the recent marks live in the write-ahead log only.
    }
    (dir, settled, recent)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Files whose damage must not matter: RocksDB's human-readable logs and lock file.
fn harmless(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name.starts_with("LOG") || name == "LOCK"
}

enum Damage {
    Flip,
    Truncate,
}

fn damage(path: &Path, how: &Damage) {
    let mut bytes = fs::read(path).unwrap();
    if bytes.is_empty() {
        return;
    }
    match how {
        Damage::Flip => {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x5a;
        }
        Damage::Truncate => bytes.truncate(bytes.len() / 2),
    }
    fs::write(path, bytes).unwrap();
}

/// Every acknowledged ID reads `duplicate`, or the damage surfaces as an error.
fn verify(t: &Tracker, acked: &[String], what: &str) -> Result<(), String> {
    for chunk in acked.chunks(500) {
        match t.check("default", chunk) {
            Ok(v) => {
                if let Some(pos) = v.iter().position(|v| *v == Verdict::New) {
                    return Err(format!("{what}: acknowledged {} reads new", chunk[pos]));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("orrupt") || msg.contains("checksum") || msg.contains(".sst"),
                    "{what}: unhelpful error {msg}"
                );
                return Ok(());
            }
        }
    }
    Ok(())
}

#[test]
fn damage_is_recovered_from_or_refused_never_silent() {
    let c = clock();
    let (source, settled, recent) = pristine(&c);
    let mut outcomes = Vec::new();
    for file in files(source.path()) {
        if harmless(&file) {
            continue;
        }
        let rel = file.strip_prefix(source.path()).unwrap().to_owned();
        for how in [Damage::Flip, Damage::Truncate] {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(source.path(), copy.path());
            damage(&copy.path().join(&rel), &how);
            let what = format!(
                "{} {}",
                match how {
                    Damage::Flip => "flipped",
                    Damage::Truncate => "truncated",
                },
                rel.display()
            );
            let opened = Tracker::builder()
                .path(copy.path())
                .clock(std::sync::Arc::new(c.clone()))
                .default_config(small_config(800))
                .open();
            match opened {
                Err(e) => {
                    let msg = e.to_string();
                    let name = rel.file_name().unwrap().to_string_lossy().into_owned();
                    // RocksDB names the file for SST, log and manifest damage; for the
                    // small text files it names what it could not parse.
                    assert!(
                        msg.contains(&name)
                            || msg.contains("orrupt")
                            || msg.contains("CURRENT")
                            || msg.contains("OPTIONS"),
                        "{what}: the error does not say what is damaged: {msg}"
                    );
                    outcomes.push(format!("{what}: refused ({msg})"));
                }
                Ok(t) => {
                    let wal_cut = matches!(how, Damage::Truncate)
                        && rel.extension().is_some_and(|e| e == "log");
                    // A cut log loses its tail records only; everything settled survives.
                    let must_survive: Vec<String> = if wal_cut {
                        settled.clone()
                    } else {
                        settled.iter().chain(&recent).cloned().collect()
                    };
                    verify(&t, &must_survive, &what).unwrap();
                    outcomes.push(format!("{what}: recovered"));
                }
            }
        }
    }
    for o in &outcomes {
        println!("{o}");
    }
    assert!(
        outcomes.len() >= 10,
        "the store should have several files: {outcomes:?}"
    );
}
