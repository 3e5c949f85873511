//! The catalog: which shards exist and where each environment's events go.
//!
//! Routing reads an in-memory snapshot. Its age is bounded by the write path
//! itself, not by a timer: a write whose snapshot is older than
//! `SLUICE_CATALOG_REFRESH_MS` waits for one shared refresh before routing
//! ([`Catalog::routing_snapshot`]); a background task refreshes at half that
//! interval so writes rarely wait. An environment id the snapshot does not
//! know forces a refresh too, so a new environment is routable at once. When
//! the catalog cannot be read, routing goes on with the last snapshot
//! (ingest must not stop) and its age shows in `/readyz` and `/metrics`.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use sqlx::{mysql::MySqlPool, FromRow};

use crate::{
    db,
    error::{Error, Result},
    store::CatalogSource,
};

#[derive(Debug, Clone, FromRow)]
pub struct Shard {
    pub id: u32,
    pub name: String,
    pub url: String,
    #[sqlx(try_from = "String")]
    pub status: ShardStatus,
}

/// A shard's `status` column: `active` shards are written; any other value
/// (the catalog sets none yet, an operator may) keeps writes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardStatus {
    Active,
    Other(String),
}

impl From<String> for ShardStatus {
    fn from(text: String) -> Self {
        if text == "active" {
            ShardStatus::Active
        } else {
            ShardStatus::Other(text)
        }
    }
}

impl std::fmt::Display for ShardStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardStatus::Active => f.pad("active"),
            ShardStatus::Other(text) => f.pad(text),
        }
    }
}

impl Shard {
    pub fn is_writable(&self) -> bool {
        self.status == ShardStatus::Active
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct Environment {
    pub id: u32,
    pub name: String,
    pub primary_shard_id: u32,
    pub secondary_shard_id: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub shards: HashMap<u32, Shard>,
    pub environments: HashMap<u32, Environment>,
    /// Each environment's metrics.
    pub metrics: HashMap<u32, Vec<Metric>>,
    /// When the read that produced this snapshot started: it reflects the
    /// catalog as of then, so its age is measured from here.
    pub read_at: Instant,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            shards: HashMap::new(),
            environments: HashMap::new(),
            metrics: HashMap::new(),
            read_at: Instant::now(),
        }
    }
}

impl Snapshot {
    /// How long ago the read that produced this snapshot started.
    pub fn age(&self) -> Duration {
        self.read_at.elapsed()
    }

    pub fn knows(&self, env_ids: &[u32]) -> bool {
        env_ids.iter().all(|id| self.environments.contains_key(id))
    }

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

/// The cached catalog used by `serve`.
pub struct Catalog {
    source: Arc<dyn CatalogSource>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The routing bound: no write routes with a snapshot older than this
    /// while the catalog answers.
    max_age: Duration,
    /// One refresh at a time (single flight): callers that queue behind a
    /// refresh use its result instead of starting their own.
    refreshing: tokio::sync::Mutex<Attempts>,
}

/// When refreshes started, to space them out.
#[derive(Default)]
struct Attempts {
    /// The last refresh forced by an unknown environment id.
    forced: Option<Instant>,
    /// The last refresh that failed.
    failed: Option<Instant>,
}

/// Refreshes forced by unknown environment ids, and retries after a failed
/// refresh, happen at most this often: a stream of envelopes for a deleted
/// environment, or a catalog outage, cannot turn into a query per request.
pub const REFRESH_GAP: Duration = Duration::from_millis(200);

/// A catalog read that takes longer is abandoned: writers waiting for it go
/// on with the last snapshot.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a caller needs a fresher snapshot than the current one.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    /// It names an environment id the snapshot does not know.
    Unknown,
    /// The snapshot is older than the given age.
    OlderThan(Duration),
}

impl Catalog {
    /// The catalog as `source` has it now.
    pub async fn open(source: Arc<dyn CatalogSource>, max_age: Duration) -> Result<Self> {
        let snapshot = source
            .load()
            .await
            .map_err(|e| Error::Catalog(e.to_string()))?;
        Ok(Self::with_snapshot(source, snapshot, max_age))
    }

    /// A catalog that starts from `snapshot` (refreshes read `source`).
    pub fn with_snapshot(
        source: Arc<dyn CatalogSource>,
        snapshot: Snapshot,
        max_age: Duration,
    ) -> Self {
        Self {
            source,
            snapshot: RwLock::new(Arc::new(snapshot)),
            max_age,
            refreshing: tokio::sync::Mutex::new(Attempts::default()),
        }
    }

