//! The edge's side of the public doors (`intake::door`): API keys from
//! Workers KV behind the isolate's cache and the rate limiter, and the queue
//! as the sink, written after the answer (`ctx.wait_until`).

use std::cell::RefCell;

use serde_json::json;

use crate::auth::{self, KeyCache, Lookup};
use crate::config::Config;
use crate::error::EdgeError;
use crate::pack;
use crate::ports::{Backend, Clock, EventQueue, KeyStore, Log, Request};
use crate::report::{self, Reporter};
use intake::door::{self, Doors, Tally};
use protocol::{Acceptance, Report, Reports};

/// How often a queue `sendBatch` is tried, and the pause before each retry.
pub const QUEUE_SEND_BACKOFF_MS: [u64; 3] = [0, 100, 400];

/// What to answer, and what to queue after answering ([`enqueue`] it from
/// `ctx.wait_until`).
pub type Response = door::Response<Deferred>;

/// Queue batches of one request (one environment, one acceptance) still to be sent.
#[derive(Debug)]
pub struct Deferred {
    pub batches: Vec<Vec<pack::Message>>,
    pub env_id: u32,
    pub received_at: i64,
    /// The acceptance every envelope carries.
    pub acceptance: Acceptance,
}

/// What a request leaves to do once it is answered (in `ctx.wait_until`):
/// queue its events, report what was lost, add its refusals to the window.
#[derive(Debug, Default)]
pub struct After {
    pub deferred: Option<Deferred>,
    pub tally: Option<Tally>,
    /// Lost reports of events the door tried to queue before answering.
    pub lost: Vec<Report>,
}

impl After {
    pub fn is_empty(&self) -> bool {
        self.deferred.is_none() && self.tally.is_none() && self.lost.is_empty()
    }
}

/// The doors with the ports they use.
pub struct Edge<'a, K, Q, C, L> {
    pub config: &'a Config,
    pub keys: &'a K,
    pub queue: &'a Q,
    pub clock: &'a C,
    pub log: &'a L,
    /// The isolate's key cache.
    pub cache: &'a RefCell<KeyCache>,
    /// Lost reports of this request's queue sends before the answer
    /// (`Prefer: wait`, the Segment API), for [`Edge::after`].
    pub unsent: RefCell<Vec<Report>>,
}

impl<K: KeyStore, Q: EventQueue, C: Clock, L: Log> Edge<'_, K, Q, C, L> {
    /// Answer a request at the public doors.
    pub async fn fetch(&self, method: &str, path: &str, req: &impl Request) -> Response {
        let doors = Doors {
            settings: &self.config.door,
            keys: &EdgeKeys(self),
            sink: &QueueSink(self),
            clock: self.clock,
            log: self.log,
        };
        let response = doors.fetch(method, path, req).await;
        if response.tally.is_none() && response.status >= 400 {
            // No environment to count it for (an unknown key, an unknown
            // route): one line, counted globally from the logs.
            let code = response
                .body
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(|c| c.as_str())
                .unwrap_or("");
            self.log.info(
                "request_refused",
                json!({"status": response.status, "error": code, "path": path}),
            );
        }
        response
    }

    /// Takes what is left to do after the answer out of a response.
    pub fn after(&self, response: &mut Response) -> After {
        After {
            deferred: response.deferred.take(),
            // Accepted events need no report: their envelopes tell it (not
            // those dropped, bots: the report does).
            tally: response
                .tally
                .take()
                .filter(|t| t.rejected.is_some() || t.dropped.is_some() || t.sample.is_some()),
            lost: self.unsent.take(),
        }
    }

    /// The record of the key with this hash, from the isolate cache or the store.
    async fn lookup(&self, hash: &str) -> Result<Lookup, EdgeError> {
        let now = self.clock.now_ms().max(0) as u64;
        let cached = {
            let mut cache = self.cache.borrow_mut();
            cache.set_ttls(
                self.config.key_cache_positive_ms,
                self.config.key_cache_negative_ms,
            );
            cache.get(hash, now)
        };
        if let Some(lookup) = cached {
            return Ok(lookup);
        }
        let value = self.keys.get(hash).await?;
        let (lookup, problem) = auth::interpret(value.as_deref());
        if let Some(problem) = problem {
            self.log.error(
                "key_record_malformed",
                json!({"key_hash": hash, "error": problem}),
            );
        }
        self.cache
            .borrow_mut()
            .put(hash.to_owned(), lookup.clone(), now);
        Ok(lookup)
    }
}

