//! Worker vars (wrangler.toml `[vars]`), read from a lookup (once per isolate: `bindings::config`).

pub use intake::door::{AllowedOrigins, Settings};
pub use intake::Limits;

use crate::forward::{Backoff, MAX_QUEUE_DELAY_SECONDS};

/// Binding names, looked up on `Env`.
pub const KEYS_KV: &str = "API_KEYS";
pub const DEAD_LETTERS_KV: &str = "DEAD_LETTERS";
pub const EVENTS_QUEUE: &str = "EVENTS";
pub const DLQ_QUEUE: &str = "EVENTS_DLQ";
pub const INGEST_TOKEN: &str = "INGEST_TOKEN";
/// The Workers rate-limiting binding counting requests per API key; absent, nothing is limited.
pub const KEY_RATE_LIMIT: &str = "KEY_RATE_LIMIT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub backend_url: String,
    pub forward_concurrency: usize,
    pub forward_batch_size: usize,
    /// Byte cap of one backend request (the backend refuses > 8 MiB by default).
    pub forward_batch_bytes: usize,
    /// The public doors' limits and CORS allow-list.
    pub door: Settings,
    pub backoff: Backoff,
    pub key_cache_positive_ms: u64,
    pub key_cache_negative_ms: u64,
    /// Name of the dead-letter queue, to tell its batches from the main queue's.
    pub dead_letter_queue: String,
    /// The `period` of the `KEY_RATE_LIMIT` binding (10 or 60), for `Retry-After`.
    pub rate_limit_period_seconds: u32,
}

pub const DEFAULT_FORWARD_CONCURRENCY: usize = 4;
pub const DEFAULT_FORWARD_BATCH_SIZE: usize = 500;
pub const DEFAULT_FORWARD_BATCH_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_POSITIVE_TTL_MS: u64 = 30_000;
pub const DEFAULT_NEGATIVE_TTL_MS: u64 = 10_000;

impl Config {
    /// Whether a batch comes from the dead-letter queue. Besides the configured
    /// name, any `…-dlq` / `…-dlq-…` name counts: treating a DLQ batch as
    /// events would send its letters back to the DLQ, forever.
    pub fn is_dead_letter_queue(&self, name: &str) -> bool {
        name == self.dead_letter_queue || name.ends_with("-dlq") || name.contains("-dlq-")
    }

    /// Reads every var through `get`; absent or unparsable values fall back to
    /// defaults, and limits can only be lowered below the protocol's.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let num = |name: &str| get(name).and_then(|v| v.trim().parse::<u64>().ok());
        let setting = |name: &str, min: usize, max: usize, default: usize| {
            num(name).map_or(default, |v| clamp_setting(v, min, max))
        };
        let seconds = |name: &str, min: u32, max: u32, default: u32| {
            num(name).map_or(default, |v| clamp_setting(v, min, max))
        };
        let ttl_ms = |name: &str, default: u64| {
            num(name).map_or(default, |v| clamp_setting(v, 0u64, 300) * 1000)
        };
        let defaults = Limits::default();
        let limit = |name: &str, max: usize| setting(name, 1, max, max);
        let backoff = Backoff::default();
        Self {
            backend_url: get("BACKEND_URL")
                .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned())
                .trim_end_matches('/')
                .to_owned(),
            forward_concurrency: setting("FORWARD_CONCURRENCY", 1, 32, DEFAULT_FORWARD_CONCURRENCY),
            forward_batch_size: setting("FORWARD_BATCH_SIZE", 1, 5_000, DEFAULT_FORWARD_BATCH_SIZE),
            forward_batch_bytes: setting(
                "FORWARD_BATCH_BYTES",
                64 * 1024,
                64 * 1024 * 1024,
                DEFAULT_FORWARD_BATCH_BYTES,
            ),
            backoff: Backoff {
                base_seconds: seconds("RETRY_BASE_SECONDS", 0, 3600, backoff.base_seconds),
                max_seconds: seconds(
                    "RETRY_MAX_SECONDS",
                    1,
                    MAX_QUEUE_DELAY_SECONDS,
                    backoff.max_seconds,
                ),
            },
            door: Settings {
                limits: Limits {
                    max_body_bytes: limit("MAX_BODY_BYTES", defaults.max_body_bytes),
                    max_event_bytes: limit("MAX_EVENT_BYTES", defaults.max_event_bytes),
                    max_events: limit("MAX_EVENTS", defaults.max_events),
                },
                allowed_origins: AllowedOrigins::parse(
                    &get("ALLOWED_ORIGINS").unwrap_or_else(|| "*".to_owned()),
                ),
            },
            key_cache_positive_ms: ttl_ms("KEY_CACHE_TTL_SECONDS", DEFAULT_POSITIVE_TTL_MS),
            key_cache_negative_ms: ttl_ms(
                "KEY_CACHE_NEGATIVE_TTL_SECONDS",
                DEFAULT_NEGATIVE_TTL_MS,
            ),
            dead_letter_queue: get("DEAD_LETTER_QUEUE")
                .unwrap_or_else(|| "sluice-events-dlq".into()),
            rate_limit_period_seconds: match num("RATE_LIMIT_PERIOD_SECONDS") {
                Some(60) => 60,
                _ => 10,
            },
        }
    }
}

