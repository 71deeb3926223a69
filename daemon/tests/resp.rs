//! The RESP face of the real `oncelyd serve` binary, driven by frames written byte
//! by byte: pipelines (duplicates inside one, a bad command among good ones),
//! framing errors and frames one byte short, tokens, transactions, kill -9 while
//! pipelining, the drain at SIGTERM, and two daemons on one PostgreSQL database.
//! Real clients from the registries (redis-cli, redis-benchmark, redis-py, ioredis)
//! are in `resp_clients.rs`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, client, metric_value, metrics, verdicts};

/// A RESP answer, as far as these tests read them.
#[derive(Clone, Debug, PartialEq)]
enum V {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Self>),
    Map(Vec<(Self, Self)>),
    Bool(bool),
    Double(String),
}

impl V {
    fn ok() -> Self {
        Self::Simple("OK".into())
    }

    fn err_text(&self) -> &str {
        match self {
            Self::Error(e) => e,
            other => panic!("not an error: {other:?}"),
        }
    }
}

/// One RESP connection with blocking reads bounded in time.
struct Conn {
    out: TcpStream,
    input: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("RESP connects");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Self {
            input: BufReader::new(s.try_clone().unwrap()),
            out: s,
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.out.write_all(bytes).unwrap();
    }

    fn send(&mut self, args: &[&[u8]]) {
        let frame = frame(args);
        self.raw(&frame);
    }

    /// Sends one command and reads its answer.
    fn call(&mut self, args: &[&str]) -> V {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&args);
        self.read()
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.input.read_line(&mut line).expect("an answer in time");
        assert!(n > 0, "the connection closed");
        assert!(line.ends_with("\r\n"), "{line:?}");
        line.truncate(line.len() - 2);
        line
    }

    fn read(&mut self) -> V {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        let n = || rest.parse::<i64>().unwrap();
        match kind {
            "+" => V::Simple(rest.into()),
            "-" => V::Error(rest.into()),
            ":" => V::Int(n()),
            "_" => V::Nil,
            "#" => V::Bool(rest == "t"),
            "," => V::Double(rest.into()),
            "$" if n() < 0 => V::Nil,
            "$" => {
                let mut data = vec![0; usize::try_from(n()).unwrap() + 2];
                self.input.read_exact(&mut data).unwrap();
                data.truncate(data.len() - 2);
                V::Bulk(data)
            }
            "*" if n() < 0 => V::Nil,
            "*" => V::Array((0..n()).map(|_| self.read()).collect()),
            "%" => V::Map((0..n()).map(|_| (self.read(), self.read())).collect()),
            other => panic!("unexpected answer type {other:?} in {line:?}"),
        }
    }

    /// Whether the server closed the connection (end of stream) within `limit`.
    fn closed_within(&mut self, limit: Duration) -> bool {
        self.out.set_read_timeout(Some(limit)).unwrap();
        let mut byte = [0];
        matches!(self.input.read(&mut byte), Ok(0))
            || matches!(self.input.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    /// Whether nothing arrives within `limit` (the server waits for more).
    fn silent_for(&mut self, limit: Duration) -> bool {
        self.out.set_read_timeout(Some(limit)).unwrap();
        let mut byte = [0];
        let silent = match self.input.read(&mut byte) {
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            Ok(_) => false,
        };
        self.out
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        silent
    }
}

fn frame(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend(b"\r\n");
    }
    out
}

fn set_nx(key: &str) -> Vec<u8> {
    frame(&[b"SET", key.as_bytes(), b"1", b"NX"])
}

