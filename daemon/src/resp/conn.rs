//! Accepting RESP connections and serving each: read what the client sent, parse
//! every complete command in the buffer, run them (marks gathered into one tracker
//! call), write every answer in one write, repeat.
//!
//! A connection shares the HTTP face's connection cap (one semaphore for both
//! listeners), its idle timeout (no command under way for `idle_timeout`), and its
//! header timeout: a command begun and not complete within `header_read_timeout`
//! closes the connection, so a client trickling bytes holds nothing for long.
//! With TLS on, the handshake runs in the connection's task within
//! `header_read_timeout` (see `crate::server::tls`), as on the HTTP face.
//!
//! # Shutdown
//!
//! RESP has no way to announce a close in an answer, as HTTP's `Connection: close`
//! does. So from the drain on, a connection idle for [`DRAIN_IDLE`] is closed (a
//! busy client sends its next command sooner and is served), and once the listener
//! closes, a connection answers what it has already read and then closes. A client
//! whose command was on its way at that moment sees the connection close without
//! an answer: it was not marked, and its retry (elsewhere, or after restart) is
//! what check-and-mark is for.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::command::{self, Context, Session, Shape, Step};
use super::parse::{self, FrameLimits};
use super::reply::Reply;
use crate::server::connection::{DRAIN_IDLE, Held, Phase, accept_failed, until};
use crate::server::metrics::{Closed, Protocol, RESP_COMMANDS};
use crate::server::tls::{self, Tls};
use crate::server::{AppState, MarkCall};

/// What every RESP connection shares.
pub(crate) struct Server {
    pub(crate) state: AppState,
    /// `resp_namespace`: where `SET NX` marks.
    pub(crate) set_namespace: Arc<str>,
    pub(crate) frames: FrameLimits,
    next_id: AtomicU64,
    connected: AtomicUsize,
}

impl Server {
    pub(crate) fn new(state: AppState, set_namespace: &str) -> Self {
        let limits = state.limits();
        let frames = FrameLimits {
            max_bulk: limits.max_body_bytes,
            // The command, its namespace and keywords, and up to max_ids IDs.
            max_args: limits.max_ids.saturating_add(8),
            max_inline: parse::MAX_INLINE,
            max_frame: limits.max_body_bytes,
        };
        Self {
            state,
            set_namespace: Arc::from(set_namespace),
            frames,
            next_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
        }
    }
}

/// Accepts connections until the phase closes the listener, then waits for them
/// to finish (or drops them at abort).
pub(crate) async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    mut phase: watch::Receiver<Phase>,
    slots: Arc<Semaphore>,
    tls: Option<Tls>,
) {
    let metrics = server.state.metrics_handle();
    let mut connections = JoinSet::new();
    let mut closing = phase.clone();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = until(&mut closing, Phase::closing) => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let held = Held::new(Some(permit), &metrics);
                    connections.spawn(connection(
                        Arc::clone(&server),
                        stream,
                        phase.clone(),
                        held,
                        tls.clone(),
                    ));
                }
                Err(e) => accept_failed(&e).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = until(&mut closing, Phase::closing) => break,
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

/// Decrements the connection count when the connection ends, however it ends.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection; with TLS, after its handshake.
async fn connection(
    server: Arc<Server>,
    stream: TcpStream,
    mut phase: watch::Receiver<Phase>,
    held: Held,
    tls: Option<Tls>,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_on(server, stream, phase, held).await,
        Some(tls) => {
            let limit = server.state.limits().header_read_timeout;
            let metrics = server.state.metrics_handle();
            if let Some(stream) =
                tls::handshake(tls.resp(), stream, limit, &mut phase, &metrics).await
            {
                serve_on(server, stream, phase, held).await;
            }
        }
    }
}

