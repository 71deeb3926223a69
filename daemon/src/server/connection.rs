//! Accepting connections and serving HTTP/1.1 on each with hyper.
//!
//! The daemon runs its own accept loop rather than `axum::serve` for two reasons:
//!
//! * At shutdown each connection is treated by its state (see "Shutdown" below). A
//!   request the application is handling finishes and gets its answer; a client
//!   half-way through a request head gets a moment to finish it, not the whole
//!   grace period it held with `axum::serve`.
//! * Each socket is wrapped in [`RawErrors`], so that the answers hyper writes itself
//!   have the JSON error shape too.
//! * With TLS on (`super::tls`), each connection's handshake runs in its own task,
//!   within `header_read_timeout`, so a client that never finishes one holds up no
//!   other; the connection's timeouts below then count from the handshake's end.
//! * No client can hold the daemon's connections or descriptors:
//!   - at most `max_connections` are open at once. At the cap the loop stops
//!     accepting until one closes: new clients wait in the kernel's accept queue (up
//!     to its backlog), nothing is refused, and `oncelyd_connection_cap_reached_total`
//!     counts each time it happened. Descriptors for the store stay free
//!     (`super::descriptors`);
//!   - a connection with no request under way closes after `idle_timeout` (counted
//!     from its accept, or from its last answer);
//!   - a request head must arrive within `header_read_timeout` of its first byte,
//!     else the connection closes (a head that trickles in a byte at a time holds
//!     it no longer than that);
//!   - a body must arrive within `body_read_timeout` (408, in `super::extract`);
//!   - hyper's read buffer, which each connection keeps, is at most
//!     [`READ_BUFFER_BYTES`], which is also the longest request head (431 beyond).
//!     hyper's default, 408 KiB, let 4,096 connections that had each once sent a
//!     large body keep 1.6 GiB between them.
//!
//! The cap being reached and freed is logged at most once per
//! [`super::failures::WINDOW`], with the count of the times in between: a client
//! reconnecting in a loop at the cap freed and retook it 9,009 times in 3 s, and
//! wrote 7,114 lines; the metric counts every time.
//!
//! # Shutdown
//!
//! A server cannot close a keep-alive connection without racing its client: a
//! request sent as the close happens is lost, and the client cannot tell whether it
//! was done. The only close without that race is one announced in an answer
//! (`Connection: close`, which every answer carries from the drain's start on, see
//! `super::gate`). So, from the first stop request:
//!
//! * **Drain** ([`Phase::Draining`]): connections are still accepted and served,
//!   each closing after its next answer. One with nothing under way for
//!   [`DRAIN_IDLE`] closes (so do those idle that long when the drain begins): by
//!   the time the listener closes, its client has long seen the close and will
//!   connect again, rather than send into a socket that is closing. A client
//!   sending a request every few milliseconds on a connection is never idle that
//!   long, and gets its close in an answer instead.
//! * **Close** ([`Phase::Closing`]): connections the kernel had completed but the
//!   loop not yet accepted are accepted (the listener's close would reset them,
//!   with their clients' requests perhaps already sent), then the listener closes.
//!   A connection with a request under way finishes it; one without gets
//!   [`DRAIN_IDLE`] more for a request already on its way, which is then served
//!   and answered with `Connection: close`; then it closes.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use super::error::BodyUnread;
use super::metrics::{Closed, Metrics};
use super::raw_errors::RawErrors;
use super::tls::{self, Tls};

/// What the connections are told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accept and serve.
    Serving,
    /// Accept and serve, closing connections once idle for [`DRAIN_IDLE`] (answers
    /// carry `Connection: close` meanwhile).
    Draining,
    /// Accept no more; close connections with no request under way after a last
    /// [`DRAIN_IDLE`]; finish the rest.
    Closing,
    /// Drop every connection now.
    Abort,
}

impl Phase {
    /// Whether the listener is to close.
    pub(crate) const fn closing(self) -> bool {
        matches!(self, Self::Closing | Self::Abort)
    }
}

/// hyper's read buffer per connection, at most: also the longest request head
/// (longer: 431). 64 KiB holds any head a client sends (nginx allows 32 KiB), and a
/// 1,000-ID batch (about 40 KiB) in one read.
pub(super) const READ_BUFFER_BYTES: usize = 64 << 10;

