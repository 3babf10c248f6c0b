//! What the status page shows, gathered in one place: the processes from
//! the scoreboard, the accept queues from the kernel, the traffic from this
//! worker's samples, and the queues, latest analyses and rules. A part that
//! cannot be read (the database is down) is shown as such; the rest of the
//! page still renders.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::local::Local;
use super::rates::{Totals, Window};
use crate::auth::{Caller, Visibility};
use crate::export::view::{AnalysisRow, COLUMNS, FROM};
use crate::queue::QueueStats;
use crate::scoreboard::{
    monotonic_ms, Scoreboard, SlotState, ROLE_FRONTEND, ROLE_METRICS, ROLE_RECORDER, ROLE_RUNNER,
    ROLE_WORKER,
};

/// Latest analyses listed.
pub const RECENT: i64 = 20;

/// Bound on each database read of the page.
const DEADLINE: Duration = Duration::from_secs(3);

pub struct Process {
    pub role: &'static str,
    pub pid: u32,
    pub state: &'static str,
    pub heartbeat_age_ms: Option<u64>,
    pub active_connections: u64,
    pub max_connections: u64,
    pub in_flight: u64,
    pub handled: u64,
}

/// A listener and its accept queue (`None`: not readable here).
pub struct Backlog {
    pub listener: String,
    pub queued: Option<u32>,
}

pub struct Rules {
    pub source: String,
    pub count: usize,
    pub digest: String,
    pub loaded_at: DateTime<Utc>,
    /// Why the last reload failed (older rules are in use), if it did.
    pub reload_error: Option<String>,
    pub reload_failures: u64,
}

pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub processes: Vec<Process>,
    pub backlog: Vec<Backlog>,
    pub minutes: Vec<Window>,
    pub queues: Result<Vec<QueueStats>, String>,
    pub recent: Result<Vec<AnalysisRow>, String>,
    pub rules: Rules,
}

impl Snapshot {
    pub fn workers(&self) -> usize {
        self.processes
            .iter()
            .filter(|p| p.role == "worker" && p.state == "ready")
            .count()
    }
}

pub async fn gather(
    board: &Scoreboard,
    local: &Local,
    settings: &crate::config::Settings,
    db: &PgPool,
    caller: &Caller,
) -> Snapshot {
    let queues = crate::store::within(DEADLINE, async {
        crate::queue::stats(db).await.map_err(|e| match e {
            crate::queue::QueueError::Db(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        })
    })
    .await
    .map_err(unreadable);
    let recent = recent(db, caller).await.map_err(unreadable);
    let h = board.header();
    let reload_error = h.rules_error.load();
    Snapshot {
        now: Utc::now(),
        processes: processes(board),
        backlog: backlog(local, settings),
        minutes: local.rates.minutes(&Totals::read(board)),
        queues,
        recent,
        rules: Rules {
            source: local.rules_source.clone(),
            count: local.rules_count,
            digest: local.rules_digest.clone(),
            loaded_at: local.rules_loaded_at,
            reload_error: (!reload_error.is_empty()).then_some(reload_error),
            reload_failures: h.rules_reload_failures.load(Relaxed),
        },
    }
}

fn unreadable(e: sqlx::Error) -> String {
    if crate::store::is_unavailable(&e) {
        "the database is not answering".to_string()
    } else {
        format!("cannot read: {e}")
    }
}

/// The newest analyses the caller may see, through the shared rule.
async fn recent(db: &PgPool, caller: &Caller) -> Result<Vec<AnalysisRow>, sqlx::Error> {
    let vis = Visibility::of(caller);
    let sql = format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE {} ORDER BY a.created_at DESC, a.id DESC LIMIT $2",
        vis.sql("a", 1)
    );
    crate::store::within(
        DEADLINE,
        sqlx::query_as::<_, AnalysisRow>(&sql)
            .bind(vis.key_id())
            .bind(RECENT)
            .fetch_all(db),
    )
    .await
}

