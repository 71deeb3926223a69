//! Forget where it meets the embedded engine's other work: a filter rebuilt
//! outside the lock racing a rotation that rebuilds it too, a rotation that fails
//! after rebuilding, start-ups after a rebuild, and a forget racing the deletion
//! of its namespace.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Hooked, clock, injected, ring_config, scratch_dir, small_rocks};
use oncely::store::{Batch, Entries, MarkVisitor, NamespaceId, Op};
use oncely::{
    BloomFilter, Durability, Error, GenerationId, ManualClock, NamespaceConfig, RocksStore, Store,
    Tracker, Verdict,
};

const NS: &str = "default";

/// A store whose next `scan_marks`, once armed, reads the whole table at once (a
/// snapshot, as a RocksDB iterator takes), then waits for the test before handing
/// the rows to the visitor: a slow scan, lined up against other calls.
struct Gated {
    inner: Box<dyn Store>,
    armed: Arc<AtomicBool>,
    started: Mutex<mpsc::Sender<GenerationId>>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gated")
    }
}

impl Store for Gated {
    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), Error> {
        self.inner.write(batch, sync)
    }
    fn get_marks(
        &self,
        ns: NamespaceId,
        keys: &[(GenerationId, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        self.inner.get_marks(ns, keys)
    }
    fn scan_marks(
        &self,
        ns: NamespaceId,
        generation: GenerationId,
        visit: &mut MarkVisitor<'_>,
    ) -> Result<(), Error> {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return self.inner.scan_marks(ns, generation, visit);
        }
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.inner.scan_marks(ns, generation, &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        self.started.lock().unwrap().send(generation).unwrap();
        self.go.lock().unwrap().recv().unwrap();
        for (k, v) in &rows {
            visit(k, v)?;
        }
        Ok(())
    }
    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get_meta(key)
    }
    fn scan_meta(&self, prefix: &[u8]) -> Result<Entries, Error> {
        self.inner.scan_meta(prefix)
    }
    fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get_user(key)
    }
    fn save_snapshot(
        &self,
        ns: NamespaceId,
        g: GenerationId,
        f: &BloomFilter,
    ) -> Result<(), Error> {
        self.inner.save_snapshot(ns, g, f)
    }
    fn load_snapshot(
        &self,
        ns: NamespaceId,
        g: GenerationId,
    ) -> Result<Option<BloomFilter>, Error> {
        self.inner.load_snapshot(ns, g)
    }
    fn snapshot_generations(&self, ns: NamespaceId) -> Result<Vec<GenerationId>, Error> {
        self.inner.snapshot_generations(ns)
    }
    fn snapshot_namespaces(&self) -> Result<Vec<NamespaceId>, Error> {
        self.inner.snapshot_namespaces()
    }
    fn delete_snapshot(&self, ns: NamespaceId, g: GenerationId) -> Result<(), Error> {
        self.inner.delete_snapshot(ns, g)
    }
    fn flush(&self) -> Result<(), Error> {
        self.inner.flush()
    }
}

fn open_store(store: Box<dyn Store>, c: &ManualClock, config: NamespaceConfig) -> Tracker {
    Tracker::builder()
        .store(store)
        .durability(Durability::Flush)
        .clock(Arc::new(c.clone()))
        .default_config(config)
        .open()
        .unwrap()
}

fn one(t: &Tracker, id: &str) -> Verdict {
    t.check(NS, &[id]).unwrap()[0]
}

fn exact(t: &Tracker, g: u64) -> bool {
    t.namespace_info(NS)
        .unwrap()
        .generations
        .iter()
        .find(|x| x.id == g)
        .unwrap()
        .exact
}

