//! The TLS front end, end to end: the real binary, real TLS (curl and
//! `openssl s_client` against the generated certificate), real workers
//! behind it. Framing cases are sent as raw bytes on the plain listener,
//! since they are about bytes a well-behaved TLS client would never send.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::Appliance;

const SEC: Duration = Duration::from_secs(1);

fn cert_of(app: &Appliance) -> PathBuf {
    app.dir.join("certs").join("self-signed.pem")
}

/// Runs curl against the front end, trusting `ca`; returns its output.
fn curl(ca: &PathBuf, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60", "--cacert"])
        .arg(ca)
        .args(args)
        .output()
        .expect("run curl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn requests_seen_by_workers(app: &Appliance) -> f64 {
    app.metric_sum("sandgnat_requests_total", "")
}

#[test]
fn tls_request_reaches_a_worker_with_forwarding_headers() {
    let app = Appliance::start("fe-fwd", "workers = 1\n", "");
    let log = app.log_text();
    assert!(
        log.contains("self-signed") && log.contains("sha256"),
        "no fingerprint warning for the generated certificate:\n{log}"
    );
    let url = format!("https://{}/__debug/echo-headers", app.tls);
    // 127.0.0.1 is in the default forwarded_allow_ips: its X-Forwarded-For
    // is kept and ours appended.
    let out = curl(
        &cert_of(&app),
        &[
            "--http2",
            "-D",
            "-",
            "-H",
            "X-Forwarded-For: 203.0.113.7",
            "-w",
            "\nversion=%{http_version}",
            &url,
        ],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "curl failed: {text} {:?}", out.stderr);
    assert!(text.contains("version=2"), "ALPN did not pick h2: {text}");
    let body_start = text.find('{').expect("json body");
    let body_end = text.rfind('}').expect("json body");
    let seen: serde_json::Value = serde_json::from_str(&text[body_start..=body_end]).unwrap();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{seen}");
    assert_eq!(seen["x-real-ip"], "203.0.113.7", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(seen["host"], app.tls.as_str(), "{seen}");
    let id = seen["x-request-id"].as_str().expect("request id");
    assert!(id.len() >= 16, "{seen}");
    let echoed = text
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("x-request-id in the response");
    assert_eq!(echoed.trim(), id);

    // HTTP/1.1 works too, and a client's own request id is kept.
    let out = curl(
        &cert_of(&app),
        &["--http1.1", "-H", "X-Request-Id: abc-123", &url],
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["x-request-id"], "abc-123");
}

#[test]
fn tls_1_1_is_refused_and_1_2_accepted() {
    let app = Appliance::start("fe-tls11", "workers = 1\n", "");
    let s_client = |version: &str| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &app.tls, version])
            .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ok = s_client("-tls1_2");
    assert!(ok.contains("TLSv1.2"), "TLS 1.2 should work:\n{ok}");
    let old = s_client("-tls1_1");
    if old.contains("no protocols available") || old.contains("unknown option") {
        eprintln!(
            "SKIPPED: this openssl cannot offer TLS 1.1, so its refusal cannot be shown:\n{old}"
        );
        return;
    }
    // rustls answers a TLS 1.1 hello with a fatal alert (handshake
    // failure); no cipher is ever agreed.
    assert!(
        old.contains("alert") && old.contains("Cipher is (NONE)"),
        "TLS 1.1 was not refused by the server:\n{old}"
    );
}

#[test]
fn oversized_upload_is_refused_before_its_body_is_sent() {
    let app = Appliance::start("fe-big", "workers = 1\n", "");
    let file = app.dir.join("300MiB");
    // Sparse: a 300 MiB body without 300 MiB on disk.
    std::fs::File::create(&file)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let before = requests_seen_by_workers(&app);
    let url = format!("https://{}/__debug/echo-headers", app.tls);
    let started = Instant::now();
    let out = curl(
        &cert_of(&app),
        &[
            "--http1.1",
            "-o",
            "/dev/null",
            "-H",
            "Expect:",
            "--data-binary",
            &format!("@{}", file.display()),
            "-w",
            "%{http_code} %{size_upload}",
            &url,
        ],
    );
    let text = stdout(&out);
    let mut parts = text.split_whitespace();
    let code = parts.next().unwrap_or_default();
    let sent: u64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    assert_eq!(
        code,
        "413",
        "{text} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("300 MiB upload: refused after the client sent {sent} bytes");
    assert!(
        sent < 32 << 20,
        "the client sent {sent} bytes of a 300 MiB body before being refused"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        requests_seen_by_workers(&app),
        before,
        "a worker saw the request"
    );

    // A body under the limit streams through whole, over HTTP/2 as well.
    let ok = app.dir.join("20MiB");
    std::fs::File::create(&ok)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let out = curl(
        &cert_of(&app),
        &[
            "--http2",
            "--data-binary",
            &format!("@{}", ok.display()),
            &url,
        ],
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{} {:?}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(seen["body-bytes"], 20 << 20, "{seen}");
}

#[test]
fn chunked_upload_over_the_limit_is_cut_with_413() {
    let app = Appliance::start_with("fe-chunk", "workers = 1\n", "max_body_bytes = 1048576", "");
    let file = app.dir.join("2MiB");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let url = format!("https://{}/__debug/echo-headers", app.tls);
    let out = curl(
        &cert_of(&app),
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect:",
            "--data-binary",
            &format!("@{}", file.display()),
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    let text = stdout(&out);
    assert!(
        text.ends_with("413"),
        "{text} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"error\":\"body_too_large\""), "{text}");
    // Under the limit still goes through.
    let small = app.dir.join("small");
    std::fs::write(&small, vec![b'x'; 1000]).unwrap();
    let out = curl(
        &cert_of(&app),
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &format!("@{}", small.display()),
            "-w",
            "\n%{http_code} %{time_total}",
            &url,
        ],
    );
    // With `Expect: 100-continue` the client holds the body back: the
    // front end must answer the expectation rather than wait for it.
    let text = stdout(&out);
    let last = text.lines().last().unwrap_or_default();
    let (code, secs) = last.split_once(' ').unwrap_or_default();
    assert_eq!(code, "200", "{text}");
    let secs: f64 = secs.parse().unwrap_or(99.0);
    assert!(secs < 0.8, "a small chunked upload took {secs} s");
}

/// A response read off a raw socket.
struct RawResponse {
    status: u16,
    /// The head, field names lowercased.
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn parse(buf: &[u8]) -> Option<RawResponse> {
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some(RawResponse {
            status,
            head,
            body: buf[split + 4..].to_vec(),
        })
    }

    /// Asserts the appliance's JSON error shape; returns its `error` code.
    fn json_error(&self, what: &str) -> String {
        assert!(
            self.head.contains("content-type: application/json"),
            "{what}: not JSON: {}",
            self.head
        );
        assert!(
            !self.head.contains("server: pingora"),
            "{what}: pingora's own answer: {}",
            self.head
        );
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{what}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        let message = v["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: no message: {v}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error code: {v}"))
            .to_string()
    }
}

