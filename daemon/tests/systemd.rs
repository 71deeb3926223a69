//! The systemd side: `deploy/oncelyd.service` passes `systemd-analyze verify` and
//! rates at most 2.0 by `systemd-analyze security`, and the daemon tells a
//! `Type=notify` service manager `READY=1` once its port answers (and
//! `STOPPING=1` when it drains), over a fake `$NOTIFY_SOCKET`.
//!
//! `systemd-analyze` comes with Debian's `systemd` package (`scripts/ensure-deps.sh`
//! installs it); no running systemd is needed. Without it the unit's tests fail,
//! saying so.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::daemon::{BIN, Daemon, client, command};

/// The unit as shipped, with `ExecStart` pointing at the binary under test (verify
/// checks that the program exists), written to `dir`.
fn unit_in(dir: &Path) -> std::path::PathBuf {
    let unit = include_str!("../../deploy/oncelyd.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/oncelyd serve"),
        "{unit}"
    );
    let path = dir.join("oncelyd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/oncelyd", BIN)).unwrap();
    path
}

fn analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): install Debian's systemd package \
                 (scripts/ensure-deps.sh does, as root)"
            )
        })
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_unit_verifies_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_in(dir.path());
    let out = analyze(&["verify", "--man=no", unit.to_str().unwrap()]);
    // An unknown key or a bad value is only a warning (exit 0): none is allowed.
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(said(&out).trim(), "", "systemd-analyze verify warned");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("\nType=notify\n"), "{text}");
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_2_or_less() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_in(dir.path());
    let out = analyze(&[
        "security",
        "--offline=true",
        "--threshold=20",
        unit.to_str().unwrap(),
    ]);
    let text = said(&out);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for oncelyd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in\n{text}"));
    assert!(level <= 2.0, "exposure {level}:\n{text}");
    assert!(out.status.success(), "{text}");
}

/// systemd's side of `Type=notify`: a datagram socket named by `NOTIFY_SOCKET`.
/// `READY=1` arrives once, with the port already answering and `/readyz` ready;
/// `STOPPING=1` at SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_sent_once_the_port_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let data = dir.path().join("data");
    let mut daemon = Daemon::spawn(command(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    ));
    let mut buf = [0; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Now, at once, without a retry: the port answers and the daemon is ready.
    let r = client().get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Sent once.
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(socket.recv(&mut buf).is_err(), "a second datagram");
    daemon.signal("TERM");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let n = socket.recv(&mut buf).expect("STOPPING=1 at SIGTERM");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
}

/// Not under systemd (no `NOTIFY_SOCKET`), or with a socket that is gone, the
/// daemon starts all the same.
#[test]
fn a_missing_notify_socket_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(command(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", dir.path().join("gone").to_str().unwrap())],
    ));
    daemon.wait_log("cannot notify systemd", Duration::from_secs(10));
}
