//! In-process implementations of the ports, for tests: events, counts and
//! the catalog live in maps; any shard (or the catalog) can be made to fail.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use async_trait::async_trait;
use protocol::{DeadLetter, Envelope, EventType, Sample};
use serde_json::json;

use crate::{
    delivery::{self, Counts, Entry},
    error::{Error, Result},
    model::{self, counted, Deltas, Sketch, KIND_SESSIONS, KIND_USERS},
    model::{Environment, Metric, Shard, Snapshot},
    store::{
        Buckets, CatalogSource, CounterStore, EventStore, Expiring, ExportPage, ExportPosition,
        ExportStore, LedgerStore, NamedCount, RejectedSample, RetentionStore, Second, StatsStore,
        Summary, SummaryRange, TailKey, TailStore, WriteOutcome,
    },
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// (shard, env, minute, outcome, source) of a ledger row, whose value is
/// (events, summable).
type LedgerKey = (u32, u32, i64, String, [u8; 16]);
/// (shard, env, key, receive time) of a dead letter.
type DeadLetterKey = (u32, u32, [u8; 16], i64);

#[derive(Default)]
struct Shards {
    /// (shard, env) → stored envelopes by key, in insertion order of keys.
    events: HashMap<(u32, u32), BTreeMap<[u8; 16], Envelope>>,
    /// (shard, env, event type, name) → name id.
    names: HashMap<(u32, u32, u8, String), u32>,
    next_name: u32,
    /// Flushed counts per shard.
    counts: HashMap<u32, Deltas>,
    failing_writes: HashSet<u32>,
    failing_counters: HashSet<u32>,
    down: HashSet<u32>,
    /// (shard, env, envelopes) of every write attempted.
    writes: Vec<(u32, u32, usize)>,
    /// (shard, env, stored at ms, key) of every inserted row, for the live tail.
    stored: Vec<(u32, u32, i64, [u8; 16])>,
    /// (shard, env, sample) of refusals, for the live tail.
    rejected: Vec<(u32, u32, RejectedSample)>,
    /// The delivery ledger.
    ledger: BTreeMap<LedgerKey, (u64, bool)>,
    /// Dead letters → (acceptance, n).
    dead_letters: BTreeMap<DeadLetterKey, ([u8; 16], u32)>,
    /// (shard, env, source, seq) → sampled refusal.
    samples: BTreeMap<(u32, u32, [u8; 16], u16), Sample>,
}

impl Shards {
    fn record(&mut self, shard_id: u32, env_id: u32, entries: &[Entry]) {
        for e in entries {
            self.ledger
                .entry((shard_id, env_id, e.minute, e.outcome.clone(), e.source))
                .or_insert((e.n, e.summable));
        }
    }
}

/// Events, names and flushed counts per shard, in memory.
#[derive(Default)]
pub struct MemoryStore {
    shards: Mutex<Shards>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Make writes to a shard fail (or succeed again).
    pub fn fail_writes(&self, shard_id: u32, failing: bool) {
        let mut s = lock(&self.shards);
        if failing {
            s.failing_writes.insert(shard_id);
        } else {
            s.failing_writes.remove(&shard_id);
        }
    }

    /// Make counter flushes to a shard fail (or succeed again).
    pub fn fail_counters(&self, shard_id: u32, failing: bool) {
        let mut s = lock(&self.shards);
        if failing {
            s.failing_counters.insert(shard_id);
        } else {
            s.failing_counters.remove(&shard_id);
        }
    }

    /// Report a shard as unreachable moments ago ([`EventStore::recently_down`]).
    pub fn mark_down(&self, shard_id: u32) {
        lock(&self.shards).down.insert(shard_id);
    }

    /// The ids of an environment's events stored on a shard, sorted.
    pub fn ids(&self, shard_id: u32, env_id: u32) -> Vec<String> {
        let s = lock(&self.shards);
        let mut ids: Vec<String> = s
            .events
            .get(&(shard_id, env_id))
            .map(|m| m.values().map(|e| e.id.clone()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// The envelopes of an environment stored on a shard.
    pub fn envelopes(&self, shard_id: u32, env_id: u32) -> Vec<Envelope> {
        lock(&self.shards)
            .events
            .get(&(shard_id, env_id))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many of an environment's events a shard holds.
    pub fn count(&self, shard_id: u32, env_id: u32) -> usize {
        lock(&self.shards)
            .events
            .get(&(shard_id, env_id))
            .map_or(0, BTreeMap::len)
    }

    /// The counts flushed to a shard so far.
    pub fn counts(&self, shard_id: u32) -> Deltas {
        lock(&self.shards)
            .counts
            .get(&shard_id)
            .cloned()
            .unwrap_or_default()
    }

    /// (shard, env, envelopes) of every write that reached the store.
    pub fn writes(&self) -> Vec<(u32, u32, usize)> {
        lock(&self.shards).writes.clone()
    }

    /// The id a name has on a shard, if it was ever written there.
    pub fn name_id(
        &self,
        shard_id: u32,
        env_id: u32,
        event_type: EventType,
        name: &str,
    ) -> Option<u32> {
        lock(&self.shards)
            .names
            .get(&(shard_id, env_id, event_type.code(), name.to_string()))
            .copied()
    }
}

impl Shards {
    /// name id → (event type code, name) of one shard and environment.
    fn names_of(&self, shard_id: u32, env_id: u32) -> HashMap<u32, (u8, String)> {
        self.names
            .iter()
            .filter(|((s, e, _, _), _)| *s == shard_id && *e == env_id)
            .map(|((_, _, kind, name), id)| (*id, (*kind, name.clone())))
            .collect()
    }
}

fn type_code(event_type: Option<&str>) -> Option<u8> {
    let event_type = event_type?;
    (0..=u8::MAX).find(|&c| EventType::from_code(c).map(EventType::as_str) == Some(event_type))
}

/// The top 100 in the MySQL store's order: count down, then name, then type.
fn sorted_counts(totals: HashMap<(String, Option<&'static str>), u64>) -> Vec<NamedCount> {
    let mut counts: Vec<NamedCount> = totals
        .into_iter()
        .map(|((name, event_type), count)| NamedCount {
            name,
            count,
            event_type,
        })
        .collect();
    counts.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| type_code(a.event_type).cmp(&type_code(b.event_type)))
    });
    counts.truncate(100);
    counts
}

fn bucket(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn write(
        &self,
        shard: &Shard,
        env_id: u32,
        envelopes: &[&Envelope],
        dropped: &[delivery::Dropped<'_>],
        metrics: &[Metric],
    ) -> Result<WriteOutcome> {
        let mut s = lock(&self.shards);
        s.writes.push((shard.id, env_id, envelopes.len()));
        if s.failing_writes.contains(&shard.id) {
            return Err(Error::Internal(format!(
                "memory shard {} is failing",
                shard.name
            )));
        }
        let stored_before: HashMap<[u8; 16], i64> = {
            let stored = s.events.entry((shard.id, env_id)).or_default();
            envelopes
                .iter()
                .filter_map(|e| stored.get(&e.key()).map(|s| (e.key(), s.received_at)))
                .collect()
        };
        let ledger = delivery::count_write(envelopes, dropped, &stored_before, rand::random());
        s.record(shard.id, env_id, &ledger);
        let mut outcome = WriteOutcome::default();
        for &envelope in envelopes {
            let key = envelope.key();
            let stored = s.events.entry((shard.id, env_id)).or_default();
            if stored.contains_key(&key) {
                outcome.duplicates += 1;
                continue;
            }
            stored.insert(key, envelope.clone());
            s.stored
                .push((shard.id, env_id, chrono::Utc::now().timestamp_millis(), key));
            let name_key = (
                shard.id,
                env_id,
                envelope.event_type.code(),
                envelope.name.clone(),
            );
            let name_id = match s.names.get(&name_key) {
                Some(&id) => id,
                None => {
                    s.next_name += 1;
                    let id = s.next_name;
                    s.names.insert(name_key, id);
                    id
                }
            };
            outcome.inserted += 1;
            outcome.counted.push(counted(envelope, name_id, metrics));
        }
        Ok(outcome)
    }

    fn recently_down(&self, shard_id: u32) -> bool {
        lock(&self.shards).down.contains(&shard_id)
    }
}

#[async_trait]
impl LedgerStore for MemoryStore {
    async fn report(
        &self,
        shard: &Shard,
        env_id: u32,
        entries: &[Entry],
        samples: &[([u8; 16], Sample)],
    ) -> Result<()> {
        let mut s = lock(&self.shards);
        if s.failing_writes.contains(&shard.id) {
            return Err(Error::Internal(format!(
                "memory shard {} is failing",
                shard.name
            )));
        }
        s.record(shard.id, env_id, entries);
        let mut seq: BTreeMap<[u8; 16], u16> = BTreeMap::new();
        for (source, sample) in samples {
            let n = seq.entry(*source).or_default();
            if let std::collections::btree_map::Entry::Vacant(slot) =
                s.samples.entry((shard.id, env_id, *source, *n))
            {
                slot.insert(sample.clone());
                // The live tail sees it from now on (`rejected_samples.stored_at`).
                let stored = RejectedSample {
                    source: *source,
                    seq: *n,
                    stored_at: chrono::Utc::now().timestamp_millis(),
                    received_at: sample.received_at,
                    code: sample.code.clone(),
                    message: sample.message.clone(),
                    body: sample.body.clone(),
                };
                s.rejected.push((shard.id, env_id, stored));
            }
            *n += 1;
        }
        Ok(())
    }

    async fn dead_letters(
        &self,
        shard: &Shard,
        env_id: u32,
        letters: &[DeadLetter],
    ) -> Result<u64> {
        let mut s = lock(&self.shards);
        let mut new = 0;
        for letter in letters {
            let key = (
                shard.id,
                env_id,
                protocol::event_key(&letter.id),
                letter.received_at,
            );
            if let std::collections::btree_map::Entry::Vacant(slot) = s.dead_letters.entry(key) {
                slot.insert(delivery::dead_letter_acceptance(letter));
                new += 1;
            }
        }
        Ok(new)
    }

    async fn compact(
        &self,
        shard: &Shard,
        env_id: u32,
        before: i64,
        max_minutes: u32,
    ) -> Result<u64> {
        let mut s = lock(&self.shards);
        let mut minutes = BTreeSet::new();
        for ((sh, env, minute, _, source), (_, summable)) in &s.ledger {
            if (*sh, *env) == (shard.id, env_id)
                && *minute < before
                && *summable
                && *source != delivery::SUMMED
            {
                minutes.insert(*minute);
            }
        }
        let mut removed = 0;
        for minute in minutes.into_iter().take(max_minutes as usize) {
            let keys: Vec<_> = s
                .ledger
                .iter()
                .filter(|((sh, env, m, _, _), (_, summable))| {
                    (*sh, *env, *m) == (shard.id, env_id, minute) && *summable
                })
                .map(|(k, _)| k.clone())
                .collect();
            let mut sums: BTreeMap<String, u64> = BTreeMap::new();
            for key in &keys {
                if let Some((n, _)) = s.ledger.remove(key) {
                    *sums.entry(key.3.clone()).or_default() += n;
                }
            }
            removed += (keys.len() - sums.len()) as u64;
            for (outcome, n) in sums {
                s.ledger.insert(
                    (shard.id, env_id, minute, outcome, delivery::SUMMED),
                    (n, true),
                );
            }
        }
        Ok(removed)
    }

    async fn ledger(
        &self,
        shard: &Shard,
        env_id: u32,
        start: i64,
        end: i64,
    ) -> Result<BTreeMap<i64, Counts>> {
        let s = lock(&self.shards);
        let mut out: BTreeMap<i64, Counts> = BTreeMap::new();
        for ((sh, env, minute, outcome, _), (n, _)) in &s.ledger {
            if (*sh, *env) == (shard.id, env_id) && (start..end).contains(minute) {
                *out.entry(*minute)
                    .or_default()
                    .outcomes
                    .entry(outcome.clone())
                    .or_default() += n;
            }
        }
        let stored = s.events.get(&(shard.id, env_id));
        let mut dead: BTreeMap<(i64, [u8; 16]), delivery::DeadAcceptance> = BTreeMap::new();
        for ((sh, env, key, received_at), (acceptance, n)) in &s.dead_letters {
            let minute = delivery::minute_of(*received_at);
            if (*sh, *env) != (shard.id, env_id) || !(start..end).contains(&minute) {
                continue;
            }
            let d = dead
                .entry((minute, *acceptance))
                .or_insert(delivery::DeadAcceptance {
                    minute,
                    acceptance: *acceptance,
                    n: u64::from(*n),
                    letters: 0,
                    stored: 0,
                });
            d.letters += 1;
            if stored
                .and_then(|m| m.get(key))
                .is_some_and(|e| e.received_at == *received_at)
            {
                d.stored += 1;
            }
        }
        let keyed: HashSet<[u8; 16]> = s
            .ledger
            .keys()
            .filter(|(sh, env, minute, outcome, _)| {
                (*sh, *env) == (shard.id, env_id)
                    && (start..end).contains(minute)
                    && outcome == delivery::ACCEPTED
            })
            .map(|k| k.4)
            .collect();
        let dead: Vec<_> = dead.into_values().collect();
        delivery::add_dead_letters(&mut out, &dead, &keyed);
        Ok(out)
    }
}

#[async_trait]
impl RetentionStore for MemoryStore {
    async fn expire(
        &self,
        shard: &Shard,
        env_id: u32,
        table: Expiring,
        before: i64,
        limit: u32,
    ) -> Result<u64> {
        let mut s = lock(&self.shards);
        if s.failing_writes.contains(&shard.id) {
            return Err(Error::Internal(format!(
                "memory shard {} is failing",
                shard.name
            )));
        }
        let limit = limit as usize;
        let minute_before = before.div_euclid(60_000) * 60;
        let oldest_first = |mut old: Vec<(i64, usize)>| {
            old.sort();
            old.truncate(limit);
            old.into_iter().map(|(_, i)| i).collect::<HashSet<usize>>()
        };
        let removed = match table {
            Expiring::Events => {
                let Some(events) = s.events.get_mut(&(shard.id, env_id)) else {
                    return Ok(0);
                };
                let mut old: Vec<(i64, [u8; 16])> = events
                    .iter()
                    .filter(|(_, e)| e.timestamp < before)
                    .map(|(k, e)| (e.timestamp, *k))
                    .collect();
                old.sort();
                old.truncate(limit);
                for (_, key) in &old {
                    events.remove(key);
                }
                old.len()
            }
            Expiring::Delivery => {
                let old: Vec<LedgerKey> = s
                    .ledger
                    .keys()
                    .filter(|k| k.0 == shard.id && k.1 == env_id && k.2 < minute_before)
                    .take(limit)
                    .cloned()
                    .collect();
                for key in &old {
                    s.ledger.remove(key);
                }
                old.len()
            }
            Expiring::DeadLetters => {
                let old: Vec<(i64, DeadLetterKey)> = s
                    .dead_letters
                    .keys()
                    .filter(|k| {
                        k.0 == shard.id && k.1 == env_id && k.3 / 60_000 * 60 < minute_before
                    })
                    .map(|k| (k.3, *k))
                    .collect();
                let chosen = oldest_first(old.iter().enumerate().map(|(i, k)| (k.0, i)).collect());
                for (i, (_, key)) in old.iter().enumerate() {
                    if chosen.contains(&i) {
                        s.dead_letters.remove(key);
                    }
                }
                chosen.len()
            }
            Expiring::RejectedSamples => {
                let old: Vec<(i64, usize)> = s
                    .rejected
                    .iter()
                    .enumerate()
                    .filter(|(_, (sh, env, r))| {
                        *sh == shard.id && *env == env_id && r.stored_at < before
                    })
                    .map(|(i, (_, _, r))| (r.stored_at, i))
                    .collect();
                let chosen = oldest_first(old);
                let mut i = 0;
                s.rejected.retain(|_| {
                    i += 1;
                    !chosen.contains(&(i - 1))
                });
                chosen.len()
            }
        };
        Ok(removed as u64)
    }
}

#[async_trait]
impl CounterStore for MemoryStore {
    async fn add(&self, shard: &Shard, deltas: &Deltas) -> Result<()> {
        let mut s = lock(&self.shards);
        if s.failing_counters.contains(&shard.id) {
            return Err(Error::Internal(format!(
                "memory counters of {} are failing",
                shard.name
            )));
        }
        s.counts.entry(shard.id).or_default().merge(deltas.clone());
        Ok(())
    }

    async fn prune(&self, shard: &Shard, second_cutoff: i64, minute_cutoff: i64) -> Result<u64> {
        let mut s = lock(&self.shards);
        let Some(d) = s.counts.get_mut(&shard.id) else {
            return Ok(0);
        };
        let before = d.second.len()
            + d.metric_second.len()
            + d.minute.len()
            + d.country.len()
            + d.metric_minute.len()
            + d.sketches.len();
        d.second.retain(|k, _| k.1 >= second_cutoff);
        d.metric_second.retain(|k, _| k.1 >= second_cutoff);
        d.minute.retain(|k, _| k.1 >= minute_cutoff);
        d.country.retain(|k, _| k.1 >= minute_cutoff);
        d.metric_minute.retain(|k, _| k.1 >= minute_cutoff);
        d.sketches.retain(|k, _| k.3 >= minute_cutoff);
        let after = d.second.len()
            + d.metric_second.len()
            + d.minute.len()
            + d.country.len()
            + d.metric_minute.len()
            + d.sketches.len();
        Ok((before - after) as u64)
    }
}

#[async_trait]
impl StatsStore for MemoryStore {
    async fn summary(
        &self,
        shard: &Shard,
        env_id: u32,
        range: SummaryRange,
        metrics: &[Metric],
    ) -> Result<Summary> {
        let s = lock(&self.shards);
        let names = s.names_of(shard.id, env_id);
        let d = s.counts.get(&shard.id).cloned().unwrap_or_default();
        let (start, end) = (
            range.start.and_utc().timestamp(),
            range.end.and_utc().timestamp(),
        );
        let within = |e: u32, t: i64| e == env_id && t >= start && t < end;
        let mut summary = Summary::default();
        let mut by_event: HashMap<(String, Option<&'static str>), u64> = HashMap::new();
        let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (&(e, t, name_id), &n) in &d.minute {
            if !within(e, t) {
                continue;
            }
            summary.events += n;
            if let Some((kind, name)) = names.get(&name_id) {
                let kind = EventType::from_code(*kind).map(EventType::as_str);
                *by_event.entry((name.clone(), kind)).or_default() += n;
                *by_type.entry(kind.unwrap_or("unknown")).or_default() += n;
            }
        }
        summary.by_event = sorted_counts(by_event);
        let mut by_type: Vec<_> = by_type.into_iter().collect();
        by_type.sort_by_key(|b| (std::cmp::Reverse(b.1), type_code(Some(b.0))));
        summary.by_type = by_type;
        let mut by_country: HashMap<(String, Option<&'static str>), u64> = HashMap::new();
        for ((e, t, country), &n) in &d.country {
            if within(*e, *t) {
                *by_country
                    .entry((String::from_utf8_lossy(country).into_owned(), None))
                    .or_default() += n;
            }
        }
        summary.by_country = sorted_counts(by_country);
        let (period, length) = model::sketch_period(range.from_ms, range.to_ms);
        let from = bucket(range.from_ms.div_euclid(1000), length);
        let to = range.to_ms.div_euclid(1000);
        for (kind, slot) in [
            (KIND_USERS, &mut summary.users),
            (KIND_SESSIONS, &mut summary.sessions),
        ] {
            let mut merged = Sketch::default();
            for (&(e, p, k, t), sketch) in &d.sketches {
                if e == env_id && p == period && k == kind && t >= from && t < to {
                    merged.merge(sketch);
                }
            }
            *slot = merged.estimate() as u64;
        }
        let mut sums: HashMap<u32, (u64, f64)> = HashMap::new();
        for (&(e, t, id), &(events, total)) in &d.metric_minute {
            if within(e, t) {
                let sum = sums.entry(id).or_default();
                sum.0 += events;
                sum.1 += total;
            }
        }
        summary.metrics = metrics
            .iter()
            .map(|m| {
                let (events, total) = sums.get(&m.id).copied().unwrap_or_default();
                (m.name.clone(), json!(m.value(events, total)))
            })
            .collect();
        Ok(summary)
    }

    async fn event_series(
        &self,
        shard: &Shard,
        env_id: u32,
        event: Option<&str>,
        buckets: Buckets,
    ) -> Result<Option<BTreeMap<i64, u64>>> {
        let s = lock(&self.shards);
        let name_ids: Option<HashSet<u32>> = match event {
            Some(event) => {
                let ids: HashSet<u32> = s
                    .names_of(shard.id, env_id)
                    .into_iter()
                    .filter(|(_, (_, name))| name == event)
                    .map(|(id, _)| id)
                    .collect();
                if ids.is_empty() {
                    return Ok(None);
                }
                Some(ids)
            }
            None => None,
        };
        let d = s.counts.get(&shard.id).cloned().unwrap_or_default();
        let counts = if buckets.step == 1 {
            &d.second
        } else {
            &d.minute
        };
        let mut sparse = BTreeMap::new();
        for (&(e, t, name_id), &n) in counts {
            let wanted = name_ids.as_ref().is_none_or(|ids| ids.contains(&name_id));
            if e == env_id && wanted && t >= buckets.bucket_start && t < buckets.end {
                *sparse.entry(bucket(t, buckets.step)).or_default() += n;
            }
        }
        Ok(Some(sparse))
    }

    async fn metric_series(
        &self,
        shard: &Shard,
        env_id: u32,
        metric_id: u32,
        buckets: Buckets,
    ) -> Result<HashMap<i64, (u64, f64)>> {
        let s = lock(&self.shards);
        let d = s.counts.get(&shard.id).cloned().unwrap_or_default();
        let values = if buckets.step == 1 {
            &d.metric_second
        } else {
            &d.metric_minute
        };
        let mut sparse: HashMap<i64, (u64, f64)> = HashMap::new();
        for (&(e, t, id), &(events, total)) in values {
            if e == env_id && id == metric_id && t >= buckets.bucket_start && t < buckets.end {
                let sum = sparse.entry(bucket(t, buckets.step)).or_default();
                sum.0 += events;
                sum.1 += total;
            }
        }
        Ok(sparse)
    }

    async fn seconds(
        &self,
        shard: &Shard,
        env_id: u32,
        metrics: &[Metric],
        since: i64,
        until: i64,
    ) -> Result<Vec<Second>> {
        let s = lock(&self.shards);
        let names = s.names_of(shard.id, env_id);
        let d = s.counts.get(&shard.id).cloned().unwrap_or_default();
        let mut by_second = Second::zeroed(since, until);
        for (&(e, t, name_id), &n) in &d.second {
            if e != env_id {
                continue;
            }
            if let (Some(second), Some((_, name))) = (by_second.get_mut(&t), names.get(&name_id)) {
                second.total += n;
                *second.by_event.entry(name.clone()).or_default() += n;
            }
        }
        for (&(e, t, id), &(events, total)) in &d.metric_second {
            let metric = metrics.iter().find(|m| m.id == id);
            if let (true, Some(second), Some(metric)) = (e == env_id, by_second.get_mut(&t), metric)
            {
                if let Some(value) = metric.value(events, total) {
                    second.metrics.insert(metric.name.clone(), value);
                }
            }
        }
        Ok(by_second.into_values().collect())
    }
}

#[derive(Default)]
struct CatalogState {
    shards: Vec<Shard>,
    environments: Vec<Environment>,
    metrics: Vec<Metric>,
    /// (environment, person) → when the suppression ends (unix seconds).
    suppressions: BTreeMap<(u32, [u8; 32]), i64>,
    tokens: HashMap<[u8; 32], u32>,
    api_keys: HashMap<String, u32>,
    failing: bool,
    loads: usize,
    token_lookups: usize,
}

/// A catalog held in memory: shards, environments, metrics, read tokens.
#[derive(Default)]
pub struct MemoryCatalog {
    state: Mutex<CatalogState>,
}

impl MemoryCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an active shard (its URL is only a label here).
    pub fn add_shard(&self, id: u32, name: &str) {
        lock(&self.state).shards.push(Shard {
            id,
            name: name.into(),
            url: format!("memory://{name}"),
            status: crate::model::ShardStatus::Active,
        });
    }

    /// Set a shard's status (`active`, `readonly`, ...).
    pub fn set_shard_status(&self, id: u32, status: &str) {
        for shard in lock(&self.state).shards.iter_mut().filter(|s| s.id == id) {
            shard.status = status.to_string().into();
        }
    }

    /// Add an environment, or replace the one with the same id.
    pub fn put_environment(&self, id: u32, name: &str, primary: u32, secondary: Option<u32>) {
        let mut state = lock(&self.state);
        state.environments.retain(|e| e.id != id);
        state.environments.push(Environment {
            id,
            name: name.into(),
            primary_shard_id: primary,
            secondary_shard_id: secondary,
            ip_policy: Default::default(),
            geo_policy: Default::default(),
            bot_policy: Default::default(),
            retention_days: None,
        });
    }

    /// Change an environment's privacy policy.
    pub fn set_policy(&self, id: u32, policy: intake::enrich::Policy) {
        for e in lock(&self.state)
            .environments
            .iter_mut()
            .filter(|e| e.id == id)
        {
            (e.ip_policy, e.geo_policy, e.bot_policy) = (policy.ip, policy.geo, policy.bots);
        }
    }

    /// Change an environment's retention (days of event time).
    pub fn set_retention(&self, id: u32, days: Option<u32>) {
        for e in lock(&self.state)
            .environments
            .iter_mut()
            .filter(|e| e.id == id)
        {
            e.retention_days = days;
        }
    }

    pub fn add_metric(&self, metric: Metric) {
        lock(&self.state).metrics.push(metric);
    }

    /// Make `token` a read token of environment `env_id`.
    pub fn add_read_token(&self, token: &str, env_id: u32) {
        lock(&self.state)
            .tokens
            .insert(intake::credentials::secret_hash(token), env_id);
    }

    /// Make `key` an active API key of environment `env_id`.
    pub fn add_api_key(&self, key: &str, env_id: u32) {
        lock(&self.state)
            .api_keys
            .insert(intake::credentials::key_hash(key), env_id);
    }

    /// Revoke the API key `key`.
    pub fn revoke_api_key(&self, key: &str) {
        lock(&self.state)
            .api_keys
            .remove(&intake::credentials::key_hash(key));
    }

    /// Make every read fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        lock(&self.state).failing = failing;
    }

    /// How many snapshots were loaded.
    pub fn loads(&self) -> usize {
        lock(&self.state).loads
    }

    /// How many read tokens were looked up.
    pub fn token_lookups(&self) -> usize {
        lock(&self.state).token_lookups
    }

    /// The catalog as it is now, read at `read_at`.
    pub fn snapshot_at(&self, read_at: Instant) -> Snapshot {
        let state = lock(&self.state);
        let mut metrics: HashMap<u32, Vec<Metric>> = HashMap::new();
        for metric in &state.metrics {
            metrics
                .entry(metric.env_id)
                .or_default()
                .push(metric.clone());
        }
        let now = chrono::Utc::now().timestamp();
        let mut suppressed: HashMap<u32, HashSet<[u8; 32]>> = HashMap::new();
        for (&(env_id, person), _) in state.suppressions.iter().filter(|(_, &until)| until > now) {
            suppressed.entry(env_id).or_default().insert(person);
        }
        Snapshot {
            shards: state.shards.iter().map(|s| (s.id, s.clone())).collect(),
            environments: state
                .environments
                .iter()
                .map(|e| (e.id, e.clone()))
                .collect(),
            metrics,
            suppressed,
            read_at,
        }
    }

    /// Suppress a person (`crate::erasure::person_hash`) from the next snapshot on.
    pub fn suppress(&self, env_id: u32, person: [u8; 32]) {
        self.suppress_until(env_id, person, i64::MAX);
    }

    /// Suppress a person until `until` (unix seconds; one in the past has ended).
    pub fn suppress_until(&self, env_id: u32, person: [u8; 32], until: i64) {
        let mut state = lock(&self.state);
        let end = state.suppressions.entry((env_id, person)).or_insert(until);
        *end = (*end).max(until);
    }

    /// How many suppressions are stored, ended or not.
    pub fn suppressions(&self) -> usize {
        lock(&self.state).suppressions.len()
    }
}

#[async_trait]
impl CatalogSource for MemoryCatalog {
    async fn load(&self) -> Result<Snapshot> {
        let read_at = Instant::now();
        {
            let mut state = lock(&self.state);
            if state.failing {
                return Err(Error::Catalog("the memory catalog is failing".into()));
            }
            state.loads += 1;
        }
        Ok(self.snapshot_at(read_at))
    }

    async fn read_token_env(&self, hash: &[u8; 32]) -> Result<Option<u32>> {
        let mut state = lock(&self.state);
        if state.failing {
            return Err(Error::Catalog("the memory catalog is failing".into()));
        }
        state.token_lookups += 1;
        Ok(state.tokens.get(hash).copied())
    }

    async fn api_key_env(&self, hash: &str) -> Result<Option<u32>> {
        let state = lock(&self.state);
        if state.failing {
            return Err(Error::Catalog("the memory catalog is failing".into()));
        }
        Ok(state.api_keys.get(hash).copied())
    }

    async fn prune_suppressions(&self, limit: u32) -> Result<u64> {
        let mut state = lock(&self.state);
        if state.failing {
            return Err(Error::Catalog("the memory catalog is failing".into()));
        }
        let now = chrono::Utc::now().timestamp();
        let mut ended: Vec<((u32, [u8; 32]), i64)> = state
            .suppressions
            .iter()
            .filter(|(_, &until)| until <= now)
            .map(|(&key, &until)| (key, until))
            .collect();
        ended.sort_by_key(|&(_, until)| until);
        ended.truncate(limit as usize);
        for (key, _) in &ended {
            state.suppressions.remove(key);
        }
        Ok(ended.len() as u64)
    }
}

impl MemoryStore {
    /// Store a sampled refusal for an environment on a shard (what the doors
    /// write to `rejected_samples`), stored now.
    pub fn add_rejected_sample(&self, shard_id: u32, env_id: u32, mut sample: RejectedSample) {
        sample.stored_at = chrono::Utc::now().timestamp_millis();
        lock(&self.shards).rejected.push((shard_id, env_id, sample));
    }
}

#[async_trait]
impl ExportStore for MemoryStore {
    async fn event_time(&self, shard: &Shard, env_id: u32, key: [u8; 16]) -> Result<Option<i64>> {
        let s = lock(&self.shards);
        Ok(s.events
            .get(&(shard.id, env_id))
            .and_then(|stored| stored.get(&key))
            .map(|e| e.timestamp))
    }

    async fn export_page(
        &self,
        shard: &Shard,
        env_id: u32,
        after: ExportPosition,
        to: i64,
        limit: u32,
    ) -> Result<ExportPage> {
        let s = lock(&self.shards);
        let Some(stored) = s.events.get(&(shard.id, env_id)) else {
            return Ok(ExportPage::of_events(None, Vec::new()));
        };
        let mut page: Vec<([u8; 16], Envelope)> = stored
            .iter()
            .filter(|(key, e)| {
                e.timestamp < to
                    && (e.timestamp > after.ts
                        || (e.timestamp == after.ts && after.key.is_none_or(|k| **key > k)))
            })
            .map(|(key, e)| (*key, e.clone()))
            .collect();
        page.sort_by_key(|(key, e)| (e.timestamp, *key));
        page.truncate(limit as usize);
        let last = page.last().map(|(key, e)| ExportPosition {
            ts: e.timestamp,
            key: Some(*key),
        });
        Ok(ExportPage::of_events(
            last,
            page.into_iter().map(|(_, e)| e).collect(),
        ))
    }
}

#[async_trait]
impl TailStore for MemoryStore {
    async fn clock(&self, _shard: &Shard) -> Result<i64> {
        Ok(chrono::Utc::now().timestamp_millis())
    }

    async fn stored_keys(
        &self,
        shard: &Shard,
        env_id: u32,
        since: i64,
        after: Option<TailKey>,
        limit: u32,
    ) -> Result<Vec<TailKey>> {
        let s = lock(&self.shards);
        let mut keys: Vec<TailKey> = s
            .stored
            .iter()
            .filter(|(sh, env, at, _)| *sh == shard.id && *env == env_id && *at >= since)
            .map(|(_, _, at, key)| (*at, *key))
            .filter(|k| after.is_none_or(|a| *k > a))
            .collect();
        keys.sort();
        keys.truncate(limit as usize);
        Ok(keys)
    }

    async fn events(&self, shard: &Shard, env_id: u32, keys: &[[u8; 16]]) -> Result<Vec<Envelope>> {
        let s = lock(&self.shards);
        let Some(stored) = s.events.get(&(shard.id, env_id)) else {
            return Ok(Vec::new());
        };
        Ok(keys.iter().filter_map(|k| stored.get(k).cloned()).collect())
    }

    async fn rejected_since(
        &self,
        shard: &Shard,
        env_id: u32,
        since: i64,
        limit: u32,
    ) -> Result<Vec<RejectedSample>> {
        let s = lock(&self.shards);
        let mut samples: Vec<RejectedSample> = s
            .rejected
            .iter()
            .filter(|(sh, env, r)| *sh == shard.id && *env == env_id && r.stored_at >= since)
            .map(|(_, _, r)| r.clone())
            .collect();
        samples.sort_by_key(|r| (r.stored_at, r.source, r.seq));
        samples.truncate(limit as usize);
        Ok(samples)
    }
}
