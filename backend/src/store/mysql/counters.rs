//! Counter persistence on MySQL: the flush's multi-row upserts, pruning,
//! and `backend counters rebuild`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::{mysql::MySqlPool, MySql, QueryBuilder, Row, Transaction};

use super::shards::{stored_envelope, Shards, HISTORY_COLUMNS};
use crate::{
    error::Result,
    model::{counted, datetime, decode_sketch, encode_sketch, now_secs, Deltas},
    model::{Metric, Shard},
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

/// Recompute an environment's counts on one shard from `since_ms` (rounded
/// down to the minute), counting each stored row with the write path's own
/// function ([`counted`] + [`Deltas::add`]). Sketches are rebuilt from the
/// start of `since`'s day, so whole hour and day buckets are replaced.
/// Returns the number of events counted.
pub async fn rebuild(
    pool: &MySqlPool,
    env_id: u32,
    since_ms: i64,
    second_retention_secs: i64,
    metrics: &[Metric],
) -> Result<u64> {
    let since_minute = since_ms.div_euclid(60_000) * 60;
    let since_minute_ms = since_minute * 1000;
    let day_start = since_minute.div_euclid(86_400) * 86_400;
    let live_since = (now_secs() - second_retention_secs).max(since_minute);
    let mut d = Deltas::default();
    let mut total = 0u64;
    let query = format!("SELECT {HISTORY_COLUMNS} FROM events_full WHERE env_id = ? AND ts >= ?");
    let mut rows = sqlx::query(&query)
        .bind(env_id)
        .bind(datetime(day_start))
        .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let envelope = stored_envelope(&row, env_id)?;
        let name_id: u32 = row.try_get(14)?;
        let row = counted(&envelope, name_id, metrics);
        if row.timestamp < since_minute_ms {
            // Before `since`: only its day's sketches are rebuilt.
            let second = row.timestamp.div_euclid(1000);
            d.add_uniques(env_id, second, row.user.as_deref(), row.session.as_deref());
        } else {
            d.add(env_id, &row, live_since);
            total += 1;
        }
    }
    drop(rows);
    let since = datetime(since_minute);
    let mut tx = pool.begin().await?;
    for (sql, from) in [
        (
            "DELETE FROM event_counts_minute WHERE env_id = ? AND minute >= ?",
            since,
        ),
        (
            "DELETE FROM country_counts_minute WHERE env_id = ? AND minute >= ?",
            since,
        ),
        (
            "DELETE FROM event_counts_second WHERE env_id = ? AND second >= ?",
            since,
        ),
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
    // The new counts go in with the deletes: a failure anywhere leaves the
    // previous counts in place, never empty ones.
    add_deltas(&mut tx, &d).await?;
    tx.commit().await?;
    Ok(total)
}
