//! Derived counts, kept off the hot path: per environment and event name per
//! minute (kept `SLUICE_MINUTE_COUNTS_RETENTION_DAYS`) and per second (the
//! live window, kept `SLUICE_SECOND_COUNTS_RETENTION_HOURS`), and per country
//! per minute. All by event time.
//!
//! Also metric values and user/session sketches. Writers add in-memory
//! deltas; a background task flushes them every `SLUICE_COUNTER_FLUSH_MS`
//! (500 ms), per shard in one transaction of multi-row upserts. A crash
//! between an insert and the next flush loses at most those deltas;
//! `backend counters rebuild` recomputes them from the events table.

use std::{collections::BTreeMap, sync::Mutex};

use chrono::{DateTime, NaiveDateTime};
use futures::TryStreamExt;
use sqlx::{mysql::MySqlPool, MySql, QueryBuilder, Row, Transaction};

use crate::{
    catalog::Metric,
    catalog::Snapshot,
    error::Result,
    shards::{Counted, Shards},
};

/// Deltas of one shard: keys are (env, bucket start in unix seconds, name id or country).
#[derive(Default)]
struct Deltas {
    minute: BTreeMap<(u32, i64, u32), u64>,
    second: BTreeMap<(u32, i64, u32), u64>,
    country: BTreeMap<(u32, i64, Vec<u8>), u64>,
    /// (env, bucket, metric id) → (events, total)
    metric_minute: BTreeMap<(u32, i64, u32), (u64, f64)>,
    metric_second: BTreeMap<(u32, i64, u32), (u64, f64)>,
    /// (env, period, kind, bucket start) → sketch of what this process saw.
    sketches: BTreeMap<SketchKey, Sketch>,
}

/// A mergeable HyperLogLog sketch (Cloudflare's cardinality-estimator,
/// 2^12 registers: ~1.6% standard error; exact for small sets).
pub type Sketch = cardinality_estimator::CardinalityEstimator<str>;
type SketchKey = (u32, u8, u8, i64);
pub const PERIOD_HOUR: u8 = 0;
pub const PERIOD_DAY: u8 = 1;
pub const KIND_USERS: u8 = 0;
pub const KIND_SESSIONS: u8 = 1;

pub fn encode_sketch(sketch: &Sketch) -> Vec<u8> {
    serde_json::to_vec(sketch).unwrap_or_default()
}

pub fn decode_sketch(bytes: &[u8]) -> Option<Sketch> {
    serde_json::from_slice(bytes).ok()
}

fn add_metric(
    map: &mut BTreeMap<(u32, i64, u32), (u64, f64)>,
    key: (u32, i64, u32),
    events: u64,
    total: f64,
) {
    let entry = map.entry(key).or_default();
    entry.0 += events;
    entry.1 += total;
}

impl Deltas {
    fn is_empty(&self) -> bool {
        self.minute.is_empty()
            && self.second.is_empty()
            && self.country.is_empty()
            && self.metric_minute.is_empty()
            && self.metric_second.is_empty()
            && self.sketches.is_empty()
    }

    fn merge(&mut self, other: Deltas) {
        for (k, n) in other.minute {
            *self.minute.entry(k).or_default() += n;
        }
        for (k, n) in other.second {
            *self.second.entry(k).or_default() += n;
        }
        for (k, n) in other.country {
            *self.country.entry(k).or_default() += n;
        }
        for (k, (events, total)) in other.metric_minute {
            add_metric(&mut self.metric_minute, k, events, total);
        }
        for (k, (events, total)) in other.metric_second {
            add_metric(&mut self.metric_second, k, events, total);
        }
        for (k, sketch) in other.sketches {
            self.sketches.entry(k).or_default().merge(&sketch);
        }
    }
}

pub struct Counters {
    pending: Mutex<BTreeMap<u32, Deltas>>,
    /// One flush at a time: a flush that returns has written everything
    /// counted before it started, even while the background one was running.
    flushing: tokio::sync::Mutex<()>,
    second_retention_secs: i64,
}

