//! Configuration from environment variables, in one struct.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

/// Every setting of `backend serve` (and the catalog URL every command needs).
/// Each field reads an environment variable; the README lists them all.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Catalog database URL: mysql://user:pass@host:port/database.
    #[arg(long, env = "SLUICE_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Bearer token the edge consumer presents to POST /v1/ingest (>= 32 bytes).
    #[arg(
        long,
        env = "SLUICE_INGEST_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub ingest_token: String,

    #[arg(long, env = "SLUICE_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Largest request body, after gzip decompression.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most envelopes in one ingest request.
    #[arg(long, env = "SLUICE_MAX_BATCH_EVENTS", default_value_t = 20_000)]
    pub max_batch_events: usize,

    /// How often the catalog cache is re-read (the bound on routing staleness).
    #[arg(long, env = "SLUICE_CATALOG_REFRESH_MS", default_value_t = 1000)]
    pub catalog_refresh_ms: u64,

    /// Connections per shard pool.
    #[arg(long, env = "SLUICE_SHARD_POOL_SIZE", default_value_t = 4)]
    pub shard_pool_size: u32,

    /// Rows per multi-row INSERT statement.
    #[arg(long, env = "SLUICE_INSERT_CHUNK_ROWS", default_value_t = 500)]
    pub insert_chunk_rows: usize,

    /// Upper bound on one shard write (connect + insert + commit).
    #[arg(long, env = "SLUICE_SHARD_TIMEOUT_MS", default_value_t = 10_000)]
    pub shard_timeout_ms: u64,

    /// Seconds a caller is told to wait before retrying what did not land.
    #[arg(long, env = "SLUICE_RETRY_AFTER_SECS", default_value_t = 5)]
    pub retry_after_secs: u64,

    /// Counter flush interval (the dashboard's latency is this plus the stream's 1 s poll).
    #[arg(long, env = "SLUICE_COUNTER_FLUSH_MS", default_value_t = 500)]
    pub counter_flush_ms: u64,

    /// How long per-second counts are kept (the live window).
    #[arg(
        long,
        env = "SLUICE_SECOND_COUNTS_RETENTION_HOURS",
        default_value_t = 2
    )]
    pub second_counts_retention_hours: u64,

    /// How long per-minute counts are kept.
    #[arg(
        long,
        env = "SLUICE_MINUTE_COUNTS_RETENTION_DAYS",
        default_value_t = 90
    )]
    pub minute_counts_retention_days: u64,

    /// Retention: seconds between two passes of the retention task (the
    /// first starts one minute after `serve` starts).
    #[arg(long, env = "SLUICE_RETENTION_INTERVAL_SECS", default_value_t = 3600)]
    pub retention_interval_secs: u64,

    /// Retention: rows per DELETE statement.
    #[arg(long, env = "SLUICE_RETENTION_CHUNK_ROWS", default_value_t = 5000)]
    pub retention_chunk_rows: u32,

    /// Retention: pause between two DELETE statements, so ingest gets the
    /// shard between them.
    #[arg(long, env = "SLUICE_RETENTION_PAUSE_MS", default_value_t = 50)]
    pub retention_pause_ms: u64,

    /// Direct ingest: origins allowed to call the public API from a browser
    /// (`*`, or a comma-separated list of exact origins), as at the edge.
    #[arg(long, env = "SLUICE_ALLOWED_ORIGINS", default_value = "*")]
    pub allowed_origins: String,

    /// Direct ingest: addresses and CIDR ranges of reverse proxies whose
    /// `Forwarded` / `X-Forwarded-*` headers are believed (none by default).
    #[arg(long, env = "SLUICE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Direct ingest: a header a trusted proxy sets to the client's country
    /// (`CF-IPCountry`, `CloudFront-Viewer-Country`); none by default.
    #[arg(long, env = "SLUICE_COUNTRY_HEADER", default_value = "")]
    pub country_header: String,

    /// Direct ingest: the URL clients reach this backend at
    /// (`https://events.example.com`), for the browser SDK's settings;
    /// else the request's own.
    #[arg(long, env = "SLUICE_PUBLIC_URL", default_value = "")]
    pub public_url: String,

    /// Direct ingest: events taken and not yet written, at most; past it
    /// requests get 503 with Retry-After.
    #[arg(long, env = "SLUICE_MAX_EVENTS_IN_FLIGHT", default_value_t = 50_000)]
    pub max_events_in_flight: usize,

    /// Direct ingest: group-commit writes of one environment at once, at
    /// most; past the first, another starts only while a whole INSERT
    /// chunk (`SLUICE_INSERT_CHUNK_ROWS`) waits. More than
    /// `SLUICE_SHARD_POOL_SIZE` only waits for connections.
    #[arg(long, env = "SLUICE_DIRECT_WRITERS", default_value_t = 4)]
    pub direct_writers: usize,

    /// Direct ingest: requests per API key per period (0: no limit).
    #[arg(long, env = "SLUICE_KEY_RATE_LIMIT", default_value_t = 1_000_000)]
    pub key_rate_limit: u64,

    #[arg(long, env = "SLUICE_KEY_RATE_LIMIT_PERIOD_SECS", default_value_t = 10)]
    pub key_rate_limit_period_secs: u64,

    /// Direct ingest: how long an API key lookup is cached (at most 5000):
    /// a revoked key is refused within this.
    #[arg(long, env = "SLUICE_KEY_CACHE_TTL_MS", default_value_t = 2000)]
    pub key_cache_ttl_ms: u64,

    /// Log format: "json" (default) or "text".
    #[arg(long, env = "SLUICE_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
}

