//! The live tail (`GET /v1/stats/tail`) against a real MariaDB: events
//! ingested through `POST /v1/ingest` appear whole, filters, `Last-Event-ID`
//! resume without gap or repeat, the per-viewer rate and its skipped
//! marker, sampled refusals (written directly and by the direct door), one
//! poller for many viewers, and the poller's end after its last viewer.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use backend::catalog;
use common::*;
use serde_json::{json, Value};

/// One frame: (event, id, data).
type Frame = (String, Option<String>, Value);

struct Tail {
    response: reqwest::Response,
    buffer: String,
}

impl Tail {
    async fn open(addr: SocketAddr, token: &str, query: &str, last: Option<&str>) -> Self {
        let mut request = reqwest::Client::new()
            .get(format!("http://{addr}/v1/stats/tail?env=shop{query}"))
            .bearer_auth(token);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.expect("tail");
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

    /// The next frame with data within `wait`, or `None`.
    async fn within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|s| s.trim().to_string())
                };
                if let Some(data) = field("data:") {
                    let event = field("event:").unwrap_or_else(|| "message".into());
                    return Some((event, field("id:"), serde_json::from_str(&data).unwrap()));
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("chunk")
                .expect("stream open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn next(&mut self) -> Frame {
        self.within(Duration::from_secs(5))
            .await
            .expect("a frame within 5 s")
    }

    /// Every frame until none came for `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.within(quiet).await {
            frames.push(frame);
        }
        frames
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn event(env: u32, n: u64, name: &str, user: &str) -> Value {
    let ts = now_ms() - 1000;
    json!({"id": format!("tail-{n}"), "env_id": env, "name": name, "timestamp": ts,
           "received_at": ts + 7, "user_id": user, "anonymous_id": format!("anon-{n}"),
           "session_id": "s1", "properties": {"n": n, "price": 9.5, "tags": ["a", "b"]},
           "context": {"country": "DE", "library": {"name": "js"}, "page": {"url": format!("/p/{n}")}}})
}

