//! Export against a real MariaDB: a range whose history has duplicates and
//! retries comes out with every stored event once, nothing outside it, in
//! (time, key) order, resumable from any line, gzipped alike, and
//! re-importable through /v1/ingest without a new row.

mod common;

use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use backend::{catalog, export::Export, store::ExportStore};
use common::*;
use futures::StreamExt as _;
use serde_json::{json, Value};

const T0: i64 = 1_700_000_000_000;

/// (status, body bytes) of an export request.
async fn export(addr: SocketAddr, query: &str, token: &str, gzip: bool) -> (u16, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .get(format!("http://{addr}/v1/export?{query}"))
        .bearer_auth(token);
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("the whole body").to_vec();
    (status, body)
}

fn lines(ndjson: &[u8]) -> Vec<Value> {
    assert!(ndjson.is_empty() || ndjson.ends_with(b"\n"), "whole lines");
    ndjson
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("a JSON line"))
        .collect()
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["id"].as_str().expect("an id").to_string())
        .collect()
}

/// The events: three per millisecond-run of equal times, UUIDs and client
/// ids mixed, every message type's fields, some before and after the range.
fn history(env: u32) -> Vec<Value> {
    let mut events = Vec::new();
    for n in 0..60u64 {
        let ts = T0 + (n as i64 / 3) * 1000;
        let id = if n % 2 == 0 {
            uuid(n)
        } else {
            format!("order-{n}")
        };
        let mut event = envelope(env, &id, &format!("name-{}", n % 4), ts);
        if n % 5 == 0 {
            event["type"] = json!("identify");
            event["traits"] = json!({"plan": "pro", "n": n});
            event["context"]["page"] = json!({"path": format!("/p/{n}")});
        }
        if n % 7 == 0 {
            event["type"] = json!("group");
            event["group_id"] = json!(format!("g-{n}"));
        }
        if n % 11 == 0 {
            event["type"] = json!("alias");
            event["previous_id"] = json!(format!("prev-{n}"));
        }
        events.push(event);
    }
    // Outside [T0, T0 + 20 s): just before, and at the end (exclusive).
    for n in 0..4u64 {
        events.push(envelope(env, &format!("early-{n}"), "x", T0 - 1 - n as i64));
        events.push(envelope(
            env,
            &format!("late-{n}"),
            "x",
            T0 + 20_000 + n as i64,
        ));
    }
    events
}

