//! The tracker's contract: verdicts, owners, namespaces, rotation, persistence,
//! failures.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{clock, ids, open_faulty, open_rocks, small_config};
use oncely::{Configured, DropPolicy, Durability, Error, NamespaceConfig, Tracker, Verdict};

fn memory(config: NamespaceConfig) -> Tracker {
    Tracker::builder()
        .durability(Durability::Memory)
        .clock(Arc::new(clock()))
        .default_config(config)
        .open()
        .unwrap()
}

#[test]
fn verdicts_come_back_in_input_order() {
    let t = memory(small_config(1_000));
    let v = t
        .check_and_mark("default", &["a", "b", "a", "c"], None)
        .unwrap();
    assert_eq!(
        v,
        [Verdict::New, Verdict::New, Verdict::Duplicate, Verdict::New]
    );
    let v = t.check_and_mark("default", &["c", "d", "b"], None).unwrap();
    assert_eq!(v, [Verdict::Duplicate, Verdict::New, Verdict::Duplicate]);
    assert!(
        t.check_and_mark::<&str>("default", &[], None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn check_answers_without_marking() {
    let t = memory(small_config(1_000));
    assert_eq!(t.check("default", &["x"]).unwrap(), [Verdict::New]);
    assert_eq!(
        t.check("default", &["x"]).unwrap(),
        [Verdict::New],
        "still unseen"
    );
    let _ = t.check_and_mark("default", &["x"], None).unwrap();
    assert_eq!(
        t.check("default", &["x", "y"]).unwrap(),
        [Verdict::Duplicate, Verdict::New]
    );
}

#[test]
fn the_same_owner_gets_its_new_back() {
    let t = memory(small_config(1_000));
    let first = t
        .check_and_mark("default", &["e1", "e2"], Some("attempt-1"))
        .unwrap();
    assert_eq!(first, [Verdict::New, Verdict::New]);
    let retry = t
        .check_and_mark("default", &["e1", "e2", "e3"], Some("attempt-1"))
        .unwrap();
    assert_eq!(retry, [Verdict::Replayed, Verdict::Replayed, Verdict::New]);
    assert!(retry[0].is_new() && retry[0].as_str() == "new");
    let other = t
        .check_and_mark("default", &["e1"], Some("attempt-2"))
        .unwrap();
    assert_eq!(other, [Verdict::Duplicate]);
    let anonymous = t.check_and_mark("default", &["e1"], None).unwrap();
    assert_eq!(
        anonymous,
        [Verdict::Duplicate],
        "without an owner a retry is a duplicate"
    );
    // An ID first marked anonymously is a duplicate even for an owner.
    let _ = t.check_and_mark("default", &["e9"], None).unwrap();
    assert_eq!(
        t.check_and_mark("default", &["e9"], Some("o")).unwrap(),
        [Verdict::Duplicate]
    );
}

#[test]
fn bad_input_is_refused_and_marks_nothing() {
    let t = memory(small_config(1_000));
    let long = "x".repeat(257);
    match t.check_and_mark("default", &["ok", "", "also-ok"], None) {
        Err(Error::InvalidId { index: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        t.check_and_mark("default", &["ok", long.as_str()], None),
        Err(Error::InvalidId { index: 1, .. })
    ));
    assert_eq!(
        t.check("default", &["ok", "also-ok"]).unwrap(),
        [Verdict::New, Verdict::New]
    );
    assert!(matches!(
        t.check_and_mark("nope", &["a"], None),
        Err(Error::UnknownNamespace(_))
    ));
    assert!(matches!(
        t.check_and_mark("bad name!", &["a"], None),
        Err(Error::InvalidNamespace { .. })
    ));
    assert!(matches!(
        t.check_and_mark("default", &["a"], Some("")),
        Err(Error::InvalidOwner(_))
    ));
    assert_eq!(t.check("default", &["a"]).unwrap(), [Verdict::New]);
    let max = "y".repeat(256);
    assert_eq!(
        t.check_and_mark("default", &[max.as_bytes()], None)
            .unwrap(),
        [Verdict::New]
    );
    assert_eq!(
        t.check_and_mark("default", &[[0xff_u8, 0].as_slice()], None)
            .unwrap(),
        [Verdict::New]
    );
}

#[test]
fn rotation_moves_ids_out_of_the_exact_horizon_then_out_of_memory() {
    // 4 generations of 2 IDs, the newest 2 exact. A full generation seals at the
    // next access.
    let t = memory(small_config(2));
    let gens = |t: &Tracker| -> Vec<u64> {
        t.namespace_info("default")
            .unwrap()
            .generations
            .iter()
            .map(|g| g.id)
            .collect()
    };
    let _ = t.check_and_mark("default", &["a", "b"], None).unwrap(); // gen 1, now full
    assert_eq!(t.check("default", &["a"]).unwrap(), [Verdict::Duplicate]);
    assert_eq!(gens(&t), [2, 1]);
    let _ = t.check_and_mark("default", &["c", "d"], None).unwrap(); // gen 2, full
    assert_eq!(
        t.check("default", &["a", "c"]).unwrap(),
        [Verdict::ProbableDuplicate, Verdict::Duplicate],
        "gen 3 opened: gen 1 left the exact horizon"
    );
    assert_eq!(
        t.check_and_mark("default", &["a"], Some("o")).unwrap(),
        [Verdict::ProbableDuplicate],
        "owner replay needs the exact table"
    );
    let _ = t.check_and_mark("default", &["e", "f"], None).unwrap(); // gen 3, full
    let _ = t.check_and_mark("default", &["i", "j"], None).unwrap(); // gen 4, full
    assert_eq!(gens(&t), [4, 3, 2, 1]);
    assert_eq!(
        t.check("default", &["a", "c", "e", "i"]).unwrap(),
        [
            Verdict::New,
            Verdict::ProbableDuplicate,
            Verdict::ProbableDuplicate,
            Verdict::Duplicate
        ],
        "gen 5 opened: gen 1 dropped, gen 3 Bloom-only"
    );
    let info = t.namespace_info("default").unwrap();
    assert_eq!(gens(&t), [5, 4, 3, 2]);
    assert_eq!(
        info.generations.iter().map(|g| g.exact).collect::<Vec<_>>(),
        [true, true, false, false]
    );
    assert!(info.estimated_fp < 1e-3);
}

#[test]
fn generations_seal_after_their_span() {
    let c = clock();
    let t = Tracker::builder()
        .durability(Durability::Memory)
        .clock(Arc::new(c.clone()))
        .default_config(small_config(1_000_000))
        .open()
        .unwrap();
    let _ = t.check_and_mark("default", &["old"], None).unwrap();
    c.advance(Duration::from_secs(59));
    t.tick().unwrap();
    assert_eq!(t.namespace_info("default").unwrap().generations.len(), 1);
    c.advance(Duration::from_secs(1));
    t.tick().unwrap();
    assert_eq!(t.namespace_info("default").unwrap().generations.len(), 2);
    // Sealing also happens on access. The guarantee is (generations - 1) spans from
    // the mark, 180 s; "old" went in at the start of its generation, so it stays
    // until the fourth span ends.
    for _ in 0..2 {
        c.advance(Duration::from_secs(60));
        assert!(!t.check("default", &["old"]).unwrap()[0].is_new());
    }
    c.advance(Duration::from_secs(60));
    assert_eq!(t.check("default", &["old"]).unwrap(), [Verdict::New]);
}

#[test]
fn namespaces_are_independent_and_configurable() {
    let t = memory(small_config(1_000));
    assert_eq!(t.namespaces(), ["default"]);
    assert_eq!(
        t.configure_namespace("orders", small_config(10)).unwrap(),
        Configured::Created
    );
    assert_eq!(
        t.configure_namespace("orders", small_config(20)).unwrap(),
        Configured::Updated
    );
    assert_eq!(
        t.namespace_info("orders")
            .unwrap()
            .config
            .generation_capacity(),
        20
    );
    assert_eq!(t.namespaces(), ["default", "orders"]);
    let _ = t.check_and_mark("orders", &["x"], None).unwrap();
    assert_eq!(t.check("default", &["x"]).unwrap(), [Verdict::New]);
    assert!(matches!(
        t.delete_namespace("default"),
        Err(Error::Refused(_))
    ));
    assert!(matches!(
        t.delete_namespace("ghost"),
        Err(Error::UnknownNamespace(_))
    ));
    t.delete_namespace("orders").unwrap();
    assert!(matches!(
        t.check("orders", &["x"]),
        Err(Error::UnknownNamespace(_))
    ));
    let _ = t.configure_namespace("orders", small_config(10)).unwrap();
    assert_eq!(
        t.check("orders", &["x"]).unwrap(),
        [Verdict::New],
        "a recreated namespace starts empty"
    );
    assert!(matches!(
        t.configure_namespace("no/slash", small_config(10)),
        Err(Error::InvalidNamespace { .. })
    ));
}

#[test]
fn shrinking_the_exact_horizon_applies_now() {
    let t = memory(small_config(1_000));
    let _ = t.check_and_mark("default", &["a"], None).unwrap();
    t.rotate_namespace("default").unwrap();
    let _ = t.check_and_mark("default", &["b"], None).unwrap();
    t.rotate_namespace("default").unwrap();
    let _ = t.check_and_mark("default", &["c"], None).unwrap();
    assert_eq!(
        t.check("default", &["a", "b", "c"]).unwrap(),
        [
            Verdict::ProbableDuplicate,
            Verdict::Duplicate,
            Verdict::Duplicate
        ]
    );
    let one = small_config(1_000)
        .to_builder()
        .exact_generations(1)
        .build()
        .unwrap();
    assert!(
        matches!(
            t.configure_namespace("default", one.clone()),
            Err(Error::WouldDrop {
                generations: 0,
                exact_tables: 1
            })
        ),
        "dropping an exact table needs DropPolicy::DropNow"
    );
    assert_eq!(
        t.check("default", &["b"]).unwrap(),
        [Verdict::Duplicate],
        "a refused change changes nothing"
    );
    let _ = t
        .configure_namespace_with("default", one, DropPolicy::DropNow)
        .unwrap();
    assert_eq!(
        t.check("default", &["b", "c"]).unwrap(),
        [Verdict::ProbableDuplicate, Verdict::Duplicate]
    );
    let two = small_config(1_000)
        .to_builder()
        .generations(2)
        .exact_generations(1)
        .build()
        .unwrap();
    assert!(matches!(
        t.configure_namespace("default", two.clone()),
        Err(Error::WouldDrop {
            generations: 1,
            exact_tables: 0
        })
    ));
    let _ = t
        .configure_namespace_with("default", two, DropPolicy::DropNow)
        .unwrap();
    assert_eq!(
        t.check("default", &["a", "b", "c"]).unwrap(),
        [Verdict::New, Verdict::ProbableDuplicate, Verdict::Duplicate]
    );
}

#[test]
fn marks_survive_reopen_including_bloom_only_generations() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    {
        let t = open_rocks(dir.path(), &c, small_config(3));
        let _ = t.check_and_mark("default", &ids(0..9), Some("w")).unwrap(); // gens 1..=3
        let _ = t.check_and_mark("default", &["tail"], None).unwrap(); // gen 4; 1, 2 Bloom-only
        let _ = t.configure_namespace("other", small_config(100)).unwrap();
        let _ = t.check_and_mark("other", &["o"], None).unwrap();
        // No close(): as after a crash, the open generation is rebuilt by a scan.
    }
    let t = open_rocks(dir.path(), &c, small_config(3));
    let v = t.check("default", &ids(0..9)).unwrap();
    assert!(
        v[..6].iter().all(|v| *v == Verdict::ProbableDuplicate),
        "{v:?}"
    );
    assert!(v[6..].iter().all(|v| *v == Verdict::Duplicate), "{v:?}");
    assert_eq!(
        t.check("default", &["tail", "never"]).unwrap(),
        [Verdict::Duplicate, Verdict::New]
    );
    assert_eq!(
        t.check_and_mark("default", &["event-00000008"], Some("w"))
            .unwrap(),
        [Verdict::Replayed]
    );
    assert_eq!(t.check("other", &["o"]).unwrap(), [Verdict::Duplicate]);
    assert_eq!(
        t.namespace_info("default").unwrap().generations[0].ids,
        1,
        "recounted"
    );
    assert_eq!(
        t.namespace_info("other")
            .unwrap()
            .config
            .generation_capacity(),
        100
    );
}

#[test]
fn a_clean_close_spares_the_startup_scan() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    {
        let (t, faults) = open_faulty(dir.path(), &c, small_config(1_000));
        let _ = t.check_and_mark("default", &ids(0..100), None).unwrap();
        assert_eq!(faults.scans.load(Ordering::SeqCst), 0);
        t.close().unwrap();
        assert!(matches!(t.check("default", &["x"]), Err(Error::Closed)));
    }
    let (t, faults) = open_faulty(dir.path(), &c, small_config(1_000));
    assert_eq!(
        faults.scans.load(Ordering::SeqCst),
        0,
        "loaded from the clean snapshot"
    );
    assert!(
        t.check("default", &ids(0..100))
            .unwrap()
            .iter()
            .all(|v| *v == Verdict::Duplicate)
    );
    assert_eq!(t.namespace_info("default").unwrap().generations[0].ids, 100);
    let _ = t.check_and_mark("default", &["after"], None).unwrap();
    drop(t);
    // The clean record was consumed: this start-up must scan to see "after".
    let (t, faults) = open_faulty(dir.path(), &c, small_config(1_000));
    assert_eq!(faults.scans.load(Ordering::SeqCst), 1);
    assert_eq!(
        t.check("default", &["after"]).unwrap(),
        [Verdict::Duplicate]
    );
}

#[test]
fn a_failed_write_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let (t, faults) = open_faulty(dir.path(), &c, small_config(1_000));
    let _ = t.check_and_mark("default", &["before"], None).unwrap();
    faults.fail_writes.store(true, Ordering::SeqCst);
    let err = t
        .check_and_mark("default", &["x", "before", "y"], Some("o"))
        .unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    faults.fail_writes.store(false, Ordering::SeqCst);
    // The filter saw x and y, but the exact table rules them out.
    assert_eq!(
        t.check("default", &["x", "y"]).unwrap(),
        [Verdict::New, Verdict::New]
    );
    assert_eq!(
        t.check_and_mark("default", &["x", "before", "y"], Some("o"))
            .unwrap(),
        [Verdict::New, Verdict::Duplicate, Verdict::New],
        "the retry after the fault clears is the real first mark"
    );
}

#[test]
fn a_failed_rotation_leaves_the_ring_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let (t, faults) = open_faulty(dir.path(), &c, small_config(2));
    let _ = t.check_and_mark("default", &["a", "b"], None).unwrap();
    faults.fail_writes.store(true, Ordering::SeqCst);
    assert!(
        t.check_and_mark("default", &["c"], None).is_err(),
        "the capacity rotation fails"
    );
    assert_eq!(t.namespace_info("default").unwrap().generations.len(), 1);
    faults.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(
        t.check_and_mark("default", &["c"], None).unwrap(),
        [Verdict::New]
    );
    assert_eq!(t.namespace_info("default").unwrap().generations.len(), 2);
    drop(t);
    let t = open_rocks(dir.path(), &c, small_config(2));
    assert!(
        t.check("default", &["a", "b", "c"])
            .unwrap()
            .iter()
            .all(|v| *v == Verdict::Duplicate)
    );
}