/// While shutting down, how long a connection may have nothing under way before it
/// is closed: far longer than the gap between a busy client's requests, which then
/// gets its close in an answer, and far shorter than any drain delay, so that its
/// client sees the close long before the listener's.
pub(crate) const DRAIN_IDLE: Duration = Duration::from_millis(250);

/// How many connections, and how long each may wait for its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ConnectionLimits {
    pub(super) max_connections: usize,
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits in `phase`: from the drain on, a connection may be idle for at
    /// most [`DRAIN_IDLE`].
    fn during(self, phase: Phase) -> Self {
        match phase {
            Phase::Serving => self,
            Phase::Draining | Phase::Closing | Phase::Abort => Self {
                idle_timeout: self.idle_timeout.min(DRAIN_IDLE),
                ..self
            },
        }
    }
}

/// Accepts connections on `listener` and serves `router` on them until told to
/// close, then waits for the connections to finish, or drops them when told to
/// abort. Returns when no connection is left.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    mut phase: watch::Receiver<Phase>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    tls: Option<Tls>,
) {
    let mut connections = JoinSet::new();
    let mut closing = phase.clone();
    // The slot the next connection takes; accepting waits for one.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    let mut at_cap = false;
    let mut cap_log = CapLog::new(limits.max_connections, super::failures::WINDOW);
    loop {
        if slot.is_none() {
            match Arc::clone(&slots).try_acquire_owned() {
                // A slot freed while another branch ran (a finished connection being
                // reaped, say) ends the time at the cap just as `freed` does: left
                // unnoticed, the next time at the cap went uncounted.
                Ok(permit) => {
                    slot = Some(permit);
                    if at_cap {
                        at_cap = false;
                        cap_log.freed();
                    }
                }
                Err(_) if !at_cap => {
                    at_cap = true;
                    metrics.connection_cap_reached();
                    cap_log.reached(Instant::now());
                }
                Err(_) => {}
            }
        }
        let spawn = |connections: &mut JoinSet<()>, stream, held| {
            connections.spawn(connection(
                stream,
                router.clone(),
                phase.clone(),
                limits,
                held,
                tls.clone(),
            ));
        };
        tokio::select! {
            freed = Arc::clone(&slots).acquire_owned(), if slot.is_none() => {
                slot = freed.ok();
                if at_cap {
                    at_cap = false;
                    cap_log.freed();
                }
            }
            accepted = listener.accept(), if slot.is_some() => match accepted {
                Ok((stream, _)) => spawn(&mut connections, stream, Held::new(slot.take(), &metrics)),
                Err(e) => accept_failed(&e).await,
            },
            // Reaps finished connections, so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = tokio::time::sleep_until(cap_log.next_line), if cap_log.unlogged > 0 => {
                cap_log.flush(Instant::now());
            }
            () = until(&mut closing, Phase::closing) => {
                // Connections the kernel completed are accepted rather than reset
                // with the listener (see "Shutdown"), as far as the cap allows.
                while let Some(permit) = slot.take().or_else(|| Arc::clone(&slots).try_acquire_owned().ok()) {
                    match poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await {
                        Poll::Ready(Ok((stream, _))) => {
                            spawn(&mut connections, stream, Held::new(Some(permit), &metrics));
                        }
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    }
                }
                break;
            }
        }
    }
    drop(listener);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() {
                return;
            },
            () = until(&mut phase, |p| p == Phase::Abort) => {
                connections.shutdown().await;
                return;
            }
        }
    }
}

