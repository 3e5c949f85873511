//! The door's tally for the delivery ledger: what each request counts as
//! accepted and rejected (and under which reason), over in-memory ports.

use std::cell::RefCell;

use futures_executor::block_on;
use intake::door::{
    AllowedOrigins, Client, Clock, Doors, Keys, Log, Refused, Request, Settings, Sink, Tally,
};
use intake::{Error, Limits};
use serde_json::{json, Value};

const NOW: i64 = 1_700_000_000_000;

struct Req {
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Request for Req {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
    fn query(&self) -> Option<String> {
        None
    }
    fn scheme_and_host(&self) -> (String, String) {
        ("https".into(), "in.example".into())
    }
    fn client(&self) -> Client {
        Client::default()
    }
    async fn body(&self, limit: usize) -> Result<Vec<u8>, Error> {
        Ok(self.body.iter().copied().take(limit + 1).collect())
    }
}

/// `sk_good` writes to environment 7; `sk_busy` too, but is over its limit.
struct TestKeys;

impl Keys for TestKeys {
    async fn admit(&self, key: &str) -> Result<u32, Refused> {
        match key {
            "sk_good" => Ok(7),
            "sk_busy" => Err(Refused {
                error: Error::RateLimited { retry_after: 3 },
                env_id: Some(7),
            }),
            _ => Err(Error::InvalidKey.into()),
        }
    }
    async fn active(&self, key: &str) -> Result<bool, Error> {
        Ok(key == "sk_good")
    }
}

#[derive(Default)]
struct TestSink {
    fail: bool,
    taken: RefCell<usize>,
    acceptances: RefCell<Vec<protocol::Acceptance>>,
}

impl Sink for TestSink {
    type Pending = usize;
    fn prepare(&self, _env: u32, envelopes: Vec<protocol::Envelope>) -> Result<usize, Error> {
        if self.fail {
            return Err(Error::QueueUnavailable);
        }
        self.acceptances
            .borrow_mut()
            .extend(envelopes.iter().filter_map(|e| e.acceptance.clone()));
        Ok(envelopes.len())
    }
    async fn commit(&self, n: usize) -> Result<(), Error> {
        *self.taken.borrow_mut() += n;
        Ok(())
    }
    fn answers_early(&self) -> bool {
        false
    }
}

struct Fixed;
impl Clock for Fixed {
    fn now_ms(&self) -> i64 {
        NOW
    }
    fn random10(&self) -> [u8; 10] {
        [7; 10]
    }
}

struct Quiet;
impl Log for Quiet {
    fn info(&self, _: &str, _: Value) {}
    fn error(&self, _: &str, _: Value) {}
}

fn post(path: &str, key: Option<&str>, body: &str, sink: &TestSink) -> (u16, Option<Tally>) {
    let mut headers = vec![("Content-Type", "application/json".to_owned())];
    if let Some(key) = key {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    let req = Req {
        headers,
        body: body.as_bytes().to_vec(),
    };
    let settings = Settings {
        limits: Limits::default(),
        allowed_origins: AllowedOrigins::Any,
    };
    let doors = Doors {
        settings: &settings,
        keys: &TestKeys,
        sink,
        clock: &Fixed,
        log: &Quiet,
    };
    let answer = block_on(doors.fetch("POST", path, &req));
    (answer.status, answer.tally)
}

fn events(n: usize) -> String {
    let list: Vec<Value> = (0..n).map(|i| json!({"event": format!("e{i}")})).collect();
    Value::Array(list).to_string()
}

#[test]
fn accepted_events_are_counted_with_the_receive_time() {
    let sink = TestSink::default();
    let (status, tally) = post("/v1/events", Some("sk_good"), &events(3), &sink);
    assert_eq!(status, 202);
    let tally = tally.expect("a tally");
    assert_eq!(
        (tally.env_id, tally.received_at, tally.accepted),
        (7, NOW, 3)
    );
    assert_eq!(tally.rejected, None);
    assert_eq!(tally.sample, None);
    let acceptance = tally.acceptance.expect("an acceptance");
    assert_eq!(acceptance.n, 3);
    assert_eq!(acceptance.id.len(), 32);
    assert!(sink.acceptances.borrow().iter().all(|a| *a == acceptance));
    assert_eq!(
        sink.acceptances.borrow().len(),
        3,
        "every envelope carries it"
    );
}

#[test]
fn a_refused_request_counts_each_of_its_events_under_its_code() {
    let sink = TestSink::default();
    let body = json!([{"event": "ok"}, {"event": ""}, {"event": "ok2"}]).to_string();
    let (status, tally) = post("/v1/events", Some("sk_good"), &body, &sink);
    assert_eq!(status, 422);
    let tally = tally.expect("a tally");
    assert_eq!(tally.accepted, 0);
    assert_eq!(tally.rejected, Some(("invalid_events", 3)));
    let sample = tally.sample.expect("a sample");
    assert_eq!(sample.code, "invalid_events");
    assert_eq!(sample.body, body);
    assert!(sample.message.contains("invalid"), "{}", sample.message);

    let (_, tally) = post("/v1/events", Some("sk_good"), &events(1001), &sink);
    assert_eq!(tally.unwrap().rejected, Some(("too_many_events", 1001)));
}

#[test]
fn a_body_that_is_not_events_counts_as_one() {
    let sink = TestSink::default();
    let (status, tally) = post("/v1/events", Some("sk_good"), "{not json", &sink);
    assert_eq!(status, 400);
    let tally = tally.unwrap();
    assert_eq!(tally.rejected, Some(("invalid_json", 1)));
    assert_eq!(tally.sample.unwrap().body, "{not json");
}

#[test]
fn samples_are_cut_to_two_kilobytes_on_a_character_boundary() {
    let sink = TestSink::default();
    let body = format!("[{}", "é".repeat(3000));
    let (_, tally) = post("/v1/events", Some("sk_good"), &body, &sink);
    let sample = tally.unwrap().sample.unwrap();
    assert!(sample.body.len() <= protocol::MAX_SAMPLE_BYTES);
    assert!(sample.body.len() >= protocol::MAX_SAMPLE_BYTES - 1);
    assert!(sample.body.starts_with("[é"));
}

#[test]
fn a_rate_limited_key_is_counted_for_its_environment_an_unknown_key_is_not() {
    let sink = TestSink::default();
    let (status, tally) = post("/v1/events", Some("sk_busy"), &events(2), &sink);
    assert_eq!(status, 429);
    let tally = tally.expect("the key's environment is known");
    assert_eq!(
        (tally.env_id, tally.rejected),
        (7, Some(("rate_limited", 1)))
    );

    let (status, tally) = post("/v1/events", Some("sk_nope"), &events(2), &sink);
    assert_eq!((status, tally), (401, None));
    let (status, tally) = post("/v1/events", None, &events(2), &sink);
    assert_eq!((status, tally), (401, None));
}

#[test]
fn a_sink_that_fails_rejects_every_event_under_its_code() {
    let sink = TestSink {
        fail: true,
        ..TestSink::default()
    };
    let (status, tally) = post("/v1/events", Some("sk_good"), &events(4), &sink);
    assert_eq!(status, 503);
    assert_eq!(tally.unwrap().rejected, Some(("queue_unavailable", 4)));
}

#[test]
fn segment_partial_batches_count_both_sides() {
    let sink = TestSink::default();
    let body = json!({"writeKey": "sk_good", "batch": [
        {"type": "track", "event": "ok", "userId": "u", "messageId": "m1"},
        {"type": "track", "userId": "u", "messageId": "m2"},
        {"type": "identify", "userId": "u", "messageId": "m3"},
        {"type": "bogus", "userId": "u", "messageId": "m4"}
    ]})
    .to_string();
    let (status, tally) = post("/v1/batch", None, &body, &sink);
    assert_eq!(status, 200);
    let tally = tally.unwrap();
    assert_eq!(tally.accepted, 2);
    assert_eq!(tally.rejected, Some(("invalid_events", 2)));
    let sample = tally.sample.unwrap();
    assert!(
        sample.message.starts_with("message 1: "),
        "{}",
        sample.message
    );
    assert_eq!(*sink.taken.borrow(), 2);

    // Unparseable: no write key to attribute it to.
    let (status, tally) = post("/v1/batch", None, "{", &sink);
    assert_eq!((status, tally), (400, None));
    // All invalid: every message under invalid_events.
    let body =
        json!({"writeKey": "sk_good", "batch": [{"type": "track"}, {"type": "x"}]}).to_string();
    let (status, tally) = post("/v1/batch", None, &body, &sink);
    assert_eq!(status, 400);
    assert_eq!(tally.unwrap().rejected, Some(("invalid_events", 2)));
}
