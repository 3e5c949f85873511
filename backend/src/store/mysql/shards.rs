//! Shard pools and the batched, idempotent event writer.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime};
use protocol::{Envelope, EventType};
use sha2::{Digest, Sha256};
use sqlx::{
    mysql::{MySqlArguments, MySqlPool, MySqlQueryResult},
    Arguments as _, MySql, QueryBuilder, Row as _, Transaction,
};

use crate::{
    db, delivery,
    error::Result,
    model::counted,
    model::{Metric, Shard},
    store::EventStore,
};

/// Event-name ids cached per process; cleared whole when it grows past this
/// (a client inventing names per event must not grow memory without bound).
const NAME_CACHE_LIMIT: usize = 200_000;
/// The same bound for shared-context ids.
const CONTEXT_CACHE_LIMIT: usize = 200_000;

/// Context keys whose values change from event to event; they stay in the
/// event's row. The rest of a context (library, user agent, device, os, app,
/// locale, country, colo, ...) repeats across a user's events and is stored
/// once per environment in `contexts` (migrations/shard/*_contexts.sql).
pub const PER_EVENT_CONTEXT_KEYS: [&str; 6] =
    ["campaign", "ip", "location", "page", "referrer", "traits"];

/// A context split into its shared part and its per-event part, as JSON text
/// (keys sorted, so equal parts are equal text). Written straight from the
/// map's entries: no map of either part is built.
pub fn split_context(context: &serde_json::Map<String, serde_json::Value>) -> (String, String) {
    let mut entries: Vec<(&String, &serde_json::Value)> = context.iter().collect();
    // serde_json's map iterates in key order already (without `preserve_order`): a no-op then.
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let (mut shared, mut per_event) = (Vec::with_capacity(128), Vec::with_capacity(32));
    for (key, value) in entries {
        let text = if PER_EVENT_CONTEXT_KEYS.contains(&key.as_str()) {
            &mut per_event
        } else {
            &mut shared
        };
        text.push(if text.is_empty() { b'{' } else { b',' });
        // Strings and JSON values always serialize (into a Vec, infallibly).
        let _ = serde_json::to_writer(&mut *text, key);
        text.push(b':');
        let _ = serde_json::to_writer(&mut *text, value);
    }
    let close = |mut text: Vec<u8>| {
        if text.is_empty() {
            text.push(b'{');
        }
        text.push(b'}');
        // serde_json writes UTF-8.
        String::from_utf8(text).unwrap_or_else(|_| "{}".to_owned())
    };
    (close(shared), close(per_event))
}

/// The key of a shared context in `contexts`: the first 16 bytes of the
/// SHA-256 of its JSON text (keys sorted, so equal contexts hash equal).
pub fn context_hash(shared: &str) -> [u8; 16] {
    let digest = Sha256::digest(shared.as_bytes());
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&digest[..16]);
    hash
}

pub use crate::{model::country_of, model::Counted, store::WriteOutcome};

/// (shard id, env id, (event type, name)) → the name's id on that shard.
type NameKey = (u32, u32, (u8, String));
/// (shard id, env id, shared-context hash) → its id on that shard.
type ContextKey = (u32, u32, [u8; 16]);

/// Lazily created pools, one per shard, and the name and shared-context id caches.
pub struct Shards {
    /// The write path's pools.
    pools: Pools,
    /// Small pools of their own for the work on the counter tables (flushes,
    /// pruning, stats reads), whose lock waits are short: a flush or a read
    /// stuck on a locked table can neither take the write path's connections
    /// nor wait for long.
    counters: Pools,
    names: Mutex<HashMap<NameKey, u32>>,
    contexts: Mutex<HashMap<ContextKey, u32>>,
    pool_size: u32,
    acquire_timeout: Duration,
    chunk_rows: usize,
    /// Shards that just failed to connect: until when writes fail fast
    /// instead of each waiting out the connect timeout (which would hold up
    /// every batch that also carries healthy environments).
    down_until: Mutex<HashMap<u32, std::time::Instant>>,
}

/// Connections per shard for the counter tables: a flush, a prune, a stats read.
const COUNTERS_POOL_SIZE: u32 = 3;
/// How long work on the counter tables waits for a lock before it fails (a
/// flush keeps its deltas for the next one).
const COUNTERS_LOCK_WAIT_SECS: u32 = 5;

type Pools = Mutex<HashMap<u32, (String, MySqlPool)>>;

