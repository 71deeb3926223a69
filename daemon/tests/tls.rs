//! TLS end to end, with real certificates on loopback: certificate authorities and
//! certificates made here with rcgen (SANs 127.0.0.1 and localhost), a real
//! `oncelyd serve --tls-cert --tls-key` process, and real clients on both faces:
//! the typed Rust client (trusting the test CA with `add_root_certificate`),
//! `redis-cli --tls --cacert`, and redis-py (`ssl=True, ssl_ca_certs=...`).
//!
//! Each client that does not trust the daemon's CA is refused (a TLS error, no
//! request served); a SIGHUP swaps the certificate for new connections, and a bad
//! file at a SIGHUP is logged and changes nothing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, command, metric_sum, run_to_exit};
use oncely_client::{Client, Error, RetryPolicy, Verdict};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The longest any one client process may run.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// A certificate authority of the tests' own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost, and its key, as PEM.
    fn leaf(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "oncelyd test");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA's certificate into `dir/name` and returns its path.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }
}

/// The daemon's certificate and key files.
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    /// Files of a fresh leaf of `ca` in `dir`.
    fn of(ca: &Ca, dir: &Path) -> Self {
        let files = Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        files.install(ca);
        files
    }

    /// Replaces the files with a fresh leaf of `ca`, each by a rename, as
    /// certificate tools do.
    fn install(&self, ca: &Ca) {
        let (cert, key) = ca.leaf();
        replace(&self.cert, cert.as_bytes());
        replace(&self.key, key.as_bytes());
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(data: &Path, files: &Files, extra: &[&str]) -> Daemon {
    let args = files.args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    Daemon::start(data, &all, &[])
}

fn https(addr: SocketAddr) -> String {
    format!("https://127.0.0.1:{}", addr.port())
}

/// A typed client of `url` trusting `ca` (else only the system's roots), with
/// retries bounded to a few seconds, on a connection pool of its own (so a new
/// connection, and a new handshake).
fn typed(url: &str, ca: Option<&Ca>) -> Client {
    let mut b = Client::builder(url)
        .no_batching()
        .retry(RetryPolicy::default().deadline(Duration::from_secs(5)));
    if let Some(ca) = ca {
        b = b.add_root_certificate(ca.pem());
    }
    b.build().unwrap()
}

fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Asserts that `refused` is a TLS failure of the certificate, refused at the
/// first attempt (no retries against a certificate that will not change).
fn assert_certificate_refused(refused: Result<impl std::fmt::Debug, Error>, started: Instant) {
    let err = refused.expect_err("a client not trusting the CA must be refused");
    assert!(
        matches!(err, Error::Transport { attempts: 1, .. }),
        "{err:?}"
    );
    let chain = format!("{err:?}");
    assert!(
        chain.contains("InvalidCertificate") || chain.contains("UnknownIssuer"),
        "not a certificate error: {chain}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused only after {:?}",
        started.elapsed()
    );
}

/// `/metrics` over TLS, with a plain reqwest client trusting only `ca`.
async fn metrics_text(url: &str, ca: &Ca) -> String {
    common::daemon::install_crypto();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    c.get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

// --- HTTP ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_over_tls_with_the_typed_client_trusting_the_test_ca() {
    let ca = Ca::new("Oncely test CA");
    let dir = tempfile::tempdir().unwrap();
    let files = Files::of(&ca, dir.path());
    // The settings from the environment this time.
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &[],
        &[
            ("ONCELY_TLS_CERT", files.cert.to_str().unwrap()),
            ("ONCELY_TLS_KEY", files.key.to_str().unwrap()),
        ],
    );
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("oncelyd listening on https://{}", daemon.addr)),
        "{log}"
    );
    assert!(log.contains(r#"tls="on""#), "{log}");

    let client = typed(&https(daemon.addr), Some(&ca));
    assert_eq!(client.health().await.unwrap().status, "ok");
    let id = fresh("tls");
    let first = client
        .check_and_mark("default", &[id.as_str()], None)
        .await
        .unwrap();
    assert_eq!(first.verdicts, [Verdict::New]);
    let again = client
        .check_and_mark("default", &[id.as_str()], None)
        .await
        .unwrap();
    assert_eq!(again.verdicts, [Verdict::Duplicate]);
    // By name too: the certificate's other SAN.
    let by_name = typed(
        &format!("https://localhost:{}", daemon.addr.port()),
        Some(&ca),
    );
    assert_eq!(
        by_name.check("default", &[id.as_str()]).await.unwrap(),
        [Verdict::Duplicate]
    );

    // Plain text on the TLS port gets no answer, and the daemon goes on serving.
    let plain = typed(&format!("http://{}", daemon.addr), None)
        .with_retry(RetryPolicy::default().attempts(1))
        .unwrap();
    assert!(plain.health().await.is_err(), "plain HTTP was answered");
    let mut raw = TcpStream::connect(daemon.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "{answer:?}"
    );
    assert_eq!(client.health().await.unwrap().status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_is_refused_and_nothing_is_served() {
    let ca = Ca::new("Oncely test CA");
    let other = Ca::new("Another CA");
    let dir = tempfile::tempdir().unwrap();
    let files = Files::of(&ca, dir.path());
    let daemon = start(&dir.path().join("data"), &files, &[]);
    let url = https(daemon.addr);
    let id = fresh("untrusted");
    // The system's roots only, and another CA's.
    for untrusted in [typed(&url, None), typed(&url, Some(&other))] {
        let started = Instant::now();
        let refused = untrusted
            .check_and_mark("default", &[id.as_str()], None)
            .await;
        assert_certificate_refused(refused, started);
    }
    // Nothing was marked: the trusted client finds the ID unseen, and the daemon
    // answered no request but this one's.
    let trusted = typed(&url, Some(&ca));
    assert_eq!(
        trusted.check("default", &[id.as_str()]).await.unwrap(),
        [Verdict::New]
    );
    let text = metrics_text(&url, &ca).await;
    assert_eq!(
        metric_sum(
            &text,
            "oncelyd_http_requests_total",
            &[("route", "/v1/namespaces/{ns}/check-and-mark")]
        ),
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_by_the_header_timeout_and_blocks_no_one() {
    let ca = Ca::new("Oncely test CA");
    let dir = tempfile::tempdir().unwrap();
    let files = Files::of(&ca, dir.path());
    let daemon = start(
        &dir.path().join("data"),
        &files,
        &["--header-read-timeout", "1s", "--idle-timeout", "60s"],
    );
    // Connections that never send a ClientHello, and one that stops half-way.
    let mut stalled: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(daemon.addr).unwrap())
        .collect();
    stalled[0].write_all(&[0x16, 0x03, 0x01]).unwrap();
    // Meanwhile a real client is served at once.
    let client = typed(&https(daemon.addr), Some(&ca));
    let started = Instant::now();
    assert_eq!(client.health().await.unwrap().status, "ok");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Each stalled one is closed after about the header timeout, not the idle one.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0_u8; 64];
        let read = s.read(&mut buf);
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a stalled handshake got {read:?}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    let text = metrics_text(&https(daemon.addr), &ca).await;
    assert!(
        metric_sum(
            &text,
            "oncelyd_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 4.0,
        "{text}"
    );
}

// --- start-up -------------------------------------------------------------------------

#[test]
fn start_up_refuses_half_a_tls_configuration_and_unusable_files() {
    let ca = Ca::new("Oncely test CA");
    let dir = tempfile::tempdir().unwrap();
    let files = Files::of(&ca, dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let (_, other_key) = ca.leaf();
    let other_key_path = dir.path().join("other-key.pem");
    std::fs::write(&other_key_path, other_key).unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cert = files.cert.to_str().unwrap();
    let key = files.key.to_str().unwrap();
    for (args, envs, says) in [
        (vec!["--tls-cert", cert], vec![], "tls_key"),
        (vec![], vec![("ONCELY_TLS_KEY", key)], "tls_cert"),
        (
            vec!["--tls-cert", garbage.to_str().unwrap(), "--tls-key", key],
            vec![],
            "invalid setting tls_cert",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", garbage.to_str().unwrap()],
            vec![],
            "invalid setting tls_key",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", "/nonexistent/key.pem"],
            vec![],
            "/nonexistent/key.pem",
        ),
        // A key that is not the certificate's.
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                other_key_path.to_str().unwrap(),
            ],
            vec![],
            "invalid setting tls_key",
        ),
    ] {
        let mut all = vec!["--listen", "127.0.0.1:0", "--data-dir", data];
        all.extend(args.iter().copied());
        let (status, stderr) = run_to_exit(command(&all, &envs), Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?}: wanted {says:?} in {stderr}"
        );
    }
    // Nothing was created on disk by the refused starts.
    assert!(!Path::new(data).exists());
}

// --- SIGHUP ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let a = Ca::new("Oncely test CA A");
    let b = Ca::new("Oncely test CA B");
    let dir = tempfile::tempdir().unwrap();
    let b_path = b.write(dir.path(), "ca-b.pem");
    let files = Files::of(&a, dir.path());
    let daemon = start(
        &dir.path().join("data"),
        &files,
        &["--resp-listen", "127.0.0.1:0"],
    );
    let resp = daemon.resp_addr();
    let url = https(daemon.addr);
    assert_eq!(typed(&url, Some(&a)).health().await.unwrap().status, "ok");
    // A connection opened before the reload, kept alive across it.
    let kept = typed(&url, Some(&a));
    assert_eq!(kept.health().await.unwrap().status, "ok");
    let t = Instant::now();
    assert_certificate_refused(typed(&url, Some(&b)).health().await, t);

    // Certificate B, signed by the second CA, then SIGHUP.
    files.install(&b);
    daemon.signal("HUP");
    daemon.wait_log("TLS certificate reloaded", Duration::from_secs(10));
    assert_eq!(typed(&url, Some(&b)).health().await.unwrap().status, "ok");
    let t = Instant::now();
    assert_certificate_refused(typed(&url, Some(&a)).health().await, t);
    // The RESP face too.
    assert_eq!(redis_cli_tls(resp, &b_path, &["PING"]).trim(), "PONG");
    // The connection opened before still works (it keeps its session).
    assert_eq!(kept.health().await.unwrap().status, "ok");

    // A corrupt certificate file: logged, and B still served.
    replace(
        &files.cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    );
    daemon.signal("HUP");
    daemon.wait_log("cannot reload the TLS certificate", Duration::from_secs(10));
    assert_eq!(typed(&url, Some(&b)).health().await.unwrap().status, "ok");
    assert_eq!(redis_cli_tls(resp, &b_path, &["PING"]).trim(), "PONG");
    // A certificate of A with B's old key: refused as well.
    let (cert_a, _) = a.leaf();
    replace(&files.cert, cert_a.as_bytes());
    daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon
        .log_text()
        .matches("cannot reload the TLS certificate")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(typed(&url, Some(&b)).health().await.unwrap().status, "ok");
    let log = daemon.log_text();
    assert!(log.contains("WARN"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

// --- RESP ---------------------------------------------------------------------------

/// `redis-cli --tls --cacert CA -h 127.0.0.1 -p PORT ARGS...`: its standard output,
/// and standard error after a line `--- stderr:`.
fn redis_cli_tls(addr: SocketAddr, ca: &Path, args: &[&str]) -> String {
    let out = run(Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args));
    out.0
}

/// Runs a client process to its end, at most [`CLIENT_LIMIT`]: (stdout, stderr,
/// success).
fn run(cmd: &mut Command) -> (String, String, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    let deadline = Instant::now() + CLIENT_LIMIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran over {CLIENT_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn resp_over_tls_with_redis_cli_and_redis_py() {
    let ca = Ca::new("Oncely test CA");
    let other = Ca::new("Another CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write(dir.path(), "ca.pem");
    let other_path = other.write(dir.path(), "other-ca.pem");
    let files = Files::of(&ca, dir.path());
    let daemon = start(
        &dir.path().join("data"),
        &files,
        &["--resp-listen", "127.0.0.1:0"],
    );
    let resp = daemon.resp_addr();
    assert!(daemon.log_text().contains("oncelyd serving RESP"));

    // redis-cli trusting the CA: the Redis dedup idiom works over TLS.
    let key = fresh("tls-cli");
    assert_eq!(redis_cli_tls(resp, &ca_path, &["PING"]).trim(), "PONG");
    assert_eq!(
        redis_cli_tls(resp, &ca_path, &["SET", &key, "1", "NX"]).trim(),
        "OK"
    );
    assert_eq!(
        redis_cli_tls(resp, &ca_path, &["SET", &key, "1", "NX"]).trim(),
        ""
    );
    // Not trusting it: no answer (redis-cli says why on standard error).
    let (stdout, stderr, _) = run(Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&other_path)
        .args(["-h", "127.0.0.1", "-p", &resp.port().to_string(), "PING"]));
    assert!(!stdout.contains("PONG"), "{stdout} {stderr}");
    assert!(
        stderr.to_ascii_lowercase().contains("certificate")
            || stdout.to_ascii_lowercase().contains("certificate"),
        "{stdout} {stderr}"
    );
    // Plain text on the TLS port: no answer.
    let (stdout, stderr, _) = run(Command::new("redis-cli").args([
        "-h",
        "127.0.0.1",
        "-p",
        &resp.port().to_string(),
        "PING",
    ]));
    assert!(!stdout.contains("PONG"), "{stdout} {stderr}");

    // redis-py with ssl=True and the CA.
    let python = redis_py();
    let script = r#"
import sys, uuid
import redis
port, ca, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
r = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca,
                ssl_check_hostname=True, socket_timeout=10)
assert r.ping() is True
assert r.set(key, 1, nx=True) is True, "first SET NX"
assert r.set(key, 1, nx=True) is None, "second SET NX"
assert r.execute_command("BF.ADD", "default", key) == 0
print("ok redis-py", redis.__version__)
"#;
    let key = fresh("tls-py");
    let (stdout, stderr, ok) = run(Command::new(&python)
        .args(["-c", script, &resp.port().to_string()])
        .arg(&ca_path)
        .arg(&key));
    assert!(ok && stdout.contains("ok redis-py"), "{stdout}\n{stderr}");
    // The wrong CA: a certificate error, nothing marked.
    let refused = r#"
import sys, ssl
import redis
port, ca, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
r = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca, socket_timeout=10)
try:
    r.set(key, 1, nx=True)
except redis.exceptions.ConnectionError as e:
    print("refused:", e)
    sys.exit(0)
print("answered")
sys.exit(1)
"#;
    let key2 = fresh("tls-py-refused");
    let (stdout, stderr, ok) = run(Command::new(&python)
        .args(["-c", refused, &resp.port().to_string()])
        .arg(&other_path)
        .arg(&key2));
    assert!(ok && stdout.contains("refused"), "{stdout}\n{stderr}");
    assert!(
        stdout.to_ascii_lowercase().contains("certificate"),
        "{stdout}"
    );
    assert_eq!(
        redis_cli_tls(resp, &ca_path, &["SET", &key2, "1", "NX"]).trim(),
        "OK",
        "the refused client marked its key"
    );
}

/// redis-py's python, installed once by `tests/resp_clients/setup.sh` (the version
/// `tests/resp_clients.rs` tests first).
fn redis_py() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/resp_clients/setup.sh");
    let (stdout, stderr, ok) = run(Command::new("bash").arg(script).args(["redis-py", "5.2.1"]));
    assert!(ok, "installing redis-py failed: {stdout}\n{stderr}");
    PathBuf::from(stdout.trim())
}
