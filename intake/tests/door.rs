//! The door over in-memory ports: its tally for the delivery ledger (what
//! each request counts as accepted, rejected and dropped, under which
//! reason), and each environment's privacy policy applied before an event
//! leaves the door.

use std::cell::RefCell;

use futures_executor::block_on;
use intake::door::{
    Admitted, AllowedOrigins, Client, Clock, Doors, Keys, Log, Refused, Request, Settings, Sink,
    Tally,
};
use intake::enrich::{BotPolicy, BotSignal, GeoPolicy, IpPolicy, Policy};
use intake::{Error, Limits};
use serde_json::{json, Value};

const NOW: i64 = 1_700_000_000_000;

struct Req {
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    client: Client,
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
        self.client.clone()
    }
    async fn body(&self, limit: usize) -> Result<Vec<u8>, Error> {
        Ok(self.body.iter().copied().take(limit + 1).collect())
    }
}

/// `sk_good` writes to environment 7 (the default policy); `sk_busy` too,
/// but is over its limit. `sk_private` writes to 8, which stores no address,
/// no location and no bots; `sk_open` to 9, which keeps all of them.
struct TestKeys;

const PRIVATE: Policy = Policy {
    ip: IpPolicy::Drop,
    geo: GeoPolicy::None,
    bots: BotPolicy::Drop,
};
const OPEN: Policy = Policy {
    ip: IpPolicy::Keep,
    geo: GeoPolicy::Full,
    bots: BotPolicy::Keep,
};

impl Keys for TestKeys {
    async fn admit(&self, key: &str) -> Result<Admitted, Refused> {
        let admitted = |env_id, policy| Ok(Admitted { env_id, policy });
        match key {
            "sk_good" => admitted(7, Policy::default()),
            "sk_private" => admitted(8, PRIVATE),
            "sk_open" => admitted(9, OPEN),
            "sk_busy" => Err(Refused {
                error: Error::RateLimited { retry_after: 3 },
                env_id: Some(7),
            }),
            _ => Err(Error::InvalidKey.into()),
        }
    }
    async fn active(&self, key: &str) -> Result<bool, Error> {
        Ok(["sk_good", "sk_private", "sk_open"].contains(&key))
    }
}

#[derive(Default)]
struct TestSink {
    fail: bool,
    taken: RefCell<usize>,
    acceptances: RefCell<Vec<protocol::Acceptance>>,
    /// Every envelope handed over, as the queue would get it.
    envelopes: RefCell<Vec<protocol::Envelope>>,
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
        let n = envelopes.len();
        self.envelopes.borrow_mut().extend(envelopes);
        Ok(n)
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
    post_from(Client::default(), path, key, body, sink)
}

