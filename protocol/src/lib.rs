//! The wire format between the Sluice edge and the backend.
//!
//! One accepted event travels as an [`Envelope`]; a batch is a JSON array of
//! envelopes (`Vec<Envelope>`), posted to the backend's `POST /v1/ingest`,
//! which answers with an [`IngestResponse`]. See `protocol/README.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub mod object;
#[cfg(feature = "openapi")]
pub mod openapi;

/// Longest accepted envelope id (the client's idempotency key, or a UUID).
pub const MAX_ID_LEN: usize = 64;
/// Longest event name, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// Longest `user_id` / `anonymous_id` / `session_id`, in characters.
pub const MAX_FIELD_LEN: usize = 200;
/// Latest representable timestamp: 9999-12-31T23:59:59.999Z (the end of `DATETIME`).
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Largest `properties` + `context` + `traits`, serialized, of one envelope
/// (the edge admits 32 KiB per event; enrichment adds a little).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Edge limits: request body after decompression, one event, events per request.
pub const EDGE_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const EDGE_MAX_EVENT_BYTES: usize = 32 * 1024;
pub const EDGE_MAX_EVENTS: usize = 1000;

/// The kind of message, after Segment's spec; native `/v1/events` events are `track`.
/// Stored as a tiny integer ([`EventType::code`]).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    #[default]
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        Self::Track,
        Self::Identify,
        Self::Page,
        Self::Screen,
        Self::Group,
        Self::Alias,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Track => "track",
            Self::Identify => "identify",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }

    fn is_track(&self) -> bool {
        *self == Self::Track
    }
}

/// One accepted event as it travels from edge to backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Envelope {
    /// UUIDv7 assigned at the edge, or the client's own id (the idempotency key).
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::id))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::uint32))]
    pub env_id: u32,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::name))]
    pub name: String,
    /// Client time, skew-corrected, ms since the Unix epoch.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::timestamp))]
    pub timestamp: i64,
    /// Edge receive time, ms since the Unix epoch.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::timestamp))]
    pub received_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::field))]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::field))]
    pub anonymous_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::field))]
    pub session_id: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub properties: Map<String, Value>,
    /// Enrichment: `country`, `colo`, `user_agent`, `library`, ...
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Map<String, Value>,
    /// Message type (Segment-compatible API); absent means `track`.
    #[serde(default, rename = "type", skip_serializing_if = "EventType::is_track")]
    pub event_type: EventType,
    /// Identify and group traits.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub traits: Map<String, Value>,
    /// The group of a `group` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::field))]
    pub group_id: Option<String>,
    /// The former id of an `alias` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::field))]
    pub previous_id: Option<String>,
    /// The request that accepted this event, for the delivery ledger: set
    /// by the edge, absent on events that come by other ways.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::option"
    )]
    pub acceptance: Option<Acceptance>,
}

/// One request's acceptance: its id and how many events it accepted. Every
/// envelope of the request carries it, so the first one to reach the
/// backend tells the ledger the whole count (the rest are in flight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Acceptance {
    /// 32 lowercase hex digits.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::acceptance_id))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::uint32))]
    pub n: u32,
}

/// Longest report or acceptance id.
pub const MAX_REPORT_ID_LEN: usize = 64;
/// Longest reason code in a report.
pub const MAX_REASON_LEN: usize = 64;
/// Longest rejected-body sample a report carries, in bytes.
pub const MAX_SAMPLE_BYTES: usize = 2048;
/// Longest error message a sample carries, in characters.
pub const MAX_SAMPLE_MESSAGE_CHARS: usize = 500;

/// What a door saw of an environment's requests that no envelope tells:
/// the events it refused (by reason code) and the events it answered for
/// but could not hand on (`lost`, with the acceptance's own count, whose
/// envelopes may never arrive). Posted to `POST /v1/ingest/reports`;
/// `id` makes a redelivered report count once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::report_id))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::uint32))]
    pub env_id: u32,
    /// When the door received the request(s), ms since the epoch: the
    /// minute the counts belong to.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::timestamp))]
    pub received_at: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::reason_counts))]
    pub rejected: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::uint64))]
    pub accepted: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::uint64))]
    pub lost: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::reason_counts))]
    pub dropped: BTreeMap<String, u64>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "object::vec"
    )]
    pub samples: Vec<Sample>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A refused request, for the debugger: its reason, the error message it
/// was answered with, and the start of its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sample {
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::timestamp))]
    pub received_at: i64,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::reason))]
    pub code: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::sample_message))]
    pub message: String,
    /// At most [`MAX_SAMPLE_BYTES`] of the body (decompressed when it could be).
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::sample_body))]
    pub body: String,
}

