//! Queue consumer planning: decode messages, group their envelopes into
//! sub-batches for the backend, read its answers, and decide per message
//! whether to ack, retry (with backoff) or dead-letter.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;

use futures_util::stream::{self, StreamExt};
use protocol::{Envelope, IngestResponse};

use crate::pack::JsonArray;

/// Defaults of [`Backoff`]: the first retry waits 5 s, each later attempt
/// doubles it, up to 10 minutes.
pub const BASE_BACKOFF_SECONDS: u32 = 5;
pub const MAX_BACKOFF_SECONDS: u32 = 600;
/// A backend that refuses our token needs a human; don't hammer it meanwhile.
pub const UNAUTHORIZED_BACKOFF_SECONDS: u32 = 60;
/// Queues refuses retry delays beyond 12 hours.
pub const MAX_QUEUE_DELAY_SECONDS: u32 = 43_200;

/// A queue message body: a JSON array of envelopes.
pub fn decode(body: &str) -> Result<Vec<Envelope>, String> {
    let envelopes: Vec<Envelope> =
        serde_json::from_str(body).map_err(|e| format!("not a JSON array of envelopes: {e}"))?;
    for (i, envelope) in envelopes.iter().enumerate() {
        envelope
            .validate()
            .map_err(|e| format!("envelope {i} is invalid: {e}"))?;
    }
    Ok(envelopes)
}

/// A report message body: a [`protocol::Reports`] object whose reports are
/// all valid and which holds at least one.
pub fn decode_reports(body: &str) -> Result<protocol::Reports, String> {
    let reports: protocol::Reports =
        serde_json::from_str(body).map_err(|e| format!("not a reports object: {e}"))?;
    if reports.reports.is_empty() && reports.dead_letters.is_empty() {
        return Err("a reports object with nothing in it".into());
    }
    for (i, report) in reports.reports.iter().enumerate() {
        report
            .validate()
            .map_err(|e| format!("report {i} is invalid: {e}"))?;
    }
    Ok(reports)
}

/// Report messages merged into backend requests of about `max_bytes` of
/// JSON each (one message always fits): (message indices, body).
pub fn merge_reports(
    messages: &[(usize, &protocol::Reports)],
    max_bytes: usize,
) -> Result<Vec<(Vec<usize>, String)>, serde_json::Error> {
    let mut out = Vec::new();
    let mut current = (Vec::new(), protocol::Reports::default(), 0usize);
    for (index, reports) in messages {
        let size = serde_json::to_string(reports)?.len();
        if !current.0.is_empty() && current.2 + size > max_bytes {
            let (owners, merged, _) = std::mem::take(&mut current);
            out.push((owners, serde_json::to_string(&merged)?));
        }
        current.0.push(*index);
        current.1.reports.extend(reports.reports.iter().cloned());
        current
            .1
            .dead_letters
            .extend(reports.dead_letters.iter().cloned());
        current.2 += size;
    }
    if !current.0.is_empty() {
        out.push((current.0, serde_json::to_string(&current.1)?));
    }
    Ok(out)
}

/// One backend request: envelopes, each with the index of its message, and
/// the JSON array text that carries them.
#[derive(Debug, Clone, PartialEq)]
pub struct SubBatch<'a> {
    pub envelopes: Vec<&'a Envelope>,
    pub owners: Vec<usize>,
    pub body: String,
}

impl SubBatch<'_> {
    pub fn messages(&self) -> BTreeSet<usize> {
        self.owners.iter().copied().collect()
    }
}

