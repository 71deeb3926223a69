//! Serving until told to stop, then stopping without losing anything.
//!
//! On the first stop request (SIGTERM or SIGINT), in order:
//!
//! 1. **Drain.** `/readyz` answers 503 for `drain_delay` while every other route is
//!    still served and new connections are still accepted, so that load balancers
//!    see the node go unready and stop sending traffic before it stops listening.
//!    Every answer carries `Connection: close`, and a connection with nothing under
//!    way for 250 ms is closed, so that clients move to new connections while the
//!    listener is still open rather than send on one the close would cut (see
//!    `connection`, "Shutdown").
//! 2. **Close.** The listener closes, once the connections the kernel had already
//!    completed are accepted. A connection with no request under way gets 250 ms for
//!    a request already on its way, then closes; requests in progress finish and get
//!    their answers, with keep-alive turned off.
//! 3. After `shutdown_grace`, connections still open are dropped. A request whose
//!    client is dropped was either acknowledged or not; if not, the client retries
//!    elsewhere or after restart, which is what check-and-mark is for.
//! 4. The ticker stops, and tracker work still running on the blocking pool gets the
//!    rest of the grace period to finish.
//! 5. `tracker.close()` snapshots every open generation and flushes RocksDB, so the
//!    next start-up needs no scan.
//!
//! A second stop request at any point cuts the waiting short: connections are
//! dropped at once, tracker work still running gets at most [`FORCED_WAIT`], and the
//! tracker is closed (the clean flush). A third one while it closes stops waiting for
//! that too ([`Error::Interrupted`]): acknowledged marks are in the write-ahead log
//! either way, and the next start rebuilds the open filters from the exact tables.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use oncely::Tracker;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::connection::{self, Phase};
use super::tls::Tls;
use super::{AppState, TASK_PERMITS, TICK_INTERVAL, app};
use crate::Error;

/// After a second stop request, how long tracker work still running may take before
/// the tracker is closed regardless: a mark's write takes milliseconds, so this only
/// ever waits on a stalled store.
pub const FORCED_WAIT: Duration = Duration::from_secs(1);

/// How long each shutdown step may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownTiming {
    /// How long `/readyz` answers 503 before the listener closes.
    pub drain_delay: Duration,
    /// Then, how long requests in progress get to finish.
    pub grace: Duration,
}

/// Stop requests: the first begins a graceful shutdown, the second forces it, a
/// third stops waiting for the final flush.
#[derive(Debug)]
pub struct Stops {
    rx: mpsc::UnboundedReceiver<()>,
}

/// Sends stop requests to a [`Stops`].
#[derive(Clone, Debug)]
pub struct StopHandle(mpsc::UnboundedSender<()>);

impl StopHandle {
    /// Requests a stop (again).
    pub fn stop(&self) {
        let _ = self.0.send(());
    }
}

impl Stops {
    /// Stop requests from a handle (for tests and embedding).
    #[must_use]
    pub fn channel() -> (StopHandle, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (StopHandle(tx), Self { rx })
    }

    /// One stop request, when `shutdown` completes.
    pub fn after(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (handle, stops) = Self::channel();
        tokio::spawn(async move {
            shutdown.await;
            handle.stop();
        });
        stops
    }

    /// A stop request for each SIGINT (Ctrl-C) or SIGTERM. The handlers are
    /// installed before this returns, so a signal that arrives after it is never
    /// lost to the default action (which would end the process without a flush).
    #[must_use]
    pub fn os_signals() -> Self {
        let (handle, stops) = Self::channel();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{Signal, SignalKind, signal};
            let install = |kind: SignalKind, name: &'static str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for {name}");
                    None
                }
            };
            async fn next(s: &mut Option<Signal>) {
                if let Some(s) = s
                    && s.recv().await.is_some()
                {
                    return;
                }
                std::future::pending::<()>().await;
            }
            let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
            let mut terminate = install(SignalKind::terminate(), "SIGTERM");
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = next(&mut interrupt) => tracing::info!("SIGINT received"),
                        () = next(&mut terminate) => tracing::info!("SIGTERM received"),
                    }
                    handle.stop();
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C received");
                handle.stop();
            }
        });
        stops
    }

    /// The next stop request; never, once none can come.
    async fn next(&mut self) {
        if self.rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    Stops::os_signals().next().await;
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then shuts down
/// gracefully within `grace` (with no drain delay) and closes the tracker. See
/// [`run_with`].
///
/// # Errors
///
/// As [`run_with`].
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), Error> {
    let timing = ShutdownTiming {
        drain_delay: Duration::ZERO,
        grace,
    };
    run_with(listener, state, Stops::after(shutdown), timing).await
}

/// Serves [`app`] on `listener` until the first stop request, then shuts down as the
/// module describes and closes the tracker.
///
/// # Errors
///
/// [`Error::Serve`] when the runtime fails; [`Error::Close`] when the final flush
/// fails; [`Error::Interrupted`] when a third stop request ended the wait for it
/// (acknowledged marks are in the write-ahead log regardless).
pub async fn run_with(
    listener: TcpListener,
    state: AppState,
    stops: Stops,
    timing: ShutdownTiming,
) -> Result<(), Error> {
    run_faces(listener, None, None, state, stops, timing).await
}

/// The RESP face: its listener and the namespace `SET NX` marks in.
#[derive(Debug)]
pub struct RespFace {
    /// The bound RESP listener.
    pub listener: TcpListener,
    /// `resp_namespace`.
    pub namespace: String,
}

