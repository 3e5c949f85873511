//! Counter persistence on MySQL: the flush's multi-row upserts, pruning,
//! and `backend counters rebuild`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::TryStreamExt;
use protocol::EventType;
use sqlx::{mysql::MySqlPool, MySql, QueryBuilder, Row, Transaction};

use super::shards::Shards;
use crate::{
    catalog::{Metric, Shard},
    counters::{contributions, datetime, decode_sketch, encode_sketch, now_secs, Deltas},
    error::Result,
    store::CounterStore,
};

#[async_trait]
impl CounterStore for Shards {
    async fn add(&self, shard: &Shard, deltas: &Deltas) -> Result<()> {
        upsert(&self.counters_pool(shard)?, deltas).await
    }

    async fn prune(&self, shard: &Shard, second_cutoff: i64, minute_cutoff: i64) -> Result<u64> {
        prune(&self.counters_pool(shard)?, second_cutoff, minute_cutoff).await
    }
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
        let second = ts.div_euclid(1000);
        let user: Option<Vec<u8>> = row.try_get(4)?;
        let session: Option<Vec<u8>> = row.try_get(5)?;
        d.add_uniques(
            env_id,
            second,
            user.as_deref().map(String::from_utf8_lossy).as_deref(),
            session.as_deref().map(String::from_utf8_lossy).as_deref(),
        );
        let name = String::from_utf8_lossy(&name);
        let Some(event_type) = EventType::from_code(event_type) else {
            continue;
        };
        if ts < since_ms || !metrics.iter().any(|m| m.event_name == name) {
            continue;
        }
        let properties: Vec<u8> = row.try_get(3)?;
        let properties: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&properties).unwrap_or_default();
        let values = contributions(metrics, event_type, &name, &properties);
        d.add_metrics(env_id, second, second >= live_from, &values);
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
