//! API keys at the backend's door: looked up by their SHA-256 in the
//! catalog (`api_keys`, the same hashes the edge's KV is keyed by) behind a
//! cache whose TTL bounds how late a revocation takes effect (at most 5 s),
//! and a per-key request rate limit kept in process, in fixed windows like
//! the edge's limiter.

use std::{collections::HashMap, sync::Mutex};

use crate::{auth::SecretCache, config::Config, AppState};

pub struct ApiKeys {
    cache: SecretCache<String>,
    limiter: RateLimiter,
}

impl ApiKeys {
    pub fn new(config: &Config) -> Self {
        Self {
            cache: SecretCache::new(config.key_cache_ttl()),
            limiter: RateLimiter::new(config.key_rate_limit, config.key_rate_limit_period_secs),
        }
    }
}

/// The catalog as the door's key store.
pub struct Catalog<'a>(pub &'a AppState);

impl Catalog<'_> {
    async fn env(&self, key: &str) -> Result<(String, Option<u32>), intake::Error> {
        let state = self.0;
        let hash = intake::credentials::key_hash(key);
        let env = state
            .direct
            .keys
            .cache
            .env(hash.clone(), || async {
                state.catalog.api_key_env(&hash).await.map_err(|error| {
                    tracing::warn!(%error, "API key lookup failed");
                    intake::Error::KeyStoreUnavailable
                })
            })
            .await?;
        Ok((hash, env))
    }
}

impl intake::door::Keys for Catalog<'_> {
    /// The key's environment and, from the catalog snapshot (refreshed
    /// when older than the routing bound), that environment's policy.
    async fn admit(&self, key: &str) -> Result<intake::door::Admitted, intake::door::Refused> {
        let (hash, env) = self.env(key).await?;
        let env = env.ok_or(intake::Error::InvalidKey)?;
        let now = u64::try_from(crate::model::now_secs()).unwrap_or(0);
        self.0
            .direct
            .keys
            .limiter
            .admit(&hash, now)
            .map_err(|error| intake::door::Refused {
                error,
                env_id: Some(env),
            })?;
        let policy = match self.0.catalog.routing_snapshot(&[env]).await {
            Ok(snapshot) => snapshot.environments.get(&env).map(|e| e.policy()),
            Err(_) => self
                .0
                .catalog
                .snapshot()
                .environments
                .get(&env)
                .map(|e| e.policy()),
        };
        Ok(intake::door::Admitted {
            env_id: env,
            policy: policy.unwrap_or_default(),
        })
    }

    async fn active(&self, key: &str) -> Result<bool, intake::Error> {
        Ok(self.env(key).await?.1.is_some())
    }
}

/// Requests per key hash per window of `period` seconds (windows start at
/// multiples of the period, as at the edge); `limit` 0 limits nothing.
pub struct RateLimiter {
    limit: u64,
    period: u64,
    windows: Mutex<HashMap<String, (u64, u64)>>,
}

/// Past this many keys tracked, windows that ended are dropped.
const TRACKED_KEYS: usize = 100_000;

impl RateLimiter {
    pub fn new(limit: u64, period_secs: u64) -> Self {
        Self {
            limit,
            period: period_secs.max(1),
            windows: Mutex::default(),
        }
    }

    /// Counts one request of `hash` at `now` (unix seconds), or says when
    /// its window ends.
    pub fn admit(&self, hash: &str, now: u64) -> Result<(), intake::Error> {
        if self.limit == 0 {
            return Ok(());
        }
        let window = now / self.period;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= TRACKED_KEYS && !windows.contains_key(hash) {
            windows.retain(|_, (w, _)| *w == window);
        }
        let entry = windows.entry(hash.to_owned()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        if entry.1 >= self.limit {
            let left = self.period - now % self.period;
            return Err(intake::Error::RateLimited {
                retry_after: left.clamp(1, self.period) as u32,
            });
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_per_key_and_per_window() {
        let limiter = RateLimiter::new(2, 10);
        assert!(limiter.admit("a", 100).is_ok());
        assert!(limiter.admit("a", 101).is_ok());
        assert_eq!(
            limiter.admit("a", 103),
            Err(intake::Error::RateLimited { retry_after: 7 })
        );
        assert!(
            limiter.admit("b", 103).is_ok(),
            "another key has its own window"
        );
        assert!(
            limiter.admit("a", 110).is_ok(),
            "a new window starts at 110"
        );
        let unlimited = RateLimiter::new(0, 10);
        for _ in 0..10 {
            assert!(unlimited.admit("a", 1).is_ok());
        }
    }
}
