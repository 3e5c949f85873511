//! The export's reads from a shard: rows whole from `events_full` in
//! `(ts, id)` order, by keyset over the `events_env_ts (env_id, ts)` index
//! (whose entries carry the primary key, so they are in `(ts, id)` order),
//! written as lines straight from the rows ([`line`]).

use std::borrow::Cow;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use futures::TryStreamExt as _;
use protocol::EventType;
use sqlx::{
    mysql::{MySql, MySqlArguments, MySqlRow},
    Row as _,
};

use super::shards::{datetime, Shards, HISTORY_COLUMNS};
use crate::{
    error::{Error, Result},
    model::Shard,
    store::{ExportLines, ExportPage, ExportPosition, ExportStore, ExportWindow, WindowRead},
};

/// Rows after `(ts, id)`: a page, or a window streamed. Written as
/// `ts > ? OR (ts = ? AND id > ?)` rather than `(ts, id) > (?, ?)`: MariaDB
/// 10.11 does not use the index as a range for the row-value comparison.
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
    ) -> Result<ExportPage> {
        let pool = self.counters_pool(shard)?;
        let query = page_query();
        let rows = bind_page(&query, env_id, after, to, limit)
            .fetch_all(&pool)
            .await?;
        page(rows, env_id)
    }

    /// One query, its rows taken as they come: no per-page round trip, and
    /// the shard never waits for a page to be asked for. Memory stays a
    /// page's worth: while `pages` is full the rows are not read, and the
    /// shard's sending waits on the connection.
    async fn export_window(
        &self,
        shard: &Shard,
        env_id: u32,
        (after, to): (ExportPosition, i64),
        window: ExportWindow,
        pages: &tokio::sync::mpsc::Sender<Result<ExportPage>>,
    ) -> Result<WindowRead> {
        let pool = self.counters_pool(shard)?;
        let query = page_query();
        let mut rows = bind_page(&query, env_id, after, to, window.rows).fetch(&pool);
        let mut read = WindowRead {
            rows: 0,
            last: None,
        };
        let page_rows = window.page_rows.max(1) as usize;
        let mut batch = Vec::with_capacity(page_rows);
        loop {
            let row = rows.try_next().await?;
            let end = row.is_none();
            batch.extend(row);
            if batch.len() == page_rows || (end && !batch.is_empty()) {
                let page = page(
                    std::mem::replace(&mut batch, Vec::with_capacity(page_rows)),
                    env_id,
                )?;
                read.rows += page.rows as u64;
                read.last = page.last;
                if pages.send(Ok(page)).await.is_err() {
                    break;
                }
            }
            if end {
                break;
            }
        }
        Ok(read)
    }
}

fn bind_page(
    query: &str,
    env_id: u32,
    after: ExportPosition,
    to: i64,
    limit: u32,
) -> sqlx::query::Query<'_, MySql, MySqlArguments> {
    let at = datetime(after.ts);
    // No key: every row of that time (any id is > the empty one).
    let key: Vec<u8> = after.key.map_or(Vec::new(), |k| k.to_vec());
    sqlx::query(query)
        .bind(env_id)
        .bind(datetime(to))
        .bind(at)
        .bind(at)
        .bind(key)
        .bind(limit)
}

/// Rows as a page: where it ends from two columns of its last row, the
/// lines written when asked (by the export's writer, not its reader).
fn page(rows: Vec<MySqlRow>, env_id: u32) -> Result<ExportPage> {
    let last = match rows.last() {
        None => None,
        Some(row) => {
            let key: Vec<u8> = row.try_get(0)?;
            let ts: NaiveDateTime = row.try_get(4)?;
            Some(ExportPosition {
                ts: ts.and_utc().timestamp_millis(),
                key: Some(
                    <[u8; 16]>::try_from(key.as_slice())
                        .map_err(|_| Error::Internal("a stored key is not 16 bytes".into()))?,
                ),
            })
        }
    };
    Ok(ExportPage::new(last, rows.len(), move || {
        let mut ndjson = Vec::with_capacity(rows.len() * 800);
        let mut last_id = None;
        for row in &rows {
            last_id = Some(line(row, env_id, &mut ndjson)?);
            ndjson.push(b'\n');
        }
        Ok(ExportLines { ndjson, last_id })
    }))
}

/// A row of [`HISTORY_COLUMNS`] as the JSON `serde_json` writes for the
/// envelope `stored_envelope` reads from it — the same fields in the same
/// order, left out when `Envelope`'s serde leaves them out — without
/// building the envelope: its JSON columns (valid JSON, the database checks
/// it) pass through as the shard prints them instead of being parsed and
/// printed again, the export's largest cost. Returns the line's id.
/// (`backend/tests/export.rs` reads every field of such lines back.)
fn line(row: &MySqlRow, env_id: u32, out: &mut Vec<u8>) -> Result<String> {
    fn text(row: &MySqlRow, i: usize) -> Result<Option<Cow<'_, str>>> {
        let bytes: Option<&[u8]> = row.try_get(i)?;
        Ok(bytes.map(String::from_utf8_lossy))
    }
    fn string(out: &mut Vec<u8>, field: &str, value: &str) -> Result<()> {
        out.extend_from_slice(field.as_bytes());
        serde_json::to_writer(&mut *out, value)
            .map_err(|e| Error::Internal(format!("an event could not be encoded: {e}")))
    }
    fn json(row: &MySqlRow, i: usize) -> Result<Option<&str>> {
        let text: Option<&str> = row.try_get(i)?;
        Ok(text.map(str::trim).filter(|t| *t != "{}"))
    }
    let key: &[u8] = row.try_get(0)?;
    let id = match text(row, 1)? {
        Some(id) => id.into_owned(),
        None => protocol::uuid_of_key(
            <[u8; 16]>::try_from(key)
                .map_err(|_| Error::Internal("a stored key is not 16 bytes".into()))?,
        ),
    };
    let ms = |i: usize| -> Result<i64> {
        let at: NaiveDateTime = row.try_get(i)?;
        Ok(at.and_utc().timestamp_millis())
    };
    string(out, "{\"id\":", &id)?;
    out.extend_from_slice(format!(",\"env_id\":{env_id}").as_bytes());
    string(out, ",\"name\":", &text(row, 3)?.unwrap_or_default())?;
    let times = format!(",\"timestamp\":{},\"received_at\":{}", ms(4)?, ms(5)?);
    out.extend_from_slice(times.as_bytes());
    for (i, field) in [
        (6, ",\"user_id\":"),
        (7, ",\"anonymous_id\":"),
        (8, ",\"session_id\":"),
    ] {
        if let Some(value) = text(row, i)? {
            string(out, field, &value)?;
        }
    }
    out.extend_from_slice(b",\"properties\":");
    out.extend_from_slice(json(row, 11)?.unwrap_or("{}").as_bytes());
    out.extend_from_slice(b",\"context\":");
    out.extend_from_slice(json(row, 13)?.unwrap_or("{}").as_bytes());
    let event_type = EventType::from_code(row.try_get(2)?).unwrap_or_default();
    if event_type != EventType::Track {
        string(out, ",\"type\":", event_type.as_str())?;
    }
    if let Some(traits) = json(row, 12)? {
        out.extend_from_slice(b",\"traits\":");
        out.extend_from_slice(traits.as_bytes());
    }
    for (i, field) in [(9, ",\"group_id\":"), (10, ",\"previous_id\":")] {
        if let Some(value) = text(row, i)? {
            string(out, field, &value)?;
        }
    }
    out.push(b'}');
    Ok(id)
}
