//! The Segment-compatible tracking API: `POST /v1/{track,identify,page,screen,group,alias,batch}`,
//! the browser SDK's short forms (`/v1/t` … `/v1/b`), and the settings
//! document the browser SDK loads (`GET /v1/projects/{writeKey}/settings`).
//!
//! Plain Rust: routing, write-key extraction, limits, message → envelope
//! mapping, clock-skew correction and partial acceptance all test natively;
//! `lib.rs` only reads the request and queues what [`build`] returns.
//!
//! Unlike `/v1/events` (all or nothing), a batch lands its valid messages and
//! lists the rejected ones: Segment's SDKs drop a whole batch on a 4xx.

use protocol::{
    event_key, timestamp_in_range, uuid_v7, Envelope, EventType, MAX_FIELD_LEN, MAX_ID_LEN,
    MAX_NAME_LEN,
};
use serde_json::{json, Map, Value};

use crate::credentials::{authorization, trim_http_whitespace, Authorization};
use crate::events::Meta;
use crate::text;
use crate::time::parse_value as parse_time;
use crate::{Detail, Error};

/// Segment's documented limits: one message, one request.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;
/// At most this many per-message reasons go back to the client.
pub const MAX_REJECTED_DETAILS: usize = 100;

/// Which Segment endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// One message of this type (`/v1/track`, `/v1/t`, …).
    Single(EventType),
    /// `{"batch": [...]}` (`/v1/batch`, `/v1/b`, `/v1/import`).
    Batch,
}

/// Every Segment-compatible path and its endpoint: the router and the
/// OpenAPI description both read this table.
pub const ENDPOINTS: [(&str, Endpoint); 15] = [
    ("/v1/track", Endpoint::Single(EventType::Track)),
    ("/v1/t", Endpoint::Single(EventType::Track)),
    ("/v1/identify", Endpoint::Single(EventType::Identify)),
    ("/v1/i", Endpoint::Single(EventType::Identify)),
    ("/v1/page", Endpoint::Single(EventType::Page)),
    ("/v1/p", Endpoint::Single(EventType::Page)),
    ("/v1/screen", Endpoint::Single(EventType::Screen)),
    ("/v1/s", Endpoint::Single(EventType::Screen)),
    ("/v1/group", Endpoint::Single(EventType::Group)),
    ("/v1/g", Endpoint::Single(EventType::Group)),
    ("/v1/alias", Endpoint::Single(EventType::Alias)),
    ("/v1/a", Endpoint::Single(EventType::Alias)),
    ("/v1/batch", Endpoint::Batch),
    ("/v1/b", Endpoint::Batch),
    ("/v1/import", Endpoint::Batch),
];

/// The endpoint for a path (already without a trailing slash), if it is one.
pub fn endpoint(path: &str) -> Option<Endpoint> {
    ENDPOINTS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, endpoint)| *endpoint)
}

/// The write key of `GET /v1/projects/{writeKey}/settings`.
pub fn settings_key(path: &str) -> Option<&str> {
    let key = path
        .strip_prefix("/v1/projects/")?
        .strip_suffix("/settings")?;
    (!key.is_empty() && !key.contains('/')).then_some(key)
}

/// Rejects a declared length over 500 KB before the body is read.
pub fn check_content_length(content_length: Option<&str>) -> Result<(), Error> {
    match crate::events::declared_length(content_length) {
        Some(n) if n > MAX_REQUEST_BYTES as u64 => Err(Error::BodyTooLarge(MAX_REQUEST_BYTES)),
        _ => Ok(()),
    }
}

/// The write key: HTTP Basic user name (password empty or ignored), a Bearer
/// token, or else `writeKey` from the body (the browser SDK's way).
pub fn write_key(
    authorization_header: Option<&str>,
    body_key: Option<&str>,
) -> Result<String, Error> {
    let from_header = authorization_header.and_then(|h| match authorization(h)? {
        Authorization::Basic(user) => Some(user),
        Authorization::Bearer(token) => Some(token.to_owned()),
    });
    let key = from_header
        .filter(|k| !k.is_empty())
        .or_else(|| {
            body_key
                .map(|k| trim_http_whitespace(k).to_owned())
                .filter(|k| !k.is_empty())
        })
        .ok_or(Error::MissingKey)?;
    if key.len() > crate::credentials::MAX_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::InvalidKey);
    }
    Ok(key)
}

