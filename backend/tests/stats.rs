//! Stats API tests: tokens, summary and series exact against the events
//! table, the live stream and its fan-out, against a real MariaDB.

mod common;

use std::{net::SocketAddr, time::Duration};

use backend::catalog;
use common::*;
use serde_json::{json, Value};
use sqlx::{mysql::MySqlPool, Row};

async fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn event(env: u32, n: u64, name: &str, country: &str, ts: i64) -> Value {
    json!({"id": format!("ev-{n}"), "env_id": env, "name": name, "timestamp": ts, "received_at": ts,
           "properties": {}, "context": {"country": country}})
}

#[tokio::test]
async fn read_tokens_guard_each_environment() {
    let t = Env::new().await;
    t.add_shard("a").await;
    catalog::create_environment(&t.catalog, "shop", "a")
        .await
        .unwrap();
    catalog::create_environment(&t.catalog, "blog", "a")
        .await
        .unwrap();
    let shop = catalog::create_read_token(&t.catalog, "shop")
        .await
        .unwrap();
    let blog = catalog::create_read_token(&t.catalog, "blog")
        .await
        .unwrap();
    assert!(shop.starts_with("srt_") && shop.len() == 36, "{shop}");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM read_tokens WHERE prefix = ?")
        .bind(catalog::token_prefix(&shop))
        .fetch_one(&t.catalog)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let in_clear: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM read_tokens WHERE token_hash = ?")
        .bind(shop.as_bytes())
        .fetch_one(&t.catalog)
        .await
        .unwrap();
    assert_eq!(in_clear, 0, "only hashes are stored");

    let (server, tx) = t.start(t.config()).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/v1/stats/summary?env=shop", &shop).await.0, 200);
    let (status, body) = get(addr, "/v1/stats/summary?env=shop", &blog).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "a token never reads another environment"
    );
    let (status, body) = get(addr, "/v1/stats/summary?env=shop", TOKEN).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "the ingest token is not a read token"
    );
    // Another environment that exists and one that does not get the same
    // answer, so a token holder cannot enumerate environment names.
    let other = get(addr, "/v1/stats/summary?env=blog", &shop).await;
    let missing = get(addr, "/v1/stats/summary?env=nope", &shop).await;
    assert_eq!(other.0, 403);
    assert_eq!(
        other, missing,
        "existing and missing environments answer alike"
    );
    let (status, body) = get(addr, "/v1/stats/summary", &shop).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_argument"))
    );
    let response = reqwest::get(format!("http://{addr}/v1/stats/summary?env=shop"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let listed = catalog::list_read_tokens(&t.catalog, "shop").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at.is_none());
    catalog::revoke_read_token(&t.catalog, "shop", catalog::token_prefix(&shop))
        .await
        .unwrap();
    assert!(
        catalog::revoke_read_token(&t.catalog, "shop", "srt_nothing")
            .await
            .is_err()
    );
    tokio::time::sleep(backend::stats::TOKEN_CACHE_TTL + Duration::from_millis(300)).await;
    assert_eq!(
        get(addr, "/v1/stats/summary?env=shop", &shop).await.0,
        401,
        "revoked within the cache TTL"
    );
    assert_eq!(get(addr, "/v1/stats/summary?env=blog", &blog).await.0, 200);

    stop(server, tx).await;
    t.cleanup().await;
}

async fn exact_by_name(pool: &MySqlPool, env: u32) -> Vec<(String, u64)> {
    sqlx::query(
        "SELECT CAST(n.name AS CHAR), COUNT(*) AS c FROM events e JOIN event_names n ON n.id = e.name_id \
         WHERE e.env_id = ? GROUP BY n.name ORDER BY c DESC, n.name",
    )
    .bind(env)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
    .collect()
}

