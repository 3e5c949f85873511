//! Report messages for the delivery ledger: what the door refused, dropped
//! (bots) and lost for an environment, sent from the request that saw it.
//!
//! Workers have no timers, so a tally that waited for a later request might
//! never be sent. Coalescing therefore happens only inside one request's
//! `ctx.wait_until`: per isolate and environment, the first request with a
//! refusal opens a [`Window`], sleeps [`REPORT_WINDOW_MS`] in its own
//! `wait_until` and then sends everything added to the window meanwhile as one
//! message; later requests of the window only add to it. A flood of bad
//! requests thus makes at most one report message per environment, isolate
//! and second.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use intake::door::Tally;
use protocol::{Acceptance, Report, Reports};
use serde_json::json;

use crate::ports::{Backend, Clock, EventQueue, Log};

/// How long the request that opens a window waits before sending it.
pub const REPORT_WINDOW_MS: u64 = 1_000;
/// A window older than this was never sent (its request's `wait_until` was
/// cut off): the next refusal takes it over and sends it.
pub const STALE_WINDOW_MS: i64 = 10_000;
/// Rejected-body samples per environment, isolate and minute; the refusals
/// past it are counted, not sampled.
pub const SAMPLES_PER_MINUTE: u32 = 10;

const MINUTE_MS: i64 = 60_000;

pub use intake::door::random_id;

/// Whether a queue message body is a [`Reports`] object (envelope messages
/// are JSON arrays): its first non-space byte is `{`.
pub fn is_reports(body: &str) -> bool {
    body.trim_start().starts_with('{')
}

/// The report of an acceptance some of whose envelopes could not be queued.
/// Its id is the acceptance's, so its `accepted` counts once with the one the
/// envelopes that did arrive carry.
pub fn lost(env_id: u32, received_at: i64, acceptance: &Acceptance, lost: u64) -> Report {
    Report {
        id: acceptance.id.clone(),
        env_id,
        received_at,
        accepted: u64::from(acceptance.n),
        lost,
        ..Report::default()
    }
}

/// One environment's open window: a report per receive minute.
#[derive(Debug)]
struct Window {
    opened_at: i64,
    minutes: BTreeMap<i64, Report>,
}

/// The isolate's open windows and sample budgets.
#[derive(Debug, Default)]
pub struct Windows {
    open: HashMap<u32, Window>,
    /// env → (minute, samples taken in it).
    samples: HashMap<u32, (i64, u32)>,
}

impl Windows {
    /// Adds a tally's refusal (and its sample, within the budget) to its
    /// environment's window. True when this call opened the window: its
    /// caller must [`Windows::take`] and send it after [`REPORT_WINDOW_MS`].
    pub fn add(&mut self, tally: &Tally, now: i64, new_id: impl FnOnce() -> String) -> bool {
        let sample = match &tally.sample {
            Some(sample) if self.spend_sample(tally.env_id, now) => Some(sample.clone()),
            _ => None,
        };
        if tally.rejected.is_none() && tally.dropped.is_none() && sample.is_none() {
            return false;
        }
        let (opened, window) = match self.open.entry(tally.env_id) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let window = entry.into_mut();
                let stale = now.saturating_sub(window.opened_at) >= STALE_WINDOW_MS;
                if stale {
                    window.opened_at = now;
                }
                (stale, window)
            }
            std::collections::hash_map::Entry::Vacant(entry) => (
                true,
                entry.insert(Window {
                    opened_at: now,
                    minutes: BTreeMap::new(),
                }),
            ),
        };
        let report = window
            .minutes
            .entry(tally.received_at.div_euclid(MINUTE_MS))
            .or_insert_with(|| Report {
                id: new_id(),
                env_id: tally.env_id,
                received_at: tally.received_at,
                ..Report::default()
            });
        if let Some((code, n)) = tally.rejected {
            let count = report.rejected.entry(code.to_owned()).or_default();
            *count = count.saturating_add(n);
        }
        // Accepted and not stored (bots, where the environment drops them):
        // no envelope tells the ledger, so the report does.
        if let Some((reason, n)) = tally.dropped {
            report.accepted = report.accepted.saturating_add(n);
            let count = report.dropped.entry(reason.to_owned()).or_default();
            *count = count.saturating_add(n);
        }
        report.samples.extend(sample);
        opened
    }

    /// Closes an environment's window: its reports, one per receive minute.
    pub fn take(&mut self, env_id: u32) -> Vec<Report> {
        self.open
            .remove(&env_id)
            .map(|w| w.minutes.into_values().collect())
            .unwrap_or_default()
    }

    fn spend_sample(&mut self, env_id: u32, now: i64) -> bool {
        let minute = now.div_euclid(MINUTE_MS);
        self.samples.retain(|_, (m, _)| *m == minute);
        let (_, used) = self.samples.entry(env_id).or_insert((minute, 0));
        if *used >= SAMPLES_PER_MINUTE {
            return false;
        }
        *used += 1;
        true
    }
}