/// A parsed request body: the messages and what the batch shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub messages: Vec<Value>,
    pub write_key: Option<String>,
    /// The batch's `sentAt` (a single message carries its own).
    pub sent_at: Option<Value>,
    /// The batch's shared `context`, under each message's own.
    pub context: Map<String, Value>,
}

/// Parses a body (already decoded, ≤ 500 KB) for `endpoint`.
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<Request, Error> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(Error::BodyTooLarge(MAX_REQUEST_BYTES));
    }
    let value = crate::json::parse(body)?;
    let Value::Object(mut map) = value else {
        return Err(Error::InvalidBody("body must be a JSON object".into()));
    };
    let write_key = match map.get("writeKey") {
        Some(Value::String(k)) => Some(k.clone()),
        _ => None,
    };
    match endpoint {
        Endpoint::Single(event_type) => {
            map.insert("type".into(), Value::from(event_type.as_str()));
            Ok(Request {
                messages: vec![Value::Object(map)],
                write_key,
                sent_at: None,
                context: Map::new(),
            })
        }
        Endpoint::Batch => {
            let messages = match map.remove("batch") {
                Some(Value::Array(messages)) => messages,
                _ => {
                    return Err(Error::InvalidBody(
                        "`batch` must be an array of messages".into(),
                    ))
                }
            };
            if messages.is_empty() {
                return Err(Error::EmptyBatch);
            }
            let context = match map.remove("context") {
                Some(Value::Object(c)) => c,
                _ => Map::new(),
            };
            Ok(Request {
                messages,
                write_key,
                sent_at: map.remove("sentAt").filter(|v| !v.is_null()),
                context,
            })
        }
    }
}

/// The outcome of a request: envelopes to queue, and the rejected messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub envelopes: Vec<Envelope>,
    pub rejected: Vec<Detail>,
    pub rejected_count: usize,
}

impl Outcome {
    /// The 200 body: `{"success": true, "accepted": n}` plus `rejected` (count)
    /// and `details` (index and reason, at most 100) when some were refused.
    pub fn body(&self) -> Value {
        let mut body = json!({"success": true, "accepted": self.envelopes.len()});
        if self.rejected_count > 0 {
            body["rejected"] = json!(self.rejected_count);
            body["details"] = json!(self.rejected);
        }
        body
    }
}

/// Maps every message; valid ones become envelopes, invalid ones are listed.
/// Nothing valid at all is a 400 (`invalid_events`), so is an invalid single message.
pub fn build(
    request: Request,
    meta: &Meta,
    mut random: impl FnMut() -> [u8; 10],
) -> Result<Outcome, Error> {
    let batch_sent_at = match &request.sent_at {
        None => None,
        Some(v) => Some(parse_time(v).ok_or_else(|| {
            Error::InvalidBody("`sentAt` must be an ISO 8601 time or epoch milliseconds".into())
        })?),
    };
    let mut envelopes = Vec::with_capacity(request.messages.len());
    let mut rejected = Vec::new();
    let mut rejected_count = 0;
    for (index, message) in request.messages.into_iter().enumerate() {
        match envelope(message, &request.context, batch_sent_at, meta, &mut random) {
            Ok(e) => envelopes.push(e),
            Err(reason) => {
                rejected_count += 1;
                if rejected.len() < MAX_REJECTED_DETAILS {
                    rejected.push(Detail::new(index, reason));
                }
            }
        }
    }
    if envelopes.is_empty() {
        return Err(Error::InvalidEvents(rejected));
    }
    Ok(Outcome {
        envelopes,
        rejected,
        rejected_count,
    })
}

