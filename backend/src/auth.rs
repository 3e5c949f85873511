//! Who may call: the ingest token, and the bearer token of a request.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts, HeaderMap},
};
use subtle::ConstantTimeEq;

use crate::{error::Error, AppState};

/// The token of `Authorization: Bearer <token>` (parsed by
/// `intake::credentials`). Used by the ingest and the stats APIs.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    intake::credentials::bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// Proof that the request carried the ingest token (compared in constant time).
pub struct IngestAuth;

impl FromRequestParts<AppState> for IngestAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let presented = bearer(&parts.headers).ok_or(Error::MissingAuth)?;
        let expected = state.config.ingest_token.as_bytes();
        if bool::from(presented.as_bytes().ct_eq(expected)) {
            Ok(IngestAuth)
        } else {
            Err(Error::BadToken)
        }
    }
}