#[test]
fn damaged_snapshots_refuse_to_open_or_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    {
        let t = open_rocks(dir.path(), &c, small_config(2));
        // Generations 1..=3 sealed, 4 open: 1 and 2 are Bloom-only, 3 exact.
        let _ = t.check_and_mark("default", &ids(0..7), None).unwrap();
    }
    let snap = |g: u32| dir.path().join(format!("snapshots/1/{g}.bloom"));
    // A damaged snapshot of an exact generation is rebuilt from its table.
    let mut bytes = std::fs::read(snap(3)).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(snap(3), &bytes).unwrap();
    drop(open_rocks(dir.path(), &c, small_config(2)));
    // A damaged Bloom-only snapshot stops start-up, naming the file.
    let mut bytes = std::fs::read(snap(2)).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(snap(2), &bytes).unwrap();
    let err = Tracker::builder()
        .path(dir.path())
        .clock(Arc::new(c.clone()))
        .open()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("2.bloom") && msg.contains("checksum"), "{msg}");
    // So does a truncated or missing one.
    std::fs::write(snap(2), &bytes[..10]).unwrap();
    assert!(Tracker::builder().path(dir.path()).open().is_err());
    std::fs::remove_file(snap(2)).unwrap();
    let err = Tracker::builder().path(dir.path()).open().unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn path_and_durability_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Tracker::builder()
            .durability(Durability::Memory)
            .path(dir.path())
            .open(),
        Err(Error::InvalidConfig { field: "path", .. })
    ));
    assert!(matches!(
        Tracker::builder().durability(Durability::Sync).open(),
        Err(Error::InvalidConfig { field: "path", .. })
    ));
    assert_eq!("sync".parse::<Durability>().unwrap(), Durability::Sync);
    assert!("fast".parse::<Durability>().is_err());
}

