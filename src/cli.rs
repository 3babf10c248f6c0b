//! The command line: operator commands (`serve`, `check-config`) and the
//! internal roles the master starts (`worker`, `metrics-listener`,
//! `front-end`). Flags are the highest-precedence settings source.

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
    #[arg(long, short = 'c', value_name = "FILE")]
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
    },
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
            serve(sources, argv[1..].to_vec(), inherit, upgrade_pipe)
        }
        Command::CheckConfig { config } => {
            let sources = Sources {
                file: config.config,
                overrides: vec![],
            };
            match sources.load() {
                Ok(settings) => {
                    print!("{}", settings.to_redacted_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sandgnat: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Worker(args) => crate::worker::run(args),
        Command::MetricsListener(args) => crate::metrics::run(args),
        Command::FrontEnd(args) => crate::frontend::run(args),
    }
}

fn serve(
    sources: Sources,
    argv: Vec<OsString>,
    inherit: Option<String>,
    upgrade_pipe: Option<i32>,
) -> ExitCode {
    let settings: Settings = match sources.load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandgnat: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let _log = match crate::logging::init(&settings.log, "master") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("sandgnat: cannot open log files: {e}");
            return ExitCode::FAILURE;
        }
    };
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
