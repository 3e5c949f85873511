//! Read tokens: which environment a request may read, and the cache of lookups.

use std::time::Duration;

use axum::{extract::FromRequestParts, http::request::Parts};

use crate::{
    catalog::Environment,
    error::{Error, Result},
    AppState,
};

/// Read-token lookups are cached this long (positive and negative): the
/// bound on how late a revocation takes effect.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

/// Read-token lookups, by the token's SHA-256.
pub type TokenCache = crate::auth::SecretCache<[u8; 32]>;

/// The environment a request may read: its read token matched `?env=`.
pub struct ReadAuth {
    pub env: Environment,
}

async fn token_env(state: &AppState, token: &str) -> Result<Option<u32>> {
    let hash = intake::credentials::secret_hash(token);
    state
        .stats
        .tokens
        .env(hash, || async {
            state
                .catalog
                .read_token_env(&hash)
                .await
                .map_err(|e| Error::Catalog(e.to_string()))
        })
        .await
}

impl FromRequestParts<AppState> for ReadAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = crate::auth::bearer(&parts.headers)
            .ok_or(Error::MissingAuth)?
            .to_string();
        let name = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "env")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "env",
                    "the env parameter (an environment name) is required".into(),
                )
            })?;
        let token_env = token_env(state, &token).await?.ok_or(Error::BadToken)?;
        // Only the token's own environment is looked up (a refresh, throttled
        // and shared, when it is new), never the name asked for: another
        // environment gets 403 whether it exists or not, so names cannot be
        // enumerated and unknown names cannot force catalog reads.
        match state.catalog.environment(token_env).await {
            Some(env) if env.name == name => Ok(ReadAuth { env }),
            _ => Err(Error::Forbidden),
        }
    }
}
