//! Per-environment, per-minute, per-event-name counts, kept off the hot path.
//!
//! Writers add in-memory deltas; a background task flushes them every
//! second as one multi-row upsert per shard. Counts are derived data: a crash
//! between an insert and the next flush loses at most that second's deltas,
//! and `backend counters rebuild` recomputes them from the events table.

use std::{collections::BTreeMap, sync::Mutex};

use chrono::{DateTime, NaiveDateTime};
use sqlx::{mysql::MySqlPool, MySql, QueryBuilder};

use crate::{
    catalog::Snapshot,
    error::Result,
    shards::{MinuteCounts, Shards},
};

/// (shard id, env id, name id, minute as unix seconds) → events inserted.
type Deltas = BTreeMap<(u32, u32, u32, i64), u64>;

#[derive(Default)]
pub struct Counters {
    pending: Mutex<Deltas>,
}

const UPSERT_COUNTS: &str = "INSERT INTO event_counts_minute (env_id, minute, name_id, events) ";
// VALUES() is deprecated in MySQL 8.0.20+ but still works there, and the
// row-alias replacement is not understood by MariaDB.
const ON_DUPLICATE: &str = " ON DUPLICATE KEY UPDATE events = events + VALUES(events)";

fn minute(unix_seconds: i64) -> NaiveDateTime {
    DateTime::from_timestamp(unix_seconds, 0)
        .unwrap_or_default()
        .naive_utc()
}

impl Counters {
    pub fn record(&self, shard_id: u32, env_id: u32, counts: &MinuteCounts) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (&(name_id, minute), &n) in counts {
            *pending
                .entry((shard_id, env_id, name_id, minute))
                .or_default() += n;
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn restore(&self, deltas: Deltas) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (key, n) in deltas {
            *pending.entry(key).or_default() += n;
        }
    }

    /// Write all pending deltas; what fails is kept for the next flush.
    /// Returns how many shards failed.
    pub async fn flush(&self, snapshot: &Snapshot, shards: &Shards) -> usize {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_shard: BTreeMap<u32, Deltas> = BTreeMap::new();
        for (key, n) in taken {
            by_shard.entry(key.0).or_default().insert(key, n);
        }
        let mut failed = 0;
        for (shard_id, deltas) in by_shard {
            let Some(shard) = snapshot.shards.get(&shard_id) else {
                tracing::warn!(
                    shard_id,
                    "dropping counter deltas of a shard no longer in the catalog"
                );
                continue;
            };
            let result = match shards.pool(shard) {
                Ok(pool) => upsert(&pool, &deltas).await,
                Err(e) => Err(e),
            };
            if let Err(error) = result {
                tracing::warn!(shard = %shard.name, %error, "counter flush failed; will retry");
                self.restore(deltas);
                failed += 1;
            }
        }
        failed
    }
}

async fn upsert(pool: &MySqlPool, deltas: &Deltas) -> Result<()> {
    // Keys are sorted (BTreeMap), so concurrent flushers from several
    // processes lock rows in the same order and do not deadlock each other.
    let rows: Vec<_> = deltas.iter().collect();
    for chunk in rows.chunks(1000) {
        let mut q = QueryBuilder::<MySql>::new(UPSERT_COUNTS);
        q.push_values(chunk, |mut b, (&(_, env_id, name_id, m), &n)| {
            b.push_bind(env_id)
                .push_bind(minute(m))
                .push_bind(name_id)
                .push_bind(n);
        });
        q.push(ON_DUPLICATE);
        q.build().execute(pool).await?;
    }
    Ok(())
}

const DELETE_RANGE: &str = "DELETE FROM event_counts_minute WHERE env_id = ? AND minute >= ?";
const REBUILD_RANGE: &str = "INSERT INTO event_counts_minute (env_id, minute, name_id, events) \
    SELECT env_id, DATE_FORMAT(ts, '%Y-%m-%d %H:%i:00'), name_id, COUNT(*) \
    FROM events WHERE env_id = ? AND ts >= ? GROUP BY env_id, DATE_FORMAT(ts, '%Y-%m-%d %H:%i:00'), name_id";

/// Recompute an environment's counts from `since` (rounded down to the
/// minute) on one shard. Returns the number of events counted.
pub async fn rebuild(pool: &MySqlPool, env_id: u32, since_ms: i64) -> Result<u64> {
    let since = minute(since_ms.div_euclid(60_000) * 60);
    let mut tx = pool.begin().await?;
    sqlx::query(DELETE_RANGE)
        .bind(env_id)
        .bind(since)
        .execute(&mut *tx)
        .await?;
    sqlx::query(REBUILD_RANGE)
        .bind(env_id)
        .bind(since)
        .execute(&mut *tx)
        .await?;
    let (total,): (u64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(events), 0) AS UNSIGNED) FROM event_counts_minute WHERE env_id = ? AND minute >= ?",
    )
    .bind(env_id)
    .bind(since)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(total)
}