fn role_name(role: u32) -> &'static str {
    match role {
        ROLE_WORKER => "worker",
        ROLE_METRICS => "metrics",
        ROLE_FRONTEND => "front end",
        ROLE_RUNNER => "job runner",
        ROLE_RECORDER => "recorder",
        _ => "starting",
    }
}

fn state_name(s: SlotState) -> &'static str {
    match s {
        SlotState::Free => "free",
        SlotState::Booting => "booting",
        SlotState::Ready => "ready",
        SlotState::Recycling => "recycling",
        SlotState::BootFailed => "boot failed",
    }
}

/// Every live child, workers first.
fn processes(board: &Scoreboard) -> Vec<Process> {
    let now = monotonic_ms();
    let mut out: Vec<(u32, Process)> = board
        .child_slots()
        .map(|i| board.slot(i))
        .filter(|s| s.state() != SlotState::Free)
        .map(|s| {
            let role = s.role.load(Relaxed);
            let beat = s.heartbeat_ms.load(Relaxed);
            (
                role,
                Process {
                    role: role_name(role),
                    pid: s.pid.load(Relaxed),
                    state: state_name(s.state()),
                    heartbeat_age_ms: (beat != 0).then(|| now.saturating_sub(beat)),
                    active_connections: s.active_connections.load(Relaxed),
                    max_connections: s.max_connections.load(Relaxed),
                    in_flight: s.in_flight.load(Relaxed),
                    handled: s.handled.load(Relaxed),
                },
            )
        })
        .collect();
    out.sort_by_key(|(role, p)| (*role, p.pid));
    out.into_iter().map(|(_, p)| p).collect()
}

/// The workers' socket and the TCP listeners, whose
/// accept queues Linux shows in `/proc/net/tcp` to any process.
fn backlog(local: &Local, settings: &crate::config::Settings) -> Vec<Backlog> {
    let mut out = vec![Backlog {
        listener: "workers (Unix socket)".to_string(),
        queued: local
            .workers_socket
            .and_then(|ino| crate::sockets::backlog::unix_pending_by_inode(ino).ok()),
    }];
    let listening = tcp_listen_queues();
    let named = settings
        .proxy
        .bind
        .iter()
        .map(|b| ("TLS", b))
        .chain(settings.proxy.plain_bind.iter().map(|b| ("plain HTTP", b)))
        .chain(std::iter::once(("metrics", &settings.metrics.bind)));
    for (kind, bind) in named {
        let port = bind.parse::<std::net::SocketAddr>().ok().map(|a| a.port());
        let queued = port.and_then(|p| {
            let found: Vec<u32> = listening
                .iter()
                .filter(|(lp, _)| *lp == p)
                .map(|(_, q)| *q)
                .collect();
            (!found.is_empty()).then(|| found.iter().sum())
        });
        out.push(Backlog {
            listener: format!("{kind} {bind}"),
            queued,
        });
    }
    out
}

/// (port, accept queue) of every listening TCP socket in this network
/// namespace. For a listener the kernel reports its accept queue as
/// `rx_queue`. Through `/proc/self`: the unit's `ProcSubset=pid` hides
/// `/proc/net`.
fn tcp_listen_queues() -> Vec<(u16, u32)> {
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_listen_line)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn parse_listen_line(line: &str) -> Option<(u16, u32)> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    let queues = fields.next()?;
    if state != "0A" {
        return None;
    }
    let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
    let rx = u32::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
    Some((port, rx))
}

#[cfg(test)]
mod tests {
    use super::parse_listen_line;

    #[test]
    fn a_listening_line_gives_its_port_and_accept_queue() {
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listen_line(listen), Some((8080, 3)));
        let established = "   1: 0100007F:1F90 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000     0        0 12346 1";
        assert_eq!(parse_listen_line(established), None);
    }
}
