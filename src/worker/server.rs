//! The worker's HTTP/1.1 server: accepts on the shared Unix socket up to
//! `worker_connections` at a time (past that, connections wait in the
//! kernel's backlog where a less busy worker takes them), leaves a new
//! connection to a less loaded worker when it is ahead (`balance`), serves
//! each with keep-alive, and drains on a graceful stop.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::shared::Shared;
use super::{balance, WorkerArgs};
use crate::accesslog::AccessLogFormat;
use crate::config::Settings;
use crate::scoreboard::Scoreboard;
use crate::shutdown::{self, Shutdown};

pub struct Worker {
    shared: Arc<Shared>,
    shutdown: Shutdown,
}

impl Worker {
    pub fn new(
        settings: Settings,
        board: Arc<Scoreboard>,
        args: WorkerArgs,
        state: super::state::AppState,
    ) -> Self {
        let (trigger, shutdown) = shutdown::channel();
        // Validated by the master before it stored the settings.
        let access = AccessLogFormat::parse(&settings.log.access_log_format).unwrap_or_else(|_| {
            AccessLogFormat::parse(crate::accesslog::GUNICORN_ACCESS_LOG_FORMAT)
                .expect("default format parses")
        });
        let router = super::routes::router(state);
        let live_within_ms = crate::scoreboard::live_within_ms(&settings.server);
        Worker {
            shared: Arc::new(Shared {
                settings,
                board,
                slot_index: args.slot,
                access,
                router,
                seq: AtomicU64::new(0),
                max_requests: args.max_requests,
                trigger,
                pid: std::process::id(),
                live_within_ms,
            }),
            shutdown,
        }
    }

    pub async fn serve(self, listener: std::os::unix::net::UnixListener) -> Result<(), String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot use the workers' socket: {e}"))?;
        // SAFETY: the AsyncFd owns the listener, whose descriptor stays open
        // and the same until the AsyncFd is dropped.
        let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
            .map_err(|e| format!("cannot use the workers' socket: {e}"))?;
        let shared = self.shared.clone();
        // Registered before announcing readiness, so no TERM is missed.
        let signals =
            shutdown::Signals::register().map_err(|e| format!("cannot watch signals: {e}"))?;
        tokio::spawn(signals.watch(shared.trigger.clone(), "TERM: finishing in-flight requests"));

        let limit = shared.settings.server.worker_connections as usize;
        let permits = Arc::new(Semaphore::new(limit));
        shared.slot().max_connections.store(limit as u64, Relaxed);
        crate::child::ready(
            &shared.board,
            shared.slot_index,
            std::os::unix::process::parent_id(),
            shared.trigger.clone(),
            None,
        );
        tracing::info!(slot = shared.slot_index, "worker ready");

        let mut stop = self.shutdown.clone();
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.map_err(|e| e.to_string())?,
                _ = stop.requested() => break,
            };
            let stream = tokio::select! {
                r = accept(&listener, &shared) => match r {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.requested() => break,
            };
            tokio::spawn(connection(
                shared.clone(),
                stream,
                permit,
                Active::new(shared.clone()),
            ));
        }
        // Stop taking connections; the socket stays open in the master and
        // the other workers, so nothing waiting in the backlog is lost.
        drop(listener);
        let graceful = Duration::from_secs(shared.settings.server.graceful_timeout);
        let all = u32::try_from(limit).unwrap_or(u32::MAX);
        if tokio::time::timeout(graceful, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                open = shared.slot().active_connections.load(Relaxed),
                "graceful timeout passed with connections still open"
            );
        }
        tracing::info!("worker exiting");
        Ok(())
    }
}

/// Takes the next connection waiting on the shared socket, first leaving
/// it a moment to a less loaded worker (`balance` says why).
async fn accept(
    listener: &AsyncFd<std::os::unix::net::UnixListener>,
    shared: &Shared,
) -> std::io::Result<UnixStream> {
    loop {
        let mut ready = listener.readable().await?;
        if balance::should_defer(&shared.board, shared.slot_index, shared.live_within_ms) {
            tokio::time::sleep(balance::DEFER).await;
        }
        match ready.try_io(|l| l.get_ref().accept()) {
            Ok(Ok((stream, _))) => {
                stream.set_nonblocking(true)?;
                return UnixStream::from_std(stream);
            }
            Ok(Err(e)) => return Err(e),
            // Another worker took it; the readiness is cleared.
            Err(_would_block) => continue,
        }
    }
}

/// Counts a connection as active for as long as it lives. Taken at accept,
/// not when the connection's task first runs: the balance must see a
/// burst of connections this worker just took before it takes another.
struct Active(Arc<Shared>);

impl Active {
    fn new(shared: Arc<Shared>) -> Self {
        shared.slot().active_connections.fetch_add(1, Relaxed);
        Active(shared)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.slot().active_connections.fetch_sub(1, Relaxed);
    }
}

async fn connection(
    shared: Arc<Shared>,
    stream: UnixStream,
    _permit: OwnedSemaphorePermit,
    _active: Active,
) {
    let srv = &shared.settings.server;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(srv.keepalive > 0)
        .header_read_timeout(Duration::from_secs(srv.keepalive.max(1)))
        .max_headers(srv.limit_request_fields as usize);
    let svc_shared = shared.clone();
    let service =
        hyper::service::service_fn(move |req| super::request::handle(svc_shared.clone(), req));
    // A stop does not close the connection. The request in progress, and
    // any that comes on it from now on, is answered with `Connection:
    // close` (`request::handle`), after which hyper closes it. One that is
    // idle is left open: its last answer said keep-alive, so the front
    // end may be sending a request on it at this very moment, and a
    // request that meets a connection closing under it is lost in a way
    // the front end cannot tell from one the worker took and failed, so
    // it may not send it again. It ends on its own instead: the front end
    // lets go of an idle connection before `server.keepalive` (its pool's
    // idle time is shorter), and hyper's header timeout ends it then at
    // the latest. The accept loop bounds it all by `graceful_timeout`.
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
