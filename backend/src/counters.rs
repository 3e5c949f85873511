//! Derived counts, kept off the hot path: per environment and event name per
//! minute (kept `SLUICE_MINUTE_COUNTS_RETENTION_DAYS`) and per second (the
//! live window, kept `SLUICE_SECOND_COUNTS_RETENTION_HOURS`), and per country
//! per minute. All by event time.
//!
//! Also metric values and user/session sketches. Writers add in-memory
//! deltas; a background task flushes them every `SLUICE_COUNTER_FLUSH_MS`
//! (500 ms), per shard in one transaction of multi-row upserts. A crash
//! between an insert and the next flush loses at most those deltas;
//! `backend counters rebuild` recomputes them from the events table.

use std::{collections::BTreeMap, sync::Mutex};

use chrono::{DateTime, NaiveDateTime};
use protocol::{Envelope, EventType};

use crate::{
    catalog::{Metric, Snapshot},
    store::{Counted, CounterStore},
};

/// Deltas of one shard: keys are (env, bucket start in unix seconds, name id or country).
#[derive(Debug, Default, Clone)]
pub struct Deltas {
    pub minute: BTreeMap<(u32, i64, u32), u64>,
    pub second: BTreeMap<(u32, i64, u32), u64>,
    pub country: BTreeMap<(u32, i64, Vec<u8>), u64>,
    /// (env, bucket, metric id) → (events, total)
    pub metric_minute: BTreeMap<(u32, i64, u32), (u64, f64)>,
    pub metric_second: BTreeMap<(u32, i64, u32), (u64, f64)>,
    /// (env, period, kind, bucket start) → sketch of what this process saw.
    pub sketches: BTreeMap<SketchKey, Sketch>,
}

/// A mergeable HyperLogLog sketch (Cloudflare's cardinality-estimator,
/// 2^12 registers: ~1.6% standard error; exact for small sets).
pub type Sketch = cardinality_estimator::CardinalityEstimator<str>;
pub type SketchKey = (u32, u8, u8, i64);
pub const PERIOD_HOUR: u8 = 0;
pub const PERIOD_DAY: u8 = 1;
pub const KIND_USERS: u8 = 0;
pub const KIND_SESSIONS: u8 = 1;

/// The sketches a range [from_ms, to_ms) merges: (period, its length in
/// seconds), hourly up to two days, daily beyond.
pub fn sketch_period(from_ms: i64, to_ms: i64) -> (u8, i64) {
    if to_ms - from_ms <= 2 * 86_400_000 {
        (PERIOD_HOUR, 3600)
    } else {
        (PERIOD_DAY, 86_400)
    }
}

pub fn encode_sketch(sketch: &Sketch) -> Vec<u8> {
    serde_json::to_vec(sketch).unwrap_or_default()
}

pub fn decode_sketch(bytes: &[u8]) -> Option<Sketch> {
    serde_json::from_slice(bytes).ok()
}

pub(crate) fn add_metric(
    map: &mut BTreeMap<(u32, i64, u32), (u64, f64)>,
    key: (u32, i64, u32),
    events: u64,
    total: f64,
) {
    let entry = map.entry(key).or_default();
    entry.0 += events;
    entry.1 += total;
}

impl Deltas {
    /// Count one inserted row of environment `env_id`; per-second buckets
    /// only from `live_since` (unix seconds) on.
    pub fn add(&mut self, env_id: u32, row: &Counted, live_since: i64) {
        let second = row.timestamp.div_euclid(1000);
        let minute = second.div_euclid(60) * 60;
        *self
            .minute
            .entry((env_id, minute, row.name_id))
            .or_default() += 1;
        *self
            .country
            .entry((env_id, minute, row.country.clone()))
            .or_default() += 1;
        let live = second >= live_since;
        if live {
            *self
                .second
                .entry((env_id, second, row.name_id))
                .or_default() += 1;
        }
        self.add_uniques(env_id, second, row.user.as_deref(), row.session.as_deref());
        self.add_metrics(env_id, second, live, &row.metrics);
    }

    /// A user and a session seen at `second`, in their hour and day sketches.
    pub fn add_uniques(
        &mut self,
        env_id: u32,
        second: i64,
        user: Option<&str>,
        session: Option<&str>,
    ) {
        for (kind, who) in [(KIND_USERS, user), (KIND_SESSIONS, session)] {
            if let Some(who) = who {
                for (period, length) in [(PERIOD_HOUR, 3600), (PERIOD_DAY, 86_400)] {
                    let start = second.div_euclid(length) * length;
                    self.sketches
                        .entry((env_id, period, kind, start))
                        .or_default()
                        .insert(who);
                }
            }
        }
    }