/// A numeric var clamped to `[min, max]` and narrowed to `T`. The clamp runs
/// in `u64`, before the narrowing: on wasm32 `usize` is 32 bits, and narrowing
/// first would turn `4294967297` into `1`. Every numeric var goes through here.
pub fn clamp_setting<T>(value: u64, min: T, max: T) -> T
where
    T: Copy + TryFrom<u64> + TryInto<u64>,
{
    let lo: u64 = min.try_into().unwrap_or(0);
    let hi: u64 = max.try_into().unwrap_or(u64::MAX);
    // `max`/`min` rather than `clamp`: no panic should `min > max`.
    T::try_from(value.max(lo).min(hi)).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{EDGE_MAX_BODY_BYTES, EDGE_MAX_EVENT_BYTES};
    use std::collections::HashMap;

    /// 2^32 + 1: `1` once narrowed to a 32-bit `usize` (wasm32).
    const OVER_U32: u64 = (1 << 32) + 1;

    #[test]
    fn settings_clamp_in_u64_before_narrowing() {
        // u32 stands for wasm32's usize, which a native test cannot use.
        let max = EDGE_MAX_BODY_BYTES as u32;
        assert_eq!(clamp_setting::<u32>(OVER_U32, 1, max), max);
        assert_eq!(clamp_setting::<u32>(u64::MAX, 1, max), max);
        assert_eq!(
            clamp_setting::<usize>(OVER_U32, 1, EDGE_MAX_BODY_BYTES),
            EDGE_MAX_BODY_BYTES
        );
        assert_eq!(clamp_setting::<u32>(0, 1, max), 1);
        assert_eq!(clamp_setting::<u32>(500, 1, max), 500);
        assert_eq!(clamp_setting::<u64>(OVER_U32, 0, 300), 300);
        let c = config(&[
            ("MAX_BODY_BYTES", "4294967297"),
            ("MAX_EVENTS", "4294967297"),
            ("MAX_EVENT_BYTES", "4294967297"),
            ("FORWARD_CONCURRENCY", "4294967297"),
            ("FORWARD_BATCH_SIZE", "4294967297"),
            ("FORWARD_BATCH_BYTES", "4294967297"),
            ("RETRY_BASE_SECONDS", "4294967297"),
            ("RETRY_MAX_SECONDS", "4294967297"),
            ("KEY_CACHE_TTL_SECONDS", "4294967297"),
        ]);
        assert_eq!(c.door.limits, Limits::default());
        assert_eq!(c.forward_concurrency, 32);
        assert_eq!(c.forward_batch_size, 5_000);
        assert_eq!(c.forward_batch_bytes, 64 * 1024 * 1024);
        assert_eq!(c.backoff.base_seconds, 3600);
        assert_eq!(c.backoff.max_seconds, MAX_QUEUE_DELAY_SECONDS);
        assert_eq!(c.key_cache_positive_ms, 300_000);
    }

    fn config(pairs: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = config(&[]);
        assert_eq!(c.forward_concurrency, 4);
        assert_eq!(c.forward_batch_size, 500);
        assert_eq!(c.forward_batch_bytes, 4 * 1024 * 1024);
        assert_eq!(c.door.allowed_origins, AllowedOrigins::Any);
        assert_eq!(c.door.limits, Limits::default());
        assert_eq!(c.backoff, Backoff::default());
        assert_eq!(c.key_cache_positive_ms, 30_000);
        assert_eq!(c.key_cache_negative_ms, 10_000);
        assert_eq!(c.dead_letter_queue, "sluice-events-dlq");
        assert_eq!(c.rate_limit_period_seconds, 10);
        assert_eq!(
            config(&[("RATE_LIMIT_PERIOD_SECONDS", "60")]).rate_limit_period_seconds,
            60
        );
        // The binding only knows 10 and 60.
        assert_eq!(
            config(&[("RATE_LIMIT_PERIOD_SECONDS", "30")]).rate_limit_period_seconds,
            10
        );
    }

    #[test]
    fn vars_override_and_are_clamped() {
        let c = config(&[
            ("BACKEND_URL", "https://api.example.com/"),
            ("FORWARD_CONCURRENCY", "1000"),
            ("FORWARD_BATCH_SIZE", "0"),
            ("ALLOWED_ORIGINS", "https://a.example, https://b.example/"),
            ("MAX_BODY_BYTES", "99999999"),
            ("MAX_EVENTS", "10"),
            ("MAX_EVENT_BYTES", "junk"),
            ("KEY_CACHE_TTL_SECONDS", "5"),
            ("RETRY_BASE_SECONDS", "1"),
            ("RETRY_MAX_SECONDS", "0"),
        ]);
        assert_eq!(
            c.backoff,
            Backoff {
                base_seconds: 1,
                max_seconds: 1
            }
        );
        assert_eq!(c.backend_url, "https://api.example.com");
        assert_eq!(c.forward_concurrency, 32);
        assert_eq!(c.forward_batch_size, 1);
        assert!(c.door.allowed_origins.allows("https://b.example"));
        assert!(!c.door.allowed_origins.allows("https://evil.example"));
        assert_eq!(c.door.limits.max_body_bytes, EDGE_MAX_BODY_BYTES);
        assert_eq!(c.door.limits.max_events, 10);
        assert_eq!(c.door.limits.max_event_bytes, EDGE_MAX_EVENT_BYTES);
        assert_eq!(c.key_cache_positive_ms, 5_000);
    }

    #[test]
    fn dead_letter_queues_are_recognised() {
        let c = config(&[("DEAD_LETTER_QUEUE", "graveyard")]);
        assert!(c.is_dead_letter_queue("graveyard"));
        assert!(c.is_dead_letter_queue("sluice-events-dlq"));
        assert!(c.is_dead_letter_queue("sluice-events-dlq-staging"));
        assert!(!c.is_dead_letter_queue("sluice-events"));
        assert!(!c.is_dead_letter_queue("sluice-events-staging"));
    }

    #[test]
    fn star_anywhere_allows_every_origin() {
        assert_eq!(AllowedOrigins::parse("https://a, *"), AllowedOrigins::Any);
        assert_eq!(AllowedOrigins::parse(""), AllowedOrigins::List(vec![]));
    }
}
