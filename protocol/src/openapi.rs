//! The limits of the wire types as JSON Schema constraints (feature
//! `openapi`): each field's schema is built here from the constants the
//! validators use ([`Envelope::validate`](crate::Envelope::validate),
//! [`Report::validate`](crate::Report::validate)), so the description and the
//! checks cannot drift apart.

use utoipa::openapi::schema::{
    AdditionalProperties, Object, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::KnownFormat;

use crate::{
    MAX_FIELD_LEN, MAX_ID_LEN, MAX_NAME_LEN, MAX_REASON_LEN, MAX_REPORT_ID_LEN, MAX_SAMPLE_BYTES,
    MAX_SAMPLE_MESSAGE_CHARS, MAX_TIMESTAMP_MS,
};

/// Text without control characters (`char::is_control`: Unicode's Cc).
pub const NO_CONTROL_CHARACTERS: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";
/// A reason code: lowercase ASCII letters, digits and `_`.
pub const REASON_CODE: &str = "^[a-z0-9_]+$";

fn text(min: usize, max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(NO_CONTROL_CHARACTERS))
}

/// An envelope id: 1 to [`MAX_ID_LEN`] characters.
pub fn id() -> Object {
    text(1, MAX_ID_LEN)
        .description(Some(
            "The idempotency key: the client's own id or a UUID the door assigned",
        ))
        .examples(["order-1"])
        .build()
}

/// An event name: 1 to [`MAX_NAME_LEN`] characters.
pub fn name() -> Object {
    text(1, MAX_NAME_LEN).examples(["purchase"]).build()
}

/// `user_id`, `anonymous_id`, ...: up to [`MAX_FIELD_LEN`] characters, or
/// `null` (absent).
pub fn field() -> Object {
    text(0, MAX_FIELD_LEN)
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .build()
}

/// Milliseconds since the epoch, 0 to [`MAX_TIMESTAMP_MS`].
pub fn timestamp() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
        .maximum(Some(MAX_TIMESTAMP_MS as f64))
        .description(Some("milliseconds since the Unix epoch"))
        .examples([1_700_000_000_000i64])
        .build()
}

/// A report's or an acceptance's id: 1 to [`MAX_REPORT_ID_LEN`] bytes
/// (a character takes at least one, so the schema's `maxLength` is the
/// outer bound; longer UTF-8 is refused with 422).
pub fn report_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_REPORT_ID_LEN))
        .examples(["0123456789abcdef0123456789abcdef"])
        .build()
}

/// An acceptance's id: a report id without control characters.
pub fn acceptance_id() -> Object {
    text(1, MAX_REPORT_ID_LEN)
        .examples(["0123456789abcdef0123456789abcdef"])
        .build()
}

/// A reason code of a report or a sample.
pub fn reason() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_REASON_LEN))
        .build()
}

/// Counts by reason code.
pub fn reason_counts() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_REASON_LEN))
                .pattern(Some(REASON_CODE)),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(uint64().into())))
        .build()
}

/// A sample's error message: up to [`MAX_SAMPLE_MESSAGE_CHARS`] characters.
pub fn sample_message() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_SAMPLE_MESSAGE_CHARS))
        .build()
}

/// A sample's body: up to [`MAX_SAMPLE_BYTES`] bytes.
pub fn sample_body() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_SAMPLE_BYTES))
        .build()
}

/// `IngestResponse::environments`: counts by environment id (JSON keys are text).
pub fn counts_by_env() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            utoipa::openapi::Ref::from_schema_name("EnvCounts").into(),
        )))
        .build()
}

/// A `u32`: 0 to 4294967295 (OpenAPI's `int32` format would say 2^31 - 1).
pub fn uint32() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(u32::MAX))
        .build()
}

/// A `u64`: 0 to 2^64 - 1.
pub fn uint64() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(u64::MAX as f64))
        .build()
}

/// A dead letter's acceptance, read leniently (the message may be poison for
/// other reasons): any id text, a `u32` count.
pub fn lenient_acceptance() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property("id", ObjectBuilder::new().schema_type(Type::String))
        .property("n", uint32())
        .required("id")
        .required("n")
        .build()
}

/// A dead letter's time, read leniently: any `i64`.
pub fn lenient_ms() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .build()
}