    /// One event's metric contributions at `second` (per-second too when `live`).
    pub fn add_metrics(&mut self, env_id: u32, second: i64, live: bool, values: &[(u32, f64)]) {
        let minute = second.div_euclid(60) * 60;
        for &(metric, value) in values {
            add_metric(&mut self.metric_minute, (env_id, minute, metric), 1, value);
            if live {
                add_metric(&mut self.metric_second, (env_id, second, metric), 1, value);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.minute.is_empty()
            && self.second.is_empty()
            && self.country.is_empty()
            && self.metric_minute.is_empty()
            && self.metric_second.is_empty()
            && self.sketches.is_empty()
    }

    pub fn merge(&mut self, other: Deltas) {
        for (k, n) in other.minute {
            *self.minute.entry(k).or_default() += n;
        }
        for (k, n) in other.second {
            *self.second.entry(k).or_default() += n;
        }
        for (k, n) in other.country {
            *self.country.entry(k).or_default() += n;
        }
        for (k, (events, total)) in other.metric_minute {
            add_metric(&mut self.metric_minute, k, events, total);
        }
        for (k, (events, total)) in other.metric_second {
            add_metric(&mut self.metric_second, k, events, total);
        }
        for (k, sketch) in other.sketches {
            self.sketches.entry(k).or_default().merge(&sketch);
        }
    }
}

pub struct Counters {
    pending: Mutex<BTreeMap<u32, Deltas>>,
    /// One flush at a time: a flush that returns has written everything
    /// counted before it started, even while the background one was running.
    flushing: tokio::sync::Mutex<()>,
    second_retention_secs: i64,
}

pub fn datetime(unix_seconds: i64) -> NaiveDateTime {
    DateTime::from_timestamp(unix_seconds, 0)
        .unwrap_or_default()
        .naive_utc()
}

pub(crate) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The country code of an envelope's context, as counted: up to 8 ASCII
/// letters/digits upper-cased (Cloudflare also sends `T1` and `XX`), else `??`.
pub fn country_of(envelope: &Envelope) -> Vec<u8> {
    match envelope.context.get("country").and_then(|c| c.as_str()) {
        Some(c)
            if !c.is_empty() && c.len() <= 8 && c.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            c.to_ascii_uppercase().into_bytes()
        }
        _ => b"??".to_vec(),
    }
}

/// (metric id, value) of every metric an event of this type, name and
/// properties contributes to: only `track` events count toward metrics.
pub fn contributions(
    metrics: &[Metric],
    event_type: EventType,
    name: &str,
    properties: &serde_json::Map<String, serde_json::Value>,
) -> Vec<(u32, f64)> {
    if event_type != EventType::Track {
        return Vec::new();
    }
    metrics
        .iter()
        .filter(|m| m.event_name == name)
        .filter_map(|m| Some((m.id, m.contribution(properties)?)))
        .collect()
}

/// What the counters take of one stored envelope whose name has `name_id`.
pub fn counted(envelope: &Envelope, name_id: u32, metrics: &[Metric]) -> Counted {
    Counted {
        name_id,
        timestamp: envelope.timestamp,
        country: country_of(envelope),
        user: envelope
            .user_id
            .clone()
            .or_else(|| envelope.anonymous_id.clone()),
        session: envelope.session_id.clone(),
        metrics: contributions(
            metrics,
            envelope.event_type,
            &envelope.name,
            &envelope.properties,
        ),
    }
}

impl Counters {
    pub fn new(second_retention_secs: i64) -> Self {
        Self {
            pending: Mutex::new(BTreeMap::new()),
            flushing: tokio::sync::Mutex::new(()),
            second_retention_secs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Deltas>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, shard_id: u32, env_id: u32, rows: &[Counted]) {
        if rows.is_empty() {
            return;
        }
        // Old events (a phone flushing yesterday's batch) get no per-second
        // rows: they would be pruned at once.
        let live_since = now_secs() - self.second_retention_secs;
        let mut pending = self.lock();
        let deltas = pending.entry(shard_id).or_default();
        for row in rows {
            deltas.add(env_id, row, live_since);
        }
    }

    /// A copy of one shard's deltas not flushed yet.
    pub fn pending(&self, shard_id: u32) -> Option<Deltas> {
        self.lock().get(&shard_id).cloned()
    }

    pub fn pending_len(&self) -> usize {
        self.lock()
            .values()
            .map(|d| {
                d.minute.len()
                    + d.second.len()
                    + d.country.len()
                    + d.metric_minute.len()
                    + d.metric_second.len()
                    + d.sketches.len()
            })
            .sum()
    }

    /// Write all pending deltas; a shard that fails keeps its deltas for the
    /// next flush. Returns the names of the shards that failed.
    pub async fn flush(&self, snapshot: &Snapshot, store: &dyn CounterStore) -> Vec<String> {
        let _one_at_a_time = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.lock());
        let mut failed = Vec::new();
        for (shard_id, deltas) in taken {
            if deltas.is_empty() {
                continue;
            }
            let Some(shard) = snapshot.shards.get(&shard_id) else {
                tracing::warn!(
                    shard_id,
                    "dropping counter deltas of a shard no longer in the catalog"
                );
                continue;
            };
            if let Err(error) = store.add(shard, &deltas).await {
                tracing::warn!(shard = %shard.name, %error, "counter flush failed; will retry");
                self.lock().entry(shard_id).or_default().merge(deltas);
                failed.push(shard.name.clone());
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(estimate: usize, exact: usize) -> f64 {
        (estimate as f64 - exact as f64).abs() / exact as f64
    }

    #[test]
    fn sketch_error_on_a_million_distinct_users_is_under_two_percent() {
        let mut whole = Sketch::default();
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        for i in 0..1_000_000u32 {
            let id = format!("user-{i}");
            whole.insert(id.as_str());
            if i % 2 == 0 {
                a.insert(id.as_str())
            } else {
                b.insert(id.as_str())
            }
        }
        let e = error(whole.estimate(), 1_000_000);
        assert!(e < 0.02, "error {e:.4}");
        // Merging the halves (as hourly sketches are merged) gives the same estimate.
        a.merge(&b);
        assert!(
            error(a.estimate(), whole.estimate()) < 0.001,
            "{} vs {}",
            a.estimate(),
            whole.estimate()
        );
        // Stored and read back unchanged; repeats change nothing.
        let decoded = decode_sketch(&encode_sketch(&whole)).expect("decodes");
        assert_eq!(decoded.estimate(), whole.estimate());
        whole.insert("user-7");
        assert_eq!(decoded.estimate(), whole.estimate());
    }

    #[test]
    fn small_sets_are_exact() {
        let mut s = Sketch::default();
        for i in 0..50 {
            s.insert(format!("u{i}").as_str());
            s.insert(format!("u{i}").as_str());
        }
        assert_eq!(s.estimate(), 50);
        assert!(decode_sketch(b"not a sketch").is_none());
    }

    use serde_json::json;

    fn metric(id: u32, aggregate: &str, property: Option<&str>) -> Metric {
        Metric {
            id,
            env_id: 1,
            name: format!("m{id}"),
            event_name: "buy".into(),
            aggregate: aggregate.parse().expect("an aggregate"),
            property: property.map(Into::into),
        }
    }

    fn envelope(value: serde_json::Value) -> Envelope {
        let mut base = json!({"id": "e1", "env_id": 1, "name": "buy", "timestamp": 1_700_000_061_500i64,
            "received_at": 0, "properties": {"amount": 4, "label": "x"}});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), value.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).expect("envelope")
    }

    fn row(timestamp: i64, name_id: u32) -> Counted {
        Counted {
            name_id,
            timestamp,
            country: b"DE".to_vec(),
            metrics: vec![(9, 2.5)],
            user: Some("u".into()),
            session: Some("s".into()),
        }
    }

    #[test]
    fn recording_adds_exact_deltas_per_minute_second_and_country() {
        let counters = Counters::new(7200);
        let now = now_secs() * 1000;
        let minute = (now / 1000).div_euclid(60) * 60;
        counters.record(3, 1, &[row(now, 5), row(now, 5), row(now, 6)]);
        let d = counters.pending(3).expect("deltas of shard 3");
        assert_eq!(d.minute.get(&(1, minute, 5)), Some(&2));
        assert_eq!(d.minute.get(&(1, minute, 6)), Some(&1));
        assert_eq!(d.second.get(&(1, now / 1000, 5)), Some(&2));
        assert_eq!(d.country.get(&(1, minute, b"DE".to_vec())), Some(&3));
        assert_eq!(d.metric_minute.get(&(1, minute, 9)), Some(&(3, 7.5)));
        assert_eq!(d.metric_second.get(&(1, now / 1000, 9)), Some(&(3, 7.5)));
        let hour = (now / 1000).div_euclid(3600) * 3600;
        let users = d
            .sketches
            .get(&(1, PERIOD_HOUR, KIND_USERS, hour))
            .expect("users");
        assert_eq!(users.estimate(), 1);
        assert_eq!(
            d.sketches.len(),
            4,
            "users and sessions, per hour and per day"
        );
        assert!(counters.pending(4).is_none());
        assert_eq!(counters.pending_len(), 2 + 2 + 1 + 1 + 1 + 4);
    }

    #[test]
    fn old_events_get_no_per_second_counts() {
        let counters = Counters::new(7200);
        let old = (now_secs() - 7300) * 1000;
        counters.record(1, 1, &[row(old, 5)]);
        let d = counters.pending(1).expect("deltas");
        assert_eq!(d.minute.values().sum::<u64>(), 1);
        assert!(d.second.is_empty());
        assert!(d.metric_second.is_empty());
        assert_eq!(d.metric_minute.len(), 1);
    }

    #[test]
    fn nothing_recorded_for_no_rows() {
        let counters = Counters::new(7200);
        counters.record(1, 1, &[]);
        assert!(counters.pending(1).is_none());
        assert_eq!(counters.pending_len(), 0);
    }

    #[test]
    fn merged_deltas_add_up() {
        let mut a = Deltas::default();
        a.add(1, &row(60_000, 5), 0);
        let mut b = Deltas::default();
        b.add(1, &row(60_500, 5), 0);
        b.add(2, &row(60_500, 5), 0);
        a.merge(b);
        assert_eq!(a.minute.get(&(1, 60, 5)), Some(&2));
        assert_eq!(a.minute.get(&(2, 60, 5)), Some(&1));
        assert_eq!(a.metric_minute.get(&(1, 60, 9)), Some(&(2, 5.0)));
        assert!(!a.is_empty());
        assert!(Deltas::default().is_empty());
    }

    #[test]
    fn an_envelope_counts_with_its_name_country_user_and_metrics() {
        let metrics = [
            metric(1, "sum", Some("amount")),
            metric(2, "count", None),
            metric(3, "avg", Some("label")),
        ];
        let e = envelope(
            json!({"anonymous_id": "anon", "session_id": "s", "context": {"country": "fr"}}),
        );
        let c = counted(&e, 42, &metrics);
        assert_eq!(c.name_id, 42);
        assert_eq!(c.timestamp, 1_700_000_061_500);
        assert_eq!(c.country, b"FR".to_vec());
        assert_eq!(
            c.user.as_deref(),
            Some("anon"),
            "anonymous id when there is no user id"
        );
        assert_eq!(c.session.as_deref(), Some("s"));
        assert_eq!(
            c.metrics,
            vec![(1, 4.0), (2, 1.0)],
            "a text property adds nothing"
        );
        let with_user = counted(
            &envelope(json!({"user_id": "u", "anonymous_id": "a"})),
            1,
            &[],
        );
        assert_eq!(with_user.user.as_deref(), Some("u"));
    }

    #[test]
    fn only_track_events_of_the_metric_name_contribute() {
        let metrics = [metric(1, "sum", Some("amount")), metric(2, "count", None)];
        let props = envelope(json!({})).properties;
        assert_eq!(
            contributions(&metrics, EventType::Track, "buy", &props).len(),
            2
        );
        assert!(contributions(&metrics, EventType::Track, "view", &props).is_empty());
        assert!(contributions(&metrics, EventType::Identify, "buy", &props).is_empty());
        let missing = serde_json::Map::new();
        assert_eq!(
            contributions(&metrics, EventType::Track, "buy", &missing),
            vec![(2, 1.0)]
        );
    }

    #[test]
    fn countries_are_short_alphanumeric_codes_or_unknown() {
        let of = |country: serde_json::Value| {
            country_of(&envelope(json!({"context": {"country": country}})))
        };
        assert_eq!(of(json!("de")), b"DE".to_vec());
        assert_eq!(of(json!("T1")), b"T1".to_vec());
        assert_eq!(of(json!("")), b"??".to_vec());
        assert_eq!(of(json!("ABCDEFGHI")), b"??".to_vec());
        assert_eq!(of(json!("D-E")), b"??".to_vec());
        assert_eq!(of(json!(49)), b"??".to_vec());
        assert_eq!(country_of(&envelope(json!({}))), b"??".to_vec());
    }

    #[test]
    fn ranges_up_to_two_days_use_hourly_sketches() {
        assert_eq!(sketch_period(0, 2 * 86_400_000), (PERIOD_HOUR, 3600));
        assert_eq!(sketch_period(0, 2 * 86_400_000 + 1), (PERIOD_DAY, 86_400));
    }
}