fn pool_of(
    pools: &Pools,
    shard: &Shard,
    create: impl FnOnce() -> Result<MySqlPool>,
) -> Result<MySqlPool> {
    let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((url, pool)) = pools.get(&shard.id) {
        if *url == shard.url {
            return Ok(pool.clone());
        }
    }
    let pool = create()?;
    pools.insert(shard.id, (shard.url.clone(), pool.clone()));
    Ok(pool)
}

/// Reads of the stored keys a partial write tries before giving up (each
/// retry follows a concurrent writer of the same keys).
const CONCURRENT_WRITE_TRIES: usize = 3;

/// How long a shard that failed to connect is skipped before the next try.
pub const SHARD_BACKOFF: Duration = Duration::from_secs(2);
/// Connecting (or waiting for a free connection) gives up after this.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// One `events` row: every column's value. With [`events_insert`] the one
/// definition of how an envelope is stored (the bench's raw INSERT ceiling
/// writes its rows through both, so "same schema" holds by construction).
pub struct EventRow<'a> {
    pub envelope: &'a Envelope,
    pub key: [u8; 16],
    pub name_id: u32,
    pub ts: NaiveDateTime,
    pub received_at: NaiveDateTime,
    pub properties: String,
    /// The shared part of the context, stored once in `contexts` (0: none).
    pub context_id: u32,
    /// The per-event part of the context.
    pub context: String,
    pub traits: Option<String>,
}

impl<'a> EventRow<'a> {
    /// The row of `envelope`, with its name's id and its context's shared
    /// part's id on the shard; `context` is the per-event part.
    pub fn new(envelope: &'a Envelope, name_id: u32, context_id: u32, context: String) -> Self {
        Self::keyed(envelope, envelope.key(), name_id, context_id, context)
    }

    /// The same, with the envelope's key already computed.
    fn keyed(
        envelope: &'a Envelope,
        key: [u8; 16],
        name_id: u32,
        context_id: u32,
        context: String,
    ) -> Self {
        Self {
            envelope,
            key,
            name_id,
            ts: datetime(envelope.timestamp),
            received_at: datetime(envelope.received_at),
            properties: json_text(&envelope.properties),
            context_id,
            context,
            traits: (!envelope.traits.is_empty()).then(|| json_text(&envelope.traits)),
        }
    }
}

/// One multi-row `INSERT IGNORE` of rows into `events`: its SQL and its
/// arguments, encoded. Built by hand rather than with sqlx's `QueryBuilder`,
/// which formats every placeholder and separator through `fmt::write` (a
/// tenth of the write path's instructions, BENCHMARKS.md "CPU per event").
pub struct EventsInsert {
    sql: String,
    arguments: MySqlArguments,
}

/// Columns of [`INSERT_EVENTS`], one placeholder each per row.
const EVENT_COLUMNS: usize = 16;

impl EventsInsert {
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Run it (on a pool, a connection or a transaction).
    pub async fn execute<'c, E>(self, executor: E) -> sqlx::Result<MySqlQueryResult>
    where
        E: sqlx::Executor<'c, Database = MySql>,
    {
        sqlx::query_with(&self.sql, self.arguments)
            .execute(executor)
            .await
    }
}

