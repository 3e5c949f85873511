//! Connecting to MySQL: options, database creation, migrations, redaction.

use std::{str::FromStr, time::Duration};

use sqlx::{
    mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions},
    ConnectOptions, Executor,
};

use crate::error::{Error, Result};

/// A URL with its password replaced, safe for logs, errors and output.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}

/// MySQL database and table names that may be interpolated into DDL.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn options(url: &str) -> Result<MySqlConnectOptions> {
    let options = MySqlConnectOptions::from_str(url)
        .map_err(|e| Error::InvalidArgument("database url", format!("{}: {e}", redact(url))))?;
    Ok(options
        .timezone(Some("+00:00".into()))
        .charset("utf8mb4")
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

/// A pool that connects on first use; `acquire_timeout` keeps an
/// unreachable server from stalling a request for long.
pub fn lazy_pool(url: &str, size: u32, acquire_timeout: Duration) -> Result<MySqlPool> {
    Ok(pool_options(size, acquire_timeout).connect_lazy_with(options(url)?))
}

/// Like [`lazy_pool`], but a statement waiting for a lock (row or table)
/// fails after `lock_wait` seconds instead of the server's default (50 s for
/// rows, up to a year for table locks).
pub fn lazy_pool_with_lock_wait(
    url: &str,
    size: u32,
    acquire_timeout: Duration,
    lock_wait: u32,
) -> Result<MySqlPool> {
    let set = format!(
        "SET SESSION innodb_lock_wait_timeout = {lock_wait}, lock_wait_timeout = {lock_wait}"
    );
    Ok(pool_options(size, acquire_timeout)
        .after_connect(move |conn, _| {
            let set = set.clone();
            Box::pin(async move {
                conn.execute(set.as_str()).await?;
                Ok(())
            })
        })
        .connect_lazy_with(options(url)?))
}

fn pool_options(size: u32, acquire_timeout: Duration) -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
}

/// Create the URL's database if it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<()> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| Error::InvalidArgument("database url", format!("{}: {e}", redact(url))))?;
    let database = parsed.path().trim_start_matches('/').to_string();
    if !is_identifier(&database) {
        return Err(Error::InvalidArgument(
            "database url",
            format!(
                "{}: the database name must be 1-64 characters of [A-Za-z0-9_]",
                redact(url)
            ),
        ));
    }
    parsed.set_path("");
    let mut conn = options(parsed.as_str())?.connect().await?;
    conn.execute(
        format!("CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            .as_str(),
    )
    .await?;
    Ok(())
}

async fn migrate_with(mut migrator: sqlx::migrate::Migrator, url: &str) -> Result<()> {
    ensure_database(url).await?;
    let mut conn = options(url)?.connect().await?;
    // The catalog and a shard may share one database: each migrator leaves
    // the other's versions alone.
    migrator.set_ignore_missing(true);
    migrator.run(&mut conn).await?;
    Ok(())
}

pub async fn migrate_catalog(url: &str) -> Result<()> {
    migrate_with(sqlx::migrate!("../migrations/catalog"), url).await
}

pub async fn migrate_shard(url: &str) -> Result<()> {
    migrate_with(sqlx::migrate!("../migrations/shard"), url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("mysql://u:secret@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(redact("mysql://u@h/db"), "mysql://u@h/db");
        assert!(!redact("not a url secret").contains("secret"));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("sluice_shard_1"));
        assert!(!is_identifier("a`b"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("x; DROP TABLE y"));
        assert!(!is_identifier(&"a".repeat(65)));
    }
}
