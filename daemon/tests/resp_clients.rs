//! The RESP face driven by real clients from the registries, not only our own
//! frames: redis-cli and redis-benchmark (Debian's redis-tools), redis-py 5 and 8
//! in RESP2 and RESP3 (PyPI), ioredis 5 (RESP2) and 6 (RESP3) (npm), each with
//! tokens off and on; a race of RESP and HTTP clients on the same IDs, exactly one
//! winner per ID; and what a pipelining client needs of a connection (replies in
//! the protocol each command was read under, a busy pipeline never timed out).
//!
//! The libraries are installed once per machine by `tests/resp_clients/setup.sh`
//! under ~/.cache/oncely (a virtualenv, an npm prefix), pinned to the versions
//! below; an install that fails fails its test, saying why.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, client, metric_sum, metric_value, metrics, metrics_as, verdicts};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

const TOKEN: &str = "resp-clients-token-0123456789";
/// redis-py: the last of the 5 series (CLIENT SETINFO on connect, RESP3 opt-in)
/// and the newest (RESP3 also sends CLIENT MAINT_NOTIFICATIONS).
const REDIS_PY: [&str; 2] = ["5.2.1", "8.2.0"];
/// ioredis: 5 speaks RESP2; 6 says HELLO 3 and CLIENT SETINFO on connect.
const IOREDIS: [&str; 2] = ["5.4.1", "6.1.0"];
/// The longest any one client run may take.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);

// --- processes --------------------------------------------------------------------

