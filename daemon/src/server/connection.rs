//! Accepting connections and serving HTTP/1.1 on each with hyper.
//!
//! The daemon runs its own accept loop rather than `axum::serve` for two reasons:
//!
//! * At shutdown each connection is treated by its state. One with no request under
//!   way closes at once, and that includes a connection whose client is half-way
//!   through its first request head: it has asked for nothing yet, and with
//!   `axum::serve` it held the shutdown for the whole grace period. A request the
//!   application is handling finishes and gets its answer.
//! * Each socket is wrapped in [`RawErrors`], so that the answers hyper writes itself
//!   have the JSON error shape too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::raw_errors::RawErrors;

/// What the connections are told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accept and serve.
    Serving,
    /// Accept no more; close connections with no request under way; finish the rest.
    Closing,
    /// Drop every connection now.
    Abort,
}

/// Accepts connections on `listener` and serves `router` on them until told to
/// close, then waits for the connections to finish, or drops them when told to
/// abort. Returns when no connection is left.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    mut phase: watch::Receiver<Phase>,
) {
    let mut connections = JoinSet::new();
    let mut closing = phase.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, router.clone(), phase.clone()));
                }
                Err(e) => accept_failed(&e).await,
            },
            // Reaps finished connections, so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = until(&mut closing, |p| p != Phase::Serving) => break,
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

/// Resolves when the phase satisfies `reached`, or when no more phases can come
/// (which the server treats as the end). (`wait_for`'s guard is not held across an
/// await: the futures stay `Send`.)
async fn until(phase: &mut watch::Receiver<Phase>, reached: impl Fn(Phase) -> bool) {
    let _ = phase.wait_for(|p| reached(*p)).await;
}

/// An error from `accept`: one connection's failure is skipped; anything else
/// (no file descriptors left, say) is logged and retried after a pause, rather
/// than spinning.
async fn accept_failed(e: &std::io::Error) {
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

/// Serves one connection until it ends, or until told to close (then it ends once
/// its request in progress, if any, is answered).
async fn connection(stream: TcpStream, router: Router, mut phase: watch::Receiver<Phase>) {
    // Small answers must not wait for Nagle's algorithm (and the client's delayed
    // ACK): that would cost up to 40 ms per request on a keep-alive connection.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    // Whether hyper has handed the application a request on this connection.
    let asked = Arc::new(AtomicBool::new(false));
    let service = {
        let asked = Arc::clone(&asked);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            asked.store(true, Ordering::Relaxed);
            router.clone().oneshot(req.map(Body::new))
        })
    };
    let conn =
        http1::Builder::new().serve_connection(TokioIo::new(RawErrors::new(stream)), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        () = until(&mut phase, |p| p != Phase::Serving) => {}
    }
    // hyper closes an idle keep-alive connection here, and turns keep-alive off for
    // a request in progress. It waits for a first request head that has begun to
    // arrive, though: no request of this connection ever reached the application,
    // so there is nothing to finish, and the client will retry elsewhere.
    conn.as_mut().graceful_shutdown();
    if !asked.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
