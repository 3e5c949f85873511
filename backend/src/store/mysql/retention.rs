//! Retention on a shard: chunked deletes of one environment's old rows.
//!
//! A chunk is two statements: the keys of the oldest rows, read through the
//! index that starts with `env_id` and the row's time (index only, it
//! holds the primary key), then a `DELETE` of those keys by primary key. A
//! single `DELETE … WHERE env_id = ? AND ts < ? ORDER BY ts LIMIT ?` is
//! valid SQL on both servers, but MariaDB 10.11 plans it on the primary key
//! with a filesort of every old row, per chunk (`EXPLAIN`; BENCHMARKS.md
//! "Retention" has what that cost). The `DELETE` repeats the time bound, so
//! it removes only rows still past the cutoff.

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::{mysql::MySqlRow, MySql, QueryBuilder, Row};

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

/// One key column's value, as read and bound again.
enum Value {
    Bytes(Vec<u8>),
    Time(NaiveDateTime),
    Number(u16),
}

fn value(row: &MySqlRow, i: usize, column: &str) -> Result<Value> {
    Ok(match column {
        "minute" | "received_at" => Value::Time(row.try_get(i)?),
        "seq" => Value::Number(row.try_get(i)?),
        _ => Value::Bytes(row.try_get(i)?),
    })
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
        let (time, keys) = layout(table);
        let name = table.table();
        let rows = sqlx::query(&format!(
            "SELECT {} FROM {name} WHERE env_id = ? AND {time} < ? ORDER BY {time} LIMIT ?",
            keys.join(", ")
        ))
        .bind(env_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut delete = QueryBuilder::<MySql>::new(format!("DELETE FROM {name} WHERE env_id = "));
        delete
            .push_bind(env_id)
            .push(format!(" AND {time} < "))
            .push_bind(before)
            .push(format!(" AND ({}) IN (", keys.join(", ")));
        let mut list = delete.separated(", ");
        for row in &rows {
            list.push("(");
            for (i, column) in keys.iter().enumerate() {
                if i > 0 {
                    list.push_unseparated(", ");
                }
                match value(row, i, column)? {
                    Value::Bytes(b) => list.push_bind_unseparated(b),
                    Value::Time(t) => list.push_bind_unseparated(t),
                    Value::Number(n) => list.push_bind_unseparated(n),
                };
            }
            list.push_unseparated(")");
        }
        delete.push(")");
        let done = delete.build().execute(&pool).await?;
        Ok(done.rows_affected())
    }
}
