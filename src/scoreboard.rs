//! The scoreboard: a shared-memory table where every child publishes its
//! heartbeat and counters, and from which the master supervises and the
//! metrics listener renders, without ever sending a request to a worker.
//!
//! The master creates it (a sealed-size memfd) before the first spawn and
//! hands the descriptor to each child; all fields are atomics, so a child
//! that dies mid-write leaves nothing torn that matters. Slot 0 is the
//! master's own: restart counters and the totals of children that are gone,
//! so counters never go backwards when a worker is replaced.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// How often every child beats its slot from its event loop
/// (`crate::child::heartbeat`).
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a child may go without a beat and still count as live, able
/// to take work now: three beats, so that one beat late on a busy event
/// loop does not count a child as gone, and never longer than
/// `server.timeout`, past which the master aborts it anyway. The one
/// threshold of the front end's choice to answer 503 (`no_worker`), of
/// the peers a worker leaves connections to (`worker::balance`) and of
/// `/readyz`'s recorder check.
pub fn live_within_ms(server: &crate::config::Server) -> u64 {
    (3 * HEARTBEAT.as_millis() as u64).min(server.timeout.saturating_mul(1000))
}

/// Slots for children; slot 0 is reserved for the master's totals.
pub const SLOTS: usize = 600;
/// Routes tracked per slot; see `crate::worker::routes::ROUTES`.
pub const ROUTES: usize = 32;
/// Status codes tracked individually; the last index is "other".
pub const STATUSES: [u16; 31] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408, 409, 411,
    413, 414, 415, 422, 429, 431, 500, 501, 502, 503, 504, 507,
];
pub const STATUS_SLOTS: usize = STATUSES.len() + 1;
/// Upper bounds of the latency histogram, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// Why a child was replaced; the label of `sandgnat_worker_restarts_total`.
pub const RESTART_REASONS: [&str; 6] = [
    "timeout",
    "crash",
    "max_requests",
    "boot_error",
    "reload",
    "exit",
];
pub const ROLE_WORKER: u32 = 1;
pub const ROLE_METRICS: u32 = 2;
pub const ROLE_FRONTEND: u32 = 3;
pub const ROLE_RUNNER: u32 = 4;
pub const ROLE_RECORDER: u32 = 5;
/// Job kinds the runners count, and how a job they held ended: the labels
/// of `sandgnat_job_runner_jobs_total`.
pub const RUNNER_KINDS: [&str; 3] = ["static", "webhook", "other"];
pub const RUNNER_OUTCOMES: [&str; 4] = ["completed", "retried", "discarded", "lost"];
const RECENT: usize = 8;
const TEXT_WORDS: usize = 32;
const MAGIC: u64 = 0x5341_4e44_474e_4154; // "SANDGNAT"

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SlotState {
    Free = 0,
    Booting = 1,
    Ready = 2,
    /// The child decided to leave on its own (max_requests) and is draining.
    Recycling = 3,
    /// The child failed to boot and wrote why in `boot_error`.
    BootFailed = 4,
}

impl SlotState {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => SlotState::Booting,
            2 => SlotState::Ready,
            3 => SlotState::Recycling,
            4 => SlotState::BootFailed,
            _ => SlotState::Free,
        }
    }
}

/// Bytes of text stored in atomics, so readers never see undefined data.
#[repr(C)]
pub struct Text {
    len: AtomicU64,
    words: [AtomicU64; TEXT_WORDS],
}

impl Text {
    pub const CAPACITY: usize = TEXT_WORDS * 8;

    pub fn store(&self, s: &str) {
        let bytes = s.as_bytes();
        let n = bytes.len().min(Self::CAPACITY);
        for (i, word) in self.words.iter().enumerate() {
            let mut buf = [0u8; 8];
            let start = i * 8;
            if start < n {
                let end = (start + 8).min(n);
                buf[..end - start].copy_from_slice(&bytes[start..end]);
            }
            word.store(u64::from_le_bytes(buf), Relaxed);
            if start >= n {
                break;
            }
        }
        self.len.store(n as u64, Relaxed);
    }

