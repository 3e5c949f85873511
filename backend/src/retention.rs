//! Retention: each environment's raw events older than its
//! `retention_days` (event time), and its delivery-ledger rows and sampled
//! refusals older than that, deleted from its shards — the primary and,
//! while it migrates, the secondary — in chunks of
//! `SLUICE_RETENTION_CHUNK_ROWS` with `SLUICE_RETENTION_PAUSE_MS` between
//! them, so ingest gets the shard between two deletes.
//!
//! One pass is [`pass`]: `backend serve` runs one every
//! `SLUICE_RETENTION_INTERVAL_SECS` ([`crate::AppState::retention_pass`],
//! one at a time per process), `backend retention run` one now. Several
//! processes may run passes at once: a delete removes what is still there,
//! so two of them remove each row once between them.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{
    metrics::Metrics,
    model::Snapshot,
    store::{Expiring, RetentionStore},
};

/// How a pass deletes.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rows per DELETE statement.
    pub chunk_rows: u32,
    /// Between two statements on one shard.
    pub pause: Duration,
}

impl Settings {
    pub fn of(config: &crate::Config) -> Self {
        Self {
            chunk_rows: config.retention_chunk_rows.max(1),
            pause: config.retention_pause(),
        }
    }
}

/// What a pass removed from one environment on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub env_id: u32,
    pub env_name: String,
    pub shard: String,
    /// The cutoff (unix ms): what was older went.
    pub before: i64,
    /// Rows deleted, per table (every table of [`Expiring::ALL`]).
    pub rows: Vec<(Expiring, u64)>,
    /// Why the shard's deletes stopped early (the next pass goes on).
    pub error: Option<String>,
}

impl Removed {
    pub fn of(&self, table: Expiring) -> u64 {
        self.rows
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The cutoff of a retention of `days` at `now_ms`.
pub fn cutoff(now_ms: i64, days: u32) -> i64 {
    now_ms - i64::from(days) * 86_400_000
}

/// One pass over every environment with a retention (or only `only`), as of
/// `now_ms`; it stops between two chunks once `stop` turns true.
pub async fn pass(
    snapshot: &Snapshot,
    store: &dyn RetentionStore,
    settings: Settings,
    (only, now_ms): (Option<u32>, i64),
    metrics: &Metrics,
    stop: &watch::Receiver<bool>,
) -> Vec<Removed> {
    let started = Instant::now();
    let mut envs: Vec<_> = snapshot
        .environments
        .values()
        .filter(|e| only.is_none_or(|id| id == e.id))
        .filter_map(|e| Some((e, e.retention_days?)))
        .collect();
    envs.sort_by_key(|(e, _)| e.id);
    let mut out = Vec::new();
    let mut stop = stop.clone();
    for (env, days) in envs {
        let before = cutoff(now_ms, days);
        for shard in snapshot.targets(env.id).unwrap_or_default() {
            let mut removed = Removed {
                env_id: env.id,
                env_name: env.name.clone(),
                shard: shard.name.clone(),
                before,
                rows: Vec::new(),
                error: None,
            };
            'tables: for table in Expiring::ALL {
                let mut total = 0;
                loop {
                    if *stop.borrow() {
                        removed.rows.push((table, total));
                        break 'tables;
                    }
                    match store
                        .expire(shard, env.id, table, before, settings.chunk_rows)
                        .await
                    {
                        Ok(n) => {
                            total += n;
                            metrics
                                .retention_deleted
                                .with_label_values(&[&shard.name, table.table()])
                                .inc_by(n);
                            if n < u64::from(settings.chunk_rows) {
                                break;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(shard = %shard.name, env = %env.name, table = table.table(), %error, "retention delete failed");
                            metrics
                                .retention_errors
                                .with_label_values(&[&shard.name])
                                .inc();
                            removed.error = Some(error.to_string());
                            removed.rows.push((table, total));
                            break 'tables;
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(settings.pause) => {}
                        _ = stop.changed() => {}
                    }
                }
                removed.rows.push((table, total));
            }
            if removed.rows.iter().any(|(_, n)| *n > 0) {
                tracing::info!(shard = %shard.name, env = %env.name, events = removed.of(Expiring::Events), "retention removed old rows");
            }
            out.push(removed);
        }
    }
    metrics
        .retention_pass_seconds
        .observe(started.elapsed().as_secs_f64());
    out
}
