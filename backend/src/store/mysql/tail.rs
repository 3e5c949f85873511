//! The live tail's reads from a shard: keys by stored time (an index-only
//! scan of `events_env_stored`), the rows of new keys whole from
//! `events_full`, and the sampled refusals.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime};
use protocol::Envelope;
use sqlx::{MySql, QueryBuilder, Row as _};

use super::shards::{stored_envelope, Shards, HISTORY_COLUMNS};
use crate::{
    error::{Error, Result},
    model::Shard,
    store::{RejectedSample, TailKey, TailStore},
};

/// Keys after (stored_at, id) in index order. The secondary index holds the
/// primary key, so this reads (env_id, stored_at, id) only.
const STORED_KEYS: &str = "SELECT stored_at, id FROM events \
    WHERE env_id = ? AND stored_at >= ? AND (stored_at > ? OR id > ?) \
    ORDER BY stored_at, id LIMIT ?";
const REJECTED: &str = "SELECT source, seq, stored_at, received_at, code, message, body \
    FROM rejected_samples WHERE env_id = ? AND stored_at >= ? \
    ORDER BY stored_at, source, seq LIMIT ?";

/// The first page of keys and the refusals in one statement: `kind` 0 is a
/// key (stored_at, id), 1 a sample (stored_at, source, seq, ...).
const CHANGES: &str = "(SELECT CAST(0 AS SIGNED) AS kind, stored_at, id, CAST(NULL AS SIGNED) AS seq, NULL AS received_at, \
    NULL AS code, NULL AS message, NULL AS body FROM events \
    WHERE env_id = ? AND stored_at >= ? ORDER BY stored_at, id LIMIT ?) \
    UNION ALL (SELECT 1, stored_at, source, CAST(seq AS SIGNED), received_at, code, message, body \
    FROM rejected_samples WHERE env_id = ? AND stored_at >= ? \
    ORDER BY stored_at, source, seq LIMIT ?) ORDER BY kind, stored_at, id";

fn datetime_ms(ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

fn ms(at: NaiveDateTime) -> i64 {
    at.and_utc().timestamp_millis()
}

fn key16(bytes: &[u8]) -> Result<[u8; 16]> {
    <[u8; 16]>::try_from(bytes).map_err(|_| Error::Internal("a stored key is not 16 bytes".into()))
}

#[async_trait]
impl TailStore for Shards {
    async fn clock(&self, shard: &Shard) -> Result<i64> {
        let pool = self.counters_pool(shard)?;
        let now: NaiveDateTime = sqlx::query_scalar("SELECT NOW(3)").fetch_one(&pool).await?;
        Ok(ms(now))
    }

    async fn stored_keys(
        &self,
        shard: &Shard,
        env_id: u32,
        since: i64,
        after: Option<TailKey>,
        limit: u32,
    ) -> Result<Vec<TailKey>> {
        let pool = self.counters_pool(shard)?;
        // No `after`: everything from `since` on (any id is > the empty one).
        let (after_at, after_id) = match after {
            Some((at, id)) => (at.max(since), id.to_vec()),
            None => (since, Vec::new()),
        };
        let rows = sqlx::query(STORED_KEYS)
            .bind(env_id)
            .bind(datetime_ms(since))
            .bind(datetime_ms(after_at))
            .bind(after_id)
            .bind(limit)
            .fetch_all(&pool)
            .await?;
        rows.iter()
            .map(|row| {
                let at: NaiveDateTime = row.try_get(0)?;
                let id: Vec<u8> = row.try_get(1)?;
                Ok((ms(at), key16(&id)?))
            })
            .collect()
    }

    async fn events(&self, shard: &Shard, env_id: u32, keys: &[[u8; 16]]) -> Result<Vec<Envelope>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.counters_pool(shard)?;
        let mut select = QueryBuilder::<MySql>::new(format!(
            "SELECT {HISTORY_COLUMNS} FROM events_full WHERE env_id = "
        ));
        select.push_bind(env_id).push(" AND id IN (");
        let mut list = select.separated(", ");
        for key in keys {
            list.push_bind(&key[..]);
        }
        select.push(")");
        let rows = select.build().fetch_all(&pool).await?;
        rows.iter()
            .map(|row| stored_envelope(row, env_id))
            .collect()
    }

    async fn changes(
        &self,
        shard: &Shard,
        env_id: u32,
        events: (i64, u32),
        rejected: (i64, u32),
    ) -> Result<(Vec<TailKey>, Vec<RejectedSample>)> {
        let pool = self.counters_pool(shard)?;
        let rows = sqlx::query(CHANGES)
            .bind(env_id)
            .bind(datetime_ms(events.0))
            .bind(events.1)
            .bind(env_id)
            .bind(datetime_ms(rejected.0))
            .bind(rejected.1)
            .fetch_all(&pool)
            .await?;
        let (mut keys, mut samples) = (Vec::new(), Vec::new());
        for row in &rows {
            let kind: i64 = row.try_get(0)?;
            let at: NaiveDateTime = row.try_get(1)?;
            let id: Vec<u8> = row.try_get(2)?;
            if kind == 0 {
                keys.push((ms(at), key16(&id)?));
                continue;
            }
            let text = |i: usize| -> Result<String> {
                let bytes: Option<Vec<u8>> = row.try_get(i)?;
                Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
            };
            let seq: Option<i64> = row.try_get(3)?;
            let received_at: Option<NaiveDateTime> = row.try_get(4)?;
            samples.push(RejectedSample {
                source: key16(&id)?,
                seq: u16::try_from(seq.unwrap_or_default()).unwrap_or_default(),
                stored_at: ms(at),
                received_at: received_at.map(ms).unwrap_or_default(),
                code: text(5)?,
                message: text(6)?,
                body: text(7)?,
            });
        }
        Ok((keys, samples))
    }

    async fn rejected_since(
        &self,
        shard: &Shard,
        env_id: u32,
        since: i64,
        limit: u32,
    ) -> Result<Vec<RejectedSample>> {
        let pool = self.counters_pool(shard)?;
        let rows = sqlx::query(REJECTED)
            .bind(env_id)
            .bind(datetime_ms(since))
            .bind(limit)
            .fetch_all(&pool)
            .await?;
        rows.iter()
            .map(|row| {
                let source: Vec<u8> = row.try_get(0)?;
                let text = |i: usize| -> Result<String> {
                    let bytes: Vec<u8> = row.try_get(i)?;
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                };
                Ok(RejectedSample {
                    source: key16(&source)?,
                    seq: row.try_get(1)?,
                    stored_at: ms(row.try_get(2)?),
                    received_at: ms(row.try_get(3)?),
                    code: text(4)?,
                    message: text(5)?,
                    body: text(6)?,
                })
            })
            .collect()
    }
}
