//! Starts the real `sandgnat serve` in a temporary directory and talks to
//! it the way an operator and a client would: over its sockets, with
//! signals, through the systemd notification socket for readiness, and by
//! reading its JSON log.

#![allow(dead_code)]

pub mod cluster;
pub mod db;
pub mod h1;
pub mod keepalive;
pub mod pg;
pub mod py;
pub mod redis;
pub mod s3;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sandgnat");

pub struct Appliance {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub metrics: String,
    /// The front end's TLS address (`proxy.bind`).
    pub tls: String,
    /// The front end's plain-HTTP address (`proxy.plain_bind`).
    pub plain: String,
    pub child: Child,
    notify: UnixDatagram,
    pub log: PathBuf,
}

/// A free TCP port on loopback (released before the appliance binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sandgnat-test-{tag}-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // Workers run as nobody when the tests run as root.
    let _ = Command::new("chmod").arg("0755").arg(&dir).status();
    dir
}

fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
}

/// Lets this test process reap a master that an upgrade re-parented to it.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

impl Appliance {
    /// Writes a config with `extra` TOML appended to each section given
    /// and starts the master; returns once it sent READY=1.
    pub fn start(tag: &str, server_extra: &str, other_sections: &str) -> Self {
        Self::start_with(tag, server_extra, "", other_sections)
    }

    pub fn spawn(tag: &str, server_extra: &str, other_sections: &str) -> Self {
        Self::spawn_with(tag, server_extra, "", other_sections)
    }

    /// As `start`, with `proxy_extra` appended to the `[proxy]` section.
    ///
    /// The ports `free_port` picked may be taken by another test before the
    /// master binds them; a master that exits saying so is started again
    /// with fresh ports, a few times.
    pub fn start_with(tag: &str, server_extra: &str, proxy_extra: &str, other: &str) -> Self {
        Self::start_with_ports(tag, server_extra, proxy_extra, other, &mut free_port)
    }

    /// As `start_with`, with the ports (metrics, TLS, plain, in that order)
    /// from `port`.
    pub fn start_with_ports(
        tag: &str,
        server_extra: &str,
        proxy_extra: &str,
        other: &str,
        port: &mut dyn FnMut() -> u16,
    ) -> Self {
        Self::start_with_env(tag, server_extra, proxy_extra, other, port, &[])
    }

