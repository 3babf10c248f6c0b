//! A throwaway database per test on the machine's PostgreSQL, and a TCP
//! relay the test controls, to take the database away and give it back
//! without touching the shared server.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create(tag: &str) -> Self {
        let name = format!(
            "sandgnat_{tag}_{}_{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
                & 0xffffff
        );
        psql(&admin_url(), &format!("CREATE DATABASE {name}"));
        TestDb { name }
    }

    /// The URL of this database through `host:port`.
    pub fn url_via(&self, host_port: &str) -> String {
        format!("postgres://postgres@{host_port}/{}", self.name)
    }

    pub fn url(&self) -> String {
        self.url_via("127.0.0.1:5432")
    }

    /// One value from a query, as text.
    pub fn scalar(&self, sql: &str) -> String {
        psql(&self.url(), sql)
    }

    /// Runs a statement; returns psql's error text when it fails.
    pub fn try_exec(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([self.url().as_str(), "-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// A transaction left open in a `psql` session, holding what its
/// statements took (locks) until `release` or drop.
pub struct Held {
    child: std::process::Child,
}

impl TestDb {
    /// Opens a transaction, runs `sql` in it, and returns once it has run.
    pub fn hold(&self, sql: &str) -> Held {
        use std::io::BufRead;
        let mut child = Command::new("psql")
            .args([self.url().as_str(), "-v", "ON_ERROR_STOP=1", "-qtA"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run psql");
        let mut stdin = child.stdin.take().unwrap();
        write!(stdin, "BEGIN;\n{sql};\n\\echo held\n").unwrap();
        stdin.flush().unwrap();
        child.stdin = Some(stdin);
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.trim() == "held")),
            "psql did not run {sql:?}"
        );
        Held { child }
    }
}

impl Held {
    /// Rolls the transaction back and waits for the session to end.
    pub fn release(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"ROLLBACK;\n\\q\n");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.end();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                admin_url().as_str(),
                "-tAc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Forwards TCP connections to a target until cut (connections reset) or
/// stalled (bytes vanish and nothing answers, as behind a partition).
pub struct Relay {
    pub addr: String,
    up: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let stalled = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2, stalled2) = (up.clone(), open.clone(), stalled.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    // Down: refuse by closing at once.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if stalled2.load(Ordering::SeqCst) {
                    // Stalled: accepted, never answered.
                    open2.lock().unwrap().push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut o = open2.lock().unwrap();
                    o.push(client.try_clone().unwrap());
                    o.push(server.try_clone().unwrap());
                }
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    stalled2.clone(),
                );
                pipe(server, client, stalled2.clone());
            }
        });
        Relay {
            addr,
            up,
            stalled,
            open,
        }
    }

    /// Keeps every connection open but forwards nothing, either way.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
        // Connections that lost bytes while stalled are out of step: end
        // them, as a partition that heals leaves the client to reconnect.
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if stalled.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
