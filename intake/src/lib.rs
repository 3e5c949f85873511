//! The rules that turn an HTTP request into envelopes, with no runtime
//! below them (no worker, tokio, sqlx or axum): they compile natively and to
//! wasm32, and the edge and the backend both use them, so each rule has one
//! owner.
//!
//! So far: the capped gunzip ([`body`]), credential parsing
//! ([`credentials`]) and time parsing ([`time`]). The body shapes,
//! validation and enrichment of `/v1/events` and the Segment API move here
//! next (ARCHITECTURE.md).

pub mod body;
pub mod credentials;
pub mod time;

/// What the intake rules refuse; each side maps it to its own error (and
/// from there to a status code, in that side's one error module).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the body is larger than {0} bytes (after decompression)")]
    TooLarge(usize),
    #[error("the body is not valid gzip: {0}")]
    BadGzip(String),
}