#[tokio::test]
async fn export_gives_every_stored_event_once_in_order_and_resumes_from_any_line() {
    let (t, env, token) = Env::with_reader("shop").await;
    let other = catalog::create_environment(&t.catalog, "blog", "a")
        .await
        .expect("environment");
    let (server, stop_tx) = t.start(t.config()).await;
    let events = history(env);

    // The history: a first batch with a repeat inside it, the same batch
    // retried, then a re-send of half of it with new events mixed in.
    let mut first: Vec<Value> = events[..40].to_vec();
    first.push(events[3].clone());
    for batch in [json!(first), json!(first), json!(events[20..].to_vec())] {
        let (status, body, _) = ingest(server.addr, &batch).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, _) = ingest(server.addr, &json!([envelope(other, &uuid(1), "x", T0)])).await;
    assert_eq!(status, 200);

    let range = format!("env=shop&from={T0}&to={}", T0 + 20_000);
    let (status, body) = export(server.addr, &range, &token, false).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let exported = lines(&body);
    let expected: Vec<&Value> = events
        .iter()
        .filter(|e| {
            let ts = e["timestamp"].as_i64().unwrap_or_default();
            (T0..T0 + 20_000).contains(&ts)
        })
        .collect();
    assert_eq!(exported.len(), expected.len(), "every event in range once");
    let unique: HashSet<String> = ids(&exported).into_iter().collect();
    assert_eq!(unique.len(), exported.len(), "no repeats");
    let pool = t.shard_pool("a").await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE env_id = ? AND ts >= ? AND ts < ?")
            .bind(env)
            .bind(chrono::DateTime::from_timestamp_millis(T0).map(|d| d.naive_utc()))
            .bind(chrono::DateTime::from_timestamp_millis(T0 + 20_000).map(|d| d.naive_utc()))
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(stored as usize, exported.len());

    // Each line is the envelope as it was sent (the client's id, every field).
    for sent in &expected {
        let line = exported
            .iter()
            .find(|l| l["id"] == sent["id"])
            .expect("exported");
        for field in [
            "env_id",
            "name",
            "timestamp",
            "received_at",
            "user_id",
            "session_id",
            "properties",
            "context",
            "type",
            "traits",
            "group_id",
            "previous_id",
        ] {
            assert_eq!(
                line.get(field),
                sent.get(field),
                "{field} of {}",
                sent["id"]
            );
        }
    }
    // Each line is exactly an envelope's JSON (the MySQL store writes lines
    // straight from rows, without `protocol::Envelope`).
    for line in &exported {
        let envelope: protocol::Envelope =
            serde_json::from_value(line.clone()).expect("an envelope");
        assert_eq!(&serde_json::to_value(&envelope).expect("json"), line);
    }
    // In (time, key) order.
    let order: Vec<(i64, [u8; 16])> = exported
        .iter()
        .map(|l| {
            let id = l["id"].as_str().unwrap_or_default();
            (
                l["timestamp"].as_i64().unwrap_or_default(),
                protocol::event_key(id),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    // Resume after any line: exactly the lines after it.
    let all = ids(&exported);
    for k in [0, 1, 2, 3, 10, 29, all.len() - 2, all.len() - 1] {
        let query = format!("{range}&after={}", all[k]);
        let (status, body) = export(server.addr, &query, &token, false).await;
        assert_eq!(status, 200);
        assert_eq!(ids(&lines(&body)), all[k + 1..], "after line {k}");
    }

    // Gzip: the same bytes, compressed.
    let (status, gzipped) = export(server.addr, &range, &token, true).await;
    assert_eq!(status, 200);
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gzipped[..]),
        &mut inflated,
    )
    .expect("a whole gzip stream");
    assert_eq!(inflated, body);
    assert!(gzipped.len() < body.len() / 3, "compressed");

    // Pages of 4 rows and queries of 10 (a window ends inside a page) end
    // inside runs of equal times: the same lines, and resuming after every
    // one of them gives the rest.
    let shard = catalog::list_shards(&t.catalog)
        .await
        .expect("shards")
        .into_iter()
        .find(|s| s.name == "a")
        .expect("shard a");
    let store: Arc<dyn ExportStore> = Arc::new(backend::shards::Shards::new(
        2,
        std::time::Duration::from_secs(5),
        500,
    ));
    let read = |after: Option<String>| {
        let (store, shard) = (store.clone(), shard.clone());
        async move {
            let export = Export::new(store, shard, env, (T0, T0 + 20_000), after.as_deref())
                .await
                .expect("export")
                .with_page_rows(4)
                .with_window_rows(10);
            let chunks: Vec<_> = export.ndjson().await.expect("first page").collect().await;
            chunks
                .into_iter()
                .map(|c| c.expect("no failure"))
                .fold(Vec::new(), |mut all, c| {
                    all.extend_from_slice(&c);
                    all
                })
        }
    };
    assert_eq!(read(None).await, body);
    for k in 0..all.len() {
        assert_eq!(
            ids(&lines(&read(Some(all[k].clone())).await)),
            all[k + 1..],
            "after line {k}, pages of 4"
        );
    }

    // Re-import: every line lands as a duplicate, no new row.
    let before = count(&pool, env).await;
    let (status, answer, _) = ingest(server.addr, &json!(exported)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["environments"][env.to_string()],
        json!({"inserted": 0, "duplicates": exported.len(), "dropped": 0})
    );
    assert_eq!(count(&pool, env).await, before);

    // The range rules and the cursor's: 400s with their reason.
    let (status, body) = export(
        server.addr,
        &format!("env=shop&from={T0}&to={T0}"),
        &token,
        false,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json")["error"],
        "invalid_argument"
    );
    let (status, _) = export(server.addr, &format!("{range}&after=nope"), &token, false).await;
    assert_eq!(status, 400);

    stop(server, stop_tx).await;
    t.cleanup().await;
}