pub const MIN_TOKEN_BYTES: usize = 32;
/// The longest an API key lookup may be cached.
pub const MAX_KEY_CACHE_TTL_MS: u64 = 5000;

impl Config {
    pub fn catalog_refresh(&self) -> Duration {
        Duration::from_millis(self.catalog_refresh_ms.max(50))
    }
    pub fn shard_timeout(&self) -> Duration {
        Duration::from_millis(self.shard_timeout_ms.max(100))
    }
    /// How long an erasure waits after storing a suppression before it
    /// sweeps: every backend's catalog snapshot holds the suppression after
    /// the refresh bound, and a write routed with an older one ends within
    /// the shard timeout.
    pub fn erasure_settle(&self) -> Duration {
        self.catalog_refresh() + self.shard_timeout()
    }
    pub fn second_retention_secs(&self) -> i64 {
        (self.second_counts_retention_hours * 3600) as i64
    }
    pub fn minute_retention_secs(&self) -> i64 {
        (self.minute_counts_retention_days * 86_400) as i64
    }
    pub fn counter_flush(&self) -> Duration {
        Duration::from_millis(self.counter_flush_ms.max(10))
    }
    pub fn retention_interval(&self) -> Duration {
        Duration::from_secs(self.retention_interval_secs.max(1))
    }
    pub fn retention_pause(&self) -> Duration {
        Duration::from_millis(self.retention_pause_ms)
    }
    pub fn key_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.key_cache_ttl_ms.min(MAX_KEY_CACHE_TTL_MS))
    }
    pub fn country_header(&self) -> Option<&str> {
        Some(self.country_header.trim()).filter(|h| !h.is_empty())
    }

    /// `SLUICE_PUBLIC_URL` as (scheme, host with its port), if set.
    pub fn public_url(&self) -> Result<Option<(String, String)>, String> {
        let text = self.public_url.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let url = url::Url::parse(text).map_err(|e| format!("SLUICE_PUBLIC_URL `{text}`: {e}"))?;
        let host = url
            .host_str()
            .filter(|_| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| {
                format!("SLUICE_PUBLIC_URL `{text}` must be an http(s) URL with a host")
            })?;
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Some((url.scheme().to_owned(), host)))
    }

    /// Settings `serve` refuses to start with.
    pub fn check_for_serving(&self) -> Result<(), String> {
        if self.ingest_token.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "SLUICE_INGEST_TOKEN must be set to at least {MIN_TOKEN_BYTES} bytes (generate one with: openssl rand -hex 32)"
            ));
        }
        if self.insert_chunk_rows == 0 || self.insert_chunk_rows > 5000 {
            return Err("SLUICE_INSERT_CHUNK_ROWS must be between 1 and 5000".into());
        }
        if self.shard_pool_size == 0 {
            return Err("SLUICE_SHARD_POOL_SIZE must be at least 1".into());
        }
        if self.key_cache_ttl_ms > MAX_KEY_CACHE_TTL_MS {
            return Err(format!(
                "SLUICE_KEY_CACHE_TTL_MS must be at most {MAX_KEY_CACHE_TTL_MS} (a revoked key is refused within it)"
            ));
        }
        if self.retention_chunk_rows == 0 || self.retention_chunk_rows > 100_000 {
            return Err("SLUICE_RETENTION_CHUNK_ROWS must be between 1 and 100000".into());
        }
        if self.max_events_in_flight == 0 {
            return Err("SLUICE_MAX_EVENTS_IN_FLIGHT must be at least 1".into());
        }
        if self.direct_writers == 0 {
            return Err("SLUICE_DIRECT_WRITERS must be at least 1".into());
        }
        crate::public::client::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| format!("SLUICE_TRUSTED_PROXIES: {e}"))?;
        self.public_url()?;
        Ok(())
    }

    /// A config for tests and tools: defaults everywhere but the two required values.
    pub fn new(database_url: impl Into<String>, ingest_token: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            ingest_token: ingest_token.into(),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_events: 20_000,
            catalog_refresh_ms: 1000,
            shard_pool_size: 4,
            insert_chunk_rows: 500,
            shard_timeout_ms: 10_000,
            retry_after_secs: 5,
            counter_flush_ms: 500,
            second_counts_retention_hours: 2,
            minute_counts_retention_days: 90,
            retention_interval_secs: 3600,
            retention_chunk_rows: 5000,
            retention_pause_ms: 50,
            allowed_origins: "*".into(),
            trusted_proxies: String::new(),
            country_header: String::new(),
            public_url: String::new(),
            max_events_in_flight: 50_000,
            direct_writers: 4,
            key_rate_limit: 1_000_000,
            key_rate_limit_period_secs: 10,
            key_cache_ttl_ms: 2000,
            log_format: "json".into(),
        }
    }
}