#[test]
fn sync_mode_marks_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let t = Tracker::builder()
            .path(dir.path())
            .durability(Durability::Sync)
            .open()
            .unwrap();
        assert_eq!(
            t.check_and_mark("default", &["s"], None).unwrap(),
            [Verdict::New]
        );
    }
    let t = Tracker::builder()
        .path(dir.path())
        .durability(Durability::Sync)
        .open()
        .unwrap();
    assert_eq!(t.check("default", &["s"]).unwrap(), [Verdict::Duplicate]);
}

#[test]
fn a_directory_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let t = open_rocks(dir.path(), &clock(), small_config(10));
        t.close().unwrap();
    }
    // Forge a store from a future version.
    let store = oncely::RocksStore::open(dir.path(), common::small_rocks()).unwrap();
    let mut b = oncely::store::Batch::new();
    b.put_meta(b"format", b"oncely-store/9");
    oncely::Store::write(&store, &b, true).unwrap();
    drop(store);
    let err = Tracker::builder().path(dir.path()).open().unwrap_err();
    assert!(err.to_string().contains("oncely-store/9"), "{err}");
}

/// `try_check_and_mark` answers like `check_and_mark` when nothing makes it wait,
/// and otherwise gives up with nothing marked: the same call made with
/// `check_and_mark` afterwards gets the answers it would have had.
#[test]
fn try_check_and_mark_answers_or_gives_up_having_marked_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let t = open_rocks(dir.path(), &c, small_config(10));
    assert_eq!(
        t.try_check_and_mark("default", &["a", "b", "a"], Some("me"))
            .unwrap(),
        Some(vec![Verdict::New, Verdict::New, Verdict::Replayed])
    );
    assert_eq!(
        t.try_check_and_mark("default", &["a", "c"], None).unwrap(),
        Some(vec![Verdict::Duplicate, Verdict::New])
    );

    // A batch that would fill the open generation (capacity 10, 3 in it) would
    // rotate, which writes a snapshot: given up.
    let eight = ids(0..8);
    assert_eq!(t.try_check_and_mark("default", &eight, None).unwrap(), None);
    assert!(
        t.check("default", &eight)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );
    assert!(
        t.check_and_mark("default", &eight, None)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );

    // A generation due to seal by age: the same.
    c.advance(Duration::from_secs(60));
    assert_eq!(t.try_check_and_mark("default", &["d"], None).unwrap(), None);
    assert_eq!(t.check("default", &["d"]).unwrap(), [Verdict::New]);
    assert_eq!(
        t.check_and_mark("default", &["d"], None).unwrap(),
        [Verdict::New]
    );

    // Bad input is an error either way.
    assert!(matches!(
        t.try_check_and_mark("default", &[""], None),
        Err(Error::InvalidId { .. })
    ));
    assert!(matches!(
        t.try_check_and_mark("nope", &["x"], None),
        Err(Error::UnknownNamespace(_))
    ));
}

