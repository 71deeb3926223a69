//! The conformance suite every [`Store`] backend must pass.
//!
//! Each check takes a fresh, empty store. A new backend adds one `#[test]` per
//! check, or calls [`run_all`] with a factory.

use super::{Batch, NamespaceId, Store};
use crate::error::Error;
use crate::filter::BloomFilter;
use crate::generation::GenerationId;
use crate::hash::HashSeed;
use crate::id::MAX_ID_LEN;

const A: NamespaceId = NamespaceId(1);
const B: NamespaceId = NamespaceId(2);
const LAST: NamespaceId = NamespaceId(u32::MAX);

fn g(n: u64) -> GenerationId {
    GenerationId(n)
}

fn put(store: &dyn Store, ns: NamespaceId, generation: u64, id: &[u8], value: &[u8]) {
    let mut b = Batch::new();
    b.put_mark(ns, g(generation), id, value);
    store.write(&b, false).unwrap();
}

fn get(store: &dyn Store, ns: NamespaceId, generation: u64, id: &[u8]) -> Option<Vec<u8>> {
    store
        .get_marks(ns, &[(g(generation), id)])
        .unwrap()
        .remove(0)
}

fn scan(store: &dyn Store, ns: NamespaceId, generation: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan_marks(ns, g(generation), &mut |id, v| {
            out.push((id.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
    out
}

/// Runs every check, each on a fresh store from `make`.
pub(crate) fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    marks_round_trip(&*make());
    batches_apply_every_op(&*make());
    drop_marks_keeps_newer_generations_and_other_namespaces(&*make());
    drop_namespace_is_scoped(&*make());
    scan_visits_one_generation_in_order(&*make());
    meta_and_user_keys(&*make());
    snapshots_round_trip(&*make());
    extreme_keys(&*make());
}

fn marks_round_trip(s: &dyn Store) {
    assert_eq!(get(s, A, 1, b"x"), None);
    put(s, A, 1, b"x", b"");
    put(s, A, 1, b"y", b"\x01owner");
    assert_eq!(get(s, A, 1, b"x"), Some(vec![]));
    assert_eq!(get(s, A, 2, b"x"), None, "generations are separate tables");
    assert_eq!(get(s, B, 1, b"x"), None, "namespaces are separate");
    let many = s
        .get_marks(A, &[(g(1), b"y"), (g(1), b"nope"), (g(1), b"x")])
        .unwrap();
    assert_eq!(many, vec![Some(b"\x01owner".to_vec()), None, Some(vec![])]);
    let mut b = Batch::new();
    b.delete_mark(A, g(1), b"x");
    s.write(&b, true).unwrap();
    assert_eq!(get(s, A, 1, b"x"), None);
}

fn batches_apply_every_op(s: &dyn Store) {
    let mut b = Batch::new();
    for i in 0..1_000_u32 {
        b.put_mark(A, g(3), &i.to_be_bytes(), b"");
    }
    b.put_meta(b"ring:1", b"state");
    b.put_user(b"balance:7", b"42");
    s.write(&b, false).unwrap();
    assert_eq!(scan(s, A, 3).len(), 1_000);
    assert_eq!(s.get_meta(b"ring:1").unwrap(), Some(b"state".to_vec()));
    assert_eq!(s.get_user(b"balance:7").unwrap(), Some(b"42".to_vec()));
    s.write(&Batch::new(), true).unwrap();
}

fn drop_marks_keeps_newer_generations_and_other_namespaces(s: &dyn Store) {
    for generation in 1..=5 {
        put(s, A, generation, b"id", b"");
        put(s, B, generation, b"id", b"");
    }
    let mut b = Batch::new();
    b.drop_marks(A, g(4));
    s.write(&b, false).unwrap();
    for generation in 1..=5 {
        assert_eq!(
            get(s, A, generation, b"id").is_some(),
            generation >= 4,
            "{generation}"
        );
        assert!(get(s, B, generation, b"id").is_some());
    }
    // Marks written to a dropped range later are dropped again by the next drop.
    put(s, A, 2, b"late", b"");
    let mut b = Batch::new();
    b.drop_marks(A, g(5));
    s.write(&b, false).unwrap();
    assert_eq!(get(s, A, 2, b"late"), None);
    assert!(get(s, A, 5, b"id").is_some());
}

fn drop_namespace_is_scoped(s: &dyn Store) {
    put(s, A, 1, b"id", b"");
    put(s, A, u64::MAX, &[0xff; MAX_ID_LEN], b"");
    put(s, B, 1, b"id", b"");
    let mut b = Batch::new();
    b.drop_namespace(A);
    s.write(&b, false).unwrap();
    assert_eq!(get(s, A, 1, b"id"), None);
    assert_eq!(get(s, A, u64::MAX, &[0xff; MAX_ID_LEN]), None);
    assert!(get(s, B, 1, b"id").is_some());
}

fn scan_visits_one_generation_in_order(s: &dyn Store) {
    put(s, A, 7, b"b", b"2");
    put(s, A, 7, b"a", b"1");
    put(s, A, 6, b"z", b"");
    put(s, A, 8, b"\x00", b"");
    put(s, B, 7, b"c", b"");
    assert_eq!(
        scan(s, A, 7),
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec())
        ]
    );
    assert!(scan(s, A, 9).is_empty());
    let err = s.scan_marks(A, g(7), &mut |_, _| Err(Error::Corrupt("stop".into())));
    assert!(matches!(err, Err(Error::Corrupt(_))));
}

fn meta_and_user_keys(s: &dyn Store) {
    let mut b = Batch::new();
    b.put_meta(b"ckpt:1:a", b"10");
    b.put_meta(b"ckpt:1:b", b"20");
    b.put_meta(b"ckpt:2:a", b"30");
    b.put_meta(b"ns:x", b"{}");
    s.write(&b, false).unwrap();
    let scanned = s.scan_meta(b"ckpt:1:").unwrap();
    assert_eq!(
        scanned,
        vec![
            (b"ckpt:1:a".to_vec(), b"10".to_vec()),
            (b"ckpt:1:b".to_vec(), b"20".to_vec())
        ]
    );
    let mut b = Batch::new();
    b.delete_meta_prefix(b"ckpt:1:");
    b.delete_meta(b"ns:x");
    b.put_user(b"k", b"v");
    s.write(&b, false).unwrap();
    assert!(s.scan_meta(b"ckpt:1:").unwrap().is_empty());
    assert_eq!(s.scan_meta(b"ckpt:").unwrap().len(), 1);
    assert_eq!(s.get_meta(b"ns:x").unwrap(), None);
    assert_eq!(s.get_user(b"k").unwrap(), Some(b"v".to_vec()));
    let mut b = Batch::new();
    b.delete_user(b"k");
    s.write(&b, false).unwrap();
    assert_eq!(s.get_user(b"k").unwrap(), None);
    assert_eq!(s.get_user(b"never").unwrap(), None);
}

fn snapshots_round_trip(s: &dyn Store) {
    assert!(s.load_snapshot(A, g(1)).unwrap().is_none());
    let mut f = BloomFilter::with_rate(1_000, 0.01, HashSeed::from_u64(5)).unwrap();
    let _ = f.insert(b"seen");
    s.save_snapshot(A, g(1), &f).unwrap();
    s.save_snapshot(A, g(3), &f).unwrap();
    s.save_snapshot(B, g(1), &f).unwrap();
    let back = s.load_snapshot(A, g(1)).unwrap().expect("saved");
    assert!(back.contains(b"seen"));
    assert_eq!(back.to_snapshot(), f.to_snapshot());
    let _ = f.insert(b"later");
    s.save_snapshot(A, g(1), &f).unwrap();
    assert!(
        s.load_snapshot(A, g(1))
            .unwrap()
            .unwrap()
            .contains(b"later"),
        "overwrites"
    );
    assert_eq!(s.snapshot_generations(A).unwrap(), vec![g(1), g(3)]);
    assert_eq!(s.snapshot_namespaces().unwrap(), vec![A, B]);
    s.delete_snapshot(A, g(1)).unwrap();
    s.delete_snapshot(A, g(1)).unwrap();
    assert!(s.load_snapshot(A, g(1)).unwrap().is_none());
    s.delete_snapshot(A, g(3)).unwrap();
    assert_eq!(s.snapshot_namespaces().unwrap(), vec![B]);
    s.flush().unwrap();
}

fn extreme_keys(s: &dyn Store) {
    let long = [0xff_u8; MAX_ID_LEN];
    put(s, LAST, u64::MAX, &long, b"v");
    put(s, LAST, 0, &[0], b"w");
    assert_eq!(get(s, LAST, u64::MAX, &long), Some(b"v".to_vec()));
    assert_eq!(scan(s, LAST, u64::MAX).len(), 1);
    let mut b = Batch::new();
    b.drop_marks(LAST, g(u64::MAX));
    s.write(&b, false).unwrap();
    assert_eq!(get(s, LAST, 0, &[0]), None);
    assert!(get(s, LAST, u64::MAX, &long).is_some());
    let mut b = Batch::new();
    b.drop_namespace(LAST);
    s.write(&b, false).unwrap();
    assert_eq!(get(s, LAST, u64::MAX, &long), None);
}

#[test]
fn memory_store_conforms() {
    run_all(&|| Box::new(super::MemoryStore::new()));
}

#[test]
fn rocks_store_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    run_all(&|| {
        let dir = tempfile::tempdir().unwrap();
        let store = super::RocksStore::open(dir.path(), super::RocksOptions::default()).unwrap();
        dirs.borrow_mut().push(dir);
        Box::new(store)
    });
}
