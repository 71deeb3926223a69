//! The attack that OOM-killed a daemon in a 768 MiB container (186 connections each
//! sending a 4 MiB body one byte short: bodies were read whole before admission,
//! with nothing but the connection count bounding them), run harder against the
//! real binary in a control group limited to 512 MiB: 400 such connections. The
//! daemon must stay up and keep serving: a mark on a fresh connection answers 200,
//! while the bodies in flight stay within `max_body_bytes_in_flight`, which the
//! daemon derives from the cgroup's limit (an eighth: 64 MiB).
//!
//! The control group is made by the test: cgroup v2 (a hierarchy with the memory
//! controller), else cgroup v1's memory controller; both need root. Where neither
//! can be used the test fails, saying why: it never passes without having run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{BIN, Daemon, clean_env};
use common::raw::RawConn;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The control group's memory limit.
const LIMIT: u64 = 512 << 20;
/// The attacking connections.
const CONNECTIONS: usize = 400;
/// The default `max_body_bytes`: each attacker declares it and sends one byte less.
const BODY: usize = 4 << 20;
const MARK: &str = "/v1/namespaces/default/check-and-mark";
/// Memory per connection outside the budget: hyper's read buffer (64 KiB at most),
/// which also holds the first piece of a body waiting for room, and the
/// connection's own state, rounded up.
const PER_CONNECTION: u64 = 128 << 10;
/// Memory no setting bounds: the allocator's fragmentation, RocksDB's memory
/// outside its cache (the allowance of `budget.rs` and the soak test).
const SLACK: u64 = 48 << 20;
/// What the budget's bytes can take from the allocator: jemalloc rounds a large
/// allocation up to its size class, and the classes are at most 25% apart.
fn allocated(budget: u64) -> u64 {
    budget / 4 * 5
}

/// Which cgroup interface the group is made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A memory-limited control group made for this test, removed on drop (once the
/// processes in it are gone).
struct Cgroup {
    dir: PathBuf,
    version: Version,
}

