//! The common JSON error shape for the answers hyper writes itself.
//!
//! A request hyper cannot parse (a malformed request line or header, headers over its
//! limit, a request target too long) never reaches the application: hyper answers it
//! with 400, 431 or 414, no body, and closes the connection. hyper 1.x has no hook to
//! shape that answer (hyperium/hyper#3844), so [`RawErrors`] wraps the connection's
//! socket and replaces such an answer, as it is written, with the same status and
//! `{"error": {"code", "message"}}`.
//!
//! An answer is recognised as hyper's own by its shape: a 4xx or 5xx head with
//! `content-length: 0` and no `content-type`, written alone. Every answer of the
//! application carries a content type, so none is ever rewritten.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use oncely_client::api::{ErrorCode, ErrorResponse};

/// A socket whose bodyless error answers from hyper are replaced with JSON ones.
#[derive(Debug)]
pub(super) struct RawErrors<T> {
    inner: T,
    /// A replacement answer and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> RawErrors<T> {
    pub(super) const fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> RawErrors<T> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` for a replacement when it is one of hyper's own error answers:
    /// `Some(len)` is how much of it counts as written.
    fn replace(&mut self, buf: &[u8], cx: &mut Context<'_>) -> Option<Poll<io::Result<usize>>> {
        let answer = json_answer(buf)?;
        self.pending = Some((answer, 0));
        Some(match self.poll_pending(cx) {
            // The rest goes out with the flush or shutdown that follows.
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(buf.len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for RawErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RawErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(done) = self.replace(buf, cx) {
            return done;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // hyper writes a head as the first slice; a bodyless answer is that alone.
        let mut written = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(head), None) = (written.next(), written.next())
            && let Some(done) = self.replace(head, cx)
        {
            return done;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The JSON answer replacing `buf`, when `buf` is exactly one of hyper's bodyless
/// error answers.
fn json_answer(buf: &[u8]) -> Option<Vec<u8>> {
    // Cheapest test first: this runs on every answer written.
    let status = buf.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    if !matches!(status[0], b'4' | b'5') {
        return None;
    }
    let status: u16 = std::str::from_utf8(status).ok()?.parse().ok()?;
    let end = memchr::memmem::find(buf, b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let mut date = None;
    let mut empty = false;
    for line in buf[..end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
        let value = value[1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-type") {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            empty = value == b"0";
        }
        if name.eq_ignore_ascii_case(b"date") {
            date = Some(value);
        }
    }
    if !empty {
        return None;
    }
    let (reason, code, message) = match status {
        414 => (
            "URI Too Long",
            ErrorCode::UriTooLong,
            "the request target is longer than this server accepts",
        ),
        431 => (
            "Request Header Fields Too Large",
            ErrorCode::HeadersTooLarge,
            "the request's headers are larger than this server accepts",
        ),
        400 => (
            "Bad Request",
            ErrorCode::MalformedRequest,
            "the request is not valid HTTP/1.1 (a malformed request line or header)",
        ),
        _ => (
            "Error",
            ErrorCode::MalformedRequest,
            "the request could not be read as HTTP/1.1",
        ),
    };
    let body = serde_json::to_vec(&ErrorResponse::new(
        code,
        format!("{message}; the connection is closed"),
    ))
    .ok()?;
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        super::JSON,
        body.len()
    )
    .into_bytes();
    if let Some(date) = date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_are_replaced() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                     date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(json_answer(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("date: Thu, 01 Jan 2026"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
    }

    #[test]
    fn the_applications_answers_are_left_alone() {
        for buf in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"error\": \"HTTP/1.1 400 \"}",
        ] {
            assert!(json_answer(buf).is_none(), "{}", String::from_utf8_lossy(buf));
        }
    }
}
