//! Shared test fixtures: a fault-injecting store and tracker constructors.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use oncely::store::{Batch, Entries, MarkVisitor, NamespaceId};
use oncely::{
    BloomFilter, Durability, Error, GenerationId, ManualClock, NamespaceConfig, RocksOptions,
    RocksStore, Store, Timestamp, Tracker, Verdict,
};

/// Wraps a store: fails writes while told to, and counts scans.
#[derive(Debug)]
pub struct Faulty {
    inner: Box<dyn Store>,
    pub fail_writes: Arc<AtomicBool>,
    pub scans: Arc<AtomicUsize>,
}

#[derive(Clone, Debug)]
pub struct FaultHandle {
    pub fail_writes: Arc<AtomicBool>,
    pub scans: Arc<AtomicUsize>,
}

impl Faulty {
    pub fn wrap(inner: Box<dyn Store>) -> (Self, FaultHandle) {
        let fail_writes = Arc::new(AtomicBool::new(false));
        let scans = Arc::new(AtomicUsize::new(0));
        let handle = FaultHandle {
            fail_writes: Arc::clone(&fail_writes),
            scans: Arc::clone(&scans),
        };
        (
            Self {
                inner,
                fail_writes,
                scans,
            },
            handle,
        )
    }
}

fn disk_full() -> Error {
    Error::Io {
        path: "/injected".into(),
        source: std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device"),
    }
}

impl Store for Faulty {
    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), Error> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
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
        self.scans.fetch_add(1, Ordering::SeqCst);
        self.inner.scan_marks(ns, generation, visit)
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
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
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

pub fn clock() -> ManualClock {
    ManualClock::new(Timestamp::from_millis(1_700_000_000_000))
}

/// A small ring: 4 generations of `capacity` IDs or 1 minute, 2 exact.
pub fn small_config(capacity: u64) -> NamespaceConfig {
    NamespaceConfig::builder()
        .generations(4)
        .exact_generations(2)
        .generation_capacity(capacity)
        .generation_span(Duration::from_secs(60))
        .fp_rate(1e-6)
        .build()
        .unwrap()
}

pub fn open_rocks(dir: &Path, clock: &ManualClock, config: NamespaceConfig) -> Tracker {
    Tracker::builder()
        .path(dir)
        .clock(Arc::new(clock.clone()))
        .default_config(config)
        .rocks_options(small_rocks())
        .open()
        .unwrap()
}

pub fn open_faulty(
    dir: &Path,
    clock: &ManualClock,
    config: NamespaceConfig,
) -> (Tracker, FaultHandle) {
    let rocks = RocksStore::open(dir, small_rocks()).unwrap();
    let (store, handle) = Faulty::wrap(Box::new(rocks));
    let tracker = Tracker::builder()
        .store(Box::new(store))
        .durability(Durability::Flush)
        .clock(Arc::new(clock.clone()))
        .default_config(config)
        .open()
        .unwrap();
    (tracker, handle)
}

pub fn small_rocks() -> RocksOptions {
    RocksOptions {
        cache_bytes: 8 << 20,
        memtable_bytes: 8 << 20,
    }
}

pub fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("event-{i:08}")).collect()
}

/// A ring with every knob given: the suites that stress rotation need more than
/// `small_config` offers.
pub fn ring_config(
    generations: u32,
    exact_generations: u32,
    capacity: u64,
    span: Duration,
    fp_rate: f64,
) -> NamespaceConfig {
    NamespaceConfig::builder()
        .generations(generations)
        .exact_generations(exact_generations)
        .generation_capacity(capacity)
        .generation_span(span)
        .fp_rate(fp_rate)
        .build()
        .unwrap()
}

/// `open_rocks` with a chosen durability (`flush` or `sync`).
pub fn open_rocks_with(
    dir: &Path,
    clock: &ManualClock,
    config: NamespaceConfig,
    durability: Durability,
) -> Tracker {
    Tracker::builder()
        .path(dir)
        .durability(durability)
        .clock(Arc::new(clock.clone()))
        .default_config(config)
        .rocks_options(small_rocks())
        .open()
        .unwrap()
}

/// A tracker that keeps nothing on disk.
pub fn open_memory(clock: &ManualClock, config: NamespaceConfig) -> Tracker {
    Tracker::builder()
        .durability(Durability::Memory)
        .clock(Arc::new(clock.clone()))
        .default_config(config)
        .open()
        .unwrap()
}

pub trait NowMs {
    fn now_ms(&self) -> Timestamp;
}

impl NowMs for ManualClock {
    fn now_ms(&self) -> Timestamp {
        oncely::Clock::now(self)
    }
}

