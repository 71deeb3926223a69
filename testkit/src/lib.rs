//! Test fixtures shared by Oncely's crates.
//!
//! [`PgServer`] starts a throwaway PostgreSQL: `initdb` in a temporary directory, a
//! free port on 127.0.0.1, run as the `postgres` user when the tests run as root
//! (`initdb` refuses root). Nothing assumes a server is already running. A watchdog
//! process stops the server when the test process goes away, however it ends, so a
//! test that panics or is killed leaves no server behind.
//!
//! [`PgServer::shared`] hands every test of a process the same server, and
//! [`PgServer::fresh_database`] a database of its own on it.
//!
//! [`NatsServer`] starts a throwaway NATS server with JetStream (`nats-server -js`),
//! its store in a temporary directory, on a free port of 127.0.0.1, watched the same
//! way.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where Debian puts each PostgreSQL version's programs (`<version>/bin`); they are
/// not on `PATH`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A throwaway PostgreSQL server. Stopped (immediately, data discarded) when dropped.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    server: Child,
    watchdog: Option<Child>,
    next_db: Mutex<u32>,
}

/// How a server is set up.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// `fsync` (off by default: tests that do not kill the machine gain speed and
    /// lose nothing).
    pub fsync: bool,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl PgServer {
    /// Starts a server with the default options.
    ///
    /// # Panics
    ///
    /// When PostgreSQL is not installed or does not start: a fixture failure.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&PgOptions::default())
    }

    /// One server for every test of this process, started by the first to ask.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// Starts a server.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    #[must_use]
    pub fn start_with(options: &PgOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("oncely-pg-")
            .tempdir()
            .expect("a temporary directory");
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        for d in [&data, &sockets] {
            std::fs::create_dir(d).expect("server directories");
        }
        let owner = ServerUser::detect();
        owner.own(dir.path());
        owner.own(&data);
        owner.own(&sockets);
        let status = owner
            .command(&bin("initdb"))
            .args([
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
            ])
            .args(["--no-sync", "--no-instructions"])
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs (is the postgresql package installed?)");
        assert!(status.success(), "initdb failed: {status}");
        let port = free_port();
        let mut server = owner.command(&bin("postgres"));
        server
            .args(["-D", path_str(&data), "-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", path_str(&sockets)),
            ])
            .args([
                "-c",
                &format!("fsync={}", if options.fsync { "on" } else { "off" }),
            ])
            .args(["-c", "max_connections=200"]);
        for (name, value) in &options.settings {
            server.args(["-c", &format!("{name}={value}")]);
        }
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let server = server
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let watchdog = watchdog(server.id());
        let pg = Self {
            dir,
            port,
            server,
            watchdog,
            next_db: Mutex::new(0),
        };
        pg.wait_ready();
        pg
    }

    /// The port it listens on, on 127.0.0.1.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser `postgres`.
    #[must_use]
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    ///
    /// # Panics
    ///
    /// When `createdb` fails.
    pub fn fresh_database(&self) -> String {
        let name = {
            let mut next = self
                .next_db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *next += 1;
            format!("t{}_{}", std::process::id(), *next)
        };
        let status = Command::new(bin("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ])
            .status()
            .expect("createdb runs");
        assert!(status.success(), "createdb {name} failed: {status}");
        self.url(&name)
    }

    /// The server's log so far, for a failing test's message.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let ready = Command::new(bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "PostgreSQL did not start within {START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        stop(&mut self.server);
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Immediate shutdown: SIGQUIT makes the postmaster stop its backends and exit at
/// once; SIGKILL if it has not within a few seconds.
fn stop(server: &mut Child) {
    let _ = Command::new("kill")
        .args(["-QUIT", &server.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(server.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Who runs the server: this user, or `postgres` when this is root.
enum ServerUser {
    Me,
    Postgres { uid: u32, gid: u32 },
}

impl ServerUser {
    fn detect() -> Self {
        let me = Command::new("id").arg("-u").output().expect("id runs");
        if String::from_utf8_lossy(&me.stdout).trim() != "0" {
            return Self::Me;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("id runs");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("the postgres user exists (installed with the postgresql package)")
        };
        Self::Postgres {
            uid: id("-u"),
            gid: id("-g"),
        }
    }

    fn own(&self, path: &Path) {
        if let Self::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).expect("chown to postgres");
        }
    }

    /// A command run as this user: the process itself, not a wrapper (such as
    /// `runuser`) that a signal would stop while the server lived on.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        if let Self::Postgres { uid, gid } = self {
            c.uid(*uid).gid(*gid).env("HOME", "/var/lib/postgresql");
        }
        c
    }
}

/// A PostgreSQL program: from `ONCELY_PG_BINDIR` when set, else from the newest
/// version Debian installed (Debian 12 ships 15, Debian 13 ships 17).
fn bin(name: &str) -> PathBuf {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR
        .get_or_init(|| {
            std::env::var_os("ONCELY_PG_BINDIR").map_or_else(newest_debian_bindir, PathBuf::from)
        })
        .join(name)
}

fn newest_debian_bindir() -> PathBuf {
    let newest = std::fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server programs under {DEBIAN_ROOT}/<version>/bin: install the \
             postgresql package (scripts/ensure-deps.sh does), or set ONCELY_PG_BINDIR"
        ),
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// A port that was free a moment ago (the kernel picks it; the tiny window before
/// the server binds it is the usual price of handing a port to another process).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A process that kills `server` as soon as this process is gone (however it ends:
/// a panic that skips destructors, or SIGKILL), polling once a second.
fn watchdog(server: u32) -> Option<Child> {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -QUIT {server} 2>/dev/null",
        me = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// A throwaway NATS server with JetStream. Stopped (data discarded) when dropped.
#[derive(Debug)]
pub struct NatsServer {
    dir: tempfile::TempDir,
    port: u16,
    server: Child,
    watchdog: Option<Child>,
}

impl NatsServer {
    /// Starts `nats-server -js` on 127.0.0.1 and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When `nats-server` is not installed or does not start: a fixture failure.
    #[must_use]
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("oncely-nats-")
            .tempdir()
            .expect("a temporary directory");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let server = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-sd", path_str(dir.path())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts (is the nats-server package installed?)");
        let watchdog = watchdog(server.id());
        let nats = Self {
            dir,
            port,
            server,
            watchdog,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "nats-server did not listen within {START_TIMEOUT:?}; its log:\n{}",
                nats.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nats
    }

    /// The URL clients connect to: `nats://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        stop(&mut self.server);
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// What a [`CutProxy`] does with the next `COMMIT` a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Pass everything.
    Nothing,
    /// Drop the connection before the `COMMIT` reaches the server: it never lands.
    BeforeCommit,
    /// Forward the `COMMIT`, let the server answer, and drop the connection before
    /// the answer reaches the client: it landed, and the client cannot know.
    AfterCommit,
}

/// A TCP proxy to a PostgreSQL server that can cut a connection around its next
/// `COMMIT` (a simple query, as `tokio-postgres` sends it): the ambiguous commit a
/// network fault makes.
pub struct CutProxy {
    port: u16,
    armed: std::sync::Arc<Mutex<Cut>>,
}

impl CutProxy {
    /// A proxy on 127.0.0.1 to `target_port` on 127.0.0.1.
    ///
    /// # Panics
    ///
    /// When it cannot listen.
    #[must_use]
    pub fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let port = listener.local_addr().expect("bound").port();
        let armed = std::sync::Arc::new(Mutex::new(Cut::Nothing));
        let shared = std::sync::Arc::clone(&armed);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                proxy_connection(client, server, std::sync::Arc::clone(&shared));
            }
        });
        Self { port, armed }
    }

    /// The proxy's port.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// What to do with the next `COMMIT` (once; then it passes everything again).
    pub fn arm(&self, cut: Cut) {
        *self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cut;
    }
}

