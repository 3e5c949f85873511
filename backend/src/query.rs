//! The query-string extractor of the read API: axum's `Query`, whose
//! refusal (a duplicate or mistyped parameter) is answered like every other
//! error — `400 invalid_argument` with an `ErrorBody` — instead of axum's
//! plain-text 400. Found by schemathesis (`tests/tests/openapi.rs`).

use axum::{extract::FromRequestParts, http::request::Parts};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// `axum::extract::Query`, refusing with [`Error::InvalidArgument`].
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| Error::InvalidArgument("query", e.body_text()))
    }
}
