//! The read API over the counters: summary, zero-filled series, and a live
//! Server-Sent Events stream. Reads go to the environment's primary shard.
//! Authorised by per-environment read tokens (`backend env token NAME`).

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRequestParts, Query, State},
    http::{request::Parts, HeaderMap},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast;

pub use crate::store::{NamedCount, Second};

use crate::{
    catalog::{self, Environment, Shard},
    counters::datetime,
    error::{Error, Result},
    store::{Buckets, SummaryRange},
    AppState,
};

/// Read-token lookups are cached this long (positive and negative): the
/// bound on how late a revocation takes effect.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// The live window a new stream subscriber is sent first, and the most a
/// reconnect with `Last-Event-ID` is caught up by.
const BACKFILL_SECS: i64 = 300;
/// Seconds re-read on every stream tick: counts of a second keep arriving
/// until every backend process has flushed it.
const TICK_WINDOW_SECS: i64 = 10;
const MAX_POINTS: i64 = 10_000;

/// Read-token lookups, cached for [`TOKEN_CACHE_TTL`]. Tokens that exist
/// and tokens that do not are kept apart, each bounded on its own: a client
/// spraying random tokens fills (and clears) only the misses, never pushing
/// out the tokens that work.
pub struct TokenCache {
    entries: Mutex<TokenEntries>,
    /// Catalog lookups of uncached tokens in flight at once: the catalog's
    /// pool (4) keeps a connection for routing refreshes however many
    /// unknown tokens arrive.
    lookups: tokio::sync::Semaphore,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            lookups: tokio::sync::Semaphore::new(2),
        }
    }
}

#[derive(Default)]
struct TokenEntries {
    /// Token hash → (its environment, when looked up).
    hits: HashMap<[u8; 32], (u32, Instant)>,
    /// Hashes of unknown or revoked tokens → when looked up.
    misses: HashMap<[u8; 32], Instant>,
}