/// Sends report messages: on the events queue (one try), else straight to
/// the backend's `POST /v1/ingest/reports`.
pub struct Reporter<'a, Q, B, C, L> {
    pub queue: &'a Q,
    /// `None` when the ingest token secret is missing.
    pub backend: Option<&'a B>,
    pub clock: &'a C,
    pub log: &'a L,
    pub windows: &'a RefCell<Windows>,
}

impl<Q: EventQueue, B: Backend, C: Clock, L: Log> Reporter<'_, Q, B, C, L> {
    /// Adds a request's tally to its window; the request that opened the
    /// window waits it out and sends it.
    pub async fn tally(&self, tally: &Tally) {
        let now = self.clock.now_ms();
        let opened = self
            .windows
            .borrow_mut()
            .add(tally, now, || random_id(self.clock));
        if !opened {
            return;
        }
        self.clock.sleep_ms(REPORT_WINDOW_MS).await;
        let reports = self.windows.borrow_mut().take(tally.env_id);
        if !reports.is_empty() {
            self.send(Reports {
                reports,
                dead_letters: Vec::new(),
            })
            .await;
        }
    }

    /// One message on the queue, else one POST to the backend; true when
    /// either took it. Every failure is logged.
    pub async fn send(&self, reports: Reports) -> bool {
        let summary = summary(&reports);
        let body = match serde_json::to_string(&reports) {
            Ok(body) => body,
            Err(e) => {
                self.log.error(
                    "report_failed",
                    json!({"reports": summary, "error": e.to_string()}),
                );
                return false;
            }
        };
        let queue_error = match self.queue.send_batch(std::slice::from_ref(&body)).await {
            Ok(()) => return true,
            Err(e) => e,
        };
        let Some(backend) = self.backend else {
            self.log.error(
                "report_failed",
                json!({"reports": summary, "queue_error": queue_error, "backend": "no ingest token"}),
            );
            return false;
        };
        let outcome = backend.report(&body).await;
        if outcome == crate::forward::Outcome::Landed {
            self.log.info(
                "report_posted",
                json!({"reports": summary, "queue_error": queue_error}),
            );
            true
        } else {
            self.log.error(
                "report_failed",
                json!({"reports": summary, "queue_error": queue_error, "backend": format!("{outcome:?}")}),
            );
            false
        }
    }
}

