//! Range and shape checks on settings, with messages an operator can act on:
//! the key, the value given, and what is allowed.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::redact::redact_url;
use super::settings::Settings;
use crate::accesslog::AccessLogFormat;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("cannot read settings: {0}")]
    Source(#[source] config::ConfigError),
    #[error("invalid value for `{key}`: {value} (allowed: {allowed})")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
}

fn invalid(key: &'static str, value: impl ToString, allowed: impl ToString) -> SettingsError {
    SettingsError::Invalid {
        key,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

fn range<T: PartialOrd + ToString + Copy>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), SettingsError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            value,
            format!("{} to {}", min.to_string(), max.to_string()),
        ));
    }
    Ok(())
}

/// A node's name goes into log lines, metric labels and the database
/// session's settings unquoted: only characters none of them treat
/// specially.
pub fn is_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn socket_addr(key: &'static str, value: &str) -> Result<(), SettingsError> {
    value.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
        invalid(
            key,
            format!("{value:?}"),
            "an IP address and port, e.g. 0.0.0.0:8443",
        )
    })
}

/// `[storage]`: a backend this binary has, and for S3 a bucket, an
/// endpoint URL without credentials in it (they belong in the
/// environment), plain HTTP only when asked for, and a prefix made of
/// plain path segments.
fn storage(st: &super::settings::Storage) -> Result<(), SettingsError> {
    if !["local", "s3"].contains(&st.backend.as_str()) {
        return Err(invalid("storage.backend", &st.backend, "local or s3"));
    }
    if !st.is_s3() {
        return Ok(());
    }
    let bucket_ok = (3..=63).contains(&st.bucket.len())
        && st
            .bucket
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'));
    if !bucket_ok {
        return Err(invalid(
            "storage.bucket",
            format!("{:?}", st.bucket),
            "an S3 bucket name: 3 to 63 lowercase letters, digits, '-' and '.'",
        ));
    }
    if st.region.is_empty() || st.region.contains(['/', ' ']) {
        return Err(invalid(
            "storage.region",
            format!("{:?}", st.region),
            "a region name, e.g. us-east-1 (Garage: garage)",
        ));
    }
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let prefix = st.prefix.trim_matches('/');
    if !prefix.is_empty() && !prefix.split('/').all(segment_ok) {
        return Err(invalid(
            "storage.prefix",
            format!("{:?}", st.prefix),
            "path segments of letters, digits, '-', '_' and '.', separated by '/'",
        ));
    }
    if let Some(endpoint) = &st.endpoint {
        let url: Option<http::Uri> = endpoint.parse().ok();
        let Some(url) = url.filter(|u| u.host().is_some_and(|h| !h.is_empty())) else {
            return Err(invalid(
                "storage.endpoint",
                format!("{endpoint:?}"),
                "an http:// or https:// URL naming a host",
            ));
        };
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(invalid(
                "storage.endpoint",
                "a URL with credentials in it",
                "a URL without them: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go in the environment file",
            ));
        }
        match url.scheme_str() {
            Some("https") => {}
            Some("http") if st.allow_http => {}
            Some("http") => {
                return Err(invalid(
                    "storage.endpoint",
                    endpoint,
                    "an https:// URL, or http:// with storage.allow_http = true",
                ))
            }
            _ => {
                return Err(invalid(
                    "storage.endpoint",
                    format!("{endpoint:?}"),
                    "an http:// or https:// URL naming a host",
                ))
            }
        }
    }
    Ok(())
}