/// A child process killed on drop, so a failing test leaves none behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[derive(Debug)]
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn all(&self) -> String {
        format!(
            "{}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to its end, at most `limit` (killed past it), with `input` on its
/// standard input.
fn run(cmd: &mut Command, input: Option<Vec<u8>>, limit: Duration) -> Ran {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = Killed(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}")),
    );
    let writer = input.map(|bytes| {
        let mut stdin = child.0.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = r.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.0.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.0.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            drop(child);
            panic!(
                "{cmd:?} ran over {limit:?}:\n{}\n{}",
                stdout.join().unwrap(),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ran {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The scripts beside this file.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/resp_clients")
        .join(name)
}

/// One install at a time within this binary (setup.sh also locks across runs).
static INSTALL: Mutex<()> = Mutex::new(());

/// Installs a client library once (cached); the path setup.sh prints.
fn setup(library: &str, version: &str) -> PathBuf {
    let _one = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ran = run(
        Command::new("bash")
            .arg(script("setup.sh"))
            .args([library, version]),
        None,
        Duration::from_secs(600),
    );
    assert!(
        ran.status.success(),
        "installing {library} {version} failed (tests/resp_clients/setup.sh): {}",
        ran.all()
    );
    PathBuf::from(ran.stdout.trim())
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS...`, which must exit 0 (redis-cli exits
/// 0 on error replies too); its standard output, trailing blank lines trimmed.
fn cli(addr: SocketAddr, args: &[&str]) -> String {
    cli_in(addr, args, None)
}

fn cli_in(addr: SocketAddr, args: &[&str], input: Option<Vec<u8>>) -> String {
    let ran = cli_ran(addr, args, input);
    assert!(ran.status.success(), "redis-cli {args:?}: {}", ran.all());
    ran.stdout.trim_end().to_owned()
}

fn cli_ran(addr: SocketAddr, args: &[&str], input: Option<Vec<u8>>) -> Ran {
    run(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(args),
        input,
        CLIENT_LIMIT,
    )
}

// --- HTTP ---------------------------------------------------------------------------

/// `POST /v1/namespaces/{ns}/check` (JSON, with the token when given): the verdicts.
async fn check(daemon: &Daemon, ns: &str, ids: &[&str], token: Option<&str>) -> Vec<String> {
    let mut req = client()
        .post(daemon.url(&format!("/v1/namespaces/{ns}/check")))
        .header("Content-Type", "application/json")
        .body(json!({ "ids": ids }).to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    let results = v["results"].as_array().unwrap();
    for (r, id) in results.iter().zip(ids) {
        assert_eq!(r["id"], *id, "{v}");
    }
    results
        .iter()
        .map(|r| r["verdict"].as_str().unwrap().to_owned())
        .collect()
}

async fn get_json(daemon: &Daemon, path: &str, token: Option<&str>) -> Value {
    let mut req = client().get(daemon.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// RESP's count of a verdict, over all namespaces.
fn resp_ids(text: &str, op: &str, verdict: &str) -> f64 {
    metric_sum(
        text,
        "oncelyd_ids_total",
        &[("protocol", "resp"), ("op", op), ("verdict", verdict)],
    )
}

fn resp_commands(text: &str, command: &str, outcome: &str) -> f64 {
    metric_value(
        text,
        &format!(r#"oncelyd_resp_commands_total{{command="{command}",outcome="{outcome}"}}"#),
    )
}

// --- RESP by hand, for what the clients cannot show --------------------------------

/// One command as a RESP array of bulk strings.
fn frame(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A reply, RESP2 or RESP3, as read.
#[derive(Clone, Debug, PartialEq)]
enum Frame {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(String),
    /// RESP2's `$-1` / `*-1`.
    Nil2,
    /// RESP3's `_`.
    Null,
    Bool(bool),
    Array(Vec<Self>),
    Map(Vec<(Self, Self)>),
    /// Any other RESP3 type, by its first byte.
    Other(char, String),
}

impl Frame {
    /// Its first byte on the wire, and for nil which protocol's.
    fn kind(&self) -> &'static str {
        match self {
            Self::Simple(_) => "simple",
            Self::Error(_) => "error",
            Self::Int(_) => "integer",
            Self::Bulk(_) => "bulk",
            Self::Nil2 => "RESP2 nil",
            Self::Null => "RESP3 null",
            Self::Bool(_) => "RESP3 boolean",
            Self::Array(_) => "array",
            Self::Map(_) => "RESP3 map",
            Self::Other(..) => "other",
        }
    }
}

fn read_frame(r: &mut impl BufRead) -> std::io::Result<Frame> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    let n = || rest.parse::<i64>().unwrap();
    Ok(match kind {
        "+" => Frame::Simple(rest.into()),
        "-" => Frame::Error(rest.into()),
        ":" => Frame::Int(n()),
        "_" => Frame::Null,
        "#" => Frame::Bool(rest == "t"),
        "$" if n() < 0 => Frame::Nil2,
        "$" => {
            let mut bytes = vec![0; usize::try_from(n()).unwrap() + 2];
            r.read_exact(&mut bytes)?;
            bytes.truncate(bytes.len() - 2);
            Frame::Bulk(String::from_utf8_lossy(&bytes).into_owned())
        }
        "*" if n() < 0 => Frame::Nil2,
        "*" | "~" | ">" => Frame::Array((0..n()).map(|_| read_frame(r)).collect::<Result<_, _>>()?),
        "%" => Frame::Map(
            (0..n())
                .map(|_| Ok((read_frame(r)?, read_frame(r)?)))
                .collect::<std::io::Result<_>>()?,
        ),
        other => Frame::Other(other.chars().next().unwrap(), rest.into()),
    })
}

/// A raw RESP connection with a read timeout.
struct Raw {
    out: TcpStream,
    input: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Self {
            out: s.try_clone().unwrap(),
            input: BufReader::new(s),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.out.write_all(bytes).unwrap();
    }

    fn read(&mut self) -> Frame {
        read_frame(&mut self.input).expect("a reply")
    }

    fn call(&mut self, args: &[&str]) -> Frame {
        self.send(&frame(args));
        self.read()
    }
}

// --- redis-cli ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_marks_with_set_nx_and_bf_and_refuses_what_would_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    assert_eq!(cli(addr, &["PING"]), "PONG");
    assert_eq!(cli(addr, &["ECHO", "hi"]), "hi");

    // SET NX: OK when new, nil (printed as nothing) when seen.
    assert_eq!(cli(addr, &["SET", "k", "1", "NX"]), "OK");
    assert_eq!(cli(addr, &["SET", "k", "1", "NX"]), "");
    assert_eq!(cli(addr, &["SET", "px", "1", "NX", "PX", "1000"]), "OK");
    assert_eq!(cli(addr, &["SET", "px", "1", "PX", "1000", "NX"]), "");
    assert_eq!(cli(addr, &["SETNX", "sx", "1"]), "1");
    assert_eq!(cli(addr, &["SETNX", "sx", "1"]), "0");
    // SET NX marked what HTTP sees; what HTTP marked, SET NX sees.
    assert_eq!(
        check(&daemon, "default", &["k", "px", "sx"], None).await,
        ["duplicate"; 3]
    );
    let h = daemon.url("/v1/namespaces/default/check-and-mark");
    assert_eq!(
        verdicts(&client(), &h, &["from-http".into()]).await,
        ["new"]
    );
    assert_eq!(cli(addr, &["SET", "from-http", "1", "NX"]), "");

    // An expiry beyond the window: an error naming both, nothing marked.
    let ns = get_json(&daemon, "/v1/namespaces/default", None).await;
    let window = ns["remembers_at_least"]["ms"].as_u64().unwrap();
    let over = (window + 1).to_string();
    let said = cli(addr, &["SET", "far", "1", "NX", "PX", &over]);
    assert!(
        said.starts_with("ERR")
            && said.contains(&format!("expiry of {over} ms"))
            && said.contains(&format!("window of {window} ms")),
        "{said}"
    );
    let secs = (window / 1000 + 1).to_string();
    let said = cli(addr, &["SET", "far", "1", "EX", &secs, "NX"]);
    assert!(
        said.contains(&format!("expiry of {} ms", (window / 1000 + 1) * 1000))
            && said.contains(&window.to_string()),
        "{said}"
    );
    assert_eq!(
        cli(
            addr,
            &["SET", "at-window", "1", "NX", "PX", &window.to_string()]
        ),
        "OK"
    );
    assert_eq!(check(&daemon, "default", &["far"], None).await, ["new"]);

    // Whatever would overwrite, re-time, read or delete is refused and changes
    // nothing: k stays marked, plain and kt stay unmarked.
    for (args, says) in [
        (&["SET", "plain", "1"][..], "without NX"),
        (&["SET", "plain", "1", "XX"], "XX is refused"),
        (&["SET", "kt", "1", "NX", "KEEPTTL"], "KEEPTTL is refused"),
        (
            &["SET", "kt", "1", "NX", "PXAT", "99999999999999"],
            "PXAT is refused",
        ),
        (&["SET", "kt", "1", "NX", "GET"], "GET is refused"),
        (&["GET", "k"], "'GET' is refused"),
        (&["DEL", "k"], "'DEL' is refused"),
        (&["UNLINK", "k"], "'UNLINK' is refused"),
        (&["EXPIRE", "k", "1"], "'EXPIRE' is refused"),
        (&["FLUSHALL"], "'FLUSHALL' is refused"),
        (&["FLUSHDB"], "'FLUSHDB' is refused"),
    ] {
        let said = cli(addr, args);
        assert!(
            said.starts_with("ERR") && said.contains(says) && said.contains("nothing"),
            "{args:?}: {said}"
        );
    }
    assert_eq!(
        check(&daemon, "default", &["k", "plain", "kt"], None).await,
        ["duplicate", "new", "new"]
    );
    assert_eq!(cli(addr, &["SET", "k", "1", "NX"]), "");

    // BF.*: 1 newly added, 0 seen; EXISTS marks nothing.
    assert_eq!(cli(addr, &["BF.ADD", "default", "b1"]), "1");
    assert_eq!(cli(addr, &["BF.ADD", "default", "b1"]), "0");
    assert_eq!(
        cli(addr, &["BF.MADD", "default", "b1", "b2", "b2", "k"]),
        "0\n1\n0\n0"
    );
    assert_eq!(cli(addr, &["BF.EXISTS", "default", "b2"]), "1");
    assert_eq!(cli(addr, &["BF.EXISTS", "default", "never"]), "0");
    assert_eq!(
        cli(addr, &["BF.MEXISTS", "default", "b1", "never", "k"]),
        "1\n0\n1"
    );
    assert_eq!(
        check(&daemon, "default", &["b1", "b2", "never"], None).await,
        ["duplicate", "duplicate", "new"]
    );
    let said = cli(addr, &["BF.ADD", "nosuch", "x"]);
    assert!(said.contains("unknown namespace"), "{said}");

    // BF.RESERVE creates a namespace (error_rate, capacity), once.
    assert_eq!(cli(addr, &["BF.RESERVE", "orders", "0.001", "5000"]), "OK");
    assert_eq!(
        cli(addr, &["BF.RESERVE", "orders", "0.01", "9"]),
        "ERR item exists"
    );
    let orders = get_json(&daemon, "/v1/namespaces/orders", None).await;
    assert_eq!(orders["config"]["fp_rate"], 0.001, "{orders}");
    assert_eq!(orders["config"]["generation_capacity"], 5000, "{orders}");
    assert_eq!(cli(addr, &["BF.ADD", "orders", "o1"]), "1");
    assert_eq!(cli(addr, &["BF.MADD", "orders", "o1", "o2"]), "0\n1");
    assert_eq!(
        check(&daemon, "orders", &["o1", "o2"], None).await,
        ["duplicate"; 2]
    );
    assert_eq!(check(&daemon, "default", &["o1"], None).await, ["new"]);

    // RESP3 (-3 says HELLO 3 first): a map, RESP3 booleans and nulls.
    let hello = cli(addr, &["-3", "HELLO", "3"]);
    for line in [
        "server oncely",
        "version 7.2.0",
        "proto 3",
        "mode standalone",
    ] {
        assert!(hello.lines().any(|l| l == line), "{line:?} in {hello}");
    }
    let hello2 = cli(addr, &["HELLO", "2"]);
    assert!(hello2.contains("proto\n2"), "{hello2}");
    assert_eq!(cli(addr, &["-3", "SET", "k", "1", "NX"]), "");
    assert_eq!(cli(addr, &["-3", "SET", "r3", "1", "NX"]), "OK");
    let claim = cli(
        addr,
        &[
            "-3",
            "ONCELY.CLAIM",
            "default",
            "c3",
            "OWNER",
            "w",
            "LEASE",
            "60000",
        ],
    );
    assert!(
        claim.contains("verdict acquired") && claim.contains("replayed (false)"),
        "{claim}"
    );
    let claim2 = cli(
        addr,
        &[
            "ONCELY.CLAIM",
            "default",
            "c3",
            "OWNER",
            "w2",
            "LEASE",
            "60000",
        ],
    );
    assert!(claim2.starts_with("verdict\nin_progress"), "{claim2}");

    // --pipe: one stream of commands with duplicates and refusals. Each key is
    // marked once; each refusal is an error of its own and marks nothing.
    let before = metrics(&client(), &daemon).await;
    let mut keys: Vec<usize> = (0..3000).map(|i| i % 1000).collect();
    keys.shuffle(&mut StdRng::seed_from_u64(7));
    let mut pipe = String::new();
    for (n, k) in keys.iter().enumerate() {
        pipe.push_str(&format!("SET pipe-{k} 1 NX\r\n"));
        if n % 60 == 0 {
            pipe.push_str(&format!("SET pipe-bad-{n} 1\r\n"));
        }
    }
    // redis-cli prints the error replies and exits 1 for them.
    let ran = cli_ran(addr, &["--pipe"], Some(pipe.into_bytes()));
    assert!(
        ran.status.code() == Some(1) && ran.stdout.contains("errors: 50, replies: 3050"),
        "{}",
        ran.stdout
    );
    assert_eq!(
        ran.stderr
            .lines()
            .filter(|l| l.contains("without NX"))
            .count(),
        50
    );
    let after = metrics(&client(), &daemon).await;
    let delta = |v| resp_ids(&after, "check_and_mark", v) - resp_ids(&before, "check_and_mark", v);
    assert_eq!((delta("new"), delta("duplicate")), (1000.0, 2000.0));
    let piped: Vec<String> = (0..1000).map(|i| format!("pipe-{i}")).collect();
    let piped: Vec<&str> = piped.iter().map(String::as_str).collect();
    assert_eq!(
        check(&daemon, "default", &piped, None).await,
        ["duplicate"; 1000]
    );
    assert_eq!(
        check(&daemon, "default", &["pipe-bad-0", "pipe-bad-60"], None).await,
        ["new"; 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_with_a_token_needs_it_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &["--token", TOKEN]);
    let a = ["--no-auth-warning", "-a", TOKEN];
    let with = |args: &[&'static str]| -> Vec<&'static str> { [&a[..], args].concat() };

    // Without the token: NOAUTH, and nothing marked.
    for args in [
        &["SET", "t1", "1", "NX"][..],
        &["BF.ADD", "default", "t1"],
        &["PING"],
    ] {
        let said = cli(addr, args);
        assert!(said.starts_with("NOAUTH"), "{args:?}: {said}");
    }
    // A wrong token: redis-cli reports WRONGPASS (standard error) and its command
    // then meets NOAUTH.
    for auth in [
        &["-a", "wrong"][..],
        &["--user", "anyone", "--pass", "wrong"],
    ] {
        let args = [&["--no-auth-warning"][..], auth, &["SET", "t1", "1", "NX"]].concat();
        let ran = cli_ran(addr, &args, None);
        assert!(ran.stderr.contains("WRONGPASS"), "{args:?}: {}", ran.all());
        assert!(ran.stdout.starts_with("NOAUTH"), "{args:?}: {}", ran.all());
    }
    assert_eq!(
        check(&daemon, "default", &["t1"], Some(TOKEN)).await,
        ["new"]
    );

    // -a TOKEN, or any user with the token as password.
    assert_eq!(cli(addr, &with(&["SET", "t1", "1", "NX"])), "OK");
    let user = ["--no-auth-warning", "--user", "anyone", "--pass", TOKEN];
    assert_eq!(
        cli(addr, &[&user[..], &["SET", "t1", "1", "NX"]].concat()),
        ""
    );
    assert_eq!(
        cli(
            addr,
            &[&user[..], &["BF.MADD", "default", "t1", "t2"]].concat()
        ),
        "0\n1"
    );
    let hello = cli(addr, &with(&["-3", "HELLO", "3"]));
    assert!(hello.contains("proto 3"), "{hello}");
    // HELLO 3 AUTH user token authenticates in the handshake itself.
    let said = cli(addr, &["HELLO", "3", "AUTH", "anyone", "wrong"]);
    assert!(said.starts_with("WRONGPASS"), "{said}");
    let said = cli(addr, &["-3", "HELLO", "3", "AUTH", "anyone", TOKEN]);
    assert!(said.contains("proto 3"), "{said}");
    let out = cli_in(
        addr,
        &with(&["--pipe"]),
        Some(b"SET tp 1 NX\r\nSET tp 1 NX\r\n".to_vec()),
    );
    assert!(out.contains("errors: 0, replies: 2"), "{out}");

    // On one connection: a wrong AUTH leaves it unauthenticated, AUTH TOKEN
    // authenticates it, RESET forgets that.
    let mut c = Raw::connect(addr);
    assert!(matches!(c.call(&["AUTH", "wrong"]), Frame::Error(e) if e.starts_with("WRONGPASS")));
    assert!(
        matches!(c.call(&["SET", "t3", "1", "NX"]), Frame::Error(e) if e.starts_with("NOAUTH"))
    );
    assert_eq!(
        c.call(&["AUTH", "someone", TOKEN]),
        Frame::Simple("OK".into())
    );
    assert_eq!(
        c.call(&["SET", "t3", "1", "NX"]),
        Frame::Simple("OK".into())
    );
    assert_eq!(c.call(&["RESET"]), Frame::Simple("RESET".into()));
    assert!(
        matches!(c.call(&["SET", "t4", "1", "NX"]), Frame::Error(e) if e.starts_with("NOAUTH"))
    );
    assert_eq!(
        check(
            &daemon,
            "default",
            &["t1", "t2", "t3", "t4", "tp"],
            Some(TOKEN)
        )
        .await,
        ["duplicate", "duplicate", "duplicate", "new", "duplicate"]
    );
    // And HTTP needs the same token.
    let r = client()
        .post(daemon.url("/v1/namespaces/default/check"))
        .json(&json!({"ids": ["t1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

// --- redis-benchmark -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_pipelined_and_not_meets_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let port = addr.port().to_string();
    for (pipeline, n) in [("16", "20000"), ("1", "4000")] {
        // redis-benchmark 7 stops at the first error reply.
        let ran = run(
            Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &port, "-q"])
                .args(["-n", n, "-r", "1000000", "-c", "4", "-P", pipeline])
                .args(["SET", "s:__rand_int__", "1", "NX", "PX", "3600000"]),
            None,
            CLIENT_LIMIT,
        );
        assert!(
            ran.status.success()
                && ran.stdout.contains("requests per second")
                && !ran.stdout.contains("rror")
                && !ran.stderr.contains("rror"),
            "redis-benchmark -P {pipeline}: {}",
            ran.all()
        );
    }
    let c = client();
    let health = c.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Every request reached the tracker as a mark and was counted as RESP's.
    let text = metrics(&c, &daemon).await;
    let resp: String = text
        .lines()
        .filter(|l| l.contains("resp"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(resp_commands(&text, "set", "ok"), 24_000.0, "{resp}");
    assert_eq!(resp_commands(&text, "set", "error"), 0.0, "{resp}");
    let marked =
        resp_ids(&text, "check_and_mark", "new") + resp_ids(&text, "check_and_mark", "duplicate");
    assert_eq!(marked, 24_000.0);
    assert!(
        resp_ids(&text, "check_and_mark", "new") > 23_000.0,
        "{resp}"
    );
    // The daemon still answers both faces.
    assert_eq!(cli(addr, &["SET", "after", "1", "NX"]), "OK");
    assert_eq!(
        check(&daemon, "default", &["after"], None).await,
        ["duplicate"]
    );
}

// --- redis-py ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_in_resp2_and_resp3_with_and_without_a_token() {
    let pythons: Vec<(&str, PathBuf)> = REDIS_PY
        .iter()
        .map(|v| (*v, setup("redis-py", v)))
        .collect();
    let open = tempfile::tempdir().unwrap();
    let (_open_daemon, open_addr) = Daemon::start_resp(open.path(), &[]);
    let closed = tempfile::tempdir().unwrap();
    let (closed_daemon, closed_addr) = Daemon::start_resp(closed.path(), &["--token", TOKEN]);
    let mut failed = Vec::new();
    for (version, python) in &pythons {
        for (addr, token) in [(open_addr, None), (closed_addr, Some(TOKEN))] {
            for protocol in ["2", "3"] {
                let ran = run(
                    Command::new(python)
                        .arg(script("redis_py.py"))
                        .args([&addr.port().to_string(), protocol])
                        .args(token),
                    None,
                    CLIENT_LIMIT,
                );
                let ok = format!("ok redis-py {version} RESP{protocol}");
                if !(ran.status.success() && ran.stdout.contains(&ok)) {
                    failed.push(format!(
                        "redis-py {version} RESP{protocol} token={}: {}",
                        token.is_some(),
                        ran.all()
                    ));
                }
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    // The daemon counted the scripts' claims as RESP's: per run two fresh claims,
    // a renewal, one in progress, one duplicate; a release and a complete.
    let text = metrics_as(&client(), &closed_daemon, Some(TOKEN)).await;
    let runs = 2.0 * REDIS_PY.len() as f64;
    for (series, per_run) in [
        (
            r#"oncelyd_claims_total{namespace="default",protocol="resp",outcome="acquired"}"#,
            2.0,
        ),
        (
            r#"oncelyd_claims_total{namespace="default",protocol="resp",outcome="renewed"}"#,
            1.0,
        ),
        (
            r#"oncelyd_claims_total{namespace="default",protocol="resp",outcome="in_progress"}"#,
            1.0,
        ),
        (
            r#"oncelyd_claims_total{namespace="default",protocol="resp",outcome="duplicate"}"#,
            1.0,
        ),
        (
            r#"oncelyd_claims_ended_total{namespace="default",protocol="resp",outcome="completed"}"#,
            1.0,
        ),
        (
            r#"oncelyd_claims_ended_total{namespace="default",protocol="resp",outcome="released"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metric_value(&text, series), per_run * runs, "{series}");
    }
}

/// redis-py before 6 parses CLIENT INFO and CLIENT LIST strictly: every integer
/// field Redis sends (age, idle, sub, psub, multi, qbuf, qbuf-free, obl, argv-mem,
/// oll, omem, tot-mem) must be there.
#[test]
fn redis_py_5_reads_client_info_and_client_list() {
    let python = setup("redis-py", REDIS_PY[0]);
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    for protocol in ["2", "3"] {
        let ran = run(
            Command::new(&python).args([
                "-c",
                "import sys, redis\n\
                 r = redis.Redis(port=int(sys.argv[1]), protocol=int(sys.argv[2]), client_name='me')\n\
                 info = r.client_info()\n\
                 assert info['name'] == 'me' and info['lib-name'] == 'redis-py', info\n\
                 assert [c['name'] for c in r.client_list()] == ['me']\n\
                 print('ok')",
                &addr.port().to_string(),
                protocol,
            ]),
            None,
            CLIENT_LIMIT,
        );
        assert!(
            ran.status.success() && ran.stdout.contains("ok"),
            "redis-py {} RESP{protocol} client_info(): {}",
            REDIS_PY[0],
            ran.all()
        );
    }
}

// --- ioredis -------------------------------------------------------------------------------

#[test]
fn ioredis_in_resp2_and_resp3_with_and_without_a_token() {
    let modules: Vec<(&str, PathBuf)> = IOREDIS.iter().map(|v| (*v, setup("ioredis", v))).collect();
    let open = tempfile::tempdir().unwrap();
    let (_open_daemon, open_addr) = Daemon::start_resp(open.path(), &[]);
    let closed = tempfile::tempdir().unwrap();
    let (_closed_daemon, closed_addr) = Daemon::start_resp(closed.path(), &["--token", TOKEN]);
    let mut failed = Vec::new();
    for (version, modules) in &modules {
        for (addr, token) in [(open_addr, None), (closed_addr, Some(TOKEN))] {
            let ran = run(
                Command::new("node")
                    .env("NODE_PATH", modules)
                    .arg(script("ioredis.js"))
                    .arg(addr.port().to_string())
                    .args(token),
                None,
                CLIENT_LIMIT,
            );
            if !(ran.status.success() && ran.stdout.contains(&format!("ok ioredis {version}"))) {
                failed.push(format!(
                    "ioredis {version} token={}: {}",
                    token.is_some(),
                    ran.all()
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

// --- RESP and HTTP on the same IDs -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_and_http_clients_racing_on_the_same_ids_have_one_winner_each() {
    const IDS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let ids: Vec<String> = (0..IDS).map(|i| format!("race-{i}")).collect();
    let order = |seed: u64| {
        let mut o: Vec<usize> = (0..IDS).collect();
        o.shuffle(&mut StdRng::seed_from_u64(seed));
        o
    };
    // Four RESP connections, each in its own order: two pipeline SET NX 100 at a
    // time, two send BF.MADD of 20 IDs, 5 commands a write.
    let resp: Vec<_> = (0..4_u64)
        .map(|n| {
            let ids = ids.clone();
            let order = order(0x5eed + n);
            std::thread::spawn(move || {
                let mut c = Raw::connect(addr);
                let mut won = Vec::new();
                for chunk in order.chunks(100) {
                    if n < 2 {
                        let mut bytes = Vec::new();
                        for &i in chunk {
                            bytes.extend(frame(&["SET", &ids[i], "1", "NX"]));
                        }
                        c.send(&bytes);
                        for &i in chunk {
                            match c.read() {
                                Frame::Simple(ok) if ok == "OK" => won.push(i),
                                Frame::Nil2 => {}
                                other => panic!("SET NX {}: {other:?}", ids[i]),
                            }
                        }
                    } else {
                        let mut bytes = Vec::new();
                        for part in chunk.chunks(20) {
                            let mut args = vec!["BF.MADD", "default"];
                            args.extend(part.iter().map(|&i| ids[i].as_str()));
                            bytes.extend(frame(&args));
                        }
                        c.send(&bytes);
                        for part in chunk.chunks(20) {
                            let Frame::Array(bits) = c.read() else {
                                panic!("BF.MADD answered no array")
                            };
                            assert_eq!(bits.len(), part.len());
                            for (&i, bit) in part.iter().zip(bits) {
                                match bit {
                                    Frame::Int(1) => won.push(i),
                                    Frame::Int(0) => {}
                                    other => panic!("BF.MADD {}: {other:?}", ids[i]),
                                }
                            }
                        }
                    }
                }
                won
            })
        })
        .collect();
    // Four HTTP clients posting 50 at a time, each in its own order.
    let http: Vec<_> = (0..4_u64)
        .map(|n| {
            let ids = ids.clone();
            let order = order(0xbeef + n);
            let url = daemon.url("/v1/namespaces/default/check-and-mark");
            tokio::spawn(async move {
                let c = client();
                let mut won = Vec::new();
                for chunk in order.chunks(50) {
                    let batch: Vec<String> = chunk.iter().map(|&i| ids[i].clone()).collect();
                    let got = verdicts(&c, &url, &batch).await;
                    assert_eq!(got.len(), chunk.len());
                    won.extend(
                        chunk
                            .iter()
                            .zip(got)
                            .filter(|(_, v)| v == "new")
                            .map(|(&i, _)| i),
                    );
                }
                won
            })
        })
        .collect();
    let mut wins = vec![0_u32; IDS];
    let mut by_resp = 0;
    for t in resp {
        for i in tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap()
        {
            wins[i] += 1;
            by_resp += 1;
        }
    }
    for t in http {
        for i in t.await.unwrap() {
            wins[i] += 1;
        }
    }
    let wrong: Vec<_> = wins
        .iter()
        .enumerate()
        .filter(|(_, w)| **w != 1)
        .map(|(i, w)| format!("{}: {w} winners", ids[i]))
        .collect();
    assert!(
        wrong.is_empty(),
        "IDs without exactly one winner: {wrong:?}"
    );
    // Both faces won some: the race was a race.
    assert!(
        by_resp > 0 && by_resp < IDS,
        "{by_resp} of {IDS} won over RESP"
    );
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        check(&daemon, "default", &all, None).await,
        vec!["duplicate"; IDS]
    );
    // And the daemon counted as many new IDs as there were.
    let text = metrics(&client(), &daemon).await;
    let new = |p: &str| {
        metric_value(
            &text,
            &format!(
                r#"oncelyd_ids_total{{namespace="default",protocol="{p}",op="check_and_mark",verdict="new"}}"#
            ),
        )
    };
    assert_eq!(new("resp") + new("http"), IDS as f64);
    assert_eq!(new("resp"), by_resp as f64);
}

// --- what a pipelining client needs of its connection ------------------------------------

/// Redis encodes each reply in the protocol in force when its command ran: a
/// `HELLO 3` or `RESET` in the middle of a pipeline changes the encoding of the
/// replies after it only.
#[test]
fn each_reply_is_encoded_in_the_protocol_its_command_ran_under() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let cmds: [&[&str]; 7] = [
        &["SET", "p", "1", "NX"],
        &["SET", "p", "1", "NX"],
        &["HELLO", "3"],
        &["SET", "p", "1", "NX"],
        &["RESET"],
        &["SET", "p", "1", "NX"],
        &["HELLO", "2"],
    ];
    let want = [
        "simple",
        "RESP2 nil",
        "RESP3 map",
        "RESP3 null",
        "simple",
        "RESP2 nil",
        "array",
    ];
    // One command at a time (as redis-cli sends them).
    let mut c = Raw::connect(addr);
    let one_by_one: Vec<&str> = cmds.iter().map(|a| c.call(a).kind()).collect();
    assert_eq!(one_by_one, want, "one at a time");
    // The same, pipelined in one write.
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let mut c = Raw::connect(addr);
    c.send(&cmds.iter().flat_map(|a| frame(a)).collect::<Vec<_>>());
    let pipelined: Vec<Frame> = cmds.iter().map(|_| c.read()).collect();
    let kinds: Vec<&str> = pipelined.iter().map(Frame::kind).collect();
    assert_eq!(kinds, want, "pipelined: {cmds:?} answered {pipelined:?}");
}

/// A connection streaming pipelined commands, each complete within milliseconds,
/// is not cut off by `header_read_timeout` ("a command begun and not complete
/// within it closes the connection") just because its reads keep ending in the
/// middle of the next command.
#[test]
fn a_busy_pipeline_is_not_closed_by_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr) = Daemon::start_resp(dir.path(), &["--header-read-timeout", "500ms"]);
    let mut c = Raw::connect(addr);
    let mut reader = BufReader::new(c.out.try_clone().unwrap());
    let answers = std::thread::spawn(move || {
        let mut n = 0;
        while let Ok(f) = read_frame(&mut reader) {
            assert_eq!(f, Frame::Simple("OK".into()));
            n += 1;
        }
        n
    });
    // For 1.5 s (three timeouts), every 10 ms: the rest of the last command, whole
    // commands, and the first half of the next.
    let mut sent = 0;
    let mut tail = Vec::new();
    let start = Instant::now();
    let mut closed = None;
    while start.elapsed() < Duration::from_millis(1500) {
        let mut bytes = std::mem::take(&mut tail);
        for _ in 0..4 {
            bytes.extend(frame(&["SET", &format!("busy-{sent}"), "1", "NX"]));
            sent += 1;
        }
        let next = frame(&["SET", &format!("busy-{sent}"), "1", "NX"]);
        sent += 1;
        let half = next.len() / 2;
        bytes.extend(&next[..half]);
        tail = next[half..].to_vec();
        if c.out.write_all(&bytes).is_err() {
            closed = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if closed.is_none() {
        let _ = c.out.write_all(&tail);
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = c.out.shutdown(std::net::Shutdown::Write);
    let answered = answers.join().unwrap();
    assert!(
        closed.is_none() && answered == sent,
        "{answered} of {sent} commands answered; the daemon closed the connection \
         (writes failing after {closed:?})"
    );
}

/// Inside MULTI, a command refused by name (DEL, FLUSHALL, ...) is refused as it
/// is outside (its error says so), not called unknown; and it deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_inside_multi_is_refused_as_outside() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    assert_eq!(cli(addr, &["SET", "m", "1", "NX"]), "OK");
    let outside = cli(addr, &["DEL", "m"]);
    assert!(outside.contains("'DEL' is refused"), "{outside}");
    // One connection (redis-cli reads its commands from standard input).
    let inside = cli_in(addr, &[], Some(b"MULTI\nDEL m\nFLUSHALL\nEXEC\n".to_vec()));
    assert_eq!(check(&daemon, "default", &["m"], None).await, ["duplicate"]);
    assert!(
        inside.contains("'DEL' is refused") && inside.contains("'FLUSHALL' is refused"),
        "MULTI, DEL m, FLUSHALL, EXEC answered:\n{inside}"
    );
}
