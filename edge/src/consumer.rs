//! The queue consumers as plain async functions over the ports: forwarding
//! event batches to the backend (ack, retry with backoff, or dead-letter per
//! message) and keeping dead letters for an operator.

use std::collections::BTreeMap;

use protocol::{Envelope, Reports};
use serde_json::json;

use crate::config::Config;
use crate::deadletter;
use crate::forward::{self, Decision, Outcome};
use crate::ports::{Backend, Clock, DeadLetterQueue, DeadLetterStore, Log, Message};
use crate::report;

/// A dead letter that cannot be stored because the store's binding is
/// missing waits this long: a deployment problem, not a passing one.
pub const STORE_MISSING_RETRY_SECONDS: u32 = 60;
/// A dead letter whose write to the store failed is tried again after this.
pub const STORE_FAILED_RETRY_SECONDS: u32 = 30;
/// A dead letter the backend could not count this many times is stored
/// uncounted (under the DLQ's `max_retries`, past which the queue drops it).
pub const DEAD_LETTER_COUNT_ATTEMPTS: u32 = 5;
/// About how much JSON one `POST /v1/ingest/reports` carries.
pub const REPORTS_POST_BYTES: usize = 1024 * 1024;

/// The events consumer with the ports it uses.
pub struct Forwarder<'a, B, D, L> {
    pub config: &'a Config,
    /// `None` when the ingest token secret is missing.
    pub backend: Option<&'a B>,
    pub dead_letters: &'a D,
    pub log: &'a L,
}

