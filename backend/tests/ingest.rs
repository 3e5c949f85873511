//! Ingest integration tests against a real MariaDB/MySQL server (see `common`).

mod common;

use std::io::Write;

use backend::{catalog, counters};
use common::*;
use protocol::{Envelope, IngestResponse};
use serde_json::{json, Value};
use sqlx::Row;

#[tokio::test]
async fn routes_environments_to_their_shards_with_all_fields() {
    let t = Env::new().await;
    t.add_shard("a").await;
    t.add_shard("b").await;
    let web = catalog::create_environment(&t.catalog, "web", "a")
        .await
        .unwrap();
    let app = catalog::create_environment(&t.catalog, "app", "b")
        .await
        .unwrap();
    let (server, tx) = t.start(t.config()).await;

    let batch = json!([
        envelope(web, &uuid(1), "purchase", 1_700_000_000_123),
        envelope(app, "order-42", "signup", 1_700_000_060_000)
    ]);
    let (status, body, _) = ingest(server.addr, &batch).await;
    assert_eq!(status, 200, "{body}");
    let response: IngestResponse = serde_json::from_value(body).unwrap();
    assert_eq!(response.environments[&web].inserted, 1);
    assert_eq!(response.environments[&app].inserted, 1);
    assert!(response.retry.is_empty());

    let (a, b) = (t.shard_pool("a").await, t.shard_pool("b").await);
    assert_eq!((count(&a, web).await, count(&a, app).await), (1, 0));
    assert_eq!((count(&b, web).await, count(&b, app).await), (0, 1));

    let row = sqlx::query(
        "SELECT id, CAST(name AS CHAR) AS name, DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f') AS ts, \
         user_id, client_id, CAST(JSON_EXTRACT(properties, '$.amount') AS SIGNED) AS amount, \
         JSON_UNQUOTE(JSON_EXTRACT(context, '$.country')) AS country \
         FROM events_full WHERE env_id = ?",
    )
    .bind(web)
    .fetch_one(&a)
    .await
    .unwrap();
    let id: Vec<u8> = row.get("id");
    assert_eq!(id, protocol::event_key(&uuid(1)).to_vec());
    assert_eq!(row.get::<String, _>("name"), "purchase");
    assert_eq!(row.get::<String, _>("ts"), "2023-11-14 22:13:20.123000");
    assert_eq!(
        row.get::<Option<Vec<u8>>, _>("user_id").as_deref(),
        Some(&b"u1"[..])
    );
    assert_eq!(
        row.get::<Option<Vec<u8>>, _>("client_id"),
        None,
        "UUID ids are not stored twice"
    );
    assert_eq!(row.get::<i64, _>("amount"), 3);
    assert_eq!(row.get::<Vec<u8>, _>("country"), b"DE");
    let client_id: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT client_id FROM events WHERE env_id = ?")
            .bind(app)
            .fetch_one(&b)
            .await
            .unwrap();
    assert_eq!(client_id.as_deref(), Some(&b"order-42"[..]));

    stop(server, tx).await;
    assert_eq!(counted(&a, web).await, 1, "counters flushed at shutdown");
    assert_eq!(counted(&b, app).await, 1);
    t.cleanup().await;
}

