//! Erasure (GDPR Art. 17): a person's events removed from every shard their
//! environment writes, their later events dropped at the write for a while
//! (suppression), and a record of the request that holds no personal data
//! beyond a hash. The SQL is in `store/mysql/erasure.rs`; the write path asks
//! [`suppressed`] through the catalog snapshot.

use std::{collections::BTreeMap, time::Duration};

use protocol::Envelope;
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;

use crate::{
    error::{Error, Result},
    model::{Environment, Snapshot},
    store::mysql::{erasure as sql, Shards},
};

/// The ledger's reason for events of a suppressed person.
pub const DROPPED_SUPPRESSED: &str = "suppressed";

/// Which of an event's ids names the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    UserId,
    AnonymousId,
}

impl IdKind {
    pub fn column(self) -> &'static str {
        match self {
            IdKind::UserId => "user_id",
            IdKind::AnonymousId => "anonymous_id",
        }
    }
}

/// A person as an erasure names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub kind: IdKind,
    pub id: String,
}

/// What the catalog stores for a person of an environment: SHA-256 over
/// the environment, the kind of id and the id. (A hash of a guessable id,
/// an e-mail address say, can be confirmed by whoever guesses it: the
/// catalog is no place for anyone who may not know the ids.)
pub fn person_hash(env_id: u32, kind: IdKind, id: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"sluice-person\0");
    hash.update(env_id.to_be_bytes());
    hash.update([kind as u8]);
    hash.update(id.as_bytes());
    hash.finalize().into()
}

/// Whether an envelope is a suppressed person's (by its user or anonymous id).
pub fn suppressed(snapshot: &Snapshot, envelope: &Envelope) -> bool {
    let Some(people) = snapshot.suppressed.get(&envelope.env_id) else {
        return false;
    };
    [
        (IdKind::UserId, envelope.user_id.as_deref()),
        (IdKind::AnonymousId, envelope.anonymous_id.as_deref()),
    ]
    .into_iter()
    .any(|(kind, id)| id.is_some_and(|id| people.contains(&person_hash(envelope.env_id, kind, id))))
}

/// An erasure as asked for: whose events, how long their later ones are
/// dropped (0: not at all), who asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub person: Person,
    pub suppress_days: u32,
    pub requested_by: String,
}

/// What one erasure did.
#[derive(Debug, Default)]
pub struct Erased {
    pub record_id: u64,
    /// Rows removed per shard (events, and sampled refusals naming the id).
    pub removed: BTreeMap<String, sql::Removed>,
}

/// Erase the person's events from every shard `env` writes to (primary and,
/// while migrating, secondary). With `suppress_days` > 0 the suppression is
/// stored first and the erasure waits `settle` (the catalog's refresh bound
/// plus a write's timeout) so that every backend process drops the person's
/// new events before the shards are swept; events written before that may
/// still land, and are removed by the sweep when they landed behind it.
pub async fn erase(
    catalog: &MySqlPool,
    shards: &Shards,
    snapshot: &Snapshot,
    env: &Environment,
    request: &Request,
    settle: Duration,
) -> Result<Erased> {
    let Request {
        person,
        suppress_days,
        requested_by,
    } = request;
    let suppress_days = *suppress_days;
    if person.id.is_empty() || person.id.chars().count() > protocol::MAX_FIELD_LEN {
        return Err(Error::InvalidArgument(
            "id",
            format!("give 1-{} characters", protocol::MAX_FIELD_LEN),
        ));
    }
    let hash = person_hash(env.id, person.kind, &person.id);
    let record_id = sql::start(
        catalog,
        env.id,
        person.kind,
        &hash,
        requested_by,
        suppress_days,
    )
    .await?;
    if suppress_days > 0 {
        tokio::time::sleep(settle).await;
    }
    let targets = snapshot
        .targets(env.id)
        .ok_or_else(|| Error::UnknownEnvironment(env.name.clone()))?;
    let mut erased = Erased {
        record_id,
        ..Erased::default()
    };
    for shard in targets {
        let pool = shards.pool(shard)?;
        let removed = sql::erase_events(&pool, env.id, person, sql::CHUNK_ROWS).await?;
        erased.removed.insert(shard.name.clone(), removed);
    }
    sql::finish(catalog, record_id, &erased.removed).await?;
    Ok(erased)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_is_told_apart_by_environment_kind_and_id() {
        let a = person_hash(1, IdKind::UserId, "u1");
        assert_eq!(a, person_hash(1, IdKind::UserId, "u1"));
        assert_ne!(a, person_hash(2, IdKind::UserId, "u1"));
        assert_ne!(a, person_hash(1, IdKind::AnonymousId, "u1"));
        assert_ne!(a, person_hash(1, IdKind::UserId, "u2"));
    }

    #[test]
    fn a_suppressed_persons_events_are_found_by_either_id() {
        let mut snapshot = Snapshot::default();
        snapshot.suppressed.insert(
            7,
            [
                person_hash(7, IdKind::UserId, "gone"),
                person_hash(7, IdKind::AnonymousId, "anon-gone"),
            ]
            .into(),
        );
        let event = |env_id, user: Option<&str>, anon: Option<&str>| Envelope {
            env_id,
            user_id: user.map(Into::into),
            anonymous_id: anon.map(Into::into),
            ..Envelope::default()
        };
        assert!(suppressed(&snapshot, &event(7, Some("gone"), None)));
        assert!(suppressed(
            &snapshot,
            &event(7, Some("other"), Some("anon-gone"))
        ));
        assert!(
            !suppressed(&snapshot, &event(7, Some("other"), Some("gone"))),
            "kinds differ"
        );
        assert!(
            !suppressed(&snapshot, &event(8, Some("gone"), None)),
            "another environment"
        );
        assert!(!suppressed(&snapshot, &event(7, None, None)));
    }
}