// VALUES() is deprecated in MySQL 8.0.20+ but still works there, and the
// row-alias replacement is not understood by MariaDB.
const UPSERT_MINUTE: &str = "INSERT INTO event_counts_minute (env_id, minute, name_id, events) ";
const UPSERT_SECOND: &str = "INSERT INTO event_counts_second (env_id, second, name_id, events) ";
const UPSERT_COUNTRY: &str = "INSERT INTO country_counts_minute (env_id, minute, country, events) ";
const UPSERT_METRIC_MINUTE: &str =
    "INSERT INTO metric_values_minute (env_id, minute, metric_id, events, total) ";
const UPSERT_METRIC_SECOND: &str =
    "INSERT INTO metric_values_second (env_id, second, metric_id, events, total) ";
const SELECT_SKETCH_FOR_UPDATE: &str =
    "SELECT sketch FROM unique_sketches WHERE env_id = ? AND period = ? AND kind = ? AND start = ? FOR UPDATE";
const UPSERT_SKETCH: &str =
    "INSERT INTO unique_sketches (env_id, period, kind, start, sketch) VALUES (?, ?, ?, ?, ?) \
    ON DUPLICATE KEY UPDATE sketch = VALUES(sketch)";
const ON_DUPLICATE: &str = " ON DUPLICATE KEY UPDATE events = events + VALUES(events)";
const ON_DUPLICATE_METRIC: &str =
    " ON DUPLICATE KEY UPDATE events = events + VALUES(events), total = total + VALUES(total)";

