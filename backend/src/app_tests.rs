//! The HTTP API on in-memory storage: no database.

use std::{
    io::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderMap, Request, StatusCode},
};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::{
    app,
    catalog::{Catalog, Metric},
    store::memory::{MemoryCatalog, MemoryStore},
    AppState, Config, Ports,
};

const TOKEN: &str = "unit-ingest-token-0123456789abcdef0123456789";
/// Shards 1 ("a") and 2 ("b"); environments 10 "web" on a, 20 "shop" on b,
/// 30 "moving" from a to b.
const WEB: u32 = 10;
const SHOP: u32 = 20;
const MOVING: u32 = 30;

struct Harness {
    state: AppState,
    store: Arc<MemoryStore>,
    catalog: Arc<MemoryCatalog>,
}

fn memory_catalog() -> Arc<MemoryCatalog> {
    let catalog = Arc::new(MemoryCatalog::new());
    catalog.add_shard(1, "a");
    catalog.add_shard(2, "b");
    catalog.put_environment(WEB, "web", 1, None);
    catalog.put_environment(SHOP, "shop", 2, None);
    catalog.put_environment(MOVING, "moving", 1, Some(2));
    catalog.add_read_token("srt_web", WEB);
    catalog.add_read_token("srt_shop", SHOP);
    catalog.add_metric(Metric {
        id: 1,
        env_id: WEB,
        name: "revenue".into(),
        event_name: "buy".into(),
        aggregate: crate::catalog::Aggregate::Sum,
        property: Some("amount".into()),
    });
    catalog
}

fn config() -> Config {
    // Nothing listens there: a test that connected would fail.
    Config::new("mysql://nobody@127.0.0.1:1/none", TOKEN)
}

async fn harness_with(config: Config) -> Harness {
    let catalog = memory_catalog();
    let opened = Catalog::open(catalog.clone(), config.catalog_refresh())
        .await
        .expect("memory catalog");
    let store = Arc::new(MemoryStore::new());
    let state = AppState::from_parts(config, opened, Ports::all(store.clone()));
    Harness {
        state,
        store,
        catalog,
    }
}

async fn harness() -> Harness {
    harness_with(config()).await
}