/// Sends raw bytes on the plain listener; returns what came back before
/// the front end closed the connection.
fn raw_exchange(app: &Appliance, raw: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(&app.plain).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A refusal may come, and the front end stop reading, before all of
    // an oversized head is written; what it answered is still readable.
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    RawResponse::parse(&buf).unwrap_or_else(|| {
        panic!(
            "no response for {:?}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)]),
            String::from_utf8_lossy(&buf)
        )
    })
}

/// Sends raw bytes on the plain listener; returns the status line's code.
fn raw_status(app: &Appliance, raw: &[u8]) -> u16 {
    raw_exchange(app, raw).status
}

#[test]
fn malformed_framing_gets_400_and_never_reaches_a_worker() {
    let app = Appliance::start("fe-framing", "workers = 1\n", "");
    // The plain listener works for a good request (so the 400s below are
    // not just a dead listener).
    let good = b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&app, good), 200);
    app.wait_until(
        "the worker counted the good request",
        Duration::from_secs(5),
        |a| requests_seen_by_workers(a) >= 1.0,
    );
    let before = requests_seen_by_workers(&app);
    let cases: &[(&str, &[u8], u16)] = &[
        (
            "Content-Length with Transfer-Encoding",
            b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "conflicting Content-Lengths",
            b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            400,
        ),
        (
            "bad chunk size",
            b"POST /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            "obsolete line folding",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
            400,
        ),
        ("bare LF", b"GET /healthz HTTP/1.1\nHost: a\n\n", 400),
        (
            "invalid header name",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad(Name): 1\r\n\r\n",
            400,
        ),
        (
            "invalid header value",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",
            400,
        ),
    ];
    for (what, raw, want) in cases {
        let resp = raw_exchange(&app, raw);
        assert_eq!(resp.status, *want, "{what}");
        resp.json_error(what);
        assert_eq!(
            requests_seen_by_workers(&app),
            before,
            "{what} reached a worker"
        );
    }
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(5000));
    assert_eq!(raw_status(&app, long.as_bytes()), 414, "long request line");
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(raw_status(&app, many.as_bytes()), 431, "too many fields");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: {}\r\n\r\n",
        "v".repeat(9000)
    );
    assert_eq!(raw_status(&app, big.as_bytes()), 400, "field too large");
    assert_eq!(
        requests_seen_by_workers(&app),
        before,
        "a refused request reached a worker"
    );
}

#[test]
fn rate_limit_answers_429_and_untrusted_forwarding_is_replaced() {
    let app = Appliance::start_with(
        "fe-rate",
        "workers = 1\n",
        "rate_limit_per_ip = 5\nforwarded_allow_ips = [\"192.0.2.1\"]",
        "",
    );
    let url = format!("https://{}/__debug/echo-headers", app.tls);
    // From an untrusted peer, a client's X-Forwarded-For is dropped.
    let out = curl(
        &cert_of(&app),
        &["-H", "X-Forwarded-For: 203.0.113.7", &url],
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stdout(&out)));
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-real-ip"], "127.0.0.1", "{seen}");

    let mut args = vec!["-D", "-", "-o", "/dev/null"];
    for _ in 0..20 {
        args.push(&url);
    }
    let out = curl(&cert_of(&app), &args);
    let text = stdout(&out);
    let limited = text.matches(" 429").count();
    assert!(
        limited >= 1,
        "20 quick requests with a limit of 5/s: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
}

#[test]
fn no_worker_able_to_answer_gives_a_quick_503() {
    let app = Appliance::start("fe-503", "workers = 1\n", "");
    let url = format!("https://{}/healthz", app.tls);
    let ok = curl(
        &cert_of(&app),
        &["-w", "%{http_code}", "-o", "/dev/null", &url],
    );
    assert_eq!(stdout(&ok), "200");
    let pids = app.worker_pids();
    assert!(!pids.is_empty());
    for pid in &pids {
        // SAFETY: kill(2) on our own workers.
        unsafe { libc::kill(*pid as i32, libc::SIGSTOP) };
    }
    // A stopped worker is noticed by its heartbeat going stale (1.5 s);
    // nothing announces a heartbeat that did not happen, so wait past it.
    std::thread::sleep(Duration::from_millis(2000));
    let out = curl(
        &cert_of(&app),
        &["-w", "\n%{http_code} %{time_total}", &url],
    );
    for pid in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
    }
    let text = stdout(&out);
    let last = text.lines().last().unwrap_or_default().to_string();
    let mut parts = last.split(' ');
    assert_eq!(parts.next(), Some("503"), "{text}");
    let secs: f64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(99.0);
    assert!(secs < 1.0, "503 took {secs} s");
    assert!(text.contains("\"error\":\"no_worker\""), "{text}");
}

fn openssl_pair(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(st.status.success(), "{:?}", st);
    (cert, key)
}

