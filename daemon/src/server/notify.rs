//! systemd's readiness protocol (`Type=notify`, `sd_notify(3)`): a datagram of
//! `KEY=value` lines to the unix socket named by `$NOTIFY_SOCKET`. `READY=1` goes
//! once the listeners are bound and the tracker has opened (so `systemctl start`
//! returns when the port answers and `/readyz` says ready), `STOPPING=1` when a
//! shutdown begins. Without `$NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::UnixDatagram;

/// The variable systemd names its socket in.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (`READY=1`, ...) to systemd, logging a failure: readiness that
/// cannot be told is worth a warning, never a stop.
pub(crate) fn notify(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    match send(&socket, state) {
        Ok(()) => tracing::debug!(state, "told systemd"),
        Err(e) => tracing::warn!(
            error = %e,
            socket = %socket.to_string_lossy(),
            state,
            "cannot notify systemd (NOTIFY_SOCKET)"
        ),
    }
}

/// One datagram to `socket`: a path, or `@name` for Linux's abstract namespace.
fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract sockets are Linux's",
            ));
        }
        None => sock.send_to(state.as_bytes(), socket)?,
    };
    if sent == state.len() {
        Ok(())
    } else {
        Err(io::Error::other("the datagram was cut short"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        assert!(send(dir.path().join("none").as_os_str(), "READY=1").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("oncelyd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
