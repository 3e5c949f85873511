//! The ports between the request path and storage: where events are
//! written ([`EventStore`]), where the catalog is read from
//! ([`CatalogSource`]), where counter deltas go ([`CounterStore`]) and where
//! the stats API reads them back ([`StatsStore`]).
//!
//! [`mysql`] is what `serve` uses; [`memory`] keeps everything in process,
//! for tests that need no database.

pub mod memory;
pub mod mysql;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::NaiveDateTime;
use protocol::Envelope;

use serde::Serialize;

use protocol::{DeadLetter, Sample};

use crate::{
    delivery::{Counts, Dropped, Entry},
    error::Result,
    model::{Counted, Deltas, Metric, Shard, Snapshot},
};

#[derive(Debug, Default)]
pub struct WriteOutcome {
    pub inserted: u64,
    pub duplicates: u64,
    /// One entry per row this write actually inserted (never duplicates).
    pub counted: Vec<Counted>,
}

/// The write path's storage: one environment's envelopes to one shard.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Write idempotently: envelopes whose id is already stored (or repeated
    /// in `envelopes`) are duplicates; `counted` lists exactly the new rows,
    /// with their contributions to `metrics`. The delivery ledger's rows of
    /// the write (`crate::delivery::count_write`, which also counts the
    /// `dropped` envelopes the write took but does not store) are stored with
    /// the rows, all or nothing.
    async fn write(
        &self,
        shard: &Shard,
        env_id: u32,
        envelopes: &[&Envelope],
        dropped: &[Dropped<'_>],
        metrics: &[Metric],
    ) -> Result<WriteOutcome>;

    /// Whether writes to this shard should fail at once (it could not be
    /// reached moments ago).
    fn recently_down(&self, _shard_id: u32) -> bool {
        false
    }

    /// The result of a write that finished (one that timed out is not noted).
    fn note_result(&self, _shard_id: u32, _result: &Result<WriteOutcome>) {}

    /// Release connections (graceful shutdown).
    async fn close(&self) {}
}

/// The delivery ledger's storage beyond what writes count themselves (see
/// [`EventStore::write`]): the doors' reports, dead letters, and the reads.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Ledger rows of one environment (`INSERT IGNORE`: a source counted
    /// twice counts once) and its doors' sampled refusals (by source and
    /// position, so a redelivered report adds none).
    async fn report(
        &self,
        shard: &Shard,
        env_id: u32,
        entries: &[Entry],
        samples: &[([u8; 16], Sample)],
    ) -> Result<()>;

    /// Dead-lettered events, once each (by id and receive time), with the
    /// acceptance they came in (the ledger counts it when no write did);
    /// returns how many were not recorded before (a repeated report adds none).
    async fn dead_letters(&self, shard: &Shard, env_id: u32, letters: &[DeadLetter])
        -> Result<u64>;

    /// Sums the write rows (`summable`) of up to `max_minutes` minutes
    /// before `before` (unix seconds) into one row per minute and outcome;
    /// returns how many rows went.
    async fn compact(
        &self,
        shard: &Shard,
        env_id: u32,
        before: i64,
        max_minutes: u32,
    ) -> Result<u64>;

    /// Summed counts per minute (unix seconds) of [start, end).
    async fn ledger(
        &self,
        shard: &Shard,
        env_id: u32,
        start: i64,
        end: i64,
    ) -> Result<BTreeMap<i64, Counts>>;
}

/// The tables retention deletes from, each by its own time: raw events by
/// event time (`ts`, through `events_env_ts`), the delivery ledger's rows
/// and dead letters by their receive minute, sampled refusals by when they
/// were stored. The counter tables keep their own retention; `contexts` and
/// `event_names` stay (shared by many events, a few rows per environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expiring {
    Events,
    Delivery,
    DeadLetters,
    RejectedSamples,
}

impl Expiring {
    pub const ALL: [Expiring; 4] = [
        Expiring::Events,
        Expiring::Delivery,
        Expiring::DeadLetters,
        Expiring::RejectedSamples,
    ];

