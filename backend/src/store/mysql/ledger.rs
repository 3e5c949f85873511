//! The delivery ledger on a shard: reports, dead letters, and the reads.
//! (Writes add their own rows in `Shards::write`.)

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::NaiveDateTime;
use protocol::{DeadLetter, Sample};
use sqlx::{MySql, QueryBuilder, Row};

use super::shards::{delivery_insert, Shards};
use crate::{
    delivery::{self, Counts, Entry},
    error::Result,
    model::{datetime, Shard},
    store::LedgerStore,
};

const SUM_DELIVERY: &str = "SELECT minute, outcome, CAST(SUM(n) AS UNSIGNED) FROM delivery \
    WHERE env_id = ? AND minute >= ? AND minute < ? GROUP BY minute, outcome";
/// A dead letter was replayed when its event is stored with its receive time.
const SUM_DEAD_LETTERS: &str = "SELECT d.minute, COUNT(*), \
    CAST(COALESCE(SUM(e.id IS NOT NULL), 0) AS UNSIGNED) FROM dead_letters d \
    LEFT JOIN events e ON e.env_id = d.env_id AND e.id = d.id AND e.received_at = d.received_at \
    WHERE d.env_id = ? AND d.minute >= ? AND d.minute < ? GROUP BY d.minute";
const INSERT_SAMPLES: &str =
    "INSERT IGNORE INTO rejected_samples (env_id, source, seq, received_at, code, message, body) ";
const UNSUMMED_MINUTES: &str = "SELECT minute FROM delivery \
    WHERE env_id = ? AND minute < ? AND summable = 1 AND source <> ? \
    GROUP BY minute ORDER BY minute LIMIT ?";
const LOCK_SUMMABLE: &str = "SELECT outcome, n FROM delivery \
    WHERE env_id = ? AND minute = ? AND summable = 1 FOR UPDATE";
const DELETE_SUMMABLE: &str =
    "DELETE FROM delivery WHERE env_id = ? AND minute = ? AND summable = 1";
const SELECT_STORED: &str = "SELECT id, received_at FROM events WHERE env_id = ";
const INSERT_DEAD_LETTERS: &str =
    "INSERT IGNORE INTO dead_letters (env_id, id, received_at, minute) ";

