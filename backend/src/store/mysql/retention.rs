//! Retention on a shard: chunked deletes of one environment's old rows.
//!
//! A chunk is one statement: a multi-table `DELETE` joining the table on
//! its primary key to a derived table of the chunk's keys, the oldest rows
//! read through the index that starts with `env_id` and the row's time
//! (index only, it holds the primary key). Both servers materialise that
//! derived table (a `LIMIT` keeps it from being merged, which is also what
//! lets a statement read the table it deletes from on MySQL), then delete
//! row by primary key.
//! Measured on MariaDB 10.11 (BENCHMARKS.md "Retention"): about half the
//! server's CPU per row of sending the keys back in a 5,000-value `IN`
//! list, the form before; a single `DELETE … WHERE env_id = ? AND ts < ?
//! ORDER BY ts LIMIT ?` is worse still, as MariaDB plans it on the primary
//! key with a filesort of every old row, per chunk. The outer `WHERE`
//! repeats the time bound, so a chunk removes only rows still past the
//! cutoff.

use async_trait::async_trait;
use chrono::NaiveDateTime;

use super::shards::Shards;
use crate::{
    error::Result,
    model::Shard,
    store::{Expiring, RetentionStore},
};

/// A table's time column and primary key after `env_id`.
fn layout(table: Expiring) -> (&'static str, &'static [&'static str]) {
    match table {
        Expiring::Events => ("ts", &["id"]),
        Expiring::Delivery => ("minute", &["minute", "outcome", "source"]),
        Expiring::DeadLetters => ("minute", &["id", "received_at"]),
        Expiring::RejectedSamples => ("stored_at", &["source", "seq"]),
    }
}

/// The chunk delete of `table` (binds: env id, cutoff, chunk rows, env id,
/// cutoff).
fn chunk_delete(table: Expiring) -> String {
    let (time, keys) = layout(table);
    let name = table.table();
    let on: String = keys.iter().map(|k| format!(" AND t.{k} = k.{k}")).collect();
    format!(
        "DELETE t FROM {name} t JOIN (SELECT {keys} FROM {name} WHERE env_id = ? AND {time} < ? \
         ORDER BY {time} LIMIT ?) k ON t.env_id = ?{on} WHERE t.{time} < ?",
        keys = keys.join(", ")
    )
}

fn ms_datetime(ms: i64) -> NaiveDateTime {
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
        let before = ms_datetime(before);
        let done = sqlx::query(&chunk_delete(table))
            .bind(env_id)
            .bind(before)
            .bind(limit)
            .bind(env_id)
            .bind(before)
            .execute(&pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_joins_on_the_whole_primary_key() {
        assert_eq!(
            chunk_delete(Expiring::DeadLetters),
            "DELETE t FROM dead_letters t JOIN (SELECT id, received_at FROM dead_letters \
             WHERE env_id = ? AND minute < ? ORDER BY minute LIMIT ?) k \
             ON t.env_id = ? AND t.id = k.id AND t.received_at = k.received_at WHERE t.minute < ?"
        );
    }
}
