//! Sluice backend: takes batches of envelopes from the edge consumer and
//! lands each environment's events in its MySQL shard(s), idempotently.
//!
//! One batch reads as a straight line: [`api`] (auth, decode, validate) →
//! [`ingest`] (group, route) → [`catalog`] (environment → shards) →
//! [`store::EventStore`] (on MySQL [`shards`]: multi-row `INSERT IGNORE`) →
//! [`counters`] (off the hot path).
//!
//! Storage sits behind the traits of [`store`]; [`AppState::from_parts`]
//! takes any implementation of them, [`AppState::new`] the MySQL ones.

#[cfg(test)]
mod app_tests;

pub mod api;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod counters;
pub mod db;
pub mod delivery;
pub mod erasure;
pub mod error;
pub mod export;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod public;
pub mod query;
pub mod retention;
pub mod stats;
pub mod store;

pub use store::mysql::shards;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use api::app;
pub use config::Config;
pub use error::{Error, Result};

use store::{
    CounterStore, EventStore, ExportStore, LedgerStore, RetentionStore, StatsStore, TailStore,
};

pub struct Inner {
    pub config: Config,
    pub catalog: catalog::Catalog,
    /// Where events are written.
    pub events: Arc<dyn EventStore>,
    /// Where counter deltas are flushed (and pruned).
    pub counter_store: Arc<dyn CounterStore>,
    /// Where the stats API reads.
    pub stats_store: Arc<dyn StatsStore>,
    /// The delivery ledger's reports, dead letters and reads.
    pub ledger: Arc<dyn LedgerStore>,
    /// Where the live tail reads.
    pub tail_store: Arc<dyn TailStore>,
    /// Where retention deletes.
    pub retention_store: Arc<dyn RetentionStore>,
    /// Held by the retention pass that runs (one at a time per process).
    retention_running: tokio::sync::Mutex<()>,
    /// Where exports read.
    pub export_store: Arc<dyn ExportStore>,
    pub counters: counters::Counters,
    pub metrics: metrics::Metrics,
    pub stats: stats::Hub,
    /// The live tail's pollers and their ring buffers.
    pub tail: stats::TailHub,
    /// Direct ingest's keys, limits and writer.
    pub direct: public::Direct,
}

/// The storage an [`AppState`] is built on.
#[derive(Clone)]
pub struct Ports {
    pub events: Arc<dyn EventStore>,
    pub counters: Arc<dyn CounterStore>,
    pub stats: Arc<dyn StatsStore>,
    pub ledger: Arc<dyn LedgerStore>,
    pub tail: Arc<dyn TailStore>,
    pub retention: Arc<dyn RetentionStore>,
    pub export: Arc<dyn ExportStore>,
}

impl Ports {
    /// One store behind every port.
    pub fn all<
        S: EventStore
            + CounterStore
            + StatsStore
            + LedgerStore
            + TailStore
            + RetentionStore
            + ExportStore
            + 'static,
    >(
        store: Arc<S>,
    ) -> Self {
        Self {
            events: store.clone(),
            counters: store.clone(),
            stats: store.clone(),
            ledger: store.clone(),
            tail: store.clone(),
            retention: store.clone(),
            export: store,
        }
    }
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
    /// The state `serve` runs with: the catalog database migrated and read,
    /// the shards on MySQL.
    pub async fn new(config: Config) -> Result<Self> {
        db::migrate_catalog(&config.database_url).await?;
        let pool = db::lazy_pool(&config.database_url, 4, config.shard_timeout())?;
        let source = Arc::new(store::mysql::MySqlCatalog::new(pool));
        let catalog = catalog::Catalog::open(source, config.catalog_refresh()).await?;
        let shards = Arc::new(shards::Shards::new(
            config.shard_pool_size,
            config.shard_timeout(),
            config.insert_chunk_rows,
        ));
        Ok(Self::from_parts(config, catalog, Ports::all(shards)))
    }

