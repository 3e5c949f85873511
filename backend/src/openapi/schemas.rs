//! Schemas of the answers the handlers build as JSON (`stats`, `/readyz`,
//! the doors' bodies) and of the public doors' request bodies, which
//! `intake` reads field by field rather than into a type. An answer the
//! backend serialises from a type of its own (`delivery::Ledger`,
//! `stats::Delivery`, `store::NamedCount`, `ingest::Reported`) derives its
//! schema there instead. The e2e test (`tests/tests/openapi.rs`) validates
//! every answer against these.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{
    openapi::{
        schema::{
            AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType,
            Type,
        },
        RefOr,
    },
    ToSchema,
};

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    #[schema(pattern = "^ok$")]
    pub status: String,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    #[schema(pattern = "^ready$")]
    pub status: String,
    pub catalog: CatalogState,
    pub catalog_age_seconds: f64,
    pub catalog_max_age_seconds: f64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatalogState {
    Fresh,
    Stale,
}

#[derive(Serialize, ToSchema)]
pub struct TypeCount {
    #[serde(rename = "type")]
    pub event_type: protocol::EventType,
    pub count: u64,
}

/// `GET /v1/stats/summary`: totals of the minutes covering the range.
#[derive(Serialize, ToSchema)]
pub struct Summary {
    pub env: String,
    /// The range, widened to whole minutes, ms since the epoch.
    pub from: i64,
    pub to: i64,
    pub events: u64,
    pub by_event: Vec<crate::store::NamedCount>,
    pub by_country: Vec<crate::store::NamedCount>,
    pub by_type: Vec<TypeCount>,
    /// Distinct users (an estimate).
    pub users: u64,
    pub sessions: u64,
    /// Each metric's value by name (`null`: an average of nothing).
    pub metrics: BTreeMap<String, Option<f64>>,
}

#[derive(Serialize, ToSchema)]
pub struct Point {
    /// Start of the bucket, ms since the epoch.
    pub t: i64,
    /// The count, or the metric's value (`null`: an average of nothing).
    pub value: Option<f64>,
}

/// `GET /v1/stats/series`.
#[derive(Serialize, ToSchema)]
pub struct Series {
    pub interval: Interval,
    /// The metric, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub points: Vec<Point>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Second,
    Minute,
    Hour,
    Day,
}

/// `POST /v1/events`: 202.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// Events accepted (all of the request's).
    pub accepted: u64,
}

/// One refused message of a Segment batch (`intake::Detail`).
#[derive(Serialize, ToSchema)]
pub struct Rejected {
    pub index: u64,
    pub reason: String,
}

/// The Segment endpoints' 200.
#[derive(Serialize, ToSchema)]
pub struct SegmentAccepted {
    pub success: bool,
    pub accepted: u64,
    /// Messages refused (the rest landed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<Rejected>>,
}

/// The browser SDK's settings document (`intake::segment::settings`).
#[derive(Serialize, ToSchema)]
pub struct SegmentSettings {
    /// `Segment.io`: `apiKey`, `apiHost` (this door), `protocol`.
    #[schema(value_type = Object)]
    pub integrations: serde_json::Value,
    #[schema(value_type = Object)]
    pub plan: serde_json::Value,
}

fn text(max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(max))
        .pattern(Some(protocol::openapi::NO_CONTROL_CHARACTERS))
}

