//! The metrics listener role: a small child that serves Prometheus text on
//! `metrics.bind`, read straight from the scoreboard and the kernel. It
//! never asks a worker anything, so a hung pool still shows up in metrics.

pub mod queue;
pub mod render;

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::scoreboard::Scoreboard;
use crate::sockets::{backlog, FIRST_LISTENER_FD, WORKERS};

#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    #[arg(long)]
    pub slot: usize,
    #[arg(long)]
    pub master_pid: u32,
    /// Names of the listeners placed after the metrics socket, in order.
    #[arg(long, default_value = "")]
    pub listeners: String,
}

struct Watched {
    name: String,
    fd: OwnedFd,
}

pub fn run(args: MetricsArgs) -> ExitCode {
    let child = match crate::child::start("metrics-listener", "metrics", args.slot, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = child.restrict(args.master_pid) {
        return code;
    }
    let (board, settings) = (&child.board, &child.settings);
    // SAFETY: descriptors placed by the master for exactly these uses.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(FIRST_LISTENER_FD) };
    let watched: Vec<Watched> = args
        .listeners
        .split(',')
        .filter(|n| !n.is_empty())
        .enumerate()
        .map(|(i, name)| Watched {
            name: name.to_string(),
            // SAFETY: as above, one per name.
            fd: unsafe { OwnedFd::from_raw_fd(FIRST_LISTENER_FD + 1 + i as RawFd) },
        })
        .collect();
    let watched = Arc::new(watched);
    let queue_metrics = queue::QueueMetrics::default();
    let node_info: Arc<str> = render::node_info(&settings.node.name).into();
    let rt = match child.event_loop() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => return child.fail(format!("cannot use the metrics socket: {e}")),
        };
        // The heartbeat asks for a stop once the master is gone.
        let (trigger, mut orphaned) = crate::shutdown::channel();
        crate::child::ready(board, args.slot, args.master_pid, trigger, None);
        tokio::spawn(queue_metrics.clone().refresh(settings.clone()));
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => return child.fail(format!("cannot watch signals: {e}")),
            };
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                _ = term.recv() => return ExitCode::SUCCESS,
                _ = orphaned.requested() => return ExitCode::SUCCESS,
            };
            let board = board.clone();
            let watched = watched.clone();
            let queue_metrics = queue_metrics.clone();
            let node_info = node_info.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let board = board.clone();
                    let watched = watched.clone();
                    let queue_text = queue_metrics.text();
                    let node_info = node_info.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(answer(
                            &board,
                            &watched,
                            &[&node_info, &queue_text],
                            req,
                        ))
                    }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// `/metrics`: the scoreboard's and the kernel's figures, then the texts
/// kept apart (the node's name, the cached queue figures).
fn answer(
    board: &Scoreboard,
    watched: &[Watched],
    more: &[&str],
    req: Request<Incoming>,
) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(crate::api_error::body(
                "not_found",
                "metrics are at /metrics",
            )))
            .unwrap_or_default();
    }
    let pending: Vec<render::Pending<'_>> = watched
        .iter()
        .map(|w| render::Pending {
            listener: &w.name,
            queued: backlog::pending(w.fd.as_fd(), w.name == WORKERS).ok(),
        })
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Body::from(render::render(board, &pending) + &more.concat()))
        .unwrap_or_default()
}
