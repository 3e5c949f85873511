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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        memory::{MemoryCatalog, MemoryStore},
        CatalogSource, EventStore,
    };

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn event(env_id: u32, n: u64, ts: i64) -> protocol::Envelope {
        serde_json::from_value(testkit::envelope(env_id, &testkit::uuid(n), "view", ts))
            .expect("envelope")
    }

    /// Shards 1 and 2; env 7 on 1 migrating to 2 with a 30-day retention,
    /// env 8 on 1 without one; each with events at `times`.
    async fn setup(times: &[i64]) -> (Snapshot, MemoryStore) {
        let catalog = MemoryCatalog::new();
        catalog.add_shard(1, "a");
        catalog.add_shard(2, "b");
        catalog.put_environment(7, "web", 1, Some(2));
        catalog.set_retention(7, Some(30));
        catalog.put_environment(8, "app", 1, None);
        let snapshot = catalog.load().await.expect("snapshot");
        let store = MemoryStore::new();
        for (env, shards) in [(7, vec![1, 2]), (8, vec![1])] {
            let events: Vec<_> = times
                .iter()
                .enumerate()
                .map(|(i, ts)| event(env, env as u64 * 1000 + i as u64, *ts))
                .collect();
            let refs: Vec<_> = events.iter().collect();
            for shard in shards {
                store
                    .write(&snapshot.shards[&shard], env, &refs, &[], &[])
                    .await
                    .expect("write");
            }
        }
        (snapshot, store)
    }

    fn settings(chunk_rows: u32) -> Settings {
        Settings {
            chunk_rows,
            pause: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn older_than_the_cutoff_goes_in_chunks_from_both_shards_the_cutoff_itself_stays() {
        let before = cutoff(NOW, 30);
        let times = [
            before - 5 * DAY,
            before - 2,
            before - 1,
            before,
            before + 1,
            NOW,
        ];
        let (snapshot, store) = setup(&times).await;
        let (_keep, stop) = watch::channel(false);
        let removed = pass(
            &snapshot,
            &store,
            settings(2),
            (None, NOW),
            &Metrics::new(),
            &stop,
        )
        .await;
        let shards: Vec<_> = removed.iter().map(|r| r.shard.as_str()).collect();
        assert_eq!(shards, ["a", "b"], "env 7's primary and secondary only");
        for r in &removed {
            assert_eq!((r.of(Expiring::Events), r.error.as_deref()), (3, None));
        }
        for shard in [1, 2] {
            assert_eq!(store.ids(shard, 7).len(), 3, "before, before + 1, now stay");
        }
        assert_eq!(store.ids(1, 8).len(), times.len(), "no retention: all stay");
    }

    #[tokio::test]
    async fn a_stopped_pass_deletes_nothing_more_and_a_failing_shard_does_not_stop_the_other() {
        let (snapshot, store) = setup(&[NOW - 40 * DAY, NOW - 50 * DAY]).await;
        let (stopping, stop) = watch::channel(true);
        let removed = pass(
            &snapshot,
            &store,
            settings(1),
            (None, NOW),
            &Metrics::new(),
            &stop,
        )
        .await;
        assert!(removed.iter().all(|r| r.of(Expiring::Events) == 0));
        assert_eq!(store.ids(1, 7).len(), 2);

        stopping.send_replace(false);
        store.fail_writes(1, true);
        let metrics = Metrics::new();
        let removed = pass(
            &snapshot,
            &store,
            settings(1),
            (Some(7), NOW),
            &metrics,
            &stop,
        )
        .await;
        assert!(removed[0].error.is_some(), "{removed:?}");
        assert_eq!(
            (removed[1].of(Expiring::Events), &removed[1].error),
            (2, &None)
        );
        assert_eq!((store.ids(1, 7).len(), store.ids(2, 7).len()), (2, 0));
        assert!(metrics
            .render()
            .contains(r#"sluice_retention_errors_total{shard="a"} 1"#));
    }
}
