//! The operator's status page end to end: the real binary with a database
//! of its own, checked first with plain requests (who may sign in, the
//! cookie's attributes, the security headers, a hostile file name shown
//! as text), then in headless Chromium through the TLS front end, signing
//! in on the form and reading the rendered page.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::db::TestDb;
use common::{request_unix_body, Appliance, Response};
use serde_json::{json, Value};

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
/// Survives intake whole (it keeps what follows the last `/` or `\`).
const HOSTILE: &str = "<img src=x onerror=alert(1)>.exe";
const HOSTILE_QUERY: &str = "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E.exe";

fn start(tag: &str, db: &TestDb) -> Appliance {
    Appliance::start(
        tag,
        "workers = 2\n",
        &format!("[database]\nurl = \"{}\"\n", db.url()),
    )
}

fn submit(app: &Appliance, key: &str, body: &[u8], query: &str) -> Value {
    app.accepted(key, query, body, &[])
}

fn login(app: &Appliance, key: &str, origin: Option<&str>) -> Response {
    let body = format!("key={key}");
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    request_unix_body(
        &app.socket,
        "POST",
        "/status/login",
        &headers,
        Some(body.as_bytes()),
    )
    .unwrap()
}

fn page(app: &Appliance, cookie: Option<&str>) -> Response {
    let cookie = cookie.map(|c| format!("__Secure-sandgnat-status={c}"));
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
    common::request_unix(&app.socket, "GET", "/status", &headers).unwrap()
}

