//! The read API over the counters: summary, zero-filled series, and a live
//! Server-Sent Events stream. Reads go to the environment's primary shard.
//! Authorised by per-environment read tokens (`backend env token NAME`).

mod auth;
mod delivery;
mod live;
pub mod tail;

use std::collections::BTreeMap;

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};

use crate::query::Query;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use crate::store::{NamedCount, Second};
pub use auth::{ReadAuth, TokenCache, TOKEN_CACHE_TTL};
pub use delivery::{delivery, SETTLE_SECS};
pub use delivery::{Delivery, LedgerMinute};
pub use live::{stream, Hub, Update};
pub use tail::{tail, TailHub};

use crate::{
    catalog::{self, Environment, Shard},
    counters::datetime,
    error::{Error, Result},
    store::{Buckets, SummaryRange},
    AppState,
};

pub(crate) const MAX_POINTS: i64 = 10_000;

pub(crate) fn primary_shard(state: &AppState, env: &Environment) -> Result<Shard> {
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

pub(crate) fn env_metrics(state: &AppState, env_id: u32) -> Vec<catalog::Metric> {
    state
        .catalog
        .snapshot()
        .metrics
        .get(&env_id)
        .cloned()
        .unwrap_or_default()
}

/// The requested range in ms, defaulting to the last 24 hours.
pub fn range(params: &RangeParams) -> Result<(i64, i64)> {
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
pub(crate) fn minute_bounds(from: i64, to: i64) -> (chrono::NaiveDateTime, chrono::NaiveDateTime) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
