//! Prometheus text exposition of the scoreboard and the listeners' accept
//! queues. Names keep the seed's meanings under the `sandgnat_` prefix.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::scoreboard::{
    Scoreboard, SlotState, BUCKETS, RESTART_REASONS, ROLE_RUNNER, ROLE_WORKER, ROUTES,
    RUNNER_KINDS, RUNNER_OUTCOMES, STATUSES, STATUS_SLOTS, STORE_DIRECTIONS, STORE_OPERATIONS,
    STORE_OUTCOMES,
};
use crate::worker::routes;

/// A listener and how many connections wait in its accept queue.
pub struct Pending<'a> {
    pub listener: &'a str,
    pub queued: Option<u32>,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn status_label(i: usize) -> String {
    STATUSES
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "other".to_string())
}

/// `sandgnat_node_info{node="..."} 1`: which node these figures are
/// from, to join on when several nodes are scraped (the name needs no
/// escaping: `config::is_node_name`).
pub fn node_info(node: &str) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "sandgnat_node_info",
        "gauge",
        "The node these metrics come from (node.name), always 1.",
    );
    let _ = writeln!(out, "sandgnat_node_info{{node=\"{node}\"}} 1");
    out
}

pub fn render(board: &Scoreboard, pending: &[Pending<'_>]) -> String {
    let mut out = String::with_capacity(8192);

    header(
        &mut out,
        "sandgnat_pending_connections",
        "gauge",
        "Connections waiting in a listener's accept queue.",
    );
    for p in pending {
        if let Some(n) = p.queued {
            let _ = writeln!(
                out,
                "sandgnat_pending_connections{{listener=\"{}\"}} {n}",
                p.listener
            );
        }
    }

    let live: Vec<usize> = board
        .child_slots()
        .filter(|&i| {
            let s = board.slot(i);
            s.role.load(Relaxed) == ROLE_WORKER && s.state() != SlotState::Free
        })
        .collect();
    header(
        &mut out,
        "sandgnat_workers",
        "gauge",
        "Worker processes by state.",
    );
    for (label, state) in [
        ("booting", SlotState::Booting),
        ("ready", SlotState::Ready),
        ("recycling", SlotState::Recycling),
    ] {
        let n = live
            .iter()
            .filter(|&&i| board.slot(i).state() == state)
            .count();
        let _ = writeln!(out, "sandgnat_workers{{state=\"{label}\"}} {n}");
    }
    type Field = fn(&crate::scoreboard::Slot) -> &std::sync::atomic::AtomicU64;
    let per_worker: [(&str, &str, Field); 3] = [
        (
            "sandgnat_worker_active_connections",
            "Open connections per worker.",
            |s| &s.active_connections,
        ),
        (
            "sandgnat_worker_max_connections",
            "Connection limit per worker (worker_connections).",
            |s| &s.max_connections,
        ),
        (
            "sandgnat_worker_pending_requests",
            "Requests in flight per worker.",
            |s| &s.in_flight,
        ),
    ];
    for (name, help, field) in per_worker {
        header(&mut out, name, "gauge", help);
        for &i in &live {
            let s = board.slot(i);
            let _ = writeln!(
                out,
                "{name}{{pid=\"{}\"}} {}",
                s.pid.load(Relaxed),
                field(s).load(Relaxed)
            );
        }
    }

    // Totals: the retired children's counters plus every live slot's.
    let slots: Vec<usize> = std::iter::once(0)
        .chain(
            board
                .child_slots()
                .filter(|&i| board.slot(i).state() != SlotState::Free),
        )
        .collect();
    let sum = |f: &dyn Fn(&crate::scoreboard::Slot) -> u64| -> u64 {
        slots.iter().map(|&i| f(board.slot(i))).sum()
    };

    header(
        &mut out,
        "sandgnat_requests_total",
        "counter",
        "Requests answered, by route and status.",
    );
    for r in 0..ROUTES.min(routes::ROUTES.len()) {
        for st in 0..STATUS_SLOTS {
            let n = sum(&|s| s.requests[r][st].load(Relaxed));
            if n > 0 {
                let _ = writeln!(
                    out,
                    "sandgnat_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                    routes::ROUTES[r],
                    status_label(st)
                );
            }
        }
    }

    header(
        &mut out,
        "sandgnat_request_duration_seconds",
        "histogram",
        "Time to answer a request, by route.",
    );
    for r in 0..ROUTES.min(routes::ROUTES.len()) {
        let count = sum(&|s| s.latency_count[r].load(Relaxed));
        if count == 0 {
            continue;
        }
        let route = routes::ROUTES[r];
        let mut cumulative = 0;
        for (b, le) in BUCKETS.iter().enumerate() {
            cumulative += sum(&|s| s.latency_buckets[r][b].load(Relaxed));
            let _ = writeln!(out, "sandgnat_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "sandgnat_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let total_us = sum(&|s| s.latency_sum_us[r].load(Relaxed));
        let _ = writeln!(
            out,
            "sandgnat_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            total_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "sandgnat_request_duration_seconds_count{{route=\"{route}\"}} {count}"
        );
    }

    header(
        &mut out,
        "sandgnat_bytes_received_total",
        "counter",
        "Request body bytes announced by clients.",
    );
    let _ = writeln!(
        out,
        "sandgnat_bytes_received_total {}",
        sum(&|s| s.bytes_received.load(Relaxed))
    );

    let h = board.header();
    header(
        &mut out,
        "sandgnat_rules_reload_failures_total",
        "counter",
        "Rule reloads (HUP) that failed to compile; the running rules stayed.",
    );
    let failures = h.rules_reload_failures.load(Relaxed);
    let _ = writeln!(out, "sandgnat_rules_reload_failures_total {failures}");
    header(
        &mut out,
        "sandgnat_rules_stale",
        "gauge",
        "1 when the last rules reload failed and older rules are in use.",
    );
    let stale = u8::from(!h.rules_error.load().is_empty());
    let _ = writeln!(out, "sandgnat_rules_stale {stale}");
    header(
        &mut out,
        "sandgnat_leftovers_removed_total",
        "counter",
        "Files a crash left behind (spool files, quarantine files no sample names), removed.",
    );
    for (i, kind) in crate::scoreboard::LEFTOVER_KINDS.iter().enumerate() {
        let n = h.leftovers_removed[i].load(Relaxed);
        let _ = writeln!(
            out,
            "sandgnat_leftovers_removed_total{{kind=\"{kind}\"}} {n}"
        );
    }
    header(
        &mut out,
        "sandgnat_storage_operations_total",
        "counter",
        "Sample-store operations (storage.backend) by operation and outcome (missing: no such object; error: failed).",
    );
    for (o, op) in STORE_OPERATIONS.iter().enumerate() {
        for (r, outcome) in STORE_OUTCOMES.iter().enumerate() {
            let n = h.store_operations[o][r].load(Relaxed);
            let _ = writeln!(
                out,
                "sandgnat_storage_operations_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "sandgnat_storage_bytes_total",
        "counter",
        "Sample bytes written to and read from the sample store.",
    );
    for (d, direction) in STORE_DIRECTIONS.iter().enumerate() {
        let n = h.store_bytes[d].load(Relaxed);
        let _ = writeln!(
            out,
            "sandgnat_storage_bytes_total{{direction=\"{direction}\"}} {n}"
        );
    }
    header(
        &mut out,
        "sandgnat_cluster_lead",
        "gauge",
        "1 while a process of this node runs the cluster's run-once work (queue maintenance, retention).",
    );
    let _ = writeln!(out, "sandgnat_cluster_lead {}", u8::from(leads(board)));
    header(
        &mut out,
        "sandgnat_database_durable",
        "gauge",
        "1 when the database syncs every commit (fsync and synchronous_commit on); absent until read.",
    );
    if let Some(d) = crate::store::durability::published(board) {
        let durable = u8::from(d == crate::store::durability::Durability::Durable);
        let _ = writeln!(out, "sandgnat_database_durable {durable}");
    }

    header(
        &mut out,
        "sandgnat_worker_restarts_total",
        "counter",
        "Workers replaced, by reason.",
    );
    for (i, reason) in RESTART_REASONS.iter().enumerate() {
        let n = board.header().restarts[i].load(Relaxed);
        let _ = writeln!(
            out,
            "sandgnat_worker_restarts_total{{reason=\"{reason}\"}} {n}"
        );
    }

    runners(&mut out, board);

    header(
        &mut out,
        "sandgnat_frontend_connections_refused_total",
        "counter",
        "Connections the front end refused at proxy.max_connections or max_connections_per_ip.",
    );
    for (i, reason) in crate::scoreboard::CONNECTION_REFUSALS.iter().enumerate() {
        let n = board.header().connections_refused[i].load(Relaxed);
        let _ = writeln!(
            out,
            "sandgnat_frontend_connections_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }

    header(
        &mut out,
        "sandgnat_frontend_heads_evicted_total",
        "counter",
        "Unfinished request heads the front end answered 503 and closed to stay within proxy.head_budget_bytes.",
    );
    let _ = writeln!(
        out,
        "sandgnat_frontend_heads_evicted_total {}",
        board.header().heads_evicted.load(Relaxed)
    );

    header(
        &mut out,
        "sandgnat_ratelimit_redis_fallbacks_total",
        "counter",
        "Rate-limit checks counted in process because Redis was unreachable.",
    );
    let _ = writeln!(
        out,
        "sandgnat_ratelimit_redis_fallbacks_total {}",
        board.header().ratelimit_fallbacks.load(Relaxed)
    );
    out
}

/// Whether the process the scoreboard names as holding the lead is one of
/// this node's live children (one that died holding it lost it with its
/// database session).
fn leads(board: &Scoreboard) -> bool {
    let pid = board.header().lead_pid.load(Relaxed);
    pid != 0
        && board.child_slots().any(|i| {
            let s = board.slot(i);
            s.state() != SlotState::Free && s.pid.load(Relaxed) == pid
        })
}

/// The job runners, apart from the workers: they serve no request, so
/// they appear in none of the `sandgnat_worker_*` series.
fn runners(out: &mut String, board: &Scoreboard) {
    let live: Vec<usize> = board
        .child_slots()
        .filter(|&i| {
            let s = board.slot(i);
            s.role.load(Relaxed) == ROLE_RUNNER && s.state() != SlotState::Free
        })
        .collect();
    header(
        out,
        "sandgnat_job_runners",
        "gauge",
        "Job-runner processes by state.",
    );
    for (label, state) in [("booting", SlotState::Booting), ("ready", SlotState::Ready)] {
        let n = live
            .iter()
            .filter(|&&i| board.slot(i).state() == state)
            .count();
        let _ = writeln!(out, "sandgnat_job_runners{{state=\"{label}\"}} {n}");
    }
    header(
        out,
        "sandgnat_job_runner_busy",
        "gauge",
        "1 while a job runner holds a job, per runner.",
    );
    for &i in &live {
        let s = board.slot(i);
        let pid = s.pid.load(Relaxed);
        if pid != 0 {
            let _ = writeln!(
                out,
                "sandgnat_job_runner_busy{{pid=\"{pid}\"}} {}",
                s.in_flight.load(Relaxed).min(1)
            );
        }
    }
    header(
        out,
        "sandgnat_job_runner_restarts_total",
        "counter",
        "Job runners replaced, by reason.",
    );
    for (i, reason) in RESTART_REASONS.iter().enumerate() {
        let n = board.header().runner_restarts[i].load(Relaxed);
        let _ = writeln!(
            out,
            "sandgnat_job_runner_restarts_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        out,
        "sandgnat_job_runner_jobs_total",
        "counter",
        "Jobs the runners let go of, by kind and outcome (lost: the lease ran out or was taken).",
    );
    for (k, kind) in RUNNER_KINDS.iter().enumerate() {
        for (o, outcome) in RUNNER_OUTCOMES.iter().enumerate() {
            let n = board.header().runner_jobs[k][o].load(Relaxed);
            let _ = writeln!(
                out,
                "sandgnat_job_runner_jobs_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
}
