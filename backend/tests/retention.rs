//! Retention against a real MariaDB/MySQL server (see `common`): a pass on a
//! migrating environment removes exactly its old rows from both shards while
//! events keep arriving.

mod common;

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use backend::{catalog, store::Expiring};
use common::*;
use serde_json::Value;
use sqlx::mysql::MySqlPool;

const DAY_MS: i64 = 86_400_000;

async fn count_before(pool: &MySqlPool, env_id: u32, table: &str, column: &str, ms: i64) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {table} WHERE env_id = ? AND {column} < FROM_UNIXTIME(? / 1000)"
    ))
    .bind(env_id)
    .bind(ms)
    .fetch_one(pool)
    .await
    .expect("count")
}

async fn ids(pool: &MySqlPool, env_id: u32) -> std::collections::BTreeSet<String> {
    sqlx::query_scalar("SELECT HEX(id) FROM events WHERE env_id = ?")
        .bind(env_id)
        .fetch_all(pool)
        .await
        .expect("ids")
        .into_iter()
        .collect()
}

fn hex_key(id: &str) -> String {
    protocol::event_key(id)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// Events of `env` with ids from `first`, at `ts`, in batches of 100.
async fn land(addr: std::net::SocketAddr, env: u32, first: u64, n: u64, ts: i64) -> Vec<String> {
    let mut landed = Vec::new();
    for start in (first..first + n).step_by(100) {
        let ids: Vec<String> = (start..(start + 100).min(first + n)).map(uuid).collect();
        let batch: Vec<Value> = ids.iter().map(|id| envelope(env, id, "view", ts)).collect();
        let (status, body, _) = ingest(addr, &Value::Array(batch)).await;
        assert_eq!(status, 200, "{body}");
        landed.extend(ids);
    }
    landed
}

#[tokio::test]
async fn a_pass_removes_exactly_the_old_rows_from_primary_and_secondary_under_ingest() {
    let t = Env::new().await;
    t.add_shard("old").await;
    t.add_shard("new").await;
    let web = catalog::create_environment(&t.catalog, "web", "old")
        .await
        .unwrap();
    let other = catalog::create_environment(&t.catalog, "other", "old")
        .await
        .unwrap();
    catalog::migrate_environment(&t.catalog, "web", "new")
        .await
        .unwrap();
    let mut config = t.config();
    // Small chunks, so the pass takes many statements while ingest runs.
    config.retention_chunk_rows = 25;
    config.retention_pause_ms = 1;
    let (server, tx) = t.start(config).await;
    let shards = [t.shard_pool("old").await, t.shard_pool("new").await];

    let now = chrono::Utc::now().timestamp_millis();
    let cutoff = now - 30 * DAY_MS;
    // Either side of the cutoff, on both shards (dual writes), and another
    // environment's old events, which have no retention.
    land(server.addr, web, 0, 300, now - 40 * DAY_MS).await;
    let mut kept = land(server.addr, web, 1000, 200, now - 29 * DAY_MS).await;
    let others = land(server.addr, other, 5000, 50, now - 400 * DAY_MS).await;
    for pool in &shards {
        // Dead letters either side of the cutoff (as the edge reports them).
        for (key, at) in [(1u8, now - 40 * DAY_MS), (2u8, now - DAY_MS)] {
            sqlx::query(
                "INSERT INTO dead_letters (env_id, id, received_at, minute, acceptance, n) \
                 VALUES (?, ?, FROM_UNIXTIME(? / 1000), FROM_UNIXTIME(? DIV 60000 * 60), ?, 1)",
            )
            .bind(web)
            .bind(vec![key; 16])
            .bind(at)
            .bind(at)
            .bind(vec![key; 16])
            .execute(pool)
            .await
            .unwrap();
        }
        // Sampled refusals either side of the cutoff (two-column keys).
        for (seq, at) in [(1u16, now - 40 * DAY_MS), (2u16, now - DAY_MS)] {
            sqlx::query(
                "INSERT INTO rejected_samples (env_id, source, seq, stored_at, received_at, code, message, body) \
                 VALUES (?, ?, ?, FROM_UNIXTIME(? / 1000), FROM_UNIXTIME(? / 1000), 'invalid', 'sampled', '{}')",
            )
            .bind(web)
            .bind(vec![9u8; 16])
            .bind(seq)
            .bind(at)
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
        }
        assert_eq!(count_before(pool, web, "events", "ts", cutoff).await, 300);
        assert!(count_before(pool, web, "delivery", "minute", cutoff).await > 0);
    }

    catalog::set_environment_retention(&t.catalog, "web", Some(30))
        .await
        .unwrap();
    server.state.catalog.refresh().await.unwrap();

    // Ingest goes on while the pass runs: recent events, and late ones from
    // just inside the retention.
    let running = Arc::new(AtomicBool::new(true));
    let next = Arc::new(AtomicU64::new(100_000));
    let writer = {
        let (running, next, addr) = (running.clone(), next.clone(), server.addr);
        tokio::spawn(async move {
            let mut landed = Vec::new();
            let mut round = 0;
            while running.load(Ordering::SeqCst) || round < 3 {
                let first = next.fetch_add(100, Ordering::SeqCst);
                let ts = if round % 2 == 0 {
                    now
                } else {
                    now - 29 * DAY_MS
                };
                landed.extend(land(addr, web, first, 100, ts).await);
                round += 1;
            }
            landed
        })
    };
    let (_keep, stop) = tokio::sync::watch::channel(false);
    let removed = server
        .state
        .retention_pass(None, &stop)
        .await
        .expect("no other pass runs");
    running.store(false, Ordering::SeqCst);
    kept.extend(writer.await.unwrap());

    assert_eq!(removed.len(), 2, "one report per shard of web: {removed:?}");
    for r in &removed {
        assert_eq!(r.env_id, web);
        assert_eq!(r.error, None);
        assert_eq!(r.of(Expiring::Events), 300, "on {}", r.shard);
        assert_eq!(r.of(Expiring::DeadLetters), 1, "on {}", r.shard);
        assert_eq!(r.of(Expiring::RejectedSamples), 1, "on {}", r.shard);
        assert!(r.of(Expiring::Delivery) > 0, "on {}", r.shard);
    }
    let kept: std::collections::BTreeSet<String> = kept.iter().map(|id| hex_key(id)).collect();
    for pool in &shards {
        assert_eq!(count_before(pool, web, "events", "ts", cutoff).await, 0);
        assert_eq!(ids(pool, web).await, kept, "every kept and new event stays");
        assert_eq!(
            count_before(pool, web, "delivery", "minute", cutoff).await,
            0
        );
        assert_eq!(
            count_before(pool, web, "dead_letters", "minute", cutoff).await,
            0
        );
        assert_eq!(
            count_before(pool, web, "dead_letters", "minute", now).await,
            1,
            "the recent dead letter stays"
        );
        assert_eq!(
            count_before(pool, web, "rejected_samples", "stored_at", now).await,
            1,
            "the recent sample stays"
        );
    }
    let others: std::collections::BTreeSet<String> = others.iter().map(|id| hex_key(id)).collect();
    assert_eq!(
        ids(&shards[0], other).await,
        others,
        "no retention, nothing removed"
    );

    // Nothing left to remove: a second pass (or another process's) is a no-op.
    let again = server.state.retention_pass(Some(web), &stop).await.unwrap();
    assert!(
        again.iter().all(|r| r.rows.iter().all(|(_, n)| *n == 0)),
        "{again:?}"
    );
    let metrics = metrics(server.addr).await;
    assert!(
        metrics.contains(r#"sluice_retention_deleted_total{shard="new",table="events"} 300"#),
        "{metrics}"
    );
    common::stop(server, tx).await;
    for pool in shards {
        pool.close().await;
    }
    t.cleanup().await;
}

#[tokio::test]
async fn retention_days_are_set_shown_and_removed_in_the_catalog() {
    let (t, _) = Env::with_environment("web").await;
    assert_eq!(
        catalog::environment_by_name(&t.catalog, "web")
            .await
            .unwrap()
            .retention_days,
        None,
        "none by default"
    );
    catalog::set_environment_retention(&t.catalog, "web", Some(7))
        .await
        .unwrap();
    let env = catalog::environment_by_name(&t.catalog, "web")
        .await
        .unwrap();
    assert_eq!(env.retention_days, Some(7));
    assert!(
        catalog::set_environment_retention(&t.catalog, "web", Some(0))
            .await
            .is_err()
    );
    catalog::set_environment_retention(&t.catalog, "web", None)
        .await
        .unwrap();
    let env = catalog::environment_by_name(&t.catalog, "web")
        .await
        .unwrap();
    assert_eq!(env.retention_days, None);
    assert!(
        catalog::set_environment_retention(&t.catalog, "nope", Some(3))
            .await
            .is_err()
    );
    t.cleanup().await;
}