/// A connection's slot under the cap, and its place in the metrics; both given
/// back when the connection's task ends, however it ends.
pub(crate) struct Held {
    _slot: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

impl Held {
    pub(crate) fn new(slot: Option<OwnedSemaphorePermit>, metrics: &Arc<Metrics>) -> Self {
        metrics.connection_opened();
        Self {
            _slot: slot,
            metrics: Arc::clone(metrics),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.connection_ended();
    }
}

/// The accept loop's lines about the connection cap: the first time it is reached
/// in a window, a `WARN` (with how often it was reached since the last line) and,
/// when it is freed, an `INFO`; the times in between are counted and logged once the
/// window has passed. (The loop is one task: no atomics needed.)
struct CapLog {
    max_connections: usize,
    window: Duration,
    /// When the next line about reaching the cap may be logged.
    next_line: Instant,
    /// Times the cap was reached since the last line.
    unlogged: u64,
    /// Whether the last reach was logged, so its end is too.
    logged_reach: bool,
}

/// What [`CapLog`] logs for an event.
#[derive(Debug, PartialEq, Eq)]
enum CapLine {
    /// Nothing: counted.
    Counted,
    /// The cap was reached, and `before` more times since the last line.
    Reached { before: u64 },
    /// Below the cap again, after a logged reach.
    Freed,
    /// The cap was reached `times` times since the last line, none logged.
    Summary { times: u64 },
}

impl CapLog {
    fn new(max_connections: usize, window: Duration) -> Self {
        Self {
            max_connections,
            window,
            next_line: Instant::now(),
            unlogged: 0,
            logged_reach: false,
        }
    }

    fn reached(&mut self, now: Instant) -> CapLine {
        if now < self.next_line {
            self.unlogged += 1;
            self.logged_reach = false;
            return CapLine::Counted;
        }
        self.next_line = now + self.window;
        self.logged_reach = true;
        let before = std::mem::take(&mut self.unlogged);
        if before == 0 {
            tracing::warn!(
                max_connections = self.max_connections,
                "connection cap reached: accepting no more until one closes"
            );
        } else {
            tracing::warn!(
                max_connections = self.max_connections,
                more = before,
                "connection cap reached: accepting no more until one closes ({before} more \
                 times since the last line)"
            );
        }
        CapLine::Reached { before }
    }

    fn freed(&mut self) -> CapLine {
        if !std::mem::take(&mut self.logged_reach) {
            return CapLine::Counted;
        }
        tracing::info!("below the connection cap again: accepting");
        CapLine::Freed
    }

