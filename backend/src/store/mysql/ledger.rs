//! The delivery ledger on a shard: reports, dead letters, and the reads.
//! (Writes add their own rows in `Shards::write`.)

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use chrono::NaiveDateTime;
use protocol::{DeadLetter, Sample};
use sqlx::{MySql, QueryBuilder, Row};

use super::shards::{delivery_insert, Shards};
use crate::{
    delivery::{self, Counts, DeadAcceptance, Entry},
    error::Result,
    model::{datetime, Shard},
    store::LedgerStore,
};

const SUM_DELIVERY: &str = "SELECT minute, outcome, CAST(SUM(n) AS UNSIGNED) FROM delivery \
    WHERE env_id = ? AND minute >= ? AND minute < ? GROUP BY minute, outcome";
/// Dead letters by minute and acceptance; one was replayed when its event
/// is stored with its receive time.
const SUM_DEAD_LETTERS: &str =
    "SELECT d.minute, d.acceptance, CAST(MAX(d.n) AS UNSIGNED), COUNT(*), \
    CAST(COALESCE(SUM(e.id IS NOT NULL), 0) AS UNSIGNED) FROM dead_letters d \
    LEFT JOIN events e ON e.env_id = d.env_id AND e.id = d.id AND e.received_at = d.received_at \
    WHERE d.env_id = ? AND d.minute >= ? AND d.minute < ? GROUP BY d.minute, d.acceptance";
const INSERT_SAMPLES: &str =
    "INSERT IGNORE INTO rejected_samples (env_id, source, seq, received_at, code, message, body) ";
/// Minutes with write rows not summed yet (`delivery_env_summable` holds
/// only those under `summable = 1`, so older, summed minutes cost nothing).
const UNSUMMED_MINUTES: &str = "SELECT DISTINCT minute FROM delivery \
    WHERE env_id = ? AND summable = 1 AND minute < ? ORDER BY minute LIMIT ?";
const LOCK_SUMMABLE: &str = "SELECT outcome, source, n FROM delivery \
    WHERE env_id = ? AND minute = ? AND summable IN (1, 2) FOR UPDATE";
const INSERT_DEAD_LETTERS: &str =
    "INSERT IGNORE INTO dead_letters (env_id, id, received_at, minute, acceptance, n) ";

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
    ) -> Result<u64> {
        let pool = self.pool(shard)?;
        let mut new = 0;
        for chunk in letters.chunks(500) {
            let mut insert = QueryBuilder::<MySql>::new(INSERT_DEAD_LETTERS);
            insert.push_values(chunk, |mut b, letter| {
                let (acceptance, n) = delivery::dead_letter_acceptance(letter);
                b.push_bind(env_id)
                    .push_bind(protocol::event_key(&letter.id).to_vec())
                    .push_bind(ms_datetime(letter.received_at))
                    .push_bind(datetime(delivery::minute_of(letter.received_at)))
                    .push_bind(acceptance.to_vec())
                    .push_bind(n);
            });
            new += insert.build().execute(&pool).await?.rows_affected();
        }
        Ok(new)
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
            .bind(max_minutes)
            .fetch_all(&pool)
            .await?;
        let mut removed = 0;
        for minute in minutes {
            // The locking read holds the minute's write rows (and the gaps
            // between them) until the sum replaces them: a write counting
            // a late event into this minute waits for it, never goes lost.
            // Exactly the rows read are deleted.
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(LOCK_SUMMABLE)
                .bind(env_id)
                .bind(minute)
                .fetch_all(&mut *tx)
                .await?;
            let mut sums: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            let mut read: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(rows.len());
            for row in &rows {
                let outcome: Vec<u8> = row.try_get(0)?;
                *sums.entry(outcome.clone()).or_default() += row.try_get::<u64, _>(2)?;
                read.push((outcome, row.try_get(1)?));
            }
            for chunk in read.chunks(500) {
                let mut delete = QueryBuilder::<MySql>::new("DELETE FROM delivery WHERE env_id = ");
                delete
                    .push_bind(env_id)
                    .push(" AND minute = ")
                    .push_bind(minute)
                    .push(" AND (outcome, source) IN (");
                let mut list = delete.separated(", ");
                for (outcome, source) in chunk {
                    list.push("(")
                        .push_bind_unseparated(outcome.as_slice())
                        .push_unseparated(", ")
                        .push_bind_unseparated(source.as_slice())
                        .push_unseparated(")");
                }
                delete.push(")");
                delete.build().execute(&mut *tx).await?;
            }
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
            removed += (read.len() as u64).saturating_sub(entries.len() as u64);
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
        let mut dead = Vec::with_capacity(rows.len());
        for row in rows {
            let minute: NaiveDateTime = row.try_get(0)?;
            let acceptance: Vec<u8> = row.try_get(1)?;
            let letters: i64 = row.try_get(3)?;
            dead.push(DeadAcceptance {
                minute: minute.and_utc().timestamp(),
                acceptance: <[u8; 16]>::try_from(acceptance.as_slice()).unwrap_or_default(),
                n: row.try_get(2)?,
                letters: letters.max(0) as u64,
                stored: row.try_get(4)?,
            });
        }
        // Which of the never-stored ones a stored part of them counted.
        let unstored: Vec<&DeadAcceptance> = dead.iter().filter(|d| d.stored == 0).collect();
        let mut keyed = HashSet::new();
        for chunk in unstored.chunks(500) {
            let mut select =
                QueryBuilder::<MySql>::new("SELECT source FROM delivery WHERE env_id = ");
            select
                .push_bind(env_id)
                .push(" AND minute >= ")
                .push_bind(start)
                .push(" AND minute < ")
                .push_bind(end)
                .push(" AND outcome = 'accepted' AND source IN (");
            let mut list = select.separated(", ");
            for d in chunk {
                list.push_bind(d.acceptance.to_vec());
            }
            select.push(")");
            for row in select.build().fetch_all(&pool).await? {
                let source: Vec<u8> = row.try_get(0)?;
                if let Ok(source) = <[u8; 16]>::try_from(source.as_slice()) {
                    keyed.insert(source);
                }
            }
        }
        delivery::add_dead_letters(&mut out, &dead, &keyed);
        Ok(out)
    }
}