/// A catch-up rebuilds generation 1's filter outside the lock (its table read
/// before a second forget); meanwhile the second forget settles and a rotation
/// rebuilds generation 1 itself (`rebuild_forgotten_now`) and moves the floor
/// past it. The slow rebuild, which still holds the second forgotten ID's bits,
/// must not land on the now Bloom-only generation.
#[test]
fn a_rebuild_that_finishes_late_never_lands_on_a_bloom_only_generation() {
    let dir = scratch_dir();
    let c = clock();
    let config = ring_config(4, 2, 1_000, Duration::from_secs(3_600), 1e-9);
    let armed = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let store = Gated {
        inner: Box::new(RocksStore::open(dir.path(), small_rocks()).unwrap()),
        armed: Arc::clone(&armed),
        started: Mutex::new(started_tx),
        go: Mutex::new(go_rx),
    };
    let t = Arc::new(open_store(Box::new(store), &c, config.clone()));
    let ids: Vec<String> = (0..20).map(|i| format!("g1-{i}")).collect();
    assert!(
        t.check_and_mark(NS, &ids, None)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );
    t.rotate_namespace(NS).unwrap(); // generation 1 sealed, exact (2 exact)
    assert!(exact(&t, 1));

    armed.store(true, Ordering::SeqCst);
    let first = {
        let t = Arc::clone(&t);
        // Its own catch-up rebuilds generation 1 (gated).
        thread::spawn(move || t.forget(NS, &["g1-1"]).unwrap())
    };
    assert_eq!(
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        GenerationId(1)
    );
    // The table was read: g1-2 is in what the slow rebuild will hold.
    assert_eq!(t.forget(NS, &["g1-2"]).unwrap(), [true]);
    // Generation 1 leaves the exact horizon: rebuilt now, under the lock.
    t.rotate_namespace(NS).unwrap();
    assert!(!exact(&t, 1), "the floor moved past generation 1");
    assert_eq!(
        one(&t, "g1-2"),
        Verdict::New,
        "before the slow rebuild lands"
    );
    go_tx.send(()).unwrap();
    assert_eq!(first.join().unwrap(), [true]);
    t.tick().unwrap();
    assert_eq!(one(&t, "g1-1"), Verdict::New);
    assert_eq!(
        one(&t, "g1-2"),
        Verdict::New,
        "forgotten (answered true) yet its bits came back with a stale rebuild"
    );
    // And it is saved: a restart keeps it.
    let t = Arc::into_inner(t).unwrap();
    t.close().unwrap();
    drop(t);
    let t = common::open_rocks(dir.path(), &c, config);
    assert_eq!(one(&t, "g1-2"), Verdict::New, "after a restart");
}

/// A rotation whose ring write fails is undone after `rebuild_forgotten_now` ran:
/// the generation it sealed opens again with the filter it was sized for, not the
/// one rebuilt for the few IDs it held, so it takes marks up to
/// `generation_capacity` within its rate.
#[test]
fn a_failed_rotation_leaves_the_open_generation_the_filter_it_was_sized_for() {
    let dir = scratch_dir();
    let c = clock();
    // One exact generation: the sealed one leaves the horizon in the same rotation.
    let config = ring_config(4, 1, 1_000, Duration::from_secs(3_600), 1e-6);
    let fail_ring = Arc::new(AtomicBool::new(false));
    let hook = {
        let fail_ring = Arc::clone(&fail_ring);
        Arc::new(move |b: &Batch| {
            let ring = b
                .ops()
                .any(|op| matches!(op, Op::PutMeta { key, .. } if key.starts_with(b"ring:")));
            if ring && fail_ring.load(Ordering::SeqCst) {
                return Err(injected());
            }
            Ok(())
        })
    };
    let rocks = RocksStore::open(dir.path(), small_rocks()).unwrap();
    let t = open_store(Box::new(Hooked::wrap(Box::new(rocks), hook)), &c, config);
    let ids: Vec<String> = (0..3).map(|i| format!("a-{i}")).collect();
    assert!(
        t.check_and_mark(NS, &ids, None)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );
    assert_eq!(t.forget(NS, &["a-1"]).unwrap(), [true]);
    fail_ring.store(true, Ordering::SeqCst);
    assert!(t.rotate_namespace(NS).is_err());
    fail_ring.store(false, Ordering::SeqCst);
    let more: Vec<String> = (0..200).map(|i| format!("b-{i}")).collect();
    assert!(
        t.check_and_mark(NS, &more, None)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );
    let info = t.namespace_info(NS).unwrap();
    let open = info
        .generations
        .iter()
        .find(|g| g.sealed_at.is_none())
        .unwrap();
    assert!(
        open.ids <= open.capacity,
        "the open generation holds {} IDs in a filter sized for {}: {open:?}",
        open.ids,
        open.capacity
    );
}