#[tokio::test]
async fn repeats_are_ignored_and_counted_as_duplicates() {
    let (t, env) = Env::with_environment("web").await;
    let (server, tx) = t.start(t.config()).await;
    let key = env.to_string();

    let first: Vec<Value> = (0..10)
        .map(|i| envelope(env, &uuid(i), "view", 1_700_000_000_000))
        .collect();
    let (status, body, _) = ingest(server.addr, &json!(first)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["environments"][&key],
        json!({"inserted": 10, "duplicates": 0, "dropped": 0})
    );

    // The same batch again: nothing new.
    let (_, body, _) = ingest(server.addr, &json!(first)).await;
    assert_eq!(
        body["environments"][&key],
        json!({"inserted": 0, "duplicates": 10, "dropped": 0})
    );

    // Half old, half new, plus repeats inside the batch: only the new land.
    let mut mixed: Vec<Value> = (5..15)
        .map(|i| envelope(env, &uuid(i), "view", 1_700_000_000_000))
        .collect();
    mixed.push(envelope(env, &uuid(14), "view", 1_700_000_000_000));
    mixed.push(envelope(env, "client-key-1", "click", 1_700_000_000_000));
    mixed.push(envelope(env, "client-key-1", "click", 1_700_000_000_000));
    let (_, body, _) = ingest(server.addr, &json!(mixed)).await;
    assert_eq!(
        body["environments"][&key],
        json!({"inserted": 6, "duplicates": 7, "dropped": 0})
    );

    let pool = t.shard_pool("a").await;
    assert_eq!(count(&pool, env).await, 16);
    assert_eq!(server.state.flush_counters().await, 0);
    assert_eq!(
        counted(&pool, env).await,
        16,
        "counters count inserted rows only"
    );

    let text = metrics(server.addr).await;
    assert!(
        text.contains("sluice_events_inserted_total{shard=\"a\"} 16"),
        "{text}"
    );
    assert!(
        text.contains("sluice_events_duplicate_total{shard=\"a\"} 17"),
        "{text}"
    );
    assert!(!text.contains(&t.server), "no URLs in metrics");

    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn migration_writes_both_shards_then_promote_moves_primary() {
    let t = Env::new().await;
    t.add_shard("old").await;
    t.add_shard("new").await;
    let env = catalog::create_environment(&t.catalog, "web", "old")
        .await
        .unwrap();
    let (server, tx) = t.start(t.config()).await;
    let (old, new) = (t.shard_pool("old").await, t.shard_pool("new").await);

    let (status, ..) = ingest(
        server.addr,
        &json!([envelope(env, &uuid(1), "a", 1_700_000_000_000)]),
    )
    .await;
    assert_eq!(status, 200);

    catalog::migrate_environment(&t.catalog, "web", "new")
        .await
        .unwrap();
    assert!(
        catalog::migrate_environment(&t.catalog, "web", "old")
            .await
            .is_err(),
        "primary cannot be its own secondary"
    );
    server.state.catalog.refresh().await.unwrap();
    let batch = json!([
        envelope(env, &uuid(2), "a", 1_700_000_000_000),
        envelope(env, &uuid(3), "b", 1_700_000_000_000)
    ]);
    let (status, body, _) = ingest(server.addr, &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (count(&old, env).await, count(&new, env).await),
        (3, 2),
        "dual write during migration"
    );

    catalog::promote_environment(&t.catalog, "web")
        .await
        .unwrap();
    assert!(
        catalog::promote_environment(&t.catalog, "web")
            .await
            .is_err(),
        "nothing left to promote"
    );
    server.state.catalog.refresh().await.unwrap();
    let (status, ..) = ingest(
        server.addr,
        &json!([envelope(env, &uuid(4), "a", 1_700_000_000_000)]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (count(&old, env).await, count(&new, env).await),
        (3, 3),
        "after promote only the new primary is written"
    );

    stop(server, tx).await;
    assert_eq!(
        counted(&new, env).await,
        3,
        "each shard counts what it inserted"
    );
    t.cleanup().await;
}

/// Every stored field of an environment's events, whole, in key order.
async fn history(pool: &sqlx::MySqlPool, env: u32) -> Vec<Vec<Option<Vec<u8>>>> {
    let rows = sqlx::query(
        "SELECT id, client_id, event_type, name, ts, received_at, user_id, anonymous_id, session_id, \
         group_id, previous_id, CAST(properties AS CHAR), CAST(traits AS CHAR), CAST(context AS CHAR) \
         FROM events_full WHERE env_id = ? ORDER BY id",
    )
    .bind(env)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .map(|row| {
            (0..14)
                .map(|i| {
                    row.try_get::<Option<Vec<u8>>, _>(i)
                        .or_else(|_| {
                            row.try_get::<Option<String>, _>(i)
                                .map(|s| s.map(String::into_bytes))
                        })
                        .or_else(|_| row.try_get::<u8, _>(i).map(|v| Some(vec![v])))
                        .or_else(|_| {
                            row.try_get::<chrono::NaiveDateTime, _>(i)
                                .map(|t| Some(t.to_string().into_bytes()))
                        })
                        .unwrap()
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn backfill_copies_the_history_with_the_new_shards_own_ids() {
    let t = Env::new().await;
    t.add_shard("old").await;
    t.add_shard("new").await;
    let env = catalog::create_environment(&t.catalog, "web", "old")
        .await
        .unwrap();
    let other = catalog::create_environment(&t.catalog, "other", "new")
        .await
        .unwrap();
    let (server, tx) = t.start(t.config()).await;

    // Another environment writes first on the new shard, so its name and
    // context ids differ from the old shard's.
    let mut first = envelope(other, &uuid(90_000), "c", 1_700_000_000_000);
    first["context"] = json!({"library": "other"});
    assert_eq!(ingest(server.addr, &json!([first])).await.0, 200);

    let mut old_events: Vec<Value> = (0..1200u64)
        .map(|i| {
            let mut e = envelope(
                env,
                &uuid(i),
                ["a", "b", "c"][(i % 3) as usize],
                1_700_000_000_000 + i as i64 * 1000,
            );
            let country = ["DE", "FR"][(i % 2) as usize];
            e["context"] = json!({"country": country, "page": {"url": format!("/{i}")}});
            e
        })
        .collect();
    let mut identify = envelope(env, "client-id-7", "identify", 1_700_000_500_000);
    identify["type"] = json!("identify");
    identify["traits"] = json!({"plan": "pro", "n": null});
    identify["context"] = json!({});
    old_events.push(identify);
    assert_eq!(ingest(server.addr, &json!(old_events)).await.0, 200);

    catalog::migrate_environment(&t.catalog, "web", "new")
        .await
        .unwrap();
    server.state.catalog.refresh().await.unwrap();
    let dual = envelope(env, &uuid(5000), "a", 1_700_002_000_000);
    assert_eq!(ingest(server.addr, &json!([dual])).await.0, 200);
    let (old, new) = (t.shard_pool("old").await, t.shard_pool("new").await);
    assert_eq!((count(&old, env).await, count(&new, env).await), (1202, 1));

    let all = catalog::list_shards(&t.catalog).await.unwrap();
    let shard = |name: &str| all.iter().find(|s| s.name == name).unwrap().clone();
    let shards = backend::shards::Shards::new(2, std::time::Duration::from_secs(5), 500);
    let counters = counters::Counters::new(7200);
    let copied = shards
        .copy_history(&shard("old"), &shard("new"), env, &[], &|rows| {
            counters.record(shard("new").id, env, rows)
        })
        .await
        .unwrap();
    assert_eq!((copied.read, copied.inserted), (1202, 1201));
    let snapshot = server.state.catalog.snapshot();
    assert!(counters.flush(&snapshot, &shards).await.is_empty());
    assert_eq!(count(&new, env).await, 1202);
    assert_eq!(
        history(&new, env).await,
        history(&old, env).await,
        "every field reads back the same on the new shard"
    );
    let name_id = |pool: sqlx::MySqlPool| async move {
        sqlx::query_scalar::<_, u32>("SELECT id FROM event_names WHERE env_id = ? AND name = 'a'")
            .bind(env)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_ne!(
        name_id(old.clone()).await,
        name_id(new.clone()).await,
        "the shards number names differently, and the copy followed the new one"
    );

    // Again: nothing new.
    let again = shards
        .copy_history(&shard("old"), &shard("new"), env, &[], &|rows| {
            counters.record(shard("new").id, env, rows)
        })
        .await
        .unwrap();
    assert_eq!((again.read, again.inserted), (1202, 0));

    stop(server, tx).await;
    assert_eq!(
        counted(&new, env).await,
        1202,
        "backfilled rows are counted once"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn unreachable_shard_fails_only_its_environments() {
    let t = Env::new().await;
    t.add_shard("up").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Register the dead shard directly: `add_shard` refuses an unreachable URL.
    sqlx::query("INSERT INTO shards (name, url) VALUES ('down', ?)")
        .bind(format!(
            "mysql://root:hunter2secret@127.0.0.1:{closed}/gone"
        ))
        .execute(&t.catalog)
        .await
        .unwrap();
    let refused = catalog::add_shard(
        &t.catalog,
        "down2",
        &format!("mysql://root:pw@127.0.0.1:{closed}/gone"),
    )
    .await;
    assert!(
        matches!(refused, Err(backend::Error::ShardUnavailable { .. })),
        "{refused:?}"
    );
    let good = catalog::create_environment(&t.catalog, "good", "up")
        .await
        .unwrap();
    let bad = catalog::create_environment(&t.catalog, "bad", "down")
        .await
        .unwrap();
    let (server, tx) = t.start(t.config()).await;

    let batch = json!([
        envelope(good, &uuid(1), "x", 1_700_000_000_000),
        envelope(bad, &uuid(2), "x", 1_700_000_000_000),
        envelope(bad, &uuid(3), "x", 1_700_000_000_000)
    ]);
    let (status, body, headers) = ingest(server.addr, &batch).await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(body["retry"], json!([uuid(2), uuid(3)]));
    assert_eq!(body["environments"][good.to_string()]["inserted"], 1);
    assert_eq!(body["failures"][0]["env_id"], bad);
    assert_eq!(body["failures"][0]["error"], "shard_unavailable");
    assert!(
        !body.to_string().contains("hunter2secret"),
        "no passwords in responses"
    );

    let (status, body, headers) = ingest(
        server.addr,
        &json!([envelope(bad, &uuid(4), "x", 1_700_000_000_000)]),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["retry"], json!([uuid(4)]));
    assert_eq!(count(&t.shard_pool("up").await, good).await, 1);

    let text = metrics(server.addr).await;
    assert!(
        text.contains("sluice_shard_errors_total{shard=\"down\"} 2"),
        "{text}"
    );
    assert!(!text.contains("hunter2secret"));

    stop(server, tx).await;
    t.cleanup().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn bad_input_gets_the_documented_status_and_lands_nothing() {
    let (t, env) = Env::with_environment("web").await;
    let mut config = t.config();
    config.max_body_bytes = testkit::BAD_INPUT_MAX_BODY_BYTES;
    config.max_batch_events = testkit::BAD_INPUT_MAX_BATCH_EVENTS;
    let (server, tx) = t.start(config).await;
    let addr = server.addr;
    for case in testkit::bad_ingest_requests(env, TOKEN) {
        let what = case.what;
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body, _) = post(addr, case.body, &headers).await;
        assert_eq!(status, case.status, "{what}: {body}");
        assert_eq!(body["error"], case.code, "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }

    // Which envelope failed, and why.
    let batch = json!([
        envelope(env, &uuid(1), "ok", 0),
        envelope(env, &"x".repeat(65), "ok", 0),
        envelope(env, &uuid(3), "", 0)
    ]);
    let (status, body, _) = ingest(addr, &batch).await;
    assert_eq!(status, 422);
    assert_eq!(body["details"][0]["index"], 1);
    assert_eq!(body["details"][1]["index"], 2);
    assert_eq!(body["details"][1]["reason"], "name must not be empty");

    assert_eq!(
        count(&t.shard_pool("a").await, env).await,
        0,
        "nothing landed from bad requests"
    );
    let one = json!([envelope(env, &uuid(1), "x", 1_700_000_000_000)]);
    let (status, ..) = ingest(addr, &one).await;
    assert_eq!(status, 200, "the server still serves");

    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn shared_contexts_are_stored_once_and_read_back_whole() {
    let (t, env) = Env::with_environment("web").await;
    let contexts = [
        json!({"country": "DE", "library": {"name": "js", "version": "1.0"}, "page": {"url": "/a"}}),
        json!({"country": "DE", "library": {"name": "js", "version": "1.0"}, "page": {"url": "/b"}, "ip": null}),
        json!({"library": {"name": "js", "version": "1.0"}, "country": "DE"}),
        json!({"country": "FR", "library": {"name": "js", "version": "1.0"}}),
        json!({"page": {"url": "/only-per-event"}, "campaign": {"source": "x"}}),
        json!({}),
    ];
    let batch = |first: u64| -> Value {
        contexts
            .iter()
            .enumerate()
            .map(|(i, context)| {
                let mut e = envelope(env, &uuid(first + i as u64), "view", 1_700_000_000_000);
                e["context"] = context.clone();
                e
            })
            .collect()
    };
    // Twice through one backend (the second batch hits its cache), then
    // through a fresh one (the rows exist, its cache is empty).
    let (server, tx) = t.start(t.config()).await;
    for first in [0, 100] {
        let (status, body, _) = ingest(server.addr, &batch(first)).await;
        assert_eq!(status, 200, "{body}");
    }
    stop(server, tx).await;
    let (server, tx) = t.start(t.config()).await;
    let (status, body, _) = ingest(server.addr, &batch(200)).await;
    assert_eq!(status, 200, "{body}");
    stop(server, tx).await;

    let pool = t.shard_pool("a").await;
    let shared: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contexts WHERE env_id = ?")
        .bind(env)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(shared, 2, "DE+js and FR+js, each stored once");
    let without: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE env_id = ? AND context_id = 0")
            .bind(env)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        without, 6,
        "contexts with only per-event keys share nothing"
    );

    for first in [0u64, 100, 200] {
        for (i, context) in contexts.iter().enumerate() {
            let key = protocol::event_key(&uuid(first + i as u64)).to_vec();
            let stored: String = sqlx::query_scalar(
                "SELECT CAST(context AS CHAR) FROM events_full WHERE env_id = ? AND id = ?",
            )
            .bind(env)
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap();
            let stored: Value = serde_json::from_str(&stored).unwrap();
            assert_eq!(&stored, context, "event {}", first + i as u64);
        }
    }

    // The country counts rebuild reads the whole context through the view.
    sqlx::query("DELETE FROM country_counts_minute")
        .execute(&pool)
        .await
        .unwrap();
    backend::store::mysql::counters::rebuild(&pool, env, 1_700_000_000_000, 7200, &[])
        .await
        .unwrap();
    let countries: Vec<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT country, CAST(SUM(events) AS SIGNED) FROM country_counts_minute \
         WHERE env_id = ? GROUP BY country ORDER BY country",
    )
    .bind(env)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        countries,
        vec![
            (b"??".to_vec(), 6),
            (b"DE".to_vec(), 9),
            (b"FR".to_vec(), 3)
        ]
    );
    t.cleanup().await;
}

#[tokio::test]
async fn gzip_bodies_and_a_ten_thousand_event_batch_land() {
    let (t, env) = Env::with_environment("web").await;
    let (server, tx) = t.start(t.config()).await;
    let names = ["view", "click", "purchase", "signup", "search"];
    let batch: Vec<Value> = (0..10_000u64)
        .map(|i| {
            envelope(
                env,
                &uuid(i),
                names[(i % 5) as usize],
                1_700_000_000_000 + (i as i64) * 1000,
            )
        })
        .collect();
    let auth = format!("Bearer {TOKEN}");
    let body = gzip(&serde_json::to_vec(&batch).unwrap());
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let (status, body, _) = post(server.addr, body, &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["environments"][env.to_string()]["inserted"], 10_000);
    let pool = t.shard_pool("a").await;
    assert_eq!(count(&pool, env).await, 10_000);
    let names_stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_names WHERE env_id = ?")
        .bind(env)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(names_stored, 5, "names stored once");

    server.state.flush_counters().await;
    assert_eq!(counted(&pool, env).await, 10_000);
    // Wipe the counts; a rebuild from the events table restores them.
    sqlx::query("DELETE FROM event_counts_minute")
        .execute(&pool)
        .await
        .unwrap();
    let rebuilt =
        backend::store::mysql::counters::rebuild(&pool, env, 1_700_000_000_000, 7200, &[])
            .await
            .unwrap();
    assert_eq!(rebuilt, 10_000);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_counts_minute WHERE env_id = ?")
        .bind(env)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(rows > 160, "one row per (minute, name): {rows}");

    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn a_new_environment_is_routable_at_once_and_health_endpoints_answer() {
    let t = Env::new().await;
    t.add_shard("a").await;
    let mut config = t.config();
    config.catalog_refresh_ms = 60_000;
    let (server, tx) = t.start(config).await;
    let env = catalog::create_environment(&t.catalog, "late", "a")
        .await
        .unwrap();
    let (status, body, _) = ingest(server.addr, &json!([envelope(env, &uuid(1), "x", 0)])).await;
    assert_eq!(status, 200, "unknown ids force a catalog refresh: {body}");

    // A forced refresh has just run (for an id that does not exist); batches
    // for an environment created right after it must wait for the next one,
    // not answer 422 from the old snapshot (the queue consumer would
    // dead-letter them).
    let (status, _, _) = ingest(
        server.addr,
        &json!([envelope(4_000_000, &uuid(99), "x", 0)]),
    )
    .await;
    assert_eq!(status, 422, "an environment nobody created is refused");
    let later = catalog::create_environment(&t.catalog, "later", "a")
        .await
        .unwrap();
    let batches: Vec<_> = (0..8u64)
        .map(|i| json!([envelope(later, &uuid(100 + i), "x", 0)]))
        .collect();
    let answers = futures::future::join_all(batches.iter().map(|b| ingest(server.addr, b))).await;
    for (status, body, _) in answers {
        assert_eq!(status, 200, "every concurrent first batch lands: {body}");
    }

    for path in ["healthz", "readyz"] {
        let r = reqwest::get(format!("http://{}/{path}", server.addr))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert!(matches!(
        catalog::create_environment(&t.catalog, "late", "a").await,
        Err(backend::Error::AlreadyExists(..))
    ));
    assert!(matches!(
        catalog::create_environment(&t.catalog, "bad name!", "a").await,
        Err(backend::Error::InvalidArgument(..))
    ));
    assert!(matches!(
        catalog::create_environment(&t.catalog, "x", "nope").await,
        Err(backend::Error::UnknownShard(..))
    ));
    stop(server, tx).await;
    t.cleanup().await;
}

#[test]
fn the_fixture_is_a_valid_envelope() {
    let e: Envelope = serde_json::from_value(envelope(1, "x", "y", 0)).unwrap();
    assert!(e.validate().is_ok());
}