/// Keys from KV (through the isolate cache) and the rate-limit binding.
struct EdgeKeys<'e, 'a, K, Q, C, L>(&'e Edge<'a, K, Q, C, L>);

impl<K: KeyStore, Q: EventQueue, C: Clock, L: Log> door::Keys for EdgeKeys<'_, '_, K, Q, C, L> {
    /// The key lookup and the limiter run side by side.
    async fn admit(&self, key: &str) -> Result<door::Admitted, door::Refused> {
        let edge = self.0;
        let hash = intake::credentials::key_hash(key);
        let (lookup, within_limit) =
            futures_util::future::join(edge.lookup(&hash), edge.keys.within_rate_limit(&hash))
                .await;
        auth::admit(
            lookup?,
            within_limit,
            edge.clock.now_ms().max(0) as u64,
            edge.config.rate_limit_period_seconds,
        )
    }

    async fn active(&self, key: &str) -> Result<bool, EdgeError> {
        let lookup = self.0.lookup(&intake::credentials::key_hash(key)).await?;
        Ok(matches!(lookup, Lookup::Active { .. }))
    }
}

/// The events queue: packed into messages before the answer, sent after it.
struct QueueSink<'e, 'a, K, Q, C, L>(&'e Edge<'a, K, Q, C, L>);

impl<K, Q: EventQueue, C: Clock, L: Log> door::Sink for QueueSink<'_, '_, K, Q, C, L> {
    type Pending = Deferred;

    /// Packs the envelopes, once the queue binding is known to exist. The
    /// door stamped them with the request's acceptance (`door::accept`);
    /// envelopes without one get one here, so every queued envelope has it.
    fn prepare(
        &self,
        env_id: u32,
        mut envelopes: Vec<protocol::Envelope>,
    ) -> Result<Deferred, EdgeError> {
        self.0.queue.ready()?;
        let stamped = envelopes.first().and_then(|e| e.acceptance.clone());
        let acceptance = match stamped {
            Some(a) if envelopes.iter().all(|e| e.acceptance.as_ref() == Some(&a)) => a,
            _ => door::accept(&mut envelopes, self.0.clock),
        };
        let received_at = envelopes
            .first()
            .map_or_else(|| self.0.clock.now_ms(), |e| e.received_at);
        let messages =
            pack::messages(&envelopes).map_err(|e| EdgeError::Internal(e.to_string()))?;
        Ok(Deferred {
            batches: pack::batches(messages),
            env_id,
            received_at,
            acceptance,
        })
    }

    /// Queues before the answer; what could not be queued is answered 503
    /// and reported lost after the answer (some of it may be queued).
    async fn commit(&self, pending: Deferred) -> Result<(), EdgeError> {
        let edge = self.0;
        let (env_id, received_at, acceptance) = (
            pending.env_id,
            pending.received_at,
            pending.acceptance.clone(),
        );
        let lost = enqueue(edge.queue, edge.clock, edge.log, pending).await;
        if lost > 0 {
            edge.unsent.borrow_mut().push(report::lost(
                env_id,
                received_at,
                &acceptance,
                lost as u64,
            ));
            return Err(EdgeError::QueueUnavailable);
        }
        Ok(())
    }

    fn answers_early(&self) -> bool {
        true
    }
}