/// One multi-row `INSERT IGNORE` of `rows` into `events`.
pub fn events_insert(rows: &[&EventRow<'_>]) -> sqlx::Result<EventsInsert> {
    const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    debug_assert_eq!(ROW.matches('?').count(), EVENT_COLUMNS);
    let mut sql = String::with_capacity(INSERT_EVENTS.len() + 7 + rows.len() * (ROW.len() + 2));
    sql.push_str(INSERT_EVENTS);
    sql.push_str("VALUES ");
    let mut arguments = MySqlArguments::default();
    // The encoded size, near enough that the buffer is not grown (and copied) as it fills.
    let text = |t: Option<&str>| t.map_or(0, |t| t.len() + 3);
    let bytes: usize = rows
        .iter()
        .map(|row| {
            let e = row.envelope;
            64 + e.id.len()
                + row.properties.len()
                + row.context.len()
                + [
                    e.user_id.as_deref(),
                    e.anonymous_id.as_deref(),
                    e.session_id.as_deref(),
                    row.traits.as_deref(),
                    e.group_id.as_deref(),
                    e.previous_id.as_deref(),
                ]
                .map(text)
                .iter()
                .sum::<usize>()
        })
        .sum();
    arguments.reserve(rows.len() * EVENT_COLUMNS, bytes);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(ROW);
        let e = row.envelope;
        let add = |result: std::result::Result<(), sqlx::error::BoxDynError>| {
            result.map_err(sqlx::Error::Encode)
        };
        add(arguments.add(e.env_id))?;
        add(arguments.add(&row.key[..]))?;
        add(arguments.add(row.name_id))?;
        add(arguments.add(e.event_type.code()))?;
        add(arguments.add(row.ts))?;
        add(arguments.add(row.received_at))?;
        add(arguments.add(e.user_id.as_deref()))?;
        add(arguments.add(e.anonymous_id.as_deref()))?;
        add(arguments.add(e.session_id.as_deref()))?;
        add(arguments.add((!protocol::is_uuid(&e.id)).then_some(e.id.as_str())))?;
        add(arguments.add(row.properties.as_str()))?;
        add(arguments.add(row.context_id))?;
        add(arguments.add(row.context.as_str()))?;
        add(arguments.add(row.traits.as_deref()))?;
        add(arguments.add(e.group_id.as_deref()))?;
        add(arguments.add(e.previous_id.as_deref()))?;
    }
    Ok(EventsInsert { sql, arguments })
}

/// One multi-row `INSERT IGNORE` of ledger rows.
pub fn delivery_insert<'q>(env_id: u32, entries: &'q [delivery::Entry]) -> QueryBuilder<'q, MySql> {
    let mut insert = QueryBuilder::<MySql>::new(INSERT_DELIVERY);
    insert.push_values(entries, |mut b, e| {
        b.push_bind(env_id)
            .push_bind(crate::model::datetime(e.minute))
            .push_bind(e.outcome.as_bytes())
            .push_bind(&e.source[..])
            .push_bind(e.n)
            .push_bind(e.summable_kind());
    });
    insert
}

/// A row being written, and the hash of its context's shared part (`None`
/// when that part is empty) until its id is known.
pub struct Row<'a> {
    pub event: EventRow<'a>,
    pub shared_context: Option<[u8; 16]>,
}

/// One environment's envelopes as rows, before their shared contexts have
/// ids on the shard (the CPU part of [`Shards::write`], without I/O).
pub struct EventRows<'a> {
    pub rows: Vec<Row<'a>>,
    /// The shared contexts the rows refer to, by hash, with their text.
    pub shared_contexts: BTreeMap<[u8; 16], String>,
    /// Envelopes whose key an earlier one of the same batch had.
    pub duplicates: u64,
}

/// The rows of `envelopes` (the first of each key), with their names' ids
/// from `name_ids`; `Err(name)` for a name it has no id for.
pub fn event_rows<'a>(
    envelopes: &[&'a Envelope],
    name_ids: &HashMap<(u8, &str), u32>,
) -> std::result::Result<EventRows<'a>, String> {
    let mut seen = HashSet::with_capacity(envelopes.len());
    let mut rows = Vec::with_capacity(envelopes.len());
    let mut duplicates = 0;
    // A batch's events share few contexts: each distinct text is hashed once.
    let mut hashes: HashMap<String, [u8; 16]> = HashMap::new();
    for &envelope in envelopes {
        let key = envelope.key();
        if !seen.insert(key) {
            duplicates += 1;
            continue;
        }
        let Some(&name_id) = name_ids.get(&(envelope.event_type.code(), envelope.name.as_str()))
        else {
            return Err(envelope.name.clone());
        };
        let (shared, context) = split_context(&envelope.context);
        let shared_context = (shared != "{}").then(|| match hashes.get(shared.as_str()) {
            Some(&hash) => hash,
            None => {
                let hash = context_hash(&shared);
                hashes.insert(shared, hash);
                hash
            }
        });
        rows.push(Row {
            event: EventRow::keyed(envelope, key, name_id, 0, context),
            shared_context,
        });
    }
    let shared_contexts = hashes
        .into_iter()
        .map(|(text, hash)| (hash, text))
        .collect();
    Ok(EventRows {
        rows,
        shared_contexts,
        duplicates,
    })
}

