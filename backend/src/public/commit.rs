//! Adaptive group commit for direct ingest: while a write of an environment
//! runs, arriving events wait; when it finishes, its writer takes
//! everything that waited. No timer: under light load a request's events
//! are written at once, under heavy load one transaction carries many
//! requests. One writer per environment, and another (up to
//! `max_writers`) only while a whole INSERT chunk's worth of events waits:
//! small events are cheapest in one big group, but one writer alone holds
//! large batches to a single connection's insert rate. Events in flight
//! are bounded; past the bound a request is refused with 503 before
//! anything of it is taken.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use protocol::Envelope;
use tokio::sync::oneshot;

use crate::{ingest, AppState};

/// Seconds an overloaded backend asks clients to wait.
pub const OVERLOADED_RETRY_AFTER_SECS: u32 = 1;

/// The events of one request, counted in flight until they are written.
pub struct Pending {
    env_id: u32,
    envelopes: Vec<Envelope>,
    _slot: Slot,
}

/// A reservation of `n` events of the in-flight bound, released on drop.
struct Slot {
    n: usize,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(self.n, Ordering::AcqRel);
    }
}

struct Waiting {
    envelopes: Vec<Envelope>,
    done: oneshot::Sender<Result<(), intake::Error>>,
    _slot: Slot,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// Events in `waiting`.
    waiting_events: usize,
    /// Writers of this environment running now.
    writers: usize,
}

impl Queue {
    /// Whether an arrival starts a writer: the first one, or one more
    /// while `spread_at` events or more wait for the running ones.
    fn wants_writer(&self, max_writers: usize, spread_at: usize) -> bool {
        self.writers == 0 || (self.writers < max_writers && self.waiting_events >= spread_at)
    }
}

pub struct GroupCommit {
    queues: Mutex<HashMap<u32, Queue>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    /// Most events one write takes (the rest wait for the next).
    max_group: usize,
    /// Most writes of one environment at once.
    max_writers: usize,
    /// Events waiting that start another writer.
    spread_at: usize,
}

impl GroupCommit {
    pub fn new(
        max_in_flight: usize,
        max_group: usize,
        max_writers: usize,
        spread_at: usize,
    ) -> Self {
        Self {
            queues: Mutex::default(),
            in_flight: Arc::default(),
            max_in_flight: max_in_flight.max(1),
            max_group: max_group.max(1),
            max_writers: max_writers.max(1),
            spread_at: spread_at.max(1),
        }
    }

    /// Events taken and not yet written.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Queue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves room for `envelopes`, or refuses them while the bound is
    /// reached (a request larger than the whole bound still goes through
    /// when nothing else is in flight).
    pub fn prepare(&self, env_id: u32, envelopes: Vec<Envelope>) -> Result<Pending, intake::Error> {
        let n = envelopes.len();
        let before = self.in_flight.fetch_add(n, Ordering::AcqRel);
        let slot = Slot {
            n,
            in_flight: self.in_flight.clone(),
        };
        if before > 0 && before + n > self.max_in_flight {
            return Err(intake::Error::Overloaded {
                retry_after: OVERLOADED_RETRY_AFTER_SECS,
            });
        }
        Ok(Pending {
            env_id,
            envelopes,
            _slot: slot,
        })
    }

    /// Ok once every event of `pending` is committed on its environment's
    /// shards. The writing runs in a task of its own: a client that hangs
    /// up does not cancel a write that carries other requests' events.
    pub async fn commit(&self, state: &AppState, pending: Pending) -> Result<(), intake::Error> {
        let Pending {
            env_id,
            envelopes,
            _slot,
        } = pending;
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut queues = self.queues();
            let queue = queues.entry(env_id).or_default();
            queue.waiting_events += envelopes.len();
            queue.waiting.push_back(Waiting {
                envelopes,
                done,
                _slot,
            });
            let start = queue.wants_writer(self.max_writers, self.spread_at);
            queue.writers += usize::from(start);
            start
        };
        if lead {
            tokio::spawn(drain(state.clone(), env_id));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(intake::Error::Internal("the writer went away".into())))
    }

    /// The next group of `env_id`, or `None` (and the writer stops) when
    /// nothing waits.
    fn next_group(&self, env_id: u32) -> Option<Vec<Waiting>> {
        let mut queues = self.queues();
        let queue = queues.get_mut(&env_id)?;
        let mut group = Vec::new();
        let mut events = 0;
        while let Some(first) = queue.waiting.front() {
            if !group.is_empty() && events + first.envelopes.len() > self.max_group {
                break;
            }
            events += first.envelopes.len();
            group.extend(queue.waiting.pop_front());
        }
        queue.waiting_events -= events;
        if group.is_empty() {
            queue.writers = queue.writers.saturating_sub(1);
            if queue.writers == 0 {
                queues.remove(&env_id);
            }
            return None;
        }
        Some(group)
    }
}