/// What a log line says of reports: per report its id, env, counts.
fn summary(reports: &Reports) -> serde_json::Value {
    reports
        .reports
        .iter()
        .map(|r| {
            json!({"id": r.id, "env_id": r.env_id, "received_at": r.received_at,
                   "rejected": r.rejected, "accepted": r.accepted, "lost": r.lost,
                   "dropped": r.dropped})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, Backend, Clock, Log, Queue};
    use crate::forward::Outcome;
    use futures_executor::block_on;

    fn tally(env_id: u32, code: &'static str, n: u64, sampled: bool) -> Tally {
        Tally {
            env_id,
            received_at: fakes::NOW,
            accepted: 0,
            rejected: Some((code, n)),
            dropped: None,
            acceptance: None,
            sample: sampled.then(|| protocol::Sample::new(fakes::NOW, code, "why", b"{\"x\":1}")),
        }
    }

    #[test]
    fn ids_are_32_lowercase_hex() {
        let id = random_id(&Clock::default());
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn report_messages_are_told_from_envelope_messages_by_their_first_byte() {
        assert!(is_reports("  {\"reports\":[]}"));
        assert!(!is_reports("[{\"id\":\"a\"}]"));
        assert!(!is_reports("not json"));
    }

    #[test]
    fn the_first_refusal_opens_the_window_and_later_ones_join_it() {
        let mut windows = Windows::default();
        let mut ids = 0;
        let mut id = || {
            ids += 1;
            format!("r{ids}")
        };
        assert!(windows.add(&tally(1, "invalid_json", 1, true), fakes::NOW, &mut id));
        assert!(!windows.add(
            &tally(1, "invalid_events", 5, true),
            fakes::NOW + 10,
            &mut id
        ));
        assert!(!windows.add(
            &tally(1, "invalid_json", 1, false),
            fakes::NOW + 20,
            &mut id
        ));
        assert!(
            windows.add(&tally(2, "rate_limited", 1, false), fakes::NOW, &mut id),
            "another env, another window"
        );
        let accepted_only = Tally {
            rejected: None,
            sample: None,
            ..tally(1, "x", 0, false)
        };
        assert!(!windows.add(&accepted_only, fakes::NOW, &mut id));
        let bots = Tally {
            accepted: 4,
            dropped: Some(("bot", 4)),
            ..accepted_only.clone()
        };
        assert!(
            !windows.add(&bots, fakes::NOW, &mut id),
            "the window is open"
        );

        let reports = windows.take(1);
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(
            (r.id.as_str(), r.env_id, r.received_at),
            ("r1", 1, fakes::NOW)
        );
        assert_eq!(
            r.rejected,
            BTreeMap::from([
                ("invalid_events".to_owned(), 5),
                ("invalid_json".to_owned(), 2)
            ])
        );
        assert_eq!(r.samples.len(), 2);
        assert_eq!(
            (r.accepted, r.dropped["bot"]),
            (4, 4),
            "dropped bots are accepted"
        );
        assert!(r.validate().is_ok());
        assert!(windows.take(1).is_empty(), "taken once");
        assert!(
            windows.add(
                &tally(1, "invalid_json", 1, false),
                fakes::NOW + 1_500,
                || "r9".into()
            ),
            "closed: the next refusal opens a new one"
        );
    }

    #[test]
    fn a_window_spanning_a_minute_keeps_one_report_per_receive_minute() {
        let mut windows = Windows::default();
        let late = Tally {
            received_at: 1_700_000_039_999,
            ..tally(1, "invalid_json", 1, false)
        };
        let next = Tally {
            received_at: 1_700_000_040_100,
            ..tally(1, "invalid_json", 2, false)
        };
        assert_eq!(
            late.received_at.div_euclid(MINUTE_MS) + 1,
            next.received_at.div_euclid(MINUTE_MS)
        );
        assert!(windows.add(&late, late.received_at, || "a".into()));
        assert!(!windows.add(&next, next.received_at, || "b".into()));
        let reports = windows.take(1);
        assert_eq!(
            reports
                .iter()
                .map(|r| r.rejected["invalid_json"])
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            reports.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn samples_are_budgeted_per_env_and_minute_and_the_rest_counted() {
        let mut windows = Windows::default();
        for i in 0..25 {
            windows.add(&tally(1, "invalid_json", 1, true), fakes::NOW + i, || {
                "a".into()
            });
        }
        windows.add(&tally(2, "invalid_json", 1, true), fakes::NOW, || {
            "b".into()
        });
        let reports = windows.take(1);
        assert_eq!(reports[0].samples.len(), SAMPLES_PER_MINUTE as usize);
        assert_eq!(reports[0].rejected["invalid_json"], 25);
        assert_eq!(
            windows.take(2)[0].samples.len(),
            1,
            "env 2 has its own budget"
        );
        // The next minute has a fresh budget.
        windows.add(
            &tally(1, "invalid_json", 1, true),
            fakes::NOW + MINUTE_MS,
            || "c".into(),
        );
        assert_eq!(windows.take(1)[0].samples.len(), 1);
    }

    #[test]
    fn a_window_whose_sender_never_came_back_is_taken_over() {
        let mut windows = Windows::default();
        assert!(
            windows.add(&tally(1, "invalid_json", 1, false), fakes::NOW, || "a"
                .into())
        );
        assert!(windows.add(
            &tally(1, "invalid_json", 1, false),
            fakes::NOW + STALE_WINDOW_MS,
            || "b".into()
        ));
        assert_eq!(windows.take(1)[0].rejected["invalid_json"], 2);
    }

    fn reporter<'a, F: Fn(&str) -> Outcome>(
        queue: &'a Queue,
        backend: Option<&'a Backend<F>>,
        clock: &'a Clock,
        log: &'a Log,
        windows: &'a RefCell<Windows>,
    ) -> Reporter<'a, Queue, Backend<F>, Clock, Log> {
        Reporter {
            queue,
            backend,
            clock,
            log,
            windows,
        }
    }

    #[test]
    fn the_opener_sleeps_the_window_then_sends_one_message_with_the_sum() {
        let (queue, clock, log) = (Queue::default(), Clock::default(), Log::default());
        let backend = Backend::new(|_: &str| Outcome::Landed);
        let windows = RefCell::new(Windows::default());
        let r = reporter(&queue, Some(&backend), &clock, &log, &windows);
        // The opener's sleep yields (see fakes::Clock), so the two later
        // requests add theirs while it waits.
        block_on(futures_util::future::join(
            r.tally(&tally(1, "invalid_json", 1, true)),
            async {
                r.tally(&tally(1, "invalid_events", 4, false)).await;
                r.tally(&tally(1, "invalid_json", 2, true)).await;
            },
        ));
        assert_eq!(*clock.slept.borrow(), vec![REPORT_WINDOW_MS]);
        let sent = queue.sent.borrow();
        assert_eq!(sent.len(), 1, "one message");
        let reports: Reports = serde_json::from_str(&sent[0][0]).unwrap();
        assert_eq!(reports.reports.len(), 1);
        assert_eq!(reports.reports[0].samples.len(), 2);
        assert_eq!(
            reports.reports[0].rejected,
            BTreeMap::from([
                ("invalid_events".to_owned(), 4),
                ("invalid_json".to_owned(), 3)
            ])
        );
        assert!(backend.bodies.borrow().is_empty());
    }

    #[test]
    fn a_report_the_queue_refuses_goes_straight_to_the_backend() {
        let (queue, clock, log) = (Queue::default(), Clock::default(), Log::default());
        let backend = Backend::new(|_: &str| Outcome::Landed);
        let windows = RefCell::new(Windows::default());
        let r = reporter(&queue, Some(&backend), &clock, &log, &windows);
        let report = lost(
            7,
            fakes::NOW,
            &Acceptance {
                id: "ab".repeat(16),
                n: 9,
            },
            4,
        );
        queue.failures.set(1);
        assert!(block_on(r.send(Reports {
            reports: vec![report.clone()],
            dead_letters: vec![]
        })));
        assert_eq!(queue.attempts.get(), 1, "one try on the queue");
        let posted: Reports = serde_json::from_str(&backend.reports.borrow()[0]).unwrap();
        assert_eq!(posted.reports, vec![report]);
        assert!(log.has("report_posted"));

        let refusing = Backend::new(|_: &str| Outcome::Unavailable {
            retry_after: None,
            status: Some(503),
        });
        let r = reporter(&queue, Some(&refusing), &clock, &log, &windows);
        queue.failures.set(1);
        assert!(!block_on(r.send(Reports::default())));
        assert!(log.has("report_failed"));
        let r = reporter::<fn(&str) -> Outcome>(&queue, None, &clock, &log, &windows);
        queue.failures.set(1);
        assert!(!block_on(r.send(Reports::default())));
    }
}