impl<B: Backend, D: DeadLetterQueue, L: Log> Forwarder<'_, B, D, L> {
    /// Decide every message of a batch: each is acked, retried with a delay,
    /// or dead-lettered. Envelope messages (JSON arrays) go to `/v1/ingest`,
    /// report messages (`Reports` objects) to `/v1/ingest/reports`. Never
    /// fails (a failing queue handler resets the isolate).
    pub async fn consume(&self, queue_name: &str, messages: &[impl Message]) {
        let mut decoded: Vec<(usize, Vec<Envelope>)> = Vec::new();
        let mut reports: Vec<(usize, Reports)> = Vec::new();
        let mut attempts = BTreeMap::new();
        for (i, message) in messages.iter().enumerate() {
            let body = message.body();
            let read = if report::is_reports(&body) {
                forward::decode_reports(&body).map(|r| reports.push((i, r)))
            } else {
                forward::decode(&body).map(|e| decoded.push((i, e)))
            };
            match read {
                Ok(()) => {
                    attempts.insert(i, message.attempts());
                }
                Err(reason) => self.dead_letter(queue_name, message, &reason, &body).await,
            }
        }
        if attempts.is_empty() {
            return;
        }
        let Some(backend) = self.backend else {
            self.log
                .error("ingest_token_missing", json!({"messages": attempts.len()}));
            for i in attempts.keys() {
                messages[*i].retry(forward::UNAUTHORIZED_BACKOFF_SECONDS);
            }
            return;
        };
        futures_util::future::join(
            self.forward_envelopes(backend, queue_name, messages, &decoded, &attempts),
            self.forward_reports(backend, queue_name, messages, &reports),
        )
        .await;
    }

    async fn forward_envelopes(
        &self,
        backend: &B,
        queue_name: &str,
        messages: &[impl Message],
        decoded: &[(usize, Vec<Envelope>)],
        attempts: &BTreeMap<usize, u32>,
    ) {
        if decoded.is_empty() {
            return;
        }
        let all: Vec<(usize, &[Envelope])> =
            decoded.iter().map(|(i, e)| (*i, e.as_slice())).collect();
        let mut decisions = self.round(backend, &all, attempts, false).await;
        // A batch the backend refused as a whole: send each of its messages
        // alone to find the poison.
        let isolated: Vec<(usize, &[Envelope])> = all
            .iter()
            .filter(|(i, _)| decisions.get(i) == Some(&Decision::Isolate))
            .copied()
            .collect();
        if !isolated.is_empty() {
            decisions.extend(self.round(backend, &isolated, attempts, true).await);
        }
        for (i, decision) in decisions {
            let message = &messages[i];
            match decision {
                Decision::Ack => message.ack(),
                Decision::Retry { delay_seconds } => {
                    self.log.info(
                        "message_retry",
                        json!({"message_id": message.id(), "attempts": message.attempts(), "delay_seconds": delay_seconds}),
                    );
                    message.retry(delay_seconds);
                }
                Decision::DeadLetter { reason } => {
                    self.dead_letter(queue_name, message, &reason, &message.body())
                        .await;
                }
                Decision::Isolate => message.retry(self.config.backoff.base_seconds),
            }
        }
    }

    /// Report messages, merged into as few backend requests as fit
    /// [`REPORTS_POST_BYTES`]: acked when the backend took them, retried
    /// with backoff when it could not, dead-lettered when it refuses one
    /// (a refused merge is sent again message by message to find it).
    async fn forward_reports(
        &self,
        backend: &B,
        queue_name: &str,
        messages: &[impl Message],
        reports: &[(usize, Reports)],
    ) {
        if reports.is_empty() {
            return;
        }
        let all: Vec<(usize, &Reports)> = reports.iter().map(|(i, r)| (*i, r)).collect();
        let mut alone = Vec::new();
        for (max_bytes, isolate) in [(REPORTS_POST_BYTES, false), (0, true)] {
            let scope: Vec<(usize, &Reports)> = if isolate {
                all.iter()
                    .filter(|(i, _)| alone.contains(i))
                    .copied()
                    .collect()
            } else {
                all.clone()
            };
            if scope.is_empty() {
                break;
            }
            let merged = match forward::merge_reports(&scope, max_bytes) {
                Ok(merged) => merged,
                Err(e) => {
                    self.log
                        .error("report_merge_failed", json!({"error": e.to_string()}));
                    for (i, _) in &scope {
                        messages[*i].retry(self.config.backoff.base_seconds);
                    }
                    return;
                }
            };
            let bodies: Vec<&str> = merged.iter().map(|(_, body)| body.as_str()).collect();
            let outcomes = forward::run_bounded(bodies, self.config.forward_concurrency, |body| {
                backend.report(body)
            })
            .await;
            let mut next = Vec::new();
            for ((owners, _), outcome) in merged.iter().zip(outcomes) {
                if outcome != Outcome::Landed {
                    self.log.error(
                        "reports_forward_incomplete",
                        json!({"messages": owners.len(), "outcome": format!("{outcome:?}")}),
                    );
                }
                for &i in owners {
                    let message = &messages[i];
                    match &outcome {
                        Outcome::Landed => message.ack(),
                        Outcome::Rejected { .. } if owners.len() > 1 => next.push(i),
                        Outcome::Rejected {
                            status,
                            message: why,
                        } => {
                            let reason = format!("backend answered {status}: {why}");
                            self.dead_letter(queue_name, message, &reason, &message.body())
                                .await;
                        }
                        Outcome::Unavailable { retry_after, .. }
                        | Outcome::Partial { retry_after, .. } => message.retry(
                            self.config
                                .backoff
                                .delay(message.attempts(), *retry_after, false),
                        ),
                        Outcome::Unauthorized { .. } => {
                            message.retry(self.config.backoff.delay(message.attempts(), None, true))
                        }
                    }
                }
            }
            alone = next;
        }
    }

    /// Sends one round of sub-batches, at most `forward_concurrency` at a time.
    async fn round(
        &self,
        backend: &B,
        messages: &[(usize, &[Envelope])],
        attempts: &BTreeMap<usize, u32>,
        isolate: bool,
    ) -> BTreeMap<usize, Decision> {
        let config = self.config;
        let groups = match forward::group(
            messages,
            config.forward_batch_size,
            config.forward_batch_bytes,
            isolate,
        ) {
            Ok(groups) => groups,
            Err(e) => {
                self.log
                    .error("forward_grouping_failed", json!({"error": e.to_string()}));
                let delay_seconds = config.backoff.base_seconds;
                return messages
                    .iter()
                    .map(|(i, _)| (*i, Decision::Retry { delay_seconds }))
                    .collect();
            }
        };
        let bodies: Vec<&str> = groups.iter().map(|g| g.body.as_str()).collect();
        let outcomes = forward::run_bounded(bodies, config.forward_concurrency, |body| {
            backend.ingest(body)
        })
        .await;
        for (group, outcome) in groups.iter().zip(&outcomes) {
            if *outcome != Outcome::Landed {
                self.log.error(
                    "forward_incomplete",
                    json!({"envelopes": group.envelopes.len(), "outcome": format!("{outcome:?}")}),
                );
            }
        }
        let results: Vec<_> = groups.into_iter().zip(outcomes).collect();
        let scope: BTreeMap<usize, u32> = messages
            .iter()
            .map(|(i, _)| (*i, attempts.get(i).copied().unwrap_or(1)))
            .collect();
        forward::decide(&scope, &results, &config.backoff)
    }

    /// Send a poison message to the DLQ and ack it; if the DLQ does not take
    /// it, retry it (past `max_retries` the queue moves it there itself).
    async fn dead_letter(
        &self,
        queue_name: &str,
        message: &impl Message,
        reason: &str,
        body: &str,
    ) {
        let text = deadletter::poison_message(reason, queue_name, &message.id(), body);
        match self.dead_letters.send(&text).await {
            Ok(()) => {
                self.log.error(
                    "message_dead_lettered",
                    json!({"message_id": message.id(), "reason": reason}),
                );
                message.ack();
            }
            Err(e) => {
                self.log.error(
                    "dead_letter_send_failed",
                    json!({"message_id": message.id(), "reason": reason, "error": e}),
                );
                message.retry(self.config.backoff.delay(message.attempts(), None, false));
            }
        }
    }
}

