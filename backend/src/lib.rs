//! Sluice backend: takes batches of envelopes from the edge consumer and
//! lands each environment's events in its MySQL shard(s), idempotently.
//!
//! One batch reads as a straight line: [`api`] (auth, decode, validate) →
//! [`ingest`] (group, route) → [`catalog`] (environment → shards) →
//! [`shards`] (multi-row `INSERT IGNORE`) → [`counters`] (off the hot path).

pub mod api;
pub mod catalog;
pub mod config;
pub mod counters;
pub mod db;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod shards;
pub mod stats;

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use config::Config;
pub use error::{Error, Result};

pub struct Inner {
    pub config: Config,
    pub catalog: catalog::Catalog,
    pub shards: shards::Shards,
    pub counters: counters::Counters,
    pub metrics: metrics::Metrics,
    pub stats: stats::Hub,
}

/// What every handler and background task shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub async fn new(config: Config) -> Result<Self> {
        db::migrate_catalog(&config.database_url).await?;
        let pool = db::lazy_pool(&config.database_url, 4, config.shard_timeout())?;
        let catalog = catalog::Catalog::open(pool).await?;
        let counters = counters::Counters::new(config.second_retention_secs());
        let shards = shards::Shards::new(
            config.shard_pool_size,
            config.shard_timeout(),
            config.insert_chunk_rows,
        );
        Ok(Self(Arc::new(Inner {
            config,
            catalog,
            shards,
            counters,
            metrics: metrics::Metrics::new(),
            stats: stats::Hub::default(),
        })))
    }

    /// Drop counts past their retention on every shard.
    pub async fn prune_counters(&self) {
        let now = chrono::Utc::now().timestamp();
        let snapshot = self.catalog.snapshot();
        for shard in snapshot.shards.values() {
            let Ok(pool) = self.shards.pool(shard) else {
                continue;
            };
            let cutoffs = (
                now - self.config.second_retention_secs(),
                now - self.config.minute_retention_secs(),
            );
            if let Err(error) = counters::prune(&pool, cutoffs.0, cutoffs.1).await {
                tracing::warn!(shard = %shard.name, %error, "pruning counts failed");
            }
        }
    }

    /// Flush counter deltas now (also done every `SLUICE_COUNTER_FLUSH_MS`).
    /// Returns how many shards failed (their deltas are kept for the next flush).
    pub async fn flush_counters(&self) -> usize {
        let failed = self
            .counters
            .flush(&self.catalog.snapshot(), &self.shards)
            .await;
        for shard in &failed {
            self.metrics
                .counter_flush_failures
                .with_label_values(&[shard])
                .inc();
        }
        failed.len()
    }
}

/// Catalog refresh and counter flush, until `stop` turns true.
fn spawn_background(state: AppState, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut refresh = tokio::time::interval(state.config.catalog_refresh());
        let mut flush = tokio::time::interval(state.config.counter_flush());
        // Pruning starts a minute in: nothing is due at start-up, and the
        // first batches of a process are not raced by a delete.
        let prune_every = std::time::Duration::from_secs(60);
        let mut prune =
            tokio::time::interval_at(tokio::time::Instant::now() + prune_every, prune_every);
        loop {
            tokio::select! {
                _ = refresh.tick() => {
                    if let Err(error) = state.catalog.refresh().await {
                        tracing::warn!(%error, "catalog refresh failed; routing with the previous snapshot");
                    }
                }
                _ = flush.tick() => {
                    state.flush_counters().await;
                }
                _ = prune.tick() => {
                    state.prune_counters().await;
                }
                _ = stop.changed() => break,
            }
        }
    })
}

/// A running server: its address, and the handle that ends when it has
/// drained in-flight requests and flushed its counters.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    pub done: JoinHandle<Result<()>>,
}

/// Bind, serve until `shutdown` resolves, then finish in-flight requests,
/// flush counters and close the shard pools.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Server> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", config.listen_addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let state = AppState::new(config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = spawn_background(state.clone(), stop_rx);
    let app = api::router(state.clone());
    let server_state = state.clone();
    let done = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = stop_tx.send(true);
        let _ = background.await;
        let mut failed = server_state.flush_counters().await;
        for _ in 0..3 {
            if failed == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            failed = server_state.flush_counters().await;
        }
        if failed > 0 {
            tracing::error!(
                pending = server_state.counters.pending_len(),
                "counter deltas lost at shutdown; run `backend counters rebuild`"
            );
        }
        server_state.shards.close().await;
        served.map_err(|e| Error::Internal(format!("server error: {e}")))
    });
    Ok(Server { addr, state, done })
}