fn proxy_connection(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    armed: std::sync::Arc<Mutex<Cut>>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let cut_replies = std::sync::Arc::new(AtomicBool::new(false));
    let (mut c_read, mut c_write) = (client.try_clone().expect("clone"), client);
    let (mut s_read, mut s_write) = (server.try_clone().expect("clone"), server);
    let replies_cut = std::sync::Arc::clone(&cut_replies);
    // Server to client: stops forwarding once a cut after a commit is due.
    std::thread::spawn(move || {
        let mut buf = [0_u8; 16 << 10];
        loop {
            let n = match s_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if replies_cut.load(Ordering::SeqCst) {
                let _ = c_write.shutdown(std::net::Shutdown::Both);
                break;
            }
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    // Client to server: watches for the COMMIT.
    std::thread::spawn(move || {
        let mut buf = [0_u8; 16 << 10];
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
            let cut = if commit {
                std::mem::replace(
                    &mut *armed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                    Cut::Nothing,
                )
            } else {
                Cut::Nothing
            };
            match cut {
                Cut::BeforeCommit => {
                    let _ = s_write.shutdown(std::net::Shutdown::Both);
                    let _ = c_read.shutdown(std::net::Shutdown::Both);
                    break;
                }
                Cut::AfterCommit => cut_replies.store(true, Ordering::SeqCst),
                Cut::Nothing => {}
            }
            if s_write.write_all(chunk).is_err() {
                break;
            }
        }
    });
}
