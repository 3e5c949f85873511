//! The live stream: one poller per environment, fanned out to every viewer.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::{auth::ReadAuth, env_metrics, primary_shard, Second, TokenCache};
use crate::{catalog::Environment, error::Result, AppState};

/// The live window a new stream subscriber is sent first, and the most a
/// reconnect with `Last-Event-ID` is caught up by.
const BACKFILL_SECS: i64 = 300;
/// Seconds re-read on every stream tick: counts of a second keep arriving
/// until every backend process has flushed it.
const TICK_WINDOW_SECS: i64 = 10;
#[derive(Debug, Clone, Serialize)]
pub struct Update {
    /// Unix seconds of this update; also the SSE event id.
    pub id: i64,
    pub seconds: Vec<Second>,
    pub health: serde_json::Value,
}

/// Live updates fan out from one poller per environment to every viewer in this process.
pub struct Hub {
    channels: Mutex<HashMap<u32, broadcast::Sender<Arc<Update>>>>,
    pub tokens: TokenCache,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            channels: Mutex::default(),
            tokens: TokenCache::new(super::TOKEN_CACHE_TTL),
        }
    }
}

fn health(state: &AppState) -> serde_json::Value {
    let m = &state.metrics;
    let sum = |c: &prometheus::IntCounterVec| -> u64 {
        use prometheus::core::Collector;
        c.collect()
            .iter()
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
            })
            .sum()
    };
    json!({
        "inserted_total": sum(&m.events_inserted),
        "duplicates_total": sum(&m.events_duplicate),
        "shard_errors_total": sum(&m.shard_errors),
    })
}

async fn poll(state: AppState, env: Environment, sender: broadcast::Sender<Arc<Update>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if sender.receiver_count() == 0 {
            let mut channels = state
                .stats
                .channels
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Re-checked under the lock, so a subscriber that just joined is never orphaned.
            if sender.receiver_count() == 0 {
                channels.remove(&env.id);
                return;
            }
        }
        let now = chrono::Utc::now().timestamp();
        let seconds = match primary_shard(&state, &env) {
            Ok(shard) => {
                let metrics = env_metrics(&state, env.id);
                state
                    .stats_store
                    .seconds(&shard, env.id, &metrics, now - TICK_WINDOW_SECS, now + 1)
                    .await
            }
            Err(e) => Err(e),
        };
        state.metrics.stats_polls.inc();
        match seconds {
            Ok(seconds) => {
                let _ = sender.send(Arc::new(Update {
                    id: now,
                    seconds,
                    health: health(&state),
                }));
            }
            Err(error) => tracing::warn!(env = %env.name, %error, "live stats read failed"),
        }
    }
}

fn subscribe(state: &AppState, env: &Environment) -> broadcast::Receiver<Arc<Update>> {
    let mut channels = state
        .stats
        .channels
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(sender) = channels.get(&env.id) {
        return sender.subscribe();
    }
    let (sender, receiver) = broadcast::channel(16);
    channels.insert(env.id, sender.clone());
    tokio::spawn(poll(state.clone(), env.clone(), sender));
    receiver
}

fn event(update: &Update) -> Event {
    Event::default()
        .id(update.id.to_string())
        .event("update")
        .data(serde_json::to_string(update).unwrap_or_default())
}

/// `GET /v1/stats/stream?env=`: one `update` event per second with the last
/// seconds' counts per event name. The first event covers the last five
/// minutes, or the gap since `Last-Event-ID` on a reconnect.
pub async fn stream(
    State(state): State<AppState>,
    auth: ReadAuth,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let now = chrono::Utc::now().timestamp();
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .map(|last| last.clamp(now - BACKFILL_SECS, now) - TICK_WINDOW_SECS)
        .unwrap_or(now - BACKFILL_SECS);
    let shard = primary_shard(&state, &auth.env)?;
    let first = Update {
        id: now,
        seconds: state
            .stats_store
            .seconds(
                &shard,
                auth.env.id,
                &env_metrics(&state, auth.env.id),
                since,
                now + 1,
            )
            .await?,
        health: health(&state),
    };
    let receiver = subscribe(&state, &auth.env);
    let live = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(update) => return Some((Ok(event(&update)), receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::stream::once(async move { Ok(event(&first)) }).chain(live);
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}
