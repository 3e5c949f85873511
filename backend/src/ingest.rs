//! Landing a validated batch: group by environment, route through the
//! catalog, write every group to its shards concurrently, report per
//! environment what landed and which envelope ids must be sent again.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Instant,
};

use futures::future::join_all;
use protocol::{EnvCounts, EnvFailure, Envelope, IngestResponse};
use serde_json::json;

use crate::{
    catalog::{Metric, Shard, Snapshot},
    delivery::Dropped,
    error::Error,
    store::WriteOutcome,
    AppState,
};

/// One environment's envelopes of a batch: those to store, and those its
/// policy does not store (with the ledger's reason).
#[derive(Debug, Default)]
pub struct Group<'a> {
    pub stored: Vec<&'a Envelope>,
    pub dropped: Vec<Dropped<'a>>,
}

impl Group<'_> {
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.stored
            .iter()
            .copied()
            .chain(self.dropped.iter().map(|(e, _)| *e))
            .map(|e| e.id.as_str())
    }
}

/// Envelopes grouped by environment, each with what the write adds to it
/// under its environment's policy ([`intake::enrich::at_write`]: the parsed
/// user agent and the parser's bot verdict); a suppressed person's
/// ([`crate::erasure::suppressed`]) and `bots = drop`'s bots are dropped.
pub fn prepare<'a>(snapshot: &Snapshot, envelopes: &'a mut [Envelope]) -> BTreeMap<u32, Group<'a>> {
    let reasons: Vec<Option<&'static str>> = envelopes
        .iter_mut()
        .map(|e| {
            let policy = snapshot
                .environments
                .get(&e.env_id)
                .map(|env| env.policy())
                .unwrap_or_default();
            if crate::erasure::suppressed(snapshot, e) {
                return Some(crate::erasure::DROPPED_SUPPRESSED);
            }
            intake::enrich::at_write(&mut e.context, policy)
        })
        .collect();
    let mut groups: BTreeMap<u32, Group> = BTreeMap::new();
    for (e, reason) in envelopes.iter().zip(reasons) {
        let group = groups.entry(e.env_id).or_default();
        match reason {
            None => group.stored.push(e),
            Some(reason) => group.dropped.push((e, reason)),
        }
    }
    groups
}

/// The snapshot to route `envelopes` with (no older than the routing
/// bound while the catalog answers, see [`crate::catalog::Catalog::routing_snapshot`]).
/// Envelopes for environments the catalog does not know, even after a
/// refresh, are refused: like any invalid envelope, they would never land.
pub async fn route(state: &AppState, envelopes: &[Envelope]) -> Result<Arc<Snapshot>, Error> {
    let env_ids: Vec<u32> = envelopes
        .iter()
        .map(|e| e.env_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let snapshot = state.catalog.routing_snapshot(&env_ids).await?;
    let unknown: Vec<_> = envelopes
        .iter()
        .enumerate()
        .filter(|(_, e)| !snapshot.environments.contains_key(&e.env_id))
        .map(|(index, e)| {
            json!({"index": index, "id": e.id, "reason": format!("unknown environment {}", e.env_id)})
        })
        .collect();
    if unknown.is_empty() {
        Ok(snapshot)
    } else {
        Err(Error::InvalidEnvelopes(unknown))
    }
}

async fn write_one(
    state: &AppState,
    shard: &Shard,
    env_id: u32,
    group: &Group<'_>,
    metrics: &[Metric],
) -> Result<WriteOutcome, Error> {
    if !shard.is_writable() {
        return Err(Error::ShardUnavailable {
            shard: shard.name.clone(),
            message: format!("status is {}", shard.status),
        });
    }
    if state.events.recently_down(shard.id) {
        state
            .metrics
            .shard_errors
            .with_label_values(&[&shard.name])
            .inc();
        return Err(Error::ShardUnavailable {
            shard: shard.name.clone(),
            message: "unreachable moments ago; retry shortly".into(),
        });
    }
    let started = Instant::now();
    let result = tokio::time::timeout(
        state.config.shard_timeout(),
        state
            .events
            .write(shard, env_id, &group.stored, &group.dropped, metrics),
    )
    .await;
    if let Ok(written) = &result {
        state.events.note_result(shard.id, written);
    }
    let result = match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(Error::ShardUnavailable {
            shard: shard.name.clone(),
            message: e.to_string(),
        }),
        Err(_) => Err(Error::ShardUnavailable {
            shard: shard.name.clone(),
            message: "write timed out".into(),
        }),
    };
    let m = &state.metrics;
    match &result {
        Ok(outcome) => {
            m.batch_write_seconds
                .with_label_values(&[&shard.name])
                .observe(started.elapsed().as_secs_f64());
            m.events_inserted
                .with_label_values(&[&shard.name])
                .inc_by(outcome.inserted);
            m.events_duplicate
                .with_label_values(&[&shard.name])
                .inc_by(outcome.duplicates);
            state.counters.record(shard.id, env_id, &outcome.counted);
        }
        Err(error) => {
            m.shard_errors.with_label_values(&[&shard.name]).inc();
            tracing::warn!(shard = %shard.name, env_id, events = group.stored.len() + group.dropped.len(), %error, "shard write failed");
        }
    }
    result
}