/// The dead-letter consumer: count every dead letter in the backend's
/// delivery ledger, then keep it in the store (KV) for an operator (see
/// edge/README.md); `store` is `None` when its binding is missing, `backend`
/// when the ingest token is. The count comes first: it is idempotent, while
/// a store write retried after a failed count would store the letter twice
/// (its key carries the store time).
pub async fn store_dead_letters<B: Backend>(
    messages: &[impl Message],
    store: Option<&impl DeadLetterStore>,
    backend: Option<&B>,
    clock: &impl Clock,
    log: &impl Log,
) {
    let Some(store) = store else {
        log.error(
            "dead_letter_store_missing",
            json!({"messages": messages.len()}),
        );
        for message in messages {
            message.retry(STORE_MISSING_RETRY_SECONDS);
        }
        return;
    };
    for message in messages {
        let record = deadletter::record(
            &message.id(),
            message.attempts(),
            clock.now_ms(),
            &message.body(),
        );
        let key = deadletter::storage_key(&record);
        let mut retention = Vec::new();
        for env_id in deadletter::env_ids(&record.body) {
            retention.push(store.retention_days(env_id).await);
        }
        let ttl = match retention.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(days) => deadletter::ttl_seconds(days),
            Err(e) => {
                log.error(
                    "dead_letter_retention_unreadable",
                    json!({"key": key, "error": e}),
                );
                message.retry(STORE_FAILED_RETRY_SECONDS);
                continue;
            }
        };
        if let Err(delay_seconds) = count_dead_letter(&record, &key, backend, log).await {
            if message.attempts() < DEAD_LETTER_COUNT_ATTEMPTS {
                message.retry(delay_seconds);
                continue;
            }
            // The DLQ drops a message past its own max_retries: keep the
            // letter for an operator rather than lose it uncounted.
            log.error(
                "dead_letter_uncounted",
                json!({"key": key, "attempts": message.attempts(), "why": "the backend could not count it; stored anyway"}),
            );
        }
        let stored = match serde_json::to_string(&record) {
            Ok(value) => store.put(&key, &value, ttl).await,
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
                log.error(
                    "dead_letter_stored",
                    json!({"key": key, "reason": record.reason}),
                );
                message.ack();
            }
            Err(e) => {
                log.error("dead_letter_store_failed", json!({"key": key, "error": e}));
                message.retry(STORE_FAILED_RETRY_SECONDS);
            }
        }
    }
}

