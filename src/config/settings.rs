//! What the operator can set, with its defaults: the settings' types, as
//! read by `Sources::load` (`super`) and checked by `super::validate`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::redact::redact_url;
use crate::accesslog::GUNICORN_ACCESS_LOG_FORMAT;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub node: Node,
    pub server: Server,
    pub proxy: Proxy,
    pub intake: Intake,
    pub paths: Paths,
    pub storage: Storage,
    pub yara: Yara,
    pub database: Database,
    pub redis: Redis,
    pub queue: Queue,
    pub retention: Retention,
    pub metrics: Metrics,
    pub log: Log,
    pub debug: Debug,
}

/// This node among those that share one database: its name is on every
/// audit row and analysis it writes, every log line, its metrics and its
/// runners' leases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Node {
    /// Unset in the file: the host name.
    pub name: String,
}

impl Default for Node {
    fn default() -> Self {
        Node { name: host_name() }
    }
}

/// The kernel's host name, or `localhost` when it has none. From
/// uname(2), not `/proc/sys/kernel/hostname`, which the unit's
/// `ProcSubset=pid` hides.
pub fn host_name() -> String {
    let name = nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().trim().to_string())
        .unwrap_or_default();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// The worker pool: gunicorn's settings, same names, same meaning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub workers: u32,
    /// The Unix socket every worker accepts on.
    pub socket: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Seconds a worker may stay silent before it is aborted.
    pub timeout: u64,
    /// Seconds a stopping worker gets to finish its requests.
    pub graceful_timeout: u64,
    /// Seconds an idle keep-alive connection is kept open; 0 disables keep-alive.
    pub keepalive: u64,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub backlog: u32,
    /// Connections one worker serves at once; past it, connections wait in
    /// the shared backlog for a less busy worker.
    pub worker_connections: u32,
    pub limit_request_line: u32,
    pub limit_request_fields: u32,
    pub limit_request_field_size: u32,
    /// Consecutive worker boot failures after which the master gives up.
    pub max_boot_failures: u32,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            workers: 4,
            socket: PathBuf::from("/run/sandgnat/workers.sock"),
            user: None,
            group: None,
            timeout: 120,
            graceful_timeout: 30,
            keepalive: 5,
            max_requests: 0,
            max_requests_jitter: 0,
            backlog: 2048,
            worker_connections: 1000,
            limit_request_line: 4094,
            limit_request_fields: 100,
            limit_request_field_size: 8190,
            max_boot_failures: 5,
        }
    }
}

impl Server {
    /// The account workers run as when the master starts as root.
    pub fn effective_user(&self) -> &str {
        self.user.as_deref().unwrap_or("sandgnat")
    }

    pub fn effective_group(&self) -> &str {
        self.group
            .as_deref()
            .unwrap_or_else(|| self.effective_user())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Proxy {
    pub bind: Vec<String>,
    pub plain_bind: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted; checked before a worker sees a byte.
    pub max_body_bytes: u64,
    /// Seconds to wait for a worker's response (nginx `proxy_read_timeout`).
    pub read_timeout: u64,
    /// Seconds a client may stay silent while sending a body.
    pub body_timeout: u64,
    /// Seconds an idle keep-alive connection is kept open.
    pub idle_timeout: u64,
    /// Seconds a client has to send a whole request head (nginx
    /// `client_header_timeout`), counted from the connection's start for its
    /// first request and from the first byte for later ones.
    pub header_timeout: u64,
    /// Peers whose X-Forwarded-* headers are believed (gunicorn's
    /// `forwarded_allow_ips`); `*` trusts everyone.
    pub forwarded_allow_ips: Vec<String>,
    /// Requests per second allowed per client IP (0: no limit).
    pub rate_limit_per_ip: u32,
    /// Requests per second allowed per API key (0: no limit).
    pub rate_limit_per_key: u32,
    /// Connections one front end holds at once (0: no cap); over it, a new
    /// connection gets a 503 and is closed.
    pub max_connections: u64,
    /// Connections one client address (an IPv6 client: its /64) may hold
    /// at once (0: no cap).
    pub max_connections_per_ip: u64,
    /// Bytes all unfinished HTTP/1 request heads may hold together in one
    /// front end (0: no budget); over it, the slowest for its size is
    /// answered 503 and closed.
    pub head_budget_bytes: u64,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            bind: vec!["0.0.0.0:8443".into()],
            plain_bind: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 256 << 20,
            read_timeout: 150,
            body_timeout: 60,
            idle_timeout: 60,
            header_timeout: 30,
            forwarded_allow_ips: vec!["127.0.0.1".into(), "::1".into()],
            rate_limit_per_ip: 1000,
            rate_limit_per_key: 500,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            head_budget_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Intake {
    pub max_sample_bytes: u64,
    pub static_analysis_enabled: bool,
    /// A sample up to this size is received in memory, not in a spool
    /// file (0: always spool).
    pub memory_sample_bytes: u64,
    /// What one worker may hold in memory for samples being received at
    /// once; a sample that finds it spent is spooled.
    pub memory_budget_bytes: u64,
    /// Seconds a spool file, or a quarantine file no sample names, must be
    /// left untouched before it counts as a crash's leftover and is
    /// removed (`intake::leftovers`).
    pub leftover_age: u64,
    /// Seconds between two sweeps for leftovers (one also runs at start).
    pub leftover_sweep_interval: u64,
}

impl Default for Intake {
    fn default() -> Self {
        Intake {
            max_sample_bytes: 128 << 20,
            static_analysis_enabled: true,
            memory_sample_bytes: 1 << 20,
            memory_budget_bytes: 32 << 20,
            leftover_age: 3_600,
            leftover_sweep_interval: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Paths {
    pub state_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state_dir: PathBuf::from("/var/lib/sandgnat"),
        }
    }
}

/// Where accepted samples' bytes live (`crate::storage`). S3 credentials
/// are not settings: they come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), so this file and
/// `check-config` never hold them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// `local` (the quarantine below `paths.state_dir`, this node's own)
    /// or `s3` (one bucket every node shares).
    pub backend: String,
    /// The S3 endpoint's URL (`https://s3.example:443`); unset: AWS, by
    /// `region`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Keys are `<prefix>/aa/bb/<sha256>`; empty: `aa/bb/<sha256>`.
    pub prefix: String,
    /// `https://endpoint/bucket/key` (most S3-compatible servers) rather
    /// than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Allow an `http://` endpoint (samples and signed requests in the
    /// clear): for a store on loopback or a trusted network only.
    pub allow_http: bool,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: "local".into(),
            endpoint: None,
            bucket: String::new(),
            region: "us-east-1".into(),
            prefix: String::new(),
            path_style: true,
            allow_http: false,
        }
    }
}

impl Storage {
    pub fn is_s3(&self) -> bool {
        self.backend == "s3"
    }