fn assert_locked_down(r: &Response) {
    let csp = r.header("content-security-policy").unwrap_or_default();
    for part in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "CSP {csp:?} lacks {part}");
    }
    assert!(!csp.contains("script-src"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[test]
fn status_page_without_a_browser() {
    let db = TestDb::create("status_plain");
    let app = start("status-plain", &db);
    let reader = app.new_key("reader");
    let submitter = app.new_key("submitter");
    submit(
        &app,
        &submitter,
        EICAR,
        &format!("filename={HOSTILE_QUERY}"),
    );

    // No cookie: the login form.
    let r = page(&app, None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains("action=\"/status/login\"") && r.body.contains("name=\"key\""));
    assert_locked_down(&r);

    // A submitter key is refused, and so is a post from another site.
    let r = login(&app, &submitter, None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("may not see the status page"), "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    let r = login(&app, &reader, Some("https://evil.example"));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    let r = login(&app, "sgk_not-a-key", None);
    assert_eq!(r.status, 401, "{}", r.body);
    // Through the plain-HTTP listener the page asks for HTTPS instead.
    let plain = format!("http://{}/status", app.plain);
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &plain])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--data-urlencode"])
        .arg(format!("key={reader}"))
        .arg(format!("http://{}/status/login", app.plain))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(!head.contains("set-cookie"), "{head}");

    // A reader key opens a session; the cookie holds a token, not the key.
    let r = login(&app, &reader, Some("http://sandgnat"));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/status"));
    let set = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/status"] {
        assert!(set.contains(part), "{set}");
    }
    let token = set
        .split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v.to_string())
        .unwrap();
    assert!(!token.is_empty() && !set.contains(&reader), "{set}");
    assert_eq!(db.scalar("SELECT count(*) FROM status_sessions"), "1");

    let r = page(&app, Some(&token));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_locked_down(&r);
    assert!(r.body.contains(EICAR_SHA256), "{}", r.body);
    assert!(
        r.body.contains("&lt;img src=x onerror=alert(1)&gt;.exe"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("<img"), "{}", r.body);
    assert!(!r.body.contains("<script"), "{}", r.body);
    assert!(
        r.body.contains("<span id=\"worker-count\">2</span>"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("EICAR"),
        "the YARA match is listed: {}",
        r.body
    );
    // The accept queues were read from the kernel, not left unknown.
    for listener in [
        "workers (Unix socket)".to_string(),
        format!("TLS {}", app.tls),
    ] {
        let row = format!("<td>{listener}</td><td class=\"n\">");
        let at = r.body.find(&row).unwrap_or_else(|| panic!("no {row}"));
        let value = &r.body[at + row.len()..];
        assert!(
            value.starts_with(|c: char| c.is_ascii_digit()),
            "{listener}: {value:.40}"
        );
    }

    // Logout ends the session in the database, not only in the browser.
    let r = request_unix_body(
        &app.socket,
        "POST",
        "/status/logout",
        &[("Cookie", &format!("__Secure-sandgnat-status={token}"))],
        Some(b""),
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(page(&app, Some(&token)).status, 401);
}

/// A tiny WebDriver client: one JSON request per connection.
struct Driver {
    addr: String,
    session: String,
    // Dropped after the session is deleted, which closes Chromium.
    _process: Killed,
}

/// chromedriver, killed however the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_json(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    // WebDriver wants a JSON object with every POST, even an empty one.
    let body = match (body, method) {
        (Some(b), _) => b.to_string(),
        (None, "POST") => "{}".to_string(),
        (None, _) => String::new(),
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open whatever it is asked: read
    // the head, then exactly Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection");
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("chromedriver answers with a Content-Length");
    while raw.len() < head_end + length {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection mid-answer");
        raw.extend_from_slice(&buf[..n]);
    }
    let r = common::parse_response(&raw[..head_end + length]).unwrap();
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

impl Driver {
    fn start(profile: &std::path::Path) -> Self {
        let port = common::free_port();
        let addr = format!("127.0.0.1:{port}");
        let process = Killed(
            Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; packaging/dev/bootstrap.sh installs it)"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        // chromedriver's /status says when it takes sessions.
        loop {
            let ready = TcpStream::connect(&addr).is_ok()
                && http_json(&addr, "GET", "/status", None).1["value"]["ready"] == true;
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1600",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let (status, v) = http_json(&addr, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "cannot start Chromium: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Driver {
            addr,
            session,
            _process: process,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = http_json(
            &self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        );
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    fn text(&self, css: &str) -> String {
        let el = self.find(css);
        self.call("GET", &format!("/element/{el}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http_json(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

#[test]
fn status_page_in_headless_chromium() {
    let db = TestDb::create("status_browser");
    let app = start("status-browser", &db);
    let reader = app.new_key("reader");
    let submitter = app.new_key("submitter");
    submit(
        &app,
        &submitter,
        EICAR,
        &format!("filename={HOSTILE_QUERY}"),
    );

    let profile = app.dir.join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let driver = Driver::start(&profile);
    let url = format!("https://{}/status", app.tls);
    driver.call("POST", "/url", Some(json!({ "url": url })));
    assert_eq!(
        driver.call("GET", "/title", None),
        "SandGNAT status: sign in"
    );
    let field = driver.find("#key");
    driver.call(
        "POST",
        &format!("/element/{field}/value"),
        Some(json!({ "text": reader })),
    );
    let button = driver.find("#sign-in");
    driver.call("POST", &format!("/element/{button}/click"), None);
    // The click posts the form and follows the redirect; the page's title
    // changes when the signed-in page has loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while driver.call("GET", "/title", None) != "SandGNAT status" {
        assert!(
            Instant::now() < deadline,
            "the signed-in page did not load: {}\n{}\nlog:\n{}",
            driver.call("GET", "/url", None),
            driver.call("GET", "/source", None),
            app.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    assert_eq!(driver.text("#worker-count"), "2");
    assert_eq!(driver.text("#submissions code.sha256"), EICAR_SHA256);
    // The hostile name is text, not markup, and ran nothing.
    assert_eq!(driver.text("#submissions td.filename"), HOSTILE);
    let (status, _) = http_json(
        &driver.addr,
        "GET",
        &format!("/session/{}/alert/text", driver.session),
        None,
    );
    assert_eq!(status, 404, "no alert is open");
    // The session cookie is out of the page's reach.
    let cookies = driver.call(
        "POST",
        "/execute/sync",
        Some(json!({"script": "return document.cookie", "args": []})),
    );
    assert_eq!(cookies, "", "HttpOnly keeps the cookie from scripts");

    let shot = driver.call("GET", "/screenshot", None);
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status_page.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());

    // Signing out through the page ends the session.
    let out_button = driver.find("#sign-out");
    driver.call("POST", &format!("/element/{out_button}/click"), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while driver.call("GET", "/title", None) != "SandGNAT status: sign in" {
        assert!(
            Instant::now() < deadline,
            "signing out did not return to the form"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(db.scalar("SELECT count(*) FROM status_sessions"), "0");
}
