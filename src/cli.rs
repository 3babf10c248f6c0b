//! The command line: operator commands (`serve`, `check-config`), the
//! analyst's client (`submit`, `lookup`, in `crate::client`) and the
//! internal roles the master starts (`worker`, `metrics-listener`,
//! `front-end`, `job-runner`). Flags are the highest-precedence settings source.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Settings, Sources};
use crate::master::{Arbiter, Launch};
use crate::sockets::Inherited;

/// Exit code for bad settings, as `check-config` promises.
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "sandgnat",
    version,
    about = "Malware-sample intake appliance: TLS front end, supervised workers, YARA, audit log, job queue",
    long_about = "Malware-sample intake appliance.\n\n\
Settings come from built-in defaults, then /etc/sandgnat/sandgnat.toml (or --config), \
then SANDGNAT_<SECTION>__<KEY> environment variables (and the seed's DATABASE_URL, REDIS_URL, \
INTAKE_MAX_SAMPLE_BYTES, STATIC_ANALYSIS_ENABLED, PROMETHEUS_METRICS_EXPORT_PORT), then flags.\n\n\
Signals to the master (gunicorn's): HUP reload, TERM graceful stop, INT/QUIT fast stop, \
TTIN/TTOU one worker more/fewer, USR1 reopen log files, USR2 binary upgrade."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// Settings file (TOML); default /etc/sandgnat/sandgnat.toml if present.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance in the foreground (the master).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Public TLS address (proxy.bind); may be repeated.
        #[arg(long, short = 'b', value_name = "ADDR")]
        bind: Vec<String>,
        /// Number of worker processes (server.workers).
        #[arg(long, short = 'w', value_name = "N")]
        workers: Option<u32>,
        /// Sockets handed over by an old master (binary upgrade only).
        #[arg(long, hide = true)]
        inherit: Option<String>,
        /// Pipe to report readiness to an old master (binary upgrade only).
        #[arg(long, hide = true)]
        upgrade_pipe: Option<i32>,
        /// Do not apply database migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply database migrations.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage API keys.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The job queue.
    Queue {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Samples kept on this node's store.
    Samples {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: SamplesAction,
    },
    /// Print the change feed from the database, as `GET
    /// /v1/export/analyses` serves it (every analysis, TLP:RED included):
    /// one line per analysis changed after CURSOR, then a line with the
    /// cursor to resume from.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Resume after this cursor (from a previous run's last line).
        #[arg(long, value_name = "CURSOR")]
        since: Option<String>,
        /// At most this many analyses.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// ndjson: the analyses as the API shows them; stix: one STIX 2.1
        /// bundle per line, as `GET /v1/analyses/{id}/stix` answers it.
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
    },
    /// YARA rules.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Send samples to an appliance over its API (key from
    /// SANDGNAT_API_KEY or --key-file); exit 0 all accepted, 1 some
    /// refused, 2 a usage or connection error.
    Submit(crate::client::SubmitArgs),
    /// Show what an appliance knows of a sample, by md5, sha1 or sha256;
    /// exit 1 if it knows nothing.
    Lookup(crate::client::LookupArgs),
    /// Print the effective settings as TOML, secrets hidden; exit 2 on a bad value.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Internal: a worker process, started by the master.
    #[command(hide = true)]
    Worker(crate::worker::WorkerArgs),
    /// Internal: the TLS front end, started by the master.
    #[command(hide = true, name = "front-end")]
    FrontEnd(crate::frontend::FrontEndArgs),
    /// Internal: the metrics listener, started by the master.
    #[command(hide = true, name = "metrics-listener")]
    MetricsListener(crate::metrics::MetricsArgs),
    /// Internal: a job runner (static analysis, webhooks), started by the master.
    #[command(hide = true, name = "job-runner")]
    JobRunner(crate::runner::RunnerArgs),
    /// Internal: the recorder (writes every worker's submissions), started by the master.
    #[command(hide = true, name = "recorder")]
    Recorder(crate::recorder::RecorderArgs),
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print it (only it) on stdout; it is shown once.
    Create {
        #[arg(long)]
        name: String,
        /// submitter, reader, bridge or admin.
        #[arg(long)]
        role: String,
    },
    /// List keys (never their secret).
    List,
    /// Revoke a key by name; every worker refuses it within 5 seconds.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Jobs per queue and state, and the age of the oldest claimable job.
    Stats {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SamplesAction {
    /// Delete a sample's bytes now (as retention.sample_days does when it
    /// is due); its record, hashes, analyses and audit trail stay. Prints
    /// the outcome as JSON; exit 1 if there is no such sample or a job
    /// waiting or running still needs it.
    Purge { sha256: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Ndjson,
    Stix,
}

#[derive(Subcommand)]
enum RulesAction {
    /// Compile a rules directory (default: yara.rules_dir, else the bundled
    /// rules); print errors with file and line; exit 1 on any error.
    Check {
        dir: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn load_settings(file: Option<PathBuf>) -> Result<Settings, ExitCode> {
    Sources {
        file,
        overrides: vec![],
    }
    .load()
    .map_err(|e| {
        eprintln!("sandgnat: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

/// Runs one async operator command on a small runtime.
fn block_on<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("sandgnat: cannot start a runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A pool as the service (`database.url`) on a current schema; pending
/// migrations are applied as the owner (`database.migrate_url`) first.
async fn connect_migrated(settings: &Settings) -> Result<sqlx::PgPool, ExitCode> {
    crate::store::connect_current(settings).await.map_err(|e| {
        eprintln!(
            "sandgnat: {e} (database.url = {}, database.migrate_url = {})",
            crate::config::redact_url(&settings.database.url),
            crate::config::redact_url(settings.database.migrate_url()),
        );
        ExitCode::FAILURE
    })
}

/// `sandgnat migrate`: always runs the migrator as the owner, so that it
/// also checks what was applied against what this binary carries.
async fn migrate_as_owner(settings: &Settings) -> Result<(), crate::store::StoreError> {
    let pool = crate::store::connect_owner(settings).await?;
    let applied = crate::store::migrate(&pool).await;
    pool.close().await;
    applied
}

fn export_cmd(
    settings: Settings,
    since: Option<String>,
    limit: Option<u64>,
    format: ExportFormat,
) -> ExitCode {
    use crate::export::cursor::FeedPosition;
    use crate::export::feed::{closing_line, Feed};
    use std::io::Write;
    let from = match since.as_deref().map(FeedPosition::decode).transpose() {
        Ok(from) => from.unwrap_or(FeedPosition::START),
        Err(e) => {
            eprintln!("sandgnat: --since: {e}");
            return ExitCode::from(2);
        }
    };
    block_on(async move {
        let pool = match connect_migrated(&settings).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        let vis = crate::auth::Visibility::operator();
        let mut feed = match Feed::start(pool.clone(), vis, from, limit.unwrap_or(u64::MAX)).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("sandgnat: cannot read the feed: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut count = 0u64;
        while !feed.is_done() {
            let chunk = match feed.next_chunk().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "sandgnat: the feed stopped: {e}; resume from the last cursor printed"
                    );
                    return ExitCode::FAILURE;
                }
            };
            for change in &chunk {
                let line = match format {
                    ExportFormat::Ndjson => change.line(),
                    ExportFormat::Stix => match stix_line(&pool, change, &vis).await {
                        Ok(bundle) => bundle,
                        Err(e) => {
                            eprintln!(
                                "sandgnat: analysis {}: {}; resume from the last cursor printed",
                                change.analysis.id, e.message
                            );
                            return ExitCode::FAILURE;
                        }
                    },
                };
                if writeln!(out, "{line}").is_err() {
                    return ExitCode::FAILURE;
                }
            }
            count += chunk.len() as u64;
        }
        let closing = closing_line(feed.position(), count);
        if writeln!(out, "{closing}")
            .and_then(|_| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    })
}

/// One feed line as a STIX bundle, nothing added, so every line is a
/// document any STIX consumer takes; the closing line carries the cursor.
async fn stix_line(
    pool: &sqlx::PgPool,
    change: &crate::export::feed::Change,
    vis: &crate::auth::Visibility,
) -> Result<serde_json::Value, crate::api_error::ApiError> {
    use crate::export::{stix, stix_route};
    let name = stix_route::sample_name(pool, &change.analysis, vis).await?;
    let objects = stix::objects(&change.analysis, name.as_deref()).map_err(|e| {
        crate::api_error::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "stix_failed",
            e.to_string(),
        )
    })?;
    Ok(stix::bundle(uuid::Uuid::new_v4(), objects))
}

fn queue_cmd(settings: Settings, action: QueueAction) -> ExitCode {
    let QueueAction::Stats { json } = action;
    block_on(async move {
        let pool = match connect_migrated(&settings).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        let stats = match crate::queue::stats(&pool).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sandgnat: {e}");
                return ExitCode::FAILURE;
            }
        };
        if json {
            println!("{}", serde_json::json!({ "queues": stats }));
        } else {
            println!(
                "{:<10} {:<10} {:>8} {:>12}",
                "QUEUE", "STATE", "JOBS", "OLDEST(s)"
            );
            for s in &stats {
                let oldest = s
                    .oldest_available_seconds
                    .map_or("-".to_string(), |v| format!("{v:.1}"));
                println!(
                    "{:<10} {:<10} {:>8} {:>12}",
                    s.queue, s.state, s.jobs, oldest
                );
            }
        }
        ExitCode::SUCCESS
    })
}

/// `sandgnat samples purge`: the purge the API's `DELETE
/// /v1/samples/{sha256}/content` makes, recorded as the operator's
/// (`cli:<user>`), on this node's sample store (its quarantine, or the
/// bucket: the S3 credentials must be in the environment).
fn samples_cmd(settings: Settings, action: SamplesAction) -> ExitCode {
    let SamplesAction::Purge { sha256 } = action;
    let sha256 = sha256.to_ascii_lowercase();
    if !crate::storage::is_sha256(&sha256) {
        eprintln!("sandgnat: {sha256:?} is not a sha256 (64 hex digits)");
        return ExitCode::from(2);
    }
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| nix::unistd::getuid().to_string(), |u| u.name);
    block_on(async move {
        let pool = match connect_migrated(&settings).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        let actor_name = format!("cli:{user}");
        let actor = crate::analyses::status::Actor {
            name: &actor_name,
            request_id: None,
        };
        let why = serde_json::json!({ "reason": "request", "user": user });
        let store = match crate::storage::SampleStore::from_settings(
            &settings,
            crate::storage::Meter::default(),
        ) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sandgnat: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        };
        match crate::retention::purge(&pool, &store, &sha256, &actor, why).await {
            Ok(purged) => {
                println!("{}", crate::retention::route::answer(&sha256, &purged));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sandgnat: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn keys(settings: Settings, action: KeysAction) -> ExitCode {
    block_on(async move {
        let pool = match connect_migrated(&settings).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        let result = match action {
            KeysAction::Create { name, role } => crate::auth::create_key(&pool, &name, &role)
                .await
                .map(|key| println!("{key}")),
            KeysAction::List => crate::auth::list_keys(&pool).await.map(|keys| {
                println!(
                    "{:<24} {:<10} {:<12} {:<25} REVOKED",
                    "NAME", "ROLE", "PREFIX", "CREATED"
                );
                for k in keys {
                    println!(
                        "{:<24} {:<10} {:<12} {:<25} {}",
                        k.name,
                        k.role,
                        k.prefix,
                        k.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                        k.revoked_at
                            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }),
            KeysAction::Revoke { name } => crate::auth::revoke_key(&pool, &name)
                .await
                .map(|_| eprintln!("revoked {name}")),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sandgnat: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn rules_check(dir: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let dir = match dir {
        Some(d) => Some(d),
        None => match load_settings(config) {
            Ok(s) => crate::scan::rules_dir(s.yara.rules_dir.as_deref()),
            Err(code) => return code,
        },
    };
    match crate::scan::check(dir.as_deref()) {
        Ok(c) if c.refused.is_empty() => {
            println!("ok: {} file(s) from {}", c.files, c.source);
            ExitCode::SUCCESS
        }
        Ok(c) => {
            for e in &c.refused {
                eprintln!("sandgnat: {e}");
            }
            eprintln!(
                "sandgnat: {} of {} file(s) from {} refused by {}",
                c.refused.len(),
                c.files,
                c.source,
                crate::scan::ENGINE
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("sandgnat: {e}");
            ExitCode::from(1)
        }
    }
}

/// `serve` applies pending migrations first, as the owner, unless told
/// not to. A database that is down now is not fatal: `/readyz` reports it
/// until it is back. A current schema is left alone, so a `migrate_url`
/// that is the service's own role (the package's layout: its post-install
/// migrates) costs one query, not a warning.
fn migrate_at_start(settings: &Settings) {
    let outcome = block_on(async {
        let attempt = async {
            let pool = crate::store::connect_owner(settings).await?;
            let version = crate::store::schema_version(&pool).await;
            let applied = match version {
                Ok(v) if v >= crate::store::latest_migration() => Ok(()),
                _ => crate::store::migrate(&pool).await,
            };
            pool.close().await;
            applied
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), attempt).await {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "migrations not applied at start; /readyz reports it until the database is back");
                ExitCode::FAILURE
            }
            Err(_) => {
                tracing::warn!(
                    "migrations timed out at start; /readyz reports it until the database is back"
                );
                ExitCode::FAILURE
            }
        }
    });
    let _ = outcome;
}

/// Whether `serve` may start: not as the tables' owner or a superuser
/// unless `database.allow_owner`. A refusal is a settings error (exit 2):
/// `/readyz` alone would not do, as the front end hands requests to the
/// workers whatever a balancer makes of it. A database that cannot be
/// asked now is not a refusal: `/readyz` asks again.
fn role_allowed(settings: &Settings) -> bool {
    if settings.database.allow_owner {
        return true;
    }
    block_on(async {
        let ask = async {
            let pool = crate::store::connect(settings).await?;
            let standing = crate::store::role::standing(&pool).await;
            pool.close().await;
            standing.map_err(crate::store::StoreError::Query)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), ask).await {
            Ok(Ok(standing)) => match crate::store::role::refusal(false, &standing) {
                Some(by) => {
                    tracing::error!(role = %by, "{}", crate::store::role::FIX);
                    eprintln!(
                        "sandgnat: the database role {by}: {}",
                        crate::store::role::FIX
                    );
                    ExitCode::FAILURE
                }
                None => ExitCode::SUCCESS,
            },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot check the database role at start; /readyz checks it");
                ExitCode::SUCCESS
            }
            Err(_) => {
                tracing::warn!("checking the database role timed out at start; /readyz checks it");
                ExitCode::SUCCESS
            }
        }
    }) == ExitCode::SUCCESS
}

pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            bind,
            workers,
            inherit,
            upgrade_pipe,
            no_migrate,
        } => {
            let mut overrides = Vec::new();
            if !bind.is_empty() {
                overrides.push(("proxy.bind".to_string(), bind.join(",")));
            }
            if let Some(n) = workers {
                overrides.push(("server.workers".to_string(), n.to_string()));
            }
            let sources = Sources {
                file: config.config,
                overrides,
            };
            serve(
                sources,
                argv[1..].to_vec(),
                inherit,
                upgrade_pipe,
                !no_migrate,
            )
        }
        Command::Migrate { config } => {
            let settings = match load_settings(config.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            block_on(async move {
                match migrate_as_owner(&settings).await {
                    Ok(()) => {
                        println!(
                            "migrations applied (schema version {})",
                            crate::store::latest_migration()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!(
                            "sandgnat: {e} (database.migrate_url = {})",
                            crate::config::redact_url(settings.database.migrate_url())
                        );
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Keys { config, action } => match load_settings(config.config) {
            Ok(s) => keys(s, action),
            Err(code) => code,
        },
        Command::Queue { config, action } => match load_settings(config.config) {
            Ok(s) => queue_cmd(s, action),
            Err(code) => code,
        },
        Command::Samples { config, action } => match load_settings(config.config) {
            Ok(s) => samples_cmd(s, action),
            Err(code) => code,
        },
        Command::Export {
            config,
            since,
            limit,
            format,
        } => match load_settings(config.config) {
            Ok(s) => export_cmd(s, since, limit, format),
            Err(code) => code,
        },
        Command::Rules {
            action: RulesAction::Check { dir, config },
        } => rules_check(dir, config.config),
        Command::CheckConfig { config } => {
            let sources = Sources {
                file: config.config,
                overrides: vec![],
            };
            match sources.load() {
                Ok(settings) => {
                    print!("{}", settings.to_redacted_toml());
                    if let Err(e) = storage_credentials(&settings) {
                        eprintln!("sandgnat: {e}");
                        return ExitCode::from(EXIT_BAD_CONFIG);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sandgnat: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Submit(args) => crate::client::submit(args),
        Command::Lookup(args) => crate::client::lookup(args),
        Command::Worker(args) => crate::worker::run(args),
        Command::MetricsListener(args) => crate::metrics::run(args),
        Command::FrontEnd(args) => crate::frontend::run(args),
        Command::JobRunner(args) => crate::runner::run(args),
        Command::Recorder(args) => crate::recorder::run(args),
    }
}

/// With an S3 store, its credentials must be in the environment: said
/// at once rather than by every worker failing to boot.
fn storage_credentials(settings: &Settings) -> Result<(), crate::storage::StoreError> {
    if settings.storage.is_s3() {
        crate::storage::s3::Credentials::from_env()?;
    }
    Ok(())
}

fn serve(
    sources: Sources,
    argv: Vec<OsString>,
    inherit: Option<String>,
    upgrade_pipe: Option<i32>,
    migrate: bool,
) -> ExitCode {
    let settings: Settings = match sources.load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandgnat: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Err(e) = storage_credentials(&settings) {
        eprintln!("sandgnat: {e}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let _log = match crate::logging::init(&settings.log, &settings.node.name, "master") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("sandgnat: cannot open log files: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A new master taking over (USR2) finds the schema already in place.
    if migrate && inherit.is_none() {
        migrate_at_start(&settings);
    }
    if inherit.is_none() && !role_allowed(&settings) {
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let inherited = match inherit.as_deref().map(Inherited::from_arg).transpose() {
        Ok(i) => i.unwrap_or_default(),
        Err(e) => {
            eprintln!("sandgnat: cannot take over sockets: {e}");
            return ExitCode::FAILURE;
        }
    };
    let upgrade_pipe = upgrade_pipe.and_then(|fd| {
        use std::os::fd::FromRawFd;
        // SAFETY: the old master placed the pipe at this descriptor for us.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .ok()
        .map(|_| fd)
    });
    let launch = Launch {
        sources,
        settings,
        inherited,
        upgrade_pipe,
        argv,
    };
    match Arbiter::start(launch) {
        Ok(arbiter) => arbiter.run(),
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("sandgnat: {e}");
            ExitCode::FAILURE
        }
    }
}
