//! The front end role: TLS termination, request limits, forwarding headers
//! and rate limits in front of the workers' Unix socket, built on pingora's
//! HTTP proxy (rustls backend).
//!
//! It runs as a supervised child of the master, not inside it: pingora is
//! multi-threaded and the master must stay single-threaded (a child's
//! parent-death signal is bound to the forking thread), and a panic or a
//! leak here then costs one process that the master restarts. The master
//! keeps owning the public sockets, so a front end that dies or is
//! replaced on HUP loses no connection waiting in a backlog.
//!
//! So pingora is handed the inherited sockets instead of binding them:
//! the descriptors go into the `Fds` table pingora's listening service
//! takes, and the service runs on our own tokio runtime. That keeps
//! pingora's accept, TLS, HTTP/1, HTTP/2 and proxy machinery, while its
//! `Server` (daemonising, its own signal handling, its own upgrade
//! socket) stays out: the master already does those jobs. What this relies
//! on in pingora is listed in ARCHITECTURE.md.
//!
//! A new certificate is served by a new front end: on HUP the master checks
//! the pair with [`tls::load`] first and, only if it is good, starts a new
//! front end and retires the old one once the new one is ready.

pub mod answer;
pub mod conncap;
pub mod head;
pub mod headbudget;
pub mod limits;
pub mod proxy;
pub mod ratelimit;
pub mod tls;
pub mod whole;

use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Fds;
use pingora_core::services::listening::Service;
use pingora_core::services::Service as _;

use crate::sockets::FIRST_LISTENER_FD;

/// What the master tells the front end on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct FrontEndArgs {
    #[arg(long)]
    pub slot: usize,
    #[arg(long)]
    pub master_pid: u32,
    /// Names of the public listeners (`tls:<addr>`, `plain:<addr>`) at
    /// descriptors 5, 6, ... in order.
    #[arg(long, default_value = "")]
    pub listeners: String,
}

/// How long a retiring front end keeps serving connections it already
/// accepted before it looks at the in-flight count: past the grace its
/// idle connections get for a next request, with a margin for that
/// request's head to be counted.
const ACCEPTED_GRACE: Duration = head::DRAIN_GRACE.saturating_add(Duration::from_millis(500));

