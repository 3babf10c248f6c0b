//! The queue core against the real Postgres: each `#[sqlx::test]` gets a
//! fresh database with the migrations applied.

use std::collections::HashSet;
use std::time::Duration;

use sandgnat::queue::{self, Backoff, Claim, NewJob, QueueError};
use serde_json::json;
use sqlx::PgPool;

fn job(unique: Option<&str>) -> NewJob {
    NewJob {
        max_attempts: 3,
        unique_key: unique.map(str::to_owned),
        ..NewJob::new("static", "static", json!({"n": 1}))
    }
}

fn req(queue: &str, max_jobs: u32, lease_secs: f64) -> Claim<'_> {
    Claim {
        queue,
        max_jobs,
        lease: Duration::from_secs_f64(lease_secs),
        holder: "test",
        max_running: 0,
    }
}

async fn claim(c: &mut sqlx::PgConnection, r: &Claim<'_>) -> Vec<queue::ClaimedJob> {
    queue::claim(c, r).await.unwrap().0
}

async fn state_of(pool: &PgPool, id: uuid::Uuid) -> String {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Moves a job's clock instead of sleeping: its lease or its retry time
/// is now in the past.
async fn expire(pool: &PgPool, id: uuid::Uuid) {
    sqlx::query(
        "UPDATE jobs SET lease_until = now() - interval '1 second',
                         run_at = LEAST(run_at, now() - interval '1 second') WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

const NO_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(60),
    cap: Duration::from_secs(600),
};

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn concurrent_claimers_never_share_a_job(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    for _ in 0..200 {
        queue::enqueue(&mut c, job(None)).await.unwrap();
    }
    drop(c);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let mut c = pool.acquire().await.unwrap();
                let batch = claim(&mut c, &req("static", 7, 30.0)).await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200);
    assert_eq!(distinct.len(), 200);
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn priority_then_age_decides_the_order(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let low = queue::enqueue(&mut c, job(None)).await.unwrap();
    let high = queue::enqueue(
        &mut c,
        NewJob {
            priority: 10,
            ..job(None)
        },
    )
    .await
    .unwrap();
    let later = queue::enqueue(
        &mut c,
        NewJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            priority: 100,
            ..job(None)
        },
    )
    .await
    .unwrap();
    assert_eq!(state_of(&pool, later).await, "scheduled");
    let got: Vec<_> = claim(&mut c, &req("static", 10, 30.0))
        .await
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(got, vec![high, low], "the scheduled job is not due yet");
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn stale_token_complete_changes_nothing(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let id = queue::enqueue(&mut c, job(None)).await.unwrap();
    let claimed = claim(&mut c, &req("static", 1, 30.0)).await;
    assert_eq!(claimed[0].id, id);
    let token = claimed[0].lease_token.as_str();
    // The attempt number (what the token used to be) holds nothing, nor
    // does any other token.
    let attempt = claimed[0].attempt.to_string();
    let other = queue::LeaseToken::generate();
    for guess in [attempt.as_str(), other.as_str(), ""] {
        let err = queue::complete(&mut c, id, guess, json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::StaleLease), "{err:?}");
        let err = queue::fail(&mut c, id, guess, json!("x"), true, &NO_BACKOFF)
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::StaleLease), "{err:?}");
        let err = queue::heartbeat(&mut c, id, guess, Duration::from_secs(30), None)
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::StaleLease), "{err:?}");
    }
    assert_eq!(state_of(&pool, id).await, "running");
    // Only the hash is kept.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT lease_token_hash FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert_ne!(stored, token.as_bytes());
    queue::complete(&mut c, id, token, json!({"ok": true}))
        .await
        .unwrap();
    let err = queue::complete(&mut c, id, token, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::StaleLease), "{err:?}");
    let err = queue::complete(&mut c, uuid::Uuid::new_v4(), token, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::NotFound), "{err:?}");
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn expired_lease_is_reclaimed_and_the_old_token_is_fenced(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let id = queue::enqueue(&mut c, job(None)).await.unwrap();
    let first = claim(&mut c, &req("static", 1, 30.0)).await;
    assert!(claim(&mut c, &req("static", 1, 30.0)).await.is_empty());
    expire(&pool, id).await;
    // Heartbeat on an expired lease is refused even before anyone reclaims.
    let err = queue::heartbeat(
        &mut c,
        id,
        first[0].lease_token.as_str(),
        Duration::from_secs(30),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, QueueError::StaleLease), "{err:?}");
    let reclaimed = queue::reclaim_expired(&mut c, None).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].state, "retryable");
    let second = claim(&mut c, &req("static", 1, 30.0)).await;
    assert_eq!(second[0].id, id);
    assert_eq!(second[0].attempt, first[0].attempt + 1);
    assert_ne!(second[0].lease_token, first[0].lease_token);
    let err = queue::complete(&mut c, id, first[0].lease_token.as_str(), json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::StaleLease), "{err:?}");
    queue::complete(&mut c, id, second[0].lease_token.as_str(), json!({}))
        .await
        .unwrap();
    let errors: serde_json::Value = sqlx::query_scalar("SELECT errors FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(errors[0]["error"]
        .as_str()
        .unwrap()
        .contains("lease expired"));
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn heartbeat_extends_the_lease(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let id = queue::enqueue(&mut c, job(None)).await.unwrap();
    let j = claim(&mut c, &req("static", 1, 5.0)).await;
    let until = queue::heartbeat(
        &mut c,
        id,
        j[0].lease_token.as_str(),
        Duration::from_secs(3600),
        Some(json!({"stage": "booting VM"})),
    )
    .await
    .unwrap();
    assert!(until > j[0].lease_until + chrono::Duration::minutes(50));
    let job = queue::get(&mut c, id).await.unwrap();
    assert_eq!(job.progress, Some(json!({"stage": "booting VM"})));
    assert_eq!(job.lease_until, Some(until));
    // Nothing reclaims a lease that was extended.
    assert!(queue::reclaim_expired(&mut c, None)
        .await
        .unwrap()
        .is_empty());
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn retries_back_off_until_discarded_with_every_error_kept(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let id = queue::enqueue(&mut c, job(None)).await.unwrap();
    let backoff = Backoff {
        base: Duration::from_secs(10),
        cap: Duration::from_secs(15),
    };
    let mut waits = Vec::new();
    for attempt in 1..=3 {
        let j = claim(&mut c, &req("static", 1, 30.0)).await;
        assert_eq!(j.len(), 1, "attempt {attempt} must be claimable");
        assert_eq!(j[0].attempt, attempt);
        let before = chrono::Utc::now();
        let failed = queue::fail(
            &mut c,
            id,
            j[0].lease_token.as_str(),
            json!(format!("boom {attempt}")),
            true,
            &backoff,
        )
        .await
        .unwrap();
        if attempt < 3 {
            assert_eq!(failed.state, "retryable");
            // Not claimable before its backoff ends.
            assert!(claim(&mut c, &req("static", 1, 30.0)).await.is_empty());
            waits.push((failed.run_at - before).num_milliseconds());
            expire(&pool, id).await;
        } else {
            assert_eq!(failed.state, "discarded");
        }
    }
    // 10 s then 20 s capped at 15 s, each with at most 25 % jitter.
    assert!((9_900..=12_600).contains(&waits[0]), "{waits:?}");
    assert!((14_900..=15_100).contains(&waits[1]), "{waits:?}");
    let job = queue::get(&mut c, id).await.unwrap();
    assert_eq!(job.state, "discarded");
    let errors = job.errors.as_array().unwrap();
    assert_eq!(errors.len(), 3);
    assert_eq!(errors[2]["error"], "boom 3");
    assert!(job.finished_at.is_some());
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn fail_without_retry_discards_at_once(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let id = queue::enqueue(&mut c, job(None)).await.unwrap();
    let j = claim(&mut c, &req("static", 1, 30.0)).await;
    let failed = queue::fail(
        &mut c,
        id,
        j[0].lease_token.as_str(),
        json!("bad"),
        false,
        &NO_BACKOFF,
    )
    .await
    .unwrap();
    assert_eq!(failed.state, "discarded");
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn unique_key_refuses_a_second_live_job(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    queue::enqueue(&mut c, job(Some("sha:1"))).await.unwrap();
    let err = queue::enqueue(&mut c, job(Some("sha:1")))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Duplicate), "{err:?}");
    let j = claim(&mut c, &req("static", 1, 30.0)).await;
    let err = queue::enqueue(&mut c, job(Some("sha:1")))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Duplicate), "running is live too");
    queue::complete(&mut c, j[0].id, j[0].lease_token.as_str(), json!({}))
        .await
        .unwrap();
    // Once finished, the key is free again.
    queue::enqueue(&mut c, job(Some("sha:1"))).await.unwrap();
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn cancel_stops_waiting_and_running_jobs(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let waiting = queue::enqueue(&mut c, job(None)).await.unwrap();
    let running = queue::enqueue(&mut c, job(None)).await.unwrap();
    sqlx::query("UPDATE jobs SET priority = 1 WHERE id = $1")
        .bind(running)
        .execute(&pool)
        .await
        .unwrap();
    let j = claim(&mut c, &req("static", 1, 30.0)).await;
    assert_eq!(j[0].id, running);
    assert_eq!(
        queue::cancel(&mut c, waiting).await.unwrap().previous,
        "available"
    );
    assert_eq!(
        queue::cancel(&mut c, running).await.unwrap().previous,
        "running"
    );
    assert!(claim(&mut c, &req("static", 5, 30.0)).await.is_empty());
    let err = queue::heartbeat(
        &mut c,
        running,
        j[0].lease_token.as_str(),
        Duration::from_secs(30),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, QueueError::StaleLease), "{err:?}");
    let err = queue::cancel(&mut c, running).await.unwrap_err();
    assert!(matches!(err, QueueError::Finished(ref s) if s == "cancelled"));
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn max_running_holds_under_concurrent_claimers(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    for _ in 0..60 {
        queue::enqueue(&mut c, job(None)).await.unwrap();
    }
    drop(c);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            for _ in 0..5 {
                let mut c = pool.acquire().await.unwrap();
                let r = Claim {
                    max_running: 4,
                    ..req("static", 3, 30.0)
                };
                got += claim(&mut c, &r).await.len();
            }
            got
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 4);
    assert_eq!(running, 4);
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn maintenance_prunes_old_finished_jobs_and_runs_once_at_a_time(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let old = queue::enqueue(&mut c, job(None)).await.unwrap();
    let fresh = queue::enqueue(&mut c, job(None)).await.unwrap();
    let live = queue::enqueue(&mut c, job(None)).await.unwrap();
    for id in [old, fresh] {
        let j = claim(&mut c, &req("static", 1, 30.0)).await;
        assert_eq!(j[0].id, id);
        queue::complete(&mut c, j[0].id, j[0].lease_token.as_str(), json!({}))
            .await
            .unwrap();
    }
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '2 hours' WHERE id = $1")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    // Another process holds the maintenance lock: this pass does nothing.
    let mut holder = pool.begin().await.unwrap();
    let _: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
        .bind("sandgnat.queue.maintenance")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let none = queue::maintain(&pool, Duration::from_secs(3600), |_, _| {
        Box::pin(async { Ok(()) })
    })
    .await
    .unwrap();
    assert!(!none.ran);
    holder.rollback().await.unwrap();
    let report = queue::maintain(&pool, Duration::from_secs(3600), |_, _| {
        Box::pin(async { Ok(()) })
    })
    .await
    .unwrap();
    assert!(report.ran);
    assert_eq!(report.pruned, 1);
    let left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut want = vec![fresh, live];
    want.sort();
    assert_eq!(left, want);
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn a_waiting_claimer_wakes_within_200ms_of_an_enqueue(pool: PgPool) {
    let wakeups = queue::Wakeups::new(pool.clone());
    let notifier = queue::Notifier::new(pool.clone());
    let mut rx = wakeups.subscribe("static");
    // The listener announces itself once it listens: wait for that, so
    // the test measures a wake-up, not the listener's start.
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("listener up")
        .unwrap();
    rx.borrow_and_update();
    let mut c = pool.acquire().await.unwrap();
    let start = std::time::Instant::now();
    queue::enqueue(&mut c, job(None)).await.unwrap();
    notifier.poke("static");
    tokio::time::timeout(Duration::from_millis(200), rx.changed())
        .await
        .expect("woken within 200 ms")
        .unwrap();
    assert!(start.elapsed() < Duration::from_millis(200));
    assert_eq!(claim(&mut c, &req("static", 1, 30.0)).await.len(), 1);
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn batches_enqueue_and_complete_with_per_job_fencing(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let ids = queue::enqueue_many(&mut c, (0..50).map(|_| job(None)).collect())
        .await
        .unwrap();
    assert_eq!(ids.len(), 50);
    let claimed = claim(&mut c, &req("static", 50, 30.0)).await;
    assert_eq!(claimed.len(), 50);
    let mut batch: Vec<_> = claimed
        .iter()
        .map(|j| (j.id, j.lease_token.as_str(), json!({"n": 1})))
        .collect();
    // One stale token in the batch (another job's): that job alone is
    // refused.
    batch[7].1 = claimed[8].lease_token.as_str();
    let results = queue::complete_many(&mut c, &batch).await.unwrap();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 49);
    assert!(matches!(results[7], Err(QueueError::StaleLease)));
    assert_eq!(state_of(&pool, batch[7].0).await, "running");
    let completed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'completed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(completed, 49);
    // A unique-key clash refuses the whole batch.
    queue::enqueue(&mut c, job(Some("k"))).await.unwrap();
    let err = queue::enqueue_many(&mut c, vec![job(None), job(Some("k"))])
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Duplicate), "{err:?}");
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn a_snoozed_job_comes_back_later_without_spending_an_attempt(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let id = queue::enqueue(&mut c, job(None)).await.unwrap();
    let first = claim(&mut c, &req("static", 1, 30.0)).await;
    assert_eq!(first[0].attempt, 1);
    let wrong = queue::LeaseToken::generate();
    let err = queue::snooze(&mut c, id, wrong.as_str(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::StaleLease), "{err:?}");
    queue::snooze(
        &mut c,
        id,
        first[0].lease_token.as_str(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(state_of(&pool, id).await, "scheduled");
    // Not before its time, and the token it had holds nothing now.
    assert!(claim(&mut c, &req("static", 1, 30.0)).await.is_empty());
    let err = queue::complete(&mut c, id, first[0].lease_token.as_str(), json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::StaleLease), "{err:?}");
    expire(&pool, id).await;
    let again = claim(&mut c, &req("static", 1, 30.0)).await;
    assert_eq!(again[0].id, id);
    assert_eq!(again[0].attempt, 1, "the put-back attempt is not counted");
    let errors: serde_json::Value = sqlx::query_scalar("SELECT errors FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(errors, json!([]));
}