    /// As `start_with_ports`, with `env` added to the master's
    /// environment (the service's environment file: S3 credentials).
    pub fn start_with_env(
        tag: &str,
        server_extra: &str,
        proxy_extra: &str,
        other: &str,
        port: &mut dyn FnMut() -> u16,
        env: &[(String, String)],
    ) -> Self {
        const TRIES: u32 = 4;
        for attempt in 1..=TRIES {
            let mut app = Self::spawn_with_env(tag, server_extra, proxy_extra, other, port, env);
            match app.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return app,
                Err(status) => {
                    let log = app.log_text();
                    if attempt < TRIES && log.contains("Address already in use") {
                        eprintln!("{tag}: a port was taken before the master bound it; again with new ones");
                        continue;
                    }
                    panic!("master exited ({status}) before READY=1; log:\n{log}");
                }
            }
        }
        unreachable!("the last try returns or panics")
    }

    /// Waits for READY=1 while watching the master: `Err` with its exit
    /// status as soon as it exits instead.
    pub fn wait_ready(&mut self, within: Duration) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
        }
        panic!(
            "no READY=1 notification within {within:?}; log:\n{}",
            self.log_text()
        );
    }

    pub fn spawn_with(
        tag: &str,
        server_extra: &str,
        proxy_extra: &str,
        other_sections: &str,
    ) -> Self {
        Self::spawn_with_ports(
            tag,
            server_extra,
            proxy_extra,
            other_sections,
            &mut free_port,
        )
    }

    /// `other_sections` may name its own `[paths]` (the state directory is
    /// then not the test's directory).
    pub fn spawn_with_ports(
        tag: &str,
        server_extra: &str,
        proxy_extra: &str,
        other_sections: &str,
        port: &mut dyn FnMut() -> u16,
    ) -> Self {
        Self::spawn_with_env(tag, server_extra, proxy_extra, other_sections, port, &[])
    }

    pub fn spawn_with_env(
        tag: &str,
        server_extra: &str,
        proxy_extra: &str,
        other_sections: &str,
        port: &mut dyn FnMut() -> u16,
        env: &[(String, String)],
    ) -> Self {
        let dir = temp_dir(tag);
        let socket = dir.join("workers.sock");
        let metrics = format!("127.0.0.1:{}", port());
        let tls = format!("127.0.0.1:{}", port());
        let plain = format!("127.0.0.1:{}", port());
        let is_root = unsafe { libc::geteuid() } == 0;
        let account = if is_root {
            "user = \"nobody\"\ngroup = \"nogroup\"\n"
        } else {
            ""
        };
        let paths = if other_sections.contains("[paths]") {
            String::new()
        } else {
            format!("[paths]\nstate_dir = \"{}\"\n", dir.display())
        };
        let config = format!(
            "[server]\nsocket = \"{}\"\n{account}{server_extra}\n\
             [proxy]\nbind = [\"{tls}\"]\nplain_bind = [\"{plain}\"]\n{proxy_extra}\n\
             [metrics]\nbind = \"{metrics}\"\n\
             {paths}\
             {other_sections}\n",
            socket.display(),
        );
        // Tests connect as postgres, a superuser, which the appliance
        // refuses to serve as unless told this is development; a test
        // about roles says `allow_owner` itself.
        let config = if config.contains("allow_owner") {
            config
        } else if config.contains("[database]\n") {
            config.replacen("[database]\n", "[database]\nallow_owner = true\n", 1)
        } else {
            format!("{config}\n[database]\nallow_owner = true\n")
        };
        let config = if config.contains("[log]") {
            config
        } else {
            format!("{config}\n[log]\nformat = \"json\"\n")
        };
        let config = if config.contains("[debug]") {
            config
        } else {
            format!("{config}\n[debug]\nfault_injection = true\n")
        };
        std::fs::write(dir.join("sandgnat.toml"), &config).unwrap();
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log = dir.join("out.log");
        let out = std::fs::File::create(&log).unwrap();
        if is_root {
            // The state directory already holds the test's files: a master
            // takes over only one that is the service account's already.
            let given = Command::new("chown")
                .arg("nobody:nogroup")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(given.success(), "chown nobody:nogroup {}", dir.display());
        }
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(dir.join("sandgnat.toml"))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        clean_env(&mut cmd);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn().expect("start sandgnat serve");
        Appliance {
            dir,
            socket,
            metrics,
            tls,
            plain,
            child,
            notify,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a notification containing `what`; returns the message.
    pub fn expect_notify(&self, what: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.contains(what) {
                    return msg;
                }
            }
        }
        panic!(
            "no {what:?} notification within {within:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Reads and drops every notification waiting. The socket holds only
    /// a few (`net.unix.max_dgram_qlen`), and a master whose notification
    /// finds it full blocks until one is read, as it would under a
    /// systemd that stopped reading: a test that sends signals without
    /// waiting for each notification must drain them.
    pub fn drain_notifications(&self) {
        self.notify.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while self.notify.recv(&mut buf).is_ok() {}
        self.notify.set_nonblocking(false).unwrap();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "master did not exit within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// JSON log lines whose `event` field is `event`.
    pub fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Waits until the log has an `event` line (the master's own record).
    pub fn expect_event(&self, event: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.events(event).into_iter().next() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {event} event within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        request_unix(&self.socket, "GET", path, &[])
    }

    /// `sandgnat keys ...` against this appliance's settings.
    pub fn keys(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("keys")
            .args(args)
            .arg("--config")
            .arg(self.dir.join("sandgnat.toml"));
        clean_env(&mut cmd);
        cmd.output().unwrap()
    }

    /// A new key with `role`, as an operator would make it.
    pub fn new_key(&self, role: &str) -> String {
        let name = format!("{role}-{}", rand_u64() & 0xffffff);
        let out = self.keys(&["create", "--name", &name, "--role", role]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn submit(&self, key: &str, body: &[u8], extra: &[(&str, &str)]) -> Response {
        self.submit_with(key, "", body, extra)
    }

    /// `submit` with metadata in the query string (`tlp=red&tags=a`).
    pub fn submit_with(
        &self,
        key: &str,
        query: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Response {
        let mut headers = vec![
            ("X-API-Key", key),
            ("Content-Type", "application/octet-stream"),
        ];
        headers.extend_from_slice(extra);
        let path = if query.is_empty() {
            "/v1/submit".to_string()
        } else {
            format!("/v1/submit?{query}")
        };
        request_unix_body(&self.socket, "POST", &path, &headers, Some(body)).unwrap()
    }

    /// `submit_with`, asserting a 202; its JSON.
    pub fn accepted(
        &self,
        key: &str,
        query: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> serde_json::Value {
        let r = self.submit_with(key, query, body, extra);
        assert_eq!(r.status, 202, "{}", r.body);
        r.json()
    }

    /// POSTs a JSON document with an API key on the workers' socket.
    pub fn post_json(&self, key: &str, path: &str, body: serde_json::Value) -> Response {
        let bytes = body.to_string();
        request_unix_body(
            &self.socket,
            "POST",
            path,
            &[("X-API-Key", key), ("Content-Type", "application/json")],
            Some(bytes.as_bytes()),
        )
        .unwrap()
    }

    pub fn get_with_key(&self, path: &str, key: &str) -> Response {
        request_unix(&self.socket, "GET", path, &[("X-API-Key", key)]).unwrap()
    }

    pub fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(&self.metrics).expect("connect metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The value of one metric sample, e.g. `sandgnat_worker_restarts_total{reason="crash"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), sample)
    }

    /// Sums every sample of `name` whose labels contain `label_part`.
    pub fn metric_sum(&self, name: &str, label_part: &str) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label_part))
            .filter(|l| l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `cond` until it holds (state the appliance reports, not time).
    pub fn wait_until(&self, what: &str, within: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !cond(self) {
            if Instant::now() > deadline {
                panic!(
                    "{what} did not happen within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Pids of the master's children started in `role` (their first
    /// argument: `recorder`, `worker`, ...).
    pub fn role_pids(&self, role: &str) -> Vec<u32> {
        let pid = self.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let mut pids: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(role.as_bytes()))
            })
            .collect();
        pids.sort();
        pids
    }

    /// Pids of the live workers, from metrics.
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .metrics_text()
            .lines()
            .filter(|l| l.starts_with("sandgnat_worker_max_connections{pid=\""))
            .filter_map(|l| l.split('"').nth(1)?.parse().ok())
            .collect();
        pids.sort();
        pids
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        // The whole process group: master, workers, and any new master.
        // SAFETY: kill(2) on our own process group.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
        if std::env::var_os("SANDGNAT_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Keeps the test runner's own settings (DATABASE_URL for #[sqlx::test])
/// and any S3 credentials away from the appliance, which must use only
/// its config file and what the test gives it.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("SANDGNAT_")
            || k.starts_with("AWS_")
            || k == "DATABASE_URL"
            || k == "REDIS_URL"
        {
            cmd.env_remove(k);
        }
    }
}

pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Asserts what the master gives every child it starts: no_new_privs, a
/// uid other than root when the tests run as root, and no core dumps.
pub fn assert_isolated(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{status}"
    );
    if unsafe { libc::geteuid() } == 0 {
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "{uid}");
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
}

/// What a process's descriptors point at (`socket:[inode]`, paths).
pub fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The body as JSON; a body that is not JSON fails the test.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection, as `curl --unix-socket` would send it.
pub fn request_unix(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    request_unix_body(socket, method, path, headers, None)
}

/// The same with a body (sent with its Content-Length).
pub fn request_unix_body(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: sandgnat\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // Write the body while reading the answer, as real clients do: the
    // server may answer (401, 413) before it has read the body.
    let writer = body.map(|b| {
        let mut w = s.try_clone().expect("clone socket");
        let b = b.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&b);
        })
    });
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if let Some(w) = writer {
        let _ = w.join();
    }
    // A reset after a complete answer is the server closing on an unread
    // body; the answer stands.
    match (read, parse_response(&raw)) {
        (_, Ok(r)) => Ok(r),
        (Err(e), Err(_)) => Err(e),
        (Ok(_), Err(e)) => Err(e),
    }
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {text:?}")))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}