/// Give every row its shared context's id; `Err(hash)` for a hash `ids` lacks.
pub fn set_context_ids(
    rows: &mut [Row<'_>],
    ids: &HashMap<[u8; 16], u32>,
) -> std::result::Result<(), [u8; 16]> {
    for row in rows {
        if let Some(hash) = row.shared_context {
            row.event.context_id = *ids.get(&hash).ok_or(hash)?;
        }
    }
    Ok(())
}

fn json_text(map: &serde_json::Map<String, serde_json::Value>) -> String {
    // A map of JSON values always serializes.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) fn datetime(ms: i64) -> NaiveDateTime {
    // Envelopes are validated to 0..=MAX_TIMESTAMP_MS, which chrono represents.
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

const INSERT_EVENTS: &str = "INSERT IGNORE INTO events \
    (env_id, id, name_id, event_type, ts, received_at, user_id, anonymous_id, session_id, client_id, \
    properties, context_id, context, traits, group_id, previous_id) ";
const INSERT_NAMES: &str = "INSERT IGNORE INTO event_names (env_id, event_type, name) ";
const INSERT_CONTEXTS: &str = "INSERT IGNORE INTO contexts (env_id, hash, context) ";
const SELECT_CONTEXTS: &str = "SELECT id, hash FROM contexts WHERE env_id = ";
const SELECT_NAMES: &str = "SELECT id, event_type, name FROM event_names WHERE env_id = ";
const SELECT_EXISTING: &str = "SELECT id, received_at FROM events WHERE env_id = ";
const INSERT_DELIVERY: &str =
    "INSERT IGNORE INTO delivery (env_id, minute, outcome, source, n, summable) ";

/// Keys already stored, with their stored receive time (ms).
type StoredKeys = HashMap<[u8; 16], i64>;

impl Shards {
    pub fn new(pool_size: u32, acquire_timeout: Duration, chunk_rows: usize) -> Self {
        Self {
            pools: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            contexts: Mutex::new(HashMap::new()),
            pool_size,
            acquire_timeout: acquire_timeout.min(ACQUIRE_TIMEOUT),
            down_until: Mutex::new(HashMap::new()),
            chunk_rows: chunk_rows.max(1),
        }
    }

    /// The shard's pool for writes and reads, created on first use and
    /// replaced if its URL changed.
    pub fn pool(&self, shard: &Shard) -> Result<MySqlPool> {
        pool_of(&self.pools, shard, || {
            db::lazy_pool(&shard.url, self.pool_size, self.acquire_timeout)
        })
    }

    /// The shard's pool for the counter tables (flushes, pruning, stats reads).
    pub fn counters_pool(&self, shard: &Shard) -> Result<MySqlPool> {
        pool_of(&self.counters, shard, || {
            db::lazy_pool_with_lock_wait(
                &shard.url,
                COUNTERS_POOL_SIZE,
                self.acquire_timeout,
                COUNTERS_LOCK_WAIT_SECS,
            )
        })
    }

    /// Whether the shard failed to connect within the last [`SHARD_BACKOFF`].
    pub fn recently_down(&self, shard_id: u32) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.get(&shard_id)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// Record a write's outcome: connection-level failures open the backoff window.
    pub fn note_result<T>(
        &self,
        shard_id: u32,
        result: &std::result::Result<T, crate::error::Error>,
    ) {
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => {
                down.remove(&shard_id);
            }
            Err(crate::error::Error::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_),
            )) => {
                down.insert(shard_id, std::time::Instant::now() + SHARD_BACKOFF);
            }
            Err(_) => {}
        }
    }

    /// Close every pool (graceful shutdown).
    pub async fn close(&self) {
        let mut pools: Vec<MySqlPool> = Vec::new();
        for map in [&self.pools, &self.counters] {
            let map = map.lock().unwrap_or_else(|p| p.into_inner());
            pools.extend(map.values().map(|(_, p)| p.clone()));
        }
        for pool in pools {
            pool.close().await;
        }
    }

    /// Ids of `(type, name)` pairs in the shard's lookup table: cached,
    /// else `INSERT IGNORE` then read back (no locking upsert).
    async fn name_ids<'a>(
        &self,
        shard_id: u32,
        pool: &MySqlPool,
        env_id: u32,
        names: &BTreeSet<(u8, &'a str)>,
    ) -> Result<HashMap<(u8, &'a str), u32>> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.names.lock().unwrap_or_else(|p| p.into_inner());
            for &(kind, name) in names {
                match cache.get(&(shard_id, env_id, (kind, name.to_string()))) {
                    Some(&id) => {
                        found.insert((kind, name), id);
                    }
                    None => missing.push((kind, name)),
                }
            }
        }
        for chunk in missing.chunks(self.chunk_rows) {
            let mut insert = QueryBuilder::<MySql>::new(INSERT_NAMES);
            insert.push_values(chunk, |mut b, (kind, name)| {
                b.push_bind(env_id)
                    .push_bind(*kind)
                    .push_bind(name.as_bytes());
            });
            insert.build().execute(pool).await?;

            let mut select = QueryBuilder::<MySql>::new(SELECT_NAMES);
            select
                .push_bind(env_id)
                .push(" AND (event_type, name) IN (");
            let mut list = select.separated(", ");
            for (kind, name) in chunk {
                list.push("(")
                    .push_bind_unseparated(*kind)
                    .push_unseparated(", ");
                list.push_bind_unseparated(name.as_bytes())
                    .push_unseparated(")");
            }
            select.push(")");
            let rows = select.build().fetch_all(pool).await?;
            let mut cache = self.names.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > NAME_CACHE_LIMIT {
                cache.clear();
            }
            let mut fetched: HashMap<u8, HashMap<Vec<u8>, u32>> = HashMap::new();
            for row in rows {
                let id: u32 = row.try_get(0)?;
                let kind: u8 = row.try_get(1)?;
                let name: Vec<u8> = row.try_get(2)?;
                cache.insert(
                    (
                        shard_id,
                        env_id,
                        (kind, String::from_utf8_lossy(&name).into_owned()),
                    ),
                    id,
                );
                fetched.entry(kind).or_default().insert(name, id);
            }
            for &(kind, name) in chunk {
                if let Some(&id) = fetched.get(&kind).and_then(|m| m.get(name.as_bytes())) {
                    found.insert((kind, name), id);
                }
            }
        }
        Ok(found)
    }

    /// Ids of shared contexts (by hash) in the shard's `contexts` table:
    /// cached, else `INSERT IGNORE` then read back, like names.
    async fn context_ids(
        &self,
        shard_id: u32,
        pool: &MySqlPool,
        env_id: u32,
        shared: &BTreeMap<[u8; 16], String>,
    ) -> Result<HashMap<[u8; 16], u32>> {
        let mut found = HashMap::with_capacity(shared.len());
        let mut missing = Vec::new();
        {
            let cache = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
            for (hash, text) in shared {
                match cache.get(&(shard_id, env_id, *hash)) {
                    Some(&id) => {
                        found.insert(*hash, id);
                    }
                    None => missing.push((hash, text)),
                }
            }
        }
        for chunk in missing.chunks(self.chunk_rows) {
            let mut insert = QueryBuilder::<MySql>::new(INSERT_CONTEXTS);
            insert.push_values(chunk, |mut b, (hash, text)| {
                b.push_bind(env_id)
                    .push_bind(&hash[..])
                    .push_bind(text.as_str());
            });
            insert.build().execute(pool).await?;

            let mut select = QueryBuilder::<MySql>::new(SELECT_CONTEXTS);
            select.push_bind(env_id).push(" AND hash IN (");
            let mut list = select.separated(", ");
            for (hash, _) in chunk {
                list.push_bind(&hash[..]);
            }
            select.push(")");
            let rows = select.build().fetch_all(pool).await?;
            let mut cache = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > CONTEXT_CACHE_LIMIT {
                cache.clear();
            }
            for row in rows {
                let id: u32 = row.try_get(0)?;
                let hash: Vec<u8> = row.try_get(1)?;
                if let Ok(hash) = <[u8; 16]>::try_from(hash.as_slice()) {
                    cache.insert((shard_id, env_id, hash), id);
                    found.insert(hash, id);
                }
            }
        }
        Ok(found)
    }

    /// Ledger rows, `INSERT IGNORE`d (a source counted twice counts once).
    async fn record(
        &self,
        conn: &mut sqlx::MySqlConnection,
        env_id: u32,
        entries: &[delivery::Entry],
    ) -> Result<()> {
        for chunk in entries.chunks(self.chunk_rows) {
            delivery_insert(env_id, chunk)
                .build()
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn insert(&self, tx: &mut Transaction<'_, MySql>, rows: &[&EventRow<'_>]) -> Result<u64> {
        let mut affected = 0;
        for chunk in rows.chunks(self.chunk_rows) {
            affected += events_insert(chunk)?
                .execute(&mut **tx)
                .await?
                .rows_affected();
        }
        Ok(affected)
    }

    /// The stored keys among `rows`, with their stored receive time (ms).
    async fn existing_keys(
        &self,
        conn: &mut sqlx::MySqlConnection,
        env_id: u32,
        rows: &[&EventRow<'_>],
    ) -> Result<StoredKeys> {
        let mut existing = HashMap::new();
        for chunk in rows.chunks(self.chunk_rows) {
            let mut select = QueryBuilder::<MySql>::new(SELECT_EXISTING);
            select.push_bind(env_id).push(" AND id IN (");
            let mut list = select.separated(", ");
            for row in chunk {
                list.push_bind(&row.key[..]);
            }
            select.push(")");
            for found in select.build().fetch_all(&mut *conn).await? {
                let key: Vec<u8> = found.try_get(0)?;
                let received_at: NaiveDateTime = found.try_get(1)?;
                if let Ok(key) = <[u8; 16]>::try_from(key.as_slice()) {
                    existing.insert(key, received_at.and_utc().timestamp_millis());
                }
            }
        }
        Ok(existing)
    }

    /// The partial case of [`Shards::write`]: the stored keys are read, and
    /// only the new rows are inserted, with the ledger rows counted from
    /// that read. A concurrent writer that stores some of the same keys in
    /// between (the insert then adds fewer rows than it should) makes the
    /// read stale: the transaction is rolled back and the read done again,
    /// so neither the counters nor the ledger count an event twice.
    /// `count` is the write's ledger given the stored keys.
    async fn write_new_only<'r>(
        &self,
        pool: &MySqlPool,
        shard: &Shard,
        env_id: u32,
        all: Vec<&'r EventRow<'r>>,
        count: &(dyn Fn(&StoredKeys) -> Vec<delivery::Entry> + Sync),
    ) -> Result<Vec<&'r EventRow<'r>>> {
        for _ in 0..CONCURRENT_WRITE_TRIES {
            let mut conn = pool.acquire().await?;
            let existing = self.existing_keys(&mut conn, env_id, &all).await?;
            drop(conn);
            let fresh: Vec<&EventRow> = all
                .iter()
                .copied()
                .filter(|r| !existing.contains_key(&r.key))
                .collect();
            let ledger = count(&existing);
            let mut tx = pool.begin().await?;
            let affected = self.insert(&mut tx, &fresh).await?;
            if affected != fresh.len() as u64 {
                tx.rollback().await?;
                tracing::warn!(shard = %shard.name, env_id, affected, expected = fresh.len(), "concurrent duplicate write; reading again");
                continue;
            }
            self.record(&mut tx, env_id, &ledger).await?;
            tx.commit().await?;
            return Ok(fresh);
        }
        Err(crate::error::Error::Internal(format!(
            "writes of the same events kept racing on shard {}",
            shard.name
        )))
    }

    /// Write one environment's envelopes to one shard, idempotently, with
    /// their delivery-ledger rows in the same transaction.
    ///
    /// The common case (all new) costs one multi-row `INSERT IGNORE` per
    /// chunk and one ledger insert in one transaction. When some rows are
    /// already stored, their stored receive times are read (they tell a
    /// redelivery from a client's re-send); when only some are new, the
    /// transaction is rolled back and only the new rows are inserted, so the
    /// counters learn exactly which rows this write added.
    pub async fn write(
        &self,
        shard: &Shard,
        env_id: u32,
        envelopes: &[&Envelope],
        dropped: &[delivery::Dropped<'_>],
        metrics: &[Metric],
    ) -> Result<WriteOutcome> {
        let pool = self.pool(shard)?;
        let names: BTreeSet<(u8, &str)> = envelopes
            .iter()
            .map(|e| (e.event_type.code(), e.name.as_str()))
            .collect();
        let name_ids = self.name_ids(shard.id, &pool, env_id, &names).await?;

        let EventRows {
            mut rows,
            shared_contexts,
            duplicates,
        } = event_rows(envelopes, &name_ids).map_err(|name| {
            crate::error::Error::Internal(format!(
                "event name {name:?} has no id on shard {}",
                shard.name
            ))
        })?;
        let context_ids = self
            .context_ids(shard.id, &pool, env_id, &shared_contexts)
            .await?;
        set_context_ids(&mut rows, &context_ids).map_err(|_| {
            crate::error::Error::Internal(format!(
                "a shared context has no id on shard {}",
                shard.name
            ))
        })?;

        let all: Vec<&EventRow> = rows.iter().map(|r| &r.event).collect();
        let write_source = rand::random::<[u8; 16]>();
        let count = |existing: &StoredKeys| {
            delivery::count_write(envelopes, dropped, existing, write_source)
        };
        let mut tx = pool.begin().await?;
        let affected = self.insert(&mut tx, &all).await?;
        let inserted: Vec<&EventRow> = if affected == all.len() as u64 {
            let ledger = count(&HashMap::new());
            self.record(&mut tx, env_id, &ledger).await?;
            tx.commit().await?;
            all
        } else if affected == 0 {
            let existing = self.existing_keys(&mut tx, env_id, &all).await?;
            let ledger = count(&existing);
            self.record(&mut tx, env_id, &ledger).await?;
            tx.commit().await?;
            Vec::new()
        } else {
            tx.rollback().await?;
            self.write_new_only(&pool, shard, env_id, all, &count)
                .await?
        };

        let counted: Vec<Counted> = inserted
            .iter()
            .map(|row| counted(row.envelope, row.name_id, metrics))
            .collect();
        let inserted_n = counted.len() as u64;
        Ok(WriteOutcome {
            inserted: inserted_n,
            duplicates: duplicates + (rows.len() as u64 - inserted_n),
            counted,
        })
    }
}

#[async_trait]
impl EventStore for Shards {
    async fn write(
        &self,
        shard: &Shard,
        env_id: u32,
        envelopes: &[&Envelope],
        dropped: &[delivery::Dropped<'_>],
        metrics: &[Metric],
    ) -> Result<WriteOutcome> {
        Shards::write(self, shard, env_id, envelopes, dropped, metrics).await
    }

    fn recently_down(&self, shard_id: u32) -> bool {
        Shards::recently_down(self, shard_id)
    }

    fn note_result(&self, shard_id: u32, result: &Result<WriteOutcome>) {
        Shards::note_result(self, shard_id, result)
    }

    async fn close(&self) {
        Shards::close(self).await
    }
}

/// The columns [`stored_envelope`] reads, in its order, from `events_full`.
pub const HISTORY_COLUMNS: &str = "id, client_id, event_type, name, ts, received_at, \
    user_id, anonymous_id, session_id, group_id, previous_id, \
    CAST(properties AS CHAR), CAST(traits AS CHAR), CAST(context AS CHAR), name_id";

/// The envelope a row of [`HISTORY_COLUMNS`] stored, whole again.
pub(crate) fn stored_envelope(row: &sqlx::mysql::MySqlRow, env_id: u32) -> Result<Envelope> {
    let key: Vec<u8> = row.try_get(0)?;
    let id = match (text(row, 1)?, <[u8; 16]>::try_from(key.as_slice())) {
        (Some(id), _) => id,
        (None, Ok(key)) => protocol::uuid_of_key(key),
        (None, Err(_)) => {
            return Err(crate::error::Error::Internal(
                "a stored event id is not 16 bytes".into(),
            ))
        }
    };
    let name: Vec<u8> = row.try_get(3)?;
    let ts: NaiveDateTime = row.try_get(4)?;
    let received_at: NaiveDateTime = row.try_get(5)?;
    Ok(Envelope {
        id,
        env_id,
        name: String::from_utf8_lossy(&name).into_owned(),
        timestamp: ts.and_utc().timestamp_millis(),
        received_at: received_at.and_utc().timestamp_millis(),
        user_id: text(row, 6)?,
        anonymous_id: text(row, 7)?,
        session_id: text(row, 8)?,
        group_id: text(row, 9)?,
        previous_id: text(row, 10)?,
        properties: json_map(row.try_get(11)?)?,
        traits: json_map(row.try_get(12)?)?,
        context: json_map(row.try_get(13)?)?,
        event_type: EventType::from_code(row.try_get(2)?).unwrap_or_default(),
        acceptance: None,
    })
}

/// What `copy_history` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyOutcome {
    pub read: u64,
    pub inserted: u64,
}

/// A nullable text column as the writer stored it (`VARCHAR ... utf8mb4_bin`
/// columns decode as bytes).
fn text(row: &sqlx::mysql::MySqlRow, index: usize) -> Result<Option<String>> {
    let bytes: Option<Vec<u8>> = row.try_get(index)?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn json_map(text: Option<String>) -> Result<serde_json::Map<String, serde_json::Value>> {
    match text {
        None => Ok(serde_json::Map::new()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| crate::error::Error::Internal(format!("stored JSON unreadable: {e}"))),
    }
}

impl Shards {
    /// Copy an environment's history from one shard to another (the
    /// backfill before `env promote`): rows are read back whole and written
    /// through [`Shards::write`], so names and shared contexts get the target
    /// shard's own ids, and rows already there (dual writes, an earlier run)
    /// are skipped. What this inserted is passed to `record` to be counted.
    pub async fn copy_history(
        &self,
        from: &Shard,
        to: &Shard,
        env_id: u32,
        metrics: &[Metric],
        record: &dyn Fn(&[Counted]),
    ) -> Result<CopyOutcome> {
        let source = self.pool(from)?;
        let mut after: Vec<u8> = Vec::new();
        let mut outcome = CopyOutcome::default();
        loop {
            // One page in primary-key order after `after`.
            let rows = sqlx::query(&format!(
                "SELECT {HISTORY_COLUMNS} FROM events_full WHERE env_id = ? AND id > ? ORDER BY id LIMIT ?"
            ))
                .bind(env_id)
                .bind(&after)
                .bind(self.chunk_rows as u64)
                .fetch_all(&source)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(outcome);
            };
            after = last.try_get(0)?;
            let envelopes = rows
                .iter()
                .map(|row| stored_envelope(row, env_id))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&Envelope> = envelopes.iter().collect();
            let written = self.write(to, env_id, &refs, &[], metrics).await?;
            record(&written.counted);
            outcome.read += envelopes.len() as u64;
            outcome.inserted += written.inserted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn context_splits_into_shared_and_per_event_parts() {
        let (shared, per_event) = split_context(&map(json!({
            "page": {"url": "/a"}, "library": {"name": "js"}, "ip": null, "country": "DE"
        })));
        assert_eq!(shared, r#"{"country":"DE","library":{"name":"js"}}"#);
        assert_eq!(per_event, r#"{"ip":null,"page":{"url":"/a"}}"#);
        assert_eq!(split_context(&map(json!({}))), ("{}".into(), "{}".into()));
    }

    #[test]
    fn event_rows_keep_the_first_of_a_key_and_one_text_per_shared_context() {
        let envelope = |id: &str, country: &str| -> Envelope {
            serde_json::from_value(json!({"id": id, "env_id": 1, "name": "x", "timestamp": 0,
                "received_at": 0, "context": {"country": country, "page": {"url": id}}}))
            .expect("envelope")
        };
        let batch = [
            envelope("a", "DE"),
            envelope("b", "FR"),
            envelope("a", "US"),
            envelope("c", "DE"),
        ];
        let refs: Vec<&Envelope> = batch.iter().collect();
        let names = HashMap::from([((0u8, "x"), 9)]);
        let built = event_rows(&refs, &names).expect("rows");
        assert_eq!(built.duplicates, 1);
        let ids: Vec<&str> = built
            .rows
            .iter()
            .map(|r| r.event.envelope.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(built.shared_contexts.len(), 2, "DE twice, FR once");
        assert_eq!(built.rows[0].shared_context, built.rows[2].shared_context);
        let de = built.rows[0].shared_context.expect("shared part");
        assert_eq!(built.shared_contexts[&de], r#"{"country":"DE"}"#);
        assert_eq!(built.rows[2].event.context, r#"{"page":{"url":"c"}}"#);
        assert_eq!(
            event_rows(&refs, &HashMap::new()).err().as_deref(),
            Some("x")
        );

        let rows: Vec<&EventRow> = built.rows.iter().map(|r| &r.event).collect();
        let insert = events_insert(&rows).expect("encodes");
        assert_eq!(insert.sql().matches('?').count(), 3 * EVENT_COLUMNS);
        assert_eq!(insert.sql().matches("), (").count(), 2);
    }

    #[test]
    fn equal_shared_parts_hash_equal_whatever_the_per_event_part() {
        let a = split_context(&map(json!({"country": "DE", "page": {"url": "/a"}}))).0;
        let b = split_context(&map(json!({"page": {"url": "/b"}, "country": "DE"}))).0;
        let c = split_context(&map(json!({"country": "FR"}))).0;
        assert_eq!(context_hash(&a), context_hash(&b));
        assert_ne!(context_hash(&a), context_hash(&c));
    }
}
