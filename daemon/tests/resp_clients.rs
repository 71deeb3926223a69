//! The RESP face driven by real clients from the registries, not our own frames:
//! redis-cli and redis-benchmark (Debian's redis-tools), redis-py in RESP2 and
//! RESP3 (PyPI, in a virtualenv this test makes under ~/.cache/oncely), ioredis
//! (npm, likewise), with tokens on and off; and a race of RESP and HTTP clients on
//! the same IDs, exactly one winner per ID.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::daemon::{Daemon, client, metric_value, verdicts, verdicts_as};

const TOKEN: &str = "resp-clients-token-0123456789";
const REDIS_PY: &str = "5.2.1";
const IOREDIS: &str = "5.4.1";

/// The clients' scripts, beside this file.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/resp_clients")
        .join(name)
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/oncely")
}

/// Installs are made once per machine (cached), one at a time within this binary.
static INSTALL: Mutex<()> = Mutex::new(());

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python of a virtualenv with redis-py, made the first time.
fn redis_py() -> PathBuf {
    let _one = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = cache().join(format!("redis-py-{REDIS_PY}"));
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        run_ok(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (install python3-venv)",
        );
        run_ok(
            Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                &format!("redis=={REDIS_PY}"),
            ]),
            "pip install redis",
        );
        std::fs::write(&ready, REDIS_PY).unwrap();
    }
    python
}

/// The `node_modules` holding ioredis, installed the first time.
fn ioredis() -> PathBuf {
    let _one = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = cache().join(format!("ioredis-{IOREDIS}"));
    let ready = dir.join(".installed");
    if !ready.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        run_ok(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .arg(format!("ioredis@{IOREDIS}")),
            "npm install ioredis (install nodejs and npm)",
        );
        std::fs::write(&ready, IOREDIS).unwrap();
    }
    dir.join("node_modules")
}

