//! The catalog database: read as a [`CatalogSource`], and administered by
//! the CLI (shards, environments, read tokens, API keys, metrics).

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use async_trait::async_trait;
use sqlx::{mysql::MySqlPool, FromRow};

use crate::{
    db,
    error::{Error, Result},
    model::{Aggregate, Environment, Metric, Shard, Snapshot},
    store::CatalogSource,
};

/// The catalog tables (`migrations/catalog`), read through `pool`.
pub struct MySqlCatalog {
    pool: MySqlPool,
}

impl MySqlCatalog {
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

#[async_trait]
impl CatalogSource for MySqlCatalog {
    async fn load(&self) -> Result<Snapshot> {
        let pool = &self.pool;
        let read_at = Instant::now();
        let shards = list_shards(pool).await?;
        let environments = list_environments(pool).await?;
        let mut metrics: HashMap<u32, Vec<Metric>> = HashMap::new();
        for metric in all_metrics(pool).await? {
            metrics.entry(metric.env_id).or_default().push(metric);
        }
        let mut suppressed: HashMap<u32, HashSet<[u8; 32]>> = HashMap::new();
        for (env_id, person) in super::erasure::active_suppressions(pool).await? {
            suppressed.entry(env_id).or_default().insert(person);
        }
        Ok(Snapshot {
            shards: shards.into_iter().map(|s| (s.id, s)).collect(),
            environments: environments.into_iter().map(|e| (e.id, e)).collect(),
            metrics,
            suppressed,
            read_at,
        })
    }

    async fn read_token_env(&self, hash: &[u8; 32]) -> Result<Option<u32>> {
        read_token_env(&self.pool, hash).await
    }

    async fn api_key_env(&self, hash: &str) -> Result<Option<u32>> {
        api_key_env(&self.pool, hash).await
    }

    async fn prune_suppressions(&self, limit: u32) -> Result<u64> {
        super::erasure::prune_suppressions(&self.pool, limit).await
    }
}

const SELECT_SHARDS: &str = "SELECT id, name, url, status FROM shards ORDER BY id";
const ENVIRONMENT_COLUMNS: &str =
    "id, name, primary_shard_id, secondary_shard_id, ip_policy, geo_policy, bot_policy, retention_days";

pub async fn list_shards(pool: &MySqlPool) -> Result<Vec<Shard>> {
    Ok(sqlx::query_as(SELECT_SHARDS).fetch_all(pool).await?)
}

pub async fn list_environments(pool: &MySqlPool) -> Result<Vec<Environment>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ENVIRONMENT_COLUMNS} FROM environments ORDER BY id"
    ))
    .fetch_all(pool)
    .await?)
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
    sqlx::query_as(&format!(
        "SELECT {ENVIRONMENT_COLUMNS} FROM environments WHERE name = ?"
    ))
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

/// Change an environment's privacy policy (the fields given; the rest stay):
/// the backend's door applies it within the catalog's routing bound, the
/// edge once its keys' KV records carry it (`backend env set --edge`).
pub async fn set_environment_policy(
    pool: &MySqlPool,
    name: &str,
    ip: Option<intake::enrich::IpPolicy>,
    geo: Option<intake::enrich::GeoPolicy>,
    bots: Option<intake::enrich::BotPolicy>,
) -> Result<Environment> {
    let mut env = environment_by_name(pool, name).await?;
    env.ip_policy = ip.unwrap_or(env.ip_policy);
    env.geo_policy = geo.unwrap_or(env.geo_policy);
    env.bot_policy = bots.unwrap_or(env.bot_policy);
    sqlx::query(
        "UPDATE environments SET ip_policy = ?, geo_policy = ?, bot_policy = ? WHERE id = ?",
    )
    .bind(env.ip_policy.as_str())
    .bind(env.geo_policy.as_str())
    .bind(env.bot_policy.as_str())
    .bind(env.id)
    .execute(pool)
    .await?;
    Ok(env)
}