fn ns(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f.0 == "event")
        .map(|f| f.2["event"]["properties"]["n"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_tail_streams_what_is_stored_filters_resumes_and_holds_its_rate() {
    let (t, env, token) = Env::with_reader("shop").await;
    let (server, tx) = t.start(t.config()).await;
    let addr = server.addr;

    let mut all = Tail::open(addr, &token, "", None).await;
    let mut buys = Tail::open(addr, &token, "&name=buy", None).await;
    let mut bob = Tail::open(addr, &token, "&user=bob", None).await;
    let mut anon = Tail::open(addr, &token, "&user=anon-3", None).await;
    let mut rejected = Tail::open(addr, &token, "&rejected=1", None).await;

    // Whole events, within 2 s of the ingest's answer.
    let sent = vec![
        event(env, 1, "view", "alice"),
        event(env, 2, "buy", "bob"),
        event(env, 3, "view", "carol"),
    ];
    assert_eq!(ingest(addr, &json!(sent)).await.0, 200);
    let answered = Instant::now();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(all.next().await);
    }
    let latency = answered.elapsed();
    eprintln!("ingest 200 → tail: {latency:?}");
    assert!(
        latency < Duration::from_secs(2),
        "stored → tail took {latency:?}"
    );
    // Rows of one write share their stored_at and come in key order.
    got.sort_by_key(|f| f.2["event"]["properties"]["n"].as_u64());
    assert_eq!(ns(&got), vec![1, 2, 3]);
    for ((kind, id, data), sent) in got.iter().zip(&sent) {
        assert_eq!(kind, "event");
        assert_eq!(id.as_deref(), Some(data["id"].to_string().as_str()));
        assert_eq!(data["type"], "track");
        assert!(data["stored_at"].as_i64().unwrap() > now_ms() - 60_000);
        assert_eq!(&data["event"], sent, "the whole event, as sent");
    }
    assert_eq!(ns(&[buys.next().await]), vec![2]);
    assert_eq!(ns(&[bob.next().await]), vec![2]);
    assert_eq!(
        ns(&[anon.next().await]),
        vec![3],
        "user= matches anonymous_id"
    );
    assert!(buys.within(Duration::from_millis(1200)).await.is_none());

    // A sampled refusal as the doors write it: only on the unfiltered and
    // rejected-only streams.
    let shard = t.shard_pool("a").await;
    sqlx::query(
        "INSERT INTO rejected_samples (env_id, source, seq, received_at, code, message, body) \
         VALUES (?, ?, 0, UTC_TIMESTAMP(3), 'invalid_json', 'the body is not JSON: expected value', '{oops')",
    )
    .bind(env)
    .bind(&[9u8; 16][..])
    .execute(&shard)
    .await
    .unwrap();
    let (kind, _, data) = rejected.next().await;
    assert_eq!(kind, "rejected");
    assert_eq!(data["code"], "invalid_json");
    assert_eq!(data["message"], "the body is not JSON: expected value");
    assert_eq!(data["body"], "{oops");
    assert_eq!(all.next().await.0, "rejected");
    assert!(bob.within(Duration::from_millis(1200)).await.is_none());

    // Last-Event-ID: read part, reconnect, nothing missed, nothing twice.
    let batch: Vec<Value> = (10..20).map(|n| event(env, n, "page", "dave")).collect();
    assert_eq!(ingest(addr, &json!(batch)).await.0, 200);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(all.next().await);
    }
    let last = seen.last().unwrap().1.clone().unwrap();
    drop(all);
    let batch: Vec<Value> = (20..25).map(|n| event(env, n, "page", "dave")).collect();
    assert_eq!(ingest(addr, &json!(batch)).await.0, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut resumed = Tail::open(addr, &token, "", Some(&last)).await;
    seen.extend(resumed.drain(Duration::from_millis(1500)).await);
    let mut got = ns(&seen);
    got.sort();
    assert_eq!(got, (10..25).collect::<Vec<_>>(), "no gap, no repeat");

    // One poller for every viewer: about two polls a second.
    let polls = server.state.tail.polls();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = server.state.tail.polls() - polls;
    eprintln!("{polls} tail polls in 3 s for 5 viewers");
    assert!(
        (5..=8).contains(&polls),
        "{polls} polls in 3 s for 5 viewers"
    );
    assert_eq!(server.state.tail.pollers(), 1);

    // Over the rate: a second's worth, then a skipped marker for the rest.
    let mut bulk = Tail::open(addr, &token, "&name=bulk", None).await;
    let batch: Vec<Value> = (1000..2000).map(|n| event(env, n, "bulk", "eve")).collect();
    assert_eq!(ingest(addr, &json!(batch)).await.0, 200);
    let frames = bulk.drain(Duration::from_millis(1500)).await;
    let shown = ns(&frames).len() as u64;
    let skipped: u64 = frames
        .iter()
        .filter(|f| f.0 == "skipped")
        .map(|f| f.2["skipped"].as_u64().unwrap())
        .sum();
    eprintln!("over the rate: {shown} shown, {skipped} skipped");
    assert!(skipped > 0, "a skipped marker");
    assert!((200..400).contains(&shown), "{shown} shown");
    assert_eq!(shown + skipped, 1000, "{shown} shown + {skipped} skipped");

    // The poller outlives its last viewer by the linger, then stops.
    drop((buys, bob, anon, rejected, resumed, bulk));
    tokio::time::sleep(backend::stats::tail::LINGER + Duration::from_millis(1500)).await;
    assert_eq!(server.state.tail.pollers(), 0, "no viewer, no poller");

    stop(server, tx).await;
    t.cleanup().await;
}

#[tokio::test]
async fn a_refusal_at_the_direct_door_appears_with_its_reason() {
    let (t, env, token) = Env::with_reader("shop").await;
    let (key, _) = catalog::create_api_key(&t.catalog, "shop").await.unwrap();
    let (server, tx) = t.start(t.config()).await;
    let addr = server.addr;
    let mut rejected = Tail::open(addr, &token, "&rejected=1", None).await;
    let mut all = Tail::open(addr, &token, "", None).await;

    let client = reqwest::Client::new();
    let post = |body: &'static str| {
        client
            .post(format!("http://{addr}/v1/events"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let stored = post(r#"{"event": "signup", "user_id": "u1", "properties": {"plan": "pro"}}"#)
        .await
        .unwrap();
    assert_eq!(stored.status(), 202);
    let answered = Instant::now();
    let (kind, _, data) = all.next().await;
    assert!(answered.elapsed() < Duration::from_secs(2));
    assert_eq!(kind, "event");
    assert_eq!(data["event"]["name"], "signup");
    assert_eq!(data["event"]["env_id"], env);
    assert_eq!(data["event"]["properties"]["plan"], "pro");

    let refused = post(r#"{"event": ""}"#).await.unwrap();
    assert_eq!(refused.status(), 422);
    let answered = Instant::now();
    let (kind, _, data) = rejected.next().await;
    let latency = answered.elapsed();
    eprintln!("direct door 422 → tail: {latency:?}");
    assert_eq!(kind, "rejected");
    assert_eq!(data["code"], "invalid_events", "{data}");
    assert!(!data["message"].as_str().unwrap().is_empty());
    assert!(data["body"].as_str().unwrap().contains(r#""event": """#));
    // The door writes its refusals every second; the tail polls every 500 ms.
    assert!(
        latency < Duration::from_secs(2),
        "refusal → tail took {latency:?}"
    );

    drop((rejected, all));
    stop(server, tx).await;
    t.cleanup().await;
}
