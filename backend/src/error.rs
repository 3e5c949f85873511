//! The backend's one error type, and its mapping to HTTP statuses.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use protocol::ErrorBody;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing or malformed Authorization header (expected: Bearer <token>)")]
    MissingAuth,
    #[error("the token is not valid")]
    BadToken,
    #[error("the read token is not valid for this environment")]
    Forbidden,
    #[error("unsupported Content-Type {0:?}: send application/json")]
    UnsupportedContentType(String),
    #[error("unsupported Content-Encoding {0:?}: send gzip or no encoding")]
    UnsupportedEncoding(String),
    #[error("request body is larger than {0} bytes (after decompression)")]
    BodyTooLarge(usize),
    #[error("batch has {got} envelopes; at most {max} are accepted per request")]
    TooManyEnvelopes { got: usize, max: usize },
    #[error("could not read the request body: {0}")]
    BadBody(String),
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("body is not a batch of envelopes: {0}")]
    InvalidBatch(String),
    #[error("batch is empty")]
    EmptyBatch,
    #[error("{} envelope(s) are invalid; nothing was written", .0.len())]
    InvalidEnvelopes(Vec<Value>),

    #[error("unknown shard {0:?}")]
    UnknownShard(String),
    #[error("unknown environment {0:?}")]
    UnknownEnvironment(String),
    #[error("{0} {1:?} already exists")]
    AlreadyExists(&'static str, String),
    #[error("invalid {0}: {1}")]
    InvalidArgument(&'static str, String),
    #[error("shard {shard:?} is unreachable: {message}")]
    ShardUnavailable { shard: String, message: String },
    #[error("catalog database error: {0}")]
    Catalog(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the export stopped early ({message}); resume with after={after:?}")]
    ExportInterrupted { after: String, message: String },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            MissingAuth | BadToken => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            UnsupportedContentType(_) | UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            BodyTooLarge(_) | TooManyEnvelopes { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BadBody(_) | BadGzip(_) | MalformedJson(_) | InvalidArgument(..) => {
                StatusCode::BAD_REQUEST
            }
            InvalidBatch(_) | EmptyBatch | InvalidEnvelopes(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UnknownShard(_) | UnknownEnvironment(_) => StatusCode::NOT_FOUND,
            AlreadyExists(..) => StatusCode::CONFLICT,
            ShardUnavailable { .. }
            | Catalog(_)
            | Database(_)
            | Migrate(_)
            | ExportInterrupted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            MissingAuth => "missing_auth",
            BadToken => "invalid_token",
            Forbidden => "forbidden",
            UnsupportedContentType(_) => "unsupported_content_type",
            UnsupportedEncoding(_) => "unsupported_content_encoding",
            BodyTooLarge(_) => "body_too_large",
            TooManyEnvelopes { .. } => "too_many_envelopes",
            BadBody(_) => "unreadable_body",
            BadGzip(_) => "invalid_gzip",
            MalformedJson(_) => "malformed_json",
            InvalidBatch(_) => "invalid_batch",
            EmptyBatch => "empty_batch",
            InvalidEnvelopes(_) => "invalid_envelopes",
            UnknownShard(_) => "unknown_shard",
            UnknownEnvironment(_) => "unknown_environment",
            AlreadyExists(..) => "already_exists",
            InvalidArgument(..) => "invalid_argument",
            ShardUnavailable { .. } => "shard_unavailable",
            Catalog(_) => "catalog_unavailable",
            Database(_) => "database_error",
            Migrate(_) => "migration_failed",
            ExportInterrupted { .. } => "export_interrupted",
            Internal(_) => "internal",
        }
    }
}

impl Error {
    /// The JSON body this error is answered with.
    pub fn body(&self) -> ErrorBody {
        let details = match self {
            Error::InvalidEnvelopes(list) => Some(Value::Array(list.clone())),
            _ => None,
        };
        ErrorBody {
            error: self.code().into(),
            message: self.to_string(),
            details,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, code = self.code(), "request failed");
        }
        let body = self.body();
        // Retry-After is added to every 503 by the router (api.rs), from config.
        (status, Json(body)).into_response()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
