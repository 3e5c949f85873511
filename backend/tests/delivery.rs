//! The delivery ledger against a real MariaDB: writes count their own rows
//! (stored, resent, redelivered, accepted) in the insert's transaction,
//! reports and dead letters count once, and the API adds them up.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};
use sqlx::MySqlPool;

async fn ledger(addr: SocketAddr, token: &str, from: i64, to: i64) -> Value {
    let response = reqwest::Client::new()
        .get(format!(
            "http://{addr}/v1/stats/delivery?env=web&from={from}&to={to}&interval=minute"
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// A ledger answer without the fields that move with the clock.
fn l_without_time(l: &Value) -> Value {
    let mut l = l.clone();
    if let Some(map) = l.as_object_mut() {
        map.remove("settled_before");
    }
    l
}

async fn report(addr: SocketAddr, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/ingest/reports"))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn accepted(env: u32, id: &str, received_at: i64, acceptance: &str, n: u32) -> Value {
    json!({"id": id, "env_id": env, "name": "e", "timestamp": received_at,
           "received_at": received_at, "acceptance": {"id": acceptance, "n": n}})
}

const A: &str = "0123456789abcdef0123456789abcdef";
const B: &str = "fedcba9876543210fedcba9876543210";

#[tokio::test]
async fn every_outcome_is_counted_once_and_the_ledger_adds_up() {
    let (t, env, token) = Env::with_reader("web").await;
    let (server, tx) = t.start(t.config()).await;
    let addr = server.addr;
    // A minute well in the past, so it is settled.
    let at = (chrono::Utc::now().timestamp_millis() - 600_000) / 60_000 * 60_000 + 1_000;

    // Acceptance A: 5 events, the fourth id twice (the client repeated it).
    let a: Vec<Value> = ["a1", "a2", "a3", "a4", "a4"]
        .iter()
        .map(|id| accepted(env, id, at, A, 5))
        .collect();
    // The first three arrive; then all five (a redelivery of the three,
    // the partial-write path for the rest); then all five again.
    assert_eq!(ingest(addr, &json!(a[..3])).await.0, 200);
    assert_eq!(ingest(addr, &json!(a)).await.0, 200);
    assert_eq!(ingest(addr, &json!(a)).await.0, 200);
    // A client re-send of a2 in a later request (acceptance B, 1 event).
    assert_eq!(
        ingest(addr, &json!([accepted(env, "a2", at + 5_000, B, 1)]))
            .await
            .0,
        200
    );

    // The door's report, twice (a redelivery), and two dead letters of an
    // acceptance none of whose envelopes arrived, one replayed later.
    let c = "00000000000000000000000000000c0c";
    let body = json!({
        "reports": [{"id": "11111111111111111111111111111111", "env_id": env, "received_at": at,
                     "rejected": {"invalid_json": 1, "invalid_events": 7},
                     "samples": [{"received_at": at, "code": "invalid_json", "message": "body is not valid JSON", "body": "{oops"}]}],
        "dead_letters": [
            {"env_id": env, "id": "d1", "received_at": at, "acceptance": {"id": c, "n": 2}},
            {"env_id": env, "id": "d2", "received_at": at, "acceptance": {"id": c, "n": 2}}
        ]
    });
    for _ in 0..2 {
        assert_eq!(
            report(addr, &body).await,
            (200, json!({"reports": 1, "dead_letters": 2}))
        );
    }
    assert_eq!(
        ingest(addr, &json!([accepted(env, "d1", at, c, 2)]))
            .await
            .0,
        200
    );
    // A one-event request stored whole, then dead-lettered anyway (its
    // answers were lost until the queue gave up): its acceptance was
    // counted by the write, and the dead letter nets out as replayed.
    let d = "00000000000000000000000000000d0d";
    assert_eq!(
        ingest(addr, &json!([accepted(env, "e1", at, d, 1)]))
            .await
            .0,
        200
    );
    let late = json!({"dead_letters": [{"env_id": env, "id": "e1", "received_at": at, "acceptance": {"id": d, "n": 1}}]});
    assert_eq!(report(addr, &late).await.0, 200);
    // A one-event request dead-lettered before any write stored it: accepted
    // by its dead letter; then replayed whole: still accepted once.
    let f = "00000000000000000000000000000f0f";
    let dead = json!({"dead_letters": [{"env_id": env, "id": "f1", "received_at": at, "acceptance": {"id": f, "n": 1}}]});
    assert_eq!(report(addr, &dead).await.0, 200);
    // The metric the dead-letter alert watches: d1, d2 (reported twice),
    // e1 and f1, each once.
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("sluice_ledger_dead_letters_total{env=\"web\"} 4"),
        "{metrics}"
    );
    let before_replay = ledger(addr, &token, at - 60_000, at + 120_000).await;
    assert_eq!(before_replay["in_flight"], 0, "{before_replay}");
    assert_eq!(
        ingest(addr, &json!([accepted(env, "f1", at, f, 1)]))
            .await
            .0,
        200
    );

    let l = ledger(addr, &token, at - 60_000, at + 120_000).await;
    assert_eq!(l["accepted"], 5 + 1 + 2 + 1 + 1, "{l}");
    assert_eq!(
        l["stored"],
        4 + 1 + 1 + 1,
        "a1..a4, the replayed d1, e1, the replayed f1"
    );
    assert_eq!(
        l["resent"], 2,
        "a4's repeat in its request, and a2 sent again"
    );
    assert_eq!(l["redelivered"], 3 + 5, "a1..a3, then all five again: {l}");
    assert_eq!(
        l["rejected"],
        json!({"invalid_events": 7, "invalid_json": 1})
    );
    assert_eq!(l["received"], 18);
    assert_eq!(
        (l["dead_lettered"].as_u64(), l["replayed"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(l["in_flight"], 0, "{l}");
    assert_eq!(l["balanced"], true);
    let series = l["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "one minute has counts: {l}");
    assert_eq!(series[0]["t"], at / 60_000 * 60_000);

    // What the ledger says is what the shard holds: a row per acceptance,
    // the sample once, events once.
    let pool = t.shard_pool("a").await;
    assert_eq!(count(&pool, env).await, 7);
    let samples: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rejected_samples WHERE env_id = ?")
        .bind(env)
        .fetch_one(&pool)
        .await
        .expect("samples");
    assert_eq!(samples, 1);
    let acceptances: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM delivery WHERE env_id = ? AND outcome = 'accepted'",
    )
    .bind(env)
    .fetch_one(&pool)
    .await
    .expect("acceptances");
    assert_eq!(
        acceptances, 5,
        "A and C came in parts: keyed by their ids, once each; B, D and F came whole: in their writes' rows"
    );
    // Stored events carry the time they were stored, for the live tail.
    let stored_late: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events_full WHERE env_id = ? AND stored_at > received_at",
    )
    .bind(env)
    .fetch_one(&pool)
    .await
    .expect("stored_at");
    assert_eq!(stored_late, 7);

    // Compaction sums the writes' rows per minute and outcome; the ledger
    // reads the same, and a late write into the minute still counts.
    let rows = |pool: MySqlPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM delivery WHERE env_id = ? AND summable > 0",
        )
        .bind(env)
        .fetch_one(&pool)
        .await
        .expect("rows")
    };
    let before = rows(pool.clone()).await;
    let removed = server.state.compact_ledger(std::time::Duration::ZERO).await;
    assert!(removed > 0, "write rows summed");
    assert_eq!(rows(pool.clone()).await, before - removed as i64);
    assert_eq!(
        l_without_time(&ledger(addr, &token, at - 60_000, at + 120_000).await),
        l_without_time(&l)
    );
    assert_eq!(
        server.state.compact_ledger(std::time::Duration::ZERO).await,
        0,
        "nothing left to sum"
    );
    assert_eq!(
        ingest(
            addr,
            &json!([accepted(
                env,
                "a3",
                at + 7_000,
                "00000000000000000000000000000e0e",
                1
            )])
        )
        .await
        .0,
        200
    );
    let after = ledger(addr, &token, at - 60_000, at + 120_000).await;
    assert_eq!(
        (after["resent"].as_u64(), after["accepted"].as_u64()),
        (Some(3), Some(11)),
        "{after}"
    );
    assert_eq!(after["balanced"], true);
    assert!(server.state.compact_ledger(std::time::Duration::ZERO).await > 0);
    assert_eq!(
        ledger(addr, &token, at - 60_000, at + 120_000).await["resent"],
        3
    );

    // An environment the catalog does not know: skipped, not refused.
    let stray = json!({"reports": [{"id": "x1", "env_id": 999_999, "received_at": at, "lost": 1}]});
    assert_eq!(report(addr, &stray).await.0, 200);
    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn bots_dropped_at_the_write_are_counted_once_in_the_insert_transaction() {
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let (t, env, token) = Env::with_reader("web").await;
    backend::catalog::set_environment_policy(
        &t.catalog,
        "web",
        None,
        None,
        Some(intake::enrich::BotPolicy::Drop),
    )
    .await
    .expect("policy");
    let (server, tx) = t.start(t.config()).await;
    let addr = server.addr;
    let at = (chrono::Utc::now().timestamp_millis() - 600_000) / 60_000 * 60_000 + 1_000;
    let event = |id: &str, acceptance: &str, n: u32, ua: &str| {
        let mut e = accepted(env, id, at, acceptance, n);
        e["context"] = json!({"user_agent": ua});
        e
    };
    // A request of a person and a crawler, then a crawler's request alone:
    // each delivered twice, the second in a batch of its own.
    let mixed = [
        event(
            "p1",
            A,
            2,
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        ),
        event("g1", A, 2, GOOGLEBOT),
    ];
    let alone = [event("g2", B, 1, GOOGLEBOT)];
    for _ in 0..2 {
        let (status, body, _) = ingest(addr, &json!(mixed)).await;
        assert_eq!(
            (status, &body["environments"][env.to_string()]["dropped"]),
            (200, &json!(1))
        );
        let (status, body, _) = ingest(addr, &json!(alone)).await;
        assert_eq!(
            (status, &body["environments"][env.to_string()]["dropped"]),
            (200, &json!(1)),
            "{body}"
        );
    }
    let pool = t.shard_pool("a").await;
    assert_eq!(
        count(&pool, env).await,
        1,
        "only the person's event is stored"
    );
    let ua: String = sqlx::query_scalar(
        "SELECT CAST(JSON_UNQUOTE(JSON_EXTRACT(context, '$.ua.browser')) AS CHAR) FROM events_full WHERE env_id = ?",
    )
    .bind(env)
    .fetch_one(&pool)
    .await
    .expect("ua");
    assert_eq!(ua, "Firefox");
    let l = ledger(addr, &token, at - 60_000, at + 120_000).await;
    assert_eq!(
        (
            &l["accepted"],
            &l["stored"],
            &l["dropped"],
            &l["in_flight"],
            &l["balanced"]
        ),
        (
            &json!(3),
            &json!(1),
            &json!({"bot": 2}),
            &json!(0),
            &json!(true)
        ),
        "{l}"
    );
    stop(server, tx).await;
    t.cleanup().await;
}