pub fn datetime(unix_seconds: i64) -> NaiveDateTime {
    DateTime::from_timestamp(unix_seconds, 0)
        .unwrap_or_default()
        .naive_utc()
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Counters {
    pub fn new(second_retention_secs: i64) -> Self {
        Self {
            pending: Mutex::new(BTreeMap::new()),
            flushing: tokio::sync::Mutex::new(()),
            second_retention_secs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Deltas>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, shard_id: u32, env_id: u32, rows: &[Counted]) {
        if rows.is_empty() {
            return;
        }
        // Old events (a phone flushing yesterday's batch) get no per-second
        // rows: they would be pruned at once.
        let live_since = now_secs() - self.second_retention_secs;
        let mut pending = self.lock();
        let deltas = pending.entry(shard_id).or_default();
        for row in rows {
            let second = row.timestamp.div_euclid(1000);
            let minute = second.div_euclid(60) * 60;
            *deltas
                .minute
                .entry((env_id, minute, row.name_id))
                .or_default() += 1;
            *deltas
                .country
                .entry((env_id, minute, row.country.clone()))
                .or_default() += 1;
            let live = second >= live_since;
            if live {
                *deltas
                    .second
                    .entry((env_id, second, row.name_id))
                    .or_default() += 1;
            }
            for (kind, who) in [(KIND_USERS, &row.user), (KIND_SESSIONS, &row.session)] {
                if let Some(who) = who {
                    for (period, length) in [(PERIOD_HOUR, 3600), (PERIOD_DAY, 86_400)] {
                        let start = second.div_euclid(length) * length;
                        deltas
                            .sketches
                            .entry((env_id, period, kind, start))
                            .or_default()
                            .insert(who.as_str());
                    }
                }
            }
            for &(metric, value) in &row.metrics {
                add_metric(
                    &mut deltas.metric_minute,
                    (env_id, minute, metric),
                    1,
                    value,
                );
                if live {
                    add_metric(
                        &mut deltas.metric_second,
                        (env_id, second, metric),
                        1,
                        value,
                    );
                }
            }
        }
    }

    pub fn pending_len(&self) -> usize {
        self.lock()
            .values()
            .map(|d| {
                d.minute.len()
                    + d.second.len()
                    + d.country.len()
                    + d.metric_minute.len()
                    + d.metric_second.len()
                    + d.sketches.len()
            })
            .sum()
    }

    /// Write all pending deltas; a shard that fails keeps its deltas for the
    /// next flush. Returns the names of the shards that failed.
    pub async fn flush(&self, snapshot: &Snapshot, shards: &Shards) -> Vec<String> {
        let _one_at_a_time = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.lock());
        let mut failed = Vec::new();
        for (shard_id, deltas) in taken {
            if deltas.is_empty() {
                continue;
            }
            let Some(shard) = snapshot.shards.get(&shard_id) else {
                tracing::warn!(
                    shard_id,
                    "dropping counter deltas of a shard no longer in the catalog"
                );
                continue;
            };
            let result = match shards.counters_pool(shard) {
                Ok(pool) => upsert(&pool, &deltas).await,
                Err(e) => Err(e),
            };
            if let Err(error) = result {
                tracing::warn!(shard = %shard.name, %error, "counter flush failed; will retry");
                self.lock().entry(shard_id).or_default().merge(deltas);
                failed.push(shard.name.clone());
            }
        }
        failed
    }
}

async fn upsert_rows<K, V, F>(
    tx: &mut Transaction<'_, MySql>,
    head: &str,
    on_duplicate: &str,
    rows: &BTreeMap<K, V>,
    bind: F,
) -> Result<()>
where
    F: Fn(&mut sqlx::query_builder::Separated<'_, '_, MySql, &'static str>, &K, &V),
{
    let rows: Vec<_> = rows.iter().collect();
    for chunk in rows.chunks(1000) {
        let mut q = QueryBuilder::<MySql>::new(head);
        q.push_values(chunk, |mut b, (k, v)| bind(&mut b, k, v));
        q.push(on_duplicate);
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn upsert(pool: &MySqlPool, d: &Deltas) -> Result<()> {
    // One transaction, so a failure restores all of a shard's deltas without
    // double counting; keys are sorted (BTreeMap), so flushers of several
    // backend processes lock rows in the same order and do not deadlock.
    let mut tx = pool.begin().await?;
    add_deltas(&mut tx, d).await?;
    tx.commit().await?;
    Ok(())
}

/// Add `d` to the stored counts, inside the caller's transaction.
async fn add_deltas(tx: &mut Transaction<'_, MySql>, d: &Deltas) -> Result<()> {
    let count = |b: &mut sqlx::query_builder::Separated<'_, '_, MySql, &'static str>,
                 &(env, t, id): &(u32, i64, u32),
                 n: &u64| {
        b.push_bind(env)
            .push_bind(datetime(t))
            .push_bind(id)
            .push_bind(*n);
    };
    upsert_rows(tx, UPSERT_MINUTE, ON_DUPLICATE, &d.minute, count).await?;
    upsert_rows(tx, UPSERT_SECOND, ON_DUPLICATE, &d.second, count).await?;
    upsert_rows(
        tx,
        UPSERT_COUNTRY,
        ON_DUPLICATE,
        &d.country,
        |b, (env, minute, country), n| {
            b.push_bind(*env)
                .push_bind(datetime(*minute))
                .push_bind(country.clone())
                .push_bind(*n);
        },
    )
    .await?;
    let metric = |b: &mut sqlx::query_builder::Separated<'_, '_, MySql, &'static str>,
                  &(env, t, id): &(u32, i64, u32),
                  &(events, total): &(u64, f64)| {
        b.push_bind(env)
            .push_bind(datetime(t))
            .push_bind(id)
            .push_bind(events)
            .push_bind(total);
    };
    upsert_rows(
        tx,
        UPSERT_METRIC_MINUTE,
        ON_DUPLICATE_METRIC,
        &d.metric_minute,
        metric,
    )
    .await?;
    upsert_rows(
        tx,
        UPSERT_METRIC_SECOND,
        ON_DUPLICATE_METRIC,
        &d.metric_second,
        metric,
    )
    .await?;
    // Sketches merge in the application: read the stored one under a row
    // lock, merge, write back. Two processes racing on a new row may
    // deadlock; the loser's transaction fails and its deltas are retried.
    for (&(env, period, kind, start), sketch) in &d.sketches {
        let stored: Option<Vec<u8>> = sqlx::query_scalar(SELECT_SKETCH_FOR_UPDATE)
            .bind(env)
            .bind(period)
            .bind(kind)
            .bind(datetime(start))
            .fetch_optional(&mut **tx)
            .await?;
        let mut merged = stored
            .as_deref()
            .and_then(decode_sketch)
            .unwrap_or_default();
        merged.merge(sketch);
        sqlx::query(UPSERT_SKETCH)
            .bind(env)
            .bind(period)
            .bind(kind)
            .bind(datetime(start))
            .bind(encode_sketch(&merged))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Delete per-second counts older than `second_cutoff` and per-minute counts
/// older than `minute_cutoff`, in small batches so no long lock is held.
pub async fn prune(pool: &MySqlPool, second_cutoff: i64, minute_cutoff: i64) -> Result<u64> {
    const STATEMENTS: [&str; 6] = [
        "DELETE FROM event_counts_second WHERE second < ? LIMIT 5000",
        "DELETE FROM metric_values_second WHERE second < ? LIMIT 5000",
        "DELETE FROM event_counts_minute WHERE minute < ? LIMIT 5000",
        "DELETE FROM country_counts_minute WHERE minute < ? LIMIT 5000",
        "DELETE FROM metric_values_minute WHERE minute < ? LIMIT 5000",
        "DELETE FROM unique_sketches WHERE start < ? LIMIT 5000",
    ];
    let mut deleted = 0;
    for (i, statement) in STATEMENTS.iter().enumerate() {
        let cutoff = datetime(if i < 2 { second_cutoff } else { minute_cutoff });
        loop {
            let n = sqlx::query(statement)
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected();
            deleted += n;
            if n < 5000 {
                break;
            }
        }
    }
    Ok(deleted)
}

const COUNTRY_SQL: &str =
    "CASE WHEN JSON_UNQUOTE(JSON_EXTRACT(context, '$.country')) REGEXP '^[A-Za-z0-9]{1,8}$' \
    THEN UPPER(JSON_UNQUOTE(JSON_EXTRACT(context, '$.country'))) ELSE '??' END";

/// Recompute an environment's counts on one shard from `since_ms` (rounded
/// down to the minute). Returns the number of events counted.
pub async fn rebuild(
    pool: &MySqlPool,
    env_id: u32,
    since_ms: i64,
    second_retention_secs: i64,
    metrics: &[Metric],
) -> Result<u64> {
    let since = datetime(since_ms.div_euclid(60_000) * 60);
    let live_since = datetime((now_secs() - second_retention_secs).max(since_ms.div_euclid(1000)));
    let minute_of = "DATE_FORMAT(ts, '%Y-%m-%d %H:%i:00')";
    let second_of = "DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s')";
    let statements = [
        ("DELETE FROM event_counts_minute WHERE env_id = ? AND minute >= ?".to_string(), since),
        (format!("INSERT INTO event_counts_minute (env_id, minute, name_id, events) SELECT env_id, {minute_of}, name_id, COUNT(*) FROM events WHERE env_id = ? AND ts >= ? GROUP BY env_id, {minute_of}, name_id"), since),
        ("DELETE FROM country_counts_minute WHERE env_id = ? AND minute >= ?".to_string(), since),
        (format!("INSERT INTO country_counts_minute (env_id, minute, country, events) SELECT env_id, {minute_of}, {COUNTRY_SQL}, COUNT(*) FROM events_full WHERE env_id = ? AND ts >= ? GROUP BY env_id, {minute_of}, {COUNTRY_SQL}"), since),
        ("DELETE FROM event_counts_second WHERE env_id = ? AND second >= ?".to_string(), live_since),
        (format!("INSERT INTO event_counts_second (env_id, second, name_id, events) SELECT env_id, {second_of}, name_id, COUNT(*) FROM events WHERE env_id = ? AND ts >= ? GROUP BY env_id, {second_of}, name_id"), live_since),
    ];
    let mut tx = pool.begin().await?;
    for (sql, from) in &statements {
        sqlx::query(sql)
            .bind(env_id)
            .bind(*from)
            .execute(&mut *tx)
            .await?;
    }
    let (total,): (u64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(events), 0) AS UNSIGNED) FROM event_counts_minute WHERE env_id = ? AND minute >= ?",
    )
    .bind(env_id)
    .bind(since)
    .fetch_one(&mut *tx)
    .await?;

    // Metric values and sketches need each row's properties and ids: read
    // the rows once and rebuild them in memory (sketches from the start of
    // `since`'s day, so whole hour and day buckets are replaced).
    let day_start = since_ms.div_euclid(1000).div_euclid(86_400) * 86_400;
    let live_from = now_secs() - second_retention_secs;
    let mut d = Deltas::default();
    let mut rows = sqlx::query(REBUILD_ROWS)
        .bind(env_id)
        .bind(datetime(day_start))
        .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let ts: i64 = row.try_get(0)?;
        let name: Vec<u8> = row.try_get(1)?;
        let event_type: u8 = row.try_get(2)?;
        let (second, minute) = (ts.div_euclid(1000), ts.div_euclid(60_000) * 60);
        let who: [(u8, Option<Vec<u8>>); 2] = [
            (KIND_USERS, row.try_get(4)?),
            (KIND_SESSIONS, row.try_get(5)?),
        ];
        for (kind, id) in who {
            let Some(id) = id else { continue };
            let id = String::from_utf8_lossy(&id);
            for (period, length) in [(PERIOD_HOUR, 3600), (PERIOD_DAY, 86_400)] {
                d.sketches
                    .entry((env_id, period, kind, second.div_euclid(length) * length))
                    .or_default()
                    .insert(&id);
            }
        }
        let name = String::from_utf8_lossy(&name);
        if ts < since_ms || event_type != 0 || !metrics.iter().any(|m| m.event_name == name) {
            continue;
        }
        let properties: Vec<u8> = row.try_get(3)?;
        let properties: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&properties).unwrap_or_default();
        for metric in metrics.iter().filter(|m| m.event_name == name) {
            if let Some(value) = metric.contribution(&properties) {
                add_metric(&mut d.metric_minute, (env_id, minute, metric.id), 1, value);
                if second >= live_from {
                    add_metric(&mut d.metric_second, (env_id, second, metric.id), 1, value);
                }
            }
        }
    }
    drop(rows);
    for (sql, from) in [
        (
            "DELETE FROM metric_values_minute WHERE env_id = ? AND minute >= ?",
            since,
        ),
        (
            "DELETE FROM metric_values_second WHERE env_id = ? AND second >= ?",
            since,
        ),
        (
            "DELETE FROM unique_sketches WHERE env_id = ? AND start >= ?",
            datetime(day_start),
        ),
    ] {
        sqlx::query(sql)
            .bind(env_id)
            .bind(from)
            .execute(&mut *tx)
            .await?;
    }
    // The new metric values and sketches go in with the deletes: a failure
    // anywhere leaves the previous counts in place, never empty ones.
    add_deltas(&mut tx, &d).await?;
    tx.commit().await?;
    Ok(total)
}

const REBUILD_ROWS: &str = "SELECT CAST(UNIX_TIMESTAMP(e.ts) * 1000 AS SIGNED), n.name, e.event_type, e.properties, \
    COALESCE(e.user_id, e.anonymous_id), e.session_id FROM events e JOIN event_names n ON n.id = e.name_id \
    WHERE e.env_id = ? AND e.ts >= ?";

#[cfg(test)]
mod tests {
    use super::*;

    fn error(estimate: usize, exact: usize) -> f64 {
        (estimate as f64 - exact as f64).abs() / exact as f64
    }

    #[test]
    fn sketch_error_on_a_million_distinct_users_is_under_two_percent() {
        let mut whole = Sketch::default();
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        for i in 0..1_000_000u32 {
            let id = format!("user-{i}");
            whole.insert(id.as_str());
            if i % 2 == 0 {
                a.insert(id.as_str())
            } else {
                b.insert(id.as_str())
            }
        }
        let e = error(whole.estimate(), 1_000_000);
        assert!(e < 0.02, "error {e:.4}");
        // Merging the halves (as hourly sketches are merged) gives the same estimate.
        a.merge(&b);
        assert!(
            error(a.estimate(), whole.estimate()) < 0.001,
            "{} vs {}",
            a.estimate(),
            whole.estimate()
        );
        // Stored and read back unchanged; repeats change nothing.
        let decoded = decode_sketch(&encode_sketch(&whole)).expect("decodes");
        assert_eq!(decoded.estimate(), whole.estimate());
        whole.insert("user-7");
        assert_eq!(decoded.estimate(), whole.estimate());
    }

    #[test]
    fn small_sets_are_exact() {
        let mut s = Sketch::default();
        for i in 0..50 {
            s.insert(format!("u{i}").as_str());
            s.insert(format!("u{i}").as_str());
        }
        assert_eq!(s.estimate(), 50);
        assert!(decode_sketch(b"not a sketch").is_none());
    }
}