#[tokio::test]
async fn unknown_environment_names_force_no_catalog_reads() {
    let (t, _env, token) = Env::with_reader("shop").await;
    let mut config = t.config();
    config.catalog_refresh_ms = 600_000;
    let (server, tx) = t.start(config).await;
    let before = server.state.catalog.snapshot().read_at;
    for i in 0..30 {
        let (status, _) = get(
            server.addr,
            &format!("/v1/stats/summary?env=nope{i}"),
            &token,
        )
        .await;
        assert_eq!(status, 403);
    }
    assert!(
        server.state.catalog.snapshot().read_at == before,
        "asking for names that do not exist reloaded the catalog"
    );
    // An environment (and token) created after start-up is found by the
    // token's own environment id: one refresh.
    catalog::create_environment(&t.catalog, "late", "a")
        .await
        .unwrap();
    let late = catalog::create_read_token(&t.catalog, "late")
        .await
        .unwrap();
    assert_eq!(
        get(server.addr, "/v1/stats/summary?env=late", &late)
            .await
            .0,
        200
    );
    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn summary_and_series_match_the_events_table_after_a_load_with_duplicates() {
    let (t, env, token) = Env::with_reader("shop").await;
    let (server, tx) = t.start(t.config()).await;
    let addr = server.addr;

    // 3.2 hours of events (ending in the past), 4 names, 3 countries (one lower-case, one missing), then the same again (duplicates)
    // and a batch of half-new ones.
    let start = (now_ms() - 4 * 3_600_000) / 60_000 * 60_000;
    let names = [
        "view", "view", "view", "click", "click", "purchase", "signup",
    ];
    let countries = ["DE", "us", "", "FR"];
    let events = |ids: std::ops::Range<u64>| -> Vec<Value> {
        ids.map(|i| {
            event(
                env,
                i,
                names[(i % 7) as usize],
                countries[(i % 4) as usize],
                start + i as i64 * 5000,
            )
        })
        .collect()
    };
    let batch = events(0..2000);
    for chunk in batch.chunks(500) {
        assert_eq!(ingest(addr, &json!(chunk)).await.0, 200);
    }
    assert_eq!(ingest(addr, &json!(batch[..700])).await.0, 200);
    let extra = events(1900..2300);
    assert_eq!(ingest(addr, &json!(extra)).await.0, 200);
    assert_eq!(server.state.flush_counters().await, 0);

    let pool = t.shard_pool("a").await;
    let exact = exact_by_name(&pool, env).await;
    let total: u64 = exact.iter().map(|(_, c)| c).sum();
    assert_eq!(total, 2300);

    let (status, summary) = get(addr, "/v1/stats/summary?env=shop", &token).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["events"], total);
    let by_event: Vec<(String, u64)> = summary["by_event"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_event, exact, "by_event, largest first, exact");
    let by_country: Value = summary["by_country"].clone();
    assert_eq!(by_country.as_array().unwrap().len(), 4, "{by_country}");
    assert!(
        by_country
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "US"),
        "codes are upper-cased: {by_country}"
    );
    assert!(
        by_country
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "??"),
        "missing country counted as ??"
    );
    let country_total: u64 = by_country
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(country_total, total);

    // A range holding only the first hour.
    let from = start;
    let to = start + 3_600_000;
    let in_range = (0..2300i64).filter(|i| start + i * 5000 < to).count() as u64;
    let (_, ranged) = get(
        addr,
        &format!("/v1/stats/summary?env=shop&from={from}&to={to}"),
        &token,
    )
    .await;
    assert_eq!(ranged["events"], in_range);

    // Minute series for one event: zero-filled, summing to the exact count.
    let path = format!(
        "/v1/stats/series?env=shop&event=purchase&interval=minute&from={start}&to={}",
        start + 4 * 3_600_000
    );
    let (status, series) = get(addr, &path, &token).await;
    assert_eq!(status, 200, "{series}");
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 240);
    assert_eq!(points[0]["t"], start);
    let purchases: u64 = points.iter().map(|p| p["value"].as_u64().unwrap()).sum();
    assert_eq!(
        purchases,
        exact.iter().find(|(n, _)| n == "purchase").unwrap().1
    );
    assert!(points.iter().any(|p| p["value"] == 0), "zero-filled");

    let path = format!(
        "/v1/stats/series?env=shop&interval=hour&from={start}&to={}",
        start + 4 * 3_600_000
    );
    let (_, hourly) = get(addr, &path, &token).await;
    let hourly_total: u64 = hourly["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_u64().unwrap())
        .sum();
    assert_eq!(hourly_total, total);

    let path = format!(
        "/v1/stats/series?env=shop&event=never&from={start}&to={}",
        start + 600_000
    );
    let (status, none) = get(addr, &path, &token).await;
    assert_eq!(status, 200);
    assert_eq!(none["points"].as_array().unwrap().len(), 10);
    assert!(none["points"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["value"] == 0));

    for (query, why) in [
        ("interval=fortnight", "unknown interval"),
        ("interval=second&from=0&to=86400000", "too many points"),
        (
            "from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z",
            "from after to",
        ),
        ("from=yesterday", "unparseable time"),
    ] {
        let (status, body) = get(addr, &format!("/v1/stats/series?env=shop&{query}"), &token).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_argument")),
            "{why}: {body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    stop(server, tx).await;
    t.cleanup().await;
}

/// Reads SSE `update` events from a streaming response.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(addr: SocketAddr, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new()
            .get(format!("http://{addr}/v1/stats/stream?env=shop"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("stream");
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Self {
            response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let id = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("id:"))
                    .map(|s| s.trim().to_string());
                let data = frame.lines().find_map(|l| l.strip_prefix("data:"));
                if let (Some(id), Some(data)) = (id, data) {
                    return (id, serde_json::from_str(data.trim()).expect("json data"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .expect("an update within 5 s")
                .expect("chunk")
                .expect("stream open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn total_of(update: &Value) -> u64 {
    update["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["total"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn the_live_stream_shows_new_events_within_two_seconds_and_fans_out() {
    let (t, env, token) = Env::with_reader("shop").await;
    let (server, tx) = t.start(t.config()).await;
    let addr = server.addr;

    let mut viewer = Sse::open(addr, &token, None).await;
    let (_, first) = viewer.next().await;
    assert_eq!(
        first["seconds"].as_array().unwrap().len(),
        301,
        "the first update back-fills five minutes"
    );
    assert_eq!(total_of(&first), 0);
    let mut second_viewer = Sse::open(addr, &token, None).await;
    second_viewer.next().await;

    let posted = std::time::Instant::now();
    let batch: Vec<Value> = (0..25u64)
        .map(|i| {
            event(
                env,
                i,
                if i < 20 { "order" } else { "error" },
                "DE",
                now_ms(),
            )
        })
        .collect();
    assert_eq!(ingest(addr, &json!(batch)).await.0, 200);
    let seen = loop {
        let (_, update) = viewer.next().await;
        let seconds = update["seconds"].as_array().unwrap();
        let orders: u64 = seconds
            .iter()
            .filter_map(|s| s["by_event"]["order"].as_u64())
            .sum();
        if orders == 20 {
            assert_eq!(total_of(&update), 25);
            break posted.elapsed();
        }
        assert!(
            posted.elapsed() < Duration::from_secs(4),
            "events not on the stream in time: {update}"
        );
    };
    assert!(
        seen < Duration::from_millis(2500),
        "event → stream took {seen:?}"
    );

    // Two viewers, one poller: database reads per second stay at one.
    let polls_before = server.state.metrics.stats_polls.get();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = server.state.metrics.stats_polls.get() - polls_before;
    assert!(
        (2..=4).contains(&polls),
        "{polls} polls in 3 s for two viewers"
    );
    second_viewer.next().await;

    // A reconnect with Last-Event-ID is caught up from that id.
    let (id, _) = viewer.next().await;
    let resumed_from: i64 = id.parse::<i64>().unwrap() - 60;
    let mut resumed = Sse::open(addr, &token, Some(&resumed_from.to_string())).await;
    let (_, catch_up) = resumed.next().await;
    let seconds = catch_up["seconds"].as_array().unwrap();
    assert!(
        seconds.len() >= 70 && seconds.len() < 80,
        "{} seconds of catch-up",
        seconds.len()
    );
    assert_eq!(total_of(&catch_up), 25);

    drop((viewer, second_viewer, resumed));
    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn two_backends_add_to_the_same_counters() {
    let (t, env, token) = Env::with_reader("shop").await;
    let (one, tx_one) = t.start(t.config()).await;
    let (two, tx_two) = t.start(t.config()).await;
    let ts = now_ms() - 60_000;
    let batch: Vec<Value> = (0..600u64)
        .map(|i| {
            let mut e = event(env, i, "order", "DE", ts);
            e["user_id"] = json!(format!("user-{}", i % 250));
            e["session_id"] = json!(format!("session-{}", i % 400));
            e
        })
        .collect();
    // Each backend takes half, and both see a share of repeats of the other's.
    let (first, second) = (json!(batch[..350]), json!(batch[250..]));
    let ((sa, ..), (sb, ..)) = tokio::join!(ingest(one.addr, &first), ingest(two.addr, &second));
    assert_eq!((sa, sb), (200, 200));
    let (fa, fb) = tokio::join!(one.state.flush_counters(), two.state.flush_counters());
    assert_eq!((fa, fb), (0, 0));
    for server in [&one, &two] {
        let (_, summary) = get(server.addr, "/v1/stats/summary?env=shop", &token).await;
        assert_eq!(summary["events"], 600, "{summary}");
        let (users, sessions) = (
            summary["users"].as_f64().unwrap(),
            summary["sessions"].as_f64().unwrap(),
        );
        assert!(
            (users - 250.0).abs() / 250.0 <= 0.02,
            "users {users}, exactly 250"
        );
        assert!(
            (sessions - 400.0).abs() / 400.0 <= 0.02,
            "sessions {sessions}, exactly 400"
        );
    }
    let pool = t.shard_pool("a").await;
    let seconds: i64 = sqlx::query_scalar(
        "SELECT CAST(SUM(events) AS SIGNED) FROM event_counts_second WHERE env_id = ?",
    )
    .bind(env)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(seconds, 600);
    stop(one, tx_one).await;
    stop(two, tx_two).await;
    t.cleanup().await;
}

#[tokio::test]
async fn segment_message_types_are_stored_compactly_and_counted_by_type() {
    let (t, env, token) = Env::with_reader("shop").await;
    let (server, tx) = t.start(t.config()).await;
    let ts = now_ms() - 120_000;
    let mut page_track = event(env, 1, "page", "DE", ts);
    page_track["type"] = json!("track");
    let mut page_view = event(env, 2, "page", "DE", ts);
    page_view["type"] = json!("page");
    let mut identify = event(env, 3, "identify", "DE", ts);
    identify["type"] = json!("identify");
    identify["traits"] = json!({"email": "a@example.com", "plan": "pro"});
    let mut group = event(env, 4, "group", "DE", ts);
    group["type"] = json!("group");
    group["group_id"] = json!("acme");
    let mut alias = event(env, 5, "alias", "DE", ts);
    alias["type"] = json!("alias");
    alias["previous_id"] = json!("anon-1");
    let (status, body, _) = ingest(
        server.addr,
        &json!([page_track, page_view, identify, group, alias]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.state.flush_counters().await, 0);

    let pool = t.shard_pool("a").await;
    let rows = sqlx::query(
        "SELECT event_type, CAST(traits AS CHAR), group_id, previous_id FROM events WHERE env_id = ? ORDER BY client_id",
    )
    .bind(env)
    .fetch_all(&pool)
    .await
    .unwrap();
    type Stored = (u8, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
    let stored: Vec<Stored> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(stored[0], (0, None, None, None), "track: no traits stored");
    assert_eq!(stored[1].0, 2);
    assert_eq!(stored[2].0, 1);
    let traits: Value = serde_json::from_str(stored[2].1.as_deref().unwrap()).unwrap();
    assert_eq!(traits, json!({"email": "a@example.com", "plan": "pro"}));
    assert_eq!(
        (stored[3].0, stored[3].2.as_deref()),
        (4, Some(&b"acme"[..]))
    );
    assert_eq!(
        (stored[4].0, stored[4].3.as_deref()),
        (5, Some(&b"anon-1"[..]))
    );

    let (_, summary) = get(server.addr, "/v1/stats/summary?env=shop", &token).await;
    let pages: Vec<&Value> = summary["by_event"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "page")
        .collect();
    assert_eq!(
        pages.len(),
        2,
        "a 'page' track event and page views stay apart: {summary}"
    );
    let by_type: std::collections::BTreeMap<String, u64> = summary["by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap().to_string(),
                t["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: std::collections::BTreeMap<String, u64> =
        ["alias", "group", "identify", "page", "track"]
            .iter()
            .map(|t| (t.to_string(), 1))
            .collect();
    assert_eq!(by_type, expected);
    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn metrics_are_maintained_like_counts() {
    let (t, env, token) = Env::with_reader("shop").await;
    catalog::add_metric(
        &t.catalog,
        "shop",
        "revenue",
        "purchase",
        "sum",
        Some("amount"),
    )
    .await
    .unwrap();
    catalog::add_metric(&t.catalog, "shop", "orders", "purchase", "count", None)
        .await
        .unwrap();
    catalog::add_metric(
        &t.catalog,
        "shop",
        "basket",
        "purchase",
        "avg",
        Some("amount"),
    )
    .await
    .unwrap();
    catalog::add_metric(
        &t.catalog,
        "shop",
        "refunds",
        "refund",
        "sum",
        Some("amount"),
    )
    .await
    .unwrap();
    assert!(matches!(
        catalog::add_metric(
            &t.catalog,
            "shop",
            "revenue",
            "purchase",
            "sum",
            Some("amount")
        )
        .await,
        Err(backend::Error::AlreadyExists(..))
    ));
    assert!(catalog::add_metric(
        &t.catalog,
        "shop",
        "x",
        "purchase",
        "median",
        Some("amount")
    )
    .await
    .is_err());
    assert!(
        catalog::add_metric(&t.catalog, "shop", "x", "purchase", "sum", None)
            .await
            .is_err()
    );
    assert!(catalog::add_metric(
        &t.catalog,
        "shop",
        "x",
        "purchase",
        "sum",
        Some("a'); DROP")
    )
    .await
    .is_err());
    let (server, tx) = t.start(t.config()).await;

    let ts = now_ms() - 30_000;
    let mut batch = Vec::new();
    for i in 0..100u64 {
        let mut e = event(env, i, "purchase", "DE", ts + i as i64 * 100);
        e["properties"] = if i % 10 == 9 {
            json!({"note": "no amount"})
        } else {
            json!({"amount": (i as f64) * 1.5})
        };
        e["user_id"] = json!(format!("u{}", i % 7));
        batch.push(e);
    }
    batch.push(event(env, 500, "view", "DE", ts));
    assert_eq!(ingest(server.addr, &json!(batch)).await.0, 200);
    assert_eq!(
        ingest(server.addr, &json!(batch[..50])).await.0,
        200,
        "duplicates add nothing"
    );
    assert_eq!(server.state.flush_counters().await, 0);

    let expected_sum: f64 = (0..100u64)
        .filter(|i| i % 10 != 9)
        .map(|i| i as f64 * 1.5)
        .sum();
    let (_, summary) = get(server.addr, "/v1/stats/summary?env=shop", &token).await;
    let metrics = &summary["metrics"];
    assert!(
        (metrics["revenue"].as_f64().unwrap() - expected_sum).abs() < 1e-6,
        "{summary}"
    );
    assert_eq!(metrics["orders"], 100.0);
    assert!((metrics["basket"].as_f64().unwrap() - expected_sum / 90.0).abs() < 1e-6);
    assert_eq!(metrics["refunds"], 0.0);
    assert_eq!(summary["users"], 7);

    // Wipe the derived metric values and sketches; a rebuild restores them.
    let pool = t.shard_pool("a").await;
    for table in [
        "metric_values_minute",
        "metric_values_second",
        "unique_sketches",
    ] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let (_, wiped) = get(server.addr, "/v1/stats/summary?env=shop", &token).await;
    assert_eq!(
        (wiped["metrics"]["orders"].as_f64(), wiped["users"].as_u64()),
        (Some(0.0), Some(0))
    );
    let defined = catalog::list_metrics(&t.catalog, "shop").await.unwrap();
    backend::store::mysql::counters::rebuild(&pool, env, ts - 60_000, 7200, &defined)
        .await
        .unwrap();
    let (_, rebuilt) = get(server.addr, "/v1/stats/summary?env=shop", &token).await;
    assert_eq!(
        rebuilt["metrics"], summary["metrics"],
        "rebuilt metric values"
    );
    assert_eq!(rebuilt["users"], 7, "rebuilt sketches");

    // A rebuild that fails part-way (here: the shard refuses sketch rows)
    // leaves the previous counts in place, never empty ones.
    sqlx::Executor::execute(
        &pool,
        "CREATE TRIGGER refuse_sketches BEFORE INSERT ON unique_sketches FOR EACH ROW \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'test: sketch rows refused'",
    )
    .await
    .unwrap();
    let failed =
        backend::store::mysql::counters::rebuild(&pool, env, ts - 60_000, 7200, &defined).await;
    sqlx::Executor::execute(&pool, "DROP TRIGGER refuse_sketches")
        .await
        .unwrap();
    assert!(failed.is_err(), "the trigger makes the rebuild fail");
    let (_, after_failure) = get(server.addr, "/v1/stats/summary?env=shop", &token).await;
    assert_eq!(
        after_failure["metrics"], summary["metrics"],
        "a failed rebuild keeps the metric values"
    );
    assert_eq!(
        after_failure["users"], 7,
        "a failed rebuild keeps the sketches"
    );
    assert_eq!(
        after_failure["events"], summary["events"],
        "and the event counts"
    );

    let from = ts - 60_000;
    let path = format!(
        "/v1/stats/series?env=shop&metric=revenue&interval=minute&from={from}&to={}",
        now_ms() + 60_000
    );
    let (status, series) = get(server.addr, &path, &token).await;
    assert_eq!(status, 200, "{series}");
    let total: f64 = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert!((total - expected_sum).abs() < 1e-6);
    let (status, body) = get(server.addr, "/v1/stats/series?env=shop&metric=nope", &token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_argument"))
    );

    let path = format!(
        "/v1/stats/series?env=shop&metric=orders&interval=second&from={}&to={}",
        ts - 1000,
        ts + 11_000
    );
    let (_, per_second) = get(server.addr, &path, &token).await;
    let orders: f64 = per_second["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert_eq!(orders, 100.0);

    catalog::remove_metric(&t.catalog, "shop", "refunds")
        .await
        .unwrap();
    assert!(catalog::remove_metric(&t.catalog, "shop", "refunds")
        .await
        .is_err());
    assert_eq!(
        catalog::list_metrics(&t.catalog, "shop")
            .await
            .unwrap()
            .len(),
        3
    );
    stop(server, tx).await;
    t.cleanup().await;
}

/// Every derived count, as rows of text, in one order: what a rebuild must
/// reproduce exactly.
async fn counter_rows(pool: &MySqlPool, env: u32) -> Vec<String> {
    let mut rows = Vec::new();
    for (table, key, values) in [
        ("event_counts_minute", "minute, name_id", "events"),
        ("event_counts_second", "second, name_id", "events"),
        ("country_counts_minute", "minute, country", "events"),
        ("metric_values_minute", "minute, metric_id", "events, total"),
        ("metric_values_second", "second, metric_id", "events, total"),
    ] {
        let sql = format!(
            "SELECT CAST(CONCAT_WS('|', '{table}', {key}, {values}) AS CHAR) FROM {table} \
             WHERE env_id = ? ORDER BY {key}"
        );
        let table_rows: Vec<String> = sqlx::query_scalar(&sql)
            .bind(env)
            .fetch_all(pool)
            .await
            .unwrap();
        assert!(!table_rows.is_empty(), "{table} has rows to compare");
        rows.extend(table_rows);
    }
    rows
}

#[tokio::test]
async fn a_rebuild_from_stored_rows_counts_exactly_what_the_write_path_counted() {
    let (t, env, token) = Env::with_reader("shop").await;
    catalog::add_metric(
        &t.catalog,
        "shop",
        "revenue",
        "purchase",
        "sum",
        Some("amount"),
    )
    .await
    .unwrap();
    let (server, tx) = t.start(t.config()).await;
    // Events of four types over two days (some in the live per-second
    // window, most not), with countries the counter normalises.
    let now = now_ms();
    let mut batch = Vec::new();
    for i in 0..400u64 {
        let ts = if i % 4 == 0 {
            now - 20_000 - i as i64 * 10
        } else {
            now - 2 * 86_400_000 + i as i64 * 61_000
        };
        let country = ["de", "FR", "", "toolongcountry", "T1"][i as usize % 5];
        let mut e = event(
            env,
            i,
            ["purchase", "view", "signup"][i as usize % 3],
            country,
            ts,
        );
        e["type"] = json!(["track", "page", "screen", "track"][i as usize % 4]);
        e["properties"] = json!({"amount": i as f64 / 4.0});
        e["user_id"] = json!(format!("u{}", i % 23));
        e["session_id"] = json!(format!("s{}", i % 11));
        batch.push(e);
    }
    assert_eq!(ingest(server.addr, &json!(batch)).await.0, 200);
    assert_eq!(server.state.flush_counters().await, 0);
    let pool = t.shard_pool("a").await;
    let live = counter_rows(&pool, env).await;
    let (_, summary) = get(server.addr, "/v1/stats/summary?env=shop&from=0", &token).await;

    for table in [
        "event_counts_minute",
        "event_counts_second",
        "country_counts_minute",
        "metric_values_minute",
        "metric_values_second",
        "unique_sketches",
    ] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let defined = catalog::list_metrics(&t.catalog, "shop").await.unwrap();
    let counted = backend::store::mysql::counters::rebuild(&pool, env, 0, 7200, &defined)
        .await
        .unwrap();
    assert_eq!(counted, 400);
    assert_eq!(counter_rows(&pool, env).await, live, "every count row");
    let (_, rebuilt) = get(server.addr, "/v1/stats/summary?env=shop&from=0", &token).await;
    assert_eq!(rebuilt, summary, "the summary, users and sessions included");
    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn api_keys_are_stored_hashed_and_revoked_by_key_prefix_or_hash() {
    use intake::credentials::key_hash;
    let t = Env::new().await;
    t.add_shard("a").await;
    let shop = catalog::create_environment(&t.catalog, "shop", "a")
        .await
        .unwrap();
    let blog = catalog::create_environment(&t.catalog, "blog", "a")
        .await
        .unwrap();
    let (key, stored) = catalog::create_api_key(&t.catalog, "shop").await.unwrap();
    assert!(key.starts_with("sk_") && key.len() == 35, "{key}");
    assert_eq!(stored.key_hash, key_hash(&key));
    assert_eq!(stored.prefix.as_deref(), Some(&key[..12]));
    let in_clear: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE key_hash = ? OR prefix = ?")
            .bind(&key)
            .bind(&key)
            .fetch_one(&t.catalog)
            .await
            .unwrap();
    assert_eq!(in_clear, 0, "only the hash and a prefix are stored");
    assert_eq!(
        catalog::api_key_env(&t.catalog, &key_hash(&key))
            .await
            .unwrap(),
        Some(shop)
    );

    // A key made earlier at the edge comes in by its hash.
    let edge_key = "sk_0123456789abcdef0123456789abcdef";
    let imported = catalog::import_api_key(&t.catalog, "blog", &key_hash(edge_key))
        .await
        .unwrap();
    assert_eq!((imported.env_id, imported.prefix), (blog, None));
    assert!(
        catalog::import_api_key(&t.catalog, "blog", &key_hash(edge_key))
            .await
            .is_ok(),
        "importing twice is a no-op"
    );
    assert!(matches!(
        catalog::import_api_key(&t.catalog, "shop", &key_hash(edge_key)).await,
        Err(backend::Error::AlreadyExists(..))
    ));
    assert!(catalog::import_api_key(&t.catalog, "blog", "not-a-hash")
        .await
        .is_err());
    let listed = catalog::list_api_keys(&t.catalog, "shop").await.unwrap();
    assert_eq!(listed, vec![stored.clone()]);

    // Revoked by prefix, by the key itself, by hash; each once.
    let revoked = catalog::revoke_api_key(&t.catalog, &key[..12])
        .await
        .unwrap();
    assert_eq!(revoked.key_hash, stored.key_hash);
    assert!(revoked.revoked_at.is_some());
    assert_eq!(
        catalog::api_key_env(&t.catalog, &key_hash(&key))
            .await
            .unwrap(),
        None
    );
    assert!(
        catalog::revoke_api_key(&t.catalog, &key).await.is_err(),
        "no active key left to revoke"
    );
    let (second, _) = catalog::create_api_key(&t.catalog, "shop").await.unwrap();
    catalog::revoke_api_key(&t.catalog, &second).await.unwrap();
    catalog::revoke_api_key(&t.catalog, &key_hash(edge_key))
        .await
        .unwrap();
    for k in [&second, &edge_key.to_string()] {
        assert_eq!(
            catalog::api_key_env(&t.catalog, &key_hash(k))
                .await
                .unwrap(),
            None
        );
    }
    t.cleanup().await;
}
