//! Log output for every process role: one line per event, JSON or console,
//! each carrying the node (`node.name`, so the lines of several nodes can
//! be gathered in one place), the pid, the role and the fields of the
//! spans it happened in (the request id, the analysis id). Error and access logs go to
//! stdout/stderr for journald or to files that USR1 reopens (logrotate) or
//! that `tracing-appender` rotates.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Log;

/// The target of access-log events; they go to `log.access_log`.
pub const ACCESS_TARGET: &str = "access";

/// Keeps the background writers alive; dropping it flushes them.
pub struct LogGuard {
    _guards: Vec<WorkerGuard>,
}

static REOPENERS: OnceLock<Vec<Arc<ReopenableFile>>> = OnceLock::new();
static FILE_OWNER: OnceLock<(u32, u32)> = OnceLock::new();

/// Gives log files to the workers' account (master, when root), so that a
/// worker can reopen them after logrotate, as gunicorn does.
pub fn give_files_to(uid: u32, gid: u32) {
    let _ = FILE_OWNER.set((uid, gid));
    for file in REOPENERS.get().map(Vec::as_slice).unwrap_or_default() {
        file.chown();
    }
}

/// Reopens log files by path (USR1), so rotated files are let go.
pub fn reopen() {
    for file in REOPENERS.get().map(Vec::as_slice).unwrap_or_default() {
        if let Err(e) = file.reopen() {
            tracing::error!(path = %file.path.display(), error = %e, "cannot reopen log file");
        }
    }
}

/// Lines a log writer queues before a thread that logs must wait for the
/// writer (lines are never dropped: `lossy(false)`). tracing-appender's
/// default queue is allocated and touched up front, per writer, in every
/// process, and is far larger than a burst of log lines needs.
const QUEUED_LINES: usize = 4096;

/// Bytes of log lines the writer thread gathers into one write(2).
const WRITE_BUFFER: usize = 64 * 1024;

/// The writer thread drains every queued line, then flushes: behind a
/// buffer, a burst of lines costs one write(2), not one each.
fn buffered<W: Write>(w: W) -> BufWriter<W> {
    BufWriter::with_capacity(WRITE_BUFFER, w)
}

/// Installs the global subscriber for a process of `role` on `node`.
pub fn init(log: &Log, node: &str, role: &'static str) -> io::Result<LogGuard> {
    let mut guards = Vec::new();
    let mut reopeners = Vec::new();
    let mut open = |target: &str, stdio: Stdio| -> io::Result<NonBlocking> {
        let builder = NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(QUEUED_LINES);
        let (writer, guard) = if target == "-" {
            match stdio {
                Stdio::Out => builder.finish(buffered(io::stdout())),
                Stdio::Err => builder.finish(buffered(io::stderr())),
            }
        } else if log.rotation == "never" {
            let file = Arc::new(ReopenableFile::open(Path::new(target))?);
            reopeners.push(file.clone());
            builder.finish(buffered(SharedFile(file)))
        } else {
            let path = Path::new(target);
            let rotation = if log.rotation == "hourly" {
                Rotation::HOURLY
            } else {
                Rotation::DAILY
            };
            let dir = path.parent().unwrap_or(Path::new("."));
            let name = path.file_name().unwrap_or(path.as_os_str());
            builder.finish(buffered(RollingFileAppender::new(rotation, dir, name)))
        };
        guards.push(guard);
        Ok(writer)
    };
    let error = open(&log.error_log, Stdio::Err)?;
    let access = open(&log.access_log, Stdio::Out)?;
    let _ = REOPENERS.set(reopeners);

    let json = match log.format.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !io::stderr().is_terminal(),
    };
    let filter = EnvFilter::try_new(format!("{},{ACCESS_TARGET}=info", log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = Lines {
        json,
        node: node.to_string(),
        role,
        pid: std::process::id(),
        error,
        access,
    };
    // A second init in one process (unit tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
    Ok(LogGuard { _guards: guards })
}

enum Stdio {
    Out,
    Err,
}

/// A log file that can be reopened by path after logrotate moved it.
struct ReopenableFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl ReopenableFile {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(ReopenableFile {
            path: path.to_path_buf(),
            file: Mutex::new(Self::open_append(path)?),
        })
    }

    /// A new file is made 0640 whatever the umask (the unit's is 0077):
    /// operators read logs as members of the service's group. An existing
    /// file keeps the mode it has.
    fn open_append(path: &Path) -> io::Result<File> {
        use std::os::unix::fs::PermissionsExt;
        match OpenOptions::new().create_new(true).append(true).open(path) {
            Ok(file) => {
                file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
                Ok(file)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                OpenOptions::new().append(true).open(path)
            }
            Err(e) => Err(e),
        }
    }

    fn reopen(&self) -> io::Result<()> {
        let fresh = Self::open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.chown();
        Ok(())
    }

    fn chown(&self) {
        if let Some(&(uid, gid)) = FILE_OWNER.get() {
            let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = std::os::unix::fs::fchown(&*file, Some(uid), Some(gid)) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot hand the log file to the workers' account");
            }
        }
    }
}

struct SharedFile(Arc<ReopenableFile>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
    }
}

/// The fields of an event or span, in the order they were recorded.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    pairs: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else if let Some(slot) = self.pairs.iter_mut().find(|(k, _)| *k == field.name()) {
            slot.1 = value;
        } else {
            self.pairs.push((field.name(), value));
        }
    }
}

struct Lines {
    json: bool,
    node: String,
    role: &'static str,
    pid: u32,
    error: NonBlocking,
    access: NonBlocking,
}

impl<S> Layer<S> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut context: Vec<(&'static str, Value)> = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    context.extend(f.pairs.iter().cloned());
                }
            }
        }
        let meta = event.metadata();
        let is_access = meta.target() == ACCESS_TARGET;
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let mut line = if self.json {
            let mut obj = Map::new();
            obj.insert("timestamp".into(), Value::String(now.to_string()));
            obj.insert("level".into(), Value::String(meta.level().to_string()));
            obj.insert("node".into(), Value::String(self.node.clone()));
            obj.insert("pid".into(), Value::from(self.pid));
            obj.insert("role".into(), Value::String(self.role.into()));
            if !is_access {
                obj.insert("target".into(), Value::String(meta.target().into()));
            }
            if let Some(m) = fields.message {
                obj.insert("message".into(), Value::String(m));
            }
            for (k, v) in context.into_iter().chain(fields.pairs) {
                obj.insert(k.to_string(), v);
            }
            Value::Object(obj).to_string()
        } else if is_access {
            // The operator's gunicorn format is the line.
            fields.message.unwrap_or_default()
        } else {
            let mut s = format!(
                "{now} {:>5} {} {}[{}] {}",
                meta.level(),
                self.node,
                self.role,
                self.pid,
                fields.message.as_deref().unwrap_or("")
            );
            for (k, v) in context.iter().chain(fields.pairs.iter()) {
                match v {
                    Value::String(text) => {
                        let _ = write!(s, " {k}={text}");
                    }
                    other => {
                        let _ = write!(s, " {k}={other}");
                    }
                }
            }
            s
        };
        line.push('\n');
        let mut writer = if is_access {
            self.access.clone()
        } else {
            self.error.clone()
        };
        let _ = writer.write_all(line.as_bytes());
    }
}
