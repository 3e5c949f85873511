//! Routing staleness against a real MariaDB: route changes take effect
//! within the bound however busy the background jobs are, and a catalog
//! outage neither stops ingest nor hides.

mod common;

use std::time::{Duration, Instant};

use backend::catalog;
use common::*;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, MySqlConnection};

const COUNTER_TABLES: &str = "event_counts_minute WRITE, event_counts_second WRITE, \
    country_counts_minute WRITE, metric_values_minute WRITE, metric_values_second WRITE, \
    unique_sketches WRITE";

fn batch(env: u32, from: u64, n: u64) -> Value {
    let ts = chrono::Utc::now().timestamp_millis();
    json!((from..from + n)
        .map(|i| envelope(env, &uuid(i), "page_view", ts))
        .collect::<Vec<_>>())
}

/// Post a batch; it must be answered 200 within `within`.
async fn ingest_within(addr: std::net::SocketAddr, body: &Value, within: Duration) {
    let started = Instant::now();
    let (status, answer, _) = tokio::time::timeout(within, ingest(addr, body))
        .await
        .expect("ingest answers while background work is stuck");
    assert_eq!(status, 200, "{answer}");
    assert!(started.elapsed() <= within);
}

#[tokio::test]
async fn a_migration_takes_effect_while_the_counter_flush_is_stuck_on_locked_tables() {
    let (t, env, token) = Env::with_reader("shop").await;
    t.add_shard("b").await;
    let mut config = t.config();
    config.counter_flush_ms = 100;
    let (server, tx) = t.start(config).await;
    let (a, b) = (t.shard_pool("a").await, t.shard_pool("b").await);

    // A second session holds write locks on shard a's counter tables: every
    // flush that has deltas for a now waits on them.
    let mut locker = MySqlConnection::connect(&t.shard_url("a")).await.unwrap();
    locker
        .execute(format!("LOCK TABLES {COUNTER_TABLES}").as_str())
        .await
        .unwrap();
    // Ingest is a 10 s bound here (shard_timeout_ms is 3 s): generous for a
    // loaded machine, far below "stuck".
    let answer_within = Duration::from_secs(10);
    ingest_within(server.addr, &batch(env, 0, 100), answer_within).await;
    // Let a flush start and block on the locks; stats reads of the locked
    // tables block too — more of them than the write path has connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (addr, token) = (server.addr, token.clone());
            tokio::spawn(async move {
                reqwest::Client::new()
                    .get(format!("http://{addr}/v1/stats/summary?env=shop"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();

    catalog::migrate_environment(&t.catalog, "shop", "b")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ingest_within(server.addr, &batch(env, 1000, 100), answer_within).await;
    assert_eq!(count(&a, env).await, 200, "the primary has both batches");
    assert_eq!(
        count(&b, env).await,
        100,
        "a batch sent 3 s after `env migrate` is written to the new shard too"
    );

    // Once the locks go, the kept deltas are flushed: every count adds up.
    locker.execute("UNLOCK TABLES").await.unwrap();
    for reader in readers {
        let status = reader.await.unwrap().expect("stats answered");
        assert!(status == 200 || status == 503, "stats read: {status}");
    }
    drop(locker);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (counted(&a, env).await, counted(&b, env).await) != (200, 100) {
        assert!(Instant::now() < deadline, "counts never caught up");
        server.state.flush_counters().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(server, tx).await;
    t.cleanup().await;
}

async fn readyz(addr: std::net::SocketAddr) -> Value {
    let response = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "ready whether the catalog answers or not"
    );
    response.json().await.unwrap()
}

fn age_gauge(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_catalog_snapshot_age_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the snapshot age gauge is exported")
}

#[tokio::test]
async fn a_catalog_outage_keeps_ingest_going_and_shows_as_stale() {
    let (t, env) = Env::with_environment("shop").await;
    let mut config = t.config();
    config.catalog_refresh_ms = 500;
    config.retry_after_secs = 7;
    let (server, tx) = t.start(config).await;
    let ready = readyz(server.addr).await;
    assert_eq!(ready["catalog"], "fresh", "{ready}");
    assert!(age_gauge(&metrics(server.addr).await) < 5.0);

    // The catalog's environments table disappears: no refresh can succeed.
    sqlx::query("RENAME TABLE environments TO environments_away")
        .execute(&t.catalog)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = readyz(server.addr).await;
        if ready["catalog"] == "stale" {
            assert!(
                ready["catalog_age_seconds"].as_f64().unwrap() > 0.5,
                "{ready}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage never showed: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(age_gauge(&metrics(server.addr).await) > 0.5);

    // Known environments still land, with the last snapshot.
    ingest_within(server.addr, &batch(env, 0, 10), Duration::from_secs(10)).await;
    assert_eq!(count(&t.shard_pool("a").await, env).await, 10);
    // An environment the snapshot does not know cannot be checked: 503 (the
    // edge retries), with Retry-After from SLUICE_RETRY_AFTER_SECS.
    let (status, body, headers) = ingest(server.addr, &batch(env + 1000, 100, 1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("catalog_unavailable")),
        "{body}"
    );
    assert_eq!(headers["retry-after"], "7");

    sqlx::query("RENAME TABLE environments_away TO environments")
        .execute(&t.catalog)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(server.addr).await["catalog"] != "fresh" {
        assert!(Instant::now() < deadline, "the catalog never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn refusals_by_the_token_check_are_counted_and_503s_carry_the_configured_retry_after() {
    let (t, env) = Env::with_environment("shop").await;
    let mut config = t.config();
    config.retry_after_secs = 11;
    let (server, tx) = t.start(config).await;
    let body = serde_json::to_vec(&batch(env, 0, 1)).unwrap();
    let json = ("content-type", "application/json");
    let (status, _, _) = post(server.addr, body.clone(), &[json]).await;
    assert_eq!(status, 401);
    let (status, _, _) = post(
        server.addr,
        body,
        &[json, ("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(ingest(server.addr, &batch(env, 0, 1)).await.0, 200);
    let text = metrics(server.addr).await;
    assert!(
        text.contains("sluice_ingest_requests_total{status=\"401\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("sluice_ingest_requests_total{status=\"200\"} 1"),
        "{text}"
    );

    // A shard that cannot be reached: 503 from the writer, Retry-After from config.
    sqlx::query("UPDATE shards SET url = 'mysql://nobody@127.0.0.1:1/none'")
        .execute(&t.catalog)
        .await
        .unwrap();
    server.state.catalog.refresh().await.unwrap();
    let (status, body, headers) = ingest(server.addr, &batch(env, 10, 1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "11");
    // The shard back, so the shutdown's final counter flush has somewhere to go.
    sqlx::query("UPDATE shards SET url = ?")
        .bind(t.shard_url("a"))
        .execute(&t.catalog)
        .await
        .unwrap();
    server.state.catalog.refresh().await.unwrap();
    stop(server, tx).await;
    t.cleanup().await;
}