fn uuid(n: u64) -> String {
    protocol::uuid_v7(1_700_000_000_000 + n, &[n as u8; 10])
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn envelope(env_id: u32, n: u64, name: &str, ts: i64) -> Value {
    json!({"id": uuid(n), "env_id": env_id, "name": name, "timestamp": ts, "received_at": ts + 5,
           "user_id": "u1", "session_id": "s1", "properties": {"amount": 3},
           "context": {"country": "de"}})
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

async fn call(state: &AppState, request: Request<Body>) -> Answer {
    let response = app(state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

async fn post(state: &AppState, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::post("/v1/ingest");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    call(state, request.body(Body::from(body)).expect("request")).await
}

async fn ingest(state: &AppState, batch: &Value) -> Answer {
    let auth = format!("Bearer {TOKEN}");
    let body = serde_json::to_vec(batch).expect("json");
    post(
        state,
        body,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
    )
    .await
}

async fn get(state: &AppState, path: &str, token: Option<&str>) -> Answer {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    call(state, request.body(Body::empty()).expect("request")).await
}

// ---- routing ----

#[tokio::test]
async fn an_environment_lands_on_its_primary_shard_only() {
    let h = harness().await;
    let a = ingest(
        &h.state,
        &json!([envelope(WEB, 1, "x", 0), envelope(WEB, 2, "x", 0)]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["environments"][WEB.to_string()]["inserted"], 2);
    assert_eq!(a.body["retry"], json!([]));
    assert_eq!(h.store.ids(1, WEB), {
        let mut ids = vec![uuid(1), uuid(2)];
        ids.sort();
        ids
    });
    assert_eq!(h.store.count(2, WEB), 0);
}

#[tokio::test]
async fn environments_of_one_batch_go_to_their_own_shards() {
    let h = harness().await;
    let a = ingest(
        &h.state,
        &json!([
            envelope(WEB, 1, "x", 0),
            envelope(SHOP, 2, "x", 0),
            envelope(SHOP, 3, "x", 0)
        ]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        (h.store.count(1, WEB), h.store.count(2, SHOP)),
        (1, 2),
        "each environment on its primary"
    );
    assert_eq!((h.store.count(2, WEB), h.store.count(1, SHOP)), (0, 0));
    assert_eq!(a.body["environments"][SHOP.to_string()]["inserted"], 2);
}

#[tokio::test]
async fn a_migrating_environment_is_written_to_primary_and_secondary() {
    let h = harness().await;
    let a = ingest(&h.state, &json!([envelope(MOVING, 1, "x", 0)])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!((h.store.count(1, MOVING), h.store.count(2, MOVING)), (1, 1));
    let mut writes = h.store.writes();
    writes.sort();
    assert_eq!(writes, vec![(1, MOVING, 1), (2, MOVING, 1)]);
}

#[tokio::test]
async fn a_migration_whose_secondary_fails_has_not_landed() {
    let h = harness().await;
    h.store.fail_writes(2, true);
    let a = ingest(
        &h.state,
        &json!([envelope(MOVING, 1, "x", 0), envelope(WEB, 2, "x", 0)]),
    )
    .await;
    assert_eq!(a.status, StatusCode::MULTI_STATUS, "{}", a.text);
    assert_eq!(a.body["retry"], json!([uuid(1)]));
    assert_eq!(a.body["failures"][0]["env_id"], MOVING);
    assert!(a.body["environments"].get(MOVING.to_string()).is_none());
}

#[tokio::test]
async fn a_new_environment_is_routable_at_once() {
    let h = harness().await;
    let loads = h.catalog.loads();
    h.catalog.put_environment(40, "late", 2, None);
    let a = ingest(&h.state, &json!([envelope(40, 1, "x", 0)])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(h.store.count(2, 40), 1);
    assert_eq!(h.catalog.loads(), loads + 1, "one forced refresh");
}

#[tokio::test]
async fn repeats_are_duplicates_and_land_once() {
    let h = harness().await;
    let batch = json!([envelope(WEB, 1, "x", 0), envelope(WEB, 2, "x", 0)]);
    assert_eq!(ingest(&h.state, &batch).await.status, StatusCode::OK);
    let again = ingest(&h.state, &batch).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body["environments"][WEB.to_string()],
        json!({"inserted": 0, "duplicates": 2, "dropped": 0})
    );
    let twice = ingest(
        &h.state,
        &json!([envelope(WEB, 3, "x", 0), envelope(WEB, 3, "x", 0)]),
    )
    .await;
    assert_eq!(
        twice.body["environments"][WEB.to_string()],
        json!({"inserted": 1, "duplicates": 1, "dropped": 0}),
        "a repeat inside one batch"
    );
    assert_eq!(h.store.count(1, WEB), 3);
}

// ---- status mapping ----

#[tokio::test]
async fn one_failing_shard_gives_207_with_its_ids_to_retry() {
    let h = harness().await;
    h.store.fail_writes(2, true);
    let a = ingest(
        &h.state,
        &json!([
            envelope(WEB, 1, "x", 0),
            envelope(SHOP, 2, "x", 0),
            envelope(SHOP, 3, "x", 0)
        ]),
    )
    .await;
    assert_eq!(a.status, StatusCode::MULTI_STATUS, "{}", a.text);
    assert_eq!(a.headers["retry-after"], "5");
    assert_eq!(a.body["retry"], json!([uuid(2), uuid(3)]));
    assert_eq!(a.body["environments"][WEB.to_string()]["inserted"], 1);
    assert_eq!(a.body["failures"][0]["env_id"], SHOP);
    assert_eq!(a.body["failures"][0]["error"], "shard_unavailable");
    assert_eq!(h.store.count(1, WEB), 1);
}

#[tokio::test]
async fn nothing_landing_is_503_with_the_configured_retry_after() {
    let mut config = config();
    config.retry_after_secs = 9;
    let h = harness_with(config).await;
    h.store.fail_writes(1, true);
    let a = ingest(&h.state, &json!([envelope(WEB, 1, "x", 0)])).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    assert_eq!(a.headers["retry-after"], "9");
    assert_eq!(a.body["retry"], json!([uuid(1)]));
    assert_eq!(a.body["environments"], json!({}));
}

#[tokio::test]
async fn a_200_carries_no_retry_after() {
    let h = harness().await;
    let a = ingest(&h.state, &json!([envelope(WEB, 1, "x", 0)])).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_shard_down_moments_ago_fails_fast_and_counts_an_error() {
    let h = harness().await;
    h.store.mark_down(1);
    let a = ingest(&h.state, &json!([envelope(WEB, 1, "x", 0)])).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    assert!(
        a.body["failures"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("moments ago")),
        "{}",
        a.text
    );
    assert!(h.store.writes().is_empty(), "the store was not asked");
    let m = get(&h.state, "/metrics", None).await;
    assert!(
        m.text.contains("sluice_shard_errors_total{shard=\"a\"} 1"),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn a_shard_that_is_not_active_is_not_written() {
    let h = harness().await;
    h.catalog.set_shard_status(1, "readonly");
    h.state.catalog.refresh().await.expect("refresh");
    let a = ingest(&h.state, &json!([envelope(WEB, 1, "x", 0)])).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    assert!(a.body["failures"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("status is readonly")));
    assert!(h.store.writes().is_empty());
}

#[tokio::test]
async fn an_unknown_environment_while_the_catalog_is_down_is_503_not_422() {
    let h = harness().await;
    h.catalog.set_failing(true);
    let a = ingest(&h.state, &json!([envelope(99, 1, "x", 0)])).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    assert_eq!(a.body["error"], "catalog_unavailable");
    assert_eq!(a.headers["retry-after"], "5");
    let known = ingest(&h.state, &json!([envelope(WEB, 2, "x", 0)])).await;
    assert_eq!(
        known.status,
        StatusCode::OK,
        "known environments still land"
    );
}

// ---- auth ----

#[tokio::test]
async fn ingest_refuses_a_missing_or_wrong_token() {
    let h = harness().await;
    let body = serde_json::to_vec(&json!([envelope(WEB, 1, "x", 0)])).expect("json");
    let ct = ("content-type", "application/json");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[ct], "missing_auth"),
        (&[ct, ("authorization", "Bearer wrong")], "invalid_token"),
        (
            &[ct, ("authorization", "Basic dXNlcjpwYXNz")],
            "missing_auth",
        ),
        (&[ct, ("authorization", "Bearer")], "missing_auth"),
        (
            &[ct, ("authorization", &format!("Bearer {}", &TOKEN[..20]))],
            "invalid_token",
        ),
    ];
    for (headers, code) in cases {
        let a = post(&h.state, body.clone(), headers).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(a.body["error"], code, "{headers:?}");
    }
    assert!(h.store.writes().is_empty());
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let h = harness().await;
    for (n, scheme) in ["bearer", "BEARER", "Bearer"].into_iter().enumerate() {
        let auth = format!("{scheme} {TOKEN}");
        let body = serde_json::to_vec(&json!([envelope(WEB, n as u64, "x", 0)])).expect("json");
        let a = post(
            &h.state,
            body,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{scheme}: {}", a.text);
    }
    assert_eq!(h.store.count(1, WEB), 3);
}

#[tokio::test]
async fn the_token_is_checked_before_the_body() {
    let h = harness().await;
    let a = post(
        &h.state,
        b"not json".to_vec(),
        &[
            ("authorization", "Bearer wrong"),
            ("content-type", "text/plain"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
}

// ---- bad input ----

#[tokio::test]
async fn bad_input_gets_the_documented_status_and_lands_nothing() {
    let mut config = config();
    config.max_body_bytes = testkit::BAD_INPUT_MAX_BODY_BYTES;
    config.max_batch_events = testkit::BAD_INPUT_MAX_BATCH_EVENTS;
    let h = harness_with(config).await;
    for case in testkit::bad_ingest_requests(WEB, TOKEN) {
        let what = case.what;
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = post(&h.state, case.body, &headers).await;
        assert_eq!(
            answer.status.as_u16(),
            case.status,
            "{what}: {}",
            answer.text
        );
        assert_eq!(answer.body["error"], case.code, "{what}: {}", answer.text);
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    assert!(h.store.writes().is_empty(), "nothing reached the store");
}

#[tokio::test]
async fn every_invalid_envelope_is_listed_with_its_index() {
    let h = harness().await;
    let mut long_id = envelope(WEB, 2, "ok", 0);
    long_id["id"] = json!("x".repeat(65));
    let batch = json!([envelope(WEB, 1, "ok", 0), long_id, envelope(WEB, 3, "", 0)]);
    let a = ingest(&h.state, &batch).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.body["details"][0]["index"], 1);
    assert_eq!(a.body["details"][1]["index"], 2);
    assert_eq!(a.body["details"][1]["reason"], "name must not be empty");
    assert_eq!(a.body["details"].as_array().map(Vec::len), Some(2));
    assert_eq!(h.store.count(1, WEB), 0, "all or nothing");
}

#[tokio::test]
async fn gzip_identity_and_json_parameters_are_accepted() {
    let h = harness().await;
    let auth = format!("Bearer {TOKEN}");
    let a = ("authorization", auth.as_str());
    let js = |n: u64| serde_json::to_vec(&json!([envelope(WEB, n, "x", 0)])).expect("json");
    type Case<'a> = (Vec<u8>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            gzip(&js(1)),
            vec![
                a,
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
        ),
        (
            gzip(&js(2)),
            vec![
                a,
                ("content-type", "application/json"),
                ("content-encoding", "X-GZIP"),
            ],
        ),
        (
            js(3),
            vec![
                a,
                ("content-type", "application/json"),
                ("content-encoding", "identity"),
            ],
        ),
        (
            js(4),
            vec![a, ("content-type", "Application/JSON; charset=utf-8")],
        ),
    ];
    for (body, headers) in cases {
        let answer = post(&h.state, body, &headers).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{headers:?}: {}",
            answer.text
        );
    }
    assert_eq!(h.store.count(1, WEB), 4);
}

// ---- health, readiness, metrics, fallbacks ----

#[tokio::test]
async fn readyz_says_fresh_while_the_snapshot_is_young() {
    let h = harness().await;
    let a = get(&h.state, "/readyz", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "ready");
    assert_eq!(a.body["catalog"], "fresh");
    assert_eq!(a.body["catalog_max_age_seconds"], 1.0);
}

#[tokio::test]
async fn readyz_says_stale_but_ready_when_the_catalog_cannot_be_read() {
    let source = memory_catalog();
    source.set_failing(true);
    let old = Instant::now()
        .checked_sub(Duration::from_secs(30))
        .expect("the clock is past 30 s");
    let catalog = Catalog::with_snapshot(
        source.clone(),
        source.snapshot_at(old),
        Duration::from_secs(1),
    );
    let state = AppState::from_parts(config(), catalog, Ports::all(Arc::new(MemoryStore::new())));
    let a = get(&state, "/readyz", None).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "ready whether the catalog answers or not"
    );
    assert_eq!(a.body["catalog"], "stale");
    assert!(
        a.body["catalog_age_seconds"]
            .as_f64()
            .is_some_and(|s| s >= 30.0),
        "{}",
        a.text
    );
    let m = get(&state, "/metrics", None).await;
    let age: f64 = m
        .text
        .lines()
        .find_map(|l| l.strip_prefix("sluice_catalog_snapshot_age_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the age gauge");
    assert!(age >= 30.0, "{age}");
}

#[tokio::test]
async fn metrics_count_refusals_by_the_token_check() {
    let h = harness().await;
    let body = serde_json::to_vec(&json!([envelope(WEB, 1, "x", 0)])).expect("json");
    let ct = ("content-type", "application/json");
    post(&h.state, body.clone(), &[ct]).await;
    post(&h.state, body, &[ct, ("authorization", "Bearer wrong")]).await;
    ingest(&h.state, &json!([envelope(WEB, 1, "x", 0)])).await;
    let m = get(&h.state, "/metrics", None).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.headers["content-type"]
        .to_str()
        .is_ok_and(|c| c.starts_with("text/plain")));
    assert!(
        m.text
            .contains("sluice_ingest_requests_total{status=\"401\"} 2"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("sluice_ingest_requests_total{status=\"200\"} 1"),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn metrics_count_inserted_and_duplicate_events_per_shard() {
    let h = harness().await;
    let batch = json!([envelope(WEB, 1, "x", 0), envelope(SHOP, 2, "x", 0)]);
    ingest(&h.state, &batch).await;
    ingest(&h.state, &batch).await;
    let m = get(&h.state, "/metrics", None).await;
    for line in [
        "sluice_events_inserted_total{shard=\"a\"} 1",
        "sluice_events_inserted_total{shard=\"b\"} 1",
        "sluice_events_duplicate_total{shard=\"a\"} 1",
        "sluice_events_duplicate_total{shard=\"b\"} 1",
    ] {
        assert!(m.text.contains(line), "{line}: {}", m.text);
    }
}

#[tokio::test]
async fn health_and_the_fallbacks_answer_json() {
    let h = harness().await;
    let a = get(&h.state, "/healthz", None).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let a = get(&h.state, "/nope", None).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let a = get(&h.state, "/v1/ingest", None).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}

// ---- stats ----

#[tokio::test]
async fn a_read_token_reads_its_own_environment() {
    let h = harness().await;
    let ts = now_ms() - 60_000;
    let mut buy = envelope(WEB, 1, "buy", ts);
    buy["properties"] = json!({"amount": 7.5});
    let batch = json!([
        buy,
        envelope(WEB, 2, "view", ts),
        envelope(WEB, 3, "view", ts)
    ]);
    assert_eq!(ingest(&h.state, &batch).await.status, StatusCode::OK);
    assert_eq!(h.state.flush_counters().await, 0);
    let a = get(&h.state, "/v1/stats/summary?env=web", Some("srt_web")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["env"], "web");
    assert_eq!(a.body["events"], 3);
    assert_eq!(
        a.body["by_event"][0],
        json!({"name": "view", "count": 2, "type": "track"})
    );
    assert_eq!(a.body["by_country"][0], json!({"name": "DE", "count": 3}));
    assert_eq!(a.body["users"], 1);
    assert_eq!(a.body["metrics"]["revenue"], 7.5);
}

#[tokio::test]
async fn a_read_token_never_reads_another_or_an_unknown_environment() {
    let h = harness().await;
    let other = get(&h.state, "/v1/stats/summary?env=shop", Some("srt_web")).await;
    assert_eq!(
        (other.status, other.body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let missing = get(&h.state, "/v1/stats/summary?env=nope", Some("srt_web")).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert_eq!(
        other.body, missing.body,
        "existing and missing names answer alike"
    );
}

#[tokio::test]
async fn stats_refuse_the_ingest_token_unknown_tokens_and_no_token() {
    let h = harness().await;
    for token in [Some(TOKEN), Some("srt_guess")] {
        let a = get(&h.state, "/v1/stats/summary?env=web", token).await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_token")),
            "{token:?}"
        );
    }
    let a = get(&h.state, "/v1/stats/summary?env=web", None).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_auth"))
    );
    let a = get(&h.state, "/v1/stats/summary", Some("srt_web")).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
}

#[tokio::test]
async fn read_token_lookups_are_cached() {
    let h = harness().await;
    for _ in 0..3 {
        assert_eq!(
            get(&h.state, "/v1/stats/summary?env=web", Some("srt_web"))
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            get(&h.state, "/v1/stats/summary?env=web", Some("srt_bad"))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(h.catalog.token_lookups(), 2, "one lookup per token");
}

#[tokio::test]
async fn a_token_lookup_the_catalog_cannot_answer_is_503() {
    let h = harness().await;
    h.catalog.set_failing(true);
    let a = get(&h.state, "/v1/stats/summary?env=web", Some("srt_web")).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("catalog_unavailable"))
    );
}

#[tokio::test]
async fn series_are_zero_filled_per_bucket() {
    let h = harness().await;
    let minute = (now_ms() / 60_000 - 10) * 60_000;
    let batch = json!([
        envelope(WEB, 1, "view", minute),
        envelope(WEB, 2, "view", minute + 1000),
        envelope(WEB, 3, "buy", minute + 120_000)
    ]);
    assert_eq!(ingest(&h.state, &batch).await.status, StatusCode::OK);
    h.state.flush_counters().await;
    let path = |extra: &str| {
        format!(
            "/v1/stats/series?env=web&interval=minute&from={minute}&to={}{extra}",
            minute + 180_000
        )
    };
    let a = get(&h.state, &path(""), Some("srt_web")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let values: Vec<u64> = a.body["points"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["value"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(values, vec![2, 0, 1]);
    let views = get(&h.state, &path("&event=view"), Some("srt_web")).await;
    assert_eq!(views.body["points"][0]["value"], 2);
    assert_eq!(views.body["points"][2]["value"], 0);
    let never = get(&h.state, &path("&event=never"), Some("srt_web")).await;
    assert_eq!(never.body["points"].as_array().map(Vec::len), Some(3));
    assert_eq!(never.body["points"][0]["value"], 0);
    let revenue = get(&h.state, &path("&metric=revenue"), Some("srt_web")).await;
    assert_eq!(revenue.body["points"][2]["value"], 3.0);
    assert_eq!(revenue.body["points"][1]["value"], 0.0);
}

#[tokio::test]
async fn series_refuse_unknown_intervals_metrics_and_huge_ranges() {
    let h = harness().await;
    for (query, argument) in [
        ("interval=week", "interval"),
        ("metric=nope", "metric"),
        ("interval=second&from=0&to=86400000", "range"),
        ("from=2000&to=1000", "range"),
    ] {
        let a = get(
            &h.state,
            &format!("/v1/stats/series?env=web&{query}"),
            Some("srt_web"),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.text);
        assert!(
            a.body["message"]
                .as_str()
                .is_some_and(|m| m.contains(argument)),
            "{query}: {}",
            a.text
        );
    }
}

// ---- counters through the app ----

#[tokio::test]
async fn a_failed_counter_flush_keeps_its_deltas_for_the_next() {
    let h = harness().await;
    let ts = now_ms();
    ingest(
        &h.state,
        &json!([envelope(WEB, 1, "x", ts), envelope(WEB, 2, "x", ts)]),
    )
    .await;
    h.store.fail_counters(1, true);
    assert_eq!(h.state.flush_counters().await, 1);
    assert!(h.store.counts(1).is_empty());
    let m = get(&h.state, "/metrics", None).await;
    assert!(
        m.text
            .contains("sluice_counter_flush_failures_total{shard=\"a\"} 1"),
        "{}",
        m.text
    );
    h.store.fail_counters(1, false);
    assert_eq!(h.state.flush_counters().await, 0);
    let counts = h.store.counts(1);
    assert_eq!(
        counts.minute.values().sum::<u64>(),
        2,
        "counted once, not lost"
    );
    assert_eq!(counts.second.values().sum::<u64>(), 2);
    assert_eq!(h.state.counters.pending_len(), 0);
}

#[tokio::test]
async fn only_inserted_rows_are_counted() {
    let h = harness().await;
    let ts = now_ms();
    let batch = json!([envelope(WEB, 1, "x", ts), envelope(WEB, 1, "x", ts)]);
    ingest(&h.state, &batch).await;
    ingest(&h.state, &batch).await;
    h.state.flush_counters().await;
    assert_eq!(h.store.counts(1).minute.values().sum::<u64>(), 1);
}

#[tokio::test]
async fn a_migrating_environment_is_counted_on_both_shards() {
    let h = harness().await;
    ingest(&h.state, &json!([envelope(MOVING, 1, "x", now_ms())])).await;
    h.state.flush_counters().await;
    assert_eq!(h.store.counts(1).minute.values().sum::<u64>(), 1);
    assert_eq!(h.store.counts(2).minute.values().sum::<u64>(), 1);
}

#[tokio::test]
async fn pruning_drops_counts_past_their_retention() {
    let h = harness().await;
    let old = now_ms() - 200 * 86_400_000;
    ingest(
        &h.state,
        &json!([envelope(WEB, 1, "x", old), envelope(WEB, 2, "x", now_ms())]),
    )
    .await;
    h.state.flush_counters().await;
    assert_eq!(h.store.counts(1).minute.len(), 2);
    h.state.prune_counters().await;
    let counts = h.store.counts(1);
    assert_eq!(counts.minute.len(), 1, "the 200-day-old minute is gone");
    assert_eq!(counts.second.len(), 1, "the live second stays");
}

// ---- direct ingest: the public API at the backend ----

const KEY: &str = "sk_direct_0123456789abcdef";

async fn direct_harness(config: Config) -> Harness {
    let h = harness_with(config).await;
    h.catalog.add_api_key(KEY, WEB);
    h
}

/// A public API request from `peer` (as the socket would report it).
async fn public(
    state: &AppState,
    method: &str,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
    peer: Option<&str>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut request = request
        .body(match body {
            Value::Null => Body::empty(),
            body => Body::from(body.to_string()),
        })
        .expect("request");
    if let Some(peer) = peer {
        let addr: std::net::SocketAddr = peer.parse().expect("address");
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
    }
    call(state, request).await
}

async fn events(state: &AppState, body: Value) -> Answer {
    let auth = format!("Bearer {KEY}");
    public(
        state,
        "POST",
        "/v1/events",
        body,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn direct_events_are_stored_before_the_answer() {
    let h = direct_harness(config()).await;
    let a = events(
        &h.state,
        json!([{"event": "signup"}, {"event": "buy", "properties": {"amount": 2}}]),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body, json!({"accepted": 2}));
    assert_eq!(h.store.count(1, WEB), 2, "stored when the answer comes");
    let stored = h.store.envelopes(1, WEB);
    assert!(stored.iter().all(|e| e.env_id == WEB));

    let a = events(&h.state, json!({"event": ""})).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_events"))
    );
    let a = public(
        &h.state,
        "POST",
        "/v1/events",
        json!({"event": "x"}),
        &[("content-type", "application/json")],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["error"], "missing_api_key");
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    let a = public(
        &h.state,
        "POST",
        "/v1/events?key=sk_unknown",
        json!({"event": "x"}),
        &[("content-type", "text/plain")],
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );
    let a = public(&h.state, "GET", "/v1/events", Value::Null, &[], None).await;
    assert_eq!(
        (
            a.status,
            a.headers.get("allow").map(|v| v.to_str().unwrap())
        ),
        (StatusCode::METHOD_NOT_ALLOWED, Some("POST, OPTIONS"))
    );
    let a = get(&h.state, "/v1/nothing", None).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert_eq!(h.store.count(1, WEB), 2);
}

#[tokio::test]
async fn segment_messages_land_and_settings_point_at_the_public_url() {
    let mut config = config();
    config.public_url = "https://events.example.com".into();
    let h = direct_harness(config).await;
    let auth = format!("Bearer {KEY}");
    let a = public(
        &h.state,
        "POST",
        "/v1/batch",
        json!({"batch": [
            {"type": "track", "event": "Bought", "userId": "u1", "messageId": "m-1"},
            {"type": "identify", "userId": "u1", "messageId": "m-2"},
            {"type": "track", "userId": "u1", "messageId": "m-3"}
        ]}),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        (a.body["accepted"].as_u64(), a.body["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(h.store.count(1, WEB), 2);

    let a = get(&h.state, &format!("/v1/projects/{KEY}/settings"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let io = &a.body["integrations"]["Segment.io"];
    assert_eq!(
        (io["apiHost"].as_str(), io["protocol"].as_str()),
        (Some("events.example.com/v1"), Some("https"))
    );
    let a = get(&h.state, "/v1/projects/sk_unknown/settings", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn concurrent_requests_share_writes() {
    let h = direct_harness(config()).await;
    let answers = futures::future::join_all(
        (0..50).map(|i| events(&h.state, json!({"event": "tick", "properties": {"i": i}}))),
    )
    .await;
    assert!(answers.iter().all(|a| a.status == StatusCode::ACCEPTED));
    assert_eq!(h.store.count(1, WEB), 50);
    let writes = h.store.writes().len();
    assert!(writes <= 2, "50 one-event requests took {writes} writes");
    assert_eq!(h.state.direct.commit.in_flight(), 0);
}

#[tokio::test]
async fn past_the_in_flight_bound_a_request_gets_503_and_nothing_is_taken() {
    let mut config = config();
    config.max_events_in_flight = 10;
    let h = direct_harness(config).await;
    let held: Vec<protocol::Envelope> = (0..10)
        .map(|n| serde_json::from_value(envelope(WEB, n, "held", now_ms())).expect("envelope"))
        .collect();
    let held = h.state.direct.commit.prepare(WEB, held).expect("room");
    let a = events(&h.state, json!({"event": "x"})).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded"))
    );
    assert_eq!(a.headers["retry-after"], "1");
    drop(held);
    assert_eq!(
        events(&h.state, json!({"event": "x"})).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(h.store.count(1, WEB), 1);
}

#[tokio::test]
async fn a_failed_write_is_a_503_and_a_retry_lands_once() {
    let h = direct_harness(config()).await;
    h.store.fail_writes(1, true);
    let body = json!({"event": "x", "id": uuid(77)});
    let a = events(&h.state, body.clone()).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
    );
    assert_eq!(a.headers["retry-after"], "1");
    h.store.fail_writes(1, false);
    for _ in 0..2 {
        assert_eq!(
            events(&h.state, body.clone()).await.status,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(h.store.ids(1, WEB), vec![uuid(77)]);
}

#[tokio::test]
async fn keys_are_rate_limited_and_a_revoked_key_is_refused_within_the_cache_ttl() {
    let mut config = config();
    config.key_rate_limit = 2;
    config.key_rate_limit_period_secs = 60;
    config.key_cache_ttl_ms = 100;
    let h = direct_harness(config).await;
    for _ in 0..2 {
        assert_eq!(
            events(&h.state, json!({"event": "x"})).await.status,
            StatusCode::ACCEPTED
        );
    }
    let a = events(&h.state, json!({"event": "x"})).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    let retry: u32 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    let h = direct_harness(Config {
        key_cache_ttl_ms: 100,
        ..self::config()
    })
    .await;
    assert_eq!(
        events(&h.state, json!({"event": "x"})).await.status,
        StatusCode::ACCEPTED
    );
    h.catalog.revoke_api_key(KEY);
    let revoked_at = Instant::now();
    loop {
        let a = events(&h.state, json!({"event": "x"})).await;
        if a.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "still accepted after the TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        revoked_at.elapsed() >= Duration::from_millis(80),
        "the cache answered meanwhile"
    );
}

#[tokio::test]
async fn the_client_address_and_country_come_from_the_socket_or_a_trusted_proxy() {
    let mut config = config();
    config.trusted_proxies = "10.0.0.0/8".into();
    config.country_header = "CF-IPCountry".into();
    config.allowed_origins = "https://app.example".into();
    let h = direct_harness(config).await;
    let auth = format!("Bearer {KEY}");
    let track = |id: &str| json!({"type": "track", "event": "e", "userId": "u", "messageId": id});
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
        ("cf-ipcountry", "NL"),
        ("origin", "https://app.example"),
    ];
    let a = public(
        &h.state,
        "POST",
        "/v1/track",
        track("via-proxy"),
        &headers,
        Some("10.1.1.1:5000"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let a = public(
        &h.state,
        "POST",
        "/v1/track",
        track("direct"),
        &headers,
        Some("203.0.113.9:5000"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let context = |message_id: &str| {
        h.store
            .envelopes(1, WEB)
            .into_iter()
            .find(|e| e.id == message_id)
            .map(|e| serde_json::to_value(&e).unwrap()["context"].clone())
            .expect("stored")
    };
    // The environment's default policy truncates the address.
    assert_eq!(context("via-proxy")["ip"], "198.51.100.0");
    assert_eq!(context("via-proxy")["country"], "NL");
    assert_eq!(context("via-proxy")["geo"], json!({"country": "NL"}));
    assert_eq!(context("direct")["ip"], "203.0.113.0");
    assert!(
        context("direct").get("country").is_none(),
        "an untrusted peer's header is ignored"
    );
    // A policy change reaches the door with the next catalog snapshot.
    let keep = intake::enrich::Policy {
        ip: intake::enrich::IpPolicy::Keep,
        geo: intake::enrich::GeoPolicy::None,
        ..Default::default()
    };
    h.catalog.set_policy(WEB, keep);
    h.state.catalog.refresh().await.unwrap();
    let a = public(
        &h.state,
        "POST",
        "/v1/track",
        track("kept"),
        &headers,
        Some("10.1.1.1:5000"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(context("kept")["ip"], "198.51.100.7");
    assert!(context("kept").get("country").is_none() && context("kept").get("geo").is_none());

    let a = public(
        &h.state,
        "OPTIONS",
        "/v1/events",
        Value::Null,
        &[("origin", "https://app.example")],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.headers.contains_key("access-control-allow-methods"));
    let a = public(
        &h.state,
        "OPTIONS",
        "/v1/events",
        Value::Null,
        &[("origin", "https://evil.example")],
        None,
    )
    .await;
    assert!(!a.headers.contains_key("access-control-allow-origin"));
}

// ---- the delivery ledger ----

async fn ledger(state: &AppState, query: &str) -> Value {
    let a = get(
        state,
        &format!("/v1/stats/delivery?env=web&{query}"),
        Some("srt_web"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.body
}

async fn reports(state: &AppState, body: &Value) -> Answer {
    let auth = format!("Bearer {TOKEN}");
    let mut request = Request::post("/v1/ingest/reports")
        .header("authorization", auth)
        .header("content-type", "application/json");
    request = request.header("x-test", "1");
    call(
        state,
        request.body(Body::from(body.to_string())).expect("request"),
    )
    .await
}

fn range_around(ms: i64) -> String {
    format!("from={}&to={}", ms - 120_000, ms + 120_000)
}

#[tokio::test]
async fn the_direct_door_ledger_counts_acceptances_resends_and_refusals() {
    let h = direct_harness(config()).await;
    let now = now_ms();
    let a = events(
        &h.state,
        json!([{"event": "a", "id": "o-1"}, {"event": "b", "id": "o-2"}, {"event": "c", "id": "o-1"}]),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    // The client sends o-2 again in a new request (a later one: receive
    // times are in ms, and a re-send within the same ms would read as a
    // redelivery).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let a = events(&h.state, json!({"event": "b", "id": "o-2"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    for _ in 0..2 {
        let a = events(&h.state, json!([{"event": "ok"}, {"event": ""}])).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let auth = format!("Bearer {KEY}");
    let a = public(
        &h.state,
        "POST",
        "/v1/events",
        Value::String("not events".into()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    // Before the flush the refusals are not written; after it they are.
    let body = ledger(&h.state, &range_around(now)).await;
    assert_eq!(body["rejected"], json!({}));
    h.state.flush_tallies().await;
    let body = ledger(&h.state, &range_around(now)).await;
    assert_eq!(body["accepted"], 4, "{body}");
    assert_eq!(body["stored"], 2);
    assert_eq!(
        body["resent"], 2,
        "o-1 twice in one request, o-2 in a new one"
    );
    assert_eq!(
        body["rejected"],
        json!({"invalid_events": 4, "invalid_body": 1})
    );
    assert_eq!(body["received"], 9);
    assert_eq!(
        (body["in_flight"].as_i64(), body["balanced"].as_bool()),
        (Some(0), Some(true))
    );
    // A write to a failing shard answers 503 and counts a refusal, not an acceptance.
    h.store.fail_writes(1, true);
    let a = events(&h.state, json!({"event": "x"})).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    h.store.fail_writes(1, false);
    h.state.flush_tallies().await;
    let body = ledger(&h.state, &format!("{}&interval=minute", range_around(now))).await;
    assert_eq!(body["rejected"]["store_unavailable"], 1, "{body}");
    assert_eq!(body["accepted"], 4);
    let series = body["series"].as_array().expect("series");
    let total: u64 = series.iter().map(|p| p["received"].as_u64().unwrap()).sum();
    assert_eq!(total, 10);
    // Unknown keys are not an environment's: counted in /metrics.
    let a = public(
        &h.state,
        "POST",
        "/v1/events?key=sk_nobody",
        json!({"event": "x"}),
        &[("content-type", "application/json")],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let metrics = get(&h.state, "/metrics", None).await.text;
    assert!(
        metrics.contains("sluice_direct_unattributed_total{code=\"invalid_api_key\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reports_and_what_they_hold_are_objects_never_the_sequence_form() {
    let h = harness().await;
    let now = now_ms();
    let id = "00112233445566778899aabbccddeeff";
    for body in [
        json!([]),
        json!([[], []]),
        json!({"reports": [[id, WEB, now]]}),
        json!({"reports": [{"id": id, "env_id": WEB, "received_at": now,
                            "samples": [[now, "invalid_json", "bad", "{"]]}]}),
        json!({"dead_letters": [[WEB, "e-1", now]]}),
        json!({"dead_letters": [{"env_id": WEB, "id": "e-1", "received_at": now,
                                 "acceptance": [id, 1]}]}),
    ] {
        let a = reports(&h.state, &body).await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_batch")),
            "{body}: {}",
            a.text
        );
    }
    let a = reports(
        &h.state,
        &json!({"dead_letters": [{"env_id": WEB, "id": "e-1", "received_at": now,
                                  "acceptance": {"id": id, "n": 1}}]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn reports_count_once_and_dead_letters_net_out_when_replayed() {
    let h = harness().await;
    let now = now_ms();
    let acceptance = "00112233445566778899aabbccddeeff";
    let report = json!({"reports": [{
        "id": acceptance, "env_id": WEB, "received_at": now,
        "rejected": {"invalid_json": 2}, "accepted": 3, "lost": 1,
        "samples": [{"received_at": now, "code": "invalid_json", "message": "bad", "body": "{"}]
    }], "dead_letters": [
        {"env_id": WEB, "id": uuid(1), "received_at": now, "acceptance": {"id": acceptance, "n": 3}},
        {"env_id": WEB, "id": uuid(2), "received_at": now, "acceptance": {"id": acceptance, "n": 3}},
        {"env_id": MOVING, "id": uuid(3), "received_at": now}
    ]});
    for _ in 0..2 {
        let a = reports(&h.state, &report).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body, json!({"reports": 1, "dead_letters": 3}));
    }
    // The metric the dead-letter alert watches: each letter once, however
    // often reported, and once for a migrating environment's two shards.
    let m = get(&h.state, "/metrics", None).await;
    for line in [
        "sluice_ledger_dead_letters_total{env=\"web\"} 2",
        "sluice_ledger_dead_letters_total{env=\"moving\"} 1",
    ] {
        assert!(m.text.contains(line), "{line}: {}", m.text);
    }
    let body = ledger(&h.state, &range_around(now)).await;
    assert_eq!(
        body["accepted"], 3,
        "the redelivered report counts once: {body}"
    );
    assert_eq!(
        (body["lost"].as_u64(), body["dead_lettered"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(body["in_flight"], 0);
    // One dead letter is replayed: stored with its receive time.
    let mut replay = envelope(WEB, 1, "e", now);
    replay["received_at"] = json!(now);
    replay["acceptance"] = json!({"id": acceptance, "n": 3});
    assert_eq!(
        ingest(&h.state, &json!([replay])).await.status,
        StatusCode::OK
    );
    let body = ledger(&h.state, &range_around(now)).await;
    assert_eq!(
        (body["stored"].as_u64(), body["replayed"].as_u64()),
        (Some(1), Some(1)),
        "{body}"
    );
    assert_eq!(
        (body["in_flight"].as_i64(), body["balanced"].as_bool()),
        (Some(0), Some(true))
    );
    // A report no retry can fix is a 4xx.
    let bad = json!({"reports": [{"id": "", "env_id": WEB, "received_at": now}]});
    assert_eq!(
        reports(&h.state, &bad).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let bad = json!({"reports": [{"id": "x", "env_id": WEB, "received_at": now, "rejected": {"Bad Code": 1}}]});
    assert_eq!(
        reports(&h.state, &bad).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        reports(&h.state, &json!([1])).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn a_redelivered_batch_is_redelivered_not_accepted_again() {
    let h = harness().await;
    let now = now_ms();
    let acceptance = json!({"id": "ffeeddccbbaa99887766554433221100", "n": 2});
    let batch: Vec<Value> = (1..=2)
        .map(|n| {
            let mut e = envelope(WEB, n, "e", now);
            e["received_at"] = json!(now);
            e["acceptance"] = acceptance.clone();
            e
        })
        .collect();
    for _ in 0..3 {
        assert_eq!(ingest(&h.state, &json!(batch)).await.status, StatusCode::OK);
    }
    let body = ledger(&h.state, &range_around(now)).await;
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["stored"].as_u64(),
            body["redelivered"].as_u64()
        ),
        (Some(2), Some(2), Some(4)),
        "{body}"
    );
    // Compaction sums the three writes' rows; the ledger reads the same.
    assert_eq!(
        h.state.compact_ledger(Duration::ZERO).await,
        1,
        "two redelivered rows became one"
    );
    let again = ledger(&h.state, &range_around(now)).await;
    assert_eq!(
        (again["accepted"].clone(), again["redelivered"].clone()),
        (json!(2), json!(4))
    );
    // Only one envelope of a two-event acceptance has arrived: one in flight,
    // which a settled minute would show as a gap.
    let mut half = envelope(WEB, 3, "e", now - 600_000);
    half["received_at"] = json!(now - 600_000);
    half["acceptance"] = json!({"id": "0000000000000000000000000000000a", "n": 2});
    assert_eq!(
        ingest(&h.state, &json!([half])).await.status,
        StatusCode::OK
    );
    let body = ledger(
        &h.state,
        &format!("from={}&to={}", now - 700_000, now + 60_000),
    )
    .await;
    assert_eq!(body["in_flight"], 1, "{body}");
    assert_eq!(
        (body["balanced"].as_bool(), body["gap"].as_u64()),
        (Some(false), Some(1))
    );
    let a = get(
        &h.state,
        "/v1/stats/delivery?env=web&interval=hour",
        Some("srt_web"),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = get(&h.state, "/v1/stats/delivery?env=web", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

// ---- the user agent, parsed at the write ----

#[tokio::test]
async fn the_write_parses_user_agents_flags_and_drops_bots_and_counts_them_once() {
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    let h = harness().await;
    let now = now_ms();
    let batch = |env_id: u32, first: u64| -> Value {
        let acceptance = json!({"id": format!("{first:032x}"), "n": 3});
        let list: Vec<Value> = [
            (first, IPHONE),
            (first + 1, GOOGLEBOT),
            (first + 2, GOOGLEBOT),
        ]
        .iter()
        .map(|&(n, ua)| {
            let mut e = envelope(env_id, n, "view", now);
            e["received_at"] = json!(now);
            e["context"] = json!({"user_agent": ua, "bot": false});
            e["acceptance"] = acceptance.clone();
            e
        })
        .collect();
        json!(list)
    };

    // bots = flag (the default): all stored, the parser's verdict added.
    let a = ingest(&h.state, &batch(WEB, 1)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["environments"][WEB.to_string()]["dropped"], 0);
    let stored = h.store.envelopes(1, WEB);
    assert_eq!(stored.len(), 3);
    let iphone = stored.iter().find(|e| e.id == uuid(1)).expect("stored");
    assert_eq!(
        iphone.context["ua"],
        json!({"browser": "Mobile Safari", "browser_version": "17.1", "os": "iOS",
               "os_version": "17.1", "device": "mobile"})
    );
    assert_eq!(iphone.context["bot"], false);
    assert_eq!(
        iphone.context["user_agent"], IPHONE,
        "the raw user agent stays"
    );
    let crawler = stored.iter().find(|e| e.id == uuid(2)).expect("stored");
    assert_eq!(
        (&crawler.context["bot"], &crawler.context["ua"]["device"]),
        (&json!(true), &json!("bot"))
    );

    // bots = drop on a migrating environment: the bots are left out on both
    // shards, and counted as dropped once however often the batch arrives.
    h.catalog.set_policy(
        MOVING,
        intake::enrich::Policy {
            bots: intake::enrich::BotPolicy::Drop,
            ..Default::default()
        },
    );
    h.state.catalog.refresh().await.unwrap();
    for _ in 0..3 {
        let a = ingest(&h.state, &batch(MOVING, 11)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body["environments"][MOVING.to_string()]["dropped"], 2);
    }
    for shard in [1, 2] {
        assert_eq!(h.store.ids(shard, MOVING), vec![uuid(11)], "shard {shard}");
    }
    h.catalog.add_read_token("srt_moving", MOVING);
    let a = get(
        &h.state,
        &format!("/v1/stats/delivery?env=moving&{}", range_around(now)),
        Some("srt_moving"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let body = &a.body;
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["stored"].as_u64(),
            body["dropped"]["bot"].as_u64(),
            body["redelivered"].as_u64(),
            body["in_flight"].as_u64()
        ),
        (Some(3), Some(1), Some(2), Some(2), Some(0)),
        "{body}"
    );
}

// ---- export ----

/// An export store that fails every page read from the `fail_from`th on.
struct FailingExport {
    inner: Arc<MemoryStore>,
    reads: std::sync::atomic::AtomicUsize,
    fail_from: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl crate::store::ExportStore for FailingExport {
    async fn event_time(
        &self,
        shard: &crate::model::Shard,
        env_id: u32,
        key: [u8; 16],
    ) -> crate::Result<Option<i64>> {
        self.inner.event_time(shard, env_id, key).await
    }

    async fn export_page(
        &self,
        shard: &crate::model::Shard,
        env_id: u32,
        after: crate::store::ExportPosition,
        to: i64,
        limit: u32,
    ) -> crate::Result<crate::store::ExportPage> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.reads.fetch_add(1, SeqCst) >= self.fail_from.load(SeqCst) {
            return Err(crate::Error::ShardUnavailable {
                shard: shard.name.clone(),
                message: "connection refused".into(),
            });
        }
        self.inner
            .export_page(shard, env_id, after, to, limit)
            .await
    }
}

/// The body's data until it ends or fails: (bytes, whether it ended cleanly).
async fn body_until_error(response: axum::response::Response) -> (Vec<u8>, bool) {
    use futures::StreamExt as _;
    let mut data = response.into_body().into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(_) => return (bytes, false),
        }
    }
    (bytes, true)
}

fn line_ids(ndjson: &[u8]) -> Vec<String> {
    ndjson
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let event: protocol::Envelope = serde_json::from_slice(line).expect("an envelope");
            event.id
        })
        .collect()
}

#[tokio::test]
async fn export_refuses_bad_ranges_cursors_and_tokens_as_the_stats_api_does() {
    let h = harness().await;
    assert_eq!(
        ingest(&h.state, &json!([envelope(WEB, 1, "x", 1000)]))
            .await
            .status,
        StatusCode::OK
    );
    let backwards = get(
        &h.state,
        "/v1/export?env=web&from=5000&to=5000",
        Some("srt_web"),
    )
    .await;
    assert_eq!(
        (backwards.status, backwards.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let unreadable = get(&h.state, "/v1/export?env=web&from=soon", Some("srt_web")).await;
    assert_eq!(unreadable.status, StatusCode::BAD_REQUEST);
    let cursor = get(
        &h.state,
        "/v1/export?env=web&from=0&to=9000&after=never-stored",
        Some("srt_web"),
    )
    .await;
    assert_eq!(
        (cursor.status, cursor.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{}",
        cursor.text
    );
    assert!(cursor.text.contains("after"), "{}", cursor.text);
    let other = get(
        &h.state,
        "/v1/export?env=shop&from=0&to=9000",
        Some("srt_web"),
    )
    .await;
    let stats = get(&h.state, "/v1/stats/summary?env=nope", Some("srt_web")).await;
    assert_eq!(
        (other.status, &other.body),
        (StatusCode::FORBIDDEN, &stats.body)
    );
    let anonymous = get(&h.state, "/v1/export?env=web&from=0&to=9000", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let fine = get(
        &h.state,
        "/v1/export?env=web&from=0&to=9000",
        Some("srt_web"),
    )
    .await;
    assert_eq!(fine.status, StatusCode::OK);
    assert_eq!(fine.headers["content-type"], "application/x-ndjson");
    assert_eq!(line_ids(fine.text.as_bytes()), vec![uuid(1)]);
}

#[tokio::test]
async fn an_export_that_fails_mid_stream_ends_without_its_end_and_resumes_after_its_last_line() {
    let catalog = memory_catalog();
    let opened = Catalog::open(catalog, config().catalog_refresh())
        .await
        .expect("memory catalog");
    let store = Arc::new(MemoryStore::new());
    let failing = Arc::new(FailingExport {
        inner: store.clone(),
        reads: 0.into(),
        fail_from: 1.into(),
    });
    let ports = Ports {
        export: failing.clone(),
        ..Ports::all(store.clone())
    };
    let state = AppState::from_parts(config(), opened, ports);
    let total = crate::export::PAGE_ROWS as u64 + 500;
    // Ten events per millisecond: pages end inside runs of equal times.
    let batch: Vec<Value> = (0..total)
        .map(|n| envelope(WEB, n, "x", 1000 + (n as i64) / 10))
        .collect();
    assert_eq!(ingest(&state, &json!(batch)).await.status, StatusCode::OK);

    for gzipped in [false, true] {
        failing.reads.store(0, std::sync::atomic::Ordering::SeqCst);
        failing
            .fail_from
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let mut request = Request::get("/v1/export?env=web&from=0&to=100000")
            .header("authorization", "Bearer srt_web");
        if gzipped {
            request = request.header("accept-encoding", "gzip");
        }
        let response = app(state.clone())
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "the first page was read");
        let (bytes, clean) = body_until_error(response).await;
        assert!(!clean, "the body fails instead of ending");
        let first = if gzipped {
            // A gzip stream without its trailer: what was sent inflates,
            // and the decoder says it is cut short.
            let mut text = Vec::new();
            let read = std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&bytes[..]),
                &mut text,
            );
            assert!(read.is_err(), "a truncated gzip");
            text
        } else {
            bytes
        };
        assert!(first.ends_with(b"\n"), "whole lines only");
        let first = line_ids(&first);
        assert_eq!(first.len(), crate::export::PAGE_ROWS as usize);

        failing
            .fail_from
            .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        let last = first.last().expect("a line");
        let rest = get(
            &state,
            &format!("/v1/export?env=web&from=0&to=100000&after={last}"),
            Some("srt_web"),
        )
        .await;
        assert_eq!(rest.status, StatusCode::OK, "{}", rest.text);
        let all: Vec<String> = first
            .into_iter()
            .chain(line_ids(rest.text.as_bytes()))
            .collect();
        let expected: Vec<String> = (0..total).map(uuid).collect();
        let mut sorted_all = all.clone();
        sorted_all.sort();
        let mut sorted_expected = expected.clone();
        sorted_expected.sort();
        assert_eq!(sorted_all, sorted_expected, "every event once");
    }
}

// ---- suppression ----

#[tokio::test]
async fn a_suppressed_persons_events_are_answered_dropped_and_counted_at_the_direct_door() {
    use crate::erasure::{person_hash, IdKind};
    let h = direct_harness(config()).await;
    h.catalog
        .suppress(WEB, person_hash(WEB, IdKind::AnonymousId, "anon-gone"));
    h.state.catalog.refresh().await.unwrap();
    let now = now_ms();
    let a = events(
        &h.state,
        json!([{"event": "a", "id": "s-1", "anonymous_id": "anon-gone"},
               {"event": "b", "id": "s-2", "anonymous_id": "anon-kept"},
               {"event": "c", "id": "s-3", "user_id": "anon-gone"}]),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["accepted"], 3, "answered as accepted");
    let mut stored: Vec<String> = h
        .store
        .envelopes(1, WEB)
        .into_iter()
        .map(|e| e.id)
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        ["s-2", "s-3"],
        "a user id equal to the anonymous id is another id"
    );
    let body = ledger(&h.state, &range_around(now)).await;
    assert_eq!(
        (
            &body["accepted"],
            &body["stored"],
            &body["dropped"],
            &body["in_flight"]
        ),
        (&json!(3), &json!(2), &json!({"suppressed": 1}), &json!(0)),
        "{body}"
    );
}

#[tokio::test]
async fn ended_suppressions_are_pruned_in_chunks_and_active_ones_stay() {
    use crate::erasure::{person_hash, IdKind};
    let h = harness().await;
    let now = chrono::Utc::now().timestamp();
    let ended = crate::SUPPRESSION_PRUNE_ROWS + 5;
    for n in 0..ended {
        let person = person_hash(WEB, IdKind::UserId, &format!("ended-{n}"));
        h.catalog
            .suppress_until(WEB, person, now - 1 - i64::from(n));
    }
    let active = person_hash(WEB, IdKind::UserId, "active");
    h.catalog.suppress_until(WEB, active, now + 3600);
    h.state.catalog.refresh().await.unwrap();
    assert_eq!(
        h.state.catalog.snapshot().suppressed[&WEB].len(),
        1,
        "an ended suppression is not read"
    );

    assert_eq!(h.state.prune_suppressions().await, u64::from(ended));
    assert_eq!(h.catalog.suppressions(), 1);
    assert_eq!(h.state.metrics.suppressions_pruned.get(), u64::from(ended));
    h.state.catalog.refresh().await.unwrap();
    assert!(h.state.catalog.snapshot().suppressed[&WEB].contains(&active));
    assert_eq!(
        h.state.prune_suppressions().await,
        0,
        "nothing left to prune"
    );

    h.catalog.set_failing(true);
    h.catalog
        .suppress_until(WEB, person_hash(WEB, IdKind::UserId, "late"), now - 1);
    assert_eq!(h.state.prune_suppressions().await, 0, "a failure is logged");
    h.catalog.set_failing(false);
    assert_eq!(
        h.state.prune_suppressions().await,
        1,
        "the next pass goes on"
    );
}

/// The whole answer of `/v1/stats/delivery`, every field (the
/// OpenAPI description's `Delivery` is this type).
#[tokio::test]
async fn the_delivery_answer_whole() {
    let h = harness().await;
    let minute = 1_700_000_040_000i64;
    let acceptance = "00112233445566778899aabbccddeeff";
    let report = json!({"reports": [{
        "id": acceptance, "env_id": WEB, "received_at": minute + 1_000,
        "rejected": {"invalid_json": 2}, "accepted": 3, "lost": 1, "dropped": {"bot": 1}
    }]});
    assert_eq!(reports(&h.state, &report).await.status, StatusCode::OK);
    let mut stored = envelope(WEB, 1, "e", minute);
    stored["received_at"] = json!(minute + 2_000);
    stored["acceptance"] = json!({"id": acceptance, "n": 3});
    let mut own = envelope(WEB, 2, "e", minute);
    own["received_at"] = json!(minute + 61_000);
    assert_eq!(
        ingest(&h.state, &json!([stored, own])).await.status,
        StatusCode::OK
    );
    let range = format!("from={minute}&to={}", minute + 120_000);
    let mut whole = ledger(&h.state, &format!("{range}&interval=minute")).await;
    let settled_before = whole["settled_before"].take();
    assert!(settled_before.as_i64().unwrap_or(0) > now_ms() - 130_000);
    let ledger_of = |received, accepted, rejected, stored, dropped, lost| {
        json!({"received": received, "accepted": accepted, "rejected": rejected,
               "stored": stored, "resent": 0, "redelivered": 0, "dropped": dropped,
               "dead_lettered": 0, "replayed": 0, "lost": lost, "in_flight": 0})
    };
    let with = |mut ledger: Value, more: Value| {
        for (k, v) in more.as_object().expect("object") {
            ledger[k] = v.clone();
        }
        ledger
    };
    let first = with(
        ledger_of(5, 3, json!({"invalid_json": 2}), 1, json!({"bot": 1}), 1),
        json!({"t": minute, "settled": true}),
    );
    let second = with(
        ledger_of(1, 1, json!({}), 1, json!({}), 0),
        json!({"t": minute + 60_000, "settled": true}),
    );
    let total = with(
        ledger_of(6, 4, json!({"invalid_json": 2}), 2, json!({"bot": 1}), 1),
        json!({"env": "web", "from": minute, "to": minute + 120_000,
               "settled_before": null, "balanced": true, "gap": 0}),
    );
    assert_eq!(
        whole,
        with(total.clone(), json!({"series": [first, second]}))
    );
    let mut without = ledger(&h.state, &range).await;
    without["settled_before"].take();
    assert_eq!(without, total, "no series without interval=minute");
}