    /// The TCP port the store is reached on (S3 only): the endpoint's, or
    /// 443 (AWS).
    pub fn port(&self) -> Option<u16> {
        if !self.is_s3() {
            return None;
        }
        let Some(endpoint) = &self.endpoint else {
            return Some(443);
        };
        let url: http::Uri = endpoint.parse().ok()?;
        url.port_u16().or(match url.scheme_str() {
            Some("http") => Some(80),
            _ => Some(443),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Yara {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_dir: Option<PathBuf>,
    pub scan_timeout: u64,
    /// How many parts the rules are also compiled in, so that one large
    /// sample is scanned on as many cores at once (each worker then holds
    /// the parts beside the whole set); 1: none, 0: one a core.
    pub scan_parts: usize,
    /// Samples at least this long are scanned by all parts at once (when
    /// there are parts); smaller ones by the whole set, on one core.
    pub parallel_scan_bytes: u64,
}

impl Default for Yara {
    fn default() -> Self {
        Yara {
            rules_dir: None,
            scan_timeout: 60,
            scan_parts: 1,
            parallel_scan_bytes: crate::scan::PARALLEL_FROM as u64,
        }
    }
}

impl Yara {
    /// `scan_parts`, with 0 made the cores this process may run on.
    pub fn parts(&self) -> usize {
        match self.scan_parts {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(crate::scan::MAX_PARTS)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// What the processes that serve requests (workers, recorder, job
    /// runners) and the commands that read or add rows connect as: a
    /// member of `sandgnat_service`, owning nothing (`store::role`).
    pub url: String,
    /// What `sandgnat migrate` and `serve`'s migration at start connect
    /// as: the schema's owner. Unset: `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate_url: Option<String>,
    /// Let the service run as the tables' owner or a superuser (for
    /// development only): otherwise `serve` refuses to start and
    /// `/readyz` answers 503.
    pub allow_owner: bool,
    /// Connections per process (each worker has its own pool).
    pub max_connections: u32,
    /// How long a request waits for a connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// How long a submission waits for the database to confirm its record
    /// (queueing for a recorder included) before answering 503.
    pub record_timeout_ms: u64,
}

impl Database {
    /// The URL migrations connect with.
    pub fn migrate_url(&self) -> &str {
        self.migrate_url.as_deref().unwrap_or(&self.url)
    }
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "postgres:///sandgnat".into(),
            migrate_url: None,
            allow_owner: false,
            max_connections: 8,
            acquire_timeout_ms: 1500,
            record_timeout_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Queue {
    /// Job-runner processes (static analysis, webhooks) the master keeps.
    pub runners: u32,
    /// Seconds a finished job stays in the jobs table before it is pruned
    /// (its result stays on the analysis).
    pub retention: u64,
    /// Seconds between maintenance passes (expired leases, pruning); one
    /// process at a time does it, across every node.
    pub maintenance_interval: u64,
    /// The lease a claim gets when the claimer does not ask for one.
    pub lease_seconds: u64,
    /// Upper bounds on what a claimer may ask for.
    pub max_lease_seconds: u64,
    pub max_wait_seconds: u64,
    pub max_claim_batch: u32,
    /// Retry backoff: `retry_base * 2^(attempt-1)` plus up to 25 % jitter,
    /// never more than `retry_cap` seconds.
    pub retry_base: f64,
    pub retry_cap: f64,
    /// Webhooks may go to loopback, link-local and private addresses.
    pub webhook_allow_private: bool,
    /// Secret for the webhooks' HMAC-SHA256 signature; unset: webhooks are
    /// sent unsigned and a warning is logged at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    pub webhook_timeout: u64,
    /// Deliveries one destination address may get per second from one
    /// runner; more wait for the next second (the job is put back, not
    /// dropped), so callbacks cannot make the appliance a reflector.
    pub webhook_per_host: u32,
    /// The queues an outside claimer (a bridge key over HTTP) may claim and
    /// hold; the others belong to the appliance's own runners, and a key
    /// that could claim them could, say, mark a webhook sent unsent.
    pub external: Vec<String>,
    pub analysis: QueueLimits,
    #[serde(rename = "static")]
    pub static_: QueueLimits,
    pub notify: QueueLimits,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            runners: 2,
            retention: 7 * 24 * 3600,
            maintenance_interval: 10,
            lease_seconds: 300,
            max_lease_seconds: 24 * 3600,
            max_wait_seconds: 60,
            max_claim_batch: 100,
            retry_base: 10.0,
            retry_cap: 3600.0,
            webhook_allow_private: false,
            webhook_secret: None,
            webhook_timeout: 10,
            webhook_per_host: 5,
            external: vec!["analysis".into()],
            analysis: QueueLimits {
                max_running: 8,
                max_attempts: 3,
            },
            static_: QueueLimits {
                max_running: 0,
                max_attempts: 3,
            },
            notify: QueueLimits {
                max_running: 0,
                max_attempts: 8,
            },
        }
    }
}

impl Queue {
    /// Whether claims and holder calls over HTTP may touch this queue.
    pub fn is_external(&self, queue: &str) -> bool {
        self.external.iter().any(|q| q == queue)
    }

    /// The limits of a named queue; queues the product does not create
    /// get no concurrency cap.
    pub fn limits(&self, queue: &str) -> QueueLimits {
        match queue {
            "analysis" => self.analysis.clone(),
            "static" => self.static_.clone(),
            "notify" => self.notify.clone(),
            _ => QueueLimits::default(),
        }
    }
}

/// How long samples' bytes are kept (`crate::retention`). The sample's
/// row, hashes, analyses and audit trail are kept whatever this says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Days after a sample was last submitted before its bytes are
    /// deleted, unless a job waiting or running still needs them; 0 keeps
    /// them forever.
    pub sample_days: u32,
    /// Seconds between two retention passes (one node at a time does it).
    pub interval: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            sample_days: 0,
            interval: 3_600,
        }
    }
}

/// Per-queue limits (`queue.analysis.max_running`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueLimits {
    /// Jobs running at once in this queue across every worker and node
    /// (e.g. the number of sandbox VMs); 0: bounded only by the claimers.
    pub max_running: u32,
    pub max_attempts: u32,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_running: 0,
            max_attempts: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    pub bind: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            bind: "127.0.0.1:8001".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `console` or `json`; unset means console on a terminal, else json.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `error`, `warn`, `info`, `debug` or `trace`, or a tracing filter.
    pub level: String,
    /// `-` for stdout, else a file path.
    pub access_log: String,
    /// `-` for stderr, else a file path.
    pub error_log: String,
    pub access_log_format: String,
    /// `never` (reopen on USR1, for logrotate), `hourly` or `daily`.
    pub rotation: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: None,
            level: "info".into(),
            access_log: "-".into(),
            error_log: "-".into(),
            access_log_format: GUNICORN_ACCESS_LOG_FORMAT.into(),
            rotation: "never".into(),
        }
    }
}

