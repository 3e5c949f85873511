//! The catalog: which shards exist and where each environment's events go.
//!
//! Routing reads an in-memory snapshot refreshed every
//! `SLUICE_CATALOG_REFRESH_MS`; an environment id the snapshot does not know
//! forces an early refresh, so a new environment is routable at once.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use sqlx::{mysql::MySqlPool, FromRow};

use crate::{
    db,
    error::{Error, Result},
};

#[derive(Debug, Clone, FromRow)]
pub struct Shard {
    pub id: u32,
    pub name: String,
    pub url: String,
    pub status: String,
}

impl Shard {
    pub fn is_writable(&self) -> bool {
        self.status == "active"
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct Environment {
    pub id: u32,
    pub name: String,
    pub primary_shard_id: u32,
    pub secondary_shard_id: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub shards: HashMap<u32, Shard>,
    pub environments: HashMap<u32, Environment>,
    /// Each environment's metrics.
    pub metrics: HashMap<u32, Vec<Metric>>,
}

impl Snapshot {
    /// The shards an environment's events are written to: its primary, then
    /// its secondary while it migrates.
    pub fn targets(&self, env_id: u32) -> Option<Vec<&Shard>> {
        let env = self.environments.get(&env_id)?;
        let mut targets = vec![self.shards.get(&env.primary_shard_id)?];
        if let Some(secondary) = env.secondary_shard_id.and_then(|id| self.shards.get(&id)) {
            targets.push(secondary);
        }
        Some(targets)
    }
}

const SELECT_SHARDS: &str = "SELECT id, name, url, status FROM shards ORDER BY id";
const SELECT_ENVIRONMENTS: &str =
    "SELECT id, name, primary_shard_id, secondary_shard_id FROM environments ORDER BY id";

pub async fn list_shards(pool: &MySqlPool) -> Result<Vec<Shard>> {
    Ok(sqlx::query_as(SELECT_SHARDS).fetch_all(pool).await?)
}

pub async fn list_environments(pool: &MySqlPool) -> Result<Vec<Environment>> {
    Ok(sqlx::query_as(SELECT_ENVIRONMENTS).fetch_all(pool).await?)
}

async fn load(pool: &MySqlPool) -> Result<Snapshot> {
    let shards = list_shards(pool).await?;
    let environments = list_environments(pool).await?;
    let mut metrics: HashMap<u32, Vec<Metric>> = HashMap::new();
    for metric in sqlx::query_as::<_, Metric>(SELECT_METRICS)
        .fetch_all(pool)
        .await?
    {
        metrics.entry(metric.env_id).or_default().push(metric);
    }
    Ok(Snapshot {
        shards: shards.into_iter().map(|s| (s.id, s)).collect(),
        environments: environments.into_iter().map(|e| (e.id, e)).collect(),
        metrics,
    })
}

/// The cached catalog used by `serve`.
pub struct Catalog {
    pool: MySqlPool,
    snapshot: RwLock<Arc<Snapshot>>,
    /// When the last forced refresh that succeeded started. Held across the
    /// refresh, so concurrent requests for a new environment wait for it.
    last_forced: tokio::sync::Mutex<Option<Instant>>,
}

/// Forced refreshes (for unknown environment ids) happen at most this often,
/// so a stream of envelopes for a deleted environment cannot hammer the catalog.
const FORCED_REFRESH_GAP: Duration = Duration::from_millis(200);

impl Catalog {
    pub async fn open(pool: MySqlPool) -> Result<Self> {
        let snapshot = load(&pool)
            .await
            .map_err(|e| Error::Catalog(e.to_string()))?;
        Ok(Self {
            pool,
            snapshot: RwLock::new(Arc::new(snapshot)),
            last_forced: tokio::sync::Mutex::new(None),
        })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub async fn refresh(&self) -> Result<()> {
        let fresh = Arc::new(
            load(&self.pool)
                .await
                .map_err(|e| Error::Catalog(e.to_string()))?,
        );
        match self.snapshot.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// A snapshot read after this call began if `env_ids` holds an id the
    /// current one does not know; else the current one. Concurrent callers
    /// share one refresh: a refresh that started after a caller asked answers
    /// it, and no two start within [`FORCED_REFRESH_GAP`].
    pub async fn refresh_for(
        &self,
        env_ids: impl IntoIterator<Item = u32>,
    ) -> Result<Arc<Snapshot>> {
        let snapshot = self.snapshot();
        if env_ids
            .into_iter()
            .all(|id| snapshot.environments.contains_key(&id))
        {
            return Ok(snapshot);
        }
        let asked = Instant::now();
        let mut last = self.last_forced.lock().await;
        if let Some(started) = *last {
            if started >= asked {
                return Ok(self.snapshot());
            }
            tokio::time::sleep(FORCED_REFRESH_GAP.saturating_sub(started.elapsed())).await;
        }
        let started = Instant::now();
        self.refresh().await?;
        *last = Some(started);
        Ok(self.snapshot())
    }

    /// Whether the catalog database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

// ---- administration (the CLI) ----

fn check_name(kind: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            kind,
            format!("{name:?}: use 1-64 characters of [A-Za-z0-9_.-]"),
        ))
    }
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

const INSERT_SHARD: &str = "INSERT INTO shards (name, url) VALUES (?, ?)";

/// Register a shard: create its database if needed, migrate it, record it.
pub async fn add_shard(pool: &MySqlPool, name: &str, url: &str) -> Result<u32> {
    check_name("shard name", name)?;
    if shard_by_name(pool, name).await.is_ok() {
        return Err(Error::AlreadyExists("shard", name.into()));
    }
    db::migrate_shard(url).await.map_err(|e| match e {
        Error::InvalidArgument(..) => e,
        other => Error::ShardUnavailable {
            shard: name.into(),
            message: other.to_string(),
        },
    })?;
    match sqlx::query(INSERT_SHARD)
        .bind(name)
        .bind(url)
        .execute(pool)
        .await
    {
        Ok(done) => Ok(done.last_insert_id() as u32),
        Err(e) if unique_violation(&e) => Err(Error::AlreadyExists("shard", name.into())),
        Err(e) => Err(e.into()),
    }
}

pub async fn shard_by_name(pool: &MySqlPool, name: &str) -> Result<Shard> {
    sqlx::query_as("SELECT id, name, url, status FROM shards WHERE name = ?")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::UnknownShard(name.into()))
}

pub async fn environment_by_name(pool: &MySqlPool, name: &str) -> Result<Environment> {
    sqlx::query_as(
        "SELECT id, name, primary_shard_id, secondary_shard_id FROM environments WHERE name = ?",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Error::UnknownEnvironment(name.into()))
}

const INSERT_ENVIRONMENT: &str = "INSERT INTO environments (name, primary_shard_id) VALUES (?, ?)";

pub async fn create_environment(pool: &MySqlPool, name: &str, shard: &str) -> Result<u32> {
    check_name("environment name", name)?;
    let shard = shard_by_name(pool, shard).await?;
    match sqlx::query(INSERT_ENVIRONMENT)
        .bind(name)
        .bind(shard.id)
        .execute(pool)
        .await
    {
        Ok(done) => Ok(done.last_insert_id() as u32),
        Err(e) if unique_violation(&e) => Err(Error::AlreadyExists("environment", name.into())),
        Err(e) => Err(e.into()),
    }
}

/// Start migrating an environment: every write goes to `to` as well.
pub async fn migrate_environment(pool: &MySqlPool, name: &str, to: &str) -> Result<()> {
    let env = environment_by_name(pool, name).await?;
    let shard = shard_by_name(pool, to).await?;
    if shard.id == env.primary_shard_id {
        return Err(Error::InvalidArgument(
            "shard",
            format!("{to:?} is already the primary of {name:?}"),
        ));
    }
    sqlx::query("UPDATE environments SET secondary_shard_id = ? WHERE id = ?")
        .bind(shard.id)
        .bind(env.id)
        .execute(pool)
        .await?;
    Ok(())
}

/// End a migration: the secondary becomes the primary, the old primary is no longer written.
pub async fn promote_environment(pool: &MySqlPool, name: &str) -> Result<()> {
    let env = environment_by_name(pool, name).await?;
    let Some(secondary) = env.secondary_shard_id else {
        return Err(Error::InvalidArgument(
            "environment",
            format!("{name:?} has no secondary shard to promote"),
        ));
    };
    sqlx::query(
        "UPDATE environments SET primary_shard_id = ?, secondary_shard_id = NULL WHERE id = ? AND secondary_shard_id = ?",
    )
    .bind(secondary)
    .bind(env.id)
    .bind(secondary)
    .execute(pool)
    .await?;
    Ok(())
}

// ---- read tokens (stats API) ----

/// A new read token's text: `srt_` + 32 hex digits (128 random bits).
fn new_read_token() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("srt_{}", hex(&bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// How a token is listed and revoked: its first 12 characters.
pub fn token_prefix(token: &str) -> &str {
    token.get(..12).unwrap_or(token)
}

/// Create a read token for an environment; the text is returned once and
/// only its SHA-256 is stored.
pub async fn create_read_token(pool: &MySqlPool, env_name: &str) -> Result<String> {
    let env = environment_by_name(pool, env_name).await?;
    let token = new_read_token();
    sqlx::query("INSERT INTO read_tokens (env_id, prefix, token_hash) VALUES (?, ?, ?)")
        .bind(env.id)
        .bind(token_prefix(&token))
        .bind(&token_hash(&token)[..])
        .execute(pool)
        .await?;
    Ok(token)
}

#[derive(Debug, FromRow)]
pub struct ReadToken {
    pub prefix: String,
    pub created_at: chrono::NaiveDateTime,
    pub revoked_at: Option<chrono::NaiveDateTime>,
}

pub async fn list_read_tokens(pool: &MySqlPool, env_name: &str) -> Result<Vec<ReadToken>> {
    let env = environment_by_name(pool, env_name).await?;
    Ok(sqlx::query_as(
        "SELECT prefix, created_at, revoked_at FROM read_tokens WHERE env_id = ? ORDER BY id",
    )
    .bind(env.id)
    .fetch_all(pool)
    .await?)
}

pub async fn revoke_read_token(pool: &MySqlPool, env_name: &str, prefix: &str) -> Result<u64> {
    let env = environment_by_name(pool, env_name).await?;
    let done = sqlx::query(
        "UPDATE read_tokens SET revoked_at = CURRENT_TIMESTAMP(3) WHERE env_id = ? AND prefix = ? AND revoked_at IS NULL",
    )
    .bind(env.id)
    .bind(prefix)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::InvalidArgument(
            "token prefix",
            format!("no active token {prefix:?} for {env_name:?}"),
        ));
    }
    Ok(done.rows_affected())
}

/// The environment an active read token belongs to.
pub async fn read_token_env(pool: &MySqlPool, hash: &[u8; 32]) -> Result<Option<u32>> {
    Ok(sqlx::query_scalar(
        "SELECT env_id FROM read_tokens WHERE token_hash = ? AND revoked_at IS NULL",
    )
    .bind(&hash[..])
    .fetch_optional(pool)
    .await?)
}

// ---- metrics ----

/// A named aggregate over one event name: `sum`/`avg` of a numeric
/// property, or `count`.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Metric {
    pub id: u32,
    pub env_id: u32,
    pub name: String,
    pub event_name: String,
    pub aggregate: String,
    pub property: Option<String>,
}

impl Metric {
    /// What one event adds to this metric: `Some(value)` when it counts.
    pub fn contribution(
        &self,
        properties: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<f64> {
        match self.aggregate.as_str() {
            "count" => Some(1.0),
            _ => properties
                .get(self.property.as_deref()?)?
                .as_f64()
                .filter(|v| v.is_finite()),
        }
    }

    /// The reported value from (events, total).
    pub fn value(&self, events: u64, total: f64) -> Option<f64> {
        match self.aggregate.as_str() {
            "count" => Some(events as f64),
            "sum" => Some(total),
            _ if events == 0 => None,
            _ => Some(total / events as f64),
        }
    }
}

const SELECT_METRICS: &str =
    "SELECT id, env_id, name, event_name, aggregate, property FROM metrics ORDER BY id";

pub async fn add_metric(
    pool: &MySqlPool,
    env_name: &str,
    name: &str,
    event_name: &str,
    aggregate: &str,
    property: Option<&str>,
) -> Result<u32> {
    check_name("metric name", name)?;
    let env = environment_by_name(pool, env_name).await?;
    if !matches!(aggregate, "sum" | "avg" | "count") {
        return Err(Error::InvalidArgument(
            "aggregate",
            format!("{aggregate:?}: use sum, avg or count"),
        ));
    }
    if aggregate != "count" {
        let ok = property.is_some_and(|p| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !ok {
            return Err(Error::InvalidArgument(
                "property",
                "a 1-64 character property name of [A-Za-z0-9_-]".into(),
            ));
        }
    }
    if event_name.is_empty() || event_name.chars().count() > protocol::MAX_NAME_LEN {
        return Err(Error::InvalidArgument(
            "event",
            "an event name of 1-200 characters".into(),
        ));
    }
    let inserted = sqlx::query("INSERT INTO metrics (env_id, name, event_name, aggregate, property) VALUES (?, ?, ?, ?, ?)")
        .bind(env.id)
        .bind(name)
        .bind(event_name)
        .bind(aggregate)
        .bind(property.filter(|_| aggregate != "count"))
        .execute(pool)
        .await;
    match inserted {
        Ok(done) => Ok(done.last_insert_id() as u32),
        Err(e) if unique_violation(&e) => Err(Error::AlreadyExists("metric", name.into())),
        Err(e) => Err(e.into()),
    }
}

pub async fn list_metrics(pool: &MySqlPool, env_name: &str) -> Result<Vec<Metric>> {
    let env = environment_by_name(pool, env_name).await?;
    Ok(sqlx::query_as(
        "SELECT id, env_id, name, event_name, aggregate, property FROM metrics WHERE env_id = ? ORDER BY name",
    )
    .bind(env.id)
    .fetch_all(pool)
    .await?)
}

pub async fn remove_metric(pool: &MySqlPool, env_name: &str, name: &str) -> Result<()> {
    let env = environment_by_name(pool, env_name).await?;
    let done = sqlx::query("DELETE FROM metrics WHERE env_id = ? AND name = ?")
        .bind(env.id)
        .bind(name)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::InvalidArgument(
            "metric",
            format!("{name:?} is not a metric of {env_name:?}"),
        ));
    }
    Ok(())
}