impl Sample {
    /// A sample of `body`, cut to the limits on a character boundary.
    pub fn new(received_at: i64, code: &str, message: &str, body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_SAMPLE_BYTES)]);
        Self {
            received_at,
            code: code.to_owned(),
            message: message.chars().take(MAX_SAMPLE_MESSAGE_CHARS).collect(),
            body: cut(&text, MAX_SAMPLE_BYTES).to_owned(),
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A dead-lettered event as the dead-letter consumer read it back: enough
/// to count it (and see later whether a replay stored it). Read leniently:
/// the message may be poison for other reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::uint32))]
    pub env_id: u32,
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::lenient_ms))]
    pub received_at: i64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::option"
    )]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::lenient_acceptance))]
    pub acceptance: Option<Acceptance>,
}

/// The body of `POST /v1/ingest/reports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reports {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "object::vec"
    )]
    pub reports: Vec<Report>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "object::vec"
    )]
    pub dead_letters: Vec<DeadLetter>,
}

impl Report {
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > MAX_REPORT_ID_LEN {
            return Err(format!("id must be 1 to {MAX_REPORT_ID_LEN} bytes"));
        }
        if !timestamp_in_range(self.received_at) {
            return Err("received_at is out of range".into());
        }
        for code in self.rejected.keys().chain(self.dropped.keys()) {
            if code.is_empty()
                || code.len() > MAX_REASON_LEN
                || !code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            {
                return Err(format!(
                    "reason code {code:?} must be 1 to {MAX_REASON_LEN} of a-z, 0-9, _"
                ));
            }
        }
        for sample in &self.samples {
            if sample.body.len() > MAX_SAMPLE_BYTES
                || sample.message.chars().count() > MAX_SAMPLE_MESSAGE_CHARS
                || sample.code.len() > MAX_REASON_LEN
            {
                return Err("a sample is over its limits".into());
            }
            if !timestamp_in_range(sample.received_at) {
                return Err("a sample's received_at is out of range".into());
            }
        }
        Ok(())
    }
}

/// Why an envelope is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    EmptyId,
    IdTooLong,
    EmptyName,
    NameTooLong,
    FieldTooLong(&'static str),
    TimestampOutOfRange(&'static str),
    ControlCharacter(&'static str),
    PayloadTooLarge(usize),
    BadAcceptanceId,
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EmptyId => write!(f, "id must not be empty"),
            Self::IdTooLong => write!(f, "id is longer than {MAX_ID_LEN} characters"),
            Self::EmptyName => write!(f, "name must not be empty"),
            Self::NameTooLong => write!(f, "name is longer than {MAX_NAME_LEN} characters"),
            Self::FieldTooLong(field) => {
                write!(f, "{field} is longer than {MAX_FIELD_LEN} characters")
            }
            Self::TimestampOutOfRange(field) => {
                write!(
                    f,
                    "{field} must be between 0 and {MAX_TIMESTAMP_MS} ms since the epoch"
                )
            }
            Self::ControlCharacter(field) => write!(f, "{field} contains a control character"),
            Self::BadAcceptanceId => write!(
                f,
                "acceptance.id must be 1 to {MAX_REPORT_ID_LEN} bytes without control characters"
            ),
            Self::PayloadTooLarge(n) => {
                write!(f, "properties, context and traits take {n} bytes; at most {MAX_PAYLOAD_BYTES} are accepted")
            }
        }
    }
}

impl std::error::Error for EnvelopeError {}

fn check_text(value: &str, field: &'static str) -> Result<(), EnvelopeError> {
    if value.chars().any(char::is_control) {
        return Err(EnvelopeError::ControlCharacter(field));
    }
    Ok(())
}

fn check_optional(value: &Option<String>, field: &'static str) -> Result<(), EnvelopeError> {
    if let Some(v) = value {
        if v.chars().count() > MAX_FIELD_LEN {
            return Err(EnvelopeError::FieldTooLong(field));
        }
        check_text(v, field)?;
    }
    Ok(())
}

pub fn timestamp_in_range(ms: i64) -> bool {
    (0..=MAX_TIMESTAMP_MS).contains(&ms)
}

