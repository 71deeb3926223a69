//! Shared fixtures of the daemon's tests: a fault-injecting store, an in-process
//! application, and a request helper.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod daemon;
pub mod raw;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use oncely::store::{Batch, Entries, MarkVisitor, NamespaceId};
use oncely::{
    BloomFilter, Durability, Error, GenerationId, ManualClock, MemoryStore, NamespaceConfig,
    RocksOptions, Store, Timestamp, Tracker,
};
use oncelyd::server::{AppState, Limits, app};
use serde_json::Value;
use tower::ServiceExt;

/// A tracker on RocksDB in `dir`, durability `flush` as in production, with small
/// memory budgets; opened off the async runtime.
pub async fn rocks_tracker(dir: &std::path::Path) -> Tracker {
    let path = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        Tracker::builder()
            .path(path)
            .durability(Durability::Flush)
            .rocks_options(RocksOptions {
                cache_bytes: 8 << 20,
                memtable_bytes: 8 << 20,
            })
            .open()
    })
    .await
    .unwrap()
    .unwrap()
}

/// Switches of a [`Faulty`] store, shared with the test.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Writes fail with a disk-full I/O error.
    pub fail_writes: Arc<AtomicBool>,
    /// Metadata reads fail as corrupt.
    pub corrupt_meta: Arc<AtomicBool>,
    /// Writes wait until released (to hold a request in progress).
    hold: Arc<(Mutex<bool>, Condvar)>,
    /// Writes waiting at the hold right now.
    pub held: Arc<AtomicUsize>,
}

impl Faults {
    pub fn hold_writes(&self) {
        *self.hold.0.lock().unwrap() = true;
    }

    pub fn release_writes(&self) {
        *self.hold.0.lock().unwrap() = false;
        self.hold.1.notify_all();
    }

    fn wait_if_held(&self) {
        let (lock, cv) = &*self.hold;
        let mut held = lock.lock().unwrap();
        if *held {
            self.held.fetch_add(1, Ordering::SeqCst);
            while *held {
                held = cv.wait(held).unwrap();
            }
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A memory store that fails or stalls on demand.
#[derive(Debug)]
pub struct Faulty {
    inner: MemoryStore,
    faults: Faults,
}

impl Faulty {
    pub fn new(faults: Faults) -> Self {
        Self {
            inner: MemoryStore::new(),
            faults,
        }
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
        self.faults.wait_if_held();
        if self.faults.fail_writes.load(Ordering::SeqCst) {
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
        self.inner.scan_marks(ns, generation, visit)
    }
    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if self.faults.corrupt_meta.load(Ordering::SeqCst) {
            return Err(Error::Corrupt("injected: record damaged".into()));
        }
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

/// A small, quick namespace configuration.
pub fn small_config() -> NamespaceConfig {
    NamespaceConfig::builder()
        .generations(4)
        .exact_generations(2)
        .generation_capacity(100_000)
        .generation_span(Duration::from_secs(3600))
        .fp_rate(1e-4)
        .build()
        .unwrap()
}

/// A whole namespace configuration as a `PUT` body: `small_config()`'s fields, with
/// `changes` (a JSON object) merged over them.
pub fn whole_config(changes: Value) -> String {
    let mut body = serde_json::json!({
        "generations": 4,
        "generation_capacity": 100_000,
        "generation_span": "1h",
        "fp_rate": 1e-4,
        "exact_generations": 2,
    });
    if let (Some(body), Value::Object(changes)) = (body.as_object_mut(), changes) {
        body.extend(changes);
    }
    body.to_string()
}

/// An in-process daemon: the application around a memory tracker on a faulty store
/// and a manual clock.
pub struct Harness {
    pub app: Router,
    pub state: AppState,
    pub faults: Faults,
    pub clock: ManualClock,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(Limits::default(), &[])
    }

    pub fn with(limits: Limits, tokens: &[&str]) -> Self {
        let tokens: Vec<String> = tokens.iter().map(|t| (*t).to_owned()).collect();
        Self::build(|tracker| AppState::new(tracker, limits, &tokens))
    }

    /// A daemon that allows these origins (and needs these tokens).
    pub fn with_origins(origins: &[&str], tokens: &[&str]) -> Self {
        let settings = oncelyd::config::Settings {
            allowed_origins: origins.iter().map(|o| o.parse().unwrap()).collect(),
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            ..oncelyd::config::Settings::default()
        };
        Self::build(|tracker| AppState::from_settings(tracker, &settings))
    }

    fn build(state: impl FnOnce(Tracker) -> AppState) -> Self {
        let faults = Faults::default();
        let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
        let tracker = Tracker::builder()
            .store(Box::new(Faulty {
                inner: MemoryStore::new(),
                faults: faults.clone(),
            }))
            .durability(Durability::Memory)
            .clock(Arc::new(clock.clone()))
            .default_config(small_config())
            .open()
            .unwrap();
        let state = state(tracker);
        Self {
            app: app(state.clone()),
            state,
            faults,
            clock,
        }
    }

    pub fn tracker(&self) -> &Tracker {
        self.state.tracker()
    }

    /// Sends a request as a well-behaved client does: a `body`, and any POST, PUT or
    /// PATCH, goes with `Content-Type: application/json`.
    pub async fn call(&self, method: Method, uri: &str, body: Option<&str>) -> Answer {
        self.send(method, uri, body, &[]).await
    }

    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let json = body.is_some() || [Method::POST, Method::PUT, Method::PATCH].contains(&method);
        let mut req = Request::builder().method(method).uri(uri);
        if json {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        self.raw(req).await
    }

    pub async fn raw(&self, req: Request<Body>) -> Answer {
        let response = tokio::time::timeout(Duration::from_secs(30), self.app.clone().oneshot(req))
            .await
            .expect("the request answers within 30 s")
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    pub async fn post(&self, uri: &str, body: &str) -> Answer {
        self.call(Method::POST, uri, Some(body)).await
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None).await
    }

    /// check-and-mark on the default namespace; the verdicts.
    pub async fn mark(&self, ids: &[&str], owner: Option<&str>) -> Vec<String> {
        let body = serde_json::json!({ "ids": ids, "owner": owner });
        let a = self
            .post("/v1/namespaces/default/check-and-mark", &body.to_string())
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        verdicts(&a.json())
    }

    /// check on the default namespace; the verdicts.
    pub async fn check(&self, ids: &[&str]) -> Vec<String> {
        let body = serde_json::json!({ "ids": ids });
        let a = self
            .post("/v1/namespaces/default/check", &body.to_string())
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        verdicts(&a.json())
    }
}

/// The verdict of each result.
pub fn verdicts(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["verdict"].as_str().unwrap().to_owned())
        .collect()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// Asserts an error answer: its status, its code, and the error shape.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json",
            "{}",
            self.text
        );
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{}", self.text);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            self.text
        );
        assert_eq!(v.as_object().unwrap().len(), 1, "{}", self.text);
    }
}
