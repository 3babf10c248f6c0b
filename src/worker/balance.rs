//! Spreading connections over the workers.
//!
//! Every worker waits on the one shared socket; the kernel wakes them all
//! when a connection arrives and the first to call accept() wins, which is
//! usually the one already on a CPU. A burst of connects (a front end
//! filling its pool, a load balancer, 64 clients at once) then lands on one
//! or two workers, whose clients queue behind each other while the other
//! workers idle. gunicorn's sync workers never showed this: they hold one
//! connection each.
//!
//! So a worker that holds `SLACK` more connections than the least loaded
//! live worker lets a waiting connection sit for `DEFER` before taking it,
//! which is time enough for that worker's event loop to take it instead.
//! If nobody does (the peer is busy or stuck), this worker takes it: a
//! connection waits at most `DEFER` for the balance, never longer.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::scoreboard::{monotonic_ms, Scoreboard, SlotState, ROLE_WORKER};

/// Connections a worker may hold over the least loaded live worker before
/// it lets a new one go by.
pub const SLACK: u64 = 1;

/// How long a waiting connection is left to a less loaded worker.
pub const DEFER: Duration = Duration::from_millis(1);

/// Whether the worker in slot `me` should leave the next connection to a
/// less loaded peer. A peer that is not live (`scoreboard::live_within_ms`)
/// takes no part: a worker that stopped beating is not taking connections
/// either.
pub fn should_defer(board: &Scoreboard, me: usize, live_within_ms: u64) -> bool {
    let mine = board.slot(me).active_connections.load(Relaxed);
    if mine <= SLACK {
        return false;
    }
    let now = monotonic_ms();
    let least = board
        .child_slots()
        .filter(|&i| i != me)
        .map(|i| board.slot(i))
        .filter(|s| {
            s.role.load(Relaxed) == ROLE_WORKER
                && s.state() == SlotState::Ready
                && s.is_live(now, live_within_ms)
        })
        .filter_map(|s| {
            // Loaded once: the count the comparison and the minimum use.
            let active = s.active_connections.load(Relaxed);
            (active < s.max_connections.load(Relaxed)).then_some(active)
        })
        .min();
    least.is_some_and(|least| mine > least + SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: u64 = 1_500;

    fn worker(board: &Scoreboard, slot: usize, active: u64) {
        assert_eq!(
            board.claim_slot(),
            Some(slot),
            "slots are claimed lowest first"
        );
        let s = board.slot(slot);
        s.role.store(ROLE_WORKER, Relaxed);
        s.set_state(SlotState::Ready);
        s.max_connections.store(1000, Relaxed);
        s.active_connections.store(active, Relaxed);
        s.beat();
    }

    #[test]
    fn a_worker_ahead_of_a_live_peer_defers() {
        let board = Scoreboard::create().unwrap();
        worker(&board, 1, 5);
        worker(&board, 2, 1);
        assert!(should_defer(&board, 1, LIVE));
        assert!(!should_defer(&board, 2, LIVE));
        // Within the slack, nobody defers.
        board.slot(2).active_connections.store(4, Relaxed);
        assert!(!should_defer(&board, 1, LIVE));
    }

    #[test]
    fn peers_that_cannot_take_a_connection_do_not_count() {
        let board = Scoreboard::create().unwrap();
        worker(&board, 1, 5);
        // Alone: nobody to leave it to.
        assert!(!should_defer(&board, 1, LIVE));
        // A peer that stopped beating.
        worker(&board, 2, 0);
        board.slot(2).heartbeat_ms.store(0, Relaxed);
        assert!(!should_defer(&board, 1, LIVE));
        // A peer that is draining.
        worker(&board, 3, 0);
        board.slot(3).set_state(SlotState::Recycling);
        assert!(!should_defer(&board, 1, LIVE));
        // A peer at its worker_connections limit.
        worker(&board, 4, 2);
        board.slot(4).max_connections.store(2, Relaxed);
        assert!(!should_defer(&board, 1, LIVE));
        // A slot that is not a worker (the front end, a runner).
        worker(&board, 5, 0);
        board
            .slot(5)
            .role
            .store(crate::scoreboard::ROLE_FRONTEND, Relaxed);
        assert!(!should_defer(&board, 1, LIVE));
    }
}