/// Under `sync` every write waits for an fsync: `try_check_and_mark` always gives
/// up, and marks nothing.
#[test]
fn try_check_and_mark_gives_up_under_sync() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let t = common::open_rocks_with(dir.path(), &c, small_config(100), Durability::Sync);
    assert_eq!(t.try_check_and_mark("default", &["a"], None).unwrap(), None);
    assert_eq!(t.check("default", &["a"]).unwrap(), [Verdict::New]);
}

/// A lookup that would read from disk gives up: after a reopen, the block holding
/// an earlier mark is not cached until a blocking call has read it.
#[test]
fn try_check_and_mark_gives_up_rather_than_read_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let marked = ids(0..1_000);
    {
        let t = open_rocks(dir.path(), &c, small_config(1_000_000));
        assert!(
            t.check_and_mark("default", &marked, None)
                .unwrap()
                .iter()
                .all(|v| v.is_new())
        );
        t.close().unwrap();
    }
    let t = open_rocks(dir.path(), &c, small_config(1_000_000));
    let again = [marked[500].as_str(), "fresh"];
    assert_eq!(t.try_check_and_mark("default", &again, None).unwrap(), None);
    assert_eq!(t.check("default", &["fresh"]).unwrap(), [Verdict::New]);
    assert_eq!(
        t.check_and_mark("default", &again, None).unwrap(),
        [Verdict::Duplicate, Verdict::New]
    );
    // Now the block is cached.
    assert_eq!(
        t.try_check_and_mark("default", &[marked[501].as_str()], None)
            .unwrap(),
        Some(vec![Verdict::Duplicate])
    );
}