/// Once a generation's filter is rebuilt without its forgotten IDs and saved, its
/// marker goes: start-ups after that scan no table for it.
#[test]
fn start_ups_after_a_rebuild_scan_nothing() {
    let dir = scratch_dir();
    let c = clock();
    let config = ring_config(4, 2, 1_000, Duration::from_secs(3_600), 1e-6);
    let open = |dir: &std::path::Path| common::open_faulty(dir, &c, config.clone());
    let (t, _) = open(dir.path());
    let ids: Vec<String> = (0..20).map(|i| format!("g1-{i}")).collect();
    assert!(
        t.check_and_mark(NS, &ids, None)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );
    t.rotate_namespace(NS).unwrap();
    assert_eq!(t.forget(NS, &["g1-3"]).unwrap(), [true]);
    t.tick().unwrap(); // rebuilt and saved
    t.close().unwrap();
    drop(t);
    let mut scans = Vec::new();
    for _ in 0..3 {
        let (t, h) = open(dir.path());
        scans.push(h.scans.load(Ordering::SeqCst));
        assert_eq!(one(&t, "g1-3"), Verdict::New);
        t.close().unwrap();
    }
    assert_eq!(
        scans,
        [0, 0, 0],
        "table scans inside each open (generation 1 was rebuilt before the first close)"
    );
}

/// A forget writes outside the namespace lock: `delete_namespace` waits for its
/// write to land, so that the forget's marker record is deleted with the rest of
/// the namespace rather than left behind under an id no start-up loads.
#[test]
fn a_forget_racing_delete_namespace_leaves_no_marker_behind() {
    let dir = scratch_dir();
    let c = clock();
    let config = ring_config(4, 2, 1_000, Duration::from_secs(3_600), 1e-6);
    let gate = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let go_rx = Mutex::new(go_rx);
    let hook = {
        let gate = Arc::clone(&gate);
        Arc::new(move |b: &Batch| {
            let forgets = b.ops().any(|op| matches!(op, Op::DeleteMark { .. }));
            if forgets && gate.swap(false, Ordering::SeqCst) {
                entered_tx.lock().unwrap().send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
            }
            Ok(())
        })
    };
    let rocks = RocksStore::open(dir.path(), small_rocks()).unwrap();
    let t = Arc::new(open_store(
        Box::new(Hooked::wrap(Box::new(rocks), hook)),
        &c,
        config.clone(),
    ));
    let _ = t.configure_namespace("other", config.clone()).unwrap();
    assert_eq!(
        t.check_and_mark("other", &["x"], None).unwrap(),
        [Verdict::New]
    );
    gate.store(true, Ordering::SeqCst);
    let forget = {
        let t = Arc::clone(&t);
        thread::spawn(move || t.forget("other", &["x"]))
    };
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // The delete waits for the forget's write to land, rather than go first and
    // leave the forget's marker behind.
    let delete = {
        let t = Arc::clone(&t);
        thread::spawn(move || t.delete_namespace("other"))
    };
    thread::sleep(Duration::from_millis(100));
    assert!(
        !delete.is_finished(),
        "the delete went ahead of the forget's write"
    );
    go_tx.send(()).unwrap();
    let answered = forget.join().unwrap();
    delete.join().unwrap().unwrap();
    let t = Arc::into_inner(t).unwrap();
    t.close().unwrap();
    drop(t);
    let store = RocksStore::open(dir.path(), small_rocks()).unwrap();
    let left = store.scan_meta(b"forgot:").unwrap();
    assert!(
        left.is_empty(),
        "forget answered {answered:?}; markers left behind: {:?}",
        left.iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    );
}

/// The control for the start-up test: without a forget, a clean start-up scans
/// no table.
#[test]
fn control_start_up_after_clean_close_scans_nothing() {
    let dir = scratch_dir();
    let c = clock();
    let config = ring_config(4, 2, 1_000, Duration::from_secs(3_600), 1e-6);
    let open = |dir: &std::path::Path| common::open_faulty(dir, &c, config.clone());
    let (t, _) = open(dir.path());
    let ids: Vec<String> = (0..20).map(|i| format!("g1-{i}")).collect();
    assert!(
        t.check_and_mark(NS, &ids, None)
            .unwrap()
            .iter()
            .all(|v| v.is_new())
    );
    t.rotate_namespace(NS).unwrap();
    t.tick().unwrap();
    t.close().unwrap();
    drop(t);
    let (t, h) = open(dir.path());
    assert_eq!(h.scans.load(Ordering::SeqCst), 0);
    t.close().unwrap();
}
