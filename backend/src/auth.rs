//! Who may call: the ingest token, the bearer token of a request, and the
//! one cache of secret lookups (read tokens, API keys) in front of the catalog.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts, HeaderMap},
};
use subtle::ConstantTimeEq;

use crate::{error::Error, AppState};

/// The token of `Authorization: Bearer <token>` (parsed by
/// `intake::credentials`). Used by the ingest and the stats APIs.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    intake::credentials::bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// Proof that the request carried the ingest token (compared in constant time).
pub struct IngestAuth;

impl FromRequestParts<AppState> for IngestAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let presented = bearer(&parts.headers).ok_or(Error::MissingAuth)?;
        let expected = state.config.ingest_token.as_bytes();
        if bool::from(presented.as_bytes().ct_eq(expected)) {
            Ok(IngestAuth)
        } else {
            Err(Error::BadToken)
        }
    }
}

/// Lookups of secrets (by hash) in the catalog, cached for `ttl`, positive
/// and negative alike: `ttl` bounds how late a revocation takes effect.
/// Secrets that exist and those that do not are kept apart, each bounded on
/// its own: a client spraying random secrets fills (and clears) only the
/// misses, never pushing out the ones that work.
pub struct SecretCache<K> {
    ttl: Duration,
    entries: Mutex<Entries<K>>,
    /// Catalog lookups of uncached secrets in flight at once: the catalog's
    /// pool (4) keeps a connection for routing refreshes however many
    /// unknown secrets arrive.
    lookups: tokio::sync::Semaphore,
}

struct Entries<K> {
    /// Hash → (its environment, when looked up).
    hits: HashMap<K, (u32, Instant)>,
    /// Hashes of unknown or revoked secrets → when looked up.
    misses: HashMap<K, Instant>,
}

/// The most entries of each kind; past it, expired entries are dropped, and
/// if none has expired the misses are cleared (hits are only ever created by
/// valid secrets, so they stay few).
pub const SECRET_CACHE_LIMIT: usize = 10_000;

impl<K: Hash + Eq + Clone> SecretCache<K> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(Entries {
                hits: HashMap::new(),
                misses: HashMap::new(),
            }),
            lookups: tokio::sync::Semaphore::new(2),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(env)` for a cached valid secret, `Some(None)` for a cached miss.
    pub fn get(&self, hash: &K) -> Option<Option<u32>> {
        let entries = self.lock();
        if let Some(&(env, at)) = entries.hits.get(hash) {
            if at.elapsed() < self.ttl {
                return Some(Some(env));
            }
        }
        match entries.misses.get(hash) {
            Some(at) if at.elapsed() < self.ttl => Some(None),
            _ => None,
        }
    }

    pub fn put(&self, hash: K, env: Option<u32>) {
        let ttl = self.ttl;
        let mut entries = self.lock();
        let now = Instant::now();
        match env {
            Some(env) => {
                entries.misses.remove(&hash);
                if entries.hits.len() >= SECRET_CACHE_LIMIT {
                    entries.hits.retain(|_, (_, at)| at.elapsed() < ttl);
                }
                if entries.hits.len() < SECRET_CACHE_LIMIT {
                    entries.hits.insert(hash, (env, now));
                }
            }
            None => {
                entries.hits.remove(&hash);
                if entries.misses.len() >= SECRET_CACHE_LIMIT {
                    entries.misses.retain(|_, at| at.elapsed() < ttl);
                    if entries.misses.len() >= SECRET_CACHE_LIMIT {
                        entries.misses.clear();
                    }
                }
                entries.misses.insert(hash, now);
            }
        }
    }

    /// The environment of the secret with this hash: cached, or read with
    /// `lookup` (at most two uncached reads at once).
    pub async fn env<E, F>(&self, hash: K, lookup: impl FnOnce() -> F) -> Result<Option<u32>, E>
    where
        F: Future<Output = Result<Option<u32>, E>>,
    {
        if let Some(env) = self.get(&hash) {
            return Ok(env);
        }
        // The semaphore is never closed.
        let _permit = self.lookups.acquire().await.ok();
        // Another request may have looked the same secret up while this one waited.
        if let Some(env) = self.get(&hash) {
            return Ok(env);
        }
        let env = lookup().await?;
        self.put(hash, env);
        Ok(env)
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let entries = self.lock();
        (entries.hits.len(), entries.misses.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spray_of_unknown_secrets_never_evicts_the_valid_ones() {
        let cache = SecretCache::new(Duration::from_secs(5));
        let valid = intake::credentials::secret_hash("srt_valid");
        cache.put(valid, Some(7));
        for i in 0..3 * SECRET_CACHE_LIMIT {
            cache.put(
                intake::credentials::secret_hash(&format!("srt_guess_{i}")),
                None,
            );
        }
        assert_eq!(cache.get(&valid), Some(Some(7)));
        let (hits, misses) = cache.len();
        assert_eq!(hits, 1);
        assert!(misses <= SECRET_CACHE_LIMIT, "misses are bounded: {misses}");
        assert_eq!(
            cache.get(&intake::credentials::secret_hash(&format!(
                "srt_guess_{}",
                3 * SECRET_CACHE_LIMIT - 1
            ))),
            Some(None),
            "recent misses are cached"
        );
        // A secret revoked since is a miss at its next lookup, and stops being a hit.
        cache.put(valid, None);
        assert_eq!(cache.get(&valid), Some(None));
    }

    #[test]
    fn answers_expire_after_the_ttl() {
        let cache = SecretCache::new(Duration::from_millis(30));
        cache.put("a".to_owned(), Some(1));
        assert_eq!(cache.get(&"a".to_owned()), Some(Some(1)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&"a".to_owned()), None);
    }
}