    /// Logs the count of reaches that got no line, once the window has passed.
    fn flush(&mut self, now: Instant) -> CapLine {
        if self.unlogged == 0 || now < self.next_line {
            return CapLine::Counted;
        }
        self.next_line = now + self.window;
        let times = std::mem::take(&mut self.unlogged);
        tracing::warn!(
            max_connections = self.max_connections,
            times,
            window_s = self.window.as_secs(),
            "the connection cap was reached {times} more times since the last line"
        );
        CapLine::Summary { times }
    }
}

/// Resolves when the phase satisfies `reached`, or when no more phases can come
/// (which the server treats as the end). (`wait_for`'s guard is not held across an
/// await: the futures stay `Send`.)
pub(crate) async fn until(phase: &mut watch::Receiver<Phase>, reached: impl Fn(Phase) -> bool) {
    let _ = phase.wait_for(|p| reached(*p)).await;
}

/// An error from `accept`: one connection's failure is skipped; anything else
/// (no file descriptors left, say) is logged and retried after a pause, rather
/// than spinning.
pub(crate) async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What a connection is doing, for its timeouts: shared by the socket (which sees
/// bytes arrive), the service (which sees requests begin and end) and the
/// connection's task (which closes it when a deadline passes). Times are
/// milliseconds since `epoch`, plus one, so that 0 means "none".
struct Activity {
    epoch: Instant,
    /// Requests handed to the application and not yet answered.
    busy: AtomicUsize,
    /// When the connection last had nothing under way: accepted, or answered.
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived while nothing was under way;
    /// 0 when none has.
    head_since: AtomicU64,
    /// Whether an answer left its request's body unread: the socket then lingers
    /// before it closes ([`Watched::drop`]).
    linger: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(1),
            head_since: AtomicU64::new(0),
            linger: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn at(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_millis(stamp.saturating_sub(1))
    }

    /// Bytes arrived: with nothing under way, they begin a request head.
    fn read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// A request reached the application: its head is complete.
    fn begin(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// A request was answered (or abandoned).
    fn end(&self) {
        if self.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// When the connection's task next looks at its deadline: the deadline, but
    /// never later than the shorter timeout from now. A head that begins, or an
    /// answer that ends, after this moment sets a deadline no earlier than the
    /// check, so neither has to wake the task: waking it twice per request, with a
    /// timer armed and cancelled each time, cost 3,400 of a single-ID request's
    /// 50,000 instructions (`benches/callgrind.sh`). A deadline is still kept to the
    /// millisecond; an active connection costs one wake-up per timeout.
    fn next_check(&self, limits: ConnectionLimits) -> Instant {
        let horizon = Instant::now() + limits.header_read_timeout.min(limits.idle_timeout);
        self.deadline(limits)
            .map_or(horizon, |(at, _)| at.min(horizon))
    }

    /// When the connection must close if nothing changes, and why; `None` while a
    /// request is under way (the application's own deadlines bound it).
    fn deadline(&self, limits: ConnectionLimits) -> Option<(Instant, Closed)> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Relaxed) {
            0 => Some((
                self.at(self.idle_since.load(Ordering::Relaxed)) + limits.idle_timeout,
                Closed::IdleTimeout,
            )),
            since => Some((
                self.at(since) + limits.header_read_timeout,
                Closed::HeaderTimeout,
            )),
        }
    }
}

/// Ends a request's busy time when dropped: when its answer is ready, or when the
/// request is abandoned (its connection closed under it).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// What a connection is served on: a TCP stream, or a TLS stream over one.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// A connection's socket: it tells the connection's [`Activity`] when bytes
/// arrive (decrypted ones, with TLS), and holds the connection's slot under the cap
/// until it is closed, which can be after the connection's task: see
/// [`Watched::drop`].
struct Watched<S: Stream> {
    /// `None` only once dropped.
    inner: Option<S>,
    activity: Arc<Activity>,
    held: Option<Held>,
}

impl<S: Stream> Watched<S> {
    fn stream(&mut self) -> std::io::Result<Pin<&mut S>> {
        self.inner
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| std::io::ErrorKind::NotConnected.into())
    }
}

/// Polls `f` on the socket's stream, or fails if it is gone (never, before drop).
macro_rules! on_stream {
    ($self:ident, |$s:ident| $poll:expr) => {
        match $self.stream() {
            Ok($s) => $poll,
            Err(e) => Poll::Ready(Err(e)),
        }
    };
}

impl<S: Stream> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = on_stream!(self, |s| s.poll_read(cx, buf));
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<S: Stream> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        on_stream!(self, |s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        on_stream!(self, |s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_stream!(self, |s| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_stream!(self, |s| s.poll_shutdown(cx))
    }
}

impl<S: Stream> Drop for Watched<S> {
    /// Closes the socket; but after an answer that left its request's body unread
    /// (413, a body the budget had no room for, 408), first reads and discards what
    /// the client still sends, for at most [`LINGER`]. A client writing its whole
    /// body before it reads (as clients do without `Expect: 100-continue`) would
    /// otherwise have the close reset its connection while it writes, and lose the
    /// answer: a client posting 5 MiB got a broken pipe instead of its 413. The
    /// connection keeps its slot under the cap meanwhile.
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        if !self.activity.linger.load(Ordering::Relaxed) {
            return;
        }
        let held = self.held.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                linger(stream).await;
                drop(held);
            });
        }
    }
}

/// After an answer that left a request's body unread, how long its connection goes
/// on reading (and discarding) what the client sends before it is closed: time
/// for a client to send a few MiB more, and read the answer, on any link.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// Half-closes `stream` (the answer is written; with TLS, after a `close_notify`)
/// and discards what comes until the client closes, or [`LINGER`] has passed.
async fn linger(mut stream: impl Stream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, async {
        let _ = stream.shutdown().await;
        let mut sink = vec![0_u8; 16 << 10];
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
}

/// Serves one connection until it ends or a deadline passes, and through the
/// shutdown's phases (see "Shutdown" in the module docs); with TLS, after its
/// handshake.
async fn connection(
    stream: TcpStream,
    router: Router,
    mut phase: watch::Receiver<Phase>,
    limits: ConnectionLimits,
    held: Held,
    tls: Option<Tls>,
) {
    // Small answers must not wait for Nagle's algorithm (and the client's delayed
    // ACK): that would cost up to 40 ms per request on a keep-alive connection.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    match tls {
        None => serve_on(stream, router, phase, limits, held).await,
        Some(tls) => {
            let limit = limits.header_read_timeout;
            if let Some(stream) =
                tls::handshake(tls.http(), stream, limit, &mut phase, &held.metrics).await
            {
                serve_on(stream, router, phase, limits, held).await;
            }
        }
    }
}