    /// The table's name (a metric label, a column of `backend retention run`).
    pub fn table(self) -> &'static str {
        match self {
            Expiring::Events => "events",
            Expiring::Delivery => "delivery",
            Expiring::DeadLetters => "dead_letters",
            Expiring::RejectedSamples => "rejected_samples",
        }
    }
}

/// Where retention deletes (`crate::retention`).
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Delete at most `limit` rows of one environment's `table` older than
    /// `before` (unix ms), oldest first; returns how many went. Fewer than
    /// `limit`: no older row is left, or another process deleted some of
    /// the chunk meanwhile (its pass goes on; the next of this one does
    /// too). Idempotent: two processes deleting the same range delete each
    /// row once between them.
    async fn expire(
        &self,
        shard: &Shard,
        env_id: u32,
        table: Expiring,
        before: i64,
        limit: u32,
    ) -> Result<u64>;
}

/// Where the catalog cache (`crate::catalog::Catalog`) reads its snapshots from.
#[async_trait]
pub trait CatalogSource: Send + Sync {
    /// Shards, environments and metrics as of now (`read_at` set when the read started).
    async fn load(&self) -> Result<Snapshot>;

    /// The environment an active read token (by its SHA-256) belongs to.
    async fn read_token_env(&self, hash: &[u8; 32]) -> Result<Option<u32>>;

    /// The environment an active API key (by its SHA-256 hex) writes to.
    async fn api_key_env(&self, hash: &str) -> Result<Option<u32>>;

    /// Delete at most `limit` suppressions that have ended (those [`load`]
    /// no longer reads), earliest end first; returns how many went. The
    /// erasure records stay.
    ///
    /// [`load`]: CatalogSource::load
    async fn prune_suppressions(&self, limit: u32) -> Result<u64>;
}

/// Where counter deltas are persisted.
#[async_trait]
pub trait CounterStore: Send + Sync {
    /// Add one shard's deltas to its stored counts, all or nothing.
    async fn add(&self, shard: &Shard, deltas: &Deltas) -> Result<()>;

    /// Drop per-second counts before `second_cutoff` and the rest before
    /// `minute_cutoff` (unix seconds). Returns how many rows went.
    async fn prune(&self, shard: &Shard, second_cutoff: i64, minute_cutoff: i64) -> Result<u64>;
}

/// A summary's range: minute buckets [start, end), and the requested
/// [from_ms, to_ms) for the unique users and sessions.
#[derive(Debug, Clone, Copy)]
pub struct SummaryRange {
    pub from_ms: i64,
    pub to_ms: i64,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
}

/// A name and its count (`/v1/stats/summary`'s `by_event`, `by_country`).
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NamedCount {
    pub name: String,
    pub count: u64,
    /// The message type, for event names (`track`, `identify`, `page`, ...).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<protocol::EventType>)]
    pub event_type: Option<&'static str>,
}

/// One second of the live stream.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: i64,
    pub total: u64,
    pub by_event: BTreeMap<String, u64>,
    /// Each metric's value in this second (absent when no event contributed).
    pub metrics: BTreeMap<String, f64>,
}

impl Second {
    /// Every second of [since, until) (unix seconds) with nothing counted, by second.
    pub fn zeroed(since: i64, until: i64) -> BTreeMap<i64, Second> {
        (since..until)
            .map(|t| {
                (
                    t,
                    Second {
                        t: t * 1000,
                        total: 0,
                        by_event: BTreeMap::new(),
                        metrics: BTreeMap::new(),
                    },
                )
            })
            .collect()
    }
}

