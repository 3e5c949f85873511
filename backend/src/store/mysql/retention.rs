//! Retention on a shard: chunked deletes of one environment's old rows,
//! each through an index that starts with `env_id` and the row's time.

use async_trait::async_trait;

use super::shards::Shards;
use crate::{
    error::Result,
    model::Shard,
    store::{Expiring, RetentionStore},
};

/// One chunk per statement, oldest first (single-table `DELETE … ORDER BY
/// … LIMIT` runs on MySQL and MariaDB alike). The range scan stops after
/// `LIMIT` rows, so it locks those and never reaches the recent end of the
/// index, where ingest inserts.
fn delete(table: Expiring) -> &'static str {
    match table {
        Expiring::Events => {
            "DELETE FROM events WHERE env_id = ? AND ts < ? ORDER BY ts LIMIT ?"
        }
        Expiring::Delivery => {
            "DELETE FROM delivery WHERE env_id = ? AND minute < ? ORDER BY minute LIMIT ?"
        }
        Expiring::DeadLetters => {
            "DELETE FROM dead_letters WHERE env_id = ? AND minute < ? ORDER BY minute LIMIT ?"
        }
        Expiring::RejectedSamples => {
            "DELETE FROM rejected_samples WHERE env_id = ? AND stored_at < ? ORDER BY stored_at LIMIT ?"
        }
    }
}

fn ms_datetime(ms: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

#[async_trait]
impl RetentionStore for Shards {
    async fn expire(
        &self,
        shard: &Shard,
        env_id: u32,
        table: Expiring,
        before: i64,
        limit: u32,
    ) -> Result<u64> {
        // The counter tables' small pool, with its short lock waits: a
        // delete that meets a lock gives up (the next pass goes on) rather
        // than queueing behind, or taking, the write path's connections.
        let pool = self.counters_pool(shard)?;
        // A ledger row covers its whole minute: only minutes that end
        // before the cutoff go.
        let before = match table {
            Expiring::Delivery | Expiring::DeadLetters => before.div_euclid(60_000) * 60_000,
            Expiring::Events | Expiring::RejectedSamples => before,
        };
        let done = sqlx::query(delete(table))
            .bind(env_id)
            .bind(ms_datetime(before))
            .bind(limit)
            .execute(&pool)
            .await?;
        Ok(done.rows_affected())
    }
}