#[test]
fn certificate_swapped_on_hup_is_served_without_restart() {
    let app = Appliance::start("fe-hup", "workers = 1\n", "");
    let url = format!("https://{}/healthz", app.tls);
    let code = |ca: &PathBuf| stdout(&curl(ca, &["-w", "%{http_code}", "-o", "/dev/null", &url]));
    assert_eq!(code(&cert_of(&app)), "200");
    let (new_cert, new_key) = openssl_pair(&app.dir, "next");
    // The generated pair is kept across reloads; replacing its files is
    // how an operator swaps it.
    let certs = app.dir.join("certs");
    std::fs::copy(&new_cert, certs.join("self-signed.pem")).unwrap();
    std::fs::copy(&new_key, certs.join("self-signed.key")).unwrap();
    let master = app.pid();
    let old_frontend = frontend_pids(&app);
    // Clients keep coming during the reload (certificate not checked:
    // they only show that no request fails while front ends change).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut args = vec!["-sk", "-o", "/dev/null", "-o", "/dev/null"];
                args.extend(["-o", "/dev/null", "-w", "%{http_code}\n", &url, &url, &url]);
                let out = Command::new("curl").args(&args).output().expect("curl");
                codes.extend(stdout(&out).lines().map(str::to_string));
            }
            codes
        })
    };
    app.signal(libc::SIGHUP);
    app.wait_until(
        "the new certificate is served",
        Duration::from_secs(20),
        |_| code(&new_cert) == "200",
    );
    app.wait_until("the old front end left", Duration::from_secs(20), |a| {
        let now = frontend_pids(a);
        now.len() == 1 && now != old_frontend
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes = load.join().unwrap();
    assert!(codes.len() >= 3, "{codes:?}");
    assert!(
        codes.iter().all(|c| c == "200"),
        "a request failed during the reload: {codes:?}"
    );
    assert_eq!(app.pid(), master);

    // A key that does not match: refused, the running front end keeps the
    // certificate that works.
    let (_, other_key) = openssl_pair(&app.dir, "other");
    std::fs::copy(&other_key, certs.join("self-signed.key")).unwrap();
    app.signal(libc::SIGHUP);
    app.wait_until("the refusal is logged", Duration::from_secs(20), |a| {
        a.log_text().contains("new certificate refused")
    });
    assert_eq!(code(&new_cert), "200");
}

fn frontend_pids(app: &Appliance) -> Vec<i64> {
    let exited: Vec<i64> = app
        .events("worker_exit")
        .iter()
        .filter(|e| e["role"] == "FrontEnd")
        .filter_map(|e| e["pid"].as_i64())
        .collect();
    app.events("post_fork")
        .iter()
        .filter(|e| e["role"] == "FrontEnd")
        .filter_map(|e| e["pid"].as_i64())
        .filter(|p| !exited.contains(p))
        .collect()
}

#[test]
fn a_dead_front_end_is_replaced_and_no_waiting_connection_is_lost() {
    let app = Appliance::start("fe-crash", "workers = 1\n", "");
    let url = format!("https://{}/healthz", app.tls);
    let first = frontend_pids(&app);
    assert_eq!(first.len(), 1, "{first:?}");
    // SAFETY: kill(2) on the appliance's own front end.
    unsafe { libc::kill(first[0] as i32, libc::SIGKILL) };
    // Connect at once: the master still holds the listening socket, so
    // this connection waits in its backlog for the next front end.
    let out = curl(
        &cert_of(&app),
        &["-w", "%{http_code}", "-o", "/dev/null", &url],
    );
    assert_eq!(
        stdout(&out),
        "200",
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.wait_until("a new front end", Duration::from_secs(10), |a| {
        let now = frontend_pids(a);
        now.len() == 1 && now[0] != first[0]
    });
}

fn count_429(app: &Appliance, n: usize) -> usize {
    let url = format!("https://{}/healthz", app.tls);
    let mut args = vec!["-w", "%{http_code}\n"];
    for _ in 0..n {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    let out = curl(&cert_of(app), &args);
    stdout(&out).lines().filter(|l| *l == "429").count()
}

#[test]
fn rate_limits_are_shared_through_redis_and_fall_back_when_it_is_gone() {
    let Some(redis) = Redis::start() else {
        eprintln!("SKIPPED: no redis-server on this machine");
        return;
    };
    let app = Appliance::start_with(
        "fe-redis",
        "workers = 1\n",
        "rate_limit_per_ip = 5",
        &format!("[redis]\nurl = \"{}\"\n", redis.url()),
    );
    assert!(count_429(&app, 20) >= 1);
    let keys = redis.cli(&["--scan", "--pattern", "sandgnat:rl:ip:*"]);
    assert!(
        keys.contains("127.0.0.1"),
        "no shared counter in Redis: {keys:?}"
    );
    assert_eq!(
        app.metric("sandgnat_ratelimit_redis_fallbacks_total"),
        Some(0.0)
    );

    // Redis goes away: requests are still limited, counted in process.
    drop(redis);
    assert!(count_429(&app, 20) >= 1);
    assert!(
        app.metric("sandgnat_ratelimit_redis_fallbacks_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    let warnings = app.log_text().matches("Redis unreachable").count();
    assert_eq!(warnings, 1, "the fallback is logged once");
}

#[test]
fn heads_pingora_cannot_parse_get_json_errors() {
    let app = Appliance::start("fe-pingora400", "workers = 1\n", "");
    let before = requests_seen_by_workers(&app);
    let many: String = (0..300).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    // Over pingora's own 1 MiB ceiling for a head, so the limit is not
    // only ours.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-A: vvvvvvvv\r\n".repeat(80_000)
    );
    // Each of these was answered by pingora itself with an empty 400 (or
    // 405) and `Server: Pingora`: its parser or its checks right after it
    // refused them before any of our hooks ran.
    let cases: &[(&str, &[u8], u16, &str)] = &[
        (
            "bad version in the request line",
            b"GET /healthz HTTP/7.3\r\nHost: a\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "control byte in the method",
            b"G\x01T /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "header field without a colon",
            b"GET /healthz HTTP/1.1\r\nHost a\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "two Host fields",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "non-chunked Transfer-Encoding",
            b"POST /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "more fields than pingora's parser takes",
            many.as_bytes(),
            431,
            "too_many_header_fields",
        ),
        (
            "head larger than pingora's ceiling",
            huge.as_bytes(),
            431,
            "request_head_too_large",
        ),
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            405,
            "method_not_allowed",
        ),
    ];
    for (what, raw, status, code) in cases {
        let resp = raw_exchange(&app, raw);
        assert_eq!(resp.status, *status, "{what}: {}", resp.head);
        assert_eq!(resp.json_error(what), *code, "{what}");
        assert!(
            resp.head.contains("x-request-id: "),
            "{what}: {}",
            resp.head
        );
    }
    // Good requests still pass on a connection that is kept alive (the
    // next head goes through the same check).
    let mut s = TcpStream::connect(&app.plain).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let first = read_one_response(&mut s);
    assert_eq!(first.status, 200, "{}", first.head);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n")
        .unwrap();
    let second = read_one_response(&mut s);
    assert_eq!(second.status, 400, "{}", second.head);
    assert_eq!(
        second.json_error("bad field on a kept-alive connection"),
        "bad_request"
    );
    app.wait_until(
        "the worker counted the good request",
        Duration::from_secs(5),
        |a| requests_seen_by_workers(a) >= before + 1.0,
    );
    assert_eq!(
        requests_seen_by_workers(&app),
        before + 1.0,
        "a refused head reached a worker"
    );
}

/// Reads one response with a Content-Length body off a kept-alive socket.
fn read_one_response(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read response head");
        assert_eq!(
            n,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read response body");
    buf.extend_from_slice(&body);
    RawResponse::parse(&buf).expect("a response")
}

/// Feeds `head` to `sink` then one byte of `trickle` every `every`, until
/// the peer stops taking them or `stop` is set.
fn trickle(
    mut sink: impl Write + Send + 'static,
    head: &'static [u8],
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut sent = 0usize;
        if sink.write_all(head).and_then(|_| sink.flush()).is_err() {
            return sent;
        }
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // The pace of a slowloris client: this sleep is the load, not
            // a wait for the appliance.
            std::thread::sleep(every);
            if sink.write_all(b"a").and_then(|_| sink.flush()).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    })
}

const HEADER_TIMEOUT_SECS: u64 = 2;

#[test]
fn a_head_trickled_byte_by_byte_is_cut_off_at_header_timeout() {
    let app = Appliance::start_with(
        "fe-slowloris",
        "workers = 1\n",
        &format!("header_timeout = {HEADER_TIMEOUT_SECS}"),
        "",
    );
    let deadline = Duration::from_secs(HEADER_TIMEOUT_SECS);
    // Generous for a loaded 2-core machine, and still far below pingora's
    // 60 s per read, which is what held such a client before.
    let margin = Duration::from_millis(1500);
    let head: &'static [u8] = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ";

    // Plain HTTP: every byte of the exchange is visible.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut s = TcpStream::connect(&app.plain).unwrap();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = trickle(
        s.try_clone().unwrap(),
        head,
        Duration::from_millis(200),
        stop.clone(),
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = writer.join().unwrap();
    let resp = RawResponse::parse(&buf).unwrap_or_else(|| {
        panic!(
            "no response after {took:?}: {:?}",
            String::from_utf8_lossy(&buf)
        )
    });
    assert_eq!(resp.status, 408, "{}", resp.head);
    assert_eq!(resp.json_error("slow head"), "header_timeout");
    assert!(resp.head.contains("connection: close"), "{}", resp.head);
    assert!(
        sent >= 3,
        "the client only got {sent} bytes in: not a trickle"
    );
    assert!(
        took >= deadline && took < deadline + margin,
        "cut off after {took:?}; proxy.header_timeout is {deadline:?}"
    );

    // Over TLS (the public port), with openssl as the slow client.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &app.tls])
        .args(["-servername", "localhost"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let writer = trickle(
        client.stdin.take().unwrap(),
        head,
        Duration::from_millis(200),
        stop.clone(),
    );
    // If s_client never sees the close, kill it so the test fails
    // instead of hanging.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let pid = client.id() as i32;
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut out = Vec::new();
    let _ = client.stdout.take().unwrap().read_to_end(&mut out);
    let took = started.elapsed();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = client.kill();
    let _ = client.wait();
    let _ = writer.join();
    let resp = RawResponse::parse(&out).unwrap_or_else(|| {
        panic!(
            "no TLS response after {took:?}: {:?}",
            String::from_utf8_lossy(&out)
        )
    });
    assert_eq!(resp.status, 408, "{}", resp.head);
    assert_eq!(resp.json_error("slow head over TLS"), "header_timeout");
    // The handshake happens inside the measured time, on top of the
    // deadline, so only the upper bound is asserted here.
    assert!(
        took < deadline + margin,
        "TLS client cut off after {took:?}; proxy.header_timeout is {deadline:?}"
    );

    // A client that sends its head in time is unaffected, and on a
    // kept-alive connection the clock starts at the next head's first
    // byte: sitting idle for longer than the deadline (well within
    // proxy.idle_timeout) is not a slow head.
    let mut s = TcpStream::connect(&app.plain).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    s.write_all(get).unwrap();
    assert_eq!(read_one_response(&mut s).status, 200);
    // The idleness under test, not a wait for the appliance.
    std::thread::sleep(deadline + Duration::from_millis(500));
    s.write_all(get).unwrap();
    let again = read_one_response(&mut s);
    assert_eq!(again.status, 200, "{}", again.head);
}

#[test]
fn a_bad_chunk_after_the_first_aborts_the_upload_at_the_worker() {
    let app = Appliance::start("fe-badchunk", "workers = 1\n", "");
    let at_worker = |a: &Appliance, status: &str| {
        a.metric(&format!(
            "sandgnat_requests_total{{route=\"/__debug\",status=\"{status}\"}}"
        ))
        .unwrap_or(0.0)
    };
    // Control: a whole chunked body reaches the worker whole, and the
    // worker says so (200 and its byte count).
    let good = raw_exchange(
        &app,
        b"POST /__debug/echo-headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(good.status, 200, "{}", good.head);
    let seen: serde_json::Value = serde_json::from_slice(&good.body).unwrap();
    assert_eq!(seen["body-bytes"], 8, "{seen}");
    app.wait_until(
        "the worker counted the good upload",
        Duration::from_secs(5),
        |a| at_worker(a, "200") == 1.0,
    );

    // The first chunk is fine, so the front end passes the head and that
    // chunk on; the second chunk's size is garbage.
    let bad = raw_exchange(
        &app,
        b"POST /__debug/echo-headers HTTP/1.1\r\nHost: a\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(bad.status, 400, "{}", bad.head);
    assert_eq!(bad.json_error("bad second chunk"), "bad_request");
    let body = String::from_utf8_lossy(&bad.body);
    assert!(body.contains("malformed chunked body"), "{body}");
    // The worker had the request (it answered it) but its body read
    // failed: it never saw the 5 bytes as a complete upload.
    app.wait_until(
        "the worker answered the aborted upload",
        Duration::from_secs(5),
        |a| at_worker(a, "400") == 1.0,
    );
    assert_eq!(
        at_worker(&app, "200"),
        1.0,
        "the worker took a truncated chunked body as complete"
    );
}

/// Sends raw bytes over TLS (openssl, HTTP/1.1, no ALPN); returns what
/// came back before the front end closed the connection.
fn tls_exchange(app: &Appliance, raw: &[u8]) -> RawResponse {
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &app.tls])
        .args(["-servername", "localhost"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    // stdin stays open: with -quiet, s_client would otherwise wait on
    // the server either way; the answer's `Connection: close` ends it.
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(raw).unwrap();
    stdin.flush().unwrap();
    let pid = client.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut out = Vec::new();
    let _ = client.stdout.take().unwrap().read_to_end(&mut out);
    let _ = done_tx.send(());
    let _ = watchdog.join();
    drop(stdin);
    let _ = client.wait();
    RawResponse::parse(&out)
        .unwrap_or_else(|| panic!("no TLS response: {:?}", String::from_utf8_lossy(&out)))
}

#[test]
fn an_http_1_1_request_without_host_is_refused_with_400() {
    let app = Appliance::start("fe-nohost", "workers = 1\n", "");
    let no_host = b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n";
    // HTTP/1.0 predates Host: still served, end to end (so the worker
    // behind the front end accepts what the front end forwards).
    let old = raw_exchange(&app, b"GET /healthz HTTP/1.0\r\nConnection: close\r\n\r\n");
    assert_eq!(old.status, 200, "{}", old.head);
    app.wait_until(
        "the worker counted the HTTP/1.0 request",
        Duration::from_secs(5),
        |a| requests_seen_by_workers(a) >= 1.0,
    );
    let before = requests_seen_by_workers(&app);

    let plain = raw_exchange(&app, no_host);
    assert_eq!(plain.status, 400, "{}", plain.head);
    assert_eq!(plain.json_error("no Host, plain"), "bad_request");
    let body = String::from_utf8_lossy(&plain.body);
    assert!(body.contains("Host"), "{body}");

    let tls = tls_exchange(&app, no_host);
    assert_eq!(tls.status, 400, "{}", tls.head);
    assert_eq!(tls.json_error("no Host, TLS"), "bad_request");
    // And a good request over the same path is served (the 400 is about
    // the missing Host, not a TLS client the front end dislikes).
    let good = tls_exchange(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(good.status, 200, "{}", good.head);
    app.wait_until(
        "the worker counted the good TLS request",
        Duration::from_secs(5),
        |a| requests_seen_by_workers(a) >= before + 1.0,
    );
    assert_eq!(
        requests_seen_by_workers(&app),
        before + 1.0,
        "a request without Host reached a worker"
    );

    // The workers' own socket holds to the same rule.
    let direct = |raw: &[u8]| {
        let mut s = std::os::unix::net::UnixStream::connect(&app.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        RawResponse::parse(&buf)
            .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&buf)))
    };
    let at_worker = direct(no_host);
    assert_eq!(at_worker.status, 400, "{}", at_worker.head);
    assert_eq!(at_worker.json_error("no Host, worker"), "bad_request");
    let at_worker = direct(b"GET /healthz HTTP/1.0\r\nConnection: close\r\n\r\n");
    assert_eq!(at_worker.status, 200, "{}", at_worker.head);
}

/// An HTTP/1.0 client that did not ask for keep-alive reads its answer to
/// the end of the connection: the front end must close it at once, not
/// after its idle time (RFC 9112, 9.3). One that asked keeps it.
#[test]
fn an_http_1_0_request_without_keep_alive_gets_its_connection_closed() {
    let app = Appliance::start("fe-http10", "workers = 1\n", "");
    let ends_within = |raw: &[u8], within: Duration| -> (bool, String) {
        let mut s = TcpStream::connect(&app.plain).unwrap();
        s.set_read_timeout(Some(within)).unwrap();
        s.write_all(raw).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (false, String::from_utf8_lossy(&got).into_owned()),
            }
        }
    };
    let (closed, answer) = ends_within(
        b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(answer.contains(" 200 "), "{answer}");
    assert!(closed, "an HTTP/1.0 connection was kept open: {answer}");
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{answer}"
    );
    let (closed, answer) = ends_within(
        b"GET /healthz HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        Duration::from_secs(1),
    );
    assert!(answer.contains(" 200 "), "{answer}");
    assert!(
        !closed,
        "a keep-alive HTTP/1.0 connection was closed at once"
    );
}

/// A worker that answers before reading the body (a 405 here; a bad key
/// or id elsewhere) reads it anyway before the answer goes out, so the
/// connection stays good for the next request. It did not: the front end
/// then lost the connection (or, when a request came on it meanwhile,
/// answered 502 for what was a 4xx).
#[test]
fn an_answer_given_before_the_body_keeps_the_connection() {
    let app = Appliance::start("fe-early", "workers = 1\n", "");
    let mut s = TcpStream::connect(&app.plain).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = br#"{"a": "body nobody reads"}"#;
    for i in 0..4 {
        write!(
            s,
            "POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        // The body comes after the worker has the head and has answered
        // it: a client's head and body are separate writes, and nothing
        // tells a client when the worker has read the head.
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(body)
            .unwrap_or_else(|e| panic!("request {i}: the connection is gone: {e}"));
        let r = read_one_response(&mut s);
        assert_eq!(r.status, 405, "request {i}: {}", r.head);
        assert_eq!(r.json_error("an early 405"), "method_not_allowed");
        assert!(!r.head.contains("connection: close"), "{}", r.head);
    }
}

/// One keep-alive client on the plain listener: posts a new sample, reads
/// the answer, and goes on on the same connection until told `Connection:
/// close` (then it connects again, as clients do). Anything else that
/// ends an exchange (a reset, a broken pipe, an end of stream before the
/// answer) is a failed request.
fn keep_alive_poster(
    plain: String,
    key: String,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::spawn(move || {
        let mut ok = 0u64;
        let mut failures = Vec::new();
        let mut conn: Option<TcpStream> = None;
        let mut i = 0u64;
        while !stop.load(Relaxed) {
            let s = match conn.as_mut() {
                Some(s) => s,
                None => {
                    let s = TcpStream::connect(&plain).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    conn.insert(s)
                }
            };
            i += 1;
            let body = format!("keep-alive sample {n}-{i}");
            let req = format!(
                "POST /v1/submit HTTP/1.1\r\nHost: sandgnat\r\nX-API-Key: {key}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let answer = s
                .write_all(req.as_bytes())
                .map_err(|e| format!("write: {e}"))
                .and_then(|_| common::h1::read_answer(s).map(|a| (a.status, a.close)));
            match answer {
                Ok((status, close)) => {
                    if status == 202 {
                        ok += 1;
                    } else {
                        failures.push(format!("status {status}"));
                    }
                    if close {
                        conn = None;
                    }
                }
                Err(e) => {
                    failures.push(e);
                    conn = None;
                }
            }
        }
        (ok, failures)
    })
}

#[test]
fn reloads_under_keep_alive_clients_fail_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let db = common::db::TestDb::create("hup_keepalive");
    // No rate limits: what is measured is connections, not refusals.
    let app = Appliance::start_with(
        "hup-keepalive",
        "workers = 2\n",
        "rate_limit_per_ip = 0\nrate_limit_per_key = 0\n",
        &format!("[database]\nurl = \"{}\"\n[queue]\nrunners = 0\n", db.url()),
    );
    let key = app.new_key("submitter");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|n| keep_alive_poster(app.plain.clone(), key.clone(), n, stop.clone()))
        .collect();
    let fronts = frontend_pids(&app);
    for _ in 0..6 {
        app.signal(libc::SIGHUP);
        app.expect_notify("RELOADING=1", 10 * SEC);
        app.expect_notify("READY=1", 20 * SEC);
        // The pace of an operator's reloads: the load goes on between.
        std::thread::sleep(Duration::from_millis(750));
    }
    // Until every retired front end has left: its last connections too.
    app.wait_until("retired front ends gone", 30 * SEC, |a| {
        frontend_pids(a).len() == 1
    });
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failures) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(ok > 50, "too few requests: {ok}");
    assert!(
        frontend_pids(&app).iter().all(|p| !fronts.contains(p)),
        "the front end was not replaced"
    );
}

/// What curl printed for one request: the status (0 when none) and the
/// body, with curl's own error when it failed.
fn curl_status_body(out: &Output) -> (u16, String, String) {
    let text = stdout(out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// RFC 9113 §8.1 lets a server answer before the request body is in; the
/// answer must then reach the client whole, over HTTP/2 as over HTTP/1.1,
/// however much body the client still has in flight. The bodies are far
/// larger than the socket buffers and the flow-control windows, and each
/// case runs several times so that a race lost half the time shows.
#[test]
fn early_answers_reach_the_client_whole_over_http2_and_http1() {
    let db = common::db::TestDb::create("fe_early");
    let app = Appliance::start_with(
        "fe-early",
        "workers = 1\n",
        "max_body_bytes = 8388608\nrate_limit_per_key = 0\nrate_limit_per_ip = 0",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nmax_sample_bytes = 1048576\n[queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let submitter = app.new_key("submitter");
    let reader = app.new_key("reader");
    let body = app.dir.join("6MiB");
    std::fs::write(&body, vec![0x5a_u8; 6 << 20]).unwrap();
    let huge = app.dir.join("10MiB");
    std::fs::write(&huge, vec![0x5a_u8; 10 << 20]).unwrap();
    let url = format!("https://{}/v1/submit", app.tls);
    let with = |k: &str| format!("X-API-Key: {k}");
    let (sub, read) = (with(&submitter), with(&reader));
    // (what, status, error code, headers, body): the first four answered
    // by a worker, the last by the front end from Content-Length.
    let cases: [(&str, u16, &str, Vec<&str>, &PathBuf); 5] = [
        ("no key", 401, "", vec![], &body),
        ("a reader key", 403, "", vec![&read], &body),
        ("over max_sample_bytes", 413, "", vec![&sub], &body),
        (
            "a multipart type with no boundary",
            400,
            "invalid_multipart",
            vec![&sub, "Content-Type: multipart/form-data"],
            &body,
        ),
        (
            "over proxy.max_body_bytes",
            413,
            "body_too_large",
            vec![&sub],
            &huge,
        ),
    ];
    let mut failures = Vec::new();
    for version in ["--http2", "--http1.1"] {
        for (what, status, code, headers, file) in &cases {
            for round in 0..10 {
                let data = format!("@{}", file.display());
                let mut args = vec![version, "-H", "Expect:"];
                for h in headers {
                    args.extend(["-H", h]);
                }
                args.extend(["--data-binary", &data, "-w", "\n%{http_code}", &url]);
                let out = curl(&cert_of(&app), &args);
                let (got, text, err) = curl_status_body(&out);
                let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
                let error = json.as_ref().and_then(|j| j["error"].as_str());
                let whole = out.status.success()
                    && got == *status
                    && error.is_some_and(|e| code.is_empty() || e == *code);
                if !whole {
                    failures.push(format!(
                        "{version} {what} #{round}: status {got}, body {text:?}, curl: {err}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 100 early answers were lost:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same race as curl runs it, made as likely as a client can make
/// it: an HTTP/2 client that ends its upload the moment it has the
/// answer's HEADERS (an empty DATA with END_STREAM, short of its
/// Content-Length, which h2 answers with a reset), then reads the body.
/// The answer must already be whole by then.
#[test]
fn an_http2_client_that_stops_at_the_answer_head_still_gets_the_answer() {
    use common::keepalive::{tls_for, Proto};
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 10;
    let db = common::db::TestDb::create("fe_early_h2");
    let app = Appliance::start_with(
        "fe-early-h2",
        "workers = 1\n",
        "max_body_bytes = 8388608\nrate_limit_per_key = 0\nrate_limit_per_ip = 0",
        &format!(
            "[database]\nurl = \"{}\"\n[intake]\nmax_sample_bytes = 1048576\n[queue]\nrunners = 0\n",
            db.url()
        ),
    );
    let submitter = app.new_key("submitter");
    let tls = tls_for(&app, Proto::Http2);
    // (what, key, body length, status, error code)
    let cases = [
        ("no key (the worker)", "", 6 << 20, 401, "unauthorized"),
        (
            "over max_sample_bytes (the worker)",
            submitter.as_str(),
            6 << 20,
            413,
            "",
        ),
        (
            "over max_body_bytes (the front end)",
            submitter.as_str(),
            10 << 20,
            413,
            "body_too_large",
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Several clients at once, so that the front end's threads are busy
    // and the time between an answer's head and its body, if any, grows.
    let mut outcomes = Vec::new();
    for (what, key, len, status, code) in cases {
        let rounds = (0..CLIENTS).map(|client| {
            let (addr, tls) = (app.tls.clone(), tls.clone());
            async move {
                let mut out = Vec::new();
                for round in 0..ROUNDS {
                    let got = stop_at_the_head(&addr, &tls, key, len).await;
                    out.push((format!("{what} #{client}.{round}"), got));
                }
                out
            }
        });
        for (name, got) in rt
            .block_on(futures_util::future::join_all(rounds))
            .into_iter()
            .flatten()
        {
            outcomes.push((name, status, code, got));
        }
    }
    let runs = outcomes.len();
    let lost: Vec<String> = outcomes
        .into_iter()
        .filter(|(_, status, code, got)| {
            !got.as_ref().is_ok_and(|(got, text)| {
                let json: Option<serde_json::Value> = serde_json::from_str(text).ok();
                let error = json.as_ref().and_then(|j| j["error"].as_str());
                got == status && error.is_some_and(|e| code.is_empty() || e == *code)
            })
        })
        .map(|(name, _, _, got)| format!("{name}: {got:?}"))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {runs} early answers were lost:\n{}",
        lost.len(),
        lost.join("\n")
    );
}

/// One request of `len` bytes with `key` (none when empty) that stops
/// its upload at the answer's head: the status and the body read after.
async fn stop_at_the_head(
    addr: &str,
    tls: &pingora_rustls::TlsConnector,
    key: &str,
    len: usize,
) -> Result<(u16, String), String> {
    use bytes::Bytes;
    let sender = common::keepalive::h2_connect(addr, tls).await;
    let mut sender = sender.ready().await.map_err(|e| e.to_string())?;
    let mut req = http::Request::post(format!("https://{addr}/v1/submit"))
        .header("content-type", "application/octet-stream")
        .header("content-length", len);
    if !key.is_empty() {
        req = req.header("x-api-key", key);
    }
    let (mut answer, mut upload) = sender
        .send_request(req.body(()).unwrap(), false)
        .map_err(|e| e.to_string())?;
    let chunk = Bytes::from(vec![0x5a_u8; 16 << 10]);
    let mut sent = 0usize;
    let head = loop {
        let room = async {
            upload.reserve_capacity(chunk.len());
            std::future::poll_fn(|cx| upload.poll_capacity(cx)).await
        };
        tokio::select! {
            biased;
            head = &mut answer => break head.map_err(|e| format!("no head: {e}"))?,
            got = room, if sent < len => match got {
                Some(Ok(n)) => {
                    let n = n.min(len - sent).min(chunk.len());
                    upload.send_data(chunk.slice(..n), false).map_err(|e| e.to_string())?;
                    sent += n;
                }
                _ => return Err("the upload was refused before any answer".into()),
            },
        }
    };
    // Stop here, short of Content-Length, as curl does.
    let _ = upload.send_data(Bytes::new(), true);
    let status = head.status().as_u16();
    let mut body = head.into_body();
    let mut text = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| format!("status {status}, body cut: {e}"))?;
        let _ = body.flow_control().release_capacity(data.len());
        text.extend_from_slice(&data);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

/// A TCP connection to `to` from the local address `src` (any of
/// 127.0.0.0/8 is this host), so one test can be several clients.
fn connect_from(src: &str, to: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    let remote: std::net::SocketAddr = to.parse().unwrap();
    sock.connect(&remote.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

const HEALTHZ_KEEP_ALIVE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// A connection from `src` with one request answered on it: the front end
/// has admitted it and holds it (kept alive).
fn held_from(app: &Appliance, src: &str) -> Result<TcpStream, RawResponse> {
    let mut s = connect_from(src, &app.plain);
    s.write_all(HEALTHZ_KEEP_ALIVE).unwrap();
    let r = read_one_response(&mut s);
    if r.status == 200 {
        Ok(s)
    } else {
        Err(r)
    }
}

#[test]
fn connections_over_a_cap_get_503_until_one_closes() {
    let app = Appliance::start_with(
        "fe-conncap",
        "workers = 1\n",
        "max_connections_per_ip = 4\nmax_connections = 6\nrate_limit_per_ip = 0",
        "",
    );
    let refused = |what: &str, r: RawResponse| {
        assert_eq!(r.status, 503, "{what}: {}", r.head);
        assert_eq!(r.json_error(what), "too_many_connections");
        assert!(r.head.contains("connection: close"), "{what}: {}", r.head);
    };
    let mut held: Vec<TcpStream> = (0..4)
        .map(|i| held_from(&app, "127.0.0.1").unwrap_or_else(|r| panic!("#{i}: {}", r.head)))
        .collect();
    // The fifth from the same address is refused while four are open.
    let fifth = held_from(&app, "127.0.0.1").map(|_| ()).unwrap_err();
    refused("a fifth connection from one address", fifth);
    // Another address still gets in, up to the total.
    let others: Vec<TcpStream> = (0..2)
        .map(|i| held_from(&app, "127.0.0.2").unwrap_or_else(|r| panic!("other #{i}: {}", r.head)))
        .collect();
    let over_total = held_from(&app, "127.0.0.3").map(|_| ()).unwrap_err();
    refused("a seventh connection in all", over_total);
    let refusals = |reason: &str| {
        app.metric(&format!(
            "sandgnat_frontend_connections_refused_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(-1.0)
    };
    assert_eq!(refusals("max_connections_per_ip"), 1.0);
    assert_eq!(refusals("max_connections"), 1.0);

    // Closing one gives its place back: a new connection from the first
    // address is served once the front end has seen the close.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        match held_from(&app, "127.0.0.1") {
            Ok(s) => break s,
            Err(r) if Instant::now() < deadline => assert_eq!(r.status, 503, "{}", r.head),
            Err(r) => panic!("still refused after a connection closed: {}", r.head),
        }
    };
    // The connections held stay usable throughout.
    held.push(again);
    for s in &mut held {
        s.write_all(HEALTHZ_KEEP_ALIVE).unwrap();
        assert_eq!(read_one_response(s).status, 200);
    }
    drop(others);
}

/// How many of `conns` have something to read (an answer, or the close),
/// without reading it.
fn readable(conns: &[TcpStream]) -> Vec<usize> {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll(2) on descriptors these streams own, for no time.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    fds.iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect()
}

/// Unfinished heads holding more than `proxy.head_budget_bytes` together:
/// the front end answers the costliest a 503 JSON and closes them, counts
/// each in `sandgnat_frontend_heads_evicted_total`, and the heads it kept
/// are served once they are complete.
#[test]
fn unfinished_heads_over_the_head_budget_are_evicted_and_counted() {
    const HEADS: usize = 40;
    // Each head below takes more than its first read (4 KiB), so it is
    // charged a grown buffer of 8 KiB: the budget keeps eight at most.
    const KEPT_AT_MOST: usize = 8;
    let app = Appliance::start_with(
        "fe-headbudget",
        "workers = 1\n",
        "head_budget_bytes = 65536\nrate_limit_per_ip = 0",
        "",
    );
    let partial = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: {}",
        "p".repeat(6000)
    );
    let mut conns: Vec<TcpStream> = (0..HEADS)
        .map(|_| {
            let mut s = TcpStream::connect(&app.plain).unwrap();
            s.set_read_timeout(Some(10 * SEC)).unwrap();
            s.write_all(partial.as_bytes()).unwrap();
            s
        })
        .collect();
    let evicted = |app: &Appliance| {
        app.metric("sandgnat_frontend_heads_evicted_total")
            .unwrap_or(-1.0) as usize
    };
    // Every eviction is counted before its answer is written: wait until
    // the count is what the budget forces and each counted head's answer
    // is there to read.
    app.wait_until("the heads over the budget evicted", 20 * SEC, |a| {
        let n = evicted(a);
        n >= HEADS - KEPT_AT_MOST && readable(&conns).len() == n
    });
    let gone = readable(&conns);
    assert_eq!(gone.len(), evicted(&app));
    for &i in &gone {
        let r = read_one_response(&mut conns[i]);
        assert_eq!(r.status, 503, "{}", r.head);
        assert_eq!(r.json_error("an evicted head"), "head_budget_exceeded");
        assert!(r.head.contains("connection: close"), "{}", r.head);
    }
    // The heads kept were held all along, and are served when they end.
    let kept: Vec<usize> = (0..HEADS).filter(|i| !gone.contains(i)).collect();
    assert!(
        !kept.is_empty() && kept.len() <= KEPT_AT_MOST,
        "{} heads kept",
        kept.len()
    );
    for i in kept {
        conns[i].write_all(b"\r\n\r\n").unwrap();
        let r = read_one_response(&mut conns[i]);
        assert_eq!(r.status, 200, "{}", r.head);
    }
    // A fresh client is not held back by what was evicted.
    let mut s = TcpStream::connect(&app.plain).unwrap();
    s.set_read_timeout(Some(10 * SEC)).unwrap();
    s.write_all(HEALTHZ_KEEP_ALIVE).unwrap();
    assert_eq!(read_one_response(&mut s).status, 200);
}

/// HTTP/2 requests meet gunicorn's head limits with the same answers as
/// HTTP/1.1 ones: too many fields 431, a field too large 400, a request
/// line (here, its `:path`) too long 414, each as the appliance's JSON.
#[test]
fn http2_requests_meet_the_same_head_limits_as_http1() {
    let app = Appliance::start("fe-h2limits", "workers = 1\n", "");
    let url = format!("https://{}/healthz", app.tls);
    let many: Vec<String> = (0..101).map(|i| format!("X-N-{i}: v")).collect();
    let big = format!("X-Big: {}", "v".repeat(9000));
    let long_url = format!("https://{}/{}", app.tls, "a".repeat(5000));
    let mut many_args: Vec<&str> = Vec::new();
    for h in &many {
        many_args.extend(["-H", h]);
    }
    let cases: [(&str, Vec<&str>, &str, u16, &str); 3] = [
        (
            "101 header fields",
            many_args,
            &url,
            431,
            "too_many_header_fields",
        ),
        (
            "a 9000-byte field",
            vec!["-H", &big],
            &url,
            400,
            "bad_request",
        ),
        (
            "a 5000-byte path",
            vec![],
            &long_url,
            414,
            "request_line_too_long",
        ),
    ];
    for (what, headers, target, status, code) in &cases {
        for version in ["--http2", "--http1.1"] {
            let mut args = vec![version, "-w", "\n%{http_code} %{http_version}"];
            args.extend(headers.iter().copied());
            args.push(target);
            let out = curl(&cert_of(&app), &args);
            let text = stdout(&out);
            let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
            let expect = format!(
                "{status} {}",
                if version == "--http2" { "2" } else { "1.1" }
            );
            assert_eq!(tail, expect, "{version} {what}: {text} {:?}", out.stderr);
            let v: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{version} {what}: not JSON ({e}): {body}"));
            assert_eq!(v["error"], *code, "{version} {what}: {v}");
        }
    }
    // Within the limits, both are served.
    for version in ["--http2", "--http1.1"] {
        let out = curl(
            &cert_of(&app),
            &[version, "-o", "/dev/null", "-w", "%{http_code}", &url],
        );
        assert_eq!(stdout(&out), "200", "{version}");
    }
}

/// HTTP/2's deadline for a request's headers: a connection that starts a
/// header block and never finishes it is closed after
/// proxy.header_timeout, not kept for the (longer) idle timeout.
#[test]
fn an_unfinished_http2_header_block_is_cut_off_at_header_timeout() {
    let app = Appliance::start_with(
        "fe-h2deadline",
        "workers = 1\n",
        "header_timeout = 2\nidle_timeout = 120",
        "",
    );
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-alpn", "h2", "-connect", &app.tls])
        .args(["-servername", "localhost"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let mut stdin = client.stdin.take().unwrap();
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame.
    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // HEADERS on stream 1 holding `:method: GET` (HPACK index 2), with
    // neither END_HEADERS nor END_STREAM: the block is left open.
    frames.extend_from_slice(&[0, 0, 1, 1, 0, 0, 0, 0, 1, 0x82]);
    stdin.write_all(&frames).unwrap();
    stdin.flush().unwrap();
    let started = Instant::now();
    let pid = client.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut out = Vec::new();
    let _ = client.stdout.take().unwrap().read_to_end(&mut out);
    let held = started.elapsed();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    drop(stdin);
    let _ = client.wait();
    // The server spoke HTTP/2 (its SETTINGS frame first), so the close
    // below is HTTP/2's deadline and not an HTTP/1 refusal of the preface.
    assert!(
        out.len() >= 9 && out[3] == 4,
        "no HTTP/2 SETTINGS from the server: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(8),
        "an unfinished header block was held {held:?} (header_timeout 2 s, idle 120 s)"
    );
}
