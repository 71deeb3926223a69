//! HTTP/1.1 by hand over one TCP connection: for tests that must control every byte
//! (a body that stalls, a head that trickles) or keep using one connection while
//! no new one could be accepted.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// An answer read off a [`RawConn`].
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// The head's lines after the status line, lowercased.
    pub headers: String,
    pub body: String,
}

impl RawAnswer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The error code of a JSON error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A request head (and body) as a well-behaved client writes it.
pub fn request_bytes(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
    if let Some(body) = body {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    req.into_bytes()
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Self::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends a request and reads its answer, at most `limit`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        limit: Duration,
    ) -> RawAnswer {
        self.send(&request_bytes(method, path, body)).await;
        self.answer(limit)
            .await
            .unwrap_or_else(|| panic!("no answer to {method} {path} within {limit:?}"))
    }

    /// Reads one answer (head and `content-length` body); `None` when the
    /// connection closed or nothing complete came within `limit`.
    pub async fn answer(&mut self, limit: Duration) -> Option<RawAnswer> {
        tokio::time::timeout(limit, self.read_answer())
            .await
            .ok()
            .flatten()
    }

    async fn read_answer(&mut self) -> Option<RawAnswer> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers = lines.collect::<Vec<_>>().join("\n").to_ascii_lowercase();
        let length: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        let start = head_end + 4;
        while self.buf.len() < start + length {
            if !self.fill().await {
                return None;
            }
        }
        let body = String::from_utf8_lossy(&self.buf[start..start + length]).to_string();
        self.buf.drain(..start + length);
        Some(RawAnswer {
            status,
            headers,
            body,
        })
    }

    /// Reads more; false at end of stream or on an error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0_u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Whether the server has closed the connection, as a client pool sees it
    /// before reusing one: without waiting (bytes waiting to be read are not a close).
    pub fn closed_now(&self) -> bool {
        let mut byte = [0_u8; 1];
        match self.stream.try_read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Whether the server closed the connection within `limit` (reading anything
    /// else first is not a close).
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut byte = [0_u8; 1];
        matches!(
            tokio::time::timeout(limit, self.stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
