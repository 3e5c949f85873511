//! The stats API's reads from a shard's counter tables.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde_json::json;
use sqlx::{mysql::MySqlPool, Row};

use super::shards::Shards;
use crate::{
    error::Result,
    model::{self, datetime},
    model::{Metric, Shard},
    store::{Buckets, NamedCount, Second, StatsStore, Summary, SummaryRange},
};

const METRIC_TOTALS: &str =
    "SELECT metric_id, CAST(SUM(events) AS UNSIGNED), SUM(total) FROM metric_values_minute \
    WHERE env_id = ? AND minute >= ? AND minute < ? GROUP BY metric_id";
const SUM_MINUTES: &str =
    "SELECT CAST(COALESCE(SUM(events), 0) AS UNSIGNED) FROM event_counts_minute \
    WHERE env_id = ? AND minute >= ? AND minute < ?";
const BY_EVENT: &str =
    "SELECT n.name, CAST(SUM(c.events) AS UNSIGNED) AS total, n.event_type FROM event_counts_minute c \
    JOIN event_names n ON n.id = c.name_id WHERE c.env_id = ? AND c.minute >= ? AND c.minute < ? \
    GROUP BY c.name_id, n.name, n.event_type ORDER BY total DESC, n.name, n.event_type LIMIT 100";
const BY_TYPE: &str =
    "SELECT n.event_type, CAST(SUM(c.events) AS UNSIGNED) AS total FROM event_counts_minute c \
    JOIN event_names n ON n.id = c.name_id WHERE c.env_id = ? AND c.minute >= ? AND c.minute < ? \
    GROUP BY n.event_type ORDER BY total DESC, n.event_type";
const BY_COUNTRY: &str = "SELECT country, CAST(SUM(events) AS UNSIGNED) AS total FROM country_counts_minute \
    WHERE env_id = ? AND minute >= ? AND minute < ? GROUP BY country ORDER BY total DESC, country LIMIT 100";
const SKETCHES: &str =
    "SELECT sketch FROM unique_sketches WHERE env_id = ? AND period = ? AND kind = ? AND start >= ? AND start < ?";
const LIVE_METRICS: &str =
    "SELECT CAST(UNIX_TIMESTAMP(second) AS SIGNED), metric_id, events, total \
    FROM metric_values_second WHERE env_id = ? AND second >= ?";
const LIVE_SECONDS: &str =
    "SELECT CAST(UNIX_TIMESTAMP(c.second) AS SIGNED), n.name, c.events FROM event_counts_second c \
    JOIN event_names n ON n.id = c.name_id WHERE c.env_id = ? AND c.second >= ? ORDER BY c.second";

/// Each metric's value over a range (every metric listed; `null` for an average of nothing).
async fn metric_values(
    pool: &MySqlPool,
    metrics: &[Metric],
    env_id: u32,
    range: SummaryRange,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut sums: HashMap<u32, (u64, f64)> = HashMap::new();
    for row in sqlx::query(METRIC_TOTALS)
        .bind(env_id)
        .bind(range.start)
        .bind(range.end)
        .fetch_all(pool)
        .await?
    {
        sums.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
    }
    Ok(metrics
        .iter()
        .map(|m| {
            let (events, total) = sums.get(&m.id).copied().unwrap_or_default();
            (m.name.clone(), json!(m.value(events, total)))
        })
        .collect())
}

fn named_counts(rows: Vec<sqlx::mysql::MySqlRow>) -> Result<Vec<NamedCount>> {
    rows.into_iter()
        .map(|row| {
            let name: Vec<u8> = row.try_get(0)?;
            let event_type = match row.columns().len() {
                3 => {
                    protocol::EventType::from_code(row.try_get(2)?).map(protocol::EventType::as_str)
                }
                _ => None,
            };
            Ok(NamedCount {
                name: String::from_utf8_lossy(&name).into_owned(),
                count: row.try_get(1)?,
                event_type,
            })
        })
        .collect()
}

/// Approximate distinct users and sessions in [from, to): hourly sketches
/// merged for ranges up to two days, daily ones beyond (the range is widened
/// to whole hours or days).
async fn uniques(pool: &MySqlPool, env_id: u32, from: i64, to: i64) -> Result<(u64, u64)> {
    let (period, length) = model::sketch_period(from, to);
    let start = datetime(from.div_euclid(1000).div_euclid(length) * length);
    let end = datetime(to.div_euclid(1000));
    let mut out = [0u64; 2];
    for (slot, kind) in [model::KIND_USERS, model::KIND_SESSIONS]
        .into_iter()
        .enumerate()
    {
        let mut merged = model::Sketch::default();
        let blobs: Vec<Vec<u8>> = sqlx::query_scalar(SKETCHES)
            .bind(env_id)
            .bind(period)
            .bind(kind)
            .bind(start)
            .bind(end)
            .fetch_all(pool)
            .await?;
        for blob in blobs {
            if let Some(sketch) = model::decode_sketch(&blob) {
                merged.merge(&sketch);
            }
        }
        out[slot] = merged.estimate() as u64;
    }
    Ok((out[0], out[1]))
}

/// The counts table and its time column for buckets of `step` seconds.
fn counts_table(step: i64) -> (&'static str, &'static str) {
    if step == 1 {
        ("event_counts_second", "second")
    } else {
        ("event_counts_minute", "minute")
    }
}