/// A temporary directory in memory (`/dev/shm`) where there is one, else the usual
/// temporary directory. For suites that test logic rather than the disk and open
/// RocksDB hundreds of times: every open and every rotation fsyncs, which costs ten
/// times more on a real disk and proves nothing there. (Crash safety against kill -9
/// rests on the OS page cache either way.)
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("oncely-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// What a [`Hooked`] store does with a write: let it through or fail it.
pub type WriteHook = Arc<dyn Fn(&Batch) -> Result<(), Error> + Send + Sync>;

/// Wraps a store: every write first goes through a hook, which may block (to line
/// up a race) or fail it (to inject a fault on chosen batches).
pub struct Hooked {
    inner: Box<dyn Store>,
    hook: WriteHook,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Hooked {
    pub fn wrap(inner: Box<dyn Store>, hook: WriteHook) -> Self {
        Self { inner, hook }
    }
}

/// Whether a batch puts a mark for `id`.
pub fn marks_id(batch: &Batch, id: &[u8]) -> bool {
    batch
        .ops()
        .any(|op| matches!(op, oncely::store::Op::PutMark { id: i, .. } if i == id))
}

pub fn injected() -> Error {
    disk_full()
}

impl Store for Hooked {
    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), Error> {
        (self.hook)(batch)?;
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
        self.inner.scan_marks(ns, generation, visit)
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

/// A RocksDB tracker whose writes go through `hook`.
pub fn open_hooked(
    dir: &Path,
    clock: &ManualClock,
    config: NamespaceConfig,
    hook: WriteHook,
) -> Tracker {
    let rocks = RocksStore::open(dir, small_rocks()).unwrap();
    Tracker::builder()
        .store(Box::new(Hooked::wrap(Box::new(rocks), hook)))
        .durability(Durability::Flush)
        .clock(Arc::new(clock.clone()))
        .default_config(config)
        .open()
        .unwrap()
}

/// Where a tracker's state lives, for suites that run against every store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Rocks,
    #[cfg(feature = "postgres")]
    Postgres,
}

/// One store's place: a directory, or a fresh database on the shared throwaway
/// PostgreSQL. Opening it again reopens the same state.
pub struct Place {
    engine: Engine,
    dir: tempfile::TempDir,
    #[cfg(feature = "postgres")]
    url: Option<String>,
}

impl Place {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            dir: scratch_dir(),
            #[cfg(feature = "postgres")]
            url: (engine == Engine::Postgres)
                .then(|| oncely_testkit::PgServer::shared().fresh_database()),
        }
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn open(&self, clock: &ManualClock, config: NamespaceConfig) -> Tracker {
        self.builder(clock, config).open().unwrap()
    }

    pub fn builder(&self, clock: &ManualClock, config: NamespaceConfig) -> oncely::TrackerBuilder {
        let b = Tracker::builder()
            .clock(Arc::new(clock.clone()))
            .default_config(config);
        match self.engine {
            Engine::Rocks => b.path(self.dir.path()).rocks_options(small_rocks()),
            #[cfg(feature = "postgres")]
            Engine::Postgres => b.postgres(oncely::postgres::PgOptions::new(
                self.url.as_deref().expect("a database"),
            )),
        }
    }

    /// The PostgreSQL URL, for tests that reach into the database.
    #[cfg(feature = "postgres")]
    pub fn url(&self) -> &str {
        self.url.as_deref().expect("a PostgreSQL place")
    }
}

/// Defines `$name` once per engine: `$name` on RocksDB and `${name}_on_postgres`.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod on_rocks {
            $(
                #[test]
                fn $name() {
                    super::$name(super::common::Engine::Rocks);
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod on_postgres {
            $(
                #[test]
                fn $name() {
                    super::$name(super::common::Engine::Postgres);
                }
            )*
        }
    };
}

/// Several callers' calls decided together, on a fresh tracker with a `default`
/// namespace that none of them fills: each call answered as it would be alone after
/// the ones before it. A bad call is refused alone, an ID two calls share is new
/// once (for the first), the same owner gets its new back, a claim marked by its
/// holder is done for the calls after it, a call without IDs gets no verdicts, and
/// an unknown namespace fails them all.
pub fn calls_decided_together(t: &Tracker) {
    let _ = t.check_and_mark("default", &["old"], Some("a")).unwrap();
    let _ = t
        .claim("default", "held", "a", Duration::from_secs(30))
        .unwrap();
    let too_long = ["x".repeat(oncely::MAX_ID_LEN + 1)];
    let too_long = [too_long[0].as_str()];
    let calls: Vec<(&[&str], Option<&str>)> = vec![
        (&["p", "old"], Some("a")),
        (&["p", "q"], Some("b")),
        (&too_long, None),
        (&["p"], Some("a")),
        (&["held"], Some("b")),
        (&["held"], Some("a")),
        (&["held", "q"], Some("b")),
        (&["held"], Some("a")),
        (&[], None),
        (&["r", "r"], None),
    ];
    let each = t.check_and_mark_each("default", &calls).unwrap();
    let ok = |i: usize| each[i].as_ref().unwrap().clone();
    assert_eq!(ok(0), [Verdict::New, Verdict::Replayed]);
    assert_eq!(
        ok(1),
        [Verdict::Duplicate, Verdict::New],
        "p is the first call's"
    );
    assert!(
        matches!(&each[2], Err(Error::InvalidId { .. })),
        "{:?}",
        each[2]
    );
    assert_eq!(ok(3), [Verdict::Replayed]);
    assert!(
        matches!(ok(4)[..], [Verdict::InProgress { .. }]),
        "before its holder marks it, a claimed ID is in progress: {:?}",
        each[4]
    );
    assert_eq!(ok(5), [Verdict::New], "the holder marks it");
    assert_eq!(
        ok(6),
        [Verdict::Duplicate, Verdict::Replayed],
        "after its holder marked it, it is done; q is b's own"
    );
    assert_eq!(ok(7), [Verdict::Replayed]);
    assert!(ok(8).is_empty());
    assert_eq!(ok(9), [Verdict::New, Verdict::Duplicate]);
    assert_eq!(
        t.check("default", &["p", "q", "held", "r"]).unwrap(),
        [Verdict::Duplicate; 4]
    );
    assert!(matches!(
        t.check_and_mark_each("nowhere", &calls),
        Err(Error::UnknownNamespace(_))
    ));
}
