//! Job-queue throughput on this machine, with Postgres on the same cores:
//! enqueue (one job per transaction, as a submission does; and
//! `enqueue_many`, 100 per statement), and claim + complete in process
//! (claims of 100, each batch completed by one `complete_many`); with `SANDGNAT_SOCKET` and `SANDGNAT_KEY` set, claim +
//! complete over HTTP against a running appliance (what the bridge does:
//! one claim of up to 50 jobs, then one complete call per job, on
//! keep-alive connections). One JSON line per figure.
//!
//! Run: `bash benches/queue.sh` (starts the appliance), or
//! `cargo bench --bench queue` for the in-process figures alone.

use std::time::{Duration, Instant};

use sandgnat::queue::{self, Claim, NewJob};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

const JOBS: usize = 20_000;
const TASKS: usize = 4;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        match (
            std::env::var("SANDGNAT_SOCKET"),
            std::env::var("SANDGNAT_KEY"),
        ) {
            (Ok(socket), Ok(key)) => {
                let db =
                    std::env::var("SANDGNAT_DB").expect("SANDGNAT_DB: the appliance's database");
                // 8 bridge connections, and 32 (a bridge driving that many
                // VMs): concurrent commits share the WAL flush.
                for clients in [8, 32] {
                    over_http(&db, &socket, &key, clients).await
                }
            }
            _ => in_process(&admin).await,
        }
    });
}

fn report(what: &str, jobs: usize, took: Duration) {
    report_with(what, jobs, took, json!({}));
}

fn report_with(what: &str, jobs: usize, took: Duration, extra: serde_json::Value) {
    let mut line = json!({ "bench": what, "jobs": jobs, "seconds": took.as_secs_f64(),
                           "jobs_per_s": (jobs as f64 / took.as_secs_f64()).round() });
    if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
        line.extend(extra.clone());
    }
    println!("{line}");
}

async fn fresh_db(admin: &str) -> PgPool {
    let admin_pool = PgPool::connect(admin).await.expect("admin connection");
    sqlx::query("DROP DATABASE IF EXISTS sandgnat_queue_bench WITH (FORCE)")
        .execute(&admin_pool)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE sandgnat_queue_bench")
        .execute(&admin_pool)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    let pool = PgPoolOptions::new()
        .max_connections(TASKS as u32 + 1)
        .connect(&format!("{base}/sandgnat_queue_bench"))
        .await
        .expect("bench database");
    queue::MIGRATOR.run(&pool).await.expect("migrations");
    pool
}

fn job(i: usize) -> NewJob {
    NewJob::new("analysis", "detonate", json!({ "n": i }))
}

async fn in_process(admin: &str) {
    let pool = fresh_db(admin).await;

    // One job per transaction: what a submission costs the queue.
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut c = pool.acquire().await.unwrap();
                for i in (t..JOBS).step_by(TASKS) {
                    let mut tx = c.begin().await.unwrap();
                    queue::enqueue(&mut tx, job(i)).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    report("enqueue_one_per_tx", JOBS, start.elapsed());

    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut c = pool.acquire().await.unwrap();
                let mine: Vec<usize> = (t..JOBS).step_by(TASKS).collect();
                for chunk in mine.chunks(100) {
                    let jobs = chunk.iter().map(|i| job(*i)).collect();
                    queue::enqueue_many(&mut c, jobs).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    report("enqueue_many_100_per_statement", JOBS, start.elapsed());

    // 2 * JOBS are waiting now; claim and complete them all.
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut c = pool.acquire().await.unwrap();
                let mut done = 0;
                loop {
                    let req = Claim {
                        queue: "analysis",
                        max_jobs: 100,
                        lease: Duration::from_secs(60),
                        holder: "bench",
                        max_running: 0,
                    };
                    let (jobs, _) = queue::claim(&mut c, &req).await.unwrap();
                    if jobs.is_empty() {
                        return done;
                    }
                    let batch: Vec<_> = jobs
                        .iter()
                        .map(|j| (j.id, j.lease_token.as_str(), json!({"ok": true})))
                        .collect();
                    let results = queue::complete_many(&mut c, &batch).await.unwrap();
                    assert!(results.iter().all(Result::is_ok));
                    done += jobs.len();
                }
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, 2 * JOBS, "every job claimed and completed once");
    report("claim_complete_batched", done, start.elapsed());
}

/// A minimal HTTP/1.1 keep-alive client over the workers' Unix socket: the
/// bench measures the appliance, not a client library.
struct Http {
    stream: tokio::io::BufReader<tokio::net::UnixStream>,
    key: String,
}

impl Http {
    async fn connect(socket: &str, key: &str) -> Self {
        let s = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect");
        Http {
            stream: tokio::io::BufReader::new(s),
            key: key.into(),
        }
    }

    async fn post(&mut self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.key,
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut buf = vec![0; len];
        self.stream.read_exact(&mut buf).await.unwrap();
        (status, serde_json::from_slice(&buf).unwrap_or_default())
    }
}

async fn over_http(db: &str, socket: &str, key: &str, clients: usize) {
    let pool = PgPool::connect(db).await.expect("appliance database");
    let total = JOBS / 2;
    sqlx::query(
        "INSERT INTO jobs (id, queue, kind, payload)
         SELECT gen_random_uuid(), 'analysis', 'detonate', jsonb_build_object('n', n)
           FROM generate_series(1, $1) n",
    )
    .bind(total as i32)
    .execute(&pool)
    .await
    .unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (socket, key) = (socket.to_string(), key.to_string());
            tokio::spawn(async move {
                let mut http = Http::connect(&socket, &key).await;
                let mut done = 0;
                loop {
                    let (status, body) = http
                        .post(
                            "/v1/queues/analysis/claim",
                            &json!({"max_jobs": 50, "lease_seconds": 60}),
                        )
                        .await;
                    assert_eq!(status, 200, "{body}");
                    let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
                    if jobs.is_empty() {
                        return done;
                    }
                    for j in jobs {
                        let path = format!("/v1/jobs/{}/complete", j["id"].as_str().unwrap());
                        let (status, body) = http
                            .post(
                                &path,
                                &json!({"lease_token": j["lease_token"], "result": {}}),
                            )
                            .await;
                        assert_eq!(status, 200, "{body}");
                        done += 1;
                    }
                }
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, total, "every job claimed and completed once");
    report_with(
        "claim_complete_http",
        done,
        start.elapsed(),
        json!({ "clients": clients }),
    );
}
