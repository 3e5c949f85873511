//! Request body → envelopes: decode, parse, validate (all or nothing), enrich.

use crate::time::parse_value as parse_time;
use protocol::{timestamp_in_range, uuid_v7, Envelope, MAX_FIELD_LEN, MAX_ID_LEN, MAX_NAME_LEN};
use serde_json::{Map, Value};

use crate::enrich::Enrichment;
use crate::text;
use crate::Limits;
use crate::{Detail, Error};

/// At most this many per-event reasons go back to the client.
pub const MAX_DETAILS: usize = 100;

/// The fields of one `/v1/events` event (any other is refused); the OpenAPI
/// description lists these.
pub const EVENT_FIELDS: [&str; 8] = [
    "event",
    "id",
    "timestamp",
    "user_id",
    "anonymous_id",
    "session_id",
    "properties",
    "context",
];

/// What the door knows about the request beyond its body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    pub env_id: u32,
    /// Door receive time, ms since the epoch.
    pub received_at: i64,
    /// The request's `User-Agent`, cut to [`crate::door::MAX_USER_AGENT_CHARS`].
    pub user_agent: Option<String>,
    /// Where the request came from, under the environment's policy.
    pub enrichment: Enrichment,
}

impl Meta {
    /// What the door knows goes into an event's context: the client's
    /// address, country, colo and location as the environment's policy
    /// allows ([`Enrichment::apply`]), the raw user agent (the client's own
    /// `user_agent`, else `client_user_agent`, else the request's), and the
    /// runtime's bot verdict. Both doors enrich through here; the verdict is
    /// returned. The user agent is parsed later, at the backend's write
    /// ([`crate::enrich::at_write`]): the parser stays out of the worker.
    pub fn enrich(
        &self,
        context: &mut Map<String, Value>,
        client_user_agent: Option<&str>,
    ) -> bool {
        self.enrichment.apply(context);
        if let Some(ua) = client_user_agent.or(self.user_agent.as_deref()) {
            context
                .entry("user_agent")
                .or_insert_with(|| Value::String(ua.to_owned()));
        }
        self.enrichment.judge(context)
    }
}

/// The events of one request and the client's send time, if it gave one.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub events: Vec<Value>,
    pub sent_at: Option<i64>,
}

/// `application/json` or `text/plain` (what `navigator.sendBeacon` sends for a string).
pub fn check_content_type(content_type: Option<&str>) -> Result<(), Error> {
    let raw = content_type.unwrap_or("");
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" | "text/plain" => Ok(()),
        _ => Err(Error::UnsupportedMediaType(raw.chars().take(100).collect())),
    }
}

/// Rejects a declared length over the limit before the body is read.
pub fn check_content_length(content_length: Option<&str>, limits: &Limits) -> Result<(), Error> {
    match declared_length(content_length) {
        Some(n) if n > limits.max_body_bytes as u64 => {
            Err(Error::BodyTooLarge(limits.max_body_bytes))
        }
        _ => Ok(()),
    }
}

/// The `Content-Length` a request declares, if it is a number.
pub fn declared_length(content_length: Option<&str>) -> Option<u64> {
    content_length.and_then(|v| v.trim().parse::<u64>().ok())
}

/// Refuses a body shorter than its declared length (a runtime that hands
/// over what arrived before the client closed, instead of failing the read).
pub fn check_complete(received: usize, declared: Option<u64>) -> Result<(), Error> {
    match declared {
        Some(d) if (received as u64) < d => Err(Error::IncompleteBody {
            declared: Some(d),
            received: Some(received),
        }),
        _ => Ok(()),
    }
}

/// The body as sent, or gunzipped; never more than `max` bytes either way.
pub fn decode_body(
    raw: Vec<u8>,
    content_encoding: Option<&str>,
    max: usize,
) -> Result<Vec<u8>, Error> {
    if raw.len() > max {
        return Err(Error::BodyTooLarge(max));
    }
    let encoding = content_encoding.unwrap_or("").trim().to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => crate::body::gunzip(&raw, max),
        other => Err(Error::UnsupportedEncoding(other.chars().take(50).collect())),
    }
}