    pub fn load(&self) -> String {
        let n = (self.len.load(Relaxed) as usize).min(Self::CAPACITY);
        let mut bytes = Vec::with_capacity(n);
        for word in &self.words {
            bytes.extend_from_slice(&word.load(Relaxed).to_le_bytes());
            if bytes.len() >= n {
                break;
            }
        }
        bytes.truncate(n);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[repr(C)]
pub struct RecentRequest {
    pub seq: AtomicU64,
    pub text: Text,
}

#[repr(C)]
pub struct Slot {
    pub state: AtomicU32,
    pub pid: AtomicU32,
    /// What the child is: see `ROLE_WORKER`, `ROLE_METRICS`.
    pub role: AtomicU32,
    /// Monotonic milliseconds of the last sign of life.
    pub heartbeat_ms: AtomicU64,
    pub active_connections: AtomicU64,
    pub max_connections: AtomicU64,
    pub in_flight: AtomicU64,
    pub handled: AtomicU64,
    /// Sequence number of the request whose future is being polled, 0 if none:
    /// a worker stuck inside a handler leaves this pointing at the culprit.
    pub polling_seq: AtomicU64,
    pub recent: [RecentRequest; RECENT],
    pub boot_error: Text,
    pub bytes_received: AtomicU64,
    pub requests: [[AtomicU64; STATUS_SLOTS]; ROUTES],
    pub latency_buckets: [[AtomicU64; BUCKETS.len()]; ROUTES],
    pub latency_count: [AtomicU64; ROUTES],
    pub latency_sum_us: [AtomicU64; ROUTES],
}

#[repr(C)]
pub struct Header {
    magic: AtomicU64,
    /// One past the highest slot ever claimed. Slots are claimed lowest
    /// first, so readers look at a handful of slots rather than all of
    /// them: a scan of every slot would touch, and keep mapped, the whole
    /// scoreboard in every process that makes it.
    claimed_end: AtomicUsize,
    pub restarts: [AtomicU64; RESTART_REASONS.len()],
    pub boot_failures: AtomicU64,
    /// Why the last rules reload failed; empty when the last one worked.
    pub rules_error: Text,
    pub rules_reload_failures: AtomicU64,
    /// Rate-limit checks counted in process because Redis did not answer.
    pub ratelimit_fallbacks: AtomicU64,
    /// Job runners replaced, by reason (kept apart from the workers').
    pub runner_restarts: [AtomicU64; RESTART_REASONS.len()],
    /// Jobs the runners finished, by kind and outcome.
    pub runner_jobs: [[AtomicU64; RUNNER_OUTCOMES.len()]; RUNNER_KINDS.len()],
    /// Whether the database keeps what it acknowledges (`store::durability`):
    /// 0 not known yet, 1 durable, 2 not durable, with why in the text.
    pub db_durability: AtomicU64,
    pub db_durability_reason: Text,
    /// Crash leftovers removed (`intake::leftovers`), by kind.
    pub leftovers_removed: [AtomicU64; LEFTOVER_KINDS.len()],
    /// Connections the front end refused at a cap (`frontend::conncap`),
    /// by cap.
    pub connections_refused: [AtomicU64; CONNECTION_REFUSALS.len()],
    /// Sample-store operations (`storage`), by operation and outcome.
    pub store_operations: [[AtomicU64; STORE_OUTCOMES.len()]; STORE_OPERATIONS.len()],
    /// Sample bytes written to and read from the store.
    pub store_bytes: [AtomicU64; STORE_DIRECTIONS.len()],
    /// The pid of this node's process that holds the cluster's lead
    /// (`crate::duties`), 0 when none does.
    pub lead_pid: AtomicU32,
    /// Request heads the front end closed to stay within
    /// `proxy.head_budget_bytes` (`frontend::headbudget`).
    pub heads_evicted: AtomicU64,
}

/// The kinds of leftovers, as the metric labels them: this node's spool
/// and quarantine files (`intake::leftovers`), and objects of the shared
/// bucket no sample names (`intake::store_leftovers`, counted by the node
/// whose lead removed them).
pub const LEFTOVER_KINDS: [&str; 3] = ["spool", "quarantine", "store"];

/// Sample-store operations, how they ended, and which way bytes went,
/// as `sandgnat_storage_*` label them.
pub const STORE_OPERATIONS: [&str; 5] = ["put", "head", "get", "delete", "probe"];
pub const STORE_OUTCOMES: [&str; 3] = ["ok", "missing", "error"];
pub const STORE_DIRECTIONS: [&str; 2] = ["written", "read"];

/// The front end's connection caps, as the metric labels them.
pub const CONNECTION_REFUSALS: [&str; 2] = ["max_connections", "max_connections_per_ip"];

/// A mapping of the scoreboard into this process.
pub struct Scoreboard {
    base: *mut u8,
    len: usize,
    fd: OwnedFd,
}

// The mapping is shared memory made only of atomics.
unsafe impl Send for Scoreboard {}
unsafe impl Sync for Scoreboard {}

fn slot_offset(index: usize) -> usize {
    let header = std::mem::size_of::<Header>().next_multiple_of(64);
    header + index * std::mem::size_of::<Slot>().next_multiple_of(64)
}

impl Scoreboard {
    /// Creates a new, zeroed scoreboard (master only).
    pub fn create() -> io::Result<Self> {
        let fd = crate::handover::anonymous_file(c"sandgnat-scoreboard")?;
        let len = slot_offset(SLOTS);
        File::from(fd.try_clone()?).set_len(len as u64)?;
        let board = Self::map(fd, len)?;
        board.header().magic.store(MAGIC, Relaxed);
        Ok(board)
    }

    /// Maps a scoreboard inherited from the master.
    pub fn attach(fd: OwnedFd) -> io::Result<Self> {
        let len = slot_offset(SLOTS);
        let actual = File::from(fd.try_clone()?).metadata()?.len() as usize;
        if actual != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("scoreboard is {actual} bytes, expected {len}: master and child binaries differ"),
            ));
        }
        let board = Self::map(fd, len)?;
        if board.header().magic.load(Relaxed) != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "descriptor is not a scoreboard",
            ));
        }
        Ok(board)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: mapping a memfd of exactly `len` bytes, shared, read-write.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Scoreboard {
            base: base.cast(),
            len,
            fd,
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header; all fields are atomics
        // and zero is a valid bit pattern for each.
        unsafe { &*(self.base as *const Header) }
    }

    pub fn slot(&self, index: usize) -> &Slot {
        assert!(index < SLOTS, "slot index out of range");
        // SAFETY: as for `header`; offsets are within `len` by construction.
        unsafe { &*(self.base.add(slot_offset(index)) as *const Slot) }
    }

    /// The master's totals of children that are gone.
    pub fn retired(&self) -> &Slot {
        self.slot(0)
    }

    /// A free child slot, marked as booting for `pid` 0 until the spawn.
    pub fn claim_slot(&self) -> Option<usize> {
        let claimed = (1..SLOTS).find(|&i| {
            self.slot(i)
                .state
                .compare_exchange(
                    SlotState::Free as u32,
                    SlotState::Booting as u32,
                    Relaxed,
                    Relaxed,
                )
                .is_ok()
        })?;
        self.header().claimed_end.fetch_max(claimed + 1, Relaxed);
        Some(claimed)
    }

    /// Every child slot that may be in use (slot 0 holds the totals).
    pub fn child_slots(&self) -> std::ops::Range<usize> {
        1..self.header().claimed_end.load(Relaxed).clamp(1, SLOTS)
    }

    /// Adds a dead child's counters to the totals and frees its slot.
    pub fn release_slot(&self, index: usize) {
        let slot = self.slot(index);
        let total = self.retired();
        total
            .handled
            .fetch_add(slot.handled.swap(0, Relaxed), Relaxed);
        total
            .bytes_received
            .fetch_add(slot.bytes_received.swap(0, Relaxed), Relaxed);
        for r in 0..ROUTES {
            for s in 0..STATUS_SLOTS {
                let n = slot.requests[r][s].swap(0, Relaxed);
                if n != 0 {
                    total.requests[r][s].fetch_add(n, Relaxed);
                }
            }
            for b in 0..BUCKETS.len() {
                let n = slot.latency_buckets[r][b].swap(0, Relaxed);
                if n != 0 {
                    total.latency_buckets[r][b].fetch_add(n, Relaxed);
                }
            }
            total.latency_count[r].fetch_add(slot.latency_count[r].swap(0, Relaxed), Relaxed);
            total.latency_sum_us[r].fetch_add(slot.latency_sum_us[r].swap(0, Relaxed), Relaxed);
        }
        for field in [
            &slot.active_connections,
            &slot.max_connections,
            &slot.in_flight,
            &slot.polling_seq,
            &slot.heartbeat_ms,
        ] {
            field.store(0, Relaxed);
        }
        for recent in &slot.recent {
            recent.seq.store(0, Relaxed);
        }
        slot.boot_error.store("");
        slot.pid.store(0, Relaxed);
        slot.role.store(0, Relaxed);
        slot.state.store(SlotState::Free as u32, Relaxed);
    }

    pub fn count_restart(&self, reason: &str) {
        if let Some(i) = RESTART_REASONS.iter().position(|r| *r == reason) {
            self.header().restarts[i].fetch_add(1, Relaxed);
        }
    }

    pub fn count_runner_restart(&self, reason: &str) {
        if let Some(i) = RESTART_REASONS.iter().position(|r| *r == reason) {
            self.header().runner_restarts[i].fetch_add(1, Relaxed);
        }
    }

    /// A runner finished a job of `kind` with `outcome` (unknown names are
    /// counted as `other` / ignored).
    pub fn count_runner_job(&self, kind: &str, outcome: &str) {
        let k = RUNNER_KINDS
            .iter()
            .position(|n| *n == kind)
            .unwrap_or(RUNNER_KINDS.len() - 1);
        if let Some(o) = RUNNER_OUTCOMES.iter().position(|n| *n == outcome) {
            self.header().runner_jobs[k][o].fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

impl Slot {
    pub fn state(&self) -> SlotState {
        SlotState::from_u32(self.state.load(Relaxed))
    }

    pub fn set_state(&self, state: SlotState) {
        self.state.store(state as u32, Relaxed);
    }

    pub fn beat(&self) {
        self.heartbeat_ms.store(monotonic_ms(), Relaxed);
    }

    /// Whether the child beat within `live_within_ms` (see there) before
    /// `now_ms`.
    pub fn is_live(&self, now_ms: u64, live_within_ms: u64) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms.load(Relaxed)) <= live_within_ms
    }

    /// Records that request `seq` started, described by `text`.
    pub fn note_request(&self, seq: u64, text: &str) {
        let entry = &self.recent[(seq as usize) % RECENT];
        entry.seq.store(0, Relaxed);
        entry.text.store(text);
        entry.seq.store(seq, Relaxed);
    }

    /// The request the worker was inside when it stopped answering, if known.
    pub fn stuck_request(&self) -> Option<String> {
        let seq = self.polling_seq.load(Relaxed);
        if seq == 0 {
            return None;
        }
        let entry = &self.recent[(seq as usize) % RECENT];
        (entry.seq.load(Relaxed) == seq).then(|| entry.text.load())
    }

    pub fn record(&self, route: usize, status: u16, seconds: f64) {
        let route = route.min(ROUTES - 1);
        let s = STATUSES
            .iter()
            .position(|&c| c == status)
            .unwrap_or(STATUSES.len());
        self.requests[route][s].fetch_add(1, Relaxed);
        if let Some(b) = BUCKETS.iter().position(|&le| seconds <= le) {
            self.latency_buckets[route][b].fetch_add(1, Relaxed);
        }
        self.latency_count[route].fetch_add(1, Relaxed);
        self.latency_sum_us[route].fetch_add((seconds * 1e6) as u64, Relaxed);
        self.handled.fetch_add(1, Relaxed);
    }
}