fn post_from(
    client: Client,
    path: &str,
    key: Option<&str>,
    body: &str,
    sink: &TestSink,
) -> (u16, Option<Tally>) {
    let mut headers = vec![("Content-Type", "application/json".to_owned())];
    if let Some(key) = key {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    let req = Req {
        headers,
        body: body.as_bytes().to_vec(),
        client,
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

const V4: &str = "203.0.113.77";
const V6: &str = "2001:db8:85a3:8d3:1319:8a2e:370:7348";

/// A client as the edge sees one: its address, and `request.cf` with a
/// location and (where asked) Bot Management's verdict.
fn client(ip: &str, verified_bot: bool) -> Client {
    Client::from_cf(
        &json!({"colo": "FRA", "country": "DE", "city": "Frankfurt am Main",
                "latitude": "50.1", "longitude": "8.6", "postalCode": "60313",
                "botManagement": {"verifiedBot": verified_bot, "score": 99}}),
        Some(ip.into()),
    )
}

fn handed_over(sink: &TestSink) -> String {
    serde_json::to_string(&*sink.envelopes.borrow()).unwrap()
}

#[test]
fn a_full_address_never_leaves_the_door_unless_the_environment_keeps_it() {
    for ip in [V4, V6] {
        // From the door's address, and from the client's own context.ip (Segment's SDKs send it).
        let own = json!([{"event": "a", "context": {"ip": ip}}]).to_string();
        let segment = |key: &str| {
            json!({"writeKey": key, "batch": [{"type": "track", "event": "a", "userId": "u",
                   "context": {"ip": ip}}, {"type": "track", "event": "b", "userId": "u"}]})
            .to_string()
        };
        let sink = TestSink::default();
        for (path, key, body, status) in [
            ("/v1/events", Some("sk_good"), events(1), 202),
            ("/v1/events", Some("sk_good"), own.clone(), 202),
            ("/v1/batch", None, segment("sk_good"), 200),
        ] {
            assert_eq!(
                post_from(client(ip, false), path, key, &body, &sink).0,
                status
            );
        }
        let text = handed_over(&sink);
        assert!(!text.contains(ip), "{text}");
        let truncated = if ip == V4 {
            "203.0.113.0"
        } else {
            "2001:db8:85a3::"
        };
        for e in sink.envelopes.borrow().iter() {
            assert_eq!(e.context["ip"], truncated, "{e:?}");
            assert_eq!(e.context["geo"]["city"], "Frankfurt am Main");
            assert!(
                e.context["geo"].get("latitude").is_none(),
                "city: no coordinates"
            );
        }

        let sink = TestSink::default();
        post_from(
            client(ip, false),
            "/v1/events",
            Some("sk_private"),
            &own,
            &sink,
        );
        post_from(
            client(ip, false),
            "/v1/batch",
            None,
            &segment("sk_private"),
            &sink,
        );
        assert_eq!(sink.envelopes.borrow().len(), 3);
        for e in sink.envelopes.borrow().iter() {
            for key in ["ip", "geo", "country"] {
                assert!(e.context.get(key).is_none(), "{key} in {e:?}");
            }
        }

        let sink = TestSink::default();
        post_from(
            client(ip, false),
            "/v1/events",
            Some("sk_open"),
            &events(1),
            &sink,
        );
        let e = &sink.envelopes.borrow()[0];
        assert_eq!(e.context["ip"], ip);
        assert_eq!(e.context["geo"]["postal_code"], "60313");
        assert!(e.context.get("bot").is_none(), "bots = keep: no verdict");
    }
}

#[test]
fn a_refused_requests_sample_keeps_no_full_address() {
    let body = format!(r#"[{{"event": "a", "context": {{"ip": "{V4}"}}}}, {{"event": 7}}]"#);
    let sink = TestSink::default();
    let (status, tally) = post("/v1/events", Some("sk_good"), &body, &sink);
    assert_eq!(status, 422);
    let sample = tally.unwrap().sample.unwrap();
    assert!(
        sample.body.contains("203.0.113.0") && !sample.body.contains(V4),
        "{}",
        sample.body
    );
    let (_, tally) = post("/v1/events", Some("sk_private"), &body, &sink);
    assert!(tally
        .unwrap()
        .sample
        .unwrap()
        .body
        .contains(r#""ip": "[ip]""#));
    let (_, tally) = post("/v1/events", Some("sk_open"), &body, &sink);
    assert!(tally.unwrap().sample.unwrap().body.contains(V4));
}

#[test]
fn bots_are_flagged_or_dropped_and_dropped_ones_counted() {
    let bot = client(V4, true);
    let sink = TestSink::default();
    let (status, tally) = post_from(
        bot.clone(),
        "/v1/events",
        Some("sk_good"),
        &events(2),
        &sink,
    );
    assert_eq!(status, 202);
    assert_eq!(tally.unwrap().dropped, None);
    assert!(sink
        .envelopes
        .borrow()
        .iter()
        .all(|e| e.context["bot"] == true));
    let human = Client {
        bot: BotSignal::default(),
        ..bot.clone()
    };
    post_from(
        human.clone(),
        "/v1/events",
        Some("sk_good"),
        &events(1),
        &sink,
    );
    assert_eq!(sink.envelopes.borrow()[2].context["bot"], false);

    // Dropped: answered as accepted, never handed over, counted for the ledger.
    let sink = TestSink::default();
    let (status, tally) = post_from(
        bot.clone(),
        "/v1/events",
        Some("sk_private"),
        &events(3),
        &sink,
    );
    assert_eq!(status, 202);
    let tally = tally.unwrap();
    assert_eq!(
        (tally.accepted, tally.dropped, tally.rejected),
        (3, Some(("bot", 3)), None)
    );
    assert_eq!(
        tally.acceptance, None,
        "nothing was handed over to carry one"
    );
    assert!(sink.envelopes.borrow().is_empty());
    let segment = json!({"writeKey": "sk_private", "batch": [
        {"type": "track", "event": "a", "userId": "u"}, {"type": "track", "userId": "u"}]})
    .to_string();
    let (status, tally) = post_from(bot, "/v1/batch", None, &segment, &sink);
    assert_eq!(status, 200);
    let tally = tally.unwrap();
    assert_eq!((tally.accepted, tally.dropped), (1, Some(("bot", 1))));
    assert_eq!(tally.rejected, Some(("invalid_events", 1)));
    assert!(sink.envelopes.borrow().is_empty());
    let (_, tally) = post_from(human, "/v1/events", Some("sk_private"), &events(2), &sink);
    assert_eq!(tally.unwrap().dropped, None);
    assert_eq!(sink.envelopes.borrow().len(), 2);
    assert!(sink
        .envelopes
        .borrow()
        .iter()
        .all(|e| e.context["bot"] == false));
}

#[test]
fn the_door_hands_the_raw_user_agent_on_for_the_write_to_parse() {
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let body = |key: &str| {
        json!({"writeKey": key, "batch": [
            {"type": "track", "event": "crawl", "userId": "u", "context": {"userAgent": GOOGLEBOT}}]})
        .to_string()
    };
    // Bot Management (score 99, not verified) says human; the parser's verdict
    // comes at the write (`enrich::at_write`), so even a `bots = drop`
    // environment's door hands a crawler's event on.
    for key in ["sk_good", "sk_private"] {
        let sink = TestSink::default();
        let (status, tally) = post_from(client(V4, false), "/v1/batch", None, &body(key), &sink);
        assert_eq!(status, 200);
        assert_eq!(tally.unwrap().dropped, None, "{key}");
        let stored = sink.envelopes.borrow();
        assert_eq!(stored.len(), 1, "{key}");
        assert_eq!(stored[0].context["user_agent"], GOOGLEBOT);
        assert_eq!(stored[0].context["bot"], false);
        assert!(
            stored[0].context.get("ua").is_none(),
            "{key}: not parsed at the door"
        );
    }
}
