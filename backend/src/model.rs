//! The data the ports exchange: catalog records and snapshots, metric
//! definitions, counted rows and counter deltas. Plain types without I/O:
//! every module may depend on this one; it depends on `error` alone.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use chrono::{DateTime, NaiveDateTime};
use protocol::{Envelope, EventType};
use sqlx::FromRow;

use crate::error::{Error, Result};

// ---- the catalog ----

#[derive(Debug, Clone, FromRow)]
pub struct Shard {
    pub id: u32,
    pub name: String,
    pub url: String,
    #[sqlx(try_from = "String")]
    pub status: ShardStatus,
}

/// A shard's `status` column: `active` shards are written; any other value
/// (the catalog sets none yet, an operator may) keeps writes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardStatus {
    Active,
    Other(String),
}

impl From<String> for ShardStatus {
    fn from(text: String) -> Self {
        if text == "active" {
            ShardStatus::Active
        } else {
            ShardStatus::Other(text)
        }
    }
}

impl std::fmt::Display for ShardStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardStatus::Active => f.pad("active"),
            ShardStatus::Other(text) => f.pad(text),
        }
    }
}

impl Shard {
    pub fn is_writable(&self) -> bool {
        self.status == ShardStatus::Active
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct Environment {
    pub id: u32,
    pub name: String,
    pub primary_shard_id: u32,
    pub secondary_shard_id: Option<u32>,
    #[sqlx(try_from = "String")]
    pub ip_policy: intake::enrich::IpPolicy,
    #[sqlx(try_from = "String")]
    pub geo_policy: intake::enrich::GeoPolicy,
    #[sqlx(try_from = "String")]
    pub bot_policy: intake::enrich::BotPolicy,
    /// Raw events older than this many days (event time) are deleted by the
    /// retention task (`crate::retention`); `None`: kept for ever.
    pub retention_days: Option<u32>,
}

impl Environment {
    /// The privacy policy both doors apply to the environment's events.
    pub fn policy(&self) -> intake::enrich::Policy {
        intake::enrich::Policy {
            ip: self.ip_policy,
            geo: self.geo_policy,
            bots: self.bot_policy,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub shards: HashMap<u32, Shard>,
    pub environments: HashMap<u32, Environment>,
    /// Each environment's metrics.
    pub metrics: HashMap<u32, Vec<Metric>>,
    /// Each environment's suppressed people (`crate::erasure::person_hash`),
    /// whose events the write drops.
    pub suppressed: HashMap<u32, HashSet<[u8; 32]>>,
    /// When the read that produced this snapshot started: it reflects the
    /// catalog as of then, so its age is measured from here.
    pub read_at: Instant,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            shards: HashMap::new(),
            environments: HashMap::new(),
            metrics: HashMap::new(),
            suppressed: HashMap::new(),
            read_at: Instant::now(),
        }
    }
}

impl Snapshot {
    /// How long ago the read that produced this snapshot started.
    pub fn age(&self) -> Duration {
        self.read_at.elapsed()
    }

    pub fn knows(&self, env_ids: &[u32]) -> bool {
        env_ids.iter().all(|id| self.environments.contains_key(id))
    }

    /// The shards an environment's events are written to: its primary, then
    /// its secondary while it migrates.
    pub fn targets(&self, env_id: u32) -> Option<Vec<&Shard>> {
        let env = self.environments.get(&env_id)?;
        let mut targets = vec![self.shards.get(&env.primary_shard_id)?];
        if let Some(secondary) = env.secondary_shard_id.and_then(|id| self.shards.get(&id)) {
            targets.push(secondary);
        }
        Some(targets)
    }
}

/// How a metric aggregates: the sum or the average of a numeric property,
/// or the number of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Avg,
    Count,
}

impl Aggregate {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Count => "count",
        }
    }
}

impl std::fmt::Display for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Aggregate {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "sum" => Ok(Aggregate::Sum),
            "avg" => Ok(Aggregate::Avg),
            "count" => Ok(Aggregate::Count),
            _ => Err(Error::InvalidArgument(
                "aggregate",
                format!("{text:?}: use sum, avg or count"),
            )),
        }
    }
}

/// A named aggregate over one event name: `sum`/`avg` of a numeric
/// property, or `count`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub id: u32,
    pub env_id: u32,
    pub name: String,
    pub event_name: String,
    pub aggregate: Aggregate,
    pub property: Option<String>,
}

impl Metric {
    /// What one event adds to this metric: `Some(value)` when it counts.
    pub fn contribution(
        &self,
        properties: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<f64> {
        match self.aggregate {
            Aggregate::Count => Some(1.0),
            Aggregate::Sum | Aggregate::Avg => properties
                .get(self.property.as_deref()?)?
                .as_f64()
                .filter(|v| v.is_finite()),
        }
    }

    /// The reported value from (events, total).
    pub fn value(&self, events: u64, total: f64) -> Option<f64> {
        match self.aggregate {
            Aggregate::Count => Some(events as f64),
            Aggregate::Sum => Some(total),
            Aggregate::Avg if events == 0 => None,
            Aggregate::Avg => Some(total / events as f64),
        }
    }
}

// ---- counting ----

/// What the counters need of one inserted row.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub name_id: u32,
    pub timestamp: i64,
    pub country: Vec<u8>,
    /// (metric id, value) for every metric this event contributes to.
    pub metrics: Vec<(u32, f64)>,
    /// Who: `user_id`, else `anonymous_id`.
    pub user: Option<String>,
    pub session: Option<String>,
}

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
