//! The SQL of erasure (`crate::erasure`): the catalog's records and
//! suppressions, and the sweep of a shard.
//!
//! `events` has no index on `user_id` or `anonymous_id` (one would cost
//! every insert), so a sweep walks the environment's primary key in chunks
//! with plain (non-locking) reads, and deletes only the rows that matched,
//! by primary key: no insert ever waits for a lock the sweep holds on a row
//! it merely read.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::{
    erasure::{IdKind, Person},
    error::{Error, Result},
};

/// Rows read per chunk of a sweep.
pub const CHUNK_ROWS: u32 = 5_000;

/// What a sweep removed from one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub events: u64,
    /// Sampled refusals (the debugger's) whose body names the id.
    pub samples: u64,
    /// Rows read to find them.
    pub scanned: u64,
}

/// Records the start of an erasure (and the suppression, when asked for);
/// returns the record's id.
pub async fn start(
    pool: &MySqlPool,
    env_id: u32,
    kind: IdKind,
    person: &[u8; 32],
    requested_by: &str,
    suppress_days: u32,
) -> Result<u64> {
    let mut tx = pool.begin().await?;
    if suppress_days > 0 {
        sqlx::query(
            "INSERT INTO suppressions (env_id, person, until) \
             VALUES (?, ?, UTC_TIMESTAMP() + INTERVAL ? DAY) \
             ON DUPLICATE KEY UPDATE until = GREATEST(until, VALUES(until))",
        )
        .bind(env_id)
        .bind(&person[..])
        .bind(suppress_days)
        .execute(&mut *tx)
        .await?;
    }
    let id = sqlx::query(
        "INSERT INTO erasures (env_id, id_kind, person, requested_by, started_at, suppressed_until) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(3), IF(? > 0, UTC_TIMESTAMP() + INTERVAL ? DAY, NULL))",
    )
    .bind(env_id)
    .bind(kind.column())
    .bind(&person[..])
    .bind(requested_by.chars().take(200).collect::<String>())
    .bind(suppress_days)
    .bind(suppress_days)
    .execute(&mut *tx)
    .await?
    .last_insert_id();
    tx.commit().await?;
    Ok(id)
}

/// Marks an erasure finished with what it removed per shard.
pub async fn finish(pool: &MySqlPool, id: u64, removed: &BTreeMap<String, Removed>) -> Result<()> {
    let per_shard: BTreeMap<&str, u64> = removed
        .iter()
        .map(|(shard, r)| (shard.as_str(), r.events))
        .collect();
    let text = serde_json::to_string(&per_shard).map_err(|e| Error::Internal(e.to_string()))?;
    sqlx::query("UPDATE erasures SET finished_at = UTC_TIMESTAMP(3), removed = ? WHERE id = ?")
        .bind(text)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// One erasure record, as `backend user erasures` lists it.
#[derive(Debug, sqlx::FromRow)]
pub struct Record {
    pub id: u64,
    pub id_kind: String,
    pub requested_by: String,
    pub started_at: chrono::NaiveDateTime,
    pub finished_at: Option<chrono::NaiveDateTime>,
    pub removed: Option<String>,
    pub suppressed_until: Option<chrono::NaiveDateTime>,
}

pub async fn records(pool: &MySqlPool, env_id: u32) -> Result<Vec<Record>> {
    Ok(sqlx::query_as(
        "SELECT id, CAST(id_kind AS CHAR) AS id_kind, requested_by, started_at, finished_at, removed, suppressed_until \
         FROM erasures WHERE env_id = ? ORDER BY id",
    )
    .bind(env_id)
    .fetch_all(pool)
    .await?)
}

/// Every person suppressed now, per environment (for the catalog snapshot).
pub async fn active_suppressions(pool: &MySqlPool) -> Result<Vec<(u32, [u8; 32])>> {
    let rows = sqlx::query("SELECT env_id, person FROM suppressions WHERE until > UTC_TIMESTAMP()")
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let env_id: u32 = row.try_get(0)?;
        let person: Vec<u8> = row.try_get(1)?;
        if let Ok(person) = <[u8; 32]>::try_from(person.as_slice()) {
            out.push((env_id, person));
        }
    }
    Ok(out)
}

/// Deletes at most `limit` ended suppressions, earliest first (through
/// `suppressions_until`); returns how many went.
pub async fn prune_suppressions(pool: &MySqlPool, limit: u32) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM suppressions WHERE until <= UTC_TIMESTAMP() ORDER BY until LIMIT ?",
    )
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Removes `person`'s events of `env_id` from one shard: those naming them
/// by the id's own column, and alias events naming it as `previous_id`.
pub async fn erase_events(
    pool: &MySqlPool,
    env_id: u32,
    person: &Person,
    chunk: u32,
) -> Result<Removed> {
    // The person's match, with two binds: the sweep's read and its delete
    // both judge a row by it.
    let matches = format!("({} = ? OR previous_id = ?)", person.kind.column());
    let mut removed = Removed::default();
    let mut after: Vec<u8> = Vec::new();
    loop {
        let rows = sqlx::query(&format!(
            "SELECT id, CAST(IF({matches}, 1, 0) AS SIGNED) FROM events \
             WHERE env_id = ? AND id > ? ORDER BY id LIMIT ?"
        ))
        .bind(&person.id)
        .bind(&person.id)
        .bind(env_id)
        .bind(&after)
        .bind(chunk)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.try_get(0)?;
        removed.scanned += rows.len() as u64;
        let mut hits = Vec::new();
        for row in &rows {
            if row.try_get::<i64, _>(1)? == 1 {
                hits.push(row.try_get::<Vec<u8>, _>(0)?);
            }
        }
        if !hits.is_empty() {
            removed.events += delete_matching(pool, env_id, &hits, &matches, &person.id).await?;
        }
        if rows.len() < chunk as usize {
            break;
        }
    }
    removed.samples =
        sqlx::query("DELETE FROM rejected_samples WHERE env_id = ? AND LOCATE(?, body) > 0")
            .bind(env_id)
            .bind(&person.id)
            .execute(pool)
            .await?
            .rows_affected();
    Ok(removed)
}

/// Deletes the rows of `ids` that still match (a row rewritten since the
/// sweep read it is judged as it is now).
async fn delete_matching(
    pool: &MySqlPool,
    env_id: u32,
    ids: &[Vec<u8>],
    matches: &str,
    id: &str,
) -> Result<u64> {
    let sql = format!(
        "DELETE FROM events WHERE env_id = ? AND id IN ({}) AND {matches}",
        vec!["?"; ids.len()].join(", ")
    );
    let mut delete = sqlx::query(&sql).bind(env_id);
    for key in ids {
        delete = delete.bind(key);
    }
    Ok(delete
        .bind(id)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected())
}
