//! Everything that turns an HTTP request into envelopes, with no runtime
//! below it (no worker, tokio, sqlx or axum): it compiles natively and to
//! wasm32, and the edge and the backend both use it, so each rule has one
//! owner. Content checks and the capped gunzip ([`body`], [`events`]), the
//! body shapes of `/v1/events` ([`events`]) and of the Segment API
//! ([`segment`]), the strict JSON parser ([`json`]), validation ([`text`]),
//! enrichment and the environments' privacy policies ([`enrich`]), skew
//! correction, user agents ([`ua`]: uap-core's families, a device class,
//! cached), credentials ([`credentials`]), times ([`time`]), the public
//! API's errors with their statuses ([`error`]), and the doors themselves,
//! over ports each runtime implements ([`door`]).

pub mod body;
pub mod credentials;
pub mod door;
pub mod enrich;
pub mod error;
pub mod events;
pub mod json;
pub mod segment;
pub mod text;
pub mod time;
pub mod ua;

pub use error::{Detail, Door, Error};

use protocol::{EDGE_MAX_BODY_BYTES, EDGE_MAX_EVENTS, EDGE_MAX_EVENT_BYTES};

/// Size limits of the `/v1/events` door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_event_bytes: usize,
    pub max_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: EDGE_MAX_BODY_BYTES,
            max_event_bytes: EDGE_MAX_EVENT_BYTES,
            max_events: EDGE_MAX_EVENTS,
        }
    }
}