/// What `/v1/stats/summary` reports.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub by_event: Vec<NamedCount>,
    pub by_country: Vec<NamedCount>,
    /// (message type name, count), largest first.
    pub by_type: Vec<(&'static str, u64)>,
    pub users: u64,
    pub sessions: u64,
    /// Every metric's value by name (`null` for an average of nothing).
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// Buckets of a series: `step` seconds from `bucket_start` (a multiple of
/// `step`) to `end` (unix seconds), from the per-second counts when
/// `step` is 1, else the per-minute ones.
#[derive(Debug, Clone, Copy)]
pub struct Buckets {
    pub step: i64,
    pub bucket_start: i64,
    pub end: i64,
}

/// The stats API's reads (from an environment's primary shard).
#[async_trait]
pub trait StatsStore: Send + Sync {
    async fn summary(
        &self,
        shard: &Shard,
        env_id: u32,
        range: SummaryRange,
        metrics: &[Metric],
    ) -> Result<Summary>;

    /// Events per bucket start (unix seconds), of one event name or all;
    /// `None` when that name was never seen.
    async fn event_series(
        &self,
        shard: &Shard,
        env_id: u32,
        event: Option<&str>,
        buckets: Buckets,
    ) -> Result<Option<BTreeMap<i64, u64>>>;

    /// (events, total) of one metric per bucket start (unix seconds).
    async fn metric_series(
        &self,
        shard: &Shard,
        env_id: u32,
        metric_id: u32,
        buckets: Buckets,
    ) -> Result<HashMap<i64, (u64, f64)>>;

    /// Every second of [since, until) (unix seconds), zero-filled.
    async fn seconds(
        &self,
        shard: &Shard,
        env_id: u32,
        metrics: &[Metric],
        since: i64,
        until: i64,
    ) -> Result<Vec<Second>>;
}

/// A row's place in the live tail's order: when it was stored (ms, the
/// database's clock) and its 16-byte key.
pub type TailKey = (i64, [u8; 16]);

/// A refused request as a door sampled it (`rejected_samples`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedSample {
    /// The sample's identity: the request (or report) that refused it, and
    /// its number there.
    #[serde(skip)]
    pub source: [u8; 16],
    #[serde(skip)]
    pub seq: u16,
    /// When the sample was stored (ms, the database's clock).
    pub stored_at: i64,
    /// When the door got the request (ms).
    pub received_at: i64,
    pub code: String,
    pub message: String,
    /// The refused body, truncated (≤ 2 KB).
    pub body: String,
}

/// The live tail's reads (`/v1/stats/tail`): what an environment's primary
/// shard stored lately, by stored time. One poller per environment calls
/// these, whatever the number of viewers.
#[async_trait]
pub trait TailStore: Send + Sync {
    /// The shard's clock (ms): where a new tail starts.
    async fn clock(&self, shard: &Shard) -> Result<i64>;

    /// Keys of the events stored at or after `since` (ms) and after `after`
    /// in (stored time, key) order, at most `limit`, oldest first.
    async fn stored_keys(
        &self,
        shard: &Shard,
        env_id: u32,
        since: i64,
        after: Option<TailKey>,
        limit: u32,
    ) -> Result<Vec<TailKey>>;

    /// The stored events of these keys, whole (in any order; keys not
    /// found are left out).
    async fn events(&self, shard: &Shard, env_id: u32, keys: &[[u8; 16]]) -> Result<Vec<Envelope>>;

    /// Rejected samples stored at or after `since` (ms), oldest first, at most `limit`.
    async fn rejected_since(
        &self,
        shard: &Shard,
        env_id: u32,
        since: i64,
        limit: u32,
    ) -> Result<Vec<RejectedSample>>;

    /// One poll's first read: [`TailStore::stored_keys`] from `events.0`
    /// (at most `events.1`) and [`TailStore::rejected_since`] from
    /// `rejected.0` (at most `rejected.1`). A store may answer both with
    /// one statement.
    async fn changes(
        &self,
        shard: &Shard,
        env_id: u32,
        events: (i64, u32),
        rejected: (i64, u32),
    ) -> Result<(Vec<TailKey>, Vec<RejectedSample>)> {
        let keys = self
            .stored_keys(shard, env_id, events.0, None, events.1)
            .await?;
        let samples = self
            .rejected_since(shard, env_id, rejected.0, rejected.1)
            .await?;
        Ok((keys, samples))
    }
}

/// A place in an export's order, (event time, key): the rows after it are
/// those with a later time, or the same time and a greater key; `key: None`
/// is before every key of its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportPosition {
    /// Event time, ms.
    pub ts: i64,
    pub key: Option<[u8; 16]>,
}

