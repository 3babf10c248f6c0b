//! The queue core against the real Postgres: each `#[sqlx::test]` gets a
//! fresh database with the migrations applied.

use sandgnat::queue::{self, NewJob, QueueError};
use sqlx::PgPool;
use std::collections::HashSet;

fn job(unique: Option<&str>) -> NewJob {
    NewJob {
        queue: "static".into(),
        kind: "static".into(),
        payload: serde_json::json!({"n": 1}),
        priority: 0,
        max_attempts: 3,
        unique_key: unique.map(str::to_owned),
        run_at: None,
    }
}

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
                let batch = queue::claim(&mut c, "static", 7, 30.0).await.unwrap();
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
async fn stale_token_complete_changes_nothing(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    let id = queue::enqueue(&mut c, job(None)).await.unwrap();
    let claimed = queue::claim(&mut c, "static", 1, 30.0).await.unwrap();
    assert_eq!(claimed[0].id, id);
    let token = claimed[0].attempt;
    let err = queue::complete(&mut c, id, token + 1, serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::StaleLease), "{err:?}");
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert_eq!(state, "running");
    queue::complete(&mut c, id, token, serde_json::json!({"ok": true}))
        .await
        .unwrap();
    let err = queue::complete(&mut c, id, token, serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::StaleLease), "{err:?}");
}

#[sqlx::test(migrator = "sandgnat::store::MIGRATOR")]
async fn unique_key_refuses_a_second_live_job(pool: PgPool) {
    let mut c = pool.acquire().await.unwrap();
    queue::enqueue(&mut c, job(Some("sha:1"))).await.unwrap();
    let err = queue::enqueue(&mut c, job(Some("sha:1")))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Duplicate), "{err:?}");
    let j = queue::claim(&mut c, "static", 1, 30.0).await.unwrap();
    queue::complete(&mut c, j[0].id, j[0].attempt, serde_json::json!({}))
        .await
        .unwrap();
    // Once finished, the key is free again.
    queue::enqueue(&mut c, job(Some("sha:1"))).await.unwrap();
}
