//! What the live tail costs the database (issue 17): SELECT statements per
//! second on the MySQL server (`Com_select`, every client's) with no viewer,
//! with 1 and 200 viewers of `/v1/stats/stream` (the summary stream: one
//! poll per environment), and with 1 and 200 viewers of `/v1/stats/tail`,
//! while a steady trickle of events is ingested (so the tail's polls find
//! rows to read). Bounded: five phases of `PHASE` each.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::MySqlPool;

use crate::{Figure, TOKEN};

const PHASE: Duration = Duration::from_secs(8);
const VIEWERS: usize = 200;
/// Ingested during every phase: batches of 10, every 100 ms.
const EVENTS_PER_SEC: u64 = 100;

async fn selects(admin: &MySqlPool) -> f64 {
    let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
        .fetch_one(admin)
        .await
        .expect("Com_select");
    value.parse().unwrap_or(0.0)
}

/// SELECTs/s over one phase, with `viewers` streams of `path` open and read.
async fn phase(admin: &MySqlPool, base: &str, read_token: &str, path: &str, viewers: usize) -> f64 {
    let client = reqwest::Client::new();
    let mut readers = Vec::new();
    for _ in 0..viewers {
        let mut response = client
            .get(format!("{base}{path}"))
            .bearer_auth(read_token)
            .send()
            .await
            .expect("viewer");
        assert_eq!(response.status(), 200, "{path}");
        readers.push(tokio::spawn(async move {
            while let Ok(Some(_)) = response.chunk().await {}
        }));
    }
    // Pollers started, the first back-fills sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, started) = (selects(admin).await, Instant::now());
    tokio::time::sleep(PHASE).await;
    let rate = (selects(admin).await - before - 1.0) / started.elapsed().as_secs_f64();
    for reader in readers {
        reader.abort();
    }
    // The summary stream's poller ends at its next tick; the tail's lingers
    // (its next phase reuses it, as a reconnect would).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rate
}

pub async fn figures(
    base: &str,
    env_id: u32,
    env_name: &str,
    read_token: &str,
    mysql: &str,
    figures: &mut Vec<Figure>,
) {
    let admin = MySqlPool::connect(mysql).await.expect("server");
    let load = {
        let base = base.to_string();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for n in 0u64.. {
                tick.tick().await;
                let now = chrono::Utc::now().timestamp_millis();
                let batch: Vec<_> = (0..EVENTS_PER_SEC / 10)
                    .map(|i| json!({"id": format!("tail-bench-{n}-{i}"), "env_id": env_id, "name": "tail_probe",
                                    "timestamp": now, "received_at": now, "properties": {"n": n}, "context": {}}))
                    .collect();
                let _ = client
                    .post(format!("{base}/v1/ingest"))
                    .bearer_auth(TOKEN)
                    .json(&batch)
                    .send()
                    .await;
            }
        })
    };
    let stream = format!("/v1/stats/stream?env={env_name}");
    let tail = format!("/v1/stats/tail?env={env_name}");
    let baseline = phase(&admin, base, read_token, &stream, 0).await;
    let stream_1 = phase(&admin, base, read_token, &stream, 1).await;
    let stream_200 = phase(&admin, base, read_token, &stream, VIEWERS).await;
    let tail_1 = phase(&admin, base, read_token, &tail, 1).await;
    let tail_200 = phase(&admin, base, read_token, &tail, VIEWERS).await;
    load.abort();
    let context = format!("{EVENTS_PER_SEC} ev/s ingested; no viewer: {baseline:.1} SELECT/s (catalog refresh, ingest)");
    for (what, one, many) in [
        ("/v1/stats/stream (summary)", stream_1, stream_200),
        ("/v1/stats/tail", tail_1, tail_200),
    ] {
        figures.push(Figure {
            name: format!(
                "{what}: MySQL SELECTs/s with {VIEWERS} viewers of one environment ({context})"
            ),
            value: many,
            unit: "SELECT/s",
            reference: format!("1 viewer {one:.1}"),
            ratio: Some((many - baseline) / (one - baseline).max(0.1)),
            target: "≈ 1 viewer (one poller per environment)".into(),
        });
    }
    figures.push(Figure {
        name: format!(
            "/v1/stats/tail vs /v1/stats/stream: SELECTs/s above no viewer, {VIEWERS} viewers each"
        ),
        value: tail_200 - baseline,
        unit: "SELECT/s",
        reference: format!("stream {:.1}", stream_200 - baseline),
        ratio: Some((tail_200 - baseline) / (stream_200 - baseline).max(0.1)),
        target: "a few polls per second, not per viewer".into(),
    });
}
