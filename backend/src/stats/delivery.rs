//! `GET /v1/stats/delivery`: an environment's delivery ledger for a range,
//! by minute of receive time (see `crate::delivery` for what adds up).

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};

use crate::query::Query;
use serde::Serialize;
use utoipa::ToSchema;

use super::{minute_bounds, primary_shard, range, RangeParams, ReadAuth, MAX_POINTS};
use crate::{
    delivery::{Counts, Ledger},
    error::{Error, Result},
    AppState,
};

/// How long after a minute ends its events may still be on their way (the
/// queue's retries): minutes younger than this are not yet judged.
pub const SETTLE_SECS: i64 = 120;

/// `GET /v1/stats/delivery`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    #[serde(flatten)]
    pub ledger: Ledger,
    pub env: String,
    pub from: i64,
    pub to: i64,
    /// Minutes before this (ms) are settled: what is in flight there is a gap.
    pub settled_before: i64,
    pub balanced: bool,
    pub gap: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<LedgerMinute>>,
}

/// One minute of the ledger (`interval=minute`).
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerMinute {
    #[serde(flatten)]
    pub ledger: Ledger,
    pub t: i64,
    pub settled: bool,
}

/// `GET /v1/stats/delivery?env=&from=&to=[&interval=minute]`
pub async fn delivery(
    State(state): State<AppState>,
    auth: ReadAuth,
    Query(params): Query<RangeParams>,
) -> Result<Response> {
    let (from, to) = range(&params)?;
    let per_minute = match params.interval.as_deref() {
        None => false,
        Some("minute") => true,
        Some(other) => {
            return Err(Error::InvalidArgument(
                "interval",
                format!("{other:?}: the ledger is kept by minute (interval=minute)"),
            ))
        }
    };
    let (start, end) = minute_bounds(from, to);
    let (start, end) = (start.and_utc().timestamp(), end.and_utc().timestamp());
    if per_minute && (end - start) / 60 > MAX_POINTS {
        return Err(Error::InvalidArgument(
            "range",
            format!("at most {MAX_POINTS} minutes per request with interval=minute"),
        ));
    }
    let shard = primary_shard(&state, &auth.env)?;
    let minutes = state.ledger.ledger(&shard, auth.env.id, start, end).await?;
    let settled_before = chrono::Utc::now().timestamp() - SETTLE_SECS;
    let mut total = Counts::default();
    let mut gap = 0u64;
    let mut series = Vec::new();
    for (&minute, counts) in &minutes {
        total.add(counts);
        let ledger = Ledger::of(counts);
        let settled = minute + 60 <= settled_before;
        // In flight in a settled minute is a gap; more accounted for than
        // accepted is one at any age.
        if (settled && ledger.in_flight != 0) || ledger.in_flight < 0 {
            gap += ledger.in_flight.unsigned_abs();
        }
        if per_minute {
            series.push(LedgerMinute {
                ledger,
                t: minute * 1000,
                settled,
            });
        }
    }
    Ok(Json(Delivery {
        ledger: Ledger::of(&total),
        env: auth.env.name.clone(),
        from: start * 1000,
        to: end * 1000,
        settled_before: settled_before * 1000,
        balanced: gap == 0,
        gap,
        series: per_minute.then_some(series),
    })
    .into_response())
}