#[async_trait]
impl StatsStore for Shards {
    async fn summary(
        &self,
        shard: &Shard,
        env_id: u32,
        range: SummaryRange,
        metrics: &[Metric],
    ) -> Result<Summary> {
        let pool = self.counters_pool(shard)?;
        let (start, end) = (range.start, range.end);
        let events: u64 = sqlx::query_scalar(SUM_MINUTES)
            .bind(env_id)
            .bind(start)
            .bind(end)
            .fetch_one(&pool)
            .await?;
        let by_event = named_counts(
            sqlx::query(BY_EVENT)
                .bind(env_id)
                .bind(start)
                .bind(end)
                .fetch_all(&pool)
                .await?,
        )?;
        let by_country = named_counts(
            sqlx::query(BY_COUNTRY)
                .bind(env_id)
                .bind(start)
                .bind(end)
                .fetch_all(&pool)
                .await?,
        )?;
        let (users, sessions) = uniques(&pool, env_id, range.from_ms, range.to_ms).await?;
        let mut by_type = Vec::new();
        for row in sqlx::query(BY_TYPE)
            .bind(env_id)
            .bind(start)
            .bind(end)
            .fetch_all(&pool)
            .await?
        {
            let code: u8 = row.try_get(0)?;
            let name = protocol::EventType::from_code(code)
                .map(protocol::EventType::as_str)
                .unwrap_or("unknown");
            by_type.push((name, row.try_get::<u64, _>(1)?));
        }
        Ok(Summary {
            events,
            by_event,
            by_country,
            by_type,
            users,
            sessions,
            metrics: metric_values(&pool, metrics, env_id, range).await?,
        })
    }

    async fn event_series(
        &self,
        shard: &Shard,
        env_id: u32,
        event: Option<&str>,
        buckets: Buckets,
    ) -> Result<Option<BTreeMap<i64, u64>>> {
        let pool = self.counters_pool(shard)?;
        let Buckets {
            step,
            bucket_start,
            end,
        } = buckets;
        let (table, column) = counts_table(step);
        let name_id: Option<u32> = match event {
            Some(name) => {
                let id =
                    sqlx::query_scalar("SELECT id FROM event_names WHERE env_id = ? AND name = ?")
                        .bind(env_id)
                        .bind(name.as_bytes())
                        .fetch_optional(&pool)
                        .await?;
                match id {
                    Some(id) => Some(id),
                    None => return Ok(None),
                }
            }
            None => None,
        };
        let sql = format!(
            "SELECT CAST(FLOOR(UNIX_TIMESTAMP({column}) / {step}) * {step} AS SIGNED) AS bucket, CAST(SUM(events) AS UNSIGNED) \
             FROM {table} WHERE env_id = ? AND {column} >= ? AND {column} < ?{} GROUP BY bucket",
            if name_id.is_some() { " AND name_id = ?" } else { "" }
        );
        let mut query = sqlx::query(&sql)
            .bind(env_id)
            .bind(datetime(bucket_start))
            .bind(datetime(end));
        if let Some(id) = name_id {
            query = query.bind(id);
        }
        let mut sparse = BTreeMap::new();
        for row in query.fetch_all(&pool).await? {
            sparse.insert(row.try_get::<i64, _>(0)?, row.try_get::<u64, _>(1)?);
        }
        Ok(Some(sparse))
    }

    async fn metric_series(
        &self,
        shard: &Shard,
        env_id: u32,
        metric_id: u32,
        buckets: Buckets,
    ) -> Result<HashMap<i64, (u64, f64)>> {
        let pool = self.counters_pool(shard)?;
        let Buckets {
            step,
            bucket_start,
            end,
        } = buckets;
        let (table, column) = if step == 1 {
            ("metric_values_second", "second")
        } else {
            ("metric_values_minute", "minute")
        };
        let sql = format!(
            "SELECT CAST(FLOOR(UNIX_TIMESTAMP({column}) / {step}) * {step} AS SIGNED) AS bucket, \
             CAST(SUM(events) AS UNSIGNED), SUM(total) FROM {table} \
             WHERE env_id = ? AND metric_id = ? AND {column} >= ? AND {column} < ? GROUP BY bucket"
        );
        let mut sparse: HashMap<i64, (u64, f64)> = HashMap::new();
        for row in sqlx::query(&sql)
            .bind(env_id)
            .bind(metric_id)
            .bind(datetime(bucket_start))
            .bind(datetime(end))
            .fetch_all(&pool)
            .await?
        {
            sparse.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
        }
        Ok(sparse)
    }

    async fn seconds(
        &self,
        shard: &Shard,
        env_id: u32,
        metrics: &[Metric],
        since: i64,
        until: i64,
    ) -> Result<Vec<Second>> {
        let pool = self.counters_pool(shard)?;
        let mut by_second = Second::zeroed(since, until);
        for row in sqlx::query(LIVE_SECONDS)
            .bind(env_id)
            .bind(datetime(since))
            .fetch_all(&pool)
            .await?
        {
            let t: i64 = row.try_get(0)?;
            let name: Vec<u8> = row.try_get(1)?;
            let n: u32 = row.try_get(2)?;
            if let Some(second) = by_second.get_mut(&t) {
                second.total += u64::from(n);
                *second
                    .by_event
                    .entry(String::from_utf8_lossy(&name).into_owned())
                    .or_default() += u64::from(n);
            }
        }
        if !metrics.is_empty() {
            for row in sqlx::query(LIVE_METRICS)
                .bind(env_id)
                .bind(datetime(since))
                .fetch_all(&pool)
                .await?
            {
                let (t, id, events, total): (i64, u32, u32, f64) = (
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                );
                let metric = metrics.iter().find(|m| m.id == id);
                if let (Some(second), Some(metric)) = (by_second.get_mut(&t), metric) {
                    if let Some(value) = metric.value(u64::from(events), total) {
                        second.metrics.insert(metric.name.clone(), value);
                    }
                }
            }
        }
        Ok(by_second.into_values().collect())
    }
}
