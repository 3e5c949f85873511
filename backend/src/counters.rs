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

pub(crate) use crate::model::now_secs;
pub use crate::model::{
    contributions, counted, country_of, datetime, decode_sketch, encode_sketch, sketch_period,
    Deltas, Sketch, SketchKey, KIND_SESSIONS, KIND_USERS, PERIOD_DAY, PERIOD_HOUR,
};
use crate::{
    model::{Counted, Snapshot},
    store::CounterStore,
};

pub struct Counters {
    pending: Mutex<BTreeMap<u32, Deltas>>,
    /// One flush at a time: a flush that returns has written everything
    /// counted before it started, even while the background one was running.
    flushing: tokio::sync::Mutex<()>,
    second_retention_secs: i64,
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
    use crate::model::Metric;
    use protocol::Envelope;
    use protocol::EventType;

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