/// Fault injection for the supervision tests. Off by default; never enable
/// it on a node that takes real samples: it lets any client hang or crash a
/// worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Debug {
    /// Serve `/__debug/hang`, `/__debug/crash`, `/__debug/sleep?ms=N` and
    /// `/__debug/confined`;
    /// make the static analysis of a sample named `__debug_hang__` hang.
    pub fault_injection: bool,
    /// Make every worker fail while booting.
    pub fail_worker_boot: bool,
    /// Record submissions without enqueueing their jobs. For measuring what
    /// the queue costs the submit path (benches/queue.sh) only: analyses
    /// made this way never leave `queued`.
    pub no_enqueue: bool,
    /// Confine workers and job runners (seccomp, Landlock: `confine`).
    /// Turning it off is for debugging only and is logged as a warning.
    pub confine: bool,
}

impl Default for Debug {
    fn default() -> Self {
        Debug {
            fault_injection: false,
            fail_worker_boot: false,
            no_enqueue: false,
            confine: true,
        }
    }
}

impl Settings {
    /// The effective settings as TOML, with passwords in URLs replaced.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        shown.database.migrate_url = shown.database.migrate_url.as_deref().map(redact_url);
        shown.redis.url = shown.redis.url.as_deref().map(redact_url);
        if shown.queue.webhook_secret.is_some() {
            shown.queue.webhook_secret = Some("(hidden)".into());
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// How long before a worker's silence gets it aborted.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.server.timeout)
    }
}