/// Reports a dead letter's events to the ledger (`Reports.dead_letters`;
/// a report message whose retries ran out is posted as it is). `Err` holds
/// the delay to retry the message after. A body that is neither, or one
/// the backend refuses, cannot be counted: logged, and stored all the same.
async fn count_dead_letter<B: Backend>(
    record: &deadletter::Record,
    key: &str,
    backend: Option<&B>,
    log: &impl Log,
) -> Result<(), u32> {
    let Some(reports) = deadletter::ledger_reports(&record.body) else {
        log.error(
            "dead_letter_uncounted",
            json!({"key": key, "why": "its body is neither envelopes nor reports"}),
        );
        return Ok(());
    };
    let Some(backend) = backend else {
        log.error("ingest_token_missing", json!({"key": key}));
        return Err(STORE_MISSING_RETRY_SECONDS);
    };
    let fields = json!({"key": key, "dead_letters": reports.dead_letters.len(), "reports": reports.reports.len()});
    let body = serde_json::to_string(&reports).map_err(|e| {
        log.error(
            "dead_letter_report_failed",
            json!({"key": key, "error": e.to_string()}),
        );
        STORE_FAILED_RETRY_SECONDS
    })?;
    match backend.report(&body).await {
        Outcome::Landed => {
            log.info("dead_letter_counted", fields);
            Ok(())
        }
        Outcome::Rejected { status, message } => {
            log.error(
                "dead_letter_uncounted",
                json!({"key": key, "why": format!("backend answered {status}: {message}")}),
            );
            Ok(())
        }
        outcome => {
            log.error(
                "dead_letter_report_failed",
                json!({"key": key, "outcome": format!("{outcome:?}")}),
            );
            Err(STORE_FAILED_RETRY_SECONDS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{Backend, Clock, Done, Log, Message, Queue, Store};
    use futures_executor::block_on;
    use std::collections::HashSet;

    fn envelope(id: &str) -> serde_json::Value {
        json!({"id": id, "env_id": 1, "name": "e", "timestamp": 1_700_000_000_000i64,
               "received_at": 1_700_000_000_000i64})
    }

    fn message(id: &str, attempts: u32, envelope_ids: &[&str]) -> Message {
        let body: Vec<_> = envelope_ids.iter().map(|e| envelope(e)).collect();
        Message::new(id, attempts, serde_json::to_string(&body).unwrap())
    }

    fn config() -> Config {
        Config::from_lookup(|_| None)
    }

    fn consume<F: Fn(&str) -> Outcome>(
        backend: Option<&Backend<F>>,
        dlq: &Queue,
        log: &Log,
        messages: &[Message],
    ) {
        let config = config();
        let forwarder = Forwarder {
            config: &config,
            backend,
            dead_letters: dlq,
            log,
        };
        block_on(forwarder.consume("sluice-events", messages));
    }

    #[test]
    fn landed_messages_are_acked() {
        let backend = Backend::new(|_: &str| Outcome::Landed);
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [message("m1", 1, &["a", "b"]), message("m2", 1, &["c"])];
        consume(Some(&backend), &dlq, &log, &messages);
        assert!(messages.iter().all(|m| m.outcome() == Some(Done::Acked)));
        assert_eq!(
            backend.bodies.borrow().len(),
            1,
            "one sub-batch for both messages"
        );
    }

    #[test]
    fn an_unavailable_backend_is_retried_with_backoff_never_shorter_than_retry_after() {
        let backend = Backend::new(|_: &str| Outcome::Unavailable {
            retry_after: Some(30),
            status: Some(503),
        });
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [message("m1", 1, &["a"]), message("m2", 4, &["b"])];
        consume(Some(&backend), &dlq, &log, &messages);
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(30)),
            "5 s backoff, but Retry-After says 30"
        );
        assert_eq!(
            messages[1].outcome(),
            Some(Done::Retried(40)),
            "4th attempt: 5 × 2³"
        );
        assert!(log.has("forward_incomplete") && log.has("message_retry"));
    }

    #[test]
    fn a_partial_answer_retries_only_the_messages_whose_envelopes_did_not_land() {
        let backend = Backend::new(|_: &str| Outcome::Partial {
            retry: HashSet::from(["b".to_owned()]),
            retry_after: None,
        });
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [message("m1", 1, &["a"]), message("m2", 1, &["b"])];
        consume(Some(&backend), &dlq, &log, &messages);
        assert_eq!(messages[0].outcome(), Some(Done::Acked));
        assert_eq!(messages[1].outcome(), Some(Done::Retried(5)));
    }

    #[test]
    fn a_refused_batch_is_split_to_find_the_poison_which_is_dead_lettered() {
        // The backend refuses any request that carries envelope "bad".
        let backend = Backend::new(|body: &str| {
            if body.contains("\"bad\"") {
                Outcome::Rejected {
                    status: 422,
                    message: "invalid envelopes".into(),
                }
            } else {
                Outcome::Landed
            }
        });
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [
            message("m1", 1, &["a"]),
            message("m2", 1, &["bad"]),
            message("m3", 1, &["c"]),
        ];
        consume(Some(&backend), &dlq, &log, &messages);
        assert_eq!(
            backend.bodies.borrow().len(),
            4,
            "one round together, then each alone"
        );
        assert_eq!(messages[0].outcome(), Some(Done::Acked));
        assert_eq!(
            messages[1].outcome(),
            Some(Done::Acked),
            "acked once it is in the DLQ"
        );
        assert_eq!(messages[2].outcome(), Some(Done::Acked));
        let sent = dlq.sent.borrow();
        assert_eq!(sent.len(), 1);
        let poison: deadletter::Poison = serde_json::from_str(&sent[0][0]).unwrap();
        assert_eq!(
            (poison.message_id.as_str(), poison.source_queue.as_str()),
            ("m2", "sluice-events")
        );
        assert!(poison.reason.contains("422"), "{}", poison.reason);
    }

    #[test]
    fn an_undecodable_message_is_dead_lettered_without_a_backend_call_and_retried_if_the_dlq_fails()
    {
        let backend = Backend::new(|_: &str| Outcome::Landed);
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [Message::new("m1", 1, "not json")];
        consume(Some(&backend), &dlq, &log, &messages);
        assert_eq!(messages[0].outcome(), Some(Done::Acked));
        assert_eq!(dlq.sent.borrow().len(), 1);
        assert!(backend.bodies.borrow().is_empty());

        dlq.failures.set(1);
        let messages = [Message::new("m2", 3, "[{\"id\": 5}]")];
        consume(Some(&backend), &dlq, &log, &messages);
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(20)),
            "backoff of the 3rd attempt"
        );
        assert!(log.has("dead_letter_send_failed"));
    }

    #[test]
    fn without_the_ingest_token_every_message_waits_a_minute() {
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [message("m1", 1, &["a"]), message("m2", 9, &["b"])];
        consume(None::<&Backend<fn(&str) -> Outcome>>, &dlq, &log, &messages);
        for m in &messages {
            assert_eq!(
                m.outcome(),
                Some(Done::Retried(forward::UNAUTHORIZED_BACKOFF_SECONDS))
            );
        }
        assert!(log.has("ingest_token_missing"));
    }

    fn landing() -> Backend<fn(&str) -> Outcome> {
        Backend::new(|_: &str| Outcome::Landed)
    }

    #[test]
    fn dead_letters_are_stored_for_an_operator_or_retried() {
        let (clock, log) = (Clock::default(), Log::default());
        let store = Store::default();
        let backend = landing();
        let poison = deadletter::poison_message("bad", "sluice-events", "m0", "[1]");
        let messages = [Message::new("d1", 1, poison)];
        block_on(store_dead_letters(
            &messages,
            Some(&store),
            Some(&backend),
            &clock,
            &log,
        ));
        assert_eq!(messages[0].outcome(), Some(Done::Acked));
        assert!(
            backend.reports.borrow().is_empty(),
            "[1] holds nothing to count"
        );
        assert!(log.has("dead_letter_uncounted"));
        let puts = store.puts.borrow();
        assert!(puts[0].0.starts_with(deadletter::KEY_PREFIX));
        let record: deadletter::Record = serde_json::from_str(&puts[0].1).unwrap();
        assert_eq!(
            (record.reason.as_str(), record.source_message_id.as_deref()),
            ("bad", Some("m0"))
        );

        let failing = Store {
            fail: true,
            ..Store::default()
        };
        let messages = [Message::new("d2", 1, "x")];
        block_on(store_dead_letters(
            &messages,
            Some(&failing),
            Some(&backend),
            &clock,
            &log,
        ));
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(STORE_FAILED_RETRY_SECONDS))
        );

        let messages = [Message::new("d3", 1, "x")];
        block_on(store_dead_letters(
            &messages,
            None::<&Store>,
            Some(&backend),
            &clock,
            &log,
        ));
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(STORE_MISSING_RETRY_SECONDS))
        );
        assert!(log.has("dead_letter_store_missing"));
    }

    fn stamped(id: &str) -> serde_json::Value {
        let mut e = envelope(id);
        e["acceptance"] = json!({"id": "ab".repeat(16), "n": 2});
        e
    }

    #[test]
    fn a_dead_letter_of_envelopes_is_counted_before_it_is_stored() {
        let (clock, log) = (Clock::default(), Log::default());
        let store = Store::default();
        let backend = landing();
        let body = json!([stamped("a"), stamped("b")]).to_string();
        let poison =
            deadletter::poison_message("backend answered 422", "sluice-events", "m0", &body);
        // One the consumer sent, one the queue moved after its retries ran out.
        let messages = [Message::new("d1", 1, poison), Message::new("d2", 1, body)];
        block_on(store_dead_letters(
            &messages,
            Some(&store),
            Some(&backend),
            &clock,
            &log,
        ));
        assert!(messages.iter().all(|m| m.outcome() == Some(Done::Acked)));
        let posted = backend.posted_reports();
        assert_eq!(posted.len(), 2);
        let dl = &posted[0].dead_letters;
        assert_eq!(
            dl.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!((dl[0].env_id, dl[0].received_at), (1, 1_700_000_000_000));
        assert_eq!(dl[0].acceptance.as_ref().map(|a| a.n), Some(2));
        assert_eq!(store.puts.borrow().len(), 2);
        assert!(log.has("dead_letter_counted"));
    }

    #[test]
    fn a_dead_letter_expires_with_the_shortest_retention_of_its_environments() {
        let (clock, log) = (Clock::default(), Log::default());
        let store = Store {
            retention: [(1, 30), (2, 7)].into_iter().collect(),
            ..Store::default()
        };
        let backend = landing();
        let mut other = envelope("c");
        other["env_id"] = json!(2);
        let mut unknown = envelope("d");
        unknown["env_id"] = json!(3);
        let bodies = [
            json!([envelope("a"), other, unknown.clone()]).to_string(),
            json!([envelope("b")]).to_string(),
            json!([unknown]).to_string(),
        ];
        let messages: Vec<Message> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| Message::new(&format!("d{i}"), 1, body.clone()))
            .collect();
        block_on(store_dead_letters(
            &messages,
            Some(&store),
            Some(&backend),
            &clock,
            &log,
        ));
        let ttls: Vec<Option<u64>> = store.puts.borrow().iter().map(|p| p.2).collect();
        assert_eq!(ttls, [Some(7 * 86_400), Some(30 * 86_400), None]);

        // A retention that cannot be read: retried, not stored for ever.
        let failing = Store {
            fail: true,
            ..Store::default()
        };
        let messages = [Message::new("d9", 1, bodies[1].clone())];
        block_on(store_dead_letters(
            &messages,
            Some(&failing),
            Some(&backend),
            &clock,
            &log,
        ));
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(STORE_FAILED_RETRY_SECONDS))
        );
        assert!(log.has("dead_letter_retention_unreadable"));
    }

    #[test]
    fn a_dead_letter_whose_count_fails_is_retried_and_not_stored_yet() {
        let (clock, log) = (Clock::default(), Log::default());
        let store = Store::default();
        let down = Backend::new(|_: &str| Outcome::Unavailable {
            retry_after: None,
            status: Some(503),
        });
        let messages = [Message::new("d1", 1, json!([stamped("a")]).to_string())];
        block_on(store_dead_letters(
            &messages,
            Some(&store),
            Some(&down),
            &clock,
            &log,
        ));
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(STORE_FAILED_RETRY_SECONDS))
        );
        assert!(store.puts.borrow().is_empty(), "stored only once counted");
        assert!(log.has("dead_letter_report_failed"));
        // Until it has been tried too often: then it is kept uncounted.
        let messages = [Message::new(
            "d1",
            DEAD_LETTER_COUNT_ATTEMPTS,
            json!([stamped("a")]).to_string(),
        )];
        block_on(store_dead_letters(
            &messages,
            Some(&store),
            Some(&down),
            &clock,
            &log,
        ));
        assert_eq!(messages[0].outcome(), Some(Done::Acked));
        assert_eq!(store.puts.borrow_mut().drain(..).count(), 1);
        assert!(log.has("dead_letter_uncounted"));

        // Without the ingest token it waits; a refused count is stored anyway.
        let messages = [Message::new("d2", 1, json!([stamped("a")]).to_string())];
        block_on(store_dead_letters(
            &messages,
            Some(&store),
            None::<&Backend<fn(&str) -> Outcome>>,
            &clock,
            &log,
        ));
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(STORE_MISSING_RETRY_SECONDS))
        );
        let refusing = Backend::new(|_: &str| Outcome::Rejected {
            status: 400,
            message: "no".into(),
        });
        let messages = [Message::new("d3", 1, json!([stamped("a")]).to_string())];
        block_on(store_dead_letters(
            &messages,
            Some(&store),
            Some(&refusing),
            &clock,
            &log,
        ));
        assert_eq!(messages[0].outcome(), Some(Done::Acked));
        assert_eq!(store.puts.borrow().len(), 1);
        assert!(log.has("dead_letter_uncounted"));
    }

    fn report_message(id: &str, attempts: u32, report_id: &str, code: &str, n: u64) -> Message {
        let body = json!({"reports": [{"id": report_id, "env_id": 1, "received_at": 1_700_000_000_000i64,
                                       "rejected": {code: n}}]});
        Message::new(id, attempts, body.to_string())
    }

    #[test]
    fn report_messages_are_merged_into_one_post_beside_the_envelopes() {
        let backend = landing();
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [
            report_message("r1", 1, "aa", "invalid_json", 1),
            message("m1", 1, &["a"]),
            report_message("r2", 1, "bb", "invalid_events", 3),
        ];
        consume(Some(&backend), &dlq, &log, &messages);
        assert!(messages.iter().all(|m| m.outcome() == Some(Done::Acked)));
        assert_eq!(
            backend.bodies.borrow().len(),
            1,
            "the envelopes to /v1/ingest"
        );
        let posted = backend.posted_reports();
        assert_eq!(posted.len(), 1, "both report messages in one POST");
        assert_eq!(
            posted[0]
                .reports
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["aa", "bb"]
        );
        assert!(!backend.bodies.borrow()[0].contains("reports"));
    }

    #[test]
    fn an_invalid_report_message_is_dead_lettered_and_a_failed_post_retried() {
        let backend = landing();
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [
            report_message("r1", 1, "aa", "Not A Code", 1),
            Message::new("r2", 1, "{\"reports\": 5}"),
            Message::new("r3", 1, "{}"),
        ];
        consume(Some(&backend), &dlq, &log, &messages);
        assert!(messages.iter().all(|m| m.outcome() == Some(Done::Acked)));
        assert_eq!(dlq.sent.borrow().len(), 3);
        assert!(backend.reports.borrow().is_empty());

        let down = Backend::new(|_: &str| Outcome::Unavailable {
            retry_after: Some(30),
            status: Some(503),
        });
        let messages = [report_message("r4", 4, "cc", "invalid_json", 1)];
        consume(Some(&down), &dlq, &log, &messages);
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(40)),
            "4th attempt: 5 × 2³"
        );
        let unauthorized = Backend::new(|_: &str| Outcome::Unauthorized { status: 401 });
        let messages = [report_message("r5", 1, "dd", "invalid_json", 1)];
        consume(Some(&unauthorized), &dlq, &log, &messages);
        assert_eq!(
            messages[0].outcome(),
            Some(Done::Retried(forward::UNAUTHORIZED_BACKOFF_SECONDS))
        );
    }

    #[test]
    fn a_refused_merge_of_reports_is_split_to_dead_letter_only_the_poison() {
        let backend = Backend::new(|body: &str| {
            if body.contains("\"poison\"") {
                Outcome::Rejected {
                    status: 400,
                    message: "bad report".into(),
                }
            } else {
                Outcome::Landed
            }
        });
        let (dlq, log) = (Queue::default(), Log::default());
        let messages = [
            report_message("r1", 1, "aa", "invalid_json", 1),
            report_message("r2", 1, "poison", "invalid_json", 1),
        ];
        consume(Some(&backend), &dlq, &log, &messages);
        assert_eq!(
            backend.reports.borrow().len(),
            3,
            "together, then each alone"
        );
        assert!(messages.iter().all(|m| m.outcome() == Some(Done::Acked)));
        let sent = dlq.sent.borrow();
        assert_eq!(sent.len(), 1);
        let poison: deadletter::Poison = serde_json::from_str(&sent[0][0]).unwrap();
        assert_eq!(poison.message_id, "r2");
    }
}
