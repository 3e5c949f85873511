//! Erasure against a real MariaDB: a person's events removed from both
//! shards of a migrating environment (by their id and as an alias's
//! previous id), a record that holds a hash only, and the person's later
//! events dropped at the write and counted in the ledger.

mod common;

use backend::{
    catalog,
    erasure::{self, IdKind, Person},
};
use common::*;
use serde_json::{json, Value};

fn event(
    env: u32,
    id: &str,
    user: Option<&str>,
    anon: Option<&str>,
    previous: Option<&str>,
    at: i64,
) -> Value {
    json!({"id": id, "env_id": env, "name": "e", "timestamp": at, "received_at": at,
           "user_id": user, "anonymous_id": anon, "previous_id": previous,
           "properties": {"n": 1}, "context": {"library": "test"}})
}

#[tokio::test]
async fn erasure_sweeps_both_shards_keeps_a_hash_only_and_suppresses_later_events() {
    let (t, env, token) = Env::with_reader("web").await;
    t.add_shard("b").await;
    catalog::migrate_environment(&t.catalog, "web", "b")
        .await
        .expect("migrate");
    let mut config = t.config();
    config.catalog_refresh_ms = 200;
    let (server, tx) = t.start(config.clone()).await;
    let addr = server.addr;
    let at = (chrono::Utc::now().timestamp_millis() - 600_000) / 60_000 * 60_000 + 1_000;
    let batch = json!([
        event(env, "g1", Some("gone"), Some("anon-g"), None, at),
        event(env, "g2", Some("gone"), None, None, at),
        event(env, "g3", Some("newname"), None, Some("gone"), at),
        event(env, "k1", Some("kept"), Some("anon-k"), None, at),
        event(env, "k2", Some("gone-not"), None, None, at),
        event(env, "k3", None, Some("gone"), None, at),
    ]);
    assert_eq!(ingest(addr, &batch).await.0, 200);
    let (a, b) = (t.shard_pool("a").await, t.shard_pool("b").await);
    for pool in [&a, &b] {
        assert_eq!(count(pool, env).await, 6);
    }
    sqlx::query(
        "INSERT INTO rejected_samples (env_id, source, seq, received_at, code, message, body) \
         VALUES (?, REPEAT('x', 16), 0, UTC_TIMESTAMP(3), 'invalid_events', 'bad', '{\"user_id\":\"gone\"}')",
    )
    .bind(env)
    .execute(&a)
    .await
    .expect("sample");

    let source = std::sync::Arc::new(backend::store::mysql::MySqlCatalog::new(t.catalog.clone()));
    let snapshot = catalog::Catalog::open(source, config.catalog_refresh())
        .await
        .expect("catalog")
        .snapshot();
    let environment = catalog::environment_by_name(&t.catalog, "web")
        .await
        .expect("env");
    let shards = backend::shards::Shards::new(2, std::time::Duration::from_secs(5), 100);
    let person = Person {
        kind: IdKind::UserId,
        id: "gone".into(),
    };
    let erased = erasure::erase(
        &t.catalog,
        &shards,
        &snapshot,
        &environment,
        &erasure::Request {
            person,
            suppress_days: 30,
            requested_by: "dpo@example".into(),
        },
        config.erasure_settle(),
    )
    .await
    .expect("erase");
    let events: Vec<(&str, u64)> = erased
        .removed
        .iter()
        .map(|(shard, r)| (shard.as_str(), r.events))
        .collect();
    assert_eq!(
        events,
        [("a", 3), ("b", 3)],
        "g1, g2 and the alias g3 on each"
    );
    assert_eq!(
        (erased.removed["a"].samples, erased.removed["b"].samples),
        (1, 0)
    );
    for pool in [&a, &b] {
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(client_id AS CHAR) FROM events WHERE env_id = ? ORDER BY client_id",
        )
        .bind(env)
        .fetch_all(pool)
        .await
        .expect("left");
        assert_eq!(
            left,
            ["k1", "k2", "k3"],
            "an anonymous id equal to the user id is another id"
        );
    }

    // The record: who, when, how many; the person as a hash only.
    let (by, removed, person_bytes, finished): (
        String,
        String,
        Vec<u8>,
        Option<chrono::NaiveDateTime>,
    ) = sqlx::query_as(
        "SELECT requested_by, removed, person, finished_at FROM erasures WHERE id = ?",
    )
    .bind(erased.record_id)
    .fetch_one(&t.catalog)
    .await
    .expect("record");
    assert_eq!(
        (by.as_str(), removed.as_str()),
        ("dpo@example", r#"{"a":3,"b":3}"#)
    );
    assert_eq!(
        person_bytes,
        erasure::person_hash(env, IdKind::UserId, "gone")
    );
    assert!(finished.is_some());
    let anywhere: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM erasures WHERE LOCATE('gone', CONCAT_WS(' ', requested_by, removed, CAST(id_kind AS CHAR))) > 0",
    )
    .fetch_one(&t.catalog)
    .await
    .expect("no id");
    assert_eq!(anywhere, 0, "the id itself is stored nowhere");

    // The erasure waited for the catalog refresh: the person's new events are dropped, and counted.
    let later = json!([
        event(env, "g4", Some("gone"), None, None, at),
        event(env, "k4", Some("kept"), None, None, at)
    ]);
    let (status, body, _) = ingest(addr, &later).await;
    assert_eq!(
        (status, &body["environments"][env.to_string()]["dropped"]),
        (200, &json!(1)),
        "{body}"
    );
    for pool in [&a, &b] {
        assert_eq!(count(pool, env).await, 4, "k1..k4");
    }
    let ledger: Value = reqwest::Client::new()
        .get(format!(
            "http://{addr}/v1/stats/delivery?env=web&from={}&to={}",
            at - 60_000,
            at + 60_000
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("ledger")
        .json()
        .await
        .expect("json");
    assert_eq!(ledger["dropped"], json!({"suppressed": 1}), "{ledger}");
    assert_eq!(ledger["in_flight"], 0, "{ledger}");

    // Without suppression: no wait, and the same person's events land again.
    let again = erasure::erase(
        &t.catalog,
        &shards,
        &snapshot,
        &environment,
        &erasure::Request {
            person: Person {
                kind: IdKind::AnonymousId,
                id: "anon-k".into(),
            },
            suppress_days: 0,
            requested_by: "dpo@example".into(),
        },
        std::time::Duration::from_secs(3600),
    )
    .await
    .expect("erase without suppression");
    assert_eq!(again.removed["a"].events, 1);
    shards.close().await;
    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn ended_suppressions_are_pruned_and_active_ones_and_the_records_stay() {
    let (t, env) = Env::with_environment("web").await;
    for (person, days) in [("ended", -2i32), ("ended-too", -1), ("active", 30)] {
        sqlx::query(
            "INSERT INTO suppressions (env_id, person, until) \
             VALUES (?, ?, UTC_TIMESTAMP() + INTERVAL ? DAY)",
        )
        .bind(env)
        .bind(&erasure::person_hash(env, IdKind::UserId, person)[..])
        .bind(days)
        .execute(&t.catalog)
        .await
        .expect("suppression");
    }
    let record = backend::store::mysql::erasure::start(
        &t.catalog,
        env,
        IdKind::UserId,
        &erasure::person_hash(env, IdKind::UserId, "recorded"),
        "dpo@example",
        0,
    )
    .await
    .expect("record");

    let source = backend::store::mysql::MySqlCatalog::new(t.catalog.clone());
    use backend::store::CatalogSource as _;
    assert_eq!(
        source.prune_suppressions(1).await.expect("prune"),
        1,
        "a chunk"
    );
    let earliest: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM suppressions WHERE person = ?")
        .bind(&erasure::person_hash(env, IdKind::UserId, "ended")[..])
        .fetch_one(&t.catalog)
        .await
        .expect("count");
    assert_eq!(earliest, 0, "the earliest end goes first");
    assert_eq!(source.prune_suppressions(10).await.expect("prune"), 1);
    assert_eq!(source.prune_suppressions(10).await.expect("prune"), 0);
    let left: Vec<Vec<u8>> = sqlx::query_scalar("SELECT person FROM suppressions")
        .fetch_all(&t.catalog)
        .await
        .expect("left");
    assert_eq!(
        left,
        [erasure::person_hash(env, IdKind::UserId, "active").to_vec()]
    );
    let snapshot = source.load().await.expect("load");
    assert_eq!(snapshot.suppressed[&env].len(), 1);
    let records = backend::store::mysql::erasure::records(&t.catalog, env)
        .await
        .expect("records");
    assert_eq!(
        records.iter().map(|r| r.id).collect::<Vec<_>>(),
        [record],
        "the erasure record stays"
    );
    t.cleanup().await;
}
