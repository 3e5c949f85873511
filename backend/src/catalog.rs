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
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

pub use crate::model::{Aggregate, Environment, Metric, Shard, ShardStatus, Snapshot};
pub use crate::store::mysql::catalog::*;
use crate::{
    error::{Error, Result},
    store::CatalogSource,
};

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

    /// The environment of an active API key (by its SHA-256 hex), uncached.
    pub async fn api_key_env(&self, hash: &str) -> Result<Option<u32>> {
        self.source.api_key_env(hash).await
    }

    /// Delete at most `limit` ended suppressions from the source (see
    /// [`CatalogSource::prune_suppressions`]).
    pub async fn prune_suppressions(&self, limit: u32) -> Result<u64> {
        self.source.prune_suppressions(limit).await
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