/// Mounted cgroup hierarchies: (file system type, mount point, super options), from
/// `/proc/self/mountinfo`.
fn cgroup_mounts() -> Vec<(String, PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let fs_type = after.next()?;
            let super_options = after.nth(1).unwrap_or_default();
            fs_type.starts_with("cgroup").then(|| {
                (
                    fs_type.to_owned(),
                    PathBuf::from(mount_point),
                    super_options.to_owned(),
                )
            })
        })
        .collect()
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`memory.events`, `memory.oom_control`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Cgroup {
    /// A new group limited to `limit` bytes: cgroup v2 if a hierarchy has the
    /// memory controller, else v1; the reasons of each failure otherwise.
    fn create(name: &str, limit: u64) -> Result<Self, String> {
        let mounts = cgroup_mounts();
        let mut reasons = Vec::new();
        match Self::create_v2(&mounts, name, limit) {
            Ok(group) => return Ok(group),
            Err(reason) => reasons.push(format!("cgroup v2: {reason}")),
        }
        match Self::create_v1(&mounts, name, limit) {
            Ok(group) => return Ok(group),
            Err(reason) => reasons.push(format!("cgroup v1: {reason}")),
        }
        Err(reasons.join("; "))
    }

    fn create_v2(
        mounts: &[(String, PathBuf, String)],
        name: &str,
        limit: u64,
    ) -> Result<Self, String> {
        let mut seen = Vec::new();
        for (fs_type, root, _) in mounts.iter().filter(|m| m.0 == "cgroup2") {
            debug_assert_eq!(fs_type, "cgroup2");
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "memory") {
                seen.push(format!(
                    "{} has controllers {:?}",
                    root.display(),
                    controllers.trim()
                ));
                continue;
            }
            let subtree = root.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                write(&subtree, "+memory")?;
            }
            let dir = root.join(name);
            std::fs::create_dir(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let group = Self {
                dir,
                version: Version::V2,
            };
            write(&group.dir.join("memory.max"), &limit.to_string())?;
            // No swap to hide the memory in, where swap is accounted.
            let _ = write(&group.dir.join("memory.swap.max"), "0");
            return Ok(group);
        }
        if seen.is_empty() {
            Err("no cgroup2 hierarchy is mounted".into())
        } else {
            Err(format!(
                "no cgroup2 hierarchy has the memory controller ({})",
                seen.join(", ")
            ))
        }
    }

    fn create_v1(
        mounts: &[(String, PathBuf, String)],
        name: &str,
        limit: u64,
    ) -> Result<Self, String> {
        let Some((_, root, _)) = mounts.iter().find(|(fs_type, _, options)| {
            fs_type == "cgroup" && options.split(',').any(|o| o == "memory")
        }) else {
            return Err("the memory controller is not mounted".into());
        };
        let dir = root.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let group = Self {
            dir,
            version: Version::V1,
        };
        write(&group.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        let memsw = group.dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &limit.to_string())?;
        }
        let set = read_u64(&group.dir.join("memory.limit_in_bytes"));
        if set != Some(limit) {
            return Err(format!("the limit reads back as {set:?}, not {limit}"));
        }
        Ok(group)
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The most memory the group has used.
    fn peak(&self) -> Option<u64> {
        match self.version {
            Version::V1 => read_u64(&self.dir.join("memory.max_usage_in_bytes")),
            Version::V2 => read_u64(&self.dir.join("memory.peak")),
        }
    }

    /// Processes the kernel's OOM killer killed in the group.
    fn oom_kills(&self) -> Option<u64> {
        match self.version {
            Version::V1 => keyed(&self.dir.join("memory.oom_control"), "oom_kill"),
            Version::V2 => keyed(&self.dir.join("memory.events"), "oom_kill"),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the daemon (dropped first, and killed) has exited.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A field of a process's `/proc/PID/status` in kB (`VmHWM`: peak resident
/// memory; `VmRSS`: resident now), in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

fn peak_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM")
}

fn current_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// How an attacking connection ended.
#[derive(Debug, Default)]
struct Outcomes {
    /// Every byte was written (taken by the daemon, or by the sockets' buffers).
    written: usize,
    /// The connection was cut off (the daemon refused the body and closed it).
    refused: usize,
    /// The daemon stopped reading, and neither took nor refused the rest in time.
    stuck: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_large_bodies_one_byte_short_leave_a_memory_limited_daemon_serving() {
    let name = format!("oncely-body-memory-{}", std::process::id());
    let cgroup = Cgroup::create(&name, LIMIT).unwrap_or_else(|reasons| {
        panic!(
            "this test runs the daemon in a memory-limited control group, and cannot make \
             one here ({reasons}); it needs Linux with cgroup v2's or v1's memory controller, \
             run as root"
        )
    });
    let dir = tempfile::tempdir().unwrap();
    // The shell puts itself into the group, then becomes the daemon: every page the
    // daemon ever touches is charged to the group, and it reads the group's limit.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"echo $$ > "$1" && shift && exec "$@""#, "sh"])
        .arg(cgroup.procs())
        .args([BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path());
    clean_env(&mut cmd, &[]);
    let mut daemon = Daemon::spawn(cmd);
    let pid = daemon.child.id();
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        groups.contains(&name),
        "the daemon is not in {name}: {groups}"
    );

    // What the daemon holds before the attack (RocksDB's cache fills lazily; the
    // default namespace's filters are allocated).
    let baseline = current_rss(pid).unwrap_or(0);
    let head = format!(
        "POST {MARK} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {BODY}\r\n\r\n"
    );
    let body: Arc<[u8]> = vec![b' '; BODY - 1].into();
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (head, body) = (head.clone(), Arc::clone(&body));
        let addr = daemon.addr;
        attackers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            let sent = tokio::time::timeout(Duration::from_secs(20), async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await
            })
            .await;
            // The stream is kept open, so that a body held stays held.
            Some((sent.map(|r| r.is_ok()), stream))
        }));
    }
    let mut outcomes = Outcomes::default();
    let mut held = Vec::new();
    for attacker in attackers {
        match attacker.await.unwrap() {
            Some((Ok(true), stream)) => {
                outcomes.written += 1;
                held.push(stream);
            }
            Some((Ok(false), _)) | None => outcomes.refused += 1,
            Some((Err(_), stream)) => {
                outcomes.stuck += 1;
                held.push(stream);
            }
        }
    }
    let attacked = started.elapsed();

    if let Some(status) = daemon.child.try_wait().unwrap() {
        panic!(
            "the daemon died under {CONNECTIONS} bodies of {BODY} bytes one byte short: \
             {status}, {} OOM kill(s) in {}, peak {} of {}; log:\n{}",
            cgroup.oom_kills().unwrap_or(0),
            cgroup.dir.display(),
            cgroup.peak().map_or_else(|| "unknown".into(), mib),
            mib(LIMIT),
            daemon.log_text()
        );
    }
    // Still serving, on a fresh connection, while the held bodies are held.
    let mut honest = RawConn::connect(daemon.addr).await;
    let answered = Instant::now();
    let a = honest
        .request(
            "POST",
            MARK,
            Some(r#"{"ids": ["honest-1"]}"#),
            Duration::from_secs(5),
        )
        .await;
    let latency = answered.elapsed();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["results"][0]["verdict"], "new");
    let metrics = honest
        .request("GET", "/metrics", None, Duration::from_secs(5))
        .await
        .body;
    let metric = |family: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(family)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {family} in:\n{metrics}"))
    };
    let budget = metric("oncelyd_body_budget_bytes");
    let in_flight = metric("oncelyd_body_bytes_in_flight");
    let shed = metric("oncelyd_bodies_shed_total");
    let rss = peak_rss(pid).unwrap_or(0);
    let peak = cgroup.peak();
    println!(
        "{CONNECTIONS} connections, each a {BODY}-byte body one byte short, against a daemon \
         in a {} cgroup ({:?}); as the clients saw it: {} written whole (into the daemon or \
         the sockets' buffers), {} cut off, {} neither within 20 s, in {attacked:?}; a \
         fresh mark answered 200 in {latency:?}; the daemon: bodies in flight {} of a \
         budget of {}, {shed} shed; RSS {} before, peak {}; the cgroup's peak {}",
        mib(LIMIT),
        cgroup.version,
        outcomes.written,
        outcomes.refused,
        outcomes.stuck,
        mib(in_flight as u64),
        mib(budget as u64),
        mib(baseline),
        mib(rss),
        peak.map_or_else(|| "unknown".into(), mib),
    );
    // The budget is the cgroup's eighth, as the default says; the held bodies stay
    // within it; the rest were refused rather than read.
    assert_eq!(budget as u64, LIMIT / 8);
    assert!(
        daemon
            .log_text()
            .contains(&format!("max_body_bytes_in_flight={}", LIMIT / 8)),
        "{}",
        daemon.log_text()
    );
    assert!(
        in_flight <= budget,
        "{in_flight} charged over the budget {budget}"
    );
    // (What each client saw depends on how much the sockets' buffers took: the
    // daemon's own counts say what it did.)
    assert!(shed >= 1.0, "{outcomes:?}, {shed} shed");
    assert_eq!(cgroup.oom_kills().unwrap_or(0), 0);
    // And the daemon grew by no more than the budget, its connections and a slack.
    let bound = allocated(LIMIT / 8) + CONNECTIONS as u64 * PER_CONNECTION + SLACK;
    assert!(
        rss.saturating_sub(baseline) <= bound,
        "RSS grew from {} to {}, over the {} of the budget, {CONNECTIONS} connections \
         and the slack",
        mib(baseline),
        mib(rss),
        mib(bound)
    );
    drop(held);
    drop(daemon);
}
