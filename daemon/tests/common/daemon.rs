//! A real `oncelyd serve` process for tests: started on 127.0.0.1 port 0, its bound
//! address read from the start-up line, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running daemon; killed on drop, so a failing test leaves no process behind.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_oncelyd");

pub fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(args);
    clean_env(&mut cmd, envs);
    cmd
}

/// A command's environment as the daemon's tests give it: `ONCELY_*` variables
/// only from `envs`, logs at `info` without colours, standard error piped.
pub fn clean_env(cmd: &mut Command, envs: &[(&str, &str)]) {
    // A clean environment for the settings: only what the test gives.
    for (key, _) in std::env::vars() {
        if key.starts_with("ONCELY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
}

impl Daemon {
    /// Starts `oncelyd serve` on 127.0.0.1 port 0 and reads the bound address from
    /// its start-up log line (no race for a free port).
    pub fn start(data_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = data_dir.to_str().unwrap();
        let mut args = vec!["--data-dir", dir];
        args.extend_from_slice(extra);
        Self::start_with(&args, envs)
    }

    /// Starts `oncelyd serve` on 127.0.0.1 port 0 with these arguments only (the
    /// data directory comes from them, the environment or a file).
    pub fn start_with(extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::spawn(command(&args, envs))
    }

    /// Runs `cmd`, which must start a daemon listening on a port of 127.0.0.1
    /// (with standard error piped), and reads its bound address from its start-up
    /// line.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        // Keeps draining stderr for the process's whole life, so it never blocks on
        // a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let addr = listen_addr(&line);
                // Logged before the address is announced, so the test sees the line.
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let mut daemon = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => daemon.addr = addr,
            Err(_) => panic!("no start-up line; log:\n{}", daemon.log_text()),
        }
        daemon
    }

    /// [`Self::start`] with the RESP face on 127.0.0.1 port 0 too, and its address.
    pub fn start_resp(data_dir: &Path, extra: &[&str]) -> (Self, SocketAddr) {
        let mut args = vec!["--resp-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let daemon = Self::start(data_dir, &args, &[]);
        let addr = daemon.resp_addr();
        (daemon, addr)
    }

    /// The RESP face's address, from its start-up line (`resp_listen=...`), which
    /// follows the HTTP one.
    pub fn resp_addr(&self) -> SocketAddr {
        self.wait_log("resp_listen=", Duration::from_secs(10));
        self.log_text()
            .lines()
            .flat_map(str::split_whitespace)
            .find_map(|w| w.strip_prefix("resp_listen="))
            .and_then(|a| a.parse().ok())
            .expect("a resp_listen=ADDR word")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits until the log has a line containing `needle`, at most `limit`.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log after {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs a command to its end, at most `limit` (a start-up that hangs fails the test
/// instead of holding it); its exit status and standard error.
pub fn run_to_exit(mut cmd: Command, limit: Duration) -> (ExitStatus, String) {
    use std::io::Read;
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {limit:?}: {cmd:?}\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

/// The address in `... listen=127.0.0.1:PORT ...`, or in a JSON line's
/// `"fields": {"listen": "127.0.0.1:PORT"}` (`--log-format json`).
pub fn listen_addr(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let v: Value = serde_json::from_str(line).ok()?;
        return v["fields"]["listen"].as_str()?.parse().ok();
    }
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("listen="))
        .and_then(|a| a.parse().ok())
}

/// Installs rustls's ring provider as the process's default, once: reqwest's rustls
/// backend (which the typed client compiles in, without a provider) needs one for a
/// plain `reqwest::Client`.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub async fn verdicts(c: &reqwest::Client, url: &str, ids: &[String]) -> Vec<String> {
    verdicts_as(c, url, None, ids).await
}

/// [`verdicts`] with a bearer token when one is given.
pub async fn verdicts_as(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    ids: &[String],
) -> Vec<String> {
    let mut request = c.post(url).json(&json!({ "ids": ids }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["verdict"].as_str().unwrap().to_owned())
        .collect()
}

/// The daemon's `/metrics` page.
pub async fn metrics(c: &reqwest::Client, daemon: &Daemon) -> String {
    metrics_as(c, daemon, None).await
}

/// [`metrics`] with a bearer token when one is given.
pub async fn metrics_as(c: &reqwest::Client, daemon: &Daemon, token: Option<&str>) -> String {
    let mut request = c.get(daemon.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().text().await.unwrap()
}

/// The value of an unlabelled series `name` in a `/metrics` page; panics, showing the
/// page, when it has none.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The sum of every series of family `name` whose labels include all of `labels`
/// (a counter kept per namespace, summed over the namespaces, for instance); 0 when
/// none matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