/// Set (`Some(days)`, at least 1) or remove (`None`) an environment's
/// retention: `backend serve` applies it within the catalog's routing bound
/// plus `SLUICE_RETENTION_INTERVAL_SECS`.
pub async fn set_environment_retention(
    pool: &MySqlPool,
    name: &str,
    days: Option<u32>,
) -> Result<Environment> {
    if days == Some(0) {
        return Err(Error::InvalidArgument(
            "retention",
            "days must be at least 1 (--none removes the retention)".into(),
        ));
    }
    let mut env = environment_by_name(pool, name).await?;
    env.retention_days = days;
    sqlx::query("UPDATE environments SET retention_days = ? WHERE id = ?")
        .bind(days)
        .bind(env.id)
        .execute(pool)
        .await?;
    Ok(env)
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
/// A new secret: `kind` (`srt_` read token, `sk_` API key) and 128 random
/// bits in hex.
fn new_secret(kind: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{kind}{}", intake::credentials::hex(&bytes))
}

/// How a token is listed and revoked: its first 12 characters.
pub fn token_prefix(token: &str) -> &str {
    token.get(..12).unwrap_or(token)
}

/// Create a read token for an environment; the text is returned once and
/// only its SHA-256 is stored.
pub async fn create_read_token(pool: &MySqlPool, env_name: &str) -> Result<String> {
    let env = environment_by_name(pool, env_name).await?;
    let token = new_secret("srt_");
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

// ---- API keys ----

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ApiKey {
    pub env_id: u32,
    /// The key's first 12 characters (`None` for a key imported by hash).
    pub prefix: Option<String>,
    /// Lowercase hex SHA-256 of the key.
    pub key_hash: String,
    pub created_at: chrono::NaiveDateTime,
    pub revoked_at: Option<chrono::NaiveDateTime>,
}

const SELECT_API_KEYS: &str =
    "SELECT env_id, prefix, key_hash, created_at, revoked_at FROM api_keys";

/// Create an API key for an environment. The key is returned once; only
/// its SHA-256 is stored.
pub async fn create_api_key(pool: &MySqlPool, env_name: &str) -> Result<(String, ApiKey)> {
    let env = environment_by_name(pool, env_name).await?;
    let key = new_secret("sk_");
    let hash = intake::credentials::key_hash(&key);
    sqlx::query("INSERT INTO api_keys (env_id, prefix, key_hash) VALUES (?, ?, ?)")
        .bind(env.id)
        .bind(token_prefix(&key))
        .bind(&hash)
        .execute(pool)
        .await?;
    let stored = api_key_by_hash(pool, &hash).await?;
    Ok((key, stored))
}

/// Record a key created elsewhere (the edge's KV, before keys lived in the
/// catalog) by its SHA-256 hex. Importing a hash already stored is a no-op.
pub async fn import_api_key(pool: &MySqlPool, env_name: &str, hash: &str) -> Result<ApiKey> {
    let env = environment_by_name(pool, env_name).await?;
    if !is_key_hash(hash) {
        return Err(Error::InvalidArgument(
            "key hash",
            format!("{hash:?}: give the key's SHA-256 as 64 lowercase hex digits"),
        ));
    }
    sqlx::query("INSERT IGNORE INTO api_keys (env_id, key_hash) VALUES (?, ?)")
        .bind(env.id)
        .bind(hash)
        .execute(pool)
        .await?;
    let stored = api_key_by_hash(pool, hash).await?;
    if stored.env_id != env.id {
        return Err(Error::AlreadyExists(
            "key of another environment",
            hash.into(),
        ));
    }
    Ok(stored)
}

fn is_key_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

async fn api_key_by_hash(pool: &MySqlPool, hash: &str) -> Result<ApiKey> {
    Ok(
        sqlx::query_as(&format!("{SELECT_API_KEYS} WHERE key_hash = ?"))
            .bind(hash)
            .fetch_one(pool)
            .await?,
    )
}

pub async fn list_api_keys(pool: &MySqlPool, env_name: &str) -> Result<Vec<ApiKey>> {
    let env = environment_by_name(pool, env_name).await?;
    Ok(
        sqlx::query_as(&format!("{SELECT_API_KEYS} WHERE env_id = ? ORDER BY id"))
            .bind(env.id)
            .fetch_all(pool)
            .await?,
    )
}

/// Revoke one active key, named by the key itself, its SHA-256 hex, or its
/// 12-character prefix (which must name exactly one active key).
pub async fn revoke_api_key(pool: &MySqlPool, which: &str) -> Result<ApiKey> {
    let which = intake::credentials::trim_http_whitespace(which);
    let (column, value) = if is_key_hash(which) {
        ("key_hash", which.to_owned())
    } else if which.len() > 12 {
        ("key_hash", intake::credentials::key_hash(which))
    } else {
        ("prefix", which.to_owned())
    };
    let matches: Vec<ApiKey> = sqlx::query_as(&format!(
        "{SELECT_API_KEYS} WHERE {column} = ? AND revoked_at IS NULL"
    ))
    .bind(value)
    .fetch_all(pool)
    .await?;
    let key = match <[ApiKey; 1]>::try_from(matches) {
        Ok([key]) => key,
        Err(found) if found.is_empty() => {
            return Err(Error::InvalidArgument(
                "key",
                format!("no active key {which:?} (give the key, its prefix or its SHA-256 hex)"),
            ))
        }
        Err(found) => {
            return Err(Error::InvalidArgument(
                "key",
                format!(
                    "{which:?} names {} active keys: give the whole key or its hash",
                    found.len()
                ),
            ))
        }
    };
    sqlx::query("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP(3) WHERE key_hash = ?")
        .bind(&key.key_hash)
        .execute(pool)
        .await?;
    api_key_by_hash(pool, &key.key_hash).await
}

/// The environment an active API key (by its SHA-256 hex) writes to.
pub async fn api_key_env(pool: &MySqlPool, hash: &str) -> Result<Option<u32>> {
    Ok(
        sqlx::query_scalar("SELECT env_id FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(pool)
            .await?,
    )
}

// ---- metrics ----

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

    #[test]
    fn read_tokens_list_by_prefix() {
        assert_eq!(token_prefix("srt_0123456789abcdef"), "srt_01234567");
        assert_eq!(token_prefix("short"), "short");
        let token = new_secret("srt_");
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
}
