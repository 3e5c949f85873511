//! API keys: their KV records (stored under the key's SHA-256 hex,
//! `intake::credentials::key_hash`), and the per-isolate cache in front of KV.
//!
//! The cache keeps an answer for `positive` ms when the key is active and
//! `negative` ms when it is unknown or revoked, so a revoked key keeps working
//! for at most KV's own propagation delay (~60 s) plus the positive TTL.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::EdgeError;
use intake::door::{Admitted, Refused};
use intake::enrich::Policy;

/// Bound on the cache; past it, expired entries go, then everything.
pub const MAX_CACHE_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
}

/// The KV value stored under [`intake::credentials::key_hash`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyRecord {
    pub env_id: u32,
    pub name: String,
    pub status: KeyStatus,
    /// The environment's privacy policy (`backend env set --edge` rewrites
    /// it in every key record of the environment); the default without one.
    #[serde(default)]
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Active {
        env_id: u32,
        name: String,
        policy: Policy,
    },
    Denied,
}

/// The environment a request may write to: the key must be active, then
/// within its rate limit (`within_limit` is the limiter's answer for the
/// key's hash). A refusal says when the limiter's current window ends.
pub fn admit(
    lookup: Lookup,
    within_limit: bool,
    now_ms: u64,
    period_seconds: u32,
) -> Result<Admitted, Refused> {
    let Lookup::Active { env_id, policy, .. } = lookup else {
        return Err(EdgeError::InvalidKey.into());
    };
    if !within_limit {
        let period = u64::from(period_seconds.max(1));
        let left = period - (now_ms / 1000) % period;
        return Err(Refused {
            error: EdgeError::RateLimited {
                retry_after: left.clamp(1, period) as u32,
            },
            env_id: Some(env_id),
        });
    }
    Ok(Admitted { env_id, policy })
}

/// What a KV answer means. A record we cannot read denies, and says why.
pub fn interpret(kv_value: Option<&str>) -> (Lookup, Option<String>) {
    let Some(text) = kv_value else {
        return (Lookup::Denied, None);
    };
    match serde_json::from_str::<KeyRecord>(text) {
        Ok(KeyRecord {
            env_id,
            name,
            status: KeyStatus::Active,
            policy,
        }) => (
            Lookup::Active {
                env_id,
                name,
                policy,
            },
            None,
        ),
        Ok(_) => (Lookup::Denied, None),
        Err(e) => (Lookup::Denied, Some(format!("malformed key record: {e}"))),
    }
}

#[derive(Debug)]
pub struct KeyCache {
    entries: HashMap<String, (Lookup, u64)>,
    positive_ms: u64,
    negative_ms: u64,
}

impl KeyCache {
    pub fn new(positive_ms: u64, negative_ms: u64) -> Self {
        Self {
            entries: HashMap::new(),
            positive_ms,
            negative_ms,
        }
    }

    pub fn set_ttls(&mut self, positive_ms: u64, negative_ms: u64) {
        self.positive_ms = positive_ms;
        self.negative_ms = negative_ms;
    }

    pub fn get(&self, hash: &str, now_ms: u64) -> Option<Lookup> {
        match self.entries.get(hash) {
            Some((lookup, expires)) if now_ms < *expires => Some(lookup.clone()),
            _ => None,
        }
    }