    /// A state from parts made elsewhere (no database needed).
    pub fn from_parts(config: Config, catalog: catalog::Catalog, ports: Ports) -> Self {
        let counters = counters::Counters::new(config.second_retention_secs());
        let direct = public::Direct::new(&config);
        Self(Arc::new(Inner {
            direct,
            config,
            catalog,
            events: ports.events,
            counter_store: ports.counters,
            stats_store: ports.stats,
            ledger: ports.ledger,
            tail_store: ports.tail,
            retention_store: ports.retention,
            retention_running: tokio::sync::Mutex::new(()),
            export_store: ports.export,
            counters,
            metrics: metrics::Metrics::new(),
            stats: stats::Hub::default(),
            tail: stats::TailHub::default(),
        }))
    }

    /// Drop counts past their retention on every shard.
    pub async fn prune_counters(&self) {
        let now = chrono::Utc::now().timestamp();
        let snapshot = self.catalog.snapshot();
        for shard in snapshot.shards.values() {
            let cutoffs = (
                now - self.config.second_retention_secs(),
                now - self.config.minute_retention_secs(),
            );
            if let Err(error) = self.counter_store.prune(shard, cutoffs.0, cutoffs.1).await {
                tracing::warn!(shard = %shard.name, %error, "pruning counts failed");
            }
        }
    }

    /// Write the direct door's refusal counts to the delivery ledger (also
    /// done every second); what fails is kept for the next time.
    pub async fn flush_tallies(&self) {
        let reports = self.direct.tallies.take();
        if reports.is_empty() {
            return;
        }
        let batch = protocol::Reports {
            reports,
            dead_letters: Vec::new(),
        };
        if let Err(error) = ingest::report(self, &batch).await {
            tracing::warn!(%error, "refusal counts not written yet");
            self.metrics.ledger_report_failures.inc();
            self.direct.tallies.put_back(batch.reports);
        }
    }

    /// Sum the delivery ledger's write rows of minutes older than
    /// `older_than` into one row per minute and outcome, on every shard,
    /// at most `LEDGER_COMPACT_MINUTES` minutes per environment and shard
    /// (also done every minute for minutes over an hour old). Returns how
    /// many rows went.
    pub async fn compact_ledger(&self, older_than: Duration) -> u64 {
        let before = chrono::Utc::now().timestamp() - older_than.as_secs() as i64;
        let snapshot = self.catalog.snapshot();
        let mut removed = 0;
        for env_id in snapshot.environments.keys() {
            for shard in snapshot.targets(*env_id).unwrap_or_default() {
                match self
                    .ledger
                    .compact(shard, *env_id, before, LEDGER_COMPACT_MINUTES)
                    .await
                {
                    Ok(n) => removed += n,
                    Err(error) => {
                        tracing::warn!(shard = %shard.name, env_id, %error, "ledger compaction failed")
                    }
                }
            }
        }
        removed
    }

    /// Delete the catalog's ended suppressions, `SUPPRESSION_PRUNE_ROWS` per
    /// statement, until none is left (also done every hour); returns how
    /// many went. A failure ends the pass (the next one goes on).
    pub async fn prune_suppressions(&self) -> u64 {
        let mut removed = 0;
        loop {
            match self
                .catalog
                .prune_suppressions(SUPPRESSION_PRUNE_ROWS)
                .await
            {
                Ok(n) => {
                    removed += n;
                    self.metrics.suppressions_pruned.inc_by(n);
                    if n < u64::from(SUPPRESSION_PRUNE_ROWS) {
                        return removed;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "pruning ended suppressions failed");
                    return removed;
                }
            }
        }
    }

    /// One retention pass over every environment with a retention (or only
    /// `only`), unless one is running in this process already (then `None`);
    /// it stops between two chunks once `stop` turns true.
    pub async fn retention_pass(
        &self,
        only: Option<u32>,
        stop: &watch::Receiver<bool>,
    ) -> Option<Vec<retention::Removed>> {
        let _running = self.retention_running.try_lock().ok()?;
        Some(
            retention::pass(
                &self.catalog.snapshot(),
                self.retention_store.as_ref(),
                retention::Settings::of(&self.config),
                (only, chrono::Utc::now().timestamp_millis()),
                &self.metrics,
                stop,
            )
            .await,
        )
    }