impl Envelope {
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.id.is_empty() {
            return Err(EnvelopeError::EmptyId);
        }
        if self.id.chars().count() > MAX_ID_LEN {
            return Err(EnvelopeError::IdTooLong);
        }
        check_text(&self.id, "id")?;
        if self.name.is_empty() {
            return Err(EnvelopeError::EmptyName);
        }
        if self.name.chars().count() > MAX_NAME_LEN {
            return Err(EnvelopeError::NameTooLong);
        }
        check_text(&self.name, "name")?;
        if !timestamp_in_range(self.timestamp) {
            return Err(EnvelopeError::TimestampOutOfRange("timestamp"));
        }
        if !timestamp_in_range(self.received_at) {
            return Err(EnvelopeError::TimestampOutOfRange("received_at"));
        }
        check_optional(&self.user_id, "user_id")?;
        check_optional(&self.anonymous_id, "anonymous_id")?;
        check_optional(&self.session_id, "session_id")?;
        check_optional(&self.group_id, "group_id")?;
        check_optional(&self.previous_id, "previous_id")?;
        if let Some(a) = &self.acceptance {
            if a.id.is_empty()
                || a.id.len() > MAX_REPORT_ID_LEN
                || a.id.chars().any(char::is_control)
            {
                return Err(EnvelopeError::BadAcceptanceId);
            }
        }
        let payload = self.payload_bytes();
        if payload > MAX_PAYLOAD_BYTES {
            return Err(EnvelopeError::PayloadTooLarge(payload));
        }
        Ok(())
    }

    /// Serialized size of `properties`, `context` and `traits`, counted
    /// without building the text.
    pub fn payload_bytes(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        for map in [&self.properties, &self.context, &self.traits] {
            // Writing into a counter cannot fail.
            let _ = serde_json::to_writer(&mut count, map);
        }
        count.0
    }

    /// The 16-byte storage key of this envelope's id; see [`event_key`].
    pub fn key(&self) -> [u8; 16] {
        event_key(&self.id)
    }
}

/// Namespace for hashing client ids that are not UUIDs (UUIDv5 of the id).
pub const CLIENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1c_e000_7a1d_4e5e_9f0e_5115_1ce0_0001);

/// The 16-byte key an id is stored under: a UUID's own bytes, or, for any
/// other client id, its UUIDv5 hash — deterministic, so a repeat collides.
pub fn event_key(id: &str) -> [u8; 16] {
    match Uuid::try_parse(id) {
        Ok(uuid) => *uuid.as_bytes(),
        Err(_) => *Uuid::new_v5(&CLIENT_ID_NAMESPACE, id.as_bytes()).as_bytes(),
    }
}

/// Whether `id` is stored as its own UUID bytes (so the text need not be kept).
pub fn is_uuid(id: &str) -> bool {
    Uuid::try_parse(id).is_ok()
}

/// The UUID a stored key is the bytes of (for rows whose `client_id` is
/// empty, i.e. whose id was a UUID): `event_key` of it gives `key` back.
pub fn uuid_of_key(key: [u8; 16]) -> String {
    Uuid::from_bytes(key).hyphenated().to_string()
}

/// A UUIDv7 for `unix_ms` with caller-supplied randomness (the edge takes it
/// from `crypto.getRandomValues`; this crate has no source of its own).
pub fn uuid_v7(unix_ms: u64, random: &[u8; 10]) -> String {
    uuid::Builder::from_unix_timestamp_millis(unix_ms, random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Counts for one environment in an ingest response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvCounts {
    pub inserted: u64,
    pub duplicates: u64,
    /// Taken and not stored under the environment's policy (e.g. bots in a
    /// `bots = drop` environment), counted in its delivery ledger.
    #[serde(default)]
    pub dropped: u64,
}

/// An environment whose envelopes could not be written this time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvFailure {
    pub env_id: u32,
    pub error: String,
    pub message: String,
}

/// The backend's answer to `POST /v1/ingest` (status 200, 207 or 503).
///
/// `retry` lists the ids of every envelope that did not land and must be
/// sent again; everything else landed (inserted, or already present).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestResponse {
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::counts_by_env))]
    pub environments: BTreeMap<u32, EnvCounts>,
    #[serde(default)]
    pub retry: Vec<String>,
    #[serde(default)]
    pub failures: Vec<EnvFailure>,
}