    pub fn put(&mut self, hash: String, lookup: Lookup, now_ms: u64) {
        if self.entries.len() >= MAX_CACHE_ENTRIES {
            self.entries.retain(|_, (_, expires)| now_ms < *expires);
            if self.entries.len() >= MAX_CACHE_ENTRIES {
                self.entries.clear();
            }
        }
        let ttl = match lookup {
            Lookup::Active { .. } => self.positive_ms,
            Lookup::Denied => self.negative_ms,
        };
        self.entries
            .insert(hash, (lookup, now_ms.saturating_add(ttl)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_checks_the_key_then_the_limit() {
        let active = || Lookup::Active {
            env_id: 7,
            name: "web".into(),
            policy: Policy::default(),
        };
        assert_eq!(
            admit(active(), true, 0, 10),
            Ok(Admitted {
                env_id: 7,
                policy: Policy::default()
            })
        );
        assert_eq!(
            admit(Lookup::Denied, true, 0, 10),
            Err(EdgeError::InvalidKey.into())
        );
        // An unknown key is a 401 even when the limiter also said no.
        assert_eq!(
            admit(Lookup::Denied, false, 0, 10),
            Err(EdgeError::InvalidKey.into())
        );
        // Retry-After: what is left of the current window, at least 1 s;
        // the refusal names the key's environment (the ledger counts it there).
        let limited = |now_ms, period| {
            admit(active(), false, now_ms, period).map_err(|r| {
                assert_eq!(r.env_id, Some(7));
                r.error
            })
        };
        assert_eq!(
            limited(20_000, 10),
            Err(EdgeError::RateLimited { retry_after: 10 })
        );
        assert_eq!(
            limited(23_500, 10),
            Err(EdgeError::RateLimited { retry_after: 7 })
        );
        assert_eq!(
            limited(29_999, 10),
            Err(EdgeError::RateLimited { retry_after: 1 })
        );
        assert_eq!(
            limited(61_000, 60),
            Err(EdgeError::RateLimited { retry_after: 59 })
        );
    }

    #[test]
    fn records_are_interpreted() {
        assert_eq!(interpret(None), (Lookup::Denied, None));
        assert_eq!(
            interpret(Some(r#"{"env_id":7,"name":"web","status":"active"}"#)).0,
            Lookup::Active {
                env_id: 7,
                name: "web".into(),
                policy: Policy::default(),
            }
        );
        let private = r#"{"env_id":7,"name":"web","status":"active","policy":{"ip":"drop","geo":"none","bots":"drop"}}"#;
        let Lookup::Active { policy, .. } = interpret(Some(private)).0 else {
            panic!("active");
        };
        assert_eq!(policy.to_string(), "ip=drop geo=none bots=drop");
        let (lookup, why) = interpret(Some(
            r#"{"env_id":7,"name":"web","status":"active","policy":{"ip":"sometimes"}}"#,
        ));
        assert_eq!(
            lookup,
            Lookup::Denied,
            "a policy we cannot read is not guessed"
        );
        assert!(why.unwrap().contains("ip must be one of"));
        assert_eq!(
            interpret(Some(r#"{"env_id":7,"name":"web","status":"revoked"}"#)).0,
            Lookup::Denied
        );
        let (lookup, why) = interpret(Some("{not json"));
        assert_eq!(lookup, Lookup::Denied);
        assert!(why.unwrap().contains("malformed"));
        assert_eq!(
            interpret(Some(r#"{"env_id":7,"name":"web","status":"paused"}"#)).0,
            Lookup::Denied
        );
    }

    #[test]
    fn cache_honours_positive_and_negative_ttls() {
        let mut cache = KeyCache::new(30_000, 10_000);
        let active = Lookup::Active {
            env_id: 1,
            name: "a".into(),
            policy: Policy::default(),
        };
        cache.put("h1".into(), active.clone(), 1_000);
        cache.put("h2".into(), Lookup::Denied, 1_000);
        assert_eq!(cache.get("h1", 30_999), Some(active));
        assert_eq!(cache.get("h1", 31_000), None);
        assert_eq!(cache.get("h2", 10_999), Some(Lookup::Denied));
        assert_eq!(cache.get("h2", 11_000), None);
        assert_eq!(cache.get("h3", 0), None);
    }

    #[test]
    fn cache_stays_bounded() {
        let mut cache = KeyCache::new(1_000, 1_000);
        for i in 0..MAX_CACHE_ENTRIES {
            cache.put(format!("k{i}"), Lookup::Denied, 0);
        }
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        // All expired by now: they are swept before the insert.
        cache.put("new".into(), Lookup::Denied, 5_000);
        assert_eq!(cache.len(), 1);
        for i in 0..MAX_CACHE_ENTRIES {
            cache.put(format!("j{i}"), Lookup::Denied, 5_000);
        }
        assert!(cache.len() <= MAX_CACHE_ENTRIES);
    }
}