/// The most entries of each kind; past it, expired entries are dropped, and
/// if none has expired the misses are cleared (hits are only ever created by
/// valid tokens, so they stay few).
const TOKEN_CACHE_LIMIT: usize = 10_000;

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, TokenEntries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(env)` for a cached valid token, `Some(None)` for a cached miss.
    fn get(&self, hash: &[u8; 32]) -> Option<Option<u32>> {
        let entries = self.lock();
        if let Some(&(env, at)) = entries.hits.get(hash) {
            if at.elapsed() < TOKEN_CACHE_TTL {
                return Some(Some(env));
            }
        }
        match entries.misses.get(hash) {
            Some(at) if at.elapsed() < TOKEN_CACHE_TTL => Some(None),
            _ => None,
        }
    }

    fn put(&self, hash: [u8; 32], env: Option<u32>) {
        let mut entries = self.lock();
        let now = Instant::now();
        match env {
            Some(env) => {
                entries.misses.remove(&hash);
                if entries.hits.len() >= TOKEN_CACHE_LIMIT {
                    entries
                        .hits
                        .retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
                }
                if entries.hits.len() < TOKEN_CACHE_LIMIT {
                    entries.hits.insert(hash, (env, now));
                }
            }
            None => {
                entries.hits.remove(&hash);
                if entries.misses.len() >= TOKEN_CACHE_LIMIT {
                    entries
                        .misses
                        .retain(|_, at| at.elapsed() < TOKEN_CACHE_TTL);
                    if entries.misses.len() >= TOKEN_CACHE_LIMIT {
                        entries.misses.clear();
                    }
                }
                entries.misses.insert(hash, now);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let entries = self.lock();
        (entries.hits.len(), entries.misses.len())
    }
}

/// The environment a request may read: its read token matched `?env=`.
pub struct ReadAuth {
    pub env: Environment,
}

async fn token_env(state: &AppState, token: &str) -> Result<Option<u32>> {
    let hash = catalog::token_hash(token);
    let cache = &state.stats.tokens;
    if let Some(env) = cache.get(&hash) {
        return Ok(env);
    }
    let _permit = cache
        .lookups
        .acquire()
        .await
        .map_err(|_| Error::Internal("token lookups closed".into()))?;
    // Another request may have looked the same token up while this one waited.
    if let Some(env) = cache.get(&hash) {
        return Ok(env);
    }
    let env = state
        .catalog
        .read_token_env(&hash)
        .await
        .map_err(|e| Error::Catalog(e.to_string()))?;
    state.stats.tokens.put(hash, env);
    Ok(env)
}

impl FromRequestParts<AppState> for ReadAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = crate::auth::bearer(&parts.headers)
            .ok_or(Error::MissingAuth)?
            .to_string();
        let name = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "env")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "env",
                    "the env parameter (an environment name) is required".into(),
                )
            })?;
        let token_env = token_env(state, &token).await?.ok_or(Error::BadToken)?;
        // Only the token's own environment is looked up (a refresh, throttled
        // and shared, when it is new), never the name asked for: another
        // environment gets 403 whether it exists or not, so names cannot be
        // enumerated and unknown names cannot force catalog reads.
        match state.catalog.environment(token_env).await? {
            Some(env) if env.name == name => Ok(ReadAuth { env }),
            _ => Err(Error::Forbidden),
        }
    }
}

fn primary_shard(state: &AppState, env: &Environment) -> Result<Shard> {
    let snapshot = state.catalog.snapshot();
    snapshot
        .shards
        .get(&env.primary_shard_id)
        .cloned()
        .ok_or_else(|| Error::Catalog(format!("environment {} has no primary shard", env.name)))
}

/// A time parameter or argument: RFC 3339 or epoch milliseconds, within
/// the envelope's range (`intake::time`).
pub fn parse_time(name: &'static str, text: &str) -> Result<i64> {
    intake::time::parse_in_range(text).ok_or_else(|| {
        Error::InvalidArgument(
            name,
            format!("{text:?} is neither RFC 3339 nor epoch milliseconds (from 1970 on)"),
        )
    })
}

#[derive(Debug, Deserialize)]
pub struct RangeParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub event: Option<String>,
    pub metric: Option<String>,
    pub interval: Option<String>,
}

fn env_metrics(state: &AppState, env_id: u32) -> Vec<catalog::Metric> {
    state
        .catalog
        .snapshot()
        .metrics
        .get(&env_id)
        .cloned()
        .unwrap_or_default()
}

/// The requested range in ms, defaulting to the last 24 hours.
fn range(params: &RangeParams) -> Result<(i64, i64)> {
    let now = chrono::Utc::now().timestamp_millis();
    let to = params
        .to
        .as_deref()
        .map(|t| parse_time("to", t))
        .transpose()?
        .unwrap_or(now);
    let from = params
        .from
        .as_deref()
        .map(|t| parse_time("from", t))
        .transpose()?
        .unwrap_or(to - 86_400_000);
    if from >= to {
        return Err(Error::InvalidArgument(
            "range",
            "from must be before to".into(),
        ));
    }
    Ok((from, to))
}

/// Minute buckets covering [from, to): from rounded down, to rounded up.
fn minute_bounds(from: i64, to: i64) -> (chrono::NaiveDateTime, chrono::NaiveDateTime) {
    let start = from.div_euclid(60_000) * 60;
    let end = (to + 59_999).div_euclid(60_000) * 60;
    (datetime(start), datetime(end))
}

/// `GET /v1/stats/summary?env=&from=&to=`
pub async fn summary(
    State(state): State<AppState>,
    auth: ReadAuth,
    Query(params): Query<RangeParams>,
) -> Result<Response> {
    let (from, to) = range(&params)?;
    let shard = primary_shard(&state, &auth.env)?;
    let (start, end) = minute_bounds(from, to);
    let range = SummaryRange {
        from_ms: from,
        to_ms: to,
        start,
        end,
    };
    let metrics = env_metrics(&state, auth.env.id);
    let summary = state
        .stats_store
        .summary(&shard, auth.env.id, range, &metrics)
        .await?;
    let by_type: Vec<_> = summary
        .by_type
        .iter()
        .map(|(name, count)| json!({"type": name, "count": count}))
        .collect();
    Ok(Json(json!({
        "env": auth.env.name,
        "from": start.and_utc().timestamp_millis(),
        "to": end.and_utc().timestamp_millis(),
        "events": summary.events,
        "by_event": summary.by_event,
        "by_country": summary.by_country,
        "by_type": by_type,
        "users": summary.users,
        "sessions": summary.sessions,
        "metrics": summary.metrics,
    }))
    .into_response())
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Point {
    pub t: i64,
    pub value: u64,
}

/// Fill every bucket of [from, to) in steps of `step` seconds, zero where `sparse` has none.
pub fn zero_fill(from_s: i64, to_s: i64, step: i64, sparse: &BTreeMap<i64, u64>) -> Vec<Point> {
    let first = from_s.div_euclid(step) * step;
    (0..)
        .map(|i| first + i * step)
        .take_while(|&t| t < to_s)
        .map(|t| Point {
            t: t * 1000,
            value: sparse.get(&t).copied().unwrap_or(0),
        })
        .collect()
}

/// `GET /v1/stats/series?env=&event=&interval=second|minute|hour|day&from=&to=`
pub async fn series(
    State(state): State<AppState>,
    auth: ReadAuth,
    Query(params): Query<RangeParams>,
) -> Result<Response> {
    let (from, to) = range(&params)?;
    let interval = params.interval.as_deref().unwrap_or("minute");
    let step = match interval {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        other => {
            return Err(Error::InvalidArgument(
                "interval",
                format!("{other:?}: use second, minute, hour or day"),
            ));
        }
    };
    let (from_s, to_s) = (from.div_euclid(1000), (to + 999).div_euclid(1000));
    let points = (to_s - from_s.div_euclid(step) * step + step - 1) / step;
    if points > MAX_POINTS {
        return Err(Error::InvalidArgument(
            "range",
            format!("{points} points of one {interval}; at most {MAX_POINTS} per request"),
        ));
    }
    let shard = primary_shard(&state, &auth.env)?;
    let env_id = auth.env.id;
    let buckets = Buckets {
        step,
        bucket_start: from_s.div_euclid(step) * step,
        end: to_s,
    };
    if let Some(name) = &params.metric {
        let metric = env_metrics(&state, env_id)
            .into_iter()
            .find(|m| &m.name == name)
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "metric",
                    format!("{name:?} is not a metric of {}", auth.env.name),
                )
            })?;
        let sparse = state
            .stats_store
            .metric_series(&shard, env_id, metric.id, buckets)
            .await?;
        let points: Vec<serde_json::Value> = zero_fill(from_s, to_s, step, &BTreeMap::new())
            .into_iter()
            .map(|p| {
                let (events, total) = sparse.get(&(p.t / 1000)).copied().unwrap_or_default();
                json!({"t": p.t, "value": metric.value(events, total)})
            })
            .collect();
        return Ok(
            Json(json!({"interval": interval, "metric": metric.name, "points": points}))
                .into_response(),
        );
    }
    // A name never seen has no counts: every bucket is zero.
    let sparse = state
        .stats_store
        .event_series(&shard, env_id, params.event.as_deref(), buckets)
        .await?
        .unwrap_or_default();
    Ok(
        Json(json!({"interval": interval, "points": zero_fill(from_s, to_s, step, &sparse)}))
            .into_response(),
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct Update {
    /// Unix seconds of this update; also the SSE event id.
    pub id: i64,
    pub seconds: Vec<Second>,
    pub health: serde_json::Value,
}

/// Live updates fan out from one poller per environment to every viewer in this process.
#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<u32, broadcast::Sender<Arc<Update>>>>,
    pub tokens: TokenCache,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spray_of_unknown_tokens_never_evicts_the_valid_ones() {
        let cache = TokenCache::default();
        let valid = catalog::token_hash("srt_valid");
        cache.put(valid, Some(7));
        for i in 0..3 * TOKEN_CACHE_LIMIT {
            cache.put(catalog::token_hash(&format!("srt_guess_{i}")), None);
        }
        assert_eq!(cache.get(&valid), Some(Some(7)));
        let (hits, misses) = cache.len();
        assert_eq!(hits, 1);
        assert!(misses <= TOKEN_CACHE_LIMIT, "misses are bounded: {misses}");
        assert_eq!(
            cache.get(&catalog::token_hash(&format!(
                "srt_guess_{}",
                3 * TOKEN_CACHE_LIMIT - 1
            ))),
            Some(None),
            "recent misses are cached"
        );
        // A token revoked since is a miss at its next lookup, and stops being a hit.
        cache.put(valid, None);
        assert_eq!(cache.get(&valid), Some(None));
    }

    #[test]
    fn zero_fill_covers_the_range() {
        let sparse = BTreeMap::from([(120, 5), (240, 7)]);
        let points = zero_fill(100, 300, 60, &sparse);
        let ts: Vec<i64> = points.iter().map(|p| p.t / 1000).collect();
        assert_eq!(ts, vec![60, 120, 180, 240]);
        assert_eq!(
            points.iter().map(|p| p.value).collect::<Vec<_>>(),
            vec![0, 5, 0, 7]
        );
    }

    #[test]
    fn times_parse_both_ways() {
        assert_eq!(
            parse_time("from", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("from", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("from", "yesterday").is_err());
        assert!(parse_time("from", "-5").is_err());
    }
}