/// Milliseconds on the system-wide monotonic clock, comparable across processes.
pub fn monotonic_ms() -> u64 {
    monotonic().as_millis() as u64
}

/// The time on the system-wide monotonic clock (`CLOCK_MONOTONIC`), which
/// every process reads alike (unlike `Instant`, which hides its value):
/// heartbeats are compared across processes, and systemd is given it.
pub fn monotonic() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_truncates() {
        let board = Scoreboard::create().unwrap();
        let t = &board.slot(1).boot_error;
        t.store("cannot open rules");
        assert_eq!(t.load(), "cannot open rules");
        let long = "x".repeat(1000);
        t.store(&long);
        assert_eq!(t.load().len(), Text::CAPACITY);
        t.store("short");
        assert_eq!(t.load(), "short");
    }

    #[test]
    fn released_counters_move_to_totals() {
        let board = Scoreboard::create().unwrap();
        let i = board.claim_slot().unwrap();
        assert_eq!(i, 1);
        board.slot(i).record(2, 200, 0.002);
        board.slot(i).record(2, 999, 0.002);
        board.release_slot(i);
        assert_eq!(board.slot(i).state(), SlotState::Free);
        assert_eq!(board.retired().requests[2][0].load(Relaxed), 1);
        assert_eq!(board.retired().requests[2][STATUSES.len()].load(Relaxed), 1);
        assert_eq!(board.retired().latency_count[2].load(Relaxed), 2);
    }

    #[test]
    fn readers_look_only_at_slots_ever_claimed() {
        let board = Scoreboard::create().unwrap();
        assert!(board.child_slots().is_empty());
        let (a, b) = (board.claim_slot().unwrap(), board.claim_slot().unwrap());
        assert_eq!(board.child_slots(), 1..3);
        // A released slot is claimed again before any higher one.
        board.release_slot(a);
        assert_eq!(board.claim_slot(), Some(a));
        board.release_slot(b);
        assert_eq!(
            board.child_slots(),
            1..3,
            "the range never shrinks under a reader"
        );
    }

    #[test]
    fn stuck_request_is_the_one_being_polled() {
        let board = Scoreboard::create().unwrap();
        let slot = board.slot(3);
        slot.note_request(41, "GET /a");
        slot.note_request(42, "GET /b");
        assert_eq!(slot.stuck_request(), None);
        slot.polling_seq.store(41, Relaxed);
        assert_eq!(slot.stuck_request().as_deref(), Some("GET /a"));
    }

    /// Three checks used to disagree: the front end counted a worker live
    /// for 1.5 s after its last beat, a worker its peers for 2 s, and
    /// `/readyz` the recorder for 5 s. One threshold now, the strictest.
    #[test]
    fn a_child_is_live_for_three_beats_never_past_server_timeout() {
        let board = Scoreboard::create().unwrap();
        let slot = board.slot(1);
        let within = live_within_ms(&crate::config::Server::default());
        assert_eq!(within, 1_500);
        slot.heartbeat_ms.store(10_000, Relaxed);
        assert!(slot.is_live(10_000, within));
        assert!(slot.is_live(11_500, within));
        for silent in [1_501, 1_999, 4_999] {
            assert!(!slot.is_live(10_000 + silent, within), "{silent} ms");
        }
        let quick = crate::config::Server {
            timeout: 1,
            ..Default::default()
        };
        assert_eq!(live_within_ms(&quick), 1_000);
    }

    #[test]
    fn a_child_sees_what_the_master_wrote() {
        let board = Scoreboard::create().unwrap();
        board.slot(5).handled.store(7, Relaxed);
        let other = Scoreboard::attach(board.fd().try_clone().unwrap()).unwrap();
        assert_eq!(other.slot(5).handled.load(Relaxed), 7);
    }
}