pub(super) fn validate(s: &Settings) -> Result<(), SettingsError> {
    if !is_node_name(&s.node.name) {
        return Err(invalid(
            "node.name",
            format!("{:?}", s.node.name),
            "1 to 64 letters, digits, '.', '_' or '-' (set it when the host name is not)",
        ));
    }
    let srv = &s.server;
    range("server.workers", srv.workers, 1, 256)?;
    range("server.timeout", srv.timeout, 1, 86_400)?;
    range("server.graceful_timeout", srv.graceful_timeout, 0, 86_400)?;
    range("server.keepalive", srv.keepalive, 0, 3_600)?;
    range("server.backlog", srv.backlog, 1, 65_535)?;
    range(
        "server.worker_connections",
        srv.worker_connections,
        1,
        100_000,
    )?;
    // Gunicorn's bounds: 0 means unlimited for the line and field size.
    range(
        "server.limit_request_line",
        srv.limit_request_line,
        0,
        8_190,
    )?;
    range(
        "server.limit_request_fields",
        srv.limit_request_fields,
        1,
        32_768,
    )?;
    range(
        "server.limit_request_field_size",
        srv.limit_request_field_size,
        0,
        1 << 20,
    )?;
    range("server.max_boot_failures", srv.max_boot_failures, 1, 1_000)?;
    if !srv.socket.is_absolute() {
        return Err(invalid(
            "server.socket",
            srv.socket.display(),
            "an absolute path",
        ));
    }
    for (key, name) in [("server.user", &srv.user), ("server.group", &srv.group)] {
        if let Some(name) = name {
            if name.is_empty() || name.contains(['/', ':', ' ']) {
                return Err(invalid(key, format!("{name:?}"), "a user or group name"));
            }
        }
    }

    if s.proxy.bind.is_empty() && s.proxy.plain_bind.is_empty() {
        return Err(invalid(
            "proxy.bind",
            "[]",
            "at least one address in proxy.bind or proxy.plain_bind",
        ));
    }
    for addr in &s.proxy.bind {
        socket_addr("proxy.bind", addr)?;
    }
    for addr in &s.proxy.plain_bind {
        socket_addr("proxy.plain_bind", addr)?;
    }
    if s.proxy.tls_cert.is_some() != s.proxy.tls_key.is_some() {
        return Err(invalid(
            "proxy.tls_cert",
            "only one of tls_cert and tls_key",
            "both set, or neither (a self-signed pair is made)",
        ));
    }
    range("proxy.max_body_bytes", s.proxy.max_body_bytes, 1, 1 << 40)?;
    range("proxy.read_timeout", s.proxy.read_timeout, 1, 86_400)?;
    range("proxy.body_timeout", s.proxy.body_timeout, 1, 86_400)?;
    range("proxy.idle_timeout", s.proxy.idle_timeout, 0, 3_600)?;
    range("proxy.header_timeout", s.proxy.header_timeout, 1, 3_600)?;
    if s.proxy.head_budget_bytes != 0 {
        range(
            "proxy.head_budget_bytes",
            s.proxy.head_budget_bytes,
            64 << 10,
            1 << 40,
        )?;
    }
    for ip in &s.proxy.forwarded_allow_ips {
        if ip != "*" && ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "proxy.forwarded_allow_ips",
                format!("{ip:?}"),
                "IP addresses such as 127.0.0.1 or ::1, or \"*\"",
            ));
        }
    }
    range(
        "intake.max_sample_bytes",
        s.intake.max_sample_bytes,
        1,
        1 << 40,
    )?;
    range(
        "intake.memory_sample_bytes",
        s.intake.memory_sample_bytes,
        0,
        64 << 20,
    )?;
    range(
        "intake.memory_budget_bytes",
        s.intake.memory_budget_bytes,
        0,
        4 << 30,
    )?;
    range("intake.leftover_age", s.intake.leftover_age, 0, 30 * 86_400)?;
    range(
        "intake.leftover_sweep_interval",
        s.intake.leftover_sweep_interval,
        1,
        86_400,
    )?;
    range("yara.scan_timeout", s.yara.scan_timeout, 1, 3_600)?;
    range(
        "yara.scan_parts",
        s.yara.scan_parts as u64,
        0,
        crate::scan::MAX_PARTS as u64,
    )?;
    range(
        "yara.parallel_scan_bytes",
        s.yara.parallel_scan_bytes,
        64 << 10,
        1 << 40,
    )?;
    range("queue.runners", s.queue.runners, 0, 64)?;
    let q = &s.queue;
    range("queue.retention", q.retention, 60, 10 * 365 * 86_400)?;
    range(
        "queue.maintenance_interval",
        q.maintenance_interval,
        1,
        3_600,
    )?;
    range(
        "queue.max_lease_seconds",
        q.max_lease_seconds,
        1,
        7 * 86_400,
    )?;
    range(
        "queue.lease_seconds",
        q.lease_seconds,
        1,
        q.max_lease_seconds,
    )?;
    range("queue.max_wait_seconds", q.max_wait_seconds, 0, 600)?;
    range("queue.max_claim_batch", q.max_claim_batch, 1, 10_000)?;
    range("queue.retry_base", q.retry_base, 0.001, 86_400.0)?;
    range("queue.retry_cap", q.retry_cap, q.retry_base, 7.0 * 86_400.0)?;
    range("queue.webhook_timeout", q.webhook_timeout, 1, 300)?;
    range("queue.webhook_per_host", q.webhook_per_host, 1, 10_000)?;
    for name in &q.external {
        if !["analysis", "static", "notify"].contains(&name.as_str()) {
            return Err(invalid(
                "queue.external",
                format!("{name:?}"),
                "queue names: analysis, static, notify",
            ));
        }
    }
    for (running, attempts, limits) in [
        (
            "queue.analysis.max_running",
            "queue.analysis.max_attempts",
            &q.analysis,
        ),
        (
            "queue.static.max_running",
            "queue.static.max_attempts",
            &q.static_,
        ),
        (
            "queue.notify.max_running",
            "queue.notify.max_attempts",
            &q.notify,
        ),
    ] {
        range(running, limits.max_running, 0, 100_000)?;
        range(attempts, limits.max_attempts, 1, 100)?;
    }
    range(
        "database.max_connections",
        s.database.max_connections,
        1,
        1_000,
    )?;
    range(
        "database.acquire_timeout_ms",
        s.database.acquire_timeout_ms,
        10,
        60_000,
    )?;
    range(
        "database.record_timeout_ms",
        s.database.record_timeout_ms,
        100,
        600_000,
    )?;
    range(
        "retention.sample_days",
        s.retention.sample_days,
        0,
        100 * 365,
    )?;
    range("retention.interval", s.retention.interval, 1, 7 * 86_400)?;
    socket_addr("metrics.bind", &s.metrics.bind)?;

    if !s.paths.state_dir.is_absolute() {
        return Err(invalid(
            "paths.state_dir",
            s.paths.state_dir.display(),
            "an absolute path",
        ));
    }
    let urls = [
        ("database.url", Some(&s.database.url)),
        ("database.migrate_url", s.database.migrate_url.as_ref()),
    ];
    for (key, url) in urls {
        let Some(url) = url else { continue };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                key,
                redact_url(url),
                "a postgres:// or postgresql:// URL",
            ));
        }
    }
    if let Some(url) = &s.redis.url {
        if !["redis://", "rediss://", "unix://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(invalid(
                "redis.url",
                redact_url(url),
                "a redis://, rediss:// or unix:// URL",
            ));
        }
    }

    storage(&s.storage)?;

    if let Some(format) = &s.log.format {
        if format != "console" && format != "json" {
            return Err(invalid("log.format", format, "console or json"));
        }
    }
    if !["never", "hourly", "daily"].contains(&s.log.rotation.as_str()) {
        return Err(invalid(
            "log.rotation",
            &s.log.rotation,
            "never, hourly or daily",
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&s.log.level).is_err() {
        return Err(invalid(
            "log.level",
            &s.log.level,
            "error, warn, info, debug, trace or a tracing filter",
        ));
    }
    if let Err(e) = AccessLogFormat::parse(&s.log.access_log_format) {
        return Err(invalid(
            "log.access_log_format",
            format!("{:?}", s.log.access_log_format),
            format!("gunicorn's %(atom)s syntax ({e})"),
        ));
    }
    Ok(())
}