/// `try_check` answers like `check`, or gives up where `check` would wait: for a
/// rotation due, or for a read from disk. Under `sync` too, as it writes nothing.
#[test]
fn try_check_answers_or_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let marked = ids(0..1_000);
    {
        let t = common::open_rocks_with(dir.path(), &c, small_config(1_000_000), Durability::Sync);
        let _ = t.check_and_mark("default", &marked, None).unwrap();
        assert_eq!(
            t.try_check("default", &[marked[0].as_str(), "fresh"])
                .unwrap(),
            Some(vec![Verdict::Duplicate, Verdict::New])
        );
        t.close().unwrap();
    }
    let t = open_rocks(dir.path(), &c, small_config(1_000_000));
    assert_eq!(t.try_check("default", &[marked[7].as_str()]).unwrap(), None);
    assert_eq!(
        t.check("default", &[marked[7].as_str()]).unwrap(),
        [Verdict::Duplicate]
    );
    c.advance(Duration::from_secs(60));
    assert_eq!(t.try_check("default", &["fresh"]).unwrap(), None);
    assert_eq!(t.check("default", &["fresh"]).unwrap(), [Verdict::New]);
    assert_eq!(
        t.try_check("default", &["fresh"]).unwrap(),
        Some(vec![Verdict::New])
    );
}