/// Every 4xx/5xx body, from edge and backend alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub details: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Envelope {
        serde_json::from_value(json!({
            "id": "0190b6e0-0000-7000-8000-000000000001",
            "env_id": 7,
            "name": "purchase",
            "timestamp": 1_700_000_000_000i64,
            "received_at": 1_700_000_000_050i64,
            "user_id": "u1",
            "properties": {"amount": 12.5},
            "context": {"country": "DE"}
        }))
        .unwrap()
    }

    #[test]
    fn round_trips_and_omits_absent_fields() {
        let env = sample();
        let text = serde_json::to_string(&env).unwrap();
        assert!(!text.contains("anonymous_id"));
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), env);
        assert!(env.validate().is_ok());
    }

    #[test]
    fn segment_fields_round_trip_and_track_is_the_default() {
        let mut value = serde_json::to_value(sample()).unwrap();
        assert!(value.get("type").is_none(), "track is not written");
        value["type"] = json!("group");
        value["group_id"] = json!("acme");
        value["traits"] = json!({"plan": "enterprise"});
        let env: Envelope = serde_json::from_value(value).unwrap();
        assert_eq!(env.event_type, EventType::Group);
        assert_eq!(env.event_type.code(), 4);
        assert_eq!(EventType::from_code(4), Some(EventType::Group));
        assert_eq!(EventType::from_code(6), None);
        let text = serde_json::to_string(&env).unwrap();
        assert!(text.contains("\"type\":\"group\""), "{text}");
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), env);
        let mut bad = env.clone();
        bad.previous_id = Some("p".repeat(201));
        assert_eq!(
            bad.validate(),
            Err(EnvelopeError::FieldTooLong("previous_id"))
        );
    }

    #[test]
    fn rejects_unknown_fields() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["surprise"] = json!(1);
        assert!(serde_json::from_value::<Envelope>(value).is_err());
    }

    #[test]
    fn validation_branches() {
        let mut e = sample();
        e.id = String::new();
        assert_eq!(e.validate(), Err(EnvelopeError::EmptyId));
        e.id = "x".repeat(65);
        assert_eq!(e.validate(), Err(EnvelopeError::IdTooLong));
        e.id = "ok".into();
        e.name = String::new();
        assert_eq!(e.validate(), Err(EnvelopeError::EmptyName));
        e.name = "é".repeat(200);
        assert!(e.validate().is_ok(), "200 multi-byte chars are fine");
        e.name = "é".repeat(201);
        assert_eq!(e.validate(), Err(EnvelopeError::NameTooLong));
        e.name = "bad\u{0}name".into();
        assert_eq!(e.validate(), Err(EnvelopeError::ControlCharacter("name")));
        e.name = "ok".into();
        e.timestamp = -1;
        assert_eq!(
            e.validate(),
            Err(EnvelopeError::TimestampOutOfRange("timestamp"))
        );
        e.timestamp = MAX_TIMESTAMP_MS + 1;
        assert!(e.validate().is_err());
        e.timestamp = 0;
        e.session_id = Some("s".repeat(201));
        assert_eq!(e.validate(), Err(EnvelopeError::FieldTooLong("session_id")));
        e.session_id = None;
        e.properties
            .insert("blob".into(), json!("x".repeat(MAX_PAYLOAD_BYTES)));
        assert!(
            matches!(e.validate(), Err(EnvelopeError::PayloadTooLarge(n)) if n > MAX_PAYLOAD_BYTES)
        );
        e.properties.insert("blob".into(), json!("x".repeat(1000)));
        assert!(e.validate().is_ok());
    }

    #[test]
    fn keys_are_uuid_bytes_or_stable_hashes() {
        let uuid = "0190b6e0-0000-7000-8000-000000000001";
        assert_eq!(event_key(uuid), *Uuid::parse_str(uuid).unwrap().as_bytes());
        assert!(is_uuid(uuid));
        assert_eq!(event_key("order-42"), event_key("order-42"));
        assert_ne!(event_key("order-42"), event_key("order-43"));
        assert!(!is_uuid("order-42"));
    }

    #[test]
    fn v7_ids_are_time_ordered() {
        let a = uuid_v7(1_700_000_000_000, &[0xff; 10]);
        let b = uuid_v7(1_700_000_000_001, &[0; 10]);
        assert!(a < b);
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 7);
    }

    /// Found by `fuzz/` (edge_request): serde_json's default float parser may be
    /// off by one ULP, so a number changed on every hop (edge → queue → backend).
    /// The `float_roundtrip` feature (protocol/Cargo.toml) parses floats exactly.
    #[test]
    fn float_properties_round_trip_exactly() {
        let text = r#"{"id":"x","env_id":7,"name":"gz","timestamp":0,"received_at":0,"properties":{"n":922337203368547758070}}"#;
        let env: Envelope = serde_json::from_str(text).unwrap();
        assert_eq!(
            env.properties["n"].as_f64(),
            Some(922_337_203_368_547_758_070.0)
        );
        let again: Envelope = serde_json::from_str(&serde_json::to_string(&env).unwrap()).unwrap();
        assert_eq!(again, env);
        for f in [9.223_372_033_685_477e20, 0.1, 1e-300, f64::MAX, 5e-324] {
            let value = json!({ "f": f });
            let back: Value = serde_json::from_str(&value.to_string()).unwrap();
            assert_eq!(back, value, "{f:e}");
        }
    }
}
