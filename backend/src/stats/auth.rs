//! Read tokens: which environment a request may read, and the cache of lookups.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};

use crate::{
    catalog::Environment,
    error::{Error, Result},
    AppState,
};

/// Read-token lookups are cached this long (positive and negative): the
/// bound on how late a revocation takes effect.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// Read-token lookups, cached for [`TOKEN_CACHE_TTL`]. Tokens that exist
/// and tokens that do not are kept apart, each bounded on its own: a client
/// spraying random tokens fills (and clears) only the misses, never pushing
/// out the tokens that work.
pub struct TokenCache {
    entries: Mutex<TokenEntries>,
    /// Catalog lookups of uncached tokens in flight at once: the catalog's
    /// pool (4) keeps a connection for routing refreshes however many
    /// unknown tokens arrive.
    lookups: tokio::sync::Semaphore,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            lookups: tokio::sync::Semaphore::new(2),
        }
    }
}

#[derive(Default)]
struct TokenEntries {
    /// Token hash → (its environment, when looked up).
    hits: HashMap<[u8; 32], (u32, Instant)>,
    /// Hashes of unknown or revoked tokens → when looked up.
    misses: HashMap<[u8; 32], Instant>,
}

/// The most entries of each kind; past it, expired entries are dropped, and
/// if none has expired the misses are cleared (hits are only ever created by
/// valid tokens, so they stay few).
const TOKEN_CACHE_LIMIT: usize = 10_000;

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, TokenEntries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(env)` for a cached valid token, `Some(None)` for a cached miss.
    fn get(&self, hash: &[u8; 32]) -> Option<Option<u32>> {
        let entries = self.lock();
        if let Some(&(env, at)) = entries.hits.get(hash) {
            if at.elapsed() < TOKEN_CACHE_TTL {
                return Some(Some(env));
            }
        }
        match entries.misses.get(hash) {
            Some(at) if at.elapsed() < TOKEN_CACHE_TTL => Some(None),
            _ => None,
        }
    }

    fn put(&self, hash: [u8; 32], env: Option<u32>) {
        let mut entries = self.lock();
        let now = Instant::now();
        match env {
            Some(env) => {
                entries.misses.remove(&hash);
                if entries.hits.len() >= TOKEN_CACHE_LIMIT {
                    entries
                        .hits
                        .retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
                }
                if entries.hits.len() < TOKEN_CACHE_LIMIT {
                    entries.hits.insert(hash, (env, now));
                }
            }
            None => {
                entries.hits.remove(&hash);
                if entries.misses.len() >= TOKEN_CACHE_LIMIT {
                    entries
                        .misses
                        .retain(|_, at| at.elapsed() < TOKEN_CACHE_TTL);
                    if entries.misses.len() >= TOKEN_CACHE_LIMIT {
                        entries.misses.clear();
                    }
                }
                entries.misses.insert(hash, now);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let entries = self.lock();
        (entries.hits.len(), entries.misses.len())
    }
}

/// The environment a request may read: its read token matched `?env=`.
pub struct ReadAuth {
    pub env: Environment,
}

async fn token_env(state: &AppState, token: &str) -> Result<Option<u32>> {
    let hash = intake::credentials::secret_hash(token);
    let cache = &state.stats.tokens;
    if let Some(env) = cache.get(&hash) {
        return Ok(env);
    }
    let _permit = cache
        .lookups
        .acquire()
        .await
        .map_err(|_| Error::Internal("token lookups closed".into()))?;
    // Another request may have looked the same token up while this one waited.
    if let Some(env) = cache.get(&hash) {
        return Ok(env);
    }
    let env = state
        .catalog
        .read_token_env(&hash)
        .await
        .map_err(|e| Error::Catalog(e.to_string()))?;
    state.stats.tokens.put(hash, env);
    Ok(env)
}

impl FromRequestParts<AppState> for ReadAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = crate::auth::bearer(&parts.headers)
            .ok_or(Error::MissingAuth)?
            .to_string();
        let name = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "env")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "env",
                    "the env parameter (an environment name) is required".into(),
                )
            })?;
        let token_env = token_env(state, &token).await?.ok_or(Error::BadToken)?;
        // Only the token's own environment is looked up (a refresh, throttled
        // and shared, when it is new), never the name asked for: another
        // environment gets 403 whether it exists or not, so names cannot be
        // enumerated and unknown names cannot force catalog reads.
        match state.catalog.environment(token_env).await {
            Some(env) if env.name == name => Ok(ReadAuth { env }),
            _ => Err(Error::Forbidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spray_of_unknown_tokens_never_evicts_the_valid_ones() {
        let cache = TokenCache::default();
        let valid = intake::credentials::secret_hash("srt_valid");
        cache.put(valid, Some(7));
        for i in 0..3 * TOKEN_CACHE_LIMIT {
            cache.put(
                intake::credentials::secret_hash(&format!("srt_guess_{i}")),
                None,
            );
        }
        assert_eq!(cache.get(&valid), Some(Some(7)));
        let (hits, misses) = cache.len();
        assert_eq!(hits, 1);
        assert!(misses <= TOKEN_CACHE_LIMIT, "misses are bounded: {misses}");
        assert_eq!(
            cache.get(&intake::credentials::secret_hash(&format!(
                "srt_guess_{}",
                3 * TOKEN_CACHE_LIMIT - 1
            ))),
            Some(None),
            "recent misses are cached"
        );
        // A token revoked since is a miss at its next lookup, and stops being a hit.
        cache.put(valid, None);
        assert_eq!(cache.get(&valid), Some(None));
    }
}