/// [`run_with`], with the RESP face beside HTTP when `resp` is given: both share
/// the state, the connection cap and the shutdown's phases (each connection of
/// either face is drained and closed as its protocol allows). With `tls`, both
/// faces serve TLS only.
///
/// # Errors
///
/// As [`run_with`].
pub async fn run_faces(
    listener: TcpListener,
    resp: Option<RespFace>,
    tls: Option<Tls>,
    state: AppState,
    mut stops: Stops,
    timing: ShutdownTiming,
) -> Result<(), Error> {
    let (tick_stop, tick_stop_rx) = watch::channel(false);
    let ticker = tokio::spawn(tick(state.clone(), tick_stop_rx));
    let (phase, phase_rx) = watch::channel(Phase::Serving);
    // One cap for the connections of both faces.
    let slots = Arc::new(Semaphore::new(state.limits().max_connections));
    let http = tokio::spawn(connection::serve(
        listener,
        app(state.clone()),
        phase_rx.clone(),
        state.limits().connections(),
        state.metrics_handle(),
        Arc::clone(&slots),
        tls.clone(),
    ));
    let resp = resp.map(|face| {
        let server = Arc::new(crate::resp::conn::Server::new(
            state.clone(),
            &face.namespace,
        ));
        tokio::spawn(crate::resp::conn::serve(
            face.listener,
            server,
            phase_rx.clone(),
            Arc::clone(&slots),
            tls,
        ))
    });
    let mut connections = tokio::spawn(async move {
        let served = http.await;
        if let Some(resp) = resp
            && let Err(e) = resp.await
        {
            tracing::error!(error = %e, "the RESP connection task failed");
        }
        served
    });

    stops.next().await;
    state.set_ready(false);
    let _ = phase.send(Phase::Draining);
    super::notify::notify("STOPPING=1\nSTATUS=draining");
    tracing::info!(
        drain_ms = millis(timing.drain_delay),
        grace_ms = millis(timing.grace),
        "shutting down: /readyz answers 503 while draining; a second signal stops at once"
    );
    let mut forced = false;
    tokio::select! {
        () = tokio::time::sleep(timing.drain_delay) => {}
        () = stops.next() => forced = true,
    }
    let deadline = Instant::now() + timing.grace;
    let mut finished = None;
    if !forced {
        let _ = phase.send(Phase::Closing);
        tracing::info!("no new connections; finishing requests in progress");
        tokio::select! {
            done = &mut connections => finished = Some(done),
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("grace period over: dropping connections still open");
            }
            () = stops.next() => forced = true,
        }
    }
    if forced {
        tracing::warn!("second signal: dropping connections and stopping now");
    }
    let _ = phase.send(Phase::Abort);
    let finished = match finished {
        Some(done) => done,
        None => connections.await,
    };
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => tracing::error!(error = %e, "the connection task failed"),
    }
    state.set_ready(false);

    let wait_until = if forced {
        deadline.min(Instant::now() + FORCED_WAIT)
    } else {
        deadline
    };
    // The ticker finishes a tick in progress before it sees the stop (a tick racing
    // `close` could seal a generation after its final snapshot).
    drop(tick_stop);
    if tokio::time::timeout_at(wait_until, ticker).await.is_err() {
        tracing::warn!("the ticker did not stop in time");
    }
    let tasks = Arc::clone(&state.inner.tasks);
    if tokio::time::timeout_at(wait_until, tasks.acquire_many_owned(TASK_PERMITS))
        .await
        .is_err()
    {
        tracing::warn!("tracker calls still running at the end of the wait; closing anyway");
    }

    let tracker = state.tracker().clone();
    let mut close = tokio::task::spawn_blocking(move || tracker.close());
    let closed = loop {
        tokio::select! {
            closed = &mut close => {
                break closed.map_err(|e| Error::Serve(std::io::Error::other(e)))?;
            }
            () = stops.next() => {
                if forced {
                    tracing::warn!(
                        "third signal: exiting without waiting for the final flush; acknowledged \
                         marks are in the write-ahead log, and the next start rebuilds the open \
                         filters"
                    );
                    return Err(Error::Interrupted);
                }
                forced = true;
                tracing::warn!("closing the tracker; signal again to exit without waiting for it");
            }
        }
    };
    closed.map_err(Error::Close)?;
    tracing::info!("stopped: tracker closed cleanly");
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Every [`TICK_INTERVAL`], until `stop` is set or its sender dropped: probes the
/// store (the server a PostgreSQL store is on, and the round trip, for the metrics);
/// seals generations whose span has passed (so idle namespaces rotate too), which
/// also writes the clock's heartbeat (or, on PostgreSQL, reaches the database) and
/// so tells, with no client writing, when a failing store has recovered; logs the
/// store's health when it changes; and logs the failures the failure log has only
/// counted.
async fn tick(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let s = state.clone();
        // The probe first: the tick's outcome is then the one readiness reports.
        let ticked = tokio::task::spawn_blocking(move || {
            s.store_watch().probe(s.tracker());
            s.tracker().tick()
        });
        match ticked.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                state.metrics().tick_failed();
                tracing::warn!(error = %e, "sealing due generations failed; will retry");
            }
            Err(e) => {
                state.metrics().tick_failed();
                tracing::error!(error = %e, "the ticker panicked");
            }
        }
        failing = log_storage_health(state.tracker(), failing);
        state.failures().flush();
    }
}

/// Logs a change of the store's write health; returns whether it fails now.
fn log_storage_health(tracker: &Tracker, was_failing: bool) -> bool {
    match (tracker.storage_failure(), was_failing) {
        (Some(f), false) => {
            tracing::warn!(
                since_ms = f.since.as_millis(),
                error = %f.error,
                "storage writes are failing: /readyz answers 503 until a write succeeds"
            );
            true
        }
        (None, true) => {
            tracing::info!("storage writes succeed again: /readyz answers 200");
            false
        }
        (now, _) => now.is_some(),
    }
}
