//! The export's reads from a shard: rows whole from `events_full` in
//! `(ts, id)` order, by keyset over the `events_env_ts (env_id, ts)` index
//! (whose entries carry the primary key, so they are in `(ts, id)` order).

use async_trait::async_trait;
use chrono::NaiveDateTime;
use protocol::Envelope;
use sqlx::Row as _;

use super::shards::{datetime, stored_envelope, Shards, HISTORY_COLUMNS};
use crate::{
    error::{Error, Result},
    model::Shard,
    store::{ExportPosition, ExportStore},
};

/// One page after `(ts, id)`. Written as `ts > ? OR (ts = ? AND id > ?)`
/// rather than `(ts, id) > (?, ?)`: MariaDB 10.11 does not use the index as
/// a range for the row-value comparison.
fn page_query() -> String {
    format!(
        "SELECT {HISTORY_COLUMNS} FROM events_full \
         WHERE env_id = ? AND ts < ? AND (ts > ? OR (ts = ? AND id > ?)) \
         ORDER BY ts, id LIMIT ?"
    )
}

#[async_trait]
impl ExportStore for Shards {
    async fn event_time(&self, shard: &Shard, env_id: u32, key: [u8; 16]) -> Result<Option<i64>> {
        let pool = self.counters_pool(shard)?;
        let ts: Option<NaiveDateTime> =
            sqlx::query_scalar("SELECT ts FROM events WHERE env_id = ? AND id = ?")
                .bind(env_id)
                .bind(&key[..])
                .fetch_optional(&pool)
                .await?;
        Ok(ts.map(|ts| ts.and_utc().timestamp_millis()))
    }

    async fn export_page(
        &self,
        shard: &Shard,
        env_id: u32,
        after: ExportPosition,
        to: i64,
        limit: u32,
    ) -> Result<Vec<([u8; 16], Envelope)>> {
        let pool = self.counters_pool(shard)?;
        let at = datetime(after.ts);
        // No key: every row of that time (any id is > the empty one).
        let key: &[u8] = after.key.as_ref().map_or(&[], |k| &k[..]);
        let rows = sqlx::query(&page_query())
            .bind(env_id)
            .bind(datetime(to))
            .bind(at)
            .bind(at)
            .bind(key)
            .bind(limit)
            .fetch_all(&pool)
            .await?;
        rows.iter()
            .map(|row| {
                let key: Vec<u8> = row.try_get(0)?;
                let key = <[u8; 16]>::try_from(key.as_slice())
                    .map_err(|_| Error::Internal("a stored key is not 16 bytes".into()))?;
                Ok((key, stored_envelope(row, env_id)?))
            })
            .collect()
    }
}