/// [`connection`] on its stream, once any handshake is done.
async fn serve_on(
    stream: impl Stream,
    router: Router,
    mut phase: watch::Receiver<Phase>,
    limits: ConnectionLimits,
    held: Held,
) {
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            activity.begin();
            let busy = Busy(Arc::clone(&activity));
            let answer = router.clone().oneshot(req.map(Body::new));
            async move {
                let answered = answer.await;
                if let Ok(response) = &answered
                    && response.extensions().get::<BodyUnread>().is_some()
                {
                    busy.0.linger.store(true, Ordering::Relaxed);
                }
                drop(busy);
                answered
            }
        })
    };
    let metrics = Arc::clone(&held.metrics);
    let socket = Watched {
        inner: Some(stream),
        activity: Arc::clone(&activity),
        held: Some(held),
    };
    let conn = http1::Builder::new()
        .max_buf_size(READ_BUFFER_BYTES)
        .serve_connection(TokioIo::new(RawErrors::new(socket)), service);
    let mut conn = std::pin::pin!(conn);
    let mut now = *phase.borrow_and_update();
    let mut check = std::pin::pin!(tokio::time::sleep_until(
        activity.next_check(limits.during(now))
    ));
    while !now.closing() {
        let current = limits.during(now);
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = check.as_mut() => {
                if let Some((at, why)) = activity.deadline(current)
                    && at <= Instant::now()
                {
                    let why = if now == Phase::Serving { why } else { Closed::Shutdown };
                    metrics.connection_closed(why);
                    tracing::debug!(reason = why.as_str(), "closing a connection past its deadline");
                    return;
                }
                check.as_mut().reset(activity.next_check(current));
            }
            changed = phase.changed() => {
                now = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Abort };
                // The drain's shorter idle time applies from now.
                check.as_mut().reset(activity.next_check(limits.during(now)));
            }
        }
    }
    // The listener is closing. A request under way finishes (hyper turns keep-alive
    // off for it); with nothing under way, a request already on its way gets
    // `DRAIN_IDLE` to arrive, and is answered with `Connection: close` (the gate
    // adds it once shutdown has begun).
    if activity.busy.load(Ordering::Relaxed) == 0 {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep(DRAIN_IDLE) => {}
        }
        if activity.busy.load(Ordering::Relaxed) == 0 {
            metrics.connection_closed(Closed::Shutdown);
            return;
        }
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_logged_once_per_window_with_the_count_of_the_rest() {
        let window = Duration::from_secs(10);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut log = CapLog::new(4, window);
        log.next_line = start;
        assert_eq!(log.reached(at(0)), CapLine::Reached { before: 0 });
        assert_eq!(log.freed(), CapLine::Freed);
        // Reached and freed 1,000 times within the window: counted, not logged.
        for ms in 1..=1000 {
            assert_eq!(log.reached(at(ms)), CapLine::Counted);
            assert_eq!(log.freed(), CapLine::Counted);
        }
        assert_eq!(log.flush(at(9_999)), CapLine::Counted);
        // Once the window has passed, the count is logged, once.
        assert_eq!(log.flush(at(10_000)), CapLine::Summary { times: 1000 });
        assert_eq!(log.flush(at(30_000)), CapLine::Counted);
        // The summary started a window: the next reach is counted, and the one
        // after the window is logged with it.
        assert_eq!(log.reached(at(15_000)), CapLine::Counted);
        assert_eq!(log.reached(at(20_000)), CapLine::Reached { before: 1 });
        assert_eq!(log.freed(), CapLine::Freed);
    }

    #[test]
    fn the_drain_shortens_only_the_idle_timeout() {
        let limits = ConnectionLimits {
            max_connections: 8,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        assert_eq!(limits.during(Phase::Serving), limits);
        let draining = limits.during(Phase::Draining);
        assert_eq!(draining.idle_timeout, DRAIN_IDLE);
        assert_eq!(draining.header_read_timeout, limits.header_read_timeout);
        let short = ConnectionLimits {
            idle_timeout: Duration::from_millis(100),
            ..limits
        };
        assert_eq!(
            short.during(Phase::Closing).idle_timeout,
            Duration::from_millis(100)
        );
    }
}