async fn serve_on(
    server: Arc<Server>,
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    mut phase: watch::Receiver<Phase>,
    _held: Held,
) {
    server.connected.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted(&server.connected);
    let limits = server.state.limits();
    let id = server.next_id.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn {
        server: &server,
        session: Session::new(id, &server.state),
        windows: HashMap::new(),
    };
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut out = Vec::with_capacity(16 << 10);
    let mut idle_since = Instant::now();
    let mut partial_since: Option<Instant> = None;
    loop {
        let now_phase = *phase.borrow();
        if now_phase == Phase::Abort {
            return;
        }
        let idle = if now_phase == Phase::Serving {
            limits.idle_timeout
        } else {
            limits.idle_timeout.min(DRAIN_IDLE)
        };
        let (deadline, why) = match partial_since {
            Some(since) => (since + limits.header_read_timeout, Closed::HeaderTimeout),
            None if now_phase == Phase::Serving => (idle_since + idle, Closed::IdleTimeout),
            None => (idle_since + idle, Closed::Shutdown),
        };
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 << 10);
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                server.state.metrics().connection_closed(why);
                return;
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        // Every complete command in the buffer, in order.
        let mut frames = Vec::new();
        let mut at = 0;
        let mut fatal = None;
        while at < buf.len() {
            match parse::parse(&buf[at..], &server.frames) {
                Ok(Some(frame)) => {
                    let start = at;
                    at += frame.len;
                    frames.push((start, frame));
                }
                Ok(None) => break,
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            }
        }
        let chunk = buf.split_to(at).freeze();
        let mut cmds = Vec::with_capacity(frames.len());
        for (start, frame) in frames {
            let args: Vec<Bytes> = match frame.inline {
                Some(words) => words.into_iter().map(Bytes::from).collect(),
                None => frame
                    .args
                    .into_iter()
                    .map(|r| chunk.slice(start + r.start..start + r.end))
                    .collect(),
            };
            if !args.is_empty() {
                cmds.push(args);
            }
        }
        // The header timeout bounds one command's arrival: what is left in the
        // buffer is a command begun now if this read completed any, else still
        // the one begun before (a busy pipeline is never cut by it).
        partial_since = if buf.is_empty() {
            None
        } else if at > 0 {
            Some(Instant::now())
        } else {
            partial_since.or_else(|| Some(Instant::now()))
        };
        let (replies, quit) = conn.execute(cmds).await;
        // Each answer in the protocol its command ran under (a HELLO or RESET in
        // the middle of a pipeline changes only the answers after it).
        for (r, resp3) in &replies {
            r.encode(*resp3, &mut out);
        }
        if let Some(e) = &fatal {
            Reply::error(format!("ERR {e}")).encode(conn.session.resp3, &mut out);
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if fatal.is_some() || quit {
            let _ = stream.shutdown().await;
            return;
        }
        if buf.is_empty() {
            idle_since = Instant::now();
        }
        // The listener has closed: what was read is answered; close now.
        if phase.borrow().closing() && buf.is_empty() {
            server.state.metrics().connection_closed(Closed::Shutdown);
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// One connection's state while it runs commands.
struct Conn<'a> {
    server: &'a Server,
    session: Session,
    /// Each namespace's window, as last read, and when: `SET ... PX` is checked
    /// against it without reading the namespace every time. A second old at most,
    /// so a reconfiguration applies within a second.
    windows: HashMap<Arc<str>, (Instant, Duration)>,
}

/// How long a namespace's window is trusted without reading it again.
const WINDOW_FRESH: Duration = Duration::from_secs(1);

/// Marks waiting to go to the tracker together.
#[derive(Default)]
struct Batch {
    ns: Option<Arc<str>>,
    /// Each mark's slot in the answers and its shape.
    slots: Vec<(usize, Shape)>,
    calls: Vec<MarkCall>,
    /// IDs in `calls`: at most `max_ids`.
    ids: usize,
}

fn metric_index(name: &[u8]) -> usize {
    RESP_COMMANDS
        .iter()
        .position(|c| c.as_bytes().eq_ignore_ascii_case(name))
        .unwrap_or(RESP_COMMANDS.len() - 1)
}

impl Conn<'_> {
    /// Runs commands in order; their answers, in order, and whether to close.
    async fn execute(&mut self, cmds: Vec<Vec<Bytes>>) -> (Vec<(Reply, bool)>, bool) {
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(cmds.len());
        let mut counted = Vec::with_capacity(cmds.len());
        let mut protocols = Vec::with_capacity(cmds.len());
        let mut batch = Batch::default();
        let mut quit = false;
        let connected = self.server.connected.load(Ordering::Relaxed);
        for args in cmds {
            let slot = replies.len();
            replies.push(None);
            counted.push(metric_index(&args[0]));
            let step = {
                let ctx = Context {
                    state: &self.server.state,
                    set_namespace: &self.server.set_namespace,
                    connected,
                };
                command::classify(&mut self.session, &ctx, args)
            };
            protocols.push(self.session.resp3);
            match step {
                Step::Reply(r) => replies[slot] = Some(r),
                Step::Mark {
                    ns,
                    ids,
                    owner,
                    shape,
                } => {
                    // One tracker call holds at most `max_ids` IDs, as one HTTP
                    // request does: a write far larger can stall the store.
                    let max_ids = self.server.state.limits().max_ids;
                    if batch.ns.as_ref().is_some_and(|b| *b != ns)
                        || batch.ids + ids.len() > max_ids
                    {
                        self.flush(&mut batch, &mut replies).await;
                    }
                    batch.ids += ids.len();
                    batch.ns = Some(ns);
                    batch.slots.push((slot, shape));
                    batch.calls.push(MarkCall { ids, owner });
                }
                Step::Check { ns, ids, shape } => {
                    self.flush(&mut batch, &mut replies).await;
                    let checked = self
                        .server
                        .state
                        .check_ids(Protocol::Resp, ns, Arc::new(ids))
                        .await;
                    replies[slot] = Some(match checked {
                        Ok(v) => shape.reply(Ok(v), false),
                        Err(e) => e.into(),
                    });
                }
                Step::Call(f) => {
                    self.flush(&mut batch, &mut replies).await;
                    replies[slot] = Some(match self.server.state.call(f).await {
                        Ok(r) => r,
                        Err(e) => e.into(),
                    });
                }
                Step::Exec(queued) => {
                    self.flush(&mut batch, &mut replies).await;
                    let (inner, inner_quit) = Box::pin(self.execute(queued)).await;
                    quit |= inner_quit;
                    replies[slot] = Some(Reply::Array(inner.into_iter().map(|(r, _)| r).collect()));
                }
                Step::Quit => {
                    replies[slot] = Some(Reply::OK);
                    quit = true;
                    break;
                }
            }
        }
        self.flush(&mut batch, &mut replies).await;
        let m = self.server.state.metrics();
        let replies = replies
            .into_iter()
            .zip(counted)
            .zip(protocols)
            .map(|((r, index), resp3)| {
                let r = r.unwrap_or_else(|| Reply::error("ERR internal: no answer"));
                m.count_resp_command(index, !r.is_error());
                (r, resp3)
            })
            .collect();
        (replies, quit)
    }

    /// A namespace's window, read at most once a second.
    async fn window(&mut self, ns: &Arc<str>) -> Result<Duration, Reply> {
        if let Some((at, w)) = self.windows.get(ns)
            && at.elapsed() < WINDOW_FRESH
        {
            return Ok(*w);
        }
        let name = Arc::clone(ns);
        let w = self
            .server
            .state
            .call(move |tracker| Ok(command::window(&tracker.namespace_info(&name)?.config)))
            .await
            .map_err(Reply::from)?;
        self.windows.insert(Arc::clone(ns), (Instant::now(), w));
        Ok(w)
    }

    /// Sends the gathered marks as one tracker call and answers each in its slot.
    async fn flush(&mut self, batch: &mut Batch, replies: &mut [Option<Reply>]) {
        let Some(ns) = batch.ns.take() else {
            return;
        };
        batch.ids = 0;
        let slots = std::mem::take(&mut batch.slots);
        let mut calls = std::mem::take(&mut batch.calls);
        // Expiries beyond the window are refused before anything is marked; the
        // window is read only for a batch that has an expiry to check.
        let has_expiry = slots
            .iter()
            .any(|(_, s)| matches!(s, Shape::Set { expiry_ms: Some(_) }));
        let mut kept = Vec::with_capacity(slots.len());
        if has_expiry {
            let window = self.window(&ns).await;
            let mut kept_calls = Vec::with_capacity(calls.len());
            for ((slot, shape), call) in slots.into_iter().zip(calls.drain(..)) {
                let refused = match (shape, &window) {
                    (
                        Shape::Set {
                            expiry_ms: Some(ms),
                        },
                        Ok(w),
                    ) if u128::from(ms) > w.as_millis() => Some(command::expiry_error(&ns, ms, *w)),
                    (Shape::Set { expiry_ms: Some(_) }, Err(e)) => Some(e.clone()),
                    _ => None,
                };
                match refused {
                    Some(r) => replies[slot] = Some(r),
                    None => {
                        kept.push((slot, shape));
                        kept_calls.push(call);
                    }
                }
            }
            calls = kept_calls;
        } else {
            kept = slots;
        }
        if calls.is_empty() {
            return;
        }
        match self.server.state.mark_each(Protocol::Resp, ns, calls).await {
            Ok(each) => {
                for ((slot, shape), verdicts) in kept.into_iter().zip(each) {
                    replies[slot] = Some(shape.reply(verdicts, true));
                }
            }
            Err(e) => {
                let r = Reply::from(e);
                for (slot, _) in kept {
                    replies[slot] = Some(r.clone());
                }
            }
        }
    }
}