    /// The environment of an active read token (by its SHA-256), uncached.
    pub async fn read_token_env(&self, hash: &[u8; 32]) -> Result<Option<u32>> {
        self.source.read_token_env(hash).await
    }

    /// The routing bound (`SLUICE_CATALOG_REFRESH_MS`).
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The current snapshot, however old (for reads that do not route).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether `snapshot` is within the routing bound.
    pub fn is_fresh(&self, snapshot: &Snapshot) -> bool {
        snapshot.age() <= self.max_age
    }

    /// Read the catalog now and replace the snapshot.
    pub async fn refresh(&self) -> Result<()> {
        let fresh = match tokio::time::timeout(REFRESH_TIMEOUT, self.source.load()).await {
            Ok(Ok(snapshot)) => Arc::new(snapshot),
            Ok(Err(e)) => return Err(Error::Catalog(e.to_string())),
            Err(_) => return Err(Error::Catalog("reading the catalog timed out".into())),
        };
        let mut guard = match self.snapshot.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A slow read must not replace a newer one that finished first.
        if fresh.read_at >= guard.read_at {
            *guard = fresh;
        }
        Ok(())
    }

    /// The snapshot a write routes with: one no older than the routing bound
    /// that knows every id in `env_ids`. Concurrent callers share one
    /// refresh. When the catalog cannot be read, a caller whose ids are all
    /// known goes on with the last snapshot (ingest must not stop; its age is
    /// visible in `/readyz` and `/metrics`); one that names an unknown id gets
    /// the error, so its envelopes are retried rather than refused.
    pub async fn routing_snapshot(&self, env_ids: &[u32]) -> Result<Arc<Snapshot>> {
        let current = self.snapshot();
        if !current.knows(env_ids) {
            return self.refreshed(Need::Unknown, env_ids).await;
        }
        if self.is_fresh(&current) {
            return Ok(current);
        }
        match self.refreshed(Need::OlderThan(self.max_age), env_ids).await {
            Ok(snapshot) => Ok(snapshot),
            Err(_) => Ok(self.snapshot()),
        }
    }

    /// The background refresh: keeps the snapshot younger than `age` so
    /// writes seldom wait; shares the single flight with writers.
    pub async fn refresh_if_older(&self, age: Duration) -> Result<()> {
        self.refreshed(Need::OlderThan(age), &[]).await.map(|_| ())
    }

    async fn refreshed(&self, need: Need, env_ids: &[u32]) -> Result<Arc<Snapshot>> {
        let asked = Instant::now();
        let satisfied = |s: &Snapshot| match need {
            Need::Unknown => s.knows(env_ids) || s.read_at >= asked,
            Need::OlderThan(age) => s.age() <= age,
        };
        let mut attempts = self.refreshing.lock().await;
        let current = self.snapshot();
        if satisfied(&current) {
            return Ok(current);
        }
        if let Some(failed) = attempts.failed.filter(|f| f.elapsed() < REFRESH_GAP) {
            if failed >= asked || need != Need::Unknown {
                return Err(Error::Catalog(
                    "the catalog could not be read moments ago".into(),
                ));
            }
        }
        if need == Need::Unknown {
            if let Some(started) = attempts.forced {
                tokio::time::sleep(REFRESH_GAP.saturating_sub(started.elapsed())).await;
            }
            attempts.forced = Some(Instant::now());
        }
        match self.refresh().await {
            Ok(()) => {
                attempts.failed = None;
                Ok(self.snapshot())
            }
            Err(error) => {
                attempts.failed = Some(Instant::now());
                tracing::warn!(
                    %error,
                    snapshot_age_ms = self.snapshot().age().as_millis() as u64,
                    "catalog refresh failed; routing with the previous snapshot"
                );
                Err(error)
            }
        }
    }

    /// The environment with this id, refreshing (throttled, single flight)
    /// when the snapshot does not know it yet; from the last snapshot when
    /// the catalog cannot be read.
    pub async fn environment(&self, env_id: u32) -> Option<Environment> {
        let snapshot = match self.routing_snapshot(&[env_id]).await {
            Ok(snapshot) => snapshot,
            Err(_) => self.snapshot(),
        };
        snapshot.environments.get(&env_id).cloned()
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
    format!("srt_{}", intake::credentials::hex(&bytes))
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
        .bind(&intake::credentials::secret_hash(&token)[..])
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

/// How a metric aggregates: the sum or the average of a numeric property,
/// or the number of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Avg,
    Count,
}

impl Aggregate {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Count => "count",
        }
    }
}