/// The work of a request after its answer: queue its events (a lost report
/// for what could not be), then add its refusals to its window (which the
/// first refusal of a window waits out and sends).
pub async fn after<Q: EventQueue, B: Backend, C: Clock, L: Log>(
    reporter: &Reporter<'_, Q, B, C, L>,
    work: After,
) {
    let mut lost = work.lost;
    // The door answered 503 for events it had tried to queue: they are
    // accepted and (partly) lost, not refused.
    let tally = work.tally.filter(|t| {
        lost.is_empty() || t.rejected.map(|(code, _)| code) != Some("queue_unavailable")
    });
    if let Some(deferred) = work.deferred {
        let (env_id, received_at, acceptance) = (
            deferred.env_id,
            deferred.received_at,
            deferred.acceptance.clone(),
        );
        let n = enqueue(reporter.queue, reporter.clock, reporter.log, deferred).await;
        if n > 0 {
            lost.push(report::lost(env_id, received_at, &acceptance, n as u64));
        }
    }
    if !lost.is_empty() {
        let fields = json!({"reports": lost.iter().map(|r| json!({"id": r.id, "env_id": r.env_id, "accepted": r.accepted, "lost": r.lost})).collect::<Vec<_>>()});
        let sent = reporter
            .send(Reports {
                reports: lost,
                dead_letters: Vec::new(),
            })
            .await;
        if sent {
            reporter.log.info("lost_reported", fields);
        } else {
            reporter.log.error("lost_unreported", fields);
        }
    }
    if let Some(tally) = tally {
        reporter.tally(&tally).await;
    }
}