/// One Segment message → one envelope.
///
/// - `name`: track → `event`; page/screen → `name`, else `"page"`/`"screen"`;
///   identify/group/alias → the type's name.
/// - `id`: `messageId` (≤ 64 chars as is, longer ones as their UUIDv5), else a UUIDv7.
/// - `timestamp`: `receivedAt − (sentAt − originalTimestamp)`, where
///   originalTimestamp is the message's `originalTimestamp`, else its `timestamp`;
///   without `sentAt`, that time as given; without either, the receive time.
/// - page/screen `name` and `category` are also kept in `properties` (unless
///   the client set those keys), so nothing is lost.
/// - `context`: the batch's, overlaid by the message's, plus `country`,
///   `colo`, `geo`, `user_agent`, `bot` from the door and `ip` (from `CF-Connecting-IP`) when
///   absent, under the environment's policy ([`crate::enrich`]).
/// - `integrations`, `_metadata`, `writeKey`, `channel` and other fields are ignored.
pub fn envelope(
    message: Value,
    batch_context: &Map<String, Value>,
    batch_sent_at: Option<i64>,
    meta: &Meta,
    random: &mut impl FnMut() -> [u8; 10],
) -> Result<Envelope, String> {
    let size = serde_json::to_vec(&message)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message is {size} bytes, over the {MAX_MESSAGE_BYTES} byte limit"
        ));
    }
    let Value::Object(mut m) = message else {
        return Err("message must be a JSON object".into());
    };
    let event_type = match m.remove("type") {
        Some(Value::String(t)) => EventType::ALL
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(&t))
            .ok_or_else(|| format!("unknown message type `{}`", truncate(&t)))?,
        None | Some(Value::Null) => return Err("`type` is required".into()),
        Some(_) => return Err("`type` must be a string".into()),
    };
    let user_id = id_field(m.remove("userId"), "userId")?;
    let anonymous_id = id_field(m.remove("anonymousId"), "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err("`userId` or `anonymousId` is required".into());
    }
    let mut properties = object(m.remove("properties"), "properties")?;
    let traits = object(m.remove("traits"), "traits")?;
    let page_name = text_field(m.remove("name"), "name", MAX_NAME_LEN)?;
    let category = text_field(m.remove("category"), "category", MAX_NAME_LEN)?;
    let name = match event_type {
        EventType::Track => text_field(m.remove("event"), "event", MAX_NAME_LEN)?
            .ok_or("`event` is required for a track")?,
        EventType::Page | EventType::Screen => {
            for (key, value) in [("name", &page_name), ("category", &category)] {
                if let Some(v) = value {
                    properties
                        .entry(key)
                        .or_insert_with(|| Value::String(v.clone()));
                }
            }
            page_name
                .clone()
                .unwrap_or_else(|| event_type.as_str().to_owned())
        }
        other => other.as_str().to_owned(),
    };
    let group_id = id_field(m.remove("groupId"), "groupId")?;
    if event_type == EventType::Group && group_id.is_none() {
        return Err("`groupId` is required for a group".into());
    }
    let previous_id = id_field(m.remove("previousId"), "previousId")?;
    if event_type == EventType::Alias && previous_id.is_none() {
        return Err("`previousId` is required for an alias".into());
    }
    let id = match text_field(m.remove("messageId"), "messageId", usize::MAX)? {
        Some(id) if id.chars().count() <= MAX_ID_LEN => id,
        Some(long) => protocol::uuid_of_key(event_key(&long)),
        None => uuid_v7(u64::try_from(meta.received_at).unwrap_or(0), &random()),
    };
    let time = |field: &str, m: &mut Map<String, Value>| match m.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_time(&v)
            .map(Some)
            .ok_or_else(|| format!("`{field}` must be an ISO 8601 time or epoch milliseconds")),
    };
    let original = match time("originalTimestamp", &mut m)? {
        Some(t) => Some(t),
        None => time("timestamp", &mut m)?,
    };
    let sent_at = time("sentAt", &mut m)?.or(batch_sent_at);
    let timestamp = match (original, sent_at) {
        (Some(original), Some(sent)) => meta
            .received_at
            .saturating_sub(sent.saturating_sub(original)),
        (Some(original), None) => original,
        (None, _) => meta.received_at,
    };
    if !timestamp_in_range(timestamp) {
        return Err("`timestamp` is out of range once corrected for clock skew".into());
    }
    let mut context = batch_context.clone();
    context.extend(object(m.remove("context"), "context")?);
    let sdk_user_agent = context
        .get("userAgent")
        .and_then(Value::as_str)
        .map(str::to_owned);
    meta.enrich(&mut context, sdk_user_agent.as_deref());
    let envelope = Envelope {
        id,
        env_id: meta.env_id,
        name,
        timestamp,
        received_at: meta.received_at,
        user_id,
        anonymous_id,
        session_id: None,
        properties,
        context,
        event_type,
        traits,
        group_id,
        previous_id,
        acceptance: None,
    };
    envelope.validate().map_err(|e| e.to_string())?;
    Ok(envelope)
}

fn truncate(text: &str) -> String {
    text.chars().take(50).collect()
}

fn text_field(value: Option<Value>, field: &str, max: usize) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => text::check(&s, field, max).map(|()| Some(s)),
        Some(_) => Err(format!("`{field}` must be a string")),
    }
}

/// A string, or an integer as its text (Segment accepts numeric ids).
fn id_field(value: Option<Value>, field: &str) -> Result<Option<String>, String> {
    match value {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        other => text_field(other, field, MAX_FIELD_LEN),
    }
}