fn start(dir: &Path, extra: &[&str]) -> (Daemon, SocketAddr) {
    let mut args = vec!["--resp-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(dir, &args, &[]);
    let addr = daemon.resp_addr();
    (daemon, addr)
}

/// Runs a client to its end, at most a minute; its standard output.
fn client_run(mut cmd: Command) -> String {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("the client starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} ran over a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap();
    assert!(status.success(), "{cmd:?}: {status:?}\n{text}");
    text
}

fn redis_cli(addr: SocketAddr, extra: &[&str], args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(extra)
        .args(args)
        .stderr(Stdio::inherit());
    client_run(cmd).trim_end().to_owned()
}

#[test]
fn redis_py_in_resp2_and_resp3_with_and_without_a_token() {
    let python = redis_py();
    let open = tempfile::tempdir().unwrap();
    let (_open_daemon, open_addr) = start(open.path(), &[]);
    let closed = tempfile::tempdir().unwrap();
    let (_closed_daemon, closed_addr) = start(closed.path(), &["--token", TOKEN]);
    for (addr, token) in [(open_addr, None), (closed_addr, Some(TOKEN))] {
        for protocol in ["2", "3"] {
            let mut cmd = Command::new(&python);
            cmd.arg(script("redis_py.py"))
                .arg(addr.port().to_string())
                .arg(protocol)
                .args(token);
            let out = client_run(cmd);
            assert!(out.contains(&format!("ok RESP{protocol}")), "{out}");
        }
    }
}

#[test]
fn ioredis_with_and_without_a_token() {
    let modules = ioredis();
    let open = tempfile::tempdir().unwrap();
    let (_open_daemon, open_addr) = start(open.path(), &[]);
    let closed = tempfile::tempdir().unwrap();
    let (_closed_daemon, closed_addr) = start(closed.path(), &["--token", TOKEN]);
    for (addr, token) in [(open_addr, None), (closed_addr, Some(TOKEN))] {
        let mut cmd = Command::new("node");
        cmd.env("NODE_PATH", &modules)
            .arg(script("ioredis.js"))
            .arg(addr.port().to_string())
            .args(token);
        let out = client_run(cmd);
        assert!(out.contains("ok ioredis"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = start(dir.path(), &["--token", TOKEN]);
    let auth = ["--no-auth-warning", "-a", TOKEN];
    assert!(redis_cli(addr, &[], &["SET", "k", "1", "NX"]).starts_with("NOAUTH"));
    // A wrong password: redis-cli says `AUTH failed: WRONGPASS` (on standard error)
    // and the connection stays unauthenticated.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &addr.port().to_string(),
            "--no-auth-warning",
            "-a",
            "wrong",
            "PING",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WRONGPASS"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("NOAUTH"),
        "{out:?}"
    );
    assert_eq!(
        redis_cli(addr, &auth, &["SET", "k", "1", "NX", "PX", "1000"]),
        "OK"
    );
    assert_eq!(redis_cli(addr, &auth, &["SET", "k", "1", "NX"]), "");
    let user = ["--no-auth-warning", "--user", "anyone", "--pass", TOKEN];
    assert_eq!(
        redis_cli(addr, &user, &["BF.MADD", "default", "k", "k2"]),
        "0\n1"
    );
    let hello = redis_cli(addr, &auth, &["-3", "HELLO", "3"]);
    assert!(
        hello.contains("proto 3") && hello.contains("7.2.0"),
        "{hello}"
    );
    // --pipe: a file of commands with duplicates; the keys are marked once.
    let mut pipe = String::new();
    for i in 0..3000 {
        pipe.push_str(&format!("SET pipe-{} 1 NX\r\n", i % 1000));
    }
    let mut cmd = Command::new("redis-cli");
    cmd.args([
        "-p",
        &addr.port().to_string(),
        "--no-auth-warning",
        "-a",
        TOKEN,
        "--pipe",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pipe.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("errors: 0, replies: 3000"),
        "{text}"
    );
    let c = client();
    let url = daemon.url("/v1/namespaces/default/check");
    let ids: Vec<String> = (0..1000).map(|i| format!("pipe-{i}")).collect();
    let piped = verdicts_as(&c, &url, Some(TOKEN), &ids).await;
    assert!(piped.iter().all(|v| v == "duplicate"), "{piped:?}");
    // redis-benchmark, pipelined and not, answers every request without an error.
    for (pipeline, n) in [("16", "20000"), ("1", "4000")] {
        let mut cmd = Command::new("redis-benchmark");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-a",
            TOKEN,
        ])
        .args(["-n", n, "-r", "1000000", "-c", "4", "-P", pipeline, "-q"])
        .args(["SET", "s:__rand_int__", "1", "NX", "PX", "3600000"])
        .stderr(Stdio::piped());
        let out = client_run(cmd);
        assert!(out.contains("requests per second"), "{out}");
    }
    let text = c
        .get(daemon.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ok = metric_value(
        &text,
        r#"oncelyd_resp_commands_total{command="set",outcome="ok"}"#,
    );
    assert!(ok >= 27_000.0, "{ok}");
    let resp_ids: f64 = ["new", "duplicate"]
        .iter()
        .map(|v| {
            metric_value(
                &text,
                &format!(
                    r#"oncelyd_ids_total{{protocol="resp",op="check_and_mark",verdict="{v}"}}"#
                ),
            )
        })
        .sum();
    assert!(resp_ids >= 27_000.0, "{resp_ids}");
    let health = c.get(daemon.url("/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
}

/// A seeded xorshift: the race's orders, the same every run.
fn shuffled(n: usize, mut seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, usize::try_from(seed % (i as u64 + 1)).unwrap());
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_and_http_clients_racing_on_the_same_ids_have_one_winner_each() {
    const IDS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = start(dir.path(), &[]);
    let ids: Vec<String> = (0..IDS).map(|i| format!("race-{i}")).collect();
    // Four RESP connections pipelining SET NX in 100s, four HTTP clients posting
    // 50 at a time, each in its own order.
    let resp: Vec<_> = (0..4_u64)
        .map(|n| {
            let ids = ids.clone();
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut out = s.try_clone().unwrap();
                let mut input = BufReader::new(s);
                let mut won = Vec::new();
                let order = shuffled(IDS, 0x5eed + n);
                for chunk in order.chunks(100) {
                    let mut bytes = Vec::new();
                    for &i in chunk {
                        let k = &ids[i];
                        bytes.extend(
                            format!(
                                "*4\r\n$3\r\nSET\r\n${}\r\n{k}\r\n$1\r\n1\r\n$2\r\nNX\r\n",
                                k.len()
                            )
                            .as_bytes(),
                        );
                    }
                    out.write_all(&bytes).unwrap();
                    for &i in chunk {
                        let mut line = String::new();
                        input.read_line(&mut line).unwrap();
                        match line.as_str() {
                            "+OK\r\n" => won.push(i),
                            "$-1\r\n" => {}
                            other => panic!("{other:?}"),
                        }
                    }
                }
                won
            })
        })
        .collect();
    let http: Vec<_> = (0..4_u64)
        .map(|n| {
            let ids = ids.clone();
            let url = daemon.url("/v1/namespaces/default/check-and-mark");
            tokio::spawn(async move {
                let c = client();
                let mut won = Vec::new();
                let order = shuffled(IDS, 0xbeef + n);
                for chunk in order.chunks(50) {
                    let batch: Vec<String> = chunk.iter().map(|&i| ids[i].clone()).collect();
                    let got = verdicts(&c, &url, &batch).await;
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
        for i in t.join().unwrap() {
            wins[i] += 1;
            by_resp += 1;
        }
    }
    for t in http {
        for i in t.await.unwrap() {
            wins[i] += 1;
        }
    }
    let wrong: Vec<_> = wins.iter().enumerate().filter(|(_, w)| **w != 1).collect();
    assert!(
        wrong.is_empty(),
        "IDs without exactly one winner: {wrong:?}"
    );
    // Both faces won some: the race was a race.
    assert!(
        by_resp > 0 && by_resp < IDS,
        "{by_resp} of {IDS} won over RESP"
    );
}
