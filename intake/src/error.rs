//! The public API's errors — what the doors of `/v1/events` and the Segment
//! API answer, at the edge and (for direct ingest) at the backend — and the
//! one place each becomes an HTTP status, code and body.

use protocol::ErrorBody;
use serde::Serialize;

/// Why one event of a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detail {
    pub index: usize,
    pub reason: String,
}

impl Detail {
    pub fn new(index: usize, reason: impl Into<String>) -> Self {
        Self {
            index,
            reason: reason.into(),
        }
    }
}

/// Which API a request came in by: their clients read statuses differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `/v1/events` (and `/healthz`).
    Events,
    /// The Segment-compatible API.
    Segment,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("missing API key: send `Authorization: Bearer <key>` or `?key=<key>`")]
    MissingKey,
    #[error("unknown or revoked API key")]
    InvalidKey,
    #[error("Content-Type must be application/json or text/plain, got `{0}`")]
    UnsupportedMediaType(String),
    #[error("Content-Encoding must be gzip or identity, got `{0}`")]
    UnsupportedEncoding(String),
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The body ended before its `Content-Length` (or its last chunk): the
    /// client closed the connection early or sent less than it declared.
    #[error("{}", incomplete_body_message(*.declared, *.received))]
    IncompleteBody {
        declared: Option<u64>,
        received: Option<usize>,
    },
    #[error("more than {0} events in one request")]
    TooManyEvents(usize),
    #[error("events are larger than the per-event limit")]
    EventTooLarge(Vec<Detail>),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("the request holds no events")]
    EmptyBatch,
    #[error("some events are invalid; nothing was accepted")]
    InvalidEvents(Vec<Detail>),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("too many requests for this API key; retry after {retry_after} s")]
    RateLimited { retry_after: u32 },
    #[error("the API key store is unavailable, try again")]
    KeyStoreUnavailable,
    #[error("the queue did not accept the events, try again")]
    QueueUnavailable,
    /// Direct ingest: the shard did not commit the events (nothing of the
    /// request is stored, or it is stored once: event ids make a retry safe).
    #[error("the events could not be stored, try again")]
    StoreUnavailable,
    /// Direct ingest: more events in flight than the backend holds.
    #[error("too many events in flight; retry after {retry_after} s")]
    Overloaded { retry_after: u32 },
    #[error("internal error")]
    Internal(String),
}

fn incomplete_body_message(declared: Option<u64>, received: Option<usize>) -> String {
    let what = match (declared, received) {
        (Some(d), Some(r)) => {
            format!("the body ended after {r} of the {d} bytes its Content-Length declares")
        }
        (Some(d), None) => {
            format!("the body ended before the {d} bytes its Content-Length declares")
        }
        (None, _) => "the body ended before it was complete".to_owned(),
    };
    format!("{what}: the client closed the connection early or sent less; send the whole body")
}

/// Errors the runtime gives when a body is read a second time: our bug, not the client's.
const BODY_ALREADY_READ: [&str; 3] = ["already been used", "disturbed", "locked"];

impl Error {
    /// What a failed read of the request body means. The runtime fails the
    /// read when the client's side ends before the body does (fewer bytes
    /// than its `Content-Length`, a chunked body cut off, a reset
    /// connection): a client error. Only a body read twice is ours.
    pub fn body_read_failed(reason: &str, declared: Option<u64>) -> Self {
        let lower = reason.to_ascii_lowercase();
        if BODY_ALREADY_READ.iter().any(|m| lower.contains(m)) {
            Self::Internal(format!("reading the request body: {reason}"))
        } else {
            Self::IncompleteBody {
                declared,
                received: None,
            }
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::MissingKey | Self::InvalidKey => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::BodyTooLarge(_) | Self::TooManyEvents(_) | Self::EventTooLarge(_) => 413,
            Self::UnsupportedMediaType(_) | Self::UnsupportedEncoding(_) => 415,
            Self::BadGzip(_)
            | Self::IncompleteBody { .. }
            | Self::InvalidJson(_)
            | Self::InvalidBody(_)
            | Self::EmptyBatch => 400,
            Self::InvalidEvents(_) => 422,
            Self::RateLimited { .. } => 429,
            Self::Internal(_) => 500,
            Self::KeyStoreUnavailable
            | Self::QueueUnavailable
            | Self::StoreUnavailable
            | Self::Overloaded { .. } => 503,
        }
    }

