//! What the handlers need of the runtime. `bindings.rs` implements every
//! port for workerd; the tests implement them in memory. The runtime is
//! single-threaded, so the futures are not `Send`.
#![allow(async_fn_in_trait)]

use crate::error::EdgeError;
use crate::forward::Outcome;

/// The request, its clock and logs are the public door's ports
/// (`intake::door`), which the edge's handlers run on.
pub use intake::door::{Client, Log, Request};

/// The API keys (Workers KV) and the per-key rate limiter.
pub trait KeyStore {
    /// The record stored under a key's hash, if any.
    async fn get(&self, key_hash: &str) -> Result<Option<String>, EdgeError>;
    /// The limiter's answer for a key hash; no limiter, or a failing one,
    /// lets the request through.
    async fn within_rate_limit(&self, key_hash: &str) -> bool;
}

/// The events queue.
pub trait EventQueue {
    /// Whether the queue binding exists (checked before accepting events).
    fn ready(&self) -> Result<(), EdgeError>;
    /// One `sendBatch` of message bodies (JSON texts).
    async fn send_batch(&self, bodies: &[String]) -> Result<(), String>;
}

/// The backend's ingest API.
pub trait Backend {
    /// `POST /v1/ingest`: a JSON array of envelopes.
    async fn ingest(&self, body: &str) -> Outcome;
    /// `POST /v1/ingest/reports`: a `protocol::Reports` object.
    async fn report(&self, body: &str) -> Outcome;
}

/// The dead-letter queue, which poison messages are sent to.
pub trait DeadLetterQueue {
    async fn send(&self, text: &str) -> Result<(), String>;
}

/// Where the dead-letter consumer keeps dead letters for an operator (KV).
pub trait DeadLetterStore {
    /// Store a letter; with `ttl_seconds`, KV deletes it after that long.
    async fn put(&self, key: &str, value: &str, ttl_seconds: Option<u64>) -> Result<(), String>;
    /// An environment's retention in days (the record under
    /// `deadletter::retention_key`, which `backend env retention --edge`
    /// writes), `None` when it has none.
    async fn retention_days(&self, env_id: u32) -> Result<Option<u32>, String>;
}

/// Time, randomness and waiting.
pub trait Clock: intake::door::Clock {
    async fn sleep_ms(&self, ms: u64);
}

/// One delivered queue message.
pub trait Message {
    fn id(&self) -> String;
    /// Delivery attempts, starting at 1.
    fn attempts(&self) -> u32;
    /// The body as text.
    fn body(&self) -> String;
    fn ack(&self);
    fn retry(&self, delay_seconds: u32);
}