impl std::fmt::Display for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Aggregate {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "sum" => Ok(Aggregate::Sum),
            "avg" => Ok(Aggregate::Avg),
            "count" => Ok(Aggregate::Count),
            _ => Err(Error::InvalidArgument(
                "aggregate",
                format!("{text:?}: use sum, avg or count"),
            )),
        }
    }
}

/// A named aggregate over one event name: `sum`/`avg` of a numeric
/// property, or `count`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub id: u32,
    pub env_id: u32,
    pub name: String,
    pub event_name: String,
    pub aggregate: Aggregate,
    pub property: Option<String>,
}

/// A `metrics` row as stored, before its aggregate is checked.
#[derive(FromRow)]
struct MetricRow {
    id: u32,
    env_id: u32,
    name: String,
    event_name: String,
    aggregate: String,
    property: Option<String>,
}

/// The metrics of `rows`; one whose aggregate this version does not know
/// is left out (with a warning) rather than computed as something else.
fn checked_metrics(rows: Vec<MetricRow>) -> Vec<Metric> {
    rows.into_iter()
        .filter_map(|row| match row.aggregate.parse() {
            Ok(aggregate) => Some(Metric {
                id: row.id,
                env_id: row.env_id,
                name: row.name,
                event_name: row.event_name,
                aggregate,
                property: row.property,
            }),
            Err(error) => {
                tracing::warn!(metric = %row.name, env_id = row.env_id, %error, "metric ignored");
                None
            }
        })
        .collect()
}

/// Every metric of the catalog, by id.
pub async fn all_metrics(pool: &MySqlPool) -> Result<Vec<Metric>> {
    Ok(checked_metrics(
        sqlx::query_as(SELECT_METRICS).fetch_all(pool).await?,
    ))
}