pub fn run(args: FrontEndArgs) -> ExitCode {
    let child = match crate::child::start("front-end", "frontend", args.slot, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let fail = |why: String| child.fail(why);
    let (board, settings) = (&child.board, &child.settings);
    // The key is read before privileges are dropped: it is usually
    // readable by root only.
    let (cert, key) = tls::pair_paths(settings);
    let tls_config = match tls::load(&cert, &key) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(code) = child.restrict(args.master_pid) {
        return code;
    }

    let fds = Arc::new(Mutex::new(Fds::new()));
    let conf = Arc::new(ServerConf::default());
    let mut proxy = pingora_proxy::http_proxy(&conf, proxy::FrontEnd::new(settings, board.clone()));
    // HTTP/1.1 keep-alive is set per request in `request_filter`;
    // HTTP/2 connections need their own idle bound. It is also HTTP/2's
    // deadline for a request's headers (ARCHITECTURE.md, behaviour of
    // dependencies): a fresh connection that opens no stream, or a header
    // block trickled in CONTINUATION frames, is closed after
    // proxy.header_timeout, as an HTTP/1 head is. (No stream exists yet,
    // so there is no request to answer with a 408.)
    let mut opts = pingora_core::apps::HttpServerOptions::default();
    let h2_idle = settings
        .proxy
        .idle_timeout
        .min(settings.proxy.header_timeout)
        .max(1);
    opts.h2_idle_timeout = Some(Duration::from_secs(h2_idle));
    proxy.server_options = Some(opts);
    proxy.h2_options = Some(h2_options());
    // Every HTTP/1 head goes through `head` before pingora parses it.
    let mut service = Service::new(
        "sandgnat front end".to_string(),
        conncap::Capped::new(
            head::HeadGuard::new(proxy, settings, board.clone()),
            settings,
            board.clone(),
        ),
    );
    for (i, name) in args
        .listeners
        .split(',')
        .filter(|n| !n.is_empty())
        .enumerate()
    {
        let fd = FIRST_LISTENER_FD + i as RawFd;
        // Tokio needs the socket non-blocking; the flag is on the shared
        // open file, which the master never accepts on.
        if let Err(e) = set_nonblocking(fd) {
            return fail(format!("cannot use listener {name}: {e}"));
        }
        let (kind, addr) = name.split_once(':').unwrap_or(("", name));
        fds.lock().add(addr.to_string(), fd);
        match kind {
            "tls" => {
                let mut tls = match TlsSettings::intermediate("", "") {
                    Ok(t) => t,
                    Err(e) => return fail(format!("cannot set up TLS: {e}")),
                };
                tls.set_cert_resolver(tls_config.cert_resolver.clone());
                tls.enable_h2();
                service.add_listener(ListenerConfig::tcp(addr).tls(tls).l4_buffer(l4_buffer()));
            }
            "plain" => service.add_listener(ListenerConfig::tcp(addr).l4_buffer(l4_buffer())),
            _ => return fail(format!("unknown listener {name}")),
        }
    }

    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sandgnat-fe")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the event loop: {e}")),
    };
    let graceful = Duration::from_secs(settings.server.graceful_timeout);
    let signals = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::quit())?,
            signal(SignalKind::interrupt())?,
        ))
    });
    let (mut term, mut quit, mut int) = match signals {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot watch signals: {e}")),
    };
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // The sockets already listen (the master bound them), so clients
        // that arrive before the accept loops start wait in the backlog.
        tokio::spawn(async move {
            service.start_service(Some(fds), stop_rx, 1).await;
        });
        // The heartbeat asks for a stop once the master is gone.
        let (trigger, mut orphaned) = crate::shutdown::channel();
        crate::child::ready(board, args.slot, args.master_pid, trigger, None);
        tracing::info!(
            cert = %cert.display(),
            sha256 = tls::file_fingerprint(&cert).unwrap_or_default(),
            "front end ready"
        );
        let graceful_stop = tokio::select! {
            _ = term.recv() => true,
            _ = orphaned.requested() => true,
            _ = quit.recv() => false,
            _ = int.recv() => false,
        };
        // Stop accepting; connections already open finish their request,
        // answered `Connection: close` (HTTP/2: GOAWAY, then the streams
        // already open are finished), and a kept-alive one gets
        // `head::DRAIN_GRACE` to send the request that may be on its way.
        proxy::DRAINING.store(true, Relaxed);
        let _ = stop_tx.send(true);
        if graceful_stop {
            let deadline = Instant::now() + graceful;
            // Requests are counted once their head is read; a connection
            // accepted just before the stop may still be in its TLS
            // handshake, and a kept-alive one may be sending its next head
            // until its grace ends. Count in-flight work only after that.
            tokio::time::sleep(ACCEPTED_GRACE.min(graceful)).await;
            while proxy::IN_FLIGHT.load(Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tracing::info!(graceful = graceful_stop, "front end leaving");
        ExitCode::SUCCESS
    })
}

/// HTTP/2 flow-control windows for what clients send us. With h2's small
/// default window an upload moves one window per round trip, far slower
/// than the same upload over HTTP/1.1. A larger stream window closes most
/// of that gap; larger still bought no speed and let one upload grow the
/// front end's memory (benches/RESULTS.md, the front end's runs). Window
/// is handed back only as the body is read, and it is read only as fast as
/// the worker takes it, so what one connection can make us hold stays
/// bounded by the connection window.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONNECTION_WINDOW: u32 = 2 << 20;

/// HTTP/2's settings: the windows above. The header list keeps pingora's
/// own cap, which bounds what a stream's headers can make us hold; a list
/// over it gets h2's own 431, without our JSON body. Everything under it
/// meets gunicorn's limits in `request_filter` (`limits::check_decoded`),
/// answered as over HTTP/1.
fn h2_options() -> pingora_core::protocols::http::v2::server::H2Options {
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.initial_window_size(H2_STREAM_WINDOW);
    h2.initial_connection_window_size(H2_CONNECTION_WINDOW);
    h2
}

/// Pingora reads every connection through a buffer of its own, 64 KiB by
/// default, allocated per connection and kept for its life: whatever a
/// client sent lies there a second time (a head in progress included),
/// and its pages stay resident. Reads as large as the buffer bypass it
/// (HTTP/1 bodies), so only small reads (heads, TLS records, which rustls
/// takes a few KiB at a time) go through it; one TLS record's worth is
/// enough for those.
const L4_READ_BUFFER: usize = 16 << 10;

fn l4_buffer() -> L4BufferSettings {
    L4BufferSettings::default().read(L4_READ_BUFFER)
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    // SAFETY: the descriptor was placed by the master and lives as long as
    // this process.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(borrowed.as_raw_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(borrowed.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}