/// Accepts one event object, an array of events, or `{"batch": [...], "sentAt": ...}`,
/// within the limits ([`shape`], then [`check_limits`]).
pub fn parse(body: &[u8], limits: &Limits) -> Result<Payload, Error> {
    let payload = shape(body)?;
    check_limits(&payload, limits)?;
    Ok(payload)
}

/// The events of a body, whatever their number and size.
pub fn shape(body: &[u8]) -> Result<Payload, Error> {
    let value = crate::json::parse(body)?;
    let payload = match value {
        Value::Array(events) => Payload {
            events,
            sent_at: None,
        },
        Value::Object(mut map) if map.contains_key("batch") => {
            if let Some(key) = map.keys().find(|k| *k != "batch" && *k != "sentAt") {
                return Err(Error::InvalidBody(format!(
                    "unknown field `{key}` in batch body (expected `batch`, `sentAt`)"
                )));
            }
            let sent_at = match map.remove("sentAt") {
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_time(&v).ok_or_else(|| {
                    Error::InvalidBody("`sentAt` must be RFC 3339 or epoch milliseconds".into())
                })?),
            };
            match map.remove("batch") {
                Some(Value::Array(events)) => Payload { events, sent_at },
                _ => {
                    return Err(Error::InvalidBody(
                        "`batch` must be an array of events".into(),
                    ))
                }
            }
        }
        event @ Value::Object(_) => Payload {
            events: vec![event],
            sent_at: None,
        },
        _ => {
            return Err(Error::InvalidBody(
                "body must be an event object, an array of events, or {\"batch\": [...]}".into(),
            ))
        }
    };
    Ok(payload)
}

/// The number of events and each event's size.
pub fn check_limits(payload: &Payload, limits: &Limits) -> Result<(), Error> {
    if payload.events.is_empty() {
        return Err(Error::EmptyBatch);
    }
    if payload.events.len() > limits.max_events {
        return Err(Error::TooManyEvents(limits.max_events));
    }
    let too_large: Vec<Detail> = payload
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            // The length of the event's compact JSON text, counted as it
            // is written (no copy of the text is made just to measure it).
            let size = crate::json::compact_len(e).unwrap_or(usize::MAX);
            (size > limits.max_event_bytes).then(|| {
                Detail::new(
                    i,
                    format!(
                        "event is {size} bytes, over the {} byte limit",
                        limits.max_event_bytes
                    ),
                )
            })
        })
        .take(MAX_DETAILS)
        .collect();
    if !too_large.is_empty() {
        return Err(Error::EventTooLarge(too_large));
    }
    Ok(())
}

/// Validates every event and turns them into envelopes; one bad event rejects
/// the whole request, with a reason per bad event.
pub fn build(
    payload: Payload,
    meta: &Meta,
    mut random: impl FnMut() -> [u8; 10],
) -> Result<Vec<Envelope>, Error> {
    let skew = payload
        .sent_at
        .map(|sent| meta.received_at.saturating_sub(sent));
    let mut envelopes = Vec::with_capacity(payload.events.len());
    let mut details = Vec::new();
    for (index, event) in payload.events.into_iter().enumerate() {
        match envelope(event, meta, skew, &mut random) {
            Ok(env) => envelopes.push(env),
            Err(reasons) => {
                details.extend(reasons.into_iter().map(|r| Detail::new(index, r)));
            }
        }
    }
    if details.is_empty() {
        Ok(envelopes)
    } else {
        details.truncate(MAX_DETAILS);
        Err(Error::InvalidEvents(details))
    }
}

