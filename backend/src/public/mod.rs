//! Direct ingest: the public API (`/v1/events`, the Segment-compatible
//! endpoints and settings) served by the backend itself, through the same
//! doors as the edge (`intake::door`), so Sluice runs without Cloudflare.
//!
//! The ports here: API keys from the catalog behind a cache of at most
//! `SLUICE_KEY_CACHE_TTL_MS` and an in-process per-key rate limit
//! ([`keys`]); the group-commit writer as the sink ([`commit`]), which
//! answers after the commit, so a 2xx here means stored; the client's
//! address and country from the socket or a trusted proxy ([`client`]).

pub mod client;
pub mod commit;
pub mod keys;
pub mod tallies;

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use axum::{
    body::BodyDataStream,
    extract::{ConnectInfo, Request as HttpRequest, State},
    http::{request::Parts, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use futures::StreamExt;
use intake::door::{self, Client, Doors};
use serde_json::Value;

use crate::{config::Config, AppState};

/// What direct ingest keeps between requests.
pub struct Direct {
    pub settings: door::Settings,
    pub proxies: client::TrustedProxies,
    pub keys: keys::ApiKeys,
    pub commit: commit::GroupCommit,
    /// Refusals waiting to be written to the delivery ledger.
    pub tallies: tallies::Tallies,
    /// `SLUICE_PUBLIC_URL` as (scheme, host), when set.
    public_url: Option<(String, String)>,
}

impl Direct {
    /// From `config`, which [`Config::check_for_serving`] has checked (an
    /// unparsable proxy list or URL trusts nobody and is ignored here).
    pub fn new(config: &Config) -> Self {
        Self {
            settings: door::Settings {
                limits: intake::Limits::default(),
                allowed_origins: door::AllowedOrigins::parse(&config.allowed_origins),
            },
            proxies: client::TrustedProxies::parse(&config.trusted_proxies).unwrap_or_default(),
            keys: keys::ApiKeys::new(config),
            commit: commit::GroupCommit::new(
                config.max_events_in_flight,
                config.max_batch_events,
                config.direct_writers,
                config.insert_chunk_rows,
            ),
            tallies: tallies::Tallies::default(),
            public_url: config.public_url().ok().flatten(),
        }
    }
}

/// Every request the backend has no route for: the public API's if its path
/// is one of them, else a 404.
pub async fn fallback(State(state): State<AppState>, request: HttpRequest) -> Response {
    if !door::is_public_path(request.uri().path()) {
        return crate::api::json_error(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = request.into_parts();
    let direct = &state.direct;
    let rules = client::ClientRules {
        proxies: &direct.proxies,
        country_header: state.config.country_header(),
    };
    let incoming = Incoming {
        client: rules.client(peer, &parts.headers),
        scheme_and_host: direct
            .public_url
            .clone()
            .unwrap_or_else(|| rules.scheme_and_host(peer, &parts.headers)),
        body: Mutex::new(Some(body.into_data_stream())),
        parts,
    };
    let doors = Doors {
        settings: &direct.settings,
        keys: &keys::Catalog(&state),
        sink: &Shards(&state),
        clock: &SystemClock,
        log: &Tracing,
    };
    let (method, path) = (incoming.parts.method.as_str(), incoming.parts.uri.path());
    let answer = doors.fetch(method, path, &incoming).await;
    incoming.drain_unread().await;
    state
        .metrics
        .direct_requests
        .with_label_values(&[&answer.status.to_string()])
        .inc();
    match &answer.tally {
        Some(tally) => direct.tallies.add(tally),
        None if answer.status >= 400 => {
            let code = answer
                .body
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            state
                .metrics
                .direct_unattributed
                .with_label_values(&[code])
                .inc();
        }
        None => {}
    }
    respond(answer)
}

fn respond(answer: door::Response<commit::Pending>) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match answer.body {
        Some(body) => (status, Json(body)).into_response(),
        None => status.into_response(),
    };
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A request as the door reads it.
struct Incoming {
    parts: Parts,
    /// The body not read yet (all of it, or what is left past a limit).
    body: Mutex<Option<BodyDataStream>>,
    client: Client,
    scheme_and_host: (String, String),
}

impl door::Request for Incoming {
    /// The value's bytes as Latin-1, as the Fetch API's headers read them at
    /// the edge (a byte past ASCII was a missing header here, so
    /// `Content-Encoding: \xc2\x84` passed as none; found by schemathesis).
    fn header(&self, name: &str) -> Option<String> {
        let value = self.parts.headers.get(name)?;
        Some(value.as_bytes().iter().map(|&b| char::from(b)).collect())
    }

    fn query(&self) -> Option<String> {
        self.parts.uri.query().map(str::to_owned)
    }

    fn scheme_and_host(&self) -> (String, String) {
        self.scheme_and_host.clone()
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    /// Reads at most `limit + 1` bytes: past the limit the body is refused
    /// without holding the rest (which is left for [`Incoming::drain_unread`]).
    /// A body the client cut short (hyper checks `Content-Length`) is an
    /// incomplete body.
    async fn body(&self, limit: usize) -> Result<Vec<u8>, intake::Error> {
        let declared = intake::events::declared_length(self.header("content-length").as_deref());
        let Some(mut stream) = self.unread() else {
            return Err(intake::Error::Internal("the body was read twice".into()));
        };
        let mut out = Vec::with_capacity(declared.map_or(0, |d| d.min(limit as u64 + 1) as usize));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| intake::Error::IncompleteBody {
                declared,
                received: Some(out.len()),
            })?;
            out.extend_from_slice(&chunk);
            if out.len() > limit {
                out.truncate(limit + 1);
                *self.body.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
                return Ok(out);
            }
        }
        intake::events::check_complete(out.len(), declared)?;
        Ok(out)
    }
}

/// Most of a refused request's body read and discarded before answering.
const MAX_DRAIN_BYTES: u64 = 16 << 20;
/// How long a refused request's body may take to drain.
const MAX_DRAIN_TIME: Duration = Duration::from_secs(5);

impl Incoming {
    fn unread(&self) -> Option<BodyDataStream> {
        self.body.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Reads and discards what is left of a body the door did not read (a
    /// request refused before or while reading it): hyper closes a
    /// connection whose request body is unread, and a client still sending
    /// would see a reset instead of the answer. Bounded in bytes and time;
    /// past either, the connection closes as before.
    async fn drain_unread(&self) {
        let Some(mut stream) = self.unread() else {
            return;
        };
        let declared = intake::events::declared_length(
            door::Request::header(self, "content-length").as_deref(),
        );
        if declared.is_some_and(|d| d > MAX_DRAIN_BYTES) {
            return;
        }
        let _ = tokio::time::timeout(MAX_DRAIN_TIME, async {
            let mut drained = 0u64;
            while let Some(Ok(chunk)) = stream.next().await {
                drained += chunk.len() as u64;
                if drained > MAX_DRAIN_BYTES {
                    break;
                }
            }
        })
        .await;
    }
}

/// The shards, through the group-commit writer.
struct Shards<'a>(&'a AppState);

impl door::Sink for Shards<'_> {
    type Pending = commit::Pending;

    fn prepare(
        &self,
        env_id: u32,
        envelopes: Vec<protocol::Envelope>,
    ) -> Result<commit::Pending, intake::Error> {
        self.0.direct.commit.prepare(env_id, envelopes)
    }

    async fn commit(&self, pending: commit::Pending) -> Result<(), intake::Error> {
        self.0.direct.commit.commit(self.0, pending).await
    }

    /// No queue behind this door: it answers once the events are stored.
    fn answers_early(&self) -> bool {
        false
    }
}

struct SystemClock;

impl door::Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn random10(&self) -> [u8; 10] {
        rand::random()
    }
}

/// The door's log lines, through `tracing`.
struct Tracing;

impl door::Log for Tracing {
    fn info(&self, event: &str, fields: Value) {
        tracing::info!(event, %fields, "direct ingest");
    }

    fn error(&self, event: &str, fields: Value) {
        tracing::error!(event, %fields, "direct ingest");
    }
}