/// Write every environment's envelopes ([`prepare`]d) to all of its target
/// shards. An environment has landed when every target (primary, and
/// secondary while migrating) has its rows.
pub async fn land(
    state: &AppState,
    snapshot: &Snapshot,
    envelopes: &mut [Envelope],
) -> IngestResponse {
    let groups = prepare(snapshot, envelopes);

    let jobs = groups.iter().map(|(&env_id, group)| {
        let targets = snapshot.targets(env_id).unwrap_or_default();
        let metrics = snapshot
            .metrics
            .get(&env_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        async move {
            if targets.is_empty() {
                return (env_id, Err(Error::UnknownEnvironment(env_id.to_string())));
            }
            let results = join_all(
                targets
                    .iter()
                    .map(|shard| write_one(state, shard, env_id, group, metrics)),
            )
            .await;
            let mut primary = None;
            for result in results {
                match result {
                    Ok(outcome) if primary.is_none() => primary = Some(outcome),
                    Ok(_) => {}
                    Err(e) => return (env_id, Err(e)),
                }
            }
            (
                env_id,
                primary.ok_or_else(|| Error::Internal("no primary outcome".into())),
            )
        }
    });

    let mut response = IngestResponse::default();
    for (env_id, result) in join_all(jobs).await {
        match result {
            Ok(outcome) => {
                response.environments.insert(
                    env_id,
                    EnvCounts {
                        inserted: outcome.inserted,
                        duplicates: outcome.duplicates,
                        dropped: groups.get(&env_id).map_or(0, |g| g.dropped.len() as u64),
                    },
                );
            }
            Err(error) => {
                if let Some(group) = groups.get(&env_id) {
                    response.retry.extend(group.ids().map(str::to_owned));
                }
                response.failures.push(EnvFailure {
                    env_id,
                    error: error.code().into(),
                    message: error.to_string(),
                });
            }
        }
    }
    response
}

/// The answer of `POST /v1/ingest/reports`: what `report` recorded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Reported {
    pub reports: u64,
    pub dead_letters: u64,
}

/// One environment's part of a report batch: ledger rows, samples (by
/// source), dead letters.
type EnvReports = (
    Vec<crate::delivery::Entry>,
    Vec<([u8; 16], protocol::Sample)>,
    Vec<protocol::DeadLetter>,
);

/// Record the doors' reports and the dead letters in their environments'
/// ledgers, on every shard the environment writes to (like its events).
/// Idempotent: a report's id and a dead letter's (id, receive time) count
/// once. Environments the catalog does not know are skipped (logged): their
/// reports could never be recorded.
pub async fn report(state: &AppState, batch: &protocol::Reports) -> Result<Reported, Error> {
    let mut per_env: BTreeMap<u32, EnvReports> = BTreeMap::new();
    for (index, r) in batch.reports.iter().enumerate() {
        r.validate().map_err(|reason| {
            Error::InvalidEnvelopes(vec![json!({"index": index, "id": r.id, "reason": reason})])
        })?;
        let slot = per_env.entry(r.env_id).or_default();
        slot.0.extend(crate::delivery::count_report(r));
        let source = crate::delivery::source_of(&r.id);
        slot.1.extend(r.samples.iter().map(|s| (source, s.clone())));
    }
    for letter in &batch.dead_letters {
        per_env
            .entry(letter.env_id)
            .or_default()
            .2
            .push(letter.clone());
    }
    let env_ids: Vec<u32> = per_env.keys().copied().collect();
    let snapshot = state.catalog.routing_snapshot(&env_ids).await?;
    let mut done = Reported::default();
    for (env_id, (entries, samples, letters)) in &per_env {
        let targets = snapshot.targets(*env_id).unwrap_or_default();
        if targets.is_empty() {
            tracing::warn!(env_id, "report for an unknown environment dropped");
            continue;
        }
        for (i, shard) in targets.iter().enumerate() {
            let written = async {
                if !letters.is_empty() {
                    let new = state.ledger.dead_letters(shard, *env_id, letters).await?;
                    // Counted once, at the primary (a secondary holds copies).
                    if let (0, Some(env)) = (i, snapshot.environments.get(env_id)) {
                        state
                            .metrics
                            .ledger_dead_letters
                            .with_label_values(&[&env.name])
                            .inc_by(new);
                    }
                }
                state
                    .ledger
                    .report(shard, *env_id, entries, samples)
                    .await?;
                Ok::<_, Error>(())
            };
            tokio::time::timeout(state.config.shard_timeout(), written)
                .await
                .map_err(|_| Error::ShardUnavailable {
                    shard: shard.name.clone(),
                    message: "report write timed out".into(),
                })?
                .map_err(|e| Error::ShardUnavailable {
                    shard: shard.name.clone(),
                    message: e.to_string(),
                })?;
        }
    }
    done.reports = batch.reports.len() as u64;
    done.dead_letters = batch.dead_letters.len() as u64;
    Ok(done)
}