fn envelope(
    event: Value,
    meta: &Meta,
    skew: Option<i64>,
    random: &mut impl FnMut() -> [u8; 10],
) -> Result<Envelope, Vec<String>> {
    let Value::Object(map) = event else {
        return Err(vec!["event must be a JSON object".into()]);
    };
    let mut reasons = Vec::new();
    // One pass over the fields, in the map's order (unknown ones are named
    // in that order, as before), instead of a lookup and removal for each.
    let mut fields: [Option<Value>; EVENT_FIELDS.len()] = Default::default();
    for (key, value) in map {
        match EVENT_FIELDS.iter().position(|f| *f == key) {
            Some(i) => fields[i] = Some(value),
            None => reasons.push(format!("unknown field `{key}`")),
        }
    }
    let [event, id, timestamp, user_id, anonymous_id, session_id, properties, context] = fields;

    let name = match event {
        Some(Value::String(s)) => check_text(&s, "event", MAX_NAME_LEN, &mut reasons).then_some(s),
        None | Some(Value::Null) => {
            reasons.push("`event` is required".into());
            None
        }
        Some(_) => {
            reasons.push("`event` must be a string".into());
            None
        }
    };
    let id = match id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => check_text(&s, "id", MAX_ID_LEN, &mut reasons).then_some(s),
        Some(_) => {
            reasons.push("`id` must be a string".into());
            None
        }
    };
    let timestamp = match timestamp {
        None | Some(Value::Null) => Some(meta.received_at),
        Some(v) => match parse_time(&v) {
            Some(t) => {
                let corrected = t.saturating_add(skew.unwrap_or(0));
                if timestamp_in_range(corrected) {
                    Some(corrected)
                } else {
                    reasons
                        .push("`timestamp` is out of range once corrected for clock skew".into());
                    None
                }
            }
            None => {
                reasons.push("`timestamp` must be RFC 3339 text or epoch milliseconds".into());
                None
            }
        },
    };
    let user_id = optional_id(user_id, "user_id", &mut reasons);
    let anonymous_id = optional_id(anonymous_id, "anonymous_id", &mut reasons);
    let session_id = optional_id(session_id, "session_id", &mut reasons);
    let properties = object(properties, "properties", &mut reasons);
    let mut context = object(context, "context", &mut reasons);

    let (Some(name), Some(timestamp)) = (name, timestamp) else {
        return Err(reasons);
    };
    if !reasons.is_empty() {
        return Err(reasons);
    }
    meta.enrich(&mut context, None);
    let id = id.unwrap_or_else(|| uuid_v7(u64::try_from(meta.received_at).unwrap_or(0), &random()));
    let envelope = Envelope {
        id,
        env_id: meta.env_id,
        name,
        timestamp,
        received_at: meta.received_at,
        user_id,
        anonymous_id,
        session_id,
        properties,
        context,
        ..Envelope::default()
    };
    envelope.validate().map_err(|e| vec![e.to_string()])?;
    Ok(envelope)
}

fn check_text(value: &str, field: &str, max: usize, reasons: &mut Vec<String>) -> bool {
    match text::check(value, field, max) {
        Ok(()) => true,
        Err(reason) => {
            reasons.push(reason);
            false
        }
    }
}

/// A string, or an integer taken as its decimal text (SDKs send numeric user ids).
fn optional_id(value: Option<Value>, field: &str, reasons: &mut Vec<String>) -> Option<String> {
    let text = match value {
        None | Some(Value::Null) => return None,
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => {
            reasons.push(format!("`{field}` must be a string"));
            return None;
        }
    };
    check_text(&text, field, MAX_FIELD_LEN, reasons).then_some(text)
}