    /// Flush counter deltas now (also done every `SLUICE_COUNTER_FLUSH_MS`).
    /// Returns how many shards failed (their deltas are kept for the next flush).
    pub async fn flush_counters(&self) -> usize {
        let failed = self
            .counters
            .flush(&self.catalog.snapshot(), self.counter_store.as_ref())
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

/// Minutes of one environment's ledger compacted per pass and shard.
pub const LEDGER_COMPACT_MINUTES: u32 = 120;
/// Write rows of the ledger are summed once their minute is this old (late
/// writes into it still count, added beside the sum).
pub const LEDGER_COMPACT_AFTER: Duration = Duration::from_secs(3600);

/// Ended suppressions deleted per statement.
pub const SUPPRESSION_PRUNE_ROWS: u32 = 1_000;

/// Run `job` every `period` (first after `delay`) in a task of its own,
/// until `stop` turns true.
fn every<F, Fut>(
    state: &AppState,
    stop: &watch::Receiver<bool>,
    (period, delay): (Duration, Duration),
    job: F,
) -> JoinHandle<()>
where
    F: Fn(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (state, mut stop) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + delay, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => job(state.clone()).await,
                _ = stop.changed() => break,
            }
        }
    })
}

/// The background jobs, each in a task of its own so that none can hold up
/// another: a flush waiting on a locked shard delays neither the catalog
/// refresh nor pruning (and writes bound their routing snapshot's age
/// themselves, see [`catalog::Catalog::routing_snapshot`]).
fn spawn_background(state: &AppState, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    // A snapshot older than half the bound is refreshed, checked every
    // quarter of it: the snapshot's age stays under ~3/4 of the bound, so
    // writes do not wait for a refresh. (Checking every half bound let the
    // age reach the bound just as the background refresh came due.)
    let half_bound = state.config.catalog_refresh() / 2;
    let quarter_bound = state.config.catalog_refresh() / 4;
    // Pruning starts a minute in: nothing is due at start-up, and the first
    // batches of a process are not raced by a delete.
    let minute = Duration::from_secs(60);
    vec![
        every(
            state,
            stop,
            (quarter_bound, quarter_bound),
            move |state| async move {
                // A failure is logged by the catalog; routing goes on with the
                // previous snapshot, whose age `/readyz` and `/metrics` report.
                let _ = state.catalog.refresh_if_older(half_bound).await;
            },
        ),
        every(
            state,
            stop,
            (state.config.counter_flush(), Duration::ZERO),
            |state| async move {
                state.flush_counters().await;
            },
        ),
        every(state, stop, (minute, minute), |state| async move {
            state.prune_counters().await;
        }),
        every(
            state,
            stop,
            (Duration::from_secs(1), Duration::from_secs(1)),
            |state| async move {
                state.flush_tallies().await;
            },
        ),
        every(state, stop, (minute, minute), |state| async move {
            state.compact_ledger(LEDGER_COMPACT_AFTER).await;
        }),
        // Ended suppressions are never read (a suppression lasts days), so
        // an hour late costs only their rows.
        every(
            state,
            stop,
            (Duration::from_secs(3600), minute),
            |state| async move {
                state.prune_suppressions().await;
            },
        ),
        {
            // The pass watches `stop` itself: a long one ends between two
            // chunks at shutdown.
            let pass_stop = stop.clone();
            every(
                state,
                stop,
                (
                    state.config.retention_interval(),
                    state.config.retention_interval().min(minute),
                ),
                move |state| {
                    let stop = pass_stop.clone();
                    async move {
                        state.retention_pass(None, &stop).await;
                    }
                },
            )
        },
    ]
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
    // The user-agent parser's tables (~0.2 s of CPU), built off the request
    // path; a write that needs them first waits for this build.
    tokio::task::spawn_blocking(intake::ua::warm_up);
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = spawn_background(&state, &stop_rx);
    let app = api::app(state.clone());
    let server_state = state.clone();
    let done = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        let _ = stop_tx.send(true);
        for job in background {
            let _ = job.await;
        }
        server_state.flush_tallies().await;
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
        server_state.events.close().await;
        served.map_err(|e| Error::Internal(format!("server error: {e}")))
    });
    Ok(Server { addr, state, done })
}