fn object(value: Option<Value>, field: &str) -> Result<Map<String, Value>, String> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(format!("`{field}` must be an object")),
    }
}

/// The settings document the browser SDK fetches at load
/// (`{cdnURL}/v1/projects/{writeKey}/settings`): its `Segment.io` destination
/// sends to `{protocol}://{host}/v1/{t,i,p,…}`, i.e. back to this edge. Remote
/// metrics are off (`sampleRate: 0`), no other destinations, no plan.
pub fn settings(write_key: &str, protocol: &str, host: &str) -> Value {
    json!({
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": format!("{host}/v1"),
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": true,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]}
            }
        },
        "plan": {},
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": []
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(error: &Error) -> u16 {
        error.status_at(crate::Door::Segment)
    }

    const NOW: i64 = 1_700_000_000_000;

    fn meta() -> Meta {
        let client = crate::enrich::Client {
            ip: Some("203.0.113.9".into()),
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
            user_agent: Some("edge-ua".into()),
            enrichment: crate::enrich::Enrichment::new(client, Default::default()),
        }
    }

    fn zeros() -> [u8; 10] {
        [0; 10]
    }

    fn run(endpoint: Endpoint, body: Value) -> Result<Outcome, Error> {
        let request = parse(body.to_string().as_bytes(), endpoint)?;
        build(request, &meta(), zeros)
    }

    fn one(endpoint: Endpoint, body: Value) -> Envelope {
        let outcome = run(endpoint, body).unwrap();
        assert_eq!(outcome.rejected_count, 0, "{:?}", outcome.rejected);
        outcome.envelopes.into_iter().next().unwrap()
    }

    fn basic(text: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    }

    #[test]
    fn endpoints_long_and_short() {
        for (path, t) in [
            ("/v1/track", EventType::Track),
            ("/v1/t", EventType::Track),
            ("/v1/identify", EventType::Identify),
            ("/v1/i", EventType::Identify),
            ("/v1/page", EventType::Page),
            ("/v1/p", EventType::Page),
            ("/v1/screen", EventType::Screen),
            ("/v1/s", EventType::Screen),
            ("/v1/group", EventType::Group),
            ("/v1/g", EventType::Group),
            ("/v1/alias", EventType::Alias),
            ("/v1/a", EventType::Alias),
        ] {
            assert_eq!(endpoint(path), Some(Endpoint::Single(t)), "{path}");
        }
        for path in ["/v1/batch", "/v1/b", "/v1/import"] {
            assert_eq!(endpoint(path), Some(Endpoint::Batch));
        }
        assert_eq!(endpoint("/v1/events"), None);
        assert_eq!(endpoint("/v1/x"), None);
        assert_eq!(endpoint("/v2/t"), None);
        assert_eq!(settings_key("/v1/projects/sk_1/settings"), Some("sk_1"));
        assert_eq!(settings_key("/v1/projects//settings"), None);
        assert_eq!(settings_key("/v1/projects/a/b/settings"), None);
        assert_eq!(settings_key("/v1/projects/a"), None);
    }

    #[test]
    fn write_key_from_basic_auth_bearer_or_body() {
        assert_eq!(write_key(Some(&basic("sk_1:")), None).unwrap(), "sk_1");
        assert_eq!(write_key(Some(&basic("sk_1")), None).unwrap(), "sk_1");
        assert_eq!(
            write_key(Some(&basic("sk_12:")), Some("other")).unwrap(),
            "sk_12"
        );
        assert_eq!(write_key(Some("Bearer sk_3"), None).unwrap(), "sk_3");
        assert_eq!(write_key(None, Some("sk_4")).unwrap(), "sk_4");
        // A header we cannot read falls back to the body's key.
        assert_eq!(write_key(Some("Basic !!!"), Some("sk_5")).unwrap(), "sk_5");
        assert_eq!(write_key(Some(&basic(":")), Some("sk_6")).unwrap(), "sk_6");
        assert_eq!(write_key(None, None), Err(Error::MissingKey));
        assert_eq!(write_key(None, Some(" ")), Err(Error::MissingKey));
        assert_eq!(write_key(None, Some("bad key")), Err(Error::InvalidKey));
    }

    #[test]
    fn write_keys_lose_only_http_whitespace() {
        assert_eq!(
            write_key(Some(&format!("{} \t", basic("sk_1:"))), None).unwrap(),
            "sk_1"
        );
        assert_eq!(write_key(Some("Bearer \tsk_3 "), None).unwrap(), "sk_3");
        assert_eq!(write_key(None, Some("\tsk_4 ")).unwrap(), "sk_4");
        for odd in ['\u{a0}', '\u{2003}', '\u{3000}', '\u{feff}'] {
            // An unreadable Basic header falls back to the body's key: none here.
            assert_eq!(
                write_key(Some(&format!("{}{odd}", basic("sk_1:"))), None),
                Err(Error::MissingKey),
                "{odd:?} after a Basic token"
            );
            assert_eq!(
                write_key(Some(&basic(&format!("sk_1{odd}:"))), None),
                Err(Error::InvalidKey),
                "{odd:?} in a Basic user name"
            );
            assert_eq!(
                write_key(Some(&format!("Bearer sk_3{odd}")), None),
                Err(Error::InvalidKey),
                "{odd:?} after a bearer write key"
            );
            assert_eq!(
                write_key(None, Some(&format!("{odd}sk_4"))),
                Err(Error::InvalidKey),
                "{odd:?} before a body writeKey"
            );
        }
    }

    #[test]
    fn body_write_key_is_read_for_single_and_batch() {
        let r = parse(
            br#"{"writeKey":"sk_b","batch":[{"type":"track"}]}"#,
            Endpoint::Batch,
        )
        .unwrap();
        assert_eq!(r.write_key.as_deref(), Some("sk_b"));
        let r = parse(
            br#"{"writeKey":"sk_s","event":"x"}"#,
            Endpoint::Single(EventType::Track),
        )
        .unwrap();
        assert_eq!(r.write_key.as_deref(), Some("sk_s"));
        assert_eq!(r.messages[0]["type"], "track", "the endpoint sets the type");
    }

    #[test]
    fn track() {
        let e = one(
            Endpoint::Single(EventType::Track),
            json!({"event": "Order Completed", "userId": "u1", "messageId": "m-1",
                   "properties": {"total": 12.5}, "integrations": {"All": false},
                   "context": {"library": {"name": "analytics-node", "version": "3"}},
                   "_metadata": {"jsRuntime": "node"}}),
        );
        assert_eq!(e.event_type, EventType::Track);
        assert_eq!(e.name, "Order Completed");
        assert_eq!(e.id, "m-1");
        assert_eq!(e.env_id, 7);
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(e.properties["total"], 12.5);
        assert_eq!(e.context["library"]["name"], "analytics-node");
        assert_eq!(e.context["country"], "DE");
        assert_eq!(e.context["colo"], "FRA");
        assert_eq!(e.context["user_agent"], "edge-ua");
        assert_eq!(
            e.context["ip"], "203.0.113.0",
            "truncated to its /24 by default"
        );
        assert!(
            e.context.get("integrations").is_none(),
            "integrations are not stored"
        );
        assert_eq!(e.timestamp, NOW);
    }

    #[test]
    fn identify() {
        let e = one(
            Endpoint::Single(EventType::Identify),
            json!({"userId": 42, "traits": {"email": "a@example.com", "plan": "pro"},
                   "context": {"ip": "198.51.100.1", "userAgent": "Mozilla/5.0"}}),
        );
        assert_eq!(e.event_type, EventType::Identify);
        assert_eq!(e.name, "identify");
        assert_eq!(e.user_id.as_deref(), Some("42"));
        assert_eq!(e.traits["plan"], "pro");
        assert_eq!(
            e.context["ip"], "198.51.100.0",
            "the client's ip wins, truncated"
        );
        assert_eq!(e.context["user_agent"], "Mozilla/5.0");
        assert!(protocol::is_uuid(&e.id), "no messageId: a UUIDv7");
    }

    #[test]
    fn page_and_screen_keep_name_and_category() {
        let e = one(
            Endpoint::Single(EventType::Page),
            json!({"anonymousId": "a1", "name": "Pricing", "category": "Docs",
                   "properties": {"url": "https://x.example/pricing"}}),
        );
        assert_eq!(e.event_type, EventType::Page);
        assert_eq!(e.name, "Pricing");
        assert_eq!(e.anonymous_id.as_deref(), Some("a1"));
        assert_eq!(e.properties["name"], "Pricing");
        assert_eq!(e.properties["category"], "Docs");
        assert_eq!(e.properties["url"], "https://x.example/pricing");
        let e = one(
            Endpoint::Single(EventType::Page),
            json!({"anonymousId": "a1"}),
        );
        assert_eq!(e.name, "page");
        let e = one(
            Endpoint::Single(EventType::Screen),
            json!({"userId": "u", "name": "Home", "properties": {"name": "client's"}}),
        );
        assert_eq!(e.event_type, EventType::Screen);
        assert_eq!(e.name, "Home");
        assert_eq!(
            e.properties["name"], "client's",
            "the client's own property wins"
        );
        let e = one(Endpoint::Single(EventType::Screen), json!({"userId": "u"}));
        assert_eq!(e.name, "screen");
    }

    #[test]
    fn group_and_alias() {
        let e = one(
            Endpoint::Single(EventType::Group),
            json!({"userId": "u", "groupId": "acme", "traits": {"employees": 40}}),
        );
        assert_eq!((e.event_type, e.name.as_str()), (EventType::Group, "group"));
        assert_eq!(e.group_id.as_deref(), Some("acme"));
        assert_eq!(e.traits["employees"], 40);
        let e = one(
            Endpoint::Single(EventType::Alias),
            json!({"userId": "u2", "previousId": "anon-9"}),
        );
        assert_eq!((e.event_type, e.name.as_str()), (EventType::Alias, "alias"));
        assert_eq!(e.previous_id.as_deref(), Some("anon-9"));
    }

    #[test]
    fn invalid_messages() {
        let cases = [
            (
                json!({"type": "track", "event": "x"}),
                "`userId` or `anonymousId`",
            ),
            (
                json!({"type": "track", "userId": "", "anonymousId": ""}),
                "`userId` or `anonymousId`",
            ),
            (
                json!({"type": "track", "userId": "u"}),
                "`event` is required",
            ),
            (
                json!({"type": "track", "userId": "u", "event": 3}),
                "`event` must be a string",
            ),
            (
                json!({"type": "track", "userId": "u", "event": "x".repeat(201)}),
                "longer than 200",
            ),
            (
                json!({"type": "group", "userId": "u"}),
                "`groupId` is required",
            ),
            (
                json!({"type": "alias", "userId": "u"}),
                "`previousId` is required",
            ),
            (
                json!({"type": "dance", "userId": "u"}),
                "unknown message type",
            ),
            (json!({"userId": "u"}), "`type` is required"),
            (
                json!({"type": "identify", "userId": true}),
                "`userId` must be a string",
            ),
            (
                json!({"type": "identify", "userId": "u", "traits": []}),
                "`traits` must be an object",
            ),
            (
                json!({"type": "identify", "userId": "u", "timestamp": "soon"}),
                "ISO 8601",
            ),
            (
                json!({"type": "identify", "userId": "u", "context": 1}),
                "`context` must be an object",
            ),
            (json!("text"), "JSON object"),
            (
                json!({"type": "track", "userId": "u", "event": "\u{200b}"}),
                "`event` must not be blank",
            ),
            (
                json!({"type": "track", "userId": "u", "event": "\u{a0}\u{feff}"}),
                "`event` must not be blank",
            ),
            (
                json!({"type": "track", "anonymousId": "a", "userId": "\u{2060}", "event": "x"}),
                "`userId` must not be blank",
            ),
            (
                json!({"type": "identify", "anonymousId": " "}),
                "`anonymousId` must not be blank",
            ),
            (
                json!({"type": "page", "userId": "u", "name": "\u{200d}\u{200c}"}),
                "`name` must not be blank",
            ),
            (
                json!({"type": "track", "userId": "u", "event": "x", "messageId": "\u{feff}"}),
                "`messageId` must not be blank",
            ),
            (
                json!({"type": "group", "userId": "u", "groupId": "\u{3000}"}),
                "`groupId` must not be blank",
            ),
            (
                json!({"type": "alias", "userId": "u", "previousId": "\u{a0}"}),
                "`previousId` must not be blank",
            ),
        ];
        for (bad, reason) in cases {
            let err = run(Endpoint::Batch, json!({"batch": [bad.clone()]})).unwrap_err();
            assert_eq!(status(&err), 400, "{bad}");
            let Error::InvalidEvents(details) = err else {
                panic!()
            };
            assert!(
                details[0].reason.contains(reason),
                "{bad}: {:?}",
                details[0].reason
            );
        }
        // One invalid single message: 400.
        let err = run(Endpoint::Single(EventType::Track), json!({"userId": "u"})).unwrap_err();
        assert_eq!(status(&err), 400);
    }

    #[test]
    fn batch_lands_valid_messages_and_reports_the_rest() {
        let outcome = run(
            Endpoint::Batch,
            json!({"batch": [
                {"type": "track", "event": "a", "userId": "u"},
                {"type": "track", "userId": "u"},
                {"type": "identify", "anonymousId": "x"},
                {"type": "page"},
                {"type": "track", "event": "b", "userId": "u", "properties": {"blob": "x".repeat(33 * 1024)}}
            ]}),
        )
        .unwrap();
        assert_eq!(outcome.envelopes.len(), 2);
        assert_eq!(outcome.rejected_count, 3);
        let indices: Vec<usize> = outcome.rejected.iter().map(|d| d.index).collect();
        assert_eq!(indices, [1, 3, 4]);
        assert!(outcome.rejected[2].reason.contains("byte limit"));
        let body = outcome.body();
        assert_eq!(body["success"], true);
        assert_eq!(body["accepted"], 2);
        assert_eq!(body["rejected"], 3);
        assert_eq!(body["details"][0]["index"], 1);
        let clean = run(
            Endpoint::Batch,
            json!({"batch": [{"type": "page", "userId": "u"}]}),
        )
        .unwrap();
        assert_eq!(clean.body(), json!({"success": true, "accepted": 1}));
    }

    #[test]
    fn rejected_details_are_capped_but_counted() {
        let mut batch: Vec<Value> = (0..150).map(|_| json!({"type": "track"})).collect();
        batch.push(json!({"type": "track", "event": "ok", "userId": "u"}));
        let outcome = run(Endpoint::Batch, json!({"batch": batch})).unwrap();
        assert_eq!(outcome.rejected_count, 150);
        assert_eq!(outcome.rejected.len(), MAX_REJECTED_DETAILS);
    }

    #[test]
    fn batch_context_is_shared_and_message_context_wins() {
        let outcome = run(
            Endpoint::Batch,
            json!({"context": {"app": {"name": "shop"}, "locale": "de-DE"}, "integrations": {"X": true},
                   "batch": [
                {"type": "track", "event": "a", "userId": "u", "context": {"locale": "en-US"}},
                {"type": "track", "event": "b", "userId": "u"}
            ]}),
        )
        .unwrap();
        let [a, b] = &outcome.envelopes[..] else {
            panic!()
        };
        assert_eq!(a.context["locale"], "en-US");
        assert_eq!(a.context["app"]["name"], "shop");
        assert_eq!(b.context["locale"], "de-DE");
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        // The client's clock is an hour behind: it called at T-5s and sent at T, by its clock.
        let hour = 3_600_000;
        let client_now = NOW - hour;
        let outcome = run(
            Endpoint::Batch,
            json!({"sentAt": client_now, "batch": [
                {"type": "track", "event": "a", "userId": "u", "timestamp": client_now - 5_000},
                {"type": "track", "event": "b", "userId": "u", "originalTimestamp": client_now - 7_000,
                 "timestamp": "2001-01-01T00:00:00Z"},
                {"type": "track", "event": "c", "userId": "u"},
                // A message's own sentAt wins over the batch's.
                {"type": "track", "event": "d", "userId": "u", "timestamp": "2023-11-14T22:13:10Z",
                 "sentAt": "2023-11-14T22:13:20Z"}
            ]}),
        )
        .unwrap();
        let ts: Vec<i64> = outcome.envelopes.iter().map(|e| e.timestamp).collect();
        assert_eq!(ts, [NOW - 5_000, NOW - 7_000, NOW, NOW - 10_000]);
        // A single message with its sentAt (the browser SDK).
        let e = one(
            Endpoint::Single(EventType::Page),
            json!({"anonymousId": "a", "timestamp": "2023-11-14T23:13:18Z", "sentAt": "2023-11-14T23:13:20Z"}),
        );
        assert_eq!(e.timestamp, NOW - 2_000);
        // Without sentAt the timestamp is taken as given.
        let e = one(
            Endpoint::Single(EventType::Identify),
            json!({"userId": "u", "timestamp": NOW - 99}),
        );
        assert_eq!(e.timestamp, NOW - 99);
        // A bad batch sentAt is a 400.
        let err = run(
            Endpoint::Batch,
            json!({"sentAt": "never", "batch": [{"type": "page", "userId": "u"}]}),
        )
        .unwrap_err();
        assert_eq!(status(&err), 400);
        // Corrected out of range: rejected.
        let err = run(
            Endpoint::Batch,
            json!({"sentAt": NOW + 10_000, "batch": [{"type": "page", "userId": "u", "timestamp": 5}]}),
        )
        .unwrap_err();
        let Error::InvalidEvents(d) = err else {
            panic!()
        };
        assert!(d[0].reason.contains("out of range"));
    }

    #[test]
    fn message_ids_are_idempotency_keys() {
        let body = json!({"batch": [{"type": "track", "event": "a", "userId": "u", "messageId": "node-next-1"}]});
        let a = run(Endpoint::Batch, body.clone()).unwrap();
        let b = run(Endpoint::Batch, body).unwrap();
        assert_eq!(a.envelopes[0].id, "node-next-1");
        assert_eq!(a.envelopes[0].id, b.envelopes[0].id);
        let long = "m".repeat(100);
        let e = one(
            Endpoint::Single(EventType::Track),
            json!({"event": "a", "userId": "u", "messageId": long}),
        );
        assert!(protocol::is_uuid(&e.id), "{}", e.id);
        assert_eq!(
            protocol::event_key(&e.id),
            protocol::event_key(&"m".repeat(100))
        );
    }

    #[test]
    fn limits() {
        // 32 KB per message: just under lands, just over is refused.
        let fits =
            json!({"event": "a", "userId": "u", "properties": {"x": "y".repeat(32 * 1024 - 200)}});
        assert_eq!(
            run(Endpoint::Single(EventType::Track), fits)
                .unwrap()
                .envelopes
                .len(),
            1
        );
        let over = json!({"event": "a", "userId": "u", "properties": {"x": "y".repeat(32 * 1024)}});
        let err = run(Endpoint::Single(EventType::Track), over).unwrap_err();
        assert_eq!(status(&err), 400);
        // 500 KB per request.
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        let err = parse(&big, Endpoint::Batch).unwrap_err();
        assert_eq!(err, Error::BodyTooLarge(MAX_REQUEST_BYTES));
        assert_eq!(status(&err), 400);
        assert!(check_content_length(Some("512000")).is_ok());
        assert_eq!(
            status(&check_content_length(Some("512001")).unwrap_err()),
            400
        );
        assert!(check_content_length(None).is_ok());
    }

    #[test]
    fn malformed_bodies_are_400() {
        for (body, endpoint) in [
            (&b"{"[..], Endpoint::Batch),
            (b"[]", Endpoint::Batch),
            (b"{\"batch\": {}}", Endpoint::Batch),
            (b"{\"batch\": []}", Endpoint::Batch),
            (b"42", Endpoint::Single(EventType::Track)),
        ] {
            let err = parse(body, endpoint).unwrap_err();
            assert_eq!(status(&err), 400, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(status(&Error::InvalidKey), 401);
        assert_eq!(status(&Error::QueueUnavailable), 503, "retried by the SDKs");
    }

    #[test]
    fn duplicate_keys_are_invalid_json_at_any_depth() {
        let track = Endpoint::Single(EventType::Track);
        for (body, endpoint, key) in [
            (r#"{"event":"a","event":"b","userId":"u"}"#, track, "event"),
            (
                r#"{"event":"a","userId":"u","userId":"v"}"#,
                track,
                "userId",
            ),
            (
                r#"{"event":"a","userId":"u","properties":{"x":1,"x":2}}"#,
                track,
                "x",
            ),
            (
                r#"{"type":"identify","userId":"u","traits":{"email":"a","email":"b"}}"#,
                Endpoint::Single(EventType::Identify),
                "email",
            ),
            (
                r#"{"batch":[{"type":"track","event":"a","userId":"u"}],"batch":[]}"#,
                Endpoint::Batch,
                "batch",
            ),
            (
                r#"{"batch":[{"type":"track","event":"a","userId":"u","context":{"ip":"1","ip":"2"}}]}"#,
                Endpoint::Batch,
                "ip",
            ),
            (
                r#"{"writeKey":"a","writeKey":"b","batch":[{"type":"track","event":"a","userId":"u"}]}"#,
                Endpoint::Batch,
                "writeKey",
            ),
        ] {
            match parse(body.as_bytes(), endpoint) {
                Err(e @ Error::InvalidJson(_)) => {
                    assert_eq!(status(&e), 400);
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
    fn settings_point_back_at_the_edge() {
        let s = settings("sk_1", "https", "edge.example");
        let seg = &s["integrations"]["Segment.io"];
        assert_eq!(seg["apiKey"], "sk_1");
        assert_eq!(seg["apiHost"], "edge.example/v1");
        assert_eq!(seg["protocol"], "https");
        assert_eq!(s["integrations"].as_object().unwrap().len(), 1);
        assert_eq!(s["metrics"]["sampleRate"], 0);
    }
}