fn ms_datetime(ms: i64) -> NaiveDateTime {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

#[async_trait]
impl LedgerStore for Shards {
    async fn report(
        &self,
        shard: &Shard,
        env_id: u32,
        entries: &[Entry],
        samples: &[([u8; 16], Sample)],
    ) -> Result<()> {
        let pool = self.pool(shard)?;
        let mut tx = pool.begin().await?;
        for chunk in entries.chunks(500) {
            delivery_insert(env_id, chunk)
                .build()
                .execute(&mut *tx)
                .await?;
        }
        if !samples.is_empty() {
            let mut insert = QueryBuilder::<MySql>::new(INSERT_SAMPLES);
            let mut seq: BTreeMap<[u8; 16], u16> = BTreeMap::new();
            insert.push_values(samples, |mut b, (source, sample)| {
                let n = seq.entry(*source).or_default();
                b.push_bind(env_id)
                    .push_bind(&source[..])
                    .push_bind(*n)
                    .push_bind(ms_datetime(sample.received_at))
                    .push_bind(sample.code.as_str())
                    .push_bind(sample.message.as_str())
                    .push_bind(sample.body.as_str());
                *n += 1;
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        shard: &Shard,
        env_id: u32,
        letters: &[DeadLetter],
    ) -> Result<HashSet<usize>> {
        let pool = self.pool(shard)?;
        let mut stored = HashSet::new();
        for (c, chunk) in letters.chunks(500).enumerate() {
            let mut insert = QueryBuilder::<MySql>::new(INSERT_DEAD_LETTERS);
            insert.push_values(chunk, |mut b, letter| {
                b.push_bind(env_id)
                    .push_bind(protocol::event_key(&letter.id).to_vec())
                    .push_bind(ms_datetime(letter.received_at))
                    .push_bind(datetime(delivery::minute_of(letter.received_at)));
            });
            insert.build().execute(&pool).await?;
            let mut select = QueryBuilder::<MySql>::new(SELECT_STORED);
            select.push_bind(env_id).push(" AND id IN (");
            let mut list = select.separated(", ");
            for letter in chunk {
                list.push_bind(protocol::event_key(&letter.id).to_vec());
            }
            select.push(")");
            let mut found: HashMap<Vec<u8>, i64> = HashMap::new();
            for row in select.build().fetch_all(&pool).await? {
                let key: Vec<u8> = row.try_get(0)?;
                let at: NaiveDateTime = row.try_get(1)?;
                found.insert(key, at.and_utc().timestamp_millis());
            }
            for (i, letter) in chunk.iter().enumerate() {
                let key = protocol::event_key(&letter.id).to_vec();
                if found.get(&key) == Some(&letter.received_at) {
                    stored.insert(c * 500 + i);
                }
            }
        }
        Ok(stored)
    }

    async fn compact(
        &self,
        shard: &Shard,
        env_id: u32,
        before: i64,
        max_minutes: u32,
    ) -> Result<u64> {
        let pool = self.counters_pool(shard)?;
        let minutes: Vec<NaiveDateTime> = sqlx::query_scalar(UNSUMMED_MINUTES)
            .bind(env_id)
            .bind(datetime(before))
            .bind(&delivery::SUMMED[..])
            .bind(max_minutes)
            .fetch_all(&pool)
            .await?;
        let mut removed = 0;
        for minute in minutes {
            // The locking read holds the minute's write rows (and the gaps
            // between them) until the sum replaces them: a write counting
            // a late event into this minute waits for it, never goes lost.
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(LOCK_SUMMABLE)
                .bind(env_id)
                .bind(minute)
                .fetch_all(&mut *tx)
                .await?;
            let mut sums: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for row in &rows {
                *sums.entry(row.try_get(0)?).or_default() += row.try_get::<u64, _>(1)?;
            }
            let deleted = sqlx::query(DELETE_SUMMABLE)
                .bind(env_id)
                .bind(minute)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let entries: Vec<Entry> = sums
                .into_iter()
                .map(|(outcome, n)| Entry {
                    minute: minute.and_utc().timestamp(),
                    outcome: String::from_utf8_lossy(&outcome).into_owned(),
                    source: delivery::SUMMED,
                    n,
                    summable: true,
                })
                .collect();
            for chunk in entries.chunks(500) {
                delivery_insert(env_id, chunk)
                    .build()
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            removed += deleted.saturating_sub(entries.len() as u64);
        }
        Ok(removed)
    }

    async fn ledger(
        &self,
        shard: &Shard,
        env_id: u32,
        start: i64,
        end: i64,
    ) -> Result<BTreeMap<i64, Counts>> {
        let pool = self.counters_pool(shard)?;
        let (start, end) = (datetime(start), datetime(end));
        let mut out: BTreeMap<i64, Counts> = BTreeMap::new();
        let rows = sqlx::query(SUM_DELIVERY)
            .bind(env_id)
            .bind(start)
            .bind(end)
            .fetch_all(&pool)
            .await?;
        for row in rows {
            let minute: NaiveDateTime = row.try_get(0)?;
            let outcome: Vec<u8> = row.try_get(1)?;
            let n: u64 = row.try_get(2)?;
            let counts = out.entry(minute.and_utc().timestamp()).or_default();
            *counts
                .outcomes
                .entry(String::from_utf8_lossy(&outcome).into_owned())
                .or_default() += n;
        }
        let rows = sqlx::query(SUM_DEAD_LETTERS)
            .bind(env_id)
            .bind(start)
            .bind(end)
            .fetch_all(&pool)
            .await?;
        for row in rows {
            let minute: NaiveDateTime = row.try_get(0)?;
            let all: i64 = row.try_get(1)?;
            let replayed: u64 = row.try_get(2)?;
            let counts = out.entry(minute.and_utc().timestamp()).or_default();
            counts.dead_lettered += all.max(0) as u64;
            counts.replayed += replayed;
        }
        Ok(out)
    }
}