/// A failed write takes back the count of the IDs it would have marked: failures
/// do not fill the open generation, so they cannot make it seal early.
#[test]
fn a_failed_write_does_not_count_towards_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let (t, faults) = open_faulty(dir.path(), &c, small_config(1_000));
    let _ = t.check_and_mark("default", &ids(0..10), None).unwrap();
    faults.fail_writes.store(true, Ordering::SeqCst);
    for attempt in 0..5 {
        let batch = ids(100 * (attempt + 1)..100 * (attempt + 1) + 100);
        assert!(t.check_and_mark("default", &batch, None).is_err());
    }
    faults.fail_writes.store(false, Ordering::SeqCst);
    let info = t.namespace_info("default").unwrap();
    assert_eq!(info.generations.len(), 1);
    assert_eq!(
        info.generations[0].ids, 10,
        "only the acknowledged IDs count"
    );
}

/// Several callers' calls decided together: each gets its own verdicts, a bad call
/// is refused alone, an ID two calls share is new once, the same owner gets its new
/// back, and a claim marked by its holder is done for the calls after it
/// (`common::calls_decided_together`, which the PostgreSQL engine passes too).
#[test]
fn calls_decided_together_answer_each_caller() {
    common::calls_decided_together(&memory(small_config(1_000)));
}

/// One write for all the calls: when it fails, none of them marked anything.
#[test]
fn calls_decided_together_share_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let (t, faults) = open_faulty(dir.path(), &c, small_config(1_000));
    faults.fail_writes.store(true, Ordering::SeqCst);
    let calls: Vec<(&[&str], Option<&str>)> = vec![(&["a"], None), (&["b"], Some("o"))];
    assert!(t.check_and_mark_each("default", &calls).is_err());
    faults.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(
        t.check("default", &["a", "b"]).unwrap(),
        [Verdict::New, Verdict::New]
    );
    let each = t.check_and_mark_each("default", &calls).unwrap();
    assert_eq!(each.len(), 2);
    assert_eq!(each[1].as_ref().unwrap(), &[Verdict::New]);
}