    /// The status on a door: on the Segment-compatible API every client
    /// error is a 400 (Segment documents 400 for oversized and malformed
    /// requests, and the SDKs drop rather than retry it); 401, 404, 405, 429
    /// and 5xx keep their meaning.
    pub fn status_at(&self, door: Door) -> u16 {
        match (door, self.status()) {
            (Door::Segment, 413 | 415 | 422) => 400,
            (_, status) => status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingKey => "missing_api_key",
            Self::InvalidKey => "invalid_api_key",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::UnsupportedEncoding(_) => "unsupported_encoding",
            Self::BadGzip(_) => "invalid_gzip",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::IncompleteBody { .. } => "incomplete_body",
            Self::TooManyEvents(_) => "too_many_events",
            Self::EventTooLarge(_) => "event_too_large",
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::EmptyBatch => "empty_batch",
            Self::InvalidEvents(_) => "invalid_events",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::KeyStoreUnavailable => "key_store_unavailable",
            Self::QueueUnavailable => "queue_unavailable",
            Self::StoreUnavailable => "store_unavailable",
            Self::Overloaded { .. } => "overloaded",
            Self::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let details = match self {
            Self::InvalidEvents(d) | Self::EventTooLarge(d) => serde_json::to_value(d).ok(),
            _ => None,
        };
        // Internal details go to the log, not to the client.
        let message = match self {
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        ErrorBody {
            error: self.code().to_owned(),
            message,
            details,
        }
    }

    /// Headers that belong to this error's response, beyond Content-Type.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::MethodNotAllowed { allow } => vec![("Allow", (*allow).to_owned())],
            Self::MissingKey | Self::InvalidKey => {
                vec![("WWW-Authenticate", "Bearer".to_owned())]
            }
            Self::QueueUnavailable | Self::KeyStoreUnavailable | Self::StoreUnavailable => {
                vec![("Retry-After", "1".to_owned())]
            }
            Self::RateLimited { retry_after } | Self::Overloaded { retry_after } => {
                vec![("Retry-After", retry_after.to_string())]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_a_status_and_code() {
        let all = [
            Error::MissingKey,
            Error::InvalidKey,
            Error::UnsupportedMediaType("x".into()),
            Error::UnsupportedEncoding("br".into()),
            Error::BadGzip("x".into()),
            Error::BodyTooLarge(1),
            Error::IncompleteBody {
                declared: Some(10),
                received: None,
            },
            Error::TooManyEvents(1),
            Error::EventTooLarge(vec![]),
            Error::InvalidJson("x".into()),
            Error::InvalidBody("x".into()),
            Error::EmptyBatch,
            Error::InvalidEvents(vec![]),
            Error::RateLimited { retry_after: 10 },
            Error::NotFound,
            Error::MethodNotAllowed { allow: "POST" },
            Error::KeyStoreUnavailable,
            Error::QueueUnavailable,
            Error::StoreUnavailable,
            Error::Overloaded { retry_after: 1 },
            Error::Internal("boom".into()),
        ];
        let statuses: Vec<u16> = all.iter().map(Error::status).collect();
        assert_eq!(
            statuses,
            [
                401, 401, 415, 415, 400, 413, 400, 413, 413, 400, 400, 400, 422, 429, 404, 405,
                503, 503, 503, 503, 500
            ]
        );
        for e in &all {
            assert!(!e.code().is_empty());
        }
    }

    #[test]
    fn details_are_listed_and_internal_text_is_hidden() {
        let e = Error::InvalidEvents(vec![Detail::new(3, "event is required")]);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"], "invalid_events");
        assert_eq!(body["details"][0]["index"], 3);
        assert_eq!(body["details"][0]["reason"], "event is required");

        let e = Error::Internal("secret path /x".into());
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["message"], "internal error");
        assert!(body.get("details").is_none());
    }

    /// A body that ends early is the client's doing: 400, never a 500.
    #[test]
    fn a_body_cut_short_is_the_clients_fault() {
        for reason in [
            "Network connection lost.",
            "TypeError: The request body was cut short",
            "failed to read array buffer from request",
            "",
        ] {
            let e = Error::body_read_failed(reason, Some(113));
            assert_eq!(
                e,
                Error::IncompleteBody {
                    declared: Some(113),
                    received: None
                },
                "{reason}"
            );
            assert_eq!(e.status(), 400);
            assert_eq!(e.status_at(Door::Segment), 400);
            let body = serde_json::to_value(e.body()).unwrap();
            assert_eq!(body["error"], "incomplete_body");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains("113 bytes its Content-Length"),
                "{message}"
            );
        }
        let chunked = Error::body_read_failed("Network connection lost.", None);
        assert!(chunked.to_string().contains("before it was complete"));
        let short = Error::IncompleteBody {
            declared: Some(100),
            received: Some(10),
        };
        assert!(short.to_string().contains("after 10 of the 100 bytes"));
        // Reading a body twice is a bug of ours, and says so in the log only.
        let ours = Error::body_read_failed("TypeError: Body has already been used", Some(1));
        assert_eq!(ours.status(), 500);
        assert_eq!(ours.code(), "internal");
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let e = Error::MethodNotAllowed {
            allow: "POST, OPTIONS",
        };
        assert_eq!(e.headers(), vec![("Allow", "POST, OPTIONS".to_owned())]);
    }

    #[test]
    fn rate_limited_says_when_to_retry() {
        let e = Error::RateLimited { retry_after: 60 };
        assert_eq!(e.headers(), vec![("Retry-After", "60".to_owned())]);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert!(body["message"].as_str().unwrap().contains("60 s"));
    }
}
