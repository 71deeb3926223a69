//! Test fixtures shared by Oncely's crates.
//!
//! [`PgServer`] starts a throwaway PostgreSQL: `initdb` in a temporary directory, a
//! free port on 127.0.0.1, run as the `postgres` user when the tests run as root
//! (`initdb` refuses root). Nothing assumes a server is already running. A watchdog
//! process stops the server when the test process goes away, however it ends, so a
//! test that panics or is killed leaves no server behind.
//!
//! [`PgServer::shared`] hands every test of a process the same server, and
//! [`PgServer::fresh_database`] a database of its own on it. [`PgCluster`] is a
//! primary with a synchronous standby, for failover tests (a killed primary can
//! rejoin as the new primary's standby, rewound with `pg_rewind`); [`CutProxy`] cuts
//! a connection around a `COMMIT`.
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
        initdb(&owner, &data);
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
        let watchdog = watchdog(server.id(), dir.path());
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
            if accepts_connections(self.port) {
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
    // Gone already (killed and reaped): its pid may be another process's by now.
    if matches!(server.try_wait(), Ok(Some(_))) {
        return;
    }
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

/// Whether the server on 127.0.0.1:`port` accepts connections (`pg_isready`).
fn accepts_connections(port: u16) -> bool {
    Command::new(bin("pg_isready"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-q",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates a cluster in `data` (which `user` owns): superuser `postgres`, trusted
/// local connections, UTF-8.
fn initdb(user: &ServerUser, data: &Path) {
    let status = user
        .command(&bin("initdb"))
        .args([
            "-D",
            path_str(data),
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
}

/// A process that kills `server` as soon as this process is gone (however it ends:
/// a panic that skips destructors, SIGKILL, or the end of a test binary, which never
/// drops a shared server), polling once a second, then removes `dir`, the server's
/// data, once the server has exited.
fn watchdog(server: u32, dir: &Path) -> Option<Child> {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -QUIT {server} 2>/dev/null; \
         n=0; while kill -0 {server} 2>/dev/null && [ $n -lt 20 ]; do sleep 0.5; n=$((n+1)); done; \
         kill -KILL {server} 2>/dev/null; sleep 0.5; rm -rf -- \"$1\"",
        me = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script, "watchdog"])
        .arg(dir)
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
        let watchdog = watchdog(server.id(), dir.path());
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

/// What a [`CutProxy`] does with the next statement that commits: a `COMMIT` sent
/// as a simple query, or, for the `*Execute` kinds, the next statement executed
/// (a statement outside a transaction commits as it runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Pass everything.
    Nothing,
    /// Drop the connection before the `COMMIT` reaches the server: it never lands.
    BeforeCommit,
    /// Forward the `COMMIT`, let the server answer, and drop the connection before
    /// the answer reaches the client: it landed, and the client cannot know.
    AfterCommit,
    /// Drop the connection before the next executed statement reaches the server.
    BeforeExecute,
    /// Forward the next executed statement, and drop the connection before its
    /// answer reaches the client.
    AfterExecute,
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
    // Client to server: reads the protocol's messages (a start-up message first,
    // untyped; then a type byte and a length each), watching for the COMMIT or the
    // next Execute.
    std::thread::spawn(move || {
        let mut started = false;
        let mut execute_pending = false;
        while let Some(message) = read_message(&mut c_read, started) {
            // An SSL or GSS encryption request comes before the start-up message.
            started = !(!started
                && message.len() == 8
                && matches!(message[4..8], [0x04, 0xd2, 0x16, 0x2f | 0x30]));
            let commit =
                message.first() == Some(&b'Q') && message.windows(7).any(|w| w == b"COMMIT\0");
            let execute = message.first() == Some(&b'E');
            let sync = message.first() == Some(&b'S');
            let cut = {
                let mut armed = armed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let hit = match *armed {
                    Cut::BeforeCommit | Cut::AfterCommit => commit,
                    Cut::BeforeExecute | Cut::AfterExecute => execute,
                    Cut::Nothing => false,
                };
                if hit {
                    std::mem::replace(&mut *armed, Cut::Nothing)
                } else {
                    Cut::Nothing
                }
            };
            match cut {
                Cut::BeforeCommit | Cut::BeforeExecute => {
                    let _ = s_write.shutdown(std::net::Shutdown::Both);
                    let _ = c_read.shutdown(std::net::Shutdown::Both);
                    break;
                }
                Cut::AfterCommit => cut_replies.store(true, Ordering::SeqCst),
                // A statement outside a transaction commits at the Sync after it: cut
                // the answers from there (earlier, the server might see the cut
                // before the Sync, and roll back).
                Cut::AfterExecute => execute_pending = true,
                Cut::Nothing => {}
            }
            if sync && std::mem::take(&mut execute_pending) {
                cut_replies.store(true, Ordering::SeqCst);
            }
            if s_write.write_all(&message).is_err() {
                break;
            }
        }
    });
}

/// One protocol message from a client, whole: the start-up message (or an SSL or
/// cancel request) when `started` is false, else a typed message.
fn read_message(from: &mut std::net::TcpStream, started: bool) -> Option<Vec<u8>> {
    use std::io::Read;
    let head = if started { 5 } else { 4 };
    let mut message = vec![0_u8; head];
    from.read_exact(&mut message).ok()?;
    let at = head - 4;
    let len = u32::from_be_bytes(message[at..head].try_into().ok()?) as usize;
    let rest = len.checked_sub(4)?;
    let mut body = vec![0_u8; rest];
    from.read_exact(&mut body).ok()?;
    message.extend_from_slice(&body);
    Some(message)
}

/// A primary with one synchronous standby, on loopback: a commit is acknowledged
/// only once the standby has it, so the primary's loss loses nothing acknowledged.
///
/// The servers are `node1` and `node2` (their names as replication clients). Each
/// keeps its port and its data directory for the cluster's life, so a URL naming
/// both ([`fresh_database`](Self::fresh_database)) stays valid through any number
/// of failovers. One failover cycle is [`kill_primary`](Self::kill_primary),
/// [`promote_standby`](Self::promote_standby) (the standby becomes the primary), and
/// [`rejoin_as_standby`](Self::rejoin_as_standby): the old primary, rewound with
/// `pg_rewind`, follows the new one as its synchronous standby. Between the
/// promotion and the rejoin the new primary has no standby and commits alone.
pub struct PgCluster {
    primary: Option<Node>,
    standby: Option<Node>,
    /// The killed primary's data and port, until it rejoins.
    down: Option<Dormant>,
    /// A server stopped with SIGSTOP (all its processes), until it is thawed or the
    /// cluster dropped.
    frozen: Vec<Frozen>,
    user: ServerUser,
    /// Last: fields drop in order, and the directory must go only once the servers
    /// writing into it have stopped (else its removal races them and leaves it).
    dir: tempfile::TempDir,
}

/// One running server of a [`PgCluster`].
struct Node {
    name: &'static str,
    port: u16,
    data: PathBuf,
    server: Child,
    watchdog: Option<Child>,
}

/// A server of a [`PgCluster`] frozen with SIGSTOP: its processes, to thaw.
struct Frozen {
    /// `None` once thawed and running again.
    node: Option<Node>,
    pids: Vec<u32>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // Thawed first, so that the node's own drop can stop it.
        signal(&self.pids, "CONT");
    }
}

/// Sends a signal to processes (with `kill`, which every machine has).
fn signal(pids: &[u32], name: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .status();
}

/// A server's processes: the postmaster and its children (the backends and
/// auxiliary processes PostgreSQL forks), read from `/proc`.
fn server_processes(postmaster: u32) -> Vec<u32> {
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The parent's pid is the second field after the command's closing paren.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// A server of a [`PgCluster`] that is not running: what it needs to start again.
struct Dormant {
    name: &'static str,
    port: u16,
    data: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        stop(&mut self.server);
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Settings of every server of a [`PgCluster`], written into its `postgresql.conf`
/// (which `pg_basebackup` and `pg_rewind` copy along), so that every start has them:
/// also the single-user crash recovery `pg_rewind` runs on a killed server first.
const CLUSTER_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
hot_standby = on
max_connections = 200
# pg_rewind needs hint-bit changes in the WAL (or data checksums, fixed at initdb).
wal_log_hints = on
# WAL kept for a standby that fell behind while it was down or being rewound.
wal_keep_size = '256MB'
# A standby whose primary just died may sleep this long before it acts on a
# promotion that arrives in the same moment: with the default 5 s, 2 of 10
# failovers of the long test took 5.2 s from the kill to the promotion (the
# server logs 'waiting for WAL to become available' right after 'received
# promote request'), the others 0.13 to 0.29 s.
wal_retrieve_retry_interval = '500ms'
";

/// How long a standby may take to become synchronous, or a rewind to finish.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(120);

impl PgCluster {
    /// Starts the primary, copies it into a standby with `pg_basebackup`, starts
    /// the standby, and makes it synchronous.
    ///
    /// # Panics
    ///
    /// When a step fails: a fixture failure.
    #[must_use]
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("oncely-pgc-")
            .tempdir()
            .expect("a temporary directory");
        let user = ServerUser::detect();
        user.own(dir.path());
        let primary_data = dir.path().join("node1");
        std::fs::create_dir(&primary_data).expect("node1's directory");
        user.own(&primary_data);
        initdb(&user, &primary_data);
        let conf = primary_data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(CLUSTER_SETTINGS);
        std::fs::write(&conf, text).expect("postgresql.conf");
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).expect("sockets directory");
        user.own(&sockets);
        let mut cluster = Self {
            dir,
            primary: None,
            standby: None,
            down: None,
            frozen: Vec::new(),
            user,
        };
        let primary = cluster.launch(Dormant {
            name: "node1",
            port: free_port(),
            data: primary_data,
        });
        let primary_port = primary.port;
        cluster.primary = Some(primary);
        Self::wait_ready(primary_port);

        let standby_data = cluster.dir.path().join("node2");
        let status = cluster
            .user
            .command(&bin("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-D",
                path_str(&standby_data),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ])
            .status()
            .expect("pg_basebackup runs");
        assert!(status.success(), "pg_basebackup failed: {status}");
        cluster.follow(&standby_data, "node2", primary_port);
        let standby = cluster.launch(Dormant {
            name: "node2",
            port: free_port(),
            data: standby_data,
        });
        cluster.standby = Some(standby);
        cluster.make_synchronous();
        cluster
    }

    /// Starts a server on its data directory and port; its log goes on at the end
    /// of `<name>.log`.
    fn launch(&self, node: Dormant) -> Node {
        let sockets = self.dir.path().join("sockets");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(node.name))
            .expect("log");
        let server = self
            .user
            .command(&bin("postgres"))
            .args(["-D", path_str(&node.data), "-p", &node.port.to_string()])
            .args([
                "-c",
                &format!("unix_socket_directories={}", path_str(&sockets)),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let watchdog = watchdog(server.id(), &node.data);
        Node {
            name: node.name,
            port: node.port,
            data: node.data,
            server,
            watchdog,
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Makes a data directory a standby of the server on `primary_port`, known to
    /// it as `name`: `standby.signal`, and `primary_conninfo` in
    /// `postgresql.auto.conf` in place of whatever the copy brought along (a
    /// rewound server gets the new primary's file, naming its own old primary and
    /// its standby).
    fn follow(&self, data: &Path, name: &str, primary_port: u16) {
        let auto = data.join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&auto).unwrap_or_default();
        let mut conf: String = old
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.starts_with("primary_conninfo") && !l.starts_with("synchronous_standby_names")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        conf.push_str(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres \
             application_name={name}'\n"
        ));
        std::fs::write(&auto, conf).expect("postgresql.auto.conf");
        let signal = data.join("standby.signal");
        std::fs::write(&signal, "").expect("standby.signal");
        self.user.own(&auto);
        self.user.own(&signal);
    }

    /// Waits for both servers, names the standby in the primary's
    /// `synchronous_standby_names`, and waits until the primary reports it
    /// synchronous (which it does only once the standby has caught up).
    fn make_synchronous(&self) {
        Self::wait_ready(self.primary_port());
        Self::wait_ready(self.standby_port());
        let standby = self.standby.as_ref().expect("a standby").name;
        let primary = self.primary_port();
        Self::sql(
            primary,
            &format!("ALTER SYSTEM SET synchronous_standby_names = '{standby}'"),
        );
        Self::sql(primary, "SELECT pg_reload_conf()");
        let started = Instant::now();
        loop {
            let state = Self::sql(
                primary,
                &format!(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{standby}'"
                ),
            );
            if state.trim() == "sync" {
                break;
            }
            assert!(
                started.elapsed() < REJOIN_TIMEOUT,
                "{standby} never became synchronous\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(port: u16) {
        let started = Instant::now();
        while !accepts_connections(port) {
            assert!(started.elapsed() < START_TIMEOUT, "a server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQL on a node with `psql`; its output, unaligned.
    fn sql(port: u16, sql: &str) -> String {
        let out = Command::new(bin("psql"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-XAtc", sql, "postgres"])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The primary's port, while it lives.
    #[must_use]
    pub fn primary_port(&self) -> u16 {
        self.primary.as_ref().expect("a primary").port
    }

    /// The standby's port, while there is one.
    #[must_use]
    pub fn standby_port(&self) -> u16 {
        self.standby.as_ref().expect("a standby").port
    }

    /// Creates a database on the primary (the standby receives it) and returns a
    /// URL naming both servers, primary first, for whichever is writable.
    #[must_use]
    pub fn fresh_database(&self, name: &str) -> String {
        let _ = Self::sql(self.primary_port(), &format!("CREATE DATABASE {name}"));
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{name}?target_session_attrs=read-write",
            self.primary_port(),
            self.standby_port()
        )
    }

    /// Kills the primary with SIGKILL: the loss of a machine. Its backends notice
    /// the postmaster's death and exit; its data directory stays, for
    /// [`rejoin_as_standby`](Self::rejoin_as_standby).
    pub fn kill_primary(&mut self) {
        if let Some(mut node) = self.primary.take() {
            if let Some(w) = &mut node.watchdog {
                let _ = w.kill();
                let _ = w.wait();
            }
            let _ = node.server.kill();
            let _ = node.server.wait();
            self.down = Some(Dormant {
                name: node.name,
                port: node.port,
                data: node.data.clone(),
            });
        }
    }

    /// Freezes the primary: SIGSTOP to its postmaster and every process it forked,
    /// as a hung disk or a machine that stopped answering would leave it. Its port
    /// still accepts connections (the kernel answers for it) and nothing on it
    /// answers. It stays frozen until the cluster is dropped (a frozen primary is
    /// never thawed: the standby may be promoted meanwhile).
    pub fn freeze_primary(&mut self) {
        if let Some(node) = self.primary.take() {
            let pids = server_processes(node.server.id());
            signal(&pids, "STOP");
            self.frozen.push(Frozen {
                node: Some(node),
                pids,
            });
        }
    }

    /// Freezes the synchronous standby the same way: the primary's commits wait for
    /// it from then on. [`thaw_standby`](Self::thaw_standby) lets it go on.
    pub fn freeze_standby(&mut self) {
        if let Some(node) = self.standby.take() {
            let pids = server_processes(node.server.id());
            signal(&pids, "STOP");
            self.frozen.push(Frozen {
                node: Some(node),
                pids,
            });
        }
    }

    /// Lets a frozen standby go on (SIGCONT); it catches up and the primary's
    /// commits that waited for it return.
    ///
    /// # Panics
    ///
    /// When no standby is frozen.
    pub fn thaw_standby(&mut self) {
        assert!(self.standby.is_none(), "the standby is not frozen");
        let mut frozen = self.frozen.pop().expect("a frozen standby");
        signal(&frozen.pids, "CONT");
        frozen.pids.clear();
        let node = frozen
            .node
            .take()
            .expect("frozen nodes are held until thawed");
        self.standby = Some(node);
    }

    /// Promotes the standby and waits until it takes writes; it is the primary from
    /// then on.
    ///
    /// # Panics
    ///
    /// When there is no standby, or the promotion does not finish in time.
    pub fn promote_standby(&mut self) {
        let port = self.standby_port();
        let _ = Self::sql(port, "SELECT pg_promote(true, 60)");
        let started = Instant::now();
        while Self::sql(port, "SELECT pg_is_in_recovery()").trim() != "f" {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the standby was not promoted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.primary = self.standby.take();
    }

    /// Brings the killed primary back as the new primary's synchronous standby:
    /// `pg_rewind` winds its data back to where the two servers' histories split
    /// (undoing whatever it wrote that never reached the standby) and copies what
    /// changed since, then it starts as a standby and the primary waits for it.
    /// Returns once the primary reports it synchronous.
    ///
    /// # Panics
    ///
    /// When no killed primary waits, there is no primary, or a step fails.
    pub fn rejoin_as_standby(&mut self) {
        let old = self.down.take().expect("a killed primary to rejoin");
        let primary = self.primary_port();
        // pg_rewind reads the source's timeline from its control file, which a
        // promotion updates only at the checkpoint that follows it.
        Self::sql(primary, "CHECKPOINT");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path("pg_rewind"))
            .expect("pg_rewind's log");
        let status = self
            .user
            .command(&bin("pg_rewind"))
            .args(["--target-pgdata", path_str(&old.data)])
            .arg(format!(
                "--source-server=host=127.0.0.1 port={primary} user=postgres dbname=postgres"
            ))
            .arg("--no-sync")
            .stdout(log.try_clone().expect("pg_rewind's log"))
            .stderr(log)
            .status()
            .expect("pg_rewind runs");
        assert!(
            status.success(),
            "pg_rewind of {} failed: {status}\n{}",
            old.name,
            self.logs()
        );
        self.follow(&old.data, old.name, primary);
        self.standby = Some(self.launch(old));
        self.make_synchronous();
    }

    /// The servers' logs (and `pg_rewind`'s), for a failing test's message.
    #[must_use]
    pub fn logs(&self) -> String {
        ["node1", "node2", "pg_rewind"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}\n{}",
                    std::fs::read_to_string(self.log_path(n)).unwrap_or_default()
                )
            })
            .collect()
    }
}