/// Groups the envelopes of `(message index, envelopes)` into sub-batches of at
/// most `max_envelopes` and about `max_bytes` of JSON (one envelope always
/// fits). With `isolate`, no sub-batch spans two messages.
pub fn group<'a>(
    messages: &[(usize, &'a [Envelope])],
    max_envelopes: usize,
    max_bytes: usize,
    isolate: bool,
) -> Result<Vec<SubBatch<'a>>, serde_json::Error> {
    let max = max_envelopes.max(1);
    let mut out = Vec::new();
    let mut body = JsonArray::default();
    let (mut envelopes_of, mut owners) = (Vec::new(), Vec::new());
    let mut flush =
        |body: &mut JsonArray, envelopes: &mut Vec<&'a Envelope>, owners: &mut Vec<usize>| {
            if !body.is_empty() {
                out.push(SubBatch {
                    envelopes: std::mem::take(envelopes),
                    owners: std::mem::take(owners),
                    body: std::mem::take(body).finish(),
                });
            }
        };
    for (index, envelopes) in messages {
        if isolate {
            flush(&mut body, &mut envelopes_of, &mut owners);
        }
        for envelope in envelopes.iter() {
            let text = serde_json::to_string(envelope)?;
            if body.len() >= max || !body.fits(&text, max_bytes) {
                flush(&mut body, &mut envelopes_of, &mut owners);
            }
            body.push(&text);
            envelopes_of.push(envelope);
            owners.push(*index);
        }
    }
    flush(&mut body, &mut envelopes_of, &mut owners);
    Ok(out)
}

/// What one backend request achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every envelope landed (inserted or already there).
    Landed,
    /// These ids did not land; the rest did.
    Partial {
        retry: HashSet<String>,
        retry_after: Option<u32>,
    },
    /// Nothing landed; try again later (503, 429, other 5xx, network error).
    Unavailable {
        retry_after: Option<u32>,
        status: Option<u16>,
    },
    /// The backend refuses this input for good (400, 413, 415, 422).
    Rejected { status: u16, message: String },
    /// Our token is wrong (401/403): a misconfiguration, retried until fixed.
    Unauthorized { status: u16 },
}