/// Sends every batch, each with a short bounded retry; returns how many
/// envelopes could not be queued (and logs them loudly).
pub async fn enqueue(
    queue: &impl EventQueue,
    clock: &impl Clock,
    log: &impl Log,
    deferred: Deferred,
) -> usize {
    let mut lost = 0;
    for batch in deferred.batches {
        let envelopes: usize = batch.iter().map(|m| m.envelopes).sum();
        let bodies: Vec<String> = batch.into_iter().map(|m| m.body).collect();
        let mut last_error = String::new();
        let mut sent = false;
        for pause in QUEUE_SEND_BACKOFF_MS {
            if pause > 0 {
                clock.sleep_ms(pause).await;
            }
            match queue.send_batch(&bodies).await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => last_error = e,
            }
        }
        if !sent {
            lost += envelopes;
            log.error(
                "queue_send_failed",
                json!({"env_id": deferred.env_id, "lost_events": envelopes, "messages": bodies.len(), "error": last_error}),
            );
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, Backend, Clock, Keys, Log, Queue, Request};
    use crate::forward::Outcome;
    use crate::report::Windows;
    use futures_executor::block_on;
    use serde_json::Value;

    const KEY: &str = "sk_test_1";

    struct World {
        config: Config,
        keys: Keys,
        queue: Queue,
        clock: Clock,
        log: Log,
        cache: RefCell<KeyCache>,
    }

    impl World {
        fn new() -> Self {
            Self {
                config: Config::from_lookup(|name| {
                    (name == "ALLOWED_ORIGINS").then(|| "https://app.example".to_owned())
                }),
                keys: Keys::with_active(KEY, 42),
                queue: Queue::default(),
                clock: Clock::default(),
                log: Log::default(),
                cache: RefCell::new(KeyCache::new(30_000, 10_000)),
            }
        }

        fn edge(&self) -> Edge<'_, Keys, Queue, Clock, Log> {
            Edge {
                config: &self.config,
                keys: &self.keys,
                queue: &self.queue,
                clock: &self.clock,
                log: &self.log,
                cache: &self.cache,
                unsent: RefCell::default(),
            }
        }

        fn fetch(&self, method: &str, path: &str, req: &Request) -> Response {
            block_on(self.edge().fetch(method, path, req))
        }

        /// A request answered, then its `wait_until` work run to the end.
        fn fetch_and_after<F: Fn(&str) -> Outcome>(
            &self,
            path: &str,
            req: &Request,
            backend: &Backend<F>,
            windows: &RefCell<Windows>,
        ) -> Response {
            let edge = self.edge();
            let mut r = block_on(edge.fetch("POST", path, req));
            let work = edge.after(&mut r);
            let reporter = Reporter {
                queue: &self.queue,
                backend: Some(backend),
                clock: &self.clock,
                log: &self.log,
                windows,
            };
            block_on(after(&reporter, work));
            r
        }

        /// Every report message sent on the queue so far.
        fn report_messages(&self) -> Vec<Reports> {
            self.queue
                .sent
                .borrow()
                .iter()
                .flatten()
                .filter(|body| report::is_reports(body))
                .map(|body| serde_json::from_str(body).unwrap())
                .collect()
        }
    }

    fn landing() -> Backend<fn(&str) -> Outcome> {
        Backend::new(|_: &str| Outcome::Landed)
    }

    #[test]
    fn every_queued_envelope_carries_its_requests_acceptance() {
        let w = World::new();
        let (backend, windows) = (landing(), RefCell::new(Windows::default()));
        let body = json!([{"event": "a"}, {"event": "b"}, {"event": "c"}]);
        w.fetch_and_after("/v1/events", &events(body.clone()), &backend, &windows);
        w.fetch_and_after("/v1/events", &events(body), &backend, &windows);
        let sent = w.queue.sent.borrow();
        let envelopes: Vec<Vec<protocol::Envelope>> = sent
            .iter()
            .flatten()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(envelopes.len(), 2, "no report for accepted events");
        for request in &envelopes {
            let a = request[0].acceptance.clone().expect("an acceptance");
            assert_eq!((a.n, a.id.len()), (3, 32));
            assert!(request.iter().all(|e| e.acceptance.as_ref() == Some(&a)));
        }
    }

    #[test]
    fn refusals_are_reported_once_per_window_with_their_counts_summed() {
        let w = World::new();
        let (backend, windows) = (landing(), RefCell::new(Windows::default()));
        // A window already open (another request of this isolate is waiting it out).
        let opener = door::Tally {
            env_id: 42,
            received_at: fakes::NOW,
            accepted: 0,
            rejected: Some(("invalid_json", 1)),
            dropped: None,
            sample: None,
            acceptance: None,
        };
        assert!(windows.borrow_mut().add(&opener, fakes::NOW, || "w".into()));
        let bad = json!([{"event": "ok"}, {"event": ""}]);
        let r = w.fetch_and_after("/v1/events", &events(bad), &backend, &windows);
        assert_eq!(r.status, 422);
        let malformed = Request::default()
            .with("Content-Type", "application/json")
            .with("Authorization", &format!("Bearer {KEY}"))
            .with_body(b"{not json".to_vec());
        let r = w.fetch_and_after("/v1/events", &malformed, &backend, &windows);
        assert_eq!(r.status, 400);
        assert!(w.report_messages().is_empty(), "joiners send nothing");
        assert!(w.clock.slept.borrow().is_empty(), "nor wait");

        let reports = windows.borrow_mut().take(42);
        assert_eq!(reports.len(), 1);
        assert_eq!(
            reports[0].rejected,
            std::collections::BTreeMap::from([
                ("invalid_events".to_owned(), 2),
                ("invalid_json".to_owned(), 2)
            ])
        );
        assert_eq!(reports[0].samples.len(), 2);

        // With no window open, the refused request opens one, waits it out, sends it.
        let r = w.fetch_and_after(
            "/v1/events",
            &events(json!({"event": ""})),
            &backend,
            &windows,
        );
        assert_eq!(r.status, 422);
        assert_eq!(*w.clock.slept.borrow(), vec![report::REPORT_WINDOW_MS]);
        let sent = w.report_messages();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].reports[0].rejected["invalid_events"], 1);
        assert_eq!(sent[0].reports[0].env_id, 42);
    }

    #[test]
    fn a_rate_limited_request_is_reported_an_unknown_key_only_logged() {
        let mut w = World::new();
        w.keys.over_limit = true;
        let (backend, windows) = (landing(), RefCell::new(Windows::default()));
        let r = w.fetch_and_after(
            "/v1/events",
            &events(json!({"event": "a"})),
            &backend,
            &windows,
        );
        assert_eq!(r.status, 429);
        assert_eq!(
            w.report_messages()[0].reports[0].rejected["rate_limited"],
            1
        );

        let w = World::new();
        let unknown = Request::json(&json!({"event": "a"})).with("Authorization", "Bearer sk_nope");
        let mut r = w.fetch("POST", "/v1/events", &unknown);
        assert_eq!(r.status, 401);
        assert!(w.edge().after(&mut r).is_empty(), "nothing to report");
        assert!(w.log.has("request_refused"));

        let mut r = w.fetch("POST", "/v1/events", &events(json!({"event": "a"})));
        let after = w.edge().after(&mut r);
        assert!(after.deferred.is_some());
        assert!(after.tally.is_none(), "accepted events need no report");
    }

    #[test]
    fn events_the_queue_would_not_take_are_reported_lost_under_their_acceptance() {
        let w = World::new();
        let (backend, windows) = (landing(), RefCell::new(Windows::default()));
        // Three failed tries for the events, then one for the report: it goes
        // straight to the backend.
        w.queue.failures.set(4);
        let r = w.fetch_and_after(
            "/v1/events",
            &events(json!([{"event": "a"}, {"event": "b"}])),
            &backend,
            &windows,
        );
        assert_eq!(r.status, 202);
        assert!(w.log.has("queue_send_failed") && w.log.has("lost_reported"));
        let posted = backend.posted_reports();
        assert_eq!(posted.len(), 1);
        let lost = &posted[0].reports[0];
        assert_eq!((lost.env_id, lost.accepted, lost.lost), (42, 2, 2));
        assert_eq!(lost.id.len(), 32);
        assert!(lost.rejected.is_empty());

        // The queue takes the report when it can.
        w.queue.failures.set(3);
        w.fetch_and_after(
            "/v1/events",
            &events(json!({"event": "a"})),
            &backend,
            &windows,
        );
        assert_eq!(w.report_messages()[0].reports[0].lost, 1);
        assert_eq!(backend.posted_reports().len(), 1);
    }

    #[test]
    fn a_503_after_trying_to_queue_is_lost_not_refused() {
        let w = World::new();
        let (backend, windows) = (landing(), RefCell::new(Windows::default()));
        w.queue.failures.set(3);
        let r = w.fetch_and_after(
            "/v1/events",
            &events(json!([{"event": "a"}])).with("Prefer", "wait"),
            &backend,
            &windows,
        );
        assert_eq!((r.status, error_code(&r)), (503, Some("queue_unavailable")));
        let sent = w.report_messages();
        assert_eq!(sent.len(), 1, "the lost report only");
        let report = &sent[0].reports[0];
        assert_eq!((report.accepted, report.lost), (1, 1));
        assert!(report.rejected.is_empty());
        assert!(w
            .clock
            .slept
            .borrow()
            .iter()
            .all(|ms| *ms != report::REPORT_WINDOW_MS));
    }

    fn events(body: Value) -> Request {
        Request::json(&body).with("Authorization", &format!("Bearer {KEY}"))
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error_code(r: &Response) -> Option<&str> {
        r.body.as_ref()?.get("error")?.as_str()
    }

    #[test]
    fn events_are_answered_202_and_queued_after_the_answer() {
        let w = World::new();
        let r = w.fetch(
            "POST",
            "/v1/events",
            &events(json!([{"event": "a"}, {"event": "b"}])),
        );
        assert_eq!(r.status, 202);
        assert_eq!(r.body, Some(json!({"accepted": 2})));
        assert_eq!(
            w.queue.attempts.get(),
            0,
            "nothing is queued before the answer"
        );
        let deferred = r.deferred.expect("events to queue");
        assert_eq!(deferred.env_id, 42);
        assert_eq!(block_on(enqueue(&w.queue, &w.clock, &w.log, deferred)), 0);
        assert_eq!(w.queue.envelopes(), 2);
        let sent: Vec<Value> = serde_json::from_str(&w.queue.sent.borrow()[0][0]).unwrap();
        assert_eq!(sent[0]["env_id"], 42);
        assert_eq!(sent[0]["received_at"], fakes::NOW);
    }

    #[test]
    fn prefer_wait_queues_before_answering_and_a_queue_that_refuses_is_a_503() {
        let w = World::new();
        let r = w.fetch(
            "POST",
            "/v1/events",
            &events(json!({"event": "a"})).with("Prefer", "wait"),
        );
        assert_eq!((r.status, w.queue.envelopes()), (202, 1));
        assert!(r.deferred.is_none());

        // One failure is retried after a short pause; three are a 503.
        w.queue.failures.set(1);
        let r = w.fetch(
            "POST",
            "/v1/events",
            &events(json!({"event": "b"})).with("Prefer", "wait"),
        );
        assert_eq!((r.status, w.queue.envelopes()), (202, 2));
        assert_eq!(*w.clock.slept.borrow(), vec![100]);
        w.queue.failures.set(3);
        let mut by_param = events(json!({"event": "c"}));
        by_param.query = Some("wait=1".into());
        let r = w.fetch("POST", "/v1/events", &by_param);
        assert_eq!((r.status, error_code(&r)), (503, Some("queue_unavailable")));
        assert_eq!(header(&r, "Retry-After"), Some("1"));
        assert_eq!(w.queue.envelopes(), 2, "nothing half-queued");
        assert!(w.log.has("queue_send_failed"));
    }

    #[test]
    fn keys_are_checked_and_their_answers_cached() {
        let w = World::new();
        let unknown = Request::json(&json!({"event": "a"})).with("Authorization", "Bearer sk_nope");
        for _ in 0..3 {
            let r = w.fetch("POST", "/v1/events", &unknown);
            assert_eq!((r.status, error_code(&r)), (401, Some("invalid_api_key")));
            assert_eq!(header(&r, "WWW-Authenticate"), Some("Bearer"));
        }
        for _ in 0..3 {
            assert_eq!(
                w.fetch("POST", "/v1/events", &events(json!({"event": "a"})))
                    .status,
                202
            );
        }
        assert_eq!(
            w.keys.reads.get(),
            2,
            "one store read per key, then the cache"
        );
        let r = w.fetch("POST", "/v1/events", &Request::json(&json!({"event": "a"})));
        assert_eq!((r.status, error_code(&r)), (401, Some("missing_api_key")));
        let by_query = Request {
            query: Some(format!("key={KEY}")),
            ..Request::json(&json!({"event": "q"}))
        };
        assert_eq!(w.fetch("POST", "/v1/events", &by_query).status, 202);
    }

    #[test]
    fn a_malformed_key_record_denies_and_says_why() {
        let mut w = World::new();
        w.keys
            .records
            .insert(intake::credentials::key_hash(KEY), "{not json".into());
        let r = w.fetch("POST", "/v1/events", &events(json!({"event": "a"})));
        assert_eq!(r.status, 401);
        assert!(w.log.has("key_record_malformed"));
    }

    #[test]
    fn over_the_rate_limit_is_a_429_and_a_dead_key_store_a_503() {
        let mut w = World::new();
        w.keys.over_limit = true;
        let r = w.fetch("POST", "/v1/events", &events(json!({"event": "a"})));
        assert_eq!((r.status, error_code(&r)), (429, Some("rate_limited")));
        let retry_after: u32 = header(&r, "Retry-After").unwrap().parse().unwrap();
        assert!((1..=10).contains(&retry_after));

        let mut w = World::new();
        w.keys.unavailable = true;
        let r = w.fetch("POST", "/v1/events", &events(json!({"event": "a"})));
        assert_eq!(
            (r.status, error_code(&r)),
            (503, Some("key_store_unavailable"))
        );
    }

    #[test]
    fn invalid_events_are_refused_whole_on_events_and_as_400_on_segment() {
        let w = World::new();
        let r = w.fetch(
            "POST",
            "/v1/events",
            &events(json!([{"event": "ok"}, {"event": ""}])),
        );
        assert_eq!((r.status, error_code(&r)), (422, Some("invalid_events")));
        assert!(r.deferred.is_none());

        let segment =
            |body: Value| Request::json(&body).with("Authorization", &format!("Bearer {KEY}"));
        let r = w.fetch(
            "POST",
            "/v1/batch",
            &segment(json!({"batch": [{"type": "track", "userId": "u"}]})),
        );
        assert_eq!(
            r.status, 400,
            "Segment SDKs drop a 400 rather than retry: {:?}",
            r.body
        );
        let r = w.fetch(
            "POST",
            "/v1/track",
            &segment(json!({"userId": "u", "event": "Bought"})),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            w.queue.envelopes(),
            1,
            "the Segment door queues before answering"
        );
        assert_eq!(w.queue.envelopes(), 1);
    }

    #[test]
    fn segment_answers_503_when_the_queue_refuses() {
        let w = World::new();
        w.queue.failures.set(3);
        let req = Request::json(&json!({"userId": "u", "event": "Bought"}))
            .with("Authorization", &format!("Bearer {KEY}"));
        let r = w.fetch("POST", "/v1/track", &req);
        assert_eq!((r.status, error_code(&r)), (503, Some("queue_unavailable")));
    }

    #[test]
    fn settings_point_back_to_this_edge_for_active_keys_only() {
        let w = World::new();
        let r = w.fetch(
            "GET",
            &format!("/v1/projects/{KEY}/settings"),
            &Request::default(),
        );
        assert_eq!(r.status, 200);
        assert!(r.body.unwrap().to_string().contains("edge.example:8443"));
        let r = w.fetch("GET", "/v1/projects/sk_other/settings", &Request::default());
        assert_eq!((r.status, error_code(&r)), (404, Some("not_found")));
    }

    #[test]
    fn a_missing_queue_binding_is_a_logged_500() {
        let mut w = World::new();
        w.queue.missing = true;
        let r = w.fetch("POST", "/v1/events", &events(json!({"event": "a"})));
        assert_eq!((r.status, error_code(&r)), (500, Some("internal")));
        assert!(w.log.has("request_failed"));
    }

    #[test]
    fn a_body_cut_short_is_a_400_and_cors_follows_the_allow_list() {
        let w = World::new();
        let mut req = events(json!({"event": "a"}));
        req.body_error = Some(EdgeError::IncompleteBody {
            declared: Some(10),
            received: None,
        });
        let r = w.fetch("POST", "/v1/events", &req);
        assert_eq!((r.status, error_code(&r)), (400, Some("incomplete_body")));

        let from = |origin: &str| events(json!({"event": "a"})).with("Origin", origin);
        let r = w.fetch("POST", "/v1/events", &from("https://app.example"));
        assert_eq!(
            header(&r, "Access-Control-Allow-Origin"),
            Some("https://app.example")
        );
        let r = w.fetch("POST", "/v1/events", &from("https://evil.example"));
        assert_eq!(header(&r, "Access-Control-Allow-Origin"), None);
        let r = w.fetch(
            "OPTIONS",
            "/v1/events",
            &Request::default().with("Origin", "https://app.example"),
        );
        assert_eq!((r.status, r.body.is_none()), (204, true));
        assert!(header(&r, "Access-Control-Allow-Methods").is_some());
        assert_eq!(w.fetch("GET", "/healthz", &Request::default()).status, 200);
        let r = w.fetch("GET", "/v1/events", &Request::default());
        assert_eq!(
            (r.status, header(&r, "Allow")),
            (405, Some("POST, OPTIONS"))
        );
    }
}