/// One page of an export as the store read it: where it ends, and its
/// lines, encoded when asked — so the next page can be read while this one
/// is encoded.
pub struct ExportPage {
    /// The position of the page's last row (`None`: the page is empty).
    pub last: Option<ExportPosition>,
    pub rows: usize,
    encode: Box<dyn FnOnce() -> Result<ExportLines> + Send>,
}

/// A page's NDJSON: one `protocol::Envelope` per line, as `serde_json`
/// writes it, and the last line's id.
pub struct ExportLines {
    pub ndjson: Vec<u8>,
    pub last_id: Option<String>,
}

impl ExportPage {
    pub fn new(
        last: Option<ExportPosition>,
        rows: usize,
        encode: impl FnOnce() -> Result<ExportLines> + Send + 'static,
    ) -> Self {
        Self {
            last,
            rows,
            encode: Box::new(encode),
        }
    }

    /// A page of envelopes held whole (the memory store's).
    pub fn of_events(last: Option<ExportPosition>, events: Vec<Envelope>) -> Self {
        Self::new(last, events.len(), move || {
            let mut ndjson = Vec::new();
            for event in &events {
                serde_json::to_writer(&mut ndjson, event).map_err(|e| {
                    crate::error::Error::Internal(format!("an event could not be encoded: {e}"))
                })?;
                ndjson.push(b'\n');
            }
            let last_id = events.last().map(|e| e.id.clone());
            Ok(ExportLines { ndjson, last_id })
        })
    }

    /// The page's lines, in order.
    pub fn lines(self) -> Result<ExportLines> {
        (self.encode)()
    }
}

/// The export's reads (`GET /v1/export`, `backend export`) from an
/// environment's primary shard: stored events whole, in (event time, key)
/// order, a page at a time.
#[async_trait]
pub trait ExportStore: Send + Sync {
    /// The event time (ms) of the stored event with this key, if there is one.
    async fn event_time(&self, shard: &Shard, env_id: u32, key: [u8; 16]) -> Result<Option<i64>>;

    /// At most `limit` events after `after` and before `to` (ms), in
    /// (event time, key) order.
    async fn export_page(
        &self,
        shard: &Shard,
        env_id: u32,
        after: ExportPosition,
        to: i64,
        limit: u32,
    ) -> Result<ExportPage>;

    /// At most `window.rows` events after `after` and before `to`, in
    /// order, sent to `pages` `window.page_rows` at a time as they are read
    /// (no empty page); stops early, `Ok`, when `pages` is closed. By
    /// default a page read per page; the MySQL store streams one query.
    async fn export_window(
        &self,
        shard: &Shard,
        env_id: u32,
        (after, to): (ExportPosition, i64),
        window: ExportWindow,
        pages: &tokio::sync::mpsc::Sender<Result<ExportPage>>,
    ) -> Result<WindowRead> {
        let mut read = WindowRead {
            rows: 0,
            last: None,
        };
        while read.rows < u64::from(window.rows) {
            let left = u64::from(window.rows) - read.rows;
            let limit = u64::from(window.page_rows).min(left) as u32;
            let page = self
                .export_page(shard, env_id, read.last.unwrap_or(after), to, limit)
                .await?;
            let (rows, last) = (page.rows, page.last);
            if rows == 0 {
                break;
            }
            read.rows += rows as u64;
            read.last = last;
            if pages.send(Ok(page)).await.is_err() || rows < limit as usize {
                break;
            }
        }
        Ok(read)
    }
}

/// The rows one export read takes at most, and per page it hands over.
#[derive(Debug, Clone, Copy)]
pub struct ExportWindow {
    pub rows: u32,
    pub page_rows: u32,
}

/// What an [`ExportStore::export_window`] read: rows (fewer than asked:
/// the range's end) and the position of the last.
#[derive(Debug, Clone, Copy)]
pub struct WindowRead {
    pub rows: u64,
    pub last: Option<ExportPosition>,
}