/// Write groups of `env_id` until none waits.
async fn drain(state: AppState, env_id: u32) {
    let commit = &state.direct.commit;
    while let Some(group) = commit.next_group(env_id) {
        let mut envelopes = Vec::with_capacity(group.iter().map(|w| w.envelopes.len()).sum());
        let mut waiters = Vec::with_capacity(group.len());
        for waiting in group {
            envelopes.extend(waiting.envelopes);
            waiters.push((waiting.done, waiting._slot));
        }
        state
            .metrics
            .group_commit_events
            .observe(envelopes.len() as f64);
        let result = write(&state, &mut envelopes).await;
        for (done, slot) in waiters {
            let _ = done.send(result.clone());
            drop(slot);
        }
    }
}

async fn write(state: &AppState, envelopes: &mut [Envelope]) -> Result<(), intake::Error> {
    let snapshot = ingest::route(state, envelopes).await.map_err(|error| {
        tracing::warn!(%error, events = envelopes.len(), "direct ingest could not route");
        intake::Error::StoreUnavailable
    })?;
    let landed = ingest::land(state, &snapshot, envelopes).await;
    match landed.failures.first() {
        None => Ok(()),
        Some(failure) => {
            tracing::warn!(env_id = failure.env_id, error = %failure.error, message = %failure.message,
                events = envelopes.len(), "direct ingest write failed");
            Err(intake::Error::StoreUnavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelopes(n: usize) -> Vec<Envelope> {
        (0..n as u64)
            .map(|i| {
                let value = testkit::envelope(1, &testkit::uuid(i), "e", 1_700_000_000_000);
                serde_json::from_value(value).expect("envelope")
            })
            .collect()
    }

    #[test]
    fn the_in_flight_bound_refuses_and_releases() {
        let commit = GroupCommit::new(10, 100, 1, 500);
        let a = commit.prepare(1, envelopes(6)).unwrap();
        assert_eq!(commit.in_flight(), 6);
        let refused = commit.prepare(1, envelopes(5));
        assert!(matches!(
            refused,
            Err(intake::Error::Overloaded { retry_after: 1 })
        ));
        assert_eq!(commit.in_flight(), 6, "a refusal holds nothing");
        let b = commit.prepare(1, envelopes(4)).unwrap();
        assert_eq!(commit.in_flight(), 10);
        drop((a, b));
        assert_eq!(commit.in_flight(), 0);
        // Alone, a request larger than the bound is taken.
        let big = commit.prepare(1, envelopes(20)).unwrap();
        assert_eq!(commit.in_flight(), 20);
        drop(big);
    }

    #[test]
    fn a_group_takes_whole_requests_up_to_its_size() {
        let commit = GroupCommit::new(1000, 10, 1, 500);
        let mut answers = Vec::new();
        {
            let mut queues = commit.queues();
            let queue = queues.entry(1).or_default();
            for n in [4, 4, 4, 30] {
                let Pending {
                    envelopes, _slot, ..
                } = commit.prepare(1, envelopes(n)).unwrap();
                let (done, answer) = oneshot::channel();
                answers.push(answer);
                queue.waiting_events += envelopes.len();
                queue.waiting.push_back(Waiting {
                    envelopes,
                    done,
                    _slot,
                });
            }
        }
        let sizes = |g: Vec<Waiting>| g.iter().map(|w| w.envelopes.len()).collect::<Vec<_>>();
        assert_eq!(sizes(commit.next_group(1).unwrap()), [4, 4]);
        assert_eq!(sizes(commit.next_group(1).unwrap()), [4]);
        assert_eq!(
            sizes(commit.next_group(1).unwrap()),
            [30],
            "a large request goes alone"
        );
        assert!(commit.next_group(1).is_none());
        assert_eq!(commit.in_flight(), 0);
    }

    #[test]
    fn another_writer_starts_only_while_a_chunk_waits() {
        let queue = |writers, waiting_events| Queue {
            writers,
            waiting_events,
            ..Queue::default()
        };
        assert!(
            queue(0, 1).wants_writer(4, 500),
            "the first writer starts at once"
        );
        assert!(
            !queue(1, 499).wants_writer(4, 500),
            "small events wait for the running write"
        );
        assert!(queue(1, 500).wants_writer(4, 500));
        assert!(queue(3, 5000).wants_writer(4, 500));
        assert!(!queue(4, 5000).wants_writer(4, 500), "at most max_writers");
        assert!(
            !queue(1, 5000).wants_writer(1, 500),
            "one writer: the old behaviour"
        );
    }
}