/// A time as the doors read it (`intake::time::parse_value`): RFC 3339
/// text, or epoch milliseconds as a number (a fraction is dropped). Whether
/// it is in range is decided after the skew correction (`sentAt`): 422.
/// null is the field left out (an event's receive time, a batch's no skew).
fn time() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("RFC 3339")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .description(Some("epoch milliseconds")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

/// One `/v1/events` event: the fields of `intake::events::EVENT_FIELDS`, no other.
pub fn public_event() -> RefOr<Schema> {
    let mut event = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .description(Some(
            "Unknown fields, a missing `event`, a `timestamp` out of range after skew \
             correction: 422 with a reason per event",
        ));
    for field in intake::events::EVENT_FIELDS {
        let schema: RefOr<Schema> = match field {
            "event" => text(protocol::MAX_NAME_LEN).min_length(Some(1)).into(),
            // null is the field left out (intake::events reads it so).
            "id" => nullable(&[Type::String])
                .max_length(Some(protocol::MAX_ID_LEN))
                .min_length(Some(1))
                .pattern(Some(protocol::openapi::NO_CONTROL_CHARACTERS))
                .description(Some("Your idempotency key; else a UUIDv7 is assigned"))
                .into(),
            "timestamp" => time(),
            // An integer id is taken as its decimal text.
            "user_id" | "anonymous_id" | "session_id" => nullable(&[Type::String, Type::Integer])
                .max_length(Some(protocol::MAX_FIELD_LEN))
                .pattern(Some(protocol::openapi::NO_CONTROL_CHARACTERS))
                .into(),
            "properties" | "context" => nullable(&[Type::Object]).into(),
            other => panic!("intake::events::EVENT_FIELDS has {other:?}: describe it here"),
        };
        event = event.property(field, schema);
    }
    event.required("event").into()
}

/// The body of `/v1/events`: one event, an array, or `{batch, sentAt}`.
pub fn public_body(max_events: usize) -> RefOr<Schema> {
    let events = || {
        ArrayBuilder::new()
            .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "PublicEvent",
            )))
            .min_items(Some(1))
            .max_items(Some(max_events))
    };
    OneOfBuilder::new()
        .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "PublicEvent",
        )))
        .item(events())
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("batch", events())
                .property("sentAt", time())
                .required("batch")
                .additional_properties(Some(AdditionalProperties::FreeForm(false))),
        )
        .into()
}

fn any() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::AnyValue)
}

fn nullable(types: &[Type]) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::from_iter(
        types.iter().cloned().chain([Type::Null]),
    ))
}

/// One message of the Segment API, as lenient as `intake::segment` reads
/// it (others fields are ignored; ids may be integers). On a single-message
/// endpoint an invalid message is a 400; in a batch it is listed in
/// `details` and the rest land.
pub fn segment_message(t: protocol::EventType) -> ObjectBuilder {
    use protocol::EventType::{Alias, Group, Track};
    let id = || nullable(&[Type::String, Type::Integer]).max_length(Some(protocol::MAX_FIELD_LEN));
    // A field only this type reads; the others ignore it.
    let only =
        |of: protocol::EventType, schema: ObjectBuilder| if t == of { schema } else { any() };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "type",
            any().description(Some("set by the endpoint; in a batch, the message's type")),
        )
        .property(
            "event",
            only(
                Track,
                nullable(&[Type::String]).max_length(Some(protocol::MAX_NAME_LEN)),
            ),
        )
        .property("name", nullable(&[Type::String]))
        .property(
            "messageId",
            nullable(&[Type::String]).description(Some("the idempotency key")),
        )
        .property("userId", id())
        .property("anonymousId", id())
        .property("groupId", only(Group, id()))
        .property("previousId", only(Alias, id()))
        .property("timestamp", any())
        .property("sentAt", any())
        .property("properties", nullable(&[Type::Object]))
        .property("traits", nullable(&[Type::Object]))
        .property("context", nullable(&[Type::Object]))
        .property(
            "writeKey",
            any().description(Some(
                "the write key, when no Authorization header carries it",
            )),
        )
        .description(Some(
            "A message needs a userId or anonymousId (and a track its event); an invalid one \
             is listed in `details` of a batch, 400 on its own",
        ))
}

/// `{"batch": [...]}` of `/v1/batch`: any messages (the invalid ones are
/// listed in the answer's `details`; none valid is a 400).
pub fn segment_batch() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "batch",
            ArrayBuilder::new()
                .items(any().description(Some("a message (see the single endpoints)")))
                .min_items(Some(1)),
        )
        .property(
            "context",
            any().description(Some("shared by the messages, under their own")),
        )
        .property("sentAt", time())
        .property("writeKey", any())
        .required("batch")
}