/// What HTTP's check says of `ids` in `default`.
async fn http_check(daemon: &Daemon, ids: &[String]) -> Vec<String> {
    verdicts(&client(), &daemon.url("/v1/namespaces/default/check"), ids).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_is_answered_in_order_with_one_winner_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let mut c = Conn::open(addr);
    // One write: each key four times, interleaved with commands of other kinds and
    // one bad command (an empty ID), which fails alone.
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for round in 0..4 {
        for k in 0..50 {
            pipeline.extend(set_nx(&format!("p{k}")));
            expected.push(if round == 0 { V::ok() } else { V::Nil });
        }
        pipeline.extend(frame(&[b"PING"]));
        expected.push(V::Simple("PONG".into()));
        pipeline.extend(frame(&[b"BF.MADD", b"default", b"m1", b"m2", b"m1"]));
        expected.push(if round == 0 {
            V::Array(vec![V::Int(1), V::Int(1), V::Int(0)])
        } else {
            V::Array(vec![V::Int(0), V::Int(0), V::Int(0)])
        });
        pipeline.extend(frame(&[b"SET", b"", b"1", b"NX"]));
        expected.push(V::Error(String::new()));
    }
    c.raw(&pipeline);
    for (i, want) in expected.iter().enumerate() {
        let got = c.read();
        match want {
            V::Error(_) => assert!(
                got.err_text().starts_with("ERR ") && got.err_text().contains("empty"),
                "answer {i}: {got:?}"
            ),
            want => assert_eq!(&got, want, "answer {i}"),
        }
    }
    // Everything marked is marked for HTTP too; nothing else is.
    let ids: Vec<String> = (0..50)
        .map(|k| format!("p{k}"))
        .chain(["m1".into(), "m2".into(), "never".into()])
        .collect();
    let mut want = vec!["duplicate".to_owned(); 52];
    want.push("new".into());
    assert_eq!(http_check(&daemon, &ids).await, want);
    let text = metrics(&client(), &daemon).await;
    assert_eq!(
        metric_value(
            &text,
            r#"oncelyd_ids_total{namespace="default",protocol="resp",op="check_and_mark",verdict="new"}"#
        ),
        52.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"oncelyd_resp_commands_total{command="set",outcome="error"}"#
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_words_keep_their_meaning_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let mut c = Conn::open(addr);
    // Options in any order; EX and PX within the window (3 h by default).
    assert_eq!(c.call(&["set", "a", "1", "PX", "60000", "nx"]), V::ok());
    assert_eq!(c.call(&["SET", "a", "2", "NX", "EX", "60"]), V::Nil);
    assert_eq!(c.call(&["SETNX", "b", "1"]), V::Int(1));
    assert_eq!(c.call(&["SETNX", "b", "1"]), V::Int(0));
    // An expiry past the window names both numbers and marks nothing.
    let long = c.call(&["SET", "c", "1", "NX", "EX", "86400"]);
    let text = long.err_text();
    assert!(
        text.contains("86400000 ms") && text.contains("10800000 ms"),
        "{text}"
    );
    for refused in [
        vec!["SET", "c", "1"],
        vec!["SET", "c", "1", "XX"],
        vec!["SET", "c", "1", "NX", "GET"],
        vec!["SET", "c", "1", "NX", "KEEPTTL"],
        vec!["SET", "c", "1", "NX", "PXAT", "99999999999999"],
        vec!["SET", "c", "1", "NX", "EX", "0"],
        vec!["SET", "c", "1", "NX", "EX", "1", "PX", "1"],
        vec!["DEL", "a"],
        vec!["FLUSHALL"],
        vec!["GET", "a"],
        vec!["EXPIRE", "a", "1"],
        vec!["WATCH", "a"],
        vec!["NOSUCH", "c"],
        vec!["SET", "c"],
        vec!["BF.ADD", "nosuch", "c"],
        vec!["BF.ADD", "bad name!", "c"],
    ] {
        let got = c.call(&refused);
        assert!(
            matches!(&got, V::Error(e) if e.starts_with("ERR ") || e.starts_with("UNKNOWN_NAMESPACE")),
            "{refused:?}: {got:?}"
        );
    }
    // Nothing refused touched a or c.
    assert_eq!(
        http_check(&daemon, &["a".into(), "c".into()]).await,
        ["duplicate", "new"]
    );
    assert_eq!(c.call(&["BF.EXISTS", "default", "a"]), V::Int(1));
    assert_eq!(
        c.call(&["BF.MEXISTS", "default", "a", "c"]),
        V::Array(vec![V::Int(1), V::Int(0)])
    );
    // BF.RESERVE makes a namespace, once.
    assert_eq!(
        c.call(&["BF.RESERVE", "tenant-1", "0.001", "5000"]),
        V::ok()
    );
    assert!(
        c.call(&["BF.RESERVE", "tenant-1", "0.01", "5000"])
            .err_text()
            .contains("exists")
    );
    assert_eq!(c.call(&["BF.ADD", "tenant-1", "a"]), V::Int(1));
    assert_eq!(c.call(&["BF.ADD", "tenant-1", "a"]), V::Int(0));
    // Owners replay; claims are exclusive.
    assert_eq!(
        c.call(&["ONCELY.MARK", "default", "OWNER", "o1", "IDS", "x", "y"]),
        V::Array(vec![V::Simple("new".into()), V::Simple("new".into())])
    );
    assert_eq!(
        c.call(&["ONCELY.MARK", "default", "OWNER", "o1", "IDS", "x"]),
        V::Array(vec![V::Simple("replayed".into())])
    );
    assert_eq!(
        c.call(&["ONCELY.MARK", "default", "IDS", "x"]),
        V::Array(vec![V::Simple("duplicate".into())])
    );
    let claim = c.call(&[
        "ONCELY.CLAIM",
        "default",
        "job",
        "OWNER",
        "w1",
        "LEASE",
        "60000",
    ]);
    assert!(
        matches!(&claim, V::Array(f) if f[1] == V::Bulk(b"acquired".to_vec())),
        "{claim:?}"
    );
    let other = c.call(&[
        "ONCELY.CLAIM",
        "default",
        "job",
        "OWNER",
        "w2",
        "LEASE",
        "60000",
    ]);
    assert!(
        matches!(&other, V::Array(f) if f[1] == V::Bulk(b"in_progress".to_vec())),
        "{other:?}"
    );
    assert_eq!(
        c.call(&["ONCELY.COMPLETE", "default", "job", "OWNER", "w1"]),
        V::ok()
    );
    assert_eq!(
        c.call(&["SET", "job", "1", "NX"]),
        V::Nil,
        "a completed claim is a mark"
    );
    assert_eq!(
        c.call(&["ONCELY.CHECKPOINT", "SET", "default", "c1", "offset-7"]),
        V::ok()
    );
    assert_eq!(
        c.call(&["ONCELY.CHECKPOINT", "GET", "default", "c1"]),
        V::Bulk(b"offset-7".to_vec())
    );
    assert_eq!(
        c.call(&["ONCELY.CHECKPOINT", "GET", "default", "c2"]),
        V::Nil
    );
    // Preconditions, as Redis's SET takes them: NX, IFEQ.
    let set = ["ONCELY.CHECKPOINT", "SET", "default", "c1"];
    let with = |rest: &[&'static str]| [&set[..], rest].concat();
    assert_eq!(c.call(&with(&["offset-8", "IFEQ", "offset-7"])), V::ok());
    assert_eq!(
        c.call(&with(&["offset-9", "IFEQ", "offset-7"])),
        V::Error(
            r#"CHECKPOINT_CONFLICT the checkpoint of consumer "c1" is at "offset-8", not at "offset-7" as expected; nothing changed"#
                .into()
        )
    );
    assert!(
        matches!(c.call(&with(&["offset-9", "NX"])), V::Error(e) if e.starts_with("CHECKPOINT_CONFLICT")),
    );
    for bad in [
        &["offset-9", "IFEQ"][..],
        &["offset-9", "XX"],
        &["offset-9", "NX", "IFEQ", "x"],
    ] {
        assert!(
            matches!(c.call(&with(bad)), V::Error(e) if e.starts_with("ERR syntax error")),
            "{bad:?}"
        );
    }
    assert!(matches!(
        c.call(&["ONCELY.CHECKPOINT", "SET", "default", "c1"]),
        V::Error(e) if e.starts_with("ERR syntax error")
    ));
    assert_eq!(
        c.call(&["ONCELY.CHECKPOINT", "GET", "default", "c1"]),
        V::Bulk(b"offset-8".to_vec()),
        "refused: nothing changed"
    );
    assert_eq!(
        c.call(&["ONCELY.CHECKPOINT", "SET", "default", "c2", "p", "NX"]),
        V::ok()
    );
    // Forget: 1 where an exact mark went, 0 for a live claim, the unseen, a repeat.
    assert_eq!(c.call(&["SET", "gone", "1", "NX"]), V::ok());
    assert!(!matches!(
        c.call(&[
            "ONCELY.CLAIM",
            "default",
            "held",
            "OWNER",
            "w1",
            "LEASE",
            "60000"
        ]),
        V::Error(_)
    ));
    assert_eq!(
        c.call(&["ONCELY.FORGET", "default", "gone", "gone", "held", "unseen"]),
        V::Array(vec![V::Int(1), V::Int(0), V::Int(0), V::Int(0)])
    );
    assert_eq!(c.call(&["SET", "gone", "1", "NX"]), V::ok(), "given back");
    assert!(matches!(
        c.call(&["ONCELY.FORGET", "default"]),
        V::Error(e) if e.starts_with("ERR wrong number of arguments")
    ));
    assert!(matches!(
        c.call(&["ONCELY.FORGET", "nowhere", "gone"]),
        V::Error(_)
    ));
    assert_eq!(c.call(&["SET", "gone", "1", "NX"]), V::Nil, "refused: kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_are_answered_then_the_connection_closes_marking_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(
        dir.path(),
        &["--max-body-bytes", "64KiB", "--max-ids", "100"],
    );
    let cases: [(&[u8], &str); 7] = [
        (b"*1\r\n$99999999999\r\n", "invalid bulk length"),
        (b"*1000000\r\n", "invalid multibulk length"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\r\n:5\r\n", "expected '$'"),
        (b"*1\r\n$3\r\nPINGX\r\n", "not followed"),
        (b"set \"unbalanced\r\n", "unbalanced quotes"),
        (b"*2\r\n$3\r\nSET\r\n$100000\r\n", "over the limit"),
    ];
    for (i, (bad, why)) in cases.iter().enumerate() {
        let mut c = Conn::open(addr);
        // A good command before the bad frame, in the same write, is answered; a
        // good one after it is never read.
        let mut bytes = set_nx(&format!("before-{i}"));
        bytes.extend_from_slice(bad);
        bytes.extend(set_nx(&format!("after-{i}")));
        c.raw(&bytes);
        assert_eq!(c.read(), V::ok(), "case {i}");
        let e = c.read();
        assert!(
            e.err_text().starts_with("ERR Protocol error") && e.err_text().contains(why),
            "case {i}: {e:?}"
        );
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "case {i}: still open"
        );
    }
    let ids: Vec<String> = (0..cases.len())
        .flat_map(|i| [format!("before-{i}"), format!("after-{i}")])
        .collect();
    let want: Vec<&str> = (0..cases.len())
        .flat_map(|_| ["duplicate", "new"])
        .collect();
    assert_eq!(http_check(&daemon, &ids).await, want);
    // Garbage of every byte value never takes the daemon down.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..50 {
        let mut c = Conn::open(addr);
        let junk: Vec<u8> = (0..512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()[0]
            })
            .collect();
        c.raw(&junk);
        drop(c);
    }
    let mut c = Conn::open(addr);
    assert_eq!(c.call(&["PING"]), V::Simple("PONG".into()));
    let health = client().get(daemon.url("/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_one_byte_short_waits_then_the_header_timeout_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &["--header-read-timeout", "2s"]);
    let whole = set_nx("short");
    // Every cut of the frame waits for the rest; the last byte completes it.
    let mut c = Conn::open(addr);
    for cut in [1, 5, whole.len() - 1] {
        c.raw(&whole[..cut]);
        assert!(
            c.silent_for(Duration::from_millis(150)),
            "answered at {cut} bytes"
        );
        c.raw(&whole[cut..]);
        let want = if cut == 1 { V::ok() } else { V::Nil };
        assert_eq!(c.read(), want, "cut at {cut}");
    }
    // A frame left one byte short is not marked, and its connection is closed
    // once the header timeout passes.
    let mut stalled = Conn::open(addr);
    let other = set_nx("stalled");
    stalled.raw(&other[..other.len() - 1]);
    let t = Instant::now();
    assert!(stalled.closed_within(Duration::from_secs(6)), "still open");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(http_check(&daemon, &["stalled".into()]).await, ["new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_only_the_handshake_passes_before_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &["--token", "s3cret-token-0123456789"]);
    let mut c = Conn::open(addr);
    assert!(
        c.call(&["SET", "k", "1", "NX"])
            .err_text()
            .starts_with("NOAUTH")
    );
    assert!(
        c.call(&["BF.ADD", "default", "k"])
            .err_text()
            .starts_with("NOAUTH")
    );
    assert!(
        c.call(&["AUTH", "wrong"])
            .err_text()
            .starts_with("WRONGPASS")
    );
    assert!(
        c.call(&["HELLO", "3", "AUTH", "default", "wrong"])
            .err_text()
            .starts_with("WRONGPASS")
    );
    assert!(c.call(&["HELLO", "3"]).err_text().starts_with("NOAUTH"));
    // Any user name, the token as the password.
    assert_eq!(
        c.call(&["AUTH", "anyone", "s3cret-token-0123456789"]),
        V::ok()
    );
    assert_eq!(c.call(&["SET", "k", "1", "NX"]), V::ok());
    // RESET forgets the authentication.
    assert_eq!(c.call(&["RESET"]), V::Simple("RESET".into()));
    assert!(
        c.call(&["SET", "k2", "1", "NX"])
            .err_text()
            .starts_with("NOAUTH")
    );
    // HELLO 3 with AUTH: a RESP3 map, then RESP3 answers (nil as `_`).
    let hello = c.call(&[
        "HELLO",
        "3",
        "AUTH",
        "u",
        "s3cret-token-0123456789",
        "SETNAME",
        "w1",
    ]);
    let V::Map(fields) = hello else {
        panic!("{hello:?}")
    };
    assert!(fields.contains(&(V::Bulk(b"proto".to_vec()), V::Int(3))));
    assert!(fields.contains(&(V::Bulk(b"version".to_vec()), V::Bulk(b"7.2.0".to_vec()))));
    assert_eq!(c.call(&["SET", "k", "1", "NX"]), V::Nil);
    assert_eq!(c.call(&["CLIENT", "GETNAME"]), V::Bulk(b"w1".to_vec()));
    assert_eq!(http_check_with_token(&daemon).await, ["duplicate", "new"]);
}

async fn http_check_with_token(daemon: &Daemon) -> Vec<String> {
    let url = daemon.url("/v1/namespaces/default/check");
    let ids = ["k".to_owned(), "k2".to_owned()];
    common::daemon::verdicts_as(&client(), &url, Some("s3cret-token-0123456789"), &ids).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_runs_the_queue_and_a_bad_queue_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &["--max-ids", "100"]);
    let mut c = Conn::open(addr);
    assert_eq!(c.call(&["MULTI"]), V::ok());
    for args in [
        &["SET", "t1", "1", "NX"][..],
        &["SET", "t1", "1", "NX"],
        &["BF.ADD", "default", "t2"],
        &["SET", "", "1", "NX"],
    ] {
        assert_eq!(c.call(args), V::Simple("QUEUED".into()));
    }
    let exec = c.call(&["EXEC"]);
    let V::Array(answers) = exec else {
        panic!("{exec:?}")
    };
    assert_eq!(answers[..3], [V::ok(), V::Nil, V::Int(1)]);
    assert!(answers[3].err_text().contains("empty"), "{answers:?}");
    // A command refused while queueing discards the whole transaction.
    assert_eq!(c.call(&["MULTI"]), V::ok());
    assert_eq!(
        c.call(&["SET", "t3", "1", "NX"]),
        V::Simple("QUEUED".into())
    );
    assert!(
        c.call(&["NOSUCH"])
            .err_text()
            .starts_with("ERR unknown command")
    );
    assert!(c.call(&["EXEC"]).err_text().starts_with("EXECABORT"));
    // A transaction is bounded: past max_ids + 8 commands it is refused whole.
    assert_eq!(c.call(&["MULTI"]), V::ok());
    let mut queue = Vec::new();
    for i in 0..=108 {
        queue.extend(set_nx(&format!("t5-{i}")));
    }
    c.raw(&queue);
    for i in 0..108 {
        assert_eq!(c.read(), V::Simple("QUEUED".into()), "command {i}");
    }
    assert!(c.read().err_text().contains("at most 108 commands"));
    assert!(c.call(&["EXEC"]).err_text().starts_with("EXECABORT"));
    assert_eq!(c.call(&["MULTI"]), V::ok());
    assert_eq!(
        c.call(&["SET", "t4", "1", "NX"]),
        V::Simple("QUEUED".into())
    );
    assert_eq!(c.call(&["DISCARD"]), V::ok());
    assert!(c.call(&["EXEC"]).err_text().contains("without MULTI"));
    assert_eq!(
        http_check(
            &daemon,
            &[
                "t1".into(),
                "t2".into(),
                "t3".into(),
                "t4".into(),
                "t5-0".into()
            ]
        )
        .await,
        ["duplicate", "duplicate", "new", "new", "new"]
    );
}

/// Keys a pipelining client saw acknowledged with `+OK`.
type Acked = Arc<Mutex<Vec<String>>>;

/// Pipelines 64 fresh `SET NX` at a time until `stop` or the connection dies,
/// recording every key answered `+OK`.
fn pipeline_until_killed(
    addr: SocketAddr,
    client_no: usize,
    acked: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut c = Conn::open(addr);
    let mut n = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let keys: Vec<String> = (0..64)
            .map(|i| format!("k9-{client_no}-{}", n + i))
            .collect();
        n += 64;
        let bytes: Vec<u8> = keys.iter().flat_map(|k| set_nx(k)).collect();
        if c.out.write_all(&bytes).is_err() {
            return;
        }
        for k in keys {
            let mut line = String::new();
            match c.input.read_line(&mut line) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            if line == "+OK\r\n" {
                acked.lock().unwrap().push(k);
            } else {
                assert_eq!(line, "$-1\r\n", "a fresh key answered other than OK");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_pipelining_loses_no_acknowledged_ok() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || pipeline_until_killed(addr, i, &acked, &stop))
        })
        .collect();
    // Until a good number are acknowledged, then kill -9 in mid-flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 20_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.signal("KILL");
    daemon.wait_exit(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= 20_000, "only {} acknowledged", acked.len());
    let (_daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let mut c = Conn::open(addr);
    // Every acknowledged key is a duplicate after restart, checked in pipelines.
    for chunk in acked.chunks(1000) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|k| set_nx(k)).collect();
        c.raw(&bytes);
        for k in chunk {
            assert_eq!(c.read(), V::Nil, "{k} was acknowledged but is not marked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_resp_connections_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, addr) = Daemon::start_resp(
        dir.path(),
        &["--drain-delay", "2s", "--shutdown-grace", "5s"],
    );
    let mut busy = Conn::open(addr);
    assert_eq!(busy.call(&["SET", "d1", "1", "NX"]), V::ok());
    let mut idle = Conn::open(addr);
    assert_eq!(idle.call(&["PING"]), V::Simple("PONG".into()));
    let t = Instant::now();
    daemon.signal("TERM");
    daemon.wait_log("shutting down", Duration::from_secs(5));
    // During the drain: unready, and a busy connection is still served.
    let ready = client().get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(busy.call(&["SET", "d2", "1", "NX"]), V::ok());
    // An idle connection is closed before the drain ends.
    assert!(idle.closed_within(Duration::from_secs(3)));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", daemon.log_text());
    assert!(
        TcpStream::connect(addr).is_err(),
        "the RESP listener is closed"
    );
    let (_daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let mut c = Conn::open(addr);
    assert_eq!(c.call(&["SET", "d1", "1", "NX"]), V::Nil);
    assert_eq!(c.call(&["SET", "d2", "1", "NX"]), V::Nil);
}

#[test]
fn a_bad_or_unknown_resp_namespace_or_a_shared_port_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (args, why) in [
        (&["--resp-namespace", "bad name"][..], "resp_namespace"),
        (&["--resp-namespace", "nosuch"], "no namespace \"nosuch\""),
        (
            &[
                "--listen",
                "127.0.0.1:17999",
                "--resp-listen",
                "127.0.0.1:17999",
            ],
            "two ports",
        ),
    ] {
        let mut all = vec!["--data-dir", data];
        if !args.contains(&"--listen") {
            all.extend_from_slice(&["--listen", "127.0.0.1:0", "--resp-listen", "127.0.0.1:0"]);
        }
        all.extend_from_slice(args);
        let (status, log) = common::daemon::run_to_exit(
            common::daemon::command(&all, &[]),
            Duration::from_secs(30),
        );
        assert!(!status.success(), "{args:?}");
        assert!(log.contains(why), "{args:?}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_of_large_batches_never_stall_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let mut c = Conn::open(addr);
    // Six transactions of 30 BF.MADDs of 10,000 fresh IDs: each EXEC once went to
    // the store as one write of 300,000 IDs, which stalled RocksDB's writers for
    // good (every later call answered DEADLINE_EXCEEDED).
    for t in 0..6 {
        assert_eq!(c.call(&["MULTI"]), V::ok());
        let mut queue = Vec::new();
        for m in 0..30 {
            let ids: Vec<String> = (0..10_000).map(|i| format!("big-{t}-{m}-{i}")).collect();
            let mut args: Vec<&[u8]> = vec![b"BF.MADD", b"default"];
            args.extend(ids.iter().map(String::as_bytes));
            queue.extend(frame(&args));
        }
        c.raw(&queue);
        for _ in 0..30 {
            assert_eq!(c.read(), V::Simple("QUEUED".into()));
        }
        c.raw(&frame(&[b"EXEC"]));
        let V::Array(answers) = c.read() else {
            panic!("EXEC answered no array")
        };
        for a in answers {
            let V::Array(bits) = a else {
                panic!("transaction {t}: {a:?}")
            };
            assert!(bits.iter().all(|b| *b == V::Int(1)), "transaction {t}");
        }
    }
    assert_eq!(c.call(&["SET", "probe", "1", "NX"]), V::ok());
    let ready = client().get(daemon.url("/readyz")).send().await.unwrap();
    assert!(ready.status().is_success());
}

/// `BF.ADD ns id` for each of `ids` in one pipeline; the answers.
fn add_all(c: &mut Conn, ns: &str, ids: &[String]) -> Vec<V> {
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|id| frame(&[b"BF.ADD", ns.as_bytes(), id.as_bytes()]))
        .collect();
    c.raw(&bytes);
    ids.iter().map(|_| c.read()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_marks_hold_across_rotations_a_reconfiguration_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ids =
        |from: usize, to: usize| -> Vec<String> { (from..to).map(|i| format!("r-{i}")).collect() };
    let ones = |n: usize| vec![V::Int(1); n];
    let zeros = |n: usize| vec![V::Int(0); n];
    let (mut daemon, addr) = Daemon::start_resp(
        dir.path(),
        &["--drain-delay", "0s", "--shutdown-grace", "5s"],
    );
    let mut c = Conn::open(addr);
    // 100 IDs a generation: 250 marks rotate twice, pipelined through the group
    // commit; the two exact generations hold IDs 100 to 249.
    // A false-positive rate of 1e-9: fresh IDs meet the Bloom-only generation,
    // and at 1e-2 one in a hundred would answer 0 (seen in a run).
    assert_eq!(
        c.call(&["BF.RESERVE", "rot", "0.000000001", "100"]),
        V::ok()
    );
    assert_eq!(add_all(&mut c, "rot", &ids(0, 250)), ones(250));
    let info = c.call(&["ONCELY.NS", "INFO", "rot"]);
    let V::Array(fields) = info else {
        panic!("{info:?}")
    };
    let live = fields
        .iter()
        .position(|f| *f == V::Bulk(b"live_generations".to_vec()))
        .and_then(|i| fields.get(i + 1));
    assert!(
        matches!(live, Some(V::Array(g)) if g.len() == 3),
        "two rotations: {live:?}"
    );
    assert_eq!(add_all(&mut c, "rot", &ids(100, 250)), zeros(150));
    // A reconfiguration (twice the capacity) keeps them; fresh IDs are new.
    let patched = client()
        .patch(daemon.url("/v1/namespaces/rot"))
        .json(&serde_json::json!({ "generation_capacity": 200 }))
        .send()
        .await
        .unwrap();
    assert!(patched.status().is_success(), "{patched:?}");
    assert_eq!(add_all(&mut c, "rot", &ids(100, 250)), zeros(150));
    assert_eq!(add_all(&mut c, "rot", &ids(250, 300)), ones(50));
    // A restart keeps them all.
    drop(c);
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let (_daemon, addr) = Daemon::start_resp(dir.path(), &[]);
    let mut c = Conn::open(addr);
    assert_eq!(add_all(&mut c, "rot", &ids(100, 300)), zeros(200));
    assert_eq!(add_all(&mut c, "rot", &ids(300, 320)), ones(20));
}

/// `SET NX` over RESP on the PostgreSQL store: two daemons on one database are one
/// authority for pipelined marks. Eight connections, four on each daemon, each
/// pipelining every ID of one list (shuffled its own way, 50 commands per write,
/// each write's IDs repeated once within it): exactly one `OK` per ID across both
/// daemons, and within a pipeline a repeat after an ID's first `SET` answers nil.
#[test]
fn two_daemons_on_postgres_answer_pipelined_set_nx_as_one_authority() {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;

    let url = oncely_testkit::PgServer::shared().fresh_database();
    let args = [
        "--store",
        url.as_str(),
        "--drain-delay",
        "0s",
        "--resp-listen",
        "127.0.0.1:0",
    ];
    let nodes = [
        Daemon::start_with(&args, &[]),
        Daemon::start_with(&args, &[]),
    ];
    let addrs = [nodes[0].resp_addr(), nodes[1].resp_addr()];

    let mut one = Conn::open(addrs[0]);
    for cmd in [
        ["SET", "pg-first", "1", "NX"],
        ["SET", "pg-first", "1", "NX"],
    ] {
        one.send(&cmd.map(str::as_bytes));
    }
    assert_eq!(
        [one.read(), one.read()],
        [V::ok(), V::Nil],
        "a pipeline's repeat follows its first"
    );

    let ids: Arc<Vec<String>> = Arc::new((0..600).map(|i| format!("pg-resp-{i:04}")).collect());
    let clients: Vec<_> = (0..8u64)
        .map(|k| {
            let ids = Arc::clone(&ids);
            let addr = addrs[usize::try_from(k).unwrap() % 2];
            std::thread::spawn(move || {
                let mut order: Vec<&str> = ids.iter().map(String::as_str).collect();
                order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(k));
                let mut conn = Conn::open(addr);
                let mut won = Vec::new();
                for chunk in order.chunks(25) {
                    // Each ID of the write twice: first all, then all again.
                    let sent: Vec<&str> = chunk.iter().chain(chunk.iter()).copied().collect();
                    let mut bytes = Vec::new();
                    for id in &sent {
                        bytes.extend(frame(&[b"SET", id.as_bytes(), b"1", b"NX"]));
                    }
                    conn.raw(&bytes);
                    let answers: Vec<V> = sent.iter().map(|_| conn.read()).collect();
                    for (i, (id, answer)) in sent.iter().zip(&answers).enumerate() {
                        match answer {
                            V::Simple(ok) if ok == "OK" => {
                                assert!(i < chunk.len(), "{id}: a repeat answered OK");
                                won.push((*id).to_owned());
                            }
                            V::Nil => {}
                            other => panic!("{id}: {other:?}"),
                        }
                    }
                }
                won
            })
        })
        .collect();
    let mut winners: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for c in clients {
        for id in c.join().unwrap() {
            *winners.entry(id).or_default() += 1;
        }
    }
    for id in ids.iter() {
        assert_eq!(
            winners.get(id),
            Some(&1),
            "{id}: OK once across both daemons"
        );
    }
}