fn object(value: Option<Value>, field: &str, reasons: &mut Vec<String>) -> Map<String, Value> {
    match value {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => {
            reasons.push(format!("`{field}` must be an object"));
            Map::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000_000;

    fn meta() -> Meta {
        let client = crate::enrich::Client {
            ip: None,
            colo: Some("FRA".into()),
            geo: crate::enrich::Geo {
                country: Some("DE".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Meta {
            env_id: 7,
            received_at: NOW,
            user_agent: Some("test-agent/1".into()),
            enrichment: crate::enrich::Enrichment::new(client, Default::default()),
        }
    }

    fn limits() -> Limits {
        Limits::default()
    }

    fn zeros() -> [u8; 10] {
        [0; 10]
    }

    fn ingest(body: Value) -> Result<Vec<Envelope>, Error> {
        let payload = parse(body.to_string().as_bytes(), &limits())?;
        build(payload, &meta(), zeros)
    }

    fn details(err: Error) -> Vec<Detail> {
        match err {
            Error::InvalidEvents(d) | Error::EventTooLarge(d) => d,
            other => panic!("expected details, got {other:?}"),
        }
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(Some("application/json")).is_ok());
        assert!(check_content_type(Some("Application/JSON; charset=utf-8")).is_ok());
        assert!(check_content_type(Some("text/plain;charset=UTF-8")).is_ok());
        assert_eq!(
            check_content_type(Some("application/x-www-form-urlencoded")),
            Err(Error::UnsupportedMediaType(
                "application/x-www-form-urlencoded".into()
            ))
        );
        assert!(check_content_type(None).is_err());
    }

    #[test]
    fn declared_length_over_limit_is_refused_early() {
        let l = limits();
        assert!(check_content_length(Some("100"), &l).is_ok());
        assert!(check_content_length(None, &l).is_ok());
        assert!(check_content_length(Some("junk"), &l).is_ok());
        assert_eq!(
            check_content_length(Some(&(l.max_body_bytes + 1).to_string()), &l),
            Err(Error::BodyTooLarge(l.max_body_bytes))
        );
    }

    #[test]
    fn a_body_shorter_than_declared_is_incomplete() {
        assert_eq!(declared_length(Some(" 42 ")), Some(42));
        assert_eq!(declared_length(Some("junk")), None);
        assert_eq!(declared_length(None), None);
        assert!(check_complete(42, Some(42)).is_ok());
        assert!(check_complete(0, None).is_ok());
        // More than declared is the runtime's business (it never hands us that).
        assert!(check_complete(50, Some(42)).is_ok());
        let e = check_complete(10, Some(42)).unwrap_err();
        assert_eq!(
            e,
            Error::IncompleteBody {
                declared: Some(42),
                received: Some(10)
            }
        );
        assert_eq!((e.status(), e.code()), (400, "incomplete_body"));
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_bodies_are_inflated_within_the_cap() {
        let body = br#"{"event":"x"}"#.to_vec();
        assert_eq!(decode_body(gzip(&body), Some("gzip"), 100).unwrap(), body);
        assert_eq!(decode_body(body.clone(), None, 100).unwrap(), body);
        assert_eq!(
            decode_body(body.clone(), Some("identity"), 100).unwrap(),
            body
        );
        // A small bomb: 2 MiB of zeros compress to a few KiB.
        let bomb = gzip(&vec![b'0'; 2 * 1024 * 1024]);
        assert!(bomb.len() < 10_000);
        assert_eq!(
            decode_body(bomb, Some("gzip"), 1024 * 1024),
            Err(Error::BodyTooLarge(1024 * 1024))
        );
        // Exactly at the cap is fine.
        let exact = gzip(&vec![b' '; 1000]);
        assert_eq!(decode_body(exact, Some("gzip"), 1000).unwrap().len(), 1000);
        assert!(matches!(
            decode_body(b"not gzip".to_vec(), Some("gzip"), 100),
            Err(Error::BadGzip(_))
        ));
        assert_eq!(
            decode_body(body.clone(), Some("br"), 100),
            Err(Error::UnsupportedEncoding("br".into()))
        );
        assert_eq!(
            decode_body(vec![b' '; 101], None, 100),
            Err(Error::BodyTooLarge(100))
        );
    }

    #[test]
    fn three_body_shapes() {
        let one = parse(br#"{"event":"a"}"#, &limits()).unwrap();
        assert_eq!(one.events.len(), 1);
        assert_eq!(one.sent_at, None);
        let array = parse(br#"[{"event":"a"},{"event":"b"}]"#, &limits()).unwrap();
        assert_eq!(array.events.len(), 2);
        let batch = parse(
            br#"{"batch":[{"event":"a"}],"sentAt":"2023-11-14T22:13:20.000Z"}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.sent_at, Some(NOW));
        let batch_ms = parse(
            br#"{"batch":[{"event":"a"}],"sentAt":1700000000000}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(batch_ms.sent_at, Some(NOW));
    }

    #[test]
    fn malformed_bodies() {
        let l = limits();
        assert!(matches!(parse(b"", &l), Err(Error::InvalidJson(_))));
        assert!(matches!(parse(b"{", &l), Err(Error::InvalidJson(_))));
        assert!(matches!(parse(b"42", &l), Err(Error::InvalidBody(_))));
        assert!(matches!(parse(b"\"x\"", &l), Err(Error::InvalidBody(_))));
        assert_eq!(parse(b"[]", &l), Err(Error::EmptyBatch));
        assert_eq!(parse(br#"{"batch":[]}"#, &l), Err(Error::EmptyBatch));
        assert!(matches!(
            parse(br#"{"batch":{}}"#, &l),
            Err(Error::InvalidBody(_))
        ));
        assert!(matches!(
            parse(br#"{"batch":[{"event":"a"}],"sentAt":"yesterday"}"#, &l),
            Err(Error::InvalidBody(_))
        ));
        assert!(matches!(
            parse(br#"{"batch":[{"event":"a"}],"extra":1}"#, &l),
            Err(Error::InvalidBody(_))
        ));
    }

    #[test]
    fn duplicate_keys_are_invalid_json_at_any_depth() {
        let l = limits();
        for (body, key) in [
            (r#"{"event":"a","event":"b"}"#, "event"),
            (r#"[{"event":"a","user_id":"u","user_id":"v"}]"#, "user_id"),
            (
                r#"{"event":"a","properties":{"plan":"free","plan":"pro"}}"#,
                "plan",
            ),
            (
                r#"{"event":"a","context":{"page":{"url":"/a","url":"/b"}}}"#,
                "url",
            ),
            (
                r#"{"batch":[{"event":"a"}],"batch":[{"event":"b"}]}"#,
                "batch",
            ),
            (
                r#"{"sentAt":1,"batch":[{"event":"a"}],"sentAt":2}"#,
                "sentAt",
            ),
        ] {
            match parse(body.as_bytes(), &l) {
                Err(e @ Error::InvalidJson(_)) => {
                    assert_eq!(e.status(), 400);
                    assert_eq!(e.code(), "invalid_json");
                    assert!(
                        e.to_string().contains(&format!("duplicate key `{key}`")),
                        "{body}: {e}"
                    );
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn event_count_limit() {
        let mut l = limits();
        l.max_events = 3;
        let ok = json!([{"event":"a"},{"event":"a"},{"event":"a"}]).to_string();
        assert!(parse(ok.as_bytes(), &l).is_ok());
        let over = json!([{"event":"a"},{"event":"a"},{"event":"a"},{"event":"a"}]).to_string();
        assert_eq!(parse(over.as_bytes(), &l), Err(Error::TooManyEvents(3)));
        let default_over: Vec<Value> = (0..1001).map(|_| json!({"event":"a"})).collect();
        assert_eq!(
            parse(Value::Array(default_over).to_string().as_bytes(), &limits()),
            Err(Error::TooManyEvents(1000))
        );
    }

    #[test]
    fn event_size_limit_names_the_events() {
        let big = "x".repeat(33 * 1024);
        let body = json!([{"event":"a"}, {"event":"b","properties":{"blob": big}}]).to_string();
        let err = parse(body.as_bytes(), &limits()).unwrap_err();
        assert_eq!(err.status(), 413);
        let d = details(err);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].index, 1);
        // Just under the limit passes.
        let fits = "x".repeat(32 * 1024 - 100);
        let body = json!({"event":"b","properties":{"blob": fits}}).to_string();
        assert!(parse(body.as_bytes(), &limits()).is_ok());
    }

    /// The size is that of the event's compact JSON text, whatever the
    /// client's spacing and escapes: an event of exactly the limit passes,
    /// one byte more is refused, and the answer names the size.
    #[test]
    fn an_event_exactly_at_the_limit_passes_and_one_byte_more_does_not() {
        let limit = limits().max_event_bytes;
        let compact = |blob: &str| json!({"event": "b", "properties": {"blob": blob}}).to_string();
        let fill = limit - compact("").len();
        for extra in [0, 1] {
            let blob = "x".repeat(fill + extra);
            assert_eq!(compact(&blob).len(), limit + extra);
            // Spaced out, and the blob's first 100 characters escaped: the
            // text sent is longer than what is measured.
            let escaped = "\\u0078".repeat(100) + &blob[100..];
            let sent =
                format!(r#"{{ "event" : "b" , "properties" : {{ "blob" : "{escaped}" }} }}"#);
            assert!(sent.len() > limit + extra + 500);
            for body in [sent.clone(), format!(r#"{{"batch": [{sent}]}}"#)] {
                match (extra, parse(body.as_bytes(), &limits())) {
                    (0, Ok(payload)) => assert_eq!(payload.events.len(), 1),
                    (1, Err(err)) => {
                        assert_eq!(err.status(), 413);
                        let d = details(err);
                        assert_eq!(d[0].index, 0);
                        assert_eq!(
                            d[0].reason,
                            format!("event is {} bytes, over the {limit} byte limit", limit + 1)
                        );
                    }
                    (extra, other) => panic!("{extra} byte(s) over: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn enriches_a_minimal_event() {
        let envs = ingest(json!({"event": "signup"})).unwrap();
        assert_eq!(envs.len(), 1);
        let e = &envs[0];
        assert_eq!(e.name, "signup");
        assert_eq!(e.env_id, 7);
        assert_eq!(e.timestamp, NOW, "no timestamp means receive time");
        assert_eq!(e.received_at, NOW);
        assert_eq!(e.context["country"], "DE");
        assert_eq!(e.context["colo"], "FRA");
        assert_eq!(e.context["user_agent"], "test-agent/1");
        assert!(protocol::is_uuid(&e.id));
        assert_eq!(&e.id[14..15], "7", "a UUIDv7");
        assert!(e.properties.is_empty());
    }

    #[test]
    fn keeps_every_client_field() {
        let envs = ingest(json!({
            "event": "purchase",
            "id": "order-42",
            "timestamp": "2023-11-14T22:13:19.500Z",
            "user_id": 12345,
            "anonymous_id": "anon",
            "session_id": "s1",
            "properties": {"amount": 12.5},
            "context": {"user_agent": "sdk-ua", "country": "spoofed", "library": "js"}
        }))
        .unwrap();
        let e = &envs[0];
        assert_eq!(e.id, "order-42");
        assert_eq!(e.timestamp, NOW - 500);
        assert_eq!(e.user_id.as_deref(), Some("12345"));
        assert_eq!(e.anonymous_id.as_deref(), Some("anon"));
        assert_eq!(e.session_id.as_deref(), Some("s1"));
        assert_eq!(e.properties["amount"], 12.5);
        assert_eq!(
            e.context["user_agent"], "sdk-ua",
            "a client's own user agent wins"
        );
        assert_eq!(e.context["country"], "DE", "the edge's country wins");
        assert_eq!(e.context["library"], "js");
    }

    #[test]
    fn skew_correction_uses_sent_at() {
        // The client's clock is 10 s behind: it sent at NOW-10s by its clock.
        let envs = ingest(json!({
            "sentAt": NOW - 10_000,
            "batch": [
                {"event": "a", "timestamp": NOW - 15_000},
                {"event": "b"}
            ]
        }))
        .unwrap();
        assert_eq!(envs[0].timestamp, NOW - 5_000);
        assert_eq!(
            envs[1].timestamp, NOW,
            "no timestamp: receive time, no correction"
        );
        // A clock ahead of ours corrects the other way.
        let envs = ingest(json!({
            "sentAt": "2023-11-14T22:13:30Z",
            "batch": [{"event": "a", "timestamp": "2023-11-14T22:13:29Z"}]
        }))
        .unwrap();
        assert_eq!(envs[0].timestamp, NOW - 1_000);
    }

    #[test]
    fn skew_that_leaves_the_range_is_refused() {
        let err =
            ingest(json!({"sentAt": NOW + 10_000, "batch": [{"event": "a", "timestamp": 5}]}))
                .unwrap_err();
        assert_eq!(err.status(), 422);
        assert!(details(err)[0].reason.contains("out of range"));
    }

    /// Found by `fuzz/` (edge_request): `received_at - sentAt` overflowed
    /// (a panic with overflow checks, a wrapped skew without).
    #[test]
    fn extreme_sent_at_is_refused_not_overflowed() {
        let body = br#"{"sentAt":-9223372036854775808,"batch":[{"event":"a","timestamp":1}]}"#;
        let payload = parse(body, &limits()).unwrap();
        assert_eq!(payload.sent_at, Some(i64::MIN));
        let err = build(payload, &meta(), zeros).unwrap_err();
        assert!(details(err)[0].reason.contains("out of range"));
    }

    #[test]
    fn ids_are_random_per_event() {
        let payload = parse(br#"[{"event":"a"},{"event":"b"}]"#, &limits()).unwrap();
        let mut n = 0u8;
        let envs = build(payload, &meta(), || {
            n += 1;
            [n; 10]
        })
        .unwrap();
        assert_ne!(envs[0].id, envs[1].id);
    }

    #[test]
    fn every_validation_branch_reports_index_and_reason() {
        let cases: Vec<(Value, &str)> = vec![
            (json!("string"), "must be a JSON object"),
            (json!({}), "`event` is required"),
            (json!({"event": null}), "`event` is required"),
            (json!({"event": 5}), "`event` must be a string"),
            (json!({"event": ""}), "`event` must not be empty"),
            (json!({"event": "x".repeat(201)}), "longer than 200"),
            (json!({"event": "a\u{7}b"}), "control character"),
            (json!({"event": "a", "id": 5}), "`id` must be a string"),
            (json!({"event": "a", "id": ""}), "`id` must not be empty"),
            (
                json!({"event": "a", "id": "i".repeat(65)}),
                "longer than 64",
            ),
            (json!({"event": "a", "timestamp": "soon"}), "RFC 3339"),
            (json!({"event": "a", "timestamp": -1}), "out of range"),
            (
                json!({"event": "a", "timestamp": 253_402_300_800_000i64}),
                "out of range",
            ),
            (
                json!({"event": "a", "user_id": true}),
                "`user_id` must be a string",
            ),
            (
                json!({"event": "a", "user_id": 1.5}),
                "`user_id` must be a string",
            ),
            (
                json!({"event": "a", "anonymous_id": "x".repeat(201)}),
                "longer than 200",
            ),
            (
                json!({"event": "a", "session_id": ""}),
                "`session_id` must not be empty",
            ),
            (
                json!({"event": "a", "properties": []}),
                "`properties` must be an object",
            ),
            (
                json!({"event": "a", "context": "x"}),
                "`context` must be an object",
            ),
            (
                json!({"event": "a", "surprise": 1}),
                "unknown field `surprise`",
            ),
            (json!({"event": "\u{200b}"}), "`event` must not be blank"),
            (
                json!({"event": " \u{a0}\u{feff}\u{2060}"}),
                "`event` must not be blank",
            ),
            (
                json!({"event": "a", "id": "\u{200c}\u{200d}"}),
                "`id` must not be blank",
            ),
            (
                json!({"event": "a", "user_id": "\u{a0}"}),
                "`user_id` must not be blank",
            ),
            (
                json!({"event": "a", "anonymous_id": "\u{3000}"}),
                "`anonymous_id` must not be blank",
            ),
            (
                json!({"event": "a", "session_id": "   "}),
                "`session_id` must not be blank",
            ),
        ];
        for (bad, expected) in cases {
            let body = json!([{"event": "fine"}, bad.clone()]);
            let err = ingest(body).unwrap_err();
            assert_eq!(err.status(), 422, "{bad}");
            let d = details(err);
            assert_eq!(d[0].index, 1, "{bad}");
            assert!(d[0].reason.contains(expected), "{bad}: {:?}", d[0].reason);
        }
    }

    #[test]
    fn all_or_nothing_with_every_bad_event_listed() {
        let err = ingest(json!([{"event":"ok"}, {}, {"event":"ok"}, {"event": 1, "context": 2}]))
            .unwrap_err();
        let d = details(err);
        let indices: Vec<usize> = d.iter().map(|d| d.index).collect();
        assert_eq!(indices, [1, 3, 3]);
    }

    #[test]
    fn nulls_mean_absent() {
        let envs = ingest(json!({
            "event": "a", "id": null, "timestamp": null, "user_id": null,
            "properties": null, "context": null
        }))
        .unwrap();
        assert_eq!(envs[0].user_id, None);
        assert_eq!(envs[0].timestamp, NOW);
    }

    #[test]
    fn details_are_capped() {
        let bad: Vec<Value> = (0..500).map(|_| json!({})).collect();
        let d = details(ingest(Value::Array(bad)).unwrap_err());
        assert_eq!(d.len(), MAX_DETAILS);
    }
}
