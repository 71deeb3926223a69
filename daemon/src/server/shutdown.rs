//! Serving until told to stop, then stopping without losing anything.
//!
//! On the shutdown signal, in order:
//!
//! 1. `/readyz` turns 503, so load balancers stop sending traffic.
//! 2. The listener stops accepting; idle connections close; requests in progress
//!    finish and get their answers (keep-alive is turned off for them).
//! 3. After `shutdown_grace`, connections still open are dropped. A request whose
//!    client is dropped was either acknowledged or not; if not, the client retries
//!    elsewhere or after restart, which is what check-and-mark is for.
//! 4. The ticker stops, and tracker work still running on the blocking pool gets
//!    the rest of the grace period to finish.
//! 5. `tracker.close()` snapshots every open generation and flushes RocksDB, so the
//!    next start-up needs no scan.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use oncely::Tracker;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::{AppState, TASK_PERMITS, TICK_INTERVAL, app};
use crate::Error;

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then shuts down
/// gracefully within `grace` and closes the tracker.
///
/// # Errors
///
/// [`Error::Serve`] when accepting fails; [`Error::Close`] when the final flush
/// fails (acknowledged marks are in the write-ahead log regardless).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tick_stop, tick_stop_rx) = watch::channel(false);
    let ticker = tokio::spawn(tick(state.tracker().clone(), tick_stop_rx));
    let watcher_state = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        watcher_state.set_ready(false);
        tracing::info!(
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "shutting down: no new connections, finishing requests in progress"
        );
        let _ = stop_tx.send(true);
    });

    // Small answers must not wait for Nagle's algorithm (and the client's delayed
    // ACK): that would cost up to 40 ms per request on a keep-alive connection.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    // Boxed, so that dropping it below really drops the connections.
    let mut server = Box::pin(
        axum::serve(listener, app(state.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );

    let ended = tokio::select! {
        r = &mut server => Some(r),
        () = stopped(stop_rx.clone()) => None,
    };
    let deadline = Instant::now() + grace;
    let served = match ended {
        Some(r) => r,
        None => {
            if let Ok(r) = tokio::time::timeout_at(deadline, &mut server).await {
                r
            } else {
                tracing::warn!("grace period over: dropping connections still open");
                Ok(())
            }
        }
    };
    // Dropping the server closes whatever connections are left.
    drop(server);
    state.set_ready(false);

    // The ticker finishes a tick in progress before it sees the stop (a tick racing
    // `close` could seal a generation after its final snapshot).
    drop(tick_stop);
    if tokio::time::timeout_at(deadline, wait_ticker(ticker))
        .await
        .is_err()
    {
        tracing::warn!("the ticker did not stop within the grace period");
    }
    let tasks = Arc::clone(&state.inner.tasks);
    match tokio::time::timeout_at(deadline, tasks.acquire_many_owned(TASK_PERMITS)).await {
        Ok(_all) => {}
        Err(_) => tracing::warn!("tracker calls still running at the end of the grace period"),
    }

    let tracker = state.tracker().clone();
    let closed = tokio::task::spawn_blocking(move || tracker.close())
        .await
        .map_err(|e| Error::Serve(std::io::Error::other(e)))?;
    served.map_err(Error::Serve)?;
    closed.map_err(Error::Close)?;
    tracing::info!("stopped: tracker closed cleanly");
    Ok(())
}

/// Resolves when `stop` is set, or its sender is gone.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn wait_ticker(ticker: tokio::task::JoinHandle<()>) {
    let _ = ticker.await;
}

/// Seals generations whose span has passed, every [`TICK_INTERVAL`], so idle
/// namespaces rotate too, until `stop` is set or its sender dropped.
async fn tick(tracker: Tracker, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let t = tracker.clone();
        match tokio::task::spawn_blocking(move || t.tick()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sealing due generations failed; will retry"),
            Err(e) => tracing::error!(error = %e, "the ticker panicked"),
        }
    }
}