/// Reads a backend answer.
pub fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    let retry_after = retry_after.and_then(|v| v.trim().parse::<u32>().ok());
    match status {
        200..=299 => match serde_json::from_str::<IngestResponse>(body) {
            Ok(resp) if resp.retry.is_empty() => Outcome::Landed,
            Ok(resp) => Outcome::Partial {
                retry: resp.retry.into_iter().collect(),
                retry_after,
            },
            // A 207 we cannot read tells us nothing about what landed.
            Err(_) if status == 207 => Outcome::Unavailable {
                retry_after,
                status: Some(status),
            },
            Err(_) => Outcome::Landed,
        },
        400 | 413 | 415 | 422 => Outcome::Rejected {
            status,
            message: body.chars().take(300).collect(),
        },
        401 | 403 => Outcome::Unauthorized { status },
        _ => Outcome::Unavailable {
            retry_after,
            status: Some(status),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Ack,
    Retry {
        delay_seconds: u32,
    },
    DeadLetter {
        reason: String,
    },
    /// Rejected alongside other messages: send it again alone to find out
    /// whether it is the poison.
    Isolate,
}

#[derive(Debug, Default)]
struct State {
    failed: bool,
    unauthorized: bool,
    retry_after: Option<u32>,
    poison: Option<String>,
    isolate: bool,
}

/// Decides each message of `attempts` (message index → delivery attempts,
/// starting at 1) from the outcomes of the sub-batches that carried it.
pub fn decide(
    attempts: &BTreeMap<usize, u32>,
    results: &[(SubBatch<'_>, Outcome)],
    backoff: &Backoff,
) -> BTreeMap<usize, Decision> {
    let mut states: BTreeMap<usize, State> =
        attempts.keys().map(|&m| (m, State::default())).collect();
    for (batch, outcome) in results {
        let members = batch.messages();
        for &m in &members {
            let Some(state) = states.get_mut(&m) else {
                continue;
            };
            match outcome {
                Outcome::Landed => {}
                Outcome::Partial { retry, retry_after } => {
                    let missing = batch
                        .envelopes
                        .iter()
                        .zip(&batch.owners)
                        .any(|(e, owner)| *owner == m && retry.contains(&e.id));
                    if missing {
                        state.failed = true;
                        state.retry_after = state.retry_after.max(*retry_after);
                    }
                }
                Outcome::Unavailable { retry_after, .. } => {
                    state.failed = true;
                    state.retry_after = state.retry_after.max(*retry_after);
                }
                Outcome::Unauthorized { .. } => {
                    state.failed = true;
                    state.unauthorized = true;
                }
                Outcome::Rejected { status, message } => {
                    if members.len() == 1 {
                        state.poison = Some(format!("backend answered {status}: {message}"));
                    } else {
                        state.isolate = true;
                    }
                }
            }
        }
    }
    states
        .into_iter()
        .map(|(m, s)| {
            let decision = if let Some(reason) = s.poison {
                Decision::DeadLetter { reason }
            } else if s.isolate {
                Decision::Isolate
            } else if s.failed {
                Decision::Retry {
                    delay_seconds: backoff.delay(
                        attempts.get(&m).copied().unwrap_or(1),
                        s.retry_after,
                        s.unauthorized,
                    ),
                }
            } else {
                Decision::Ack
            };
            (m, decision)
        })
        .collect()
}

/// Retry delays: exponential in the delivery attempt, never shorter than the
/// backend's `Retry-After`, capped at what Queues accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_seconds: u32,
    pub max_seconds: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_seconds: BASE_BACKOFF_SECONDS,
            max_seconds: MAX_BACKOFF_SECONDS,
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempts: u32, retry_after: Option<u32>, unauthorized: bool) -> u32 {
        let doublings = attempts.saturating_sub(1).min(16);
        let exponential = self
            .base_seconds
            .saturating_mul(1u32 << doublings)
            .min(self.max_seconds);
        let floor = if unauthorized {
            UNAUTHORIZED_BACKOFF_SECONDS
        } else {
            0
        };
        exponential
            .max(retry_after.unwrap_or(0))
            .max(floor)
            .min(MAX_QUEUE_DELAY_SECONDS)
    }
}

/// Runs `f` over `items` with at most `limit` futures in flight; results
/// come back in input order.
pub async fn run_bounded<T, O, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<O>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = O>,
{
    let mut results: Vec<(usize, O)> =
        stream::iter(items.into_iter().enumerate().map(|(i, item)| {
            let fut = f(item);
            async move { (i, fut.await) }
        }))
        .buffer_unordered(limit.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use std::cell::Cell;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll};

    fn env(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            env_id: 1,
            name: "e".into(),
            timestamp: 1,
            received_at: 1,
            user_id: None,
            anonymous_id: None,
            session_id: None,
            properties: Map::new(),
            context: Map::new(),
            ..Envelope::default()
        }
    }

    const BIG: usize = usize::MAX / 2;

    fn attempts(pairs: &[(usize, u32)]) -> BTreeMap<usize, u32> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn decodes_arrays_of_valid_envelopes_only() {
        let good = serde_json::to_string(&vec![env("a"), env("b")]).unwrap();
        assert_eq!(decode(&good).unwrap().len(), 2);
        assert_eq!(decode("[]").unwrap().len(), 0);
        assert!(decode("{}").is_err());
        assert!(decode("not json").is_err());
        assert!(decode(r#"[{"id":"x"}]"#).is_err());
        let mut bad = env("a");
        bad.name = String::new();
        let text = serde_json::to_string(&vec![bad]).unwrap();
        assert!(decode(&text).unwrap_err().contains("envelope 0"));
    }

    fn reports(id: &str) -> protocol::Reports {
        protocol::Reports {
            reports: vec![protocol::Report {
                id: id.into(),
                env_id: 1,
                received_at: 1_700_000_000_000,
                rejected: [("invalid_json".to_owned(), 1)].into(),
                ..protocol::Report::default()
            }],
            dead_letters: vec![],
        }
    }

    #[test]
    fn report_messages_decode_only_when_valid_and_merge_under_a_byte_cap() {
        let text = serde_json::to_string(&reports("a")).unwrap();
        assert_eq!(decode_reports(&text).unwrap(), reports("a"));
        assert!(decode_reports("{}").unwrap_err().contains("nothing"));
        assert!(decode_reports(r#"{"reports":[],"extra":1}"#).is_err());
        let mut bad = reports("a");
        bad.reports[0].rejected = [("Bad Code".to_owned(), 1)].into();
        assert!(decode_reports(&serde_json::to_string(&bad).unwrap())
            .unwrap_err()
            .contains("report 0"));

        let (a, b, c) = (reports("a"), reports("b"), reports("c"));
        let all = [(0, &a), (1, &b), (2, &c)];
        let merged = merge_reports(&all, BIG).unwrap();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].0, vec![0, 1, 2]);
        let back: protocol::Reports = serde_json::from_str(&merged[0].1).unwrap();
        assert_eq!(back.reports.len(), 3);
        let one = text.len();
        let pairs = merge_reports(&all, 2 * one).unwrap();
        assert_eq!(
            pairs.iter().map(|(o, _)| o.len()).collect::<Vec<_>>(),
            [2, 1]
        );
        let alone = merge_reports(&all, 0).unwrap();
        assert_eq!(alone.len(), 3, "a cap below one message still sends each");
    }

    #[test]
    fn grouping_packs_across_messages_up_to_the_size() {
        let m0 = vec![env("a"), env("b"), env("c")];
        let m1 = vec![env("d"), env("e")];
        let messages = [(0, m0.as_slice()), (1, m1.as_slice())];
        let groups = group(&messages, 2, BIG, false).unwrap();
        let owners: Vec<Vec<usize>> = groups.iter().map(|g| g.owners.clone()).collect();
        assert_eq!(owners, vec![vec![0, 0], vec![0, 1], vec![1]]);
        let body: Vec<Envelope> = serde_json::from_str(&groups[1].body).unwrap();
        assert_eq!(body, vec![env("c"), env("d")]);
        for g in &groups {
            let back: Vec<Envelope> = serde_json::from_str(&g.body).unwrap();
            assert_eq!(back.len(), g.envelopes.len());
        }

        let isolated = group(&messages, 2, BIG, true).unwrap();
        let owners: Vec<Vec<usize>> = isolated.iter().map(|g| g.owners.clone()).collect();
        assert_eq!(owners, vec![vec![0, 0], vec![0], vec![1, 1]]);
        assert!(group(&[], 10, BIG, false).unwrap().is_empty());
        assert_eq!(
            group(&messages, 0, BIG, false).unwrap().len(),
            5,
            "size 0 means 1"
        );
    }

    #[test]
    fn grouping_respects_the_byte_cap() {
        let one = serde_json::to_string(&env("a")).unwrap().len();
        let m0: Vec<Envelope> = (0..10).map(|i| env(&format!("{i}"))).collect();
        let groups = group(&[(0, m0.as_slice())], 100, 3 * one + 4, false).unwrap();
        assert_eq!(
            groups.iter().map(|g| g.envelopes.len()).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        for g in &groups {
            assert!(g.body.len() <= 3 * one + 4);
        }
        // A cap smaller than one envelope still sends each envelope alone.
        assert_eq!(
            group(&[(0, m0.as_slice())], 100, 1, false).unwrap().len(),
            10
        );
    }

    #[test]
    fn classifies_backend_answers() {
        assert_eq!(
            classify(
                200,
                None,
                r#"{"environments":{"1":{"inserted":2,"duplicates":0}}}"#
            ),
            Outcome::Landed
        );
        assert_eq!(classify(200, None, ""), Outcome::Landed);
        assert_eq!(
            classify(
                207,
                Some("5"),
                r#"{"environments":{},"retry":["a"],"failures":[]}"#
            ),
            Outcome::Partial {
                retry: HashSet::from(["a".to_owned()]),
                retry_after: Some(5),
            }
        );
        assert_eq!(
            classify(207, Some("3"), "garbage"),
            Outcome::Unavailable {
                retry_after: Some(3),
                status: Some(207)
            }
        );
        assert_eq!(
            classify(503, Some("7"), r#"{"environments":{},"retry":["a"]}"#),
            Outcome::Unavailable {
                retry_after: Some(7),
                status: Some(503)
            }
        );
        assert_eq!(
            classify(429, Some("soon"), ""),
            Outcome::Unavailable {
                retry_after: None,
                status: Some(429)
            }
        );
        assert!(matches!(
            classify(500, None, ""),
            Outcome::Unavailable { .. }
        ));
        assert!(matches!(
            classify(404, None, ""),
            Outcome::Unavailable { .. }
        ));
        for status in [400, 413, 415, 422] {
            assert!(
                matches!(classify(status, None, "bad"), Outcome::Rejected { .. }),
                "{status}"
            );
        }
        assert_eq!(
            classify(401, None, ""),
            Outcome::Unauthorized { status: 401 }
        );
        assert_eq!(
            classify(403, None, ""),
            Outcome::Unauthorized { status: 403 }
        );
    }

    #[test]
    fn backoff_grows_with_attempts_and_honours_retry_after() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, None, false), 5);
        assert_eq!(b.delay(2, None, false), 10);
        assert_eq!(b.delay(3, None, false), 20);
        assert_eq!(b.delay(0, None, false), 5);
        assert_eq!(b.delay(50, None, false), MAX_BACKOFF_SECONDS);
        assert_eq!(b.delay(1, Some(30), false), 30);
        assert_eq!(b.delay(3, Some(1), false), 20);
        assert_eq!(b.delay(1, Some(u32::MAX), false), MAX_QUEUE_DELAY_SECONDS);
        assert_eq!(b.delay(1, None, true), UNAUTHORIZED_BACKOFF_SECONDS);
        let fast = Backoff {
            base_seconds: 1,
            max_seconds: 2,
        };
        assert_eq!(
            [1, 2, 3, 9].map(|a| fast.delay(a, None, false)),
            [1, 2, 2, 2]
        );
        assert_eq!(
            fast.delay(9, Some(7), false),
            7,
            "Retry-After beats the cap"
        );
    }

    fn landed_partial_failed() -> (Vec<Envelope>, Vec<Envelope>, Vec<Envelope>) {
        (
            vec![env("a"), env("b")],
            vec![env("c"), env("d")],
            vec![env("e")],
        )
    }

    #[test]
    fn acks_exactly_the_messages_whose_envelopes_all_landed() {
        let (m0, m1, m2) = landed_partial_failed();
        let messages = [(0, m0.as_slice()), (1, m1.as_slice()), (2, m2.as_slice())];
        let groups = group(&messages, 3, BIG, false).unwrap();
        // [a b c] partial (c missing), [d e] landed.
        let results = vec![
            (
                groups[0].clone(),
                Outcome::Partial {
                    retry: HashSet::from(["c".to_owned()]),
                    retry_after: None,
                },
            ),
            (groups[1].clone(), Outcome::Landed),
        ];
        let d = decide(
            &attempts(&[(0, 1), (1, 2), (2, 1)]),
            &results,
            &Backoff::default(),
        );
        assert_eq!(d[&0], Decision::Ack);
        assert_eq!(d[&1], Decision::Retry { delay_seconds: 10 });
        assert_eq!(d[&2], Decision::Ack);
    }

    #[test]
    fn unavailable_retries_everything_it_carried() {
        let (m0, m1, _) = landed_partial_failed();
        let messages = [(0, m0.as_slice()), (1, m1.as_slice())];
        let groups = group(&messages, 2, BIG, false).unwrap();
        let results = vec![
            (groups[0].clone(), Outcome::Landed),
            (
                groups[1].clone(),
                Outcome::Unavailable {
                    retry_after: Some(40),
                    status: Some(503),
                },
            ),
        ];
        let d = decide(&attempts(&[(0, 1), (1, 1)]), &results, &Backoff::default());
        assert_eq!(d[&0], Decision::Ack);
        assert_eq!(d[&1], Decision::Retry { delay_seconds: 40 });
    }

    #[test]
    fn unauthorized_retries_slowly() {
        let m0 = vec![env("a")];
        let groups = group(&[(0, m0.as_slice())], 10, BIG, false).unwrap();
        let results = vec![(groups[0].clone(), Outcome::Unauthorized { status: 401 })];
        let d = decide(&attempts(&[(0, 1)]), &results, &Backoff::default());
        assert_eq!(d[&0], Decision::Retry { delay_seconds: 60 });
    }

    #[test]
    fn rejection_of_one_message_dead_letters_it() {
        let m0 = vec![env("a")];
        let groups = group(&[(0, m0.as_slice())], 10, BIG, false).unwrap();
        let results = vec![(
            groups[0].clone(),
            Outcome::Rejected {
                status: 422,
                message: "bad".into(),
            },
        )];
        let d = decide(&attempts(&[(0, 1)]), &results, &Backoff::default());
        assert!(matches!(&d[&0], Decision::DeadLetter { reason } if reason.contains("422")));
    }

    #[test]
    fn rejection_of_a_shared_batch_isolates_its_messages() {
        let (m0, m1, m2) = landed_partial_failed();
        let messages = [(0, m0.as_slice()), (1, m1.as_slice()), (2, m2.as_slice())];
        let groups = group(&messages, 3, BIG, false).unwrap();
        let results = vec![
            (
                groups[0].clone(),
                Outcome::Rejected {
                    status: 400,
                    message: String::new(),
                },
            ),
            (groups[1].clone(), Outcome::Landed),
        ];
        let d = decide(
            &attempts(&[(0, 1), (1, 1), (2, 1)]),
            &results,
            &Backoff::default(),
        );
        assert_eq!(d[&0], Decision::Isolate);
        assert_eq!(d[&1], Decision::Isolate, "1 shared the rejected batch");
        assert_eq!(d[&2], Decision::Ack);

        // Second round: each alone; only the real poison is dead-lettered.
        let again = [(0, m0.as_slice()), (1, m1.as_slice())];
        let groups = group(&again, 3, BIG, true).unwrap();
        let results = vec![
            (groups[0].clone(), Outcome::Landed),
            (
                groups[1].clone(),
                Outcome::Rejected {
                    status: 400,
                    message: String::new(),
                },
            ),
        ];
        let d = decide(&attempts(&[(0, 1), (1, 1)]), &results, &Backoff::default());
        assert_eq!(d[&0], Decision::Ack);
        assert!(matches!(d[&1], Decision::DeadLetter { .. }));
    }

    #[test]
    fn a_message_without_envelopes_is_acked() {
        let d = decide(&attempts(&[(4, 1)]), &[], &Backoff::default());
        assert_eq!(d[&4], Decision::Ack);
    }

    #[test]
    fn retry_ids_of_other_messages_do_not_fail_this_one() {
        let m0 = vec![env("a")];
        let m1 = vec![env("b")];
        let groups = group(&[(0, m0.as_slice()), (1, m1.as_slice())], 10, BIG, false).unwrap();
        let results = vec![(
            groups[0].clone(),
            Outcome::Partial {
                retry: HashSet::from(["b".to_owned(), "zzz".to_owned()]),
                retry_after: Some(30),
            },
        )];
        let d = decide(&attempts(&[(0, 1), (1, 3)]), &results, &Backoff::default());
        assert_eq!(
            d[&0],
            Decision::Ack,
            "its envelope landed: Retry-After does not apply"
        );
        assert_eq!(d[&1], Decision::Retry { delay_seconds: 30 });
    }

    /// Pending once, then ready: lets other futures run in between.
    struct YieldOnce(bool);
    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    #[test]
    fn run_bounded_caps_in_flight_and_keeps_order() {
        for limit in [1usize, 4] {
            let in_flight = Rc::new(Cell::new(0usize));
            let peak = Rc::new(Cell::new(0usize));
            let out =
                futures_executor::block_on(run_bounded((0..20).collect(), limit, |i: i32| {
                    let in_flight = in_flight.clone();
                    let peak = peak.clone();
                    async move {
                        in_flight.set(in_flight.get() + 1);
                        peak.set(peak.get().max(in_flight.get()));
                        for _ in 0..((20 - i) % 3 + 1) {
                            YieldOnce(false).await;
                        }
                        in_flight.set(in_flight.get() - 1);
                        i * 10
                    }
                }));
            assert_eq!(out, (0..20).map(|i| i * 10).collect::<Vec<_>>());
            assert_eq!(peak.get(), limit, "limit {limit}");
        }
    }
}