impl Metric {
    /// What one event adds to this metric: `Some(value)` when it counts.
    pub fn contribution(
        &self,
        properties: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<f64> {
        match self.aggregate {
            Aggregate::Count => Some(1.0),
            Aggregate::Sum | Aggregate::Avg => properties
                .get(self.property.as_deref()?)?
                .as_f64()
                .filter(|v| v.is_finite()),
        }
    }

    /// The reported value from (events, total).
    pub fn value(&self, events: u64, total: f64) -> Option<f64> {
        match self.aggregate {
            Aggregate::Count => Some(events as f64),
            Aggregate::Sum => Some(total),
            Aggregate::Avg if events == 0 => None,
            Aggregate::Avg => Some(total / events as f64),
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
    let aggregate: Aggregate = aggregate.parse()?;
    if aggregate != Aggregate::Count {
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
        .bind(aggregate.as_str())
        .bind(property.filter(|_| aggregate != Aggregate::Count))
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
    Ok(checked_metrics(sqlx::query_as(
        "SELECT id, env_id, name, event_name, aggregate, property FROM metrics WHERE env_id = ? ORDER BY name",
    )
    .bind(env.id)
    .fetch_all(pool)
    .await?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryCatalog;
    use serde_json::json;

    fn source() -> Arc<MemoryCatalog> {
        let source = Arc::new(MemoryCatalog::new());
        source.add_shard(1, "a");
        source.add_shard(2, "b");
        source.put_environment(10, "web", 1, None);
        source.put_environment(30, "moving", 1, Some(2));
        source.put_environment(40, "lost", 9, None);
        source.put_environment(50, "half", 1, Some(9));
        source
    }

    fn metric(aggregate: &str) -> Metric {
        Metric {
            id: 1,
            env_id: 1,
            name: "m".into(),
            event_name: "buy".into(),
            aggregate: aggregate.parse().expect("an aggregate"),
            property: Some("amount".into()),
        }
    }

    #[test]
    fn targets_are_the_primary_then_the_secondary() {
        let snapshot = source().snapshot_at(Instant::now());
        let names = |env| {
            snapshot
                .targets(env)
                .map(|t| t.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
        };
        assert_eq!(names(10), Some(vec!["a".to_string()]));
        assert_eq!(names(30), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(names(40), None, "a primary missing from the catalog");
        assert_eq!(names(50), Some(vec!["a".to_string()]));
        assert_eq!(names(99), None);
        assert!(snapshot.knows(&[10, 30]) && !snapshot.knows(&[10, 99]));
    }

    #[tokio::test]
    async fn a_fresh_snapshot_that_knows_the_ids_is_used_as_is() {
        let source = source();
        let catalog = Catalog::open(source.clone(), Duration::from_secs(60))
            .await
            .expect("open");
        assert_eq!(source.loads(), 1);
        catalog.routing_snapshot(&[10, 30]).await.expect("routes");
        assert_eq!(source.loads(), 1, "no read");
        source.put_environment(60, "new", 2, None);
        let snapshot = catalog.routing_snapshot(&[60]).await.expect("routes");
        assert!(snapshot.environments.contains_key(&60));
        assert_eq!(source.loads(), 2, "an unknown id forces one read");
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_snapshot() {
        let source = source();
        let catalog = Catalog::open(source.clone(), Duration::from_secs(60))
            .await
            .expect("open");
        source.set_failing(true);
        assert!(matches!(catalog.refresh().await, Err(Error::Catalog(_))));
        assert!(catalog.snapshot().environments.contains_key(&10));
        assert!(catalog.is_fresh(&catalog.snapshot()));
        assert!(matches!(
            catalog.routing_snapshot(&[99]).await,
            Err(Error::Catalog(_))
        ));
        assert!(
            catalog.environment(10).await.is_some(),
            "known from the last snapshot"
        );
    }

    #[tokio::test]
    async fn a_stale_snapshot_is_refreshed_before_routing() {
        let source = source();
        let old = Instant::now()
            .checked_sub(Duration::from_secs(10))
            .expect("the clock is past 10 s");
        let catalog = Catalog::with_snapshot(
            source.clone(),
            source.snapshot_at(old),
            Duration::from_secs(1),
        );
        assert!(!catalog.is_fresh(&catalog.snapshot()));
        let snapshot = catalog.routing_snapshot(&[10]).await.expect("routes");
        assert!(snapshot.age() < Duration::from_secs(1));
        assert_eq!(source.loads(), 1);
        assert!(catalog.is_fresh(&catalog.snapshot()));
    }

    #[test]
    fn metric_values_by_aggregate() {
        let props = json!({"amount": 2.5, "text": "x"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(metric("sum").contribution(&props), Some(2.5));
        assert_eq!(metric("count").contribution(&props), Some(1.0));
        let mut text = metric("sum");
        text.property = Some("text".into());
        assert_eq!(text.contribution(&props), None);
        assert_eq!(metric("sum").value(4, 10.0), Some(10.0));
        assert_eq!(metric("avg").value(4, 10.0), Some(2.5));
        assert_eq!(metric("avg").value(0, 0.0), None, "an average of nothing");
        assert_eq!(metric("count").value(4, 10.0), Some(4.0));
    }

    #[test]
    fn read_tokens_list_by_prefix() {
        assert_eq!(token_prefix("srt_0123456789abcdef"), "srt_01234567");
        assert_eq!(token_prefix("short"), "short");
        let token = new_read_token();
        assert!(token.starts_with("srt_") && token.len() == 36, "{token}");
    }

    #[test]
    fn an_unknown_aggregate_is_refused_not_averaged() {
        assert!(matches!(
            "median".parse::<Aggregate>(),
            Err(Error::InvalidArgument("aggregate", _))
        ));
        let row = |name: &str, aggregate: &str| MetricRow {
            id: 1,
            env_id: 1,
            name: name.into(),
            event_name: "buy".into(),
            aggregate: aggregate.into(),
            property: Some("amount".into()),
        };
        let metrics = checked_metrics(vec![row("a", "sum"), row("b", "median"), row("c", "count")]);
        let kept: Vec<_> = metrics
            .iter()
            .map(|m| (m.name.as_str(), m.aggregate))
            .collect();
        assert_eq!(kept, vec![("a", Aggregate::Sum), ("c", Aggregate::Count)]);
        assert_eq!(format!("{:<6}|", Aggregate::Avg), "avg   |");
    }

    #[test]
    fn only_active_shards_are_writable() {
        let shard = |status: &str| Shard {
            id: 1,
            name: "a".into(),
            url: String::new(),
            status: ShardStatus::from(status.to_string()),
        };
        assert!(shard("active").is_writable());
        assert!(!shard("readonly").is_writable());
        assert!(!shard("Active").is_writable());
        assert_eq!(format!("{:<8}|", shard("readonly").status), "readonly|");
        assert_eq!(shard("active").status.to_string(), "active");
    }
}
